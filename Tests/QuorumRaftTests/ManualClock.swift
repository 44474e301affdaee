import QuorumCore
import Synchronization

/// A monotonic clock that only the test moves: timers fire when ``advance(by:)`` carries the clock past their
/// deadline, never on their own. A node on this clock measures exactly the time the test decides, however slow
/// or loaded the machine is, so a test about timeouts and leases needs no sleeping and no luck.
final class ManualClock: NodeClock {
  private struct Sleeper {
    var deadline: UInt64
    var continuation: CheckedContinuation<Void, any Error>
  }

  private struct State {
    var now: UInt64 = 1_000_000_000
    var nextID: UInt64 = 0
    var sleepers: [UInt64: Sleeper] = [:]
    /// Sleeps cancelled before they were registered.
    var cancelled: Set<UInt64> = []
  }

  private let state = Mutex(State())

  func monotonicNanos() -> UInt64 { state.withLock { $0.now } }

  func wallClockMillis() -> UInt64 { 1_767_225_600_000 + monotonicNanos() / 1_000_000 }

  func sleep(untilNanos deadline: UInt64) async throws {
    let id = state.withLock { s in
      s.nextID += 1
      return s.nextID
    }
    try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
        let immediate: Result<Void, any Error>? = state.withLock { s in
          if s.cancelled.remove(id) != nil { return .failure(CancellationError()) }
          if deadline <= s.now { return .success(()) }
          s.sleepers[id] = Sleeper(deadline: deadline, continuation: continuation)
          return nil
        }
        if let immediate { continuation.resume(with: immediate) }
      }
    } onCancel: {
      let sleeper = state.withLock { s in
        let sleeper = s.sleepers.removeValue(forKey: id)
        if sleeper == nil { s.cancelled.insert(id) }
        return sleeper
      }
      sleeper?.continuation.resume(throwing: CancellationError())
    }
  }

  /// How many timers are waiting for a later time.
  var waitingTimers: Int { state.withLock { $0.sleepers.count } }

  /// Moves the clock forward by `duration` and fires every timer that is then due.
  func advance(by duration: Duration) {
    let due = state.withLock { s in
      s.now += duration.nanoseconds
      let now = s.now
      let due = s.sleepers.filter { $0.value.deadline <= now }
      for id in due.keys { s.sleepers[id] = nil }
      return due.values.map(\.continuation)
    }
    for continuation in due { continuation.resume() }
  }
}
