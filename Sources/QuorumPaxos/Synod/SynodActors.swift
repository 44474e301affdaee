public import QuorumCore
public import QuorumStorage

/// A single-decree Paxos acceptor: the actor shell around ``AcceptorCore``.
///
/// Each turn of its loop takes every message that has arrived, steps the core, writes the resulting state
/// once (the newest state covers every promise and acceptance made in the turn) and only then sends the
/// promises and acceptances: nothing is promised that a crash could take back. The state lives in the
/// storage's hard state; the acceptor writes no log entries.
///
/// An acceptor only answers messages — it has no timers and no local requests — so its loop reads the
/// endpoint's mailbox directly, one hop per message.
public actor PaxosAcceptor<Value: SynodValue> {
  /// This acceptor.
  public nonisolated let id: NodeID
  private let endpoint: any TransportEndpoint<SynodMessage<Value>>
  private let storage: any ConsensusStorage<PaxosEntry>
  private let logger: QuorumLogger
  private var core: AcceptorCore<Value>
  private var running = false

  /// Whether ``run()`` has recovered and is answering.
  public private(set) var isRunning = false

  /// Finishes once ``run()`` has recovered and answers (or failed before it could).
  private nonisolated let recoverySignal = OnceSignal()

  /// Waits until ``run()`` has recovered; returns `false` if it ended before it could.
  public nonisolated func waitUntilRecovered() async -> Bool { await !recoverySignal.wait() }

  /// Creates an acceptor; nothing happens until ``run()``.
  ///
  /// - Parameters:
  ///   - id: this acceptor's identifier (one of the configuration's members).
  ///   - configuration: the group's validated settings.
  ///   - learners: the learners told about every acceptance.
  ///   - endpoint: this acceptor's attachment to the transport; closed when ``run()`` ends.
  ///   - storage: where the promise and the acceptance are made durable; recovered when ``run()`` starts.
  ///   - logger: where the acceptor logs.
  public init(
    id: NodeID, configuration: PaxosConfiguration, learners: [NodeID],
    endpoint: some TransportEndpoint<SynodMessage<Value>>, storage: some ConsensusStorage<PaxosEntry>,
    logger: QuorumLogger = QuorumLogger(label: "paxos.acceptor")
  ) {
    self.id = id
    self.endpoint = endpoint
    self.storage = storage
    self.logger = logger.child(id.description)
    self.core = AcceptorCore(id: id, learners: learners)
  }

  /// The acceptor's current promise and acceptance.
  public var state: AcceptorState<Value> { core.state }

  /// Recovers the durable state and answers proposers until ``stop()`` or cancellation.
  /// - Throws: a storage error if recovery or a write fails (the acceptor stops rather than answer without
  ///   durability), or a `WireError` if the stored state does not decode.
  public func run() async throws {
    precondition(!running, "PaxosAcceptor.run() called twice")
    defer { recoverySignal.finish(failed: true) }  // No effect once it finished: a failure before recovery.
    running = true
    let recovered = try await storage.recover()
    let state = try recovered.hardState.map { try AcceptorState<Value>(wireBytes: $0) } ?? AcceptorState()
    core = AcceptorCore(id: id, learners: core.learners, state: state)
    isRunning = true
    recoverySignal.finish()
    defer { isRunning = false }
    let incoming = endpoint.incoming
    try await withTaskCancellationHandler {
      var batch: [Envelope<SynodMessage<Value>>] = []
      while !Task.isCancelled, await incoming.receive(into: &batch, limit: 1024) {
        var effects: [AcceptorEffect<Value>] = []
        for envelope in batch { effects += core.step(.message(from: envelope.from, envelope.payload)) }
        batch.removeAll(keepingCapacity: true)
        try await carryOut(effects)
      }
    } onCancel: {
      incoming.close()
    }
    await endpoint.close()
  }

  private func carryOut(_ effects: [AcceptorEffect<Value>]) async throws {
    // Group commit: the last state written covers every earlier one of this turn, so one write suffices,
    // and it happens before any message of the turn is sent.
    var newest: AcceptorState<Value>?
    for case .persist(let state) in effects { newest = state }
    if let newest { try await storage.write(StorageWrite(hardState: newest.wireBytes(), mustSync: true)) }
    for case .send(let outgoing) in effects {
      do {
        try endpoint.send(outgoing.message, to: outgoing.to)
      } catch {
        logger.debug("send to \(outgoing.to) failed: \(error)")
      }
    }
  }

  /// Asks the acceptor to stop: it stops taking messages, and ``run()`` finishes the write in progress and
  /// returns.
  public nonisolated func stop() {
    endpoint.incoming.close()
  }
}

/// A single-decree Paxos proposer: the actor shell around ``ProposerCore``.
///
/// ``propose(_:)`` returns the value the instance chose — this proposer's, or another proposer's if that
/// one got there first: that is the point of consensus. The proposer persists its round reservation before
/// sending any message with a ballot from it.
public actor PaxosProposer<Value: SynodValue> {
  private enum Input: Sendable {
    case propose(UInt64, Value, UnsafeContinuation<Value, any Error>)
    case cancel(UInt64)
    case stop
  }

  private struct Waiter {
    var continuation: UnsafeContinuation<Value, any Error>
    var deadline: UInt64
  }

  /// This proposer.
  public nonisolated let id: NodeID
  private let endpoint: any TransportEndpoint<SynodMessage<Value>>
  private let storage: any ConsensusStorage<PaxosEntry>
  private let inputs: Mailbox<Input>
  private let configuration: PaxosConfiguration
  private let logger: QuorumLogger
  private let runtime: NodeRuntime
  private let seed: UInt64
  private var core: ProposerCore<Value>
  private var waiters: [UInt64: Waiter] = [:]
  private var nextRequest: UInt64 = 0
  private var running = false
  private var stopped = false

  /// Whether ``run()`` has recovered and is answering.
  public private(set) var isRunning = false

  /// Finishes once ``run()`` has recovered and answers (or failed before it could).
  private nonisolated let recoverySignal = OnceSignal()

  /// Waits until ``run()`` has recovered; returns `false` if it ended before it could.
  public nonisolated func waitUntilRecovered() async -> Bool { await !recoverySignal.wait() }

  /// Creates a proposer; nothing happens until ``run()``.
  ///
  /// - Parameters:
  ///   - id: this proposer's identifier: it owns the ballots `(round, id)`.
  ///   - configuration: the group's validated settings (acceptors, quorums, retransmission, back-off).
  ///   - learners: the learners told about the chosen value.
  ///   - endpoint: this proposer's attachment to the transport; closed when ``run()`` ends.
  ///   - storage: where the round reservation is made durable; recovered when ``run()`` starts.
  ///   - runtime: clock and executor (``QuorumCore/NodeRuntime/system`` unless simulated).
  ///   - seed: seeds the back-off randomness.
  ///   - logger: where the proposer logs.
  public init(
    id: NodeID, configuration: PaxosConfiguration, learners: [NodeID],
    endpoint: some TransportEndpoint<SynodMessage<Value>>, storage: some ConsensusStorage<PaxosEntry>,
    runtime: NodeRuntime = .system, seed: UInt64? = nil,
    logger: QuorumLogger = QuorumLogger(label: "paxos.proposer")
  ) {
    self.id = id
    self.runtime = runtime
    self.endpoint = endpoint
    self.storage = storage
    self.configuration = configuration
    self.inputs = Mailbox(capacity: configuration.inputCapacity)
    self.logger = logger.child(id.description)
    self.seed = seed ?? id.rawValue &* 0x9E37_79B9_7F4A_7C15
    self.core = ProposerCore(
      id: id, acceptors: configuration.members, learners: learners, options: configuration.synodOptions,
      random: SeededRandom(seed: self.seed))
  }

  /// The chosen value, if this proposer knows it.
  public var chosen: Value? { core.chosen }

  /// How many ballots this proposer has started.
  public var ballotsStarted: Int { core.ballotsStarted }

  /// Recovers the round reservation and proposes until ``stop()`` or cancellation.
  /// - Throws: ``QuorumCore/ConfigurationError`` for an invalid configuration, or a storage error.
  public func run() async throws {
    precondition(!running, "PaxosProposer.run() called twice")
    defer { recoverySignal.finish(failed: true) }  // No effect once it finished: a failure before recovery.
    running = true
    try configuration.validate()
    let recovered = try await storage.recover()
    let state = try recovered.hardState.map { try ProposerState(wireBytes: $0) } ?? ProposerState()
    core = ProposerCore(
      id: id, acceptors: core.acceptors, learners: core.learners, options: core.options, state: state,
      random: SeededRandom(seed: seed))
    try await carryOut(core.step(.start))
    isRunning = true
    recoverySignal.finish()
    defer { isRunning = false }
    try await runRoleLoop(
      incoming: endpoint.incoming, inputs: inputs, runtime: runtime, tick: configuration.tickInterval
    ) { ticked, messages, batch in
      var effects: [ProposerEffect<Value>] = []
      if ticked { effects += tick() }
      for envelope in messages { effects += core.step(.message(from: envelope.from, envelope.payload)) }
      for input in batch { effects += handle(input) }
      try await carryOut(effects)
      return !stopped
    }
    await endpoint.close()
    inputs.close(discardingBuffered: false)
    var leftover: [Input] = []
    inputs.drainAvailable(into: &leftover)
    for case .propose(_, _, let continuation) in leftover { continuation.resume(throwing: ConsensusError.stopped) }
    for id in waiters.keys.sorted() { waiters[id]?.continuation.resume(throwing: ConsensusError.stopped) }
    waiters = [:]
  }

  private func tick() -> [ProposerEffect<Value>] {
    let now = runtime.clock.monotonicNanos()
    for id in waiters.keys.sorted() {
      guard let waiter = waiters[id], waiter.deadline <= now else { continue }
      waiters[id] = nil
      waiter.continuation.resume(throwing: ConsensusError.timeout)
    }
    if waiters.isEmpty && (core.phase == .preparing || core.phase == .accepting || core.phase == .backingOff) {
      return core.step(.abandon)
    }
    return core.step(.tick)
  }

  private func handle(_ input: Input) -> [ProposerEffect<Value>] {
    switch input {
    case .propose(let request, let value, let continuation):
      guard waiters.count < configuration.maxPendingRequests else {
        continuation.resume(throwing: ConsensusError.overloaded(limit: configuration.maxPendingRequests))
        return []
      }
      waiters[request] = Waiter(
        continuation: continuation,
        deadline: runtime.clock.monotonicNanos() &+ configuration.requestTimeout.nanoseconds)
      return core.step(.propose(value))
    case .cancel(let request):
      waiters.removeValue(forKey: request)?.continuation.resume(throwing: CancellationError())
      return []
    case .stop:
      stopped = true
      return []
    }
  }

  private func carryOut(_ effects: [ProposerEffect<Value>]) async throws {
    for effect in effects {
      switch effect {
      case .persist(let state):
        try await storage.write(StorageWrite(hardState: state.wireBytes(), mustSync: true))
      case .send(let outgoing):
        do {
          try endpoint.send(outgoing.message, to: outgoing.to)
        } catch {
          logger.debug("send to \(outgoing.to) failed: \(error)")
        }
      case .chosen(let value):
        for id in waiters.keys.sorted() { waiters[id]?.continuation.resume(returning: value) }
        waiters = [:]
      }
    }
  }

  /// Proposes `value` and returns the value chosen — possibly another proposer's.
  /// - Throws: ``QuorumCore/ConsensusError/timeout`` if no value is chosen within the configuration's request
  ///   timeout (the instance may still choose one later), ``QuorumCore/ConsensusError/stopped``,
  ///   ``QuorumCore/ConsensusError/overloaded(limit:)``, or `CancellationError`.
  public func propose(_ value: Value) async throws -> Value {
    nextRequest += 1
    let request = nextRequest
    let inputs = self.inputs
    return try await withTaskCancellationHandler {
      try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Value, any Error>) in
        do throws(MailboxError) {
          try inputs.trySend(.propose(request, value, continuation))
        } catch .full {
          continuation.resume(throwing: ConsensusError.overloaded(limit: inputs.capacity))
        } catch {
          continuation.resume(throwing: ConsensusError.stopped)
        }
      }
    } onCancel: {
      try? inputs.trySend(.cancel(request))
    }
  }

  /// Asks the proposer to stop; waiting proposals fail with ``QuorumCore/ConsensusError/stopped``.
  public nonisolated func stop() {
    do { try inputs.trySend(.stop) } catch { inputs.close() }
  }
}

/// A single-decree Paxos learner: the actor shell around ``LearnerCore``.
///
/// It learns from the acceptors' acceptances and from announcements; ``value()`` returns the chosen value,
/// asking the acceptors and the other learners first if this learner missed it.
public actor PaxosLearner<Value: SynodValue> {
  private enum Input: Sendable {
    case ask(UInt64, UnsafeContinuation<Value, any Error>)
    case cancel(UInt64)
    case stop
  }

  private struct Waiter {
    var continuation: UnsafeContinuation<Value, any Error>
    var deadline: UInt64
  }

  /// This learner.
  public nonisolated let id: NodeID
  private let endpoint: any TransportEndpoint<SynodMessage<Value>>
  private let inputs: Mailbox<Input>
  private let configuration: PaxosConfiguration
  private let logger: QuorumLogger
  private let runtime: NodeRuntime
  private var core: LearnerCore<Value>
  private var waiters: [UInt64: Waiter] = [:]
  private var nextRequest: UInt64 = 0
  private var running = false
  private var stopped = false

  /// Whether ``run()`` is answering.
  public private(set) var isRunning = false

  /// Finishes once ``run()`` has recovered and answers (or failed before it could).
  private nonisolated let recoverySignal = OnceSignal()

  /// Waits until ``run()`` has recovered; returns `false` if it ended before it could.
  public nonisolated func waitUntilRecovered() async -> Bool { await !recoverySignal.wait() }

  /// Creates a learner; nothing happens until ``run()``.
  ///
  /// - Parameters:
  ///   - id: this learner's identifier.
  ///   - configuration: the group's validated settings (acceptors and quorums).
  ///   - peers: the other learners, asked when this one is late.
  ///   - endpoint: this learner's attachment to the transport; closed when ``run()`` ends.
  ///   - runtime: clock and executor (``QuorumCore/NodeRuntime/system`` unless simulated).
  ///   - logger: where the learner logs.
  public init(
    id: NodeID, configuration: PaxosConfiguration, peers: [NodeID],
    endpoint: some TransportEndpoint<SynodMessage<Value>>, runtime: NodeRuntime = .system,
    logger: QuorumLogger = QuorumLogger(label: "paxos.learner")
  ) {
    self.id = id
    self.runtime = runtime
    self.endpoint = endpoint
    self.configuration = configuration
    self.inputs = Mailbox(capacity: configuration.inputCapacity)
    self.logger = logger.child(id.description)
    self.core = LearnerCore(
      id: id, acceptors: configuration.members, peers: peers, options: configuration.synodOptions)
  }

  /// The chosen value, if learned (without asking anyone).
  public var learned: Value? { core.chosen }

  /// Learns until ``stop()`` or cancellation. A learner keeps nothing durable: a restarted learner asks.
  public func run() async throws {
    precondition(!running, "PaxosLearner.run() called twice")
    defer { recoverySignal.finish(failed: true) }  // No effect once it finished: a failure before recovery.
    running = true
    isRunning = true
    recoverySignal.finish()
    defer { isRunning = false }
    try await runRoleLoop(
      incoming: endpoint.incoming, inputs: inputs, runtime: runtime, tick: configuration.tickInterval
    ) { ticked, messages, batch in
      if ticked { carryOut(tick()) }
      for envelope in messages { carryOut(core.step(.message(from: envelope.from, envelope.payload))) }
      for input in batch { carryOut(handle(input)) }
      return !stopped
    }
    await endpoint.close()
    inputs.close(discardingBuffered: false)
    var leftover: [Input] = []
    inputs.drainAvailable(into: &leftover)
    for case .ask(_, let continuation) in leftover { continuation.resume(throwing: ConsensusError.stopped) }
    for id in waiters.keys.sorted() { waiters[id]?.continuation.resume(throwing: ConsensusError.stopped) }
    waiters = [:]
  }

  private func tick() -> [LearnerEffect<Value>] {
    let now = runtime.clock.monotonicNanos()
    for id in waiters.keys.sorted() {
      guard let waiter = waiters[id], waiter.deadline <= now else { continue }
      waiters[id] = nil
      waiter.continuation.resume(throwing: ConsensusError.timeout)
    }
    return core.step(.tick)
  }

  private func handle(_ input: Input) -> [LearnerEffect<Value>] {
    switch input {
    case .ask(let request, let continuation):
      if let chosen = core.chosen {
        continuation.resume(returning: chosen)
        return []
      }
      guard waiters.count < configuration.maxPendingRequests else {
        continuation.resume(throwing: ConsensusError.overloaded(limit: configuration.maxPendingRequests))
        return []
      }
      waiters[request] = Waiter(
        continuation: continuation,
        deadline: runtime.clock.monotonicNanos() &+ configuration.requestTimeout.nanoseconds)
      return core.step(.ask)
    case .cancel(let request):
      waiters.removeValue(forKey: request)?.continuation.resume(throwing: CancellationError())
      return []
    case .stop:
      stopped = true
      return []
    }
  }

  private func carryOut(_ effects: [LearnerEffect<Value>]) {
    for effect in effects {
      switch effect {
      case .send(let outgoing):
        do {
          try endpoint.send(outgoing.message, to: outgoing.to)
        } catch {
          logger.debug("send to \(outgoing.to) failed: \(error)")
        }
      case .learned(let value):
        for id in waiters.keys.sorted() { waiters[id]?.continuation.resume(returning: value) }
        waiters = [:]
      }
    }
  }

  /// The chosen value: at once if learned, otherwise after asking the acceptors and the other learners.
  /// - Throws: ``QuorumCore/ConsensusError/timeout`` if nothing is learned within the request timeout (for
  ///   example, nothing was chosen yet), ``QuorumCore/ConsensusError/stopped``, or `CancellationError`.
  public func value() async throws -> Value {
    if let chosen = core.chosen { return chosen }
    nextRequest += 1
    let request = nextRequest
    let inputs = self.inputs
    return try await withTaskCancellationHandler {
      try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Value, any Error>) in
        do throws(MailboxError) {
          try inputs.trySend(.ask(request, continuation))
        } catch .full {
          continuation.resume(throwing: ConsensusError.overloaded(limit: inputs.capacity))
        } catch {
          continuation.resume(throwing: ConsensusError.stopped)
        }
      }
    } onCancel: {
      try? inputs.trySend(.cancel(request))
    }
  }

  /// Asks the learner to stop; waiting callers fail with ``QuorumCore/ConsensusError/stopped``.
  public nonisolated func stop() {
    do { try inputs.trySend(.stop) } catch { inputs.close() }
  }
}
