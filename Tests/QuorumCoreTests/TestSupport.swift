import Synchronization
import Testing

/// A condition that did not become true before its deadline.
struct TimedOut: Error, CustomStringConvertible {
  var description: String
}

/// Waits, yielding, until `condition` holds; records an issue and throws after `timeout`.
///
/// This waits for a state the test can observe (a sender being queued, a receiver suspending), never for
/// an amount of time, so it is as fast as the scheduler allows and cannot pass by luck.
func waitUntil(
  _ what: String, timeout: Duration = .seconds(60), sourceLocation: SourceLocation = #_sourceLocation,
  _ condition: () -> Bool
) async throws {
  let deadline = ContinuousClock.now + timeout
  while !condition() {
    if ContinuousClock.now >= deadline {
      Issue.record("timed out after \(timeout) waiting until \(what)", sourceLocation: sourceLocation)
      throw TimedOut(description: what)
    }
    await Task.yield()
  }
}

/// Returns `body`'s result, or throws if it takes longer than `timeout` (the body is then cancelled).
func withTimeout<R: Sendable>(
  _ what: String, _ timeout: Duration = .seconds(30), _ body: @escaping @Sendable () async throws -> R
) async throws -> R {
  try await withThrowingTaskGroup(of: R?.self) { group in
    group.addTask { try await body() }
    group.addTask {
      try await Task.sleep(for: timeout)
      return nil
    }
    defer { group.cancelAll() }
    guard let first = try await group.next(), let result = first else {
      throw TimedOut(description: "\(what) did not finish within \(timeout)")
    }
    return result
  }
}

/// A flag set from one task and read from another.
final class Flag: Sendable {
  private let value = Atomic<Bool>(false)
  func set() { value.store(true, ordering: .sequentiallyConsistent) }
  var isSet: Bool { value.load(ordering: .sequentiallyConsistent) }
}

/// A cheap `#expect` for loops that run thousands of times: records an issue only when `condition` fails.
func check(
  _ condition: Bool, _ message: @autoclosure () -> String = "", sourceLocation: SourceLocation = #_sourceLocation
) {
  if !condition { Issue.record("check failed \(message())", sourceLocation: sourceLocation) }
}
