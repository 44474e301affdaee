import CQuorumSystem
import Glibc
import Synchronization
import Testing

@testable import QuorumTCP

/// Records how a ``Connection`` closed.
private final class ClosingDelegate: ConnectionDelegate, @unchecked Sendable {
  // Safety of @unchecked Sendable: used on the loop's thread only; `closed` is behind a mutex all the same.
  let closed = Mutex<TCPCloseReason?>(nil)

  func connectionDidConnect(_ connection: Connection) {}
  func connectionDidDrain(_ connection: Connection) {}
  func connectionDidParse(_ connection: Connection) {}
  func connection(_ connection: Connection, didCloseWith reason: TCPCloseReason) {
    closed.withLock { $0 = reason }
  }
  func connection(_ connection: Connection, didReceive bytes: [UInt8], range: Range<Int>) -> FrameVerdict {
    .proceed
  }
}

/// A frame's timeout while it waits in line for the shared receive budget (``Connection/PauseReasons/budget``),
/// on a hand-moved clock: the wait does not count against the frame's timeout, and the wait is bounded on its own.
/// Deterministic: no sleeps, every instant is set by the test.
@Suite("Connection deadlines while waiting for the receive budget")
struct ConnectionDeadlineTests {
  static let second: UInt64 = 1_000_000_000
  /// The frame timeout.
  static let timeout: UInt64 = 30 * second
  /// When the frame begins (any instant past zero).
  static let start: UInt64 = 1_000 * second

  /// What a scenario saw: for each deadline checked, whether the connection was still open after it.
  struct Outcome: Sendable, Equatable {
    var openAfter: [Bool] = []
    var reason: TCPCloseReason?
  }

  /// Runs `scenario` on the loop's thread against a connection that has read the first 1,000 bytes of a
  /// 100,000-byte frame at ``start``; `scenario` moves the clock with its `setNow` argument.
  func run(
    waitBound: UInt64?,
    _ scenario: @escaping @Sendable (Connection, _ setNow: (UInt64) -> Void, _ check: (UInt64) -> Void) -> Void
  ) async throws -> Outcome {
    var fds: [Int32] = [0, 0]
    try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
    try #require(fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK) == 0)
    defer { Glibc.close(fds[0]) }
    var partial: [UInt8] = []
    withUnsafeBytes(of: UInt32(100_000).littleEndian) { partial.append(contentsOf: $0) }
    partial += [UInt8](repeating: 7, count: 1_000)
    let sent = partial.withUnsafeBytes { send(fds[0], $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    try #require(sent == partial.count)
    let loop = try EventLoop(logger: .disabled)
    try loop.start()
    defer { loop.stop() }
    let delegate = ClosingDelegate()
    let readerFD = fds[1]
    let outcome = await loop.submit { () -> Outcome in
      var now = Self.start
      let connection = Connection(
        loop: loop, fd: readerFD, remote: "pair", maxFrameBytes: 1 << 20, frameTimeout: .nanoseconds(Self.timeout))
      connection.delegate = delegate
      connection.clock = { now }
      connection.budgetWaitTimeoutNanos = waitBound
      var outcome = Outcome()
      guard connection.start() else { return outcome }
      // The bytes are in the socket already: this read takes them, and the frame begins now.
      connection.handle(events: CQ_EPOLLIN)
      scenario(
        connection, { now = $0 },
        {
          connection.checkDeadlines(now: $0)
          outcome.openAfter.append(!connection.isClosed)
        })
      outcome.reason = delegate.closed.withLock { $0 }
      connection.close(.localShutdown)
      return outcome
    }
    return try #require(outcome)
  }

  @Test(
    "the time a frame waits in line, or for the endpoint's replies to drain, does not count against its timeout",
    arguments: [Connection.PauseReasons.budget, .sharedReplies])
  func waitDoesNotCount(reason: Connection.PauseReasons) async throws {
    let (second, timeout, start) = (Self.second, Self.timeout, Self.start)
    let outcome = try await run(waitBound: 10 * timeout) { connection, setNow, check in
      // One second of the frame's own time, then it waits in line for twice its timeout.
      setNow(start + second)
      connection.pause(reason)
      // Past the timeout counted from the frame's first byte, while it waits: still open.
      check(start + timeout + second)
      setNow(start + second + 2 * timeout)
      connection.resume(reason)
      // Let in, the frame has its timeout less the one second it took before: open just before, closed at it.
      check(start + 3 * timeout - 1)
      check(start + 3 * timeout)
    }
    #expect(outcome.openAfter == [true, true, false])
    #expect(outcome.reason == .truncatedFrame(received: 1_000, expected: 100_000))
  }

  @Test("the wait in line is bounded on its own, over all of a frame's waits")
  func waitIsBounded() async throws {
    let (second, timeout, start) = (Self.second, Self.timeout, Self.start)
    let bound = 2 * timeout
    let outcome = try await run(waitBound: bound) { connection, setNow, check in
      // A first wait of 40 s, 1 s of the frame's own time, then a second wait: the bound (60 s) is reached 20 s
      // into it, long before the frame's own timeout (which is not running).
      setNow(start + second)
      connection.pause(.budget)
      setNow(start + 41 * second)
      connection.resume(.budget)
      setNow(start + 42 * second)
      connection.pause(.budget)
      check(start + 62 * second - 1)
      check(start + 62 * second)
    }
    #expect(outcome.openAfter == [true, false])
    #expect(outcome.reason == .truncatedFrame(received: 1_000, expected: 100_000))
  }

  @Test("a wait in line overlapping a pause for the receiver is counted once")
  func overlappingPauses() async throws {
    let (second, timeout, start) = (Self.second, Self.timeout, Self.start)
    let outcome = try await run(waitBound: 10 * timeout) { connection, setNow, check in
      // 1 s of the frame's own time; paused for the budget from then until 61 s, and for the receiver from 2 s to
      // 40 s within it: the frame has 29 s left from 61 s.
      setNow(start + second)
      connection.pause(.budget)
      setNow(start + 2 * second)
      connection.pause(.receiver)
      setNow(start + 40 * second)
      connection.resume(.receiver)
      check(start + 50 * second)
      setNow(start + 61 * second)
      connection.resume(.budget)
      check(start + 90 * second - 1)
      check(start + 90 * second)
    }
    #expect(outcome.openAfter == [true, true, false])
  }

  @Test("overlapping waits for the budget and for the replies count once towards the wait bound")
  func overlappingWaitsShareTheBound() async throws {
    let (second, timeout, start) = (Self.second, Self.timeout, Self.start)
    let bound = 2 * timeout
    let outcome = try await run(waitBound: bound) { connection, setNow, check in
      // Waiting from 1 s (budget, then replies too from 10 s, budget lifted at 30 s): one wait, which reaches the
      // bound (60 s) at 61 s, while the replies still hold it.
      setNow(start + second)
      connection.pause(.budget)
      setNow(start + 10 * second)
      connection.pause(.sharedReplies)
      setNow(start + 30 * second)
      connection.resume(.budget)
      check(start + 61 * second - 1)
      check(start + 61 * second)
    }
    #expect(outcome.openAfter == [true, false])
  }
}
