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
    case .acquire(let lock, _, _, _, _), .release(let lock, _, _), .cancelWait(let lock, _): return lock
    case .openSession, .keepAlive, .closeSession, .advanceTime: return nil
    }
  }

  /// The lock a query concerns, if any.
  public static func routingKey(of query: LockQuery) -> String? {
    if case .lock(let name) = query { return name }
    return nil
  }
}
