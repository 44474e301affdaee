import QuorumCore
import QuorumSimulation
import Testing

@testable import QuorumTCP

/// A peer connection's reads: data frames and pings arriving together are all delivered, in order, and each
/// ping is acknowledged with the number of frames received up to and including it.
@Suite("Peer frames and pings in one read")
struct PeerReadTests {
  /// Data frames 0, 1, 2, a ping, data frames 3, 4, a ping: the pings are the 4th and 7th frames.
  static func frames(seal: (([UInt8]) -> [UInt8]) = { $0 }) -> [UInt8] {
    var bytes: [UInt8] = []
    for sequence: UInt64 in 0..<3 { bytes += seal(peerFrame(from: 3, to: 1, sequence: sequence)) }
    bytes += seal(LinkControl.ping(1).frame)
    for sequence: UInt64 in 3..<5 { bytes += seal(peerFrame(from: 3, to: 1, sequence: sequence)) }
    bytes += seal(LinkControl.ping(2).frame)
    return bytes
  }

  /// The acknowledgements read until the one that counts all seven frames.
  static func acknowledgements(_ next: () async throws -> [UInt8]?) async throws -> [UInt64] {
    var counts: [UInt64] = []
    while counts.last != 7, let body = try await next() {
      guard LinkControl.isControl(body, 0..<body.count) else { continue }
      guard case .acknowledgement(let count) = try LinkControl(body, range: 0..<body.count) else { continue }
      counts.append(count)
    }
    return counts
  }

  static func expectDelivered(_ endpoint: TCPEndpoint<ConformanceMessage>) async throws {
    for sequence: UInt64 in 0..<5 {
      let envelope = try await receive(endpoint.incoming, timeout: .seconds(20))
      #expect(envelope.from == 3 && envelope.payload.sequence == sequence)
    }
  }

  @Test("authenticated: pings between data frames are acknowledged with the frames before them; none is lost")
  func authenticated() async throws {
    let pair = try await SecurePair()
    let peer = try await HandDriven(
      to: pair.n1.address, cluster: pair.cluster, node: 3, expecting: 1, key: SecurePair.secret.bytes)
    #expect(peer.failure == nil)
    try peer.socket.send(Self.frames(seal: peer.seal))
    let counts = try await Self.acknowledgements { try await peer.receive(timeout: .seconds(20)) }
    #expect(counts.contains(4) && counts.last == 7, "\(counts)")
    #expect(counts == counts.sorted(), "\(counts)")
    try await Self.expectDelivered(pair.n1)
    await pair.close()
  }

  @Test("the handshake and the frames after it in one write: acknowledged and delivered the same")
  func afterHandshake() async throws {
    let options = TCPTransportOptions(
      handshakeTimeout: .seconds(120), liveness: LinkLiveness(pingInterval: .seconds(60), timeout: .seconds(120)))
    let transport = TCPTransport<ConformanceMessage>(
      cluster: "peer-reads", protocolNumber: WireProtocol.test, options: options, security: .insecure,
      logger: .disabled)
    let n1 = try await transport.bind(1)
    let n3 = try await transport.bind(3)  // known to the address book, so a handshake as n3 is accepted
    let raw = try await RawSocket(connectingTo: n1.address)
    let hello = handshakeFrame(cluster: "peer-reads", from: 3, to: 1, protocolNumber: WireProtocol.test)
    try raw.send(hello + Self.frames())
    var reader = FrameReader()
    let counts = try await Self.acknowledgements { try await reader.next(from: raw, timeout: .seconds(20)) }
    #expect(counts.contains(4) && counts.last == 7, "\(counts)")
    #expect(counts == counts.sorted(), "\(counts)")
    try await Self.expectDelivered(n1)
    _ = n3
    await transport.shutdown()
  }
}
