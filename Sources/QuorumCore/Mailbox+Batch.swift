// A public import: the inlinable method, specialised in the caller's module, uses `Mutex`.
public import Synchronization

extension Mailbox {
  /// Queues as many of `elements` as there is room for, in order, without suspending, and returns how
  /// many it took (from the front). A waiting consumer is woken once for the whole batch, which is what
  /// makes batch delivery cheap: one wake-up instead of one per element.
  ///
  /// Like ``trySend(_:)``, elements never overtake suspended senders: while senders wait it takes none.
  /// - Throws: ``MailboxError/closed`` after close.
  @inlinable
  public func trySend<C: Collection>(contentsOf elements: C) throws(MailboxError) -> Int where C.Element == Element {
    guard !elements.isEmpty else { return 0 }
    let (taken, receiver, first) = try state.withLock {
      (s: inout State) throws(MailboxError) -> (Int, ReceiverContinuation?, Element?) in
      if s.closed { throw .closed }
      if !s.senders.isEmpty { return (0, nil, nil) }
      var index = elements.startIndex
      var taken = 0
      var receiver: ReceiverContinuation?
      var first: Element?
      if let waiting = s.receiver {
        // The buffer is empty while the consumer waits, so handing it the first element keeps the order.
        s.receiver = nil
        receiver = waiting
        first = elements[index]
        index = elements.index(after: index)
        taken = 1
      }
      while index != elements.endIndex && s.buffer.count < capacity {
        s.buffer.append(elements[index])
        index = elements.index(after: index)
        taken += 1
      }
      return (taken, receiver, first)
    }
    if let receiver, let first { receiver.resume(returning: first) }
    return taken
  }
}
