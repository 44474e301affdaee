import Synchronization

/// Fans one actor's events out to any number of subscribers, each with its own bounded buffer.
///
/// Every subscriber sees every event published after it subscribed, in order. A subscriber that falls more
/// than ``bufferLimit`` events behind loses its oldest undelivered events (the newest are kept: for leadership
/// and membership the latest state matters most), and the others are not slowed down. When the actor stops it
/// calls ``finish()``: every subscriber's `for await` loop ends after the buffered events, and a subscription
/// made after that ends at once.
public final class EventBroadcast<Event: Sendable>: Sendable {
  /// One subscription: hands an event to its stream (transformed, for ``subscribe(_:)``), or ends it.
  private struct Subscriber {
    var id: UInt64
    var deliver: @Sendable (Event) -> Void
    var finish: @Sendable () -> Void
  }

  private struct State {
    /// In subscription order, so delivery order (and a simulation's schedule) never depends on hashing.
    var subscribers: [Subscriber] = []
    var nextID: UInt64 = 0
    var finished = false
  }

  private let state = Mutex(State())
  /// The most undelivered events one subscriber's buffer holds.
  public let bufferLimit: Int

  /// Creates a broadcaster whose subscribers each buffer at most `bufferLimit` events.
  public init(bufferLimit: Int = 256) {
    precondition(bufferLimit >= 1, "bufferLimit must be at least 1, got \(bufferLimit)")
    self.bufferLimit = bufferLimit
  }

  /// A new subscription: every event published from now on, until ``finish()``.
  public func subscribe() -> AsyncStream<Event> { subscribe { $0 } }

  /// A new subscription to the events `transform` turns into an `Output` (those it maps to `nil` are left out),
  /// with the same buffer limit and policy as ``subscribe()``.
  public func subscribe<Output: Sendable>(_ transform: @escaping @Sendable (Event) -> Output?) -> AsyncStream<Output> {
    let (stream, continuation) = AsyncStream<Output>.makeStream(bufferingPolicy: .bufferingNewest(bufferLimit))
    let id: UInt64? = state.withLock { s in
      guard !s.finished else { return nil }
      s.nextID += 1
      s.subscribers.append(
        Subscriber(
          id: s.nextID, deliver: { event in if let output = transform(event) { continuation.yield(output) } },
          finish: { continuation.finish() }))
      return s.nextID
    }
    guard let id else {
      continuation.finish()
      return stream
    }
    continuation.onTermination = { [weak self] _ in
      self?.state.withLock { $0.subscribers.removeAll { $0.id == id } }
    }
    return stream
  }

  /// The number of live subscriptions.
  public var subscriberCount: Int { state.withLock { $0.subscribers.count } }

  /// Delivers `event` to every subscriber.
  public func publish(_ event: Event) {
    let targets = state.withLock { s in s.finished ? [] : s.subscribers.map(\.deliver) }
    for deliver in targets { deliver(event) }
  }

  /// Ends every subscription (after its buffered events) and refuses new ones.
  public func finish() {
    let targets = state.withLock { s -> [@Sendable () -> Void] in
      s.finished = true
      defer { s.subscribers = [] }
      return s.subscribers.map(\.finish)
    }
    for finish in targets { finish() }
  }
}
