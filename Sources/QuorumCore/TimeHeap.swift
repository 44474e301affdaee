/// A binary min-heap of (log time, identifier) pairs: what a state machine must do at which moment of log time.
/// Shared by the lock table (session expiries, waiter timeouts) and the transaction cores (wake-ups, idle
/// expiry): O(log n) push and pop, O(1) peek.
///
/// Entries are never updated or removed in place. When what is due changes, the owner pushes a new entry and
/// recognises the old one as stale when it reaches the top (it checks its own state); it rebuilds the heap when
/// ``isBloated(liveCount:)``, so memory stays within a constant factor of the live count. Ties are broken by
/// identifier, so two heaps holding the same live entries pop them in the same order on every replica, whatever
/// their stale entries: the heap's shape is not replicated state.
package struct TimeHeap<ID: Comparable & Hashable & Sendable>: Sendable {
  /// A moment in log time and what is due then.
  package struct Item: Comparable, Hashable, Sendable {
    package var millis: UInt64
    package var id: ID

    package init(millis: UInt64, id: ID) {
      self.millis = millis
      self.id = id
    }

    package static func < (lhs: Item, rhs: Item) -> Bool {
      lhs.millis != rhs.millis ? lhs.millis < rhs.millis : lhs.id < rhs.id
    }
  }

  /// The entries, stale ones included, in heap order.
  package private(set) var items: [Item] = []

  package init() {}

  /// The earliest entry.
  package var min: Item? { items.first }

  /// The number of entries, stale ones included.
  package var count: Int { items.count }

  package mutating func push(_ millis: UInt64, _ id: ID) { push(Item(millis: millis, id: id)) }

  package mutating func push(_ item: Item) {
    items.append(item)
    var child = items.count - 1
    while child > 0 {
      let parent = (child - 1) / 2
      guard items[child] < items[parent] else { break }
      items.swapAt(child, parent)
      child = parent
    }
  }

  @discardableResult
  package mutating func popMin() -> Item? {
    guard !items.isEmpty else { return nil }
    items.swapAt(0, items.count - 1)
    let top = items.removeLast()
    siftDown(from: 0)
    return top
  }

  /// Replaces the contents with `live`, in any order. O(n).
  package mutating func rebuild(_ live: [Item]) {
    items = live
    var index = items.count / 2
    while index > 0 {
      index -= 1
      siftDown(from: index)
    }
  }

  /// Whether stale entries outnumber the live ones (plus slack), so that the owner should rebuild.
  package func isBloated(liveCount: Int) -> Bool { items.count > 2 * liveCount + 64 }

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
}
