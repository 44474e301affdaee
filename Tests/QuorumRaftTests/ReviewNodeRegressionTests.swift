import QuorumCore
import QuorumKV
import QuorumRaft
import QuorumStorage
import Synchronization
import Testing

final class Counter: Sendable {
  let value = Atomic<Int>(0)
}

/// Memory storage whose writes wait while a gate is closed (a slow disk).
final class GatedStorage: ConsensusStorage {
  let inner = MemoryStorage<LogEntry>()
  private let gate = Mutex<(closed: Bool, waiters: [UnsafeContinuation<Void, Never>])>((false, []))

  func closeGate() { gate.withLock { $0.closed = true } }
  func openGate() {
    let waiters = gate.withLock { g in
      g.closed = false
      defer { g.waiters = [] }
      return g.waiters
    }
    for waiter in waiters { waiter.resume() }
  }

  func recover() async throws -> RecoveredState<LogEntry> { try await inner.recover() }
  func write(_ write: StorageWrite<LogEntry>) async throws {
    await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
      let wait = gate.withLock { g in
        if g.closed { g.waiters.append(continuation) }
        return g.closed
      }
      if !wait { continuation.resume() }
    }
    try await inner.write(write)
  }
  func saveSnapshot(_ snapshot: StoredSnapshot, discardingLog: Bool) async throws {
    try await inner.saveSnapshot(snapshot, discardingLog: discardingLog)
  }
  func compact(through index: UInt64) async throws { try await inner.compact(through: index) }
  func close() async throws { try await inner.close() }
}

@Suite("Review regressions: RaftNode", .timeLimit(.minutes(1)))
struct ReviewNodeRegressionTests {
  @Test("ticks that queued during a slow write do not cut short the vote refusal after a leader's heartbeat")
  func queuedTicksDoNotShortenTheLease() async throws {
    let configuration = try LiveCluster.fast(members: [1, 2, 3])
    let transport = InProcessTransport<RaftMessage>()
    let storage = GatedStorage()
    let node = RaftNode(
      id: 1, configuration: configuration, endpoint: try transport.bind(1), storage: storage, machine: KVStore(),
      seed: 1, logger: QuorumLogger(label: "raft", sink: NullLogSink()))
    let leader = try transport.bind(2)
    let candidate = try transport.bind(3)
    let run = Task { try await node.run() }
    try await Task.sleep(for: .milliseconds(10))
    // Leader 2 of term 1 replicates its no-op; node 1's write of it is slow.
    storage.closeGate()
    let noop = LogEntry(index: 2, term: 1, kind: .noop)
    try leader.send(
      .appendEntries(AppendEntries(term: 1, prevLogIndex: 1, prevLogTerm: 0, entries: [noop], commit: 1)), to: 1)
    try await Task.sleep(for: configuration.electionTimeout.upperBound + .milliseconds(30))  // ticks queue up
    try leader.send(.heartbeat(Heartbeat(term: 1, commit: 1, round: 1)), to: 1)
    try await Task.sleep(for: .milliseconds(2))
    storage.openGate()
    try await Task.sleep(for: .milliseconds(10))
    // Node 1 heard from its leader a moment ago: it must ignore a disruptive candidate.
    try candidate.send(
      .requestVote(RequestVote(term: 2, lastLogIndex: 2, lastLogTerm: 1, preVote: false, transfer: false)), to: 1)
    try await Task.sleep(for: .milliseconds(30))
    var received: [Envelope<RaftMessage>] = []
    candidate.incoming.drainAvailable(into: &received)
    let granted = received.contains { envelope in
      if case .voteResponse(let r) = envelope.payload { return r.granted && !r.preVote }
      return false
    }
    #expect(!granted, "node 1 voted for 3 a few milliseconds after acknowledging leader 2's heartbeat")
    node.stop()
    _ = await run.result
  }

  @Test("the lease ends a tick and the drift bound before the follower's vote refusal does")
  func leaseAllowsForTickGranularity() throws {
    for drift in [Duration.milliseconds(5), .milliseconds(15)] {
      let configuration = try RaftConfiguration { LeaseReads(clockDriftBound: drift) }
      let options = configuration.coreOptions
      // A follower refuses votes for the minimum election timeout, in whole ticks, on its monotonic clock.
      let refusal = configuration.tickInterval * options.electionTimeoutMinTicks
      let lease = Duration.nanoseconds(Int64(options.leaseDurationNanos))
      #expect(
        lease + drift + configuration.tickInterval <= refusal, "drift \(drift): lease \(lease), refusal \(refusal)")
    }
  }

  @Test("a request from a task cancelled before it was queued ends with CancellationError, not at its timeout")
  func cancelledBeforeQueued() async throws {
    let configuration = try LiveCluster.fast(members: [1, 2, 3]) { $0.requestTimeout = .seconds(30) }
    let cluster = LiveCluster(configuration: configuration)
    for id: NodeID in [1, 2, 3] { try await cluster.start(id) }
    let leaderID = try await cluster.leader()
    let leader = try #require(await cluster.node(leaderID))
    cluster.transport.isolate(leaderID)  // nothing can commit, so only cancellation can end the request
    let ended = Counter()
    let task = Task {
      withUnsafeCurrentTask { $0?.cancel() }
      defer { ended.value.add(1, ordering: .relaxed) }
      _ = try await leader.propose(.put(key: "k", value: [1]))
    }
    let deadline = ContinuousClock.now.advanced(by: .seconds(2))
    while ended.value.load(ordering: .relaxed) == 0 && ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(10))
    }
    #expect(ended.value.load(ordering: .relaxed) == 1, "the cancelled request was still waiting after 2 s")
    await cluster.stopAll()
    let result = await task.result
    if case .failure(let error) = result { #expect(error is CancellationError, "\(error)") }
  }

  @Test("transferring leadership to the current leader succeeds at once")
  func transferToSelf() async throws {
    let cluster = LiveCluster(configuration: try LiveCluster.fast(members: [1, 2, 3]))
    for id: NodeID in [1, 2, 3] { try await cluster.start(id) }
    let leaderID = try await cluster.leader()
    let leader = try #require(await cluster.node(leaderID))
    let before = await leader.status
    // A transfer that waited for a handover would end in a timeout (after twice the election timeout).
    await #expect(throws: Never.self) { try await leader.transferLeadership(to: leaderID) }
    let after = await leader.status
    #expect(after.role == .leader && after.term == before.term, "no election was triggered")
    await cluster.stopAll()
  }
}
