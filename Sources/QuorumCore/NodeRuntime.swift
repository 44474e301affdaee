import Glibc
import Synchronization

/// Where a node's time comes from: a monotonic clock for timers, timeouts and leases, and a wall clock for
/// what people read in logs.
///
/// Every actor in Quorum reads time through a `NodeClock` handed to it in a ``NodeRuntime``, never from the
/// system directly, so the simulator can give each node its own virtual clock — drifting, jumping and
/// stalling as real machines' clocks do — and run the production actors unchanged.
public protocol NodeClock: Sendable {
  /// Nanoseconds since an arbitrary origin. Never decreases; it is what timers, request deadlines, leases and
  /// leader contact are measured with.
  func monotonicNanos() -> UInt64
  /// Milliseconds since 1970 on the wall clock. It may jump (NTP steps) and is never used for safety.
  func wallClockMillis() -> UInt64
  /// Suspends until ``monotonicNanos()`` reaches `deadline`, or later: a timer may fire late, never early.
  /// - Throws: `CancellationError` when the task is cancelled first.
  func sleep(untilNanos deadline: UInt64) async throws
}

extension NodeClock {
  /// Suspends for `duration` of this clock's monotonic time.
  public func sleep(for duration: Duration) async throws {
    try await sleep(untilNanos: monotonicNanos() &+ duration.nanoseconds)
  }
}

/// The operating system's clocks: `ContinuousClock` (on Linux `CLOCK_BOOTTIME`) and `CLOCK_REALTIME`.
///
/// Leases need a clock that keeps counting while the machine is suspended, as `CLOCK_BOOTTIME` does:
/// with `CLOCK_MONOTONIC`, which stops during a suspend, a leader resumed from a suspended VM would believe its
/// lease still held after its followers had elected another leader, and serve stale lease reads.
public struct SystemClock: NodeClock {
  private let origin = ContinuousClock.now

  /// Creates a clock whose monotonic origin is now.
  public init() {}

  public func monotonicNanos() -> UInt64 { (ContinuousClock.now - origin).nanoseconds }

  public func wallClockMillis() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) &* 1000 &+ UInt64(ts.tv_nsec) / 1_000_000
  }

  public func sleep(untilNanos deadline: UInt64) async throws {
    let now = monotonicNanos()
    guard deadline > now else {
      try Task.checkCancellation()
      return
    }
    try await ContinuousClock().sleep(
      until: ContinuousClock.now.advanced(by: .nanoseconds(Int64(clamping: deadline - now))),
      tolerance: .microseconds(500))
  }
}

/// What an actor is given to run on: its clock and, in a simulation, the executor its tasks must prefer.
///
/// Production code uses ``system``. The simulator passes a runtime whose clock is virtual and whose executor
/// runs every job of the simulated cluster on one thread in a seeded order, so the same actors that run in
/// production run reproducibly under test. Actors start their internal tasks (tickers, background snapshots)
/// through ``detached(priority:_:)`` and child tasks with ``executor`` as their preference.
public struct NodeRuntime: Sendable {
  /// The clock timers and timeouts are measured with.
  public var clock: any NodeClock
  /// The task executor internal tasks prefer (`nil`: Swift's default concurrent executor).
  public var executor: (any TaskExecutor)?

  /// Creates a runtime.
  public init(clock: any NodeClock, executor: (any TaskExecutor)? = nil) {
    self.clock = clock
    self.executor = executor
  }

  /// The operating system's clocks and Swift's default executors.
  public static var system: NodeRuntime { NodeRuntime(clock: SystemClock()) }

  /// Starts an unstructured task that inherits nothing from the caller but this runtime's executor.
  @discardableResult
  public func detached<T: Sendable>(
    priority: TaskPriority? = nil, _ operation: sending @escaping @isolated(any) () async -> T
  ) -> Task<T, Never> {
    Task.detached(executorPreference: executor, priority: priority, operation: operation)
  }
}

/// A wake-up that is remembered but never counted twice: what a periodic timer hands a run loop.
///
/// A ticker that falls behind (a stalled machine, a busy loop) sets the flag again instead of queueing one tick
/// per missed period, so a loop that wakes after a stall sees one tick, measures the real time that passed
/// with its monotonic clock, and never fires a burst of ticks that would shorten a timeout. Nothing is
/// dropped silently either: unlike a tick sent through a full mailbox, the flag is always set.
///
/// A loop with nothing to do for a while can say so with ``quiet(until:)``: the signal then counts the periods
/// that pass without waking the loop (``period``) until the given one, and the loop accounts for them the next
/// time it runs. Idle consensus groups sleep through the ticks that would only advance their counters.
public final class TickSignal: Sendable {
  private let pending = Atomic<Bool>(false)
  private let periods = Atomic<UInt64>(0)
  private let quietUntil = Atomic<UInt64>(0)
  private let doorbell: Doorbell

  /// Creates a signal that rings `doorbell` when it is raised.
  public init(ringing doorbell: Doorbell) { self.doorbell = doorbell }

  /// Counts one period and, unless the loop asked for quiet until a later one, raises the signal and wakes the
  /// loop.
  public func raise() {
    let period = periods.add(1, ordering: .acquiringAndReleasing).newValue
    guard period >= quietUntil.load(ordering: .acquiring) else { return }
    pending.store(true, ordering: .releasing)
    doorbell.ring()
  }

  /// How many times the ticker has fired.
  public var period: UInt64 { periods.load(ordering: .acquiring) }

  /// Asks not to be woken by the ticker before its `period`-th firing (counted by ``period``). A period that
  /// has already passed raises the signal at once (without ringing: the caller is running).
  public func quiet(until period: UInt64) {
    quietUntil.store(period, ordering: .releasing)
    if periods.load(ordering: .acquiring) >= period { pending.store(true, ordering: .releasing) }
  }

  /// Whether the signal was raised since the last call (and lowers it).
  public func take() -> Bool { pending.exchange(false, ordering: .acquiringAndReleasing) }
}

extension NodeRuntime {
  /// Raises `signal` every `interval` of this runtime's monotonic clock until the task is cancelled. A timer
  /// that fires late does not catch up: the next deadline counts from when it actually fired.
  public func runTicker(every interval: Duration, raising signal: TickSignal) async {
    let step = max(interval.nanoseconds, 1)
    var next = clock.monotonicNanos() &+ step
    while !Task.isCancelled {
      do {
        try await clock.sleep(untilNanos: next)
      } catch {
        return
      }
      signal.raise()
      let now = clock.monotonicNanos()
      next = max(next &+ step, now &+ step / 2)
    }
  }
}

/// Runs a role actor's loop: one turn each time peer messages, local inputs or a timer tick have arrived.
///
/// Every role actor (a Paxos proposer or learner, a lock or transaction service) has the same shape: messages
/// from its transport endpoint, requests in its own mailbox, and a periodic timer. This loop wakes on a single
/// doorbell rung by both mailboxes and by the ticker (``TickSignal``: one tick per wake-up at most, never a burst,
/// never dropped), drains everything that is there and hands it to `turn`, which returns `false` to stop. It
/// returns when `turn` says so, when the task is cancelled, or when the inputs are closed and drained.
///
/// The ticker is a child task on the runtime's clock, so the loop runs unchanged in a simulation.
public func runRoleLoop<Message: Sendable, Input: Sendable>(
  incoming: Mailbox<Envelope<Message>>, inputs: Mailbox<Input>, runtime: NodeRuntime, tick: Duration?,
  isolation: isolated (any Actor)? = #isolation,
  _ turn: (_ ticked: Bool, _ messages: inout [Envelope<Message>], _ inputs: inout [Input]) async throws -> Bool
) async throws {
  let doorbell = Doorbell()
  let signal = TickSignal(ringing: doorbell)
  inputs.attach(doorbell)
  incoming.attach(doorbell)
  try await withThrowingTaskGroup(of: Void.self) { group in
    if let tick {
      group.addTask { await runtime.runTicker(every: tick, raising: signal) }
    }
    defer { group.cancelAll() }
    var messages: [Envelope<Message>] = []
    var batch: [Input] = []
    while !Task.isCancelled {
      let ticked = signal.take()
      let taken =
        incoming.drainAvailable(into: &messages, limit: 1024) + inputs.drainAvailable(into: &batch, limit: 1024)
      if taken == 0 && !ticked {
        if inputs.isClosed { return }
        await doorbell.wait()
        continue
      }
      let goOn = try await turn(ticked, &messages, &batch)
      messages.removeAll(keepingCapacity: true)
      batch.removeAll(keepingCapacity: true)
      if !goOn { return }
    }
  }
}

/// One timer for many nodes: a process hosting many consensus groups runs one ticker task, not one per group,
/// so idle groups cost no timers of their own.
///
/// Each tick raises every registered node's ``TickSignal`` (in registration order). Run it with
/// ``run(every:on:)`` in the host's task group.
public final class SharedTicker: Sendable {
  private let signals = Mutex<(next: UInt64, registered: [(id: UInt64, signal: TickSignal)])>((0, []))

  /// Creates a ticker with no nodes.
  public init() {}

  /// Adds a node's signal; returns the registration to pass to ``unregister(_:)``.
  public func register(_ signal: TickSignal) -> UInt64 {
    signals.withLock { s in
      s.next += 1
      s.registered.append((s.next, signal))
      return s.next
    }
  }

  /// Removes a registration.
  public func unregister(_ registration: UInt64) {
    signals.withLock { s in s.registered.removeAll { $0.id == registration } }
  }

  /// The number of nodes ticked.
  public var count: Int { signals.withLock { $0.registered.count } }

  /// Raises every registered signal once.
  public func tick() {
    let targets = signals.withLock { $0.registered.map(\.signal) }
    for signal in targets { signal.raise() }
  }

  /// Ticks every `interval` of `runtime`'s clock until the task is cancelled.
  public func run(every interval: Duration, on runtime: NodeRuntime) async {
    let step = max(interval.nanoseconds, 1)
    var next = runtime.clock.monotonicNanos() &+ step
    while !Task.isCancelled {
      do {
        try await runtime.clock.sleep(untilNanos: next)
      } catch {
        return
      }
      tick()
      next = max(next &+ step, runtime.clock.monotonicNanos() &+ step / 2)
    }
  }
}
