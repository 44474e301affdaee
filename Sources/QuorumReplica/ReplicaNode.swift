public import QuorumCore
public import QuorumStorage
public import Synchronization

/// Sees what a node does, as it does it: the simulator's invariant checkers plug in here.
///
/// Calls are made synchronously from the node's run loop, so an observer sees each step in order and may
/// inspect the engine as it was at that moment. Production nodes have none.
public protocol ReplicaObserver<Engine>: Sendable {
  /// The engine type observed.
  associatedtype Engine: ReplicaEngine
  /// The node took a ready from its engine and is about to carry it out.
  func node(_ node: NodeID, group: GroupID, willCarryOut ready: ReplicaReady<Engine>, engine: Engine)
  /// The node made the ready's snapshot and write durable (before sending what depends on them).
  func node(_ node: NodeID, group: GroupID, didPersist ready: ReplicaReady<Engine>)
  /// The node applied the committed `entry` to its state machine.
  func node(_ node: NodeID, group: GroupID, applied entry: Engine.Entry)
  /// The node recorded a snapshot it stored itself and compacted its log: its storage is compacted at least through
  /// `compactedThrough` (a release of stored entries may have taken it further already), which is where its engine
  /// compacted the log it keeps in memory unless the storage's compaction was skipped for want of file descriptors
  /// (then it is where the storage was compacted before; the compaction is left for the next snapshot or release).
  func node(_ node: NodeID, group: GroupID, recordedSnapshotAt index: UInt64, compactedThrough: UInt64)
  /// The node could not store the leader's snapshot at `index` (for the `failures`-th time in a row) without
  /// changing anything durable, and holds its ready back for another try: nothing of it was carried out, and its
  /// messages wait. Does nothing unless an observer implements it.
  func node(_ node: NodeID, group: GroupID, heldInstallAt index: UInt64, failures: Int)
}

extension ReplicaObserver {
  /// Does nothing.
  public func node(_ node: NodeID, group: GroupID, heldInstallAt index: UInt64, failures: Int) {}
}

/// A replica of a consensus group: the one actor shell around any ``ReplicaEngine`` — Raft's or
/// Multi-Paxos's pure core — that owns a transport endpoint, storage, a clock and the replicated state machine.
///
/// Start it with ``run()`` (a long-lived structured loop, typically in a task group or a service); it returns
/// after ``stop()``, ``shutdown()`` or when its task is cancelled. Talk to it with ``propose(_:request:)``,
/// ``read(_:consistency:)``, ``registerSession()``, the membership methods, ``transferLeadership(to:)`` and
/// ``currentStatus``; watch it through ``events``. Requests to a node that does not lead fail at once with
/// ``QuorumCore/ConsensusError/notLeader(hint:)`` naming the leader it knows.
///
/// ### Durability order
///
/// Each turn of the loop takes every input that has arrived (messages, the timer, requests), steps the engine,
/// then carries out the engine's ``ReplicaReady`` strictly in this order:
/// 1. a leader sends its replication messages (it counts itself towards a quorum only after step 2);
/// 2. a snapshot from the leader is stored atomically, then the hard state and new entries are written and
///    made durable (under ``QuorumStorage/FsyncPolicy/always``, one `fdatasync`). A snapshot the storage could
///    not store without changing anything durable (a full disk, a failed write of its file) holds the turn's
///    work back, tried again after a pause while the node goes on taking inputs; it stops the node only when
///    the 60th retry (the 61st try) fails too;
/// 3. only then are votes, promises and acknowledgements sent: they promise what step 2 stored;
/// 4. the state machine is restored from the snapshot and committed entries are applied, answering the
///    requests that were waiting for them.
/// Inputs that arrive during step 2 wait for the next turn, which batches them into one write: group commit.
///
/// ### Time
///
/// Every deadline, lease and leader-contact measurement uses the runtime's monotonic clock. The timer raises a
/// flag rather than queueing ticks, so a node that wakes after a stall sees one tick, never a burst that would
/// shorten a timeout. An idle node sleeps through the ticks its engine declares quiet (they would only advance
/// counters: a follower's ticks until its election timeout, a leader's until its next heartbeat) and applies them
/// when it next wakes, before anything else, so that a group with nothing to do costs a wake-up per heartbeat,
/// not one per tick. Each command is stamped with *log time*: a new leader continues from the log time it has
/// applied and advances it with its monotonic clock, so a wall-clock step on any machine moves no deadline
/// (expiry of sessions and lock leases is decided from log time alone).
public final actor ReplicaNode<Engine: ReplicaEngine, Machine: StateMachine> {
  // Final, with its body `@inlinable` and its state `@usableFromInline` (internal rather than private): each
  // application compiles the node for its engine and machine. Unspecialised, the loop looked up every generic
  // type it touched at run time — 27 % of an in-process put's samples — and an actor that is not final is not
  // specialised across modules even when inlinable. The host makes its groups where the engine type is known for
  // the same reason (`EngineGroup`).
  @usableFromInline enum Input: Sendable {
    case propose(Proposal, Completion<IndexedResponse>)
    case register(UInt64, String?, Completion<UInt64>)
    case read(UInt64, Machine.Query, ReadConsistency, UInt64, Completion<ReadAnswer>)
    case membership(UInt64, MembershipChange, Completion<UInt64>)
    case transfer(UInt64, NodeID, Completion<Void>)
    case cancel(UInt64)
    case stop
    /// The background snapshot task finished: the snapshot is stored, or the error that stopped it.
    case snapshotStored(Result<StoredSnapshot, any Error>)
    /// The transport's failure detector lost this peer (``QuorumCore/TransportEndpoint/onPeerLost(_:)``).
    case peerLost(NodeID)
    /// Free the storage's oldest entries: snapshot if anything was applied since the last snapshot (and the
    /// last snapshot was no larger than the budget), then compact the storage through the snapshot (see
    /// ``releaseStoredEntries(snapshotBudgetBytes:)``).
    case releaseStoredEntries(Int)
  }

  /// A command waiting to be proposed, with its session information and principal.
  @usableFromInline struct Proposal: Sendable {
    @usableFromInline var id: UInt64
    @usableFromInline var command: Machine.Command
    @usableFromInline var request: RequestID?
    @usableFromInline var acknowledged: UInt64
    @usableFromInline var principal: String?

    @inlinable init(id: UInt64, command: Machine.Command, request: RequestID?, acknowledged: UInt64, principal: String?)
    {
      self.id = id
      self.command = command
      self.request = request
      self.acknowledged = acknowledged
      self.principal = principal
    }
  }

  @usableFromInline enum Waiter {
    case response(Completion<IndexedResponse>)
    case session(Completion<UInt64>)
    case membership(Completion<UInt64>)

    @inlinable func fail(_ error: any Error) {
      switch self {
      case .response(let c): c.resume(throwing: error)
      case .session(let c): c.resume(throwing: error)
      case .membership(let c): c.resume(throwing: error)
      }
    }
  }

  @usableFromInline struct Pending {
    @usableFromInline var id: UInt64
    @usableFromInline var ticket: Engine.Ticket
    @usableFromInline var waiter: Waiter
    @usableFromInline var deadline: UInt64

    @inlinable init(id: UInt64, ticket: Engine.Ticket, waiter: Waiter, deadline: UInt64) {
      self.id = id
      self.ticket = ticket
      self.waiter = waiter
      self.deadline = deadline
    }
  }

  /// A read's answer and the index it was read at.
  @usableFromInline typealias ReadAnswer = IndexedRead<Machine.QueryResult>
  /// A command's response and the index it was applied at.
  public typealias IndexedResponse = IndexedRead<Machine.Response>

  @usableFromInline struct PendingRead {
    @usableFromInline var id: UInt64
    @usableFromInline var query: Machine.Query
    @usableFromInline var continuation: Completion<ReadAnswer>
    @usableFromInline var index: UInt64
    @usableFromInline var deadline: UInt64
    /// A `session` or `stale` read, waiting only for this replica to apply `index`: leadership does not matter.
    @usableFromInline var isLocal: Bool

    @inlinable init(
      id: UInt64, query: Machine.Query, continuation: Completion<ReadAnswer>, index: UInt64, deadline: UInt64,
      isLocal: Bool = false
    ) {
      self.id = id
      self.query = query
      self.continuation = continuation
      self.index = index
      self.deadline = deadline
      self.isLocal = isLocal
    }
  }

  @usableFromInline struct PendingTransfer {
    @usableFromInline var id: UInt64
    @usableFromInline var target: NodeID
    @usableFromInline var continuation: Completion<Void>
    @usableFromInline var deadline: UInt64

    @inlinable init(id: UInt64, target: NodeID, continuation: Completion<Void>, deadline: UInt64) {
      self.id = id
      self.target = target
      self.continuation = continuation
      self.deadline = deadline
    }
  }

  /// This node.
  public nonisolated let id: NodeID
  /// The consensus group this replica belongs to (every message it sends carries it).
  public nonisolated let group: GroupID
  /// The configuration in force.
  public nonisolated let configuration: Engine.Configuration
  /// The clock and executor the node runs on.
  public nonisolated let runtime: NodeRuntime

  @usableFromInline let broadcast = EventBroadcast<Engine.Event>()
  @usableFromInline let inputs: Mailbox<Input>
  /// Requests their callers cancelled, for the loop to end at its next turn (see ``cancel(_:)``).
  @usableFromInline let cancellations: CancelledRequests
  @usableFromInline let doorbell = Doorbell()
  @usableFromInline let tickSignal: TickSignal
  @usableFromInline let endpoint: any TransportEndpoint<Engine.Message>
  @usableFromInline let outbox: ReplicaOutbox<Engine.Message>
  @usableFromInline let storage: any ConsensusStorage<Engine.Entry>
  @usableFromInline let logger: QuorumLogger
  @usableFromInline let observer: (any ReplicaObserver<Engine>)?
  @usableFromInline let onNotifications: (@Sendable (UInt64, [Machine.Notification]) -> Void)?
  @usableFromInline let onStateReplaced: (@Sendable (UInt64) -> Void)?
  @usableFromInline let sharedTicker: SharedTicker?
  @usableFromInline let recoveredSignal = OnceSignal()
  @usableFromInline let nextRequestID = Atomic<UInt64>(0)
  @usableFromInline let completion = OnceSignal()
  @usableFromInline let started = Atomic<Bool>(false)
  /// Set by ``stop()`` when its stop input did not fit in the full inputs: the loop ends at its next turn.
  @usableFromInline let stopRequested = Atomic<Bool>(false)
  @usableFromInline let seed: UInt64

  /// The protocol engine; `nil` until recovery. Mutated in place only: copying it would copy the log.
  @usableFromInline var engine: Engine?
  @usableFromInline var machine: ReplicatedStateMachine<Machine>
  @usableFromInline var applied: UInt64 = 0
  @usableFromInline var lastSnapshotIndex: UInt64 = 0
  /// The size of the newest snapshot taken, restored or installed (its encoded state).
  @usableFromInline var lastSnapshotBytes = 0
  /// The bytes of the entries applied since the newest snapshot was started.
  @usableFromInline var appliedBytesSinceSnapshot = 0
  /// What ``appliedBytesSinceSnapshot`` held when the background snapshot under way started: given back if the
  /// storage refuses that snapshot for a retryable reason, so that the next one does not wait for another
  /// snapshot's worth of log (which, with writes refused by a space quota, might never come).
  @usableFromInline var bytesBeforeSnapshot = 0
  /// The position applied when the storage last refused a background snapshot for a retryable reason (a full
  /// disk, say): the next is due ``ReplicaConfiguration/snapshotEvery`` entries after it, rather than at every
  /// apply while the disk stays full.
  @usableFromInline var refusedSnapshotAt: UInt64 = 0
  /// The snapshot being encoded and stored while the loop goes on.
  @usableFromInline var background = BackgroundSnapshot<StoredSnapshot>()
  /// Whether the background task reported since ``recordStoredSnapshot()`` last looked (most turns it has not,
  /// and an idle host runs thousands of turns a second).
  @usableFromInline var snapshotReported = false
  /// The budget of the ``releaseStoredEntries(snapshotBudgetBytes:)`` request waiting to be answered, if one
  /// is: the storage is then compacted through the newest snapshot.
  @usableFromInline var releaseBudget: Int?
  /// The storage's compaction point as this node last set it.
  @usableFromInline var storageFloor: UInt64 = 0
  @usableFromInline var proposals: [UInt64: Pending] = [:]
  @usableFromInline var proposalIndexByID: [UInt64: UInt64] = [:]
  @usableFromInline var reads: [UInt64: PendingRead] = [:]
  @usableFromInline var waitingReads: [PendingRead] = []
  @usableFromInline var transfers: [PendingTransfer] = []
  @usableFromInline var logClock = LogClock()
  @usableFromInline var running = false
  @usableFromInline var ticks = 0
  @usableFromInline var stopped = false
  /// The ticker period (``QuorumCore/TickSignal/period``) up to which ticks have been applied.
  @usableFromInline var lastTickPeriod: UInt64 = 0
  /// The ticks the node declared quiet after its last turn (see ``quietTicks()``), which it may apply late.
  @usableFromInline var plannedQuiet: UInt64 = 0
  /// The position of the time-only entry this leader proposed and has not seen applied yet.
  @usableFromInline var timeAdvanceIndex: UInt64?
  /// A ready whose snapshot from the leader could not be stored for a retryable reason (see
  /// ``storeInstall(_:failures:)``), carried out again once its pause is over, before any later ready.
  @usableFromInline var heldInstall: HeldInstall?

  /// A ready held back because storing its snapshot failed without changing anything durable.
  @usableFromInline struct HeldInstall: Sendable {
    /// The ready, whose eager messages were sent; nothing else of it was carried out.
    @usableFromInline var ready: ReplicaReady<Engine>
    /// How many times storing its snapshot has failed.
    @usableFromInline var failures: Int
    /// The monotonic time (nanoseconds) from which it is tried again.
    @usableFromInline var retryAtNanos: UInt64

    @inlinable init(ready: ReplicaReady<Engine>, failures: Int, retryAtNanos: UInt64) {
      self.ready = ready
      self.failures = failures
      self.retryAtNanos = retryAtNanos
    }
  }

  /// Creates a node; nothing happens until ``run()``.
  ///
  /// - Parameters:
  ///   - id: this node's identifier.
  ///   - group: the consensus group (carried by every message; a host routes by it).
  ///   - configuration: validated settings; its `members` bootstrap a new group.
  ///   - endpoint: this node's attachment to the transport. The node closes it when ``run()`` ends.
  ///   - storage: durable state; recovered when ``run()`` starts. The caller closes it after ``run()``.
  ///   - machine: the state machine, in its initial state (a snapshot in storage replaces it).
  ///   - runtime: the clock and executor (``QuorumCore/NodeRuntime/system`` in production).
  ///   - seed: seeds the engine's randomness (defaults to a value derived from the id and the clock).
  ///   - logger: where the node logs (default: standard error, labelled with the engine's name).
  ///   - observer: sees every step (the simulator's checkers); `nil` in production.
  ///   - ticker: a ticker shared by many nodes (a host with many groups runs one timer, not one per group);
  ///     `nil` for the node's own, every `configuration.tickInterval`.
  ///   - onNotifications: receives what the state machine tells waiting clients, right after the entry that
  ///     produced it is applied, with the entry's position (in the node's loop: it must not block).
  ///   - onStateReplaced: told the position of a snapshot that replaced the machine's state (installed from the
  ///     leader, or recovered when ``run()`` starts), before any entry after it is applied: the notifications of
  ///     the entries it covers are not produced here (in the node's loop: it must not block).
  public init(
    id: NodeID, group: GroupID = .default, configuration: Engine.Configuration,
    endpoint: some TransportEndpoint<Engine.Message>, storage: some ConsensusStorage<Engine.Entry>, machine: Machine,
    runtime: NodeRuntime = .system, seed: UInt64? = nil, logger: QuorumLogger? = nil,
    observer: (any ReplicaObserver<Engine>)? = nil, ticker: SharedTicker? = nil,
    onNotifications: (@Sendable (_ index: UInt64, [Machine.Notification]) -> Void)? = nil,
    onStateReplaced: (@Sendable (_ index: UInt64) -> Void)? = nil
  ) {
    self.id = id
    self.group = group
    self.configuration = configuration
    self.runtime = runtime
    self.endpoint = endpoint
    self.outbox = ReplicaOutbox(endpoint, group: group)
    self.storage = storage
    self.machine = ReplicatedStateMachine(machine, policy: configuration.sessions)
    self.logger = (logger ?? QuorumLogger(label: Engine.name)).child(
      group == .default ? id.description : "\(group).\(id)")
    self.observer = observer
    self.sharedTicker = ticker
    self.onNotifications = onNotifications
    self.onStateReplaced = onStateReplaced
    self.inputs = Mailbox(capacity: max(1, configuration.inputCapacity))
    self.cancellations = CancelledRequests(
      limit: max(1, configuration.inputCapacity) + configuration.maxPendingRequests)
    self.tickSignal = TickSignal(ringing: doorbell)
    let entropy = runtime.clock.wallClockMillis() ^ runtime.clock.monotonicNanos()
    self.seed = seed ?? (id.rawValue &* 0x9E37_79B9_7F4A_7C15 ^ group.rawValue &* 0xBF58_476D_1CE4_E5B9 ^ entropy)
  }

  // MARK: - Running

  /// Recovers durable state and runs the node until ``stop()`` or ``shutdown()`` is called or the task is
  /// cancelled.
  /// - Throws: ``QuorumCore/ConfigurationError`` for an invalid configuration, a ``QuorumStorage/StorageError``
  ///   if recovery or a write fails (the node stops rather than continue without durability).
  @inlinable public func run() async throws {
    precondition(!running, "ReplicaNode.run() called twice")
    running = true
    started.store(true, ordering: .releasing)
    defer {
      broadcast.publish(Engine.stoppedEvent)
      broadcast.finish()
      recoveredSignal.finish(failed: true)
      completion.finish()
    }
    do {
      try configuration.validate()
      try await recover()
      recoveredSignal.finish(failed: false)
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

  /// Asks the node to stop: ``run()`` finishes the write in progress and returns. Does not wait.
  @inlinable public nonisolated func stop() {
    do {
      try inputs.trySend(.stop)
    } catch {
      // The inputs are full (or closed): the loop stops at its next turn, not once it has handled (proposed)
      // everything buffered, which a steady flow of peer messages could put off indefinitely. What is buffered
      // then fails with `stopped`.
      stopRequested.store(true, ordering: .releasing)
      inputs.close()
    }
  }

  /// Asks the node to let its storage drop every entry it can: it snapshots if anything was applied since its
  /// last snapshot, then compacts the storage through that snapshot (the entries it keeps in memory for slow
  /// followers stay there). A host whose groups share one log asks this of a group whose old entries keep the
  /// log's oldest segment on disk. Does not wait; ignored if the node's inputs are full.
  ///
  /// A snapshot rewrites the whole state, so the node takes one early only if its last snapshot was at most
  /// `snapshotBudgetBytes` (the log space the release would help free): a group with a large state waits for
  /// its own schedule, which writes at most one byte of snapshot per byte of log. Compacting through a snapshot
  /// already taken costs nothing and is always done.
  @inlinable public nonisolated func releaseStoredEntries(snapshotBudgetBytes: Int) {
    try? inputs.trySend(.releaseStoredEntries(snapshotBudgetBytes))
  }

  /// Stops the node and waits until ``run()`` has returned (at once if it never ran or already returned).
  /// Requests in flight are answered (`stopped` for those not yet applied); the storage may be closed after.
  @inlinable public nonisolated func shutdown() async {
    stop()
    guard started.load(ordering: .acquiring) else { return }
    await completion.wait()
  }

  /// Waits until ``run()`` has recovered the node's durable state (a server opens its listener only then).
  /// - Throws: ``QuorumCore/ConsensusError/stopped`` if the node stopped before it recovered.
  @inlinable public nonisolated func waitUntilRecovered() async throws {
    if await recoveredSignal.wait() { throw ConsensusError.stopped }
  }

  /// Role, leader, membership and snapshot changes, then a final stop event, for every subscriber.
  ///
  /// Each access is a new subscription that sees every event from that moment on; the stream finishes when the
  /// node stops (at once for a subscription made after that). A subscriber more than 256 events behind loses
  /// its oldest undelivered ones; the node never waits for a subscriber.
  public nonisolated var events: AsyncStream<Engine.Event> { broadcast.subscribe() }

  /// A subscription to ``events`` as `transform` maps them (leaving out those it maps to `nil`), with the same
  /// buffering and the same end.
  @inlinable public nonisolated func events<Output: Sendable>(
    _ transform: @escaping @Sendable (Engine.Event) -> Output?
  )
    -> AsyncStream<Output>
  {
    broadcast.subscribe(transform)
  }

  /// Waits for the snapshot being stored: the caller closes the storage once ``run()`` returns. The inputs
  /// close first, so the task cannot wait for room in them.
  @inlinable func finishSnapshotTask() async {
    guard let task = background.detachTask() else { return }
    inputs.close(discardingBuffered: false)
    await task.value
  }

  @inlinable func runLoopWithTicker() async throws {
    if let sharedTicker {
      let registration = sharedTicker.register(tickSignal)
      defer { sharedTicker.unregister(registration) }
      try await loop()
      return
    }
    try await withThrowingTaskGroup(of: Void.self) { group in
      let runtime = self.runtime
      let interval = configuration.tickInterval
      let signal = tickSignal
      group.addTask { await runtime.runTicker(every: interval, raising: signal) }
      defer { group.cancelAll() }
      try await loop()
    }
  }

  @inlinable func recover() async throws {
    let recovered = try await storage.recover()
    if recovered.report.truncatedTailBytes > 0 {
      logger.warning("storage recovery truncated a torn tail", ["report": recovered.report.description])
    }
    let (engine, snapshot) = try Engine.recover(
      id: id, configuration: configuration, state: recovered, random: SeededRandom(seed: seed))
    if let snapshot {
      try machine.restore(from: snapshot.data)
      applied = snapshot.index
      lastSnapshotIndex = snapshot.index
      lastSnapshotBytes = snapshot.data.count
      onStateReplaced?(snapshot.index)
    }
    self.engine = engine
    self.engine?.advanceClock(to: runtime.clock.monotonicNanos())
    logger.notice("started", ["last": "\(recovered.entries.last?.index ?? snapshot?.index ?? 0)"])
  }

  /// The most peer messages, and the most local inputs, one turn of the loop takes.
  @inlinable static var inputsPerTurn: Int { 4096 }

  /// The run loop: take everything that arrived (peer messages straight from the transport's mailbox, local
  /// requests from the node's own, the timer's flag), step the engine, carry out the ready, repeat. One doorbell
  /// rung by all three wakes it, so no forwarding task sits between the transport and the node.
  @inlinable func loop() async throws {
    inputs.attach(doorbell)
    endpoint.incoming.attach(doorbell)
    // A hint, so a full mailbox may drop it: a node that busy is not waiting out an idle leader's timeout.
    endpoint.onPeerLost { [inputs] peer in try? inputs.trySend(.peerLost(peer)) }
    var batch: [Input] = []
    var messages: [Envelope<Engine.Message>] = []
    batch.reserveCapacity(Self.inputsPerTurn)
    messages.reserveCapacity(Self.inputsPerTurn)
    /// Cancels whose request was not found while more inputs were queued than one turn takes: it may be among
    /// them, so they are tried again next turn.
    var unresolved: [UInt64] = []
    while !stopped, !Task.isCancelled, !stopRequested.load(ordering: .acquiring) {
      let period = tickSignal.period
      let ticked = tickSignal.take()
      // Before the inputs: a cancel recorded after its request was queued finds it in this batch or earlier.
      var cancelled = cancellations.take()
      if !unresolved.isEmpty {
        cancelled = unresolved + cancelled
        unresolved = []
      }
      let messagesTaken = endpoint.incoming.drainAvailable(into: &messages, limit: Self.inputsPerTurn)
      let inputsTaken = inputs.drainAvailable(into: &batch, limit: Self.inputsPerTurn)
      let taken = messagesTaken + inputsTaken
      if taken == 0 && !ticked && cancelled.isEmpty {
        if inputs.isClosed { break }
        await doorbell.wait()
        continue
      }
      let now = runtime.clock.monotonicNanos()
      engine?.advanceClock(to: now)
      engine?.allowIdling(machine.nextDeadlineMillis == nil)
      // The ticks first: they measure time up to now, and messages stepped after them count from now. A node
      // that slept through quiet ticks applies them now (they only advance counters); beyond those, one tick
      // per wake-up at most, so a stall never turns into a burst that would shorten a timeout.
      let elapsed = period &- lastTickPeriod
      let owed = ticked ? max(1, min(elapsed, plannedQuiet &+ 1)) : min(elapsed, plannedQuiet)
      if owed > 0 { tick(now: now, count: owed) }
      // A raise between reading the period and taking the flag: its period is the one just applied.
      lastTickPeriod = ticked && elapsed == 0 ? period &+ 1 : period
      for envelope in messages { engine?.step(envelope.payload, from: envelope.from) }
      // A vote just won: the proposals below are stamped in the new term.
      if !messages.isEmpty && !batch.isEmpty { syncLogClock(now: now) }
      for input in batch { handle(input, now: now) }
      for requestID in cancelled {
        if !cancelRequest(requestID) && inputsTaken == Self.inputsPerTurn { unresolved.append(requestID) }
      }
      messages.removeAll(keepingCapacity: true)
      batch.removeAll(keepingCapacity: true)
      try await recordStoredSnapshot()
      if releaseBudget != nil && !background.isBusy { try await releaseStorage() }
      try await drainReady()
      plannedQuiet = quietTicks()
      tickSignal.quiet(until: lastTickPeriod &+ plannedQuiet &+ 1)
    }
  }

  /// How many ticks the node may sleep through: the engine's quiet ticks (``ReplicaEngine/quietTicks``), when
  /// nothing the node itself times is waiting — no request, read or transfer (their deadlines are checked on
  /// ticks), no time-only entry in flight, and, on a leader, no expiry of the state machine due (a leader writes
  /// it when its log clock passes it). At most a thousand.
  @inlinable func quietTicks() -> UInt64 {
    guard pendingCount == 0, timeAdvanceIndex == nil, heldInstall == nil,
      let (leading, quiet) = engine?.inspect({ ($0.isLeader, $0.quietTicks) })
    else { return 0 }
    if leading && machine.nextDeadlineMillis != nil { return 0 }
    return UInt64(min(max(0, quiet), 1_000))
  }

  // MARK: - Inputs

  @inlinable var pendingCount: Int { proposals.count + reads.count + waitingReads.count + transfers.count }

  /// Applies `count` ticks. All but the last are quiet ones the node slept through (they change no role), so
  /// the log clock and a leader's time-only entry are looked at once, after them.
  @inlinable func tick(now: UInt64, count: UInt64) {
    var expiryDue = false
    for _ in 0..<count {
      engine?.tick(now: now)
      ticks &+= 1
      if ticks % 8 == 0 { expiryDue = true }
    }
    // Deadlines are compared with `now`, the same for every tick of the batch: one look is enough.
    if expiryDue { expireRequests(now: now) }
    syncLogClock(now: now)
    proposeTimeAdvanceIfDue(now: now)
  }

  /// Starts the log clock when the engine has just come to lead — before anything is stamped in its term — and
  /// stops it when the engine no longer leads.
  @inlinable func syncLogClock(now: UInt64) {
    let leading = engine?.inspect { $0.isLeader } == true
    if leading && !logClock.isRunning {
      logClock.becameLeader(now: now, applied: machine.logTimeMillis)
    } else if !leading && logClock.isRunning {
      logClock.stop()
    }
  }

  /// A leader proposes a time-only entry once its log clock passes the state machine's next deadline (a lease
  /// or session expiring), so expiry happens even when no client writes; one at a time.
  @inlinable func proposeTimeAdvanceIfDue(now: UInt64) {
    guard timeAdvanceIndex == nil, engine?.inspect({ $0.isLeader }) == true, let deadline = machine.nextDeadlineMillis,
      logClock.peek(now: now, applied: machine.logTimeMillis) >= deadline
    else { return }
    let command = ReplicatedCommand<Machine.Command>(
      timestampMillis: logClock.stamp(now: now, applied: machine.logTimeMillis), body: .advanceTime)
    timeAdvanceIndex = try? engine?.propose(command.wireBytes(reservingCapacity: 16)).index
  }

  @inlinable func handle(_ input: Input, now: UInt64) {
    switch input {
    case .stop:
      stopped = true
    case .snapshotStored(let result):
      snapshotReported = true
      switch background.finished(result) {
      case .superseded(let reason)?:
        logger.info("dropped a snapshot superseded by the leader's: \(reason)")
      case .notStored(let reason)?:
        // Nothing was stored: the bytes since the last snapshot that was are still to be covered.
        appliedBytesSinceSnapshot &+= bytesBeforeSnapshot
        refusedSnapshotAt = applied
        logger.warning("a snapshot could not be stored; taking another later: \(reason)")
      case nil:
        break
      }
    case .cancel(let requestID):
      cancelRequest(requestID)
    case .peerLost(let peer):
      engine?.peerLost(peer)
    case .releaseStoredEntries(let budget):
      guard !stopped else { break }  // A snapshot started now would only delay the shutdown.
      releaseBudget = budget
      maybeSnapshot()
    case .propose(let proposal, let continuation):
      guard pendingCount < configuration.maxPendingRequests else {  // before the work of encoding it
        continuation.resume(throwing: ConsensusError.overloaded(limit: configuration.maxPendingRequests))
        return
      }
      // Encoded by the machine type's own witness: code compiled for its command type, not generic code.
      let entry = Machine.encodeEntry(
        proposal.command, timestampMillis: logClock.stamp(now: now, applied: machine.logTimeMillis),
        request: proposal.request, acknowledgedThrough: proposal.acknowledged, principal: proposal.principal)
      propose(proposal.id, entry, .response(continuation), now: now)
    case .register(let requestID, let principal, let continuation):
      let replicated = ReplicatedCommand<Machine.Command>(
        timestampMillis: logClock.stamp(now: now, applied: machine.logTimeMillis), principal: principal,
        body: .registerSession)
      propose(requestID, replicated.wireBytes(reservingCapacity: 128), .session(continuation), now: now)
    case .read(let requestID, let query, let consistency, let atLeast, let continuation):
      read(requestID, query, consistency, atLeast: atLeast, continuation, now: now)
    case .membership(let requestID, let change, let continuation):
      guard pendingCount < configuration.maxPendingRequests else {
        continuation.resume(throwing: ConsensusError.overloaded(limit: configuration.maxPendingRequests))
        return
      }
      do {
        guard let ticket = try engine?.changeMembership(change) else { throw ConsensusError.stopped }
        track(requestID, ticket: ticket, waiter: .membership(continuation), now: now)
      } catch {
        continuation.resume(throwing: error)
      }
    case .transfer(let requestID, let target, let continuation):
      guard pendingCount < configuration.maxPendingRequests else {
        continuation.resume(throwing: ConsensusError.overloaded(limit: configuration.maxPendingRequests))
        return
      }
      do {
        switch try engine?.transferLeadership(to: target) {
        case nil:
          continuation.resume(throwing: ConsensusError.stopped)
        case .done?:
          continuation.resume()
        case .started?:
          let timeout = configuration.electionTimeout.upperBound.nanoseconds &* 2
          transfers.append(
            PendingTransfer(id: requestID, target: target, continuation: continuation, deadline: now &+ timeout))
        }
      } catch {
        continuation.resume(throwing: error)
      }
    }
  }

  @inlinable func track(_ requestID: UInt64, ticket: Engine.Ticket, waiter: Waiter, now: UInt64) {
    if let old = proposals.removeValue(forKey: ticket.index) {
      // A new proposal landed where an older, still-waiting one was: this node's log lost the older entry (a
      // later leader's truncated it) and this node leads again. The older entry is no longer in this log, but
      // a node that still holds it may yet win an election and commit it (Raft: the leader of term 1 appends X
      // at 10 and replicates it to one follower only; the leader of term 2 truncates it here; this node wins
      // term 3 and appends at 10; that follower wins term 4 and commits X). So not `dropped`, which promises
      // that it was not committed: a caller without a session would apply it twice by retrying.
      proposalIndexByID[old.id] = nil
      old.waiter.fail(ConsensusError.outcomeUnknown)
    }
    proposals[ticket.index] = Pending(
      id: requestID, ticket: ticket, waiter: waiter, deadline: now &+ configuration.requestTimeout.nanoseconds)
    proposalIndexByID[requestID] = ticket.index
  }

  /// Proposes the encoded ``QuorumCore/ReplicatedCommand`` `bytes`; `waiter` learns the outcome.
  @inlinable func propose(_ requestID: UInt64, _ bytes: [UInt8], _ waiter: Waiter, now: UInt64) {
    guard pendingCount < configuration.maxPendingRequests else {
      waiter.fail(ConsensusError.overloaded(limit: configuration.maxPendingRequests))
      return
    }
    guard bytes.count <= configuration.maxCommandBytes else {
      waiter.fail(ConsensusError.commandTooLarge(bytes: bytes.count, limit: configuration.maxCommandBytes))
      return
    }
    do {
      guard let ticket = try engine?.propose(bytes) else { throw ConsensusError.stopped }
      track(requestID, ticket: ticket, waiter: waiter, now: now)
    } catch {
      waiter.fail(error)
    }
  }

  @inlinable func read(
    _ requestID: UInt64, _ query: Machine.Query, _ consistency: ReadConsistency, atLeast: UInt64,
    _ continuation: Completion<ReadAnswer>, now: UInt64
  ) {
    let deadline = now &+ configuration.requestTimeout.nanoseconds
    switch consistency {
    case .stale, .session:
      // The client's own position (`atLeast`) is what makes a session read read-your-writes and monotonic.
      if atLeast <= applied {
        continuation.resume(returning: answer(query))
      } else if pendingCount >= configuration.maxPendingRequests {
        continuation.resume(throwing: ConsensusError.overloaded(limit: configuration.maxPendingRequests))
      } else {
        // This replica has not applied what the client already saw elsewhere: wait until it has.
        waitingReads.append(
          PendingRead(
            id: requestID, query: query, continuation: continuation, index: atLeast, deadline: deadline, isLocal: true))
      }
    case .lease, .linearizable:
      guard pendingCount < configuration.maxPendingRequests else {
        continuation.resume(throwing: ConsensusError.overloaded(limit: configuration.maxPendingRequests))
        return
      }
      if consistency == .lease, let index = engine?.leaseReadIndex(now: now) {
        if max(index, atLeast) <= applied {
          continuation.resume(returning: answer(query))
        } else {
          waitingReads.append(
            PendingRead(
              id: requestID, query: query, continuation: continuation, index: max(index, atLeast), deadline: deadline))
        }
        return
      }
      // Linearizable, or a lease read without a valid lease: confirm leadership with a read-index round.
      do {
        guard engine != nil else { throw ConsensusError.stopped }
        try engine?.requestRead(id: requestID)
        reads[requestID] = PendingRead(
          id: requestID, query: query, continuation: continuation, index: atLeast, deadline: deadline)
      } catch {
        continuation.resume(throwing: error)
      }
    }
  }

  /// Fails the request `requestID` with `CancellationError`; returns whether it was waiting here.
  @discardableResult
  @inlinable func cancelRequest(_ requestID: UInt64) -> Bool {
    if let index = proposalIndexByID.removeValue(forKey: requestID), let pending = proposals.removeValue(forKey: index)
    {
      pending.waiter.fail(CancellationError())
      return true
    }
    if let read = reads.removeValue(forKey: requestID) {
      read.continuation.resume(throwing: CancellationError())
      return true
    }
    if let i = waitingReads.firstIndex(where: { $0.id == requestID }) {
      waitingReads.remove(at: i).continuation.resume(throwing: CancellationError())
      return true
    }
    if let i = transfers.firstIndex(where: { $0.id == requestID }) {
      transfers.remove(at: i).continuation.resume(throwing: CancellationError())
      return true
    }
    return false
  }

  /// Fails every request past its deadline. Keys are visited in order, so the order in which waiting tasks
  /// resume (and a simulation's schedule) does not depend on hashing.
  @inlinable func expireRequests(now: UInt64) {
    guard pendingCount > 0 else { return }
    for index in proposals.keys.sorted() {
      guard let pending = proposals[index], pending.deadline <= now else { continue }
      proposals[index] = nil
      proposalIndexByID[pending.id] = nil
      pending.waiter.fail(ConsensusError.timeout)
    }
    for id in reads.keys.sorted() {
      guard let read = reads[id], read.deadline <= now else { continue }
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

  @inlinable func failAll(_ error: any Error) {
    for index in proposals.keys.sorted() { proposals[index]?.waiter.fail(error) }
    proposals = [:]
    proposalIndexByID = [:]
    for id in reads.keys.sorted() { reads[id]?.continuation.resume(throwing: error) }
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
      case .propose(_, let c): c.resume(throwing: error)
      case .register(_, _, let c): c.resume(throwing: error)
      case .read(_, _, _, _, let c): c.resume(throwing: error)
      case .membership(_, _, let c): c.resume(throwing: error)
      case .transfer(_, _, let c): c.resume(throwing: error)
      case .cancel, .stop, .snapshotStored, .peerLost, .releaseStoredEntries: break
      }
    }
  }

  // MARK: - Ready

  /// Carries out the engine's readies, in order. A ready held back because its snapshot could not be stored
  /// goes first once its pause is over; while it is held, no later ready is taken (they depend on it: their
  /// acknowledgements promise the snapshot too), so the engine's work waits as behind a slow disk.
  @inlinable func drainReady() async throws {
    if let held = heldInstall {
      guard runtime.clock.monotonicNanos() >= held.retryAtNanos else { return }
      heldInstall = nil
      guard try await carryOut(held.ready, failures: held.failures) else { return }
    }
    while engine?.inspect({ $0.hasReady }) == true {
      guard let rd = engine?.ready() else { return }
      if let observer, let engine { observer.node(id, group: group, willCarryOut: rd, engine: engine) }
      send(rd.eagerMessages)
      guard try await carryOut(rd, failures: 0) else { return }
    }
  }

  /// Carries out `rd`, whose eager messages were sent: stores it, sends what waited for that, installs and
  /// applies. Returns `false` when its snapshot could not be stored and it is held for another try
  /// (``heldInstall``); nothing of it was carried out then.
  @inlinable func carryOut(_ rd: ReplicaReady<Engine>, failures: Int) async throws -> Bool {
    guard try await storeInstall(rd, failures: failures) else { return false }
    let sentWhenDurable = try await persist(rd)
    observer?.node(id, group: group, didPersist: rd)
    self.engine?.advance(rd)
    try await install(rd)
    apply(rd.committed)
    for state in rd.readStates {
      guard var read = reads.removeValue(forKey: state.id) else { continue }
      read.index = max(read.index, state.index)
      if read.index <= applied {
        read.continuation.resume(returning: answer(read.query))
      } else {
        waitingReads.append(read)
      }
    }
    for id in rd.failedReads {
      reads.removeValue(forKey: id)?.continuation.resume(
        throwing: ConsensusError.notLeader(hint: self.engine?.leader))
    }
    answerWaitingReads()
    // After the answers: a leader's news of a commit to its followers can wait the few microseconds that
    // applying takes; its client's reply should not.
    if !sentWhenDurable { send(rd.messages) }
    report(rd)
    maybeSnapshot()
    return true
  }

  @inlinable func send(_ messages: [ReplicaOutgoing<Engine.Message>]) {
    for m in messages {
      do {
        try outbox.send(m.message, to: m.to)
      } catch {
        // The transport is allowed to lose messages; the engine retransmits. Tell it so it stops streaming.
        if case .queueFull = error { engine?.reportUnreachable(m.to) }
        logger.debug("send to \(m.to) failed: \(error)")
      }
    }
  }

  /// Stores what `rd` must make durable. With a write, the messages that waited for it are sent by the storage
  /// the moment the write is durable (on its I/O thread, for file storage), not after this task is scheduled
  /// again: a follower's acknowledgement leaves one thread hand-off sooner. Returns whether they were sent;
  /// otherwise the caller sends them.
  @inlinable func persist(_ rd: ReplicaReady<Engine>) async throws -> Bool {
    if rd.write.isEmpty { return false }
    guard !rd.messages.isEmpty else {
      try await writeRetryingDescriptors(rd.write, whenDurable: nil)
      return true
    }
    let sender = DurableSender(outbox: outbox, messages: rd.messages)
    try await writeRetryingDescriptors(rd.write, whenDurable: { sender.send() })
    for peer in sender.refused { engine?.reportUnreachable(peer) }
    return true
  }

  /// The most times storing a snapshot from the leader is tried again, after failures that changed nothing
  /// durable, before the node stops.
  @usableFromInline static var installRetries: Int { 60 }

  /// Stores the snapshot from the leader that `rd` carries, if it does (and compacts behind it, for an engine
  /// that asks, unless the compaction finds no file descriptor: see ``compactSkippingStarved(through:)``).
  /// Returns `false` when the storage failed without changing anything durable
  /// (``QuorumStorage/StorageError/isRetryable``: the disk was full, writing the file failed, descriptors ran
  /// out): the ready is then held (``heldInstall``) and tried again after a pause — 10 ms, doubling up to a
  /// second — while the loop goes on. Nothing of it has been acknowledged: its messages, the acknowledgement
  /// among them, leave only once it is stored; a leader meanwhile resends, as to a follower whose disk is slow.
  /// This is the leader's retry without the transfer: the follower keeps the snapshot it received. When the
  /// last of ``installRetries`` retries fails too (the first try and ``installRetries`` more, all failed), or on
  /// any other failure (the storage may no longer match what the node holds), the error stops the node.
  @inlinable func storeInstall(_ rd: ReplicaReady<Engine>, failures: Int) async throws -> Bool {
    guard let install = rd.snapshot else { return true }
    do {
      try await storage.saveSnapshot(install.stored, discardingLog: install.discardingLog)
    } catch let error as StorageError where error.isRetryable && failures < Self.installRetries {
      let pauseNanos = min(UInt64(10_000_000) << UInt64(min(failures, 7)), 1_000_000_000)
      heldInstall = HeldInstall(
        ready: rd, failures: failures + 1, retryAtNanos: runtime.clock.monotonicNanos() &+ pauseNanos)
      observer?.node(id, group: group, heldInstallAt: install.stored.index, failures: failures + 1)
      logger.warning(
        "could not store the leader's snapshot; trying again in \(pauseNanos / 1_000_000) ms",
        ["index": "\(install.stored.index)", "error": "\(error)"])
      return false
    }
    // The snapshot is stored: what the ready acknowledges is durable. The compaction behind it only frees space,
    // so one that finds no file descriptor is left for the next snapshot, as after the node's own.
    if let through = install.compactThrough { _ = try await compactSkippingStarved(through: through) }
    return true
  }

  /// The most times a write that found no file descriptor is tried again before the node stops.
  @usableFromInline static var descriptorRetries: Int { 60 }

  /// Writes `write`, trying again (pausing up to a second) while the storage reports that file descriptors ran
  /// out: a retryable condition (connections come and go), not a failed disk. Messages that depend on the write
  /// wait meanwhile, as for a slow disk. After ``descriptorRetries`` attempts the error stops the node.
  @inlinable func writeRetryingDescriptors(
    _ write: StorageWrite<Engine.Entry>, whenDurable: (@Sendable () -> Void)?
  ) async throws {
    var pause = Duration.milliseconds(10)
    for attempt in 0... {
      do {
        if let whenDurable {
          try await storage.write(write, whenDurable: whenDurable)
        } else {
          try await storage.write(write)
        }
        return
      } catch let error as StorageError where error.isRetryable && attempt < Self.descriptorRetries {
        logger.warning("a write found no file descriptor; trying again in \(pause)", ["error": "\(error)"])
        try await runtime.clock.sleep(for: pause)
        pause = min(pause * 2, .seconds(1))
      }
    }
  }

  @inlinable func install(_ rd: ReplicaReady<Engine>) async throws {
    guard let snapshot = rd.snapshot?.stored else { return }
    // Decoding a large state takes a while: it runs off this node's executor (which may be a network thread that
    // serves other groups too) while the node waits for it.
    let template = machine
    let data = snapshot.data
    machine = try await runtime.detached { () -> Result<ReplicatedStateMachine<Machine>, any Error> in
      var restored = template
      do {
        try restored.restore(from: data)
        return .success(restored)
      } catch {
        return .failure(error)
      }
    }.value.get()
    applied = snapshot.index
    lastSnapshotIndex = snapshot.index
    lastSnapshotBytes = snapshot.data.count
    appliedBytesSinceSnapshot = 0
    onStateReplaced?(snapshot.index)
    broadcast.publish(Engine.snapshotInstalledEvent(at: snapshot.index))
    logger.info("installed snapshot", ["index": "\(snapshot.index)", "term": "\(snapshot.term)"])
    for index in proposals.keys.sorted() where index <= snapshot.index {
      // Inside the snapshot, so applied or overwritten: we cannot tell which. A session retry is safe.
      if let pending = proposals.removeValue(forKey: index) {
        proposalIndexByID[pending.id] = nil
        pending.waiter.fail(ConsensusError.outcomeUnknown)
      }
    }
  }

  @inlinable func apply(_ entries: [Engine.Entry]) {
    defer {
      if let index = timeAdvanceIndex, index <= applied { timeAdvanceIndex = nil }
    }
    for entry in entries {
      applied = entry.index
      appliedBytesSinceSnapshot &+= entry.data.count
      var outcome: ApplyOutcome<Machine.Response>?
      if entry.isCommand {
        // Through the machine type's own witness: the apply path compiled for that type, not generic code.
        outcome = Machine.applyEntry(entry.data, at: entry.index, to: &machine)
        if case .undecodable(let error)? = outcome {
          logger.error("could not decode the entry at \(entry.index): \(error)")
        }
      }
      observer?.node(id, group: group, applied: entry)
      // Taken even with nobody to tell: left in the machine, they would pile up for ever (and be copied into
      // every snapshot's copy of the machine).
      let notifications = machine.takeNotifications()
      if let onNotifications, !notifications.isEmpty { onNotifications(entry.index, notifications) }
      guard let pending = proposals.removeValue(forKey: entry.index) else { continue }
      proposalIndexByID[pending.id] = nil
      switch engine?.match(pending.ticket, committedAs: entry) {
      case .proposal?: break
      case .sameValue?:
        // Perhaps this request, perhaps another leader's identical one, whose outcome (a session number) must
        // not be handed to this caller too. A command retried under its session is applied once.
        pending.waiter.fail(ConsensusError.outcomeUnknown)
        continue
      default:
        pending.waiter.fail(ConsensusError.dropped)
        continue
      }
      switch (pending.waiter, outcome) {
      case (.response(let c), .applied(let response)?):
        c.resume(returning: IndexedResponse(value: response, index: entry.index))
      case (.response(let c), .duplicate(let response, let appliedAt)?):
        // The index of the entry that applied it (0 from a snapshot written before indexes were remembered).
        c.resume(returning: IndexedResponse(value: response, index: appliedAt == 0 ? entry.index : appliedAt))
      case (.response(let c), .sessionExpired(let session)?):
        c.resume(throwing: ConsensusError.sessionExpired(session))
      case (.response(let c), .responseForgotten(let request)?):
        // Not `outcomeUnknown`, which invites a retry under the session: the retry would get this same answer.
        c.resume(throwing: ConsensusError.responseForgotten(request))
      case (.response(let c), .sessionNotOwned(let request)?):
        c.resume(throwing: ConsensusError.sessionNotOwned(request.session))
      case (.session(let c), .sessionRegistered(let session)?):
        c.resume(returning: session)
      case (.session(let c), .sessionQuotaExceeded(_, let limit)?):
        c.resume(throwing: ConsensusError.sessionQuotaExceeded(limit: limit))
      case (.membership(let c), nil):
        c.resume(returning: entry.index)
      case (let waiter, _):
        waiter.fail(ConsensusError.dropped)
      }
    }
  }

  @inlinable func answer(_ query: Machine.Query) -> ReadAnswer {
    IndexedRead(value: machine.query(query), index: applied)
  }

  @inlinable func answerWaitingReads() {
    guard !waitingReads.isEmpty else { return }
    waitingReads.removeAll { read in
      guard read.index <= applied else { return false }
      read.continuation.resume(returning: answer(read.query))
      return true
    }
  }

  @inlinable func report(_ rd: ReplicaReady<Engine>) {
    for event in rd.events { broadcast.publish(event) }
    for failure in rd.peerFailures {
      logger.error("stopped replicating to \(failure.peer): \(failure.reason)")
    }
    guard let (leading, leader) = engine?.inspect({ ($0.isLeader, $0.leader) }) else { return }
    if rd.leadershipChanged {
      timeAdvanceIndex = nil
      syncLogClock(now: runtime.clock.monotonicNanos())
      if !leading {
        // A deposed leader's waiting lease reads can no longer be answered safely. Session and stale reads wait
        // on: they only need this replica to catch up.
        let failed = waitingReads.filter { !$0.isLocal }
        waitingReads.removeAll { !$0.isLocal }
        for read in failed where read.index > applied {
          read.continuation.resume(throwing: ConsensusError.notLeader(hint: leader))
        }
        for read in failed where read.index <= applied {
          read.continuation.resume(returning: answer(read.query))
        }
      }
    }
    if !transfers.isEmpty {
      transfers.removeAll { transfer in
        guard engine?.inspect({ $0.transferCompleted(to: transfer.target) }) == true else { return false }
        transfer.continuation.resume()
        return true
      }
    }
  }

  /// Starts a snapshot when enough was applied since the last one: at least `snapshotEvery` entries, and at
  /// least the last snapshot's size in entry bytes. The second rule amortises the snapshot's cost: a snapshot
  /// encodes, copies and writes the whole state, so a large state with small writes would otherwise spend most
  /// of its time snapshotting (a 26 MB key-value state took one every half second at 20,000 puts/s, and the
  /// snapshots took a third of the servers' CPU). With it, snapshotting writes at most one byte per byte of
  /// log, and the log held in memory stays below the larger of `snapshotEvery` entries and the state's size.
  /// (At half the state's size, the rule until 2026-12-05, snapshots still took 12–17 % of the servers' CPU
  /// under 256 clients writing 100-byte values over 262,144 keys.)
  ///
  /// The state machine is copied (a copy-on-write value: the loop pays for one copy of the state at its next
  /// apply) and the copy is encoded and stored by a background task, so replication does not wait for the
  /// encoding, the write and the sync. ``recordStoredSnapshot()`` finishes the job.
  @inlinable func maybeSnapshot() {
    let early =
      releaseBudget.map { budget in
        SnapshotSchedule.mayTakeEarly(
          applied: applied, lastSnapshot: lastSnapshotIndex, lastSnapshotBytes: lastSnapshotBytes,
          budgetBytes: budget)
      } ?? false
    guard !background.isBusy,
      early
        || SnapshotSchedule.isDue(
          applied: applied, lastSnapshot: max(lastSnapshotIndex, refusedSnapshotAt), every: configuration.snapshotEvery,
          bytesSince: appliedBytesSinceSnapshot, lastSnapshotBytes: lastSnapshotBytes),
      let (term, metadata) = engine?.snapshotMetadata(at: applied)
    else { return }
    bytesBeforeSnapshot = appliedBytesSinceSnapshot
    appliedBytesSinceSnapshot = 0
    let index = applied
    let machine = self.machine
    let inputs = self.inputs
    background.start(
      on: runtime, storing: { $0 }, to: storage,
      encode: { StoredSnapshot(index: index, term: term, metadata: metadata, data: machine.snapshot()) },
      // Suspends while the inputs are full; fails only once the node stopped, when nothing needs it.
      report: { try? await inputs.send(.snapshotStored($0)) })
  }

  /// Records the snapshot the background task stored and compacts the log behind it, unless the log moved
  /// past it meanwhile (a snapshot from the leader was installed). Rethrows the task's storage failure.
  @inlinable func recordStoredSnapshot() async throws {
    guard snapshotReported else { return }
    snapshotReported = false
    guard let snapshot = try background.takeStored() else { return }
    guard
      let compactThrough = engine?.recordSnapshot(
        snapshot, lastRecorded: lastSnapshotIndex, retainEntries: configuration.snapshotRetainEntries)
    else { return }
    lastSnapshotIndex = snapshot.index
    lastSnapshotBytes = snapshot.data.count
    if compactThrough > storageFloor {
      if try await compactSkippingStarved(through: compactThrough) { storageFloor = compactThrough }
    }
    // What the storage holds: a compaction skipped for want of descriptors is reported as not done.
    observer?.node(
      id, group: group, recordedSnapshotAt: snapshot.index, compactedThrough: min(compactThrough, storageFloor))
    logger.info("snapshot taken", ["index": "\(snapshot.index)", "bytes": "\(snapshot.data.count)"])
  }

  /// Answers ``releaseStoredEntries(snapshotBudgetBytes:)`` once no snapshot is being stored: compacts the storage
  /// through the newest snapshot, past the entries the engine keeps for slow followers (it keeps them in memory;
  /// only a restart loses them, and a follower that needs them then gets the snapshot).
  @inlinable func releaseStorage() async throws {
    releaseBudget = nil
    guard lastSnapshotIndex > storageFloor else { return }
    guard try await compactSkippingStarved(through: lastSnapshotIndex) else { return }
    storageFloor = lastSnapshotIndex
    logger.info("compacted the stored log to release storage", ["through": "\(lastSnapshotIndex)"])
  }

  /// Compacts the storage through `index`; returns `false` when it found no file descriptor (the compaction
  /// point needed a new segment, or a directory sync after deleting segments found none): a retryable condition
  /// that leaves the storage usable, so the compaction is left for the next snapshot or release rather than
  /// stopping the node. Other failures are thrown.
  @inlinable func compactSkippingStarved(through index: UInt64) async throws -> Bool {
    do {
      try await storage.compact(through: index)
      return true
    } catch let error as StorageError where error.isRetryable {
      logger.warning(
        "a compaction found no file descriptor; left for the next snapshot",
        ["error": "\(error)", "through": "\(index)"])
      return false
    }
  }

  // MARK: - Public API

  /// Queues a request for the run loop and waits for its answer. Nonisolated: it touches only the mailbox and
  /// an atomic counter, so a caller never waits for the actor (which is busy running the loop).
  @inlinable nonisolated func submit<T>(_ make: (UInt64, Completion<T>) -> Input) async throws -> T {
    let requestID = nextRequestID.add(1, ordering: .relaxed).newValue
    return try await withTaskCancellationHandler {
      try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<T, any Error>) in
        // A cancellation that came before the request was queued sent its cancel ahead of it: send another.
        if enqueue(requestID, Completion(continuation), make), Task.isCancelled { cancel(requestID) }
      }
    } onCancel: {
      cancel(requestID)
    }
  }

  /// Tells the loop that the caller of request `requestID` cancelled it. Not through the inputs, which refuse
  /// it when full and would leave the request waiting out its whole timeout: through ``cancellations``, which
  /// the loop empties every turn, and the inputs only if an improbable `inputCapacity + maxPendingRequests`
  /// cancels are waiting already (a caller records one only while its request is in flight: queued, waiting
  /// here, or just answered).
  @inlinable nonisolated func cancel(_ requestID: UInt64) {
    if cancellations.record(requestID) {
      doorbell.ring()
    } else {
      try? inputs.trySend(.cancel(requestID))
    }
  }

  /// Queues a request for the run loop without suspending; `completion` gets its outcome, on the loop.
  @inlinable nonisolated func submit<T>(
    _ completion: @escaping @Sendable (Result<T, any Error>) -> Void, _ make: (UInt64, Completion<T>) -> Input
  ) {
    _ = enqueue(nextRequestID.add(1, ordering: .relaxed).newValue, Completion(completion), make)
  }

  /// Queues the input `make` builds; if the inputs are full or closed, ends `completion` with the reason.
  /// Returns whether the input was queued.
  @inlinable nonisolated func enqueue<T>(
    _ requestID: UInt64, _ completion: Completion<T>, _ make: (UInt64, Completion<T>) -> Input
  ) -> Bool {
    do throws(MailboxError) {
      try inputs.trySend(make(requestID, completion))
      return true
    } catch .full {
      completion.resume(throwing: ConsensusError.overloaded(limit: inputs.capacity))
    } catch {
      completion.resume(throwing: ConsensusError.stopped)
    }
    return false
  }

  /// Like ``propose(_:request:acknowledgedThrough:principal:)``, without suspending the caller: `completion`
  /// receives the outcome, on the node's loop (it must not block). For a server that answers requests straight
  /// from its network threads, with no task per request. A request passed this way cannot be cancelled; it ends
  /// with its answer or the request timeout.
  @inlinable public nonisolated func propose(
    _ command: Machine.Command, request: RequestID?, acknowledgedThrough: UInt64, principal: String?,
    completion: @escaping @Sendable (Result<IndexedResponse, any Error>) -> Void
  ) {
    submit(completion) {
      .propose(
        Proposal(
          id: $0, command: command, request: request, acknowledged: acknowledgedThrough, principal: principal), $1)
    }
  }

  /// Like ``read(_:consistency:atLeast:)``, without suspending the caller: `completion` receives the outcome, on
  /// the node's loop (it must not block).
  @inlinable public nonisolated func read(
    _ query: Machine.Query, consistency: ReadConsistency, atLeast: UInt64,
    completion: @escaping @Sendable (Result<IndexedRead<Machine.QueryResult>, any Error>) -> Void
  ) {
    submit(completion) { .read($0, query, consistency, atLeast, $1) }
  }

  /// Appends `command` to the log and returns the state machine's response once it is applied here.
  ///
  /// With a `request` identifier (from a session opened by ``registerSession()``) the command is applied
  /// at most once however often it is retried.
  /// - Throws: ``QuorumCore/ConsensusError``: `notLeader` on a follower, `timeout`, `dropped` or
  ///   `outcomeUnknown` if leadership changed while it was in flight, `overloaded`, `commandTooLarge`.
  @inlinable public nonisolated func propose(_ command: Machine.Command, request: RequestID? = nil) async throws
    -> Machine.Response
  {
    try await propose(command, request: request, acknowledgedThrough: 0)
  }

  /// Like ``propose(_:request:)``, also telling the session that every response up to
  /// `acknowledgedThrough` has been received and may be forgotten.
  @inlinable public nonisolated func propose(
    _ command: Machine.Command, request: RequestID?, acknowledgedThrough: UInt64
  ) async throws -> Machine.Response {
    try await propose(command, request: request, acknowledgedThrough: acknowledgedThrough, indexed: ()).value
  }

  /// Like ``propose(_:request:acknowledgedThrough:)``, also returning the log position the command was applied
  /// at (a client passes it to a later read's `atLeast` for read-your-writes on any replica).
  @inlinable public nonisolated func propose(
    _ command: Machine.Command, request: RequestID?, acknowledgedThrough: UInt64, indexed: Void
  ) async throws -> IndexedResponse {
    try await propose(command, request: request, acknowledgedThrough: acknowledgedThrough, principal: nil)
  }

  /// Like ``propose(_:request:acknowledgedThrough:indexed:)`` on behalf of the authenticated `principal`: a
  /// `request` whose session another principal registered is refused with
  /// ``QuorumCore/ConsensusError/sessionNotOwned(_:)`` and nothing is applied.
  @inlinable public nonisolated func propose(
    _ command: Machine.Command, request: RequestID?, acknowledgedThrough: UInt64, principal: String?
  ) async throws -> IndexedResponse {
    try await submit {
      .propose(
        Proposal(
          id: $0, command: command, request: request, acknowledged: acknowledgedThrough, principal: principal), $1)
    }
  }

  /// Answers `query` at the chosen consistency: `linearizable` (a read-index round confirmed by a quorum),
  /// `lease` (the leader lease, falling back to a read-index round when it is not valid) or `stale` (this
  /// replica's applied state, on any node).
  ///
  /// `session` needs the client's position, which this call does not carry: it is served as `linearizable`,
  /// which keeps the promise of read-your-writes. Pass the position to ``read(_:consistency:atLeast:)`` to
  /// have a session read answered by any replica that has applied it.
  @inlinable public nonisolated func read(_ query: Machine.Query, consistency: ReadConsistency = .linearizable)
    async throws
    -> Machine.QueryResult
  {
    try await read(query, consistency: consistency == .session ? .linearizable : consistency, atLeast: 0).value
  }

  /// Answers `query` at the chosen consistency, from a state that includes at least log position `atLeast`,
  /// and says which position the answer reflects.
  ///
  /// Passing the index of the last answer a client saw (from any replica) gives that client read-your-writes
  /// and monotonic reads even at `stale` consistency: a replica that is behind waits until it has applied that
  /// far (or the request times out) instead of answering from an older state.
  @inlinable public nonisolated func read(_ query: Machine.Query, consistency: ReadConsistency, atLeast: UInt64)
    async throws
    -> IndexedRead<Machine.QueryResult>
  {
    try await submit { .read($0, query, consistency, atLeast, $1) }
  }

  /// Opens an exactly-once session and returns its number.
  @inlinable public nonisolated func registerSession() async throws -> UInt64 {
    try await registerSession(principal: nil)
  }

  /// Opens an exactly-once session owned by `principal` (`nil`: no authenticated principal) and returns its
  /// number.
  /// - Throws: ``QuorumCore/ConsensusError/sessionQuotaExceeded(limit:)`` when `principal` holds its quota of
  ///   sessions, or any error of a proposal.
  @inlinable public nonisolated func registerSession(principal: String?) async throws -> UInt64 {
    try await submit { .register($0, principal, $1) }
  }

  /// Applies a membership change through the log; returns once it is committed and applied here.
  @inlinable public nonisolated func changeMembership(_ change: MembershipChange) async throws {
    _ = try await submit { .membership($0, change, $1) }
  }

  /// Adds `node` as a learner: it receives the log but does not vote.
  @inlinable public nonisolated func addLearner(_ node: NodeID) async throws {
    try await changeMembership(.change([.addLearner(node)]))
  }

  /// Adds `node` as a voter (or promotes a learner).
  @inlinable public nonisolated func addVoter(_ node: NodeID) async throws {
    try await changeMembership(.change([.addVoter(node)]))
  }

  /// Removes `node` from the group (it may be the leader itself, which then hands over and steps down).
  @inlinable public nonisolated func removeMember(_ node: NodeID) async throws {
    try await changeMembership(.change([.remove(node)]))
  }

  /// Transfers leadership to `target`; returns once this node has seen `target` lead.
  @inlinable public nonisolated func transferLeadership(to target: NodeID) async throws {
    try await submit { .transfer($0, target, $1) }
  }

  /// The node's current view (before ``run()`` has recovered: `nil`).
  public var currentStatus: Engine.Status? {
    engine?.status(applied: applied, pendingRequests: pendingCount)
  }

  /// Queries the local state machine directly (a stale read without going through the node's queue).
  @inlinable public func localQuery(_ query: Machine.Query) -> Machine.QueryResult { machine.query(query) }

  /// The applied position and the full encoded state (sessions and machine) at it: replicas that applied the
  /// same position hold byte-identical states (the simulator checks that they converge).
  @inlinable public func localState() -> (applied: UInt64, snapshot: [UInt8]) { (applied, machine.snapshot()) }

  /// The applied position and the whole state at it, sessions and machine, as values (a copy-on-write copy): for
  /// comparing replicas structurally, which also sees what a snapshot's encoding leaves out.
  public func localMachine() -> (applied: UInt64, machine: ReplicatedStateMachine<Machine>) { (applied, machine) }

  /// The newest log time applied here (milliseconds on the group's log clock).
  public var appliedLogTimeMillis: UInt64 { machine.logTimeMillis }
}

extension ReplicaNode: ReplicatedLog {}

/// A read's answer together with the log position it reflects.
public struct IndexedRead<Value: Sendable>: Sendable {
  /// The answer.
  public var value: Value
  /// The last log position applied to the state the answer was read from.
  public var index: UInt64

  /// Creates an answer.
  public init(value: Value, index: UInt64) {
    self.value = value
    self.index = index
  }
}

/// The time a leader stamps on the commands it proposes: it continues from the log time it has applied when
/// it took over and advances with its monotonic clock, so no wall-clock jump anywhere moves a deadline kept in
/// log time. Across a change of leader, log time runs slow by at most the time the change took (the new leader
/// starts from what it has applied): leases in log time can last longer, never shorter.
///
/// It runs only while the node leads, and each term of leadership starts afresh from the applied log time: a
/// stamp from an earlier term, or one made while following (a proposal the engine then refuses), never carries
/// over — either would make log time leap forward by the time since then (a follower's clock counts from an
/// arbitrary origin) and expire every lease at once. A stopped clock stamps the applied log time.
@usableFromInline struct LogClock {
  @usableFromInline var baseLogMillis: UInt64 = 0
  @usableFromInline var baseNanos: UInt64 = 0
  @usableFromInline var last: UInt64 = 0
  /// Whether a term of leadership is running.
  @usableFromInline private(set) var isRunning = false

  /// Starts a term of leadership at `now` (monotonic), continuing from `applied` log time.
  @inlinable mutating func becameLeader(now: UInt64, applied: UInt64) {
    baseLogMillis = applied
    baseNanos = now
    last = applied
    isRunning = true
  }

  /// Ends the term of leadership.
  @inlinable mutating func stop() { isRunning = false }

  /// What ``stamp(now:applied:)`` would return, without moving the clock.
  @inlinable func peek(now: UInt64, applied: UInt64) -> UInt64 {
    guard isRunning else { return applied }
    let elapsed = now >= baseNanos ? (now - baseNanos) / 1_000_000 : 0
    return max(last, applied, baseLogMillis &+ elapsed)
  }

  /// The stamp for a command proposed at `now`.
  @inlinable mutating func stamp(now: UInt64, applied: UInt64) -> UInt64 {
    guard isRunning else { return applied }
    last = peek(now: now, applied: applied)
    return last
  }
}

/// Where a request's outcome goes: the continuation of a caller suspended in an `async` method, or a callback
/// run on the node's loop (the non-suspending entry points).
@usableFromInline struct Completion<T: Sendable>: Sendable {
  @usableFromInline enum Target: Sendable {
    case continuation(UnsafeContinuation<T, any Error>)
    case callback(@Sendable (Result<T, any Error>) -> Void)
  }

  @usableFromInline let target: Target

  @inlinable init(_ continuation: UnsafeContinuation<T, any Error>) { target = .continuation(continuation) }

  @inlinable init(_ callback: @escaping @Sendable (Result<T, any Error>) -> Void) { target = .callback(callback) }

  @inlinable func resume(returning value: T) {
    switch target {
    case .continuation(let c): c.resume(returning: value)
    case .callback(let f): f(.success(value))
    }
  }

  @inlinable func resume(throwing error: any Error) {
    switch target {
    case .continuation(let c): c.resume(throwing: error)
    case .callback(let f): f(.failure(error))
    }
  }
}

extension Completion where T == Void {
  @inlinable func resume() { resume(returning: ()) }
}

/// When a replica snapshots its state machine.
@usableFromInline package enum SnapshotSchedule {
  /// Whether a snapshot is due at `applied`: `every` entries past the last snapshot (0: never), and entries of
  /// at least the last snapshot's size applied since it was started (`bytesSince`), so that a snapshot, which
  /// rewrites the whole state, costs at most one byte written per byte of log.
  @inlinable package static func isDue(
    applied: UInt64, lastSnapshot: UInt64, every: Int, bytesSince: Int, lastSnapshotBytes: Int
  ) -> Bool {
    every > 0 && applied >= lastSnapshot &+ UInt64(every) && bytesSince >= lastSnapshotBytes
  }

  /// Whether a request to release stored entries (``ReplicaNode/releaseStoredEntries(snapshotBudgetBytes:)``)
  /// may start a snapshot before the schedule would: something was applied since the last snapshot, and the
  /// last snapshot — what the next one will cost, about — is no larger than `budgetBytes`, the log space the
  /// release would help free.
  @inlinable package static func mayTakeEarly(
    applied: UInt64, lastSnapshot: UInt64, lastSnapshotBytes: Int, budgetBytes: Int
  )
    -> Bool
  {
    applied > lastSnapshot && lastSnapshotBytes <= budgetBytes
  }
}

/// The requests whose callers cancelled them, recorded from any thread and taken by the node's loop each turn.
/// Bounded by `limit` ids.
@usableFromInline final class CancelledRequests: Sendable {
  @usableFromInline let ids = Mutex<[UInt64]>([])
  /// Whether ``ids`` may hold any: the loop reads it every turn, and takes the lock only when it is set.
  @usableFromInline let recorded = Atomic<Bool>(false)
  @usableFromInline let limit: Int

  @inlinable init(limit: Int) { self.limit = limit }

  /// Records that request `id` was cancelled; `false` (and nothing recorded) when `limit` ids are waiting.
  @inlinable func record(_ id: UInt64) -> Bool {
    let added = ids.withLock { ids in
      guard ids.count < limit else { return false }
      ids.append(id)
      return true
    }
    // After the append: the loop that sees the flag finds the id.
    if added { recorded.store(true, ordering: .releasing) }
    return added
  }

  /// Takes every recorded id (none, without the lock, when nothing was recorded since the last take).
  @inlinable func take() -> [UInt64] {
    guard recorded.load(ordering: .acquiring) else { return [] }
    // Cleared before the ids are taken: an id recorded meanwhile is taken now, or sets the flag again.
    recorded.store(false, ordering: .relaxed)
    return ids.withLock { ids in
      defer { ids = [] }
      return ids
    }
  }
}

/// The messages of one ready that wait for its write, sent from whatever thread the storage reports durability
/// on. Peers whose queue was full are remembered, so the node can tell its engine once it resumes.
@usableFromInline final class DurableSender<Message: Sendable>: Sendable {
  @usableFromInline let outbox: ReplicaOutbox<Message>
  @usableFromInline let messages: [ReplicaOutgoing<Message>]
  @usableFromInline let refusedPeers = Mutex<[NodeID]>([])

  @inlinable init(outbox: ReplicaOutbox<Message>, messages: [ReplicaOutgoing<Message>]) {
    self.outbox = outbox
    self.messages = messages
  }

  /// Sends every message; runs once, when the write is durable.
  @inlinable func send() {
    for m in messages {
      do {
        try outbox.send(m.message, to: m.to)
      } catch {
        // Lost like any message; a full queue is reported to the engine so that it stops streaming.
        if case .queueFull = error { refusedPeers.withLock { $0.append(m.to) } }
      }
    }
  }

  /// The peers whose queue was full.
  @inlinable var refused: [NodeID] { refusedPeers.withLock { $0 } }
}

/// Where a replica's messages leave: its transport endpoint, called directly when it is the in-process
/// transport's (the embedded default), so that the send is compiled with the replica for its message type;
/// through the endpoint protocol otherwise. Reached through the protocol, the in-process send ran generic and
/// looked up its mailbox's and envelope's types at run time: 7 % of an in-process put's CPU.
@usableFromInline struct ReplicaOutbox<Message: Sendable>: Sendable {
  @usableFromInline let endpoint: any TransportEndpoint<Message>
  @usableFromInline let inProcess: InProcessEndpoint<Message>?
  @usableFromInline let group: GroupID

  @inlinable init(_ endpoint: any TransportEndpoint<Message>, group: GroupID) {
    self.endpoint = endpoint
    self.inProcess = endpoint as? InProcessEndpoint<Message>
    self.group = group
  }

  /// Sends `message` to `peer` in the replica's group.
  @inlinable func send(_ message: Message, to peer: NodeID) throws(TransportError) {
    if let inProcess {
      try inProcess.send(message, to: peer, group: group)
    } else {
      try endpoint.send(message, to: peer, group: group)
    }
  }
}
