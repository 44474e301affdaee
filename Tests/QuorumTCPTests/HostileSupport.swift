import CQuorumSystem
import Glibc
import QuorumCore
import QuorumSimulation
import Synchronization
import Testing

@testable import QuorumTCP

/// The resident set of this process, in bytes (from `/proc/self/statm`).
func residentBytes() throws -> Int {
  let fd = open("/proc/self/statm", O_RDONLY)
  guard fd >= 0 else { throw TimedOut(description: "cannot open /proc/self/statm") }
  defer { close(fd) }
  var buffer = [UInt8](repeating: 0, count: 128)
  let count = read(fd, &buffer, buffer.count)
  let fields = String(decoding: buffer[0..<max(0, count)], as: UTF8.self).split(separator: " ")
  guard fields.count >= 2, let pages = Int(fields[1]) else { throw TimedOut(description: "unreadable statm") }
  return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

/// Reads whole frames from a raw socket without blocking a thread (polls).
struct FrameReader {
  private var buffer: [UInt8] = []

  /// The next frame's body, waiting at most `timeout`; `nil` if the connection ended first.
  mutating func next(from socket: RawSocket, timeout: Duration = .seconds(30)) async throws -> [UInt8]? {
    var chunk = [UInt8](repeating: 0, count: 65_536)
    let deadline = ContinuousClock.now.advanced(by: timeout)
    while true {
      if buffer.count >= 4 {
        let length =
          Int(buffer[0]) | Int(buffer[1]) << 8 | Int(buffer[2]) << 16 | Int(buffer[3]) << 24
        if buffer.count >= 4 + length {
          let body = Array(buffer[4..<(4 + length)])
          buffer.removeFirst(4 + length)
          return body
        }
      }
      let n = chunk.withUnsafeMutableBytes { recv(socket.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
      if n > 0 {
        buffer.append(contentsOf: chunk[0..<n])
        continue
      }
      if n == 0 { return nil }
      let code = errno
      guard code == EAGAIN || code == EWOULDBLOCK else { return nil }
      if ContinuousClock.now > deadline { throw TimedOut(description: "no frame within \(timeout)") }
      try await Task.sleep(for: .milliseconds(2))
    }
  }
}

/// A hand-driven connection: the test runs the dialler's side of the handshake itself (with the real state
/// machine) and then sends frames it builds, altered as it likes.
final class HandDriven {
  let socket: RawSocket
  var reader = FrameReader()
  /// The session after an authenticated handshake.
  var session: TCPSession?
  /// How the handshake ended, if it failed.
  var failure: TCPCloseReason?

  /// Connects to `address` (from `source`, a loopback address, if given) and runs the handshake.
  init(
    to address: TCPAddress, from source: String? = nil, cluster: ClusterID, role: TCPHandshake.Role = .peer,
    node: NodeID = .none, expecting: NodeID = .none, protocolNumber: UInt8 = WireProtocol.test,
    principal: String = "", key: [UInt8]?, versions: ClosedRange<UInt8> = TCPHandshake.supportedVersions,
    extensions: [UInt8] = []
  ) async throws {
    socket = try await RawSocket(connectingTo: address, from: source)
    var handshake = DiallerHandshake(
      cluster: cluster, role: role, from: node, to: expecting, protocolNumber: protocolNumber, principal: principal,
      key: key, nonce: try SecureRandom.bytes(count: TCPHandshake.nonceByteCount), versions: versions,
      extensions: extensions)
    try socket.send(handshake.helloFrame)
    while true {
      guard let body = try await reader.next(from: socket) else {
        failure = .peerClosed
        return
      }
      switch handshake.receive(body, 0..<body.count) {
      case .send(let frame): try socket.send(frame)
      case .established(let session):
        self.session = session
        return
      case .failed(let reason):
        failure = reason
        return
      }
    }
  }

  /// `frame` (length prefix and body) with its code, advancing the sequence number.
  func seal(_ frame: [UInt8]) -> [UInt8] {
    guard var session else { return frame }
    let sealed = session.sealer.seal(frame)
    self.session = session
    return sealed
  }

  /// Opens the next frame from the listener; `nil` if the connection ended (or the code did not verify).
  func receive(timeout: Duration = .seconds(30)) async throws -> [UInt8]? {
    guard let body = try await reader.next(from: socket, timeout: timeout) else { return nil }
    guard var session else { return body }
    let opened = session.opener.open(body, range: 0..<body.count)
    self.session = session
    return opened.map { Array(body[$0]) }
  }
}

/// A peer frame carrying a conformance message from `from` to `to`, as a transport would send it.
func peerFrame(from: NodeID, to: NodeID, sequence: UInt64, payload: [UInt8] = []) -> [UInt8] {
  TCPFrame.encode(
    Envelope(from: from, to: to, payload: ConformanceMessage(sender: from, sequence: sequence, payload: payload)),
    protocolNumber: WireProtocol.test)
}

/// A client request frame as a ``TCPRequestClient`` would send it.
func requestFrame(id: UInt64, body: [UInt8]) -> [UInt8] {
  TCPFrame.encode(
    Envelope(from: .none, to: .none, payload: RPCPayload(id: id, body: body)), protocolNumber: WireProtocol.client)
}

/// Who the requests a server answered came from.
final class SeenPrincipals: Sendable {
  private let seen = Mutex<[String]>([])
  func record(_ request: TCPRequest) { seen.withLock { $0.append("\(request.principal ?? "-")/\(request.role)") } }
  var all: [String] { seen.withLock { $0 } }
}

/// Answers every request on `endpoint`: a body of "big N" gets N bytes back, anything else is echoed.
func serveEcho(_ endpoint: TCPEndpoint<ConformanceMessage>, seen: SeenPrincipals? = nil) -> Task<Void, Never> {
  Task {
    var batch: [TCPRequest] = []
    while await endpoint.requests.receive(into: &batch) {
      for request in batch {
        seen?.record(request)
        let text = String(decoding: request.body, as: UTF8.self)
        if text.hasPrefix("big "), let count = Int(text.dropFirst(4)) {
          request.respond([UInt8](repeating: 0x42, count: count))
        } else {
          request.respond(request.body)
        }
      }
      batch.removeAll()
    }
  }
}
