/// A binary min-heap of (log time, identifier) pairs: what a state machine must do at which moment of log time.
///
/// Entries are never removed in place: when what is due changes, the owner pushes a new entry and recognises
/// the old one as stale when it reaches the top (it checks its own state), and rebuilds the heap when stale
/// entries dominate. Ties are broken by identifier, so every replica handles due items in the same order.
struct TimeHeap<ID: Comparable & Sendable>: Sendable {
  struct Item: Comparable, Sendable {
    var millis: UInt64
    var id: ID

    static func < (lhs: Item, rhs: Item) -> Bool {
      lhs.millis != rhs.millis ? lhs.millis < rhs.millis : lhs.id < rhs.id
    }
  }

  private(set) var items: [Item] = []

  /// The earliest entry.
  var min: Item? { items.first }

  /// The number of entries, stale ones included.
  var count: Int { items.count }

  mutating func push(_ millis: UInt64, _ id: ID) {
    items.append(Item(millis: millis, id: id))
    var child = items.count - 1
    while child > 0 {
      let parent = (child - 1) / 2
      guard items[child] < items[parent] else { break }
      items.swapAt(child, parent)
      child = parent
    }
  }

  @discardableResult
  mutating func popMin() -> Item? {
    guard !items.isEmpty else { return nil }
    items.swapAt(0, items.count - 1)
    let top = items.removeLast()
    var parent = 0
    while true {
      let left = 2 * parent + 1
      guard left < items.count else { break }
      let right = left + 1
      let child = right < items.count && items[right] < items[left] ? right : left
      guard items[child] < items[parent] else { break }
      items.swapAt(child, parent)
      parent = child
    }
    return top
  }

  /// Replaces the contents with `live`, in any order. O(n log n).
  mutating func rebuild(_ live: [Item]) {
    items = live.sorted()
  }

  /// Whether stale entries outnumber the live ones (plus slack), so that the owner should rebuild.
  func isBloated(liveCount: Int) -> Bool { items.count > 2 * liveCount + 64 }
}
