import Foundation
import Quorum
import Testing

@Suite("quorum txn's arguments, and every client command's --timeout-ms", .timeLimit(.minutes(1)))
struct TxnCommandTests {
  @Test("quorum txn refuses a malformed option with a usage error, before contacting anyone")
  func usageErrors() async throws {
    let cluster = try ProcessCluster(name: "txnargs", size: 1)
    defer { cluster.removeFiles() }
    // Nothing listens at this address: a command that got past its arguments would fail with status 1.
    let target = ["--cluster", "127.0.0.1:1"]
    let cases: [(arguments: [String], says: String)] = [
      (["txn", "get", "k", "--timeout-ms", "soon"], "--timeout-ms soon"),
      (["txn", "get", "k", "--timeout-ms", "0"], "expected a positive number"),
      (["txn", "in-doubt", "--min-age-ms", "old", "--timeout-ms", "200"], "--min-age-ms old"),
      (["kv", "get", "k", "--timeout-ms", "soon"], "--timeout-ms soon"),
      (["lock", "status", "x", "--timeout-ms", "-5"], "--timeout-ms -5"),
    ]
    for (arguments, says) in cases {
      let result = try await cluster.runCLI(arguments + target)
      #expect(result.status == 2, "\(arguments): \(result.output)")
      #expect(result.output.contains(says), "\(arguments): \(result.output)")
    }
  }
}
