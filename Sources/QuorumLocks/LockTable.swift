public import QuorumCore

/// The replicated lock table: named locks held by owner sessions with TTLs, FIFO waiter queues, and fencing
/// tokens, as a deterministic ``QuorumCore/StateMachine``.
///
/// **Sessions.** An owner session (``LockCommand/openSession(ttlMillis:)``) is a lease: it lives `ttl` of log
/// time after its last keep-alive, and when it dies every lock it holds is released and every wait it has is
/// cancelled. Its identifier is the log index of the entry that opened it.
///
/// **Locks.** A name is a reader/writer lock (one ``LockMode/exclusive`` holder or any number of
/// ``LockMode/shared`` ones) or a counting semaphore (``LockMode/semaphore(permits:)``, one permit per holding
/// session), fixed while the lock has holders or waiters. A session holds a lock at most once: acquiring it
/// again returns the same grant and token (re-entry).
///
/// **Fair queues.** Waiters queue strictly first in, first out: a request that could be granted alongside the
/// holders still waits behind an earlier waiter, so writers do not starve; the shared requests at the head of
/// the queue are granted together. A release, a session closing or expiring, a wait timing out or being
/// cancelled grants the next waiters in the same entry: nobody polls.
///
/// **Fencing tokens.** A grant's token is the log index of the entry that made it, so later grants of a lock
/// carry larger tokens, across leader changes, snapshots and restarts. A lock's holders share a token only if
/// they were granted in the same entry, which happens only for shared holders and semaphore permits.
///
/// **Time** is the log's: ``QuorumCore/ApplyContext/timestampMillis``, made monotonic by
/// ``QuorumCore/ReplicatedStateMachine`` (and again here). Each apply first ends the sessions whose expiry is at
/// or before the entry's log time (at most ``LockTableLimits/maxExpiriesPerEntry`` of them; the rest in the
/// following entries) and the waits whose timeout has passed (at most ``LockTableLimits/maxWaitTimeoutsPerEntry``;
/// a due wait left for later is never granted), then, only under the opt-in ``LockTableLimits/endDueAtFullLimits``,
/// ends more of what is due and in the way of a command that would find a limit reached, then applies the command,
/// then grants the waiters
/// that those changes let through, once per lock. A session is over from the first entry at or after its expiry
/// even while the work of ending it waits: commands naming it are answered as for an expired session, a query
/// finds no such session, and none of its waits is granted (a queue whose head is such a waiter waits until its
/// session is ended). So a waiter whose session has expired is
/// never granted, and an exclusive holder's token is never reused within an entry. Due sessions and waits are
/// found through heaps ordered by (deadline, identifier): an entry with nothing due costs O(1) for time, and
/// every command costs O(log n) in the number of sessions and locks, plus the length of one lock's queue
/// (bounded by ``LockTableLimits/maxWaitersPerLock``). ``nextDeadlineMillis`` tells the leader when to propose
/// ``LockCommand/advanceTime`` so that expiries happen on time when nothing else is written.
///
/// **Events.** Each apply records what happened to clients other than the command's author (grants to queued
/// waiters, releases, expiries, wait timeouts) as ``LockEvent``s. The apply path is their only writer; the
/// host must drain them with ``takeEvents()`` after every apply (they accumulate until drained), and never
/// replicates them: they are not part of the state or its snapshots.
public struct LockTable: StateMachine {
  struct Session: Hashable, Sendable {
    var ttlMillis: UInt64
    var expiresAtMillis: UInt64
    /// The principal whose request opened it (``QuorumCore/ApplyContext/principal``): the only one that may use it.
    var owner: String?
    /// Restored from a snapshot of the first format, which did not record owners: any principal may use it.
    var ownerUnknown = false
    /// Names of the locks held. Derived from the locks (rebuilt on restore).
    var holds: Set<String> = []
    /// Names of the locks waited for. Derived from the locks (rebuilt on restore).
    var waits: Set<String> = []

    var load: Int { holds.count + waits.count }
  }

  struct Holder: Hashable, Sendable {
    var mode: LockMode
    var token: FencingToken
  }

  struct Waiter: Hashable, Sendable {
    var session: LockSessionID
    var mode: LockMode
    /// The index of the entry that queued it; unique, so it also names the waiter in the timeout heap.
    var queuedAt: UInt64
    var timeoutAtMillis: UInt64?
  }

  struct Lock: Hashable, Sendable {
    var kind: LockKind
    var lastToken: FencingToken = .zero
    var holders: [LockSessionID: Holder] = [:]
    var waiters: [Waiter] = []

    var hasExclusiveHolder: Bool { holders.count == 1 && holders.first?.value.mode == .exclusive }

    /// Whether a request in `mode` is compatible with the current holders (ignoring the queue).
    func admits(_ mode: LockMode) -> Bool {
      switch mode {
      case .exclusive: return holders.isEmpty
      case .shared: return !hasExclusiveHolder
      case .semaphore(let permits): return holders.count < Int(permits)
      }
    }
  }

  struct WaiterRef: Hashable, Sendable {
    var lock: String
    var session: LockSessionID
  }

  private enum AcquireDecision {
    case respond(LockResponse)
    case grant(createLock: Bool)
    case enqueue
  }

  /// The bounds this table enforces.
  public let limits: LockTableLimits
  /// The log time of the last applied entry: the largest timestamp seen.
  public internal(set) var logTimeMillis: UInt64 = 0
  /// The log index of the last applied entry (0 before any).
  public internal(set) var appliedIndex: UInt64 = 0

  var sessions: [LockSessionID: Session] = [:]
  var locks: [String: Lock] = [:]
  /// (expiry, session) for every session, plus stale entries left by keep-alives.
  var sessionExpiries = DeadlineHeap()
  /// (timeout, queuedAt) for every waiter with a timeout, plus stale entries left by waiters that went.
  var waiterTimeouts = DeadlineHeap()
  /// Waiters with a timeout, by ``Waiter/queuedAt``.
  var timedWaiters: [UInt64: WaiterRef] = [:]

  var events: [LockEvent] = []
  /// Locks whose holders or waiters changed during the current apply; empty between applies.
  var touched: Set<String> = []

  /// Creates an empty table with the default ``LockTableLimits``.
  public init() { limits = LockTableLimits() }

  /// Creates an empty table with `limits`.
  /// - Throws: ``QuorumCore/ConfigurationError`` if a limit is unusable.
  public init(limits: LockTableLimits) throws(ConfigurationError) {
    try limits.validate()
    self.limits = limits
  }

  /// The earliest log time at which a session expires or a wait times out, if any: the leader proposes
  /// ``LockCommand/advanceTime`` when its log time reaches it, unless other commands are being written anyway.
  public var nextDeadlineMillis: UInt64? {
    switch (sessionExpiries.min?.millis, waiterTimeouts.min?.millis) {
    case (let s?, let w?): return Swift.min(s, w)
    case (let s?, nil): return s
    case (nil, let w?): return w
    case (nil, nil): return nil
    }
  }

  /// The events recorded since the last ``takeEvents()``, without clearing them.
  public var pendingEvents: [LockEvent] { events }

  /// Returns the events recorded since the last call, in the order they happened, and clears them.
  ///
  /// The host calls this after every apply and tells the clients concerned: a waiter that was granted, a
  /// holder whose session expired, a waiter whose timeout passed.
  public mutating func takeEvents() -> [LockEvent] {
    let taken = events
    events = []
    return taken
  }

  public mutating func apply(_ command: LockCommand, context: ApplyContext) -> LockResponse {
    // Fencing tokens are entry indexes: a repeated or decreasing index would hand out a token twice.
    precondition(
      context.index > appliedIndex,
      "LockTable: entry \(context.index) applied after entry \(appliedIndex) (\(command)); indexes must increase")
    appliedIndex = context.index
    logTimeMillis = Swift.max(logTimeMillis, context.timestampMillis)
    expireSessions()
    expireWaits()
    forgetFreeLocks()
    let refused = refusal(of: command, by: context.principal)
    // Opt-in, replicated: a group created without it applies as builds before it did (they always refused).
    if refused == nil, limits.endDueAtFullLimits { makeRoom(for: command) }
    var response = refused ?? execute(command, principal: context.principal)
    grantTouchedLocks()
    if case .queued = response, case .acquire(let lock, let session, _, _, _) = command {
      // Waiters ahead may have left in this entry's expiry phase; report where the request ended up.
      response = standing(of: session, on: lock)
    }
    dropStaleDeadlines()
    return response
  }

  // MARK: - Time

  /// Ends at most ``LockTableLimits/maxExpiriesPerEntry`` of the sessions that are due, earliest deadline first
  /// (then lowest identifier): the rest stay due, over for every command (``liveSession(_:)``), and are ended by the
  /// following entries.
  private mutating func expireSessions() {
    var ended = 0
    while ended < limits.maxExpiriesPerEntry, endEarliestDueSession() { ended += 1 }
  }

  /// Ends the due session with the earliest deadline (then the lowest identifier); returns whether there was one.
  private mutating func endEarliestDueSession() -> Bool {
    let now = logTimeMillis
    while let top = sessionExpiries.min, top.millis <= now {
      sessionExpiries.popMin()
      let id = LockSessionID(top.id)
      guard sessions[id]?.expiresAtMillis == top.millis else { continue }  // renewed or closed since
      endExpiredSession(id)
      return true
    }
    return false
  }

  /// Ends session `id` for its expiry: releases its holds and ends its waits (its heap entry goes stale).
  private mutating func endExpiredSession(_ id: LockSessionID) {
    let lost = dropSession(id)
    events.append(.expired(session: id, lost: lost))
  }

  /// Makes room for `command` when it would find a limit reached while sessions or waits are due but not yet ended
  /// (left by a bound on ``LockTableLimits/maxExpiriesPerEntry`` or ``LockTableLimits/maxWaitTimeoutsPerEntry``):
  /// those are over, and must not refuse live clients. An open that finds ``LockTableLimits/maxSessions`` sessions
  /// ends due sessions, earliest deadline first; an acquire of a new lock that finds ``LockTableLimits/maxLocks``
  /// locks does the same until a lock is freed; an acquire that would queue behind a full queue
  /// (``LockTableLimits/maxWaitersPerLock``) ends the waits of that queue that are due, and the due sessions of its
  /// waiters, first in line first. Each within a budget of the same bound again, so an entry's work stays bounded.
  /// "Due" is judged by the entry's log time, so every replica ends the same. Without a bound nothing is left due
  /// once the entry's expiries ran, and this changes nothing. Runs only under ``LockTableLimits/endDueAtFullLimits``,
  /// and after `refusal(of:by:)` (which ending due sessions cannot change: it already treats them as over). The
  /// open branch is a guard: the entry's own expiries end a due session whenever one is due, so it never acts.
  private mutating func makeRoom(for command: LockCommand) {
    switch command {
    case .openSession:
      var budget = limits.maxExpiriesPerEntry
      while sessions.count >= limits.maxSessions, budget > 0, endEarliestDueSession() { budget -= 1 }
    case .acquire(let name, let id, _, _, _):
      guard liveSession(id) != nil else { return }
      guard let lock = locks[name] else {
        var budget = limits.maxExpiriesPerEntry
        while locks.count >= limits.maxLocks, budget > 0, endEarliestDueSession() {
          budget -= 1
          forgetFreeLocks()
        }
        return
      }
      guard lock.waiters.count >= limits.maxWaitersPerLock, lock.holders[id] == nil,
        !lock.waiters.contains(where: { $0.session == id })
      else { return }
      var sessionBudget = limits.maxExpiriesPerEntry
      var waitBudget = limits.maxWaitTimeoutsPerEntry
      for waiter in lock.waiters {
        guard (locks[name]?.waiters.count ?? 0) >= limits.maxWaitersPerLock else { break }
        if isDue(waiter), waitBudget > 0 {
          removeWaiter(waiter.session, from: name)
          events.append(.waitTimedOut(lock: name, session: waiter.session))
          waitBudget -= 1
        } else if let session = sessions[waiter.session], isDue(session), sessionBudget > 0 {
          endExpiredSession(waiter.session)
          sessionBudget -= 1
        }
      }
      forgetFreeLocks()
    case .keepAlive, .closeSession, .release, .cancelWait, .advanceTime:
      return
    }
  }

  /// Whether `session`'s expiry has come: it is over, though the work of ending it may wait for a later entry.
  func isDue(_ session: Session) -> Bool { session.expiresAtMillis <= logTimeMillis }

  /// The session `id` if it is open and not due: a due session is answered as an expired one.
  func liveSession(_ id: LockSessionID) -> Session? {
    guard let session = sessions[id], !isDue(session) else { return nil }
    return session
  }

  /// Ends at most ``LockTableLimits/maxWaitTimeoutsPerEntry`` of the waits whose timeout has passed, earliest
  /// timeout first (then earliest queued): the rest stay due, never granted (``grantWaiters(of:)``), and are ended by
  /// the following entries, or first by an acquire or a cancel of their session for their lock
  /// (``endDueWait(of:on:)``).
  private mutating func expireWaits() {
    let now = logTimeMillis
    var ended = 0
    while ended < limits.maxWaitTimeoutsPerEntry, let top = waiterTimeouts.min, top.millis <= now {
      waiterTimeouts.popMin()
      guard let waiter = timedWaiters[top.id] else { continue }  // granted or gone since
      removeWaiter(waiter.session, from: waiter.lock)
      events.append(.waitTimedOut(lock: waiter.lock, session: waiter.session))
      ended += 1
    }
  }

  /// Whether `waiter`'s timeout has come: it is over, though taking it out of its queue may wait for a later entry.
  func isDue(_ waiter: Waiter) -> Bool { waiter.timeoutAtMillis.map { $0 <= logTimeMillis } ?? false }

  /// Ends the wait of `session` for `name` if its timeout has passed (left by the bound on wait timeouts per
  /// entry), as the start of the entry would have without the bound: an acquire or a cancel then finds no wait.
  /// Returns whether it did.
  @discardableResult
  private mutating func endDueWait(of session: LockSessionID, on name: String) -> Bool {
    guard liveSession(session)?.waits.contains(name) == true,
      let waiter = locks[name]?.waiters.first(where: { $0.session == session }), isDue(waiter)
    else { return false }
    removeWaiter(session, from: name)
    events.append(.waitTimedOut(lock: name, session: session))
    return true
  }

  /// Pops stale entries off both heaps so that their tops are live (making ``nextDeadlineMillis`` exact), and
  /// rebuilds a heap that has grown to mostly stale entries.
  private mutating func dropStaleDeadlines() {
    while let top = sessionExpiries.min, sessions[LockSessionID(top.id)]?.expiresAtMillis != top.millis {
      sessionExpiries.popMin()
    }
    while let top = waiterTimeouts.min, timedWaiters[top.id] == nil {
      waiterTimeouts.popMin()
    }
    if sessionExpiries.isBloated(liveCount: sessions.count) { rebuildSessionExpiries() }
    if waiterTimeouts.isBloated(liveCount: timedWaiters.count) { rebuildWaiterTimeouts() }
  }

  mutating func rebuildSessionExpiries() {
    sessionExpiries.rebuild(sessions.map { Deadline(millis: $0.value.expiresAtMillis, id: $0.key.rawValue) })
  }

  mutating func rebuildWaiterTimeouts() {
    var live: [Deadline] = []
    live.reserveCapacity(timedWaiters.count)
    for lock in locks.values {
      for waiter in lock.waiters {
        if let timeout = waiter.timeoutAtMillis { live.append(Deadline(millis: timeout, id: waiter.queuedAt)) }
      }
    }
    waiterTimeouts.rebuild(live)
  }

  // MARK: - Commands

  /// The refusal of a command that names a session `principal` does not own, if it is one.
  private func refusal(of command: LockCommand, by principal: String?) -> LockResponse? {
    let named: LockSessionID
    switch command {
    case .keepAlive(let id), .closeSession(let id): named = id
    case .acquire(_, let id, _, _, _), .release(_, let id, _), .cancelWait(_, let id, _): named = id
    case .openSession, .advanceTime: return nil
    }
    // An unknown session is each command's own answer (expired).
    guard let session = liveSession(named), !session.ownerUnknown, session.owner != principal else { return nil }
    return .failed(.sessionNotOwned(named))
  }

  private mutating func execute(_ command: LockCommand, principal: String?) -> LockResponse {
    switch command {
    case .openSession(let ttl):
      return openSession(ttlMillis: ttl, owner: principal)
    case .keepAlive(let id):
      return keepAlive(id)
    case .closeSession(let id):
      guard liveSession(id) != nil else { return .sessionExpired(id) }
      let released = dropSession(id)
      for grant in released { events.append(.released(grant)) }
      return .sessionClosed(releasedLocks: released.count)
    case .acquire(let lock, let session, let mode, let wait, let timeout):
      if endDueWait(of: session, on: lock) { forgetFreeLocks() }  // the lock may be free now
      return acquire(lock, session: session, mode: mode, wait: wait, waitTimeoutMillis: timeout)
    case .release(let lock, let session, let token):
      return release(lock, session: session, token: token)
    case .cancelWait(let lock, let session, let queuedAt):
      endDueWait(of: session, on: lock)  // then a wait that timed out is not there to cancel
      guard liveSession(session)?.waits.contains(lock) == true else { return .waitCancelled(false) }
      if let queuedAt,
        locks[lock]?.waiters.contains(where: { $0.session == session && $0.queuedAt == queuedAt }) != true
      {
        return .waitCancelled(false)  // A late cancel of a wait that ended: the session's newer wait stays.
      }
      removeWaiter(session, from: lock)
      return .waitCancelled(true)
    case .advanceTime:
      return .timeAdvanced
    }
  }

  private mutating func openSession(ttlMillis ttl: UInt64, owner: String?) -> LockResponse {
    guard ttl >= limits.minTTLMillis, ttl <= limits.maxTTLMillis else {
      return .failed(
        .ttlOutOfRange(requestedMillis: ttl, minMillis: limits.minTTLMillis, maxMillis: limits.maxTTLMillis))
    }
    guard sessions.count < limits.maxSessions else { return .failed(.tooManySessions(limit: limits.maxSessions)) }
    let id = LockSessionID(appliedIndex)
    precondition(sessions[id] == nil, "LockTable: session \(id) opened twice (applied index \(appliedIndex))")
    let expires = logTimeMillis.addingSaturated(ttl)
    sessions[id] = Session(ttlMillis: ttl, expiresAtMillis: expires, owner: owner)
    sessionExpiries.push(Deadline(millis: expires, id: id.rawValue))
    return .sessionOpened(id, expiresAtMillis: expires)
  }

  private mutating func keepAlive(_ id: LockSessionID) -> LockResponse {
    guard liveSession(id) != nil else { return .sessionExpired(id) }
    let now = logTimeMillis
    let renewal = sessions.modify(id) { session -> (expires: UInt64, changed: Bool) in
      let expires = now.addingSaturated(session.ttlMillis)
      defer { session.expiresAtMillis = expires }
      return (expires, expires != session.expiresAtMillis)
    }
    guard let renewal else { return .sessionExpired(id) }
    if renewal.changed { sessionExpiries.push(Deadline(millis: renewal.expires, id: id.rawValue)) }
    return .keptAlive(expiresAtMillis: renewal.expires)
  }

  private mutating func acquire(
    _ name: String, session id: LockSessionID, mode: LockMode, wait: Bool, waitTimeoutMillis: UInt64?
  ) -> LockResponse {
    // A zero wait timeout means "do not wait".
    switch decideAcquire(name, session: id, mode: mode, wait: wait && waitTimeoutMillis != 0) {
    case .respond(let response):
      return response
    case .grant(let createLock):
      if createLock { locks[name] = Lock(kind: mode.kind) }
      return .granted(grant(name, to: id, mode: mode))
    case .enqueue:
      let waiter = Waiter(
        session: id, mode: mode, queuedAt: appliedIndex,
        timeoutAtMillis: waitTimeoutMillis.map { logTimeMillis.addingSaturated($0) })
      guard
        let position = locks.modify(
          name,
          { lock -> Int in
            lock.waiters.append(waiter)
            return lock.waiters.count - 1
          })
      else { preconditionFailure("LockTable: lock \(name) vanished while queueing \(id) at \(appliedIndex)") }
      sessions.modify(id) { _ = $0.waits.insert(name) }
      if let timeout = waiter.timeoutAtMillis {
        timedWaiters[waiter.queuedAt] = WaiterRef(lock: name, session: id)
        waiterTimeouts.push(Deadline(millis: timeout, id: waiter.queuedAt))
      }
      return .queued(position: position)
    }
  }

  /// Decides an acquire from the current state without changing it.
  private func decideAcquire(_ name: String, session id: LockSessionID, mode: LockMode, wait: Bool)
    -> AcquireDecision
  {
    guard let session = liveSession(id) else { return .respond(.sessionExpired(id)) }
    let bytes = name.utf8.count
    guard bytes > 0, bytes <= limits.maxNameBytes else {
      return .respond(.failed(.invalidName(bytes: bytes, maxBytes: limits.maxNameBytes)))
    }
    if case .semaphore(let permits) = mode, permits == 0 || permits > limits.maxSemaphorePermits {
      return .respond(.failed(.invalidPermits(requested: permits, max: limits.maxSemaphorePermits)))
    }
    let tooManyHolds = LockResponse.failed(.tooManyHolds(session: id, limit: limits.maxHoldsPerSession))
    guard let lock = locks[name] else {
      guard locks.count < limits.maxLocks else { return .respond(.failed(.tooManyLocks(limit: limits.maxLocks))) }
      guard session.load < limits.maxHoldsPerSession else { return .respond(tooManyHolds) }
      return .grant(createLock: true)
    }
    guard lock.kind.accepts(mode) else {
      if case .semaphore(let existing) = lock.kind, case .semaphore(let requested) = mode {
        return .respond(.failed(.permitsMismatch(lock: name, existing: existing, requested: requested)))
      }
      return .respond(.failed(.kindMismatch(lock: name, existing: lock.kind, requested: mode)))
    }
    if let holder = lock.holders[id] {
      guard holder.mode == mode else {
        return .respond(.failed(.conflictingReentry(lock: name, existing: holder.mode, requested: mode)))
      }
      return .respond(.granted(LockGrant(lock: name, session: id, mode: mode, token: holder.token)))
    }
    if let position = lock.waiters.firstIndex(where: { $0.session == id }) {
      let queued = lock.waiters[position].mode
      guard queued == mode else {
        return .respond(.failed(.conflictingReentry(lock: name, existing: queued, requested: mode)))
      }
      return .respond(.queued(position: position))
    }
    let grantable = lock.waiters.isEmpty && lock.admits(mode)
    guard grantable || wait else { return .respond(.busy) }
    guard session.load < limits.maxHoldsPerSession else { return .respond(tooManyHolds) }
    if grantable { return .grant(createLock: false) }
    guard lock.waiters.count < limits.maxWaitersPerLock else {
      return .respond(.failed(.tooManyWaiters(lock: name, limit: limits.maxWaitersPerLock)))
    }
    return .enqueue
  }

  /// Makes `id` a holder of the existing lock `name` with this entry's token.
  private mutating func grant(_ name: String, to id: LockSessionID, mode: LockMode) -> LockGrant {
    let token = FencingToken(appliedIndex)
    let previous = locks.modify(name) { lock -> (last: FencingToken, exclusive: Bool) in
      defer {
        lock.holders[id] = Holder(mode: mode, token: token)
        lock.lastToken = token
      }
      return (lock.lastToken, lock.hasExclusiveHolder)
    }
    guard let previous else { preconditionFailure("LockTable: granting \(name) to \(id) but the lock is gone") }
    // Only holders compatible with each other (shared, or semaphore permits) may share a token.
    precondition(
      previous.last < token || (previous.last == token && mode != .exclusive && !previous.exclusive),
      "LockTable: grant of \(name) as \(mode) to \(id) with \(token) after the lock's \(previous.last)")
    let expires = sessions.modify(id) { session -> UInt64 in
      session.holds.insert(name)
      return session.expiresAtMillis
    }
    precondition(
      (expires ?? 0) > logTimeMillis,
      "LockTable: grant of \(name) to \(id) whose session is \(expires.map { "due at \($0)" } ?? "gone") "
        + "at log time \(logTimeMillis)")
    let grant = LockGrant(lock: name, session: id, mode: mode, token: token)
    events.append(.granted(grant))
    return grant
  }

  private mutating func release(_ name: String, session id: LockSessionID, token: FencingToken) -> LockResponse {
    guard liveSession(id) != nil, let holder = locks[name]?.holders[id], holder.token == token else {
      return .released(false)
    }
    locks.modify(name) { _ = $0.holders.removeValue(forKey: id) }
    sessions.modify(id) { _ = $0.holds.remove(name) }
    touched.insert(name)
    events.append(.released(LockGrant(lock: name, session: id, mode: holder.mode, token: token)))
    return .released(true)
  }

  /// Removes a session, its waits and its holds; returns the holds (by lock name). Grants to the waiters it let
  /// through happen at the end of the entry.
  private mutating func dropSession(_ id: LockSessionID) -> [LockGrant] {
    guard let session = sessions.removeValue(forKey: id) else { return [] }
    for name in session.waits { removeWaiter(id, from: name) }
    var released: [LockGrant] = []
    released.reserveCapacity(session.holds.count)
    for name in KeyOrder.sorted(session.holds) {
      guard let holder = locks.modify(name, { $0.holders.removeValue(forKey: id) }) ?? nil else {
        preconditionFailure("LockTable: session \(id) lists \(name) among its holds but does not hold it")
      }
      touched.insert(name)
      released.append(LockGrant(lock: name, session: id, mode: holder.mode, token: holder.token))
    }
    return released
  }

  /// Takes `id` out of the queue of `name` (and out of the timeout index and its session's waits).
  private mutating func removeWaiter(_ id: LockSessionID, from name: String) {
    let removed = locks.modify(name) { lock -> Waiter? in
      guard let position = lock.waiters.firstIndex(where: { $0.session == id }) else { return nil }
      return lock.waiters.remove(at: position)
    }
    guard let waiter = removed ?? nil else {
      preconditionFailure("LockTable: session \(id) is listed as waiting for \(name) but is not in its queue")
    }
    if waiter.timeoutAtMillis != nil { timedWaiters[waiter.queuedAt] = nil }
    sessions.modify(id) { _ = $0.waits.remove(name) }
    touched.insert(name)
  }

  /// Grants, once per lock and in name order, the waiters at the head of each touched queue that the holders
  /// now admit, and forgets locks left with neither holders nor waiters.
  /// Forgets the touched locks left with neither holders nor waiters, so that the command sees them free (and
  /// may take the name as another kind of lock).
  private mutating func forgetFreeLocks() {
    for name in touched where locks[name].map({ $0.holders.isEmpty && $0.waiters.isEmpty }) == true {
      locks[name] = nil
    }
  }

  private mutating func grantTouchedLocks() {
    guard !touched.isEmpty else { return }
    let names = KeyOrder.sorted(touched)
    touched.removeAll(keepingCapacity: true)
    for name in names {
      grantWaiters(of: name)
      if locks[name].map({ $0.holders.isEmpty && $0.waiters.isEmpty }) == true { locks[name] = nil }
    }
  }

  /// Grants the waiters at the head of `name`'s queue that the holders admit, stopping at the first waiter whose
  /// session or wait timeout is due (it is never granted; ending its session or its wait takes it out of the queue
  /// and touches the lock again).
  private mutating func grantWaiters(of name: String) {
    let token = FencingToken(appliedIndex)
    let now = logTimeMillis
    let outcome: (granted: [Waiter], previous: FencingToken)?
    do {
      // A reference to the sessions for the closure, not a copy; it ends with this block, before they are changed.
      let current = sessions
      outcome = locks.modify(name) { lock -> (granted: [Waiter], previous: FencingToken) in
        var count = 0
        while count < lock.waiters.count, lock.admits(lock.waiters[count].mode),
          (current[lock.waiters[count].session]?.expiresAtMillis ?? 0) > now,
          (lock.waiters[count].timeoutAtMillis ?? .max) > now
        {
          let waiter = lock.waiters[count]
          lock.holders[waiter.session] = Holder(mode: waiter.mode, token: token)
          count += 1
        }
        let previous = lock.lastToken
        let granted = Array(lock.waiters[..<count])
        if count > 0 {
          lock.waiters.removeFirst(count)
          lock.lastToken = token
        }
        return (granted, previous)
      }
    }
    guard let outcome, !outcome.granted.isEmpty else { return }
    // A lock is granted from its queue at most once per entry, and never in the entry of a direct grant (which
    // needs an empty queue), so queued grants always carry a new token.
    precondition(
      outcome.previous < token,
      "LockTable: queued grants of \(name) at \(token) after the lock's \(outcome.previous)")
    for waiter in outcome.granted {
      let expires = sessions.modify(waiter.session) { session -> UInt64 in
        session.waits.remove(name)
        session.holds.insert(name)
        return session.expiresAtMillis
      }
      precondition(
        (expires ?? 0) > now,
        "LockTable: waiter \(waiter.session) of \(name) granted at \(token) whose session is "
          + "\(expires.map { "due at \($0)" } ?? "gone") at log time \(now)")
      if waiter.timeoutAtMillis != nil { timedWaiters[waiter.queuedAt] = nil }
      events.append(.granted(LockGrant(lock: name, session: waiter.session, mode: waiter.mode, token: token)))
    }
  }

  /// Where an acquire that was queued stands at the end of its entry.
  private func standing(of id: LockSessionID, on name: String) -> LockResponse {
    if let lock = locks[name] {
      if let holder = lock.holders[id] {
        return .granted(LockGrant(lock: name, session: id, mode: holder.mode, token: holder.token))
      }
      if let position = lock.waiters.firstIndex(where: { $0.session == id }) { return .queued(position: position) }
    }
    preconditionFailure("LockTable: \(id) was queued for \(name) at \(appliedIndex) but is neither holder nor waiter")
  }

  // MARK: - Queries

  public func query(_ query: LockQuery) -> LockQueryResult {
    switch query {
    case .lock(let name):
      return .lock(locks[name].map { status(of: name, $0) })
    case .session(let id):
      return .session(liveSession(id).map { status(of: id, $0) })
    case .list(let prefix, let after, let limit):
      let pageSize = Swift.min(Swift.max(0, limit), limits.maxListCount)
      var names = locks.keys.filter { name in
        name.hasPrefix(prefix) && after.map { KeyOrder.precedes($0, name) } ?? true
      }
      names.sort(by: KeyOrder.precedes)
      let page = names.prefix(pageSize).compactMap { name in
        locks[name].map {
          LockSummary(
            name: name, kind: $0.kind, holders: $0.holders.count, waiters: $0.waiters.count, lastToken: $0.lastToken)
        }
      }
      return .locks(page, hasMore: names.count > pageSize)
    case .counts:
      var holds = 0
      var waiters = 0
      for lock in locks.values {
        holds += lock.holders.count
        waiters += lock.waiters.count
      }
      return .counts(
        LockTableCounts(
          sessions: sessions.count, locks: locks.count, holds: holds, waiters: waiters, logTimeMillis: logTimeMillis,
          appliedIndex: appliedIndex))
    }
  }

  private func status(of name: String, _ lock: Lock) -> LockStatus {
    let holders = lock.holders.keys.sorted().compactMap { id in
      lock.holders[id].map {
        LockHolderStatus(
          session: id, mode: $0.mode, token: $0.token, sessionExpiresAtMillis: sessions[id]?.expiresAtMillis ?? 0)
      }
    }
    let waiters = lock.waiters.map {
      LockWaiterStatus(session: $0.session, mode: $0.mode, queuedAt: $0.queuedAt, timeoutAtMillis: $0.timeoutAtMillis)
    }
    return LockStatus(name: name, kind: lock.kind, lastToken: lock.lastToken, holders: holders, waiters: waiters)
  }

  private func status(of id: LockSessionID, _ session: Session) -> LockSessionStatus {
    let holds = KeyOrder.sorted(session.holds).compactMap { name in
      locks[name]?.holders[id].map { LockGrant(lock: name, session: id, mode: $0.mode, token: $0.token) }
    }
    let waits = KeyOrder.sorted(session.waits).compactMap { name -> LockWaitStatus? in
      guard let lock = locks[name], let position = lock.waiters.firstIndex(where: { $0.session == id }) else {
        return nil
      }
      let waiter = lock.waiters[position]
      return LockWaitStatus(lock: name, mode: waiter.mode, position: position, timeoutAtMillis: waiter.timeoutAtMillis)
    }
    return LockSessionStatus(
      session: id, ttlMillis: session.ttlMillis, expiresAtMillis: session.expiresAtMillis, holds: holds, waits: waits)
  }
}

extension UInt64 {
  /// `self + other`, or `UInt64.max` if that overflows (a deadline that never comes).
  func addingSaturated(_ other: UInt64) -> UInt64 {
    let (sum, overflow) = addingReportingOverflow(other)
    return overflow ? .max : sum
  }
}

extension LockTable {
  /// The events recorded since the last call (see ``takeEvents()``): what the server tells waiting clients.
  public mutating func takeNotifications() -> [LockEvent] { takeEvents() }

  /// A time-only entry: expires the sessions and waits that are due, granting their successors.
  public mutating func advanceTime(context: ApplyContext) { _ = apply(.advanceTime, context: context) }
}
