/// A decoding failure: what was wrong, at which byte offset, and inside which field.
///
/// Decoding never traps on bad input. Every malformed, truncated or oversized input ends in one of these.
public struct WireError: Error, Sendable, Equatable, CustomStringConvertible {
  /// What was wrong.
  public enum Kind: Sendable, Equatable {
    /// The input ended `needed` bytes into a value with only `available` left.
    case truncated(needed: Int, available: Int)
    /// A varint ran over 10 bytes or overflowed 64 bits.
    case malformedVarint
    /// A length prefix exceeds the configured limit (or the bytes that remain).
    case lengthOverLimit(length: UInt64, limit: Int)
    /// A collection count exceeds the configured limit (or the bytes that remain).
    case countOverLimit(count: UInt64, limit: Int)
    /// A discriminator named no known case of `type`.
    case unknownTag(type: String, tag: UInt64)
    /// A string was not valid UTF-8.
    case invalidUTF8
    /// A value is out of its allowed range.
    case invalidValue(String)
    /// An envelope did not start with the Quorum magic bytes.
    case badMagic(UInt16)
    /// An envelope's version is not one this build reads.
    case unsupportedVersion(UInt8)
    /// Bytes were left over after the value was complete.
    case trailingBytes(Int)
  }

  /// What was wrong.
  public var kind: Kind
  /// The byte offset in the input where the problem was found.
  public var offset: Int
  /// The fields being decoded, outermost first (for example `["AppendEntries", "entries"]`).
  public var path: [String]

  /// Creates an error.
  public init(_ kind: Kind, at offset: Int, path: [String] = []) {
    self.kind = kind
    self.offset = offset
    self.path = path
  }

  /// The same error, inside the field `name`.
  public func inside(_ name: String) -> WireError {
    var copy = self
    copy.path.insert(name, at: 0)
    return copy
  }

  public var description: String {
    let location = path.isEmpty ? "" : " in \(path.joined(separator: "."))"
    let what: String
    switch kind {
    case .truncated(let needed, let available):
      what = "truncated input: needed \(needed) bytes, \(available) available"
    case .malformedVarint: what = "malformed varint"
    case .lengthOverLimit(let length, let limit): what = "length \(length) exceeds the limit of \(limit)"
    case .countOverLimit(let count, let limit): what = "count \(count) exceeds the limit of \(limit)"
    case .unknownTag(let type, let tag): what = "unknown \(type) tag \(tag)"
    case .invalidUTF8: what = "string is not valid UTF-8"
    case .invalidValue(let detail): what = "invalid value: \(detail)"
    case .badMagic(let magic): what = "bad magic 0x\(String(magic, radix: 16))"
    case .unsupportedVersion(let version): what = "unsupported version \(version)"
    case .trailingBytes(let count): what = "\(count) trailing bytes"
    }
    return "\(what) at byte \(offset)\(location)"
  }
}

/// Hard limits applied while decoding, so hostile input cannot make the decoder allocate without bound.
public struct WireLimits: Sendable, Equatable {
  /// The longest byte string or string accepted.
  public var maxBytesLength: Int
  /// The most elements accepted in one collection.
  public var maxCollectionCount: Int

  /// Creates limits.
  public init(maxBytesLength: Int = 64 << 20, maxCollectionCount: Int = 1 << 20) {
    self.maxBytesLength = maxBytesLength
    self.maxCollectionCount = maxCollectionCount
  }

  /// 64 MiB per byte string, about a million elements per collection.
  public static let `default` = WireLimits()

  /// Limits for a snapshot of a group's state: no byte string longer than `bytes`, no collection with more
  /// elements than `bytes` has bytes.
  ///
  /// The defaults bound what one message may make the decoder allocate; a group's state is bounded by other means
  /// (the storage's space quota, the size of what was applied) and may hold far more than 64 MiB or a million
  /// keys. Decoding a snapshot with the defaults would refuse the group's own state once it grew past them, after
  /// the log behind the snapshot was compacted: no restart, and no follower catching up, would succeed. Limits
  /// taken from the snapshot's own size still never allocate more than a small multiple of what is present.
  public static func snapshot(_ bytes: [UInt8]) -> WireLimits {
    WireLimits(maxBytesLength: bytes.count, maxCollectionCount: bytes.count)
  }
}
