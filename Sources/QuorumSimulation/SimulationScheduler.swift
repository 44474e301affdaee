public import QuorumCore
import Synchronization

/// Runs Swift tasks and actors deterministically: one thread, virtual time, and a seeded choice of which ready
/// job runs next.
///
/// The scheduler is a task executor. Tasks started with ``spawn(on:_:)`` (and every child task they create,
/// every actor they call, every continuation resumed for them) run their jobs here, one at a time, on the
/// thread that calls ``run(until:stopWhen:afterEachJob:)``. Among the jobs that are ready, the next is picked
/// by the scheduler's seeded generator, so one seed gives one interleaving and another seed another.
/// Time is virtual: ``sleep(until:)`` suspends a task until the scheduler's clock reaches an instant, and the
/// clock jumps to the next timer only when no job is ready. A run of seconds of cluster time takes as long as
/// its computation.
///
/// Jobs are tagged by *process*: ``executor(for:)`` hands out one ``SimulatedProcess`` per tag, and
/// ``pause(_:until:)`` holds back every job of a process (a stalled machine: GC pause, VM freeze, swapped out),
/// which is what makes timers fire late and leases break in real clusters.
public final class SimulationScheduler: Sendable {
  private struct Job {
    var process: UInt32
    var job: UnownedJob
  }

  private enum Timer {
    case resume(UInt64)
    case action(@Sendable () -> Void)
  }

  private struct State {
    var ready: [Job] = []
    var held: [UInt32: [Job]] = [:]
    var pausedUntil: [UInt32: VirtualTime] = [:]
    var timers = EventQueue<Timer>()
    var sleepers: [UInt64: UnsafeContinuation<Void, any Error>] = [:]
    var nextSleeper: UInt64 = 0
    var now = VirtualTime.zero
    var rng: SeededRandom
    var jobsRun: UInt64 = 0
  }

  private let state: Mutex<State>
  private let processes = Mutex<[UInt32: SimulatedProcess]>([:])

  /// Creates a scheduler whose choices come from `seed`.
  public init(seed: UInt64) {
    state = Mutex(State(rng: SeededRandom(seed: seed ^ 0x5EED_5C4E_D01E_0000)))
  }

  /// The virtual time.
  public var now: VirtualTime { state.withLock { $0.now } }

  /// Jobs run so far.
  public var jobsRun: UInt64 { state.withLock { $0.jobsRun } }

  /// The executor of process `tag`: tasks that prefer it run here, tagged with it.
  public func executor(for tag: UInt32) -> SimulatedProcess {
    processes.withLock { table in
      if let existing = table[tag] { return existing }
      let process = SimulatedProcess(tag: tag, scheduler: self)
      table[tag] = process
      return process
    }
  }

  /// Starts `operation` as a task of process `tag` (a top-level task: not a child of the caller).
  @discardableResult
  public func spawn<T: Sendable>(
    on tag: UInt32, _ operation: sending @escaping @isolated(any) () async -> T
  ) -> Task<T, Never> {
    Task(executorPreference: executor(for: tag), operation: operation)
  }

  fileprivate func enqueue(_ job: UnownedJob, process: UInt32) {
    state.withLock { s in
      if let until = s.pausedUntil[process], until > s.now {
        s.held[process, default: []].append(Job(process: process, job: job))
      } else {
        s.ready.append(Job(process: process, job: job))
      }
    }
  }

  /// Holds back every job of process `tag` until `time` (jobs already running finish their step).
  public func pause(_ tag: UInt32, until time: VirtualTime) {
    state.withLock { s in
      s.pausedUntil[tag] = max(s.pausedUntil[tag] ?? .zero, time)
      var kept: [Job] = []
      for job in s.ready {
        if job.process == tag { s.held[tag, default: []].append(job) } else { kept.append(job) }
      }
      s.ready = kept
      s.timers.schedule(.action({ [weak self] in self?.release(tag) }), at: time)
    }
  }

  private func release(_ tag: UInt32) {
    state.withLock { s in
      guard let until = s.pausedUntil[tag], until <= s.now else { return }
      s.pausedUntil[tag] = nil
      s.ready.append(contentsOf: s.held.removeValue(forKey: tag) ?? [])
    }
  }

  /// Whether process `tag` is paused now.
  public func isPaused(_ tag: UInt32) -> Bool {
    state.withLock { s in (s.pausedUntil[tag].map { $0 > s.now }) ?? false }
  }

  /// Suspends the calling task until virtual time `time`.
  /// - Throws: `CancellationError` if the task is cancelled first.
  public func sleep(until time: VirtualTime) async throws {
    let id = state.withLock { s -> UInt64 in
      s.nextSleeper += 1
      return s.nextSleeper
    }
    try await withTaskCancellationHandler {
      try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
        let cancelled = Task.isCancelled
        let resumeNow = state.withLock { s -> Bool in
          if cancelled { return true }
          s.sleepers[id] = continuation
          s.timers.schedule(.resume(id), at: max(time, s.now))
          return false
        }
        if resumeNow { continuation.resume(throwing: CancellationError()) }
      }
    } onCancel: {
      let continuation = state.withLock { $0.sleepers.removeValue(forKey: id) }
      continuation?.resume(throwing: CancellationError())
    }
  }

  /// Suspends the calling task for `duration` of virtual time.
  public func sleep(for duration: VirtualDuration) async throws {
    try await sleep(until: now + duration)
  }

  /// Runs `action` on the scheduler's thread when virtual time reaches `time` (between jobs).
  public func schedule(at time: VirtualTime, _ action: @escaping @Sendable () -> Void) {
    state.withLock { s in s.timers.schedule(.action(action), at: max(time, s.now)) }
  }

  /// Draws from the scheduler's generator (for choices that must follow the seed).
  public func random<T>(_ body: (inout SeededRandom) -> T) -> T {
    state.withLock { s in body(&s.rng) }
  }

  /// Why ``run(until:stopWhen:afterEachJob:)`` returned.
  public enum RunOutcome: Sendable, Equatable {
    /// The stop condition became true.
    case stopped
    /// Virtual time reached the deadline.
    case deadline
    /// Nothing is ready and no timer is pending: every task is waiting for something that will never come.
    case idle
  }

  /// Runs jobs and timers until `stopWhen` returns true, virtual time passes `deadline`, or nothing is left.
  ///
  /// `afterEachJob` runs after every job and every timer (the simulator checks invariants there); an error it
  /// throws ends the run and is rethrown. Call from one thread at a time.
  public func run(
    until deadline: VirtualTime, stopWhen: () -> Bool = { false }, afterEachJob: () throws -> Void = {}
  ) throws -> RunOutcome {
    while true {
      if stopWhen() { return .stopped }
      let next: Job? = state.withLock { s in
        guard !s.ready.isEmpty else { return nil }
        let pick = s.ready.count == 1 ? 0 : Int.random(in: 0..<s.ready.count, using: &s.rng)
        s.ready.swapAt(pick, s.ready.count - 1)
        s.jobsRun += 1
        return s.ready.removeLast()
      }
      if let next {
        let process = executor(for: next.process)
        next.job.runSynchronously(
          isolatedTo: process.asUnownedSerialExecutor(), taskExecutor: process.asUnownedTaskExecutor())
        try afterEachJob()
        continue
      }
      enum Fired {
        case none
        case past
        case timer(Timer)
      }
      let fired: Fired = state.withLock { s in
        guard let time = s.timers.nextTime else { return .none }
        guard time <= deadline else { return .past }
        guard let (at, timer) = s.timers.pop() else { return .none }
        s.now = max(s.now, at)
        return .timer(timer)
      }
      switch fired {
      case .none:
        return .idle
      case .past:
        state.withLock { $0.now = max($0.now, deadline) }
        return .deadline
      case .timer(.resume(let id)):
        let continuation = state.withLock { $0.sleepers.removeValue(forKey: id) }
        continuation?.resume()
      case .timer(.action(let action)):
        action()
      }
      try afterEachJob()
    }
  }
}

/// One simulated process's executor: the scheduler's, with the process's tag on every job.
public final class SimulatedProcess: TaskExecutor, SerialExecutor, Sendable {
  /// The process's tag.
  public let tag: UInt32
  private unowned let scheduler: SimulationScheduler

  init(tag: UInt32, scheduler: SimulationScheduler) {
    self.tag = tag
    self.scheduler = scheduler
  }

  public func enqueue(_ job: consuming ExecutorJob) {
    scheduler.enqueue(UnownedJob(job), process: tag)
  }

  public func asUnownedSerialExecutor() -> UnownedSerialExecutor { UnownedSerialExecutor(ordinary: self) }
}
