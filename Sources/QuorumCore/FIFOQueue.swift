/// A first-in first-out queue with amortised O(1) push and pop.
///
/// Elements live in one array; popping advances a head index, and the consumed prefix is dropped once it
/// makes up at least half the storage. This keeps the common "push many, drain all" pattern of mailboxes
/// to one contiguous buffer that is reused, with no per-element allocation.
public struct FIFOQueue<Element> {
  @usableFromInline var storage: [Element] = []
  @usableFromInline var head: Int = 0

  /// Creates an empty queue.
  public init() {}

  /// The number of queued elements.
  @inlinable public var count: Int { storage.count - head }

  /// Whether the queue is empty.
  @inlinable public var isEmpty: Bool { head == storage.count }

  /// The oldest element, if any.
  @inlinable public var first: Element? { isEmpty ? nil : storage[head] }

  /// Adds an element at the back.
  @inlinable public mutating func append(_ element: Element) { storage.append(element) }

  /// Removes and returns the oldest element, if any.
  @inlinable public mutating func popFirst() -> Element? {
    guard head < storage.count else { return nil }
    let element = storage[head]
    head += 1
    if head == storage.count {
      storage.removeAll(keepingCapacity: true)
      head = 0
    } else if head >= 1024 && head * 2 >= storage.count {
      storage.removeFirst(head)
      head = 0
    }
    return element
  }

  /// Moves up to `limit` of the oldest elements, in order, to the end of `buffer`.
  @inlinable public mutating func drain(into buffer: inout [Element], limit: Int) -> Int {
    let n = Swift.min(limit, count)
    guard n > 0 else { return 0 }
    buffer.append(contentsOf: storage[head..<(head + n)])
    head += n
    if head == storage.count {
      storage.removeAll(keepingCapacity: true)
      head = 0
    } else if head * 2 >= storage.count {
      storage.removeFirst(head)
      head = 0
    }
    return n
  }

  /// Removes every element, keeping the storage for reuse.
  @inlinable public mutating func removeAll() {
    storage.removeAll(keepingCapacity: true)
    head = 0
  }

  /// Removes the elements for which `shouldRemove` is true, keeping the order of the rest.
  @inlinable public mutating func removeAll(where shouldRemove: (Element) throws -> Bool) rethrows {
    if head > 0 {
      storage.removeFirst(head)
      head = 0
    }
    try storage.removeAll(where: shouldRemove)
  }

  /// The queued elements, oldest first.
  @inlinable public var elements: ArraySlice<Element> { storage[head...] }
}

extension FIFOQueue: Sendable where Element: Sendable {}
