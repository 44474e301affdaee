public import QuorumCore
import Synchronization

/// A ``QuorumCore/Transport`` over a ``SimulatedNetwork``, for testing actors under reproducible network faults.
///
/// Messages are routed through the network model with a seeded generator and delivered on a virtual clock:
/// - in ``DeliveryMode/immediate`` mode every send delivers all due messages at once (time jumps to each
///   delivery), so with a perfect network it behaves like an in-process transport;
/// - in ``DeliveryMode/manual`` mode messages wait until ``advance(by:)`` or ``deliverAll()`` moves the
///   virtual clock past their delivery time, so a test controls exactly what is in flight.
///
/// A message whose receiver's mailbox is full on delivery is dropped, as a real network drops on overflow;
/// in immediate mode the sender of that message sees ``QuorumCore/TransportError/queueFull(peer:capacity:)``.
public final class SimulatedTransport<Message: Sendable>: Transport, Sendable {
  /// When messages are delivered.
  public enum DeliveryMode: Sendable {
    /// Deliver during each send.
    case immediate
    /// Deliver only when the test advances the clock.
    case manual
  }

  private struct State {
    var network: SimulatedNetwork
    var rng: SeededRandom
    var now = VirtualTime.zero
    var inboxes: [NodeID: Mailbox<Envelope<Message>>] = [:]
    var inFlight = EventQueue<Envelope<Message>>()
    var dropped = 0
  }

  private let state: Mutex<State>
  private let mode: DeliveryMode
  /// Capacity of each node's incoming mailbox.
  public let inboxCapacity: Int

  /// Creates a transport.
  public init(seed: UInt64, faults: LinkFaults = .none, mode: DeliveryMode = .immediate, inboxCapacity: Int = 8192) {
    precondition(inboxCapacity >= 1, "inboxCapacity must be at least 1")
    state = Mutex(State(network: SimulatedNetwork(defaultFaults: faults), rng: SeededRandom(seed: seed)))
    self.mode = mode
    self.inboxCapacity = inboxCapacity
  }

  /// Binds `node`.
  public func bind(_ node: NodeID) throws(TransportError) -> SimulatedEndpoint<Message> {
    let inbox = Mailbox<Envelope<Message>>(capacity: inboxCapacity)
    try state.withLock { (s: inout State) throws(TransportError) in
      if s.inboxes[node] != nil { throw .alreadyBound(node) }
      s.inboxes[node] = inbox
    }
    return SimulatedEndpoint(id: node, incoming: inbox, transport: self)
  }

  /// Changes the network (partitions, faults) under the transport's lock.
  public func withNetwork<R>(_ body: (inout SimulatedNetwork) -> R) -> R {
    state.withLock { body(&$0.network) }
  }

  /// The virtual time.
  public var now: VirtualTime { state.withLock { $0.now } }
  /// Messages still in flight.
  public var inFlightCount: Int { state.withLock { $0.inFlight.count } }
  /// Messages lost to a full mailbox at delivery.
  public var overflowDrops: Int { state.withLock { $0.dropped } }

  /// Moves the virtual clock forward by `duration`, delivering everything due by then in time order.
  public func advance(by duration: VirtualDuration) {
    state.withLock { s in
      let target = s.now + duration
      _ = Self.deliverDue(&s, until: target)
      s.now = target
    }
  }

  /// Delivers every message in flight, in time order.
  public func deliverAll() {
    state.withLock { s in _ = Self.deliverDue(&s, until: nil) }
  }

  /// Delivers due messages in time order; returns the receivers whose full inbox made a message drop.
  private static func deliverDue(_ s: inout State, until limit: VirtualTime?) -> [NodeID] {
    var overflowed: [NodeID] = []
    while let time = s.inFlight.nextTime, limit.map({ time <= $0 }) ?? true, let (_, envelope) = s.inFlight.pop() {
      s.now = max(s.now, time)
      guard let inbox = s.inboxes[envelope.to], !s.network.down.contains(envelope.to) else { continue }
      do {
        try inbox.trySend(envelope)
      } catch {
        s.dropped += 1
        overflowed.append(envelope.to)
      }
    }
    return overflowed
  }

  func route(_ envelope: Envelope<Message>) throws(TransportError) {
    let overflow: Bool = try state.withLock { (s: inout State) throws(TransportError) in
      guard s.inboxes[envelope.to] != nil else { throw .unknownPeer(envelope.to) }
      let link = Link(from: envelope.from, to: envelope.to)
      for time in s.network.route(link, at: s.now, using: &s.rng) {
        s.inFlight.schedule(envelope, at: time)
      }
      guard mode == .immediate else { return false }
      return !Self.deliverDue(&s, until: nil).isEmpty
    }
    if overflow { throw .queueFull(peer: envelope.to, capacity: inboxCapacity) }
  }

  func unbind(_ node: NodeID, inbox: Mailbox<Envelope<Message>>) {
    state.withLock { s in
      if s.inboxes[node] === inbox { s.inboxes[node] = nil }
      s.inFlight.removeAll { $0.to == node }
    }
    inbox.close(discardingBuffered: true)
  }
}

/// A node's endpoint on a ``SimulatedTransport``.
public final class SimulatedEndpoint<Message: Sendable>: TransportEndpoint, Sendable {
  /// The node this endpoint belongs to.
  public let id: NodeID
  /// Messages delivered to this node.
  public let incoming: Mailbox<Envelope<Message>>
  private let transport: SimulatedTransport<Message>
  private let closed = Atomic<Bool>(false)

  init(id: NodeID, incoming: Mailbox<Envelope<Message>>, transport: SimulatedTransport<Message>) {
    self.id = id
    self.incoming = incoming
    self.transport = transport
  }

  /// Routes `message` through the simulated network.
  public func send(_ message: Message, to peer: NodeID, group: GroupID) throws(TransportError) {
    if closed.load(ordering: .relaxed) { throw .closed }
    try transport.route(Envelope(from: id, to: peer, group: group, payload: message))
  }

  /// Unbinds the node; nothing more is delivered.
  public func close() async {
    if closed.exchange(true, ordering: .relaxed) { return }
    transport.unbind(id, inbox: incoming)
  }
}
