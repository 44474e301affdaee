import QuorumCore

/// The state of the address book and loop shared by every endpoint of one transport.
protocol LinkEnvironment: AnyObject, Sendable {
  var cluster: ClusterID { get }
  var options: TCPTransportOptions { get }
  var metrics: MetricsCounters { get }
  func address(of node: NodeID) -> TCPAddress?
}

/// One local node's outbound connection to one peer: connects lazily when frames are queued, performs the
/// handshake, streams the queue with coalesced writes, and reconnects with jittered exponential back-off.
///
/// Frames go only one way on this connection (local → peer); the peer's frames arrive on the connection
/// it dials. Messages on one link therefore keep their order, and a reconnect never reorders them.
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

  private var phase = Phase.idle
  private(set) var connection: Connection?
  private var backoff: Duration
  private var random: SeededRandom
  private var retryTimer: UInt64?
  private var consecutiveFailures = 0

  init(from: NodeID, to: NodeID, loop: EventLoop, protocolNumber: UInt8, environment: any LinkEnvironment) {
    self.from = from
    self.to = to
    self.loop = loop
    self.protocolNumber = protocolNumber
    self.environment = environment
    let options = environment.options
    self.queue = LinkQueue(maxFrames: options.maxQueuedFramesPerPeer, maxBytes: options.maxQueuedBytesPerPeer)
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
        loop: loop, fd: fd, remote: remote, maxFrameBytes: options.maxFrameBytes,
        frameTimeout: options.frameTimeout)
      connection.delegate = self
      self.connection = connection
      phase = .connecting
      _ = connection.startConnecting(inProgress: inProgress, timeout: options.connectTimeout)
    }
  }

  /// A connection attempt failed (or an established connection was lost): back off, then try again if
  /// frames are waiting.
  private func failed(_ reason: TCPCloseReason) {
    connection = nil
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
    if consecutiveFailures == 1 || consecutiveFailures % 20 == 0 {
      logger.info(
        "cannot reach \(to): \(reason); retrying with back-off",
        ["failures": "\(consecutiveFailures)", "next-attempt-ms": "\(delay.nanoseconds / 1_000_000)"])
    }
  }

  // MARK: ConnectionDelegate

  func connectionDidConnect(_ connection: Connection) {
    phase = .handshaking
    let hello = TCPHandshake(
      cluster: environment.cluster, role: .peer, from: from, to: to, protocolNumber: protocolNumber)
    connection.handshakeDeadline = monotonicNanos() &+ environment.options.handshakeTimeout.nanoseconds
    connection.enqueue(TCPFrame.frame(hello.wireBytes()))
    connection.flush()
  }

  func connection(_ connection: Connection, didReceive bytes: [UInt8], range: Range<Int>) -> FrameVerdict {
    guard phase == .handshaking else {
      return .close(.malformedFrame("a peer listener sent a frame after its handshake reply"))
    }
    let reply: TCPHandshakeReply
    do {
      var reader = WireReader(bytes, range: range)
      reply = try TCPHandshakeReply(from: &reader)
    } catch {
      if case .unsupportedVersion(let version) = error.kind { return .close(.unsupportedVersion(version)) }
      return .close(.badHandshake("unreadable handshake reply: \(error)"))
    }
    if let refusal = reply.refusal { return .close(.rejected(refusal)) }
    guard reply.node == to else { return .close(.wrongNode(expected: to, actual: reply.node)) }
    phase = .established
    connection.handshakeDeadline = nil
    backoff = environment.options.reconnect.initialBackoff
    if consecutiveFailures > 0 {
      logger.info("connected to \(to) at \(connection.remote) after \(consecutiveFailures) failed attempts")
    } else {
      logger.debug("connected to \(to) at \(connection.remote)")
    }
    consecutiveFailures = 0
    _ = environment.metrics.connectionsEstablished.add(1, ordering: .relaxed)
    connection.flushSoon()
    return .proceed
  }

  func connectionDidParse(_ connection: Connection) {}

  func connectionDidDrain(_ connection: Connection) {
    guard phase == .established else { return }
    var taken = (frames: 0, bytes: 0)
    connection.enqueue { buffer in taken = queue.take(into: &buffer, budget: 256 << 10) }
    guard taken.frames > 0 else { return }
    let metrics = environment.metrics
    _ = metrics.framesSent.add(taken.frames, ordering: .relaxed)
    _ = metrics.bytesSent.add(taken.bytes, ordering: .relaxed)
    _ = metrics.writeCalls.add(1, ordering: .relaxed)
  }

  func connection(_ connection: Connection, didCloseWith reason: TCPCloseReason) {
    guard connection === self.connection else { return }
    environment.metrics.recordClose(reason)
    if phase == .closed { return }
    if reason.isProtocolViolation || phase == .handshaking {
      logger.warning("connection to \(to) at \(connection.remote) closed: \(reason)", ["reason": reason.name])
    } else if phase == .established {
      logger.info("connection to \(to) at \(connection.remote) closed: \(reason)", ["reason": reason.name])
    }
    failed(reason)
  }
}
