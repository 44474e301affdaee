public import QuorumCore
public import QuorumLocks
import Synchronization

/// Why a lock call failed.
public enum LockClientError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The lock was not granted within the wait the caller allowed.
  case timedOut(lock: String)
  /// The lock table refused the request (a kind or permit mismatch, a bound).
  case refused(LockError)
  /// The lease was lost (its session expired) while the body of ``LockClient/withLock(_:mode:ttl:timeout:_:)`` ran.
  case leaseLost(lock: String, token: FencingToken)
  /// The answer did not make sense.
  case unexpected(String)

  public var description: String {
    switch self {
    case .timedOut(let lock): return "\(lock) was not granted in time"
    case .refused(let error): return "refused: \(error)"
    case .leaseLost(let lock, let token): return "the lease on \(lock) (token \(token)) was lost"
    case .unexpected(let what): return "unexpected answer: \(what)"
    }
  }
}

/// A lock held: its name, mode and fencing token, and whether the holder may still act on it.
///
/// The client keeps the lease's session alive in the background. It considers the lease lost — ``isValid``
/// becomes false and ``lost()`` returns — as soon as it can no longer be sure the session is alive: when a
/// keep-alive sent at time *t* has not been answered by *t* + TTL − margin (measured on the client's monotonic
/// clock, from when the request was *sent*), or when the server says the session expired. Log time, which decides
/// expiry, never runs faster than the leader's monotonic clock, so this happens before any other client can be
/// granted the lock — unless the clocks drift apart by more than the margin (``LockClientOptions/margin``).
/// Protect the resource with the fencing token anyway (`FencingGuard`): a process paused at the wrong moment can
/// still act on a lease it no longer holds.
public final class LockLease: Sendable, CustomStringConvertible {
  /// The lock.
  public let name: String
  /// The mode held.
  public let mode: LockMode
  /// The fencing token: the log position of the grant; it grows with every grant of this lock.
  public let token: FencingToken
  /// The owning session.
  public let session: LockSessionID
  /// The group holding the lock.
  public let group: GroupID
  private let state = Mutex<(valid: Bool, waiters: [UnsafeContinuation<Void, Never>])>((true, []))

  init(grant: LockGrant, group: GroupID) {
    name = grant.lock
    mode = grant.mode
    token = grant.token
    session = grant.session
    self.group = group
  }

  /// Whether the holder may still act on the lease (see the type's discussion).
  public var isValid: Bool { state.withLock { $0.valid } }

  /// Returns once the lease is lost (or released).
  public func lost() async {
    await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
      let done = state.withLock { s -> Bool in
        if !s.valid { return true }
        s.waiters.append(continuation)
        return false
      }
      if done { continuation.resume() }
    }
  }

  func invalidate() {
    let waiters = state.withLock { s -> [UnsafeContinuation<Void, Never>] in
      s.valid = false
      defer { s.waiters = [] }
      return s.waiters
    }
    for waiter in waiters { waiter.resume() }
  }

  public var description: String { "\(name) \(mode) \(token) (session \(session))" }
}

/// A lock client's settings.
public struct LockClientOptions: Sendable {
  /// The session TTL: a holder that stops renewing loses its locks this long (in log time) after its last renewal.
  public var ttl: Duration = .seconds(10)
  /// How much earlier than the server the client gives a lease up: it covers clock-rate drift between the client
  /// and the leaders over one TTL (the default assumes rates within 1 %, plus 50 ms).
  public var margin: Duration? = nil
  /// How often a session is renewed, as a fraction of the TTL.
  public var renewFraction: Double = 1.0 / 3.0
  /// The longest one watch for a grant is held before the client checks the lock's state and watches again.
  public var watchInterval: Duration = .seconds(5)

  /// The defaults: a 10 s TTL, renewed every third of it.
  public init() {}

  /// The margin in force for `ttl`.
  public func margin(for ttl: Duration) -> Duration { margin ?? (ttl / 100 + .milliseconds(50)) }
}

/// The distributed lock service of a cluster of group hosts: named exclusive, shared and counting locks with
/// fencing tokens, fair FIFO hand-off, and leases kept alive in the background.
///
/// ```swift
/// let locks = LockClient(host)
/// let lease = try await locks.lock("orders", ttl: .seconds(10))
/// try await storage.write(order, fencedBy: lease.token)     // the resource checks the token
/// try await locks.unlock(lease)
///
/// try await locks.withLock("orders") { token in … }          // unlocks on return; cancelled if the lease is lost
/// ```
///
/// Every lock lives in the group that owns its name. A client opens one session per group (and TTL) the first
/// time it needs one and renews it until ``close()``; a waiter is granted by the very log entry that frees the lock
/// (a release or an expiry), and the client learns it by watching the grant's key, so nobody polls.
public actor LockClient {
  private struct SessionKey: Hashable {
    var group: GroupID
    var ttlMillis: UInt64
  }

  private final class Session: Sendable {
    let id: LockSessionID
    let group: GroupID
    let ttl: Duration
    let state = Mutex<(validUntil: UInt64, leases: [FencingToken: LockLease], closed: Bool)>((0, [:], false))

    init(id: LockSessionID, group: GroupID, ttl: Duration, validUntil: UInt64) {
      self.id = id
      self.group = group
      self.ttl = ttl
      state.withLock { $0.validUntil = validUntil }
    }

    func lose() {
      let leases = state.withLock { s -> [LockLease] in
        s.closed = true
        defer { s.leases = [:] }
        return Array(s.leases.values)
      }
      for lease in leases { lease.invalidate() }
    }
  }

  /// The client underneath.
  public let host: HostClient
  private let options: LockClientOptions
  private let clock: any NodeClock
  private var sessions: [SessionKey: Session] = [:]
  private var keepAlives: [SessionKey: Task<Void, Never>] = [:]

  /// Creates a lock client over `host`, measuring leases on `clock` (the system's unless simulated).
  public init(
    _ host: HostClient, options: LockClientOptions = LockClientOptions(), clock: any NodeClock = SystemClock()
  ) {
    self.host = host
    self.options = options
    self.clock = clock
  }

  // MARK: - Locking

  /// Acquires `name` in `mode`, waiting in FIFO order (at most `timeout`, or without limit).
  /// - Throws: ``LockClientError/timedOut(lock:)`` when `timeout` passes, ``LockClientError/refused(_:)``, or a
  ///   ``QuorumClientError``.
  public func lock(
    _ name: String, mode: LockMode = .exclusive, ttl: Duration? = nil, timeout: Duration? = nil
  ) async throws -> LockLease {
    guard let lease = try await acquire(name, mode: mode, ttl: ttl ?? options.ttl, wait: timeout ?? .seconds(86_400))
    else { throw LockClientError.timedOut(lock: name) }
    return lease
  }

  /// Acquires `name` if it is granted within `timeout` (zero: only if it is free now); `nil` otherwise.
  public func tryLock(_ name: String, mode: LockMode = .exclusive, ttl: Duration? = nil, timeout: Duration = .zero)
    async throws -> LockLease?
  {
    try await acquire(name, mode: mode, ttl: ttl ?? options.ttl, wait: timeout)
  }

  /// Releases `lease`; returns `false` if it was no longer held (its session expired and someone else may hold
  /// the lock now — the owner check keeps a late release from freeing the next holder's grant).
  @discardableResult
  public func unlock(_ lease: LockLease) async throws -> Bool {
    lease.invalidate()
    if let session = session(of: lease) {
      session.state.withLock { _ = $0.leases.removeValue(forKey: lease.token) }
    }
    let response = try await run(
      .release(lock: lease.name, session: lease.session, token: lease.token), in: lease.group)
    guard case .released(let released) = response.value else {
      throw LockClientError.unexpected("\(response.value)")
    }
    return released
  }

  /// Runs `body` holding `name`, then releases it (also when `body` throws). If the lease is lost meanwhile, `body`
  /// is cancelled and the call throws ``LockClientError/leaseLost(lock:token:)``.
  public func withLock<T: Sendable>(
    _ name: String, mode: LockMode = .exclusive, ttl: Duration? = nil, timeout: Duration? = nil,
    _ body: @escaping @Sendable (FencingToken) async throws -> T
  ) async throws -> T {
    let lease = try await lock(name, mode: mode, ttl: ttl, timeout: timeout)
    let outcome: Result<T, any Error> = await withTaskGroup(of: Result<T, any Error>?.self) { group in
      group.addTask {
        do { return .success(try await body(lease.token)) } catch { return .failure(error) }
      }
      group.addTask {
        await lease.lost()
        return nil
      }
      guard let first = await group.next() else { return .failure(CancellationError()) }
      group.cancelAll()
      lease.invalidate()  // Ends the watcher if the body finished first.
      return first ?? .failure(LockClientError.leaseLost(lock: name, token: lease.token))
    }
    _ = try? await unlock(lease)
    return try outcome.get()
  }

  /// Closes every session (their locks are released at once) and stops renewing them.
  public func close() async {
    for (key, session) in sessions {
      keepAlives[key]?.cancel()
      session.lose()
      _ = try? await run(.closeSession(session: session.id), in: session.group)
    }
    sessions = [:]
    keepAlives = [:]
  }

  /// The state of lock `name` (holders with their tokens, waiters in order), read linearizably.
  public func status(of name: String) async throws -> LockStatus? {
    let group = try await host.group(for: name, service: LockService.name)
    let (bytes, _) = try await host.query(LockQuery.lock(name).wireBytes(), service: LockService.name, group: group)
    guard case .lock(let status) = try LockQueryResult(wireBytes: bytes) else {
      throw LockClientError.unexpected("not a lock status")
    }
    return status
  }

  // MARK: - Internals

  private func session(of lease: LockLease) -> Session? {
    sessions.values.first { $0.id == lease.session && $0.group == lease.group }
  }

  private func run(_ command: LockCommand, in group: GroupID, deadline: Duration? = nil) async throws
    -> (value: LockResponse, index: UInt64)
  {
    let (bytes, index) = try await host.commandIndexed(
      command.wireBytes(), service: LockService.name, group: group, deadline: deadline)
    do {
      return (try LockResponse(wireBytes: bytes), index)
    } catch {
      throw QuorumClientError.badReply("\(error)")
    }
  }

  private func acquire(_ name: String, mode: LockMode, ttl: Duration, wait: Duration) async throws -> LockLease? {
    let group = try await host.group(for: name, service: LockService.name)
    let started = clock.monotonicNanos()
    let end = started &+ wait.nanoseconds
    for _ in 0..<3 {
      let session = try await openSession(in: group, ttl: ttl)
      let waitMillis = UInt64(clamping: wait.nanoseconds / 1_000_000)
      let response = try await run(
        .acquire(lock: name, session: session.id, mode: mode, wait: waitMillis > 0, waitTimeoutMillis: waitMillis),
        in: group)
      switch response.value {
      case .granted(let grant):
        return hold(grant, in: session)
      case .busy:
        return nil
      case .queued:
        return try await awaitGrant(name, session: session, after: response.index, until: end)
      case .sessionExpired:
        forget(session)
        continue
      case .failed(let error):
        throw LockClientError.refused(error)
      default:
        throw LockClientError.unexpected("\(response.value)")
      }
    }
    throw LockClientError.unexpected("the session expired three times in a row")
  }

  /// Waits for the entry that grants `name` to `session` (or ends its wait), watching its key; checks the lock's
  /// state between watches, in case a notification was missed (a member restarted, the watch moved elsewhere).
  private func awaitGrant(_ name: String, session: Session, after: UInt64, until end: UInt64) async throws
    -> LockLease?
  {
    var after = after
    let key = LockService.grantKey(lock: name, session: session.id)
    while true {
      let now = clock.monotonicNanos()
      if now >= end || session.state.withLock({ $0.closed }) {
        _ = try? await run(.cancelWait(lock: name, session: session.id), in: session.group)
        // The grant may have come just before the cancel: a lock granted to us is ours to release.
        if let grant = try await heldGrant(name, session: session) { return hold(grant, in: session) }
        return nil
      }
      let remaining = Duration.nanoseconds(Int64(clamping: end - now))
      let (payloads, index) = try await host.watch(
        key, service: LockService.name, group: session.group, after: after,
        timeout: min(remaining, options.watchInterval))
      after = max(after, index)
      for payload in payloads {
        switch try LockEvent(wireBytes: payload) {
        case .granted(let grant) where grant.lock == name && grant.session == session.id:
          return hold(grant, in: session)
        case .waitTimedOut(let lock, let waiter) where lock == name && waiter == session.id:
          return nil
        default:
          continue
        }
      }
      if payloads.isEmpty, let grant = try await heldGrant(name, session: session) { return hold(grant, in: session) }
    }
  }

  private func heldGrant(_ name: String, session: Session) async throws -> LockGrant? {
    let (bytes, _) = try await host.query(
      LockQuery.session(session.id).wireBytes(), service: LockService.name, group: session.group)
    guard case .session(let status) = try LockQueryResult(wireBytes: bytes) else { return nil }
    return status?.holds.first { $0.lock == name }
  }

  private func hold(_ grant: LockGrant, in session: Session) -> LockLease {
    let lease = LockLease(grant: grant, group: session.group)
    let valid = session.state.withLock { s -> Bool in
      guard !s.closed else { return false }
      s.leases[grant.token] = lease
      return true
    }
    if !valid { lease.invalidate() }
    return lease
  }

  private func forget(_ session: Session) {
    let key = SessionKey(group: session.group, ttlMillis: UInt64(session.ttl.nanoseconds / 1_000_000))
    if sessions[key] === session {
      sessions[key] = nil
      keepAlives.removeValue(forKey: key)?.cancel()
    }
    session.lose()
  }

  private func openSession(in group: GroupID, ttl: Duration) async throws -> Session {
    let key = SessionKey(group: group, ttlMillis: UInt64(ttl.nanoseconds / 1_000_000))
    if let session = sessions[key], !session.state.withLock({ $0.closed }) { return session }
    let sentAt = clock.monotonicNanos()
    let response = try await run(.openSession(ttlMillis: key.ttlMillis), in: group)
    guard case .sessionOpened(let id, _) = response.value else {
      if case .failed(let error) = response.value { throw LockClientError.refused(error) }
      throw LockClientError.unexpected("\(response.value)")
    }
    if let raced = sessions[key], !raced.state.withLock({ $0.closed }) {
      // Another call opened one meanwhile; this one is left to expire.
      return raced
    }
    let session = Session(id: id, group: group, ttl: ttl, validUntil: leaseDeadline(sentAt: sentAt, ttl: ttl))
    sessions[key] = session
    keepAlives[key] = Task { [weak self] in await self?.keepAlive(session) }
    return session
  }

  private func leaseDeadline(sentAt: UInt64, ttl: Duration) -> UInt64 {
    sentAt &+ ttl.nanoseconds &- min(ttl.nanoseconds, options.margin(for: ttl).nanoseconds)
  }

  /// Renews `session` every fraction of its TTL; gives its leases up the moment it can no longer be sure the
  /// session is alive.
  private func keepAlive(_ session: Session) async {
    let period = UInt64(Double(session.ttl.nanoseconds) * options.renewFraction)
    while !Task.isCancelled {
      let validUntil = session.state.withLock { $0.validUntil }
      let now = clock.monotonicNanos()
      if now >= validUntil {
        forget(session)
        return
      }
      try? await clock.sleep(untilNanos: min(validUntil, now &+ period))
      guard !Task.isCancelled, !session.state.withLock({ $0.closed }) else { return }
      guard clock.monotonicNanos() < session.state.withLock({ $0.validUntil }) else { continue }
      let sentAt = clock.monotonicNanos()
      let remaining = Duration.nanoseconds(Int64(clamping: session.state.withLock { $0.validUntil } &- sentAt))
      do {
        let response = try await run(.keepAlive(session: session.id), in: session.group, deadline: remaining)
        switch response.value {
        case .keptAlive:
          let renewed = leaseDeadline(sentAt: sentAt, ttl: session.ttl)
          session.state.withLock { $0.validUntil = max($0.validUntil, renewed) }
        case .sessionExpired:
          forget(session)
          return
        default:
          continue
        }
      } catch {
        continue  // Not renewed: the lease runs out at its deadline unless a later renewal succeeds.
      }
    }
  }
}
