public import QuorumCore

/// The frame format shared by peer and client connections.
///
/// Every frame is a little-endian `u32` length followed by that many bytes. The first frame each way is a
/// handshake (``TCPHandshake``); every later frame is a ``QuorumCore/WireEnvelope``: magic, format version,
/// protocol number, group, sender, receiver, payload. A length over the configured maximum, a length of
/// zero, bytes that do not decode, or a stream that ends mid-frame closes the connection with a
/// ``TCPCloseReason``.
public enum TCPFrame {
  /// Bytes in the length prefix.
  public static let prefixBytes = 4

  /// Encodes `envelope` as one frame: the length prefix, then the envelope.
  public static func encode<M: WireEncodable>(_ envelope: Envelope<M>, protocolNumber: UInt8, reserving: Int = 64)
    -> [UInt8]
  {
    var writer = WireWriter(reservingCapacity: reserving)
    writer.writeFixed32(0)
    WireEnvelope.encode(envelope, protocolNumber: protocolNumber, into: &writer)
    writer.patchFixed32(UInt32(truncatingIfNeeded: writer.count - prefixBytes), at: 0)
    return writer.bytes
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
/// Layout: magic `QRHI` (fixed32), handshake version (u8), cluster id (string), role (u8: 1 peer, 2 client),
/// sender node (varint; 0 for a client), the node the dialler expects to reach (varint; 0 for any), and the
/// protocol number of the frames that follow (u8). The listener answers with ``TCPHandshakeReply`` and, if it
/// refuses, closes the connection.
public struct TCPHandshake: Sendable, Equatable, WireCodable {
  /// The handshake's magic number, "QRHI" read little-endian.
  public static let magic: UInt32 = 0x4948_5251
  /// The handshake version this build speaks.
  public static let currentVersion: UInt8 = 1

  /// Who is connecting.
  public enum Role: UInt8, Sendable, Equatable {
    /// A cluster member opening its outbound link.
    case peer = 1
    /// A client of the cluster's services.
    case client = 2
  }

  /// The handshake version.
  public var version: UInt8
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

  /// Creates a handshake for the current version.
  public init(cluster: ClusterID, role: Role, from: NodeID, to: NodeID, protocolNumber: UInt8) {
    self.version = Self.currentVersion
    self.cluster = cluster
    self.role = role
    self.from = from
    self.to = to
    self.protocolNumber = protocolNumber
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeFixed32(Self.magic)
    writer.writeByte(version)
    writer.writeString(cluster.rawValue)
    writer.writeByte(role.rawValue)
    writer.writeVarint(from.rawValue)
    writer.writeVarint(to.rawValue)
    writer.writeByte(protocolNumber)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let start = reader.position
    let magic = try reader.readFixed32()
    guard magic == Self.magic else { throw WireError(.badMagic(UInt16(truncatingIfNeeded: magic)), at: start) }
    version = try reader.readByte()
    guard version == Self.currentVersion else { throw WireError(.unsupportedVersion(version), at: start + 4) }
    cluster = ClusterID(rawValue: try reader.readString())
    let roleAt = reader.position
    let rawRole = try reader.readByte()
    guard let role = Role(rawValue: rawRole) else {
      throw WireError(.unknownTag(type: "TCPHandshake.Role", tag: UInt64(rawRole)), at: roleAt)
    }
    self.role = role
    from = NodeID(rawValue: try reader.readVarint())
    to = NodeID(rawValue: try reader.readVarint())
    protocolNumber = try reader.readByte()
  }
}

/// The listener's answer to a ``TCPHandshake``.
///
/// Layout: magic `QRHA` (fixed32), handshake version (u8), the listener's node (varint), then a status
/// byte (0 accepted, otherwise refused) and, when refused, the reason as text.
public struct TCPHandshakeReply: Sendable, Equatable, WireCodable {
  /// The reply's magic number, "QRHA" read little-endian.
  public static let magic: UInt32 = 0x4148_5251

  /// The listening node.
  public var node: NodeID
  /// `nil` if accepted, otherwise why not.
  public var refusal: String?

  /// Creates a reply.
  public init(node: NodeID, refusal: String?) {
    self.node = node
    self.refusal = refusal
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeFixed32(Self.magic)
    writer.writeByte(TCPHandshake.currentVersion)
    writer.writeVarint(node.rawValue)
    writer.writeOptional(refusal)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let start = reader.position
    let magic = try reader.readFixed32()
    guard magic == Self.magic else { throw WireError(.badMagic(UInt16(truncatingIfNeeded: magic)), at: start) }
    let version = try reader.readByte()
    guard version == TCPHandshake.currentVersion else { throw WireError(.unsupportedVersion(version), at: start + 4) }
    node = NodeID(rawValue: try reader.readVarint())
    refusal = try reader.readOptional(String.self)
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
