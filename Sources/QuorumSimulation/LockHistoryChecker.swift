public import QuorumCore
public import QuorumHost
import QuorumLocks

/// Checks a lock workload as it runs, from two sides: the lock groups' committed logs (the grants, releases and
/// expiries that each group's reference replica reports, entry by entry) and what lock clients do with their
/// leases.
///
/// From the logs, at every entry: a grant's token is the index of its entry; an exclusive grant finds the lock
/// free and carries a token above every earlier grant of the lock; a shared grant finds no exclusive holder and a
/// semaphore grant a free permit, with a token no lower than any earlier one (holders granted by the same entry
/// share it); a release or an expiry ends a grant that is held. Since a session's locks are released when its TTL
/// runs out in log time, this says that at no entry do two sessions hold an exclusive lock (or more sessions
/// than permits hold a semaphore) with unexpired grants.
///
/// From the clients: every lease a client receives is a grant of the log; and whenever a client relies on a lease
/// (``used(client:lease:at:)``: it checked ``QuorumHost/LockLease/isValid`` just then), the log has not ended that
/// grant yet. That is the lease guarantee in real time: a holder gives its lease up before its session expires
/// (so before anyone else is granted the lock), whatever the pauses, clock drift and failovers. Exclusive leases
/// relied on also pass a fencing check (``QuorumLocks/FencingState``), as a protected resource would run it.
///
/// The first violation is kept in ``failure`` (with the state that shows it); the simulation stops there.
///
/// Safety of `@unchecked Sendable`: a simulation runs every job on one thread, and the checker is only called from jobs.
public final class LockHistoryChecker: @unchecked Sendable {
  private struct LockKey: Hashable {
    var group: GroupID
    var lock: String
  }

  private struct GrantKey: Hashable {
    var group: GroupID
    var lock: String
    var session: LockSessionID
    var token: FencingToken
  }

  private struct LockState {
    var holders: [LockSessionID: LockGrant] = [:]
    var lastToken = FencingToken.zero
  }

  private struct Event {
    var index: UInt64
    var time: VirtualTime
    var how: String
  }

  private let trace: SimulationTrace
  private let now: () -> VirtualTime
  private var locks: [LockKey: LockState] = [:]
  private var granted: [GrantKey: Event] = [:]
  private var ended: [GrantKey: Event] = [:]
  /// The newest grants of each lock, for failure messages.
  private var recentGrants: [LockKey: [(grant: LockGrant, event: Event)]] = [:]
  private var fences: [LockKey: FencingState] = [:]

  /// The first violation found.
  public private(set) var failure: SimulationFailure?
  /// Grants, releases and expiries checked in the logs.
  public private(set) var logEventsChecked = 0
  /// Leases relied on and checked against the logs.
  public private(set) var usesChecked = 0
  /// Releases with an old grant's token checked (``staleRelease(client:old:holding:freed:)``).
  public private(set) var staleReleasesChecked = 0
  /// Writes under a lease the client had given up that the fencing check refused (a newer holder had written).
  public private(set) var staleWritesFenced = 0

  /// Creates a checker that reads virtual time from `now`.
  public init(trace: SimulationTrace, now: @escaping () -> VirtualTime) {
    self.trace = trace
    self.now = now
  }

  private func fail(_ message: String) {
    if failure == nil { failure = SimulationFailure(message) }
  }

  // MARK: - The logs

  /// What `group`'s reference replica notified applying the committed entry at `index`.
  public func committed(group: GroupID, index: UInt64, notifications: [ServiceNotification]) {
    for notification in notifications where notification.service == LockService.name {
      guard let event = try? LockEvent(wireBytes: notification.payload) else {
        fail("group \(group): entry \(index) notified an undecodable lock event")
        continue
      }
      logEventsChecked += 1
      let at = Event(index: index, time: now(), how: "")
      switch event {
      case .granted(let grant): logGranted(grant, group: group, at: at)
      case .released(let grant): logEnded(grant, group: group, at: at, how: "released")
      case .expired(_, let lost): for grant in lost { logEnded(grant, group: group, at: at, how: "expired") }
      case .waitTimedOut: break
      }
    }
  }

  private func logGranted(_ grant: LockGrant, group: GroupID, at: Event) {
    let key = LockKey(group: group, lock: grant.lock)
    var state = locks[key] ?? LockState()
    let where_ = "group \(group) entry \(at.index): grant of \(grant.lock) to \(grant.session) as \(grant.mode)"
    let holders = state.holders.values.sorted { $0.session < $1.session }.map(\.description)
    if grant.token.rawValue != at.index {
      fail("\(where_) carries token \(grant.token), not its entry's index")
    }
    if state.holders[grant.session] != nil {
      fail("\(where_): the session already holds it (\(holders))")
    }
    switch grant.mode {
    case .exclusive:
      if !state.holders.isEmpty { fail("\(where_) while it is held: two owners of an exclusive lock (\(holders))") }
      if grant.token <= state.lastToken {
        fail("\(where_) with \(grant.token), not above the lock's earlier grant \(state.lastToken)")
      }
    case .shared:
      if state.holders.values.contains(where: { $0.mode != .shared }) {
        fail("\(where_) while a non-shared holder holds it (\(holders))")
      }
    case .semaphore(let permits):
      if state.holders.values.contains(where: { $0.mode != grant.mode }) {
        fail("\(where_) while holders of another kind hold it (\(holders))")
      }
      if state.holders.count >= Int(permits) {
        fail("\(where_): all \(permits) permits are held (\(holders))")
      }
    }
    if grant.mode != .exclusive, grant.token < state.lastToken {
      fail("\(where_) with \(grant.token), below the lock's earlier grant \(state.lastToken)")
    }
    state.holders[grant.session] = grant
    state.lastToken = max(state.lastToken, grant.token)
    locks[key] = state
    granted[GrantKey(group: group, lock: grant.lock, session: grant.session, token: grant.token)] = at
    var recent = recentGrants[key] ?? []
    recent.append((grant, at))
    if recent.count > 8 { recent.removeFirst(recent.count - 8) }
    recentGrants[key] = recent
  }

  private func logEnded(_ grant: LockGrant, group: GroupID, at: Event, how: String) {
    let key = LockKey(group: group, lock: grant.lock)
    guard let held = locks[key]?.holders[grant.session], held == grant else {
      fail("group \(group) entry \(at.index): \(how) \(grant), which is not held")
      return
    }
    locks[key]?.holders[grant.session] = nil
    if locks[key]?.holders.isEmpty == true, let last = locks[key]?.lastToken {
      locks[key] = LockState(holders: [:], lastToken: last)
    }
    var end = at
    end.how = how
    trace.record(at.time, "log: \(how) \(grant) at entry \(at.index)")
    ended[GrantKey(group: group, lock: grant.lock, session: grant.session, token: grant.token)] = end
  }

  // MARK: - The clients

  /// Client `client` received `lease` (from an acquire's answer, a grant it watched for, or a status query).
  public func received(client: Int, lease: LockLease) {
    let key = GrantKey(group: lease.group, lock: lease.name, session: lease.session, token: lease.token)
    guard granted[key] != nil else {
      fail("client \(client) received \(lease) in group \(lease.group), a grant no committed entry made")
      return
    }
    trace.record(now(), "lock client \(client) holds \(lease)")
  }

  /// Client `client` relied on `lease` at virtual time `at`, having just seen it valid; `fenced` tells whether an
  /// exclusive lease passed the resource's fencing check.
  public func used(client: Int, lease: LockLease, at: VirtualTime) {
    usesChecked += 1
    let key = GrantKey(group: lease.group, lock: lease.name, session: lease.session, token: lease.token)
    if let end = ended[key] {
      let lockKey = LockKey(group: lease.group, lock: lease.name)
      let later = (recentGrants[lockKey] ?? []).filter { $0.grant.token > lease.token }
        .map { "\($0.grant.session) \($0.grant.mode) \($0.grant.token) granted at \($0.event.time)" }
      fail(
        "client \(client) relied on \(lease) at \(at), but the log \(end.how) that grant at entry \(end.index) "
          + "(\(end.time))" + (later.isEmpty ? "" : "; since then: " + later.joined(separator: ", ")))
      return
    }
    guard lease.mode == .exclusive else { return }
    let lockKey = LockKey(group: lease.group, lock: lease.name)
    do throws(FencingError) {
      try fences[lockKey, default: FencingState()].admit(lease.token, for: lease.name)
    } catch {
      fail("client \(client) relied on \(lease) at \(at), but the resource already admitted a newer token: \(error)")
    }
  }

  /// Client `client`, holding `lease`, sent a release with the token of `old`, an earlier grant of the same lock
  /// in the same session whose release the log confirmed; `freed` is the answer. A token names one grant, so the
  /// answer must be that nothing was freed (a lock table that matched the session alone would end `lease`).
  public func staleRelease(client: Int, old: LockLease, holding lease: LockLease, freed: Bool) {
    staleReleasesChecked += 1
    guard freed else { return }
    fail(
      "client \(client) sent a release with the token of \(old), a grant already released, while it held \(lease) "
        + "in the same session, and the lock table answered that it freed the lock")
  }

  /// Client `client` wrote under `lease` after finding it invalid (a holder that woke from a pause and did not
  /// look): the resource's fencing check decides. Returns whether the write was refused.
  @discardableResult
  public func staleWrite(client: Int, lease: LockLease) -> Bool {
    guard lease.mode == .exclusive else { return false }
    let lockKey = LockKey(group: lease.group, lock: lease.name)
    do throws(FencingError) {
      try fences[lockKey, default: FencingState()].admit(lease.token, for: lease.name)
      return false
    } catch {
      staleWritesFenced += 1
      trace.record(now(), "lock client \(client): stale write under \(lease) refused: \(error)")
      return true
    }
  }
}
