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
/// Layout (version 2): magic `QRHI` (fixed32), handshake version (u8), security mode (u8: 0 none, 1
/// HMAC-SHA-256), role (u8: 1 peer, 2 client), cluster id (string), sender node (varint; 0 for a client), the
/// node the dialler expects to reach (varint; 0 for any), the protocol number of the frames that follow (u8),
/// the client's principal name (string; empty for a peer or without authentication), the dialler's nonce
/// (bytes: 32 fresh random bytes with authentication, empty without) and, only when the dialler is a peer with a
/// ``TCPTransportOptions/groupTableDigest``, that digest (bytes; absent when empty, so that a client's hello is
/// what it was before the field existed).
///
/// Without authentication the listener answers with a ``TCPHandshakeReply`` that accepts or refuses, and
/// frames follow. With authentication the exchange has four messages: this hello, the listener's reply with
/// its own nonce and proof (``TCPHandshakeReply``), the dialler's proof (``TCPHandshakeProof``), and the
/// listener's verdict (``TCPHandshakeVerdict``). A proof is HMAC-SHA-256 under the shared key (the cluster
/// secret for a peer, the principal's secret for a client) of a transcript binding both nonces, the cluster
/// id, the role, both node ids, the protocol number, the principal's name and which side proves; then each
/// direction has its own session key (HKDF-SHA-256 over the key and the transcript), and every frame carries
/// a code under it and an implicit sequence number (see ``TCPFrame``).
///
/// A listener hears only version 2; a version 1 dialler gets a refusal in the version 1 layout saying so.
public struct TCPHandshake: Sendable, Equatable, WireCodable {
  /// The handshake's magic number, "QRHI" read little-endian.
  public static let magic: UInt32 = 0x4948_5251
  /// The handshake version this build speaks.
  public static let currentVersion: UInt8 = 2
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

  /// The handshake version.
  public var version: UInt8
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

  /// Creates a handshake for the current version.
  public init(
    cluster: ClusterID, role: Role, from: NodeID, to: NodeID, protocolNumber: UInt8, mode: Mode = .none,
    principal: String = "", nonce: [UInt8] = [], groupTableDigest: [UInt8] = []
  ) {
    self.version = Self.currentVersion
    self.mode = mode
    self.cluster = cluster
    self.role = role
    self.from = from
    self.to = to
    self.protocolNumber = protocolNumber
    self.principal = principal
    self.nonce = nonce
    self.groupTableDigest = groupTableDigest
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeFixed32(Self.magic)
    writer.writeByte(version)
    writer.writeByte(mode.rawValue)
    writer.writeByte(role.rawValue)
    writer.writeString(cluster.rawValue)
    writer.writeVarint(from.rawValue)
    writer.writeVarint(to.rawValue)
    writer.writeByte(protocolNumber)
    writer.writeString(principal)
    writer.writeBytes(nonce)
    if !groupTableDigest.isEmpty { writer.writeBytes(groupTableDigest) }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let start = reader.position
    let magic = try reader.readFixed32()
    guard magic == Self.magic else { throw WireError(.badMagic(UInt16(truncatingIfNeeded: magic)), at: start) }
    version = try reader.readByte()
    guard version == Self.currentVersion else { throw WireError(.unsupportedVersion(version), at: start + 4) }
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
    groupTableDigest = reader.isAtEnd ? [] : try reader.readBytes()
    try reader.expectEnd()
  }
}

/// The listener's answer to a ``TCPHandshake``.
///
/// Layout (version 2): magic `QRHA` (fixed32), handshake version (u8), the listener's node (varint), the
/// refusal (optional string: absent when the handshake goes on), the listener's nonce and its proof (bytes;
/// empty without authentication). A refusal names no cluster id and, with authentication, says only
/// "authentication failed"; the listener logs the detail.
public struct TCPHandshakeReply: Sendable, Equatable, WireCodable {
  /// The reply's magic number, "QRHA" read little-endian.
  public static let magic: UInt32 = 0x4148_5251

  /// The listening node.
  public var node: NodeID
  /// `nil` if the handshake goes on, otherwise why not.
  public var refusal: String?
  /// The listener's nonce (empty without authentication).
  public var nonce: [UInt8]
  /// The listener's proof (empty without authentication).
  public var proof: [UInt8]

  /// Creates a reply.
  public init(node: NodeID, refusal: String?, nonce: [UInt8] = [], proof: [UInt8] = []) {
    self.node = node
    self.refusal = refusal
    self.nonce = nonce
    self.proof = proof
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeFixed32(Self.magic)
    writer.writeByte(TCPHandshake.currentVersion)
    writer.writeVarint(node.rawValue)
    writer.writeOptional(refusal)
    writer.writeBytes(nonce)
    writer.writeBytes(proof)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let start = reader.position
    let magic = try reader.readFixed32()
    guard magic == Self.magic else { throw WireError(.badMagic(UInt16(truncatingIfNeeded: magic)), at: start) }
    let version = try reader.readByte()
    guard version == TCPHandshake.currentVersion else { throw WireError(.unsupportedVersion(version), at: start + 4) }
    node = NodeID(rawValue: try reader.readVarint())
    refusal = try reader.readOptional(String.self)
    nonce = try reader.readBytes()
    proof = try reader.readBytes()
    try reader.expectEnd()
  }

  /// A refusal in the layout of handshake version 1 (magic, version 1, node, refusal), which a version 1
  /// dialler can read.
  static func legacyRefusal(node: NodeID, text: String) -> [UInt8] {
    var writer = WireWriter(reservingCapacity: 64)
    writer.writeFixed32(magic)
    writer.writeByte(1)
    writer.writeVarint(node.rawValue)
    writer.writeOptional(text)
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
