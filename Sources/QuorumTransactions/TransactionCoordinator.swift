public import QuorumCore

/// The coordinator of two-phase commit: the actor shell around ``CoordinatorCore``.
///
/// Applications commit through it — ``commit(_:participants:deadline:)``, or the ``Transaction`` wrapper — and it
/// runs the protocol with the participants over any transport endpoint, writing its decisions through a
/// ``TransactionRecordStore``: a ``LocalTransactionRecordStore`` for classic two-phase commit, or a
/// ``ReplicatedTransactionRecordStore`` for the non-blocking kind.
///
/// Each turn of its loop takes the messages, requests and store answers that arrived, steps the core, and
/// carries out the effects in order: messages go out at once, and every store operation runs as a child task
/// whose answer comes back as an input, so a slow write holds up only its own transaction (and a local store
/// batches the writes that queue behind one another). A decision is never announced before the store has it.
///
/// A store that becomes unusable (a local write failed) stops the coordinator: ``run()`` throws, and a restart
/// recovers from what reached the disk.
public actor TransactionCoordinator {
  private enum Input: Sendable {
    case commit(TxnID, [NodeID], deadline: UInt64, UnsafeContinuation<TransactionResult, any Error>)
    case abandon(TxnID, [NodeID])
    case core(CoordinatorInput)
    case storeFailed(String)
    case stop
  }

  private struct Waiter {
    var continuation: UnsafeContinuation<TransactionResult, any Error>
    var deadline: UInt64
  }

  /// This coordinator.
  public nonisolated let id: NodeID
  private let endpoint: any TransportEndpoint<TransactionMessage>
  private let store: any TransactionRecordStore
  private let options: CoordinatorOptions
  private let runtime: NodeRuntime
  private let logger: QuorumLogger
  private let inputs: Mailbox<Input>
  private var core: CoordinatorCore
  private var waiters: [TxnID: Waiter] = [:]
  private var numbers: Range<UInt64> = 0..<0
  private var running = false
  private var stopped = false
  private var storeFailure: String?
  /// Loop statistics for ``stateSummary``: turns taken, ticks seen, when ``run()`` started serving and last
  /// ticked, and the longest time between two ticks (monotonic nanoseconds). The core counts ticks, so a loop
  /// starved of ticks stretches every timeout: these tell a starved loop from a lost wake-up.
  private var turns: UInt64 = 0
  private var ticks: UInt64 = 0
  private var servingSinceNanos: UInt64 = 0
  private var lastTickNanos: UInt64 = 0
  private var longestTickGapNanos: UInt64 = 0

  /// How many transaction numbers ``makeTransactionID()`` reserves at a time.
  public let numbersPerReservation: UInt64 = 1_024

  /// Whether ``run()`` has recovered and is serving.
  public private(set) var isRunning = false

  /// Creates a coordinator; nothing happens until ``run()``.
  ///
  /// - Parameters:
  ///   - id: this coordinator's node; the ``TxnID/coordinator`` of every transaction it runs.
  ///   - endpoint: its attachment to the transport; closed when ``run()`` ends.
  ///   - store: where decisions are recorded (recovered when ``run()`` starts). Its
  ///     ``TransactionRecordStore/sharedIdentity`` decides the mode: `nil` classic, otherwise non-blocking.
  ///   - options: timeouts, back-off and bounds (validated by ``run()``).
  ///   - runtime: clock and executor (``QuorumCore/NodeRuntime/system`` unless simulated).
  ///   - logger: where the coordinator logs.
  public init(
    id: NodeID, endpoint: some TransportEndpoint<TransactionMessage>, store: some TransactionRecordStore,
    options: CoordinatorOptions = CoordinatorOptions(), runtime: NodeRuntime = .system,
    logger: QuorumLogger = QuorumLogger(label: "txn.coordinator")
  ) {
    self.id = id
    self.endpoint = endpoint
    self.store = store
    self.options = options
    self.runtime = runtime
    self.logger = logger.child(id.description)
    self.inputs = Mailbox(capacity: max(1, options.inputCapacity))
    var valid = options
    if (try? options.validate()) == nil { valid = CoordinatorOptions() }  // run() reports the invalid options
    self.core = CoordinatorCore(id: id, options: valid, recordStore: store.sharedIdentity)
  }

  /// The number of transactions in progress.
  public var activeCount: Int { core.activeCount }

  /// The coordinator's state in one line, for failure messages: how long it has served, how many turns and ticks
  /// its loop took, the waiters, and the core's state (``CoordinatorCore/stateSummary``).
  var stateSummary: String {
    let now = runtime.clock.monotonicNanos()
    let served = servingSinceNanos == 0 ? 0 : (now &- servingSinceNanos) / 1_000_000
    let sinceTick = lastTickNanos == 0 ? 0 : (now &- lastTickNanos) / 1_000_000
    return "running=\(isRunning) served=\(served)ms turns=\(turns) ticks=\(ticks) lastTick=\(sinceTick)ms ago "
      + "longestTickGap=\(longestTickGapNanos / 1_000_000)ms waiters=\(waiters.keys.sorted()) inputs=\(inputs.count); "
      + "core: \(core.stateSummary)"
  }

  /// Recovers, then runs the protocol until ``shutdown()`` or cancellation.
  ///
  /// Recovery resumes phase 2 of every recorded, unfinished commit and, in non-blocking mode, aborts every
  /// undecided transaction its participants recorded as prepared.
  /// - Throws: ``QuorumCore/ConfigurationError`` for invalid options, the store's error if recovery fails, or
  ///   ``TransactionStoreError/unusable(_:)`` if the store fails while running.
  public func run() async throws {
    precondition(!running, "TransactionCoordinator.run() called twice")
    running = true
    try options.validate()
    let recovered = try await store.pendingRecords(of: id)
    isRunning = true
    servingSinceNanos = runtime.clock.monotonicNanos()
    defer { isRunning = false }
    try await withThrowingDiscardingTaskGroup { group in
      carryOut(core.step(.recovered(recovered)), in: &group)
      try await runRoleLoop(
        incoming: endpoint.incoming, inputs: inputs, runtime: runtime, tick: options.tickInterval
      ) { ticked, messages, batch in
        var effects: [CoordinatorEffect] = []
        turns &+= 1
        if ticked {
          ticks &+= 1
          let tickNanos = runtime.clock.monotonicNanos()
          longestTickGapNanos = max(longestTickGapNanos, tickNanos &- max(lastTickNanos, servingSinceNanos))
          lastTickNanos = tickNanos
          effects += core.step(.tick(wallClockMillis: runtime.clock.wallClockMillis()))
          expireWaiters()
        }
        for envelope in messages { effects += core.step(.message(from: envelope.from, envelope.payload)) }
        for input in batch { effects += handle(input) }
        carryOut(effects, in: &group)
        return !stopped && storeFailure == nil
      }
      group.cancelAll()
    }
    await endpoint.close()
    inputs.close(discardingBuffered: false)
    var leftover: [Input] = []
    inputs.drainAvailable(into: &leftover)
    for case .commit(_, _, _, let continuation) in leftover { continuation.resume(throwing: TransactionError.stopped) }
    for txn in waiters.keys.sorted() {
      waiters[txn]?.continuation.resume(throwing: TransactionError.outcomeUnknown(txn))
    }
    waiters = [:]
    if let storeFailure { throw TransactionStoreError.unusable(storeFailure) }
  }

  private func handle(_ input: Input) -> [CoordinatorEffect] {
    switch input {
    case .commit(let txn, let participants, let deadline, let continuation):
      guard waiters[txn] == nil else {
        continuation.resume(throwing: TransactionError.rejected(txn, .duplicateID))
        return []
      }
      waiters[txn] = Waiter(continuation: continuation, deadline: deadline)
      return core.step(.begin(txn, participants: participants))
    case .abandon(let txn, let participants):
      return core.step(.abandon(txn, participants: participants))
    case .core(let input):
      return core.step(input)
    case .storeFailed(let why):
      if storeFailure == nil {
        storeFailure = why
        logger.error("record store failed, stopping: \(why)")
      }
      return []
    case .stop:
      stopped = true
      return []
    }
  }

  private func expireWaiters() {
    let now = runtime.clock.monotonicNanos()
    for txn in waiters.keys.sorted() where (waiters[txn]?.deadline ?? .max) <= now {
      waiters.removeValue(forKey: txn)?.continuation.resume(throwing: TransactionError.outcomeUnknown(txn))
    }
  }

  private func carryOut(_ effects: [CoordinatorEffect], in group: inout ThrowingDiscardingTaskGroup<any Error>) {
    for effect in effects {
      switch effect {
      case .send(let outgoing):
        do {
          try endpoint.send(outgoing.message, to: outgoing.to)
        } catch {
          logger.debug("send to \(outgoing.to) failed: \(error)")
        }
      case .recordDecision(let txn, let decision, let participants):
        let (store, inputs, finisher) = (self.store, self.inputs, self.id)
        group.addTask {
          let answer: Input
          do {
            let holding = try await store.decideIfUndecided(
              txn, decision, participants: participants, finisher: decision == .commit ? finisher : nil)
            answer = .core(.decisionRecorded(txn, holding))
          } catch TransactionStoreError.unusable(let why) {
            answer = .storeFailed(why)
          } catch let error as TransactionStoreError {
            switch error {
            case .refused, .rejected: answer = .core(.recordRefused(txn, error))  // certainly not recorded
            case .unavailable, .badAnswer, .unusable: answer = .core(.recordFailed(txn))
            }
          } catch {
            answer = .core(.recordFailed(txn))
          }
          try? await inputs.send(answer)
        }
      case .finished(let txn, let result):
        waiters.removeValue(forKey: txn)?.continuation.resume(returning: result)
      case .rejected(let txn, let why):
        waiters.removeValue(forKey: txn)?.continuation.resume(throwing: TransactionError.rejected(txn, why))
      case .expired(let txn):
        waiters.removeValue(forKey: txn)?.continuation.resume(throwing: TransactionError.outcomeUnknown(txn))
      case .recordFinished(let txn):
        let (store, inputs, node) = (self.store, self.inputs, self.id)
        group.addTask {
          let answer: Input
          do {
            try await store.recordFinished(txn, by: node)
            answer = .core(.finishRecorded(txn))
          } catch TransactionStoreError.unusable(let why) {
            answer = .storeFailed(why)
          } catch {
            answer = .core(.recordFailed(txn))  // written again after a back-off
          }
          try? await inputs.send(answer)
        }
      }
    }
  }

  // MARK: - API

  /// A fresh transaction identifier of this coordinator, started now. Numbers are reserved durably in blocks of
  /// ``numbersPerReservation`` through the store, so no identifier is ever handed out twice, across restarts too.
  /// - Throws: the store's error if a reservation fails.
  public func makeTransactionID() async throws -> TxnID {
    if numbers.isEmpty {
      numbers = try await store.reserveSequenceNumbers(for: id, count: numbersPerReservation)
    }
    let sequence = numbers.lowerBound
    numbers = (sequence + 1)..<numbers.upperBound
    return TxnID(coordinator: id, sequence: sequence, startedAtMillis: runtime.clock.wallClockMillis())
  }

  /// Runs two-phase commit (one-phase with one participant in non-blocking mode) for `id` over `participants`,
  /// and returns once
  /// the outcome is decided: ``TransactionResult/committed`` once the commit is recorded (the participants
  /// apply it in the background), or ``TransactionResult/aborted(_:)``.
  ///
  /// - Throws: ``TransactionError/outcomeUnknown(_:)`` if no outcome comes within `deadline` (default
  ///   ``CoordinatorOptions/commitDeadline``) — the protocol goes on, and ``outcome(of:)`` tells later;
  ///   ``TransactionError/rejected(_:_:)`` if the request is refused (nothing was sent);
  ///   ``TransactionError/overloaded(limit:)`` or ``TransactionError/stopped``.
  public func commit(_ id: TxnID, participants: [NodeID], deadline: Duration? = nil) async throws
    -> TransactionResult
  {
    let limit = runtime.clock.monotonicNanos() &+ (deadline ?? options.commitDeadline).nanoseconds
    let inputs = self.inputs
    return try await withUnsafeThrowingContinuation {
      (continuation: UnsafeContinuation<TransactionResult, any Error>) in
      do throws(MailboxError) {
        try inputs.trySend(.commit(id, participants, deadline: limit, continuation))
      } catch .full {
        continuation.resume(throwing: TransactionError.overloaded(limit: inputs.capacity))
      } catch {
        continuation.resume(throwing: TransactionError.stopped)
      }
    }
  }

  /// Gives up on `id` before committing (its work failed): the participants are told to roll back. Nothing is
  /// recorded; a transaction whose commit is already in progress, or known to have committed, is not affected.
  public func abandon(_ id: TxnID, participants: [NodeID]) {
    try? inputs.trySend(.abandon(id, participants))
  }

  /// What is known of `id`: from the protocol in progress, from the decision record, or — for one of this
  /// coordinator's transactions with no record — by settling it: abort unless a commit is recorded (a
  /// compare-and-set in non-blocking mode, so the answer cannot be overtaken by a late commit).
  /// ``TransactionStatus/unknown`` for a transaction older than ``CoordinatorOptions/retainDecisionsMillis``
  /// without a record, or another coordinator's.
  ///
  /// An abort settled here is final: a later ``commit(_:participants:deadline:)`` of `id` is refused with
  /// ``TransactionRejection/duplicateID`` (while the coordinator remembers the outcome, see
  /// ``CoordinatorOptions/rememberedOutcomes``), since whoever asked may already have rolled back.
  /// - Throws: the store's error.
  public func outcome(of id: TxnID) async throws -> TransactionStatus {
    if let known = core.status(of: id) { return known }
    if let record = try await store.outcome(of: id) { return record.status }
    if let known = core.status(of: id) { return known }  // the core may have moved on while the store answered
    let now = runtime.clock.wallClockMillis()
    guard id.coordinator == self.id, !id.isPastHorizon(now, horizonMillis: options.retainDecisionsMillis) else {
      return .unknown
    }
    let settled = try await store.decideIfUndecided(id, .abort, participants: [], finisher: nil)
    if let known = core.status(of: id) { return known }
    // Told to the core before it is answered: in classic mode nothing was written (presumed abort), so only the
    // core can refuse a commit of `id` that would contradict this answer. The input has no effects.
    _ = core.step(.settled(id, settled))
    return TransactionStatus(settled)
  }

  /// Asks the coordinator to stop: it stops taking requests, and ``run()`` returns; callers still waiting get
  /// ``TransactionError/outcomeUnknown(_:)`` (the protocol resumes from the records at the next start).
  public nonisolated func shutdown() {
    do { try inputs.trySend(.stop) } catch { inputs.close() }
  }
}
