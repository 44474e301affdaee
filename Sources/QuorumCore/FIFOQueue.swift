/// A first-in first-out queue with amortised O(1) push and pop.
///
/// Elements live in a ring buffer that doubles when full and is reused, never shrunk, so the common
/// "push many, drain all" pattern of mailboxes costs no allocation per element. A popped slot is cleared at
/// once, so the queue never keeps a consumed element (and whatever it references) alive.
public struct FIFOQueue<Element> {
  /// The ring; slots outside the live range are `nil`. Its count is zero or a power of two.
  @usableFromInline var storage: ContiguousArray<Element?> = []
  /// The slot of the oldest element.
  @usableFromInline var head: Int = 0
  /// The number of live elements.
  @usableFromInline var liveCount: Int = 0

  /// Creates an empty queue.
  @inlinable public init() {}

  /// The number of queued elements.
  @inlinable public var count: Int { liveCount }

  /// Whether the queue is empty.
  @inlinable public var isEmpty: Bool { liveCount == 0 }

  /// The oldest element, if any.
  @inlinable public var first: Element? { liveCount == 0 ? nil : storage[head] }

  /// The slot `offset` places after the head.
  @inlinable func slot(_ offset: Int) -> Int { (head &+ offset) & (storage.count &- 1) }

  /// Adds an element at the back.
  @inlinable public mutating func append(_ element: Element) {
    if liveCount == storage.count { grow() }
    storage[slot(liveCount)] = element
    liveCount += 1
  }

  /// Moves the elements of `elements` after its first `prefix` to the back, in order, leaving `elements` with
  /// its first `prefix` alone. The elements are moved, not copied: no reference count is touched.
  @inlinable public mutating func append(movingFrom elements: inout [Element], after prefix: Int) {
    let moved = elements.count - prefix
    guard moved > 0 else { return }
    while liveCount + moved > storage.count { grow() }
    // Taken from the back (`removeLast` moves an element out), so placed from the last slot down.
    var offset = liveCount + moved
    while elements.count > prefix {
      offset -= 1
      storage[slot(offset)] = elements.removeLast()
    }
    liveCount += moved
  }

  /// Adds `elements` at the back, in order (one call for a batch: cheaper than an `append` each where the
  /// element type is not specialised).
  @inlinable public mutating func append(contentsOf elements: ArraySlice<Element>) {
    while liveCount + elements.count > storage.count { grow() }
    var offset = liveCount
    for element in elements {
      storage[slot(offset)] = element
      offset += 1
    }
    liveCount = offset
  }

  /// Doubles the ring (at least 16 slots), moving the live elements to its start in order.
  @inlinable mutating func grow() {
    let newCapacity = Swift.max(16, storage.count * 2)
    var grown = ContiguousArray<Element?>()
    grown.reserveCapacity(newCapacity)
    for offset in 0..<liveCount { grown.append(storage[slot(offset)].take()) }
    grown.append(contentsOf: repeatElement(nil, count: newCapacity - liveCount))
    storage = grown
    head = 0
  }

  /// Removes and returns the oldest element, if any.
  @inlinable public mutating func popFirst() -> Element? {
    guard liveCount > 0 else { return nil }
    let element = storage[head].take()
    head = (head &+ 1) & (storage.count &- 1)
    liveCount -= 1
    return element
  }

  /// Moves up to `limit` of the oldest elements, in order, to the end of `buffer`; returns how many.
  @inlinable public mutating func drain(into buffer: inout [Element], limit: Int) -> Int {
    let n = Swift.min(limit, liveCount)
    guard n > 0 else { return 0 }
    buffer.reserveCapacity(buffer.count + n)
    for _ in 0..<n {
      guard let element = storage[head].take() else {
        preconditionFailure("FIFOQueue: empty slot \(head) inside the live range (count \(liveCount))")
      }
      buffer.append(element)
      head = (head &+ 1) & (storage.count &- 1)
    }
    liveCount -= n
    return n
  }

  /// Removes every element, keeping the storage for reuse.
  @inlinable public mutating func removeAll() {
    for offset in 0..<liveCount { storage[slot(offset)] = nil }
    head = 0
    liveCount = 0
  }

  /// Removes the elements for which `shouldRemove` is true, keeping the order of the rest.
  @inlinable public mutating func removeAll(where shouldRemove: (Element) throws -> Bool) rethrows {
    var kept = ContiguousArray<Element>()
    for offset in 0..<liveCount {
      if let element = storage[slot(offset)], try !shouldRemove(element) { kept.append(element) }
    }
    removeAll()
    for element in kept { append(element) }
  }

  /// The queued elements, oldest first (a copy).
  @inlinable public var elements: ArraySlice<Element> {
    var result: [Element] = []
    result.reserveCapacity(liveCount)
    for offset in 0..<liveCount {
      if let element = storage[slot(offset)] { result.append(element) }
    }
    return result[...]
  }
}

extension FIFOQueue: Sendable where Element: Sendable {}
