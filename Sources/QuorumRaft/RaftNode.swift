import Glibc
public import QuorumCore
public import QuorumStorage
import Synchronization

/// Something that happened to a node, for applications that watch leadership.
public enum RaftEvent: Sendable, Equatable {
  /// The node's role or term changed.
  case roleChanged(RaftRole, term: Term)
  /// The node learned of a different leader (or lost track of one).
  case leaderChanged(NodeID?, term: Term)
  /// The membership in the node's log changed.
  case membershipChanged(Membership)
  /// The node installed a snapshot from the leader.
  case snapshotInstalled(index: LogIndex)
  /// The node stopped.
  case stopped
}

/// A node's view of itself and (when leader) of its peers.
public struct RaftStatus: Sendable, Equatable {
  /// This node.
  public var id: NodeID
  /// Its role.
  public var role: RaftRole
  /// The current term.
  public var term: Term
  /// The leader it knows of.
  public var leader: NodeID?
  /// The commit index.
  public var commitIndex: LogIndex
  /// The index applied to the state machine.
  public var appliedIndex: LogIndex
  /// The first index held in the log (entries before it are in the snapshot).
  public var firstIndex: LogIndex
  /// The last index in the log.
  public var lastIndex: LogIndex
  /// The index of the newest snapshot.
  public var snapshotIndex: LogIndex
  /// The membership in force.
  public var membership: Membership
  /// Per-peer replication, when leader.
  public var peers: [NodeID: PeerProgress]
  /// Requests waiting for an answer.
  public var pendingRequests: Int
}

/// A Raft node: the actor shell around ``RaftCore`` that owns a transport endpoint, storage, a clock and
/// the replicated state machine.
///
/// Start it with ``run()`` (a long-lived structured loop, typically in a task group or a service) and talk
/// to it with ``propose(_:request:)``, ``read(_:consistency:)``, ``transferLeadership(to:)``, the membership
/// methods and ``status``. Requests to a follower fail at once with
/// ``QuorumCore/ConsensusError/notLeader(hint:)`` naming the leader it knows.
///
/// ### Durability order
///
/// Each turn of the loop takes every input that has arrived (messages, ticks, requests), steps the core, then
/// carries out the core's ``RaftReady`` strictly in this order:
/// 1. a leader sends its AppendEntries and heartbeats (its term and vote are already durable; writing its own
///    entries in parallel with replication is safe because the leader counts itself towards a quorum only
///    after step 2, thesis §10.2.1);
/// 2. the hard state (term, vote) and new entries are written to storage and made durable (under
///    ``QuorumStorage/FsyncPolicy/always``, an `fdatasync`); a snapshot from the leader is stored atomically;
/// 3. only then are votes and acknowledgements sent: they promise what step 2 stored;
/// 4. the state machine is restored from the snapshot and committed entries are applied, answering the
///    requests that were waiting for them.
/// Inputs that arrive during step 2 wait for the next turn, which batches them into one write: group commit.
public actor RaftNode<Machine: StateMachine> {
  private enum Input: Sendable {
    case tick
    case propose(UInt64, Machine.Command, RequestID?, UInt64, UnsafeContinuation<Machine.Response, any Error>)
    case register(UInt64, UnsafeContinuation<UInt64, any Error>)
    case read(UInt64, Machine.Query, ReadConsistency, UnsafeContinuation<Machine.QueryResult, any Error>)
    case membership(UInt64, MembershipChange, UnsafeContinuation<LogIndex, any Error>)
    case transfer(UInt64, NodeID, UnsafeContinuation<Void, any Error>)
    case cancel(UInt64)
    case stop
    /// The background snapshot task finished: the snapshot is stored, or the error that stopped it.
    case snapshotStored(Result<RaftSnapshot, any Error>)
  }

  private enum Waiter {
    case response(UnsafeContinuation<Machine.Response, any Error>)
    case session(UnsafeContinuation<UInt64, any Error>)
    case membership(UnsafeContinuation<LogIndex, any Error>)

    func fail(_ error: any Error) {
      switch self {
      case .response(let c): c.resume(throwing: error)
      case .session(let c): c.resume(throwing: error)
      case .membership(let c): c.resume(throwing: error)
      }
    }
  }

  private struct Pending {
    var id: UInt64
    var term: Term
    var waiter: Waiter
    var deadline: ContinuousClock.Instant
  }

  private struct PendingRead {
    var id: UInt64
    var query: Machine.Query
    var continuation: UnsafeContinuation<Machine.QueryResult, any Error>
    var index: LogIndex
    var deadline: ContinuousClock.Instant
  }

  private struct PendingTransfer {
    var id: UInt64
    var target: NodeID
    var continuation: UnsafeContinuation<Void, any Error>
    var deadline: ContinuousClock.Instant
  }

  /// This node.
  public nonisolated let id: NodeID
  /// The configuration in force.
  public nonisolated let configuration: RaftConfiguration
  /// Role, leader and membership changes. The stream keeps the newest 256 undelivered events.
  public nonisolated let events: AsyncStream<RaftEvent>

  private let eventSink: AsyncStream<RaftEvent>.Continuation
  private let inputs: Mailbox<Input>
  private let endpoint: any TransportEndpoint<RaftMessage>
  private let storage: any ConsensusStorage<LogEntry>
  private let logger: QuorumLogger
  private let clock = ContinuousClock()
  private let nextRequestID = Atomic<UInt64>(0)
  private let startedAt: ContinuousClock.Instant
  private let wallClockAtStart: UInt64
  private let seed: UInt64

  /// The protocol core. Mutated in place only: copying it would copy the log (copy-on-write).
  private var core: RaftCore
  private var machine: ReplicatedStateMachine<Machine>
  private var applied: LogIndex = 0
  private var lastSnapshotIndex: LogIndex = 0
  /// The snapshot being encoded and stored while the loop goes on.
  private var background = BackgroundSnapshot<RaftSnapshot>()
  private var proposals: [LogIndex: Pending] = [:]
  private var proposalIndexByID: [UInt64: LogIndex] = [:]
  private var reads: [UInt64: PendingRead] = [:]
  private var waitingReads: [PendingRead] = []
  private var transfers: [PendingTransfer] = []
  private var lastSoft = SoftState(role: .follower, leader: nil, term: 0)
  private var lastMembership: Membership?
  private var running = false
  private var ticks = 0
  private var stopped = false

  /// Creates a node; nothing happens until ``run()``.
  ///
  /// - Parameters:
  ///   - id: this node's identifier.
  ///   - configuration: validated settings (``RaftConfiguration``); its `members` bootstrap a new group.
  ///   - endpoint: this node's attachment to the transport. The node closes it when ``run()`` ends.
  ///   - storage: durable state; recovered when ``run()`` starts. The caller closes it after ``run()``.
  ///   - machine: the state machine, in its initial state (a snapshot in storage replaces it).
  ///   - seed: seeds the election-timeout randomness (defaults to a value derived from the id and the clock).
  ///   - logger: where the node logs.
  public init(
    id: NodeID, configuration: RaftConfiguration, endpoint: some TransportEndpoint<RaftMessage>,
    storage: some ConsensusStorage<LogEntry>, machine: Machine, seed: UInt64? = nil,
    logger: QuorumLogger = QuorumLogger(label: "raft")
  ) {
    // Replaced by recovery in run(); a placeholder so the core can be mutated in place without optionals.
    self.core = RaftCore(id: id, options: configuration.coreOptions, membership: .empty, random: SeededRandom(seed: 0))
    self.id = id
    self.configuration = configuration
    self.endpoint = endpoint
    self.storage = storage
    self.machine = ReplicatedStateMachine(machine, policy: configuration.sessions)
    self.logger = logger.child(id.description)
    self.inputs = Mailbox(capacity: configuration.inputCapacity)
    let (stream, sink) = AsyncStream<RaftEvent>.makeStream(bufferingPolicy: .bufferingNewest(256))
    self.events = stream
    self.eventSink = sink
    self.startedAt = clock.now
    self.wallClockAtStart = wallClockMillis()
    self.seed = seed ?? (id.rawValue &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(truncatingIfNeeded: wallClockAtStart))
  }

  // MARK: - Running

  /// Recovers durable state and runs the node until ``stop()`` is called or the task is cancelled.
  /// - Throws: ``QuorumCore/ConfigurationError`` for an invalid configuration, a ``QuorumStorage/StorageError`` if
  ///   recovery or a write fails (the node stops rather than continue without durability).
  public func run() async throws {
    precondition(!running, "RaftNode.run() called twice")
    running = true
    defer { eventSink.yield(.stopped) }
    do {
      try configuration.validate()
      try await recover()
      logger.notice(
        "started",
        ["term": "\(core.term)", "last": "\(core.lastIndex)", "members": "\(core.membership.description)"])
      try await runLoopWithTicker()
    } catch {
      // Invalid configuration, failed recovery or a failed write stops the node; nobody may be left waiting.
      logger.error("stopping after an error: \(error)")
      await finishSnapshotTask()
      await endpoint.close()
      failAll(ConsensusError.stopped)
      throw error
    }
    await finishSnapshotTask()
    await endpoint.close()
    failAll(ConsensusError.stopped)
  }

  /// Waits for the snapshot being stored: the caller closes the storage once ``run()`` returns. The inputs
  /// close first, so the task cannot wait for room in them.
  private func finishSnapshotTask() async {
    guard let task = background.detachTask() else { return }
    inputs.close(discardingBuffered: false)
    await task.value
  }

  private func runLoopWithTicker() async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
      let inputs = self.inputs
      let tick = configuration.tickInterval
      group.addTask {
        let clock = ContinuousClock()
        var next = clock.now
        while !Task.isCancelled {
          next = next.advanced(by: tick)
          try? await clock.sleep(until: next, tolerance: .milliseconds(1))
          try? inputs.trySend(.tick)
          if clock.now - next > tick * 10 { next = clock.now }  // Do not burst after a stall.
        }
      }
      defer { group.cancelAll() }
      try await loop()
    }
  }

  /// Asks the node to stop: ``run()`` finishes the write in progress and returns.
  public nonisolated func stop() {
    do {
      try inputs.trySend(.stop)
    } catch {
      inputs.close()
    }
  }

  private func recover() async throws {
    let recovered = try await storage.recover()
    if recovered.report.truncatedTailBytes > 0 {
      logger.warning("storage recovery truncated a torn tail", ["report": recovered.report.description])
    }
    var random = SeededRandom(seed: seed)
    let fresh = recovered.hardState == nil && recovered.snapshot == nil && recovered.entries.isEmpty
    if fresh {
      if configuration.members.isEmpty {
        core = RaftCore(id: id, options: configuration.coreOptions, membership: .empty, random: random.fork())
      } else {
        core = RaftCore.bootstrap(
          id: id, options: configuration.coreOptions, membership: configuration.foundingMembership,
          random: random.fork())
      }
      return
    }
    let hardState = try recovered.hardState.map { try HardState(wireBytes: $0) } ?? HardState()
    var snapshot: RaftSnapshot?
    if let stored = recovered.snapshot {
      let membership = try Membership(wireBytes: stored.metadata)
      snapshot = RaftSnapshot(index: stored.index, term: stored.term, membership: membership, data: stored.data)
      try machine.restore(from: stored.data)
      applied = stored.index
      lastSnapshotIndex = stored.index
    }
    try RaftCore.validateRecovered(hardState: hardState, snapshot: snapshot, entries: recovered.entries)
    core = RaftCore(
      id: id, options: configuration.coreOptions, membership: .empty, hardState: hardState, snapshot: snapshot,
      entries: recovered.entries, random: random.fork())
  }

  /// The run loop: take everything that arrived (peer messages straight from the transport's mailbox, and
  /// local requests and ticks from the node's own), step the core, carry out the ready, repeat. One doorbell
  /// rung by both mailboxes wakes it, so no forwarding task sits between the transport and the node.
  private func loop() async throws {
    let doorbell = Doorbell()
    inputs.attach(doorbell)
    endpoint.incoming.attach(doorbell)
    var batch: [Input] = []
    var messages: [Envelope<RaftMessage>] = []
    batch.reserveCapacity(4096)
    messages.reserveCapacity(4096)
    while !stopped, !Task.isCancelled {
      let taken =
        endpoint.incoming.drainAvailable(into: &messages, limit: 4096)
        + inputs.drainAvailable(into: &batch, limit: 4096)
      if taken == 0 {
        if inputs.isClosed { break }
        await doorbell.wait()
        continue
      }
      let now = clock.now
      core.advanceClock(to: (now - startedAt).nanoseconds)  // Times this batch's messages from the leader.
      batchWallMillis = wallClockMillis()
      // Ticks first: the two mailboxes do not say which came first, and ticks that queued while a write was
      // in progress must not count against a leader's heartbeat in this batch. A follower counting them after
      // it would stop refusing votes too early, and the leader's lease rests on that refusal.
      for input in batch { if case .tick = input { handle(input, now: now) } }
      for envelope in messages { core.step(envelope.payload, from: envelope.from) }
      for input in batch {
        if case .tick = input { continue }
        handle(input, now: now)
      }
      messages.removeAll(keepingCapacity: true)
      batch.removeAll(keepingCapacity: true)
      try await recordStoredSnapshot()
      try await drainReady()
    }
  }

  // MARK: - Inputs

  private var nowNanos: UInt64 { (clock.now - startedAt).nanoseconds }

  /// The wall clock read once per batch: the leader timestamp written into each proposal.
  private var batchWallMillis: UInt64 = 0
  private var logTimeMillis: UInt64 { batchWallMillis }

  private var pendingCount: Int { proposals.count + reads.count + waitingReads.count }

  private func handle(_ input: Input, now: ContinuousClock.Instant) {
    switch input {
    case .tick:
      core.tick(now: nowNanos)
      ticks &+= 1
      if ticks % 8 == 0 { expireRequests(now: now) }
    case .stop:
      stopped = true
    case .snapshotStored(let result):
      if let superseded = background.finished(result) {
        logger.info("dropped a superseded snapshot: \(superseded)")
      }
    case .cancel(let requestID):
      cancelRequest(requestID)
    case .propose(let requestID, let command, let request, let acknowledged, let continuation):
      let replicated = ReplicatedCommand(
        timestampMillis: logTimeMillis, request: request, acknowledgedThrough: acknowledged, body: .command(command))
      propose(requestID, replicated, .response(continuation), now: now)
    case .register(let requestID, let continuation):
      let replicated = ReplicatedCommand<Machine.Command>(timestampMillis: logTimeMillis, body: .registerSession)
      propose(requestID, replicated, .session(continuation), now: now)
    case .read(let requestID, let query, let consistency, let continuation):
      read(requestID, query, consistency, continuation, now: now)
    case .membership(let requestID, let change, let continuation):
      guard pendingCount < configuration.maxPendingRequests else {
        continuation.resume(throwing: ConsensusError.overloaded(limit: configuration.maxPendingRequests))
        return
      }
      do {
        let index = try core.proposeMembership(change)
        failOverwrittenWaiter(at: index)
        failOverwrittenWaiter(at: index)
        proposals[index] = Pending(
          id: requestID, term: core.term, waiter: .membership(continuation),
          deadline: now.advanced(by: configuration.requestTimeout))
        proposalIndexByID[requestID] = index
      } catch {
        continuation.resume(throwing: translate(error))
      }
    case .transfer(let requestID, let target, let continuation):
      do {
        try core.transferLeadership(to: target)
        if target == id || (core.leader == target && core.role != .leader) {
          continuation.resume()
        } else {
          let timeout = configuration.electionTimeout.upperBound * 2
          transfers.append(
            PendingTransfer(
              id: requestID, target: target, continuation: continuation, deadline: now.advanced(by: timeout)))
        }
      } catch {
        continuation.resume(throwing: translate(error))
      }
    }
  }

  private func propose(
    _ requestID: UInt64, _ command: ReplicatedCommand<Machine.Command>, _ waiter: Waiter,
    now: ContinuousClock.Instant
  ) {
    guard pendingCount < configuration.maxPendingRequests else {
      waiter.fail(ConsensusError.overloaded(limit: configuration.maxPendingRequests))
      return
    }
    let bytes = command.wireBytes(reservingCapacity: 128)
    guard bytes.count <= configuration.maxCommandBytes else {
      waiter.fail(ConsensusError.commandTooLarge(bytes: bytes.count, limit: configuration.maxCommandBytes))
      return
    }
    do {
      let (index, term) = try core.propose(bytes)
      failOverwrittenWaiter(at: index)
      proposals[index] = Pending(
        id: requestID, term: term, waiter: waiter, deadline: now.advanced(by: configuration.requestTimeout))
      proposalIndexByID[requestID] = index
    } catch {
      waiter.fail(translate(error))
    }
  }

  private func read(
    _ requestID: UInt64, _ query: Machine.Query, _ consistency: ReadConsistency,
    _ continuation: UnsafeContinuation<Machine.QueryResult, any Error>, now: ContinuousClock.Instant
  ) {
    let deadline = now.advanced(by: configuration.requestTimeout)
    switch consistency {
    case .stale:
      continuation.resume(returning: machine.query(query))
    case .lease, .linearizable:
      guard pendingCount < configuration.maxPendingRequests else {
        continuation.resume(throwing: ConsensusError.overloaded(limit: configuration.maxPendingRequests))
        return
      }
      if consistency == .lease, let index = core.leaseReadIndex(now: nowNanos) {
        let read = PendingRead(
          id: requestID, query: query, continuation: continuation, index: index, deadline: deadline)
        if index <= applied {
          continuation.resume(returning: machine.query(query))
        } else {
          waitingReads.append(read)
        }
        return
      }
      // Linearizable, or a lease read without a valid lease: confirm leadership with ReadIndex.
      do {
        try core.requestRead(id: requestID)
        reads[requestID] = PendingRead(
          id: requestID, query: query, continuation: continuation, index: 0, deadline: deadline)
      } catch {
        continuation.resume(throwing: translate(error))
      }
    }
  }

  private func translate(_ error: RaftRequestError) -> ConsensusError {
    switch error {
    case .notLeader(let hint): return .notLeader(hint: hint)
    case .transferInProgress: return .transferInProgress
    case .overloaded: return .overloaded(limit: configuration.maxUncommittedBytes)
    case .membershipChangeRejected(let why): return .membershipChangeRejected(why)
    }
  }

  /// A new proposal landed at an index an older, still-waiting proposal had (a deposed leader's entry that
  /// was discarded before it was applied here): the older one is definitely not at that index any more.
  private func failOverwrittenWaiter(at index: LogIndex) {
    guard let old = proposals.removeValue(forKey: index) else { return }
    proposalIndexByID[old.id] = nil
    old.waiter.fail(ConsensusError.dropped)
  }

  private func cancelRequest(_ requestID: UInt64) {
    if let index = proposalIndexByID.removeValue(forKey: requestID), let pending = proposals.removeValue(forKey: index)
    {
      pending.waiter.fail(CancellationError())
    }
    if let read = reads.removeValue(forKey: requestID) { read.continuation.resume(throwing: CancellationError()) }
    if let i = waitingReads.firstIndex(where: { $0.id == requestID }) {
      waitingReads.remove(at: i).continuation.resume(throwing: CancellationError())
    }
    if let i = transfers.firstIndex(where: { $0.id == requestID }) {
      transfers.remove(at: i).continuation.resume(throwing: CancellationError())
    }
  }

  private func expireRequests(now: ContinuousClock.Instant) {
    for (index, pending) in proposals where pending.deadline <= now {
      proposals[index] = nil
      proposalIndexByID[pending.id] = nil
      pending.waiter.fail(ConsensusError.timeout)
    }
    for (id, read) in reads where read.deadline <= now {
      reads[id] = nil
      read.continuation.resume(throwing: ConsensusError.timeout)
    }
    waitingReads.removeAll { read in
      guard read.deadline <= now else { return false }
      read.continuation.resume(throwing: ConsensusError.timeout)
      return true
    }
    transfers.removeAll { transfer in
      guard transfer.deadline <= now else { return false }
      transfer.continuation.resume(throwing: ConsensusError.timeout)
      return true
    }
  }

  private func failAll(_ error: any Error) {
    for (_, pending) in proposals { pending.waiter.fail(error) }
    proposals = [:]
    proposalIndexByID = [:]
    for (_, read) in reads { read.continuation.resume(throwing: error) }
    reads = [:]
    for read in waitingReads { read.continuation.resume(throwing: error) }
    waitingReads = []
    for transfer in transfers { transfer.continuation.resume(throwing: error) }
    transfers = []
    inputs.close(discardingBuffered: false)
    var leftover: [Input] = []
    inputs.drainAvailable(into: &leftover)
    for input in leftover {
      switch input {
      case .propose(_, _, _, _, let c): c.resume(throwing: error)
      case .register(_, let c): c.resume(throwing: error)
      case .read(_, _, _, let c): c.resume(throwing: error)
      case .membership(_, _, let c): c.resume(throwing: error)
      case .transfer(_, _, let c): c.resume(throwing: error)
      case .tick, .cancel, .stop, .snapshotStored: break
      }
    }
  }

  // MARK: - Ready

  private func drainReady() async throws {
    while core.hasReady {
      let rd = core.ready()
      send(rd.eagerMessages)
      try await persist(rd)
      send(rd.messages)
      core.advance(rd)
      try install(rd)
      apply(rd.committedEntries)
      for state in rd.readStates {
        guard var read = reads.removeValue(forKey: state.id) else { continue }
        read.index = state.index
        if state.index <= applied {
          read.continuation.resume(returning: machine.query(read.query))
        } else {
          waitingReads.append(read)
        }
      }
      for id in rd.failedReads {
        reads.removeValue(forKey: id)?.continuation.resume(throwing: ConsensusError.notLeader(hint: core.leader))
      }
      answerWaitingReads()
      report(rd.softState, core: core)
      maybeSnapshot()
    }
  }

  private func send(_ messages: [RaftOutgoing]) {
    for m in messages {
      do {
        try endpoint.send(m.message, to: m.to)
      } catch {
        // The transport is allowed to lose messages; Raft retransmits. Tell the core so it stops streaming.
        if case .queueFull = error { core.reportUnreachable(m.to) }
        logger.debug("send to \(m.to) failed: \(error)")
      }
    }
  }

  private func persist(_ rd: RaftReady) async throws {
    if let snapshot = rd.snapshot {
      try await storage.saveSnapshot(
        StoredSnapshot(
          index: snapshot.index, term: snapshot.term, metadata: snapshot.membership.wireBytes(), data: snapshot.data),
        discardingLog: rd.snapshotDiscardsLog)
    }
    let write = StorageWrite(hardState: rd.hardState?.wireBytes(), entries: rd.entries)
    if !write.isEmpty { try await storage.write(write) }
  }

  private func install(_ rd: RaftReady) throws {
    guard let snapshot = rd.snapshot else { return }
    try machine.restore(from: snapshot.data)
    applied = snapshot.index
    lastSnapshotIndex = snapshot.index
    eventSink.yield(.snapshotInstalled(index: snapshot.index))
    logger.info("installed snapshot", ["index": "\(snapshot.index)", "term": "\(snapshot.term)"])
    for index in proposals.keys.sorted() where index <= snapshot.index {
      // Inside the snapshot, so applied or overwritten: we cannot tell which. A session retry is safe.
      if let pending = proposals.removeValue(forKey: index) {
        proposalIndexByID[pending.id] = nil
        pending.waiter.fail(ConsensusError.outcomeUnknown)
      }
    }
  }

  private func apply(_ entries: [LogEntry]) {
    for entry in entries {
      applied = entry.index
      var outcome: ApplyOutcome<Machine.Response>?
      if entry.kind == .command {
        outcome = machine.apply(entry: entry.data, at: entry.index)
        if case .undecodable(let error)? = outcome {
          logger.error("could not decode the entry at \(entry.index): \(error)")
        }
      }
      guard let pending = proposals.removeValue(forKey: entry.index) else { continue }
      proposalIndexByID[pending.id] = nil
      guard pending.term == entry.term else {
        pending.waiter.fail(ConsensusError.dropped)
        continue
      }
      switch (pending.waiter, outcome) {
      case (.response(let c), .applied(let response)?), (.response(let c), .duplicate(let response)?):
        c.resume(returning: response)
      case (.response(let c), .sessionExpired(let session)?):
        c.resume(throwing: ConsensusError.sessionExpired(session))
      case (.response(let c), .responseForgotten?):
        c.resume(throwing: ConsensusError.outcomeUnknown)
      case (.session(let c), .sessionRegistered(let session)?):
        c.resume(returning: session)
      case (.membership(let c), _):
        c.resume(returning: entry.index)
      case (let waiter, _):
        waiter.fail(ConsensusError.dropped)
      }
    }
  }

  private func answerWaitingReads() {
    guard !waitingReads.isEmpty else { return }
    waitingReads.removeAll { read in
      guard read.index <= applied else { return false }
      read.continuation.resume(returning: machine.query(read.query))
      return true
    }
  }

  private func report(_ soft: SoftState?, core: RaftCore) {
    if let soft {
      if soft.role != lastSoft.role || soft.term != lastSoft.term {
        eventSink.yield(.roleChanged(soft.role, term: soft.term))
        logger.info("role \(soft.role)", ["term": "\(soft.term)"])
      }
      if soft.leader != lastSoft.leader {
        eventSink.yield(.leaderChanged(soft.leader, term: soft.term))
      }
      lastSoft = soft
      if soft.role != .leader {
        // A deposed leader's waiting lease reads can no longer be answered safely.
        let failed = waitingReads
        waitingReads = []
        for read in failed where read.index > applied {
          read.continuation.resume(throwing: ConsensusError.notLeader(hint: soft.leader))
        }
        for read in failed where read.index <= applied {
          read.continuation.resume(returning: machine.query(read.query))
        }
      }
    }
    if lastMembership != core.membership {
      lastMembership = core.membership
      eventSink.yield(.membershipChanged(core.membership))
    }
    if !transfers.isEmpty, let leader = core.leader, core.role != .leader {
      transfers.removeAll { transfer in
        guard transfer.target == leader else { return false }
        transfer.continuation.resume()
        return true
      }
    }
  }

  /// Starts a snapshot when enough entries were applied since the last one. The state machine is copied (a
  /// copy-on-write value: the loop pays for one copy of the state at its next apply) and the copy is encoded
  /// and stored by a background task, so replication does not wait for the encoding, the write and the sync.
  /// ``recordStoredSnapshot()`` finishes the job.
  private func maybeSnapshot() {
    guard configuration.snapshotEvery > 0, !background.isBusy,
      applied >= lastSnapshotIndex + LogIndex(configuration.snapshotEvery), applied <= core.persistedIndex,
      let term = core.term(at: applied)
    else { return }
    let index = applied
    let membership = core.membership(at: index) ?? core.membership
    let machine = self.machine
    let inputs = self.inputs
    background.start(
      storing: { StoredSnapshot(index: $0.index, term: $0.term, metadata: $0.membership.wireBytes(), data: $0.data) },
      to: storage,
      encode: { RaftSnapshot(index: index, term: term, membership: membership, data: machine.snapshot()) },
      // Suspends while the inputs are full; fails only once the node stopped, when nothing needs it.
      report: { try? await inputs.send(.snapshotStored($0)) })
  }

  /// Records the snapshot the background task stored and compacts the log behind it, unless the log moved
  /// past it meanwhile (a snapshot from the leader was installed). Rethrows the task's storage failure.
  private func recordStoredSnapshot() async throws {
    guard let snapshot = try background.takeStored() else { return }
    guard snapshot.index > lastSnapshotIndex, snapshot.index >= core.firstIndex - 1,
      core.term(at: snapshot.index) == snapshot.term
    else { return }
    core.takeSnapshot(at: snapshot.index, data: snapshot.data, retainEntries: configuration.snapshotRetainEntries)
    lastSnapshotIndex = snapshot.index
    let compactThrough = core.firstIndex - 1
    if compactThrough > 0 { try await storage.compact(through: compactThrough) }
    logger.info("snapshot taken", ["index": "\(snapshot.index)", "bytes": "\(snapshot.data.count)"])
  }

  // MARK: - Public API

  /// Queues a request for the run loop and waits for its answer. Nonisolated: it touches only the mailbox and
  /// an atomic counter, so a caller never waits for the actor (which is busy running the loop).
  private nonisolated func submit<T>(_ make: (UInt64, UnsafeContinuation<T, any Error>) -> Input) async throws -> T {
    let requestID = nextRequestID.add(1, ordering: .relaxed).newValue
    return try await withTaskCancellationHandler {
      try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<T, any Error>) in
        do throws(MailboxError) {
          try inputs.trySend(make(requestID, continuation))
          // A cancellation that came before the request was queued sent its cancel ahead of it: send another.
          if Task.isCancelled { try? inputs.trySend(.cancel(requestID)) }
        } catch .full {
          continuation.resume(throwing: ConsensusError.overloaded(limit: inputs.capacity))
        } catch {
          continuation.resume(throwing: ConsensusError.stopped)
        }
      }
    } onCancel: {
      try? inputs.trySend(.cancel(requestID))
    }
  }

  /// Appends `command` to the log and returns the state machine's response once it is applied here.
  ///
  /// With a `request` identifier (from a session opened by ``registerSession()``) the command is applied
  /// at most once however often it is retried.
  /// - Throws: ``QuorumCore/ConsensusError``: `notLeader` on a follower, `timeout`, `dropped` or
  ///   `outcomeUnknown` if leadership changed while it was in flight, `overloaded`, `commandTooLarge`.
  public nonisolated func propose(_ command: Machine.Command, request: RequestID? = nil) async throws
    -> Machine.Response
  {
    try await propose(command, request: request, acknowledgedThrough: 0)
  }

  /// Like ``propose(_:request:)``, also telling the session that every response up to
  /// `acknowledgedThrough` has been received and may be forgotten.
  public nonisolated func propose(
    _ command: Machine.Command, request: RequestID?, acknowledgedThrough: UInt64
  ) async throws -> Machine.Response {
    try await submit { .propose($0, command, request, acknowledgedThrough, $1) }
  }

  /// Answers `query` at the chosen consistency: `linearizable` (ReadIndex), `lease` (leader lease, falling
  /// back to ReadIndex when the lease is not valid) or `stale` (this replica's applied state, on any node).
  public nonisolated func read(_ query: Machine.Query, consistency: ReadConsistency = .linearizable) async throws
    -> Machine.QueryResult
  {
    try await submit { .read($0, query, consistency, $1) }
  }

  /// Opens an exactly-once session and returns its number.
  public nonisolated func registerSession() async throws -> UInt64 {
    try await submit { .register($0, $1) }
  }

  /// Applies a membership change through the log; returns once it is committed and applied here.
  public nonisolated func changeMembership(_ change: MembershipChange) async throws {
    _ = try await submit { .membership($0, change, $1) }
  }

  /// Adds `node` as a learner: it receives the log but does not vote.
  public nonisolated func addLearner(_ node: NodeID) async throws {
    try await changeMembership(.change([.addLearner(node)]))
  }

  /// Adds `node` as a voter (or promotes a learner).
  public nonisolated func addVoter(_ node: NodeID) async throws {
    try await changeMembership(.change([.addVoter(node)]))
  }

  /// Removes `node` from the group (it may be the leader itself, which then hands over and steps down).
  public nonisolated func removeMember(_ node: NodeID) async throws {
    try await changeMembership(.change([.remove(node)]))
  }

  /// Transfers leadership to `target`; returns once this node has seen `target` lead.
  public nonisolated func transferLeadership(to target: NodeID) async throws {
    try await submit { .transfer($0, target, $1) }
  }

  /// The node's current view.
  public var status: RaftStatus {
    RaftStatus(
      id: id, role: core.role, term: core.term, leader: core.leader, commitIndex: core.commitIndex,
      appliedIndex: applied, firstIndex: core.firstIndex, lastIndex: core.lastIndex,
      snapshotIndex: core.snapshot?.index ?? 0, membership: core.membership, peers: core.peerProgress,
      pendingRequests: pendingCount)
  }

  /// Queries the local state machine directly (a stale read without going through the node's queue).
  public func localQuery(_ query: Machine.Query) -> Machine.QueryResult { machine.query(query) }
}

extension RaftNode: ReplicatedLog {}

/// Milliseconds since 1970 from the system's real-time clock (used only for log timestamps).
func wallClockMillis() -> UInt64 {
  var ts = timespec()
  clock_gettime(CLOCK_REALTIME, &ts)
  return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
}
