import QuorumCore

/// Structural equality, for checking that a table restored from a snapshot holds what one that applied every entry
/// holds (also what the snapshot encoding might leave out, which a comparison of snapshot bytes cannot see).
extension LockTable: Equatable {
  /// Whether `a` and `b` hold the same sessions, locks, holders, waiters, times and limits.
  ///
  /// Compared although derived, because a restore rebuilds them to exactly what applying keeps: each session's
  /// held and waited-for locks, and the index of timed waiters. Not compared: the deadline heaps
  /// (`sessionExpiries`, `waiterTimeouts`), whose shape and stale entries depend on the order things were pushed,
  /// not on the state (a restore rebuilds them with the live entries only); the pending events, which are not state
  /// (drained after every apply, never replicated); and `touched`, which is empty between applies.
  public static func == (a: LockTable, b: LockTable) -> Bool {
    a.limits == b.limits && a.logTimeMillis == b.logTimeMillis && a.appliedIndex == b.appliedIndex
      && a.sessions == b.sessions && a.locks == b.locks && a.timedWaiters == b.timedWaiters
  }
}
