public import QuorumCore

/// The application's side of a transaction: the resources a participant node commits or rolls back.
///
/// The node calls these as the protocol requires, for many transactions at once (never two at once for one
/// transaction), and may call ``commit(_:)`` or ``rollback(_:)`` again for the same transaction after a
/// restart: both must be idempotent.
///
/// ```swift
/// actor Accounts: TransactionParticipant {
///   let store: any AccountStore                  // survives a crash (a file, a table): yours to provide
///   var staged: [TxnID: [String: Int]] = [:]     // work in progress (lost in a crash: never voted yes)
///
///   func prepare(_ id: TxnID) async throws -> TransactionVote {
///     guard let changes = staged.removeValue(forKey: id) else { return .no }  // unknown: never yes
///     if changes.isEmpty { return .readOnly }
///     try await store.savePrepared(id, changes)  // durable before the yes: after a crash the commit still applies
///     return .yes
///   }
///   func commit(_ id: TxnID) async {
///     await store.applyPrepared(id)  // adds the changes to the balances and drops them, in one durable step
///   }
///   func rollback(_ id: TxnID) async {
///     staged[id] = nil
///     await store.dropPrepared(id)
///   }
///   func recover(prepared ids: [TxnID]) async {
///     // Kept prepared for the decision to come, except what the node never recorded: presumed abort.
///     for id in await store.preparedIDs() where !ids.contains(id) { await store.dropPrepared(id) }
///   }
/// }
/// ```
public protocol TransactionParticipant: Sendable {
  /// Prepares `id`: `yes` only if the resource can commit it whatever happens next — its changes (and anything
  /// needed to keep its locks) are durable, and it will neither commit nor roll back until told. `readOnly` if
  /// `id` changed nothing here: the resource releases what it held now, and is told nothing more. `no` (or a
  /// throw) otherwise — and always for a transaction the resource does not know: a late or repeated prepare
  /// must never get a yes. After `no` the node calls ``rollback(_:)``.
  func prepare(_ id: TxnID) async throws -> TransactionVote

  /// Makes `id`'s prepared changes permanent and releases its locks. Idempotent.
  func commit(_ id: TxnID) async

  /// Undoes `id`'s changes (prepared or not) and releases its locks. Idempotent; a no-op for an unknown
  /// transaction.
  func rollback(_ id: TxnID) async

  /// Called once when the node starts, before anything else, with the transactions the node recorded as
  /// prepared and not yet finished. The resource takes their locks back (they are in doubt: the node will
  /// commit or roll them back once it learns the decision), and rolls back any transaction it prepared itself
  /// that is not in the list (the node never recorded it, so it never voted yes: presumed abort).
  func recover(prepared: [TxnID]) async
}

/// A participant of two-phase commit: the actor shell around ``ParticipantCore`` and the application's
/// ``TransactionParticipant``.
///
/// It answers the coordinator over any transport endpoint, asks the application to prepare, commit or roll
/// back, and writes its prepared records through a ``TransactionRecordStore``: its own
/// ``LocalTransactionRecordStore`` (classic), or the ``ReplicatedTransactionRecordStore`` its coordinator uses
/// (non-blocking: in doubt, it resolves through the shared record). Application calls and store operations run as
/// child tasks whose answers come back as inputs, so one slow transaction does not hold up the others.
///
/// A store that becomes unusable (a local write failed) stops the node: ``run()`` throws, and a restart recovers
/// from what reached the disk.
public actor TransactionParticipantNode {
  private enum Input: Sendable {
    case begin(TxnID)
    case core(ParticipantInput)
    case storeFailed(String)
    case stop
  }

  /// This participant.
  public nonisolated let id: NodeID
  private let resource: any TransactionParticipant
  private let endpoint: any TransportEndpoint<TransactionMessage>
  private let store: any TransactionRecordStore
  private let options: ParticipantOptions
  private let runtime: NodeRuntime
  private let logger: QuorumLogger
  private let inputs: Mailbox<Input>
  private var core: ParticipantCore
  private var running = false
  private var stopped = false
  private var storeFailure: String?

  /// Whether ``run()`` has recovered and is serving.
  public private(set) var isRunning = false

  /// Creates a participant; nothing happens until ``run()``.
  ///
  /// - Parameters:
  ///   - id: this participant's node.
  ///   - resource: the application's resources, prepared, committed and rolled back by the node.
  ///   - endpoint: its attachment to the transport; closed when ``run()`` ends.
  ///   - store: where prepared records go (recovered when ``run()`` starts).
  ///   - options: timeouts, back-off and bounds (validated by ``run()``).
  ///   - runtime: clock and executor (``QuorumCore/NodeRuntime/system`` unless simulated).
  ///   - logger: where the participant logs.
  public init(
    id: NodeID, resource: some TransactionParticipant, endpoint: some TransportEndpoint<TransactionMessage>,
    store: some TransactionRecordStore, options: ParticipantOptions = ParticipantOptions(),
    runtime: NodeRuntime = .system, logger: QuorumLogger = QuorumLogger(label: "txn.participant")
  ) {
    self.id = id
    self.resource = resource
    self.endpoint = endpoint
    self.store = store
    self.options = options
    self.runtime = runtime
    self.logger = logger.child(id.description)
    self.inputs = Mailbox(capacity: max(1, options.inputCapacity))
    var valid = options
    if (try? options.validate()) == nil { valid = ParticipantOptions() }  // run() reports the invalid options
    self.core = ParticipantCore(id: id, options: valid, recordStore: store.sharedIdentity)
  }

  /// The transactions prepared here and waiting for their decision.
  public var inDoubt: [TxnID] { core.inDoubt }

  /// The number of transactions tracked.
  public var trackedCount: Int { core.trackedCount }

  /// What this participant knows of `id`, or `nil`.
  public func status(of id: TxnID) -> TransactionStatus? { core.status(of: id) }

  /// Recovers (the application first gets its prepared transactions back), then runs until ``shutdown()`` or
  /// cancellation.
  /// - Throws: ``QuorumCore/ConfigurationError`` for invalid options, the store's error if recovery fails, or
  ///   ``TransactionStoreError/unusable(_:)`` if the store fails while running.
  public func run() async throws {
    precondition(!running, "TransactionParticipantNode.run() called twice")
    running = true
    try options.validate()
    let records = try await store.pendingRecords(of: id)
    let prepared = records.filter { $0.pending.contains(id) }.map(\.id).sorted()
    await resource.recover(prepared: prepared)
    isRunning = true
    defer { isRunning = false }
    try await withThrowingDiscardingTaskGroup { group in
      carryOut(core.step(.recovered(records)), in: &group)
      try await runRoleLoop(
        incoming: endpoint.incoming, inputs: inputs, runtime: runtime, tick: options.tickInterval
      ) { ticked, messages, batch in
        var effects: [ParticipantEffect] = []
        if ticked { effects += core.step(.tick(wallClockMillis: runtime.clock.wallClockMillis())) }
        for envelope in messages { effects += core.step(.message(from: envelope.from, envelope.payload)) }
        for input in batch { effects += handle(input) }
        carryOut(effects, in: &group)
        return !stopped && storeFailure == nil
      }
      group.cancelAll()
    }
    await endpoint.close()
    inputs.close(discardingBuffered: true)
    if let storeFailure { throw TransactionStoreError.unusable(storeFailure) }
  }

  private func handle(_ input: Input) -> [ParticipantEffect] {
    switch input {
    case .begin(let txn): return core.step(.begin(txn))
    case .core(let input): return core.step(input)
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

  private func carryOut(_ effects: [ParticipantEffect], in group: inout ThrowingDiscardingTaskGroup<any Error>) {
    let (store, resource, inputs, node) = (self.store, self.resource, self.inputs, self.id)
    /// Runs `operation` as a child task and feeds its answer back; store failures stop the node.
    func background(_ txn: TxnID, _ operation: @escaping @Sendable () async throws -> ParticipantInput) {
      group.addTask {
        let answer: Input
        do {
          answer = .core(try await operation())
        } catch TransactionStoreError.unusable(let why) {
          answer = .storeFailed(why)
        } catch TransactionStoreError.refused, TransactionStoreError.rejected {
          answer = .core(.recordRefused(txn))
        } catch {
          answer = .core(.recordFailed(txn))
        }
        try? await inputs.send(answer)
      }
    }
    for effect in effects {
      switch effect {
      case .send(let outgoing):
        do {
          try endpoint.send(outgoing.message, to: outgoing.to)
        } catch {
          logger.debug("send to \(outgoing.to) failed: \(error)")
        }
      case .prepare(let txn):
        background(txn) {
          let vote = (try? await resource.prepare(txn)) ?? .no
          return .voted(txn, vote)
        }
      case .recordPrepared(let txn, let participants):
        background(txn) {
          .preparedRecorded(
            txn, decided: try await store.recordPrepared(txn, participant: node, participants: participants))
        }
      case .recordDecision(let txn, let decision):
        background(txn) {
          let holding = try await store.decideIfUndecided(
            txn, decision, participants: [node], finisher: decision == .commit ? node : nil)
          return .decisionRecorded(txn, holding)
        }
      case .lookUp(let txn):
        background(txn) { .lookedUp(txn, try await store.outcome(of: txn)) }
      case .apply(let txn, let decision):
        background(txn) {
          if decision == .commit { await resource.commit(txn) } else { await resource.rollback(txn) }
          return .applied(txn)
        }
      case .recordFinished(let txn):
        background(txn) {
          try await store.recordFinished(txn, by: node)
          return .finishRecorded(txn)
        }
      }
    }
  }

  // MARK: - API

  /// Tells the node that the application began work for `id` here: if no prepare comes within
  /// ``ParticipantOptions/unpreparedTimeoutTicks``, the node rolls it back on its own.
  public nonisolated func begin(_ id: TxnID) {
    try? inputs.trySend(.begin(id))
  }

  /// Asks the node to stop; ``run()`` returns. Transactions in doubt resume from the records at the next start.
  public nonisolated func shutdown() {
    do { try inputs.trySend(.stop) } catch { inputs.close() }
  }
}
