import CQuorumSystem
import Glibc
import Testing

@testable import QuorumTCP

@Suite("The endpoint's reply budget")
struct SharedReplyBudgetTests {
  @Test("connections that join one by one, each filling its fair share, stop at twice the limit")
  func fairSharesStopAtTwiceTheLimit() {
    let budget = SharedReplyBudget(limit: 1_000)
    var admitted = 0
    for connections in 1...50 {
      budget.members.store(connections, ordering: .relaxed)
      let share = 1_000 / connections
      if budget.charge(share, queued: 0, always: false) { admitted += share }
    }
    // Without the ceiling the shares sum to about 1,000 × ln(50) ≈ 3,900 bytes.
    #expect(admitted > 1_000, "fair shares are admitted past the limit")
    #expect(budget.bytes <= 2_000, "\(budget.bytes) bytes queued")
  }

  @Test("past the limit, a connection over its fair share is refused; a small reply to an idle one is not")
  func overShareRefused() {
    let budget = SharedReplyBudget(limit: 1_000)
    budget.members.store(2, ordering: .relaxed)
    #expect(budget.charge(1_000, queued: 0, always: false))
    #expect(!budget.charge(600, queued: 0, always: false), "over its share (500) with the budget full")
    #expect(budget.charge(400, queued: 0, always: false), "within its share")
    #expect(budget.charge(64, queued: 0, always: true))
    #expect(budget.bytes == 1_464)
    budget.credit(1_464)
    #expect(budget.bytes == 0)
  }

  /// What a write-batch scenario saw: the budget's bytes, and what the connection and its queue held, at each step.
  struct Step: Sendable, Equatable, CustomStringConvertible {
    var budget: Int
    var batch: Int
    var queued: Int

    var description: String { "budget \(budget), batch \(batch), queued \(queued)" }
  }

  /// Runs `scenario` on the loop's thread against a connection over a socketpair whose other end reads nothing unless
  /// the scenario says so (its `clientReads` argument: the client reads what arrived, the connection writes what
  /// the socket takes then, and the step is recorded); replies go through a ``ReplyRoute`` bound to the connection as an
  /// endpoint binds a client's, charged to a budget of its own. `first`, if given, is sent from this (non-loop)
  /// thread before the scenario runs, as a responder writing to the idle socket itself. Returns the steps the
  /// scenario recorded, then one after the connection closed, and whether the route's close callback ran.
  func runBatchScenario(
    first: Int? = nil,
    _ scenario: @escaping @Sendable (ReplyRoute, Connection, _ record: () -> Void, _ clientReads: () -> Void) -> Void
  ) async throws -> (steps: [Step], closed: Bool) {
    var fds: [Int32] = [0, 0]
    try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
    try #require(fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK) == 0)
    defer { Glibc.close(fds[0]) }
    // Small socket buffers, whatever the machine's defaults: a 1 MiB reply does not fit in them.
    var small: Int32 = 64 << 10
    try #require(setsockopt(fds[1], SOL_SOCKET, SO_SNDBUF, &small, socklen_t(MemoryLayout<Int32>.size)) == 0)
    try #require(setsockopt(fds[0], SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size)) == 0)
    let loop = try EventLoop(logger: .disabled)
    try loop.start()
    defer { loop.stop() }
    let (writerFD, clientFD) = (fds[1], fds[0])
    let budget = SharedReplyBudget(limit: 64 << 20)
    budget.members.store(1, ordering: .relaxed)
    let target = IdleTarget()
    let setUp = await loop.submit { () -> Bool in
      let connection = Connection(
        loop: loop, fd: writerFD, remote: "pair", maxFrameBytes: 8 << 20, frameTimeout: .seconds(600))
      let route = ReplyRoute(
        loop: loop, node: .none, writesFromResponders: true, quietNanos: 0, maxBytes: .max,
        metrics: MetricsCounters(), shared: budget, target: target)
      route.bind(to: connection, sealer: nil) { target.closed = true }
      target.route = route
      target.connection = connection
      guard connection.start() else { return false }
      // The first take, as the endpoint makes once its welcome is written: from then on responders may write to
      // the idle socket themselves.
      return route.take(into: connection).bytes == 0
    }
    try #require(setUp == true)
    if let first {
      // Not on the loop's thread, onto an idle link: the responder writes it itself, and the socket takes a part.
      target.route?.send { Self.appendFrame(bodyBytes: first, to: &$0) }
    }
    let steps = await loop.submit { () -> [Step] in
      guard let route = target.route, let connection = target.connection else { return [] }
      var steps: [Step] = []
      let record = {
        steps.append(
          Step(budget: budget.bytes, batch: connection.pendingWriteBytes, queued: route.queue.queuedBytes))
      }
      scenario(route, connection, record) {
        Self.drain(clientFD)
        connection.flush()
        record()
      }
      connection.close(.localShutdown)
      record()
      return steps
    }
    let closed = await loop.submit { target.closed }
    return (try #require(steps), closed == true)
  }

  /// Appends a frame of `bodyBytes` bytes, length prefix first.
  static func appendFrame(bodyBytes: Int, to buffer: inout [UInt8]) {
    withUnsafeBytes(of: UInt32(bodyBytes).littleEndian) { buffer.append(contentsOf: $0) }
    buffer.append(contentsOf: [UInt8](repeating: 7, count: bodyBytes))
  }

  /// Reads what is waiting on `fd`, without blocking.
  static func drain(_ fd: Int32) {
    var scratch = [UInt8](repeating: 0, count: 1 << 16)
    while scratch.withUnsafeMutableBytes({ recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }) > 0 {}
  }

  @Test("replies in a connection's write batch stay charged to the budget until written; a close gives back the rest")
  func writeBatchStaysCharged() async throws {
    let reply = 1 << 20
    let (steps, closed) = try await runBatchScenario { route, connection, record, clientReads in
      // Four replies queued (the responder is on the loop's thread); the loop takes the first into the write batch
      // and writes what the socket takes: most of it stays in the batch, as the client reads nothing.
      for _ in 0..<4 { route.send { Self.appendFrame(bodyBytes: reply, to: &$0) } }
      record()
      _ = route.take(into: connection)
      connection.flush()
      record()
      // The client reads what arrived: the loop writes more of the batch.
      clientReads()
    }
    let frame = reply + TCPFrame.prefixBytes
    try #require(steps.count == 4, "\(steps)")
    #expect(steps[0] == Step(budget: 4 * frame, batch: 0, queued: 4 * frame))
    for step in steps[1...2] {
      // Whatever is not yet written counts, in the queue or in the batch (before the fix, the batch did not).
      #expect(step.batch > 0 && step.batch < frame && step.queued == 3 * frame, "\(steps)")
      #expect(step.budget == step.batch + step.queued, "\(steps)")
    }
    #expect(steps[2].batch < steps[1].batch, "the client's read let the loop write more: \(steps)")
    // Closed with bytes in the batch and the queue: nothing stays charged.
    #expect(steps[3].budget == 0 && closed, "\(steps)")
  }

  @Test("what the socket does not take of a responder's own write stays charged until written or dropped")
  func responderRemainderStaysCharged() async throws {
    let reply = 1 << 20
    let (steps, closed) = try await runBatchScenario(first: reply) { route, connection, record, clientReads in
      // The rest of the responder's write is the link's remainder, until the loop takes it into its batch.
      record()
      _ = route.take(into: connection)
      record()
      clientReads()
    }
    let frame = reply + TCPFrame.prefixBytes
    try #require(steps.count == 4, "\(steps)")
    #expect(steps[0].batch == 0 && steps[0].queued == 0, "\(steps)")
    #expect(steps[0].budget > 0 && steps[0].budget < frame, "the remainder counts: \(steps)")
    #expect(steps[1].budget == steps[0].budget && steps[1].batch == steps[0].budget, "\(steps)")
    #expect(steps[2].budget == steps[2].batch && steps[2].batch < steps[1].batch, "\(steps)")
    #expect(steps[3].budget == 0 && closed, "\(steps)")
  }
}

/// A reply route's target that does nothing (the scenarios move the replies themselves), and holds the route and
/// connection of a scenario between its steps on the loop's thread.
private final class IdleTarget: ReplyTarget, @unchecked Sendable {
  // Safety of @unchecked Sendable: the properties are set and read on the loop's thread only (inside `submit`),
  // and the test's own thread reads `route` between two of those, while the loop runs nothing else of it.
  var route: ReplyRoute?
  var connection: Connection?
  /// The route's close callback ran.
  var closed = false

  func flushReplies() {}
  func repliesOverflowed() {}
}
