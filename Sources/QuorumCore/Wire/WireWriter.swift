/// Appends values to a growing byte buffer in Quorum's binary format.
///
/// The format: unsigned integers as LEB128 varints, signed integers zig-zag encoded, fixed-width integers
/// little-endian, byte strings and strings as a varint length followed by the bytes, collections as a
/// varint count followed by the elements, optionals as a presence byte.
public struct WireWriter: Sendable {
  /// The bytes written so far.
  public var bytes: [UInt8]

  /// Creates a writer, optionally reserving room for `capacity` bytes.
  public init(reservingCapacity capacity: Int = 0) {
    bytes = []
    bytes.reserveCapacity(capacity)
  }

  /// The number of bytes written.
  @inlinable public var count: Int { bytes.count }

  /// Writes one raw byte.
  @inlinable public mutating func writeByte(_ value: UInt8) { bytes.append(value) }

  /// Writes an unsigned integer as a varint (1 to 10 bytes).
  @inlinable public mutating func writeVarint(_ value: UInt64) {
    var v = value
    while v >= 0x80 {
      bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
      v >>= 7
    }
    bytes.append(UInt8(v))
  }

  /// Writes a signed integer zig-zag encoded as a varint.
  @inlinable public mutating func writeSignedVarint(_ value: Int64) {
    writeVarint(UInt64(bitPattern: (value << 1) ^ (value >> 63)))
  }

  /// Writes 4 bytes, little-endian.
  @inlinable public mutating func writeFixed32(_ value: UInt32) {
    withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
  }

  /// Writes 8 bytes, little-endian.
  @inlinable public mutating func writeFixed64(_ value: UInt64) {
    withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
  }

  /// Writes a boolean as one byte.
  @inlinable public mutating func writeBool(_ value: Bool) { bytes.append(value ? 1 : 0) }

  /// Writes a length-prefixed byte string.
  @inlinable public mutating func writeBytes(_ value: some Collection<UInt8>) {
    writeVarint(UInt64(value.count))
    bytes.append(contentsOf: value)
  }

  /// Writes raw bytes with no length prefix.
  @inlinable public mutating func writeRaw(_ value: some Sequence<UInt8>) {
    bytes.append(contentsOf: value)
  }

  /// Writes a length-prefixed UTF-8 string.
  @inlinable public mutating func writeString(_ value: String) {
    var value = value
    value.withUTF8 { writeBytes($0) }
  }

  /// Writes an encodable value.
  @inlinable public mutating func write<T: WireEncodable>(_ value: T) { value.encode(to: &self) }

  /// Writes an optional value: a presence byte, then the value if present.
  @inlinable public mutating func writeOptional<T: WireEncodable>(_ value: T?) {
    if let value {
      bytes.append(1)
      value.encode(to: &self)
    } else {
      bytes.append(0)
    }
  }

  /// Writes a count-prefixed sequence of values.
  @inlinable public mutating func writeArray<C: Collection>(_ values: C) where C.Element: WireEncodable {
    let count = values.count
    writeVarint(UInt64(count))
    var written = 0
    for value in values {
      let start = bytes.count
      value.encode(to: &self)
      written += 1
      if written == 1 && count > 1 { reserveForMore(count - 1, like: bytes.count - start) }
    }
  }

  /// Makes room at once for `count` more values of about `size` bytes each (the values of a sequence are often
  /// alike): large values (log entries of a few KiB) then cost one allocation of the whole, not a copy into a
  /// new buffer at each doubling, each on fresh pages the kernel must zero. Does nothing when the room is there, or for less than 4 KiB.
  @inlinable public mutating func reserveForMore(_ count: Int, like size: Int) {
    let (more, overflow) = count.multipliedReportingOverflow(by: size)
    // Small values grow the buffer cheaply by doubling, and a buffer made to measure would regrow for whatever is
    // written after them. Past 2^48 bytes no such buffer exists: the appends fail as they would have.
    guard !overflow, more >= 4096, more < 1 << 48 else { return }
    let needed = bytes.count + more + more / 8
    if needed > bytes.capacity { bytes.reserveCapacity(needed) }
  }

  /// Writes what `body` writes, prefixed by its length as a varint: the same bytes as ``writeBytes(_:)`` of
  /// them, without first building them in an array of their own. An enclosing encoding (a snapshot that holds
  /// another) so writes a large part once, where `writeBytes` would copy it into a second buffer.
  public mutating func writeLengthPrefixed(_ body: (inout WireWriter) -> Void) {
    let room = 10  // The longest varint.
    let start = bytes.count
    bytes.append(contentsOf: repeatElement(0, count: room))
    body(&self)
    let length = bytes.count - start - room
    precondition(length >= 0, "a length-prefixed body removed bytes written before it")
    let prefix = varintSize(UInt64(length))
    bytes.withUnsafeMutableBufferPointer { buffer in
      // Overlapping ranges: `update(from:count:)` is a memmove.
      if length > 0, let base = buffer.baseAddress {
        (base + start + prefix).update(from: base + start + room, count: length)
      }
      _ = Self.storeVarint(UInt64(length), in: buffer, at: start)
    }
    bytes.removeLast(room - prefix)
  }

  /// Stores `value` as a varint in `buffer` from `offset` (which must have room for ``varintSize(_:)`` bytes);
  /// returns the offset after it. For encodings built in a buffer of their own before one append.
  @inlinable public static func storeVarint(
    _ value: UInt64, in buffer: UnsafeMutableBufferPointer<UInt8>, at offset: Int
  )
    -> Int
  {
    var v = value
    var at = offset
    while v >= 0x80 {
      buffer[at] = UInt8(truncatingIfNeeded: v) | 0x80
      v >>= 7
      at += 1
    }
    buffer[at] = UInt8(v)
    return at + 1
  }

  /// Overwrites 4 bytes at `offset` with `value`, little-endian (for back-patched lengths and checksums).
  @inlinable public mutating func patchFixed32(_ value: UInt32, at offset: Int) {
    let v = value.littleEndian
    for i in 0..<4 { bytes[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
  }
}

/// The number of bytes `value` takes as a varint.
@inlinable public func varintSize(_ value: UInt64) -> Int {
  value == 0 ? 1 : (64 - value.leadingZeroBitCount + 6) / 7
}
