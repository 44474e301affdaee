import Glibc
public import QuorumCore
import Synchronization

/// The client end of the request protocol that ``TCPEndpoint/requests`` serves: opaque request bytes in,
/// reply bytes out, over one pipelined connection per server address.
///
/// A connection is opened on first use (non-blocking connect, then the client handshake: with a
/// ``TCPClientCredential`` the client and the server prove to each other that they hold the principal's
/// secret, and every frame carries a code; without one, only the cluster id is checked, which a server with
/// authentication refuses) and reused; requests on it are numbered so many can be in flight at once. If the connection fails, every
/// request waiting on it fails with ``TCPRequestError/connectionLost(_:reason:)`` (or
/// ``TCPRequestError/unreachable(_:reason:)`` if it never connected) and the next request reconnects:
/// retrying, and making retries safe (exactly-once sessions), is the caller's business.
///
/// Its event-loop thread starts with the first request and stops at ``close()``.
public final class TCPRequestClient: Sendable {
  /// The cluster id sent in the handshake.
  public let cluster: ClusterID
  /// Frame limit, connect and handshake timeouts, keep-alive.
  public let options: TCPTransportOptions
  /// The credential proved at each handshake (`nil`: none, for servers that run without authentication).
  public let credential: TCPClientCredential?
  private let core: Mutex<ClientCore?>
  private let closed = Atomic<Bool>(false)
  private let nextID = Atomic<UInt64>(0)
  private let counters = MetricsCounters()
  private let logger: QuorumLogger

  /// Creates a client; nothing is opened until the first request.
  /// - Parameters:
  ///   - cluster: the cluster id sent in the handshake.
  ///   - options: frame limit, connect and handshake timeouts, keep-alive.
  ///   - credential: the principal and secret to authenticate with; `nil` for a server that runs without
  ///     authentication.
  ///   - logger: where connection failures are logged.
  public init(
    cluster: ClusterID, options: TCPTransportOptions = .default, credential: TCPClientCredential? = nil,
    logger: QuorumLogger = QuorumLogger(label: "quorum.tcp.client")
  ) {
    // The initializer of the options checked them, but their fields may have been set since.
    do { try options.validate() } catch { preconditionFailure("TCP client options: \(error)") }
    self.cluster = cluster
    self.options = options
    self.credential = credential
    self.logger = logger
    self.core = Mutex(nil)
  }

  deinit {
    core.withLock { $0?.loop.stop() }
  }

  /// The client's counters.
  public var metrics: TCPTransportMetrics { counters.snapshot }

  /// Sends `body` to the server at `address` and waits for its reply, at most `timeout`.
  /// - Throws: ``TCPRequestError``.
  public func request(_ body: [UInt8], to address: TCPAddress, timeout: Duration) async throws(TCPRequestError)
    -> [UInt8]
  {
    let core = try activeCore()
    let id = nextID.add(1, ordering: .relaxed).newValue
    let frame = TCPFrame.encode(
      Envelope(from: .none, to: .none, payload: RPCPayload(id: id, body: body)), protocolNumber: WireProtocol.client,
      reserving: body.count + 32)
    guard frame.count - TCPFrame.prefixBytes <= options.maxFrameBytes else {
      throw .tooLarge(bytes: frame.count - TCPFrame.prefixBytes, limit: options.maxFrameBytes)
    }
    let deadline = monotonicNanos() &+ timeout.nanoseconds
    let result = await withTaskCancellationHandler {
      await withUnsafeContinuation { (continuation: UnsafeContinuation<Result<[UInt8], TCPRequestError>, Never>) in
        let waiter = ClientCore.Waiter(continuation: continuation, deadline: deadline, address: address)
        let accepted = core.loop.execute { core.send(id: id, frame: frame, to: address, waiter: waiter) }
        if !accepted { continuation.resume(returning: .failure(.closed)) }
      }
    } onCancel: {
      core.loop.execute { core.cancel(id: id, address: address) }
    }
    return try result.get()
  }

  /// Closes every connection and stops the loop; waiting requests fail with ``TCPRequestError/closed``.
  public func close() async {
    closed.store(true, ordering: .releasing)
    let core = self.core.withLock { core -> ClientCore? in
      let taken = core
      core = nil
      return taken
    }
    guard let core else { return }
    _ = await core.loop.submit { core.shutDown() }
    core.loop.stop()
  }

  private func activeCore() throws(TCPRequestError) -> ClientCore {
    try core.withLock { (core: inout ClientCore?) throws(TCPRequestError) -> ClientCore in
      if closed.load(ordering: .acquiring) { throw .closed }
      if let core { return core }
      let loop: EventLoop
      do {
        loop = try EventLoop(logger: logger)
        try loop.start()
      } catch {
        throw .cannotStart("\(error)")
      }
      let created = ClientCore(
        loop: loop, cluster: cluster, options: options, credential: credential, metrics: counters, logger: logger)
      core = created
      return created
    }
  }
}

/// The loop-side state of a ``TCPRequestClient``.
final class ClientCore: @unchecked Sendable {
  // Safety of @unchecked Sendable: the `let` properties are Sendable; `connections`, `sweepTimer` and
  // `isShutDown` are touched only on the loop thread (every method below runs inside `loop.execute`).
  struct Waiter {
    var continuation: UnsafeContinuation<Result<[UInt8], TCPRequestError>, Never>
    var deadline: UInt64
    var address: TCPAddress
  }

  let loop: EventLoop
  let cluster: ClusterID
  let options: TCPTransportOptions
  let credential: TCPClientCredential?
  let metrics: MetricsCounters
  let logger: QuorumLogger
  private var connections: [TCPAddress: ClientConnection] = [:]
  private var sweepTimer: UInt64?
  private var isShutDown = false

  init(
    loop: EventLoop, cluster: ClusterID, options: TCPTransportOptions, credential: TCPClientCredential?,
    metrics: MetricsCounters, logger: QuorumLogger
  ) {
    self.loop = loop
    self.cluster = cluster
    self.options = options
    self.credential = credential
    self.metrics = metrics
    self.logger = logger
  }

  func send(id: UInt64, frame: [UInt8], to address: TCPAddress, waiter: Waiter) {
    guard !isShutDown else {
      waiter.continuation.resume(returning: .failure(.closed))
      return
    }
    let connection: ClientConnection
    if let existing = connections[address] {
      connection = existing
    } else {
      connection = ClientConnection(address: address, core: self)
      connections[address] = connection
      connection.connect()
    }
    connection.submit(id: id, frame: frame, waiter: waiter)
    scheduleSweep()
  }

  func cancel(id: UInt64, address: TCPAddress) {
    connections[address]?.fail(id: id, with: .timeout(address))
  }

  func connectionEnded(_ connection: ClientConnection) {
    if connections[connection.address] === connection { connections[connection.address] = nil }
  }

  private func scheduleSweep() {
    guard sweepTimer == nil else { return }
    sweepTimer = loop.schedule(after: .milliseconds(10)) { [self] in
      sweepTimer = nil
      let now = monotonicNanos()
      var busy = false
      for connection in Array(connections.values) {
        connection.expire(now: now)
        busy = busy || connection.hasWaiters
      }
      if busy { scheduleSweep() }
    }
  }

  func shutDown() {
    isShutDown = true
    if let sweepTimer { loop.cancelTimer(sweepTimer) }
    for connection in Array(connections.values) { connection.shutDown() }
    connections = [:]
  }
}

/// One pipelined client connection.
final class ClientConnection: ConnectionDelegate, @unchecked Sendable {
  // Safety of @unchecked Sendable: every method runs on the loop thread; the only closure that leaves it
  // (the host-name resolution) comes back to the loop before it touches anything.
  let address: TCPAddress
  private unowned let core: ClientCore
  private var connection: Connection?
  private var ready = false
  private var ever = false
  private var resolving = false
  /// Requests submitted before the handshake completed, sent when it does: those whose waiter is gone by then
  /// (timed out or cancelled) are not sent. At most ``TCPTransportOptions/maxInflightRequestsPerConnection``.
  private var held: [(id: UInt64, frame: [UInt8])] = []
  private var waiters: [UInt64: ClientCore.Waiter] = [:]
  private var handshake: DiallerHandshake?
  private var session: TCPSession?

  init(address: TCPAddress, core: ClientCore) {
    self.address = address
    self.core = core
  }

  var hasWaiters: Bool { !waiters.isEmpty }

  func connect() {
    resolving = true
    core.loop.resolve(address) { [self] result in
      guard resolving else { return }  // ended meanwhile
      resolving = false
      switch result {
      case .success(let numeric): connect(to: numeric)
      case .failure(let reason): end(reason)
      }
    }
  }

  private func connect(to numeric: TCPAddress) {
    switch startConnect(to: numeric, options: core.options) {
    case .failure(let reason):
      end(reason)
    case .success(let (fd, inProgress)):
      let remote = numeric == address ? address.description : "\(address) (\(numeric.host))"
      let connection = Connection(
        loop: core.loop, fd: fd, remote: remote, maxFrameBytes: TCPFrame.maxHandshakeFrameBytes,
        frameTimeout: core.options.frameTimeout)
      connection.delegate = self
      self.connection = connection
      _ = connection.startConnecting(inProgress: inProgress, timeout: core.options.connectTimeout)
    }
  }

  func submit(id: UInt64, frame: [UInt8], waiter: ClientCore.Waiter) {
    guard waiters.count < core.options.maxInflightRequestsPerConnection else {
      waiter.continuation.resume(returning: .failure(.overloaded(limit: core.options.maxInflightRequestsPerConnection)))
      return
    }
    waiters[id] = waiter
    if ready, let connection {
      transmit(frame, on: connection)
      connection.flushSoon()
      _ = core.metrics.framesSent.add(1, ordering: .relaxed)
    } else {
      // Requests that timed out during a slow handshake leave their frames behind: drop those before the list
      // outgrows the waiters (it then holds fewer than the in-flight limit, the new waiter included).
      if held.count >= core.options.maxInflightRequestsPerConnection { held.removeAll { waiters[$0.id] == nil } }
      held.append((id, frame))
    }
  }

  func fail(id: UInt64, with error: TCPRequestError) {
    waiters.removeValue(forKey: id)?.continuation.resume(returning: .failure(unsentIfHeld(error)))
  }

  func expire(now: UInt64) {
    for (id, waiter) in waiters where waiter.deadline <= now {
      waiters[id] = nil
      waiter.continuation.resume(returning: .failure(unsentIfHeld(.timeout(address))))
    }
    connection?.checkDeadlines(now: now)
  }

  /// `error`, or ``TCPRequestError/unreachable(_:reason:)`` if the connection is not ready: every waiter's request
  /// is then still held, never sent (a lost connection fails its waiters at once), so the caller may send it
  /// elsewhere without risking a second execution.
  private func unsentIfHeld(_ error: TCPRequestError) -> TCPRequestError {
    guard !ready, case .timeout = error else { return error }
    return .unreachable(address, reason: .connectTimeout)
  }

  func shutDown() {
    connection?.close(.localShutdown)
    end(.localShutdown)
  }

  /// Fails every waiter and forgets the connection.
  private func end(_ reason: TCPCloseReason) {
    resolving = false
    let failed = waiters
    waiters = [:]
    held = []
    connection = nil
    ready = false
    handshake = nil
    session = nil
    for (_, waiter) in failed {
      let error: TCPRequestError =
        reason == .localShutdown
        ? .closed : (ever ? .connectionLost(address, reason: reason) : .unreachable(address, reason: reason))
      waiter.continuation.resume(returning: .failure(error))
    }
    core.connectionEnded(self)
  }

  // MARK: ConnectionDelegate

  /// Queues `frame` on `connection`, with its code on an authenticated connection.
  private func transmit(_ frame: [UInt8], on connection: Connection) {
    if session == nil {
      connection.enqueue(frame)
    } else {
      connection.enqueue { buffer in session?.sealer.append(frame, to: &buffer) }
    }
  }

  func connectionDidConnect(_ connection: Connection) {
    var nonce: [UInt8] = []
    if core.credential != nil {
      do {
        nonce = try SecureRandom.bytes(count: TCPHandshake.nonceByteCount)
      } catch {
        connection.close(.ioError(operation: "read \(SecureRandom.devicePath)", errno: error.errorNumber))
        return
      }
    }
    let handshake = DiallerHandshake(
      cluster: core.cluster, role: .client, from: .none, to: .none, protocolNumber: WireProtocol.client,
      principal: core.credential?.name ?? "", key: core.credential?.secret.bytes, nonce: nonce)
    self.handshake = handshake
    connection.handshakeDeadline = monotonicNanos() &+ core.options.handshakeTimeout.nanoseconds
    connection.enqueue(handshake.helloFrame)
    connection.flush()
  }

  func connection(_ connection: Connection, didReceive bytes: [UInt8], range: Range<Int>) -> FrameVerdict {
    guard ready else {
      guard var handshake else { return .close(.malformedFrame("a frame outside the handshake")) }
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
        self.handshake = nil
        self.session = session
        ready = true
        ever = true
        connection.handshakeDeadline = nil
        connection.maxFrameBytes = core.options.maxFrameBytes + (session == nil ? 0 : TCPFrame.tagBytes)
        // A request that timed out or was cancelled meanwhile has no one to answer: not sent.
        let live = held.filter { waiters[$0.id] != nil }
        held = []
        for request in live { transmit(request.frame, on: connection) }
        _ = core.metrics.framesSent.add(live.count, ordering: .relaxed)
        connection.flushSoon()
        return .proceed
      }
    }
    var body = range
    if session != nil {
      let sequence = session?.opener.sequence ?? 0
      guard let opened = session?.opener.open(bytes, range: range) else {
        return .close(.frameAuthenticationFailed(sequence: sequence))
      }
      body = opened
    }
    let envelope: Envelope<RPCPayload>
    do {
      let limits = WireLimits(maxBytesLength: core.options.maxFrameBytes)
      envelope = try WireEnvelope.decode(
        RPCPayload.self, from: bytes, range: body, expectedProtocol: WireProtocol.client, limits: limits)
    } catch {
      return .close(.malformedFrame(logSafe("\(error)")))
    }
    _ = core.metrics.framesReceived.add(1, ordering: .relaxed)
    waiters.removeValue(forKey: envelope.payload.id)?.continuation.resume(returning: .success(envelope.payload.body))
    return .proceed
  }

  func connectionDidDrain(_ connection: Connection) {}

  func connectionDidParse(_ connection: Connection) {}

  func connection(_ connection: Connection, didCloseWith reason: TCPCloseReason) {
    guard connection === self.connection else { return }
    core.metrics.recordClose(reason)
    if reason.isProtocolViolation || (!ever && reason != .localShutdown) {
      core.logger.debug("connection to \(address) closed: \(reason)", ["reason": reason.name])
    }
    end(reason)
  }
}
