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
  /// The session the call waited in ended before the lock was granted, or before the grant reached the client: it
  /// could not be kept alive (it expired, or was about to), or the client closed it (``LockClient/close()``, or
  /// after another call on the same session failed with an unknown outcome). Nothing is held (a grant that came
  /// too late is handed back); a new call waits again, at the back of the queue.
  case sessionLost(lock: String)
  /// The answer did not make sense.
  case unexpected(String)
  /// The client was closed (``LockClient/close()``) while the call was opening a session.
  case closed
  /// The calling task already holds `lock` in `held` mode through an enclosing
  /// ``LockClient/withLock(_:mode:ttl:timeout:_:)`` of a client on the same ``HostClient``, and asked for it in
  /// `requested` mode where one of the two is exclusive, or asked for a permit of a semaphore whose every permit the
  /// enclosing calls hold (its only one, for a semaphore of one permit): the call could only wait for its own caller
  /// to release it. Refused at once; nothing was sent.
  case reentrant(lock: String, held: LockMode, requested: LockMode)
  /// The call needed a new session, but the client already has ``LockClientOptions/maxSessions`` sessions open in
  /// the lock's group for that TTL that are stuck after failed calls (a clean-up in the background still works in
  /// them, or they are retiring after one gave up), as happens while the members cannot be reached. Nothing was sent;
  /// try again once the clean-ups are done.
  case tooManySessions(limit: Int)

  public var description: String {
    switch self {
    case .timedOut(let lock): return "\(lock) was not granted in time"
    case .refused(let error): return "refused: \(error)"
    case .leaseLost(let lock, let token): return "the lease on \(lock) (token \(token)) was lost"
    case .sessionLost(let lock): return "the session waiting for \(lock) was lost before it was granted"
    case .unexpected(let what): return "unexpected answer: \(what)"
    case .closed: return "the lock client was closed"
    case .reentrant(let lock, let held, let requested):
      return "the task already holds \(lock) as \(held) and would wait for itself to get it as \(requested)"
    case .tooManySessions(let limit): return "the client has \(limit) lock sessions open for the group (its limit)"
    }
  }
}

/// A lock held: its name, mode and fencing token, and whether the holder may still act on it.
///
/// The client keeps the lease's session alive in the background. It considers the lease lost — ``isValid``
/// becomes false and ``lost()`` returns — as soon as it can no longer be sure the session is alive: when a
/// keep-alive sent at time *t* has not been answered by *t* + TTL − margin (measured on the client's monotonic
/// clock, from when the request was *sent*), or when the server says the session expired. ``isValid`` reads that
/// deadline itself, so it turns false on time even if the task that renews the session runs late. Log time,
/// which decides expiry, never runs faster than the leader's monotonic clock, so this happens before any other
/// client can be granted the lock — unless the clocks drift apart by more than the margin
/// (``LockClientOptions/margin``). Protect the resource with the fencing token anyway (`FencingGuard`): a process
/// paused at the wrong moment can still act on a lease it no longer holds.
///
/// Every acquire gets a hold of its own: a lease is never shared between two calls, and the client is not
/// reentrant (see ``LockClient``).
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
  private let owner: LockClientSession
  private let state = Mutex<(valid: Bool, waiters: [UnsafeContinuation<Void, Never>])>((true, []))

  init(grant: LockGrant, owner: LockClientSession) {
    name = grant.lock
    mode = grant.mode
    token = grant.token
    session = grant.session
    group = owner.group
    self.owner = owner
  }

  /// Whether the holder may still act on the lease: it was neither released nor given up, and the session's
  /// deadline on the client's clock has not passed (see the type's discussion).
  public var isValid: Bool { state.withLock { $0.valid } && owner.isWithinDeadline }

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

/// One owner session as a ``LockClient`` sees it: how long it can be sure the session lives, its leases, and the
/// locks a call is in flight for.
final class LockClientSession: Sendable {
  struct State {
    /// The client's monotonic time until which the session is surely alive.
    var validUntil: UInt64
    /// The leases handed out, by lock name (a session holds a lock at most once).
    var leases: [String: LockLease] = [:]
    /// Given up: its leases are lost and it is no longer renewed.
    var closed = false
    /// A call on the session failed without a known outcome, so the session may hold or wait for a lock no lease
    /// stands for. New acquires use another session, and this one is closed as soon as it is idle.
    var retiring = false
    /// How many calls about each lock are in flight in the session: an acquire, a release, or a clean-up after
    /// one of them failed. A lock with a lease or a call in flight is taken by its caller: another acquire of it
    /// uses another session (``reserve(_:)``).
    var busy: [String: Int] = [:]
  }

  let id: LockSessionID
  let group: GroupID
  let ttl: Duration
  let clock: any NodeClock
  let state: Mutex<State>

  init(id: LockSessionID, group: GroupID, ttl: Duration, validUntil: UInt64, clock: any NodeClock) {
    self.id = id
    self.group = group
    self.ttl = ttl
    self.clock = clock
    self.state = Mutex(State(validUntil: validUntil))
  }

  /// Whether the client's clock is still before the session's deadline.
  var isWithinDeadline: Bool {
    let validUntil = state.withLock { $0.validUntil }
    return clock.monotonicNanos() < validUntil
  }

  var isClosed: Bool { state.withLock { $0.closed } }

  var isRetiring: Bool { state.withLock { $0.retiring } }

  /// Whether the session holds no lease and has no call in flight (and is still open): it can be closed.
  var isIdle: Bool { state.withLock { $0.leases.isEmpty && $0.busy.isEmpty && !$0.closed } }

  /// Takes `lock` for an acquire if the session neither holds it nor has a call about it in flight; returns
  /// whether it did. Pair a `true` with ``end(_:)``.
  func reserve(_ lock: String) -> Bool {
    state.withLock { s in
      guard !s.closed, !s.retiring, s.leases[lock] == nil, s.busy[lock] == nil else { return false }
      s.busy[lock] = 1
      return true
    }
  }

  /// Notes a call about `lock` starting in the session (a release or a clean-up); pair with ``end(_:)``.
  func begin(_ lock: String) { state.withLock { $0.busy[lock, default: 0] += 1 } }

  /// Notes a call about `lock` ending (however it ended).
  func end(_ lock: String) {
    state.withLock { s in
      let left = (s.busy[lock] ?? 1) - 1
      s.busy[lock] = left > 0 ? left : nil
    }
  }

  /// A new lease for `grant`, recorded as the session's lease of its lock (invalid at once if the session was
  /// given up).
  func lease(for grant: LockGrant) -> LockLease {
    let (lease, replaced, closed) = state.withLock { s -> (LockLease, LockLease?, Bool) in
      let lease = LockLease(grant: grant, owner: self)
      guard !s.closed else { return (lease, nil, true) }
      return (lease, s.leases.updateValue(lease, forKey: grant.lock), false)
    }
    replaced?.invalidate()  // Not expected (one call per lock and session), but an older grant is gone.
    if closed { lease.invalidate() }
    return lease
  }

  /// Forgets `lease` (it is being released).
  func remove(_ lease: LockLease) {
    state.withLock { s in
      if s.leases[lease.name] === lease { s.leases[lease.name] = nil }
    }
  }

  /// Gives the session up: every lease is lost.
  func lose() {
    let leases = state.withLock { s -> [LockLease] in
      s.closed = true
      defer { s.leases = [:] }
      return Array(s.leases.values)
    }
    for lease in leases { lease.invalidate() }
  }
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
  /// The most sessions stuck after failed calls that the client keeps open per group and TTL (default 64; at least
  /// 1). A call needs a session in which its lock is neither held nor being acquired or released, so concurrent calls
  /// on one lock take a session each; those are the caller's own concurrency and are not counted (it is bounded by the
  /// lock table's own `maxSessions`). But while the members cannot be reached, each background clean-up after a
  /// failed call keeps its lock taken in its session for up to a minute and a half, and a session whose clean-up gave
  /// up is retired until it holds nothing. A call that needs a new session while this many sessions of the group and
  /// TTL are in that state fails at once with ``LockClientError/tooManySessions(limit:)`` instead of opening one more,
  /// so an outage cannot make the sessions grow with the call rate.
  public var maxSessions: Int = 64

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
/// Every lock lives in the group that owns its name. A client opens a session per group (and TTL) the first time
/// it needs one and renews it until ``close()``; a waiter is granted by the very log entry that frees the lock
/// (a release or an expiry), and the client learns it by watching the grant's key, so nobody polls.
///
/// Each call gets a hold of its own, so concurrent callers of one client exclude each other exactly as callers of
/// different clients do: an exclusive lock held by one task makes another task of the same client wait (in FIFO
/// order, within its timeout, until cancelled), and each semaphore acquire takes a permit of its own. A call uses
/// a session in which its lock is neither held nor being acquired or released, and opens another one when every
/// session of the group is taken for that lock; such extra sessions are closed as soon as they hold nothing, so a
/// client keeps about one session per concurrent call on its busiest lock, plus its first one. A call that failed
/// with an unknown outcome (an acquire, a wait given up, a release) is undone in the background for that lock alone,
/// which keeps the lock taken in its session for up to a minute and a half while the members cannot be reached:
/// calls meanwhile use other sessions, as long as fewer than ``LockClientOptions/maxSessions`` sessions of the group
/// and TTL are stuck that way (``LockClientError/tooManySessions(limit:)`` beyond).
///
/// The client is **not reentrant**: a lock call never returns a hold its caller already has. Inside the body of
/// ``withLock(_:mode:ttl:timeout:_:)`` (and in the tasks the body starts, which inherit its task-local values), a
/// call for the same lock through a client on the same ``HostClient`` where the enclosing hold or the new request
/// is exclusive, or a semaphore request while the enclosing calls hold every permit (the only one, for a semaphore
/// of one permit), fails at once with ``LockClientError/reentrant(lock:held:requested:)``, rather than waiting for
/// its own caller until its timeout. A semaphore request while holding fewer permits takes one of its own, and may
/// wait for another caller to free one. A shared request while holding the lock shared also takes a hold of its
/// own, and it is granted at once only while no writer waits: queues are first in, first out, so once another
/// caller's exclusive request waits for the outer shared hold, the inner request queues behind that writer, which
/// waits for the outer hold, which waits for the inner request. That deadlock lasts until the inner call's timeout
/// (a day by default for ``lock(_:mode:ttl:timeout:)``): nest shared holds only with a timeout, or take the lock
/// once. (The client does not refuse shared-in-shared: without a waiting writer it is granted at once, and a
/// refusal would break nested readers that never meet one.)
///
/// "The tasks the body starts" includes `Task {}`, which inherits task-local values: such a task that reaches an
/// acquire of the lock while the enclosing hold is still valid is refused, even if it meant to wait for the body to
/// finish. A task that should wait for the lock like any other caller must be started with `Task.detached`, which
/// inherits nothing. A zero-timeout ``tryLock(_:mode:ttl:timeout:)`` inside its own hold is refused the same way
/// (it throws ``LockClientError/reentrant(lock:held:requested:)`` rather than returning `nil`): it could only find
/// the lock taken by its own caller.
///
/// The client cannot tell which task holds a lease returned by ``lock(_:mode:ttl:timeout:)``, so a task that calls
/// `lock` again for a lock it holds that way waits like any other caller: use `withLock` for nested locking.
public actor LockClient {
  private struct SessionKey: Hashable {
    var group: GroupID
    var ttlMillis: UInt64
  }

  private struct SessionRef: Hashable {
    var group: GroupID
    var id: LockSessionID
  }

  private typealias Session = LockClientSession

  /// A hold of an enclosing ``withLock(_:mode:ttl:timeout:_:)`` and the host client it was made through.
  private struct EnclosingLease: Sendable {
    var host: ObjectIdentifier
    var lease: LockLease
  }

  /// The holds of the `withLock` calls whose bodies the current task runs in (or was started from).
  @TaskLocal private static var enclosingLeases: [EnclosingLease] = []

  /// The client underneath.
  public let host: HostClient
  private let options: LockClientOptions
  private let runtime: NodeRuntime
  private var clock: any NodeClock { runtime.clock }
  /// The sessions new acquires use, per group and TTL, oldest first: the first stays open while the client does;
  /// the others are closed as soon as they are idle.
  private var sessions: [SessionKey: [Session]] = [:]
  /// Every session still renewed: the current ones and retiring ones that still hold leases.
  private var live: [SessionRef: Session] = [:]
  private var keepAlives: [SessionRef: Task<Void, Never>] = [:]
  /// The session being opened, per group and TTL (calls that need a new session meanwhile wait for it).
  private var opening: [SessionKey: (number: UInt64, task: Task<Result<Session, any Error>, Never>)] = [:]
  private var nextOpening: UInt64 = 0
  /// How many times ``close()`` was called: a session opened across one is closed at once.
  private var closes: UInt64 = 0
  /// The clean-ups in flight after a call failed with an unknown outcome (``cleanUp(_:in:token:queuedAt:)``).
  private var cleanUps: [UInt64: Task<Void, Never>] = [:]
  /// The session each clean-up in ``cleanUps`` works in.
  private var cleanUpSessions: [UInt64: SessionRef] = [:]
  private var nextCleanUp: UInt64 = 0

  /// How many times a clean-up tries before it retires its session, and how long it waits between tries at most.
  private static let cleanUpAttempts = 8
  private static let cleanUpMaxBackOff = Duration.seconds(5)
  /// How many cancels (or releases) one call, or one try of a clean-up, sends before it gives up on leaving a lock.
  private static let leaveQueueTries = 4

  /// Creates a lock client over `host`, measuring leases on `clock` (the system's unless simulated).
  public init(
    _ host: HostClient, options: LockClientOptions = LockClientOptions(), clock: any NodeClock = SystemClock()
  ) {
    self.init(host, options: options, runtime: NodeRuntime(clock: clock))
  }

  /// Creates a lock client over `host` that measures leases on `runtime`'s clock and renews them in tasks on
  /// `runtime`'s executor (a simulation's process).
  public init(_ host: HostClient, options: LockClientOptions = LockClientOptions(), runtime: NodeRuntime) {
    self.host = host
    self.options = options
    self.runtime = runtime
  }

  // MARK: - Locking

  /// Acquires `name` in `mode`, waiting in FIFO order (at most `timeout`, or without limit).
  /// - Throws: ``LockClientError/timedOut(lock:)`` when `timeout` passes, ``LockClientError/sessionLost(lock:)``
  ///   when the waiting session could not be kept alive, ``LockClientError/refused(_:)``, `CancellationError`,
  ///   or a ``QuorumClientError``. A call that throws holds nothing: a wait or grant its request may have left
  ///   behind is cleaned up in the background, or belongs to a session the client closes (or lets expire) once
  ///   its other leases are released.
  public func lock(
    _ name: String, mode: LockMode = .exclusive, ttl: Duration? = nil, timeout: Duration? = nil
  ) async throws -> LockLease {
    guard let lease = try await acquire(name, mode: mode, ttl: ttl ?? options.ttl, wait: timeout ?? .seconds(86_400))
    else { throw LockClientError.timedOut(lock: name) }
    return lease
  }

  /// Acquires `name` if it is granted within `timeout` (zero: only if it is free now); `nil` otherwise.
  /// - Throws: as ``lock(_:mode:ttl:timeout:)``, except that a wait that runs out returns `nil` (a wait whose
  ///   session ended first still throws ``LockClientError/sessionLost(lock:)``).
  public func tryLock(_ name: String, mode: LockMode = .exclusive, ttl: Duration? = nil, timeout: Duration = .zero)
    async throws -> LockLease?
  {
    try await acquire(name, mode: mode, ttl: ttl ?? options.ttl, wait: timeout)
  }

  /// Releases `lease`; returns `false` if it was no longer held (its session expired and someone else may hold
  /// the lock now — the owner check keeps a late release from freeing the next holder's grant).
  ///
  /// The lease is invalid from the start of the call. If the release cannot be confirmed (the call throws), the
  /// client keeps retrying it in the background (a bounded number of times, then it retires the session: closed
  /// once it is idle, or left to expire).
  @discardableResult
  public func unlock(_ lease: LockLease) async throws -> Bool {
    lease.invalidate()
    let session = live[SessionRef(group: lease.group, id: lease.session)]
    session?.remove(lease)
    // Until the release is answered, another acquire of the lock uses another session: one sent in this session
    // meanwhile could be applied before the release and answered with the grant the release then ends.
    session?.begin(lease.name)
    let response: (value: LockResponse, index: UInt64)
    do {
      response = try await run(
        .release(lock: lease.name, session: lease.session, token: lease.token), in: lease.group)
    } catch {
      if let session {
        cleanUp(lease.name, in: session, token: lease.token)
        session.end(lease.name)
      }
      throw error
    }
    if let session {
      session.end(lease.name)
      await closeIfIdle(session)
    }
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
    let enclosing = Self.enclosingLeases + [EnclosingLease(host: ObjectIdentifier(host), lease: lease)]
    let outcome: Result<T, any Error> = await withTaskGroup(of: Result<T, any Error>?.self) { group in
      group.addTask {
        do {
          return .success(try await Self.$enclosingLeases.withValue(enclosing) { try await body(lease.token) })
        } catch {
          return .failure(error)
        }
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

  /// Closes every session (their locks are released at once) and stops renewing them. A session still being
  /// opened is closed as soon as it is open, and the call that was opening it throws ``LockClientError/closed``
  /// (calls that were waiting for that session open a new one); later calls open new sessions.
  public func close() async {
    closes += 1
    let all = live
    live = [:]
    sessions = [:]
    for task in keepAlives.values { task.cancel() }
    keepAlives = [:]
    for task in cleanUps.values { task.cancel() }  // Closing the sessions ends their waits and holds.
    cleanUps = [:]
    cleanUpSessions = [:]
    for ref in all.keys.sorted(by: { ($0.group, $0.id) < ($1.group, $1.id) }) {
      guard let session = all[ref] else { continue }
      session.lose()
      _ = try? await run(.closeSession(session: session.id), in: session.group)
    }
  }

  /// The state of lock `name` (holders with their tokens, waiters in order), read linearizably.
  public func status(of name: String) async throws -> LockStatus? {
    try await lockStatus(name, in: try await host.group(for: name, service: LockService.name))
  }

  // MARK: - Internals

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
    let hostID = ObjectIdentifier(host)
    let enclosing = Self.enclosingLeases.filter { $0.host == hostID && $0.lease.name == name && $0.lease.isValid }
    if let held = enclosing.last(where: { $0.lease.mode == .exclusive || mode == .exclusive }) {
      throw LockClientError.reentrant(lock: name, held: held.lease.mode, requested: mode)
    }
    // A permit inside holds of every permit (one, for a semaphore of one) could only wait for its own callers.
    if case .semaphore(let permits) = mode, let held = enclosing.last,
      enclosing.count(where: { $0.lease.mode == mode }) >= Int(permits)
    {
      throw LockClientError.reentrant(lock: name, held: held.lease.mode, requested: mode)
    }
    let group = try await host.group(for: name, service: LockService.name)
    let started = clock.monotonicNanos()
    let end = started &+ wait.nanoseconds
    for _ in 0..<3 {
      let session = try await session(toAcquire: name, in: group, ttl: ttl)
      let attempt: Result<AcquireStep, any Error>
      do {
        attempt = .success(try await acquire(name, mode: mode, wait: wait, until: end, in: session))
      } catch {
        attempt = .failure(error)
      }
      session.end(name)
      await closeIfIdle(session)
      switch attempt {
      case .success(.done(let lease)): return lease
      case .success(.again): continue
      case .failure(let error): throw error
      }
    }
    throw LockClientError.sessionLost(lock: name)  // Its sessions expired three times in a row.
  }

  /// How one attempt at acquiring a lock in a session ended.
  private enum AcquireStep {
    /// With this lease, or with none (busy, or the wait ran out).
    case done(LockLease?)
    /// The session expired: try again.
    case again
  }

  private func acquire(_ name: String, mode: LockMode, wait: Duration, until end: UInt64, in session: Session)
    async throws -> AcquireStep
  {
    let waitMillis = UInt64(clamping: wait.nanoseconds / 1_000_000)
    let response: (value: LockResponse, index: UInt64)
    do {
      response = try await run(
        .acquire(lock: name, session: session.id, mode: mode, wait: waitMillis > 0, waitTimeoutMillis: waitMillis),
        in: session.group)
    } catch {
      // The acquire may have been applied: the session may now wait for or hold the lock, for no call. Undo that
      // for this lock alone; retiring the session would leave it to be granted, and kept, while the session's other
      // leases live.
      cleanUp(name, in: session, token: nil)
      throw error
    }
    switch response.value {
    case .granted(let grant):
      return .done(try await deliver(grant, in: session))
    case .busy:
      return .done(nil)
    case .queued:
      // A failure to leave the queue is cleaned up by `stopWaiting`; every other failure ends the wait.
      // The acquire's entry queued the wait: its index names the wait for a cancel.
      return .done(
        try await awaitGrant(name, session: session, queuedAt: response.index, after: response.index, until: end))
    case .sessionExpired:
      forget(session)
      return .again
    case .failed(let error):
      throw LockClientError.refused(error)
    default:
      throw LockClientError.unexpected("\(response.value)")
    }
  }

  /// How one watch for the end of a wait ended.
  private enum WaitOutcome {
    /// The lock was granted.
    case granted(LockGrant)
    /// The members ended the wait without a grant: its timeout (in log time) passed.
    case timedOut
    /// The session is gone at the members (it expired or was closed).
    case sessionGone
  }

  /// Waits for the entry that grants `name` to `session` (or ends its wait), watching its key; checks the session's
  /// state between watches, in case a notification was missed (a member restarted, the watch moved elsewhere), and
  /// ends the wait if the session no longer waits for the lock. A watch that fails moves to the next member of the
  /// group. Gives up at `end`, when the session is given up, or when the task is cancelled.
  private func awaitGrant(_ name: String, session: Session, queuedAt: UInt64, after: UInt64, until end: UInt64)
    async throws -> LockLease?
  {
    var after = after
    var member: NodeID?
    // Status reads failed in a row: a truncated watch answers at once, so without a growing pause a read that
    // fails at once (a rejection) would make the loop ask about 20 times a second until the lock's deadline.
    var statusFailures = 0
    let key = LockService.grantKey(lock: name, session: session.id)
    while true {
      let now = clock.monotonicNanos()
      if now >= end || session.isClosed || Task.isCancelled {
        let lost = session.isClosed && !Task.isCancelled
        guard let lease = try await stopWaiting(name, session: session, queuedAt: queuedAt) else {
          // Not the wait the caller allowed running out: the session it waited in is gone.
          if lost { throw LockClientError.sessionLost(lock: name) }
          return nil
        }
        return lease
      }
      let remaining = Duration.nanoseconds(Int64(clamping: end - now))
      let outcome: WaitOutcome?
      do {
        outcome = try await watchForGrant(name, session: session, key: key, after: &after, at: member, remaining)
        statusFailures = 0
      } catch {
        if error is StatusReadFailed { statusFailures += 1 }
        member = await nextMember(after: member, in: session.group)
        try? await clock.sleep(for: min(remaining, Self.waitRetryPause(statusFailures: statusFailures)))
        continue
      }
      switch outcome {
      case .granted(let grant)?: return try await deliver(grant, in: session)
      case .timedOut?: return nil
      case .sessionGone?: throw LockClientError.sessionLost(lock: name)
      case nil: continue
      }
    }
  }

  /// The pause before the next watch after a failed one, or after `statusFailures` failed status reads in a row:
  /// 50 ms, doubling with each such failure up to 1.6 s.
  static func waitRetryPause(statusFailures: Int) -> Duration {
    .milliseconds(50 << min(max(0, statusFailures - 1), 5))
  }

  /// A status read after a truncated watch failed (with `underlying`).
  private struct StatusReadFailed: Error {
    var underlying: any Error
  }

  /// One watch for the end of `session`'s wait for `name`: its grant (from the watch, or from the session's state
  /// when the watch saw nothing, or said at once that it may have missed something), its end without a grant, or
  /// nil when nothing came.
  private func watchForGrant(
    _ name: String, session: Session, key: String, after: inout UInt64, at member: NodeID?, _ remaining: Duration
  ) async throws -> WaitOutcome? {
    let (payloads, index, truncated) = try await host.watch(
      key, service: LockService.name, group: session.group, after: after, at: member,
      timeout: min(remaining, options.watchInterval))
    // A truncated watch moves past what it covered only once the session's state is read (below): if the read
    // fails, the next watch (at another member) starts from where this one did, and a grant the truncation hid
    // still reaches it, rather than only the poll after `watchInterval`.
    if !truncated { after = max(after, index) }
    for payload in payloads {
      switch try LockEvent(wireBytes: payload) {
      case .granted(let grant) where grant.lock == name && grant.session == session.id:
        return .granted(grant)
      case let event where event == .waitTimedOut(lock: name, session: session.id):
        return .timedOut
      default:
        continue
      }
    }
    // A truncated watch (the member may have missed the grant: it installed a snapshot, restarted, or dropped old
    // notifications) answers at once: the session's state says what happened, without waiting for a poll.
    guard payloads.isEmpty || truncated else { return nil }
    let read: LockSessionStatus?
    do {
      read = try await sessionStatus(session)
    } catch {
      throw StatusReadFailed(underlying: error)
    }
    guard let status = read else { return .sessionGone }
    after = max(after, index)
    if let grant = status.holds.first(where: { $0.lock == name }) { return .granted(grant) }
    // Only this call waits for the lock in the session, so a wait that is gone ended by its own timeout.
    guard status.waits.contains(where: { $0.lock == name }) else { return .timedOut }
    return nil
  }

  /// Leaves the queue of `name`: the wait queued by entry `queuedAt`, and no later one (a cancel that reaches the
  /// members late, after another call of the client queued for the lock in the session, leaves that wait alone).
  /// A lock granted just before the cancel is ours: it is returned, unless the task was cancelled, in which case it
  /// is released and the call throws `CancellationError`. If the cluster cannot be asked, the session may still
  /// wait for the lock (or be granted it): a clean-up in the background sees to it
  /// (``cleanUp(_:in:token:queuedAt:)``).
  private func stopWaiting(_ name: String, session: Session, queuedAt: UInt64) async throws -> LockLease? {
    let grant: LockGrant?
    do {
      grant = try await leaveQueue(name, session: session, queuedAt: queuedAt)
    } catch {
      // The wait may be another entry's than `queuedAt` (see `leaveQueue`): the clean-up finds it either way.
      cleanUp(name, in: session, token: nil, queuedAt: queuedAt)
      throw error
    }
    guard let grant else {
      if Task.isCancelled { throw CancellationError() }
      return nil
    }
    if Task.isCancelled {
      _ = try await unlock(session.lease(for: grant))
      throw CancellationError()
    }
    return try await deliver(grant, in: session)
  }

  /// Cancels `session`'s wait for `name`, queued by entry `queuedAt`; returns the grant of `name` the session holds
  /// if the wait ended in one first. If the cancel finds no such wait but the session still waits for the lock, that
  /// wait is this call's all the same (the lock is reserved to it in the session): the entry that queued it was not
  /// the acquire's answer index (a duplicate answered from a snapshot that did not remember indexes, or an acquire
  /// that found a wait of the session already queued, left by a call whose outcome was unknown). It is cancelled by
  /// the entry the lock's status shows, a few times at most.
  /// - Throws: when the members cannot be asked, or the session still waits after those tries.
  private func leaveQueue(_ name: String, session: Session, queuedAt: UInt64) async throws -> LockGrant? {
    var wait = queuedAt
    for _ in 0..<Self.leaveQueueTries {
      let cancelled = try await run(.cancelWait(lock: name, session: session.id, queuedAt: wait), in: session.group)
      if case .waitCancelled(true) = cancelled.value { return nil }
      guard let status = try await sessionStatus(session) else { return nil }
      if let grant = status.holds.first(where: { $0.lock == name }) { return grant }
      guard status.waits.contains(where: { $0.lock == name }) else { return nil }
      guard
        let shown = try await lockStatus(name, in: session.group)?.waiters.first(where: { $0.session == session.id })
      else { continue }
      wait = shown.queuedAt
    }
    throw LockClientError.unexpected(
      "session \(session.id) still waits for \(name) after \(Self.leaveQueueTries) cancels")
  }

  /// The lease for `grant`, unless the client has given `session` up meanwhile (its deadline passed, or it was
  /// closed): such a lease could not be relied on for a moment, and nothing renews the session any more. The
  /// session is then closed at the members, which hands the lock on at once rather than when the session expires,
  /// and the call throws ``LockClientError/sessionLost(lock:)``.
  private func deliver(_ grant: LockGrant, in session: Session) async throws -> LockLease {
    let lease = session.lease(for: grant)
    guard session.isClosed else { return lease }
    // The client already counts every lease of the session as lost. If the members cannot be told, the session
    // expires by itself.
    _ = try? await run(.closeSession(session: session.id), in: session.group)
    throw LockClientError.sessionLost(lock: grant.lock)
  }

  /// The member after `member` in `group` (the first if `member` is `nil`), for a watch to move to.
  private func nextMember(after member: NodeID?, in group: GroupID) async -> NodeID? {
    guard let members = await host.map?.group(group)?.members, !members.isEmpty else { return nil }
    guard let member, let i = members.firstIndex(of: member) else { return members.first }
    return members[(i + 1) % members.count]
  }

  /// The state of lock `name` in `group`; nil if it has neither holders nor waiters.
  private func lockStatus(_ name: String, in group: GroupID) async throws -> LockStatus? {
    let (bytes, _) = try await host.query(LockQuery.lock(name).wireBytes(), service: LockService.name, group: group)
    guard case .lock(let status) = try LockQueryResult(wireBytes: bytes) else {
      throw LockClientError.unexpected("not a lock status")
    }
    return status
  }

  /// `session`'s holds and waits at the members; nil if it is gone there.
  private func sessionStatus(_ session: Session) async throws -> LockSessionStatus? {
    let (bytes, _) = try await host.query(
      LockQuery.session(session.id).wireBytes(), service: LockService.name, group: session.group)
    guard case .session(let status) = try LockQueryResult(wireBytes: bytes) else {
      throw LockClientError.unexpected("not a session status")
    }
    return status
  }

  // MARK: - Clean-up after unknown outcomes

  /// Makes sure, in the background, that `session` neither waits for nor holds `name` after a call about it failed
  /// without a known outcome (a cancelled wait or a release during a leader election, say). With `token` it
  /// retries the release of that grant; without, it leaves the queue (the wait queued by entry `queuedAt`, or
  /// if that is unknown the session's wait the lock's status shows) and releases whatever grant of `name` the
  /// session holds (no lease stands for it: the lock is taken for the clean-up meanwhile, so no other call of the
  /// client acquires it in this session). All are owner-, token- or entry-checked at the members, so a retry that
  /// comes after the first one was applied, even once another call waits in the session, changes nothing. Gives up
  /// after a few tries with growing pauses, and then retires the session (closed once idle, or left to expire).
  private func cleanUp(_ name: String, in session: Session, token: FencingToken?, queuedAt: UInt64? = nil) {
    session.begin(name)
    let id = nextCleanUp
    nextCleanUp += 1
    cleanUpSessions[id] = SessionRef(group: session.group, id: session.id)
    cleanUps[id] = runtime.detached { [weak self] in
      await self?.runCleanUp(name, in: session, token: token, queuedAt: queuedAt, id: id)
    }
  }

  private func runCleanUp(_ name: String, in session: Session, token: FencingToken?, queuedAt: UInt64?, id: UInt64)
    async
  {
    var pause = Duration.milliseconds(100)
    var done = false
    for attempt in 0..<Self.cleanUpAttempts where !done && !session.isClosed && !Task.isCancelled {
      if attempt > 0 {
        try? await clock.sleep(for: pause)
        pause = min(pause * 2, Self.cleanUpMaxBackOff)
      }
      done = (try? await cleanUpOnce(name, in: session, token: token, queuedAt: queuedAt)) != nil
    }
    cleanUps[id] = nil
    cleanUpSessions[id] = nil
    session.end(name)
    if !done && !session.isClosed { retire(session) }
    await closeIfIdle(session)
  }

  private func cleanUpOnce(_ name: String, in session: Session, token: FencingToken?, queuedAt: UInt64?)
    async throws
  {
    if let token {
      _ = try await run(.release(lock: name, session: session.id, token: token), in: session.group)
      return
    }
    // The lock is taken in the session for this clean-up, so a wait of the session for it is the failed call's,
    // whichever entry queued it (`queuedAt` may not be that entry: see `leaveQueue`). Done only once the session
    // neither waits for nor holds the lock (an acquire of unknown outcome may be applied after a status was read).
    var wait = queuedAt
    for _ in 0..<Self.leaveQueueTries {
      if let queued = wait {
        let cancelled = try await run(
          .cancelWait(lock: name, session: session.id, queuedAt: queued), in: session.group)
        wait = nil
        if case .waitCancelled(true) = cancelled.value { continue }  // Checked again in the next turn.
      }
      guard let status = try await sessionStatus(session) else { return }  // Gone, with its waits and holds.
      if let hold = status.holds.first(where: { $0.lock == name }) {
        _ = try await run(.release(lock: name, session: session.id, token: hold.token), in: session.group)
        continue
      }
      guard status.waits.contains(where: { $0.lock == name }) else { return }
      wait = try await lockStatus(name, in: session.group)?.waiters.first { $0.session == session.id }?.queuedAt
    }
    throw LockClientError.unexpected("session \(session.id) still has \(name) after \(Self.leaveQueueTries) tries")
  }

  // MARK: - Sessions

  /// Stops renewing `session` and loses its leases.
  private func forget(_ session: Session) {
    let key = SessionKey(group: session.group, ttlMillis: UInt64(session.ttl.nanoseconds / 1_000_000))
    let ref = SessionRef(group: session.group, id: session.id)
    sessions[key]?.removeAll { $0 === session }
    if sessions[key]?.isEmpty == true { sessions[key] = nil }
    if live[ref] === session { live[ref] = nil }
    keepAlives.removeValue(forKey: ref)?.cancel()
    session.lose()
  }

  /// Takes `session` out of use for new acquires after a call on it failed without a known outcome; the session is
  /// closed once it is idle (which releases whatever the failed call left behind), or left to expire (see
  /// ``closeIfIdle(_:)``).
  private func retire(_ session: Session) {
    let key = SessionKey(group: session.group, ttlMillis: UInt64(session.ttl.nanoseconds / 1_000_000))
    sessions[key]?.removeAll { $0 === session }
    if sessions[key]?.isEmpty == true { sessions[key] = nil }
    session.state.withLock { $0.retiring = true }
  }

  /// Closes `session` if it is idle and either retiring or not the first session of its group: a session that
  /// only served a concurrent call is not kept.
  private func closeIfIdle(_ session: Session) async {
    let key = SessionKey(group: session.group, ttlMillis: UInt64(session.ttl.nanoseconds / 1_000_000))
    guard session.isIdle, session.isRetiring || sessions[key]?.first !== session else { return }
    forget(session)
    // If the cluster cannot be told, the session expires by itself one TTL after its last renewal.
    _ = try? await run(.closeSession(session: session.id), in: session.group)
  }

  /// A session for an acquire of `name`, with `name` reserved in it (pair with ``LockClientSession/end(_:)``): the
  /// oldest in which `name` is neither held nor has a call in flight, or a new one. Calls that find none while a
  /// session is being opened wait for that one, so that concurrent first calls share a session.
  private func session(toAcquire name: String, in group: GroupID, ttl: Duration) async throws -> Session {
    let key = SessionKey(group: group, ttlMillis: UInt64(ttl.nanoseconds / 1_000_000))
    while true {
      if let free = sessions[key]?.first(where: { $0.reserve(name) }) { return free }
      if let pending = opening[key]?.task {
        // The task leaves `opening` before it finishes, so this loop cannot spin on a finished task (which would
        // hold the actor, and with it the opener, for ever). If it failed, the next turn opens one itself.
        _ = await pending.value
        continue
      }
      // Every open session of the group and TTL is taken for `name` (by a lease, a call, or a clean-up). Sessions
      // taken by leases and calls in flight are the caller's own concurrency, which is not refused; but at the limit
      // of sessions stuck with a clean-up (or retiring after one gave up), refuse rather than open more: an outage
      // would otherwise grow them with the call rate.
      let stuck = Set(cleanUpSessions.values)
      let blocked = live.values.count {
        $0.group == group && UInt64($0.ttl.nanoseconds / 1_000_000) == key.ttlMillis
          && ($0.isRetiring || stuck.contains(SessionRef(group: $0.group, id: $0.id)))
      }
      let limit = max(1, options.maxSessions)
      guard blocked < limit else { throw LockClientError.tooManySessions(limit: limit) }
      let number = nextOpening
      nextOpening += 1
      let task = runtime.detached { [self] () async -> Result<Session, any Error> in
        let result: Result<Session, any Error>
        do { result = .success(try await openSession(key, in: group, ttl: ttl)) } catch { result = .failure(error) }
        await openingEnded(key, number: number)
        return result
      }
      opening[key] = (number, task)
      let opened = await task.value
      // Another call waiting for the same session may have reserved `name` in it first: then look again.
      if try opened.get().reserve(name) { return try opened.get() }
    }
  }

  /// Notes that opening `number` for `key` ended (before its task finishes).
  private func openingEnded(_ key: SessionKey, number: UInt64) {
    if opening[key]?.number == number { opening[key] = nil }
  }

  /// Opens a session and adds it to the sessions new acquires use.
  private func openSession(_ key: SessionKey, in group: GroupID, ttl: Duration) async throws -> Session {
    let sentAt = clock.monotonicNanos()
    let closesBefore = closes
    let response = try await run(.openSession(ttlMillis: key.ttlMillis), in: group)
    guard case .sessionOpened(let id, _) = response.value else {
      if case .failed(let error) = response.value { throw LockClientError.refused(error) }
      throw LockClientError.unexpected("\(response.value)")
    }
    if closes != closesBefore {
      // Closed while this session was being opened: registered now, it would be renewed (and keep the client
      // alive) with nobody to close it.
      _ = try? await run(.closeSession(session: id), in: group)
      throw LockClientError.closed
    }
    let session = Session(
      id: id, group: group, ttl: ttl, validUntil: leaseDeadline(sentAt: sentAt, ttl: ttl), clock: clock)
    let ref = SessionRef(group: group, id: id)
    sessions[key, default: []].append(session)
    live[ref] = session
    keepAlives[ref] = runtime.detached { [weak self] in await self?.keepAlive(session) }
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
      guard !Task.isCancelled, !session.isClosed else { return }
      guard session.isWithinDeadline else { continue }
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
