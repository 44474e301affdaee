import Foundation
import Quorum
import Testing

@Suite("quorum serve and the client commands authenticate", .serialized, .timeLimit(.minutes(3)))
struct ServeSecurityTests {
  @Test("serve needs --secret-file or an explicit --insecure; a secret file others can read refuses to start")
  func serveSecurityOptions() async throws {
    let cluster = try ProcessCluster(name: "serve-security", size: 1)
    defer { cluster.removeFiles() }
    let base = ["serve", "--id", "n1", "--listen", "127.0.0.1:0", "--peers", "", "--data", "\(cluster.directory)/d"]
    let neither = try await cluster.runCLI(base)
    #expect(neither.status == 2)
    #expect(
      neither.output.contains("give --secret-file FILE") && neither.output.contains("--insecure"), "\(neither.output)")
    let both = try await cluster.runCLI(base + ["--insecure", "--secret-file", cluster.secretFile])
    #expect(both.status == 2 && both.output.contains("--insecure contradicts"), "\(both.output)")
    let open = "\(cluster.directory)/open-secret"
    try writePrivateFile(open, Data(repeating: 3, count: 32), mode: 0o644)
    let permissive = try await cluster.runCLI(base + ["--secret-file", open])
    #expect(permissive.status == 1)
    #expect(
      permissive.output.contains("the secret file \(open) has mode 0644") && permissive.output.contains("chmod 600"),
      "\(permissive.output)")

    // --insecure starts, and says loudly that it runs without authentication.
    let insecure = try ServeProcess(id: 1, arguments: base + ["--insecure"], stderrPath: "\(cluster.directory)/n1.err")
    _ = try await insecure.listeningAddress()
    #expect(insecure.stderr.contains("WITHOUT AUTHENTICATION"), "\(insecure.stderr)")
    insecure.kill(SIGTERM)
    #expect(await insecure.waitForExit(timeout: .seconds(10)))
  }

  @Test("a client command with a wrong secret or a malformed --credential is refused clearly")
  func clientCredentials() async throws {
    let cluster = try ProcessCluster(name: "client-security", size: 1)
    defer { cluster.removeFiles() }
    try await cluster.start()
    let good = try await cluster.runCLI(["kv", "put", "k", "v", "--cluster-file", cluster.clusterFile])
    #expect(good.status == 0, "\(good.output)")
    let wrong = "\(cluster.directory)/wrong.key"
    try writePrivateFile(wrong, Data(repeating: 5, count: 32))
    let forged = try await cluster.runCLI([
      "kv", "get", "k", "--cluster-file", cluster.clusterFile, "--credential", "admin:\(wrong)", "--timeout-ms", "1000",
    ])
    #expect(forged.status == 1)
    #expect(forged.output.contains("authentication failed"), "\(forged.output)")
    let malformed = try await cluster.runCLI([
      "kv", "get", "k", "--cluster-file", cluster.clusterFile, "--credential", "admin",
    ])
    #expect(malformed.status == 2 && malformed.output.contains("expected NAME:SECRET-FILE"), "\(malformed.output)")
    let missing = try await cluster.runCLI([
      "status", "--cluster-file", cluster.clusterFile, "--credential", "admin:\(cluster.directory)/none.key",
    ])
    #expect(missing.status != 0 && missing.output.contains("none.key"), "\(missing.output)")
    #expect(await cluster.stopAll().isEmpty)
  }
}
