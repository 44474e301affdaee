public import QuorumCore
public import QuorumPaxos
public import QuorumRaft
import Synchronization

/// A message between two processes hosting groups: one engine's protocol message, or a host's request to another
/// host and its reply (the peer requests that hosts' transaction housekeeping sends). One transport connection
/// per pair of processes carries every group's messages; the envelope's group id routes them, and the message's
/// first byte — the engine's protocol number (``QuorumCore/WireProtocol/raft`` or
/// ``QuorumCore/WireProtocol/paxos``), or a peer request's tag — says how to decode the rest.
public enum HostMessage: Sendable, WireCodable, CustomStringConvertible {
  /// A Raft group's message.
  case raft(RaftMessage)
  /// A Multi-Paxos group's message.
  case paxos(PaxosMessage)
  /// An encoded ``HostRequest`` from another host (its in-doubt transaction resolver), numbered by the sender.
  case request(id: UInt64, body: [UInt8])
  /// The encoded ``HostReply`` to the sender's request `id`.
  case reply(id: UInt64, body: [UInt8])

  /// The first byte of a peer request (far from the engines' protocol numbers).
  static let requestTag: UInt8 = 0x40
  /// The first byte of a peer reply.
  static let replyTag: UInt8 = 0x41

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .raft(let m):
      writer.writeByte(WireProtocol.raft)
      m.encode(to: &writer)
    case .paxos(let m):
      writer.writeByte(WireProtocol.paxos)
      m.encode(to: &writer)
    case .request(let id, let body):
      writer.writeByte(Self.requestTag)
      writer.writeVarint(id)
      writer.writeBytes(body)
    case .reply(let id, let body):
      writer.writeByte(Self.replyTag)
      writer.writeVarint(id)
      writer.writeBytes(body)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case WireProtocol.raft: self = .raft(try reader.read())
    case WireProtocol.paxos: self = .paxos(try reader.read())
    case Self.requestTag: self = .request(id: try reader.readVarint(), body: try reader.readBytes())
    case Self.replyTag: self = .reply(id: try reader.readVarint(), body: try reader.readBytes())
    case let tag: throw WireError(.unknownTag(type: "protocol", tag: UInt64(tag)), at: at)
    }
  }

  public var description: String {
    switch self {
    case .raft(let m): return "\(m)"
    case .paxos(let m): return "\(m)"
    case .request(let id, let body): return "peer request \(id) (\(body.count) B)"
    case .reply(let id, let body): return "peer reply \(id) (\(body.count) B)"
    }
  }
}

/// Routes one process's transport endpoint to the groups it hosts: every group gets an endpoint of its own
/// (``GroupEndpoint``) whose messages travel over the process's one connection per peer process, and incoming
/// messages are handed to the group their envelope names.
///
/// Groups are registered before the transport is attached, so a server can recover every group's storage
/// before it opens its listener (``attach(_:)``). A message for a group this process does not host, or for a
/// group whose mailbox is full, is dropped and counted: the protocols retransmit.
public final class GroupRouter: Sendable {
  private struct Route {
    var deliver: @Sendable (Envelope<HostMessage>) -> Bool
    /// The group's node's handler for a peer the transport lost (``GroupEndpoint/onPeerLost(_:)``).
    var lost: (@Sendable (NodeID) -> Void)?
  }

  /// The process's node id.
  public let node: NodeID
  /// Requests between hosts over this router's endpoint, and their replies.
  let peers = PeerRequests()
  private let routes = Mutex<[GroupID: Route]>([:])
  private let outbound = Mutex<(any TransportEndpoint<HostMessage>)?>(nil)
  private let counters = DropCounters()

  /// Creates a router for node `node`.
  public init(node: NodeID) { self.node = node }

  /// Messages dropped: for a group not hosted here, because a group's mailbox was full, or of the wrong engine.
  public var dropped: (unknownGroup: Int, full: Int, undeliverable: Int) { counters.state.withLock { $0 } }

  /// Creates `group`'s endpoint, carrying `Message`s wrapped in ``HostMessage`` by `wrap` and unwrapped by
  /// `unwrap`.
  public func endpoint<Message: Sendable>(
    for group: GroupID, capacity: Int, wrap: @escaping @Sendable (Message) -> HostMessage,
    unwrap: @escaping @Sendable (HostMessage) -> Message?
  ) -> GroupEndpoint<Message> {
    let mailbox = Mailbox<Envelope<Message>>(capacity: max(1, capacity))
    let counters = self.counters
    let route = Route { envelope in
      guard let message = unwrap(envelope.payload) else {
        counters.state.withLock { $0.undeliverable += 1 }
        return false
      }
      do {
        try mailbox.trySend(Envelope(from: envelope.from, to: envelope.to, group: envelope.group, payload: message))
        return true
      } catch {
        counters.state.withLock { $0.full += 1 }
        return false
      }
    }
    routes.withLock { $0[group] = route }
    return GroupEndpoint(id: node, group: group, incoming: mailbox, router: self, wrap: wrap)
  }

  /// Attaches the process's transport endpoint: groups' sends go out through it from now on. Where the transport
  /// can (``QuorumCore/TransportEndpoint/deliverDirectly(to:)``), arriving messages are routed on the thread that
  /// received them, straight into their groups' mailboxes, with no routing task woken in between.
  public func attach(_ endpoint: any TransportEndpoint<HostMessage>) {
    outbound.withLock { $0 = endpoint }
    _ = endpoint.deliverDirectly { [weak self] envelopes in self?.deliver(envelopes) }
    endpoint.onPeerLost { [weak self] peer in self?.peerLost(peer) }
  }

  /// Tells every group that asked (``GroupEndpoint/onPeerLost(_:)``) that the transport lost `peer`.
  func peerLost(_ peer: NodeID) {
    let table = routes.withLock { $0 }
    for group in table.keys.sorted() { table[group]?.lost?(peer) }
  }

  func setLostHandler(_ handler: @escaping @Sendable (NodeID) -> Void, for group: GroupID) {
    routes.withLock { $0[group]?.lost = handler }
  }

  /// Hands every message arriving on the attached endpoint's mailbox to its group until the endpoint closes
  /// (with direct delivery, only what arrived before ``attach(_:)``).
  public func run() async {
    guard let endpoint = outbound.withLock({ $0 }) else { return }
    var batch: [Envelope<HostMessage>] = []
    batch.reserveCapacity(1024)
    while await endpoint.incoming.receive(into: &batch, limit: 1024) {
      deliver(batch)
      batch.removeAll(keepingCapacity: true)
    }
  }

  /// Delivers envelopes to their groups (what ``run()`` does with each batch).
  public func deliver(_ envelopes: [Envelope<HostMessage>]) {
    let table = routes.withLock { $0 }
    for envelope in envelopes {
      switch envelope.payload {
      case .request(let id, let body):
        peers.received(request: body, id: id, from: envelope.from, group: envelope.group)
        continue
      case .reply(let id, let body):
        peers.received(reply: body, id: id, from: envelope.from)
        continue
      case .raft, .paxos:
        break
      }
      guard let route = table[envelope.group] else {
        counters.state.withLock { $0.unknownGroup += 1 }
        continue
      }
      _ = route.deliver(envelope)
    }
  }

  func send(_ message: HostMessage, to peer: NodeID, group: GroupID) throws(TransportError) {
    guard let endpoint = outbound.withLock({ $0 }) else { throw .closed }
    try endpoint.send(message, to: peer, group: group)
  }

  func unregister(_ group: GroupID) {
    _ = routes.withLock { $0.removeValue(forKey: group) }
  }

  /// Closes the attached endpoint (every group's messages stop).
  public func close() async {
    let endpoint = outbound.withLock { e -> (any TransportEndpoint<HostMessage>)? in
      defer { e = nil }
      return e
    }
    peers.close()
    await endpoint?.close()
  }
}

final class DropCounters: Sendable {
  let state = Mutex<(unknownGroup: Int, full: Int, undeliverable: Int)>((0, 0, 0))
}

/// One group's view of its process's transport endpoint (made by ``GroupRouter/endpoint(for:capacity:wrap:unwrap:)``).
public final class GroupEndpoint<Message: Sendable>: TransportEndpoint, Sendable {
  /// The node.
  public let id: NodeID
  /// The group.
  public let group: GroupID
  /// This group's messages.
  public let incoming: Mailbox<Envelope<Message>>
  private let router: GroupRouter
  private let wrap: @Sendable (Message) -> HostMessage
  private let closed = Atomic<Bool>(false)

  init(
    id: NodeID, group: GroupID, incoming: Mailbox<Envelope<Message>>, router: GroupRouter,
    wrap: @escaping @Sendable (Message) -> HostMessage
  ) {
    self.id = id
    self.group = group
    self.incoming = incoming
    self.router = router
    self.wrap = wrap
  }

  /// Sends `message` to `peer` in this endpoint's group (the `group` argument is ignored: a group's node sends
  /// in its own group only).
  public func send(_ message: Message, to peer: NodeID, group: GroupID) throws(TransportError) {
    if closed.load(ordering: .relaxed) { throw .closed }
    try router.send(wrap(message), to: peer, group: self.group)
  }

  /// Calls `handler` when the process's transport loses a peer process (see
  /// ``QuorumCore/TransportEndpoint/onPeerLost(_:)``): every group hosted here hears of it.
  public func onPeerLost(_ handler: @escaping @Sendable (NodeID) -> Void) {
    router.setLostHandler(handler, for: group)
  }

  /// Stops this group's traffic; the process's endpoint stays open for the other groups.
  public func close() async {
    if closed.exchange(true, ordering: .relaxed) { return }
    router.unregister(group)
    incoming.close(discardingBuffered: true)
  }
}
