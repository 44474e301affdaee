public import QuorumCore

/// An input to a ``ParticipantCore``.
public enum ParticipantInput: Sendable, Hashable {
  /// The application began work for `id` here: if no prepare comes within
  /// ``ParticipantOptions/unpreparedTimeoutTicks``, the participant aborts it on its own.
  case begin(TxnID)
  /// A message from the coordinator or another participant.
  case message(from: NodeID, TransactionMessage)
  /// One tick of the shell's timer, with its wall clock (milliseconds since 1970), for the transaction horizon.
  case tick(wallClockMillis: UInt64)
  /// The application answered ``ParticipantEffect/prepare(_:)`` (a prepare that threw counts as `no`).
  case voted(TxnID, TransactionVote)
  /// ``ParticipantEffect/recordPrepared(_:participants:)`` is durable. `decided` is the decision the record
  /// already held (a shared table can hold one), in which case nothing was recorded.
  case preparedRecorded(TxnID, decided: TransactionDecision?)
  /// ``ParticipantEffect/recordDecision(_:_:)`` is durable: `decision` holds for `id`.
  case decisionRecorded(TxnID, TransactionDecision)
  /// A record effect (prepared, decision or finished) could not be carried out.
  case recordFailed(TxnID)
  /// A record effect was refused by the record table (``TransactionStoreError/refused(_:)``: a full table, a
  /// clock too far ahead) or turned away before the record group's log (``TransactionStoreError/rejected(_:)``: too
  /// large for it): nothing was recorded, and that request will not be applied later. For a prepared
  /// record this ends the yes at once (there is nothing to withdraw); otherwise it is taken as
  /// ``recordFailed(_:)``.
  case recordRefused(TxnID)
  /// ``ParticipantEffect/lookUp(_:)``: the record of `id` in this participant's store, if any.
  case lookedUp(TxnID, TransactionRecordSummary?)
  /// The application finished ``ParticipantEffect/apply(_:_:)``.
  case applied(TxnID)
  /// ``ParticipantEffect/recordFinished(_:)`` is durable.
  case finishRecorded(TxnID)
  /// The records this participant left before it restarted (``TransactionRecordStore/pendingRecords(of:)``).
  /// The shell hands the prepared ones to the application (``TransactionParticipant/recover(prepared:)``)
  /// first, so that their locks are back before any decision is applied.
  case recovered([TransactionRecordSummary])
}

/// What a ``ParticipantCore`` asks its shell to do, in order.
public enum ParticipantEffect: Sendable, Hashable, CustomStringConvertible {
  /// Send a message.
  case send(TransactionOutgoing)
  /// Ask the application to prepare `id`; answer ``ParticipantInput/voted(_:_:)``.
  case prepare(TxnID)
  /// Make the prepared state of `id` durable (``TransactionRecordStore/recordPrepared(_:participant:participants:)``);
  /// answer ``ParticipantInput/preparedRecorded(_:decided:)`` or ``ParticipantInput/recordFailed(_:)``. The yes
  /// vote waits for it.
  case recordPrepared(TxnID, participants: [NodeID])
  /// Record `decision` for `id` unless one is recorded (``TransactionRecordStore/decideIfUndecided(_:_:participants:finisher:)``,
  /// with this participant as the finisher of a commit): its own one-phase commit, an abort that resolves a
  /// transaction in doubt in non-blocking mode, or the abort of a yes withdrawn because its prepared record could
  /// not be written. Answer ``ParticipantInput/decisionRecorded(_:_:)`` with the decision that holds, or
  /// ``ParticipantInput/recordFailed(_:)``.
  case recordDecision(TxnID, TransactionDecision)
  /// Read the record of `id` (``TransactionRecordStore/outcome(of:)``); answer ``ParticipantInput/lookedUp(_:_:)``.
  case lookUp(TxnID)
  /// Have the application commit or roll back `id`; answer ``ParticipantInput/applied(_:)``.
  case apply(TxnID, TransactionDecision)
  /// Record that this participant is done with `id`; answer ``ParticipantInput/finishRecorded(_:)`` or
  /// ``ParticipantInput/recordFailed(_:)``. A commit is acknowledged only after it.
  case recordFinished(TxnID)

  public var description: String {
    switch self {
    case .send(let outgoing): return "send \(outgoing)"
    case .prepare(let id): return "prepare \(id)"
    case .recordPrepared(let id, _): return "record prepared \(id)"
    case .recordDecision(let id, let decision): return "record \(decision) \(id)"
    case .lookUp(let id): return "look up \(id)"
    case .apply(let id, let decision): return "apply \(decision) \(id)"
    case .recordFinished(let id): return "record finished \(id)"
    }
  }
}

/// A participant of two-phase commit with presumed abort, as a pure value.
///
/// - **Voting.** A prepare asks the application (``ParticipantEffect/prepare(_:)``). A `yes` is made durable
///   (``ParticipantEffect/recordPrepared(_:participants:)``) before it is sent; a `no` rolls back; a read-only
///   vote ends the transaction here (no phase 2). A failed durable write turns the yes into a no.
/// - **One phase.** ``TransactionMessage/commitOnePhase(_:recordStore:)`` over this participant's own shared store
///   makes it the decider: it records its own commit durably there, then commits and answers
///   ``TransactionMessage/outcome(_:_:)``. Over another store (or from a coordinator when this participant's
///   store is local) it is taken as a prepare with this participant alone, and answered with a vote. From a
///   coordinator too old to name a store, to a participant whose store is local, it is refused: rolled back and
///   answered with the outcome abort (that coordinator ignores votes in one phase).
/// - **Before preparing** the participant may abort on its own: a transaction that began here
///   (``ParticipantInput/begin(_:)``) and sees no prepare within ``ParticipantOptions/unpreparedTimeoutTicks``
///   rolls back, and so does one whose peers ask about it (cooperative termination: it has not voted, so it can
///   still refuse).
/// - **Prepared, it never decides alone.** It asks the coordinator, backing off; after
///   ``ParticipantOptions/escalateAfterInquiries`` unanswered questions it also asks the other participants
///   (classic mode), or records an abort through the replicated record if the coordinator has not recorded a
///   commit there first (non-blocking mode: the prepare named the same shared store this participant writes
///   to). A participant answers a peer only with what it knows for certain: a decision it learned, or an abort
///   of its own from before it voted.
/// - **Phase 2.** A decision is applied by the application; a commit is acknowledged after the participant's
///   record is ended, so a restart cannot ask again about a commit the coordinator has forgotten.
/// - **Idempotence.** A duplicate prepare is answered with the same vote, a duplicate decision or question
///   changes nothing, and a commit for a transaction it no longer knows is acknowledged (it committed and
///   forgot). A duplicate one-phase commit is answered from memory, or from the record when memory may have
///   dropped it.
/// - **Recovery.** ``ParticipantInput/recovered(_:)`` restores every prepared transaction (the application gets
///   them first, to take their locks back) and asks for the outcome, and finishes applying any decision
///   recorded.
///
/// A participant whose own store is shared (``TransactionRecordStore/sharedIdentity``) takes part only in
/// non-blocking transactions over that same store; it votes no to any other prepare, since it could not tell
/// after a restart which of its records it may resolve.
public struct ParticipantCore: Sendable {
  enum Phase: Hashable, Sendable {
    /// Work began here; no prepare yet.
    case working
    /// The application is preparing.
    case voting(onePhase: Bool, pendingAbort: Bool)
    /// The application voted yes; the prepared record is being written.
    case recordingPrepared(pendingAbort: Bool)
    /// The prepared record could not be written, so the vote is no; the write may have landed all the same, so
    /// the record is being ended (`inFlight`, or at the next wake-up) before the application rolls back: until
    /// then a restart that finds it restores the transaction as prepared, and the application must still be.
    /// The write may also land *later*, after anything written since (a replicated store applies a delayed
    /// request when it arrives), so the abort is recorded first (`decided` once it is): a prepared record that
    /// lands after it records nothing, instead of a record pending on this participant, kept for good and
    /// restored as prepared at its next start.
    case withdrawing(decided: Bool, inFlight: Bool)
    /// A one-phase commit's decision is being recorded (`inFlight`), or will be at the next wake-up.
    case recordingCommit(inFlight: Bool)
    /// Checking the record before answering a one-phase request that may repeat a forgotten one.
    case lookingUp
    /// Voted yes; waiting for the decision.
    case prepared(inquiries: Int)
    /// Resolving through the shared record (non-blocking mode).
    case resolving(inquiries: Int)
    /// The application is applying the decision.
    case applying(TransactionDecision)
    /// The record is being ended (`inFlight`), or will be at the next wake-up.
    case finishing(TransactionDecision, inFlight: Bool)
  }

  struct Tracked: Hashable, Sendable {
    var phase: Phase
    var participants: [NodeID] = []
    var recordStore: UInt64?
    var onePhase = false
    /// Whether this participant began the work itself (``ParticipantInput/begin(_:)``) before any prepare.
    var registered = false
    /// Whether this participant's store holds a record of it that must be ended.
    var recorded = false
    /// Whether an abort here is certain knowledge that the transaction cannot commit (see ``Ended``).
    var abortIsCertain = false
    var startedTick: UInt64
    var wakeTick: UInt64
    var retryInterval: UInt64
  }

  /// What became of a transaction this participant no longer tracks.
  enum Ended: Hashable, Sendable {
    case committed
    /// `certain`: the abort is known (learned, or this participant refused before voting); otherwise it only
    /// voted no to a prepare it did not recognise (perhaps a late copy), which proves nothing about the outcome.
    case aborted(certain: Bool)
    case readOnly
  }

  /// This participant.
  public let id: NodeID
  /// Timeouts, back-off and bounds.
  public let options: ParticipantOptions
  /// The identity of this participant's record store if it is shared (non-blocking mode), else `nil`.
  public let recordStore: UInt64?

  var tracked: [TxnID: Tracked] = [:]
  var ended: OutcomeMemory<Ended>
  var wakeups = TimeHeap<TxnID>()
  /// Ticks since the core was created.
  public private(set) var now: UInt64 = 0
  /// The latest wall-clock time a tick brought.
  public private(set) var wallClockMillis: UInt64 = 0

  /// Creates a participant with nothing in progress.
  /// - Precondition: `options` pass ``ParticipantOptions/validate()``.
  public init(id: NodeID, options: ParticipantOptions = ParticipantOptions(), recordStore: UInt64? = nil) {
    precondition(id != .none, "ParticipantCore: node id 0 is reserved")
    do { try options.validate() } catch { preconditionFailure("ParticipantCore \(id): invalid options: \(error)") }
    self.id = id
    self.options = options
    self.recordStore = recordStore
    self.ended = OutcomeMemory(capacity: options.rememberedOutcomes)
  }

  /// The number of transactions tracked.
  public var trackedCount: Int { tracked.count }

  /// The transactions prepared here and waiting for their decision.
  public var inDoubt: [TxnID] {
    tracked.compactMap { id, transaction in
      switch transaction.phase {
      case .prepared, .resolving: return id
      default: return nil
      }
    }.sorted()
  }

  /// What this participant knows of `id`: in progress, decided (possibly remembered after it ended), or `nil`.
  public func status(of id: TxnID) -> TransactionStatus? {
    if let transaction = tracked[id] {
      switch transaction.phase {
      case .applying(let decision), .finishing(let decision, _): return TransactionStatus(decision)
      default: return .inProgress
      }
    }
    switch ended[id] {
    case .committed?, .readOnly?: return .committed
    case .aborted?: return .aborted
    case nil: return nil
    }
  }

  /// Takes one input and returns what to do, in order.
  public mutating func step(_ input: ParticipantInput) -> [ParticipantEffect] {
    var effects: [ParticipantEffect] = []
    switch input {
    case .begin(let txn):
      guard tracked[txn] == nil, ended[txn] == nil, tracked.count < options.maxTransactions else { break }
      track(txn, Tracked(phase: .working, registered: true, startedTick: now, wakeTick: now, retryInterval: 1))
      schedule(txn, at: now &+ options.unpreparedTimeoutTicks)
    case .message(let from, let message): receive(message, from: from, &effects)
    case .tick(let wall): tick(wall, &effects)
    case .voted(let txn, let vote): voted(txn, vote, &effects)
    case .preparedRecorded(let txn, let decided): preparedRecorded(txn, decided, &effects)
    case .decisionRecorded(let txn, let decision): decisionRecorded(txn, decision, &effects)
    case .recordFailed(let txn): recordFailed(txn, &effects)
    case .recordRefused(let txn):
      guard case .recordingPrepared? = tracked[txn]?.phase else {
        recordFailed(txn, &effects)
        break
      }
      // Nothing was written and nothing will land: no record to withdraw; vote no and roll back now.
      tracked[txn]?.recorded = false
      tracked[txn]?.abortIsCertain = true
      effects.append(.send(TransactionOutgoing(to: txn.coordinator, .vote(txn, .no))))
      startApplying(txn, .abort, &effects)
    case .lookedUp(let txn, let record): lookedUp(txn, record, &effects)
    case .applied(let txn): applied(txn, &effects)
    case .finishRecorded(let txn):
      if case .withdrawing(decided: true, _)? = tracked[txn]?.phase {
        // No restart can find it prepared now, and this node never votes yes to it again: the abort is certain.
        tracked[txn]?.recorded = false
        tracked[txn]?.abortIsCertain = true
        startApplying(txn, .abort, &effects)
        break
      }
      guard let transaction = tracked[txn], case .finishing(let decision, _) = transaction.phase else { break }
      end(txn, decision == .commit ? .committed : .aborted(certain: transaction.abortIsCertain))
      if decision == .commit && !transaction.onePhase {
        effects.append(.send(TransactionOutgoing(to: txn.coordinator, .ack(txn))))
      }
    case .recovered(let records): recover(records, &effects)
    }
    return effects
  }

  private mutating func track(_ txn: TxnID, _ transaction: Tracked) {
    tracked[txn] = transaction
  }

  private mutating func end(_ txn: TxnID, _ outcome: Ended) {
    tracked[txn] = nil
    ended.remember(txn, outcome)
  }

  private func isNonBlocking(_ transaction: Tracked) -> Bool {
    recordStore != nil && transaction.recordStore == recordStore
  }

  // MARK: - Messages

  private mutating func receive(_ message: TransactionMessage, from: NodeID, _ effects: inout [ParticipantEffect]) {
    switch message {
    case .prepare(let txn, let participants, let store): prepare(txn, participants, store, &effects)
    case .commitOnePhase(let txn, let store):
      // One phase only where the coordinator looks for the decision: this participant's own store. Otherwise it
      // would decide in a log the coordinator cannot see, and a coordinator that lost the answer would presume
      // abort over its commit. It answers as to a prepare (a vote, and a no from a shared store that is not the
      // coordinator's), and the coordinator records the decision. A coordinator too old to say (`nil`) only sends
      // one phase from a shared store: taken as this one if this participant's is shared (as before the field).
      // To a participant with a local store, such a coordinator expects it to decide alone, which it no longer
      // does; and it ignores a vote in one phase, so a prepare would hold locks until its horizon. It is refused.
      if store == nil && recordStore == nil {
        refuseOnePhase(txn, &effects)
      } else if store.map({ $0 == recordStore }) ?? true {
        commitOnePhase(txn, &effects)
      } else {
        prepare(txn, [id], store, &effects)
      }
    case .decision(let txn, let decision): learn(txn, decision, &effects)
    case .decisionRequest(let txn): answer(txn, asker: from, &effects)
    case .vote, .ack, .outcome:
      return  // coordinator messages
    }
  }

  private mutating func prepare(
    _ txn: TxnID, _ participants: [NodeID], _ store: UInt64?, _ effects: inout [ParticipantEffect]
  ) {
    let coordinator = txn.coordinator
    func vote(_ vote: TransactionVote) -> ParticipantEffect {
      .send(TransactionOutgoing(to: coordinator, .vote(txn, vote)))
    }
    if let transaction = tracked[txn] {
      switch transaction.phase {
      case .working:
        guard store == recordStore || recordStore == nil else {
          refuseWork(txn, &effects)
          effects.append(vote(.no))
          return
        }
        tracked[txn]?.phase = .voting(onePhase: false, pendingAbort: false)
        tracked[txn]?.participants = participants
        tracked[txn]?.recordStore = store
        effects.append(.prepare(txn))
      case .prepared, .resolving:
        effects.append(vote(.yes))  // the vote may have been lost
      case .withdrawing, .finishing(.abort, _):
        effects.append(vote(.no))  // as once it has ended
      default:
        return
      }
      return
    }
    switch ended[txn] {
    case .aborted?: effects.append(vote(.no))
    case .readOnly?: effects.append(vote(.readOnly))
    case .committed?: return
    case nil:
      let tooLate = txn.isPastHorizon(wallClockMillis, horizonMillis: options.transactionHorizonMillis)
      let foreignStore = recordStore != nil && store != recordStore
      guard !tooLate, !foreignStore, tracked.count < options.maxTransactions else {
        ended.remember(txn, .aborted(certain: false))
        effects.append(vote(.no))
        return
      }
      track(
        txn,
        Tracked(
          phase: .voting(onePhase: false, pendingAbort: false), participants: participants, recordStore: store,
          startedTick: now, wakeTick: now, retryInterval: options.inquiry.initialTicks))
      effects.append(.prepare(txn))
    }
  }

  /// Refuses a one-phase commit from a coordinator older than ``TransactionMessage/commitOnePhase(_:recordStore:)``'s
  /// store (wire tag 1) to this participant, whose store is local: it rolls back what the transaction did here and
  /// answers ``TransactionMessage/outcome(_:_:)`` abort, which that coordinator understands (the transaction fails
  /// at once instead of at its horizon). A transaction that ended here is answered from memory; one this
  /// participant may have forgotten, or past its horizon, is not answered (it may have committed under an older
  /// build), as for a one-phase commit.
  private mutating func refuseOnePhase(_ txn: TxnID, _ effects: inout [ParticipantEffect]) {
    if let transaction = tracked[txn] {
      guard case .working = transaction.phase else { return }  // prepared by a prepare, or ending: not this
      tracked[txn]?.onePhase = true
      refuseWork(txn, &effects)  // applied, then answered with the outcome (abort)
      return
    }
    if let outcome = ended[txn] {
      let decision: TransactionDecision =
        outcome == .aborted(certain: true) || outcome == .aborted(certain: false) ? .abort : .commit
      effects.append(.send(TransactionOutgoing(to: txn.coordinator, .outcome(txn, decision))))
      return
    }
    guard !ended.mayHaveForgotten(txn),
      !txn.isPastHorizon(wallClockMillis, horizonMillis: options.transactionHorizonMillis),
      tracked.count < options.maxTransactions
    else { return }
    // Unknown here: the application rolls back whatever it holds of it (nothing, most likely), then the answer.
    track(
      txn,
      Tracked(
        phase: .working, participants: [id], onePhase: true, startedTick: now, wakeTick: now,
        retryInterval: options.inquiry.initialTicks))
    refuseWork(txn, &effects)
  }

  private mutating func commitOnePhase(_ txn: TxnID, _ effects: inout [ParticipantEffect]) {
    if let transaction = tracked[txn] {
      if case .finishing(let decision, _) = transaction.phase {
        // Decided and applied here; only the record is still being ended.
        effects.append(.send(TransactionOutgoing(to: txn.coordinator, .outcome(txn, decision))))
        return
      }
      guard case .working = transaction.phase else { return }  // in progress: answered when done
      tracked[txn]?.phase = .voting(onePhase: true, pendingAbort: false)
      tracked[txn]?.onePhase = true
      tracked[txn]?.participants = [id]
      effects.append(.prepare(txn))
      return
    }
    if let outcome = ended[txn] {
      let decision: TransactionDecision =
        outcome == .aborted(certain: true) || outcome == .aborted(certain: false)
        ? .abort : .commit
      effects.append(.send(TransactionOutgoing(to: txn.coordinator, .outcome(txn, decision))))
      return
    }
    // Past the horizon an unknown transaction cannot be answered truthfully (its record may be gone): stay silent,
    // the coordinator gives up at the same horizon.
    guard !txn.isPastHorizon(wallClockMillis, horizonMillis: options.transactionHorizonMillis),
      tracked.count < options.maxTransactions
    else { return }
    track(
      txn,
      Tracked(
        phase: .voting(onePhase: true, pendingAbort: false), participants: [id], onePhase: true, startedTick: now,
        wakeTick: now, retryInterval: options.inquiry.initialTicks))
    if ended.mayHaveForgotten(txn) {
      // It may be a copy of a request decided here and since dropped from memory: the record knows.
      tracked[txn]?.phase = .lookingUp
      effects.append(.lookUp(txn))
    } else {
      effects.append(.prepare(txn))
    }
  }

  private mutating func learn(_ txn: TxnID, _ decision: TransactionDecision, _ effects: inout [ParticipantEffect]) {
    guard let transaction = tracked[txn] else {
      switch (decision, ended[txn]) {
      case (.commit, _):
        // A commit for a transaction it no longer knows was committed and forgotten here (it voted yes, so it
        // kept a record until it applied the commit), or needed nothing here (it voted read-only; a recovering
        // coordinator may not know which participants did): acknowledge, the first ack may be lost.
        effects.append(.send(TransactionOutgoing(to: txn.coordinator, .ack(txn))))
      case (.abort, nil):
        // Work the application did here without telling the node (the coordinator abandoned the transaction
        // before preparing): roll it back, and refuse any prepare that comes later.
        guard tracked.count < options.maxTransactions else { return }
        track(
          txn,
          Tracked(
            phase: .working, abortIsCertain: true, startedTick: now, wakeTick: now,
            retryInterval: options.inquiry.initialTicks))
        startApplying(txn, .abort, &effects)
      case (.abort, _):
        return
      }
      return
    }
    switch transaction.phase {
    case .working:
      if decision == .abort {
        tracked[txn]?.abortIsCertain = true
        startApplying(txn, .abort, &effects)
      }
    case .voting(let onePhase, _):
      if decision == .abort && !onePhase { tracked[txn]?.phase = .voting(onePhase: false, pendingAbort: true) }
    case .recordingPrepared:
      if decision == .abort { tracked[txn]?.phase = .recordingPrepared(pendingAbort: true) }
    case .withdrawing:
      if decision == .abort { tracked[txn]?.abortIsCertain = true }  // rolled back once the record is ended
    case .prepared, .resolving:
      tracked[txn]?.abortIsCertain = true
      startApplying(txn, decision, &effects)
    case .recordingCommit, .lookingUp, .applying, .finishing:
      return
    }
  }

  private mutating func answer(_ txn: TxnID, asker: NodeID, _ effects: inout [ParticipantEffect]) {
    func reply(_ decision: TransactionDecision) {
      effects.append(.send(TransactionOutgoing(to: asker, .decision(txn, decision))))
    }
    if let transaction = tracked[txn] {
      switch transaction.phase {
      case .working:
        // Not voted: it can still refuse, and then the transaction cannot commit.
        refuseWork(txn, &effects)
        reply(.abort)
      case .applying(let decision), .finishing(let decision, _):
        if decision == .commit || transaction.abortIsCertain { reply(decision) }
      case .withdrawing:
        if transaction.abortIsCertain { reply(.abort) }  // learned; its own no is not final before a restart
      default:
        return
      }
      return
    }
    switch ended[txn] {
    case .committed?: reply(.commit)
    case .aborted(certain: true)?: reply(.abort)
    default: return
    }
  }

  /// Rolls back work that began here and was never voted on; the abort is certain.
  private mutating func refuseWork(_ txn: TxnID, _ effects: inout [ParticipantEffect]) {
    tracked[txn]?.abortIsCertain = true
    startApplying(txn, .abort, &effects)
  }

  // MARK: - Answers from the application and the store

  private mutating func voted(_ txn: TxnID, _ vote: TransactionVote, _ effects: inout [ParticipantEffect]) {
    guard let transaction = tracked[txn], case .voting(let onePhase, let pendingAbort) = transaction.phase else {
      return
    }
    let coordinator = txn.coordinator
    if onePhase {
      switch vote {
      case .yes:
        tracked[txn]?.phase = .recordingCommit(inFlight: true)
        tracked[txn]?.retryInterval = options.inquiry.initialTicks
        effects.append(.recordDecision(txn, .commit))
      case .no:
        tracked[txn]?.abortIsCertain = true
        startApplying(txn, .abort, &effects)
      case .readOnly:
        end(txn, .readOnly)
        effects.append(.send(TransactionOutgoing(to: coordinator, .outcome(txn, .commit))))
      }
      return
    }
    if pendingAbort {
      tracked[txn]?.abortIsCertain = true
      if vote == .readOnly { end(txn, .aborted(certain: true)) } else { startApplying(txn, .abort, &effects) }
      return
    }
    switch vote {
    case .yes:
      tracked[txn]?.phase = .recordingPrepared(pendingAbort: false)
      effects.append(.recordPrepared(txn, participants: transaction.participants))
    case .no:
      tracked[txn]?.abortIsCertain = transaction.registered
      startApplying(txn, .abort, &effects)
      effects.append(.send(TransactionOutgoing(to: coordinator, .vote(txn, .no))))
    case .readOnly:
      end(txn, .readOnly)
      effects.append(.send(TransactionOutgoing(to: coordinator, .vote(txn, .readOnly))))
    }
  }

  private mutating func preparedRecorded(
    _ txn: TxnID, _ decided: TransactionDecision?, _ effects: inout [ParticipantEffect]
  ) {
    guard let transaction = tracked[txn], case .recordingPrepared(let pendingAbort) = transaction.phase else { return }
    tracked[txn]?.recorded = decided == nil
    if let decided {
      // The shared record was decided before this participant prepared (a peer resolved it): follow it.
      tracked[txn]?.abortIsCertain = true
      startApplying(txn, decided, &effects)
      if decided == .abort {
        effects.append(.send(TransactionOutgoing(to: txn.coordinator, .vote(txn, .no))))
      }
      return
    }
    if pendingAbort {
      tracked[txn]?.abortIsCertain = true
      startApplying(txn, .abort, &effects)
      return
    }
    tracked[txn]?.phase = .prepared(inquiries: 0)
    tracked[txn]?.retryInterval = options.inquiry.initialTicks
    schedule(txn, at: now &+ options.inquiry.initialTicks)
    effects.append(.send(TransactionOutgoing(to: txn.coordinator, .vote(txn, .yes))))
  }

  private mutating func decisionRecorded(
    _ txn: TxnID, _ decision: TransactionDecision, _ effects: inout [ParticipantEffect]
  ) {
    guard let transaction = tracked[txn] else { return }
    switch transaction.phase {
    case .recordingCommit:
      // This participant's own one-phase decision (an abort if the transaction was past its horizon).
      tracked[txn]?.recorded = decision == .commit
      tracked[txn]?.abortIsCertain = true
      startApplying(txn, decision, &effects)
    case .resolving:
      tracked[txn]?.abortIsCertain = true
      startApplying(txn, decision, &effects)
    case .withdrawing(decided: false, _):
      guard decision == .abort else {
        // Not without this participant's yes, which it never sent; but the record is what every other party
        // follows, and the application is still prepared: follow it too.
        tracked[txn]?.abortIsCertain = true
        startApplying(txn, decision, &effects)
        return
      }
      tracked[txn]?.phase = .withdrawing(decided: true, inFlight: true)
      tracked[txn]?.retryInterval = options.inquiry.initialTicks
      effects.append(.recordFinished(txn))
    default:
      return
    }
  }

  private mutating func recordFailed(_ txn: TxnID, _ effects: inout [ParticipantEffect]) {
    guard let transaction = tracked[txn] else { return }
    switch transaction.phase {
    case .recordingPrepared(let pendingAbort):
      // Not durable, so no yes: vote no. The write may have landed all the same, and a restart that found it
      // would restore the transaction as prepared and vote yes to a repeated prepare: the abort is recorded (so
      // that a write landing later records nothing) and the record ended first, and only then does the
      // application roll back.
      tracked[txn]?.recorded = true
      tracked[txn]?.abortIsCertain = pendingAbort
      tracked[txn]?.phase = .withdrawing(decided: false, inFlight: true)
      tracked[txn]?.retryInterval = options.inquiry.initialTicks
      effects.append(.recordDecision(txn, .abort))
      effects.append(.send(TransactionOutgoing(to: txn.coordinator, .vote(txn, .no))))
    case .withdrawing(let decided, _):
      tracked[txn]?.phase = .withdrawing(decided: decided, inFlight: false)
      backOff(txn)
    case .recordingCommit:
      // The commit may or may not be recorded: ask again (the compare-and-set returns what holds).
      tracked[txn]?.phase = .recordingCommit(inFlight: false)
      backOff(txn)
    case .resolving(let inquiries):
      tracked[txn]?.phase = .prepared(inquiries: inquiries)
      backOff(txn)
    case .finishing(let decision, _):
      tracked[txn]?.phase = .finishing(decision, inFlight: false)
      backOff(txn)
    case .lookingUp:
      // Cannot tell whether it decided this before: stay silent; the coordinator asks again.
      tracked[txn] = nil
    default:
      return
    }
  }

  private mutating func lookedUp(
    _ txn: TxnID, _ record: TransactionRecordSummary?, _ effects: inout [ParticipantEffect]
  ) {
    guard let transaction = tracked[txn], case .lookingUp = transaction.phase else { return }
    guard let decision = record?.decision else {
      tracked[txn]?.phase = .voting(onePhase: true, pendingAbort: false)
      effects.append(.prepare(txn))
      return
    }
    end(txn, decision == .commit ? .committed : .aborted(certain: true))
    effects.append(.send(TransactionOutgoing(to: txn.coordinator, .outcome(txn, decision))))
  }

  private mutating func startApplying(
    _ txn: TxnID, _ decision: TransactionDecision, _ effects: inout [ParticipantEffect]
  ) {
    tracked[txn]?.phase = .applying(decision)
    effects.append(.apply(txn, decision))
  }

  private mutating func applied(_ txn: TxnID, _ effects: inout [ParticipantEffect]) {
    guard let transaction = tracked[txn], case .applying(let decision) = transaction.phase else { return }
    if transaction.onePhase {
      effects.append(.send(TransactionOutgoing(to: txn.coordinator, .outcome(txn, decision))))
    }
    let outcome: Ended = decision == .commit ? .committed : .aborted(certain: transaction.abortIsCertain)
    guard transaction.recorded else {
      end(txn, outcome)
      return
    }
    // The record is ended before the transaction is: nobody waits for that of an abort (not acknowledged) or of a
    // one-phase commit (answered already), but a failed write is retried all the same, or the record would stay
    // pending on this participant — never forgotten — until it restarts.
    tracked[txn]?.phase = .finishing(decision, inFlight: true)
    tracked[txn]?.retryInterval = options.inquiry.initialTicks
    effects.append(.recordFinished(txn))
  }

  // MARK: - Time

  private mutating func schedule(_ txn: TxnID, at tick: UInt64) {
    tracked[txn]?.wakeTick = tick
    wakeups.push(tick, txn)
  }

  private mutating func backOff(_ txn: TxnID) {
    guard let interval = tracked[txn]?.retryInterval else { return }
    let next = options.inquiry.next(after: interval)
    tracked[txn]?.retryInterval = next
    schedule(txn, at: now &+ next)
  }

  private mutating func tick(_ wall: UInt64, _ effects: inout [ParticipantEffect]) {
    now &+= 1
    wallClockMillis = Swift.max(wallClockMillis, wall)
    var budget = options.retriesPerTick
    var deferred: [TxnID] = []
    while let top = wakeups.min, top.millis <= now {
      wakeups.popMin()
      guard let transaction = tracked[top.id], transaction.wakeTick == top.millis else { continue }  // stale
      if budget <= 0 {
        deferred.append(top.id)
        continue
      }
      budget -= wake(top.id, transaction, &effects)
    }
    for txn in deferred { schedule(txn, at: now &+ 1) }
    if wakeups.isBloated(liveCount: tracked.count) {
      wakeups.rebuild(tracked.map { .init(millis: $0.value.wakeTick, id: $0.key) })
    }
  }

  private mutating func wake(_ txn: TxnID, _ transaction: Tracked, _ effects: inout [ParticipantEffect]) -> Int {
    switch transaction.phase {
    case .working:
      guard now &- transaction.startedTick >= options.unpreparedTimeoutTicks else {
        schedule(txn, at: transaction.startedTick &+ options.unpreparedTimeoutTicks)
        return 0
      }
      refuseWork(txn, &effects)
      // Tell the coordinator, in case it is collecting votes: it can abort at once.
      effects.append(.send(TransactionOutgoing(to: txn.coordinator, .vote(txn, .no))))
      return 1
    case .prepared(let inquiries):
      let asked = inquiries + 1
      effects.append(.send(TransactionOutgoing(to: txn.coordinator, .decisionRequest(txn))))
      if asked > options.escalateAfterInquiries {
        if isNonBlocking(transaction) {
          tracked[txn]?.phase = .resolving(inquiries: asked)
          effects.append(.recordDecision(txn, .abort))
          return 1
        }
        for peer in transaction.participants where peer != id {
          effects.append(.send(TransactionOutgoing(to: peer, .decisionRequest(txn))))
        }
      }
      tracked[txn]?.phase = .prepared(inquiries: asked)
      backOff(txn)
      return 1
    case .recordingCommit(let inFlight):
      guard !inFlight else { return 0 }
      tracked[txn]?.phase = .recordingCommit(inFlight: true)
      effects.append(.recordDecision(txn, .commit))
      return 1
    case .finishing(let decision, let inFlight):
      guard !inFlight else { return 0 }
      tracked[txn]?.phase = .finishing(decision, inFlight: true)
      effects.append(.recordFinished(txn))
      return 1
    case .withdrawing(let decided, let inFlight):
      guard !inFlight else { return 0 }
      tracked[txn]?.phase = .withdrawing(decided: decided, inFlight: true)
      effects.append(decided ? .recordFinished(txn) : .recordDecision(txn, .abort))
      return 1
    case .voting, .recordingPrepared, .lookingUp, .resolving, .applying:
      return 0
    }
  }

  // MARK: - Recovery

  private mutating func recover(_ records: [TransactionRecordSummary], _ effects: inout [ParticipantEffect]) {
    for record in records.sorted(by: { $0.id < $1.id }) where tracked[record.id] == nil {
      let txn = record.id
      guard record.pending.contains(id) else {
        // Finished here: remember the outcome for late copies of its messages.
        if let decision = record.decision, record.participants.contains(id) {
          ended.remember(txn, decision == .commit ? .committed : .aborted(certain: true))
        }
        continue
      }
      // A one-phase participant records a decision; a prepared one (a classic transaction with this participant
      // alone goes through both phases) records none.
      let onePhase = record.decision != nil && record.participants == [id] && txn.coordinator != id
      var transaction = Tracked(
        phase: .prepared(inquiries: 0), participants: record.participants, recordStore: recordStore,
        onePhase: onePhase, recorded: true, abortIsCertain: true, startedTick: now, wakeTick: now,
        retryInterval: options.inquiry.initialTicks)
      if let decision = record.decision {
        transaction.phase = .applying(decision)
        track(txn, transaction)
        effects.append(.apply(txn, decision))
      } else {
        track(txn, transaction)
        schedule(txn, at: now &+ 1)
      }
    }
  }
}
