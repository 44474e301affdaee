import QuorumCore
import Testing

@testable import QuorumTCP

/// The handshake's two state machines driven against each other in memory, frame by frame.
@Suite("The handshake: mutual HMAC-SHA-256 challenge-response, in memory")
struct HandshakeTests {
  static let cluster: ClusterID = "vault-7"
  static let secret = testSecret(seed: 11)
  static let aliceSecret = testSecret(seed: 12)
  static let clients: TCPCredentials = {
    // Valid names, so this cannot throw.
    try! TCPCredentials(["alice": .init(secret: aliceSecret, role: .write)])
  }()

  static func policy(security: TCPSecurity = .authenticated(clusterSecret: secret, clients: clients)) -> ListenerPolicy
  {
    ListenerPolicy(
      cluster: cluster, node: 1, peerProtocol: WireProtocol.test, serveClients: true, security: security,
      admitsPeer: { $0 == 2 || $0 == 3 })
  }

  static func random(_ seed: UInt64, count: Int = 64) -> [UInt8] {
    var generator = SeededRandom(seed: seed)
    return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
  }

  /// What one exchange produced.
  struct Outcome {
    var dialler: TCPCloseReason?
    var listener: TCPCloseReason?
    var identity: RemoteIdentity?
    var sessions: (dialler: TCPSession, listener: TCPSession)?
    /// The protocol version each side agreed on.
    var versions: (dialler: UInt8?, listener: UInt8?) = (nil, nil)
  }

  /// Runs a whole handshake between an honest dialler and the listener.
  static func exchange(_ dialler: DiallerHandshake, listener policy: ListenerPolicy = policy(), seed: UInt64 = 1)
    -> Outcome
  {
    var dialler = dialler
    var listener = ListenerHandshake(policy: policy, random: random(seed))
    var outcome = Outcome()
    var listenerSession: TCPSession?
    var toListener = dialler.helloFrame
    exchanging: while true {
      let body = Array(toListener.dropFirst(TCPFrame.prefixBytes))
      let toDialler: [UInt8]
      switch listener.receive(body, 0..<body.count) {
      case .send(let reply): toDialler = reply
      case .refuse(let refusal, let reason):
        outcome.listener = reason
        toDialler = refusal
      case .verified(let identity):
        outcome.identity = identity
        (toDialler, listenerSession) = listener.welcome()
      }
      let replyBody = Array(toDialler.dropFirst(TCPFrame.prefixBytes))
      switch dialler.receive(replyBody, 0..<replyBody.count) {
      case .send(let next):
        guard outcome.listener == nil else { break exchanging }
        toListener = next
      case .established(let session):
        if let session, let listenerSession { outcome.sessions = (session, listenerSession) }
        break exchanging
      case .failed(let reason):
        outcome.dialler = reason
        break exchanging
      }
    }
    outcome.versions = (dialler.version, listener.version)
    return outcome
  }

  /// What an attacker sees when it ignores the listener's proof and answers with `proof(transcript)`.
  struct Probe {
    var challenge: [UInt8]
    var verdict: [UInt8]
    var reason: TCPCloseReason?
    var identity: RemoteIdentity?
  }

  static func probe(
    _ hello: TCPHandshake, seed: UInt64 = 2, proof: (TCPHandshakeReply) -> [UInt8]
  ) throws -> Probe {
    var listener = ListenerHandshake(policy: policy(), random: random(seed))
    let helloBody = hello.wireBytes()
    let challengeFrame: [UInt8]
    switch listener.receive(helloBody, 0..<helloBody.count) {
    case .send(let frame): challengeFrame = frame
    case .refuse(let frame, let reason): return Probe(challenge: frame, verdict: [], reason: reason)
    case .verified(let identity): return Probe(challenge: [], verdict: [], identity: identity)
    }
    var reader = WireReader(Array(challengeFrame.dropFirst(4)))
    let challenge = try TCPHandshakeReply(from: &reader)
    let message = TCPHandshakeProof(proof: proof(challenge)).wireBytes()
    switch listener.receive(message, 0..<message.count) {
    case .send(let frame): return Probe(challenge: challengeFrame, verdict: frame)
    case .refuse(let frame, let reason): return Probe(challenge: challengeFrame, verdict: frame, reason: reason)
    case .verified(let identity): return Probe(challenge: challengeFrame, verdict: [], identity: identity)
    }
  }

  /// The proof an attacker holding `key` computes for `hello` against `challenge`.
  static func attackerProof(_ hello: TCPHandshake, key: [UInt8]) -> (TCPHandshakeReply) -> [UInt8] {
    { challenge in
      HandshakeTranscript(
        hello: hello, cluster: hello.cluster, listener: challenge.node, listenerNonce: challenge.nonce,
        version: challenge.version, listenerVersions: challenge.listenerVersions
      )
      .proof(by: .dialler, key: key)
    }
  }

  static func peerDialler(
    key: [UInt8]? = secret.bytes, cluster: ClusterID = cluster, from: NodeID = 2,
    versions: ClosedRange<UInt8> = TCPHandshake.supportedVersions, extensions: [UInt8] = []
  ) -> DiallerHandshake {
    DiallerHandshake(
      cluster: cluster, role: .peer, from: from, to: 1, protocolNumber: WireProtocol.test, principal: "", key: key,
      nonce: random(99, count: 32), versions: versions, extensions: extensions)
  }

  static func clientDialler(name: String = "alice", key: [UInt8] = aliceSecret.bytes) -> DiallerHandshake {
    DiallerHandshake(
      cluster: cluster, role: .client, from: .none, to: .none, protocolNumber: WireProtocol.client, principal: name,
      key: key, nonce: random(98, count: 32))
  }

  @Test("a peer and a client with the right secrets are admitted, and each side's frames open on the other only")
  func success() throws {
    let peer = Self.exchange(Self.peerDialler())
    #expect(peer.dialler == nil && peer.listener == nil)
    #expect(peer.identity == .peer(2))
    var sessions = try #require(peer.sessions)
    let frame = TCPFrame.frame(Array("append entries".utf8))
    let body = Array(sessions.dialler.sealer.seal(frame).dropFirst(4))
    let range = sessions.listener.opener.open(body, range: 0..<body.count)
    let opened = try #require(range)
    #expect(Array(body[opened]) == Array("append entries".utf8))
    // Each direction has its own key: a frame the listener seals does not open as one from the dialler.
    let back = Array(sessions.listener.sealer.seal(frame).dropFirst(4))
    #expect(sessions.listener.opener.open(back, range: 0..<back.count) == nil, "a frame reflected back fails")

    let client = Self.exchange(Self.clientDialler())
    #expect(client.dialler == nil && client.listener == nil)
    #expect(client.identity == .client(principal: "alice", role: .write))
  }

  @Test("an honest dialler with a wrong secret or cluster id finds out from the listener's proof, first")
  func diallerChecksTheListener() {
    for dialler in [Self.peerDialler(key: testSecret(seed: 500).bytes), Self.peerDialler(cluster: "vault-8")] {
      let outcome = Self.exchange(dialler)
      #expect(outcome.identity == nil)
      #expect(outcome.dialler?.name == "authentication-failed", "\(String(describing: outcome.dialler))")
    }
  }

  @Test("every refused attempt reads 'authentication failed', in the same bytes, and never names the cluster id")
  func refusalsRevealNothing() throws {
    func hello(
      cluster: ClusterID = Self.cluster, role: TCPHandshake.Role = .peer, from: NodeID = 2, principal: String = "",
      protocolNumber: UInt8 = WireProtocol.test
    ) -> TCPHandshake {
      TCPHandshake(
        cluster: cluster, role: role, from: from, to: 1, protocolNumber: protocolNumber, mode: .hmacSHA256,
        principal: principal, nonce: Self.random(40, count: 32))
    }
    let client = WireProtocol.client
    let cases: [(String, TCPHandshake, [UInt8], String)] = [
      ("wrong secret", hello(), testSecret(seed: 500).bytes, "proof of n2 (the cluster secret) did not verify"),
      ("wrong cluster id", hello(cluster: "vault-8"), Self.secret.bytes, "cluster id mismatch"),
      ("unknown node", hello(from: 9), Self.secret.bytes, "unknown node n9"),
      ("wrong protocol", hello(protocolNumber: 7), Self.secret.bytes, "protocol 7"),
      (
        "unknown principal", hello(role: .client, from: .none, principal: "mallory", protocolNumber: client),
        Self.aliceSecret.bytes, "unknown principal 'mallory'"
      ),
      (
        "wrong client secret", hello(role: .client, from: .none, principal: "alice", protocolNumber: client),
        testSecret(seed: 501).bytes, "principal 'alice' did not verify"
      ),
    ]
    var verdicts: Set<[UInt8]> = []
    for (name, hello, key, logged) in cases {
      let probe = try Self.probe(hello, proof: Self.attackerProof(hello, key: key))
      #expect(probe.identity == nil, "\(name)")
      let reason = try #require(probe.reason, "\(name)")
      #expect(reason.description.contains(logged), "\(name): \(reason)")
      #expect(reason.isProtocolViolation, "\(name): \(reason)")
      verdicts.insert(probe.verdict)
      for frame in [probe.challenge, probe.verdict] {
        #expect(!contains(frame, Array(Self.cluster.rawValue.utf8)), "\(name): a frame names the cluster id")
      }
    }
    #expect(verdicts.count == 1, "every refusal after a proof is the same bytes")
    #expect(contains(try #require(verdicts.first), Array("authentication failed".utf8)))
    // The control: the right key passes the same probe.
    let good = hello()
    #expect(try Self.probe(good, proof: Self.attackerProof(good, key: Self.secret.bytes)).identity == .peer(2))
  }

  @Test("a proof reflected from the listener, or recorded from another handshake, does not authenticate")
  func reflectionAndReplay() throws {
    let hello = TCPHandshake(
      cluster: Self.cluster, role: .peer, from: 2, to: 1, protocolNumber: WireProtocol.test, mode: .hmacSHA256,
      nonce: Self.random(41, count: 32))
    let reflected = try Self.probe(hello) { challenge in challenge.proof }
    #expect(reflected.identity == nil && reflected.reason?.name == "authentication-failed")
    // A proof recorded from a good handshake (listener nonce from seed 2) replayed against a fresh nonce.
    var recorded: [UInt8] = []
    let first = try Self.probe(hello, seed: 2) { challenge in
      recorded = Self.attackerProof(hello, key: Self.secret.bytes)(challenge)
      return recorded
    }
    #expect(first.identity == .peer(2))
    let replayed = try Self.probe(hello, seed: 3) { _ in recorded }
    #expect(replayed.identity == nil && replayed.reason?.name == "authentication-failed")
  }

  @Test("a version 1 hello gets a refusal in the version 1 layout, saying which versions this node speaks")
  func oldVersion() throws {
    var writer = WireWriter()
    writer.writeFixed32(TCPHandshake.magic)
    writer.writeByte(1)
    writer.writeString(Self.cluster.rawValue)
    writer.writeByte(1)
    writer.writeVarint(2)
    writer.writeVarint(1)
    writer.writeByte(WireProtocol.test)
    var listener = ListenerHandshake(policy: Self.policy(), random: Self.random(7))
    guard case .refuse(let frame, let reason) = listener.receive(writer.bytes, 0..<writer.count) else {
      Issue.record("a version 1 hello was not refused")
      return
    }
    #expect(reason == .noCommonVersion(local: 3...3, remote: 1...1))
    var reader = WireReader(Array(frame.dropFirst(4)))
    #expect(try reader.readFixed32() == TCPHandshakeReply.magic)
    #expect(try reader.readByte() == 1)
    #expect(try reader.readVarint() == 1)
    let text = try #require(try reader.readOptional(String.self))
    #expect(text == "unsupported format version 1: no protocol version in common, this node speaks version 3")
    try reader.expectEnd()
  }

  @Test("an insecure dialler is refused by an authenticating listener, and the other way round")
  func modesMustAgree() {
    let insecureDialler = Self.exchange(Self.peerDialler(key: nil))
    #expect(insecureDialler.listener?.name == "authentication-failed")
    #expect(insecureDialler.dialler == .rejected("authentication failed"))
    let insecureListener = Self.exchange(Self.peerDialler(), listener: Self.policy(security: .insecure))
    #expect(insecureListener.listener?.name == "authentication-failed")
    #expect(insecureListener.dialler?.name == "rejected")
    let bothInsecure = Self.exchange(Self.peerDialler(key: nil), listener: Self.policy(security: .insecure))
    #expect(bothInsecure.identity == .peer(2) && bothInsecure.dialler == nil && bothInsecure.sessions == nil)
  }

  @Test("flipping any single bit of a sealed frame makes it fail to open (every bit of a 100-byte frame)")
  func everyBitFlip() throws {
    var sessions = try #require(Self.exchange(Self.peerDialler()).sessions)
    let frame = TCPFrame.frame(Self.random(8, count: 100))
    let sealed = Array(sessions.dialler.sealer.seal(frame).dropFirst(4))
    var checked = 0
    for bit in 0..<(sealed.count * 8) {
      var flipped = sealed
      flipped[bit / 8] ^= 1 << (bit % 8)
      var opener = sessions.listener.opener
      #expect(opener.open(flipped, range: 0..<flipped.count) == nil, "bit \(bit)")
      checked += 1
    }
    #expect(checked == 116 * 8)
    var opener = sessions.listener.opener
    #expect(opener.open(sealed, range: 0..<sealed.count) != nil, "the untouched frame opens")
    #expect(opener.open(sealed, range: 0..<sealed.count) == nil, "and opens only once (no replay)")
  }

  private func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard !needle.isEmpty, haystack.count >= needle.count else { return false }
    return (0...(haystack.count - needle.count)).contains { Array(haystack[$0..<($0 + needle.count)]) == needle }
  }
}

extension HandshakeTests {
  @Test("a hostile principal name or cluster id reaches the log escaped and bounded, never as raw bytes")
  func hostileNamesAreLoggedSafely() throws {
    let hostile = "\u{1b}[2J\nwarning quorum: FORGED LINE \u{7}" + String(repeating: "x", count: 3000)
    let cases: [(String, TCPHandshake)] = [
      (
        "principal",
        TCPHandshake(
          cluster: Self.cluster, role: .client, from: .none, to: 1, protocolNumber: WireProtocol.client,
          mode: .hmacSHA256, principal: hostile, nonce: Self.random(42, count: 32))
      ),
      (
        "cluster id",
        TCPHandshake(
          cluster: ClusterID(rawValue: hostile), role: .peer, from: 2, to: 1, protocolNumber: WireProtocol.test,
          mode: .hmacSHA256, nonce: Self.random(43, count: 32))
      ),
    ]
    for (name, hello) in cases {
      let probe = try Self.probe(hello, proof: Self.attackerProof(hello, key: Self.aliceSecret.bytes))
      let text = try #require(probe.reason, "\(name)").description
      #expect(!text.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }, "\(name): \(text)")
      #expect(text.contains("\\u{1b}[2J\\u{a}warning quorum: FORGED LINE"), "\(name): \(text)")
      #expect(text.count < 400, "\(name): \(text.count) characters")
      #expect(text.contains("more)"), "\(name): the cut is said")
    }
  }
}
