public import QuorumCore

/// The lock table as a service of a group's log (name `locks`): requests about a lock are routed by the lock's
/// name to the group that owns it; session commands go to any group carrying the service (a client keeps one
/// session per group).
public struct LockService: ReplicatedService {
  /// The table's limits.
  public var limits: LockTableLimits

  /// Creates the service with `limits`.
  public init(limits: LockTableLimits = LockTableLimits()) { self.limits = limits }

  /// `locks`.
  public static var name: String { "locks" }

  /// An empty table.
  public func makeMachine() -> LockTable {
    // The limits were validated when the service was configured; defaults are always valid.
    (try? LockTable(limits: limits)) ?? LockTable()
  }

  /// The lock a command concerns, if any.
  public static func routingKey(of command: LockCommand) -> String? {
    switch command {
    case .acquire(let lock, _, _, _, _), .release(let lock, _, _), .cancelWait(let lock, _, _): return lock
    case .openSession, .keepAlive, .closeSession, .advanceTime: return nil
    }
  }

  /// What a lock event can be watched by: `grant/<lock>/<session>` for the event that ends a wait (a grant or a
  /// timed-out wait), `session/<session>` for everything that happens to a session (grants, releases, expiry).
  public static func notificationKeys(of event: LockEvent) -> [String] {
    switch event {
    case .granted(let grant):
      return ["grant/\(grant.lock)/\(grant.session.rawValue)", "session/\(grant.session.rawValue)"]
    case .released(let grant):
      return ["session/\(grant.session.rawValue)"]
    case .expired(let session, _):
      return ["session/\(session.rawValue)"]
    case .waitTimedOut(let lock, let session):
      return ["grant/\(lock)/\(session.rawValue)", "session/\(session.rawValue)"]
    }
  }

  /// The key watched for the end of `session`'s wait for `lock`.
  public static func grantKey(lock: String, session: LockSessionID) -> String { "grant/\(lock)/\(session.rawValue)" }

  /// The key watched for everything that happens to `session`.
  public static func sessionKey(_ session: LockSessionID) -> String { "session/\(session.rawValue)" }

  /// Releasing, closing, cancelling a wait and keeping a session alive free space or hold it steady: a member
  /// past its space quota accepts them (acquiring and opening sessions it refuses).
  public static func reclaimsSpace(_ command: LockCommand) -> Bool {
    switch command {
    case .release, .closeSession, .cancelWait, .keepAlive, .advanceTime: return true
    case .openSession, .acquire: return false
    }
  }

  /// The lock a query concerns, if any.
  public static func routingKey(of query: LockQuery) -> String? {
    if case .lock(let name) = query { return name }
    return nil
  }
}
