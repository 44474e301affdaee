import CQuorumTestSupport
import Glibc
import QuorumSimulation
public import Testing

/// Runs a test's nonisolated code on ``QuorumSimulation/HeavyLane``: the trait of tests that compute for
/// seconds without waiting on anything (seeded simulations, model checks, fuzzing loops).
///
/// Swift Testing runs the tests on Swift's cooperative pool, one thread per core. A synchronous test of seconds
/// holds a pool thread for all that time, and two of them hold the whole pool of a two-core machine: the tests
/// beside them that wait on real time then wait behind them. On the lane's threads, the operating system shares
/// the cores between such tests and the pool.
///
/// Which tests carry it was measured: the CPU time of every synchronous test in a full run. The 51 that took a
/// quarter of a second or more took 93 s of the 97 s all synchronous tests took.
public struct HeavyTrait: TestTrait, SuiteTrait, TestScoping {
  public var isRecursive: Bool { true }

  public func provideScope(
    for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
  ) async throws {
    try await withTaskExecutorPreference(HeavyLane.shared) { try await function() }
  }
}

extension Trait where Self == HeavyTrait {
  /// Runs the test (or every test of the suite) on ``QuorumSimulation/HeavyLane``: see ``HeavyTrait``.
  public static var heavy: Self { Self() }
}

/// How the test bundle runs its tests side by side.
public enum TestParallelism {
  /// The cap on tests running at once that the bundle's constructor set (six per core), or `nil` when the
  /// environment chose one (`SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH`).
  public static var capSetByTheBundle: Int? {
    let width = Int(cquorum_test_parallelization_width())
    return width > 0 ? width : nil
  }

  /// The cap in force, read back from the environment.
  public static var cap: Int? {
    getenv("SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH").flatMap { Int(String(cString: $0)) }
  }
}
