/// Why a ``TCPKVClient`` request failed.
public enum RemoteKVError: Error, Sendable, Equatable, CustomStringConvertible {
  /// Every attempt failed (members unreachable, no leader, timeouts); the last failure is described.
  case unavailable(attempts: Int, last: String)
  /// The cluster refused the request for a reason a retry cannot fix (session expired, command too
  /// large, membership change rejected).
  case refused(ClientFailure)
  /// A member's reply could not be decoded or was not the kind expected.
  case protocolError(String)

  public var description: String {
    switch self {
    case .unavailable(let attempts, let last): return "cluster unavailable after \(attempts) attempts (last: \(last))"
    case .refused(let failure): return "refused: \(failure)"
    case .protocolError(let detail): return "protocol error: \(detail)"
    }
  }
}

/// A key-value client for a Quorum cluster over TCP: it connects to any member, follows `notLeader`
/// redirects to the leader's address, retries with jittered exponential back-off, and makes every write
/// exactly-once with a session, so a write retried after a lost connection or a leader change is applied
/// once.
///
/// One client issues one request at a time (it is an actor). Run many concurrently by creating many
/// clients; they can share one ``QuorumTCP/TCPRequestClient`` (one pipelined connection per member).
public actor TCPKVClient {
  private let connection: TCPRequestClient
  private let ownsConnection: Bool
  private let retry: RetryPolicy
  private let requestTimeout: Duration
  private var members: [TCPAddress]
  private var cursor: Int
  private var leader: TCPAddress?
  private var session: UInt64?
  private var sequence: UInt64 = 0
  private var acknowledged: UInt64 = 0
  private var random: SeededRandom

  /// Creates a client.
  /// - Parameters:
  ///   - cluster: the cluster id (checked by every member at the handshake).
  ///   - members: addresses of some members (one is enough; redirects name the rest).
  ///   - retry: attempts and back-off per request.
  ///   - requestTimeout: how long one attempt waits for its reply.
  ///   - seed: seeds the choice of first member and the back-off jitter.
  ///   - connection: a shared request client; by default the client makes (and closes) its own.
  public init(
    cluster: ClusterID, members: [TCPAddress], retry: RetryPolicy = .default, requestTimeout: Duration = .seconds(5),
    seed: UInt64 = 1, connection: TCPRequestClient? = nil
  ) {
    precondition(!members.isEmpty, "a TCPKVClient needs at least one member address")
    self.connection = connection ?? TCPRequestClient(cluster: cluster, logger: .disabled)
    self.ownsConnection = connection == nil
    self.retry = retry
    self.requestTimeout = requestTimeout
    self.members = members
    var random = SeededRandom(seed: seed)
    self.cursor = Int(random.next() % UInt64(members.count))
    self.random = random
  }

  /// Closes the connections (if the client made them).
  public func close() async {
    if ownsConnection { await connection.close() }
  }

  /// The leader's address, as last learned.
  public var knownLeader: TCPAddress? { leader }

  // MARK: Key-value operations

  /// Sets `key` to `value`; returns the previous value.
  @discardableResult
  public func put(_ key: String, _ value: [UInt8]) async throws -> [UInt8]? {
    guard case .done(let previous) = try await write(.put(key: key, value: value)) else { return nil }
    return previous
  }

  /// Sets `key` to a UTF-8 string; returns the previous value.
  @discardableResult
  public func put(_ key: String, _ value: String) async throws -> [UInt8]? { try await put(key, Array(value.utf8)) }

  /// Removes `key`; returns the previous value.
  @discardableResult
  public func delete(_ key: String) async throws -> [UInt8]? {
    guard case .done(let previous) = try await write(.delete(key: key)) else { return nil }
    return previous
  }

  /// Sets `key` to `new` (or removes it) if its value is `expected` (`nil` meaning absent); returns
  /// whether it swapped.
  public func compareAndSwap(_ key: String, expected: [UInt8]?, new: [UInt8]?) async throws -> Bool {
    guard case .swapped(let swapped, _) = try await write(.compareAndSwap(key: key, expected: expected, new: new))
    else { return false }
    return swapped
  }

  /// The value of `key` at the chosen consistency; stale reads go to `member` if given.
  public func get(_ key: String, consistency: ReadConsistency = .linearizable, at member: TCPAddress? = nil)
    async throws -> [UInt8]?
  {
    let reply = try await perform(.query(.get(key: key), consistency: consistency), at: member)
    guard case .queryResult(.value(let value)) = reply else { throw unexpected(reply) }
    return value
  }

  /// Up to `limit` entries whose keys start with `prefix`, in key order.
  public func scan(prefix: String, limit: Int = 1000, consistency: ReadConsistency = .linearizable) async throws
    -> [KVPair]
  {
    let reply = try await perform(.query(.scan(prefix: prefix, limit: limit), consistency: consistency))
    guard case .queryResult(.entries(let pairs)) = reply else { throw unexpected(reply) }
    return pairs
  }

  // MARK: Administration

  /// The status of the member at `address` (no retries, no redirects).
  public func status(of address: TCPAddress) async throws -> MemberStatus {
    let reply = try await attempt(.status, at: address)
    guard case .status(let status) = reply else { throw unexpected(reply) }
    return status
  }

  /// Applies a membership change through the leader.
  public func changeMembership(_ operation: MembershipOperation) async throws {
    let reply = try await perform(.membership(operation))
    guard case .done = reply else { throw unexpected(reply) }
  }

  /// Transfers leadership to `node`.
  public func transferLeadership(to node: NodeID) async throws {
    let reply = try await perform(.transferLeadership(node))
    guard case .done = reply else { throw unexpected(reply) }
  }

  // MARK: Internals

  private func write(_ command: KVCommand) async throws -> KVResponse {
    if session == nil {
      guard case .session(let id) = try await perform(.registerSession) else {
        throw RemoteKVError.protocolError("registering a session did not return one")
      }
      session = id
    }
    guard let session else { throw RemoteKVError.protocolError("no session") }
    sequence += 1
    let request = RequestID(session: session, sequence: sequence)
    do {
      let reply = try await perform(.command(command, request: request, acknowledgedThrough: acknowledged))
      guard case .response(let response) = reply else { throw unexpected(reply) }
      acknowledged = sequence
      return response
    } catch RemoteKVError.refused(let failure) {
      if case .sessionExpired = failure.error { self.session = nil }
      throw RemoteKVError.refused(failure)
    }
  }

  private func unexpected(_ reply: ClientReply) -> RemoteKVError {
    .protocolError("unexpected reply \(reply)")
  }

  /// One request to one address; failures are thrown as they come.
  private func attempt(_ request: ClientRequest, at address: TCPAddress) async throws -> ClientReply {
    let bytes = try await connection.request(request.wireBytes(), to: address, timeout: requestTimeout)
    do {
      return try ClientReply(wireBytes: bytes)
    } catch {
      throw RemoteKVError.protocolError("undecodable reply from \(address): \(error)")
    }
  }

  private func target() -> TCPAddress {
    if let leader { return leader }
    return members[cursor % members.count]
  }

  private func learn(_ address: TCPAddress) {
    if !members.contains(address) { members.append(address) }
  }

  /// Sends `request`, following redirects and retrying failures a retry can fix.
  private func perform(_ request: ClientRequest, at fixed: TCPAddress? = nil) async throws -> ClientReply {
    var backoff = retry.initialBackoff
    var last = "no attempt made"
    for attempt in 1...retry.maxAttempts {
      let address = fixed ?? target()
      var redirected = false
      do {
        let reply = try await self.attempt(request, at: address)
        guard case .failure(let failure) = reply else {
          if fixed == nil { leader = address }
          return reply
        }
        last = "\(address): \(failure)"
        switch failure.error {
        case .notLeader:
          if let next = failure.leaderAddress, next != address, fixed == nil {
            learn(next)
            leader = next
            redirected = true
          } else {
            leader = nil
            cursor += 1
          }
        case .sessionExpired, .commandTooLarge, .membershipChangeRejected:
          throw RemoteKVError.refused(failure)
        case .timeout, .dropped, .outcomeUnknown, .stopped, .overloaded, .transferInProgress, .leaseExpired:
          leader = nil
          cursor += 1
        }
      } catch let error as TCPRequestError {
        last = "\(error)"
        if case .tooLarge(let bytes, let limit) = error {
          throw RemoteKVError.refused(ClientFailure(.commandTooLarge(bytes: bytes, limit: limit)))
        }
        if case .unreachable(_, .rejected) = error {
          // Refused at the handshake (another cluster, for example): retrying cannot help.
          throw RemoteKVError.unavailable(attempts: attempt, last: last)
        }
        leader = nil
        cursor += 1
      }
      if attempt == retry.maxAttempts { break }
      if redirected { continue }  // Follow a redirect at once.
      let jitter = 0.5 + Double(random.next() >> 11) * 0x1.0p-53 * 0.5
      try await Task.sleep(for: backoff * jitter)
      backoff = min(retry.maxBackoff, backoff * 2)
    }
    throw RemoteKVError.unavailable(attempts: retry.maxAttempts, last: last)
  }
}
