import QuorumCore
import QuorumKV
import QuorumRaft
import QuorumStorage
import Synchronization
import Testing

/// A configuration in which an isolated leader keeps leading (no check-quorum, so no leases either) and a
/// request it cannot commit waits until something other than its timeout ends it.
func leaderThatNeverStepsDown(members: [NodeID], _ extra: (inout RaftConfiguration) -> Void = { _ in }) throws
  -> RaftConfiguration
{
  try LiveCluster.fast(members: members) {
    $0.checkQuorum = false
    $0.leaseReads = false
    $0.requestTimeout = .seconds(3600)
    extra(&$0)
  }
}

@Suite("RaftNode error paths and the key-value client", .timeLimit(.minutes(2)))
struct RaftNodeErrorTests {
  @Test("a command larger than the limit is refused before it reaches the log")
  func commandTooLarge() async throws {
    let configuration = try LiveCluster.fast(members: [1]) { $0.maxCommandBytes = 256 }
    try await withLiveCluster(configuration, start: [1]) { cluster in
      let node = try await cluster.leader().node
      let lastBefore = await node.status.lastIndex
      let error = await #expect(throws: ConsensusError.self) {
        _ = try await node.propose(.put(key: "big", value: [UInt8](repeating: 1, count: 1024)))
      }
      guard case .commandTooLarge(let bytes, let limit)? = error else {
        Issue.record("expected commandTooLarge, got \(String(describing: error))")
        return
      }
      #expect(bytes > 1024 && limit == 256)
      #expect(await node.status.lastIndex == lastBefore)
    }
  }

  @Test("a leader cut off from its followers times out requests instead of hanging, then steps down")
  func isolatedLeaderTimesOut() async throws {
    let configuration = try LiveCluster.fast(members: [1, 2, 3]) { $0.requestTimeout = .milliseconds(300) }
    try await withLiveCluster(configuration, start: [1, 2, 3]) { cluster in
      let leader = try await cluster.isolateLeader()
      // A hang would end at the suite's time limit, a failure too; no elapsed time is asserted.
      do {
        _ = try await leader.node.propose(.put(key: "lost", value: [1]))
        Issue.record("an isolated leader committed a write")
      } catch let error as ConsensusError {
        // Either it noticed first (check-quorum) or the request timed out; both are typed.
        switch error {
        case .timeout, .notLeader, .dropped, .outcomeUnknown: break
        default: Issue.record("unexpected \(error)")
        }
      }
      #expect(await leader.node.status.pendingRequests == 0, "nothing is left waiting")
      // Check-quorum: a leader that hears from no follower for an election timeout stops leading.
      try await eventually("the isolated leader to step down") { await leader.node.status.role != .leader }
    }
  }

  @Test("cancelling a waiting request ends it with CancellationError")
  func cancellation() async throws {
    try await withLiveCluster(try leaderThatNeverStepsDown(members: [1, 2, 3]), start: [1, 2, 3]) { cluster in
      let leader = try await cluster.isolateLeader()  // nothing can commit now, so the request waits
      let node = leader.node
      let task = Task { try await node.propose(.put(key: "k", value: [1])) }
      try await eventually("the request to wait on the isolated leader") { await node.status.pendingRequests == 1 }
      task.cancel()
      switch await task.result {
      case .failure(let error):
        #expect(error is CancellationError, "\(error)")
      case .success:
        Issue.record("a write committed on an isolated leader")
      }
      #expect(await node.status.pendingRequests == 0, "the cancelled request is forgotten")
      #expect(await node.status.role == .leader)
    }
  }

  @Test("more waiting requests than the limit are refused with overloaded")
  func overloaded() async throws {
    let configuration = try leaderThatNeverStepsDown(members: [1, 2, 3]) { $0.maxPendingRequests = 8 }
    try await withLiveCluster(configuration, start: [1, 2, 3]) { cluster in
      let leader = try await cluster.isolateLeader()  // nothing can commit: the first 8 requests wait for good
      let node = leader.node
      let refused = Counter()
      let requests = (0..<40).map { i in
        Task { () -> ConsensusError? in
          do {
            _ = try await node.propose(.put(key: "k\(i)", value: [1]))
            return nil
          } catch let error as ConsensusError {
            if case .overloaded = error { refused.increment() }
            return error
          }
        }
      }
      try await eventually("32 requests refused and 8 waiting") {
        let pending = await node.status.pendingRequests
        return refused.value == 32 && pending == 8
      }
      await cluster.stop(leader.id)  // the 8 waiting requests end now
      var outcomes: [String: Int] = [:]
      for request in requests {
        switch try await request.value {
        case .overloaded(limit: 8)?: outcomes["overloaded", default: 0] += 1
        case .stopped?: outcomes["stopped", default: 0] += 1
        case let other: outcomes["\(other.map { "\($0)" } ?? "committed")", default: 0] += 1
        }
      }
      #expect(outcomes == ["overloaded": 32, "stopped": 8], "\(outcomes)")
    }
  }

  @Test("the event stream reports role and leader changes, then the stop, and finishes")
  func events() async throws {
    try await withLiveCluster(try LiveCluster.fast(members: [1]), start: []) { cluster in
      let events = try await cluster.start(1)
      _ = try await cluster.leader()
      await cluster.stop(1)
      var seen: [RaftEvent] = []
      for await event in events { seen.append(event) }  // finite: the stream finishes when the node stops
      #expect(seen.contains { if case .roleChanged(.leader, _) = $0 { true } else { false } }, "\(seen)")
      #expect(seen.contains { if case .leaderChanged(1?, _) = $0 { true } else { false } }, "\(seen)")
      #expect(seen.last == .stopped, "\(seen)")
    }
  }

  @Test("KVClient finds the leader, follows redirects, and its retried writes apply exactly once across a failover")
  func clientExactlyOnceAcrossFailover() async throws {
    try await withLiveCluster(try LiveCluster.fast(members: [1, 2, 3]), start: [1, 2, 3]) { cluster in
      _ = try await cluster.leader()
      let client = KVClient(members: await cluster.nodes, retry: RetryPolicy(maxAttempts: 200), seed: 3)
      // A counter incremented with compare-and-swap: a write applied twice would skip a number.
      var value = 0
      for step in 0..<30 {
        if step == 10 { await cluster.stop(try await cluster.leader().id) }
        let next = value + 1
        let swapped = try await client.compareAndSwap(
          "counter", expected: value == 0 ? nil : Array("\(value)".utf8), new: Array("\(next)".utf8)
        ).swapped
        #expect(swapped, "step \(step)")
        value = next
      }
      #expect(try await client.get("counter") == Array("30".utf8))
      let scanned = try await client.scan(prefix: "count")
      #expect(scanned.map(\.key) == ["counter"])
    }
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
    try await eventually("the single node to lead") { await node.status.role == .leader }
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
