import QuorumCore
import QuorumSimulation
import Testing

@testable import QuorumTCP

/// Peers present their group table digest (``TCPTransportOptions/groupTableDigest``) in the handshake: members
/// whose group lists differ refuse each other, since a peer message names its group by number alone.
@Suite("Group table digests in the peer handshake", .timeLimit(.minutes(2)))
struct GroupTableDigestTests {
  static let tableA = [UInt8](repeating: 0xA1, count: 32)
  static let tableB = [UInt8](repeating: 0xB2, count: 32)

  static func options(_ digest: [UInt8]) -> TCPTransportOptions {
    var options = TCPTransportOptions(reconnect: ReconnectPolicy(initialBackoff: .milliseconds(5), seed: 3))
    options.groupTableDigest = digest
    return options
  }

  @Test("insecure peers whose group tables differ refuse each other at the handshake, and both listeners say why")
  func differentTablesRefuseEachOther() async throws {
    let sinkA = CapturingLogSink()
    let sinkB = CapturingLogSink()
    let a = loopbackTransport(options: Self.options(Self.tableA), logger: QuorumLogger(label: "a", sink: sinkA))
    let b = loopbackTransport(options: Self.options(Self.tableB), logger: QuorumLogger(label: "b", sink: sinkB))
    let n1 = try await a.bind(1)
    let n2 = try await b.bind(2)
    a.setAddress(n2.address, for: 2)
    b.setAddress(n1.address, for: 1)
    try n1.send(ConformanceMessage(sender: 1, sequence: 0), to: 2)
    try n2.send(ConformanceMessage(sender: 2, sequence: 0), to: 1)
    try await waitUntil("both listeners to refuse the other's group table") {
      a.metrics.closes("group-table-mismatch") >= 1 && b.metrics.closes("group-table-mismatch") >= 1
    }
    #expect(sinkA.contains("the group lists differ (group table digest a1a1a1a1a1a1a1a1 here, b2b2b2b2b2b2b2b2"))
    try await waitUntil("the diallers to be told why") {
      sinkA.contains("rejected by the remote side: the group lists differ")
        && sinkB.contains("rejected by the remote side: the group lists differ")
    }
    #expect(n1.incoming.count == 0 && n2.incoming.count == 0, "no message crossed")
    await n1.close()
    await n2.close()
  }

  @Test("authenticated peers whose group tables differ are refused once they prove the secret, and told why")
  func authenticatedPeersAreToldWhy() async throws {
    let sinkB = CapturingLogSink()
    let a = loopbackTransport(options: Self.options(Self.tableA), security: conformanceSecurity)
    let b = loopbackTransport(
      options: Self.options(Self.tableB), security: conformanceSecurity, logger: QuorumLogger(label: "b", sink: sinkB))
    let n1 = try await a.bind(1)
    let n2 = try await b.bind(2)
    a.setAddress(n2.address, for: 2)
    b.setAddress(n1.address, for: 1)
    try n2.send(ConformanceMessage(sender: 2, sequence: 0), to: 1)
    try await waitUntil("the listener to refuse the dialler's group table") {
      a.metrics.closes("group-table-mismatch") >= 1
        && sinkB.contains("rejected by the remote side: the group lists differ")
    }
    #expect(a.metrics.closes("authentication-failed") == 0, "the dialler proved the secret")
    #expect(n1.incoming.count == 0)
    await n1.close()
    await n2.close()
  }

  @Test("peers with equal group tables connect and deliver, with or without authentication")
  func equalTablesConnect() async throws {
    for security in [TCPSecurity.insecure, conformanceSecurity] {
      let a = loopbackTransport(options: Self.options(Self.tableA), security: security)
      let b = loopbackTransport(options: Self.options(Self.tableA), security: security)
      let n1 = try await a.bind(1)
      let n2 = try await b.bind(2)
      a.setAddress(n2.address, for: 2)
      b.setAddress(n1.address, for: 1)
      try n2.send(ConformanceMessage(sender: 2, sequence: 7), to: 1)
      let envelope = try await receive(n1.incoming)
      #expect(envelope.payload.sequence == 7)
      #expect(a.metrics.closes("group-table-mismatch") == 0)
      await n1.close()
      await n2.close()
    }
  }

  @Test("a peer without a digest is refused by one with a digest; clients present none and are not checked")
  func missingDigestIsAMismatch() {
    let policy = ListenerPolicy(
      cluster: "c", node: 1, peerProtocol: WireProtocol.test, serveClients: true, security: .insecure,
      admitsPeer: { _ in true }, groupTableDigest: Self.tableA)
    var listener = ListenerHandshake(policy: policy, random: [UInt8](repeating: 0, count: 64))
    let peer = DiallerHandshake(
      cluster: "c", role: .peer, from: 2, to: 1, protocolNumber: WireProtocol.test, principal: "", key: nil,
      nonce: [])
    let body = Array(peer.helloFrame.dropFirst(TCPFrame.prefixBytes))
    guard case .refuse(_, let reason) = listener.receive(body, 0..<body.count) else {
      Issue.record("a peer without a group table digest was admitted")
      return
    }
    #expect(reason == .groupTableMismatch(local: "a1a1a1a1a1a1a1a1", remote: "(none)"))
    var clientListener = ListenerHandshake(policy: policy, random: [UInt8](repeating: 0, count: 64))
    let client = DiallerHandshake(
      cluster: "c", role: .client, from: .none, to: .none, protocolNumber: WireProtocol.client, principal: "",
      key: nil, nonce: [], groupTableDigest: Self.tableB)
    #expect(client.hello.groupTableDigest.isEmpty, "a client presents no digest")
    let clientBody = Array(client.helloFrame.dropFirst(TCPFrame.prefixBytes))
    guard case .verified = clientListener.receive(clientBody, 0..<clientBody.count) else {
      Issue.record("a client was refused")
      return
    }
  }

  @Test("the digest round-trips in the hello, which without one carries it empty, in its place in the layout")
  func helloEncoding() throws {
    let plain = TCPHandshake(cluster: "c", role: .client, from: .none, to: .none, protocolNumber: 3)
    var layout = WireWriter()
    layout.writeFixed32(TCPHandshake.magic)
    layout.writeByte(3)
    layout.writeByte(3)
    layout.writeByte(0)
    layout.writeByte(TCPHandshake.Role.client.rawValue)
    layout.writeString("c")
    layout.writeVarint(0)
    layout.writeVarint(0)
    layout.writeByte(3)
    layout.writeString("")
    layout.writeBytes([UInt8]())
    layout.writeBytes([UInt8]())
    #expect(plain.wireBytes() == layout.bytes)
    let peer = TCPHandshake(
      cluster: "c", role: .peer, from: 2, to: 1, protocolNumber: 5, groupTableDigest: Self.tableA)
    #expect(try TCPHandshake(wireBytes: peer.wireBytes()) == peer)
    #expect(try TCPHandshake(wireBytes: layout.bytes).groupTableDigest.isEmpty)
  }

  @Test("options refuse a digest longer than 64 bytes")
  func digestLength() {
    var options = TCPTransportOptions()
    options.groupTableDigest = [UInt8](repeating: 1, count: 65)
    #expect(throws: ConfigurationError.self) { try options.validate() }
  }
}
