public import QuorumCore
import Synchronization

/// How a ``TCPTransport`` reconnects to a peer after a failed or lost connection.
///
/// The pause before attempt *k* is `min(maxBackoff, initialBackoff × 2^(k-1))`, multiplied by a jitter
/// factor drawn uniformly from `[0.5, 1)` with a ``QuorumCore/SeededRandom`` (seeded per link from
/// ``seed`` and the two node identifiers, so runs are reproducible). A successful handshake resets it.
/// Attempts continue as long as frames are queued for the peer; an idle link does not reconnect.
///
/// The longest pause is short (100 ms by default; the `Cluster` DSL uses the heartbeat interval) so that a
/// member rejoins about one pause plus one connect after a partition heals, whatever the partition's length.
/// An attempt to an unreachable host costs one connect timeout; a refused one costs nothing.
public struct ReconnectPolicy: Sendable, Equatable {
  /// The pause before the first reconnect.
  public var initialBackoff: Duration
  /// The longest pause between attempts.
  public var maxBackoff: Duration
  /// Seeds the jitter.
  public var seed: UInt64

  /// Creates a policy.
  public init(
    initialBackoff: Duration = .milliseconds(10), maxBackoff: Duration = .milliseconds(100), seed: UInt64 = 0x5152_5443
  ) {
    precondition(initialBackoff > .zero && maxBackoff >= initialBackoff, "back-off bounds must be positive and ordered")
    self.initialBackoff = initialBackoff
    self.maxBackoff = maxBackoff
    self.seed = seed
  }
}

/// How a peer link notices that the other side stopped answering, when TCP cannot tell (a partition drops
/// packets silently, and a connection can sit in retransmission back-off for many seconds after it heals).
///
/// The dialling side sends a ping every ``pingInterval``; the listener acknowledges each at once (and every
/// interval while it has stopped reading for back-pressure, so a busy peer is not taken for a dead one). A link
/// that hears nothing for ``timeout`` is closed (``TCPCloseReason/linkStalled(silentMilliseconds:)``) and
/// dialled again; a dialled connection must also connect and complete its handshake within ``timeout``. The
/// listener closes a peer connection it has heard nothing on for twice the timeout, and a peer that dials in
/// replaces its older connection at once.
public struct LinkLiveness: Sendable, Equatable {
  /// How often the dialling side pings.
  public var pingInterval: Duration
  /// How long a link may go without hearing from the other side.
  public var timeout: Duration

  /// Creates a policy.
  public init(pingInterval: Duration = .milliseconds(100), timeout: Duration = .seconds(2)) {
    precondition(pingInterval > .zero && timeout > pingInterval, "liveness needs 0 < pingInterval < timeout")
    self.pingInterval = pingInterval
    self.timeout = timeout
  }

  /// A ping every heartbeat, and ten heartbeats (at least 250 ms) of silence before a link is redialled: what
  /// the `Cluster` DSL derives from the engines' heartbeat interval.
  public static func heartbeat(_ interval: Duration) -> LinkLiveness {
    LinkLiveness(pingInterval: interval, timeout: max(interval * 10, .milliseconds(250)))
  }

  /// 100 ms pings, 2 s timeout.
  public static let `default` = LinkLiveness()

  /// How much of a gap of `gapNanos` between two housekeeping ticks is credited to a link's silence clock: time
  /// the local loop did not run is not the peer's silence. Only long stalls (over half the timeout) are credited,
  /// less one ping interval (a ping was due in it anyway), so ordinary scheduling delays still count. Never
  /// negative: the timeout may be less than twice the ping interval, so a stall over half the timeout can be
  /// shorter than the interval.
  func stallCreditNanos(gapNanos: UInt64) -> UInt64 {
    let interval = pingInterval.nanoseconds
    guard gapNanos > timeout.nanoseconds / 2, gapNanos > interval else { return 0 }
    return gapNanos - interval
  }
}

/// Limits and timeouts of a ``TCPTransport``. Every queue and frame is bounded.
///
/// Accepted connections fall into three budgets, so that a flood of sockets cannot lock real peers or clients
/// out: connections that have not completed the handshake (at most ``maxUnauthenticatedConnections``, of
/// which ``maxUnauthenticatedConnectionsPerAddress`` from one address; when full, the oldest is evicted to
/// make room; each must complete within ``handshakeTimeout`` and send frames of at most
/// ``TCPFrame/maxHandshakeFrameBytes``), clients (``maxClientConnections``, ``maxClientConnectionsPerAddress``,
/// closed after ``clientIdleTimeout`` without a request), and peers (``maxPeerConnections``, one per peer).
public struct TCPTransportOptions: Sendable, Equatable {
  /// The host a node with no address in the address book listens on (with port 0: any free port).
  public var listenHost: String
  /// The largest frame body accepted or sent, in bytes: 64 to ``maxFrameBytesLimit``. A peer announcing a larger
  /// frame is disconnected; a local send of a larger message throws
  /// ``QuorumCore/TransportError/messageTooLarge(bytes:limit:)``.
  public var maxFrameBytes: Int
  /// The most frames queued towards one peer (not yet written to its socket).
  public var maxQueuedFramesPerPeer: Int
  /// The most bytes queued towards one peer. A single frame larger than this is still accepted when the
  /// queue is empty, so any message within ``maxFrameBytes`` can be sent.
  public var maxQueuedBytesPerPeer: Int
  /// The capacity of each endpoint's incoming mailbox. When it is full the transport stops reading from
  /// the sockets that feed it, so TCP flow control pushes back on the senders (nothing is dropped).
  public var inboxCapacity: Int
  /// How long a connect may take.
  public var connectTimeout: Duration
  /// How long a new connection may take to complete its handshake.
  public var handshakeTimeout: Duration
  /// How long a frame may take to arrive, counted from its first byte (or from when reading resumed after the
  /// receiver behind the connection paused it), not from the last progress: a frame still incomplete this long
  /// after it began closes the connection, however steadily its bytes come. Time a client's frame spends waiting
  /// in line for ``maxClientReceiveBufferBytes``, or with reading paused because the endpoint's replies fill half of
  /// ``maxClientReplyBytes``, does not count (the wait is bounded by ``maxReceiveBudgetWait``): the timeout measures
  /// the peer's slowness, not other clients'.
  public var frameTimeout: Duration
  /// TCP keep-alive: idle time before the first probe (zero disables keep-alive).
  public var keepaliveIdle: Duration
  /// TCP keep-alive: the interval between probes.
  public var keepaliveInterval: Duration
  /// TCP keep-alive: unanswered probes before the kernel drops the connection.
  public var keepaliveProbes: Int
  /// Reconnect back-off.
  public var reconnect: ReconnectPolicy
  /// The most accepted connections one endpoint holds, whatever their budget; more are refused.
  public var maxConnectionsPerEndpoint: Int
  /// Whether endpoints accept client connections (see ``TCPEndpoint/requests``).
  public var serveClients: Bool
  /// Client requests queued per endpoint before the transport stops reading client sockets.
  public var requestQueueCapacity: Int
  /// The most client requests in flight (unanswered) per client connection; at the limit the transport
  /// stops reading that connection until a reply goes out.
  public var maxInflightRequestsPerConnection: Int
  /// Whether to accept peers that are not in the address book (their identity is still checked against
  /// the cluster id). Off by default: an unknown node is refused at the handshake.
  public var acceptUnknownPeers: Bool
  /// Peer-link liveness: pings, and how long a silent link is kept.
  public var liveness: LinkLiveness
  /// `TCP_USER_TIMEOUT` on every socket: the kernel drops a connection whose sent data stays unacknowledged —
  /// or unsent because the receiver's window is closed — this long (zero leaves the system default). A
  /// backstop: peer links notice silence sooner (``liveness``); it must exceed the longest back-pressure
  /// pause, since a receiver that stops reading closes its window.
  public var tcpUserTimeout: Duration
  /// Accepted connections that have not completed the handshake, at most; a new one evicts the oldest.
  public var maxUnauthenticatedConnections: Int
  /// Accepted connections from one address that have not completed the handshake; more are refused.
  public var maxUnauthenticatedConnectionsPerAddress: Int
  /// Authenticated client connections per endpoint, at most.
  public var maxClientConnections: Int
  /// Authenticated client connections from one address, at most.
  public var maxClientConnectionsPerAddress: Int
  /// Connections from peers per endpoint, at most (a peer that dials again replaces its older connection).
  public var maxPeerConnections: Int
  /// A client connection with no request in flight that sends nothing this long is closed.
  public var clientIdleTimeout: Duration
  /// Reply bytes waiting to be written to one client before the transport stops reading its requests.
  public var replyPauseBytes: Int
  /// Reply bytes waiting for one client at which its connection is closed
  /// (``TCPCloseReason/slowReader(pendingBytes:)``); at least ``replyPauseBytes`` plus one largest frame.
  public var maxReplyBytesPerConnection: Int
  /// Bytes of partly received client frames one endpoint holds in all, charged as they arrive (a frame's
  /// announced length reserves nothing). Past it, a client connection between frames may still read a small
  /// request (64 KiB at a time), and the connections in the middle of a frame wait — all but one: the one that
  /// has waited longest reads past the limit to the end of its frame, then the next one does, in the order they
  /// began to wait. So frames in progress always complete, and an endpoint holds at most this much plus one
  /// largest frame (``maxFrameBytes``, with its length prefix and, on an authenticated connection, its code),
  /// plus 64 KiB per client connection and 64 KiB more. A client that stops sending while its frame is the one
  /// read past the limit holds up the others' waiting frames until its own times out (``frameTimeout``). A
  /// frame's timeout does not run while it waits in line for this budget, so several such clients queued one
  /// after the other delay an honest large frame behind them but do not make it time out; the wait itself is
  /// bounded by ``maxReceiveBudgetWait``. Requests smaller than 64 KiB still pass.
  public var maxClientReceiveBufferBytes: Int

  /// How long in all a client's frame may wait in line for ``maxClientReceiveBufferBytes`` (its reading paused,
  /// behind other clients' frames), or for the endpoint's replies to drain, before the connection is closed
  /// (``TCPCloseReason/truncatedFrame(received:expected:)``); `nil` (the default) means twice ``frameTimeout``.
  /// The frame's own ``frameTimeout`` does not run while it waits, so this is what keeps a frame from waiting
  /// forever behind a long line of slow clients. The trade-off: a frame waiting in line keeps what it has
  /// charged, so slow clients queued one after the other keep the budget spent until each times out in turn,
  /// for at most about this long plus one ``frameTimeout``; an honest large frame gets through if at most
  /// this divided by ``frameTimeout`` slow holders are ahead of it (two by default), and is closed otherwise.
  public var maxReceiveBudgetWait: Duration? = nil

  /// ``maxReceiveBudgetWait``, or twice ``frameTimeout`` when it is not set.
  var receiveBudgetWait: Duration { maxReceiveBudgetWait ?? frameTimeout * 2 }
  /// Reply bytes not yet written for all of an endpoint's client connections together, at most: replies answered
  /// and not yet taken by their sockets, whoever queued them — queued, in the event loop's write buffer of their
  /// connection, or the rest of a reply a responder began writing itself — counted until the socket takes them or
  /// the connection closes (1 byte at least). Each connection's own bounds (``replyPauseBytes``,
  /// ``maxReplyBytesPerConnection``) hold too; this one bounds their sum, which they do not (a thousand clients that
  /// stop reading would otherwise each hold their own limit, or each one largest reply in its write buffer).
  ///
  /// Once half of it is held, the event loop stops reading requests from every client whose replies not yet
  /// written are at least the average of all clients' (back-pressure: a client that does not read its replies stops
  /// being served, while one that reads them goes on), until its replies drain or it falls back under the average
  /// or the total under half. When a reply would take the total past the limit it is neither queued nor written,
  /// and its connection is closed (``TCPCloseReason/slowReader(pendingBytes:)``): the client sees a lost
  /// connection, so the outcome of its requests in flight is unknown to it — never a silently missing answer to a
  /// write that was applied. A reply is still admitted past the limit to a connection whose replies not yet written
  /// stay within its fair share (this divided by the endpoint's client connections), so that the close falls on the
  /// clients holding more than their share, not on whichever client's reply comes next; and a reply of at most
  /// 64 KiB to a connection with nothing queued is always admitted. The total is at most twice this plus 192 KiB per
  /// client connection (three such small replies: one queued, one in the write batch, and the rest of one a
  /// responder wrote straight to the socket), and the 16-byte codes of authenticated replies. Bytes count until the
  /// socket takes them, so a client reading large replies over a slow link holds its share for longer, and may be
  /// closed as a slow reader while the endpoint is over the limit. Set below two largest replies (twice
  /// ``maxFrameBytes``, with prefix and code), it is raised to that.
  public var maxClientReplyBytes: Int = 256 << 20

  /// Whether a sender writes a peer message to the socket itself when the link is idle (nothing queued, nothing
  /// being written), rather than queueing it for the event loop: one thread hand-off less per message. When the
  /// link is busy, messages queue and the loop writes them in batches either way, and a sender on the loop's own
  /// thread always queues (the loop writes its pass's frames to a peer together, with no hand-off to save).
  /// Replies to clients follow the same rules.
  public var writesFromSenders = true

  /// How long a link must have been quiet — no write begun on it, by a sender or the event loop — before a
  /// sender writes to it itself (with ``writesFromSenders``). A link written to more recently is streaming:
  /// its frames queue and the loop writes them in batches, one system call for many frames instead of one
  /// each. A single request or reply, the latency case, finds its link quiet and goes straight out. Zero lets a
  /// sender write whenever the link is idle.
  public var senderWriteQuietPeriod: Duration = .microseconds(20)

  var senderWriteQuietNanos: UInt64 { senderWriteQuietPeriod.nanoseconds }

  /// Whether a cluster member served over this transport runs its groups — replicas, tickers, request handling —
  /// on the transport's event-loop thread (``TCPTransport/makeLoopExecutor()``) rather than on Swift's shared
  /// pool. On the loop, a message or request the loop reads resumes its replica on the same thread, with no
  /// wake-up of another one: fewer thread hand-offs per commit, at the price of one thread doing a member's
  /// network and consensus work (snapshots are still encoded on the pool). Read by the `Quorum` module's
  /// member server; the transport itself does not use it.
  public var groupsOnNetworkThread = true

  /// What every peer must present identically in its handshake, beyond the cluster id. A cluster member served
  /// by the `Quorum` module puts a digest of its cluster map's group table and session policies here
  /// (`ClusterMap.replicationDigest`: every group's number, name, engine, services and slots, and each engine's
  /// session policy), so that members whose group lists or session policies differ refuse each other
  /// (``TCPCloseReason/groupTableMismatch(local:remote:)``) rather than deliver one group's messages to another
  /// group that has the same number on the other member. Empty (the default): this node presents
  /// nothing, and admits only peers that present nothing. At most ``maxGroupTableDigestBytes`` bytes.
  public var groupTableDigest: [UInt8] = []

  /// The longest ``groupTableDigest``.
  public static let maxGroupTableDigestBytes = 64

  /// Creates options; the defaults suit a LAN cluster.
  public init(
    listenHost: String = "127.0.0.1", maxFrameBytes: Int = 16 << 20, maxQueuedFramesPerPeer: Int = 65_536,
    maxQueuedBytesPerPeer: Int = 64 << 20, inboxCapacity: Int = 8192, connectTimeout: Duration = .seconds(2),
    handshakeTimeout: Duration = .seconds(5), frameTimeout: Duration = .seconds(30),
    keepaliveIdle: Duration = .seconds(10), keepaliveInterval: Duration = .seconds(2), keepaliveProbes: Int = 3,
    reconnect: ReconnectPolicy = ReconnectPolicy(), maxConnectionsPerEndpoint: Int = 2048, serveClients: Bool = false,
    requestQueueCapacity: Int = 65_536, maxInflightRequestsPerConnection: Int = 1024, acceptUnknownPeers: Bool = false,
    liveness: LinkLiveness = .default, tcpUserTimeout: Duration = .seconds(60),
    maxUnauthenticatedConnections: Int = 128,
    maxUnauthenticatedConnectionsPerAddress: Int = 16, maxClientConnections: Int = 1024,
    maxClientConnectionsPerAddress: Int = 512, maxPeerConnections: Int = 64,
    clientIdleTimeout: Duration = .seconds(300),
    replyPauseBytes: Int = 4 << 20, maxReplyBytesPerConnection: Int = 32 << 20,
    maxClientReceiveBufferBytes: Int = 128 << 20
  ) {
    precondition(
      (64...Self.maxFrameBytesLimit).contains(maxFrameBytes), "maxFrameBytes must be 64 ... \(Self.maxFrameBytesLimit)")
    precondition(maxQueuedFramesPerPeer >= 1 && maxQueuedBytesPerPeer >= 1, "peer queues must hold something")
    precondition(inboxCapacity >= 1 && requestQueueCapacity >= 1, "queues must hold something")
    precondition(maxConnectionsPerEndpoint >= 1 && maxInflightRequestsPerConnection >= 1, "limits must be positive")
    self.listenHost = listenHost
    self.maxFrameBytes = maxFrameBytes
    self.maxQueuedFramesPerPeer = maxQueuedFramesPerPeer
    self.maxQueuedBytesPerPeer = maxQueuedBytesPerPeer
    self.inboxCapacity = inboxCapacity
    self.connectTimeout = connectTimeout
    self.handshakeTimeout = handshakeTimeout
    self.frameTimeout = frameTimeout
    self.keepaliveIdle = keepaliveIdle
    self.keepaliveInterval = keepaliveInterval
    self.keepaliveProbes = keepaliveProbes
    self.reconnect = reconnect
    self.maxConnectionsPerEndpoint = maxConnectionsPerEndpoint
    self.serveClients = serveClients
    self.requestQueueCapacity = requestQueueCapacity
    self.maxInflightRequestsPerConnection = maxInflightRequestsPerConnection
    self.acceptUnknownPeers = acceptUnknownPeers
    precondition(
      maxUnauthenticatedConnections >= 1 && maxUnauthenticatedConnectionsPerAddress >= 1 && maxClientConnections >= 1
        && maxClientConnectionsPerAddress >= 1 && maxPeerConnections >= 1, "connection budgets must be positive")
    precondition(replyPauseBytes >= 1 && maxClientReceiveBufferBytes >= 1, "reply and receive budgets must be positive")
    self.liveness = liveness
    self.tcpUserTimeout = tcpUserTimeout
    self.maxUnauthenticatedConnections = maxUnauthenticatedConnections
    self.maxUnauthenticatedConnectionsPerAddress = maxUnauthenticatedConnectionsPerAddress
    self.maxClientConnections = maxClientConnections
    self.maxClientConnectionsPerAddress = maxClientConnectionsPerAddress
    self.maxPeerConnections = maxPeerConnections
    self.clientIdleTimeout = clientIdleTimeout
    self.replyPauseBytes = replyPauseBytes
    self.maxReplyBytesPerConnection = maxReplyBytesPerConnection
    self.maxClientReceiveBufferBytes = maxClientReceiveBufferBytes
  }

  /// The largest ``maxFrameBytes``: a frame's length prefix is 32 bits, and on an authenticated connection it
  /// counts the frame's code too (``TCPFrame/tagBytes``), so a larger body's sealed length would wrap.
  public static let maxFrameBytesLimit = Int(UInt32.max) - TCPFrame.tagBytes

  /// Checks ``maxFrameBytes`` against ``maxFrameBytesLimit``, the length of ``groupTableDigest`` and that
  /// ``maxReceiveBudgetWait``, when set, is positive (options are values, and the fields can be set after the
  /// initializer checked them). The other fields set later are not checked here.
  /// - Throws: ``QuorumCore/ConfigurationError`` naming the first unusable setting.
  public func validate() throws(ConfigurationError) {
    guard (64...Self.maxFrameBytesLimit).contains(maxFrameBytes) else {
      throw ConfigurationError(
        setting: "maxFrameBytes", reason: "must be 64 ... \(Self.maxFrameBytesLimit) (got \(maxFrameBytes))")
    }
    guard groupTableDigest.count <= Self.maxGroupTableDigestBytes else {
      throw ConfigurationError(
        setting: "groupTableDigest",
        reason: "at most \(Self.maxGroupTableDigestBytes) bytes (got \(groupTableDigest.count))")
    }
    if let wait = maxReceiveBudgetWait, wait <= .zero {
      // Zero would close every client whose frame waits for the receive budget at all, without a word.
      throw ConfigurationError(setting: "maxReceiveBudgetWait", reason: "must be positive (got \(wait))")
    }
  }

  /// The endpoint's reply budget in effect: ``maxClientReplyBytes``, raised if needed to hold two largest replies
  /// (otherwise every read of a large value could close its connection, every time).
  var clientReplyLimit: Int {
    let largest = maxFrameBytes + TCPFrame.prefixBytes + TCPFrame.tagBytes
    let (twice, overflow) = largest.multipliedReportingOverflow(by: 2)
    return overflow ? .max : max(maxClientReplyBytes, twice)
  }

  /// The reply backlog at which a client connection is closed: ``maxReplyBytesPerConnection``, raised if
  /// needed to hold ``replyPauseBytes`` and one largest frame.
  var replyCloseBytes: Int {
    max(maxReplyBytesPerConnection, replyPauseBytes + maxFrameBytes + TCPFrame.prefixBytes + TCPFrame.tagBytes)
  }

  /// The most reply bytes one client connection holds, queued and in its write batch, before it is closed as a
  /// slow reader: four times ``replyCloseBytes``. A client pipelining reads may get more replies in one turn than
  /// ``replyCloseBytes`` before the loop has written any, while it reads as fast as they come; past this it is
  /// closed whether or not it reads, so that memory stays bounded.
  var replyQueueBytes: Int {
    let (bytes, overflow) = replyCloseBytes.multipliedReportingOverflow(by: 4)
    return overflow ? .max : bytes
  }

  /// The defaults.
  public static let `default` = TCPTransportOptions()
}

/// Counters of a ``TCPTransport`` (or a ``TCPRequestClient``), read with a snapshot.
public struct TCPTransportMetrics: Sendable, Equatable, CustomStringConvertible {
  /// Frames handed to sockets.
  public var framesSent = 0
  /// Frames received and delivered (to a mailbox or a request queue).
  public var framesReceived = 0
  /// Bytes written to sockets.
  public var bytesSent = 0
  /// Bytes read from sockets.
  public var bytesReceived = 0
  /// Write batches: queued frames taken together and written with one `send` (more only when the socket's
  /// buffer fills mid-batch); `framesSent / writeCalls` shows how well writes are coalesced.
  public var writeCalls = 0
  /// Frames (peer messages and replies) that sending threads wrote to the socket themselves, without waking the
  /// event loop (see ``TCPTransportOptions/writesFromSenders``): each its own frame, found the link idle, and
  /// the frames other senders queued behind it meanwhile. Counted in ``framesSent`` and ``writeCalls`` too for
  /// peer messages.
  public var framesWrittenBySenders = 0
  /// Sender writes the socket took only part of (its send buffer was full): the loop wrote the rest.
  public var senderWritesCutShort = 0
  /// Connections accepted by listeners.
  public var connectionsAccepted = 0
  /// Outbound connections that completed their handshake.
  public var connectionsEstablished = 0
  /// Frames dropped: addressed to an endpoint that had closed, or queued for a peer that could not be
  /// reached when a connection attempt failed.
  public var framesDropped = 0
  /// Closed connections by ``TCPCloseReason/name``.
  public var closes: [String: Int] = [:]
  /// The most accepted connections that were waiting to complete their handshake at once (at most
  /// ``TCPTransportOptions/maxUnauthenticatedConnections``).
  public var largestUnauthenticatedCount = 0
  /// The most reply bytes that waited to be written to one client connection (the close comes at
  /// ``TCPTransportOptions/maxReplyBytesPerConnection``, plus one reply).
  public var largestReplyBacklog = 0
  /// The most reply bytes not yet written for an endpoint's client connections together at once, queued or in the
  /// event loop's write buffers (at most twice ``TCPTransportOptions/maxClientReplyBytes`` plus 192 KiB per client
  /// connection, and the codes of authenticated replies).
  public var largestQueuedClientReplies = 0
  /// The most bytes of partly received client frames an endpoint held at once (at most
  /// ``TCPTransportOptions/maxClientReceiveBufferBytes`` plus one largest frame, plus 64 KiB per client connection
  /// and one more).
  public var largestClientReceiveBuffer = 0

  /// Creates empty metrics.
  public init() {}

  /// Closes with the given reason name.
  public func closes(_ name: String) -> Int { closes[name] ?? 0 }

  public var description: String {
    let reasons = closes.keys.sorted().map { "\($0)=\(closes[$0] ?? 0)" }.joined(separator: " ")
    return
      "sent \(framesSent) frames/\(bytesSent) B in \(writeCalls) writes, received \(framesReceived) frames/"
      + "\(bytesReceived) B, accepted \(connectionsAccepted), established \(connectionsEstablished)"
      + (reasons.isEmpty ? "" : ", closes: \(reasons)")
  }
}

/// Thread-safe metric counters: atomics for the per-frame figures, a mutex for the rare close reasons.
final class MetricsCounters: Sendable {
  let framesSent = Atomic<Int>(0)
  let framesReceived = Atomic<Int>(0)
  let bytesSent = Atomic<Int>(0)
  let bytesReceived = Atomic<Int>(0)
  let writeCalls = Atomic<Int>(0)
  let framesWrittenBySenders = Atomic<Int>(0)
  let senderWritesCutShort = Atomic<Int>(0)
  let connectionsAccepted = Atomic<Int>(0)
  let connectionsEstablished = Atomic<Int>(0)
  let framesDropped = Atomic<Int>(0)
  let largestUnauthenticatedCount = Atomic<Int>(0)
  let largestReplyBacklog = Atomic<Int>(0)
  let largestClientReceiveBuffer = Atomic<Int>(0)
  let largestQueuedClientReplies = Atomic<Int>(0)
  private let closes = Mutex<[String: Int]>([:])

  /// Raises `mark` to `value` if it is higher.
  func raise(_ mark: borrowing Atomic<Int>, to value: Int) {
    var current = mark.load(ordering: .relaxed)
    while value > current {
      let (exchanged, original) = mark.compareExchange(expected: current, desired: value, ordering: .relaxed)
      if exchanged { return }
      current = original
    }
  }

  /// Counts a frame a sending thread wrote to the socket itself (all of it, or the start of it); with
  /// `peerFrame`, also as a frame and bytes sent in one write call, as the loop counts its batches.
  func recordSenderWrite(_ outcome: LinkQueue.Outcome, peerFrame: Bool) {
    guard outcome.writtenBySender else { return }
    _ = framesWrittenBySenders.add(outcome.framesWritten, ordering: .relaxed)
    if outcome.cutShort { _ = senderWritesCutShort.add(1, ordering: .relaxed) }
    guard peerFrame else { return }
    _ = framesSent.add(outcome.framesWritten, ordering: .relaxed)
    _ = bytesSent.add(outcome.bytesWritten, ordering: .relaxed)
    _ = writeCalls.add(outcome.writeCalls - (outcome.cutShort ? 1 : 0), ordering: .relaxed)
  }

  func recordClose(_ reason: TCPCloseReason) {
    closes.withLock { $0[reason.name, default: 0] += 1 }
  }

  var snapshot: TCPTransportMetrics {
    var m = TCPTransportMetrics()
    m.framesSent = framesSent.load(ordering: .relaxed)
    m.framesReceived = framesReceived.load(ordering: .relaxed)
    m.bytesSent = bytesSent.load(ordering: .relaxed)
    m.bytesReceived = bytesReceived.load(ordering: .relaxed)
    m.writeCalls = writeCalls.load(ordering: .relaxed)
    m.framesWrittenBySenders = framesWrittenBySenders.load(ordering: .relaxed)
    m.senderWritesCutShort = senderWritesCutShort.load(ordering: .relaxed)
    m.connectionsAccepted = connectionsAccepted.load(ordering: .relaxed)
    m.connectionsEstablished = connectionsEstablished.load(ordering: .relaxed)
    m.framesDropped = framesDropped.load(ordering: .relaxed)
    m.largestUnauthenticatedCount = largestUnauthenticatedCount.load(ordering: .relaxed)
    m.largestReplyBacklog = largestReplyBacklog.load(ordering: .relaxed)
    m.largestQueuedClientReplies = largestQueuedClientReplies.load(ordering: .relaxed)
    m.largestClientReceiveBuffer = largestClientReceiveBuffer.load(ordering: .relaxed)
    m.closes = closes.withLock { $0 }
    return m
  }
}
