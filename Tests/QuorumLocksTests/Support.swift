import QuorumCore
import Testing

@testable import QuorumLocks

/// Session `n` (the session opened by entry `n`).
func s(_ n: UInt64) -> LockSessionID { LockSessionID(n) }

/// Token `n` (a grant made by entry `n`).
func t(_ n: UInt64) -> FencingToken { FencingToken(n) }

/// An acquire command; waits by default.
func acquire(
  _ lock: String, _ session: LockSessionID, _ mode: LockMode = .exclusive, wait: Bool = true, timeout: UInt64? = nil
) -> LockCommand {
  .acquire(lock: lock, session: session, mode: mode, wait: wait, waitTimeoutMillis: timeout)
}

/// A grant value.
func grant(_ lock: String, _ session: LockSessionID, _ mode: LockMode, _ token: FencingToken) -> LockGrant {
  LockGrant(lock: lock, session: session, mode: mode, token: token)
}

/// An exclusive grant value.
func grant(_ lock: String, _ session: LockSessionID, _ token: FencingToken) -> LockGrant {
  grant(lock, session, .exclusive, token)
}

/// The response granting `lock`.
func granted(_ lock: String, _ session: LockSessionID, _ mode: LockMode, _ token: FencingToken) -> LockResponse {
  .granted(grant(lock, session, mode, token))
}

/// The response granting `lock` exclusively.
func granted(_ lock: String, _ session: LockSessionID, _ token: FencingToken) -> LockResponse {
  .granted(grant(lock, session, token))
}

extension LockTable {
  /// Applies `command` as log entry `index` stamped `millis`, and checks every invariant and index afterwards.
  @discardableResult
  mutating func apply(
    _ index: UInt64, at millis: UInt64, _ command: LockCommand, by principal: String? = nil,
    sourceLocation: SourceLocation = #_sourceLocation
  ) -> LockResponse {
    let response = apply(command, context: ApplyContext(index: index, timestampMillis: millis, principal: principal))
    let problems = invariantViolations()
    #expect(problems.isEmpty, "after entry \(index) (\(command)): \(problems)", sourceLocation: sourceLocation)
    return response
  }

  /// The holders of `lock` as (session, mode, token), by session; empty if the lock is free.
  func holders(_ lock: String) -> [LockGrant] {
    guard case .lock(let status) = query(.lock(lock)) else { return [] }
    return status?.holders.map { LockGrant(lock: lock, session: $0.session, mode: $0.mode, token: $0.token) } ?? []
  }

  /// The waiting sessions of `lock`, first in line first.
  func waiters(_ lock: String) -> [LockSessionID] {
    guard case .lock(let status) = query(.lock(lock)) else { return [] }
    return status?.waiters.map(\.session) ?? []
  }

  /// Whether `session` is open.
  func isOpen(_ session: LockSessionID) -> Bool {
    guard case .session(let status) = query(.session(session)) else { return false }
    return status != nil
  }
}

extension LockQueryResult {
  /// The kind of the lock in a ``LockQuery/lock(_:)`` answer, if the lock exists.
  var kindOf: LockKind? {
    guard case .lock(let status) = self else { return nil }
    return status?.kind
  }
}
