public import Synchronization

/// A transport between nodes in one process: messages are passed by value into the receiver's mailbox.
///
/// It is the embedded default and the fastest transport (no encoding). For demonstrations and actor-level
/// tests it can also cut links: ``partition(_:from:)``, ``block(from:to:)``, ``isolate(_:)`` and ``heal()``
/// make the network drop messages silently, exactly as a real partition would.
public final class InProcessTransport<Message: Sendable>: Transport, Sendable {
  @usableFromInline struct Link: Hashable {
    @usableFromInline var from: NodeID
    @usableFromInline var to: NodeID

    @inlinable init(from: NodeID, to: NodeID) {
      self.from = from
      self.to = to
    }
  }

  @usableFromInline struct Routes {
    @usableFromInline var inboxes: [NodeID: Mailbox<Envelope<Message>>] = [:]
    @usableFromInline var blocked: Set<Link> = []
    @usableFromInline var lostHandlers: [NodeID: @Sendable (NodeID) -> Void] = [:]

    @inlinable init() {}
  }

  // Inlinable with the send path below: a replica sends through an in-process endpoint directly, in code
  // compiled for its message type (see `InProcessEndpoint.send`).
  @usableFromInline let routes = Mutex(Routes())

  /// The capacity of each node's incoming mailbox.
  public let inboxCapacity: Int

  /// Creates a transport whose endpoints each hold up to `inboxCapacity` undelivered messages.
  public init(inboxCapacity: Int = 8192) {
    precondition(inboxCapacity >= 1, "inboxCapacity must be at least 1")
    self.inboxCapacity = inboxCapacity
  }

  /// Binds `node`, creating its mailbox.
  /// - Throws: ``TransportError/alreadyBound(_:)`` if `node` is bound and not yet closed.
  public func bind(_ node: NodeID) throws(TransportError) -> InProcessEndpoint<Message> {
    let inbox = Mailbox<Envelope<Message>>(capacity: inboxCapacity)
    try routes.withLock { (r: inout Routes) throws(TransportError) in
      if r.inboxes[node] != nil { throw .alreadyBound(node) }
      r.inboxes[node] = inbox
    }
    return InProcessEndpoint(id: node, incoming: inbox, transport: self)
  }

  @inlinable
  func deliver(_ envelope: Envelope<Message>) throws(TransportError) {
    let inbox: Mailbox<Envelope<Message>>? = routes.withLock { r in
      if !r.blocked.isEmpty && r.blocked.contains(Link(from: envelope.from, to: envelope.to)) {
        return nil
      }
      return r.inboxes[envelope.to]
    }
    guard let inbox else {
      // A cut link drops silently, like a real network; a missing peer is a caller error.
      if isBlocked(from: envelope.from, to: envelope.to) { return }
      throw .unknownPeer(envelope.to)
    }
    do {
      try inbox.trySend(envelope)
    } catch .full(let capacity) {
      throw .queueFull(peer: envelope.to, capacity: capacity)
    } catch {
      throw .unknownPeer(envelope.to)
    }
  }

  func unbind(_ node: NodeID, inbox: Mailbox<Envelope<Message>>) {
    let handlers: [@Sendable (NodeID) -> Void] = routes.withLock { r in
      guard r.inboxes[node] === inbox else { return [] }
      r.inboxes[node] = nil
      r.lostHandlers[node] = nil
      return r.lostHandlers.keys.sorted().compactMap { r.lostHandlers[$0] }
    }
    inbox.close(discardingBuffered: true)
    for handler in handlers { handler(node) }
  }

  func setLostHandler(
    _ handler: @escaping @Sendable (NodeID) -> Void, for node: NodeID, inbox: Mailbox<Envelope<Message>>
  ) {
    routes.withLock { r in
      if r.inboxes[node] === inbox { r.lostHandlers[node] = handler }
    }
  }

  @usableFromInline func isBlocked(from: NodeID, to: NodeID) -> Bool {
    routes.withLock { $0.blocked.contains(Link(from: from, to: to)) }
  }

  /// Cuts every link between `a` and `b`, in both directions.
  public func partition(_ a: some Sequence<NodeID>, from b: some Sequence<NodeID>) {
    let b = Array(b)
    routes.withLock { r in
      for x in a {
        for y in b {
          r.blocked.insert(Link(from: x, to: y))
          r.blocked.insert(Link(from: y, to: x))
        }
      }
    }
  }

  /// Cuts the one-way link from `from` to `to` (an asymmetric partition).
  public func block(from: NodeID, to: NodeID) {
    routes.withLock { _ = $0.blocked.insert(Link(from: from, to: to)) }
  }

  /// Cuts `node` off from every other currently bound node, in both directions.
  public func isolate(_ node: NodeID) {
    routes.withLock { r in
      for other in r.inboxes.keys where other != node {
        r.blocked.insert(Link(from: node, to: other))
        r.blocked.insert(Link(from: other, to: node))
      }
    }
  }

  /// Restores every cut link.
  public func heal() {
    routes.withLock { $0.blocked.removeAll() }
  }
}

/// A node's endpoint on an ``InProcessTransport``.
public final class InProcessEndpoint<Message: Sendable>: TransportEndpoint, Sendable {
  /// The node this endpoint belongs to.
  public let id: NodeID
  /// Messages addressed to this node.
  public let incoming: Mailbox<Envelope<Message>>
  @usableFromInline let transport: InProcessTransport<Message>
  @usableFromInline let closed = Atomic<Bool>(false)

  init(id: NodeID, incoming: Mailbox<Envelope<Message>>, transport: InProcessTransport<Message>) {
    self.id = id
    self.incoming = incoming
    self.transport = transport
  }

  /// Queues `message` in `peer`'s mailbox (or drops it silently if the link is cut).
  ///
  /// Inlinable: a replica holding this endpoint calls it directly, so that the send is compiled for the
  /// replica's message type rather than run generic, looking up the types it touches at run time.
  @inlinable
  public func send(_ message: Message, to peer: NodeID, group: GroupID) throws(TransportError) {
    if closed.load(ordering: .relaxed) { throw .closed }
    try transport.deliver(Envelope(from: id, to: peer, group: group, payload: message))
  }

  /// Calls `handler` with a peer's id when the peer's endpoint closes (the node stopped or crashed). Cut links
  /// (``InProcessTransport/partition(_:from:)``) are not reported: this transport detects no partition. The
  /// handlers run synchronously inside the closing endpoint's `close()`, on its caller's thread; a second call
  /// replaces the handler.
  public func onPeerLost(_ handler: @escaping @Sendable (NodeID) -> Void) {
    transport.setLostHandler(handler, for: id, inbox: incoming)
  }

  /// Unbinds the node; undelivered messages are discarded and nothing more arrives.
  public func close() async {
    closeNow()
  }

  /// The synchronous form of ``close()``.
  public func closeNow() {
    if closed.exchange(true, ordering: .relaxed) { return }
    transport.unbind(id, inbox: incoming)
  }
}
