public import QuorumCore

/// An input to a ``CoordinatorCore``.
public enum CoordinatorInput: Sendable, Hashable {
  /// The application asks to commit `id` with these participants: start phase 1 (or a one-phase commit when
  /// there is one participant).
  case begin(TxnID, participants: [NodeID])
  /// The application gave up on `id` before asking to commit (its body failed): tell the participants to roll
  /// back. Nothing is recorded (presumed abort). Ignored for a transaction in progress or known to have
  /// committed.
  case abandon(TxnID, participants: [NodeID])
  /// A message from a participant.
  case message(from: NodeID, TransactionMessage)
  /// One tick of the shell's timer, with its wall clock (milliseconds since 1970), for the transaction horizon.
  case tick(wallClockMillis: UInt64)
  /// The shell carried out ``CoordinatorEffect/recordDecision(_:_:participants:)``: `decision` is now durable
  /// for `id` — the one asked for, or the one the record already held.
  case decisionRecorded(TxnID, TransactionDecision)
  /// The shell could not record the decision, or the end of a commit (the store was unavailable); the core
  /// retries after a back-off.
  case recordFailed(TxnID)
  /// The store certainly did not record the decision, and would refuse it again
  /// (``TransactionStoreError/refused(_:)``: a full table, too many participants; or
  /// ``TransactionStoreError/rejected(_:)``: turned away before the group's log). A commit of a transaction none of
  /// whose earlier writes went unanswered ends at once: nothing can record it any more, so it aborts
  /// (``TransactionAbortReason/recordRefused(_:)``) and the participants are told. A commit refused because the
  /// table's time lags (``TransactionRecordError/clockAhead(startedAtMillis:logTimeMillis:)``) is retried until the
  /// horizon, and then aborts (``TransactionAbortReason/expired``). After an unanswered write, which may still
  /// land, and for an abort, it is retried as after ``recordFailed(_:)``; except that a commit turned away before
  /// the log after an unanswered write is not resent: an abort with no participants is written instead, and the
  /// table answers with the decision that holds (the commit, if the unanswered write landed).
  case recordRefused(TxnID, TransactionStoreError)
  /// The shell carried out ``CoordinatorEffect/recordFinished(_:)``: the coordinator is done with `id`.
  case finishRecorded(TxnID)
  /// The records this coordinator left before it restarted (``TransactionRecordStore/pendingRecords(of:)``).
  case recovered([TransactionRecordSummary])
  /// The shell answered a lookup of `id`, one of this coordinator's transactions that the core does not track,
  /// with `decision` as the record store settled it (``TransactionCoordinator/outcome(of:)``: abort unless a
  /// commit is recorded, and in classic mode nothing is written for an abort). The core remembers it, so that
  /// ``begin(_:participants:)`` of `id` is refused from now on (``TransactionRejection/duplicateID``): a presumed
  /// abort, once told, is final. Ignored for a transaction the core tracks or already remembers.
  case settled(TxnID, TransactionDecision)
}

/// What a ``CoordinatorCore`` asks its shell to do, in order.
public enum CoordinatorEffect: Sendable, Hashable, CustomStringConvertible {
  /// Send a message.
  case send(TransactionOutgoing)
  /// Make `decision` durable for `id` unless a decision is already recorded
  /// (``TransactionRecordStore/decideIfUndecided(_:_:participants:finisher:)``, with this coordinator as the
  /// finisher of a commit), then answer ``CoordinatorInput/decisionRecorded(_:_:)`` with the decision that holds,
  /// or ``CoordinatorInput/recordFailed(_:)``. No message depending on it is sent before the answer.
  case recordDecision(TxnID, TransactionDecision, participants: [NodeID])
  /// The transaction is decided: answer the application.
  case finished(TxnID, TransactionResult)
  /// The application's request was refused; nothing was sent.
  case rejected(TxnID, TransactionRejection)
  /// The coordinator gave up waiting for a one-phase commit's answer at the horizon: the outcome is unknown
  /// here (the participant's record has it).
  case expired(TxnID)
  /// Every participant acknowledged the commit: record that this coordinator is done with `id`, then answer
  /// ``CoordinatorInput/finishRecorded(_:)``, or ``CoordinatorInput/recordFailed(_:)`` (the core writes it again
  /// after a back-off: until it lands, the record is kept for this coordinator).
  case recordFinished(TxnID)

  public var description: String {
    switch self {
    case .send(let outgoing): return "send \(outgoing)"
    case .recordDecision(let id, let decision, let participants):
      return "record \(decision) \(id) \(participants.map(\.description).joined(separator: ","))"
    case .finished(let id, let result): return "finished \(id) \(result)"
    case .rejected(let id, let why): return "rejected \(id): \(why)"
    case .expired(let id): return "expired \(id)"
    case .recordFinished(let id): return "record finished \(id)"
    }
  }
}

/// The coordinator of two-phase commit with presumed abort, as a pure value (Gray 1978; Mohan, Lindsay and
/// Obermarck, "Transaction Management in the R* Distributed Database Management System", 1986).
///
/// - **Phase 1.** ``CoordinatorInput/begin(_:participants:)`` sends `prepare` (with the participant list, for
///   cooperative termination) to every participant and collects votes. A `no`, or a vote missing after
///   ``CoordinatorOptions/voteTimeoutTicks``, aborts: the participants that may have prepared are told, and
///   nothing is written (presumed abort: no record means abort). Read-only voters take no part in phase 2;
///   if every vote is read-only the transaction commits with nothing written and nothing sent.
/// - **The decision.** With every vote in and at least one `yes`, the core asks for the commit to be recorded
///   (``CoordinatorEffect/recordDecision(_:_:participants:)``) and sends nothing until it is durable. In
///   non-blocking mode that record is a compare-and-set in a replicated table that a participant may have won
///   with an abort; the core then aborts.
/// - **Phase 2.** The commit goes to every `yes` voter and is resent, backing off, until each acknowledges;
///   then the core records that it is finished. Aborts are not acknowledged.
/// - **One participant** commits in one phase in non-blocking mode: ``TransactionMessage/commitOnePhase(_:recordStore:)``,
///   and the participant decides through the shared table (a compare-and-set, so ``TransactionCoordinator``'s
///   `outcome(of:)` cannot presume abort over its commit). A participant that writes to another store answers
///   with a vote instead, and the transaction goes on in two phases. In classic mode it goes through both phases
///   from the start: the participant would decide in its own log, where this coordinator cannot see it.
/// - **Idempotence.** Duplicate and late votes, acknowledgements and questions change nothing; a question
///   about a transaction the core no longer tracks is answered from the record
///   (``CoordinatorEffect/recordDecision(_:_:participants:)`` with `abort`: the stored decision if there is
///   one, abort otherwise), never guessed.
/// - **Recovery.** ``CoordinatorInput/recovered(_:)`` resumes phase 2 of every recorded, unfinished commit and
///   resolves every undecided transaction whose participants recorded prepared (in a shared table) to abort
///   through the record.
///
/// Retries back off per transaction (``CoordinatorOptions/retry``) and at most
/// ``CoordinatorOptions/retriesPerTick`` go out per tick, so a restart with many unfinished transactions does
/// not flood the network.
public struct CoordinatorCore: Sendable {
  enum Phase: Hashable, Sendable {
    /// Phase 1 of two-phase commit.
    case collecting(votes: [NodeID: TransactionVote])
    /// Waiting for the single participant's outcome.
    case onePhase
    /// The decision is being recorded (`inFlight`), or will be at the next wake-up; `targets` are told after.
    case recording(TransactionDecision, targets: [NodeID], inFlight: Bool)
    /// Phase 2 of a commit.
    case completing(unacked: Set<NodeID>)
    /// Every participant acknowledged the commit; the end of its record is being written (`inFlight`), or will be
    /// at the next wake-up.
    case finishing(inFlight: Bool)
  }

  struct Active: Hashable, Sendable {
    var participants: [NodeID]
    var phase: Phase
    var startedTick: UInt64
    var wakeTick: UInt64
    var retryInterval: UInt64
    /// Whether a write of the decision went unanswered: it may have been recorded, or may still be, so only the
    /// record can tell the outcome from then on.
    var decisionMayHaveLanded = false
  }

  /// This coordinator.
  public let id: NodeID
  /// Timeouts, back-off and bounds.
  public let options: CoordinatorOptions
  /// The identity of the replicated record store in non-blocking mode, sent with every prepare; `nil` in
  /// classic mode.
  public let recordStore: UInt64?

  var active: [TxnID: Active] = [:]
  /// Transactions this core no longer tracks whose decision is being read from the record, with the nodes
  /// that asked.
  var resolving: [TxnID: Set<NodeID>] = [:]
  var outcomes: OutcomeMemory<TransactionDecision>
  var wakeups = TimeHeap<TxnID>()
  /// Ticks since the core was created.
  public private(set) var now: UInt64 = 0
  /// The latest wall-clock time a tick brought.
  public private(set) var wallClockMillis: UInt64 = 0

  /// Creates a coordinator with nothing in progress.
  /// - Precondition: `options` pass ``CoordinatorOptions/validate()``.
  public init(id: NodeID, options: CoordinatorOptions = CoordinatorOptions(), recordStore: UInt64? = nil) {
    precondition(id != .none, "CoordinatorCore: node id 0 is reserved")
    do { try options.validate() } catch { preconditionFailure("CoordinatorCore \(id): invalid options: \(error)") }
    self.id = id
    self.options = options
    self.recordStore = recordStore
    self.outcomes = OutcomeMemory(capacity: options.rememberedOutcomes)
  }

  /// The number of transactions in progress.
  public var activeCount: Int { active.count }

  /// What the core knows of `id`: in progress, decided (possibly remembered after it finished), or `nil` if it
  /// does not know (ask the record store).
  public func status(of id: TxnID) -> TransactionStatus? {
    if let transaction = active[id] {
      switch transaction.phase {
      case .completing, .finishing: return .committed
      case .collecting, .onePhase, .recording: return .inProgress
      }
    }
    if let decision = outcomes[id] { return TransactionStatus(decision) }
    if resolving[id] != nil { return .inProgress }
    return nil
  }

  /// The core's state in one line, for failure messages: the clock, the wake-up heap, and every transaction in
  /// progress with its phase and timers (at most the first 8, by identifier).
  var stateSummary: String {
    let heapMin = wakeups.min.map { "\($0.millis):\($0.id)" } ?? "none"
    var parts = [
      "now=\(now) wall=\(wallClockMillis) active=\(active.count) resolving=\(resolving.count) "
        + "heap=\(wakeups.count) heapMin=\(heapMin)"
    ]
    for txn in active.keys.sorted().prefix(8) {
      guard let transaction = active[txn] else { continue }
      let queued = wakeups.items.contains { $0.id == txn && $0.millis == transaction.wakeTick }
      parts.append(
        "\(txn): \(transaction.phase) started=\(transaction.startedTick) wake=\(transaction.wakeTick) "
          + "retry=\(transaction.retryInterval) queued=\(queued)")
    }
    return parts.joined(separator: "; ")
  }

  /// Takes one input and returns what to do, in order.
  public mutating func step(_ input: CoordinatorInput) -> [CoordinatorEffect] {
    var effects: [CoordinatorEffect] = []
    switch input {
    case .begin(let txn, let participants): begin(txn, participants, &effects)
    case .abandon(let txn, let participants):
      // In progress, being looked up, or committed already: not the application's to undo.
      guard active[txn] == nil, resolving[txn] == nil, outcomes[txn] != .commit else { break }
      for participant in participants where participant != id {
        effects.append(.send(TransactionOutgoing(to: participant, .decision(txn, .abort))))
      }
      outcomes.remember(txn, .abort)
    case .message(let from, let message): receive(message, from: from, &effects)
    case .tick(let wall): tick(wall, &effects)
    case .decisionRecorded(let txn, let decision): recorded(txn, decision, &effects)
    case .recordFailed(let txn):
      resolving[txn] = nil
      if case .finishing? = active[txn]?.phase {
        active[txn]?.phase = .finishing(inFlight: false)
        backOff(txn)
        break
      }
      guard var transaction = active[txn], case .recording(let decision, let targets, _) = transaction.phase else {
        break
      }
      transaction.phase = .recording(decision, targets: targets, inFlight: false)
      transaction.decisionMayHaveLanded = true
      active[txn] = transaction
      backOff(txn)
    case .recordRefused(let txn, let error): refused(txn, error, &effects)
    case .finishRecorded(let txn):
      guard case .finishing? = active[txn]?.phase else { break }
      active[txn] = nil
      outcomes.remember(txn, .commit)
    case .recovered(let records): recover(records)
    case .settled(let txn, let decision):
      guard active[txn] == nil, resolving[txn] == nil, outcomes[txn] == nil else { break }
      outcomes.remember(txn, decision)
    }
    return effects
  }

  // MARK: - Phase 1

  private mutating func begin(_ txn: TxnID, _ participants: [NodeID], _ effects: inout [CoordinatorEffect]) {
    if let rejection = check(txn, participants) {
      effects.append(.rejected(txn, rejection))
      return
    }
    let interval = options.retry.initialTicks
    // One phase needs the participant to decide where this coordinator's answers come from: in a shared table (a
    // compare-and-set that a presumed abort here cannot contradict). In classic mode the participant would decide
    // in its own log, and this coordinator, with no record of it after a restart or a lost answer, would presume
    // abort for a transaction that committed.
    if participants.count == 1 && recordStore != nil {
      active[txn] = Active(
        participants: participants, phase: .onePhase, startedTick: now, wakeTick: now, retryInterval: interval)
      effects.append(.send(TransactionOutgoing(to: participants[0], .commitOnePhase(txn, recordStore: recordStore))))
    } else {
      active[txn] = Active(
        participants: participants, phase: .collecting(votes: [:]), startedTick: now, wakeTick: now,
        retryInterval: interval)
      for participant in participants {
        effects.append(
          .send(
            TransactionOutgoing(to: participant, .prepare(txn, participants: participants, recordStore: recordStore))))
      }
    }
    schedule(txn, at: now &+ interval)
  }

  private func check(_ txn: TxnID, _ participants: [NodeID]) -> TransactionRejection? {
    guard txn.coordinator == id else { return .foreignID(txn.coordinator) }
    guard !participants.isEmpty else { return .noParticipants }
    guard !participants.contains(id) else { return .coordinatorIsParticipant }
    var seen: Set<NodeID> = []
    for participant in participants where !seen.insert(participant).inserted {
      return .duplicateParticipant(participant)
    }
    guard participants.count <= options.maxParticipants else {
      return .tooManyParticipants(count: participants.count, limit: options.maxParticipants)
    }
    guard active[txn] == nil, resolving[txn] == nil, outcomes[txn] == nil else { return .duplicateID }
    guard active.count < options.maxActiveTransactions else {
      return .tooManyActive(limit: options.maxActiveTransactions)
    }
    if txn.isPastHorizon(wallClockMillis, horizonMillis: options.transactionHorizonMillis) { return .expired }
    return nil
  }

  private mutating func receive(_ message: TransactionMessage, from: NodeID, _ effects: inout [CoordinatorEffect]) {
    switch message {
    case .vote(let txn, let vote): receiveVote(txn, vote, from: from, &effects)
    case .outcome(let txn, let decision):
      guard let transaction = active[txn], case .onePhase = transaction.phase, transaction.participants == [from]
      else { return }
      finish(txn, decision == .commit ? .committed : .aborted(.participantAborted(from)), &effects)
    case .ack(let txn):
      guard var transaction = active[txn], case .completing(var unacked) = transaction.phase,
        unacked.remove(from) != nil
      else { return }
      if unacked.isEmpty {
        transaction.phase = .finishing(inFlight: true)
        transaction.retryInterval = options.retry.initialTicks
        active[txn] = transaction
        effects.append(.recordFinished(txn))
      } else {
        transaction.phase = .completing(unacked: unacked)
        active[txn] = transaction
      }
    case .decisionRequest(let txn):
      if let transaction = active[txn] {
        switch transaction.phase {
        case .completing, .finishing: effects.append(.send(TransactionOutgoing(to: from, .decision(txn, .commit))))
        case .collecting, .onePhase, .recording: break
        }
        return  // undecided: the participant asks again later
      }
      if let decision = outcomes[txn] {
        effects.append(.send(TransactionOutgoing(to: from, .decision(txn, decision))))
        return
      }
      answerFromRecord(txn, asker: from, &effects)
    case .prepare, .commitOnePhase, .decision:
      return  // participant messages
    }
  }

  private mutating func receiveVote(
    _ txn: TxnID, _ vote: TransactionVote, from: NodeID, _ effects: inout [CoordinatorEffect]
  ) {
    guard let transaction = active[txn] else {
      // A late or repeated vote. A yes voter is prepared and waits for the decision: answer it truthfully.
      guard vote == .yes else { return }
      if let decision = outcomes[txn] {
        effects.append(.send(TransactionOutgoing(to: from, .decision(txn, decision))))
      } else {
        answerFromRecord(txn, asker: from, &effects)
      }
      return
    }
    switch transaction.phase {
    case .collecting(var votes):
      guard transaction.participants.contains(from), votes[from] == nil else { return }
      votes[from] = vote
      if vote == .no {
        abortCollecting(txn, votes: votes, reason: .votedNo(from), &effects)
        return
      }
      active[txn]?.phase = .collecting(votes: votes)
      if votes.count == transaction.participants.count { decide(txn, votes: votes, &effects) }
    case .completing(let unacked):
      if vote == .yes, unacked.contains(from) {
        effects.append(.send(TransactionOutgoing(to: from, .decision(txn, .commit))))
      }
    case .finishing:
      if vote == .yes { effects.append(.send(TransactionOutgoing(to: from, .decision(txn, .commit)))) }
    case .onePhase:
      // The participant does not write to this coordinator's store, so it cannot decide where this coordinator
      // looks (a presumed abort here would contradict a commit in its own log): it prepared instead, and the
      // transaction goes on in two phases, the decision recorded here.
      guard transaction.participants == [from] else { return }
      active[txn]?.phase = .collecting(votes: [:])
      receiveVote(txn, vote, from: from, &effects)
    case .recording:
      return
    }
  }

  private mutating func decide(_ txn: TxnID, votes: [NodeID: TransactionVote], _ effects: inout [CoordinatorEffect]) {
    guard let transaction = active[txn] else { return }
    if txn.isPastHorizon(wallClockMillis, horizonMillis: options.transactionHorizonMillis) {
      abortCollecting(txn, votes: votes, reason: .expired, &effects)
      return
    }
    let yes = transaction.participants.filter { votes[$0] == .yes }
    guard !yes.isEmpty else {
      finish(txn, .committed, &effects)  // read-only everywhere: nothing to record, nothing to send
      return
    }
    active[txn]?.phase = .recording(.commit, targets: yes, inFlight: true)
    active[txn]?.retryInterval = options.retry.initialTicks
    effects.append(.recordDecision(txn, .commit, participants: yes))
  }

  private mutating func abortCollecting(
    _ txn: TxnID, votes: [NodeID: TransactionVote], reason: TransactionAbortReason,
    _ effects: inout [CoordinatorEffect]
  ) {
    guard let transaction = active[txn] else { return }
    // Whoever has not voted no or read-only may be prepared (or preparing): tell it.
    for participant in transaction.participants where votes[participant] == nil || votes[participant] == .yes {
      effects.append(.send(TransactionOutgoing(to: participant, .decision(txn, .abort))))
    }
    finish(txn, .aborted(reason), &effects)
  }

  private mutating func finish(_ txn: TxnID, _ result: TransactionResult, _ effects: inout [CoordinatorEffect]) {
    active[txn] = nil
    outcomes.remember(txn, result.decision)
    effects.append(.finished(txn, result))
  }

  /// Answers a question about a transaction this core does not track from its record: the stored decision,
  /// or abort if there is none (recorded as such in a shared table, so that a late commit cannot win).
  private mutating func answerFromRecord(_ txn: TxnID, asker: NodeID, _ effects: inout [CoordinatorEffect]) {
    guard txn.coordinator == id else { return }
    if resolving[txn] != nil {
      resolving[txn]?.insert(asker)
      return
    }
    guard resolving.count < options.maxActiveTransactions else { return }  // the asker asks again later
    resolving[txn] = [asker]
    effects.append(.recordDecision(txn, .abort, participants: []))
  }

  // MARK: - Decisions recorded

  private mutating func recorded(_ txn: TxnID, _ decision: TransactionDecision, _ effects: inout [CoordinatorEffect]) {
    if let askers = resolving.removeValue(forKey: txn) {
      for asker in askers.sorted() { effects.append(.send(TransactionOutgoing(to: asker, .decision(txn, decision)))) }
      if active[txn] == nil { outcomes.remember(txn, decision) }
    }
    guard let transaction = active[txn], case .recording(_, let targets, _) = transaction.phase else {
      return
    }
    switch decision {
    case .commit:
      for target in targets { effects.append(.send(TransactionOutgoing(to: target, .decision(txn, .commit)))) }
      active[txn]?.phase = .completing(unacked: Set(targets))
      active[txn]?.retryInterval = options.retry.initialTicks
      schedule(txn, at: now &+ options.retry.initialTicks)
      effects.append(.finished(txn, .committed))
    case .abort:
      for target in targets { effects.append(.send(TransactionOutgoing(to: target, .decision(txn, .abort)))) }
      active[txn] = nil
      outcomes.remember(txn, .abort)
      effects.append(.finished(txn, .aborted(.resolvedAbort)))
    }
  }

  /// A write of the decision of `txn` that the store certainly did not apply (see
  /// ``CoordinatorInput/recordRefused(_:_:)``).
  private mutating func refused(_ txn: TxnID, _ error: TransactionStoreError, _ effects: inout [CoordinatorEffect]) {
    resolving[txn] = nil  // a lookup: the askers ask again
    guard var transaction = active[txn], case .recording(let decision, let targets, _) = transaction.phase else {
      return
    }
    let retryable: Bool
    if case .refused(.clockAhead) = error { retryable = true } else { retryable = false }
    let pastHorizon = txn.isPastHorizon(wallClockMillis, horizonMillis: options.transactionHorizonMillis)
    // Only a commit that nothing may still record ends early: an earlier unanswered write may land after this
    // refusal (a replicated group applies a delayed request when it arrives), and then the commit holds.
    if decision == .commit, !transaction.decisionMayHaveLanded, !retryable || pastHorizon {
      for target in targets { effects.append(.send(TransactionOutgoing(to: target, .decision(txn, .abort)))) }
      finish(txn, .aborted(retryable ? .expired : .recordRefused(error)), &effects)
      return
    }
    if decision == .commit, case .rejected = error {
      // Turned away before the log (too large for it): resending it would never end, and the table's horizon never
      // sees it. Write an abort with no participants instead, a small compare-and-set: the table answers whichever
      // decision holds, the earlier commit if that unanswered write landed, otherwise this abort.
      transaction.phase = .recording(.abort, targets: targets, inFlight: false)
      active[txn] = transaction
      backOff(txn)
      return
    }
    transaction.phase = .recording(decision, targets: targets, inFlight: false)
    active[txn] = transaction
    backOff(txn)
  }

  // MARK: - Time

  private mutating func schedule(_ txn: TxnID, at tick: UInt64) {
    active[txn]?.wakeTick = tick
    wakeups.push(tick, txn)
  }

  private mutating func backOff(_ txn: TxnID) {
    guard let interval = active[txn]?.retryInterval else { return }
    let next = options.retry.next(after: interval)
    active[txn]?.retryInterval = next
    schedule(txn, at: now &+ next)
  }

  private mutating func tick(_ wall: UInt64, _ effects: inout [CoordinatorEffect]) {
    now &+= 1
    wallClockMillis = Swift.max(wallClockMillis, wall)
    var budget = options.retriesPerTick
    var deferred: [TxnID] = []
    while let top = wakeups.min, top.millis <= now {
      wakeups.popMin()
      guard let transaction = active[top.id], transaction.wakeTick == top.millis else { continue }  // stale
      if budget <= 0 {
        deferred.append(top.id)
        continue
      }
      budget -= wake(top.id, transaction, &effects)
    }
    for txn in deferred { schedule(txn, at: now &+ 1) }
    if wakeups.isBloated(liveCount: active.count) {
      wakeups.rebuild(active.map { .init(millis: $0.value.wakeTick, id: $0.key) })
    }
  }

  /// Handles a transaction whose timer is due; returns how much of the tick's retry budget it used.
  private mutating func wake(_ txn: TxnID, _ transaction: Active, _ effects: inout [CoordinatorEffect]) -> Int {
    let pastHorizon = txn.isPastHorizon(wallClockMillis, horizonMillis: options.transactionHorizonMillis)
    switch transaction.phase {
    case .collecting(let votes):
      if pastHorizon || now &- transaction.startedTick >= options.voteTimeoutTicks {
        let missing = transaction.participants.filter { votes[$0] == nil }
        abortCollecting(txn, votes: votes, reason: pastHorizon ? .expired : .voteTimeout(missing: missing), &effects)
        return 1
      }
      for participant in transaction.participants where votes[participant] == nil {
        effects.append(
          .send(
            TransactionOutgoing(
              to: participant, .prepare(txn, participants: transaction.participants, recordStore: recordStore))))
      }
      // Wake for the vote timeout at the latest.
      let next = options.retry.next(after: transaction.retryInterval)
      active[txn]?.retryInterval = next
      schedule(txn, at: Swift.min(now &+ next, transaction.startedTick &+ options.voteTimeoutTicks))
      return 1
    case .onePhase:
      if pastHorizon {
        active[txn] = nil
        effects.append(.expired(txn))
        return 1
      }
      effects.append(
        .send(TransactionOutgoing(to: transaction.participants[0], .commitOnePhase(txn, recordStore: recordStore))))
      backOff(txn)
      return 1
    case .recording(let decision, let targets, let inFlight):
      guard !inFlight else { return 0 }
      active[txn]?.phase = .recording(decision, targets: targets, inFlight: true)
      effects.append(.recordDecision(txn, decision, participants: decision == .commit ? targets : []))
      return 1
    case .completing(let unacked):
      for participant in unacked.sorted() {
        effects.append(.send(TransactionOutgoing(to: participant, .decision(txn, .commit))))
      }
      backOff(txn)
      return 1
    case .finishing(let inFlight):
      guard !inFlight else { return 0 }
      active[txn]?.phase = .finishing(inFlight: true)
      effects.append(.recordFinished(txn))
      return 1
    }
  }

  // MARK: - Recovery

  private mutating func recover(_ records: [TransactionRecordSummary]) {
    for record in records.sorted(by: { $0.id < $1.id }) where record.id.coordinator == id && active[record.id] == nil {
      switch record.decision {
      case .commit?:
        guard record.pending.contains(id) else {
          outcomes.remember(record.id, .commit)
          continue
        }
        active[record.id] = Active(
          participants: record.participants, phase: .completing(unacked: Set(record.participants)), startedTick: now,
          wakeTick: now, retryInterval: options.retry.initialTicks)
        schedule(record.id, at: now &+ 1)
      case .abort?:
        outcomes.remember(record.id, .abort)
      case nil:
        // Undecided, with prepared participants in a shared table: this coordinator crashed before deciding.
        // Abort it through the record (a commit of the earlier incarnation may still be on its way there).
        guard !record.pending.isEmpty else { continue }
        active[record.id] = Active(
          participants: record.participants,
          phase: .recording(.abort, targets: record.pending.filter { $0 != id }, inFlight: false), startedTick: now,
          wakeTick: now, retryInterval: options.retry.initialTicks)
        schedule(record.id, at: now &+ 1)
      }
    }
  }
}
