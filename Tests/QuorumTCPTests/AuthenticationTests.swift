import Glibc
import QuorumCore
import QuorumSimulation
import Testing

@testable import QuorumTCP

/// Two authenticated transports (members n1 and n2, each on its own event loop as in two processes), n1 serving
/// clients `alice` (write) and `reader` (read), plus an echo request handler on n1.
struct SecurePair {
  static let secret = testSecret(seed: 21)
  static let alice = testSecret(seed: 22)
  static let reader = testSecret(seed: 23)
  static let credentials: TCPCredentials = {
    // Valid names: cannot throw.
    try! TCPCredentials(["alice": .init(secret: alice, role: .write), "reader": .init(secret: reader, role: .read)])
  }()
  static let security = TCPSecurity.authenticated(clusterSecret: secret, clients: credentials)

  let cluster: ClusterID
  let a: TCPTransport<ConformanceMessage>
  let b: TCPTransport<ConformanceMessage>
  let n1: TCPEndpoint<ConformanceMessage>
  let n2: TCPEndpoint<ConformanceMessage>
  let sink: CapturingLogSink
  let seen = SeenPrincipals()
  let server: Task<Void, Never>

  /// Options for these tests: the hand-driven peers never ping, and answer the handshake from a test task
  /// (a parallel run on a loaded machine can keep that waiting for seconds), so the listener must not give up
  /// on them while the test runs slowly: the liveness and handshake timeouts are not what these tests check.
  static func options() -> TCPTransportOptions {
    TCPTransportOptions(
      handshakeTimeout: .seconds(120), liveness: LinkLiveness(pingInterval: .milliseconds(100), timeout: .seconds(120)))
  }

  init(cluster: ClusterID = "orders-7f3a", options: TCPTransportOptions = SecurePair.options()) async throws {
    self.cluster = cluster
    var options = options
    options.serveClients = true
    sink = CapturingLogSink()
    a = TCPTransport(
      cluster: cluster, protocolNumber: WireProtocol.test, addresses: [3: try TCPAddress(host: "127.0.0.1", port: 9)],
      options: options, security: Self.security, logger: QuorumLogger(label: "a", sink: sink))
    n1 = try await a.bind(1)
    b = TCPTransport(
      cluster: cluster, protocolNumber: WireProtocol.test, addresses: [1: n1.address], options: options,
      security: Self.security, logger: .disabled)
    n2 = try await b.bind(2)
    a.setAddress(n2.address, for: 2)
    server = serveEcho(n1, seen: seen)
  }

  /// Waits until n2's messages reach n1 (the healthy link works).
  func healthyLinkDelivers(_ sequence: UInt64) async throws {
    try n2.send(ConformanceMessage(sender: 2, sequence: sequence), to: 1)
    let envelope = try await receive(n1.incoming)
    #expect(envelope.from == 2 && envelope.payload.sequence == sequence)
  }

  func client(_ name: String, _ secret: TCPSecret) throws -> TCPRequestClient {
    TCPRequestClient(
      cluster: cluster, credential: try TCPClientCredential(name: name, secret: secret), logger: .disabled)
  }

  func close() async {
    server.cancel()
    await n1.close()
    await n2.close()
  }
}

@Suite("Authenticated connections over sockets", .timeLimit(.minutes(3)))
struct AuthenticationTests {
  @Test("authenticated peers exchange messages both ways; a client's principal and role reach the request handler")
  func success() async throws {
    let pair = try await SecurePair()
    try await pair.healthyLinkDelivers(0)
    try pair.n1.send(ConformanceMessage(sender: 1, sequence: 5), to: 2)
    #expect(try await receive(pair.n2.incoming).payload.sequence == 5)

    let alice = try pair.client("alice", SecurePair.alice)
    #expect(
      try await alice.request(Array("hello".utf8), to: pair.n1.address, timeout: .seconds(60)) == Array("hello".utf8))
    let reader = try pair.client("reader", SecurePair.reader)
    #expect(try await reader.request([1, 2, 3], to: pair.n1.address, timeout: .seconds(60)) == [1, 2, 3])
    #expect(pair.seen.all == ["alice/write", "reader/read"])

    // A client without a credential is refused by a node that authenticates.
    let anonymous = TCPRequestClient(cluster: pair.cluster, logger: .disabled)
    do {
      _ = try await anonymous.request([1], to: pair.n1.address, timeout: .seconds(60))
      Issue.record("an anonymous client was served")
    } catch {
      #expect(error == .unreachable(pair.n1.address, reason: .rejected("authentication failed")))
    }
    // The listener writes its refusal before it closes and counts the close: the client can read the refusal
    // first.
    try await waitUntil("the listener to count the refused handshake's close") {
      pair.a.metrics.closes("authentication-failed") >= 1
    }
    #expect(pair.a.metrics.closes("authentication-failed") == 1)
    #expect(pair.b.metrics.closes.isEmpty, "\(pair.b.metrics)")
    await alice.close()
    await reader.close()
    await anonymous.close()
    await pair.close()
  }

  @Test("a member without the cluster secret is refused; the stranger hears only 'authentication failed'")
  func strangerPeer() async throws {
    let pair = try await SecurePair()
    try await pair.healthyLinkDelivers(0)
    // A transport holding another secret, claiming n3 (whom n1 knows): it sees n1's proof fail and hangs up.
    let stranger = TCPTransport<ConformanceMessage>(
      cluster: pair.cluster, protocolNumber: WireProtocol.test, addresses: [1: pair.n1.address],
      security: .authenticated(clusterSecret: testSecret(seed: 666)), logger: .disabled)
    let n3 = try await stranger.bind(3)
    try n3.send(ConformanceMessage(sender: 3, sequence: 0), to: 1)
    try await waitUntil("both sides to record the failed authentication") {
      stranger.metrics.closes("authentication-failed") >= 1 && pair.a.metrics.closes("authentication-failed") >= 1
    }
    #expect(pair.sink.contains("n3 hung up after the challenge"), "\(pair.sink.lines)")
    await n3.close()

    // An attacker that ignores n1's proof and sends a made-up one gets the verdict, which says nothing more.
    let raw = try await RawSocket(connectingTo: pair.n1.address)
    let hello = TCPHandshake(
      cluster: "guess", role: .peer, from: 3, to: 1, protocolNumber: WireProtocol.test, mode: .hmacSHA256,
      nonce: [UInt8](repeating: 7, count: 32))
    try raw.send(TCPFrame.frame(hello.wireBytes()))
    var reader = FrameReader()
    _ = try #require(try await reader.next(from: raw))
    try raw.send(TCPFrame.frame(TCPHandshakeProof(proof: [UInt8](repeating: 1, count: 32)).wireBytes()))
    let verdict = try #require(try await reader.next(from: raw))
    var decoder = WireReader(verdict)
    #expect(try TCPHandshakeVerdict(from: &decoder).refusal == "authentication failed")
    let rest = try await raw.readUntilClosed()
    #expect(rest.isEmpty)
    #expect(!String(decoding: verdict, as: UTF8.self).contains("orders"), "the cluster id never leaves the node")
    try await waitUntil("the guess to be logged as a cluster mismatch") {
      pair.sink.contains("cluster id mismatch: this node is in 'orders-7f3a', the remote side claims 'guess'")
    }
    try await pair.healthyLinkDelivers(1)
    await pair.close()
  }

  @Test("a wrong client secret or an unknown principal is refused; the server logs which, the client learns nothing")
  func wrongCredentials() async throws {
    let pair = try await SecurePair()
    for (name, secret, logged) in [
      ("alice", testSecret(seed: 999), "principal 'alice' hung up after the challenge"),
      ("mallory", SecurePair.alice, "unknown principal 'mallory'"),
    ] {
      let client = try pair.client(name, secret)
      do {
        _ = try await client.request([1], to: pair.n1.address, timeout: .seconds(60))
        Issue.record("\(name) was served")
      } catch {
        guard case .unreachable(_, reason: .authenticationFailed(let detail)) = error else {
          Issue.record("\(name): expected a failed authentication, got \(error)")
          continue
        }
        #expect(detail.contains("the listener's proof did not verify"), "\(detail)")
      }
      await client.close()
      try await waitUntil("the server to log '\(logged)'") { pair.sink.contains(logged) }
    }
    #expect(pair.seen.all.isEmpty)
    try await pair.healthyLinkDelivers(0)
    let alice = try pair.client("alice", SecurePair.alice)
    #expect(try await alice.request([9], to: pair.n1.address, timeout: .seconds(60)) == [9])
    await alice.close()
    await pair.close()
  }

  enum Forgery: String, CaseIterable, CustomTestStringConvertible {
    case replayed = "a replayed frame"
    case reordered = "two frames swapped"
    case spliced = "a frame from another connection"
    var testDescription: String { rawValue }
  }

  @Test(
    "a forged frame after the handshake closes that connection with frame-authentication-failed",
    arguments: Forgery.allCases)
  func forgedFrames(_ forgery: Forgery) async throws {
    let pair = try await SecurePair()
    let peer = try await HandDriven(
      to: pair.n1.address, cluster: pair.cluster, node: 3, expecting: 1, key: SecurePair.secret.bytes)
    #expect(peer.failure == nil)
    let first = peer.seal(peerFrame(from: 3, to: 1, sequence: 0))
    switch forgery {
    case .replayed:
      try peer.socket.send(first)
      #expect(try await receive(pair.n1.incoming).payload.sequence == 0)
      try peer.socket.send(first)
    case .reordered:
      let second = peer.seal(peerFrame(from: 3, to: 1, sequence: 1))
      try peer.socket.send(second + first)
    case .spliced:
      let other = try await HandDriven(
        to: pair.n1.address, cluster: pair.cluster, node: 2, expecting: 1, key: SecurePair.secret.bytes)
      try other.socket.send(first)
      _ = try await other.socket.readUntilClosed()
    }
    if forgery != .spliced { _ = try await peer.socket.readUntilClosed() }
    let expected = forgery == .replayed ? "frame 1 failed authentication" : "frame 0 failed authentication"
    try await waitUntil("the forgery to be logged") {
      pair.a.metrics.closes("frame-authentication-failed") == 1 && pair.sink.contains(expected)
    }
    #expect(pair.n1.incoming.count == 0, "nothing forged was delivered")
    try await pair.healthyLinkDelivers(7)
    await pair.close()
  }

  @Test("flipping any single bit of an authenticated frame closes the connection (300 seeded trials)")
  func bitFlips() async throws {
    var options = SecurePair.options()
    options.frameTimeout = .seconds(60)
    let pair = try await SecurePair(options: options)
    var generator = SeededRandom(seed: 2026)
    var seenReasons: [String: Int] = [:]
    let frame = peerFrame(from: 3, to: 1, sequence: 0, payload: [UInt8](repeating: 0x5A, count: 48))
    for trial in 0..<300 {
      let peer = try await HandDriven(
        to: pair.n1.address, cluster: pair.cluster, node: 3, expecting: 1, key: SecurePair.secret.bytes)
      #expect(peer.failure == nil)
      var sealed = peer.seal(frame)
      let bit = Int.random(in: 0..<(sealed.count * 8), using: &generator)
      sealed[bit / 8] ^= 1 << (bit % 8)
      let before = pair.a.metrics.closes
      try peer.socket.send(sealed)
      peer.socket.shutdownWrite()  // a length made larger waits for bytes that never come: end the stream
      _ = try await peer.socket.readUntilClosed()
      var reason = ""
      try await waitUntil("trial \(trial) (bit \(bit)) to be closed") {
        let after = pair.a.metrics.closes
        reason = after.keys.first { after[$0, default: 0] > before[$0, default: 0] } ?? ""
        return !reason.isEmpty
      }
      seenReasons[reason, default: 0] += 1
      if bit >= 32 {
        #expect(reason == "frame-authentication-failed", "bit \(bit) of the body or code")
      } else {
        let allowed = ["frame-authentication-failed", "frame-too-large", "truncated-frame", "malformed-frame"]
        #expect(allowed.contains(reason), "bit \(bit) of the length: \(reason)")
      }
    }
    #expect(pair.n1.incoming.count == 0, "no altered frame was delivered")
    #expect(seenReasons.values.reduce(0, +) == 300)
    try await pair.healthyLinkDelivers(1)
    await pair.close()
  }

  @Test("a stranger claiming a member's id does not displace it; a member's frame naming another sender is refused")
  func spoofedNodeID() async throws {
    let pair = try await SecurePair()
    try await pair.healthyLinkDelivers(0)
    let impostor = try await HandDriven(
      to: pair.n1.address, cluster: pair.cluster, node: 2, expecting: 1, key: testSecret(seed: 31).bytes)
    #expect(impostor.failure?.name == "authentication-failed")
    try await pair.healthyLinkDelivers(1)
    #expect(pair.a.metrics.closes("replaced") == 0, "the real n2's connection stays")

    // An authenticated member may only speak for itself.
    let n3 = try await HandDriven(
      to: pair.n1.address, cluster: pair.cluster, node: 3, expecting: 1, key: SecurePair.secret.bytes)
    try n3.socket.send(n3.seal(peerFrame(from: 2, to: 1, sequence: 99)))
    _ = try await n3.socket.readUntilClosed()
    try await waitUntil("the spoofed sender to be refused") {
      pair.sink.contains("malformed frame: a frame from n2 on the connection of n3")
    }

    // A member that dials again replaces its older connection at once.
    let older = try await HandDriven(
      to: pair.n1.address, cluster: pair.cluster, node: 3, expecting: 1, key: SecurePair.secret.bytes)
    let newer = try await HandDriven(
      to: pair.n1.address, cluster: pair.cluster, node: 3, expecting: 1, key: SecurePair.secret.bytes)
    _ = try await older.socket.readUntilClosed()
    try await waitUntil("the older connection to be replaced") { pair.a.metrics.closes("replaced") == 1 }
    try newer.socket.send(newer.seal(peerFrame(from: 3, to: 1, sequence: 4)))
    let envelope = try await receive(pair.n1.incoming)
    #expect(envelope.from == 3 && envelope.payload.sequence == 4)
    await pair.close()
  }

  @Test("before authentication a frame over 4 KiB is refused by its length alone; a 4 GiB prefix allocates nothing")
  func preAuthenticationLimit() async throws {
    let pair = try await SecurePair()
    let before = try residentBytes()
    let started = ContinuousClock.now
    for length: UInt32 in [16 << 20, 0xFFFF_FFFF] {
      for _ in 0..<50 {
        let raw = try await RawSocket(connectingTo: pair.n1.address)
        try raw.send(withUnsafeBytes(of: length.littleEndian) { Array($0) } + [1, 2, 3])
        _ = try await raw.readUntilClosed()
      }
    }
    try await waitUntil("every oversized frame to be refused") { pair.a.metrics.closes("frame-too-large") == 100 }
    #expect(pair.sink.contains("frame of 16777216 bytes exceeds the 4096-byte limit"), "\(pair.sink.lines)")
    // 100 refusals in a burst: the log keeps a burst of 20 lines, then 5 a second, and counts the rest.
    let seconds = Double((ContinuousClock.now - started).components.seconds + 1)
    let lines = pair.sink.all.count { $0.message.contains("exceeds the 4096-byte limit") }
    #expect(Double(lines) <= 20 + 5 * seconds, "\(lines) lines in \(seconds) s")
    // Loosely (other suites share this process): nothing near 100 × 16 MiB was reserved.
    let grown = try residentBytes() - before
    #expect(grown < 512 << 20, "the resident set grew by \(grown) bytes")
    try await pair.healthyLinkDelivers(0)
    await pair.close()
  }

  @Test("a transport without authentication says so in a warning when it starts; one with it does not")
  func insecureWarning() async throws {
    let insecureLog = CapturingLogSink()
    let insecure = TCPTransport<ConformanceMessage>(
      cluster: "w", protocolNumber: WireProtocol.test, security: .insecure,
      logger: QuorumLogger(label: "i", sink: insecureLog))
    let n1 = try await insecure.bind(1)
    #expect(insecureLog.contains("runs WITHOUT AUTHENTICATION"))
    let secureLog = CapturingLogSink()
    let secure = TCPTransport<ConformanceMessage>(
      cluster: "w", protocolNumber: WireProtocol.test, security: SecurePair.security,
      logger: QuorumLogger(label: "s", sink: secureLog))
    let n2 = try await secure.bind(2)
    #expect(!secureLog.contains("WITHOUT AUTHENTICATION", atLeast: .trace))
    #expect(secure.security.isAuthenticated && !insecure.security.isAuthenticated)
    await n1.close()
    await n2.close()
  }
}
