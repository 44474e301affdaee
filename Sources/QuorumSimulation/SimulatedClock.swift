public import QuorumCore
import Synchronization

/// One simulated machine's clocks, read from a ``SimulationScheduler``'s virtual time: a monotonic clock that
/// runs at its own rate (drift), a wall clock that can also jump (NTP steps), and timers that fire late while
/// the machine is stalled.
///
/// The monotonic clock of a node with drift `d` parts per million reads `(1 + d/10⁶) · t` at virtual time `t`
/// (plus an offset): a node whose clock runs fast believes more time has passed than has. Timers are set on
/// the local clock and converted back to virtual time, so a fast clock's timeouts end early in real terms —
/// exactly the effect a lease's drift bound must cover.
public final class SimulatedClock: NodeClock, Sendable {
  private struct State {
    var driftPPM: Int64
    var offsetNanos: UInt64
    var wallOffsetMillis: Int64
    var stalledUntil = VirtualTime.zero
  }

  private let scheduler: SimulationScheduler
  private let state: Mutex<State>

  /// Creates a clock that drifts by `driftPPM` parts per million (negative: slow) and whose wall clock starts at
  /// `wallClockStartMillis`.
  public init(
    scheduler: SimulationScheduler, driftPPM: Int64 = 0, offsetNanos: UInt64 = 0,
    wallClockStartMillis: UInt64 = 1_767_225_600_000
  ) {
    precondition(abs(driftPPM) < 500_000, "drift of \(driftPPM) ppm is not a clock")
    self.scheduler = scheduler
    state = Mutex(
      State(driftPPM: driftPPM, offsetNanos: offsetNanos, wallOffsetMillis: Int64(clamping: wallClockStartMillis)))
  }

  /// The drift in parts per million.
  public var driftPPM: Int64 { state.withLock { $0.driftPPM } }

  private static func local(_ virtual: UInt64, _ s: State) -> UInt64 {
    let drift =
      Int64(clamping: virtual) / 1_000_000 * s.driftPPM
      + (Int64(clamping: virtual) % 1_000_000) * s.driftPPM / 1_000_000
    return s.offsetNanos &+ UInt64(clamping: Int64(clamping: virtual) + drift)
  }

  public func monotonicNanos() -> UInt64 {
    let virtual = scheduler.now.nanoseconds
    return state.withLock { Self.local(virtual, $0) }
  }

  public func wallClockMillis() -> UInt64 {
    let virtual = scheduler.now.nanoseconds
    return state.withLock { s in
      UInt64(clamping: s.wallOffsetMillis + Int64(clamping: Self.local(virtual, s) / 1_000_000))
    }
  }

  /// Steps the wall clock by `millis` (either way), as an NTP correction does. The monotonic clock is unmoved.
  public func jumpWallClock(by millis: Int64) {
    state.withLock { $0.wallOffsetMillis += millis }
  }

  /// Holds every timer due before `time` until then (a stalled timer thread, a machine that was not scheduled).
  public func stallTimers(until time: VirtualTime) {
    state.withLock { $0.stalledUntil = max($0.stalledUntil, time) }
  }

  public func sleep(untilNanos deadline: UInt64) async throws {
    let virtualNow = scheduler.now
    let (wait, stalledUntil) = state.withLock { s -> (UInt64, VirtualTime) in
      let local = Self.local(virtualNow.nanoseconds, s)
      guard deadline > local else { return (0, s.stalledUntil) }
      // Local nanoseconds advance (1 + d) times as fast as virtual ones: convert the remaining wait back.
      let remaining = deadline - local
      let scaled = Double(remaining) * 1_000_000 / Double(1_000_000 + s.driftPPM)
      return (UInt64(scaled.rounded(.up)), s.stalledUntil)
    }
    try await scheduler.sleep(until: max(virtualNow + VirtualDuration(nanoseconds: wait), stalledUntil))
    // A timer fires late, never early: if rounding left it short, sleep the rest.
    if monotonicNanos() < deadline { try await scheduler.sleep(for: .microseconds(1)) }
  }
}
