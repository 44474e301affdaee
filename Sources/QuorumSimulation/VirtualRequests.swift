public import QuorumCore
import Synchronization

/// Client requests and their replies, carried through a ``VirtualNetwork``'s model: what lets simulated
/// clients talk to simulated servers the way real clients talk to `quorum serve` over TCP.
///
/// A request may be lost or delayed, but reaches the server at most once, as one send over TCP does: a client
/// told that a write was refused (`notLeader`, say) relies on that refusal being the only handling of that
/// send, and a late second copy applied after it would be a network TCP does not have. The server's duplicate
/// detection is still exercised by the clients' own retries, which resend a request under the same session and
/// sequence. A reply may be lost, duplicated or delayed. The server's handler runs as a task of the server's
/// current process, so a crashed or paused server answers nothing (or answers late), and the client learns only
/// what a real client would: a reply, or silence until its timeout.
public final class VirtualRequests<Request: Sendable, Reply: Sendable>: Sendable {
  private struct Server {
    var process: UInt32
    var handler: @Sendable (Request) async -> Reply
  }

  private let scheduler: SimulationScheduler
  private let route: @Sendable (Link) -> [VirtualTime]
  private let servers = Mutex<[NodeID: Server]>([:])

  /// Creates a request network whose links follow `network`'s partitions and faults.
  public init<Message>(scheduler: SimulationScheduler, network: VirtualNetwork<Message>) {
    self.scheduler = scheduler
    self.route = { network.deliveryTimes(on: $0) }
  }

  /// Makes `node` answer requests with `handler`, run as a task of process `process` (replacing an earlier one).
  public func serve(_ node: NodeID, process: UInt32, handler: @escaping @Sendable (Request) async -> Reply) {
    servers.withLock { $0[node] = Server(process: process, handler: handler) }
  }

  /// Stops `node` answering (it crashed).
  public func stopServing(_ node: NodeID) {
    _ = servers.withLock { $0.removeValue(forKey: node) }
  }

  /// Sends `request` from `client` to `server`; returns the first reply to arrive, or `nil` if none arrives within
  /// `timeout` of virtual time.
  public func call(_ request: Request, from client: NodeID, to server: NodeID, timeout: VirtualDuration) async -> Reply?
  {
    let once = ReplyOnce<Reply>()
    return await withUnsafeContinuation { (continuation: UnsafeContinuation<Reply?, Never>) in
      once.set(continuation)
      scheduler.schedule(at: scheduler.now + timeout) { once.resume(nil) }
      // The first copy only (see above); the route is still drawn in full, so every seed's random draws stay
      // as they were.
      for time in route(Link(from: client, to: server)).prefix(1) {
        scheduler.schedule(at: time) { [self] in deliver(request, from: client, to: server, once: once) }
      }
    }
  }

  private func deliver(_ request: Request, from client: NodeID, to server: NodeID, once: ReplyOnce<Reply>) {
    guard let target = servers.withLock({ $0[server] }) else { return }
    let route = self.route
    let scheduler = self.scheduler
    scheduler.spawn(on: target.process) {
      let reply = await target.handler(request)
      for time in route(Link(from: server, to: client)) {
        scheduler.schedule(at: time) { once.resume(reply) }
      }
    }
  }
}

/// A continuation resumed at most once, by whichever comes first: a reply or the timeout.
private final class ReplyOnce<Reply: Sendable>: Sendable {
  private let state = Mutex<(continuation: UnsafeContinuation<Reply?, Never>?, done: Bool)>((nil, false))

  func set(_ continuation: UnsafeContinuation<Reply?, Never>) {
    state.withLock { $0.continuation = continuation }
  }

  func resume(_ reply: Reply?) {
    let continuation = state.withLock { s -> UnsafeContinuation<Reply?, Never>? in
      guard !s.done else { return nil }
      s.done = true
      defer { s.continuation = nil }
      return s.continuation
    }
    continuation?.resume(returning: reply)
  }
}
