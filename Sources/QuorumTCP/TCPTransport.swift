import CQuorumSystem
import Dispatch
import Glibc
public import QuorumCore
import Synchronization

/// A ``QuorumCore/Transport`` over TCP: what lets a Quorum cluster span processes and machines.
///
/// Each bound node listens on its address from the address book (or on ``TCPTransportOptions/listenHost``
/// port 0, whose real port is written back into the book) and opens one outbound connection per peer it
/// sends to. One event-loop thread per transport owns every socket (epoll); `send` encodes the frame on the
/// caller's thread and queues it without blocking or suspending; the loop writes queued frames with one
/// system call per batch and decodes incoming frames straight into the endpoint's mailbox.
///
/// ## Wire format and authentication
///
/// A connection starts with a handshake (``TCPHandshake``): with ``TCPSecurity/authenticated(clusterSecret:clients:)``
/// both sides prove the shared key over fresh nonces (HMAC-SHA-256) and every later frame carries a code under a
/// per-direction session key and an implicit sequence number; with ``TCPSecurity/insecure`` the cluster id is
/// the only check. Then every frame is a `u32` length and a ``QuorumCore/WireEnvelope`` (see ``TCPFrame``). A
/// failed authentication, a mismatched cluster id, an unknown node, an unsupported version, a frame over the
/// limit, a truncated, undecodable or unauthentic frame each close *that* connection with a ``TCPCloseReason``
/// that is logged and counted in ``metrics``; the node goes on serving every other connection.
///
/// ## Bounds and policies
///
/// - Per peer, at most ``TCPTransportOptions/maxQueuedFramesPerPeer`` frames and
///   ``TCPTransportOptions/maxQueuedBytesPerPeer`` bytes wait to be written; beyond that `send` throws
///   ``QuorumCore/TransportError/queueFull(peer:capacity:)`` and queues nothing (order is preserved).
/// - When a connection attempt fails, the frames queued for that peer are dropped (the peer could not have
///   received them; the protocols above retransmit) and the link reconnects with ``ReconnectPolicy``.
/// - When an endpoint's mailbox is full, the loop stops reading the connections that feed it until there is
///   room again: TCP flow control then slows the senders, whose queues fill and refuse. Nothing is dropped
///   for a slow receiver.
/// - Accepted connections are bounded per budget — not yet authenticated, clients, peers — and per address
///   (see ``TCPTransportOptions``); replies waiting for a client count against its connection.
/// - A peer link pings and is redialled when it hears nothing for ``LinkLiveness/timeout``.
///
/// ## Clients
///
/// With ``TCPTransportOptions/serveClients`` the same listener also accepts client connections (handshake
/// role `client`); their requests arrive in ``TCPEndpoint/requests`` and are answered with
/// ``TCPRequest/respond(_:)``. ``TCPRequestClient`` is the other end.
///
/// The event-loop thread starts with the first ``bind(_:)`` and stops when the last endpoint closes.
public final class TCPTransport<Message: WireCodable & Sendable>: Transport, Sendable {
  /// The cluster every connection must belong to.
  public var cluster: ClusterID { environment.cluster }
  /// The protocol number carried in every frame's envelope (for example ``QuorumCore/WireProtocol/raft``).
  public let protocolNumber: UInt8
  /// Limits and timeouts.
  public var options: TCPTransportOptions { environment.options }
  /// How connections are authenticated.
  public var security: TCPSecurity { environment.security }

  let environment: TransportEnvironment
  private let endpoints = Mutex<[NodeID: TCPEndpoint<Message>]>([:])

  /// Creates a transport; nothing is opened until ``bind(_:)``.
  /// - Parameters:
  ///   - cluster: the cluster id checked at every handshake.
  ///   - protocolNumber: the protocol of `Message` (``QuorumCore/WireProtocol``).
  ///   - addresses: where each node listens. A node bound without an entry listens on
  ///     ``TCPTransportOptions/listenHost`` and a free port, which is recorded here.
  ///   - options: limits and timeouts.
  ///   - security: how connections are authenticated; ``TCPSecurity/insecure`` must be asked for by name, and a
  ///     transport without authentication logs a warning when it starts listening.
  ///   - logger: where connection events and closes are logged.
  public init(
    cluster: ClusterID, protocolNumber: UInt8, addresses: [NodeID: TCPAddress] = [:],
    options: TCPTransportOptions = .default, security: TCPSecurity,
    logger: QuorumLogger = QuorumLogger(label: "quorum.tcp")
  ) {
    self.protocolNumber = protocolNumber
    self.environment = TransportEnvironment(
      cluster: cluster, options: options, security: security, addresses: addresses, logger: logger)
  }

  /// Binds `node`: starts listening on its address and returns its endpoint.
  /// - Throws: ``TCPTransportError/addressInUse(_:)`` if the port is taken,
  ///   ``TCPTransportError/alreadyBound(_:)``, or ``TCPTransportError/system(operation:address:errno:)``.
  public func bind(_ node: NodeID) async throws(TCPTransportError) -> TCPEndpoint<Message> {
    if endpoints.withLock({ $0[node] != nil }) { throw .alreadyBound(node) }
    let wanted: TCPAddress
    if let configured = environment.address(of: node) {
      wanted = configured
    } else {
      wanted = try TCPAddress(host: environment.options.listenHost, port: 0)
    }
    let (fd, listening) = try openListener(try await Self.resolveForListening(wanted))
    // A host name stays in the address book (peers resolve it themselves), with the real port.
    let bound = wanted.withPort(listening.port)
    let loop: EventLoop
    do {
      loop = try environment.acquireLoop()
    } catch {
      Glibc.close(fd)
      throw error
    }
    let core = EndpointCore<Message>(id: node, loop: loop, protocolNumber: protocolNumber, environment: environment)
    let endpoint = TCPEndpoint(core: core, address: bound, transport: self)
    let fresh = endpoints.withLock { table -> Bool in
      if table[node] != nil { return false }
      table[node] = endpoint
      return true
    }
    guard fresh else {
      Glibc.close(fd)
      environment.releaseLoop()
      throw .alreadyBound(node)
    }
    environment.setAddress(bound, for: node)
    let started = await loop.submit { core.start(listenerFD: fd) } ?? false
    guard started else {
      Glibc.close(fd)
      await endpoint.close()
      throw .system(operation: "epoll_ctl (listener)", address: bound, errno: EIO)
    }
    environment.logger.info("\(node) listening on \(bound)", ["cluster": cluster.rawValue])
    if !environment.security.isAuthenticated {
      environment.logger.warning(
        "\(node) runs WITHOUT AUTHENTICATION (insecure): anyone who reaches \(bound) and knows the cluster id can "
          + "join as a member or act as an admin client")
    }
    return endpoint
  }

  /// `address` with its host name resolved, off the cooperative pool (the system resolver blocks).
  private static func resolveForListening(_ address: TCPAddress) async throws(TCPTransportError) -> TCPAddress {
    if address.isNumeric { return address }
    let result = await withCheckedContinuation { continuation in
      DispatchQueue.global(qos: .utility).async { continuation.resume(returning: address.resolved()) }
    }
    switch result {
    case .success(let numeric): return numeric
    case .failure(let reason): throw .invalidAddress(address.description, reason: "\(reason)")
    }
  }

  private func openListener(_ address: TCPAddress) throws(TCPTransportError) -> (Int32, TCPAddress) {
    let fd = cq_tcp_socket(cq_address_family(address.host))
    guard fd >= 0 else { throw .system(operation: "socket", address: address, errno: errno) }
    guard cq_bind_listen(fd, address.host, Int32(address.port), 1024) == 0 else {
      let code = errno
      Glibc.close(fd)
      if code == EADDRINUSE { throw .addressInUse(address) }
      throw .system(operation: "bind/listen", address: address, errno: code)
    }
    let port = cq_local_port(fd)
    guard port > 0 else {
      let code = errno
      Glibc.close(fd)
      throw .system(operation: "getsockname", address: address, errno: code)
    }
    return (fd, address.withPort(UInt16(port)))
  }

  func endpointClosed(_ endpoint: TCPEndpoint<Message>) {
    let removed = endpoints.withLock { table -> Bool in
      guard table[endpoint.id] === endpoint else { return false }
      table[endpoint.id] = nil
      return true
    }
    if removed { environment.releaseLoop() }
  }

  /// The address of `node` in the address book.
  public func address(of node: NodeID) -> TCPAddress? { environment.address(of: node) }

  /// The whole address book.
  public var addresses: [NodeID: TCPAddress] { environment.addresses }

  /// Adds, changes or (with `nil`) removes the address of `node`. Existing connections stay; the next
  /// connection attempt uses the new address.
  public func setAddress(_ address: TCPAddress?, for node: NodeID) { environment.setAddress(address, for: node) }

  /// The transport's counters.
  public var metrics: TCPTransportMetrics { environment.metrics.snapshot }

  /// The state of every bound endpoint — its mailbox, inbound connections and outbound links — for a
  /// failure report (a test that timed out says where the messages stopped).
  package func stateReport() async -> String {
    let all = endpoints.withLock { $0.values.sorted { $0.id.rawValue < $1.id.rawValue } }
    var lines: [String] = []
    for endpoint in all {
      let core = endpoint.core
      lines.append(await core.loop.submit { core.stateReport() } ?? "\(endpoint.id): the event loop has stopped")
    }
    return lines.joined(separator: "\n")
  }

  /// Closes every endpoint still bound.
  public func shutdown() async {
    let all = endpoints.withLock { Array($0.values) }
    for endpoint in all { await endpoint.close() }
  }

  /// A task executor that runs its jobs on this transport's event-loop thread, between network events.
  ///
  /// A task that prefers it (`withTaskExecutorPreference`, or `Task(executorPreference:)`) runs its code, and
  /// the code of default actors it calls, on the thread that reads and writes the sockets: a message the loop
  /// delivers to such a task's mailbox resumes it on the same thread, with no wake-up of another thread. Work
  /// that blocks or runs long must not prefer it: every connection of the transport waits meanwhile. The loop
  /// keeps running while the executor exists, even after every endpoint has closed. A default actor's job may
  /// still run on another thread now and then: one that finds the actor idle while called from elsewhere runs
  /// there.
  public func makeLoopExecutor() throws(TCPTransportError) -> TCPLoopExecutor {
    TCPLoopExecutor(loop: try environment.acquireLoop(), environment: environment)
  }
}

/// Runs jobs on a ``TCPTransport``'s event-loop thread (see ``TCPTransport/makeLoopExecutor()``).
public final class TCPLoopExecutor: TaskExecutor, Sendable {
  let loop: EventLoop
  let environment: TransportEnvironment

  init(loop: EventLoop, environment: TransportEnvironment) {
    self.loop = loop
    self.environment = environment
  }

  deinit { environment.releaseLoop() }

  /// Runs `job` on the loop's thread after the events it is handling. The queued work holds the executor, so it
  /// outlives every job enqueued on it. (The executor keeps the loop running, so the Dispatch thread below is only
  /// a guard: a job must run, since its task holds a continuation someone awaits.)
  public func enqueue(_ job: consuming ExecutorJob) {
    let job = UnownedJob(job)
    if loop.execute({ [self] in job.runSynchronously(on: asUnownedTaskExecutor()) }) { return }
    DispatchQueue.global().async { [self] in job.runSynchronously(on: asUnownedTaskExecutor()) }
  }
}

/// One node's endpoint on a ``TCPTransport``.
public final class TCPEndpoint<Message: WireCodable & Sendable>: TransportEndpoint, Sendable {
  /// The node.
  public var id: NodeID { core.id }
  /// Messages from peers, in arrival order (per peer, in the order sent).
  public var incoming: Mailbox<Envelope<Message>> { core.mailbox }
  /// Requests from client connections (only with ``TCPTransportOptions/serveClients``). When it is full the
  /// transport stops reading client sockets until there is room.
  public var requests: Mailbox<TCPRequest> { core.requests }
  /// The address the endpoint listens on (with the real port when bound to port 0).
  public let address: TCPAddress

  let core: EndpointCore<Message>
  private let transport: TCPTransport<Message>

  init(core: EndpointCore<Message>, address: TCPAddress, transport: TCPTransport<Message>) {
    self.core = core
    self.address = address
    self.transport = transport
  }

  /// Encodes `message` and queues it for `peer` without blocking. The message is encoded straight into the peer's
  /// queue, under its lock: its `encode(to:)` must only encode (one that sent on this endpoint would deadlock).
  /// - Throws: ``QuorumCore/TransportError/closed`` after ``close()``,
  ///   ``QuorumCore/TransportError/unknownPeer(_:)`` if `peer` has no address,
  ///   ``QuorumCore/TransportError/messageTooLarge(bytes:limit:)`` over the frame limit,
  ///   ``QuorumCore/TransportError/queueFull(peer:capacity:)`` when the peer's queue is full.
  public func send(_ message: Message, to peer: NodeID, group: GroupID) throws(TransportError) {
    if core.isClosed { throw .closed }
    let handle = try core.link(to: peer)
    // A sender on the loop's own thread (a replica taking its turn there) queues: the loop writes what every turn
    // of its pass sent to this peer together, after them, rather than the first frame alone at once.
    let writeIfIdle = core.writesFromSenders && !core.loop.isCurrentThread
    // The frame is encoded straight into the link's queue, under its lock: no buffer of its own.
    let (id, protocolNumber) = (core.id, core.protocolNumber)
    let outcome = try handle.queue.send(
      peer: peer, writeIfIdle: writeIfIdle, maxBody: core.maxFrameBytes
    ) { buffer in
      TCPFrame.append(message, from: id, to: peer, group: group, protocolNumber: protocolNumber, to: &buffer)
    }
    core.metrics.recordSenderWrite(outcome, peerFrame: true)
    if outcome.needsWake, !core.loop.execute({ handle.link.service() }) { throw .closed }
  }

  /// Hands peer messages to `handler` on the event loop's thread as each read's frames are decoded, instead of
  /// queueing them in ``incoming`` (see ``QuorumCore/TransportEndpoint/deliverDirectly(to:)``).
  public func deliverDirectly(to handler: @escaping @Sendable ([Envelope<Message>]) -> Void) -> Bool {
    core.directDelivery.withLock { $0 = Handler(handler) }
    return true
  }

  /// Calls `handler` on the event loop's thread with a peer's id each time an established link to it fails: the
  /// peer closed it (its process exited or restarted), a socket call failed, or it stayed silent past the
  /// liveness timeout (``LinkLiveness``). A link that never connected reports nothing. A second call replaces
  /// the handler.
  public func onPeerLost(_ handler: @escaping @Sendable (NodeID) -> Void) {
    core.peerLost.withLock { $0 = Handler(handler) }
  }

  /// Offers each client request to `handler` on the event loop's thread as it is decoded, before it is queued in
  /// ``requests``: a handler that can answer without suspending (it hands the request on and calls
  /// ``TCPRequest/respond(_:)`` later, from any thread) takes it and returns `true`, and no task is woken for
  /// it; one that returns `false` leaves it to ``requests``. `handler` must not block.
  public func handleRequestsDirectly(_ handler: @escaping @Sendable (TCPRequest) -> Bool) {
    core.directRequests.withLock { $0 = Handler(handler) }
  }

  /// The latest delivery of each inbound peer connection that waited for room in ``incoming`` (for tests).
  package func stalledDeliveries() async -> [TCPStallSnapshot] {
    let core = self.core
    return await core.loop.submit { core.stalledDeliveries() } ?? []
  }

  /// Stops accepting new connections; existing ones carry on. The first step of a graceful shutdown.
  public func stopAccepting() async {
    let core = self.core
    _ = await core.loop.submit { core.stopListening() }
  }

  /// Stops listening, closes every connection of this node, drops what is queued, and ends ``incoming``
  /// and ``requests``. Returns once the sockets are closed. Closing twice is harmless.
  public func close() async {
    guard core.markClosed() else { return }
    core.mailbox.close(discardingBuffered: true)
    core.requests.close(discardingBuffered: true)
    let core = self.core
    _ = await core.loop.submit { core.shutDown() }
    transport.endpointClosed(self)
  }
}

/// The transport-wide state every endpoint shares: the cluster id, options, address book, metrics, and the
/// event loop's lifetime (started by the first bind, stopped when the last endpoint closes).
final class TransportEnvironment: LinkEnvironment {
  let cluster: ClusterID
  let options: TCPTransportOptions
  let security: TCPSecurity
  let metrics = MetricsCounters()
  let logger: QuorumLogger
  private let book: Mutex<[NodeID: TCPAddress]>
  private let loopState = Mutex<(loop: EventLoop?, users: Int)>((nil, 0))

  init(
    cluster: ClusterID, options: TCPTransportOptions, security: TCPSecurity, addresses: [NodeID: TCPAddress],
    logger: QuorumLogger
  ) {
    // The initializer of the options checked them, but their fields may have been set since.
    do { try options.validate() } catch { preconditionFailure("TCP transport options: \(error)") }
    self.cluster = cluster
    self.options = options
    self.security = security
    self.book = Mutex(addresses)
    self.logger = logger
  }

  func address(of node: NodeID) -> TCPAddress? { book.withLock { $0[node] } }
  var addresses: [NodeID: TCPAddress] { book.withLock { $0 } }
  func setAddress(_ address: TCPAddress?, for node: NodeID) { book.withLock { $0[node] = address } }

  func acquireLoop() throws(TCPTransportError) -> EventLoop {
    try loopState.withLock { (state: inout (loop: EventLoop?, users: Int)) throws(TCPTransportError) -> EventLoop in
      if let loop = state.loop {
        state.users += 1
        return loop
      }
      let loop = try EventLoop(logger: logger)
      try loop.start()
      state = (loop, 1)
      return loop
    }
  }

  func releaseLoop() {
    let stopping: EventLoop? = loopState.withLock { state in
      state.users -= 1
      guard state.users == 0, let loop = state.loop else { return nil }
      state.loop = nil
      return loop
    }
    stopping?.stop()
  }
}

/// The state of one bound endpoint. Senders use `links` (a mutex) and `closed` (an atomic); everything
/// else runs on the event loop.
final class EndpointCore<Message: WireCodable & Sendable>: InboundSink, @unchecked Sendable {
  // Safety of @unchecked Sendable: the `let` properties are Sendable, `links` is a Mutex and `closed` an
  // Atomic; `listener`, `inbound`, the timer and `loopClosed` are touched only on the loop
  // thread (from `start`, `shutDown`, timers and connection callbacks).
  let id: NodeID
  let loop: EventLoop
  let protocolNumber: UInt8
  let environment: any LinkEnvironment
  let mailbox: Mailbox<Envelope<Message>>
  let requests: Mailbox<TCPRequest>
  /// Where peer messages go instead of ``mailbox``, once set (``TCPEndpoint/deliverDirectly(to:)``).
  let directDelivery = Mutex<Handler<[Envelope<Message>], Void>?>(nil)
  /// Offered each client request before ``requests`` (``TCPEndpoint/handleRequestsDirectly(_:)``).
  let directRequests = Mutex<Handler<TCPRequest, Bool>?>(nil)
  /// Told of each peer whose established link failed (``TCPEndpoint/onPeerLost(_:)``).
  let peerLost = Mutex<Handler<NodeID, Void>?>(nil)
  private let links = Mutex(LinkTable<LinkHandle>())
  private let closed = Atomic<Bool>(false)
  private let logger: QuorumLogger

  private var listener: Listener?
  private var inbound: [ObjectIdentifier: InboundConnection<EndpointCore>] = [:]
  private var housekeepingTimer: UInt64?
  private var loopClosed = false
  /// Connections that have not completed the handshake, oldest first, and how many per address.
  private var unauthenticated: [ObjectIdentifier] = []
  private var unauthenticatedByAddress: [String: Int] = [:]
  /// Admitted clients, in all and per address.
  private var clients: Set<ObjectIdentifier> = []
  private var clientsByAddress: [String: Int] = [:]
  /// The admitted connection of each peer.
  private var peers: [NodeID: ObjectIdentifier] = [:]
  /// Refusals logged recently, so a flood makes a few log lines a second, not one per socket.
  private var floodLog = FloodLog()
  let clientReceiveBudget: ReceiveBudget<Connection>
  let clientReplyBudget: SharedReplyBudget
  /// What every send reads, kept here: reading an option through `environment` copies all of them.
  let writesFromSenders: Bool
  let maxFrameBytes: Int
  let metrics: MetricsCounters

  /// Connections that have not completed the handshake (loop thread; for tests).
  var unauthenticatedCount: Int { unauthenticated.count }

  init(id: NodeID, loop: EventLoop, protocolNumber: UInt8, environment: any LinkEnvironment) {
    self.id = id
    self.loop = loop
    self.protocolNumber = protocolNumber
    self.environment = environment
    self.mailbox = Mailbox(capacity: environment.options.inboxCapacity)
    self.requests = Mailbox(capacity: environment.options.requestQueueCapacity)
    self.logger = loop.logger.child(id.description)
    self.clientReceiveBudget = ReceiveBudget(
      limit: environment.options.maxClientReceiveBufferBytes, metrics: environment.metrics)
    self.clientReplyBudget = SharedReplyBudget(
      limit: environment.options.clientReplyLimit, metrics: environment.metrics)
    self.writesFromSenders = environment.options.writesFromSenders
    self.maxFrameBytes = environment.options.maxFrameBytes
    self.metrics = environment.metrics
  }

  var isClosed: Bool { closed.load(ordering: .relaxed) }

  /// Marks the endpoint closed; `false` if it already was.
  func markClosed() -> Bool { !closed.exchange(true, ordering: .acquiringAndReleasing) }

  /// The outbound link to `peer`, created on first use.
  func link(to peer: NodeID) throws(TransportError) -> LinkHandle {
    try links.withLock { (table: inout LinkTable<LinkHandle>) throws(TransportError) -> LinkHandle in
      if let handle = table[peer] { return handle }
      // Checked under the lock that shutDown() takes, so no link is created after the endpoint closed.
      if closed.load(ordering: .acquiring) { throw .closed }
      guard environment.address(of: peer) != nil else { throw .unknownPeer(peer) }
      let link = OutboundLink(
        from: id, to: peer, loop: loop, protocolNumber: protocolNumber, environment: environment,
        lost: { [weak self] peer in self?.peerLost.withLock { $0 }?.call(peer) })
      let handle = LinkHandle(link)
      table.add(handle, for: peer)
      return handle
    }
  }

  // MARK: Loop thread

  func start(listenerFD fd: Int32) -> Bool {
    let listener = Listener(fd: fd, loop: loop) { [unowned self] accepted in accept(accepted) }
    guard listener.start() else { return false }
    self.listener = listener
    scheduleHousekeeping()
    return true
  }

  /// Refuses a just-accepted socket (closing it at once) and records why.
  private func turnAway(_ fd: Int32, remote: String, _ reason: TCPCloseReason) {
    Glibc.close(fd)
    environment.metrics.recordClose(reason)
    floodLog.note(reason.name, logger: logger) { "refused a connection from \(remote): \(reason)" }
  }

  private func accept(_ fd: Int32) {
    let options = environment.options
    let remote = peerName(fd)
    let address = hostPart(remote)
    guard !loopClosed, inbound.count < options.maxConnectionsPerEndpoint else {
      turnAway(fd, remote: remote, .tooManyConnections(limit: options.maxConnectionsPerEndpoint))
      return
    }
    guard unauthenticatedByAddress[address, default: 0] < options.maxUnauthenticatedConnectionsPerAddress else {
      let limit = options.maxUnauthenticatedConnectionsPerAddress
      turnAway(fd, remote: remote, .connectionBudget(.unauthenticatedPerAddress, limit: limit))
      return
    }
    if unauthenticated.count >= options.maxUnauthenticatedConnections, let oldest = unauthenticated.first {
      // Make room by closing the connection that has had the longest to authenticate: a flood of new sockets
      // then cannot keep a real peer's handshake, which takes one round trip, from completing.
      inbound[oldest]?.connection.close(.evicted)
    }
    tune(fd, options: options)
    let connection = Connection(
      loop: loop, fd: fd, remote: remote, maxFrameBytes: TCPFrame.maxHandshakeFrameBytes,
      frameTimeout: options.frameTimeout)
    let handler = InboundConnection(connection: connection, sink: self)
    connection.delegate = handler
    connection.handshakeDeadline = monotonicNanos() &+ options.handshakeTimeout.nanoseconds
    let key = ObjectIdentifier(handler)
    inbound[key] = handler
    unauthenticated.append(key)
    unauthenticatedByAddress[address, default: 0] += 1
    environment.metrics.raise(environment.metrics.largestUnauthenticatedCount, to: unauthenticated.count)
    _ = environment.metrics.connectionsAccepted.add(1, ordering: .relaxed)
    _ = connection.start()
  }

  func admit(_ handler: InboundConnection<EndpointCore>, as identity: RemoteIdentity) -> TCPCloseReason? {
    let options = environment.options
    let key = ObjectIdentifier(handler)
    switch identity {
    case .peer(let node):
      if let previous = peers[node], previous != key, let old = inbound[previous] {
        // The peer dialled again: its older connection is stale (it keeps one link to us).
        old.connection.close(.replaced)
      }
      guard peers.count < options.maxPeerConnections else {
        return .connectionBudget(.peers, limit: options.maxPeerConnections)
      }
      leaveUnauthenticated(handler)
      peers[node] = key
    case .client:
      guard clients.count < options.maxClientConnections else {
        return .connectionBudget(.clients, limit: options.maxClientConnections)
      }
      guard clientsByAddress[handler.address, default: 0] < options.maxClientConnectionsPerAddress else {
        return .connectionBudget(.clientsPerAddress, limit: options.maxClientConnectionsPerAddress)
      }
      leaveUnauthenticated(handler)
      clients.insert(key)
      clientsByAddress[handler.address, default: 0] += 1
    }
    return nil
  }

  private func leaveUnauthenticated(_ handler: InboundConnection<EndpointCore>) {
    let key = ObjectIdentifier(handler)
    guard let index = unauthenticated.firstIndex(of: key) else { return }
    unauthenticated.remove(at: index)
    decrement(&unauthenticatedByAddress, handler.address)
  }

  private func decrement(_ counts: inout [String: Int], _ address: String) {
    let left = counts[address, default: 0] - 1
    counts[address] = left > 0 ? left : nil
  }

  func inboundClosed(_ handler: InboundConnection<EndpointCore>, reason: TCPCloseReason) {
    let key = ObjectIdentifier(handler)
    inbound[key] = nil
    leaveUnauthenticated(handler)
    if clients.remove(key) != nil { decrement(&clientsByAddress, handler.address) }
    if case .peer(let node) = handler.phase, peers[node] == key { peers[node] = nil }
    environment.metrics.recordClose(reason)
    let remote = handler.connection.remote
    let metadata = ["reason": reason.name, "remote": remote]
    switch handler.phase {
    case .awaitingHandshake:
      // Strangers can open sockets by the thousand: their closes are logged through a token bucket.
      floodLog.note(reason.name, logger: logger, level: reason.isProtocolViolation ? .warning : .info) {
        "closed an unauthenticated connection from \(remote): \(reason)"
      }
    case .peer(let node):
      log(reason, "closed the connection from \(node) at \(remote): \(reason)", metadata)
    case .client(let principal, _):
      let who = principal.map { "client '\(logSafe($0, limit: 64))'" } ?? "a client"
      log(reason, "closed the connection of \(who) at \(remote): \(reason)", metadata)
    }
  }

  private func log(_ reason: TCPCloseReason, _ message: String, _ metadata: [String: String]) {
    if reason.isProtocolViolation {
      logger.warning(message, metadata)
    } else if reason != .localShutdown {
      logger.info(message, metadata)
    }
  }

  private func scheduleHousekeeping() {
    let period = min(Duration.milliseconds(50), environment.options.liveness.pingInterval / 2)
    housekeepingTimer = loop.schedule(after: period) { [unowned self] in
      guard !loopClosed else { return }
      let now = monotonicNanos()
      for handler in Array(inbound.values) {
        handler.connection.checkDeadlines(now: now)
        handler.tick(now: now)
      }
      for handle in links.withLock({ $0.handles }) { handle.link.tick(now: now) }
      scheduleHousekeeping()
    }
  }

  /// The latest stalled delivery of each inbound connection that had one. Loop thread.
  func stalledDeliveries() -> [TCPStallSnapshot] { inbound.values.compactMap(\.lastStall) }

  /// The endpoint's state, one line per part, for a failure report. Loop thread.
  func stateReport() -> String {
    var lines = [
      "\(id): mailbox \(mailbox.count)/\(mailbox.capacity) waiting-senders=\(mailbox.waitingSenderCount) "
        + "waiting-receiver=\(mailbox.hasWaitingReceiver) closed=\(mailbox.isClosed); loop: \(loop.stateDescription)"
    ]
    for handler in inbound.values { lines.append("  " + handler.stateDescription) }
    for handle in links.withLock({ $0.handles.sorted { $0.link.to.rawValue < $1.link.to.rawValue } }) {
      lines.append("  " + handle.link.stateDescription)
    }
    return lines.joined(separator: "\n")
  }

  /// Closes the listener. Loop thread.
  func stopListening() {
    listener?.close()
    listener = nil
  }

  /// Closes the listener, every connection and every link. Loop thread.
  func shutDown() {
    guard !loopClosed else { return }
    loopClosed = true
    directDelivery.withLock { $0 = nil }  // A closed endpoint delivers nothing more.
    directRequests.withLock { $0 = nil }
    if let housekeepingTimer { loop.cancelTimer(housekeepingTimer) }
    listener?.close()
    listener = nil
    // Replies queued just before the close still go out (without waiting for a slow reader).
    for handler in Array(inbound.values) { handler.connection.flushAndClose(.localShutdown) }
    inbound = [:]
    let all = links.withLock { table -> [OutboundLink] in
      let all = table.handles.map(\.link)
      table = LinkTable<LinkHandle>()
      return all
    }
    for link in all { link.shutDown() }
  }
}

/// An outbound link and its queue, as the senders find them. A sender retains this, not the link: the link is
/// a connection's (weak) delegate, so the runtime counts its references out of line, and retaining and releasing
/// it on every send cost measurably more than this handle's inline count.
final class LinkHandle: Sendable {
  let link: OutboundLink
  let queue: LinkQueue

  init(_ link: OutboundLink) {
    self.link = link
    self.queue = link.queue
  }
}

/// An endpoint's outbound links (or any values) by peer. Up to ``linearLimit`` of them are found by a linear
/// search: a node has a link per peer, usually a handful, and comparing that many ids costs less than hashing one,
/// which every send did. Past that (a large cluster) a dictionary of positions takes over.
struct LinkTable<Value> {
  /// The most entries searched linearly.
  static var linearLimit: Int { 16 }

  private(set) var peers: [NodeID] = []
  private(set) var handles: [Value] = []
  /// Each peer's position, kept once there are more than ``linearLimit`` entries.
  private var positions: [NodeID: Int] = [:]

  subscript(peer: NodeID) -> Value? {
    if peers.count <= Self.linearLimit {
      guard let index = peers.firstIndex(of: peer) else { return nil }
      return handles[index]
    }
    return positions[peer].map { handles[$0] }
  }

  /// Adds `handle` for `peer`, which has none yet.
  mutating func add(_ handle: Value, for peer: NodeID) {
    peers.append(peer)
    handles.append(handle)
    if peers.count == Self.linearLimit + 1 {
      for (index, known) in peers.enumerated() { positions[known] = index }
    } else if peers.count > Self.linearLimit + 1 {
      positions[peer] = peers.count - 1
    }
  }
}

/// Logs events that strangers can cause by the thousand (refused, evicted or failed connections) through a
/// token bucket per kind: bursts of up to 20 lines, then 5 a second, each line after a gap saying how many
/// were left out. Loop thread only.
struct FloodLog {
  static let burst = 20.0
  static let perSecond = 5.0

  private var buckets: [String: (tokens: Double, updated: UInt64, suppressed: Int)] = [:]

  mutating func note(
    _ kind: String, logger: QuorumLogger, level: LogLevel = .warning, message: () -> String
  ) {
    let now = monotonicNanos()
    var bucket = buckets[kind] ?? (Self.burst, now, 0)
    bucket.tokens = min(Self.burst, bucket.tokens + Double(now &- bucket.updated) / 1e9 * Self.perSecond)
    bucket.updated = now
    if bucket.tokens >= 1 {
      bucket.tokens -= 1
      var text = message()
      if bucket.suppressed > 0 { text += " (\(bucket.suppressed) similar lines left out)" }
      bucket.suppressed = 0
      if level >= .warning { logger.warning(text, ["reason": kind]) } else { logger.info(text, ["reason": kind]) }
    } else {
      bucket.suppressed += 1
    }
    buckets[kind] = bucket
  }
}
