/// The versioned header in front of every protocol message that leaves the process.
///
/// Layout: magic `0x51 0x52` ("QR"), format version (1 byte), protocol number (1 byte: which protocol's
/// message follows), then varints for group, sender and receiver, then the length-prefixed payload.
/// A reader rejects unknown magic and versions with a typed ``WireError`` before looking at the payload.
public struct WireEnvelopeHeader: Sendable, Equatable {
  /// The magic bytes "QR", read as a little-endian `UInt16`.
  public static let magic: UInt16 = 0x5251
  /// The format version this build writes.
  public static let currentVersion: UInt8 = 1

  /// The format version.
  public var version: UInt8
  /// Which protocol the payload belongs to (see ``WireProtocol``).
  public var protocolNumber: UInt8
  /// The consensus group.
  public var group: GroupID
  /// The sender.
  public var from: NodeID
  /// The receiver.
  public var to: NodeID

  /// Creates a header for the current version.
  public init(protocolNumber: UInt8, group: GroupID, from: NodeID, to: NodeID) {
    self.version = Self.currentVersion
    self.protocolNumber = protocolNumber
    self.group = group
    self.from = from
    self.to = to
  }
}

/// Protocol numbers carried in ``WireEnvelopeHeader/protocolNumber``.
public enum WireProtocol {
  /// Raft peer messages.
  public static let raft: UInt8 = 1
  /// Paxos peer messages.
  public static let paxos: UInt8 = 2
  /// Client requests and replies.
  public static let client: UInt8 = 3
  /// Two-phase-commit messages.
  public static let transaction: UInt8 = 4
  /// Messages between server hosts (every group's engine messages over one connection; the first byte of each
  /// payload is the engine's protocol number, ``raft`` or ``paxos``).
  public static let host: UInt8 = 5
  /// Used by tests and benchmarks.
  public static let test: UInt8 = 255
}

/// Encodes and decodes whole envelopes: header plus payload.
public enum WireEnvelope {
  /// Encodes `envelope` behind a header for `protocolNumber`.
  public static func encode<M: WireEncodable>(
    _ envelope: Envelope<M>, protocolNumber: UInt8, into writer: inout WireWriter
  ) {
    encode(
      envelope.payload, from: envelope.from, to: envelope.to, group: envelope.group, protocolNumber: protocolNumber,
      into: &writer)
  }

  /// Encodes the envelope of `payload` from `from` to `to` in `group` behind a header for `protocolNumber`,
  /// without building the ``Envelope`` (a transport generic over its message sends this way: no generic type
  /// lookup per message).
  public static func encode<M: WireEncodable>(
    _ payload: M, from: NodeID, to: NodeID, group: GroupID, protocolNumber: UInt8, into writer: inout WireWriter
  ) {
    // The header is built on the stack and appended at once: one append (and one uniqueness and capacity check)
    // instead of one per byte of its varints.
    withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 4 + 3 * 10) { header in
      let word =
        UInt32(WireEnvelopeHeader.magic) | UInt32(WireEnvelopeHeader.currentVersion) << 16
        | UInt32(protocolNumber) << 24
      var count = 0
      for shift in stride(from: 0, to: 32, by: 8) {
        header[count] = UInt8(truncatingIfNeeded: word >> UInt32(shift))
        count += 1
      }
      count = WireWriter.storeVarint(group.rawValue, in: header, at: count)
      count = WireWriter.storeVarint(from.rawValue, in: header, at: count)
      count = WireWriter.storeVarint(to.rawValue, in: header, at: count)
      writer.writeRaw(UnsafeBufferPointer(rebasing: header[0..<count]))
    }
    payload.encode(to: &writer)
  }

  /// Encodes `envelope` behind a header for `protocolNumber` into a fresh buffer.
  public static func encode<M: WireEncodable>(_ envelope: Envelope<M>, protocolNumber: UInt8) -> [UInt8] {
    var writer = WireWriter(reservingCapacity: 64)
    encode(envelope, protocolNumber: protocolNumber, into: &writer)
    return writer.bytes
  }

  /// Reads and validates a header; on return `reader` is positioned at the payload.
  public static func decodeHeader(from reader: inout WireReader) throws(WireError) -> WireEnvelopeHeader {
    let start = reader.position
    let word = try reader.readFixed32()
    let magic = UInt16(truncatingIfNeeded: word)
    guard magic == WireEnvelopeHeader.magic else { throw WireError(.badMagic(magic), at: start, path: ["header"]) }
    let version = UInt8(truncatingIfNeeded: word >> 16)
    guard version == WireEnvelopeHeader.currentVersion else {
      throw WireError(.unsupportedVersion(version), at: start + 2, path: ["header"])
    }
    var header = WireEnvelopeHeader(
      protocolNumber: UInt8(truncatingIfNeeded: word >> 24), group: .default, from: .none, to: .none)
    do {
      header.group = GroupID(rawValue: try reader.readVarint())
      header.from = NodeID(rawValue: try reader.readVarint())
      header.to = NodeID(rawValue: try reader.readVarint())
    } catch {
      throw error.inside("header")
    }
    return header
  }

  /// Decodes a whole envelope whose payload is an `M`, requiring `expectedProtocol` and no trailing bytes.
  public static func decode<M: WireDecodable>(
    _ type: M.Type, from bytes: [UInt8], range: Range<Int>? = nil, expectedProtocol: UInt8,
    limits: WireLimits = .default
  ) throws(WireError) -> Envelope<M> {
    var reader = WireReader(bytes, range: range, limits: limits)
    let start = reader.position
    let header = try decodeHeader(from: &reader)
    guard header.protocolNumber == expectedProtocol else {
      // The protocol number is the fourth byte of the header.
      throw WireError(
        .unknownTag(type: "protocol", tag: UInt64(header.protocolNumber)), at: start + 3, path: ["header"])
    }
    let payload: M
    do { payload = try M(from: &reader) } catch { throw error.inside("payload") }
    try reader.expectEnd()
    return Envelope(from: header.from, to: header.to, group: header.group, payload: payload)
  }
}
