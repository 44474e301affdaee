public import QuorumCore
import Synchronization

/// A ``QuorumCore/Transport`` whose messages travel through a ``SimulatedNetwork`` on a
/// ``SimulationScheduler``'s virtual time: what the whole-node simulations run the production actors on.
///
/// Each send is routed through the network model (partitions, one-way cuts, drops, duplicates, delays,
/// reordering, nodes that are down) with the scheduler's seeded generator, and delivered by a timer at its
/// arrival time into the receiver's mailbox, if the receiver is up then. A full mailbox drops the message, as an
/// overflowing socket buffer would. Two departures from TCP, both more hostile than it:
/// - Rebinding a node (a restart) gives it a new mailbox, and a message still in flight reaches the new
///   incarnation (over TCP it would die with the old connection): a restarted node must cope with messages its
///   previous life's peers sent it.
/// - Partitions and cuts are decided when a message is sent, so a message already in flight crosses a partition
///   made after it left.
public final class VirtualNetwork<Message: Sendable>: Transport, Sendable {
  private struct State {
    var network: SimulatedNetwork
    var inboxes: [NodeID: Mailbox<Envelope<Message>>] = [:]
    /// Each bound node's lost-peer handler (``VirtualEndpoint/onPeerLost(_:)``).
    var lostHandlers: [NodeID: @Sendable (NodeID) -> Void] = [:]
    var sent = 0
    var delivered = 0
    var overflowDrops = 0
  }

  private let state: Mutex<State>
  private let scheduler: SimulationScheduler
  /// Capacity of each node's incoming mailbox.
  public let inboxCapacity: Int
  private let observe: (@Sendable (VirtualTime, Envelope<Message>) -> Void)?
  private let sendAudit = Mutex<(@Sendable (Envelope<Message>) -> Void)?>(nil)

  /// Creates a network with `faults` on every link; `observe` sees every delivery (for traces).
  public init(
    scheduler: SimulationScheduler, faults: LinkFaults = .none, inboxCapacity: Int = 8192,
    observe: (@Sendable (VirtualTime, Envelope<Message>) -> Void)? = nil
  ) {
    precondition(inboxCapacity >= 1, "inboxCapacity must be at least 1")
    self.scheduler = scheduler
    self.inboxCapacity = inboxCapacity
    self.observe = observe
    state = Mutex(State(network: SimulatedNetwork(defaultFaults: faults)))
  }

  /// Binds `node`, replacing any earlier endpoint of it (whose mailbox receives nothing more).
  public func bind(_ node: NodeID) -> VirtualEndpoint<Message> {
    let inbox = Mailbox<Envelope<Message>>(capacity: inboxCapacity)
    let old = state.withLock { s in
      defer {
        s.inboxes[node] = inbox
        s.lostHandlers[node] = nil
      }
      return s.inboxes[node]
    }
    old?.close(discardingBuffered: true)
    return VirtualEndpoint(id: node, incoming: inbox, network: self)
  }

  /// Reports `node` lost to every other bound node that asked (``VirtualEndpoint/onPeerLost(_:)``) after `delay`
  /// of virtual time, as a TCP link reports a dead process once the kernel closes its sockets or the link's
  /// liveness timeout passes.
  public func reportLost(_ node: NodeID, after delay: VirtualDuration) {
    scheduler.schedule(at: scheduler.now + delay) { [self] in
      let handlers = state.withLock { s in
        s.lostHandlers.keys.sorted().filter { $0 != node }.compactMap { s.lostHandlers[$0] }
      }
      for handler in handlers { handler(node) }
    }
  }

  func setLostHandler(
    _ handler: @escaping @Sendable (NodeID) -> Void, for node: NodeID, inbox: Mailbox<Envelope<Message>>
  ) {
    state.withLock { s in
      if s.inboxes[node] === inbox { s.lostHandlers[node] = handler }
    }
  }

  /// Shows `audit` every message a node sends, at the moment it sends it — before the network decides its fate, so
  /// a message the network then loses is seen too (a checker of what a sender may promise, for example).
  public func auditSends(_ audit: @escaping @Sendable (Envelope<Message>) -> Void) {
    sendAudit.withLock { $0 = audit }
  }

  /// Changes the network model (partitions, faults, nodes down).
  public func withNetwork<R>(_ body: (inout SimulatedNetwork) -> R) -> R {
    state.withLock { body(&$0.network) }
  }

  /// Messages sent, delivered, and dropped because a mailbox was full.
  public var counters: (sent: Int, delivered: Int, overflowDrops: Int) {
    state.withLock { ($0.sent, $0.delivered, $0.overflowDrops) }
  }

  /// Decides the fate of one message of another kind (a client's request or reply) sent now on `link`: its
  /// delivery times under the current partitions and faults (none if lost, two if duplicated).
  public func deliveryTimes(on link: Link) -> [VirtualTime] {
    let now = scheduler.now
    let network = state.withLock { $0.network }
    return scheduler.random { rng in network.route(link, at: now, using: &rng) }
  }

  func route(_ envelope: Envelope<Message>, from inbox: Mailbox<Envelope<Message>>) throws(TransportError) {
    let now = scheduler.now
    let times = try state.withLock { (s: inout State) throws(TransportError) -> [VirtualTime] in
      guard s.inboxes[envelope.from] === inbox else { throw .closed }
      s.sent += 1
      let network = s.network
      return scheduler.random { rng in network.route(Link(from: envelope.from, to: envelope.to), at: now, using: &rng) }
    }
    sendAudit.withLock { $0 }?(envelope)
    for time in times {
      scheduler.schedule(at: time) { [self] in deliver(envelope) }
    }
  }

  private func deliver(_ envelope: Envelope<Message>) {
    let target: Mailbox<Envelope<Message>>? = state.withLock { s in
      guard !s.network.down.contains(envelope.to), let inbox = s.inboxes[envelope.to] else { return nil }
      return inbox
    }
    guard let target else { return }
    do {
      try target.trySend(envelope)
      state.withLock { $0.delivered += 1 }
      observe?(scheduler.now, envelope)
    } catch {
      state.withLock { $0.overflowDrops += 1 }
    }
  }

  func unbind(_ node: NodeID, inbox: Mailbox<Envelope<Message>>) {
    state.withLock { s in
      guard s.inboxes[node] === inbox else { return }
      s.inboxes[node] = nil
      s.lostHandlers[node] = nil
    }
    inbox.close(discardingBuffered: true)
  }
}

/// A node's endpoint on a ``VirtualNetwork``.
public final class VirtualEndpoint<Message: Sendable>: TransportEndpoint, Sendable {
  /// The node.
  public let id: NodeID
  /// Messages delivered to this node.
  public let incoming: Mailbox<Envelope<Message>>
  private let network: VirtualNetwork<Message>

  init(id: NodeID, incoming: Mailbox<Envelope<Message>>, network: VirtualNetwork<Message>) {
    self.id = id
    self.incoming = incoming
    self.network = network
  }

  /// Routes `message` through the simulated network.
  public func send(_ message: Message, to peer: NodeID, group: GroupID) throws(TransportError) {
    try network.route(Envelope(from: id, to: peer, group: group, payload: message), from: incoming)
  }

  /// Calls `handler` with a peer's id when the simulation reports it lost (``VirtualNetwork/reportLost(_:after:)``).
  public func onPeerLost(_ handler: @escaping @Sendable (NodeID) -> Void) {
    network.setLostHandler(handler, for: id, inbox: incoming)
  }

  /// Unbinds the node; nothing more is delivered or sent.
  public func close() async {
    network.unbind(id, inbox: incoming)
  }
}
