import Foundation
import Quorum
import QuorumSimulation
import Synchronization
import Testing

/// A flag the load generator polls.
final class StopFlag: Sendable {
  private let value = Atomic<Bool>(false)
  func set() { value.store(true, ordering: .releasing) }
  var isSet: Bool { value.load(ordering: .acquiring) }
}

/// Closed-loop clients doing puts, linearizable gets and compare-and-swaps on a few keys, recording
/// every operation for the linearizability checker.
enum Workload {
  static let keys = ["k0", "k1", "k2", "k3"]

  static func options() -> HostClientOptions {
    var options = HostClientOptions()
    options.deadline = .seconds(60)  // About a minute: enough to ride out an election on a loaded machine.
    options.attemptTimeout = .seconds(1)
    options.minBackoff = .milliseconds(10)
    return options
  }

  /// Runs until `stop` is set; returns the number of operations that completed with an answer.
  static func run(
    client index: Int, addresses: [TCPAddress], cluster: ClusterID, credential: TCPClientCredential,
    recorder: KVHistoryRecorder, stop: StopFlag
  ) async -> Int {
    let client = TCPKVClient(
      cluster: cluster, members: addresses, options: options(), seed: UInt64(index + 1), credential: credential)
    var random = SeededRandom(seed: UInt64(1000 + index))
    var operations = RecordedOperations(client: client, index: index, recorder: recorder)
    var n = 0
    while !stop.isSet {
      // A short pause between operations keeps the load (and the history to check) modest: these tests
      // share two cores with the rest of the suite.
      try? await Task.sleep(for: .milliseconds(2))
      n += 1
      let key = keys[Int(random.next() % UInt64(keys.count))]
      let value = "c\(index)-\(n)"
      switch random.next() % 10 {
      case 0..<4: await operations.put(key, value)
      case 4..<8: await operations.get(key)
      default: await operations.compareAndSwap(key, new: value)
      }
    }
    await client.close()
    return operations.completed
  }
}

/// One client's puts, linearizable gets and compare-and-swaps, each recorded for the linearizability checker:
/// a failed get as failed, a failed put or compare-and-swap as unknown (it may have taken effect).
struct RecordedOperations {
  let client: TCPKVClient
  let index: Int
  let recorder: KVHistoryRecorder
  /// The value this client last wrote or read at each key: what its compare-and-swaps expect.
  var lastSeen: [String: String] = [:]
  /// How many operations completed with an answer.
  var completed = 0

  mutating func put(_ key: String, _ value: String) async {
    let op = recorder.invoke(client: index, .put(key: key, value: value))
    do {
      try await client.put(key, value)
      recorder.complete(op, .ok)
      lastSeen[key] = value
      completed += 1
    } catch {
      recorder.markUnknown(op)
    }
  }

  mutating func get(_ key: String) async {
    let op = recorder.invoke(client: index, .get(key: key))
    do {
      let read = try await client.get(key).map { String(decoding: $0, as: UTF8.self) }
      recorder.complete(op, .value(read))
      lastSeen[key] = read
      completed += 1
    } catch {
      recorder.markFailed(op)
    }
  }

  mutating func compareAndSwap(_ key: String, new value: String) async {
    let expected = lastSeen[key]
    let op = recorder.invoke(client: index, .compareAndSwap(key: key, expected: expected, new: value))
    do {
      let swapped = try await client.compareAndSwap(
        key, expected: expected.map { Array($0.utf8) }, new: Array(value.utf8)
      ).swapped
      recorder.complete(op, .swapped(swapped))
      if swapped { lastSeen[key] = value }
      completed += 1
    } catch {
      recorder.markUnknown(op)
    }
  }
}

@Suite("Multi-process clusters of quorum serve on loopback", .serialized, .timeLimit(.minutes(3)))
struct MultiProcessTests {
  @Test(
    "kill -9 the leader under a write load, restart it: no acknowledged write is lost, the history is linearizable",
    arguments: [3, 5])
  func killLeaderUnderLoad(size: Int) async throws {
    let cluster = try ProcessCluster(name: ClusterID(rawValue: "it\(size)"), size: size)
    var passed = false
    defer { if passed { cluster.removeFiles() } }
    do {
      try await exercise(cluster)
      let stubborn = await cluster.stopAll()
      #expect(stubborn.isEmpty, "members that ignored SIGTERM: \(stubborn)")
      for id in cluster.ids {
        #expect(cluster.member(id)?.stdout.value.contains("\(id) stopped") == true, "\(id) did not stop gracefully")
      }
      passed = stubborn.isEmpty
    } catch {
      await cluster.stopAll()
      Issue.record("\(error)\nlogs:\n\(cluster.logs.suffix(6000))")
    }
  }

  private func exercise(_ cluster: ProcessCluster) async throws {
    try await cluster.start()
    let admin = TCPKVClient(
      cluster: cluster.name, members: Array(cluster.addresses.values), options: Workload.options(),
      credential: cluster.credential)
    let first = try await cluster.leader(client: admin)

    // Hostile bytes at a member close only that connection, with a log line naming the reason.
    let target = try #require(cluster.addresses[first])
    try sendGarbage(to: target)
    try await poll("the garbage to be logged") {
      cluster.member(first)?.stderr.contains("reason=frame-too-large") == true
    }

    let recorder = KVHistoryRecorder()
    let stop = StopFlag()
    let addresses = cluster.ids.compactMap { cluster.addresses[$0] }
    let name: ClusterID = cluster.name
    let credential = cluster.credential
    let load = Task {
      await withTaskGroup(of: Int.self) { group in
        for index in 0..<3 {
          group.addTask {
            await Workload.run(
              client: index, addresses: addresses, cluster: name, credential: credential, recorder: recorder, stop: stop
            )
          }
        }
        return await group.reduce(0, +)
      }
    }
    // Each phase lasts until the clients have completed some operations in it, however slow the machine.
    func answered() -> Int { recorder.history.operations.filter { $0.output != nil }.count }
    try await poll("20 operations answered before the crash", timeout: .seconds(60)) { answered() >= 20 }
    let beforeCrash = answered()
    try await cluster.crash(first)
    let second = try await cluster.leader(client: admin)
    #expect(second != first)
    try await poll("10 operations answered after the crash", timeout: .seconds(60)) { answered() >= beforeCrash + 10 }
    let beforeRestart = answered()
    try await cluster.restart(first)
    try await poll("10 operations answered after the restart", timeout: .seconds(60)) {
      answered() >= beforeRestart + 10
    }
    stop.set()
    let completed = await load.value
    let afterRestart = recorder.history.operations.filter { $0.output != nil }.count - beforeCrash

    // Final linearizable reads of every key, part of the checked history.
    let reader = TCPKVClient(
      cluster: cluster.name, members: Array(cluster.addresses.values), options: Workload.options(), seed: 99,
      credential: cluster.credential)
    for key in Workload.keys {
      let op = recorder.invoke(client: 100, .get(key: key))
      let value = try await reader.get(key).map { String(decoding: $0, as: UTF8.self) }
      recorder.complete(op, .value(value))
    }
    await reader.close()

    let history = recorder.history
    #expect(completed > 20, "only \(completed) operations completed")
    #expect(afterRestart > 0, "no operation completed after the crash")
    let result = await checkOffThePool(history)
    switch result.verdict {
    case .linearizable: break
    case .notLinearizable(let violation):
      Issue.record("not linearizable: \(violation)")
    case .unknown(let partition):
      Issue.record("the checker ran out of budget on \(partition) (\(result.stats))")
    }

    // The restarted member catches up with the leader.
    let leader = try await cluster.leader(client: admin)
    let commit = try #require(try await admin.status(of: leader).first).commitIndex
    try await poll("the restarted \(first) to apply index \(commit)") {
      (try? await admin.status(of: first).first?.appliedIndex).map { $0 >= commit } ?? false
    }

    // The command-line client works against the same cluster.
    let put = try await cluster.runCLI(["kv", "put", "cli", "yes", "--cluster-file", cluster.clusterFile])
    #expect(put.status == 0, "\(put.output)")
    let get = try await cluster.runCLI(["kv", "get", "cli", "--cluster-file", cluster.clusterFile])
    #expect(get.status == 0 && get.output.contains("yes"), "\(get.output)")
    let status = try await cluster.runCLI(["status", "--cluster-file", cluster.clusterFile])
    #expect(status.status == 0 && status.output.contains("leader n"), "\(status.output)")
    await admin.close()
  }

  @Test("quorum members adds a joining member as a learner, promotes it, and removes a founder")
  func membershipThroughTheCLI() async throws {
    let cluster = try ProcessCluster(name: "members", size: 4)
    var passed = false
    defer { if passed { cluster.removeFiles() } }
    do {
      try await cluster.start(founders: 3)
      let admin = TCPKVClient(
        cluster: cluster.name, members: Array(cluster.addresses.values), options: Workload.options(),
        credential: cluster.credential)
      _ = try await cluster.leader(client: admin)
      try await admin.put("before", "n4")
      try await cluster.join(4)
      let file = cluster.clusterFile
      let add = try await cluster.runCLI(["members", "add", "n4", "--cluster-file", file])
      #expect(add.status == 0, "\(add.output)")
      try await poll("n4 to replicate the log as a learner") {
        (try? await admin.get("before", consistency: .stale, at: 4)) == Array("n4".utf8)
      }
      let promote = try await cluster.runCLI(["members", "promote", "n4", "--cluster-file", file])
      #expect(promote.status == 0, "\(promote.output)")
      let remove = try await cluster.runCLI(["members", "remove", "n1", "--cluster-file", file])
      #expect(remove.status == 0, "\(remove.output)")
      try await poll("the voters to become n2, n3, n4") {
        let leader = try? await cluster.leader(client: admin, timeout: .seconds(5))
        guard let leader else { return false }
        return (try? await admin.status(of: leader).first?.voters) == [2, 3, 4]
      }
      try await admin.put("after", "removal")
      let status = try await cluster.runCLI(["status", "--cluster-file", file])
      #expect(status.status == 0 && status.output.contains("voters n2,n3,n4"), "\(status.output)")
      // The removed founder is shown as removed, not as a follower whose lag is unknown.
      let n1Rows = status.output.split(separator: "\n").filter { $0.hasPrefix("n1 ") }
      #expect(n1Rows.count == 1 && n1Rows.allSatisfy { $0.contains("removed") }, "\(status.output)")
      await admin.close()
      let stubborn = await cluster.stopAll()
      #expect(stubborn.isEmpty)
      passed = stubborn.isEmpty
    } catch {
      await cluster.stopAll()
      Issue.record("\(error)\nlogs:\n\(cluster.logs.suffix(6000))")
    }
  }

  @Test("serve reports a busy port, a bad cluster file and a missing member clearly; kv reports an unreachable cluster")
  func clearErrors() async throws {
    let cluster = try ProcessCluster(name: "errors", size: 1)
    defer { cluster.removeFiles() }
    // A listener holds a port; serve must say it is in use.
    let holder = TCPTransport<ConformanceMessage>(
      cluster: "errors", protocolNumber: WireProtocol.test, security: .insecure, logger: .disabled)
    let held = try await holder.bind(1)
    let busy = try await cluster.runCLI([
      "serve", "--id", "n1", "--listen", held.address.description, "--peers", "", "--data", "\(cluster.directory)/d",
      "--insecure",
    ])
    #expect(busy.status == 1)
    #expect(busy.output.contains("already in use"), "\(busy.output)")
    await held.close()

    let bad = "\(cluster.directory)/bad.json"
    try Data("{\"cluster\": \"x\", \"members\": {\"n1\": \"nowhere\"}}".utf8).write(to: URL(fileURLWithPath: bad))
    let badFile = try await cluster.runCLI(["serve", "--id", "n1", "--cluster-file", bad, "--insecure"])
    #expect(badFile.status == 2)
    #expect(badFile.output.contains("bad cluster file"), "\(badFile.output)")

    let missing = try await cluster.runCLI([
      "serve", "--id", "n1", "--cluster-file", "\(cluster.directory)/none.json", "--insecure",
    ])
    #expect(missing.status == 2)
    #expect(missing.output.contains("cannot read the cluster file"), "\(missing.output)")

    // Nothing listens on a port just released: the client gives up with the reason.
    let unreachable = try await cluster.runCLI([
      "kv", "get", "k", "--cluster", held.address.description, "--timeout-ms", "200",
    ])
    #expect(unreachable.status == 1)
    #expect(
      unreachable.output.contains("deadline passed") && unreachable.output.contains("cannot reach"),
      "\(unreachable.output)")
  }
}

/// Runs the linearizability checker on a thread of its own: it is CPU-bound, and the cooperative pool (two
/// threads here) is shared with every other test.
func checkOffThePool(_ history: KVHistory) async -> LinearizabilityResult<String> {
  let box = UncheckedBox(history)
  return await withCheckedContinuation { continuation in
    let thread = Thread {
      continuation.resume(returning: box.value.checkLinearizability(maxStatesExplored: 5_000_000))
    }
    thread.stackSize = 8 << 20
    thread.start()
  }
}

/// Carries a value that is only read after being handed over (the history is a snapshot copy).
final class UncheckedBox<Value>: @unchecked Sendable {
  // Safety of @unchecked Sendable: `value` is immutable and handed to exactly one other thread.
  let value: Value
  init(_ value: Value) { self.value = value }
}

/// Polls `condition` until it holds, at most `timeout`.
func poll(_ what: String, timeout: Duration = .seconds(20), _ condition: () async throws -> Bool) async throws {
  let deadline = ContinuousClock.now.advanced(by: timeout)
  while try await !condition() {
    if ContinuousClock.now > deadline { throw HarnessError("timed out after \(timeout) waiting for \(what)") }
    try await Task.sleep(for: .milliseconds(20))
  }
}

/// Connects to `address`, writes an oversized length prefix and garbage, and closes.
func sendGarbage(to address: TCPAddress) throws {
  let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  guard fd >= 0 else { throw HarnessError("socket failed") }
  defer { close(fd) }
  var sin = sockaddr_in()
  sin.sin_family = sa_family_t(AF_INET)
  sin.sin_port = address.port.bigEndian
  inet_pton(AF_INET, address.host, &sin.sin_addr)
  let connected = withUnsafePointer(to: &sin) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
  }
  guard connected == 0 else { throw HarnessError("connect to \(address) failed: errno \(errno)") }
  let garbage: [UInt8] = [0xFF, 0xFF, 0xFF, 0x7F] + [UInt8](repeating: 0x5A, count: 60)
  _ = garbage.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
}
