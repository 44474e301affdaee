/// Why a transport refused to send or bind.
public enum TransportError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The local endpoint was closed.
  case closed
  /// The peer is not known to this transport (not bound, not in the address book, or already closed).
  case unknownPeer(NodeID)
  /// The queue towards `peer` holds `capacity` messages already; the message was not queued.
  case queueFull(peer: NodeID, capacity: Int)
  /// Another endpoint is already bound to this node identifier.
  case alreadyBound(NodeID)
  /// The encoded message is larger than the transport's frame limit.
  case messageTooLarge(bytes: Int, limit: Int)

  public var description: String {
    switch self {
    case .closed: return "endpoint closed"
    case .unknownPeer(let peer): return "unknown peer \(peer)"
    case .queueFull(let peer, let capacity): return "send queue to \(peer) full (capacity \(capacity))"
    case .alreadyBound(let node): return "\(node) is already bound"
    case .messageTooLarge(let bytes, let limit): return "message of \(bytes) bytes exceeds the \(limit)-byte limit"
    }
  }
}

/// Moves protocol messages between nodes.
///
/// The contract is deliberately weak, as a real network's is: a transport may drop, duplicate, delay or
/// reorder messages, and protocols never depend on it not doing so. What every transport does promise, and
/// what the shared conformance suite checks:
/// - with no faults injected, messages on one link (one sender, one receiver) arrive in the order sent;
/// - a closed endpoint delivers nothing more and accepts nothing more;
/// - every queue is bounded: a full queue fails the send with ``TransportError/queueFull(peer:capacity:)``
///   rather than growing;
/// - many senders may send to one receiver concurrently.
///
/// Conforming types: ``InProcessTransport``, `SimulatedTransport` (module QuorumSimulation) and
/// `TCPTransport` (module QuorumTCP).
public protocol Transport<Message>: Sendable {
  /// The protocol message type carried.
  associatedtype Message: Sendable
  /// The per-node endpoint type.
  associatedtype Endpoint: TransportEndpoint<Message>

  /// Creates the endpoint through which `node` sends and receives.
  func bind(_ node: NodeID) async throws -> Endpoint
}

/// One node's attachment to a ``Transport``.
public protocol TransportEndpoint<Message>: Sendable {
  /// The protocol message type carried.
  associatedtype Message: Sendable

  /// The node this endpoint belongs to.
  var id: NodeID { get }

  /// Messages addressed to this node, in arrival order. The node's actor is the single consumer.
  var incoming: Mailbox<Envelope<Message>> { get }

  /// Hands `message` to the transport for delivery to `peer`, without suspending.
  ///
  /// Returning normally means "accepted", not "delivered": the network may still lose it.
  /// - Throws: ``TransportError/queueFull(peer:capacity:)`` when the bounded queue towards `peer` is full,
  ///   ``TransportError/closed`` after ``close()``, ``TransportError/unknownPeer(_:)`` for an unknown peer.
  func send(_ message: Message, to peer: NodeID, group: GroupID) throws(TransportError)

  /// Detaches the endpoint: no further messages are sent or delivered, and ``incoming`` ends.
  func close() async

  /// Asks the transport to hand arriving messages to `handler` on the thread that received them, in batches,
  /// instead of queueing them in ``incoming`` for a consumer task to take: one thread wake-up fewer per batch
  /// for a consumer that only routes messages on. `handler` must not block. Messages that arrived before the
  /// call stay in ``incoming``, so the caller keeps draining it.
  /// - Returns: `false` if this transport cannot (the default); then everything arrives in ``incoming``.
  func deliverDirectly(to handler: @escaping @Sendable ([Envelope<Message>]) -> Void) -> Bool

  /// Asks the transport to call `handler` with a peer's id whenever its failure detector concludes that the
  /// peer, reached before, is gone: on TCP, an established link to it failed (the peer's process closed it,
  /// or it stayed silent past the link's liveness timeout); in process, the peer's endpoint closed. `handler`
  /// is called on the transport's thread and must not block. It is a hint, never a proof: a peer may be back
  /// a moment later, and a transport without a failure detector (the default) never calls it. A second call
  /// replaces the handler set by the first.
  ///
  /// Consensus groups use it to stop waiting out an idle leader's stretched timeout when the leader's process
  /// is known to be gone.
  func onPeerLost(_ handler: @escaping @Sendable (NodeID) -> Void)
}

extension TransportEndpoint {
  /// Not supported: messages arrive in ``incoming``.
  public func deliverDirectly(to handler: @escaping @Sendable ([Envelope<Message>]) -> Void) -> Bool { false }

  /// No failure detector: `handler` is never called.
  public func onPeerLost(_ handler: @escaping @Sendable (NodeID) -> Void) {}

  /// Sends `message` to `peer` in the default group.
  public func send(_ message: Message, to peer: NodeID) throws(TransportError) {
    try send(message, to: peer, group: .default)
  }
}
