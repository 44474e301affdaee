import QuorumCore
import Testing

@testable import QuorumTCP

/// Protocol version negotiation in the hello: each side offers the versions it speaks, both use the highest they
/// share, and sides with none in common close with a typed reason naming both ranges. Later versions only append
/// fields to the hello, which this build reads and ignores (while the transcript binds them).
@Suite("Protocol version negotiation in the handshake", .timeLimit(.minutes(2)))
struct VersionNegotiationTests {
  /// A field a later version appends: a tag and its value.
  static func appendedField(tag: UInt64, _ value: [UInt8]) -> [UInt8] {
    var writer = WireWriter()
    writer.writeVarint(tag)
    writer.writeBytes(value)
    return writer.bytes
  }

  static let futureFields = appendedField(tag: 9, Array("compression=zstd".utf8)) + appendedField(tag: 12, [1, 2, 3])

  @Test("a hello from a future version with appended fields is accepted at the version both speak, either mode")
  func futureDiallerIsAcceptedAtTheCommonVersion() throws {
    for key in [HandshakeTests.secret.bytes, nil] {
      let dialler = HandshakeTests.peerDialler(key: key, versions: 3...4, extensions: Self.futureFields)
      let security: TCPSecurity =
        key == nil ? .insecure : .authenticated(clusterSecret: HandshakeTests.secret, clients: HandshakeTests.clients)
      let outcome = HandshakeTests.exchange(dialler, listener: HandshakeTests.policy(security: security))
      #expect(outcome.dialler == nil && outcome.listener == nil, "\(String(describing: outcome.listener))")
      #expect(outcome.identity == .peer(2))
      #expect(outcome.versions.dialler == 3 && outcome.versions.listener == 3)
      #expect((key != nil) == (outcome.sessions != nil))
    }
    // The hello decodes with the fields as sent, and round-trips.
    let hello = HandshakeTests.peerDialler(versions: 3...4, extensions: Self.futureFields).hello
    let decoded = try TCPHandshake(wireBytes: hello.wireBytes())
    #expect(decoded == hello)
    #expect(decoded.versions == 3...4 && decoded.extensions == Self.futureFields)
  }

  @Test("this build's dialler and a listener of a later build agree on the highest version both speak")
  func newerListener() {
    var policy = HandshakeTests.policy()
    policy.versions = 3...5
    let outcome = HandshakeTests.exchange(HandshakeTests.peerDialler(), listener: policy)
    #expect(outcome.dialler == nil && outcome.listener == nil)
    #expect(outcome.identity == .peer(2) && outcome.sessions != nil)
    #expect(outcome.versions.dialler == 3 && outcome.versions.listener == 3)
  }

  @Test("the transcript binds the appended fields: dropping or changing one on the path fails authentication")
  func appendedFieldsAreAuthenticated() throws {
    for tampered in [[], Self.appendedField(tag: 9, Array("compression=none".utf8))] {
      var dialler = HandshakeTests.peerDialler(versions: 3...4, extensions: Self.futureFields)
      var hello = dialler.hello
      hello.extensions = tampered
      let body = hello.wireBytes()
      var listener = ListenerHandshake(policy: HandshakeTests.policy(), random: HandshakeTests.random(5))
      guard case .send(let challenge) = listener.receive(body, 0..<body.count) else {
        Issue.record("the tampered hello got no challenge")
        continue
      }
      let reply = Array(challenge.dropFirst(TCPFrame.prefixBytes))
      guard case .failed(let reason) = dialler.receive(reply, 0..<reply.count) else {
        Issue.record("the dialler accepted a listener that saw another hello")
        continue
      }
      #expect(reason.name == "authentication-failed", "\(reason)")
    }
  }

  @Test("appended fields whose framing is broken are refused as a bad handshake")
  func brokenAppendedFields() {
    // A tag announcing a value of 200 bytes, and two of them.
    let dialler = HandshakeTests.peerDialler(key: nil, versions: 3...4, extensions: [9, 200, 1, 2])
    let outcome = HandshakeTests.exchange(dialler, listener: HandshakeTests.policy(security: .insecure))
    #expect(outcome.identity == nil)
    #expect(outcome.listener?.name == "bad-handshake", "\(String(describing: outcome.listener))")
  }

  @Test("sides with no version in common are refused, before any challenge, each naming both ranges")
  func disjointRangesAreRefused() {
    // A dialler of a later build that no longer speaks version 3, against this listener.
    let future = HandshakeTests.exchange(HandshakeTests.peerDialler(versions: 4...6))
    #expect(future.identity == nil)
    #expect(future.listener == .noCommonVersion(local: 3...3, remote: 4...6))
    #expect(future.dialler == .noCommonVersion(local: 4...6, remote: 3...3))
    #expect(
      future.dialler?.description
        == "no protocol version in common: this side speaks versions 4 to 6, the other side version 3")
    // This build's dialler against a listener of a later build that dropped version 3.
    var policy = HandshakeTests.policy()
    policy.versions = 4...5
    let past = HandshakeTests.exchange(HandshakeTests.peerDialler(), listener: policy)
    #expect(past.identity == nil)
    #expect(past.listener == .noCommonVersion(local: 4...5, remote: 3...3))
    #expect(past.dialler == .noCommonVersion(local: 3...3, remote: 4...5))
    for reason in [future.dialler, future.listener, past.dialler, past.listener] {
      #expect(reason?.name == "no-common-version")
      #expect(reason?.isPermanentRefusal == true && reason?.isProtocolViolation == true)
    }
  }

  @Test("a hello offering only later versions is refused by its versions alone, whatever follows them")
  func disjointHelloIsNotParsed() throws {
    var writer = WireWriter()
    writer.writeFixed32(TCPHandshake.magic)
    writer.writeByte(7)
    writer.writeByte(9)
    writer.writeRaw([UInt8](repeating: 0xEE, count: 40))
    var listener = ListenerHandshake(policy: HandshakeTests.policy(), random: HandshakeTests.random(6))
    guard case .refuse(let frame, let reason) = listener.receive(writer.bytes, 0..<writer.count) else {
      Issue.record("the hello was not refused")
      return
    }
    #expect(reason == .noCommonVersion(local: 3...3, remote: 7...9))
    let reply = try TCPHandshakeReply(wireBytes: Array(frame.dropFirst(TCPFrame.prefixBytes)))
    #expect(reply.version == 0 && reply.listenerVersions == 3...3 && reply.proof.isEmpty)
    #expect(reply.refusal == "no protocol version in common: this node speaks version 3, the dialler versions 7 to 9")
  }

  @Test(
    "a version 2 dialler is refused in the version 2 layout; a version 2 listener's refusal reads as no common version")
  func legacyPeers() throws {
    // A version 2 hello, as the build before negotiation sent it.
    var writer = WireWriter()
    writer.writeFixed32(TCPHandshake.magic)
    writer.writeByte(2)
    writer.writeByte(TCPHandshake.Mode.none.rawValue)
    writer.writeByte(TCPHandshake.Role.peer.rawValue)
    writer.writeString(HandshakeTests.cluster.rawValue)
    writer.writeVarint(2)
    writer.writeVarint(1)
    writer.writeByte(WireProtocol.test)
    writer.writeString("")
    writer.writeBytes([UInt8]())
    var listener = ListenerHandshake(
      policy: HandshakeTests.policy(security: .insecure), random: HandshakeTests.random(8))
    guard case .refuse(let frame, let reason) = listener.receive(writer.bytes, 0..<writer.count) else {
      Issue.record("a version 2 hello was not refused")
      return
    }
    #expect(reason == .noCommonVersion(local: 3...3, remote: 2...2))
    // What a version 2 dialler reads: magic, version 2, node, refusal, nonce and proof, nothing more.
    var reader = WireReader(Array(frame.dropFirst(TCPFrame.prefixBytes)))
    #expect(try reader.readFixed32() == TCPHandshakeReply.magic)
    #expect(try reader.readByte() == 2)
    #expect(try reader.readVarint() == 1)
    let text = try #require(try reader.readOptional(String.self))
    // What a version 2 client takes for a refusal for good (its isPermanentRefusal): only this prefix.
    #expect(text.hasPrefix("unsupported format version"), "\(text)")
    #expect(text == "unsupported format version 2: no protocol version in common, this node speaks version 3")
    #expect(try reader.readBytes().isEmpty && reader.readBytes().isEmpty)
    try reader.expectEnd()

    // A version 2 listener answers this build's hello with its refusal in the version 1 layout.
    var dialler = HandshakeTests.peerDialler(key: nil)
    let refusal = TCPHandshakeReply.legacyRefusal(node: 1, text: "unsupported handshake version 3", version: 1)
    guard case .failed(let diallerReason) = dialler.receive(refusal, 0..<refusal.count) else {
      Issue.record("the dialler accepted a legacy refusal")
      return
    }
    #expect(diallerReason == .noCommonVersion(local: 3...3, remote: TCPHandshake.legacyVersions))
  }

  @Test("a listener that agrees on less than the highest version both speak is refused (no downgrade)")
  func downgradeIsRefused() {
    var dialler = HandshakeTests.peerDialler(key: nil, versions: 3...4)
    let reply = TCPFrame.frame(
      TCPHandshakeReply(node: 1, refusal: nil, version: 3, listenerVersions: 3...4).wireBytes())
    let body = Array(reply.dropFirst(TCPFrame.prefixBytes))
    guard case .failed(let reason) = dialler.receive(body, 0..<body.count) else {
      Issue.record("the dialler accepted version 3 where both speak 4")
      return
    }
    #expect(reason.name == "bad-handshake" && reason.description.contains("the highest both sides speak is 4"))
  }

  @Test("with authentication, a downgrade on the path (both ranges rewritten to the older version) fails the proofs")
  func authenticatedDowngradeIsRefused() throws {
    var policy = HandshakeTests.policy()
    policy.versions = 3...4
    // A dialler that really offers only 3 is admitted at 3 (so what fails below is the rewriting alone).
    let honest = HandshakeTests.exchange(HandshakeTests.peerDialler(versions: 3...3), listener: policy)
    #expect(honest.dialler == nil && honest.listener == nil && honest.sessions != nil)
    #expect(honest.versions.dialler == 3 && honest.versions.listener == 3)

    // The attacker rewrites the hello to offer 3 only, and the reply to say the listener speaks 3 only: each
    // side then sees a consistent agreement on 3.
    var dialler = HandshakeTests.peerDialler(versions: 3...4)
    var hello = dialler.hello
    hello.versions = 3...3
    let forgedHello = hello.wireBytes()
    var listener = ListenerHandshake(policy: policy, random: HandshakeTests.random(9))
    guard case .send(let challenge) = listener.receive(forgedHello, 0..<forgedHello.count) else {
      Issue.record("the rewritten hello got no challenge")
      return
    }
    #expect(listener.version == 3)
    var reply = try TCPHandshakeReply(wireBytes: Array(challenge.dropFirst(TCPFrame.prefixBytes)))
    #expect(reply.version == 3 && reply.listenerVersions == 3...4)
    reply.listenerVersions = 3...3
    let forgedReply = reply.wireBytes()
    guard case .failed(let reason) = dialler.receive(forgedReply, 0..<forgedReply.count) else {
      Issue.record("the dialler accepted a handshake downgraded to version 3")
      return
    }
    #expect(reason.name == "authentication-failed", "\(reason)")
  }

  @Test("a 'no version in common' reply whose range overlaps the offer is a bad handshake, not a refusal for good")
  func forgedNoCommonVersionIsNotPermanent() {
    for (offer, listenerRange) in [(3...3, 3...3), (3...4, 2...3), (3...4, 4...6)]
      as [(ClosedRange<UInt8>, ClosedRange<UInt8>)]
    {
      var dialler = HandshakeTests.peerDialler(versions: offer)
      let reply = TCPHandshakeReply(
        node: 1, refusal: "no protocol version in common", version: 0, listenerVersions: listenerRange
      ).wireBytes()
      guard case .failed(let reason) = dialler.receive(reply, 0..<reply.count) else {
        Issue.record("the dialler accepted a refusal")
        continue
      }
      #expect(reason.name == "bad-handshake", "\(offer) against \(listenerRange): \(reason)")
      #expect(!reason.isPermanentRefusal, "\(reason)")
    }
    // Disjoint ranges: a refusal for good.
    var dialler = HandshakeTests.peerDialler(versions: 3...3)
    let reply = TCPHandshakeReply(
      node: 1, refusal: "no protocol version in common", version: 0, listenerVersions: 4...5
    ).wireBytes()
    guard case .failed(let reason) = dialler.receive(reply, 0..<reply.count) else {
      Issue.record("the dialler accepted a refusal")
      return
    }
    #expect(reason == .noCommonVersion(local: 3...3, remote: 4...5) && reason.isPermanentRefusal)
  }

  @Test("the authentication messages are read exactly: a reply, proof or verdict with bytes appended is refused")
  func authenticationMessagesAreExact() {
    let messages: [(String, [UInt8])] = [
      ("reply", TCPHandshakeReply(node: 1, refusal: nil, nonce: [1], proof: [2]).wireBytes()),
      ("proof", TCPHandshakeProof(proof: [1, 2]).wireBytes()),
      ("verdict", TCPHandshakeVerdict(refusal: nil).wireBytes()),
    ]
    // As the handshake reads them: init(from:) on a reader over the frame's range of a larger buffer (bytes
    // before and after the range are not the message's).
    func decode(_ name: String, _ message: [UInt8]) throws {
      let buffer = [0xAA, 0xBB] + message + [0xCC]
      var reader = WireReader(buffer, range: 2..<(2 + message.count))
      switch name {
      case "reply": _ = try TCPHandshakeReply(from: &reader)
      case "proof": _ = try TCPHandshakeProof(from: &reader)
      default: _ = try TCPHandshakeVerdict(from: &reader)
      }
    }
    for (name, bytes) in messages {
      #expect(throws: Never.self, "\(name)") { try decode(name, bytes) }
      let extended = bytes + Self.appendedField(tag: 9, [1])
      #expect(throws: WireError.self, "\(name)") { try decode(name, extended) }
    }
  }

  @Test("over a socket: a future client with appended fields is served at version 3; one without version 3 is refused")
  func overASocket() async throws {
    let pair = try await SecurePair()
    let future = try await HandDriven(
      to: pair.n1.address, cluster: pair.cluster, role: .client, protocolNumber: WireProtocol.client,
      principal: "alice", key: SecurePair.alice.bytes, versions: 3...4, extensions: Self.futureFields)
    #expect(future.failure == nil && future.session != nil, "\(String(describing: future.failure))")
    let stranded = try await HandDriven(
      to: pair.n1.address, cluster: pair.cluster, role: .client, protocolNumber: WireProtocol.client,
      principal: "alice", key: SecurePair.alice.bytes, versions: 4...5)
    #expect(stranded.failure == .noCommonVersion(local: 4...5, remote: 3...3))
    try await waitUntil("the listener to count the refusal") { pair.a.metrics.closes("no-common-version") == 1 }
    await pair.close()
  }
}
