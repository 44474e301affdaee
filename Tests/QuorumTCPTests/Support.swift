import CQuorumSystem
import Glibc
import QuorumCore
import QuorumTCP
import Synchronization
import Testing

/// A log sink that keeps every record, so tests can check what was logged.
final class CapturingLogSink: LogSink {
  let minimumLevel: LogLevel
  private let records = Mutex<[LogRecord]>([])

  init(minimumLevel: LogLevel = .info) { self.minimumLevel = minimumLevel }

  func write(_ record: LogRecord) { records.withLock { $0.append(record) } }

  var all: [LogRecord] { records.withLock { $0 } }

  /// Whether a record at `level` or above contains `text` in its message.
  func contains(_ text: String, atLeast level: LogLevel = .warning) -> Bool {
    all.contains { $0.level >= level && $0.message.contains(text) }
  }

  var lines: String {
    all.map { "\($0.level) \($0.label): \($0.message)" }.joined(separator: "\n")
  }
}

struct TimedOut: Error, CustomStringConvertible {
  var description: String
}

/// Polls `condition` every few milliseconds until it holds, failing after `timeout`. The timeout only bounds how
/// long a broken test takes to fail: a loaded machine makes the wait longer, never the test red.
func waitUntil(
  _ what: @autoclosure () -> String, timeout: Duration = .seconds(60), _ condition: () async throws -> Bool
) async throws {
  let deadline = ContinuousClock.now.advanced(by: timeout)
  while try await !condition() {
    if ContinuousClock.now > deadline {
      throw TimedOut(description: "timed out after \(timeout) waiting for \(what())")
    }
    try await Task.sleep(for: .milliseconds(5))
  }
}

/// Receives the next envelope, failing after `timeout` (a bound on failure, as for ``waitUntil(_:timeout:_:)``).
func receive<M: Sendable>(_ mailbox: Mailbox<Envelope<M>>, timeout: Duration = .seconds(60)) async throws -> Envelope<M>
{
  try await withThrowingTaskGroup(of: Envelope<M>?.self) { group in
    group.addTask { await mailbox.receive() }
    group.addTask {
      try await Task.sleep(for: timeout)
      return nil
    }
    defer { group.cancelAll() }
    guard let first = try await group.next(), let envelope = first else {
      throw TimedOut(description: "no message within \(timeout)")
    }
    return envelope
  }
}

/// A raw non-blocking client socket for feeding a listener bad bytes. Never blocks a thread: reads poll.
final class RawSocket: Sendable {
  let fd: Int32

  /// Connects to `address`, from the loopback address `source` if given (any of 127.0.0.0/8 reaches a
  /// listener on 127.0.0.1, so a test can play many hosts).
  init(connectingTo address: TCPAddress, from source: String? = nil) async throws {
    let fd = cq_tcp_socket(cq_address_family(address.host))
    guard fd >= 0 else { throw TimedOut(description: "socket failed") }
    self.fd = fd
    if let source, cq_bind_source(fd, source) != 0 { throw TimedOut(description: "bind \(source): errno \(errno)") }
    let result = cq_connect(fd, address.host, Int32(address.port))
    if result != 0 && errno != EINPROGRESS { throw TimedOut(description: "connect failed: errno \(errno)") }
    try await waitUntil("the raw socket to connect") {
      var code: Int32 = -1
      _ = cq_getsockopt_int(fd, SOL_SOCKET, SO_ERROR, &code)
      var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
      return poll(&pfd, 1, 0) == 1 && code == 0
    }
  }

  /// Takes over `fd`, a non-blocking socket (for example one a test's own listener accepted).
  init(adopting fd: Int32) { self.fd = fd }

  deinit { Glibc.close(fd) }

  /// Writes all of `bytes` (the socket buffer takes small writes at once).
  func send(_ bytes: [UInt8]) throws {
    var offset = 0
    while offset < bytes.count {
      let n = bytes.withUnsafeBytes { cq_send(fd, $0.baseAddress! + offset, $0.count - offset) }
      guard n > 0 else { throw TimedOut(description: "send failed: errno \(errno)") }
      offset += n
    }
  }

  /// Writes as much of `bytes` as the socket takes now; returns how many (0 when its buffer is full).
  func sendSome(_ bytes: ArraySlice<UInt8>) throws -> Int {
    let n = bytes.withUnsafeBytes { cq_send(fd, $0.baseAddress!, $0.count) }  // callers pass non-empty slices
    if n >= 0 { return n }
    let code = errno
    if code == EAGAIN || code == EWOULDBLOCK || code == ECONNRESET || code == EPIPE { return 0 }  // full, or closed
    throw TimedOut(description: "send failed: errno \(code)")
  }

  /// Whether the other side has closed the connection (reads and discards what is waiting).
  var isClosedByPeer: Bool {
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
      let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
      if n > 0 { continue }
      if n == 0 { return true }
      let code = errno
      return code != EAGAIN && code != EWOULDBLOCK
    }
  }

  /// Half-closes the sending side (the listener then sees the end of the stream).
  func shutdownWrite() { _ = Glibc.shutdown(fd, Int32(SHUT_WR)) }

  /// Reads until the listener closes the connection; returns every byte received before that.
  func readUntilClosed(timeout: Duration = .seconds(60)) async throws -> [UInt8] {
    var received: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    try await waitUntil("the listener to close the connection", timeout: timeout) {
      while true {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        if n > 0 {
          received.append(contentsOf: buffer[0..<n])
          continue
        }
        if n == 0 { return true }
        let code = errno
        return code != EAGAIN && code != EWOULDBLOCK
      }
    }
    return received
  }
}

/// A handshake frame as a peer or client would send it.
func handshakeFrame(
  cluster: ClusterID, role: TCPHandshake.Role = .peer, from: NodeID, to: NodeID, protocolNumber: UInt8
) -> [UInt8] {
  TCPFrame.frame(
    TCPHandshake(cluster: cluster, role: role, from: from, to: to, protocolNumber: protocolNumber).wireBytes())
}

/// A 32-byte secret drawn from `seed` (tests need reproducible secrets, not unpredictable ones).
func testSecret(seed: UInt64) -> TCPSecret {
  var generator = SeededRandom(seed: seed)
  // 32 bytes are above the 16-byte minimum, so this cannot throw.
  return try! TCPSecret(bytes: (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) })
}
