import QuorumCore

/// A moment in log time and what is due then (a session or a waiter, by number). Ordered by time, then number,
/// so that things due in the same entry are handled in the same order on every replica.
typealias Deadline = TimeHeap<UInt64>.Item

/// The lock table's heap of deadlines (session expiries, waiter timeouts): QuorumCore's `TimeHeap`.
typealias DeadlineHeap = TimeHeap<UInt64>

extension Dictionary {
  /// Runs `body` on the value for `key` in place (no copy of the value's storage), or returns nil if absent.
  @inline(__always)
  mutating func modify<R>(_ key: Key, _ body: (inout Value) -> R) -> R? {
    guard let index = index(forKey: key) else { return nil }
    return body(&values[index])
  }
}
