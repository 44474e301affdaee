/// A moment in log time and what is due then (a session or a waiter, by number). Ordered by time, then number,
/// so that things due in the same entry are handled in the same order on every replica.
struct Deadline: Comparable, Hashable, Sendable {
  var millis: UInt64
  var id: UInt64

  static func < (lhs: Deadline, rhs: Deadline) -> Bool {
    lhs.millis != rhs.millis ? lhs.millis < rhs.millis : lhs.id < rhs.id
  }
}

/// A binary min-heap of deadlines: O(log n) push and pop, O(1) peek.
///
/// Entries are never updated or removed in place. When a deadline changes (a keep-alive) the owner pushes the
/// new one and the old one stays as a stale entry, recognised and skipped when it reaches the top; the owner
/// rebuilds it when ``isBloated(liveCount:)``, so memory stays within a constant factor
/// of the live count. The heap's shape is not replicated state: two heaps holding the same live deadlines pop
/// them in the same order whatever their stale entries.
struct DeadlineHeap: Sendable {
  private(set) var items: [Deadline] = []

  /// The number of entries, stale ones included.
  var count: Int { items.count }

  /// The earliest entry.
  var min: Deadline? { items.first }

  /// Adds an entry.
  mutating func push(_ deadline: Deadline) {
    items.append(deadline)
    var child = items.count - 1
    while child > 0 {
      let parent = (child - 1) / 2
      guard items[child] < items[parent] else { break }
      items.swapAt(child, parent)
      child = parent
    }
  }

  /// Removes and returns the earliest entry.
  @discardableResult
  mutating func popMin() -> Deadline? {
    guard !items.isEmpty else { return nil }
    items.swapAt(0, items.count - 1)
    let top = items.removeLast()
    siftDown(from: 0)
    return top
  }

  private mutating func siftDown(from start: Int) {
    var parent = start
    while true {
      let left = 2 * parent + 1
      guard left < items.count else { return }
      let right = left + 1
      let child = right < items.count && items[right] < items[left] ? right : left
      guard items[child] < items[parent] else { return }
      items.swapAt(child, parent)
      parent = child
    }
  }

  /// Replaces the contents with `live` (in any order), dropping every stale entry. O(n).
  mutating func rebuild(_ live: [Deadline]) {
    items = live
    var index = items.count / 2
    while index > 0 {
      index -= 1
      siftDown(from: index)
    }
  }

  /// Whether stale entries outnumber the `liveCount` live ones (plus some slack), so that the owner should
  /// ``rebuild(_:)``. Rebuilding then keeps the heap within about twice the live entries, at an amortised O(1)
  /// per push.
  func isBloated(liveCount: Int) -> Bool { items.count > 2 * liveCount + 64 }
}

extension Dictionary {
  /// Runs `body` on the value for `key` in place (no copy of the value's storage), or returns nil if absent.
  @inline(__always)
  mutating func modify<R>(_ key: Key, _ body: (inout Value) -> R) -> R? {
    guard let index = index(forKey: key) else { return nil }
    return body(&values[index])
  }
}
