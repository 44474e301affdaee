import Foundation
import Quorum
import Testing

@Suite("quorum lock against a cluster of quorum serve processes", .serialized, .timeLimit(.minutes(3)))
struct LockCommandTests {
  @Test("quorum lock refuses bad arguments with a usage error, before contacting anyone")
  func usageErrors() async throws {
    let cluster = try ProcessCluster(name: "lockargs", size: 1)
    defer { cluster.removeFiles() }
    // Nothing listens at this address: a command that got past its arguments would fail with status 1.
    let target = ["--cluster", "127.0.0.1:1", "--timeout-ms", "200"]
    let cases: [(arguments: [String], says: String)] = [
      (["lock", "acquire", "x", "--shared", "--permits", "2"], "exclude each other"),
      (["lock", "acquire", "x", "--permits", "0"], "at least 1"),
      (["lock", "acquire", "x", "--ttl", "0.5"], "shortest lease is 1 second"),
      (["lock", "acquire", "x", "--wait", "soon"], "expected seconds"),
      (["lock", "acquire", "x", "--colour", "red"], "unknown option --colour"),
      (["lock", "acquire"], "usage: quorum lock"),
      (["lock", "release", "x"], "needs --session"),
      (["lock", "release", "x", "--session", "sx"], "expected a session id"),
      (["lock", "release", "x", "--session", "s4", "--token", "q"], "expected a fencing token"),
      (["lock", "status"], "usage: quorum lock"),
      (["lock", "unlock", "x"], "usage: quorum lock"),
    ]
    for (arguments, says) in cases {
      let result = try await cluster.runCLI(arguments + target)
      #expect(result.status == 2, "\(arguments): \(result.output)")
      #expect(result.output.contains(says), "\(arguments): \(result.output)")
    }
    let unreachable = try await cluster.runCLI(["lock", "status", "x"] + target)
    #expect(unreachable.status == 1, "\(unreachable.output)")
  }

  @Test(
    "quorum lock acquires and prints the token, refuses a second holder, hands a waiting acquire the lock on release, releases only for the owner, and quorum status counts locks"
  )
  func acquireStatusRelease() async throws {
    let cluster = try ProcessCluster(name: "lockcli", size: 3)
    var passed = false
    defer { if passed { cluster.removeFiles() } }
    do {
      try await cluster.start()
      let admin = TCPKVClient(
        cluster: cluster.name, members: Array(cluster.addresses.values), options: Workload.options(),
        credential: cluster.credential)
      _ = try await cluster.leader(client: admin)
      let target = ["--cluster-file", cluster.clusterFile, "--credential", "admin:\(cluster.adminKeyFile)"]
      func lock(_ arguments: String...) async throws -> (status: Int32, output: String) {
        try await cluster.runCLI(["lock"] + arguments + target)
      }

      let first = try await lock("acquire", "orders", "--ttl", "60")
      #expect(first.status == 0, "\(first.output)")
      let (token, session) = try #require(Self.grant(in: first.output), "\(first.output)")
      #expect(first.output.contains("not renewed after this command exits"), "\(first.output)")

      let busy = try await lock("acquire", "orders")
      #expect(busy.status == 3 && busy.output.contains("held by \(session)"), "\(busy.output)")

      let status = try await lock("status", "orders")
      #expect(status.status == 0, "\(status.output)")
      #expect(status.output.contains("\(session)  exclusive  token \(token)"), "\(status.output)")
      #expect(status.output.contains("waiters: 0"), "\(status.output)")
      let listed = try await lock("list")
      #expect(listed.status == 0 && listed.output.contains("orders  group default"), "\(listed.output)")
      let overview = try await cluster.runCLI(["status"] + target)
      #expect(
        overview.status == 0 && overview.output.contains("locks: 1 held or waited for, 1 holders, 0 waiters"),
        "\(overview.output)")
      // Each member's row ends in the peer messages it refused as impossible from an honest peer: none here.
      #expect(overview.output.contains("lag   refused"), "\(overview.output)")
      let leaderRow = overview.output.split(separator: "\n").first {
        $0.split(separator: " ").dropFirst(2).first == "leader"
      }
      #expect(leaderRow?.split(separator: " ").last == "0", "\(overview.output)")

      // A release with another token, or by another session, is refused and changes nothing.
      let wrongToken = try await lock(
        "release", "orders", "--session", "\(session)", "--token", "t\(token.rawValue + 1)")
      #expect(wrongToken.status == 3, "\(wrongToken.output)")
      let wrongSession = try await lock("release", "orders", "--session", "s\(session.rawValue + 1000)")
      #expect(wrongSession.status == 3, "\(wrongSession.output)")
      #expect(try await admin.locks.status(of: "orders")?.holders.map(\.session) == [session])

      let released = try await lock("release", "orders", "--session", "\(session)")
      #expect(released.status == 0 && released.output.contains("released orders"), "\(released.output)")
      let again = try await lock("release", "orders", "--session", "\(session)", "--token", "\(token)")
      #expect(again.status == 3, "\(again.output)")

      // A waiting acquire is granted when the holder releases, with a larger token.
      let held = try await admin.locks.lock("orders", ttl: .seconds(30))
      async let waiting = lock("acquire", "orders", "--wait", "30", "--ttl", "5")
      try await poll("the command to queue for orders") {
        (try await admin.locks.status(of: "orders"))?.waiters.count == 1
      }
      #expect(try await admin.locks.unlock(held))
      let handed = try await waiting
      #expect(handed.status == 0, "\(handed.output)")
      let (handedToken, _) = try #require(Self.grant(in: handed.output), "\(handed.output)")
      #expect(handedToken > held.token && held.token > token)

      await admin.close()
      passed = await cluster.stopAll().isEmpty
    } catch {
      await cluster.stopAll()
      Issue.record("\(error)\nlogs:\n\(cluster.logs.suffix(6000))")
    }
  }

  @Test("quorum lock acquire --hold keeps the lease alive past its TTL and releases it on SIGINT")
  func holdUntilInterrupted() async throws {
    let cluster = try ProcessCluster(name: "lockhold", size: 3)
    var passed = false
    defer { if passed { cluster.removeFiles() } }
    do {
      try await cluster.start()
      let admin = TCPKVClient(
        cluster: cluster.name, members: Array(cluster.addresses.values), options: Workload.options(),
        credential: cluster.credential)
      _ = try await cluster.leader(client: admin)
      let holder = try ServeProcess(
        id: 99,
        arguments: [
          "lock", "acquire", "sem", "--permits", "2", "--ttl", "2", "--hold", "--cluster-file", cluster.clusterFile,
          "--credential", "admin:\(cluster.adminKeyFile)",
        ], stderrPath: "\(cluster.directory)/hold.err")
      try await poll("the holder to report its grant") { holder.stdout.value.contains("holding sem") }
      let (token, session) = try #require(Self.grant(in: holder.stdout.value), "\(holder.stdout.value)")
      // More than two TTLs later the session is still alive: the process renews it.
      let before = try #require(try await admin.locks.status(of: "sem")?.holders.first)
      try await Task.sleep(for: .seconds(4.5))
      let after = try #require(try await admin.locks.status(of: "sem")?.holders.first, "\(holder.stdout.value)")
      #expect(after.session == session && after.token == token)
      #expect(after.sessionExpiresAtMillis >= before.sessionExpiresAtMillis + 3_000)
      holder.kill(SIGINT)
      #expect(await holder.waitForExit(timeout: .seconds(20)))
      #expect(holder.process.terminationStatus == 0, "\(holder.stdout.value)\(holder.stderr)")
      #expect(holder.stdout.value.contains("released sem (\(token))"), "\(holder.stdout.value)")
      #expect(try await admin.locks.status(of: "sem") == nil)
      await admin.close()
      passed = await cluster.stopAll().isEmpty
    } catch {
      await cluster.stopAll()
      Issue.record("\(error)\nlogs:\n\(cluster.logs.suffix(6000))")
    }
  }

  /// The token and session of a `granted NAME MODE token T session S` line.
  static func grant(in output: String) -> (FencingToken, LockSessionID)? {
    for line in output.split(separator: "\n") where line.hasPrefix("granted ") {
      let words = line.split(separator: " ")
      guard let t = words.firstIndex(of: "token"), let s = words.firstIndex(of: "session"), s + 1 < words.count,
        let token = UInt64(words[t + 1].dropFirst()), let session = UInt64(words[s + 1].dropFirst())
      else { return nil }
      return (FencingToken(token), LockSessionID(session))
    }
    return nil
  }
}
