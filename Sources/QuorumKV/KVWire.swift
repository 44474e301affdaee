public import QuorumCore

// The wire encodings of queries and their results, so they can cross the network to a server.

extension KVQuery: WireCodable {
  /// A count as the wire carries it (32 bits): larger ones (`Int.max` for "all") are sent as the largest, which
  /// the store caps anyway.
  static func clampedCount(_ count: Int) -> UInt64 { UInt64(min(max(0, count), Int(UInt32.max))) }

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .get(let key):
      writer.writeByte(0)
      writer.writeString(key)
    case .scan(let prefix, let limit):
      writer.writeByte(1)
      writer.writeString(prefix)
      writer.writeVarint(Self.clampedCount(limit))
    case .count:
      writer.writeByte(2)
    case .scanPage(let prefix, let after, let limit, let maxBytes):
      writer.writeByte(3)
      writer.writeString(prefix)
      writer.writeOptional(after)
      writer.writeVarint(Self.clampedCount(limit))
      writer.writeVarint(Self.clampedCount(maxBytes))
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .get(key: try reader.readString())
    case 1: self = .scan(prefix: try reader.readString(), limit: Int(try reader.readVarint(as: UInt32.self)))
    case 2: self = .count
    case 3:
      self = .scanPage(
        prefix: try reader.readString(), after: try reader.readOptional(String.self),
        limit: Int(try reader.readVarint(as: UInt32.self)), maxBytes: Int(try reader.readVarint(as: UInt32.self)))
    case let tag: throw WireError(.unknownTag(type: "KVQuery", tag: UInt64(tag)), at: at)
    }
  }
}

extension KVQueryResult: WireCodable {
  public func encode(to writer: inout WireWriter) {
    switch self {
    case .value(let value):
      writer.writeByte(0)
      writer.writeOptional(value)
    case .entries(let pairs):
      writer.writeByte(1)
      Self.write(pairs, to: &writer)
    case .page(let pairs, let next):
      writer.writeByte(3)
      Self.write(pairs, to: &writer)
      writer.writeOptional(next)
    case .count(let count):
      writer.writeByte(2)
      writer.writeVarint(UInt64(max(0, count)))
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .value(try reader.readOptional([UInt8].self))
    case 1: self = .entries(try Self.readPairs(&reader))
    case 2:
      // Any count the encoder writes (a non-negative `Int`), not only those that fit in 32 bits.
      let start = reader.position
      guard let count = Int(exactly: try reader.readVarint()) else {
        throw WireError(.invalidValue("a count over \(Int.max)"), at: start)
      }
      self = .count(count)
    case 3: self = .page(try Self.readPairs(&reader), next: try reader.readOptional(String.self))
    case let tag: throw WireError(.unknownTag(type: "KVQueryResult", tag: UInt64(tag)), at: at)
    }
  }
}

extension KVQueryResult {
  fileprivate static func write(_ pairs: [KVPair], to writer: inout WireWriter) {
    writer.writeVarint(UInt64(pairs.count))
    for pair in pairs {
      writer.writeString(pair.key)
      writer.writeBytes(pair.value)
      writer.writeVarint(pair.modifiedAt)
    }
  }

  fileprivate static func readPairs(_ reader: inout WireReader) throws(WireError) -> [KVPair] {
    let count = try reader.readCount()
    var pairs: [KVPair] = []
    pairs.reserveCapacity(count)
    for _ in 0..<count {
      pairs.append(KVPair(try reader.readString(), try reader.readBytes(), modifiedAt: try reader.readVarint()))
    }
    return pairs
  }
}

/// The replicated key-value store as a service of a group's log (name `kv`): commands and reads are routed
/// by key to the group that owns it.
public struct KeyValueService: ReplicatedService {
  /// Creates the service.
  public init() {}

  /// `kv`.
  public static var name: String { "kv" }

  /// An empty store.
  public func makeMachine() -> KVStore { KVStore() }

  /// The key a command writes.
  public static func routingKey(of command: KVCommand) -> String? { command.key }

  /// Deletes, and compare-and-swaps that remove the key, free space: a member past its space quota accepts them.
  public static func reclaimsSpace(_ command: KVCommand) -> Bool {
    switch command {
    case .delete: return true
    case .compareAndSwap(_, _, let new): return new == nil
    case .put: return false
    }
  }

  /// The key a `get` reads; scans and counts cover the group's own keys.
  public static func routingKey(of query: KVQuery) -> String? {
    if case .get(let key) = query { return key }
    return nil
  }
}
