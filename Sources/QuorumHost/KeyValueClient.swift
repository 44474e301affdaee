public import QuorumCore
public import QuorumKV

/// The key-value store of a cluster of group hosts: every key goes to the group that owns it, every write is
/// exactly-once, every call has a deadline.
///
/// Keys are strings. Values are bytes, strings or any ``QuorumKV/KVValue``, the same on every operation: `put`
/// and `compareAndSwap` give back values of the type they were given, and `get` and `delete` take the type to
/// give back (`as: String.self`; bytes by default).
public struct KeyValueClient: Sendable {
  /// The client underneath (shared with other services' clients).
  public let client: HostClient

  /// Creates a key-value client over `client`.
  public init(_ client: HostClient) { self.client = client }

  private func write(_ command: KVCommand, deadline: Duration?) async throws -> KVResponse {
    let group = try await client.group(for: command.key, service: KeyValueService.name)
    let bytes = try await client.command(
      command.wireBytes(), service: KeyValueService.name, group: group, deadline: deadline)
    do {
      return try KVResponse(wireBytes: bytes)
    } catch {
      throw QuorumClientError.badReply("\(error)")
    }
  }

  private func read(
    _ query: KVQuery, group: GroupID, consistency: ReadConsistency, atLeast: UInt64, at member: NodeID? = nil,
    deadline: Duration?
  ) async throws -> (KVQueryResult, UInt64) {
    let (bytes, index) = try await client.query(
      query.wireBytes(), service: KeyValueService.name, group: group, consistency: consistency, atLeast: atLeast,
      at: member, deadline: deadline)
    do {
      return (try KVQueryResult(wireBytes: bytes), index)
    } catch {
      throw QuorumClientError.badReply("\(error)")
    }
  }

  /// Sets `key` to `value` (bytes, a string, or any ``QuorumKV/KVValue``); returns the previous value, as the
  /// same type.
  /// - Throws: ``QuorumClientError`` (`timeout` says whether the write may have happened), or a
  ///   ``QuorumKV/KVValueError`` if `value` does not encode (nothing written) or the previous value does not
  ///   decode (the write was applied).
  @discardableResult
  public func put<Value: KVValue>(_ key: String, _ value: Value, deadline: Duration? = nil) async throws -> Value? {
    let bytes = try value.encoded(for: key)
    guard case .done(let previous) = try await write(.put(key: key, value: bytes), deadline: deadline) else {
      throw QuorumClientError.badReply("put answered with a swap result")
    }
    return try Value.decoded(previous, for: key, afterWrite: true)
  }

  /// Removes `key`; returns the previous value's bytes.
  @discardableResult
  public func delete(_ key: String, deadline: Duration? = nil) async throws -> [UInt8]? {
    try await delete(key, as: [UInt8].self, deadline: deadline)
  }

  /// Removes `key`; returns the previous value as a `Value` (`kv.delete("greeting", as: String.self)`).
  @discardableResult
  public func delete<Value: KVValue>(_ key: String, as type: Value.Type, deadline: Duration? = nil) async throws
    -> Value?
  {
    guard case .done(let previous) = try await write(.delete(key: key), deadline: deadline) else {
      throw QuorumClientError.badReply("delete answered with a swap result")
    }
    return try Value.decoded(previous, for: key, afterWrite: true)
  }

  /// Sets `key` to `new` (`nil` removes it) if its value is `expected` (`nil`: absent); returns whether it did,
  /// and the value now stored (`new` if it swapped, the value that did not match if not).
  ///
  /// Values are bytes, strings or any ``QuorumKV/KVValue``:
  /// `compareAndSwap("greeting", expected: "hello", new: "world")`.
  public func compareAndSwap<Value: KVValue>(
    _ key: String, expected: Value?, new: Value?, deadline: Duration? = nil
  ) async throws -> (swapped: Bool, current: Value?) {
    try await swap(key, expected: expected, new: new, deadline: deadline)
  }

  /// Compare-and-swap with bytes (the form to use when both values are `nil`).
  public func compareAndSwap(_ key: String, expected: [UInt8]?, new: [UInt8]?, deadline: Duration? = nil)
    async throws -> (swapped: Bool, current: [UInt8]?)
  {
    try await swap(key, expected: expected, new: new, deadline: deadline)
  }

  private func swap<Value: KVValue>(_ key: String, expected: Value?, new: Value?, deadline: Duration?) async throws
    -> (swapped: Bool, current: Value?)
  {
    let command = KVCommand.compareAndSwap(
      key: key, expected: try expected?.encoded(for: key), new: try new?.encoded(for: key))
    guard case .swapped(let swapped, let current) = try await write(command, deadline: deadline) else {
      throw QuorumClientError.badReply("compare-and-swap answered with a put result")
    }
    return (swapped, try Value.decoded(current, for: key, afterWrite: true))
  }

  /// The value of `key` as bytes, at `consistency` (at `member` only, if given: for a `stale` read of one
  /// replica).
  public func get(
    _ key: String, consistency: ReadConsistency = .linearizable, at member: NodeID? = nil, deadline: Duration? = nil
  ) async throws -> [UInt8]? {
    try await getIndexed(key, consistency: consistency, at: member, deadline: deadline).value
  }

  /// The value of `key` as a `Value` (`kv.get("greeting", as: String.self)`), at `consistency`.
  public func get<Value: KVValue>(
    _ key: String, as type: Value.Type, consistency: ReadConsistency = .linearizable, at member: NodeID? = nil,
    deadline: Duration? = nil
  ) async throws -> Value? {
    let bytes = try await get(key, consistency: consistency, at: member, deadline: deadline)
    return try Value.decoded(bytes, for: key, afterWrite: false)
  }

  /// The value of `key` as a UTF-8 string, at `consistency`: `get(key, as: String.self)`.
  public func getString(_ key: String, consistency: ReadConsistency = .linearizable, deadline: Duration? = nil)
    async throws -> String?
  {
    try await get(key, as: String.self, consistency: consistency, deadline: deadline)
  }

  /// The value of `key` and the log position it reflects, from a state including at least `atLeast` (pass the
  /// index of the last answer seen for read-your-writes and monotonic reads at `stale` consistency).
  public func getIndexed(
    _ key: String, consistency: ReadConsistency = .linearizable, atLeast: UInt64 = 0, at member: NodeID? = nil,
    deadline: Duration? = nil
  ) async throws -> (value: [UInt8]?, index: UInt64) {
    let group = try await client.group(for: key, service: KeyValueService.name)
    let (result, index) = try await read(
      .get(key: key), group: group, consistency: consistency, atLeast: atLeast, at: member, deadline: deadline)
    guard case .value(let value) = result else { throw QuorumClientError.badReply("get answered with a list") }
    return (value, index)
  }

  /// Up to `limit` keys starting with `prefix`, with their values, in key order, across every group.
  ///
  /// Each group is read page by page (``scanPage(prefix:after:limit:maxBytes:group:consistency:atLeast:deadline:)``),
  /// so no reply holds more than a page however large the values: each page is read at `consistency` on its own,
  /// from a state at least as new as the previous page's, so a scan that spans pages is not one snapshot of the
  /// store.
  public func scan(
    prefix: String, limit: Int = 1000, consistency: ReadConsistency = .linearizable, deadline: Duration? = nil
  ) async throws -> [KVPair] {
    try await scan(prefix: prefix, after: nil, limit: limit, consistency: consistency, deadline: deadline)
  }

  /// Up to `limit` keys starting with `prefix` and ordered after `after` (from the prefix's first key when `nil`),
  /// with their values, in key order, across every group.
  ///
  /// Pass the last key of one call's result as the next call's `after` to read a prefix of any size in pieces of
  /// `limit`, whichever groups hold its keys; an empty result means the prefix has no more keys. Each call reads
  /// as ``scan(prefix:limit:consistency:deadline:)`` does, so a prefix read in several calls is not one snapshot.
  public func scan(
    prefix: String, after: String?, limit: Int = 1000, consistency: ReadConsistency = .linearizable,
    deadline: Duration? = nil
  ) async throws -> [KVPair] {
    var all: [KVPair] = []
    for group in try await client.groups(carrying: KeyValueService.name) {
      var atLeast: UInt64 = 0
      var pageBytes = Self.scanPageBytes
      // Each group may hold the first `limit` keys of the merged result.
      all += try await KVQuery.followScanPages(after: after, limit: limit) { after, remaining in
        while true {
          do {
            let page = try await scanPage(
              prefix: prefix, after: after, limit: remaining, maxBytes: pageBytes, group: group,
              consistency: consistency, atLeast: atLeast, deadline: deadline)
            atLeast = max(atLeast, page.index)
            return (page.pairs, page.next)
          } catch QuorumClientError.rejected(.replyTooLarge) where pageBytes > 1 {
            pageBytes /= 2  // The member's frame limit is smaller than our page: ask for less.
          }
        }
      }
    }
    all.sort { KeyOrder.precedes($0.key, $1.key) }
    return Array(all.prefix(max(0, limit)))
  }

  /// The bytes of keys and values ``scan(prefix:limit:consistency:deadline:)`` asks for per page.
  public static let scanPageBytes = 512 << 10

  /// One page of the keys starting with `prefix` in `group`, after `after` (from the start when `nil`): at most
  /// `limit` entries and about `maxBytes` of keys and values (the member caps both, see
  /// ``QuorumKV/KVStore/maxScanEntries``), the token to pass as the next page's `after` (`nil` at the end), and
  /// the log position the page reflects.
  public func scanPage(
    prefix: String, after: String?, limit: Int, maxBytes: Int = KeyValueClient.scanPageBytes, group: GroupID,
    consistency: ReadConsistency = .linearizable, atLeast: UInt64 = 0, deadline: Duration? = nil
  ) async throws -> (pairs: [KVPair], next: String?, index: UInt64) {
    let (result, index) = try await read(
      .scanPage(prefix: prefix, after: after, limit: limit, maxBytes: maxBytes), group: group,
      consistency: consistency, atLeast: atLeast, deadline: deadline)
    guard case .page(let pairs, let next) = result else { throw QuorumClientError.badReply("scan answered not a page") }
    return (pairs, next, index)
  }
}
