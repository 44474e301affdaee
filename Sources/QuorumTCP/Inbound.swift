import CQuorumSystem
import Glibc
public import QuorumCore
import Synchronization

/// A listening socket on the event loop; hands accepted sockets to its owner.
final class Listener: LoopHandler {
  let fd: Int32
  let loop: EventLoop
  private var token: UInt64 = 0
  private var closed = false
  private let onAccept: (Int32) -> Void

  init(fd: Int32, loop: EventLoop, onAccept: @escaping (Int32) -> Void) {
    self.fd = fd
    self.loop = loop
    self.onAccept = onAccept
  }

  func start() -> Bool {
    guard let token = loop.register(fd, self, events: CQ_EPOLLIN) else { return false }
    self.token = token
    return true
  }

  func handle(events: UInt32) {
    while !closed {
      let accepted = cq_accept(fd)
      if accepted >= 0 {
        onAccept(accepted)
        continue
      }
      let code = errno
      if code == EINTR || code == ECONNABORTED { continue }
      if code == EMFILE || code == ENFILE || code == ENOBUFS || code == ENOMEM {
        // Out of descriptors: stop accepting for a moment instead of spinning on a readable listener.
        loop.logger.error("accept failed: \(errnoDescription(code)); pausing the listener for 100 ms")
        loop.unregister(fd, token: token, keepHandler: true)
        loop.schedule(after: .milliseconds(100)) { [self] in
          if !closed { _ = loop.reregister(fd, token: token, events: CQ_EPOLLIN) }
        }
      }
      return
    }
  }

  func loopDidShutDown() { close() }

  func close() {
    guard !closed else { return }
    closed = true
    if token != 0 { loop.unregister(fd, token: token) }
    Glibc.close(fd)
  }
}

/// A request from a client connection, delivered through ``TCPEndpoint/requests``. Answer it exactly once
/// with ``respond(_:)``; the reply goes back on the connection it came from (if that is still open).
public struct TCPRequest: Sendable {
  /// The request bytes, as the client sent them.
  public let body: [UInt8]
  /// The client's address, for logs.
  public let remote: String
  /// The principal the client authenticated as, or `nil` on a node that runs without authentication.
  public let principal: String?
  /// What the principal may do (``QuorumCore/ClientRole/admin`` on a node that runs without authentication:
  /// nothing was checked). Deciding what a role allows is the request handler's business.
  public let role: ClientRole
  let id: UInt64
  let route: ReplyRoute

  init(body: [UInt8], remote: String, principal: String?, role: ClientRole, id: UInt64, route: ReplyRoute) {
    self.body = body
    self.remote = remote
    self.principal = principal
    self.role = role
    self.id = id
    self.route = route
  }

  /// Sends `reply` to the client. Never blocks: when the connection is idle the reply is written to the socket
  /// at once, from the caller's thread; otherwise — or when the caller runs on the event loop's own thread — it
  /// is queued to the event loop.
  public func respond(_ reply: [UInt8]) {
    let (node, id) = (route.node, id)
    // Encoded straight into the connection's reply queue: no frame buffer of its own.
    route.send { buffer in
      TCPFrame.append(
        RPCPayload(id: id, body: reply), from: node, to: .none, group: .default, protocolNumber: WireProtocol.client,
        to: &buffer)
    }
  }
}

/// A callback held in a class, so that reading it out of a `Mutex` is a reference copy. A closure stored in a
/// `Mutex` directly is re-wrapped in a reabstraction thunk by every `withLock` that reads it, and the chain of
/// thunks grows with each call (measured: 40 % of a server's CPU after a few seconds of requests).
final class Handler<Input, Output>: Sendable {
  let call: @Sendable (Input) -> Output

  init(_ call: @escaping @Sendable (Input) -> Output) { self.call = call }
}

/// The reply bytes not yet written to all of an endpoint's client connections
/// (``TCPTransportOptions/maxClientReplyBytes``): each connection's reply queue charges it as responders queue
/// replies (any thread), and keeps them charged in the event loop's write batch, or as the rest of a responder's
/// partial write, until they are written to the socket or dropped with a closed connection.
final class SharedReplyBudget: Sendable {
  /// A reply this small to a connection with nothing queued is admitted past the limit: a client that reads its
  /// replies is not cut off by the backlog of others. So the total is at most twice the limit (see
  /// ``withinFairShare(_:)``) plus twice this much per client (one such reply queued, one in the loop's write batch
  /// or left over from a responder's own write), and the codes added as replies are sealed.
  static let alwaysAdmittedBytes = 64 << 10

  let limit: Int
  private let used = Atomic<Int>(0)
  /// The client connections charging it.
  let members = Atomic<Int>(0)
  private let metrics: MetricsCounters?

  init(limit: Int, metrics: MetricsCounters? = nil) {
    self.limit = max(1, limit)
    self.metrics = metrics
  }

  /// The bytes queued now.
  var bytes: Int { used.load(ordering: .relaxed) }

  /// Charges `size` bytes to a connection that holds `queued` already, if the total stays within the limit, or the
  /// connection's own stays within its fair share (``withinFairShare(_:)``) and the total within twice the limit,
  /// or `always`; returns whether it did.
  func charge(_ size: Int, queued: Int = 0, always: Bool) -> Bool {
    let fair = !always && withinFairShare(queued + size)
    // A fair share is admitted past the limit, up to twice the limit: shares are judged against the connections of
    // the moment, so connections that join one by one, each filling its share, would otherwise reach about
    // limit × ln(connections).
    let twice = limit.multipliedReportingOverflow(by: 2)
    let ceiling = always ? Int.max : (fair ? (twice.overflow ? Int.max : twice.partialValue) : limit)
    var current = used.load(ordering: .relaxed)
    while true {
      if size > ceiling &- current { return false }
      let (exchanged, original) = used.compareExchange(
        expected: current, desired: current + size, ordering: .relaxed)
      if exchanged {
        if let metrics { metrics.raise(metrics.largestQueuedClientReplies, to: current + size) }
        return true
      }
      current = original
    }
  }

  /// Whether `bytes` of replies queued for one connection are within its fair share of the limit (the limit divided
  /// by the endpoint's client connections). Such a connection is admitted past the limit, so that when the budget
  /// is full the refusal (a close) falls on the connections holding more than their share, not on one that happens
  /// to get a reply next: a few clients that stop reading cannot get the others, which read their replies,
  /// disconnected. Such admissions stop at twice the limit (``charge(_:queued:always:)``), so the total stays under
  /// twice the limit plus twice ``alwaysAdmittedBytes`` per connection.
  func withinFairShare(_ bytes: Int) -> Bool {
    let (product, overflow) = bytes.multipliedReportingOverflow(by: max(1, members.load(ordering: .relaxed)))
    return !overflow && product <= limit
  }

  /// Gives back `size` bytes charged earlier.
  func credit(_ size: Int) {
    if size > 0 { _ = used.subtract(size, ordering: .relaxed) }
  }

  /// Turns a charge of `old` bytes into one of `new`: what they became (sealed, or partly written). Growth is
  /// charged whatever the total, as the bytes exist already.
  func recharge(from old: Int, to new: Int) {
    if new > old {
      _ = charge(new - old, always: true)
    } else {
      credit(old - new)
    }
  }

  /// Whether `queued` bytes of replies (one connection's) should stop its requests being read: half the limit or
  /// more is queued in all, and this connection holds at least the average of the clients'.
  func holdsBack(queued: Int) -> Bool {
    guard queued > 0 else { return false }
    let total = bytes
    guard total >= limit / 2 else { return false }
    let (product, overflow) = queued.multipliedReportingOverflow(by: max(1, members.load(ordering: .relaxed)))
    return overflow || product >= total
  }
}

/// Where replies to a client connection go.
protocol ReplyTarget: AnyObject {
  /// Replies were queued in the route's ``ReplyRoute/queue``: write them.
  func flushReplies()
  /// A reply did not fit in the route's queue: the client is not reading its replies.
  func repliesOverflowed()
}

/// The way back to a client connection: a ``LinkQueue`` of replies that the responder writes to the idle
/// socket itself, or that the loop drains.
final class ReplyRoute: @unchecked Sendable {
  // Safety of @unchecked Sendable: `target` is read only on the event loop's thread (inside
  // `loop.execute`), where the connection it points to lives; `queue` is synchronised; the other properties
  // are immutable.
  let loop: EventLoop
  let node: NodeID
  let writesFromResponders: Bool
  let metrics: MetricsCounters
  weak var target: (any ReplyTarget)?
  /// Replies not yet written: at most ``TCPTransportOptions/maxInflightRequestsPerConnection`` of them (one per
  /// request), and at most `maxBytes` bytes (a reply larger than that alone excepted). In-flight requests alone
  /// would not bound the bytes: a client may pipeline a thousand reads of large values and read nothing.
  let queue: LinkQueue

  init(
    loop: EventLoop, node: NodeID, writesFromResponders: Bool, quietNanos: UInt64, maxBytes: Int,
    metrics: MetricsCounters, shared: SharedReplyBudget? = nil, target: any ReplyTarget
  ) {
    self.queue = LinkQueue(maxFrames: .max, maxBytes: maxBytes, quietNanos: quietNanos, shared: shared)
    self.loop = loop
    self.node = node
    self.writesFromResponders = writesFromResponders
    self.metrics = metrics
    self.target = target
  }

  /// Writes the frame `encode` appends (length prefix included) to the idle socket, or queues it for the loop
  /// (``LinkQueue/send(peer:writeIfIdle:maxBody:encode:)``). A responder on the loop's own thread (a replica
  /// answering in its turn) always queues: the loop writes the replies every turn of its pass made on this
  /// connection (one client process's many requests) together, after them.
  func send(encode: (inout [UInt8]) -> Void) {
    let outcome: LinkQueue.Outcome
    do {
      outcome = try queue.send(
        peer: .none, writeIfIdle: writesFromResponders && !loop.isCurrentThread, encode: encode)
    } catch .queueFull {
      // Past the connection's reply budget, or the endpoint's (``SharedReplyBudget``): the client stopped reading,
      // or others did. It is disconnected (as by ``TCPCloseReason/slowReader(pendingBytes:)``), which ends its
      // requests; the reply is dropped with it, so the client sees a lost connection, not a missing answer.
      loop.execute { [self] in target?.repliesOverflowed() }
      return
    } catch {
      return  // The connection closed: the reply has nowhere to go.
    }
    metrics.recordSenderWrite(outcome, peerFrame: false)
    // The replies this call wrote (its own, cut short or not, and those other responders queued behind it) are
    // counted in the queue, under its lock (``LinkQueue/takeWrittenBySenders()``): the loop never takes them.
    if outcome.needsWake { loop.execute { [self] in target?.flushReplies() } }
  }

  /// Makes `connection` the route's way out: responders write to its socket while it is idle (sealing with
  /// `sealer`), and the loop moves the queued replies into its write batch (``take(into:)``). Replies stay charged to
  /// the shared budget until written to the socket: in the batch until the connection reports them written, and
  /// whatever is left when it closes is given back as the queue closes with it; then `closed` runs. Loop thread.
  func bind(to connection: Connection, sealer: FrameSealer?, closed: @escaping () -> Void) {
    let queue = self.queue
    queue.attach(fd: connection.fd, sealer: sealer)
    connection.didWrite = { pending in queue.loopBatchHolds(pending) }
    connection.willClose = {
      queue.close()
      closed()
    }
  }

  /// Moves queued replies (about 256 KiB, or one larger reply) into `connection`'s write batch, which must hold
  /// nothing else after them that is not charged to the shared budget (see ``bind(to:sealer:closed:)``); returns
  /// the frames and bytes moved. Loop thread.
  func take(into connection: Connection) -> (frames: Int, bytes: Int) {
    var taken = (frames: 0, bytes: 0)
    connection.enqueue { buffer in taken = queue.take(into: &buffer, budget: 256 << 10) }
    return taken
  }
}

/// The part of an endpoint the inbound connections talk to. Loop thread only.
protocol InboundSink: AnyObject, SendableMetatype {
  associatedtype Message: WireCodable & Sendable
  var id: NodeID { get }
  var loop: EventLoop { get }
  var protocolNumber: UInt8 { get }
  var environment: any LinkEnvironment { get }
  var mailbox: Mailbox<Envelope<Message>> { get }
  /// Takes peer messages instead of ``mailbox`` when set.
  var directDelivery: Mutex<Handler<[Envelope<Message>], Void>?> { get }
  /// Offered each client request before ``requests`` when set.
  var directRequests: Mutex<Handler<TCPRequest, Bool>?> { get }
  var requests: Mailbox<TCPRequest> { get }
  /// The budget client connections charge their partly received frames to.
  var clientReceiveBudget: ReceiveBudget<Connection> { get }
  /// The budget client connections charge their queued replies to.
  var clientReplyBudget: SharedReplyBudget { get }
  /// Admits a connection that proved `identity` (moving it to that budget), or says why not.
  func admit(_ handler: InboundConnection<Self>, as identity: RemoteIdentity) -> TCPCloseReason?
  func inboundClosed(_ handler: InboundConnection<Self>, reason: TCPCloseReason)
}

/// An accepted connection: runs the listener's side of the handshake, then decodes peer frames into the
/// endpoint's mailbox (acknowledging the dialler's pings) or client requests into its request queue. Loop
/// thread only.
final class InboundConnection<Sink: InboundSink>: ConnectionDelegate, ReplyTarget {
  enum Phase: Equatable {
    case awaitingHandshake
    case peer(NodeID)
    case client(principal: String?, role: ClientRole)
  }

  let connection: Connection
  /// The remote host (without the port), the key of per-address budgets.
  let address: String
  private unowned let sink: Sink
  /// The sink's node, protocol number and frame limit, copied here: a peer frame checks all three, and reading
  /// them through the unowned `sink` costs a reference check each time.
  private let localID: NodeID
  private let peerProtocol: UInt8
  private let peerLimits: WireLimits
  private(set) var phase = Phase.awaitingHandshake
  private var handshake: ListenerHandshake?
  private var session: TCPSession?
  private var batch: [Envelope<Sink.Message>] = []
  /// `batch.count`, kept alongside: reading the generic array's count looks up its type's metadata each time.
  private var batchCount = 0
  private var waitingForRoom = false
  /// The latest delivery that waited for room in the mailbox (for a failure report).
  private var stall: StallProgress?
  /// The task delivering what waited for room; cancelled when the connection closes (see
  /// ``connection(_:didCloseWith:)``).
  private var stallTask: Task<Void, Never>?
  private var pendingRequest: TCPRequest?
  private var inflight = 0
  private var route: ReplyRoute?
  private var framesSinceReport = 0
  private var bytesSinceReport = 0
  /// Frames received on a peer connection (acknowledged to the dialler).
  private var framesReceived: UInt64 = 0
  private var lastHeard: UInt64 = 0
  private var lastAcknowledged: UInt64 = 0
  private var lastTick: UInt64 = 0

  init(connection: Connection, sink: Sink) {
    self.connection = connection
    self.address = hostPart(connection.remote)
    self.sink = sink
    self.localID = sink.id
    self.peerProtocol = sink.protocolNumber
    self.peerLimits = WireLimits(maxBytesLength: sink.environment.options.maxFrameBytes)
  }

  var isStalled: Bool { waitingForRoom || pendingRequest != nil }

  // MARK: ConnectionDelegate

  func connectionDidConnect(_ connection: Connection) {}

  func connectionDidDrain(_ connection: Connection) {
    connection.resume(.replies)
    // Replies queued meanwhile go next; with none, responders may write to the socket themselves again.
    takeReplies()
    applySharedReplyBudget()
  }

  func connection(_ connection: Connection, didCloseWith reason: TCPCloseReason) {
    // Frames that arrived before the close still count: deliver what fits. What waits for room is dropped, as
    // if lost with the connection: the peer's next connection delivers newer frames, and these must not be
    // admitted after them (a peer's messages arrive in the order sent, or not at all).
    deliverBatch()
    stallTask?.cancel()
    reportCounts()
    var reason = reason
    if let abandoned = handshake?.reasonIfAbandoned, reason == .peerClosed || reason.name == "bad-handshake" {
      reason = abandoned
    }
    handshake = nil
    sink.inboundClosed(self, reason: reason)
  }

  func connection(_ connection: Connection, didReceive bytes: [UInt8], range: Range<Int>) -> FrameVerdict {
    framesSinceReport += 1
    bytesSinceReport += range.count + TCPFrame.prefixBytes
    if framesSinceReport >= 256 { reportCounts() }
    switch phase {
    case .awaitingHandshake: return handshakeFrame(bytes, range)
    case .peer(let node):
      // A peer frame in the same read as the handshake's last: the one frame, taken as a read's are.
      var frame = FrameCursor(bytes: bytes, start: range.lowerBound - TCPFrame.prefixBytes, end: range.upperBound)
      return peerFrames(&frame, from: node)
    case .client(let principal, let role):
      guard let body = open(bytes, range) else { return .close(authenticationFailure) }
      return clientFrame(bytes, body, principal: principal, role: role)
    }
  }

  /// A peer's frames, in one loop over the read: what does not change from frame to frame is read once per
  /// read, and no frame goes through the delegate's witness. Other phases take their frames one at a time.
  func connection(_ connection: Connection, didReceive frames: inout FrameCursor) -> FrameVerdict {
    guard case .peer(let node) = phase else { return receiveEach(connection, &frames) }
    let start = frames.offset
    let verdict = peerFrames(&frames, from: node)
    framesSinceReport += frames.taken
    bytesSinceReport += frames.offset - start
    // A close inside the loop (a failed acknowledgement) reported the counts before these were added.
    if framesSinceReport >= 256 || connection.isClosed { reportCounts() }
    return verdict
  }

  /// Decodes a peer's frames into the batch, delivering it whenever it fills. The batch and its count are held
  /// in locals for the loop (each access to them as properties is checked for exclusivity at run time).
  private func peerFrames(_ frames: inout FrameCursor, from node: NodeID) -> FrameVerdict {
    let limit = connection.maxFrameBytes  // fixed once the handshake is done
    // When the read that brought the frames began: no clock read per frame. Never backwards: frames left over
    // from before a pause are parsed when reading resumes, after a tick has moved `lastHeard` past that read.
    lastHeard = max(lastHeard, connection.lastReceived)
    var batch: [Envelope<Sink.Message>] = []
    swap(&batch, &self.batch)
    var count = batchCount
    var verdict = FrameVerdict.proceed
    while let range = frames.next(limit: limit) {
      verdict = peerFrame(frames.bytes, sealed: range, from: node, into: &batch, count: &count)
      guard case .proceed = verdict else { break }
      if count >= Self.maxBatch {
        swap(&batch, &self.batch)
        batchCount = count
        deliverBatch()
        swap(&batch, &self.batch)
        count = batchCount
        if waitingForRoom {
          verdict = .pause
          break
        }
      }
    }
    swap(&batch, &self.batch)
    batchCount = count
    return verdict
  }

  /// The body of a received frame: the frame itself, or on an authenticated connection the frame without its
  /// code, once the code is checked; `nil` if it is not the sender's (then ``authenticationFailure`` says which).
  private func open(_ bytes: [UInt8], _ sealed: Range<Int>) -> Range<Int>? {
    guard session != nil else { return sealed }
    return session?.opener.open(bytes, range: sealed)
  }

  /// Why the frame ``open(_:_:)`` refused closes the connection: its sequence number (the opener's count of frames
  /// opened, which a failed frame does not advance).
  private var authenticationFailure: TCPCloseReason {
    .frameAuthenticationFailed(sequence: session?.opener.sequence ?? 0)
  }

  private func reportCounts() {
    guard framesSinceReport > 0 else { return }
    let metrics = sink.environment.metrics
    _ = metrics.framesReceived.add(framesSinceReport, ordering: .relaxed)
    _ = metrics.bytesReceived.add(bytesSinceReport, ordering: .relaxed)
    framesSinceReport = 0
    bytesSinceReport = 0
  }

  /// Queues `frame` (length prefix included), with its code on an authenticated connection.
  private func transmit(_ frame: [UInt8]) {
    if session == nil {
      connection.enqueue(frame)
    } else {
      connection.enqueue { buffer in session?.sealer.append(frame, to: &buffer) }
    }
  }

  // MARK: Handshake

  private func handshakeFrame(_ bytes: [UInt8], _ range: Range<Int>) -> FrameVerdict {
    if handshake == nil {
      let environment = sink.environment
      var random = [UInt8](repeating: 0, count: 2 * TCPHandshake.nonceByteCount)
      if environment.security.isAuthenticated {
        do {
          random = try SecureRandom.bytes(count: random.count)
        } catch {
          return .close(.ioError(operation: "read \(SecureRandom.devicePath)", errno: error.errorNumber))
        }
      }
      let policy = ListenerPolicy(
        cluster: environment.cluster, node: sink.id, peerProtocol: sink.protocolNumber,
        serveClients: environment.options.serveClients, security: environment.security,
        admitsPeer: { node in environment.options.acceptUnknownPeers || environment.address(of: node) != nil },
        groupTableDigest: environment.options.groupTableDigest)
      handshake = ListenerHandshake(policy: policy, random: random)
    }
    guard var handshake else { return .close(.localShutdown) }
    let step = handshake.receive(bytes, range)
    self.handshake = handshake
    switch step {
    case .send(let frame):
      connection.enqueue(frame)
      connection.flushSoon()
      return .proceed
    case .refuse(let frame, let reason):
      return refuse(frame, reason)
    case .verified(let identity):
      if let refusal = sink.admit(self, as: identity) {
        return refuse(handshake.refusal(refusal.publicDescription), refusal)
      }
      let (welcome, session) = handshake.welcome()
      self.handshake = nil
      self.session = session
      let options = sink.environment.options
      connection.handshakeDeadline = nil
      connection.maxFrameBytes = options.maxFrameBytes + (session == nil ? 0 : TCPFrame.tagBytes)
      switch identity {
      case .peer(let node):
        phase = .peer(node)
        connection.reservesAnnouncedFrames = true
        lastHeard = monotonicNanos()
        lastTick = lastHeard
      case .client(let principal, let role):
        phase = .client(principal: principal, role: role)
        connection.receiveBudget = sink.clientReceiveBudget
        connection.budgetWaitTimeoutNanos = options.receiveBudgetWait.nanoseconds
        connection.writeStallTimeoutNanos = options.frameTimeout.nanoseconds
      }
      connection.enqueue(welcome)
      if case .client = phase {
        // Replies go through the route's queue, which seals them from here on. The welcome is in the loop's
        // buffer, so no reply can pass it.
        let route = ReplyRoute(
          loop: sink.loop, node: sink.id, writesFromResponders: options.writesFromSenders,
          quietNanos: options.senderWriteQuietNanos, maxBytes: options.replyQueueBytes,
          metrics: sink.environment.metrics, shared: sink.clientReplyBudget, target: self)
        let shared = sink.clientReplyBudget
        _ = shared.members.add(1, ordering: .relaxed)
        route.bind(to: connection, sealer: session?.sealer) { _ = shared.members.subtract(1, ordering: .relaxed) }
        self.route = route
      }
      connection.flushSoon()
      return .proceed
    }
  }

  /// Sends the refusal, then closes (the close is logged by the endpoint with the reason).
  private func refuse(_ frame: [UInt8], _ reason: TCPCloseReason) -> FrameVerdict {
    handshake = nil
    if !frame.isEmpty { connection.enqueue(frame) }
    connection.flushAndClose(reason)
    return .close(reason)
  }

  // MARK: Liveness

  private func control(_ bytes: [UInt8], _ range: Range<Int>) -> FrameVerdict {
    let control: LinkControl
    do {
      control = try LinkControl(bytes, range: range)
    } catch {
      return .close(.malformedFrame(logSafe("link control: \(error)")))
    }
    guard case .ping = control else { return .close(.malformedFrame("an acknowledgement sent to the listener")) }
    acknowledge()
    return .proceed
  }

  /// Sends an acknowledgement at once (not at the end of the loop's batch of events): a loop busy reading a
  /// long backlog must still be heard by the dialler.
  private func acknowledge() {
    lastAcknowledged = monotonicNanos()
    transmit(LinkControl.acknowledgement(framesReceived).frame)
    connection.flush()
  }

  /// Periodic checks (called by the endpoint's housekeeping): acknowledgements while reading is paused (so
  /// the dialler does not take back-pressure for a dead link), silent peers, idle clients.
  func tick(now: UInt64) {
    guard !connection.isClosed else { return }
    let options = sink.environment.options
    switch phase {
    case .awaitingHandshake: break
    case .peer:
      // Time this loop did not run is not the peer's silence (see OutboundLink.tick).
      let gap = now &- lastTick
      lastTick = now
      lastHeard &+= options.liveness.stallCreditNanos(gapNanos: gap)
      if connection.isPaused {
        // Reading is paused by this side's own back-pressure: the peer cannot be heard, so its silence is
        // counted from when reading resumes, not from the last frame before the pause.
        lastHeard = now
        if now >= lastAcknowledged &+ options.liveness.pingInterval.nanoseconds { acknowledge() }
      } else if now >= lastHeard &+ 2 * options.liveness.timeout.nanoseconds {
        connection.readPending()
        if !connection.isClosed, now >= lastHeard &+ 2 * options.liveness.timeout.nanoseconds {
          connection.close(.linkStalled(silentMilliseconds: Int((now &- lastHeard) / 1_000_000)))
        }
      }
    case .client:
      settleDirectReplies()
      // A safety net for the back-pressure of the endpoint's reply budget. A pause for it is checked again on this
      // connection's own events (replies taken, written or drained), and the invariant that keeps those coming is:
      // a connection paused for `.sharedReplies` holds replies not yet written (``SharedReplyBudget/holdsBack(queued:)``
      // holds back none that holds nothing), and such replies always have a write or a wake-up of the loop pending.
      // Were that ever broken, the connection would sit paused until its idle timeout. Checked again here every
      // housekeeping tick (a load and a compare while the total is under half), which also lets a client whose
      // replies drain slowly go on as soon as the total falls under half, not only once its own replies drained.
      if connection.isReadingPaused(for: .sharedReplies) { applySharedReplyBudget() }
      if inflight == 0, connection.pendingWriteBytes == 0,
        now >= connection.lastReceived &+ options.clientIdleTimeout.nanoseconds
      {
        connection.close(.idleTimeout)
      }
    }
  }

  // MARK: Peer frames

  /// Decodes a peer's frame into the batch delivered at the end of this read (see ``connectionDidParse(_:)``).
  /// The header is checked before the payload is read, and the payload is decoded and collected by the message
  /// type's own specialised code (``QuorumCore/WireDecodable/decodeEnvelope(_:payloadFrom:appendingTo:)``).
  private func peerFrame(
    _ bytes: [UInt8], sealed: Range<Int>, from node: NodeID, into batch: inout [Envelope<Sink.Message>],
    count: inout Int
  ) -> FrameVerdict {
    guard let range = open(bytes, sealed) else { return .close(authenticationFailure) }
    framesReceived &+= 1
    if LinkControl.isControl(bytes, range) {
      // Acknowledging writes at once, and a failed write closes the connection, which delivers the batch: it is
      // put back where the close finds it.
      swap(&batch, &self.batch)
      batchCount = count
      let verdict = control(bytes, range)
      count = batchCount
      swap(&batch, &self.batch)
      return connection.isClosed ? .pause : verdict
    }
    do throws(WireError) {
      var reader = WireReader(bytes, range: range, limits: peerLimits)
      let header = try WireEnvelope.decodeHeader(from: &reader)
      guard header.protocolNumber == peerProtocol else {
        // The protocol number is the fourth byte of the header.
        throw WireError(
          .unknownTag(type: "protocol", tag: UInt64(header.protocolNumber)), at: range.lowerBound + 3,
          path: ["header"])
      }
      guard header.from == node else {
        return .close(.malformedFrame("a frame from \(header.from) on the connection of \(node)"))
      }
      guard header.to == localID else {
        return .close(.malformedFrame("a frame addressed to \(header.to) arrived at \(localID)"))
      }
      try Sink.Message.decodeEnvelope(header, payloadFrom: &reader, appendingTo: &batch)
      count += 1
    } catch {
      // A message type's own decodeEnvelope that appended before it threw must not get its envelope delivered.
      if batch.count > count { batch.removeLast(batch.count - count) }
      if case .unsupportedVersion(let version) = error.kind { return .close(.unsupportedVersion(version)) }
      return .close(.malformedFrame(logSafe("\(error)")))
    }
    return .proceed
  }

  /// Frames delivered to the mailbox at once, at most.
  static var maxBatch: Int { 4096 }

  /// Hands the frames collected from one read to the mailbox back to back, so a waiting consumer woken by
  /// the first finds the rest already queued (one wake-up per read rather than per frame). What does not fit
  /// waits in a suspended `Mailbox.send` (admitted exactly when the consumer makes room) with reading
  /// paused, so the senders' TCP windows and then their queues fill up: back-pressure, nothing dropped.
  private func deliverBatch() {
    guard batchCount > 0 else { return }
    batchCount = 0
    if let handler = sink.directDelivery.withLock({ $0 }) {
      handler.call(batch)
      batch.removeAll(keepingCapacity: batch.capacity <= Self.maxBatch)
      return
    }
    let mailbox = sink.mailbox
    do {
      // Moved, not copied: what the mailbox takes leaves `batch`, and what is left is the rest, in order.
      _ = try mailbox.trySend(movingFrom: &batch, using: Sink.Message.moveEnvelopes)
      if !batch.isEmpty {
        let rest = batch
        waitingForRoom = true
        connection.pauseReading()
        let back = LoopReference(self)
        let loop = sink.loop
        let progress = StallProgress(waiting: rest.count)
        stall = progress
        // The task runs on this loop's thread, not on Swift's cooperative pool: a consumer that takes an
        // element admits the next one and wakes the loop, which refills the mailbox while the consumer drains
        // it. On the pool, every mailbox-full of frames would wait for a pool thread, and a busy pool (a
        // parallel test run on two cores) slowed delivery to a few frames a second.
        stallTask = Task(executorPreference: loop) {
          progress.stage.store(StallProgress.sending, ordering: .relaxed)
          progress.note(onLoopThread: loop.isCurrentThread)
          // The first frame waits for room; the ones after it go in with it, as many as that room holds (moved,
          // under one lock), so a consumer that takes a batch at a time lets in a batch at a time, not one frame
          // per suspension. A cancelled delivery (its connection closed) stops before its next frame, and a
          // frame waiting for room is withdrawn.
          var pending = rest
          while let first = pending.first, !Task.isCancelled {
            guard (try? await mailbox.send(first)) != nil else { break }
            pending.removeFirst()
            var admitted = 1
            if !Task.isCancelled,
              let more = try? mailbox.trySend(movingFrom: &pending, using: Sink.Message.moveEnvelopes)
            {
              admitted += more
            }
            _ = progress.delivered.add(admitted, ordering: .relaxed)
            progress.note(onLoopThread: loop.isCurrentThread)
          }
          let undelivered = pending.count
          progress.stage.store(StallProgress.handedBack, ordering: .relaxed)
          loop.execute { back.value?.stallResolved(undelivered: undelivered) }
        }
      }
    } catch {
      _ = sink.environment.metrics.framesDropped.add(batch.count, ordering: .relaxed)
    }
    batch.removeAll(keepingCapacity: batch.capacity <= Self.maxBatch)
  }

  func connectionDidParse(_ connection: Connection) {
    deliverBatch()
    // While frames arrive, acknowledge every half ping interval: a dialler whose ping waits behind a backlog
    // of frames still hears that its link is alive.
    if case .peer = phase, !connection.isClosed,
      monotonicNanos() >= lastAcknowledged &+ sink.environment.options.liveness.pingInterval.nanoseconds / 2
    {
      acknowledge()
    }
  }

  // MARK: Client frames

  private func clientFrame(_ bytes: [UInt8], _ range: Range<Int>, principal: String?, role: ClientRole)
    -> FrameVerdict
  {
    let envelope: Envelope<RPCPayload>
    do {
      let limits = WireLimits(maxBytesLength: sink.environment.options.maxFrameBytes)
      envelope = try WireEnvelope.decode(
        RPCPayload.self, from: bytes, range: range, expectedProtocol: WireProtocol.client, limits: limits)
    } catch {
      if case .unsupportedVersion(let version) = error.kind { return .close(.unsupportedVersion(version)) }
      return .close(.malformedFrame(logSafe("\(error)")))
    }
    guard let route else { return .close(.localShutdown) }
    let request = TCPRequest(
      body: envelope.payload.body, remote: connection.remote, principal: principal, role: role,
      id: envelope.payload.id, route: route)
    settleDirectReplies()
    inflight += 1
    if let handler = sink.directRequests.withLock({ $0 }), handler.call(request) {
      return pauseIfFull()
    }
    do {
      try sink.requests.trySend(request)
    } catch .full {
      pendingRequest = request
      let requests = sink.requests
      let back = LoopReference(self)
      let loop = sink.loop
      Task(executorPreference: loop) {  // on the loop's thread, as in deliverBatch()
        let delivered = (try? await requests.send(request)) != nil
        loop.execute { back.value?.stallResolved(undelivered: delivered ? 0 : 1) }
      }
      return .pause
    } catch {
      inflight -= 1
      return .close(.localShutdown)
    }
    return pauseIfFull()
  }

  /// Pauses reading at the in-flight limit. While paused, replies come through the loop (``flushReplies()``),
  /// which resumes reading as they end requests.
  private func pauseIfFull() -> FrameVerdict {
    guard inflight >= sink.environment.options.maxInflightRequestsPerConnection else { return .proceed }
    route?.queue.hold(true)
    settleDirectReplies()
    guard inflight >= sink.environment.options.maxInflightRequestsPerConnection else {
      route?.queue.hold(false)
      return .proceed
    }
    return .pause
  }

  /// Counts the replies responders wrote themselves as ended requests.
  private func settleDirectReplies() {
    guard let route else { return }
    inflight -= route.queue.takeWrittenBySenders()
  }

  /// Writes the queued replies (see ``ReplyRoute``).
  func flushReplies() {
    if connection.pendingWriteBytes > 0 {
      // The loop is still writing earlier bytes: it takes the replies when they drain.
      connection.flushSoon()
      applySharedReplyBudget()
      return
    }
    takeReplies()
  }

  /// Back-pressure from the endpoint's reply budget (``TCPTransportOptions/maxClientReplyBytes``): once half of it is
  /// held, a client whose replies not yet written (queued, or in the loop's write batch) are at least the average of
  /// all clients' is not read from (its further requests would only add to them) until they drain, it falls under
  /// the average, or the total under half.
  private func applySharedReplyBudget() {
    guard !connection.isClosed, let route else { return }
    // The common case first, with no lock: under half the budget queued and this connection not paused for it.
    let budget = sink.clientReplyBudget
    guard budget.bytes >= budget.limit / 2 || connection.isReadingPaused(for: .sharedReplies) else { return }
    if budget.holdsBack(queued: route.queue.chargedBytes) {
      connection.pause(.sharedReplies)
    } else {
      connection.resume(.sharedReplies)
    }
  }

  /// Moves the queued replies into the (empty) write batch.
  private func takeReplies() {
    guard !connection.isClosed, let route else { return }
    let taken = route.take(into: connection)
    if taken.bytes > 0 { repliesTaken(taken.frames) }
  }

  /// `count` replies moved into the write batch. Replies waiting to be written count against the connection:
  /// past ``TCPTransportOptions/replyPauseBytes`` no more requests are read until they drain, and past
  /// ``TCPTransportOptions/maxReplyBytesPerConnection`` the client is taken to have stopped reading and is
  /// disconnected.
  private func repliesTaken(_ count: Int) {
    guard !connection.isClosed else { return }
    settleDirectReplies()
    inflight -= count
    let options = sink.environment.options
    // The write batch past the close limit: the client has stopped reading it. The replies queued behind it are
    // bounded more loosely (a burst of replies is queued before any is written).
    let batch = connection.pendingWriteBytes
    let pending = measuredReplyBacklog()
    if batch >= options.replyCloseBytes || pending >= options.replyQueueBytes {
      connection.close(.slowReader(pendingBytes: pending))
      return
    }
    if batch >= options.replyPauseBytes { connection.pause(.replies) }
    applySharedReplyBudget()
    connection.flushSoon()
    if connection.isReadingPaused && !isStalled && inflight < options.maxInflightRequestsPerConnection {
      route?.queue.hold(false)
      connection.resumeReading()
    }
  }

  /// A reply found the route's queue full (four times ``TCPTransportOptions/maxReplyBytesPerConnection``): the
  /// client is disconnected as a slow reader.
  func repliesOverflowed() {
    guard !connection.isClosed else { return }
    connection.close(.slowReader(pendingBytes: measuredReplyBacklog()))
  }

  /// The reply bytes waiting to be written, in the write batch and queued behind it, recorded in the metrics.
  private func measuredReplyBacklog() -> Int {
    let backlog = connection.pendingWriteBytes + (route?.queue.queuedBytes ?? 0)
    let metrics = sink.environment.metrics
    metrics.raise(metrics.largestReplyBacklog, to: backlog)
    return backlog
  }

  /// The latest delivery that waited for room, if any (loop thread).
  var lastStall: TCPStallSnapshot? { stall?.snapshot }

  /// The connection's state in one line, for a failure report (loop thread).
  var stateDescription: String {
    let phase: String
    switch self.phase {
    case .awaitingHandshake: phase = "awaiting handshake"
    case .peer(let node): phase = "peer \(node)"
    case .client: phase = "client"
    }
    return "inbound from \(connection.remote) (\(phase)): waiting-for-room=\(waitingForRoom) "
      + "batch=\(batch.count) pending-request=\(pendingRequest != nil) inflight=\(inflight) "
      + "frames=\(framesReceived) last-stall=(\(stall?.description ?? "none")); \(connection.stateDescription)"
  }

  /// The delivery that paused this connection went through, or the mailbox closed with `undelivered` frames (or
  /// the one request) not taken, which count as dropped: resume reading.
  func stallResolved(undelivered: Int) {
    stall?.stage.store(StallProgress.resolved, ordering: .relaxed)
    stallTask = nil
    if waitingForRoom {
      waitingForRoom = false
      if undelivered > 0 { _ = sink.environment.metrics.framesDropped.add(undelivered, ordering: .relaxed) }
    }
    if pendingRequest != nil {
      pendingRequest = nil
      if undelivered > 0 { inflight -= 1 }
    }
    guard !connection.isClosed else { return }
    settleDirectReplies()
    if inflight < sink.environment.options.maxInflightRequestsPerConnection {
      route?.queue.hold(false)
      connection.resumeReading()
    }
  }
}

/// How far the task delivering a stalled batch has got: shown in a failure report, so that a delivery that
/// never finished says where it stopped.
final class StallProgress: Sendable {
  static let created = 0
  static let sending = 1
  static let handedBack = 2
  static let resolved = 3

  /// Frames the task had to deliver.
  let waiting: Int
  /// Frames it delivered so far.
  let delivered = Atomic<Int>(0)
  let stage = Atomic<Int>(StallProgress.created)
  /// Steps of the task that ran on the event loop's thread, and elsewhere (on the cooperative pool, say).
  let stepsOnLoop = Atomic<Int>(0)
  let stepsElsewhere = Atomic<Int>(0)

  init(waiting: Int) { self.waiting = waiting }

  func note(onLoopThread: Bool) {
    if onLoopThread {
      _ = stepsOnLoop.add(1, ordering: .relaxed)
    } else {
      _ = stepsElsewhere.add(1, ordering: .relaxed)
    }
  }

  var snapshot: TCPStallSnapshot {
    TCPStallSnapshot(
      waiting: waiting, delivered: delivered.load(ordering: .relaxed),
      resolved: stage.load(ordering: .relaxed) == StallProgress.resolved,
      stepsOnLoopThread: stepsOnLoop.load(ordering: .relaxed),
      stepsElsewhere: stepsElsewhere.load(ordering: .relaxed))
  }

  var description: String {
    let stages = ["task created", "task sending", "handed back to the loop", "resolved on the loop"]
    let stage = self.stage.load(ordering: .relaxed)
    let name = stages.indices.contains(stage) ? stages[stage] : "stage \(stage)"
    return "\(name), \(delivered.load(ordering: .relaxed)) of \(waiting) frames delivered, steps on the loop "
      + "thread \(stepsOnLoop.load(ordering: .relaxed)), elsewhere \(stepsElsewhere.load(ordering: .relaxed))"
  }
}

/// The latest delivery of an inbound connection that waited for room in the endpoint's mailbox (for tests).
package struct TCPStallSnapshot: Sendable, Equatable {
  /// Frames it had to deliver, and frames delivered so far.
  package var waiting: Int
  package var delivered: Int
  /// Whether reading resumed after it.
  package var resolved: Bool
  /// Steps of the delivering task that ran on the event loop's thread, and elsewhere.
  package var stepsOnLoopThread: Int
  package var stepsElsewhere: Int
}

/// A weak reference to a loop-thread object, carried through a task and dereferenced only back on the loop.
final class LoopReference<Object: AnyObject>: @unchecked Sendable {
  // Safety of @unchecked Sendable: `value` is read only inside `loop.execute` closures, on the thread that
  // owns the object; the task that carries the reference never touches it.
  weak var value: Object?
  init(_ value: Object) { self.value = value }
}
