public import QuorumCore

/// The frame format shared by peer and client connections.
///
/// Every frame is a little-endian `u32` length followed by that many bytes. The first frames are the
/// handshake (``TCPHandshake``); every later frame is a ``QuorumCore/WireEnvelope``: magic, format version,
/// protocol number, group, sender, receiver, payload (or, on a peer connection, a small link-control frame).
/// On an authenticated connection each frame after the handshake ends in a code of ``tagBytes`` bytes — the
/// first 16 bytes of HMAC-SHA-256, under the direction's session key, of the frame's sequence number on the
/// connection (u64, little-endian, from 0, never sent) followed by the body — and the length counts the code.
/// A replayed, reordered, altered or spliced frame fails its code and closes the connection with
/// ``TCPCloseReason/frameAuthenticationFailed(sequence:)``.
///
/// Until the handshake completes a frame is at most ``maxHandshakeFrameBytes``; after it,
/// ``TCPTransportOptions/maxFrameBytes`` plus the code. A length over the limit, a length of zero, bytes that
/// do not decode, or a stream that ends mid-frame closes the connection with a ``TCPCloseReason``.
public enum TCPFrame {
  /// Bytes in the length prefix.
  public static let prefixBytes = 4
  /// Bytes of the code at the end of each authenticated frame (HMAC-SHA-256 truncated to 128 bits, as
  /// RFC 2104 §5 allows).
  public static let tagBytes = 16
  /// The largest frame body accepted before the handshake completes: nothing more is buffered for a side
  /// that has not authenticated.
  public static let maxHandshakeFrameBytes = 4096

  /// Encodes `envelope` as one frame: the length prefix, then the envelope.
  public static func encode<M: WireEncodable>(_ envelope: Envelope<M>, protocolNumber: UInt8, reserving: Int = 64)
    -> [UInt8]
  {
    encode(
      envelope.payload, from: envelope.from, to: envelope.to, group: envelope.group, protocolNumber: protocolNumber,
      reserving: reserving)
  }

  /// Frames the envelope of `payload` from `from` to `to` in `group`, without building the ``QuorumCore/Envelope``.
  public static func encode<M: WireEncodable>(
    _ payload: M, from: NodeID, to: NodeID, group: GroupID, protocolNumber: UInt8, reserving: Int = 64
  ) -> [UInt8] {
    var writer = WireWriter(reservingCapacity: reserving)
    writer.writeFixed32(0)
    WireEnvelope.encode(payload, from: from, to: to, group: group, protocolNumber: protocolNumber, into: &writer)
    writer.patchFixed32(UInt32(truncatingIfNeeded: writer.count - prefixBytes), at: 0)
    return writer.bytes
  }

  /// Appends the frame of `payload`'s envelope to `buffer`, as ``encode(_:from:to:group:protocolNumber:reserving:)``
  /// makes it.
  public static func append<M: WireEncodable>(
    _ payload: M, from: NodeID, to: NodeID, group: GroupID, protocolNumber: UInt8, to buffer: inout [UInt8]
  ) {
    var writer = WireWriter()
    swap(&writer.bytes, &buffer)
    let start = writer.count
    writer.writeFixed32(0)
    WireEnvelope.encode(payload, from: from, to: to, group: group, protocolNumber: protocolNumber, into: &writer)
    writer.patchFixed32(UInt32(truncatingIfNeeded: writer.count - start - prefixBytes), at: start)
    swap(&writer.bytes, &buffer)
  }

  /// Frames an already encoded body.
  public static func frame(_ body: [UInt8]) -> [UInt8] {
    var writer = WireWriter(reservingCapacity: body.count + prefixBytes)
    writer.writeFixed32(UInt32(truncatingIfNeeded: body.count))
    writer.writeRaw(body)
    return writer.bytes
  }
}

/// The first frame on every connection, sent by the side that connects.
///
/// Layout (protocol version 3 and later): magic `QRHI` (fixed32), the lowest and the highest protocol version the
/// dialler speaks (u8 each), security mode (u8: 0 none, 1 HMAC-SHA-256), role (u8: 1 peer, 2 client), cluster id
/// (string), sender node (varint; 0 for a client), the node the dialler expects to reach (varint; 0 for any), the
/// protocol number of the frames that follow (u8), the client's principal name (string; empty for a peer or
/// without authentication), the dialler's nonce (bytes: 32 fresh random bytes with authentication, empty
/// without), its ``TCPTransportOptions/groupTableDigest`` (bytes; empty for a client or a peer without one), and
/// then the fields later versions add (``extensions``): each a tag (varint) and a value (bytes).
///
/// **Versions.** The listener answers (``TCPHandshakeReply``) with the version both use: the highest that both
/// ranges hold. A dialler and a listener with none in common close with
/// ``TCPCloseReason/noCommonVersion(local:remote:)``, each naming both ranges. The compatibility rule: a later
/// version keeps this layout and only appends fields, so a listener reads any hello, decodes the appended fields
/// it does not know (to check their framing) and ignores them. It ignores them only in meaning: an authenticated
/// handshake's transcript binds them, so nobody on the path can add, drop or change one. The authentication
/// messages themselves (the reply's nonce and proof, ``TCPHandshakeProof``, ``TCPHandshakeVerdict``) are read
/// exactly, in the agreed version's layout, and refused with anything more. Handshake versions 1 and 2 had a
/// single version byte where this layout has the lowest version, and no negotiation: a dialler of either is
/// refused, in the layout it reads, with the versions this node speaks.
///
/// Without authentication the listener answers with a ``TCPHandshakeReply`` that accepts or refuses, and
/// frames follow. With authentication the exchange has four messages: this hello, the listener's reply with
/// its own nonce and proof (``TCPHandshakeReply``), the dialler's proof (``TCPHandshakeProof``), and the
/// listener's verdict (``TCPHandshakeVerdict``). A proof is HMAC-SHA-256 under the shared key (the cluster
/// secret for a peer, the principal's secret for a client) of a transcript binding both nonces, the agreed
/// version and both sides' ranges, the cluster id, the role, both node ids, the protocol number, the principal's
/// name, the group table digest, the appended fields and which side proves; then each direction has its own
/// session key (HKDF-SHA-256 over the key and the transcript), and every frame carries a code under it and an
/// implicit sequence number (see ``TCPFrame``).
public struct TCPHandshake: Sendable, Equatable, WireCodable {
  /// The handshake's magic number, "QRHI" read little-endian.
  public static let magic: UInt32 = 0x4948_5251
  /// The protocol versions this build speaks.
  public static let supportedVersions: ClosedRange<UInt8> = 3...3
  /// The handshake versions from before versions were negotiated, whose hello has its one version byte where
  /// this layout has the lowest version; a listener of them answers any other hello with a version 1 refusal.
  public static let legacyVersions: ClosedRange<UInt8> = 1...2
  /// The bytes of each side's nonce.
  public static let nonceByteCount = 32

  /// Who is connecting.
  public enum Role: UInt8, Sendable, Equatable {
    /// A cluster member opening its outbound link.
    case peer = 1
    /// A client of the cluster's services.
    case client = 2
  }

  /// How the connection is authenticated.
  public enum Mode: UInt8, Sendable, Equatable {
    /// Not at all (both sides run insecure).
    case none = 0
    /// HMAC-SHA-256 challenge-response, then a code on every frame.
    case hmacSHA256 = 1
  }

  /// The protocol versions the dialler speaks.
  public var versions: ClosedRange<UInt8>
  /// How the connection is authenticated.
  public var mode: Mode
  /// The cluster the dialler belongs to.
  public var cluster: ClusterID
  /// Peer or client.
  public var role: Role
  /// The dialling node (``QuorumCore/NodeID/none`` for a client).
  public var from: NodeID
  /// The node the dialler expects to reach (``QuorumCore/NodeID/none`` for any).
  public var to: NodeID
  /// The protocol number of the frames that follow.
  public var protocolNumber: UInt8
  /// A client's principal name (empty for a peer, or without authentication).
  public var principal: String
  /// The dialler's nonce (``nonceByteCount`` bytes with authentication, empty without).
  public var nonce: [UInt8]
  /// A peer's ``TCPTransportOptions/groupTableDigest`` (empty for a client, or a peer without one).
  public var groupTableDigest: [UInt8]
  /// The fields a later version appended, as they were sent: each a tag (varint) and a value (bytes). This build
  /// sends none and ignores those it receives, but an authenticated handshake's transcript binds them.
  public var extensions: [UInt8]

  /// Creates a hello offering `versions` (this build's, ``supportedVersions``, unless it stands in for another).
  public init(
    cluster: ClusterID, role: Role, from: NodeID, to: NodeID, protocolNumber: UInt8, mode: Mode = .none,
    principal: String = "", nonce: [UInt8] = [], groupTableDigest: [UInt8] = [],
    versions: ClosedRange<UInt8> = TCPHandshake.supportedVersions, extensions: [UInt8] = []
  ) {
    self.versions = versions
    self.mode = mode
    self.cluster = cluster
    self.role = role
    self.from = from
    self.to = to
    self.protocolNumber = protocolNumber
    self.principal = principal
    self.nonce = nonce
    self.groupTableDigest = groupTableDigest
    self.extensions = extensions
  }

  /// The highest version both `a` and `b` hold, or `nil` if they hold none in common.
  public static func highestCommonVersion(_ a: ClosedRange<UInt8>, _ b: ClosedRange<UInt8>) -> UInt8? {
    a.overlaps(b) ? min(a.upperBound, b.upperBound) : nil
  }

  /// The versions the hello in `bytes[range]` offers, read from its start alone (a hello of a legacy version
  /// offers that version), or `nil` if it does not start like a hello.
  static func offeredVersions(_ bytes: [UInt8], _ range: Range<Int>) -> ClosedRange<UInt8>? {
    var reader = WireReader(bytes, range: range)
    guard (try? reader.readFixed32()) == magic, let lowest = try? reader.readByte() else { return nil }
    if lowest <= legacyVersions.upperBound { return lowest...lowest }
    guard let highest = try? reader.readByte(), highest >= lowest else { return nil }
    return lowest...highest
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeFixed32(Self.magic)
    writer.writeByte(versions.lowerBound)
    writer.writeByte(versions.upperBound)
    writer.writeByte(mode.rawValue)
    writer.writeByte(role.rawValue)
    writer.writeString(cluster.rawValue)
    writer.writeVarint(from.rawValue)
    writer.writeVarint(to.rawValue)
    writer.writeByte(protocolNumber)
    writer.writeString(principal)
    writer.writeBytes(nonce)
    writer.writeBytes(groupTableDigest)
    writer.writeRaw(extensions)
  }

  /// Decodes a hello; one of a legacy version (``legacyVersions``) throws
  /// ``QuorumCore/WireError/Kind/unsupportedVersion(_:)``.
  public init(from reader: inout WireReader) throws(WireError) {
    let start = reader.position
    let magic = try reader.readFixed32()
    guard magic == Self.magic else { throw WireError(.badMagic(UInt16(truncatingIfNeeded: magic)), at: start) }
    let lowest = try reader.readByte()
    guard lowest > Self.legacyVersions.upperBound else { throw WireError(.unsupportedVersion(lowest), at: start + 4) }
    let highest = try reader.readByte()
    guard highest >= lowest else {
      throw WireError(.invalidValue("protocol versions \(lowest) to \(highest)"), at: start + 5)
    }
    versions = lowest...highest
    let modeAt = reader.position
    let rawMode = try reader.readByte()
    guard let mode = Mode(rawValue: rawMode) else {
      throw WireError(.unknownTag(type: "TCPHandshake.Mode", tag: UInt64(rawMode)), at: modeAt)
    }
    self.mode = mode
    let roleAt = reader.position
    let rawRole = try reader.readByte()
    guard let role = Role(rawValue: rawRole) else {
      throw WireError(.unknownTag(type: "TCPHandshake.Role", tag: UInt64(rawRole)), at: roleAt)
    }
    self.role = role
    cluster = ClusterID(rawValue: try reader.readString())
    from = NodeID(rawValue: try reader.readVarint())
    to = NodeID(rawValue: try reader.readVarint())
    protocolNumber = try reader.readByte()
    principal = try reader.readString()
    nonce = try reader.readBytes()
    groupTableDigest = try reader.readBytes()
    // Fields of later versions: decoded to check their framing, kept as sent for the transcript, ignored.
    let appended = reader.position
    while !reader.isAtEnd {
      _ = try reader.readVarint()
      _ = try reader.readBytes()
    }
    extensions = Array(reader.bytes[appended..<reader.position])
  }
}

/// The listener's answer to a ``TCPHandshake``.
///
/// Layout: magic `QRHA` (fixed32), the protocol version agreed (u8: the highest both sides speak; 0 when they
/// have none in common), the lowest and the highest version the listener speaks (u8 each), the listener's node
/// (varint) and the refusal (optional string: absent when the handshake goes on) — the same in every version
/// from 3 on, so that a dialler reads a refusal whichever versions the listener speaks — then, in version 3, the
/// listener's nonce and its proof (bytes; empty without authentication); nothing more with version 0. A refusal
/// names no cluster id and, with authentication, says only "authentication failed"; the listener logs the
/// detail.
public struct TCPHandshakeReply: Sendable, Equatable, WireCodable {
  /// The reply's magic number, "QRHA" read little-endian.
  public static let magic: UInt32 = 0x4148_5251

  /// The protocol version the rest of the connection uses; 0 when the two sides speak none in common.
  public var version: UInt8
  /// The protocol versions the listener speaks.
  public var listenerVersions: ClosedRange<UInt8>
  /// The listening node.
  public var node: NodeID
  /// `nil` if the handshake goes on, otherwise why not.
  public var refusal: String?
  /// The listener's nonce (empty without authentication).
  public var nonce: [UInt8]
  /// The listener's proof (empty without authentication).
  public var proof: [UInt8]

  /// Creates a reply; a listener of this build agrees on version 3, the only one it speaks.
  public init(
    node: NodeID, refusal: String?, nonce: [UInt8] = [], proof: [UInt8] = [],
    version: UInt8 = TCPHandshake.supportedVersions.upperBound,
    listenerVersions: ClosedRange<UInt8> = TCPHandshake.supportedVersions
  ) {
    self.version = version
    self.listenerVersions = listenerVersions
    self.node = node
    self.refusal = refusal
    self.nonce = nonce
    self.proof = proof
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeFixed32(Self.magic)
    writer.writeByte(version)
    writer.writeByte(listenerVersions.lowerBound)
    writer.writeByte(listenerVersions.upperBound)
    writer.writeVarint(node.rawValue)
    writer.writeOptional(refusal)
    guard version != 0 else { return }
    writer.writeBytes(nonce)
    writer.writeBytes(proof)
  }

  /// Decodes a reply; one in a legacy layout (``TCPHandshake/legacyVersions``), or agreeing on a version this
  /// build does not speak, throws ``QuorumCore/WireError/Kind/unsupportedVersion(_:)``.
  public init(from reader: inout WireReader) throws(WireError) {
    let start = reader.position
    let magic = try reader.readFixed32()
    guard magic == Self.magic else { throw WireError(.badMagic(UInt16(truncatingIfNeeded: magic)), at: start) }
    version = try reader.readByte()
    guard version == 0 || version > TCPHandshake.legacyVersions.upperBound else {
      throw WireError(.unsupportedVersion(version), at: start + 4)
    }
    let lowest = try reader.readByte()
    let highest = try reader.readByte()
    guard lowest > TCPHandshake.legacyVersions.upperBound, highest >= lowest else {
      throw WireError(.invalidValue("listener versions \(lowest) to \(highest)"), at: start + 5)
    }
    listenerVersions = lowest...highest
    node = NodeID(rawValue: try reader.readVarint())
    refusal = try reader.readOptional(String.self)
    if version == 0 {
      nonce = []
      proof = []
    } else {
      guard TCPHandshake.supportedVersions.contains(version) else {
        throw WireError(.unsupportedVersion(version), at: start + 4)
      }
      nonce = try reader.readBytes()
      proof = try reader.readBytes()
    }
    try reader.expectEnd()
  }

  /// A refusal a dialler of legacy handshake `version` reads: in the layout of version 2 (magic, version 2, node,
  /// refusal, empty nonce and proof) for a version 2 dialler, otherwise in that of version 1 (magic, version 1,
  /// node, refusal), which is what a version 2 listener sent a dialler of any other version.
  static func legacyRefusal(node: NodeID, text: String, version: UInt8) -> [UInt8] {
    var writer = WireWriter(reservingCapacity: 64)
    writer.writeFixed32(magic)
    writer.writeByte(version == 2 ? 2 : 1)
    writer.writeVarint(node.rawValue)
    writer.writeOptional(text)
    if version == 2 {
      writer.writeBytes([UInt8]())
      writer.writeBytes([UInt8]())
    }
    return writer.bytes
  }
}

/// The dialler's proof, the third message of an authenticated handshake: magic `QRHP` (fixed32) and the
/// HMAC-SHA-256 proof (bytes).
public struct TCPHandshakeProof: Sendable, Equatable, WireCodable {
  /// The proof's magic number, "QRHP" read little-endian.
  public static let magic: UInt32 = 0x5048_5251

  /// HMAC-SHA-256 of the transcript under the shared key.
  public var proof: [UInt8]

  /// Creates a proof message.
  public init(proof: [UInt8]) { self.proof = proof }

  public func encode(to writer: inout WireWriter) {
    writer.writeFixed32(Self.magic)
    writer.writeBytes(proof)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let start = reader.position
    let magic = try reader.readFixed32()
    guard magic == Self.magic else { throw WireError(.badMagic(UInt16(truncatingIfNeeded: magic)), at: start) }
    proof = try reader.readBytes()
    try reader.expectEnd()
  }
}

/// The listener's verdict, the last message of an authenticated handshake: magic `QRHV` (fixed32) and the
/// refusal (optional string). An acceptance is the first frame under the listener's session key (so the
/// dialler knows both sides derived the same keys); a refusal is sent without a code.
public struct TCPHandshakeVerdict: Sendable, Equatable, WireCodable {
  /// The verdict's magic number, "QRHV" read little-endian.
  public static let magic: UInt32 = 0x5648_5251

  /// `nil` if accepted, otherwise why not.
  public var refusal: String?

  /// Creates a verdict.
  public init(refusal: String?) { self.refusal = refusal }

  public func encode(to writer: inout WireWriter) {
    writer.writeFixed32(Self.magic)
    writer.writeOptional(refusal)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let start = reader.position
    let magic = try reader.readFixed32()
    guard magic == Self.magic else { throw WireError(.badMagic(UInt16(truncatingIfNeeded: magic)), at: start) }
    refusal = try reader.readOptional(String.self)
    try reader.expectEnd()
  }
}

/// A link-control frame on a peer connection: a ping from the dialler, or the listener's acknowledgement.
///
/// Layout: the bytes `QL` (so it cannot be mistaken for an envelope, whose magic is `QR`), a kind (u8: 1 ping,
/// 2 acknowledgement) and a count (varint: the ping's number, or how many frames the listener has received on
/// the connection). The listener acknowledges every ping at once, and every ping interval while it has stopped
/// reading for back-pressure; a dialler that hears nothing for the liveness timeout drops the connection and
/// dials again (see ``LinkLiveness``).
enum LinkControl: Equatable {
  case ping(UInt64)
  case acknowledgement(UInt64)

  static let magic: UInt16 = 0x4C51

  /// Whether `bytes[range]` starts like a link-control frame.
  static func isControl(_ bytes: [UInt8], _ range: Range<Int>) -> Bool {
    range.count >= 3 && bytes[range.lowerBound] == 0x51 && bytes[range.lowerBound + 1] == 0x4C
  }

  /// The frame, length prefix included.
  var frame: [UInt8] {
    var writer = WireWriter(reservingCapacity: 16)
    writer.writeFixed32(0)
    writer.writeByte(0x51)
    writer.writeByte(0x4C)
    switch self {
    case .ping(let count):
      writer.writeByte(1)
      writer.writeVarint(count)
    case .acknowledgement(let count):
      writer.writeByte(2)
      writer.writeVarint(count)
    }
    writer.patchFixed32(UInt32(writer.count - TCPFrame.prefixBytes), at: 0)
    return writer.bytes
  }

  init(_ bytes: [UInt8], range: Range<Int>) throws(WireError) {
    var reader = WireReader(bytes, range: range)
    try reader.skip(2)
    let kindAt = reader.position
    let kind = try reader.readByte()
    let count = try reader.readVarint()
    try reader.expectEnd()
    switch kind {
    case 1: self = .ping(count)
    case 2: self = .acknowledgement(count)
    default: throw WireError(.unknownTag(type: "LinkControl", tag: UInt64(kind)), at: kindAt)
    }
  }
}

/// The payload of a client-protocol frame: a request or reply number and opaque bytes.
struct RPCPayload: WireCodable {
  var id: UInt64
  var body: [UInt8]

  func encode(to writer: inout WireWriter) {
    writer.writeVarint(id)
    writer.writeBytes(body)
  }

  init(id: UInt64, body: [UInt8]) {
    self.id = id
    self.body = body
  }

  init(from reader: inout WireReader) throws(WireError) {
    id = try reader.readVarint()
    body = try reader.readBytes()
  }
}
