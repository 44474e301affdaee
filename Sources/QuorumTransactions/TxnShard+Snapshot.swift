import QuorumCore

extension TxnShard {
  /// The snapshot format this build writes and reads.
  static let snapshotVersion: UInt64 = 1

  /// Serialises the shard deterministically: keys, transactions and ended transactions in order, then the
  /// record table's own snapshot. Locks and the time heaps are derived and rebuilt by ``restore(from:)``.
  public func snapshot() -> [UInt8] {
    var w = WireWriter(reservingCapacity: 64 + data.count * 32 + txns.count * 64 + ended.count * 24)
    w.writeVarint(Self.snapshotVersion)
    w.writeVarint(logTimeMillis)
    w.writeVarint(appliedIndex)
    w.writeVarint(watermarkMillis)
    w.writeVarint(UInt64(data.count))
    for key in KeyOrder.sorted(data.keys) {
      w.writeString(key)
      w.writeBytes(data[key] ?? [])
    }
    w.writeVarint(UInt64(txns.count))
    for id in txns.keys.sorted() {
      guard let transaction = txns[id] else { continue }
      w.write(id)
      w.writeArray(KeyOrder.sorted(transaction.readKeys))
      w.writeVarint(transaction.lastActivityMillis)
      w.writeBool(transaction.prepared != nil)
      if let prepared = transaction.prepared {
        w.writeArray(prepared.writes)
        w.writeArray(prepared.participants)
        w.write(prepared.recordGroup)
        w.writeVarint(prepared.preparedAtMillis)
      }
    }
    w.writeVarint(UInt64(ended.count))
    for id in ended.keys.sorted() {
      w.write(id)
      w.write(ended[id] ?? .abort)
    }
    w.writeBytes(records.snapshot())
    return w.bytes
  }

  /// Replaces the state with a snapshot made by ``snapshot()``; the limits stay this shard's own.
  ///
  /// The locks are rebuilt from the transactions, and a snapshot whose transactions' locks conflict (two
  /// writers of a key, or a writer and another reader) is refused.
  /// - Throws: ``QuorumCore/WireError``; the shard is unchanged when it throws.
  public mutating func restore(from snapshot: [UInt8]) throws {
    var r = WireReader(snapshot, limits: .snapshot(snapshot))
    let version = try r.readVarint()
    guard version == Self.snapshotVersion else {
      throw WireError(.unsupportedVersion(UInt8(truncatingIfNeeded: version)), at: 0)
    }
    var shard = self
    shard.logTimeMillis = try r.readVarint()
    shard.appliedIndex = try r.readVarint()
    shard.watermarkMillis = try r.readVarint()
    shard.data = [:]
    for _ in 0..<(try r.readCount()) {
      let at = r.position
      let key = try r.readString()
      // Written in key order by this build; a build before 2026-12-07 sorted by Swift's `<`, which is no total
      // order for keys spelled in different normal forms (see `KeyOrder`), so only a repeated key is refused.
      guard shard.data[key] == nil else { throw WireError(.invalidValue("key \(key) repeated"), at: at) }
      shard.data[key] = try r.readBytes()
    }
    shard.txns = [:]
    shard.locks = [:]
    var previous: TxnID?
    for _ in 0..<(try r.readCount()) {
      let at = r.position
      let id = try r.read(TxnID.self)
      guard previous.map({ $0 < id }) ?? true else { throw WireError(.invalidValue("\(id) out of order"), at: at) }
      previous = id
      var transaction = Txn(readKeys: Set(try r.readArray(String.self)), lastActivityMillis: try r.readVarint())
      if try r.readBool() {
        transaction.prepared = Prepared(
          writes: try r.readArray(), participants: try r.readArray(), recordGroup: try r.read(),
          preparedAtMillis: try r.readVarint())
      }
      shard.txns[id] = transaction
      guard shard.lock(id, transaction) else { throw WireError(.invalidValue("\(id)'s locks conflict"), at: at) }
    }
    shard.ended = [:]
    for _ in 0..<(try r.readCount()) {
      let at = r.position
      let id = try r.read(TxnID.self)
      guard shard.txns[id] == nil else { throw WireError(.invalidValue("\(id) both in progress and ended"), at: at) }
      shard.ended[id] = try r.read(TransactionDecision.self)
    }
    let recordsAt = r.position
    try shard.records.restore(from: try r.readBytes())
    // The shard's table follows the shard's time: no clock entry ever moves it (see `apply`).
    guard shard.records.clockOffsetMillis == 0 else {
      throw WireError(.invalidValue("the shard's record table has a clock offset"), at: recordsAt)
    }
    try r.expectEnd()
    shard.endedByStart.rebuild(shard.ended.keys.map { .init(millis: $0.startedAtMillis, id: $0) })
    shard.idleDeadlines.rebuild(
      shard.txns.compactMap { id, transaction in
        transaction.prepared == nil
          ? .init(millis: transaction.lastActivityMillis.addingSaturated(shard.limits.idleTimeoutMillis), id: id) : nil
      })
    self = shard
  }

  /// Takes `transaction`'s locks; `false` if one conflicts.
  private mutating func lock(_ id: TxnID, _ transaction: Txn) -> Bool {
    let written = Set(transaction.prepared?.writes.map(\.key) ?? [])
    for key in transaction.readKeys where !written.contains(key) {
      guard locks[key]?.writer == nil else { return false }
      locks[key, default: KeyLock()].readers.insert(id)
    }
    for key in written {
      guard locks[key].map({ $0.writer == nil && $0.readers.isEmpty }) ?? true else { return false }
      locks[key, default: KeyLock()].writer = id
    }
    return true
  }

  /// Every way the locks disagree with the transactions, or the state breaks an invariant that holds after each
  /// apply; empty when consistent. For tests: O(everything).
  func invariantViolations() -> [String] {
    var problems: [String] = []
    var rebuilt = self
    rebuilt.locks = [:]
    for id in txns.keys.sorted() {
      guard let transaction = txns[id] else { continue }
      if !rebuilt.lock(id, transaction) { problems.append("\(id)'s locks conflict with another transaction's") }
      if ended[id] != nil { problems.append("\(id) is both in progress and ended") }
      if transaction.prepared == nil,
        transaction.lastActivityMillis.addingSaturated(limits.idleTimeoutMillis) <= logTimeMillis
      {
        problems.append("\(id) is past its idle timeout")
      }
    }
    if rebuilt.locks != locks { problems.append("locks \(locks) but transactions say \(rebuilt.locks)") }
    if txns.count > limits.maxTransactions { problems.append("\(txns.count) transactions") }
    if ended.count > limits.maxRemembered { problems.append("\(ended.count) remembered") }
    return problems
  }
}
