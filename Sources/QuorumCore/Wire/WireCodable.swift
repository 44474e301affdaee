/// A value that can write itself in Quorum's binary format.
public protocol WireEncodable {
  /// Appends the value's encoding to `writer`.
  func encode(to writer: inout WireWriter)
}

/// A value that can read itself from Quorum's binary format.
public protocol WireDecodable {
  /// Reads a value, throwing a ``WireError`` for malformed input.
  init(from reader: inout WireReader) throws(WireError)

  /// Reads the rest of an envelope whose header is `header` — the payload, which must end the input — and
  /// appends the envelope to `batch`: exactly one envelope, or nothing if it throws.
  ///
  /// A transport's receive path calls this for every frame. Conforming types do not implement it: the default
  /// is inlinable, so each conforming type's witness is a copy specialised for that type, and a generic caller
  /// (a transport generic over its message) decodes and collects envelopes without the generic type lookups
  /// (`swift_getGenericMetadata`) that unspecialised code pays on every use of `Envelope<Message>`.
  static func decodeEnvelope(
    _ header: WireEnvelopeHeader, payloadFrom reader: inout WireReader, appendingTo batch: inout [Envelope<Self>]
  ) throws(WireError)

  /// Moves the envelopes of `batch` after its first `prefix` to the back of `queue`, in order, leaving `batch`
  /// with its first `prefix` alone (``FIFOQueue/append(movingFrom:after:)``).
  ///
  /// A transport's receive path calls this (through ``Mailbox``) for each read's batch. Conforming types do not
  /// implement it: as with ``decodeEnvelope(_:payloadFrom:appendingTo:)``, the default is inlinable, so the
  /// per-envelope loop runs specialised for the message type.
  static func moveEnvelopes(
    _ batch: inout [Envelope<Self>], to queue: inout FIFOQueue<Envelope<Self>>, after prefix: Int)
}

/// A value with a binary encoding in both directions.
public typealias WireCodable = WireEncodable & WireDecodable

extension WireEncodable {
  /// The value's encoding as a fresh byte array.
  public func wireBytes(reservingCapacity capacity: Int = 64) -> [UInt8] {
    var writer = WireWriter(reservingCapacity: capacity)
    encode(to: &writer)
    return writer.bytes
  }
}

extension WireDecodable {
  @inlinable
  public static func decodeEnvelope(
    _ header: WireEnvelopeHeader, payloadFrom reader: inout WireReader, appendingTo batch: inout [Envelope<Self>]
  ) throws(WireError) {
    let payload: Self
    do { payload = try Self(from: &reader) } catch { throw error.inside("payload") }
    try reader.expectEnd()
    batch.append(Envelope(from: header.from, to: header.to, group: header.group, payload: payload))
  }

  @inlinable
  public static func moveEnvelopes(
    _ batch: inout [Envelope<Self>], to queue: inout FIFOQueue<Envelope<Self>>, after prefix: Int
  ) {
    queue.append(movingFrom: &batch, after: prefix)
  }

  /// Decodes a value that must occupy all of `bytes`.
  public init(wireBytes bytes: [UInt8], limits: WireLimits = .default) throws(WireError) {
    var reader = WireReader(bytes, limits: limits)
    self = try Self(from: &reader)
    try reader.expectEnd()
  }
}

extension UInt8: WireCodable {
  public func encode(to writer: inout WireWriter) { writer.writeByte(self) }
  public init(from reader: inout WireReader) throws(WireError) { self = try reader.readByte() }
}

extension UInt16: WireCodable {
  public func encode(to writer: inout WireWriter) { writer.writeVarint(UInt64(self)) }
  public init(from reader: inout WireReader) throws(WireError) { self = try reader.readVarint(as: UInt16.self) }
}

extension UInt32: WireCodable {
  public func encode(to writer: inout WireWriter) { writer.writeVarint(UInt64(self)) }
  public init(from reader: inout WireReader) throws(WireError) { self = try reader.readVarint(as: UInt32.self) }
}

extension UInt64: WireCodable {
  public func encode(to writer: inout WireWriter) { writer.writeVarint(self) }
  public init(from reader: inout WireReader) throws(WireError) { self = try reader.readVarint() }
}

extension Int64: WireCodable {
  public func encode(to writer: inout WireWriter) { writer.writeSignedVarint(self) }
  public init(from reader: inout WireReader) throws(WireError) { self = try reader.readSignedVarint() }
}

extension Int: WireCodable {
  public func encode(to writer: inout WireWriter) { writer.writeSignedVarint(Int64(self)) }
  public init(from reader: inout WireReader) throws(WireError) {
    let start = reader.position
    let raw = try reader.readSignedVarint()
    guard let value = Int(exactly: raw) else { throw WireError(.invalidValue("\(raw) does not fit in Int"), at: start) }
    self = value
  }
}

extension Bool: WireCodable {
  public func encode(to writer: inout WireWriter) { writer.writeBool(self) }
  public init(from reader: inout WireReader) throws(WireError) { self = try reader.readBool() }
}

extension String: WireCodable {
  public func encode(to writer: inout WireWriter) { writer.writeString(self) }
  public init(from reader: inout WireReader) throws(WireError) { self = try reader.readString() }
}

extension Array: WireEncodable where Element: WireEncodable {
  public func encode(to writer: inout WireWriter) {
    // Bytes are written in one piece. Not with `self as? [UInt8]`: where this code is not specialised (the
    // element type comes from another module), that cast walks the array and casts each element dynamically.
    if Element.self == UInt8.self {
      // Safe: the check above makes `[Element]` and `[UInt8]` the same type, so the cast changes nothing.
      writer.writeBytes(unsafeBitCast(self, to: [UInt8].self))
    } else {
      writer.writeArray(self)
    }
  }
}

extension Array: WireDecodable where Element: WireDecodable {
  public init(from reader: inout WireReader) throws(WireError) {
    if Element.self == UInt8.self {
      // Safe: `[UInt8]` and `[Element]` are the same type here (see `encode(to:)`); no element-wise cast.
      self = unsafeBitCast(try reader.readBytes(), to: [Element].self)
    } else {
      self = try reader.readArray(Element.self)
    }
  }
}

extension Optional: WireEncodable where Wrapped: WireEncodable {
  public func encode(to writer: inout WireWriter) { writer.writeOptional(self) }
}

extension Optional: WireDecodable where Wrapped: WireDecodable {
  public init(from reader: inout WireReader) throws(WireError) { self = try reader.readOptional(Wrapped.self) }
}

extension NodeID: WireCodable {
  public func encode(to writer: inout WireWriter) { writer.writeVarint(rawValue) }
  public init(from reader: inout WireReader) throws(WireError) { self.init(rawValue: try reader.readVarint()) }
}

extension GroupID: WireCodable {
  public func encode(to writer: inout WireWriter) { writer.writeVarint(rawValue) }
  public init(from reader: inout WireReader) throws(WireError) { self.init(rawValue: try reader.readVarint()) }
}

extension ClusterID: WireCodable {
  public func encode(to writer: inout WireWriter) { writer.writeString(rawValue) }
  public init(from reader: inout WireReader) throws(WireError) { self.init(rawValue: try reader.readString()) }
}
