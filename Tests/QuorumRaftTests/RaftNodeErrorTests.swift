import QuorumCore
import QuorumKV
import QuorumRaft
import QuorumStorage
import Synchronization
import Testing

@Suite("RaftNode error paths and the key-value client", .timeLimit(.minutes(2)))
struct RaftNodeErrorTests {
  @Test("a command larger than the limit is refused before it reaches the log")
  func commandTooLarge() async throws {
    let configuration = try LiveCluster.fast(members: [1]) { $0.maxCommandBytes = 256 }
    let cluster = LiveCluster(configuration: configuration)
    try await cluster.start(1)
    let node = try #require(await cluster.node(try await cluster.leader()))
    let lastBefore = await node.status.lastIndex
    await #expect(throws: ConsensusError.self) {
      _ = try await node.propose(.put(key: "big", value: [UInt8](repeating: 1, count: 1024)))
    }
    do {
      _ = try await node.propose(.put(key: "big", value: [UInt8](repeating: 1, count: 1024)))
    } catch let error as ConsensusError {
      guard case .commandTooLarge(let bytes, let limit) = error else {
        Issue.record("expected commandTooLarge, got \(error)")
        return
      }
      #expect(bytes > 1024 && limit == 256)
    }
    #expect(await node.status.lastIndex == lastBefore)
    await cluster.stopAll()
  }

  @Test("a leader cut off from its followers times out requests instead of hanging, then steps down")
  func isolatedLeaderTimesOut() async throws {
    let configuration = try LiveCluster.fast(members: [1, 2, 3]) { $0.requestTimeout = .milliseconds(300) }
    let cluster = LiveCluster(configuration: configuration)
    for id: NodeID in [1, 2, 3] { try await cluster.start(id) }
    let leaderID = try await cluster.leader()
    let leader = try #require(await cluster.node(leaderID))
    cluster.transport.isolate(leaderID)
    let started = ContinuousClock.now
    do {
      _ = try await leader.propose(.put(key: "lost", value: [1]))
      Issue.record("an isolated leader committed a write")
    } catch let error as ConsensusError {
      // Either it noticed first (check-quorum) or the request timed out; both are typed and prompt.
      switch error {
      case .timeout, .notLeader, .dropped, .outcomeUnknown: break
      default: Issue.record("unexpected \(error)")
      }
    }
    #expect(ContinuousClock.now - started < .seconds(3))
    await cluster.stopAll()
  }

  @Test("cancelling a waiting request ends it with CancellationError")
  func cancellation() async throws {
    let configuration = try LiveCluster.fast(members: [1, 2, 3]) { $0.requestTimeout = .seconds(30) }
    let cluster = LiveCluster(configuration: configuration)
    for id: NodeID in [1, 2, 3] { try await cluster.start(id) }
    let leaderID = try await cluster.leader()
    let leader = try #require(await cluster.node(leaderID))
    cluster.transport.isolate(leaderID)  // Nothing can commit now, so the request waits.
    let task = Task { try await leader.propose(.put(key: "k", value: [1])) }
    try await Task.sleep(for: .milliseconds(20))
    task.cancel()
    let result = await task.result
    switch result {
    case .failure(let error):
      #expect(error is CancellationError, "\(error)")
    case .success:
      Issue.record("a write committed on an isolated leader")
    }
    await cluster.stopAll()
  }

  @Test("more waiting requests than the limit are refused with overloaded")
  func overloaded() async throws {
    let configuration = try LiveCluster.fast(members: [1, 2, 3]) {
      $0.maxPendingRequests = 8
      $0.requestTimeout = .milliseconds(500)
    }
    let cluster = LiveCluster(configuration: configuration)
    for id: NodeID in [1, 2, 3] { try await cluster.start(id) }
    let leaderID = try await cluster.leader()
    let leader = try #require(await cluster.node(leaderID))
    cluster.transport.isolate(leaderID)
    let outcomes = await withTaskGroup(of: Bool.self) { group in
      for i in 0..<40 {
        group.addTask {
          do {
            _ = try await leader.propose(.put(key: "k\(i)", value: [1]))
            return false
          } catch let error as ConsensusError {
            if case .overloaded = error { return true }
            return false
          } catch {
            return false
          }
        }
      }
      var refused = 0
      for await overloaded in group where overloaded { refused += 1 }
      return refused
    }
    #expect(outcomes >= 40 - 8, "at most 8 requests may wait; \(outcomes) were refused")
    await cluster.stopAll()
  }

  @Test("the event stream reports role and leader changes")
  func events() async throws {
    let cluster = LiveCluster(configuration: try LiveCluster.fast(members: [1]))
    try await cluster.start(1)
    let node = try #require(await cluster.node(1))
    var sawLeader = false
    for await event in node.events {
      if case .roleChanged(.leader, _) = event {
        sawLeader = true
        break
      }
    }
    #expect(sawLeader)
    await cluster.stopAll()
  }

  @Test("KVClient finds the leader, follows redirects, and its retried writes apply exactly once across a failover")
  func clientExactlyOnceAcrossFailover() async throws {
    let cluster = LiveCluster(configuration: try LiveCluster.fast(members: [1, 2, 3]))
    for id: NodeID in [1, 2, 3] { try await cluster.start(id) }
    _ = try await cluster.leader()
    let client = KVClient(members: await cluster.nodes, seed: 3)
    // A counter incremented with compare-and-swap: a write applied twice would skip a number.
    var value = 0
    for step in 0..<30 {
      if step == 10 { await cluster.stop(try await cluster.leader()) }
      let next = value + 1
      let swapped = try await client.compareAndSwap(
        "counter", expected: value == 0 ? nil : Array("\(value)".utf8), new: Array("\(next)".utf8))
      #expect(swapped, "step \(step)")
      value = next
    }
    #expect(try await client.get("counter") == Array("30".utf8))
    let scanned = try await client.scan(prefix: "count")
    #expect(scanned.map(\.key) == ["counter"])
    await cluster.stopAll()
  }
}

/// Memory storage whose writes start failing on demand, like a disk that fills up.
final class FailingStorage: ConsensusStorage, Sendable {
  let inner = MemoryStorage<LogEntry>()
  let failing = Synchronization.Atomic<Bool>(false)

  func recover() async throws -> RecoveredState<LogEntry> { try await inner.recover() }
  func write(_ write: StorageWrite<LogEntry>) async throws {
    if failing.load(ordering: .relaxed) { throw StorageError.io(operation: "write", path: "test", errno: 28) }
    try await inner.write(write)
  }
  func saveSnapshot(_ snapshot: StoredSnapshot, discardingLog: Bool) async throws {
    try await inner.saveSnapshot(snapshot, discardingLog: discardingLog)
  }
  func compact(through index: UInt64) async throws { try await inner.compact(through: index) }
  func close() async throws { try await inner.close() }
}

extension RaftNodeErrorTests {
  @Test("a failing disk stops the node: run() throws and no request is left waiting")
  func storageFailureStopsNode() async throws {
    let storage = FailingStorage()
    let transport = InProcessTransport<RaftMessage>()
    let node = RaftNode(
      id: 1, configuration: try LiveCluster.fast(members: [1]), endpoint: try transport.bind(1), storage: storage,
      machine: KVStore(), logger: QuorumLogger(label: "test", sink: NullLogSink()))
    let running = Task { try await node.run() }
    let deadline = ContinuousClock.now.advanced(by: .seconds(10))
    while await node.status.role != .leader, ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(2))
    }
    _ = try await node.propose(.put(key: "ok", value: [1]))
    storage.failing.store(true, ordering: .relaxed)
    await #expect(throws: ConsensusError.stopped) { _ = try await node.propose(.put(key: "lost", value: [2])) }
    let outcome = await running.result
    guard case .failure(let error) = outcome, case .io(_, _, 28)? = error as? StorageError else {
      Issue.record("run() should rethrow the storage error, got \(outcome)")
      return
    }
    await #expect(throws: ConsensusError.stopped) { _ = try await node.propose(.put(key: "after", value: [3])) }
  }
}
