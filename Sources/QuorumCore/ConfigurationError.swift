/// Why a configuration was refused: which setting, and what is wrong with it.
///
/// Every configuration in Quorum (`RaftConfiguration`, `PaxosConfiguration`, …) validates itself as a whole
/// and throws this error naming the offending setting as it is written in the configuration DSL.
public struct ConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The setting at fault, as written in the DSL (for example `HeartbeatInterval`).
  public var setting: String
  /// What is wrong.
  public var reason: String

  /// Creates an error.
  public init(setting: String, reason: String) {
    self.setting = setting
    self.reason = reason
  }

  public var description: String { "\(setting): \(reason)" }
}

/// The checks of timing options that Raft's and Multi-Paxos's cores share: their timers, and a leader lease
/// that must end before the window in which the other members refuse a new leader.
package enum TimingChecks {
  /// The most ticks an election timeout may span. The timer's arithmetic (randomized timeouts, idle factors,
  /// pauses of several timeouts) stays far from overflow below this: 2^30 ticks is over 12 days at 1 ms ticks.
  package static let maxElectionTimeoutTicks = 1 << 30

  /// Checks an election timeout of `electionMin ... electionMax` ticks, a heartbeat of `heartbeat` ticks and an
  /// idle leader's heartbeat factor of `idleFactor` (1 ... `maxIdleFactor`).
  package static func validateTimers(
    electionMin: Int, electionMax: Int, heartbeat: Int, idleFactor: Int, maxIdleFactor: Int
  ) throws(ConfigurationError) {
    if electionMin < 1 { throw fail("electionTimeoutMinTicks", "must be at least 1") }
    if electionMax > maxElectionTimeoutTicks {
      throw fail("electionTimeoutMaxTicks", "must be at most 2^30 ticks, got \(electionMax)")
    }
    if heartbeat < 1 { throw fail("heartbeatTicks", "must be at least 1") }
    if idleFactor < 1 || idleFactor > maxIdleFactor {
      throw fail("idleHeartbeatFactor", "must be 1 ... \(maxIdleFactor), got \(idleFactor)")
    }
  }

  /// Checks a leader lease of `durationNanos` (none when 0): it must end at least one tick and the clock-drift
  /// bound before the `window` (named `windowName` in the error) in which the other members refuse a new
  /// leader, and the drift bound must not be zero (clocks always drift).
  package static func validateLease(
    durationNanos: UInt64, driftBoundNanos: UInt64, tickNanos: UInt64, window: UInt64, windowName: String
  ) throws(ConfigurationError) {
    guard durationNanos > 0 else { return }
    guard tickNanos > 0 else {
      throw fail("tickNanos", "lease reads need the tick length, to measure leader contact on the monotonic clock")
    }
    guard driftBoundNanos > 0 else {
      throw fail("clockDriftBoundNanos", "must not be 0 with lease reads on: clocks drift")
    }
    let (needed, overflow) = durationNanos.addingReportingOverflow(driftBoundNanos &+ tickNanos)
    if overflow || needed > window {
      throw fail(
        "leaseDurationNanos",
        "a lease of \(durationNanos) ns plus the drift bound \(driftBoundNanos) ns and one tick "
          + "\(tickNanos) ns exceeds the \(windowName) of \(window) ns")
    }
  }

  private static func fail(_ option: String, _ reason: String) -> ConfigurationError {
    ConfigurationError(setting: option, reason: reason)
  }
}
