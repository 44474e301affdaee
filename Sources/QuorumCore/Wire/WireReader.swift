/// Reads values in Quorum's binary format from a byte buffer, checking every length against ``WireLimits``.
///
/// Every read either returns a value or throws a ``WireError`` naming the offset; it never reads past the end
/// and never allocates more than the limits (and the bytes actually present) allow.
public struct WireReader: Sendable {
  /// The buffer being read.
  public let bytes: [UInt8]
  /// The offset of the next byte to read.
  public private(set) var position: Int
  /// One past the last readable byte.
  public let end: Int
  /// The limits in force.
  public let limits: WireLimits

  /// Creates a reader over `bytes[range]` (all of `bytes` by default).
  public init(_ bytes: [UInt8], range: Range<Int>? = nil, limits: WireLimits = .default) {
    let range = range ?? 0..<bytes.count
    precondition(range.lowerBound >= 0 && range.upperBound <= bytes.count, "WireReader range out of bounds")
    self.bytes = bytes
    self.position = range.lowerBound
    self.end = range.upperBound
    self.limits = limits
  }

  /// The number of unread bytes.
  @inlinable public var remaining: Int { end - position }

  /// Whether every byte has been read.
  @inlinable public var isAtEnd: Bool { position >= end }

  /// Throws ``WireError/Kind/trailingBytes(_:)`` if bytes remain.
  public func expectEnd() throws(WireError) {
    if position < end { throw WireError(.trailingBytes(end - position), at: position) }
  }

  @inline(__always) private func need(_ n: Int) throws(WireError) {
    if n > end - position { throw WireError(.truncated(needed: n, available: end - position), at: position) }
    // A negative count (say, a length minus more than was consumed) would move the reader backwards.
    if n < 0 { throw WireError(.invalidValue("negative byte count \(n)"), at: position) }
  }

  /// Reads one raw byte.
  public mutating func readByte() throws(WireError) -> UInt8 {
    try need(1)
    defer { position += 1 }
    return bytes[position]
  }

  /// Reads a varint.
  public mutating func readVarint() throws(WireError) -> UInt64 {
    let start = position
    var result: UInt64 = 0
    var shift: UInt64 = 0
    while true {
      guard position < end else {
        throw WireError(.truncated(needed: 1, available: 0), at: position)
      }
      let byte = bytes[position]
      position += 1
      if shift == 63 && byte > 1 { throw WireError(.malformedVarint, at: start) }
      result |= UInt64(byte & 0x7f) << shift
      if byte < 0x80 { return result }
      shift += 7
      if shift > 63 { throw WireError(.malformedVarint, at: start) }
    }
  }

  /// Reads a zig-zag encoded signed varint.
  public mutating func readSignedVarint() throws(WireError) -> Int64 {
    let raw = try readVarint()
    return Int64(bitPattern: (raw >> 1) ^ (0 &- (raw & 1)))
  }

  /// Reads a varint that must fit in `T`.
  public mutating func readVarint<T: FixedWidthInteger & UnsignedInteger>(as type: T.Type) throws(WireError) -> T {
    let start = position
    let raw = try readVarint()
    guard let value = T(exactly: raw) else {
      throw WireError(.invalidValue("\(raw) does not fit in \(T.self)"), at: start)
    }
    return value
  }

  /// Reads 4 little-endian bytes.
  public mutating func readFixed32() throws(WireError) -> UInt32 {
    try need(4)
    var v: UInt32 = 0
    for i in 0..<4 { v |= UInt32(bytes[position + i]) << (8 * UInt32(i)) }
    position += 4
    return v
  }

  /// Reads 8 little-endian bytes.
  public mutating func readFixed64() throws(WireError) -> UInt64 {
    try need(8)
    var v: UInt64 = 0
    for i in 0..<8 { v |= UInt64(bytes[position + i]) << (8 * UInt64(i)) }
    position += 8
    return v
  }

  /// Reads a boolean byte (0 or 1).
  public mutating func readBool() throws(WireError) -> Bool {
    let start = position
    switch try readByte() {
    case 0: return false
    case 1: return true
    case let other: throw WireError(.invalidValue("boolean byte \(other)"), at: start)
    }
  }

  /// Reads a length prefix and checks it against `limit` and the bytes present.
  public mutating func readLength(limit: Int) throws(WireError) -> Int {
    let start = position
    let length = try readVarint()
    if length > UInt64(limit) { throw WireError(.lengthOverLimit(length: length, limit: limit), at: start) }
    if length > UInt64(end - position) {
      throw WireError(.truncated(needed: Int(length), available: end - position), at: position)
    }
    return Int(length)
  }

  /// Reads a collection count and checks it against the limit and the bytes present (every element takes at
  /// least one byte, so a count larger than the remaining bytes is malformed).
  public mutating func readCount() throws(WireError) -> Int {
    let start = position
    let count = try readVarint()
    if count > UInt64(limits.maxCollectionCount) {
      throw WireError(.countOverLimit(count: count, limit: limits.maxCollectionCount), at: start)
    }
    if count > UInt64(end - position) {
      throw WireError(.countOverLimit(count: count, limit: end - position), at: start)
    }
    return Int(count)
  }

  /// Reads a length-prefixed byte string.
  public mutating func readBytes() throws(WireError) -> [UInt8] {
    let length = try readLength(limit: limits.maxBytesLength)
    defer { position += length }
    return Array(bytes[position..<(position + length)])
  }

  /// Reads `count` raw bytes.
  public mutating func readRaw(count: Int) throws(WireError) -> [UInt8] {
    try need(count)
    defer { position += count }
    return Array(bytes[position..<(position + count)])
  }

  /// Skips `count` raw bytes.
  public mutating func skip(_ count: Int) throws(WireError) {
    try need(count)
    position += count
  }

  /// Reads a length-prefixed UTF-8 string.
  public mutating func readString() throws(WireError) -> String {
    let start = position
    let length = try readLength(limit: limits.maxBytesLength)
    let from = position
    let string: String? = bytes.withUnsafeBufferPointer { all in
      let utf8 = UnsafeBufferPointer(rebasing: all[from..<(from + length)])
      // ASCII (keys, names) is valid as it stands and decodes on the concrete fast path; only other text goes
      // through the generic validating initialiser.
      if utf8.allSatisfy({ $0 < 0x80 }) { return String(decoding: utf8, as: UTF8.self) }
      return String(validating: utf8, as: UTF8.self)
    }
    guard let string else { throw WireError(.invalidUTF8, at: start) }
    position += length
    return string
  }

  /// Reads a decodable value.
  public mutating func read<T: WireDecodable>(_ type: T.Type = T.self) throws(WireError) -> T {
    try T(from: &self)
  }

  /// Reads a decodable value, naming the field in any error.
  public mutating func read<T: WireDecodable>(_ type: T.Type = T.self, field: String) throws(WireError) -> T {
    do { return try T(from: &self) } catch { throw error.inside(field) }
  }

  /// Reads an optional value written by ``WireWriter/writeOptional(_:)``.
  public mutating func readOptional<T: WireDecodable>(_ type: T.Type = T.self) throws(WireError) -> T? {
    try readBool() ? try T(from: &self) : nil
  }

  /// Reads a count-prefixed array.
  public mutating func readArray<T: WireDecodable>(_ type: T.Type = T.self) throws(WireError) -> [T] {
    let count = try readCount()
    var result: [T] = []
    result.reserveCapacity(count)
    for index in 0..<count {
      do { result.append(try T(from: &self)) } catch { throw error.inside("[\(index)]") }
    }
    return result
  }

  /// Builds an error of `kind` at the current position.
  public func error(_ kind: WireError.Kind) -> WireError { WireError(kind, at: position) }
}
