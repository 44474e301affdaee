import Synchronization

/// Something that happens once — a run ending, recovery finishing, a stop being asked for — that any number of
/// tasks can wait for, learning whether it failed.
public final class OnceSignal: Sendable {
  private struct State {
    var outcome: Bool?
    var waiters: [UnsafeContinuation<Bool, Never>] = []
  }

  private let state = Mutex(State())

  /// Creates a signal that has not happened.
  public init() {}

  /// Whether it happened.
  public var hasFinished: Bool { state.withLock { $0.outcome != nil } }

  /// Records that it happened (the first call's `failed` wins) and wakes every waiter.
  public func finish(failed: Bool = false) {
    let (waiters, outcome) = state.withLock { s -> ([UnsafeContinuation<Bool, Never>], Bool) in
      if s.outcome == nil { s.outcome = failed }
      defer { s.waiters = [] }
      return (s.waiters, s.outcome ?? failed)
    }
    for waiter in waiters { waiter.resume(returning: outcome) }
  }

  /// Waits until it happened; returns whether it failed.
  @discardableResult
  public func wait() async -> Bool {
    await withUnsafeContinuation { (continuation: UnsafeContinuation<Bool, Never>) in
      let outcome = state.withLock { s -> Bool? in
        if let outcome = s.outcome { return outcome }
        s.waiters.append(continuation)
        return nil
      }
      if let outcome { continuation.resume(returning: outcome) }
    }
  }
}
