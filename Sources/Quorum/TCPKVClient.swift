public import QuorumCore
public import QuorumHost
public import QuorumKV
public import QuorumTCP

/// A client of a Quorum cluster over TCP: one ``QuorumHost/HostClient`` (redirects, retries, deadlines,
/// exactly-once sessions per group) over TCP connections, with the key-value store and the lock service ready
/// to use.
///
/// ```swift
/// let client = TCPClient(
///   cluster: "orders", members: [TCPAddress("127.0.0.1:7001")!],
///   credential: try TCPClientCredential(name: "alice", secretFile: "alice.key"))
/// try await client.kv.put("greeting", "hello")
/// let value = try await client.kv.getString("greeting")
///
/// let lease = try await client.locks.lock("orders", ttl: .seconds(10))
/// try await ledger.append(entry, fencedBy: lease.token)   // the resource checks the token
/// try await client.locks.unlock(lease)
/// await client.close()                                    // also closes the lock sessions
/// ```
///
/// The key-value store, the lock service and any further ``QuorumHost/LockClient`` made with
/// ``makeLockClient(options:)`` share the connections and the exactly-once request sessions.
public struct TCPClient: Sendable {
  /// The client underneath (status, membership, any service).
  public let host: HostClient
  /// The key-value store.
  public let kv: KeyValueClient
  /// The lock service, with the default ``QuorumHost/LockClientOptions`` (a 10 s TTL). Its owner sessions (and
  /// so every lock it holds) are closed by ``close()``.
  public let locks: LockClient
  private let channel: TCPRequestChannel

  /// Creates a client.
  /// - Parameters:
  ///   - cluster: the cluster id (checked by every member at the handshake).
  ///   - members: addresses of some members (one is enough: it tells the client the cluster map).
  ///   - options: deadlines and back-off.
  ///   - seed: seeds the choice of members and the back-off jitter.
  ///   - connection: a shared request client; by default the client makes (and closes) its own.
  ///   - credential: the principal and secret the client proves to members (`nil`: none, for a cluster that
  ///     runs without authentication); ignored with a shared `connection`, which has its own.
  public init(
    cluster: ClusterID, members: [TCPAddress], options: HostClientOptions = HostClientOptions(), seed: UInt64 = 1,
    connection: TCPRequestClient? = nil, credential: TCPClientCredential? = nil
  ) {
    precondition(!members.isEmpty, "a TCPClient needs at least one member address")
    channel = TCPRequestChannel(cluster: cluster, seeds: members, connection: connection, credential: credential)
    host = HostClient(channel: channel, members: channel.seedMembers, options: options, seed: seed)
    kv = KeyValueClient(host)
    locks = LockClient(host)
  }

  /// A further lock client over this client's connections, with its own settings and its own owner sessions
  /// (``locks`` keeps its own). The caller closes it (``QuorumHost/LockClient/close()``) before ``close()``;
  /// a lock client that is never closed leaves its sessions to expire after their TTL.
  public func makeLockClient(options: LockClientOptions) -> LockClient { LockClient(host, options: options) }

  /// Closes ``locks``' owner sessions (releasing the locks it holds at once, rather than when their TTL runs
  /// out), then the connections (if the client made them).
  public func close() async {
    await locks.close()
    await channel.close()
  }

  /// Closes the connections without closing ``locks``' owner sessions: the locks it holds stay held until their
  /// TTL runs out in log time (nobody renews them any more). For a process that hands a lock on to a later one,
  /// as `quorum lock acquire` does.
  public func closeConnections() async { await channel.close() }
}

/// A key-value client over TCP: ``TCPClient``'s key-value store, kept under the name earlier releases used.
///
/// Every write is exactly-once (a session per group), every key goes to the group owning it, every call has a
/// deadline (the client's default, or the call's own). Values are bytes, strings or any ``QuorumKV/KVValue``, as
/// in ``QuorumHost/KeyValueClient``.
public struct TCPKVClient: Sendable {
  /// The connection.
  public let client: TCPClient

  /// Creates a client; see ``TCPClient/init(cluster:members:options:seed:connection:credential:)``.
  public init(
    cluster: ClusterID, members: [TCPAddress], options: HostClientOptions = HostClientOptions(), seed: UInt64 = 1,
    connection: TCPRequestClient? = nil, credential: TCPClientCredential? = nil
  ) {
    client = TCPClient(
      cluster: cluster, members: members, options: options, seed: seed, connection: connection,
      credential: credential)
  }

  /// The key-value store.
  public var kv: KeyValueClient { client.kv }

  /// The lock service over the same connections (see ``TCPClient/locks``).
  public var locks: LockClient { client.locks }

  /// Sets `key` to `value` (bytes, a string, or any ``QuorumKV/KVValue``); returns the previous value, as the
  /// same type.
  @discardableResult
  public func put<Value: KVValue>(_ key: String, _ value: Value, deadline: Duration? = nil) async throws -> Value? {
    try await kv.put(key, value, deadline: deadline)
  }

  /// Removes `key`; returns the previous value's bytes.
  @discardableResult
  public func delete(_ key: String, deadline: Duration? = nil) async throws -> [UInt8]? {
    try await kv.delete(key, deadline: deadline)
  }

  /// Removes `key`; returns the previous value as a `Value` (`delete("greeting", as: String.self)`).
  @discardableResult
  public func delete<Value: KVValue>(_ key: String, as type: Value.Type, deadline: Duration? = nil) async throws
    -> Value?
  {
    try await kv.delete(key, as: type, deadline: deadline)
  }

  /// Sets `key` to `new` (`nil` removes it) if its value is `expected` (`nil`: absent); returns whether it did,
  /// and the value now stored. Values are bytes, strings or any ``QuorumKV/KVValue``.
  public func compareAndSwap<Value: KVValue>(
    _ key: String, expected: Value?, new: Value?, deadline: Duration? = nil
  ) async throws -> (swapped: Bool, current: Value?) {
    try await kv.compareAndSwap(key, expected: expected, new: new, deadline: deadline)
  }

  /// Compare-and-swap with bytes (the form to use when both values are `nil`).
  public func compareAndSwap(_ key: String, expected: [UInt8]?, new: [UInt8]?, deadline: Duration? = nil)
    async throws -> (swapped: Bool, current: [UInt8]?)
  {
    try await kv.compareAndSwap(key, expected: expected, new: new, deadline: deadline)
  }

  /// The value of `key` as bytes, at `consistency` (at `member` only, if given).
  public func get(
    _ key: String, consistency: ReadConsistency = .linearizable, at member: NodeID? = nil, deadline: Duration? = nil
  ) async throws -> [UInt8]? {
    try await kv.get(key, consistency: consistency, at: member, deadline: deadline)
  }

  /// The value of `key` as a `Value` (`get("greeting", as: String.self)`), at `consistency`.
  public func get<Value: KVValue>(
    _ key: String, as type: Value.Type, consistency: ReadConsistency = .linearizable, at member: NodeID? = nil,
    deadline: Duration? = nil
  ) async throws -> Value? {
    try await kv.get(key, as: type, consistency: consistency, at: member, deadline: deadline)
  }

  /// The status of every group `member` hosts.
  public func status(of member: NodeID) async throws -> [GroupStatus] {
    try await client.host.statuses(of: member)
  }

  /// Changes the first group's membership (the default group of a one-group cluster).
  public func changeMembership(_ operation: MembershipOperation, group: GroupID? = nil) async throws {
    var target = group ?? .default
    if group == nil { target = try await client.host.clusterMap().groups.first?.id ?? .default }
    try await client.host.changeMembership(operation, group: target)
  }

  /// Up to `limit` keys starting with `prefix`, with their values, in key order.
  public func scan(prefix: String, limit: Int = 1000, consistency: ReadConsistency = .linearizable) async throws
    -> [KVPair]
  {
    try await kv.scan(prefix: prefix, limit: limit, consistency: consistency)
  }

  /// Up to `limit` keys starting with `prefix` and ordered after `after` (from the prefix's first key when `nil`),
  /// with their values, in key order, across every group: pass the last key of one call's result as the next
  /// call's `after` to read a prefix of any size in pieces (see
  /// ``QuorumHost/KeyValueClient/scan(prefix:after:limit:consistency:deadline:)``).
  public func scan(
    prefix: String, after: String?, limit: Int = 1000, consistency: ReadConsistency = .linearizable
  ) async throws -> [KVPair] {
    try await kv.scan(prefix: prefix, after: after, limit: limit, consistency: consistency)
  }

  /// Closes the connections (if the client made them).
  public func close() async { await client.close() }
}
