/// An instant on the simulator's virtual clock, in nanoseconds since the simulation started.
///
/// Virtual time only moves when the simulator moves it, so a run takes as long as its computation, not as
/// long as the timeouts it exercises, and is reproduced exactly by its seed.
public struct VirtualTime: Hashable, Comparable, Sendable, CustomStringConvertible {
  /// Nanoseconds since the start of the simulation.
  public var nanoseconds: UInt64

  /// Creates an instant.
  public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

  /// The start of every simulation.
  public static let zero = VirtualTime(nanoseconds: 0)

  /// The instant `duration` after this one.
  public func advanced(by duration: VirtualDuration) -> VirtualTime {
    VirtualTime(nanoseconds: nanoseconds &+ duration.nanoseconds)
  }

  /// The duration from `earlier` to this instant (zero if `earlier` is later).
  public func since(_ earlier: VirtualTime) -> VirtualDuration {
    VirtualDuration(nanoseconds: nanoseconds >= earlier.nanoseconds ? nanoseconds - earlier.nanoseconds : 0)
  }

  public static func < (lhs: VirtualTime, rhs: VirtualTime) -> Bool { lhs.nanoseconds < rhs.nanoseconds }

  public static func + (lhs: VirtualTime, rhs: VirtualDuration) -> VirtualTime { lhs.advanced(by: rhs) }

  /// Milliseconds with three decimals, for traces.
  public var description: String {
    let micros = nanoseconds / 1000
    let ms = micros / 1000
    let frac = micros % 1000
    let pad = frac < 10 ? "00" : frac < 100 ? "0" : ""
    return "\(ms).\(pad)\(frac)ms"
  }
}

/// A span of virtual time.
public struct VirtualDuration: Hashable, Comparable, Sendable, CustomStringConvertible {
  /// The span in nanoseconds.
  public var nanoseconds: UInt64

  /// Creates a span.
  public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

  /// No time.
  public static let zero = VirtualDuration(nanoseconds: 0)
  /// `n` microseconds.
  public static func microseconds(_ n: UInt64) -> VirtualDuration { VirtualDuration(nanoseconds: n * 1_000) }
  /// `n` milliseconds.
  public static func milliseconds(_ n: UInt64) -> VirtualDuration { VirtualDuration(nanoseconds: n * 1_000_000) }
  /// `n` seconds.
  public static func seconds(_ n: UInt64) -> VirtualDuration { VirtualDuration(nanoseconds: n * 1_000_000_000) }

  public static func < (lhs: VirtualDuration, rhs: VirtualDuration) -> Bool { lhs.nanoseconds < rhs.nanoseconds }
  public static func + (lhs: VirtualDuration, rhs: VirtualDuration) -> VirtualDuration {
    VirtualDuration(nanoseconds: lhs.nanoseconds &+ rhs.nanoseconds)
  }
  public static func * (lhs: VirtualDuration, rhs: UInt64) -> VirtualDuration {
    VirtualDuration(nanoseconds: lhs.nanoseconds &* rhs)
  }

  /// The span as a Swift `Duration`.
  public var duration: Duration { .nanoseconds(Int64(clamping: nanoseconds)) }

  public var description: String { "\(Double(nanoseconds) / 1e6)ms" }
}

/// A priority queue of events ordered by virtual time, ties broken by insertion order, so a run's event
/// order is a function of its seed alone.
public struct EventQueue<Event> {
  fileprivate struct Item {
    var time: VirtualTime
    var sequence: UInt64
    var event: Event
    func precedes(_ other: Item) -> Bool {
      time != other.time ? time < other.time : sequence < other.sequence
    }
  }

  private var heap: [Item] = []
  private var nextSequence: UInt64 = 0

  /// Creates an empty queue.
  public init() {}

  /// The number of pending events.
  public var count: Int { heap.count }
  /// Whether no events are pending.
  public var isEmpty: Bool { heap.isEmpty }
  /// The time of the earliest pending event.
  public var nextTime: VirtualTime? { heap.first?.time }

  /// Schedules `event` at `time`.
  public mutating func schedule(_ event: Event, at time: VirtualTime) {
    heap.append(Item(time: time, sequence: nextSequence, event: event))
    nextSequence += 1
    var child = heap.count - 1
    while child > 0 {
      let parent = (child - 1) / 2
      if !heap[child].precedes(heap[parent]) { break }
      heap.swapAt(child, parent)
      child = parent
    }
  }

  /// Removes and returns the earliest event.
  public mutating func pop() -> (time: VirtualTime, event: Event)? {
    guard !heap.isEmpty else { return nil }
    heap.swapAt(0, heap.count - 1)
    let item = heap.removeLast()
    var parent = 0
    while true {
      let left = 2 * parent + 1
      let right = left + 1
      var best = parent
      if left < heap.count && heap[left].precedes(heap[best]) { best = left }
      if right < heap.count && heap[right].precedes(heap[best]) { best = right }
      if best == parent { break }
      heap.swapAt(parent, best)
      parent = best
    }
    return (item.time, item.event)
  }

  /// Removes every event for which `shouldRemove` is true.
  public mutating func removeAll(where shouldRemove: (Event) -> Bool) {
    let kept = heap.filter { !shouldRemove($0.event) }
    heap = []
    for item in kept.sorted(by: { $0.precedes($1) }) { heap.append(item) }
  }
}

extension EventQueue: Sendable where Event: Sendable {}
extension EventQueue.Item: Sendable where Event: Sendable {}
