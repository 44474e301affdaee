import Synchronization

/// Why a ``Mailbox`` refused an element.
public enum MailboxError: Error, Sendable, Equatable, CustomStringConvertible {
  /// ``Mailbox/trySend(_:)`` found the mailbox holding `capacity` elements already.
  case full(capacity: Int)
  /// The mailbox was closed; no further elements are accepted.
  case closed
  /// The suspended sender's task was cancelled before its element was accepted; the element was not queued.
  case cancelled

  public var description: String {
    switch self {
    case .full(let capacity): return "mailbox full (capacity \(capacity))"
    case .closed: return "mailbox closed"
    case .cancelled: return "send cancelled before the element was accepted"
    }
  }
}

/// A bounded multi-producer, single-consumer asynchronous channel.
///
/// A mailbox holds at most ``capacity`` elements. When it is full a producer chooses its policy per call:
/// - ``send(_:)`` suspends until the consumer makes room (back-pressure). Suspended senders are admitted in
///   arrival order. Cancelling a suspended sender removes its element and throws ``MailboxError/cancelled``.
/// - ``trySend(_:)`` never suspends; it throws ``MailboxError/full(capacity:)`` so the caller can shed load.
///
/// There is one consumer at a time: ``receive()``, ``receive(into:limit:)`` or the `AsyncSequence`
/// iterator. Two consumers waiting at once is a programming error and traps.
///
/// ``close(discardingBuffered:)`` stops new sends. By default the consumer still drains what was queued
/// and then sees the end (`nil`); with `discardingBuffered: true` queued elements are dropped at once.
/// Senders suspended at close time receive ``MailboxError/closed``.
///
/// The implementation is a `Mutex` around a queue plus one continuation for the consumer; elements are
/// handed straight to a waiting consumer. On the project's 2-core machine this moves several times more
/// messages per second than `AsyncStream` (see the benchmark report).
public final class Mailbox<Element: Sendable>: Sendable {
  private struct Sender {
    var id: UInt64
    var element: Element
    var continuation: UnsafeContinuation<MailboxError?, Never>
  }

  private struct State {
    var buffer = FIFOQueue<Element>()
    var senders = FIFOQueue<Sender>()
    var receiver: UnsafeContinuation<Element?, Never>?
    var closed = false
    var nextSenderID: UInt64 = 0
  }

  private enum TrySendOutcome {
    case queued
    case handOff(UnsafeContinuation<Element?, Never>)
    case full, closed
  }
  private enum SendOutcome {
    case wait
    case done(MailboxError?)
    case handOff(UnsafeContinuation<Element?, Never>)
  }
  private enum ReceiveOutcome {
    case element(Element, [UnsafeContinuation<MailboxError?, Never>])
    case end, wait
  }

  private let state = Mutex(State())

  /// The most elements the mailbox holds before senders wait or fail.
  public let capacity: Int

  /// Creates a mailbox that holds at most `capacity` elements.
  /// - Precondition: `capacity` is at least 1.
  public init(capacity: Int) {
    precondition(capacity >= 1, "Mailbox capacity must be at least 1, got \(capacity)")
    self.capacity = capacity
  }

  /// The number of queued elements (a snapshot; it may change at once).
  public var count: Int { state.withLock { $0.buffer.count } }

  /// Whether ``close(discardingBuffered:)`` has been called.
  public var isClosed: Bool { state.withLock { $0.closed } }

  /// Queues `element` if there is room, without suspending.
  /// - Throws: ``MailboxError/full(capacity:)`` when the mailbox is full, ``MailboxError/closed`` after close.
  public func trySend(_ element: Element) throws(MailboxError) {
    let outcome: TrySendOutcome = state.withLock { s in
      if s.closed { return .closed }
      if let receiver = s.receiver {
        s.receiver = nil
        return .handOff(receiver)
      }
      if s.buffer.count >= capacity { return .full }
      s.buffer.append(element)
      return .queued
    }
    switch outcome {
    case .queued: return
    case .handOff(let receiver): receiver.resume(returning: element)
    case .full: throw .full(capacity: capacity)
    case .closed: throw .closed
    }
  }

  /// Queues `element`, suspending while the mailbox is full.
  /// - Throws: ``MailboxError/closed`` if the mailbox is or becomes closed before the element is accepted,
  ///   ``MailboxError/cancelled`` if the calling task is cancelled while waiting.
  public func send(_ element: Element) async throws(MailboxError) {
    do {
      try trySend(element)
      return
    } catch .full(_) {
      // Fall through to wait for room.
    } catch {
      throw error
    }
    let id = state.withLock { s in
      s.nextSenderID &+= 1
      return s.nextSenderID
    }
    let failure: MailboxError? = await withTaskCancellationHandler {
      await withUnsafeContinuation { (continuation: UnsafeContinuation<MailboxError?, Never>) in
        let outcome: SendOutcome = state.withLock { s in
          if s.closed { return .done(.closed) }
          if Task.isCancelled { return .done(.cancelled) }
          if let receiver = s.receiver {
            s.receiver = nil
            return .handOff(receiver)
          }
          if s.buffer.count < capacity && s.senders.isEmpty {
            s.buffer.append(element)
            return .done(nil)
          }
          s.senders.append(Sender(id: id, element: element, continuation: continuation))
          return .wait
        }
        switch outcome {
        case .wait: break
        case .done(let failure): continuation.resume(returning: failure)
        case .handOff(let receiver):
          receiver.resume(returning: element)
          continuation.resume(returning: nil)
        }
      }
    } onCancel: {
      let cancelled: UnsafeContinuation<MailboxError?, Never>? = state.withLock { s in
        var found: UnsafeContinuation<MailboxError?, Never>?
        s.senders.removeAll { sender in
          guard sender.id == id else { return false }
          found = sender.continuation
          return true
        }
        return found
      }
      cancelled?.resume(returning: .cancelled)
    }
    if let failure { throw failure }
  }

  /// Moves waiting senders' elements into the buffer while there is room. Call with the lock held; resume
  /// the returned continuations after releasing it.
  private func admitWaitingSenders(_ s: inout State) -> [UnsafeContinuation<MailboxError?, Never>] {
    var admitted: [UnsafeContinuation<MailboxError?, Never>] = []
    while s.buffer.count < capacity, let sender = s.senders.popFirst() {
      s.buffer.append(sender.element)
      admitted.append(sender.continuation)
    }
    return admitted
  }

  /// Waits for the next element. Returns `nil` once the mailbox is closed and drained, or when the calling
  /// task is cancelled.
  public func receive() async -> Element? {
    let fast: ReceiveOutcome = state.withLock { s in
      if let element = s.buffer.popFirst() {
        return .element(element, admitWaitingSenders(&s))
      }
      return s.closed ? .end : .wait
    }
    switch fast {
    case .element(let element, let admitted):
      for continuation in admitted { continuation.resume(returning: nil) }
      return element
    case .end:
      return nil
    case .wait:
      return await waitForElement()
    }
  }

  private func waitForElement() async -> Element? {
    await withTaskCancellationHandler {
      await withUnsafeContinuation { (continuation: UnsafeContinuation<Element?, Never>) in
        let outcome: ReceiveOutcome = state.withLock { s in
          if let element = s.buffer.popFirst() {
            return .element(element, admitWaitingSenders(&s))
          }
          if s.closed || Task.isCancelled { return .end }
          precondition(s.receiver == nil, "Mailbox has a single consumer, but two tasks are receiving at once")
          s.receiver = continuation
          return .wait
        }
        switch outcome {
        case .wait: break
        case .end: continuation.resume(returning: nil)
        case .element(let element, let admitted):
          for waiting in admitted { waiting.resume(returning: nil) }
          continuation.resume(returning: element)
        }
      }
    } onCancel: {
      let receiver = state.withLock { s in
        let receiver = s.receiver
        s.receiver = nil
        return receiver
      }
      receiver?.resume(returning: nil)
    }
  }

  /// Waits until at least one element is available, then moves up to `limit` queued elements to the end of
  /// `buffer` in order. Returns `false` (appending nothing) once the mailbox is closed and drained, or when
  /// the task is cancelled.
  ///
  /// Taking a batch per wake-up is how an actor shell amortises its work: one persistence round and one
  /// send round for everything that arrived together.
  public func receive(into buffer: inout [Element], limit: Int = .max) async -> Bool {
    precondition(limit >= 1, "receive(into:limit:) needs a limit of at least 1")
    if drainAvailable(into: &buffer, limit: limit) > 0 { return true }
    guard let first = await receive() else { return false }
    buffer.append(first)
    if limit > 1 { _ = drainAvailable(into: &buffer, limit: limit - 1) }
    return true
  }

  /// Moves up to `limit` queued elements to `buffer` without waiting; returns how many were moved.
  @discardableResult
  public func drainAvailable(into buffer: inout [Element], limit: Int = .max) -> Int {
    let (moved, admitted): (Int, [UnsafeContinuation<MailboxError?, Never>]) = state.withLock { s in
      var moved = s.buffer.drain(into: &buffer, limit: limit)
      var admitted: [UnsafeContinuation<MailboxError?, Never>] = []
      while moved < limit, let sender = s.senders.popFirst() {
        buffer.append(sender.element)
        admitted.append(sender.continuation)
        moved += 1
      }
      admitted += admitWaitingSenders(&s)
      return (moved, admitted)
    }
    for continuation in admitted { continuation.resume(returning: MailboxError?.none) }
    return moved
  }

  /// Stops the mailbox accepting elements.
  ///
  /// - Parameter discardingBuffered: when `false` (the default) the consumer still receives what was queued
  ///   before the end; when `true` queued elements are dropped and the consumer sees the end at once.
  public func close(discardingBuffered: Bool = false) {
    let (receiver, senders): (UnsafeContinuation<Element?, Never>?, [UnsafeContinuation<MailboxError?, Never>]) =
      state.withLock { s in
        s.closed = true
        if discardingBuffered { s.buffer.removeAll() }
        var senders: [UnsafeContinuation<MailboxError?, Never>] = []
        while let sender = s.senders.popFirst() { senders.append(sender.continuation) }
        let receiver = s.receiver
        s.receiver = nil
        return (receiver, senders)
      }
    receiver?.resume(returning: nil)
    for sender in senders { sender.resume(returning: .closed) }
  }
}

extension Mailbox: AsyncSequence {
  /// Iterates the mailbox's elements until it is closed and drained.
  public struct AsyncIterator: AsyncIteratorProtocol {
    let mailbox: Mailbox
    /// The next element, or `nil` at the end.
    public mutating func next() async -> Element? { await mailbox.receive() }
  }

  /// Returns an iterator. Only one iteration (one consumer) may be active at a time.
  public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(mailbox: self) }
}
