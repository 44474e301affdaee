import QuorumCore
import QuorumKV
import QuorumRaft
import QuorumStorage
import Synchronization
import Testing

/// Memory storage whose writes wait while a gate is closed (a slow disk).
final class GatedStorage: ConsensusStorage {
  let inner = MemoryStorage<LogEntry>()
  private let gate = Mutex<(closed: Bool, waiters: [UnsafeContinuation<Void, Never>])>((false, []))

  func closeGate() { gate.withLock { $0.closed = true } }
  /// How many writes are waiting at the closed gate.
  var waitingWrites: Int { gate.withLock { $0.waiters.count } }
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

/// Returns once `node` has stepped every message delivered to it before the call and sent whatever they caused.
/// Each stale read is answered in a turn of the node's loop that began after the read was queued: the second
/// one's turn took the messages (they arrived before its turn began), the third one's turn began after that
/// turn had sent its messages.
func barrier<Machine: StateMachine>(_ node: RaftNode<Machine>, query: Machine.Query) async throws {
  for _ in 0..<3 { _ = try await node.read(query, consistency: .stale) }
}

/// Moves `clock` forward by `total`, one tick period at a time, waiting each time until the node's ticker has
/// fired and set its next timer, and, if `node` runs freely, until the node has taken the tick.
func advance(
  _ clock: ManualClock, by total: Duration, every period: Duration, node: RaftNode<KVStore>? = nil
) async throws {
  for _ in 0..<Int(total / period) {
    try await eventually("the ticker to set its timer") { clock.waitingTimers == 1 }
    clock.advance(by: period)
    try await eventually("the ticker to fire and set its next timer") { clock.waitingTimers == 1 }
    if let node { try await barrier(node, query: .get(key: "")) }
  }
}

@Suite("Review regressions: RaftNode", .timeLimit(.minutes(2)))
struct ReviewNodeRegressionTests {
  @Test("ticks that queued during a slow write do not cut short the vote refusal after a leader's heartbeat")
  func queuedTicksDoNotShortenTheLease() async throws {
    let configuration = try LiveCluster.fast(members: [1, 2, 3])
    let tick = configuration.tickInterval
    let transport = InProcessTransport<RaftMessage>()
    let storage = GatedStorage()
    // Node 1's time moves only when the test moves it: what it measures does not depend on the machine's load.
    let clock = ManualClock()
    let node = RaftNode(
      id: 1, configuration: configuration, endpoint: try transport.bind(1), storage: storage, machine: KVStore(),
      runtime: NodeRuntime(clock: clock), seed: 1, logger: QuorumLogger(label: "raft", sink: NullLogSink()))
    let leader = try transport.bind(2)
    let candidate = try transport.bind(3)
    let run = Task { try await node.run() }
    func voteGranted() -> Bool {
      var received: [Envelope<RaftMessage>] = []
      candidate.incoming.drainAvailable(into: &received)
      return received.contains { envelope in
        if case .voteResponse(let r) = envelope.payload { return r.granted && !r.preVote }
        return false
      }
    }
    func askForVote(term: Term) throws {
      try candidate.send(
        .requestVote(RequestVote(term: term, lastLogIndex: 2, lastLogTerm: 1, preVote: false, transfer: false)), to: 1)
    }
    try await eventually("node 1 to recover") { await node.currentStatus != nil }

    // Leader 2 of term 1 replicates its no-op; node 1's write of it is slow.
    storage.closeGate()
    let noop = LogEntry(index: 2, term: 1, kind: .noop)
    try leader.send(
      .appendEntries(AppendEntries(term: 1, prevLogIndex: 1, prevLogTerm: 0, entries: [noop], commit: 1)), to: 1)
    try await eventually("node 1 to be writing the no-op") { storage.waitingWrites == 1 }
    // More than an election timeout passes during the write, and the ticker fires at every period of it.
    try await advance(clock, by: configuration.electionTimeout.upperBound + tick * 6, every: tick)
    try leader.send(.heartbeat(Heartbeat(term: 1, commit: 1, round: 1)), to: 1)
    storage.openGate()
    try await barrier(node, query: .get(key: ""))
    #expect(await node.status.leader == 2)

    // Node 1 heard from its leader a moment ago: it must ignore a disruptive candidate, now and for half an
    // election timeout of ticks after.
    try askForVote(term: 2)
    try await barrier(node, query: .get(key: ""))
    #expect(!voteGranted(), "node 1 voted for 3 right after acknowledging leader 2's heartbeat")
    try await advance(
      clock, by: configuration.electionTimeout.lowerBound / 2, every: tick, node: node)
    try askForVote(term: 2)
    try await barrier(node, query: .get(key: ""))
    #expect(!voteGranted(), "node 1 voted for 3 half an election timeout after leader 2's heartbeat")
    #expect(await node.status.term == 1)

    // The control: once leader 2 has been silent for longer than any election timeout, the vote is granted,
    // so the refusals above were the node's decision, not a vote request lost on the way.
    try await advance(
      clock, by: configuration.electionTimeout.upperBound * 2, every: tick, node: node)
    try askForVote(term: 3)
    try await barrier(node, query: .get(key: ""))
    #expect(voteGranted(), "node 1 refused a vote long after its leader went silent")
    await node.shutdown()
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
    try await withLiveCluster(try leaderThatNeverStepsDown(members: [1, 2, 3]), start: [1, 2, 3]) { cluster in
      // Nothing can commit on an isolated leader and its requests time out only after an hour: only the
      // cancellation can end this one before the suite's time limit fails the test.
      let node = try await cluster.isolateLeader().node
      let task = Task {
        withUnsafeCurrentTask { $0?.cancel() }
        _ = try await node.propose(.put(key: "k", value: [1]))
      }
      switch await task.result {
      case .failure(let error):
        #expect(error is CancellationError, "\(error)")
      case .success:
        Issue.record("a write committed on an isolated leader")
      }
      #expect(await node.status.pendingRequests == 0, "the cancelled request is forgotten")
    }
  }

  @Test("transferring leadership to the current leader succeeds at once")
  func transferToSelf() async throws {
    try await withLiveCluster(try LiveCluster.fast(members: [1, 2, 3]), start: [1, 2, 3]) { cluster in
      // A transfer that waited for a handover would end in a timeout (after twice the election timeout), one
      // that started an election would move the term: either way no attempt would ever pass. An attempt is
      // only repeated when leadership moved under it (a busy machine).
      var outcome = "nothing yet"
      try await eventually("a transfer to the leader itself to succeed in its term (last: \(outcome))") {
        let leader = try await cluster.leader()
        do {
          try await leader.node.transferLeadership(to: leader.id)
        } catch let error as ConsensusError where error.isLeadershipChurn {
          outcome = "\(error)"
          return false
        }
        let after = await leader.node.status
        outcome = "role \(after.role) in term \(after.term) after term \(leader.term)"
        return after.role == .leader && after.term == leader.term
      }
    }
  }
}
