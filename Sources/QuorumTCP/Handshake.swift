import CQuorumSystem
import QuorumCore

/// The bytes both sides prove knowledge of the key over: the protocol version agreed and both sides' ranges, every
/// field of the hello (the fields a later version appended included, as sent), the node that answered, and both
/// nonces, each length-delimited, behind a label naming the protocol. The cluster id is each side's own (not the
/// one the hello claims), so sides of different clusters cannot prove anything to each other; the versions are
/// bound so that nobody on the path can talk the two sides down to an older version than both speak.
struct HandshakeTranscript {
  let bytes: [UInt8]

  init(
    hello: TCPHandshake, cluster: ClusterID, listener: NodeID, listenerNonce: [UInt8], version: UInt8,
    listenerVersions: ClosedRange<UInt8>
  ) {
    var writer = WireWriter(reservingCapacity: 192)
    writer.writeString("QuorumTCP handshake v3")
    writer.writeByte(version)
    writer.writeByte(hello.versions.lowerBound)
    writer.writeByte(hello.versions.upperBound)
    writer.writeByte(listenerVersions.lowerBound)
    writer.writeByte(listenerVersions.upperBound)
    writer.writeByte(hello.mode.rawValue)
    writer.writeByte(hello.role.rawValue)
    writer.writeString(cluster.rawValue)
    writer.writeFixed64(hello.from.rawValue)
    writer.writeFixed64(hello.to.rawValue)
    writer.writeFixed64(listener.rawValue)
    writer.writeByte(hello.protocolNumber)
    writer.writeString(hello.principal)
    writer.writeBytes(hello.nonce)
    writer.writeBytes(listenerNonce)
    writer.writeBytes(hello.groupTableDigest)
    writer.writeBytes(hello.extensions)
    bytes = writer.bytes
  }

  /// Which side proves: the label makes a proof from one side useless as the other's (no reflection).
  enum Prover: String {
    case listener = "listener proves"
    case dialler = "dialler proves"
  }

  /// HMAC-SHA-256 under `key` of the transcript and the prover's label.
  func proof(by prover: Prover, key: [UInt8]) -> [UInt8] {
    var mac = HMACSHA256(key: key)
    mac.update(bytes)
    mac.update(Array(prover.rawValue.utf8))
    return Array(mac.finalize())
  }

  /// Whether `proof` is the prover's proof under `key` (compared in constant time).
  func verify(_ proof: [UInt8], by prover: Prover, key: [UInt8]) -> Bool {
    constantTimeEquals(proof, self.proof(by: prover, key: key))
  }

  /// The per-direction session keys: HKDF-SHA-256 with the transcript's hash as salt and the shared key as
  /// input, expanded once per direction.
  func sessionKeys(key: [UInt8]) -> (diallerToListener: [UInt8], listenerToDialler: [UInt8]) {
    let pseudoRandomKey = HKDFSHA256.extract(salt: SHA256.hash(bytes), inputKeyMaterial: key)
    func expand(_ label: String) -> [UInt8] {
      // Cannot fail: the key is a whole digest and 32 bytes are far below the 8,160-byte maximum.
      guard
        let key = try? HKDFSHA256.expand(
          pseudoRandomKey: pseudoRandomKey, info: Array(label.utf8), outputByteCount: SHA256.Digest.byteCount)
      else { preconditionFailure("HKDF-SHA-256 refused a 32-byte expansion of a 32-byte key") }
      return key
    }
    return (expand("QuorumTCP v3 dialler to listener"), expand("QuorumTCP v3 listener to dialler"))
  }
}

/// A session key prepared for frame codes: the HMAC-SHA-256 inner and outer states after the padded key, so
/// each frame costs only its own blocks plus three more. The codes are computed by `CQuorumSystem`
/// (`cq_hmac_sha256_frame`), with the x86 SHA extensions when the processor has them; they equal
/// ``QuorumCore/HMACSHA256`` of the sequence number and the body (tested).
struct FrameKey {
  private let inner: [UInt32]
  private let outer: [UInt32]

  init(_ key: [UInt8]) {
    var inner = [UInt32](repeating: 0, count: 8)
    var outer = [UInt32](repeating: 0, count: 8)
    key.withUnsafeBufferPointer { key in cq_hmac_sha256_init(key.baseAddress, key.count, &inner, &outer) }
    self.inner = inner
    self.outer = outer
  }

  /// HMAC-SHA-256 of `sequence` (8 bytes, little-endian) and `body`, written to `code` (32 bytes).
  func code(sequence: UInt64, body: UnsafeRawBufferPointer, into code: UnsafeMutableRawBufferPointer) {
    precondition(code.count >= 32, "a code needs 32 bytes, got \(code.count)")
    inner.withUnsafeBufferPointer { inner in
      outer.withUnsafeBufferPointer { outer in
        cq_hmac_sha256_frame(
          inner.baseAddress, outer.baseAddress, sequence, body.baseAddress?.assumingMemoryBound(to: UInt8.self),
          body.count, code.baseAddress?.assumingMemoryBound(to: UInt8.self))
      }
    }
  }
}

/// Adds the code to each frame sent in one direction of an authenticated connection.
struct FrameSealer {
  private let key: FrameKey
  /// The sequence number of the next frame.
  private(set) var sequence: UInt64 = 0

  init(key: [UInt8]) { self.key = FrameKey(key) }

  /// Appends `frame` (length prefix and body) to `buffer`, its length counting the code, then the code.
  mutating func append(_ frame: [UInt8], to buffer: inout [UInt8]) {
    frame.withUnsafeBytes { raw in
      append(body: UnsafeRawBufferPointer(rebasing: raw[TCPFrame.prefixBytes...]), to: &buffer)
    }
  }

  /// Appends `frame` (length prefix and body) to `batch`, sealed as into a buffer: a large
  /// body is written from `frame` itself, between the new prefix and the code.
  mutating func append(_ frame: [UInt8], to batch: inout WriteBatch) {
    let bodyRange = TCPFrame.prefixBytes..<frame.count
    guard bodyRange.count >= WriteBatch.ownPieceBytes else {
      batch.appendBytes { append(frame, to: &$0) }
      return
    }
    // Fits: a body is at most maxFrameBytes, which validation keeps tagBytes below UInt32.max.
    let length = UInt32(truncatingIfNeeded: bodyRange.count + TCPFrame.tagBytes)
    batch.appendBytes { buffer in withUnsafeBytes(of: length.littleEndian) { buffer.append(contentsOf: $0) } }
    batch.append(frame, range: bodyRange)
    frame.withUnsafeBytes { raw in
      let body = UnsafeRawBufferPointer(rebasing: raw[bodyRange])
      withUnsafeTemporaryAllocation(byteCount: 32, alignment: 8) { code in
        key.code(sequence: sequence, body: body, into: code)
        batch.appendBytes { $0.append(contentsOf: UnsafeRawBufferPointer(rebasing: code[0..<TCPFrame.tagBytes])) }
      }
    }
    sequence &+= 1
  }

  /// Appends a frame holding `body` to `buffer`: length prefix (counting the code), body, code.
  mutating func append(body: UnsafeRawBufferPointer, to buffer: inout [UInt8]) {
    // Fits: a body is at most maxFrameBytes, which validation keeps tagBytes below UInt32.max.
    let length = UInt32(truncatingIfNeeded: body.count + TCPFrame.tagBytes)
    withUnsafeBytes(of: length.littleEndian) { buffer.append(contentsOf: $0) }
    buffer.append(contentsOf: body)
    withUnsafeTemporaryAllocation(byteCount: 32, alignment: 8) { code in
      key.code(sequence: sequence, body: body, into: code)
      buffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: code[0..<TCPFrame.tagBytes]))
    }
    sequence &+= 1
  }

  /// `frame` sealed, as a new array.
  mutating func seal(_ frame: [UInt8]) -> [UInt8] {
    var sealed: [UInt8] = []
    sealed.reserveCapacity(frame.count + TCPFrame.tagBytes)
    append(frame, to: &sealed)
    return sealed
  }
}

/// Checks the code of each frame received in one direction of an authenticated connection.
struct FrameOpener {
  private let key: FrameKey
  /// The sequence number the next frame must carry.
  private(set) var sequence: UInt64 = 0

  init(key: [UInt8]) { self.key = FrameKey(key) }

  /// The body of the frame `bytes[range]` if its code is right for the next sequence number (which then
  /// advances), `nil` otherwise. The code is compared in constant time.
  mutating func open(_ bytes: [UInt8], range: Range<Int>) -> Range<Int>? {
    guard range.count >= TCPFrame.tagBytes else { return nil }
    let body = range.lowerBound..<(range.upperBound - TCPFrame.tagBytes)
    let sequence = self.sequence
    let valid = bytes.withUnsafeBytes { raw -> Bool in
      withUnsafeTemporaryAllocation(byteCount: 32, alignment: 8) { code in
        key.code(sequence: sequence, body: UnsafeRawBufferPointer(rebasing: raw[body]), into: code)
        return constantTimeEquals(
          UnsafeRawBufferPointer(rebasing: code[0..<TCPFrame.tagBytes]),
          UnsafeRawBufferPointer(rebasing: raw[body.upperBound..<range.upperBound]))
      }
    }
    guard valid else { return nil }
    self.sequence &+= 1
    return body
  }
}

/// Both directions of an authenticated connection, seen from one side.
struct TCPSession {
  var sealer: FrameSealer
  var opener: FrameOpener
}

/// Who the other side of an accepted connection proved to be.
enum RemoteIdentity: Equatable {
  case peer(NodeID)
  /// A client; `principal` is `nil` on a node that runs without authentication.
  case client(principal: String?, role: ClientRole)
}

/// The dialling side of the handshake, as a pure state machine: it is handed the frames the listener sends
/// and says what to send, or how the handshake ended.
struct DiallerHandshake {
  enum Step {
    /// Send this frame (length prefix included) and wait for the next.
    case send([UInt8])
    /// The handshake is done; `session` is `nil` without authentication.
    case established(TCPSession?)
    /// Close with this reason.
    case failed(TCPCloseReason)
  }

  private enum State {
    case awaitingReply
    case awaitingVerdict(TCPSession)
    case done
  }

  let hello: TCPHandshake
  private let key: [UInt8]?
  private var state = State.awaitingReply
  /// The protocol version agreed with the listener, once its reply said (`nil` before).
  private(set) var version: UInt8?

  /// - Parameters:
  ///   - key: the shared key (cluster secret or the client's secret), or `nil` without authentication.
  ///   - nonce: 32 fresh random bytes (ignored without authentication).
  ///   - groupTableDigest: a peer's ``TCPTransportOptions/groupTableDigest`` (ignored for a client).
  ///   - versions, extensions: what the hello offers and appends (another build's, in tests).
  init(
    cluster: ClusterID, role: TCPHandshake.Role, from: NodeID, to: NodeID, protocolNumber: UInt8,
    principal: String, key: [UInt8]?, nonce: [UInt8], groupTableDigest: [UInt8] = [],
    versions: ClosedRange<UInt8> = TCPHandshake.supportedVersions, extensions: [UInt8] = []
  ) {
    self.key = key
    hello = TCPHandshake(
      cluster: cluster, role: role, from: from, to: to, protocolNumber: protocolNumber,
      mode: key == nil ? .none : .hmacSHA256, principal: key == nil ? "" : principal, nonce: key == nil ? [] : nonce,
      groupTableDigest: role == .peer ? groupTableDigest : [], versions: versions, extensions: extensions)
  }

  /// The first frame.
  var helloFrame: [UInt8] { TCPFrame.frame(hello.wireBytes()) }

  mutating func receive(_ bytes: [UInt8], _ range: Range<Int>) -> Step {
    switch state {
    case .awaitingReply: return reply(bytes, range)
    case .awaitingVerdict(let session): return verdict(bytes, range, session: session)
    case .done: return .failed(.malformedFrame("a frame during the handshake after it ended"))
    }
  }

  private mutating func reply(_ bytes: [UInt8], _ range: Range<Int>) -> Step {
    state = .done
    let reply: TCPHandshakeReply
    do {
      var reader = WireReader(bytes, range: range)
      reply = try TCPHandshakeReply(from: &reader)
    } catch {
      if case .unsupportedVersion(let version) = error.kind {
        // A listener from before versions were negotiated refuses every hello of this layout, in its own layout.
        if TCPHandshake.legacyVersions.contains(version) {
          return .failed(.noCommonVersion(local: hello.versions, remote: TCPHandshake.legacyVersions))
        }
        return .failed(.unsupportedVersion(version))
      }
      return .failed(.badHandshake("unreadable handshake reply: \(logSafe("\(error)"))"))
    }
    if reply.version == 0 {
      // A refusal for good: only believed when the ranges really are disjoint (otherwise someone on the path
      // forged it, or the listener is broken: worth another try, not giving up on the node).
      if let common = TCPHandshake.highestCommonVersion(hello.versions, reply.listenerVersions) {
        return .failed(
          .badHandshake(
            "the listener said no protocol version is in common, but both sides speak version \(common) (this side "
              + "\(TCPCloseReason.versionsText(hello.versions)), the listener "
              + "\(TCPCloseReason.versionsText(reply.listenerVersions)))"))
      }
      return .failed(.noCommonVersion(local: hello.versions, remote: reply.listenerVersions))
    }
    if let refusal = reply.refusal { return .failed(.rejected(logSafe(refusal))) }
    let agreed = TCPHandshake.highestCommonVersion(hello.versions, reply.listenerVersions)
    guard reply.version == agreed else {
      return .failed(
        .badHandshake(
          "the listener chose protocol version \(reply.version), but the highest both sides speak is "
            + "\(agreed.map { "\($0)" } ?? "none")"))
    }
    version = reply.version
    if hello.to != .none && reply.node != hello.to {
      return .failed(.wrongNode(expected: hello.to, actual: reply.node))
    }
    guard let key else {
      guard reply.proof.isEmpty else {
        return .failed(.authenticationFailed("the listener requires authentication; this side runs insecure"))
      }
      return .established(nil)
    }
    guard reply.nonce.count == TCPHandshake.nonceByteCount, !reply.proof.isEmpty else {
      return .failed(.authenticationFailed("the listener did not authenticate itself (does it run insecure?)"))
    }
    let transcript = HandshakeTranscript(
      hello: hello, cluster: hello.cluster, listener: reply.node, listenerNonce: reply.nonce, version: reply.version,
      listenerVersions: reply.listenerVersions)
    guard transcript.verify(reply.proof, by: .listener, key: key) else {
      return .failed(
        .authenticationFailed("the listener's proof did not verify: it holds another secret or is in another cluster"))
    }
    let keys = transcript.sessionKeys(key: key)
    state = .awaitingVerdict(
      TCPSession(sealer: FrameSealer(key: keys.diallerToListener), opener: FrameOpener(key: keys.listenerToDialler)))
    let proof = TCPHandshakeProof(proof: transcript.proof(by: .dialler, key: key))
    return .send(TCPFrame.frame(proof.wireBytes()))
  }

  private mutating func verdict(_ bytes: [UInt8], _ range: Range<Int>, session: TCPSession) -> Step {
    state = .done
    // A refusal comes without a code (the listener may not have the key); an acceptance only with one.
    var plain = WireReader(bytes, range: range)
    if let refused = try? TCPHandshakeVerdict(from: &plain), let refusal = refused.refusal {
      return .failed(.rejected(logSafe(refusal)))
    }
    var session = session
    guard let body = session.opener.open(bytes, range: range) else {
      return .failed(.authenticationFailed("the listener's verdict did not verify"))
    }
    var reader = WireReader(bytes, range: body)
    guard let verdict = try? TCPHandshakeVerdict(from: &reader), verdict.refusal == nil else {
      return .failed(.badHandshake("an unreadable verdict"))
    }
    return .established(session)
  }
}

/// What a listener needs to judge a hello.
struct ListenerPolicy {
  var cluster: ClusterID
  var node: NodeID
  /// The protocol of the peer frames this node speaks.
  var peerProtocol: UInt8
  var serveClients: Bool
  var security: TCPSecurity
  /// Whether a peer claiming `node` may connect (in the address book, or unknown peers accepted).
  var admitsPeer: (NodeID) -> Bool
  /// The group table digest a peer must present (``TCPTransportOptions/groupTableDigest``).
  var groupTableDigest: [UInt8] = []
  /// The protocol versions this node speaks (another build's, in tests).
  var versions: ClosedRange<UInt8> = TCPHandshake.supportedVersions
}

/// The listening side of the handshake, as a pure state machine.
///
/// With authentication, a hello that cannot succeed (another cluster id, an unknown node or principal, a
/// wrong protocol, a client where clients are not served) still gets a challenge, with a proof under a
/// random key, and is refused only after the dialler's proof, with the same "authentication failed" as a
/// wrong secret: the unauthenticated side learns nothing about which check failed, nor the cluster id. The
/// reason is kept for the local log.
struct ListenerHandshake {
  enum Step {
    /// Send this frame and wait for the next.
    case send([UInt8])
    /// Send this refusal, then close with the reason (logged locally; the refusal says less).
    case refuse([UInt8], TCPCloseReason)
    /// The dialler is who it claims; admit it with ``welcome()`` or turn it away with ``refusal(_:)``.
    case verified(RemoteIdentity)
  }

  /// What a refusal says to an unauthenticated side.
  static let authenticationFailed = "authentication failed"

  private enum State {
    case awaitingHello
    /// `afterProof`: why a dialler that proves itself is refused all the same (it may be told why).
    case awaitingProof(
      transcript: HandshakeTranscript, key: [UInt8], identity: RemoteIdentity, doom: TCPCloseReason?,
      afterProof: TCPCloseReason?)
    case verified(TCPSession?)
    case done
  }

  private let policy: ListenerPolicy
  private let nonce: [UInt8]
  private let decoy: [UInt8]
  private var state = State.awaitingHello
  /// The protocol version agreed with the dialler, once its hello was read (`nil` before).
  private(set) var version: UInt8?

  /// - Parameter random: 64 fresh random bytes: the listener's nonce and a decoy key for hopeless hellos.
  init(policy: ListenerPolicy, random: [UInt8]) {
    precondition(
      random.count >= 2 * TCPHandshake.nonceByteCount, "the listener needs 64 random bytes, got \(random.count)")
    self.policy = policy
    nonce = Array(random[0..<TCPHandshake.nonceByteCount])
    decoy = Array(random[TCPHandshake.nonceByteCount..<(2 * TCPHandshake.nonceByteCount)])
  }

  mutating func receive(_ bytes: [UInt8], _ range: Range<Int>) -> Step {
    switch state {
    case .awaitingHello: return hello(bytes, range)
    case .awaitingProof(let transcript, let key, let identity, let doom, let afterProof):
      return proof(
        bytes, range, transcript: transcript, key: key, identity: identity, doom: doom, afterProof: afterProof)
    case .verified, .done:
      state = .done
      return .refuse([], .malformedFrame("a frame during the handshake after it ended"))
    }
  }

  /// Why the handshake failed if the dialler hangs up now: after a challenge, an honest dialler hangs up when
  /// this node's proof does not verify for it (another secret or cluster id), and a hopeless hello's reason is
  /// known already. `nil` if the dialler was not waiting on a challenge.
  var reasonIfAbandoned: TCPCloseReason? {
    guard case .awaitingProof(_, _, let identity, let doom, _) = state else { return nil }
    if let doom { return doom }
    let whose: String
    switch identity {
    case .peer(let node): whose = "\(node)"
    case .client(let principal, _): whose = "principal '\(logSafe(principal ?? "", limit: 64))'"
    }
    return .authenticationFailed(
      "\(whose) hung up after the challenge: this node's proof did not verify for it (another secret or cluster "
        + "id), or it gave up")
  }

  /// The frame admitting a verified dialler, and the session (`nil` without authentication).
  mutating func welcome() -> ([UInt8], TCPSession?) {
    guard case .verified(let session) = state else {
      preconditionFailure("welcome() before the dialler was verified (state \(state))")
    }
    state = .done
    guard var session else { return (TCPFrame.frame(reply(refusal: nil).wireBytes()), nil) }
    let frame = session.sealer.seal(TCPFrame.frame(TCPHandshakeVerdict(refusal: nil).wireBytes()))
    return (frame, session)
  }

  /// The frame turning a verified dialler away with `text` (it proved who it is, so it may know why).
  mutating func refusal(_ text: String) -> [UInt8] {
    var authenticated = false
    if case .verified(let session) = state { authenticated = session != nil }
    state = .done
    if authenticated { return TCPFrame.frame(TCPHandshakeVerdict(refusal: text).wireBytes()) }
    return TCPFrame.frame(reply(refusal: text).wireBytes())
  }

  private func reply(refusal: String?, nonce: [UInt8] = [], proof: [UInt8] = []) -> TCPHandshakeReply {
    TCPHandshakeReply(
      node: policy.node, refusal: refusal, nonce: nonce, proof: proof, version: version ?? policy.versions.upperBound,
      listenerVersions: policy.versions)
  }

  private mutating func refuse(_ text: String, _ reason: TCPCloseReason) -> Step {
    state = .done
    return .refuse(TCPFrame.frame(reply(refusal: text).wireBytes()), reason)
  }

  private mutating func hello(_ bytes: [UInt8], _ range: Range<Int>) -> Step {
    // The versions first: without one in common, the rest of the hello need not even be readable.
    if let offered = TCPHandshake.offeredVersions(bytes, range) {
      guard let agreed = TCPHandshake.highestCommonVersion(offered, policy.versions) else {
        state = .done
        let reason = TCPCloseReason.noCommonVersion(local: policy.versions, remote: offered)
        let text =
          "no protocol version in common: this node speaks \(TCPCloseReason.versionsText(policy.versions)), the "
          + "dialler \(TCPCloseReason.versionsText(offered))"
        if offered.upperBound <= TCPHandshake.legacyVersions.upperBound {
          // A legacy client gives up on the node at once only for a refusal starting "unsupported format
          // version" (its `isPermanentRefusal`); any other text it retries until its deadline.
          let legacyText =
            "unsupported format version \(offered.lowerBound): no protocol version in common, this node speaks "
            + TCPCloseReason.versionsText(policy.versions)
          return .refuse(
            TCPFrame.frame(
              TCPHandshakeReply.legacyRefusal(node: policy.node, text: legacyText, version: offered.lowerBound)),
            reason)
        }
        let refusal = TCPHandshakeReply(node: policy.node, refusal: text, version: 0, listenerVersions: policy.versions)
        return .refuse(TCPFrame.frame(refusal.wireBytes()), reason)
      }
      version = agreed
    }
    let hello: TCPHandshake
    do {
      var reader = WireReader(bytes, range: range, limits: WireLimits(maxBytesLength: TCPFrame.maxHandshakeFrameBytes))
      hello = try TCPHandshake(from: &reader)
    } catch {
      let reason = TCPCloseReason.badHandshake(logSafe("\(error)"))
      return refuse(policy.security.isAuthenticated ? Self.authenticationFailed : "bad handshake", reason)
    }
    switch policy.security.mode {
    case .insecure: return insecureHello(hello)
    case .authenticated(let clusterSecret, let clients):
      return authenticatedHello(hello, clusterSecret: clusterSecret, clients: clients)
    }
  }

  /// Why `hello` cannot be admitted whatever it proves, if it cannot.
  private func doom(of hello: TCPHandshake) -> TCPCloseReason? {
    if hello.cluster != policy.cluster {
      return .clusterMismatch(local: policy.cluster, remote: hello.cluster)
    }
    if hello.to != .none && hello.to != policy.node { return .wrongNode(expected: hello.to, actual: policy.node) }
    switch hello.role {
    case .peer:
      guard hello.from != .none else { return .badHandshake("a peer handshake without a node id") }
      guard policy.admitsPeer(hello.from) else { return .unknownNode(hello.from) }
      guard hello.protocolNumber == policy.peerProtocol else {
        return .badHandshake("protocol \(hello.protocolNumber), this node speaks \(policy.peerProtocol)")
      }
    case .client:
      guard policy.serveClients else { return .clientsNotServed }
      guard hello.protocolNumber == WireProtocol.client else {
        return .badHandshake("client protocol \(hello.protocolNumber), expected \(WireProtocol.client)")
      }
    }
    return nil
  }

  /// Why a peer's hello is refused once the peer is known to be who it claims: its group table differs.
  private func groupTableRefusal(of hello: TCPHandshake) -> TCPCloseReason? {
    guard hello.role == .peer, hello.groupTableDigest != policy.groupTableDigest else { return nil }
    func hex(_ bytes: [UInt8]) -> String {
      bytes.isEmpty ? "(none)" : bytes.prefix(8).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
    return .groupTableMismatch(local: hex(policy.groupTableDigest), remote: hex(hello.groupTableDigest))
  }

  private mutating func insecureHello(_ hello: TCPHandshake) -> Step {
    guard hello.mode == .none else {
      return refuse(
        "this node runs without authentication",
        .authenticationFailed("the dialler offered authentication, but this node runs insecure"))
    }
    if let reason = doom(of: hello) ?? groupTableRefusal(of: hello) {
      return refuse(reason.publicDescription, reason)
    }
    state = .verified(nil)
    switch hello.role {
    case .peer: return .verified(.peer(hello.from))
    case .client: return .verified(.client(principal: nil, role: .admin))
    }
  }

  private mutating func authenticatedHello(
    _ hello: TCPHandshake, clusterSecret: TCPSecret, clients: TCPCredentials
  ) -> Step {
    guard hello.mode == .hmacSHA256 else {
      return refuse(
        Self.authenticationFailed, .authenticationFailed("the dialler did not offer authentication (insecure)"))
    }
    guard hello.nonce.count == TCPHandshake.nonceByteCount else {
      return refuse(Self.authenticationFailed, .badHandshake("a nonce of \(hello.nonce.count) bytes"))
    }
    var doom = doom(of: hello)
    var key = clusterSecret.bytes
    var identity = RemoteIdentity.peer(hello.from)
    if hello.role == .client {
      if let entry = clients.entries[hello.principal] {
        key = entry.secret.bytes
        identity = .client(principal: hello.principal, role: entry.role)
      } else {
        doom = doom ?? .authenticationFailed("unknown principal '\(logSafe(hello.principal, limit: 64))'")
      }
    }
    if doom != nil { key = decoy }
    let transcript = HandshakeTranscript(
      hello: hello, cluster: policy.cluster, listener: policy.node, listenerNonce: nonce,
      version: version ?? policy.versions.upperBound, listenerVersions: policy.versions)
    state = .awaitingProof(
      transcript: transcript, key: key, identity: identity, doom: doom,
      afterProof: doom == nil ? groupTableRefusal(of: hello) : nil)
    let challenge = reply(refusal: nil, nonce: nonce, proof: transcript.proof(by: .listener, key: key))
    return .send(TCPFrame.frame(challenge.wireBytes()))
  }

  private mutating func proof(
    _ bytes: [UInt8], _ range: Range<Int>, transcript: HandshakeTranscript, key: [UInt8], identity: RemoteIdentity,
    doom: TCPCloseReason?, afterProof: TCPCloseReason?
  ) -> Step {
    state = .done
    let refusal = TCPFrame.frame(TCPHandshakeVerdict(refusal: Self.authenticationFailed).wireBytes())
    let message: TCPHandshakeProof
    do {
      var reader = WireReader(bytes, range: range)
      message = try TCPHandshakeProof(from: &reader)
    } catch {
      return .refuse(refusal, .badHandshake("an unreadable proof: \(logSafe("\(error)"))"))
    }
    if let doom { return .refuse(refusal, doom) }
    guard transcript.verify(message.proof, by: .dialler, key: key) else {
      let whose: String
      switch identity {
      case .peer(let node): whose = "\(node) (the cluster secret)"
      case .client(let principal, _): whose = "principal '\(logSafe(principal ?? "", limit: 64))'"
      }
      return .refuse(refusal, .authenticationFailed("the proof of \(whose) did not verify: a wrong secret"))
    }
    if let afterProof {
      // The dialler proved it holds the cluster secret: it may know why it is turned away.
      return .refuse(TCPFrame.frame(TCPHandshakeVerdict(refusal: afterProof.publicDescription).wireBytes()), afterProof)
    }
    let keys = transcript.sessionKeys(key: key)
    state = .verified(
      TCPSession(sealer: FrameSealer(key: keys.listenerToDialler), opener: FrameOpener(key: keys.diallerToListener)))
    return .verified(identity)
  }
}
