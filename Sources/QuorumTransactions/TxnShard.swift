public import QuorumCore

/// One shard of the sharded transactional key-value store: a group's keys, their locks, the transactions
/// working on them, and the group's table of decision records — a deterministic ``QuorumCore/StateMachine``
/// carried by the group's log as the `txn` service (``TxnShardService``).
///
/// **Strict two-phase locking, no-wait.** A transaction reads through the shard (``TxnShardCommand/read(_:key:)``),
/// taking a shared lock per key; its writes stay with the client until it prepares
/// (``TxnShardCommand/prepare(_:writes:participants:recordGroup:)``), which takes exclusive locks on the
/// written keys and keeps the writes — durable, since they are in the log — until the decision. Every lock is
/// held until the transaction commits or aborts here; read-only shards keep their read locks too (releasing them
/// at prepare would put a release before the distributed transaction's lock point, and a cycle could slip in).
/// A request that conflicts is not queued: it is answered at once with ``TxnShardResponse/conflict(_:)``.
/// Deadlocks cannot form — nothing ever waits for a lock — at the price of aborts under contention. Wound-wait
/// would need waiting requests, a way to tell a waiting client it was granted later, and a way to wound a
/// transaction prepared elsewhere (which 2PC forbids); no-wait needs none of that and keeps every command a
/// single, immediate log entry. A conflicting read leaves the transaction as it was (the client may retry the read
/// after a pause, or abort); a conflicting prepare or one-shot commit aborts it here (it is a no vote).
///
/// **Reads do not see the transaction's own writes**: the writes are buffered by the client, which answers
/// a read of a key it wrote from its buffer.
///
/// **Ending.** ``TxnShardCommand/commit(_:)`` applies the prepared writes; ``TxnShardCommand/abort(_:)`` drops
/// them; both release the locks and are idempotent, and the shard remembers the outcome so that late or repeated
/// commands are answered truthfully. ``TxnShardCommand/commitLocal(_:reads:writes:)`` is the single-group fast
/// path: locks checked, reads taken, writes applied, all in one entry.
///
/// **Time** is log time. An unprepared transaction with no command for ``TxnShardLimits/idleTimeoutMillis`` is
/// aborted and its locks released (a client that disappeared); a prepared one is never aborted by the shard —
/// it is in doubt (``TxnShardQuery/inDoubt(minimumAgeMillis:limit:)``) until someone applies the decision from
/// its record. No transaction is admitted past its horizon (``TxnShardLimits/transactionHorizonMillis`` after its
/// start) or if it started no later than the newest ended transaction the shard had to forget to stay within
/// ``TxnShardLimits/maxRemembered``: a late copy of a command can never revive a transaction that ended.
///
/// **Records.** The group also holds a ``TransactionRecords`` table (``TxnShardCommand/records(_:)``): the
/// decision records of the transactions that chose this group as their record group, each decided with a
/// compare-and-set by the client that commits or by whoever resolves it. Participants in the table are
/// groups, written as node identifiers with the same number (``TxnShard/party(_:)``).
public struct TxnShard: StateMachine {
  struct KeyLock: Hashable, Sendable {
    var readers: Set<TxnID> = []
    var writer: TxnID?

    var isFree: Bool { readers.isEmpty && writer == nil }
  }

  struct Prepared: Hashable, Sendable {
    var writes: [TxnWrite]
    var participants: [GroupID]
    var recordGroup: GroupID
    var preparedAtMillis: UInt64
  }

  struct Txn: Hashable, Sendable {
    var readKeys: Set<String> = []
    var prepared: Prepared?
    var lastActivityMillis: UInt64
  }

  /// The bounds and timings.
  public let limits: TxnShardLimits
  /// The log time of the last applied entry.
  public internal(set) var logTimeMillis: UInt64 = 0
  /// The log index of the last applied entry.
  public internal(set) var appliedIndex: UInt64 = 0
  /// Whether a transaction that starts further after the shard's time than
  /// ``TransactionRecordLimits/maxClockAheadMillis`` (of ``TxnShardLimits/records``) is refused
  /// (``TxnShardError/startsAhead(_:shardMillis:)``). Off while the shard's time does not yet follow a wall clock:
  /// a hosted shard before its leader's first clock entry, whose time is the log's, from zero — and off by
  /// default, since a bare shard on a node's log has that time. Whoever wraps the shard on a wall clock's time turns
  /// it on (``QuorumHost``'s `HostedTxnShard`, after a clock entry). Not part of the snapshot.
  public var refusesStartsAhead = false

  var data: [String: [UInt8]] = [:]
  var locks: [String: KeyLock] = [:]
  var txns: [TxnID: Txn] = [:]
  var ended: [TxnID: TransactionDecision] = [:]
  /// Transactions started at or before this may have been forgotten to make room: they are refused.
  var watermarkMillis: UInt64 = 0
  /// (start, id) of every remembered ended transaction, for forgetting the oldest.
  var endedByStart = TimeHeap<TxnID>()
  /// (idle deadline, id) of unprepared transactions, plus stale entries.
  var idleDeadlines = TimeHeap<TxnID>()
  /// The group's decision records.
  public internal(set) var records: TransactionRecords

  /// Creates an empty shard with the default limits.
  public init() {
    let limits = TxnShardLimits()
    self.limits = limits
    // The defaults validate.
    self.records = (try? TransactionRecords(limits: limits.records)) ?? TransactionRecords()
  }

  /// Creates an empty shard with `limits`.
  /// - Throws: ``QuorumCore/ConfigurationError`` if a limit is unusable.
  public init(limits: TxnShardLimits) throws(ConfigurationError) {
    try limits.validate()
    self.limits = limits
    self.records = try TransactionRecords(limits: limits.records)
  }

  /// A group as a party of the record table.
  public static func party(_ group: GroupID) -> NodeID { NodeID(rawValue: group.rawValue) }

  /// The committed value of `key`.
  public func value(of key: String) -> [UInt8]? { data[key] }

  /// The earliest log time at which an idle transaction expires, an ended one may be forgotten, or a record
  /// expires.
  public var nextDeadlineMillis: UInt64? {
    let candidates = [
      idleDeadlines.min?.millis,
      endedByStart.min.map { $0.millis.addingSaturated(limits.transactionHorizonMillis) &+ 1 },
      records.nextDeadlineMillis,
    ]
    return candidates.compactMap { $0 }.min()
  }

  public mutating func apply(_ command: TxnShardCommand, context: ApplyContext) -> TxnShardResponse {
    appliedIndex = Swift.max(appliedIndex, context.index)
    logTimeMillis = Swift.max(logTimeMillis, context.timestampMillis)
    let now = ApplyContext(index: context.index, timestampMillis: logTimeMillis, principal: context.principal)
    expireIdle()
    forgetEnded()
    if case .records(let recordCommand) = command {
      // The shard's table follows the shard's time: a clock entry from a client must not move it.
      if case .clock = recordCommand { return .record(records.apply(.advanceTime, context: now)) }
      return .record(records.apply(recordCommand, context: now))
    }
    if let due = records.nextDeadlineMillis, due <= logTimeMillis { records.advanceTime(context: now) }
    return execute(command)
  }

  /// A time-only entry: expires idle transactions, forgets old ones, and expires records.
  public mutating func advanceTime(context: ApplyContext) { _ = apply(.advanceTime, context: context) }

  /// Before an entry at `context` whose time jumped ahead by `jumpMillis` (a clock set forward, as a host's
  /// transaction time is by a new leader's wall clock): moves each transaction's last activity and prepare time
  /// forward by the jump (at most by how far the shard's time moves), so that a jump is not counted as time a
  /// transaction waited here. Otherwise a jump would expire every idle transaction at once and make every
  /// prepared one look in doubt to a resolver, which would abort live transactions. Horizons are untouched: they
  /// compare transactions' starts with the shard's time, and a jump brings that closer to clients' clocks.
  public mutating func discountJump(ofMillis jumpMillis: UInt64, before context: ApplyContext) {
    let move = context.timestampMillis > logTimeMillis ? context.timestampMillis - logTimeMillis : 0
    let shift = Swift.min(jumpMillis, move)
    guard shift > 0 else { return }
    for id in txns.keys.sorted() {
      guard var transaction = txns[id] else { continue }
      transaction.lastActivityMillis = transaction.lastActivityMillis.addingSaturated(shift)
      if let preparedAt = transaction.prepared?.preparedAtMillis {
        transaction.prepared?.preparedAtMillis = preparedAt.addingSaturated(shift)
      }
      txns[id] = transaction
      if transaction.prepared == nil {
        idleDeadlines.push(transaction.lastActivityMillis.addingSaturated(limits.idleTimeoutMillis), id)
      }
    }
  }

  // MARK: - Commands

  private mutating func execute(_ command: TxnShardCommand) -> TxnShardResponse {
    switch command {
    case .read(let txn, let key): return read(txn, key)
    case .prepare(let txn, let writes, let participants, let recordGroup):
      return prepare(txn, writes, participants, recordGroup)
    case .commit(let txn):
      if let decision = ended[txn] { return decision == .commit ? .committed : .aborted }
      guard let transaction = txns[txn] else { return .failed(.unknownTransaction(txn)) }
      guard let prepared = transaction.prepared else { return .failed(.notPrepared(txn)) }
      for write in prepared.writes { data[write.key] = write.value }
      end(txn, .commit)
      return .committed
    case .abort(let txn):
      if let decision = ended[txn] { return decision == .commit ? .committed : .aborted }
      if txns[txn] != nil || isAdmissible(txn) { end(txn, .abort) }
      return .aborted
    case .commitLocal(let txn, let reads, let writes): return commitLocal(txn, reads, writes)
    case .records, .advanceTime:
      return .timeAdvanced
    }
  }

  private mutating func read(_ txn: TxnID, _ key: String) -> TxnShardResponse {
    if let decision = ended[txn] { return decision == .abort ? .aborted : .failed(.alreadyEnded(txn)) }
    if let error = check(key: key) { return .failed(error) }
    if let transaction = txns[txn] {
      guard transaction.prepared == nil else { return .failed(.alreadyPrepared(txn)) }
      if !transaction.readKeys.contains(key), transaction.readKeys.count >= limits.maxKeysPerTransaction {
        return .failed(.tooManyKeys(count: transaction.readKeys.count + 1, limit: limits.maxKeysPerTransaction))
      }
    }
    if let writer = locks[key]?.writer, writer != txn {
      return .conflict(TxnConflict(key: key, holder: writer, mode: .exclusive))
    }
    if txns[txn] == nil, let refusal = admit(txn) { return refusal }
    locks[key, default: KeyLock()].readers.insert(txn)
    txns[txn]?.readKeys.insert(key)
    touch(txn)
    return .value(data[key])
  }

  private mutating func prepare(
    _ txn: TxnID, _ writes: [TxnWrite], _ participants: [GroupID], _ recordGroup: GroupID
  ) -> TxnShardResponse {
    if let decision = ended[txn] { return decision == .commit ? .committed : .aborted }
    if txns[txn]?.prepared != nil { return .prepared }
    if let error = check(writes, reading: txns[txn]?.readKeys ?? []) { return .failed(error) }
    if txns[txn] == nil {
      guard !writes.isEmpty else {
        // Nothing held, nothing to write: there is nothing to do here.
        return isAdmissible(txn) ? .readOnly : .aborted
      }
      if let refusal = admit(txn) { return refusal }
    }
    if let conflict = conflict(of: txn, reading: [], writing: writes.map(\.key)) {
      end(txn, .abort)
      return .conflict(conflict)
    }
    for write in writes {
      locks[write.key, default: KeyLock()].readers.remove(txn)
      locks[write.key, default: KeyLock()].writer = txn
    }
    txns[txn]?.prepared = Prepared(
      writes: writes, participants: participants, recordGroup: recordGroup, preparedAtMillis: logTimeMillis)
    return .prepared
  }

  private mutating func commitLocal(_ txn: TxnID, _ reads: [String], _ writes: [TxnWrite]) -> TxnShardResponse {
    if let decision = ended[txn] { return decision == .commit ? .committed : .aborted }
    if txns[txn]?.prepared != nil { return .failed(.alreadyPrepared(txn)) }
    for key in reads { if let error = check(key: key) { return .failed(error) } }
    let held = txns[txn]?.readKeys ?? []
    if let error = check(writes, reading: held.union(reads)) { return .failed(error) }
    if let conflict = conflict(of: txn, reading: reads, writing: writes.map(\.key)) {
      if txns[txn] != nil { end(txn, .abort) }
      return .conflict(conflict)
    }
    if txns[txn] == nil, let refusal = admit(txn) { return refusal }
    let values = reads.map { TxnRead(key: $0, value: data[$0]) }
    for write in writes { data[write.key] = write.value }
    end(txn, .commit)
    return .committedLocal(values)
  }

  // MARK: - Rules

  private func check(key: String) -> TxnShardError? { limits.check(key: key) }

  private func check(_ writes: [TxnWrite], reading: Set<String>) -> TxnShardError? {
    limits.check(writes, reading: reading)
  }

  /// The first lock `txn` cannot get: shared on `reading`, exclusive on `writing` (no-wait).
  private func conflict(of txn: TxnID, reading: [String], writing: [String]) -> TxnConflict? {
    for key in reading {
      if let writer = locks[key]?.writer, writer != txn {
        return TxnConflict(key: key, holder: writer, mode: .exclusive)
      }
    }
    for key in writing {
      guard let lock = locks[key] else { continue }
      if let writer = lock.writer, writer != txn { return TxnConflict(key: key, holder: writer, mode: .exclusive) }
      if let reader = lock.readers.filter({ $0 != txn }).min() {
        return TxnConflict(key: key, holder: reader, mode: .shared)
      }
    }
    return nil
  }

  /// Whether a transaction unknown here may start now.
  private func isAdmissible(_ txn: TxnID) -> Bool {
    !txn.isPastHorizon(logTimeMillis, horizonMillis: limits.transactionHorizonMillis)
      && txn.startedAtMillis > watermarkMillis && !startsTooFarAhead(txn)
  }

  /// Whether `txn` starts further after the shard's time than its clock may run ahead.
  private func startsTooFarAhead(_ txn: TxnID) -> Bool {
    refusesStartsAhead && txn.startedAtMillis > logTimeMillis.addingSaturated(limits.records.maxClockAheadMillis)
  }

  /// Starts tracking `txn`, or returns why not.
  private mutating func admit(_ txn: TxnID) -> TxnShardResponse? {
    if startsTooFarAhead(txn) { return .failed(.startsAhead(txn, shardMillis: logTimeMillis)) }
    guard isAdmissible(txn) else { return .aborted }
    guard txns.count < limits.maxTransactions else {
      return .failed(.tooManyTransactions(limit: limits.maxTransactions))
    }
    txns[txn] = Txn(lastActivityMillis: logTimeMillis)
    return nil
  }

  private mutating func touch(_ txn: TxnID) {
    txns[txn]?.lastActivityMillis = logTimeMillis
    idleDeadlines.push(logTimeMillis.addingSaturated(limits.idleTimeoutMillis), txn)
  }

  /// Releases `txn`'s locks, forgets its state and remembers its outcome.
  private mutating func end(_ txn: TxnID, _ decision: TransactionDecision) {
    if let transaction = txns.removeValue(forKey: txn) {
      for key in transaction.readKeys { release(key) { $0.readers.remove(txn) } }
      for write in transaction.prepared?.writes ?? [] {
        release(write.key) { lock in if lock.writer == txn { lock.writer = nil } }
      }
    }
    if ended.updateValue(decision, forKey: txn) == nil { endedByStart.push(txn.startedAtMillis, txn) }
    while ended.count > limits.maxRemembered, let oldest = endedByStart.popMin() {
      if ended.removeValue(forKey: oldest.id) != nil { watermarkMillis = Swift.max(watermarkMillis, oldest.millis) }
    }
  }

  private mutating func release(_ key: String, _ change: (inout KeyLock) -> Void) {
    guard var lock = locks[key] else { return }
    change(&lock)
    locks[key] = lock.isFree ? nil : lock
  }

  // MARK: - Time

  private mutating func expireIdle() {
    while let top = idleDeadlines.min, top.millis <= logTimeMillis {
      idleDeadlines.popMin()
      guard let transaction = txns[top.id], transaction.prepared == nil,
        transaction.lastActivityMillis.addingSaturated(limits.idleTimeoutMillis) == top.millis
      else { continue }  // stale: active since, prepared, or ended
      end(top.id, .abort)
    }
    while let top = idleDeadlines.min, !isLiveIdle(top) { idleDeadlines.popMin() }
    if idleDeadlines.isBloated(liveCount: txns.count) {
      idleDeadlines.rebuild(
        txns.compactMap { id, transaction in
          transaction.prepared == nil
            ? .init(millis: transaction.lastActivityMillis.addingSaturated(limits.idleTimeoutMillis), id: id) : nil
        })
    }
  }

  private func isLiveIdle(_ item: TimeHeap<TxnID>.Item) -> Bool {
    guard let transaction = txns[item.id], transaction.prepared == nil else { return false }
    return transaction.lastActivityMillis.addingSaturated(limits.idleTimeoutMillis) == item.millis
  }

  /// Forgets ended transactions past their horizon: commands about them are refused by the horizon rule anyway.
  private mutating func forgetEnded() {
    while let top = endedByStart.min, top.millis.addingSaturated(limits.transactionHorizonMillis) < logTimeMillis {
      endedByStart.popMin()
      ended[top.id] = nil
    }
  }

  // MARK: - Queries

  public func query(_ query: TxnShardQuery) -> TxnShardQueryResult {
    switch query {
    case .get(let key):
      return .value(data[key])
    case .status(let txn):
      return .status(state(of: txn), record: records.summary(of: txn))
    case .inDoubt(let minimumAge, let limit):
      let doubtful = txns.compactMap { id, transaction -> (TxnID, Prepared)? in
        guard let prepared = transaction.prepared,
          logTimeMillis >= prepared.preparedAtMillis.addingSaturated(minimumAge)
        else { return nil }
        return (id, prepared)
      }.sorted { a, b in
        a.1.preparedAtMillis != b.1.preparedAtMillis ? a.1.preparedAtMillis < b.1.preparedAtMillis : a.0 < b.0
      }
      let size = Swift.max(0, limit)
      let page = doubtful.prefix(size).map { id, prepared in
        TxnInDoubt(
          id: id, participants: prepared.participants, recordGroup: prepared.recordGroup,
          ageMillis: logTimeMillis - prepared.preparedAtMillis, keys: prepared.writes.map(\.key))
      }
      return .inDoubt(page, hasMore: doubtful.count > size)
    case .records(.unfinished(let minimumAge, let limit)):
      let now = Swift.max(logTimeMillis, records.logTimeMillis)
      return .records(records.unfinished(minimumAgeMillis: minimumAge, limit: limit, now: now))
    case .records(let recordQuery):
      return .records(records.query(recordQuery))
    case .counts:
      let prepared = txns.values.filter { $0.prepared != nil }.count
      return .counts(
        TxnShardCounts(
          keys: data.count, active: txns.count - prepared, prepared: prepared, remembered: ended.count,
          lockedKeys: locks.count, records: records.count, logTimeMillis: logTimeMillis))
    }
  }

  /// Where `txn` stands here.
  public func state(of txn: TxnID) -> TxnShardState {
    if let transaction = txns[txn] {
      if let prepared = transaction.prepared { return .prepared(ageMillis: logTimeMillis - prepared.preparedAtMillis) }
      return .active(idleMillis: logTimeMillis - transaction.lastActivityMillis)
    }
    switch ended[txn] {
    case .commit?: return .committed
    case .abort?: return .aborted
    case nil: return .unknown
    }
  }
}
