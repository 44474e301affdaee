import Synchronization

/// Why a protected resource refused a request.
public enum FencingError: Error, Hashable, Sendable, CustomStringConvertible {
  /// The request carried a token below one the resource has already admitted for the lock: its holder lost
  /// the lock (its session expired, say, while it was paused) and someone else has been granted it since.
  case staleToken(lock: String, presented: FencingToken, highest: FencingToken)

  public var description: String {
    switch self {
    case .staleToken(let lock, let presented, let highest):
      return "stale fencing token \(presented) for \(lock): \(highest) has been admitted"
    }
  }
}

/// The fencing check of a protected resource as a plain value, for single-threaded use (inside an actor, or a
/// replicated state machine that guards its own writes).
///
/// It remembers the highest token admitted for each lock name and refuses any lower one. An equal token is
/// admitted: it is the same holder writing again (or a holder granted in the same entry: shared holders and
/// semaphore permits share a token, an exclusive holder never does). It keeps one entry per lock name seen.
public struct FencingState: Hashable, Sendable {
  private var highest: [String: FencingToken] = [:]

  /// Creates a state that has admitted nothing.
  public init() {}

  /// Admits a request made under `token` for `lock`, raising the lock's highest token if `token` is higher.
  /// - Throws: ``FencingError/staleToken(lock:presented:highest:)`` if a higher token was admitted before;
  ///   nothing changes then.
  public mutating func admit(_ token: FencingToken, for lock: String) throws(FencingError) {
    let current = highest[lock] ?? .zero
    guard token >= current else { throw .staleToken(lock: lock, presented: token, highest: current) }
    highest[lock] = token
  }

  /// The highest token admitted for `lock`, if any.
  public func highestToken(for lock: String) -> FencingToken? { highest[lock] }

  /// The number of lock names remembered.
  public var count: Int { highest.count }
}

/// A thread-safe ``FencingState`` for resources shared between threads or tasks.
///
/// ```swift
/// let fence = FencingGuard()
/// func write(_ data: [UInt8], under grant: LockGrant) throws {
///   try fence.admit(grant.token, for: grant.lock)  // throws FencingError.staleToken after a newer grant
///   storage.write(data)
/// }
/// ```
/// To be exact, the check and the write must be atomic: use ``withAdmission(_:for:_:)`` when another writer
/// with a newer token could slip in between.
public final class FencingGuard: Sendable {
  private let state = Mutex(FencingState())

  /// Creates a guard that has admitted nothing.
  public init() {}

  /// Admits a request made under `token` for `lock`.
  /// - Throws: ``FencingError/staleToken(lock:presented:highest:)`` if a higher token was admitted before.
  public func admit(_ token: FencingToken, for lock: String) throws(FencingError) {
    try state.withLock { (state: inout FencingState) throws(FencingError) in try state.admit(token, for: lock) }
  }

  /// Admits `token` for `lock` and runs `body` while holding the guard, so no request with another token for
  /// any lock is admitted until `body` returns. Keep `body` short and never suspend in it.
  /// - Throws: ``FencingError/staleToken(lock:presented:highest:)`` (and `body` is not run), or what `body`
  ///   throws.
  public func withAdmission<R, E: Error>(
    _ token: FencingToken, for lock: String, _ body: () throws(E) -> R
  ) throws(FencingAdmissionError<E>) -> R {
    try state.withLock { (state: inout FencingState) throws(FencingAdmissionError<E>) -> R in
      do throws(FencingError) { try state.admit(token, for: lock) } catch { throw .fenced(error) }
      do throws(E) { return try body() } catch { throw .body(error) }
    }
  }

  /// The highest token admitted for `lock`, if any.
  public func highestToken(for lock: String) -> FencingToken? { state.withLock { $0.highestToken(for: lock) } }
}

/// The failure of ``FencingGuard/withAdmission(_:for:_:)``: the token was refused, or the body threw.
public enum FencingAdmissionError<Failure: Error>: Error {
  /// The token was refused; the body did not run.
  case fenced(FencingError)
  /// The body ran and threw.
  case body(Failure)
}
