import Foundation
import Testing

/// A seed must replay the same in every process. Swift seeds `Dictionary` and `Set` hashing afresh in each process,
/// so an iteration order that leaks into the schedule would make a failing seed impossible to replay elsewhere. Each
/// case runs one seed of `quorum simulate` in three child processes — two with per-process random hashing, one
/// with deterministic hashing — and compares the digests of their whole traces. (Found this way: the Paxos oracle
/// traced chosen ballots in dictionary order, and the nemesis restarted nodes in dictionary order.)
@Suite("A seed replays identically across processes")
struct DeterminismTests {
  struct Case: Sendable, CustomTestStringConvertible {
    var protocolName: String
    var seed: UInt64
    var extra: [String] = []
    var testDescription: String { "\(protocolName) seed \(seed) \(extra.joined(separator: " "))" }
  }

  @Test(
    "the trace digest of one seed is the same in three processes with different hash seeds",
    arguments: [
      Case(protocolName: "raft", seed: 11),
      Case(protocolName: "paxos", seed: 12),
      Case(protocolName: "mixed", seed: 13, extra: ["--groups", "3"]),
      Case(protocolName: "synod", seed: 14),
      Case(protocolName: "raft", seed: 15, extra: ["--level", "core"]),
      Case(protocolName: "paxos", seed: 16, extra: ["--level", "core"]),
    ])
  func digestsAgree(_ test: Case) async throws {
    let arguments = ["simulate", "--protocol", test.protocolName, "--seed", "\(test.seed)", "--digest"] + test.extra
    async let first = runSimulation(arguments, deterministicHashing: false)
    async let second = runSimulation(arguments, deterministicHashing: false)
    async let third = runSimulation(arguments, deterministicHashing: true)
    let digests = try await [first, second, third]
    #expect(digests[0] == digests[1], "\(test): \(digests)")
    #expect(digests[0] == digests[2], "\(test): \(digests)")
  }

  /// Runs `quorum` with `arguments` and returns the trace digest line it printed.
  private func runSimulation(_ arguments: [String], deterministicHashing: Bool) async throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: try quorumExecutable())
    process.arguments = arguments
    var environment = ProcessInfo.processInfo.environment
    environment["SWIFT_DETERMINISTIC_HASHING"] = deterministicHashing ? "1" : nil
    process.environment = environment
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("quorum-determinism-\(UUID())")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let outputPath = directory.appendingPathComponent("out").path
    _ = FileManager.default.createFile(atPath: outputPath, contents: nil)
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: outputPath))
    process.standardOutput = handle
    process.standardError = handle
    try process.run()
    let deadline = ContinuousClock.now.advanced(by: .seconds(240))  // a bound on failure only
    while process.isRunning {
      if ContinuousClock.now > deadline {
        process.terminate()
        throw HarnessError("quorum \(arguments.joined(separator: " ")) did not finish")
      }
      try await Task.sleep(for: .milliseconds(20))
    }
    try handle.close()
    let output = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
    guard process.terminationStatus == 0 else {
      throw HarnessError("quorum \(arguments.joined(separator: " ")) exited \(process.terminationStatus):\n\(output)")
    }
    guard let line = output.split(separator: "\n").first(where: { $0.hasPrefix("trace digest ") }) else {
      throw HarnessError("no trace digest in the output of quorum \(arguments.joined(separator: " ")):\n\(output)")
    }
    return String(line)
  }
}
