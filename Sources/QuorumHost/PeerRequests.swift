import QuorumCore
import Synchronization

/// Requests from one host to another over the hosts' own transport (``HostMessage/request(id:body:)`` and
/// ``HostMessage/reply(id:body:)``), so that work a server does for the whole cluster — finishing transactions
/// left in doubt — reaches any group's leader without a client connection or a client credential: the peer
/// links are authenticated with the cluster secret already.
///
/// The transport is weak (it may drop, duplicate or reorder), so a request is a datagram with a timeout: a
/// lost request or reply surfaces as ``RequestChannelError/timeout(_:)``, and ``HostClient`` retries, with its
/// exactly-once sessions making a retried command safe. A duplicated reply finds no waiter and is counted.
///
/// Bounds: at most ``queueCapacity`` requests wait to be answered (more are dropped, and their senders time
/// out) and at most ``maxConcurrent`` are answered at once.
final class PeerRequests: Sendable {
  struct Incoming: Sendable {
    var from: NodeID
    var group: GroupID
    var id: UInt64
    var body: [UInt8]
  }

  private enum Waiter {
    /// Registered; the request is not sent yet.
    case pending(NodeID)
    /// Sent to the member; the continuation takes the reply.
    case waiting(NodeID, CheckedContinuation<[UInt8], any Error>)
    /// Given up (timed out or cancelled) before the reply.
    case abandoned
  }

  /// The most requests from other hosts waiting to be answered.
  static let queueCapacity = 256
  /// The most requests from other hosts answered at once.
  static let maxConcurrent = 32

  private let incoming = Mailbox<Incoming>(capacity: queueCapacity)
  private let waiters = Mutex<[UInt64: Waiter]>([:])
  private let nextID = Atomic<UInt64>(0)
  private let drops = Mutex<(requests: Int, replies: Int)>((0, 0))

  init() {}

  /// Requests dropped because the queue was full, and replies that matched no waiting request (late,
  /// duplicated, or from another member than the one asked).
  var dropped: (requests: Int, replies: Int) { drops.withLock { $0 } }

  /// Requests sent and not yet answered or given up.
  var outstanding: Int { waiters.withLock { $0.count } }

  // MARK: - Receiving (called by the router)

  func received(request body: [UInt8], id: UInt64, from: NodeID, group: GroupID) {
    do {
      try incoming.trySend(Incoming(from: from, group: group, id: id, body: body))
    } catch {
      drops.withLock { $0.requests += 1 }
    }
  }

  func received(reply body: [UInt8], id: UInt64, from: NodeID) {
    let continuation = waiters.withLock { w -> CheckedContinuation<[UInt8], any Error>? in
      guard case .waiting(let member, let continuation)? = w[id], member == from else { return nil }
      w[id] = nil
      return continuation
    }
    guard let continuation else {
      drops.withLock { $0.replies += 1 }
      return
    }
    continuation.resume(returning: body)
  }

  /// Stops taking requests from other hosts (``serve(router:handler:)`` returns once those running are answered).
  func close() { incoming.close(discardingBuffered: true) }

  // MARK: - Serving

  /// Answers other hosts' requests with `handler`, at most ``maxConcurrent`` at once, until ``close()`` or until
  /// the task is cancelled.
  func serve(router: GroupRouter, handler: @escaping @Sendable ([UInt8]) async -> [UInt8]) async {
    await withTaskGroup(of: Void.self) { tasks in
      var running = 0
      while let request = await incoming.receive() {
        if running >= Self.maxConcurrent {
          await tasks.next()
          running -= 1
        }
        running += 1
        tasks.addTask {
          let reply = await handler(request.body)
          // A reply that cannot be queued is lost like any other message: the sender times out and retries.
          try? router.send(.reply(id: request.id, body: reply), to: request.from, group: request.group)
        }
      }
    }
  }

  // MARK: - Asking

  /// Sends `body` to `member` with `send` and waits for its reply, at most `timeout` of `clock`.
  /// - Throws: ``RequestChannelError/timeout(_:)``, ``RequestChannelError/unreachable(_:_:)`` if the message
  ///   could not be queued, or `CancellationError`.
  func request(
    _ body: [UInt8], to member: NodeID, timeout: Duration, clock: any NodeClock,
    send: @escaping @Sendable (HostMessage) throws(TransportError) -> Void
  ) async throws -> [UInt8] {
    let id = nextID.add(1, ordering: .relaxed).newValue
    waiters.withLock { $0[id] = .pending(member) }
    defer { waiters.withLock { _ = $0.removeValue(forKey: id) } }
    return try await withThrowingTaskGroup(of: [UInt8].self) { tasks in
      tasks.addTask {
        try await self.awaitReply(id, from: member) { () throws(TransportError) in
          try send(.request(id: id, body: body))
        }
      }
      tasks.addTask {
        try await clock.sleep(for: timeout)
        throw RequestChannelError.timeout(member)
      }
      defer { tasks.cancelAll() }
      guard let reply = try await tasks.next() else { throw RequestChannelError.timeout(member) }
      return reply
    }
  }

  private func awaitReply(
    _ id: UInt64, from member: NodeID, send: @escaping @Sendable () throws(TransportError) -> Void
  ) async throws -> [UInt8] {
    try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<[UInt8], any Error>) in
        let registered = waiters.withLock { w -> Bool in
          guard case .pending? = w[id] else { return false }
          w[id] = .waiting(member, continuation)
          return true
        }
        guard registered else {
          continuation.resume(throwing: CancellationError())
          return
        }
        do {
          try send()
        } catch {
          let taken = waiters.withLock { w -> CheckedContinuation<[UInt8], any Error>? in
            guard case .waiting(_, let continuation)? = w[id] else { return nil }
            w[id] = .abandoned
            return continuation
          }
          taken?.resume(throwing: RequestChannelError.unreachable(member, "\(error)"))
        }
      }
    } onCancel: {
      let taken = waiters.withLock { w -> CheckedContinuation<[UInt8], any Error>? in
        switch w[id] {
        case .waiting(_, let continuation)?:
          w[id] = .abandoned
          return continuation
        case .pending?:
          w[id] = .abandoned
          return nil
        case .abandoned?, nil:
          return nil
        }
      }
      taken?.resume(throwing: CancellationError())
    }
  }
}

/// A ``RequestChannel`` from one host to the other hosts of its cluster, over the hosts' own transport (see
/// ``GroupRouter``): a request to this host itself is handed straight to its handler.
struct PeerRequestChannel: RequestChannel {
  let router: GroupRouter
  let clock: any NodeClock
  let local: @Sendable ([UInt8]) async -> [UInt8]

  func send(_ request: [UInt8], to member: NodeID, timeout: Duration) async throws -> [UInt8] {
    if member == router.node { return await local(request) }
    let router = self.router
    return try await router.peers.request(request, to: member, timeout: timeout, clock: clock) {
      (message) throws(TransportError) in
      try router.send(message, to: member, group: .default)
    }
  }
}
