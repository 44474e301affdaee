import QuorumCore
import QuorumSimulation
import QuorumTCP
import Testing

/// One kind of hostile or broken input sent to a listener on a raw socket.
enum BadInput: String, CaseIterable, Sendable, CustomTestStringConvertible {
  case randomBytes = "random bytes"
  case oversizedLengthPrefix = "an oversized length prefix"
  case truncatedFrameThenEOF = "a truncated frame, then the end of the stream"
  case stalledFrame = "a frame that stops arriving half-way"
  case wrongClusterID = "a wrong cluster id"
  case unknownNode = "an unknown node id"
  case unsupportedVersion = "a handshake offering only versions this node does not speak"
  case halfOpenConnection = "a half-open connection that never speaks"
  case garbageAfterHandshake = "garbage after a valid handshake"
  case spoofedSender = "a frame claiming another sender"

  var testDescription: String { rawValue }

  static let cluster: ClusterID = "bad-input"

  /// Random bytes from a fixed seed; their first four bytes, read as a length, exceed even the 1 MiB limit
  /// used below after the handshake, so the listener must refuse the frame by its length alone (before the
  /// handshake the limit is 4 KiB).
  static let random: [UInt8] = {
    var generator = SeededRandom(seed: 42)
    return (0..<512).map { _ in UInt8.random(in: 0...255, using: &generator) }
  }()

  /// The bytes to send, and whether to half-close afterwards.
  func bytes(to listener: NodeID) -> (bytes: [UInt8], halfClose: Bool) {
    let valid = handshakeFrame(cluster: Self.cluster, from: 3, to: listener, protocolNumber: WireProtocol.test)
    switch self {
    case .randomBytes: return (Self.random, false)
    case .oversizedLengthPrefix: return ([0xFF, 0xFF, 0xFF, 0x7F] + [UInt8](repeating: 1, count: 64), false)
    case .truncatedFrameThenEOF: return (valid + [100, 0, 0, 0] + [UInt8](repeating: 7, count: 10), true)
    case .stalledFrame: return (valid + [100, 0, 0, 0] + [UInt8](repeating: 7, count: 10), false)
    case .wrongClusterID:
      return (handshakeFrame(cluster: "someone-else", from: 3, to: listener, protocolNumber: WireProtocol.test), false)
    case .unknownNode:
      return (handshakeFrame(cluster: Self.cluster, from: 99, to: listener, protocolNumber: WireProtocol.test), false)
    case .unsupportedVersion:
      var hello = handshakeFrame(cluster: Self.cluster, from: 3, to: listener, protocolNumber: WireProtocol.test)
      // The lowest and highest versions offered follow the 4-byte length and the 4-byte magic.
      hello[8] = 9
      hello[9] = 9
      return (hello, false)
    case .halfOpenConnection: return ([], false)
    case .garbageAfterHandshake: return (valid + [8, 0, 0, 0] + [UInt8](repeating: 0xAB, count: 8), false)
    case .spoofedSender:
      let spoofed = TCPFrame.encode(
        Envelope(from: 2, to: listener, payload: ConformanceMessage(sender: 2, sequence: 0)),
        protocolNumber: WireProtocol.test)
      return (valid + spoofed, false)
    }
  }

  /// The close reason the listener must record, and a phrase its log line must contain.
  var expected: (reason: String, logged: String) {
    switch self {
    case .randomBytes: return ("frame-too-large", "exceeds the 4096-byte limit")
    case .oversizedLengthPrefix: return ("frame-too-large", "frame of 2147483647 bytes exceeds")
    case .truncatedFrameThenEOF: return ("truncated-frame", "truncated frame: 10 of 100 bytes")
    case .stalledFrame: return ("truncated-frame", "truncated frame: 10 of 100 bytes")
    case .wrongClusterID: return ("cluster-mismatch", "cluster id mismatch")
    case .unknownNode: return ("unknown-node", "unknown node n99")
    case .unsupportedVersion:
      return (
        "no-common-version", "no protocol version in common: this side speaks version 3, the other side version 9"
      )
    case .halfOpenConnection: return ("bad-handshake", "no handshake within the timeout")
    case .garbageAfterHandshake: return ("malformed-frame", "malformed frame")
    case .spoofedSender: return ("malformed-frame", "a frame from n2 on the connection of n3")
    }
  }
}

@Suite("Bad input on a socket closes only that connection", .timeLimit(.minutes(2)))
struct BadInputTests {
  @Test(
    "each bad input closes its connection with a logged reason, and the node keeps serving",
    arguments: BadInput.allCases)
  func badInputIsContained(_ input: BadInput) async throws {
    #expect(
      UInt32(BadInput.random[0]) | UInt32(BadInput.random[1]) << 8 | UInt32(BadInput.random[2]) << 16
        | UInt32(BadInput.random[3]) << 24 > 1 << 20)
    let sink = CapturingLogSink()
    let options = TCPTransportOptions(
      maxFrameBytes: 1 << 20, handshakeTimeout: .milliseconds(300), frameTimeout: .milliseconds(300))
    let transport = TCPTransport<ConformanceMessage>(
      cluster: BadInput.cluster, protocolNumber: WireProtocol.test, options: options,
      security: .insecure, logger: QuorumLogger(label: "tcp", sink: sink))
    let n1 = try await transport.bind(1)
    let n2 = try await transport.bind(2)
    let n3 = try await transport.bind(3)  // known to the address book, so a handshake as n3 is accepted
    defer { Task { await transport.shutdown() } }

    // A healthy link carries traffic before, during and after the attack.
    try n2.send(ConformanceMessage(sender: 2, sequence: 0), to: 1)
    #expect(try await receive(n1.incoming).payload.sequence == 0)

    let raw = try await RawSocket(connectingTo: n1.address)
    let (bytes, halfClose) = input.bytes(to: 1)
    if !bytes.isEmpty { try raw.send(bytes) }
    if halfClose { raw.shutdownWrite() }
    try n2.send(ConformanceMessage(sender: 2, sequence: 1), to: 1)
    let reply = try await raw.readUntilClosed()

    let (reason, logged) = input.expected
    // The close is counted just before it is logged: wait for both.
    try await waitUntil("a '\(reason)' close in \(transport.metrics), logged as '\(logged)':\n\(sink.lines)") {
      transport.metrics.closes(reason) >= 1 && sink.contains(logged)
    }
    if input == .wrongClusterID {
      // The refusal travels back to the dialler before the close, so it can say what is wrong.
      #expect(String(decoding: reply, as: UTF8.self).contains("cluster id mismatch"))
    }

    // The node goes on serving its healthy peer.
    #expect(try await receive(n1.incoming).payload.sequence == 1)
    try n2.send(ConformanceMessage(sender: 2, sequence: 2), to: 1)
    #expect(try await receive(n1.incoming).payload.sequence == 2)
    _ = n3
  }
}
