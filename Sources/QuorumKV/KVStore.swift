public import QuorumCore

/// A state-changing request to the key-value store.
public enum KVCommand: Sendable, Equatable, WireCodable, CustomStringConvertible {
  /// Set `key` to `value`.
  case put(key: String, value: [UInt8])
  /// Remove `key`.
  case delete(key: String)
  /// Set `key` to `new` (or remove it if `new` is nil) only if its current value is `expected` (nil meaning
  /// "absent").
  case compareAndSwap(key: String, expected: [UInt8]?, new: [UInt8]?)

  /// The key the command touches.
  public var key: String {
    switch self {
    case .put(let key, _), .delete(let key), .compareAndSwap(let key, _, _): return key
    }
  }

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .put(let key, let value):
      writer.writeByte(0)
      writer.writeString(key)
      writer.writeBytes(value)
    case .delete(let key):
      writer.writeByte(1)
      writer.writeString(key)
    case .compareAndSwap(let key, let expected, let new):
      writer.writeByte(2)
      writer.writeString(key)
      writer.writeOptional(expected)
      writer.writeOptional(new)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .put(key: try reader.readString(), value: try reader.readBytes())
    case 1: self = .delete(key: try reader.readString())
    case 2:
      self = .compareAndSwap(
        key: try reader.readString(), expected: try reader.readOptional([UInt8].self),
        new: try reader.readOptional([UInt8].self))
    case let tag: throw WireError(.unknownTag(type: "KVCommand", tag: UInt64(tag)), at: at)
    }
  }

  public var description: String {
    switch self {
    case .put(let key, let value): return "put \(key)=\(value.count)B"
    case .delete(let key): return "delete \(key)"
    case .compareAndSwap(let key, let expected, let new):
      return "cas \(key) \(expected.map { "\($0.count)B" } ?? "absent")->\(new.map { "\($0.count)B" } ?? "absent")"
    }
  }
}

/// The result of a ``KVCommand``.
public enum KVResponse: Sendable, Equatable, WireCodable {
  /// A put or delete was applied; the key's value before it.
  case done(previous: [UInt8]?)
  /// A compare-and-swap was decided; whether it swapped, and the key's value afterwards.
  case swapped(Bool, current: [UInt8]?)

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .done(let previous):
      writer.writeByte(0)
      writer.writeOptional(previous)
    case .swapped(let swapped, let current):
      writer.writeByte(1)
      writer.writeBool(swapped)
      writer.writeOptional(current)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .done(previous: try reader.readOptional([UInt8].self))
    case 1: self = .swapped(try reader.readBool(), current: try reader.readOptional([UInt8].self))
    case let tag: throw WireError(.unknownTag(type: "KVResponse", tag: UInt64(tag)), at: at)
    }
  }
}

/// A read-only request to the key-value store.
public enum KVQuery: Sendable, Equatable {
  /// The value of one key.
  case get(key: String)
  /// Up to `limit` entries whose keys start with `prefix`, in key order, within the store's bounds
  /// (``KVStore/maxScanEntries``, ``KVStore/maxScanBytes``): what lies past them is left out without notice.
  ///
  /// Deprecated: kept so that requests from older clients still decode and are answered. Send
  /// ``scanPage(prefix:after:limit:maxBytes:)`` instead, which says where to continue; the clients in this package
  /// (``KVClient/scan(prefix:limit:consistency:)`` and the host's key-value client) do.
  case scan(prefix: String, limit: Int)
  /// One page of a prefix scan: entries whose keys start with `prefix` and come after `after` (from the start
  /// when `nil`), in key order, at most `limit` of them and about `maxBytes` of keys and values (always at least
  /// one entry, so a scan makes progress), each bound capped by the store's. Answered with
  /// ``KVQueryResult/page(_:next:)``, whose `next` continues the scan.
  case scanPage(prefix: String, after: String?, limit: Int, maxBytes: Int)
  /// The number of keys.
  case count
}

/// One key and its value.
public struct KVPair: Sendable, Equatable {
  /// The key.
  public var key: String
  /// The value.
  public var value: [UInt8]
  /// The log index of the command that last changed the key.
  public var modifiedAt: UInt64
}

/// The answer to a ``KVQuery``.
public enum KVQueryResult: Sendable, Equatable {
  /// The value of a key, or nil if absent.
  case value([UInt8]?)
  /// Entries of a scan.
  case entries([KVPair])
  /// A count.
  case count(Int)
  /// One page of a scan, and the continuation token: pass it as the next page's `after`; `nil` when the scan is
  /// complete.
  case page([KVPair], next: String?)
}

/// The replicated key-value store: a deterministic `StateMachine` of string keys and byte values.
///
/// Keys are also kept in order (in chunks of a few hundred), so a prefix scan reads only what it returns: scans are bounded
/// in entries and bytes and continue from a token, and never stall the node that answers them.
public struct KVStore: StateMachine, Equatable {
  private struct Stored: Sendable, Equatable {
    var value: [UInt8]
    var modifiedAt: UInt64
  }

  /// The most entries one scan returns, whatever it asks for.
  public static let maxScanEntries = 10_000
  /// About the most bytes of keys and values one scan returns, whatever it asks for (one entry may pass it).
  public static let maxScanBytes = 1 << 20

  private var data: [String: Stored] = [:]
  private var order = SortedKeys()
  /// The bytes every entry takes in a snapshot (kept as entries change, so a snapshot reserves its room
  /// without reading every value first).
  private var entryBytes = 0

  /// Creates an empty store.
  public init() {}

  /// Two stores are equal when they hold the same keys with the same values and modification indexes.
  public static func == (lhs: KVStore, rhs: KVStore) -> Bool { lhs.data == rhs.data }

  /// The number of keys.
  public var count: Int { data.count }

  /// The value of `key`.
  public func value(_ key: String) -> [UInt8]? { data[key]?.value }

  public mutating func apply(_ command: KVCommand, context: ApplyContext) -> KVResponse {
    switch command {
    case .put(let key, let value):
      return .done(previous: store(Stored(value: value, modifiedAt: context.index), at: key)?.value)
    case .delete(let key):
      return .done(previous: remove(key)?.value)
    case .compareAndSwap(let key, let expected, let new):
      let current = data[key]?.value
      guard current == expected else { return .swapped(false, current: current) }
      if let new {
        store(Stored(value: new, modifiedAt: context.index), at: key)
      } else {
        remove(key)
      }
      return .swapped(true, current: new)
    }
  }

  /// The bytes `key` and `stored` take in a snapshot.
  private static func entryBytes(_ key: String, _ stored: Stored) -> Int {
    let keyBytes = key.utf8.count
    let valueBytes = stored.value.count
    return varintSize(UInt64(keyBytes)) + keyBytes + varintSize(UInt64(valueBytes)) + valueBytes
      + varintSize(stored.modifiedAt)
  }

  /// Sets `key` to `stored`; returns what it replaced.
  @discardableResult
  private mutating func store(_ stored: Stored, at key: String) -> Stored? {
    let previous = data.updateValue(stored, forKey: key)
    if let previous {
      entryBytes -= Self.entryBytes(key, previous)
    } else {
      order.insert(key)
    }
    entryBytes += Self.entryBytes(key, stored)
    return previous
  }

  /// Removes `key`; returns what it held.
  @discardableResult
  private mutating func remove(_ key: String) -> Stored? {
    guard let i = data.index(forKey: key) else { return nil }
    // Counted as stored: a canonically equivalent spelling of the key (the same key to the dictionary) may
    // take other bytes.
    let (storedKey, previous) = data.remove(at: i)
    order.remove(storedKey)
    entryBytes -= Self.entryBytes(storedKey, previous)
    return previous
  }

  /// The bytes ``writeSnapshot(to:)`` writes: what it reserves.
  var snapshotBytes: Int { 1 + varintSize(UInt64(data.count)) + entryBytes }

  /// Entries whose keys start with `prefix`, after `after`, in key order, within `limit` entries and about
  /// `maxBytes` (at least one entry); and whether more may follow.
  private func scan(prefix: String, after: String?, limit: Int, maxBytes: Int) -> (pairs: [KVPair], more: Bool) {
    let limit = min(max(1, limit), Self.maxScanEntries)
    let maxBytes = min(max(1, maxBytes), Self.maxScanBytes)
    var pairs: [KVPair] = []
    var bytes = 0
    var more = false
    let start = after.map { KeyOrder.max($0, prefix) } ?? prefix
    // Keys are in key order (``KeyOrder``: the bytes of their canonical composition, NFC), so the keys whose NFC
    // starts with the prefix's NFC lie together from `start` on. The keys with the prefix (whole
    // characters, canonically equivalent) are among them, but not all of them are such keys: "\u{E9}\u{300}"
    // starts with the scalars of "\u{E9}" yet is one character. A key without the prefix ends the range only once
    // its NFC leaves the prefix's; comparing the spellings as given would end it early when either is not in NFC.
    var prefixNFC: [UInt8]? = nil
    order.forEach(from: start, after: after != nil && start == after) { key in
      guard key.hasPrefix(prefix) else {
        if prefixNFC == nil { prefixNFC = prefix._nfcCodeUnits }
        return key._nfcCodeUnits.starts(with: prefixNFC ?? [])
      }
      guard let stored = data[key] else { return true }  // The index holds exactly the dictionary's keys.
      let size = key.utf8.count + stored.value.count + 16
      if pairs.count == limit || (!pairs.isEmpty && bytes + size > maxBytes) {
        more = true
        return false
      }
      pairs.append(KVPair(key: key, value: stored.value, modifiedAt: stored.modifiedAt))
      bytes += size
      return true
    }
    return (pairs, more)
  }

  public func query(_ query: KVQuery) -> KVQueryResult {
    switch query {
    case .get(let key):
      return .value(data[key]?.value)
    case .count:
      return .count(data.count)
    case .scan(let prefix, let limit):
      guard limit > 0 else { return .entries([]) }
      return .entries(scan(prefix: prefix, after: nil, limit: limit, maxBytes: Self.maxScanBytes).pairs)
    case .scanPage(let prefix, let after, let limit, let maxBytes):
      let (pairs, more) = scan(prefix: prefix, after: after, limit: limit, maxBytes: maxBytes)
      return .page(pairs, next: more ? pairs.last?.key : nil)
    }
  }

  public func snapshot() -> [UInt8] {
    var w = WireWriter()
    writeSnapshot(to: &w)
    return w.bytes
  }

  /// Writes the snapshot in key order (so replicas holding the same data write the same bytes), into room
  /// reserved for all of it at once: a large store is neither copied as its buffer grows nor copied again by
  /// the snapshot that encloses it.
  public func writeSnapshot(to w: inout WireWriter) {
    let size = snapshotBytes
    let start = w.count
    defer { assert(w.count - start == size, "the store's byte count drifted from its entries") }
    w.bytes.reserveCapacity(start + size)
    w.writeVarint(1)  // format version
    w.writeVarint(UInt64(data.count))
    for key in order.all {
      guard let stored = data[key] else { continue }
      w.writeString(key)
      w.writeBytes(stored.value)
      w.writeVarint(stored.modifiedAt)
    }
  }

  public mutating func restore(from snapshot: [UInt8]) throws {
    var r = WireReader(snapshot, limits: .snapshot(snapshot))
    let version = try r.readVarint()
    guard version == 1 else { throw WireError(.unsupportedVersion(UInt8(truncatingIfNeeded: version)), at: 0) }
    let count = try r.readCount()
    var restored: [String: Stored] = [:]
    restored.reserveCapacity(count)
    for _ in 0..<count {
      let key = try r.readString()
      restored[key] = Stored(value: try r.readBytes(), modifiedAt: try r.readVarint())
    }
    try r.expectEnd()
    data = restored
    order = SortedKeys(restored.keys)
    // From the entries as stored (a key repeated in another spelling keeps the first one's bytes).
    entryBytes = restored.reduce(0) { $0 + Self.entryBytes($1.key, $1.value) }
  }
}
