public import QuorumCore

/// How a client retries requests that failed for reasons a retry can fix.
public struct RetryPolicy: Sendable, Equatable {
  /// The most attempts per request (the first included).
  public var maxAttempts: Int
  /// The pause before the first retry; it doubles per retry up to ``maxBackoff``, with jitter.
  public var initialBackoff: Duration
  /// The longest pause between attempts.
  public var maxBackoff: Duration

  /// Creates a policy.
  public init(
    maxAttempts: Int = 50, initialBackoff: Duration = .milliseconds(5), maxBackoff: Duration = .milliseconds(500)
  ) {
    self.maxAttempts = max(1, maxAttempts)
    self.initialBackoff = initialBackoff
    self.maxBackoff = maxBackoff
  }

  /// 50 attempts, 5 ms doubling to 500 ms.
  public static let `default` = RetryPolicy()
}

/// Why a key-value request failed after the client gave up.
public enum KVClientError: Error, Sendable, Equatable, CustomStringConvertible {
  /// No attempt succeeded; the last error is attached.
  case unavailable(attempts: Int, last: ConsensusError)
  /// The key or value is larger than the limits allow.
  case tooLarge(String)
  /// A replica answered with a reply of another kind than the request asks for (a read of a key answered with a
  /// scan's page, a put with a compare-and-swap's result): a bug or a mismatched build, never an empty answer.
  /// A write so answered may have been applied.
  case badReply(String)

  public var description: String {
    switch self {
    case .unavailable(let attempts, let last): return "cluster unavailable after \(attempts) attempts (last: \(last))"
    case .tooLarge(let what): return what
    case .badReply(let why): return "unexpected reply: \(why)"
    }
  }
}

/// A key-value client for a replicated ``KVStore``: finds the leader, follows `notLeader` hints, retries
/// with back-off, and makes every write exactly-once with a session, so a retried write is applied once.
///
/// Keys are strings. Values are bytes, strings or any ``KVValue``, the same on every operation: `put` and
/// `compareAndSwap` give back values of the type they were given, and `get` and `delete` take the type to give
/// back (`as: String.self`; bytes by default).
///
/// Each write tells the replicas which answers the client has received, so its session forgets them (a write
/// still in flight is never covered, even when calls overlap). A session unused for longer than the replicas'
/// session timeout expires: a write refused for that before any attempt of uncertain outcome is sent again,
/// once, under a new session; one refused after an attempt that timed out or was cut off throws
/// ``QuorumCore/ConsensusError/outcomeUnknown``, since the earlier attempt may have been applied.
///
/// Calls on one client may overlap: they interleave at their suspension points (it is an actor) and share its
/// session. For many requests side by side, use one client per concurrent task.
public actor KVClient<Log: ReplicatedLog> where Log.Machine == KVStore {
  private let members: [NodeID: Log]
  private let order: [NodeID]
  private let retry: RetryPolicy
  private var leader: NodeID?
  private var session: UInt64?
  private var sequence: UInt64 = 0
  /// Sequence numbers of the writes in flight (calls on one client may overlap at their suspension points).
  private var outstanding: Set<UInt64> = []
  /// The registration in progress, if any.
  private var registering: Task<UInt64, any Error>?
  /// Calls waiting for ``registering`` (what a test waits on to know a call shares the registration).
  private(set) var waitingForRegistration = 0
  private var random: SeededRandom

  /// Creates a client for the group whose members are given.
  /// - Parameters:
  ///   - members: every member of the group, by node identifier.
  ///   - retry: how often and how patiently to retry.
  ///   - seed: seeds the choice of node and the back-off jitter.
  public init(members: [NodeID: Log], retry: RetryPolicy = .default, seed: UInt64 = 1) {
    precondition(!members.isEmpty, "a KVClient needs at least one member")
    self.members = members
    self.order = members.keys.sorted()
    self.retry = retry
    self.random = SeededRandom(seed: seed)
  }

  /// Sets `key` to `value` (bytes, a string, or any ``KVValue``); returns the previous value, as the same type.
  /// - Throws: ``KVClientError``, a ``QuorumCore/ConsensusError`` that retrying does not fix, or a
  ///   ``KVValueError`` if `value` does not encode (nothing written) or the previous value does not decode (the
  ///   write was applied).
  @discardableResult
  public func put<Value: KVValue>(_ key: String, _ value: Value) async throws -> Value? {
    let bytes = try value.encoded(for: key)
    guard case .done(let previous) = try await write(.put(key: key, value: bytes)) else {
      throw KVClientError.badReply("put answered with a compare-and-swap result")
    }
    return try Value.decoded(previous, for: key, afterWrite: true)
  }

  /// Removes `key`; returns the previous value's bytes.
  @discardableResult
  public func delete(_ key: String) async throws -> [UInt8]? { try await delete(key, as: [UInt8].self) }

  /// Removes `key`; returns the previous value as a `Value` (`kv.delete("greeting", as: String.self)`).
  @discardableResult
  public func delete<Value: KVValue>(_ key: String, as type: Value.Type) async throws -> Value? {
    guard case .done(let previous) = try await write(.delete(key: key)) else {
      throw KVClientError.badReply("delete answered with a compare-and-swap result")
    }
    return try Value.decoded(previous, for: key, afterWrite: true)
  }

  /// Sets `key` to `new` (`nil` removes it) if its value is `expected` (`nil`: absent); returns whether it did,
  /// and the value now stored (`new` if it swapped, the value that did not match if not).
  ///
  /// Values are bytes, strings or any ``KVValue``: `compareAndSwap("greeting", expected: "hello", new: "world")`.
  public func compareAndSwap<Value: KVValue>(_ key: String, expected: Value?, new: Value?) async throws
    -> (swapped: Bool, current: Value?)
  {
    try await swap(key, expected: expected, new: new)
  }

  /// Compare-and-swap with bytes (the form to use when both values are `nil`).
  public func compareAndSwap(_ key: String, expected: [UInt8]?, new: [UInt8]?) async throws
    -> (swapped: Bool, current: [UInt8]?)
  {
    try await swap(key, expected: expected, new: new)
  }

  private func swap<Value: KVValue>(_ key: String, expected: Value?, new: Value?) async throws
    -> (swapped: Bool, current: Value?)
  {
    let command = KVCommand.compareAndSwap(
      key: key, expected: try expected?.encoded(for: key), new: try new?.encoded(for: key))
    guard case .swapped(let swapped, let current) = try await write(command) else {
      throw KVClientError.badReply("compare-and-swap answered with a put or delete result")
    }
    return (swapped, try Value.decoded(current, for: key, afterWrite: true))
  }

  /// The value of `key` at the chosen consistency, as bytes. Stale reads go to `node` if given (any member
  /// answers them from its own replica); other reads go to the leader. This client keeps no log positions, so
  /// it serves a ``QuorumCore/ReadConsistency/session`` read as a linearizable one, which gives more (the host
  /// client, `KeyValueClient` in QuorumHost, is the one that spreads session reads over the replicas).
  public func get(_ key: String, consistency: ReadConsistency = .linearizable, at node: NodeID? = nil) async throws
    -> [UInt8]?
  {
    let result = try await read(.get(key: key), consistency: consistency, at: node)
    guard case .value(let value) = result else {
      throw KVClientError.badReply("get answered with \(Self.kind(of: result))")
    }
    return value
  }

  /// The value of `key` as a `Value` (`kv.get("greeting", as: String.self)`), at the chosen consistency.
  public func get<Value: KVValue>(
    _ key: String, as type: Value.Type, consistency: ReadConsistency = .linearizable, at node: NodeID? = nil
  ) async throws -> Value? {
    try Value.decoded(try await get(key, consistency: consistency, at: node), for: key, afterWrite: false)
  }

  /// Up to `limit` entries whose keys start with `prefix`, in key order: all of them when fewer than `limit` match.
  ///
  /// The scan is read page by page (``KVQuery/scanPage(prefix:after:limit:maxBytes:)``), each page within the
  /// store's bounds on one answer (``KVStore/maxScanEntries``, ``KVStore/maxScanBytes``), following each page's
  /// token until the scan ends or `limit` entries are in hand, so large values or long ranges are not cut short.
  /// Each page is read at `consistency` on its own, so a scan that spans pages is not one snapshot of the store.
  /// - Throws: ``KVClientError``, or a ``QuorumCore/ConsensusError`` that retrying does not fix.
  public func scan(prefix: String, limit: Int = 1000, consistency: ReadConsistency = .linearizable) async throws
    -> [KVPair]
  {
    try await scan(prefix: prefix, after: nil, limit: limit, consistency: consistency)
  }

  /// Up to `limit` entries whose keys start with `prefix` and come after `after` (from the prefix's first key when
  /// `nil`), in key order: pass the last key of one call's result as the next call's `after` to read a prefix of
  /// any size in pieces of `limit`; an empty result means the prefix has no more keys. Each call reads as
  /// ``scan(prefix:limit:consistency:)`` does.
  /// - Throws: ``KVClientError``, or a ``QuorumCore/ConsensusError`` that retrying does not fix.
  public func scan(prefix: String, after: String?, limit: Int = 1000, consistency: ReadConsistency = .linearizable)
    async throws -> [KVPair]
  {
    try await KVQuery.followScanPages(after: after, limit: limit) { after, remaining in
      let query = KVQuery.scanPage(prefix: prefix, after: after, limit: remaining, maxBytes: KVStore.maxScanBytes)
      let result = try await read(query, consistency: consistency, at: nil)
      guard case .page(let pairs, let next) = result else {
        throw KVClientError.badReply("a scan's page answered with \(Self.kind(of: result))")
      }
      return (pairs, next)
    }
  }

  /// What kind of answer `result` is, without its contents (a page may hold megabytes).
  private static func kind(of result: KVQueryResult) -> String {
    switch result {
    case .value: return "a value"
    case .entries(let pairs): return "\(pairs.count) entries"
    case .count: return "a count"
    case .page(let pairs, _): return "a page of \(pairs.count) entries"
    }
  }

  private func read(_ query: KVQuery, consistency requested: ReadConsistency, at node: NodeID?) async throws
    -> KVQueryResult
  {
    // Without the client's position a replica could not honour a session read: linearizable is the safe stand-in.
    let consistency = requested == .session ? ReadConsistency.linearizable : requested
    if consistency == .stale, let node, let member = members[node] {
      return try await member.read(query, consistency: .stale)
    }
    var uncertain = false
    return try await withRetries(uncertain: &uncertain) { member, _ in
      try await member.read(query, consistency: consistency)
    }
  }

  private func write(_ command: KVCommand) async throws -> KVResponse {
    var renewed = false
    while true {
      let session = try await currentSession()
      sequence += 1
      let mine = sequence
      outstanding.insert(mine)
      defer { outstanding.remove(mine) }
      let request = RequestID(session: session, sequence: mine)
      var uncertain = false
      do {
        return try await withRetries(uncertain: &uncertain) { member, acknowledged in
          try await member.propose(command, request: request, acknowledgedThrough: acknowledged)
        }
      } catch ConsensusError.sessionExpired(let expired) {
        // Another call may have registered a new session meanwhile: keep that one.
        if self.session == expired { self.session = nil }
        // An earlier attempt that timed out or was cut off may have been applied before the session expired; a
        // new session would apply the command again.
        if uncertain { throw ConsensusError.outcomeUnknown }
        // Every attempt was refused or certainly not applied (a session idle for longer than the replicas'
        // session timeout is expired on its next use): the command goes again, once, under a new session.
        if renewed { throw ConsensusError.sessionExpired(expired) }
        renewed = true
      }
    }
  }

  /// The client's session, registered first if it has none. Calls that find none while one is being registered
  /// wait for that one, so overlapping calls open one session, not one each.
  private func currentSession() async throws -> UInt64 {
    if let session { return session }
    if let registering {
      waitingForRegistration += 1
      defer { waitingForRegistration -= 1 }
      return try await registering.value
    }
    let task = Task { () async throws -> UInt64 in
      var uncertain = false
      return try await withRetries(uncertain: &uncertain) { member, _ in try await member.registerSession() }
    }
    registering = task
    defer { registering = nil }
    let registered = try await task.value
    if let session { return session }
    session = registered
    return registered
  }

  /// The highest sequence number below which every request of this client has had its answer (or was given up):
  /// the replicas may forget those responses. A request still in flight, perhaps to be retried, is never covered.
  private var acknowledgedThrough: UInt64 {
    outstanding.min().map { $0 - 1 } ?? sequence
  }

  private func target() -> NodeID {
    if let leader, members[leader] != nil { return leader }
    return order[Int.random(in: 0..<order.count, using: &random)]
  }

  /// Runs `body` on a member (with the acknowledgement mark current at each attempt) until it succeeds, the error
  /// is one retrying cannot fix, or the policy's attempts are spent. `uncertain` is set once an attempt ended in
  /// a way that leaves open whether its command was applied (timed out, stopped, outcome unknown).
  private func withRetries<T: Sendable>(uncertain: inout Bool, _ body: (Log, UInt64) async throws -> T)
    async throws -> T
  {
    var backoff = retry.initialBackoff
    var last = ConsensusError.timeout
    for attempt in 1...retry.maxAttempts {
      let id = target()
      guard let member = members[id] else { continue }
      do {
        let result = try await body(member, acknowledgedThrough)
        leader = id
        return result
      } catch let error as ConsensusError {
        last = error
        switch error {
        case .notLeader(let hint):
          leader = hint.flatMap { members[$0] != nil ? $0 : nil }
          if leader != nil && attempt == 1 { continue }  // Follow a fresh hint at once.
        case .sessionExpired, .commandTooLarge, .sessionNotOwned, .sessionQuotaExceeded, .responseForgotten:
          throw error
        case .stopped, .timeout, .outcomeUnknown:
          uncertain = true
          leader = nil
        case .dropped, .overloaded, .transferInProgress, .leaseExpired, .membershipChangeRejected:
          leader = nil
        }
      }
      let jitter = Double.random(in: 0.5...1.0, using: &random)
      try await Task.sleep(for: backoff * jitter)
      backoff = min(retry.maxBackoff, backoff * 2)
    }
    throw KVClientError.unavailable(attempts: retry.maxAttempts, last: last)
  }
}
