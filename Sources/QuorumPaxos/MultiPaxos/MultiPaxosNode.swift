import Glibc
public import QuorumCore
public import QuorumStorage
import Synchronization

/// Something that happened to a Multi-Paxos node, for applications that watch leadership.
public enum PaxosEvent: Sendable, Equatable {
  /// The node's role or promised ballot changed.
  case roleChanged(PaxosRole, ballot: Ballot)
  /// The node follows a different leader (or lost track of one).
  case leaderChanged(NodeID?, ballot: Ballot)
  /// The node installed a snapshot from the leader.
  case snapshotInstalled(slot: Slot)
  /// The node stopped.
  case stopped
}

/// A Multi-Paxos node's view of itself and (when leading) of the other acceptors.
public struct MultiPaxosStatus: Sendable, Equatable {
  /// This node.
  public var id: NodeID
  /// Its role.
  public var role: PaxosRole
  /// The ballot it promised.
  public var ballot: Ballot
  /// The leader it follows.
  public var leader: NodeID?
  /// Every slot up to here is known chosen.
  public var chosenThrough: Slot
  /// The slot applied to the state machine.
  public var appliedThrough: Slot
  /// The first slot held (slots before it are in the snapshot).
  public var firstSlot: Slot
  /// The last slot holding a proposal.
  public var lastSlot: Slot
  /// The index of the newest snapshot.
  public var snapshotIndex: Slot
  /// Per-acceptor progress, when leading.
  public var peers: [NodeID: PaxosPeerProgress]
  /// Requests waiting for an answer.
  public var pendingRequests: Int
}

/// A Multi-Paxos replica: the actor shell around ``MultiPaxosCore`` that owns a transport endpoint, storage, a
/// clock and the replicated state machine. It implements ``QuorumCore/ReplicatedLog``, so services written
/// for Raft (the key-value store, the lock service) run on it unchanged.
///
/// Start it with ``run()`` (a long-lived structured loop, typically in a task group) and talk to it with
/// ``propose(_:request:)``, ``read(_:consistency:)``, ``registerSession()`` and ``status``. Requests to a
/// node that does not lead fail at once with ``QuorumCore/ConsensusError/notLeader(hint:)`` naming the
/// leader it follows.
///
/// ### Durability order
///
/// Each turn of the loop takes every input that has arrived (messages, ticks, requests), steps the core,
/// then carries out the core's ``PaxosReady`` strictly in this order:
/// 1. a leader sends its accepts and heartbeats (its ballot is already durable — a candidate persists its
///    own promise before it sends a single prepare — and it counts its own acceptance only after step 2);
/// 2. a snapshot from the leader is stored (entries above it kept, the log compacted up to it), then the
///    promised ballot and the accepted proposals are written and made durable (under
///    ``QuorumStorage/FsyncPolicy/always``, one `fdatasync`);
/// 3. only then are promises and acceptances sent: they report what step 2 stored;
/// 4. the state machine is restored from the snapshot and chosen slots are applied, answering the requests
///    that were waiting for them.
/// Inputs that arrive during step 2 wait for the next turn, which batches them into one write (group
/// commit) and one accept message per acceptor (batching).
///
/// The storage must use ``QuorumStorage/LogWriteMode/replace``: accepting in a higher ballot replaces one
/// slot and leaves the later ones alone.
public actor MultiPaxosNode<Machine: StateMachine> {
  private enum Input: Sendable {
    case tick
    case message(NodeID, PaxosMessage)
    case propose(UInt64, Machine.Command, RequestID?, UInt64, UnsafeContinuation<Machine.Response, any Error>)
    case register(UInt64, UnsafeContinuation<UInt64, any Error>)
    case read(UInt64, Machine.Query, ReadConsistency, UnsafeContinuation<Machine.QueryResult, any Error>)
    case cancel(UInt64)
    case stop
    /// The background snapshot task finished: the snapshot is stored, or the error that stopped it.
    case snapshotStored(Result<PaxosSnapshot, any Error>)
  }

  private enum Waiter {
    case response(UnsafeContinuation<Machine.Response, any Error>)
    case session(UnsafeContinuation<UInt64, any Error>)

    func fail(_ error: any Error) {
      switch self {
      case .response(let c): c.resume(throwing: error)
      case .session(let c): c.resume(throwing: error)
      }
    }
  }

  private struct Pending {
    var id: UInt64
    var data: [UInt8]
    var waiter: Waiter
    var deadline: ContinuousClock.Instant
  }

  private struct PendingRead {
    var id: UInt64
    var query: Machine.Query
    var continuation: UnsafeContinuation<Machine.QueryResult, any Error>
    var index: Slot
    var deadline: ContinuousClock.Instant
  }

  /// This node.
  public nonisolated let id: NodeID
  /// The configuration in force.
  public nonisolated let configuration: PaxosConfiguration
  /// Role and leader changes. The stream keeps the newest 256 undelivered events.
  public nonisolated let events: AsyncStream<PaxosEvent>

  private let eventSink: AsyncStream<PaxosEvent>.Continuation
  private let inputs: Mailbox<Input>
  private let endpoint: any TransportEndpoint<PaxosMessage>
  private let storage: any ConsensusStorage<PaxosEntry>
  private let logger: QuorumLogger
  private let clock = ContinuousClock()
  private let nextRequestID = Atomic<UInt64>(0)
  private let startedAt: ContinuousClock.Instant
  private let seed: UInt64

  /// The protocol core. Mutated in place only: copying it would copy the log (copy-on-write).
  private var core: MultiPaxosCore
  private var machine: ReplicatedStateMachine<Machine>
  private var applied: Slot = 0
  private var lastSnapshotIndex: Slot = 0
  /// The snapshot being encoded and stored while the loop goes on.
  private var background = BackgroundSnapshot<PaxosSnapshot>()
  private var proposals: [Slot: Pending] = [:]
  private var proposalSlotByID: [UInt64: Slot] = [:]
  private var reads: [UInt64: PendingRead] = [:]
  private var waitingReads: [PendingRead] = []
  private var lastSoft = PaxosSoftState(role: .follower, leader: nil, ballot: .zero)
  private var running = false
  private var ticks = 0
  private var stopped = false

  /// Creates a node; nothing happens until ``run()``.
  ///
  /// - Parameters:
  ///   - id: this node's identifier, one of the configuration's members.
  ///   - configuration: validated settings (``PaxosConfiguration``).
  ///   - endpoint: this node's attachment to the transport. The node closes it when ``run()`` ends.
  ///   - storage: durable state in ``QuorumStorage/LogWriteMode/replace`` mode; recovered when ``run()``
  ///     starts. The caller closes it after ``run()``.
  ///   - machine: the state machine, in its initial state (a snapshot in storage replaces it).
  ///   - seed: seeds the election-timeout randomness (defaults to a value derived from the id and the clock).
  ///   - logger: where the node logs.
  public init(
    id: NodeID, configuration: PaxosConfiguration, endpoint: some TransportEndpoint<PaxosMessage>,
    storage: some ConsensusStorage<PaxosEntry>, machine: Machine, seed: UInt64? = nil,
    logger: QuorumLogger = QuorumLogger(label: "paxos")
  ) {
    // Replaced by recovery in run(); a placeholder so the core can be mutated in place without optionals.
    self.core = MultiPaxosCore(
      id: id, members: [id], options: MultiPaxosOptions(phase1: 1, phase2: 1), random: SeededRandom(seed: 0))
    self.id = id
    self.configuration = configuration
    self.endpoint = endpoint
    self.storage = storage
    self.machine = ReplicatedStateMachine(machine, policy: configuration.sessions)
    self.logger = logger.child(id.description)
    self.inputs = Mailbox(capacity: configuration.inputCapacity)
    let (stream, sink) = AsyncStream<PaxosEvent>.makeStream(bufferingPolicy: .bufferingNewest(256))
    self.events = stream
    self.eventSink = sink
    self.startedAt = clock.now
    self.seed = seed ?? (id.rawValue &* 0x9E37_79B9_7F4A_7C15 ^ paxosWallClockMillis())
  }

  // MARK: - Running

  /// Recovers durable state and runs the node until ``stop()`` is called or the task is cancelled.
  /// - Throws: ``QuorumCore/ConfigurationError`` for an invalid configuration (or an id that is not a
  ///   member), a ``QuorumStorage/StorageError`` if recovery or a write fails (the node stops rather than
  ///   continue without durability).
  public func run() async throws {
    precondition(!running, "MultiPaxosNode.run() called twice")
    running = true
    try configuration.validate()
    guard configuration.members.contains(id) else {
      throw ConfigurationError(setting: "Members", reason: "\(id) is not among \(configuration.members)")
    }
    try await recover()
    logger.notice("started", ["promised": "\(core.promised)", "last": "\(core.lastSlot)"])
    defer { eventSink.yield(.stopped) }
    do {
      try await withRoleTasks(
        inputs: inputs, endpoint: endpoint, tick: configuration.tickInterval, tickInput: .tick,
        wrap: { .message($0.from, $0.payload) },
        loop: { try await runLoop() })
    } catch {
      // A failed write or recovery stops the node; nobody may be left waiting.
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
    let hardState = try recovered.hardState.map { try PaxosHardState(wireBytes: $0) } ?? PaxosHardState()
    var snapshot: PaxosSnapshot?
    if let stored = recovered.snapshot {
      snapshot = PaxosSnapshot(index: stored.index, data: stored.data)
      try machine.restore(from: stored.data)
      applied = stored.index
      lastSnapshotIndex = stored.index
    }
    core = MultiPaxosCore(
      id: id, members: configuration.members, options: configuration.coreOptions, hardState: hardState,
      snapshot: snapshot, entries: recovered.entries, random: random.fork())
  }

  private func runLoop() async throws {
    var batch: [Input] = []
    batch.reserveCapacity(4096)
    while !stopped, !Task.isCancelled {
      guard await inputs.receive(into: &batch, limit: 4096) else { break }
      let now = clock.now
      core.advanceClock(to: (now - startedAt).nanoseconds)  // Times this batch's messages from the leader.
      for input in batch { handle(input, now: now) }
      batch.removeAll(keepingCapacity: true)
      try await recordStoredSnapshot()
      try await drainReady()
    }
  }

  // MARK: - Inputs

  private var nowNanos: UInt64 { (clock.now - startedAt).nanoseconds }

  private var pendingCount: Int { proposals.count + reads.count + waitingReads.count }

  private func handle(_ input: Input, now: ContinuousClock.Instant) {
    switch input {
    case .tick:
      core.tick(now: nowNanos)
      ticks &+= 1
      if ticks % 8 == 0 { expireRequests(now: now) }
    case .message(let from, let message):
      core.step(message, from: from)
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
        timestampMillis: paxosWallClockMillis(), request: request, acknowledgedThrough: acknowledged,
        body: .command(command))
      propose(requestID, replicated, .response(continuation), now: now)
    case .register(let requestID, let continuation):
      let replicated = ReplicatedCommand<Machine.Command>(
        timestampMillis: paxosWallClockMillis(), body: .registerSession)
      propose(requestID, replicated, .session(continuation), now: now)
    case .read(let requestID, let query, let consistency, let continuation):
      read(requestID, query, consistency, continuation, now: now)
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
      let slot = try core.propose(bytes)
      proposals[slot] = Pending(
        id: requestID, data: bytes, waiter: waiter, deadline: now.advanced(by: configuration.requestTimeout))
      proposalSlotByID[requestID] = slot
    } catch {
      waiter.fail(Self.translate(error))
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
        if index <= applied {
          continuation.resume(returning: machine.query(query))
        } else {
          waitingReads.append(
            PendingRead(id: requestID, query: query, continuation: continuation, index: index, deadline: deadline))
        }
        return
      }
      // Linearizable, or a lease read without a valid lease: confirm leadership with a heartbeat round.
      do {
        try core.requestRead(id: requestID)
        reads[requestID] = PendingRead(
          id: requestID, query: query, continuation: continuation, index: 0, deadline: deadline)
      } catch {
        continuation.resume(throwing: Self.translate(error))
      }
    }
  }

  private static func translate(_ error: PaxosRequestError) -> ConsensusError {
    switch error {
    case .notLeader(let hint): return .notLeader(hint: hint)
    case .overloaded: return .overloaded(limit: 0)
    }
  }

  private func cancelRequest(_ requestID: UInt64) {
    if let slot = proposalSlotByID.removeValue(forKey: requestID), let pending = proposals.removeValue(forKey: slot) {
      pending.waiter.fail(CancellationError())
    }
    if let read = reads.removeValue(forKey: requestID) { read.continuation.resume(throwing: CancellationError()) }
    if let i = waitingReads.firstIndex(where: { $0.id == requestID }) {
      waitingReads.remove(at: i).continuation.resume(throwing: CancellationError())
    }
  }

  private func expireRequests(now: ContinuousClock.Instant) {
    for (slot, pending) in proposals where pending.deadline <= now {
      proposals[slot] = nil
      proposalSlotByID[pending.id] = nil
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
  }

  private func failAll(_ error: any Error) {
    for (_, pending) in proposals { pending.waiter.fail(error) }
    proposals = [:]
    proposalSlotByID = [:]
    for (_, read) in reads { read.continuation.resume(throwing: error) }
    reads = [:]
    for read in waitingReads { read.continuation.resume(throwing: error) }
    waitingReads = []
    inputs.close(discardingBuffered: false)
    var leftover: [Input] = []
    inputs.drainAvailable(into: &leftover)
    for input in leftover {
      switch input {
      case .propose(_, _, _, _, let c): c.resume(throwing: error)
      case .register(_, let c): c.resume(throwing: error)
      case .read(_, _, _, let c): c.resume(throwing: error)
      case .tick, .message, .cancel, .stop, .snapshotStored: break
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
      apply(rd.chosenEntries)
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
      report(rd.softState)
      maybeSnapshot()
    }
  }

  private func send(_ messages: [PaxosOutgoing]) {
    for m in messages {
      do {
        try endpoint.send(m.message, to: m.to)
      } catch {
        // The transport may lose messages; the core retransmits.
        logger.debug("send to \(m.to) failed: \(error)")
      }
    }
  }

  private func persist(_ rd: PaxosReady) async throws {
    if let snapshot = rd.snapshot {
      // Entries above the snapshot are accepted proposals the acceptor must not forget: keep them.
      try await storage.saveSnapshot(snapshot.stored, discardingLog: false)
      try await storage.compact(through: snapshot.index)
    }
    let write = StorageWrite(hardState: rd.hardState?.wireBytes(), entries: rd.entries)
    if !write.isEmpty { try await storage.write(write) }
  }

  private func install(_ rd: PaxosReady) throws {
    guard let snapshot = rd.snapshot else { return }
    try machine.restore(from: snapshot.data)
    applied = snapshot.index
    lastSnapshotIndex = snapshot.index
    eventSink.yield(.snapshotInstalled(slot: snapshot.index))
    logger.info("installed snapshot", ["slot": "\(snapshot.index)"])
    for slot in proposals.keys.sorted() where slot <= snapshot.index {
      // Inside the snapshot, so chosen with this proposal or another: we cannot tell which. A session
      // retry is safe.
      if let pending = proposals.removeValue(forKey: slot) {
        proposalSlotByID[pending.id] = nil
        pending.waiter.fail(ConsensusError.outcomeUnknown)
      }
    }
  }

  private func apply(_ entries: [PaxosEntry]) {
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
      proposalSlotByID[pending.id] = nil
      // The slot may have been chosen with another leader's proposal: then this one was not chosen at all
      // (a proposal only ever competes for its own slot).
      guard entry.kind == .command, entry.data == pending.data else {
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

  private func report(_ soft: PaxosSoftState?) {
    guard let soft else { return }
    if soft.role != lastSoft.role || soft.ballot != lastSoft.ballot {
      eventSink.yield(.roleChanged(soft.role, ballot: soft.ballot))
      logger.info("role \(soft.role)", ["ballot": "\(soft.ballot)"])
    }
    if soft.leader != lastSoft.leader {
      eventSink.yield(.leaderChanged(soft.leader, ballot: soft.ballot))
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

  /// Starts a snapshot when enough slots were applied since the last one. The state machine is copied (a
  /// copy-on-write value: the loop pays for one copy of the state at its next apply) and the copy is encoded
  /// and stored by a background task, so the log does not wait for the encoding, the write and the sync.
  /// ``recordStoredSnapshot()`` finishes the job.
  private func maybeSnapshot() {
    guard configuration.snapshotEvery > 0, !background.isBusy,
      applied >= lastSnapshotIndex + Slot(configuration.snapshotEvery)
    else { return }
    let index = applied
    let machine = self.machine
    let inputs = self.inputs
    background.start(
      storing: { $0.stored }, to: storage, encode: { PaxosSnapshot(index: index, data: machine.snapshot()) },
      // Suspends while the inputs are full; fails only once the node stopped, when nothing needs it.
      report: { try? await inputs.send(.snapshotStored($0)) })
  }

  /// Records the snapshot the background task stored and compacts the log behind it, unless a newer
  /// snapshot (from the leader) was installed meanwhile. Rethrows the task's storage failure.
  private func recordStoredSnapshot() async throws {
    guard let stored = try background.takeStored() else { return }
    // A leader's snapshot installed in this very batch has moved the log past this one but is not stored yet:
    // compacting behind the log's start now would pass every snapshot in storage.
    guard stored.index > lastSnapshotIndex, stored.index >= core.firstSlot - 1 else { return }
    let snapshot = core.takeSnapshot(
      at: stored.index, data: stored.data, retainEntries: configuration.snapshotRetainEntries)
    lastSnapshotIndex = snapshot.index
    let compactThrough = core.firstSlot - 1
    if compactThrough > 0 { try await storage.compact(through: compactThrough) }
    logger.info("snapshot taken", ["slot": "\(snapshot.index)", "bytes": "\(snapshot.data.count)"])
  }

  // MARK: - Public API

  private func submit<T>(_ make: (UInt64, UnsafeContinuation<T, any Error>) -> Input) async throws -> T {
    let requestID = nextRequestID.add(1, ordering: .relaxed).newValue
    return try await withTaskCancellationHandler {
      try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<T, any Error>) in
        do throws(MailboxError) {
          try inputs.trySend(make(requestID, continuation))
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

  /// Proposes `command` in the next slot and returns the state machine's response once it is chosen and
  /// applied here.
  ///
  /// With a `request` identifier (from a session opened by ``registerSession()``) the command is applied
  /// at most once however often it is retried.
  /// - Throws: ``QuorumCore/ConsensusError``: `notLeader` on a node that does not lead, `timeout`,
  ///   `dropped` if another leader's proposal took the slot, `outcomeUnknown`, `overloaded`,
  ///   `commandTooLarge`.
  public func propose(_ command: Machine.Command, request: RequestID? = nil) async throws -> Machine.Response {
    try await propose(command, request: request, acknowledgedThrough: 0)
  }

  /// Like ``propose(_:request:)``, also telling the session that every response up to
  /// `acknowledgedThrough` has been received and may be forgotten.
  public func propose(
    _ command: Machine.Command, request: RequestID?, acknowledgedThrough: UInt64
  ) async throws -> Machine.Response {
    try await submit { .propose($0, command, request, acknowledgedThrough, $1) }
  }

  /// Answers `query` at the chosen consistency: `linearizable` (a heartbeat round confirmed by a phase-2
  /// quorum), `lease` (the leader lease, falling back to a heartbeat round when it is not valid) or `stale`
  /// (this replica's applied state, on any node).
  public func read(_ query: Machine.Query, consistency: ReadConsistency = .linearizable) async throws
    -> Machine.QueryResult
  {
    try await submit { .read($0, query, consistency, $1) }
  }

  /// Opens an exactly-once session and returns its number.
  public func registerSession() async throws -> UInt64 {
    try await submit { .register($0, $1) }
  }

  /// The node's current view.
  public var status: MultiPaxosStatus {
    MultiPaxosStatus(
      id: id, role: core.role, ballot: core.promised, leader: core.leader, chosenThrough: core.chosenThrough,
      appliedThrough: applied, firstSlot: core.firstSlot, lastSlot: core.lastSlot,
      snapshotIndex: core.snapshot?.index ?? 0, peers: core.peerProgress, pendingRequests: pendingCount)
  }

  /// Queries the local state machine directly (a stale read without going through the node's queue).
  public func localQuery(_ query: Machine.Query) -> Machine.QueryResult { machine.query(query) }
}

extension MultiPaxosNode: ReplicatedLog {}

extension MultiPaxosOptions {
  init(phase1: Int, phase2: Int) {
    self.init()
    phase1Quorum = phase1
    phase2Quorum = phase2
  }
}

/// Milliseconds since 1970 from the system's real-time clock (used only for log timestamps).
func paxosWallClockMillis() -> UInt64 {
  var ts = timespec()
  clock_gettime(CLOCK_REALTIME, &ts)
  return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
}
