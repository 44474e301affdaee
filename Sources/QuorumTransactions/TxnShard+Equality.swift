import QuorumCore

/// Structural equality, for checking that a shard restored from a snapshot holds what one that applied every entry
/// holds (also what the snapshot encoding might leave out, which a comparison of snapshot bytes cannot see).
extension TxnShard: Equatable {
  /// Whether `a` and `b` hold the same data, key locks, transactions, ended transactions, watermark, times, limits
  /// and records.
  ///
  /// The key locks are derived from the transactions but compared: a restore rebuilds them to what applying keeps.
  /// The ended transactions by start (`endedByStart`) hold one entry per ended transaction, so they are compared
  /// as a set (a heap's order depends on the order of pushes). Not compared: the idle deadlines, a heap with stale
  /// entries that a restore drops; and ``refusesStartsAhead``, which is not part of the shard's snapshot: whoever
  /// wraps the shard sets it (``QuorumHost``'s `HostedTxnShard` compares the offset it derives it from).
  public static func == (a: TxnShard, b: TxnShard) -> Bool {
    a.limits == b.limits && a.logTimeMillis == b.logTimeMillis && a.appliedIndex == b.appliedIndex
      && a.data == b.data && a.locks == b.locks && a.txns == b.txns && a.ended == b.ended
      && a.watermarkMillis == b.watermarkMillis && a.records == b.records
      && a.endedByStart.items.sorted() == b.endedByStart.items.sorted()
  }
}

/// Structural equality, for the same check as ``TxnShard``'s.
extension TransactionRecords: Equatable {
  /// Whether `a` and `b` hold the same records, coordinator floors, times and limits.
  ///
  /// Not compared: the expiry heap, whose shape and stale entries depend on the order of pushes (a restore
  /// rebuilds it with the live entries only).
  public static func == (a: TransactionRecords, b: TransactionRecords) -> Bool {
    a.limits == b.limits && a.logTimeMillis == b.logTimeMillis && a.clockOffsetMillis == b.clockOffsetMillis
      && a.appliedIndex == b.appliedIndex && a.records == b.records && a.floors == b.floors
      && a.retiredFloor == b.retiredFloor
  }
}
