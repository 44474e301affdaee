import Foundation
import Quorum
import Testing

@Suite("quorum serve: descriptors and signals", .serialized, .timeLimit(.minutes(3)))
struct ServeLifecycleTests {
  @Test("serve raises its soft open-file limit to the hard limit when it starts")
  func raisesOpenFileLimit() async throws {
    let hard = try #require(OpenFileLimit.current()?.hard)
    try #require(hard > 256, "the hard limit (\(hard)) leaves nothing to raise")
    let cluster = try ProcessCluster(name: "nofile", size: 1)
    defer { cluster.removeFiles() }
    let member = try ServeProcess(
      id: 1,
      arguments: [
        "serve", "--id", "n1", "--listen", "127.0.0.1:0", "--peers", "", "--data", "\(cluster.directory)/d",
        "--insecure",
      ],
      stderrPath: "\(cluster.directory)/n1.log",
      launcher: ["/bin/sh", "-c", "ulimit -S -n 256 && exec \"$@\"", "sh"])
    _ = try await member.listeningAddress()
    let limits = try String(contentsOfFile: "/proc/\(member.process.processIdentifier)/limits", encoding: .utf8)
    let line = try #require(limits.split(separator: "\n").first { $0.hasPrefix("Max open files") })
    let numbers = line.split(separator: " ").compactMap { UInt64($0) }
    #expect(numbers.count == 2 && numbers[0] == numbers[1] && numbers[1] == hard, "\(line)")
    #expect(member.stderr.contains("raised the open-file limit from 256 to \(hard)"), "\(member.stderr)")
    member.kill(SIGTERM)
    #expect(await member.waitForExit(timeout: .seconds(10)))
  }

  @Test("the first SIGTERM shuts down gracefully (waiting for a watch in flight); a second one exits at once")
  func secondSignalForcesExit() async throws {
    let cluster = try ProcessCluster(name: "signals", size: 1)
    defer { cluster.removeFiles() }
    try await cluster.start()
    let member = try #require(cluster.member(1))
    let address = try #require(cluster.addresses[1])
    let client = TCPRequestClient(cluster: cluster.name, credential: cluster.credential, logger: .disabled)
    // A watch that nothing will answer for 30 s: a graceful shutdown answers the requests it took, so it waits.
    let watch = HostRequest.watch(
      group: .default, service: "locks", key: "never", after: 1 << 40, timeoutMillis: 30_000)
    // The connection first, so that the watch's frame is the next one the client sends.
    _ = try await client.request(HostRequest.status(group: nil).wireBytes(), to: address, timeout: .seconds(30))
    let sentBefore = client.metrics.framesSent
    let held = Task { try? await client.request(watch.wireBytes(), to: address, timeout: .seconds(60)) }
    let sendDeadline = ContinuousClock.now.advanced(by: .seconds(30))
    while client.metrics.framesSent == sentBefore, ContinuousClock.now < sendDeadline {
      try await Task.sleep(for: .milliseconds(1))
    }
    // Requests on one connection are taken in order: once this one is answered, the watch has been taken.
    _ = try await client.request(HostRequest.status(group: nil).wireBytes(), to: address, timeout: .seconds(30))

    member.kill(SIGTERM)
    let deadline = ContinuousClock.now.advanced(by: .seconds(30))
    while !member.stderr.contains("shutting down"), ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(10))
    }
    #expect(member.stderr.contains("again to exit at once"), "\(member.stderr)")
    member.kill(SIGTERM)
    guard await member.waitForExit(timeout: .seconds(10)) else {
      Issue.record("a second signal did not end the process: \(member.stderr)")
      member.kill(SIGKILL)
      _ = await member.waitForExit(timeout: .seconds(10))
      held.cancel()
      await client.close()
      return
    }
    #expect(member.process.terminationStatus == 128 + SIGTERM, "\(member.stderr)")
    #expect(member.stderr.contains("exiting at once"), "\(member.stderr)")
    held.cancel()
    await client.close()
  }

  @Test("serve keeps its groups in a shared log by default, refuses the other layout on that directory, and says why")
  func logLayoutIsChosenAndKept() async throws {
    let cluster = try ProcessCluster(name: "layout", size: 1)
    defer { cluster.removeFiles() }
    try await cluster.start()
    let data = "\(cluster.directory)/n1"
    // While the member serves, its directory is locked: forget-group refuses to touch it.
    let locked = try await cluster.runCLI(["forget-group", "--data", data, "--group", "0"])
    #expect(locked.status == 1 && locked.output.contains("is locked by another process"), "\(locked.output)")
    _ = await cluster.stopAll()
    #expect(FileManager.default.fileExists(atPath: "\(data)/shared-log/wal"), "a new data directory gets a shared log")
    #expect(!FileManager.default.fileExists(atPath: "\(data)/wal"))
    let serve = [
      "serve", "--id", "n1", "--listen", "127.0.0.1:0", "--cluster-file", cluster.clusterFile, "--data", data,
      "--secret-file", cluster.secretFile,
    ]
    let refused = try await cluster.runCLI(serve + ["--log-layout", "per-group"])
    #expect(refused.status != 0)
    #expect(refused.output.contains("shared log"), "\(refused.output)")
    let unknown = try await cluster.runCLI(serve + ["--log-layout", "sideways"])
    #expect(unknown.status != 0)
    #expect(unknown.output.contains("--log-layout sideways: expected shared or per-group"), "\(unknown.output)")

    // Offline, a group's records and snapshots can be erased from the shared log (here the only group, at the
    // end of the test); a second time there is nothing left of it.
    let usage = try await cluster.runCLI(["forget-group", "--data", data, "--group", "first"])
    #expect(usage.status == 2 && usage.output.contains("expected a group number"), "\(usage.output)")
    let forgot = try await cluster.runCLI(["forget-group", "--data", data, "--group", "0"])
    #expect(forgot.status == 0 && forgot.output.contains("forgot group 0"), "\(forgot.output)")
    let again = try await cluster.runCLI(["forget-group", "--data", data, "--group", "0"])
    #expect(again.status == 0 && again.output.contains("group 0 has nothing"), "\(again.output)")
  }
}
