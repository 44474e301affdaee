import QuorumCore

/// The state of the address book and loop shared by every endpoint of one transport.
protocol LinkEnvironment: AnyObject, Sendable {
  var cluster: ClusterID { get }
  var options: TCPTransportOptions { get }
  var security: TCPSecurity { get }
  var metrics: MetricsCounters { get }
  func address(of node: NodeID) -> TCPAddress?
}

/// One local node's outbound connection to one peer: connects lazily when frames are queued, performs the
/// handshake, streams the queue with coalesced writes, pings, and reconnects with jittered exponential
/// back-off.
///
/// Messages go only one way on this connection (local → peer); the peer's messages arrive on the connection
/// it dials, and only its acknowledgements of our pings come back on this one. Messages on one link therefore
/// keep their order, and a reconnect never reorders them. A link that hears nothing for the liveness timeout
/// (``LinkLiveness``) is closed and dialled again: TCP alone may keep a dead connection for many seconds.
final class OutboundLink: ConnectionDelegate, @unchecked Sendable {
  // Safety of @unchecked Sendable: `queue` and the `let` properties are Sendable; the mutable state below
  // is read and written only on the event loop's thread (senders touch only `queue`).
  private enum Phase {
    case idle
    case resolving
    case connecting
    case handshaking
    case established
    case waiting
    case closed
  }

  let from: NodeID
  let to: NodeID
  let queue: LinkQueue
  let loop: EventLoop
  let protocolNumber: UInt8
  private let environment: any LinkEnvironment
  private let logger: QuorumLogger
  /// Told the peer's id when an established connection fails.
  private let lost: @Sendable (NodeID) -> Void

  private var phase = Phase.idle
  private(set) var connection: Connection?
  private var backoff: Duration
  private var random: SeededRandom
  private var retryTimer: UInt64?
  private var consecutiveFailures = 0
  private var handshake: DiallerHandshake?
  private var session: TCPSession?
  private var lastHeard: UInt64 = 0
  private var lastPing: UInt64 = 0
  private var lastTick: UInt64 = 0
  private var pings: UInt64 = 0

  init(
    from: NodeID, to: NodeID, loop: EventLoop, protocolNumber: UInt8, environment: any LinkEnvironment,
    lost: @escaping @Sendable (NodeID) -> Void = { _ in }
  ) {
    self.lost = lost
    self.from = from
    self.to = to
    self.loop = loop
    self.protocolNumber = protocolNumber
    self.environment = environment
    let options = environment.options
    self.queue = LinkQueue(
      maxFrames: options.maxQueuedFramesPerPeer, maxBytes: options.maxQueuedBytesPerPeer,
      quietNanos: options.senderWriteQuietNanos)
    self.backoff = options.reconnect.initialBackoff
    self.random = SeededRandom(seed: options.reconnect.seed ^ (from.rawValue &* 0x9E37_79B9_7F4A_7C15) ^ to.rawValue)
    self.logger = loop.logger.child("\(from)->\(to)")
  }

  /// Called on the loop when senders queued frames (or a timer fired): connect or write as the phase allows.
  func service() {
    switch phase {
    case .established:
      guard let connection, connection.pendingWriteBytes == 0 else { return }
      connection.flush()
    case .idle:
      if queue.acknowledgeWakeUp() { connect() }
    case .resolving, .connecting, .handshaking, .waiting, .closed:
      break
    }
  }

  /// Periodic checks (the endpoint's housekeeping): connect and handshake deadlines, pings, and the liveness
  /// timeout.
  func tick(now: UInt64) {
    guard let connection else { return }
    connection.checkDeadlines(now: now)
    guard phase == .established, !connection.isClosed else { return }
    let liveness = environment.options.liveness
    // Silence that this loop caused by not running (an overloaded machine, a long batch of work, or — in one
    // process — the peer's listener on this same loop) is not the peer's: credit it.
    // Only long stalls are credited (see LinkLiveness.stallCreditNanos): ordinary scheduling delays still count.
    let gap = now &- lastTick
    lastTick = now
    lastHeard &+= liveness.stallCreditNanos(gapNanos: gap)
    if now >= lastHeard &+ liveness.timeout.nanoseconds {
      connection.readPending()  // This loop may have been too busy to read an acknowledgement that is waiting.
      guard !connection.isClosed, phase == .established else { return }
      if now >= lastHeard &+ liveness.timeout.nanoseconds {
        connection.close(.linkStalled(silentMilliseconds: Int((now &- lastHeard) / 1_000_000)))
        return
      }
    }
    if now >= lastPing &+ liveness.pingInterval.nanoseconds {
      lastPing = now
      pings &+= 1
      // Through the queue, which seals it on an authenticated link and keeps it in order with senders' writes.
      queue.enqueueControl(LinkControl.ping(pings).frame)
      connection.flushSoon()
    }
  }

  /// How long a dialled connection may take to connect, and then to complete its handshake. After a failure
  /// the peer is probably cut off, and an attempt made into a partition waits in vain (its SYN or hello is
  /// lost): retries give up after four ping intervals, so the first attempt after a heal comes soon.
  private var attemptTimeout: Duration {
    let options = environment.options
    let bound = min(options.connectTimeout, options.handshakeTimeout, options.liveness.timeout)
    guard consecutiveFailures > 0 else { return bound }
    return min(bound, max(options.liveness.pingInterval * 4, .milliseconds(100)))
  }

  /// The link's state in one line, for a failure report (loop thread).
  var stateDescription: String {
    let now = monotonicNanos()
    return "link \(from)->\(to): phase=\(phase) \(queue.stateDescription) failures=\(consecutiveFailures) "
      + "pings=\(pings) last-heard-ms-ago=\((now &- lastHeard) / 1_000_000); "
      + (connection?.stateDescription ?? "no connection")
  }

  /// Closes the link for good (the local endpoint closed).
  func shutDown() {
    phase = .closed
    queue.close()
    if let retryTimer { loop.cancelTimer(retryTimer) }
    retryTimer = nil
    connection?.close(.localShutdown)
    connection = nil
  }

  private func connect() {
    guard let address = environment.address(of: to) else {
      logger.warning("no address for \(to); dropping queued frames")
      failed(.ioError(operation: "address lookup", errno: 0))
      return
    }
    phase = .resolving
    loop.resolve(address) { [self] result in
      guard phase == .resolving else { return }  // shut down meanwhile
      switch result {
      case .success(let numeric): connect(to: numeric, named: address)
      case .failure(let reason):
        environment.metrics.recordClose(reason)
        failed(reason)
      }
    }
  }

  private func connect(to numeric: TCPAddress, named address: TCPAddress) {
    let options = environment.options
    switch startConnect(to: numeric, options: options) {
    case .failure(let reason):
      failed(reason)
    case .success(let (fd, inProgress)):
      let remote = numeric == address ? address.description : "\(address) (\(numeric.host))"
      let connection = Connection(
        loop: loop, fd: fd, remote: remote, maxFrameBytes: TCPFrame.maxHandshakeFrameBytes,
        frameTimeout: options.frameTimeout)
      connection.delegate = self
      self.connection = connection
      phase = .connecting
      _ = connection.startConnecting(inProgress: inProgress, timeout: attemptTimeout)
    }
  }

  /// A connection attempt failed (or an established connection was lost): back off, then try again if
  /// frames are waiting.
  private func failed(_ reason: TCPCloseReason) {
    connection = nil
    handshake = nil
    session = nil
    guard phase != .closed else { return }
    let wasEstablished = phase == .established
    phase = .waiting
    consecutiveFailures += 1
    if !wasEstablished {
      // The peer cannot be reached: what is queued is stale by the time it could be delivered, and the
      // protocols above retransmit. Dropping it keeps an unreachable peer from pinning memory.
      let dropped = queue.discardAll()
      if dropped > 0 { _ = environment.metrics.framesDropped.add(dropped, ordering: .relaxed) }
    }
    let jitter = 0.5 + Double(random.next() >> 11) * 0x1.0p-53 * 0.5
    let delay = backoff * jitter
    backoff = min(environment.options.reconnect.maxBackoff, backoff * 2)
    retryTimer = loop.schedule(after: delay) { [self] in
      retryTimer = nil
      guard phase == .waiting else { return }
      phase = .idle
      service()
    }
    if consecutiveFailures == 1 || consecutiveFailures % 100 == 0 {
      logger.info(
        "cannot reach \(to): \(reason); retrying with back-off",
        ["failures": "\(consecutiveFailures)", "next-attempt-ms": "\(delay.nanoseconds / 1_000_000)"])
    }
    // Last, once the link's own state is settled: the handler runs on this thread.
    if wasEstablished { lost(to) }
  }

  // MARK: ConnectionDelegate

  func connectionDidConnect(_ connection: Connection) {
    phase = .handshaking
    var key: [UInt8]?
    var nonce: [UInt8] = []
    if case .authenticated(let secret, _) = environment.security.mode {
      key = secret.bytes
      do {
        nonce = try SecureRandom.bytes(count: TCPHandshake.nonceByteCount)
      } catch {
        connection.close(.ioError(operation: "read \(SecureRandom.devicePath)", errno: error.errorNumber))
        return
      }
    }
    let handshake = DiallerHandshake(
      cluster: environment.cluster, role: .peer, from: from, to: to, protocolNumber: protocolNumber, principal: "",
      key: key, nonce: nonce, groupTableDigest: environment.options.groupTableDigest)
    self.handshake = handshake
    connection.handshakeDeadline = monotonicNanos() &+ attemptTimeout.nanoseconds
    connection.enqueue(handshake.helloFrame)
    connection.flush()
  }

  func connection(_ connection: Connection, didReceive bytes: [UInt8], range: Range<Int>) -> FrameVerdict {
    if phase == .established { return acknowledgement(bytes, range) }
    guard phase == .handshaking, var handshake else {
      return .close(.malformedFrame("a frame from the listener outside the handshake"))
    }
    let step = handshake.receive(bytes, range)
    self.handshake = handshake
    switch step {
    case .send(let frame):
      connection.enqueue(frame)
      connection.flushSoon()
      return .proceed
    case .failed(let reason):
      return .close(reason)
    case .established(let session):
      established(session, on: connection)
      return .proceed
    }
  }

  private func established(_ session: TCPSession?, on connection: Connection) {
    phase = .established
    handshake = nil
    self.session = session
    connection.handshakeDeadline = nil
    connection.maxFrameBytes = 256 + (session == nil ? 0 : TCPFrame.tagBytes)  // only acknowledgements come back
    // From here the queue seals and writes this link's frames (the loop's and, while idle, the senders').
    queue.attach(fd: connection.fd, sealer: session?.sealer)
    connection.willClose = { [queue] in queue.detach() }
    let now = monotonicNanos()
    lastHeard = now
    lastPing = now
    lastTick = now
    backoff = environment.options.reconnect.initialBackoff
    if consecutiveFailures > 0 {
      logger.info("connected to \(to) at \(connection.remote) after \(consecutiveFailures) failed attempts")
    } else {
      logger.debug("connected to \(to) at \(connection.remote)")
    }
    consecutiveFailures = 0
    _ = environment.metrics.connectionsEstablished.add(1, ordering: .relaxed)
    connection.flushSoon()
  }

  /// A frame from the listener on an established link: only acknowledgements of our pings are expected.
  private func acknowledgement(_ bytes: [UInt8], _ range: Range<Int>) -> FrameVerdict {
    var body = range
    if session != nil {
      let sequence = session?.opener.sequence ?? 0
      guard let opened = session?.opener.open(bytes, range: range) else {
        return .close(.frameAuthenticationFailed(sequence: sequence))
      }
      body = opened
    }
    guard LinkControl.isControl(bytes, body), case .acknowledgement = try? LinkControl(bytes, range: body) else {
      return .close(.malformedFrame("the listener sent something other than an acknowledgement"))
    }
    lastHeard = monotonicNanos()
    return .proceed
  }

  func connectionDidParse(_ connection: Connection) {}

  func connectionDidDrain(_ connection: Connection) {
    guard phase == .established else { return }
    var taken = (frames: 0, bytes: 0)
    connection.enqueue { buffer in taken = queue.take(into: &buffer, budget: 256 << 10) }
    guard taken.bytes > 0 else { return }  // A sender's remainder alone is bytes without a frame.
    let metrics = environment.metrics
    _ = metrics.framesSent.add(taken.frames, ordering: .relaxed)
    _ = metrics.bytesSent.add(taken.bytes, ordering: .relaxed)
    _ = metrics.writeCalls.add(1, ordering: .relaxed)
  }

  func connection(_ connection: Connection, didCloseWith reason: TCPCloseReason) {
    guard connection === self.connection else { return }
    environment.metrics.recordClose(reason)
    if phase == .closed { return }
    if reason.isProtocolViolation || phase == .handshaking || reason.name == "link-stalled" {
      logger.warning("connection to \(to) at \(connection.remote) closed: \(reason)", ["reason": reason.name])
    } else if phase == .established {
      logger.info("connection to \(to) at \(connection.remote) closed: \(reason)", ["reason": reason.name])
    }
    failed(reason)
  }
}
