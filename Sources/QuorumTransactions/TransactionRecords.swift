public import QuorumCore

/// The table of transaction records — decisions and prepared participants — as a deterministic
/// ``QuorumCore/StateMachine``.
///
/// It is what makes two-phase commit non-blocking when it runs in a replicated group (behind a
/// ``ReplicatedTransactionRecordStore``): the coordinator records its commit with a compare-and-set
/// (``TransactionRecordCommand/decide(_:_:participants:finisher:kind:)``), and a prepared participant that cannot
/// reach the coordinator records an abort the same way; whichever entry comes first in the log wins, and the
/// other learns it from the answer. No single crash blocks a transaction then: the group survives it, and any
/// participant can finish. The same table, in a node's own log (``LocalTransactionRecordStore``), is the classic
/// coordinator's decision log and a participant's prepared log.
///
/// **Records.** A record holds a transaction's decision (or none yet), its participants, and the nodes that
/// must still finish it: prepared participants (in a shared table) and the coordinator of a commit until every
/// participant acknowledged. An undecided record nobody is pending on is dropped at once; a decided record is
/// kept until nobody is pending *and* log time passes its transaction's start plus
/// ``TransactionRecordLimits/retainDecisionsMillis`` (at least the horizon).
///
/// **The horizon** H (``TransactionRecordLimits/transactionHorizonMillis``) is what makes forgetting safe. A
/// command about a transaction that has no record, arriving when log time is past the transaction's start plus
/// H, records nothing and is answered `abort`: a late commit (a coordinator's compare-and-set delayed in the
/// network, say) can no longer win over an abort record that was forgotten, and a participant asking that late
/// is answered truthfully (a commit record stays until every participant finished). Both sides of the rule
/// compare the same start time with the same log time, so clocks cannot make it unsafe; a coordinator whose
/// clock is behind just sees its transactions expire sooner, and one whose clock is too far ahead is refused
/// (``TransactionRecordError/clockAhead(startedAtMillis:logTimeMillis:)``).
///
/// **Numbers.** ``TransactionRecordCommand/reserve(coordinator:count:)`` hands out blocks of transaction numbers
/// per coordinator, so a restarted coordinator never reuses an identifier. The table remembers the next free
/// number of at most ``TransactionRecordLimits/maxCoordinators`` coordinators. When one more comes, it forgets the
/// sixteenth of them with the lowest numbers (clients that reserved once and went away, mostly), and remembers
/// the highest number it forgot: a coordinator it no longer knows is handed numbers from there on. Every
/// coordinator's numbers thus still only grow, so no identifier repeats, and a cluster serving an endless stream of
/// short-lived clients, each with a fresh coordinator identifier, never runs out of room.
///
/// **Time.** The table's time is the largest ``QuorumCore/ApplyContext/timestampMillis`` seen plus an offset
/// that only grows: a ``TransactionRecordCommand/clock(wallMillis:)`` entry moves it forward to a wall clock
/// reading when it is behind. A node's log time starts at zero with its group, while transactions' starts are
/// wall clock readings; ``ReplicatedLogRecordChannel`` writes such entries, so a table in a Raft or Multi-Paxos
/// group follows the wall clocks of those that use it (and never goes back). Records past their retention are
/// forgotten at the first entry at or after it (``nextDeadlineMillis`` tells the leader when to write one, in log
/// time).
public struct TransactionRecords: StateMachine {
  struct Record: Hashable, Sendable {
    var decision: TransactionDecision?
    var participants: [NodeID]
    var pending: Set<NodeID>
    var createdAtMillis: UInt64
    var decidedAtMillis: UInt64?
    var kind: TransactionRecordKind = .nodes
  }

  /// The bounds and time rules.
  public let limits: TransactionRecordLimits
  /// The table's time at the last applied entry: its log time plus ``clockOffsetMillis``.
  public internal(set) var logTimeMillis: UInt64 = 0
  /// What ``TransactionRecordCommand/clock(wallMillis:)`` entries added to log time (only grows).
  public internal(set) var clockOffsetMillis: UInt64 = 0
  /// The log index of the last applied entry.
  public internal(set) var appliedIndex: UInt64 = 0

  var records: [TxnID: Record] = [:]
  /// The next free number per coordinator.
  var floors: [NodeID: UInt64] = [:]
  /// The highest next free number of a coordinator forgotten from ``floors``: where numbers start for a coordinator
  /// not in it.
  var retiredFloor: UInt64 = 1
  /// When each decided record that nobody is pending on may be forgotten (plus stale entries).
  var expiries = TimeHeap<TxnID>()

  /// Creates an empty table with the default limits.
  public init() { limits = TransactionRecordLimits() }

  /// Creates an empty table with `limits`.
  /// - Throws: ``QuorumCore/ConfigurationError`` if a limit is unusable.
  public init(limits: TransactionRecordLimits) throws(ConfigurationError) {
    try limits.validate()
    self.limits = limits
  }

  /// The number of records held.
  public var count: Int { records.count }

  /// The earliest log time at which a record is forgotten, if any.
  public var nextDeadlineMillis: UInt64? {
    expiries.min.map { $0.millis > clockOffsetMillis ? $0.millis - clockOffsetMillis : 0 }
  }

  public mutating func apply(_ command: TransactionRecordCommand, context: ApplyContext) -> TransactionRecordResponse {
    appliedIndex = Swift.max(appliedIndex, context.index)
    if case .clock(let wall) = command, wall > context.timestampMillis {
      clockOffsetMillis = Swift.max(clockOffsetMillis, wall - context.timestampMillis)
    }
    logTimeMillis = Swift.max(logTimeMillis, context.timestampMillis.addingSaturated(clockOffsetMillis))
    forgetExpired()
    let response = execute(command)
    dropStaleExpiries()
    return response
  }

  /// A time-only entry: forgets the records past their retention.
  public mutating func advanceTime(context: ApplyContext) { _ = apply(.advanceTime, context: context) }

  // MARK: - Commands

  private mutating func execute(_ command: TransactionRecordCommand) -> TransactionRecordResponse {
    switch command {
    case .prepared(let id, let participant, let participants):
      if let record = records[id] {
        if let decision = record.decision { return .decided(decision) }
        records[id]?.pending.insert(participant)
        return .undecided
      }
      if let refusal = admit(id, participants: participants) { return refusal }
      records[id] = Record(
        decision: nil, participants: participants, pending: [participant], createdAtMillis: logTimeMillis)
      return .undecided
    case .decide(let id, let decision, let participants, let finisher, let kind):
      if let record = records[id] {
        if let existing = record.decision { return .decided(existing) }
        records[id]?.decision = decision
        records[id]?.decidedAtMillis = logTimeMillis
        if record.participants.isEmpty {
          records[id]?.participants = participants
          records[id]?.kind = kind
        }
        if decision == .commit, let finisher { records[id]?.pending.insert(finisher) }
        scheduleExpiryIfDone(id)
        return .decided(decision)
      }
      if let refusal = admit(id, participants: participants) { return refusal }
      records[id] = Record(
        decision: decision, participants: participants,
        pending: decision == .commit ? Set(finisher.map { [$0] } ?? []) : [], createdAtMillis: logTimeMillis,
        decidedAtMillis: logTimeMillis, kind: kind)
      scheduleExpiryIfDone(id)
      return .decided(decision)
    case .finished(let id, let node):
      guard records[id]?.pending.remove(node) != nil else { return .finished }
      if records[id]?.decision == nil, records[id]?.pending.isEmpty == true {
        records[id] = nil
      } else {
        scheduleExpiryIfDone(id)
      }
      return .finished
    case .reserve(let coordinator, let count):
      guard count >= 1, count <= limits.maxReservation else {
        return .refused(.invalidReservation(count: count, max: limits.maxReservation))
      }
      if floors[coordinator] == nil, floors.count >= limits.maxCoordinators { retireFloors() }
      let first = floors[coordinator] ?? retiredFloor
      floors[coordinator] = first.addingSaturated(count)
      return .reserved(first: first, count: count)
    case .advanceTime, .clock:
      return .timeAdvanced
    }
  }

  /// Forgets the sixteenth of ``floors`` with the lowest numbers (at least one), raising ``retiredFloor`` to the
  /// highest of them: those coordinators' next numbers start there, above every number they were handed.
  private mutating func retireFloors() {
    let lowest = floors.sorted { a, b in a.value != b.value ? a.value < b.value : a.key < b.key }
      .prefix(max(1, floors.count / 16))
    for (node, floor) in lowest {
      floors[node] = nil
      retiredFloor = max(retiredFloor, floor)
    }
  }

  /// Checks whether a record may be created for `id`; returns the answer if not.
  private func admit(_ id: TxnID, participants: [NodeID]) -> TransactionRecordResponse? {
    // Past the horizon without a record: a commit can no longer be recorded, so the answer is abort and nothing
    // is stored (see the type's discussion).
    if id.isPastHorizon(logTimeMillis, horizonMillis: limits.transactionHorizonMillis) { return .decided(.abort) }
    if id.startedAtMillis > logTimeMillis.addingSaturated(limits.maxClockAheadMillis) {
      return .refused(.clockAhead(startedAtMillis: id.startedAtMillis, logTimeMillis: logTimeMillis))
    }
    guard participants.count <= limits.maxParticipants else {
      return .refused(.tooManyParticipants(count: participants.count, limit: limits.maxParticipants))
    }
    guard records.count < limits.maxRecords else { return .refused(.tooManyRecords(limit: limits.maxRecords)) }
    return nil
  }

  // MARK: - Time

  /// When the record of `id` may be forgotten once nobody is pending on it.
  func expiry(of id: TxnID) -> UInt64 { id.startedAtMillis.addingSaturated(limits.retentionMillis) }

  private func isForgettable(_ id: TxnID) -> Bool {
    guard let record = records[id] else { return false }
    return record.decision != nil && record.pending.isEmpty
  }

  private mutating func scheduleExpiryIfDone(_ id: TxnID) {
    guard isForgettable(id) else { return }
    expiries.push(expiry(of: id), id)
  }

  private mutating func forgetExpired() {
    while let top = expiries.min, top.millis <= logTimeMillis {
      expiries.popMin()
      if isForgettable(top.id) { records[top.id] = nil }
    }
  }

  /// Pops stale tops so that ``nextDeadlineMillis`` is exact, and rebuilds a heap of mostly stale entries.
  private mutating func dropStaleExpiries() {
    while let top = expiries.min, !isForgettable(top.id) { expiries.popMin() }
    // Live entries are at most one per record, so this bound needs no count of them.
    if expiries.isBloated(liveCount: records.count) { rebuildExpiries() }
  }

  mutating func rebuildExpiries() {
    expiries.rebuild(records.keys.filter(isForgettable).map { .init(millis: expiry(of: $0), id: $0) })
  }

  // MARK: - Queries

  /// The summary of the record of `id`, if there is one.
  public func summary(of id: TxnID) -> TransactionRecordSummary? {
    records[id].map { summary(id, $0) }
  }

  func summary(_ id: TxnID, _ record: Record) -> TransactionRecordSummary {
    TransactionRecordSummary(
      id: id, decision: record.decision, participants: record.participants, pending: record.pending.sorted(),
      createdAtMillis: record.createdAtMillis, decidedAtMillis: record.decidedAtMillis,
      ageMillis: logTimeMillis > record.createdAtMillis ? logTimeMillis - record.createdAtMillis : 0)
  }

  public func query(_ query: TransactionRecordQuery) -> TransactionRecordQueryResult {
    switch query {
    case .record(let id):
      return .record(summary(of: id))
    case .involving(let node, let after, let limit):
      let ids = records.compactMap { id, record -> TxnID? in
        guard after.map({ id > $0 }) ?? true else { return nil }
        let concerned = id.coordinator == node || record.pending.contains(node) || record.participants.contains(node)
        return concerned ? id : nil
      }
      return page(ids.sorted(), limit: limit)
    case .inDoubt(let minimumAge, let limit):
      let ids = records.compactMap { id, record -> TxnID? in
        guard record.decision == nil, !record.pending.isEmpty else { return nil }
        return logTimeMillis >= record.createdAtMillis.addingSaturated(minimumAge) ? id : nil
      }
      let oldestFirst = ids.sorted { a, b in
        let (ca, cb) = (records[a]?.createdAtMillis ?? 0, records[b]?.createdAtMillis ?? 0)
        return ca != cb ? ca < cb : a < b
      }
      return page(oldestFirst, limit: limit)
    case .unfinished(let minimumAge, let limit):
      return unfinished(minimumAgeMillis: minimumAge, limit: limit, now: logTimeMillis)
    case .counts:
      return .counts(
        TransactionRecordCounts(
          records: records.count, undecided: records.values.filter { $0.decision == nil }.count,
          coordinators: floors.count, logTimeMillis: logTimeMillis))
    }
  }

  /// The answer to ``TransactionRecordQuery/unfinished(minimumAgeMillis:limit:)`` with ages measured at `now` (a
  /// ``TxnShard``'s log time runs ahead of its table's, which moves only with record commands).
  func unfinished(minimumAgeMillis minimumAge: UInt64, limit: Int, now: UInt64) -> TransactionRecordQueryResult {
    let ids = records.compactMap { id, record -> TxnID? in
      guard record.kind == .groups, record.decision == .commit, !record.pending.isEmpty,
        let decided = record.decidedAtMillis
      else {
        return nil
      }
      return now >= decided.addingSaturated(minimumAge) ? id : nil
    }
    let oldestFirst = ids.sorted { a, b in
      let (da, db) = (records[a]?.decidedAtMillis ?? 0, records[b]?.decidedAtMillis ?? 0)
      return da != db ? da < db : a < b
    }
    return page(oldestFirst, limit: limit)
  }

  private func page(_ ids: [TxnID], limit: Int) -> TransactionRecordQueryResult {
    let size = Swift.max(0, limit)
    let summaries = ids.prefix(size).compactMap { id in records[id].map { summary(id, $0) } }
    return .records(summaries, hasMore: ids.count > size)
  }
}
