import Synchronization

/// Fans one actor's events out to any number of subscribers, each with its own bounded buffer.
///
/// Every subscriber sees every event published after it subscribed, in order. A subscriber that falls more
/// than ``bufferLimit`` events behind loses its oldest undelivered events (the newest are kept: for leadership
/// and membership the latest state matters most), and the others are not slowed down. When the actor stops it
/// calls ``finish()``: every subscriber's `for await` loop ends after the buffered events, and a subscription
/// made after that ends at once.
public final class EventBroadcast<Event: Sendable>: Sendable {
  private struct State {
    /// In subscription order, so delivery order (and a simulation's schedule) never depends on hashing.
    var subscribers: [(id: UInt64, continuation: AsyncStream<Event>.Continuation)] = []
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
  public func subscribe() -> AsyncStream<Event> {
    let (stream, continuation) = AsyncStream<Event>.makeStream(bufferingPolicy: .bufferingNewest(bufferLimit))
    let id: UInt64? = state.withLock { s in
      guard !s.finished else { return nil }
      s.nextID += 1
      s.subscribers.append((s.nextID, continuation))
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
    let targets = state.withLock { s in s.finished ? [] : s.subscribers.map(\.continuation) }
    for target in targets { target.yield(event) }
  }

  /// Ends every subscription (after its buffered events) and refuses new ones.
  public func finish() {
    let targets = state.withLock { s -> [AsyncStream<Event>.Continuation] in
      s.finished = true
      defer { s.subscribers = [] }
      return s.subscribers.map(\.continuation)
    }
    for target in targets { target.finish() }
  }
}
