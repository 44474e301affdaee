public import Synchronization

/// A wake-up signal that lets one consumer wait on several mailboxes at once.
///
/// Attach it to each mailbox with ``Mailbox/attach(_:)``; every element queued (and every close) rings it.
/// The consumer drains all its mailboxes without waiting and, when they are all empty, calls ``wait()``,
/// which returns at once if anything rang since the last wait. Because a ring is remembered, an element that
/// arrives between the last drain and the wait is never missed. An actor's run loop uses this to take
/// messages from its transport endpoint and requests from its own queue without a forwarding task (which
/// would cost a task switch per message).
public final class Doorbell: Sendable {
  @usableFromInline struct State {
    @usableFromInline var rung = false
    @usableFromInline var waiter: UnsafeContinuation<Void, Never>?
    @inlinable init() {}
  }

  @usableFromInline let state = Mutex(State())

  /// Creates a doorbell that has not rung.
  public init() {}

  /// Wakes the waiting consumer, or remembers the ring if none is waiting.
  @inlinable
  public func ring() {
    let waiter: UnsafeContinuation<Void, Never>? = state.withLock { s in
      if let waiter = s.waiter {
        s.waiter = nil
        return waiter
      }
      s.rung = true
      return nil
    }
    waiter?.resume()
  }

  /// Returns once the doorbell has rung since the previous wait, or the task is cancelled.
  public func wait() async {
    await withTaskCancellationHandler {
      await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
        let resumeNow: Bool = state.withLock { s in
          if s.rung || Task.isCancelled {
            s.rung = false
            return true
          }
          precondition(s.waiter == nil, "Doorbell has a single consumer, but two tasks are waiting at once")
          s.waiter = continuation
          return false
        }
        if resumeNow { continuation.resume() }
      }
    } onCancel: {
      let waiter: UnsafeContinuation<Void, Never>? = state.withLock { s in
        let waiter = s.waiter
        s.waiter = nil
        return waiter
      }
      waiter?.resume()
    }
  }
}
