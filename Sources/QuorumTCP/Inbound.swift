import CQuorumSystem
import Glibc
import QuorumCore

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
  let id: UInt64
  let route: ReplyRoute

  /// Sends `reply` to the client. Never blocks: the reply is queued to the event loop.
  public func respond(_ reply: [UInt8]) {
    let frame = TCPFrame.encode(
      Envelope(from: route.node, to: .none, payload: RPCPayload(id: id, body: reply)),
      protocolNumber: WireProtocol.client, reserving: reply.count + 32)
    let route = self.route
    route.loop.execute { route.target?.sendReply(frame) }
  }
}

/// Where replies to a client connection go.
protocol ReplyTarget: AnyObject {
  func sendReply(_ frame: [UInt8])
}

/// The way back to a client connection.
final class ReplyRoute: @unchecked Sendable {
  // Safety of @unchecked Sendable: `target` is read only on the event loop's thread (inside
  // `loop.execute`), where the connection it points to lives; the other properties are immutable.
  let loop: EventLoop
  let node: NodeID
  weak var target: (any ReplyTarget)?

  init(loop: EventLoop, node: NodeID, target: any ReplyTarget) {
    self.loop = loop
    self.node = node
    self.target = target
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
  var requests: Mailbox<TCPRequest> { get }
  func inboundClosed(_ handler: InboundConnection<Self>, reason: TCPCloseReason)
}

/// An accepted connection: checks the handshake, then decodes peer frames into the endpoint's mailbox or
/// client requests into its request queue. Loop thread only.
final class InboundConnection<Sink: InboundSink>: ConnectionDelegate, ReplyTarget {
  enum Phase: Equatable {
    case awaitingHandshake
    case peer(NodeID)
    case client
  }

  let connection: Connection
  private unowned let sink: Sink
  private(set) var phase = Phase.awaitingHandshake
  private var batch: [Envelope<Sink.Message>] = []
  private var waitingForRoom = false
  private var pendingRequest: TCPRequest?
  private var inflight = 0
  private var route: ReplyRoute?
  private var framesSinceReport = 0
  private var bytesSinceReport = 0

  init(connection: Connection, sink: Sink) {
    self.connection = connection
    self.sink = sink
  }

  var isStalled: Bool { waitingForRoom || pendingRequest != nil }

  // MARK: ConnectionDelegate

  func connectionDidConnect(_ connection: Connection) {}

  func connectionDidDrain(_ connection: Connection) {}

  func connection(_ connection: Connection, didCloseWith reason: TCPCloseReason) {
    // Frames that arrived before the close still count: deliver them.
    deliverBatch()
    reportCounts()
    sink.inboundClosed(self, reason: reason)
  }

  func connection(_ connection: Connection, didReceive bytes: [UInt8], range: Range<Int>) -> FrameVerdict {
    framesSinceReport += 1
    bytesSinceReport += range.count + TCPFrame.prefixBytes
    if framesSinceReport >= 256 { reportCounts() }
    switch phase {
    case .awaitingHandshake: return handshake(bytes, range)
    case .peer(let node): return peerFrame(bytes, range, from: node)
    case .client: return clientFrame(bytes, range)
    }
  }

  private func reportCounts() {
    guard framesSinceReport > 0 else { return }
    let metrics = sink.environment.metrics
    _ = metrics.framesReceived.add(framesSinceReport, ordering: .relaxed)
    _ = metrics.bytesReceived.add(bytesSinceReport, ordering: .relaxed)
    framesSinceReport = 0
    bytesSinceReport = 0
  }

  // MARK: Handshake

  private func handshake(_ bytes: [UInt8], _ range: Range<Int>) -> FrameVerdict {
    let hello: TCPHandshake
    do {
      var reader = WireReader(bytes, range: range)
      hello = try TCPHandshake(from: &reader)
    } catch {
      if case .unsupportedVersion(let version) = error.kind { return refuse(.unsupportedVersion(version)) }
      return refuse(.badHandshake("\(error)"))
    }
    let environment = sink.environment
    guard hello.cluster == environment.cluster else {
      return refuse(.clusterMismatch(local: environment.cluster, remote: hello.cluster))
    }
    guard hello.to == .none || hello.to == sink.id else {
      return refuse(.wrongNode(expected: hello.to, actual: sink.id))
    }
    switch hello.role {
    case .peer:
      guard hello.from != .none else { return refuse(.badHandshake("a peer handshake without a node id")) }
      guard environment.options.acceptUnknownPeers || environment.address(of: hello.from) != nil else {
        return refuse(.unknownNode(hello.from))
      }
      guard hello.protocolNumber == sink.protocolNumber else {
        return refuse(.badHandshake("protocol \(hello.protocolNumber), this node speaks \(sink.protocolNumber)"))
      }
      phase = .peer(hello.from)
    case .client:
      guard environment.options.serveClients else { return refuse(.clientsNotServed) }
      guard hello.protocolNumber == WireProtocol.client else {
        return refuse(.badHandshake("client protocol \(hello.protocolNumber), expected \(WireProtocol.client)"))
      }
      phase = .client
      route = ReplyRoute(loop: sink.loop, node: sink.id, target: self)
    }
    connection.handshakeDeadline = nil
    connection.enqueue(TCPFrame.frame(TCPHandshakeReply(node: sink.id, refusal: nil).wireBytes()))
    connection.flushSoon()
    return .proceed
  }

  /// Sends the refusal, then closes (the close is logged by the endpoint with the reason).
  private func refuse(_ reason: TCPCloseReason) -> FrameVerdict {
    connection.enqueue(TCPFrame.frame(TCPHandshakeReply(node: sink.id, refusal: reason.description).wireBytes()))
    connection.flushAndClose(reason)
    return .close(reason)
  }

  // MARK: Peer frames

  private func peerFrame(_ bytes: [UInt8], _ range: Range<Int>, from node: NodeID) -> FrameVerdict {
    let envelope: Envelope<Sink.Message>
    do {
      let limits = WireLimits(maxBytesLength: sink.environment.options.maxFrameBytes)
      envelope = try WireEnvelope.decode(
        Sink.Message.self, from: bytes, range: range, expectedProtocol: sink.protocolNumber, limits: limits)
    } catch {
      if case .unsupportedVersion(let version) = error.kind { return .close(.unsupportedVersion(version)) }
      return .close(.malformedFrame("\(error)"))
    }
    guard envelope.from == node else {
      return .close(.malformedFrame("a frame from \(envelope.from) on the connection of \(node)"))
    }
    guard envelope.to == sink.id else {
      return .close(.malformedFrame("a frame addressed to \(envelope.to) arrived at \(sink.id)"))
    }
    return deliver(envelope)
  }

  /// Collects `envelope` into the batch delivered at the end of this read (see ``connectionDidParse(_:)``).
  private func deliver(_ envelope: Envelope<Sink.Message>) -> FrameVerdict {
    batch.append(envelope)
    guard batch.count >= Self.maxBatch else { return .proceed }
    deliverBatch()
    return waitingForRoom ? .pause : .proceed
  }

  /// Frames delivered to the mailbox at once, at most.
  static var maxBatch: Int { 4096 }

  /// Hands the frames collected from one read to the mailbox back to back, so a waiting consumer woken by
  /// the first finds the rest already queued (one wake-up per read rather than per frame). What does not fit
  /// waits in a suspended `Mailbox.send` (admitted exactly when the consumer makes room) with reading
  /// paused, so the senders' TCP windows and then their queues fill up: back-pressure, nothing dropped.
  private func deliverBatch() {
    guard !batch.isEmpty else { return }
    let mailbox = sink.mailbox
    var index = 0
    do {
      while index < batch.count {
        try mailbox.trySend(batch[index])
        index += 1
      }
    } catch .full {
      let rest = Array(batch[index...])
      waitingForRoom = true
      connection.pauseReading()
      let back = LoopReference(self)
      let loop = sink.loop
      Task {
        var delivered = true
        for envelope in rest where delivered {
          delivered = (try? await mailbox.send(envelope)) != nil
        }
        let outcome = delivered
        loop.execute { back.value?.stallResolved(delivered: outcome) }
      }
    } catch {
      _ = sink.environment.metrics.framesDropped.add(batch.count - index, ordering: .relaxed)
    }
    batch.removeAll(keepingCapacity: batch.capacity <= Self.maxBatch)
  }

  func connectionDidParse(_ connection: Connection) {
    deliverBatch()
  }

  // MARK: Client frames

  private func clientFrame(_ bytes: [UInt8], _ range: Range<Int>) -> FrameVerdict {
    let envelope: Envelope<RPCPayload>
    do {
      let limits = WireLimits(maxBytesLength: sink.environment.options.maxFrameBytes)
      envelope = try WireEnvelope.decode(
        RPCPayload.self, from: bytes, range: range, expectedProtocol: WireProtocol.client, limits: limits)
    } catch {
      if case .unsupportedVersion(let version) = error.kind { return .close(.unsupportedVersion(version)) }
      return .close(.malformedFrame("\(error)"))
    }
    guard let route else { return .close(.localShutdown) }
    let request = TCPRequest(
      body: envelope.payload.body, remote: connection.remote, id: envelope.payload.id, route: route)
    inflight += 1
    do {
      try sink.requests.trySend(request)
    } catch .full {
      pendingRequest = request
      let requests = sink.requests
      let back = LoopReference(self)
      let loop = sink.loop
      Task {
        let delivered = (try? await requests.send(request)) != nil
        loop.execute { back.value?.stallResolved(delivered: delivered) }
      }
      return .pause
    } catch {
      inflight -= 1
      return .close(.localShutdown)
    }
    return inflight >= sink.environment.options.maxInflightRequestsPerConnection ? .pause : .proceed
  }

  func sendReply(_ frame: [UInt8]) {
    guard !connection.isClosed else { return }
    inflight -= 1
    connection.enqueue(frame)
    connection.flushSoon()
    if connection.isReadingPaused && !isStalled
      && inflight < sink.environment.options.maxInflightRequestsPerConnection
    {
      connection.resumeReading()
    }
  }

  /// The delivery that paused this connection went through (or the mailbox closed): resume reading.
  func stallResolved(delivered: Bool) {
    if waitingForRoom {
      waitingForRoom = false
      if !delivered { _ = sink.environment.metrics.framesDropped.add(1, ordering: .relaxed) }
    }
    if pendingRequest != nil {
      pendingRequest = nil
      if !delivered { inflight -= 1 }
    }
    guard !connection.isClosed else { return }
    if inflight < sink.environment.options.maxInflightRequestsPerConnection { connection.resumeReading() }
  }
}

/// A weak reference to a loop-thread object, carried through a task and dereferenced only back on the loop.
final class LoopReference<Object: AnyObject>: @unchecked Sendable {
  // Safety of @unchecked Sendable: `value` is read only inside `loop.execute` closures, on the thread that
  // owns the object; the task that carries the reference never touches it.
  weak var value: Object?
  init(_ value: Object) { self.value = value }
}
