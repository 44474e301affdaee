import Dispatch
import Glibc

/// A bounded record of the most recent events of one simulated run, printed when the run fails.
///
/// Recording is off on the first pass over a seed (it costs string building on every event); the runner
/// replays a failing seed with recording on, which reproduces the same run exactly because the run is a
/// function of its seed.
///
/// Safety of `@unchecked Sendable`: a trace belongs to one simulated run, and a run executes on one thread (a simulation's
/// scheduler runs every job of the run on the thread that drives it), so it is never touched concurrently.
public final class SimulationTrace: @unchecked Sendable {
  /// Whether events are being recorded.
  public let isEnabled: Bool
  /// The most events kept; older ones are discarded.
  public let capacity: Int
  private var lines: [String] = []
  private var next = 0
  /// How many events were recorded in total, including discarded ones.
  public private(set) var recorded = 0
  /// A digest (FNV-1a) of every event recorded, kept or discarded: two runs with equal digests did the same
  /// things at the same virtual times.
  public private(set) var digest: UInt64 = 0xcbf2_9ce4_8422_2325

  /// Creates a trace keeping the last `capacity` events, or recording nothing when disabled.
  public init(enabled: Bool, capacity: Int = 300) {
    self.isEnabled = enabled
    self.capacity = max(1, capacity)
  }

  /// Records an event; the text is only built when recording is on.
  public func record(_ time: VirtualTime, _ text: @autoclosure () -> String) {
    guard isEnabled else { return }
    let line = "[\(time)] \(text())"
    for byte in line.utf8 { digest = (digest ^ UInt64(byte)) &* 0x100_0000_01b3 }
    if lines.count < capacity {
      lines.append(line)
    } else {
      lines[next] = line
      next = (next + 1) % capacity
    }
    recorded += 1
  }

  /// The kept events, oldest first.
  public var events: [String] {
    lines.count < capacity ? lines : Array(lines[next...] + lines[..<next])
  }
}

/// A broken invariant or failed check found by a simulated run.
public struct SimulationFailure: Error, CustomStringConvertible {
  /// What went wrong, with the state that shows it.
  public var message: String
  /// Creates a failure.
  public init(_ message: String) { self.message = message }
  public var description: String { message }
}

/// The outcome of running many seeds.
public struct SimulationReport: Sendable, CustomStringConvertible {
  /// A seed whose run failed.
  public struct FailedSeed: Sendable {
    /// The seed that reproduces the failure.
    public var seed: UInt64
    /// What went wrong.
    public var message: String
    /// The last events before the failure (from a replay with tracing on).
    public var trace: [String]
  }

  /// How many seeds were run.
  public var seedsRun: Int
  /// The first failing seed, if any.
  public var failure: FailedSeed?

  /// Creates a report.
  public init(seedsRun: Int, failure: FailedSeed?) {
    self.seedsRun = seedsRun
    self.failure = failure
  }

  /// Whether every seed passed.
  public var passed: Bool { failure == nil }

  public var description: String {
    guard let failure else { return "\(seedsRun) seeds passed" }
    var text = "seed \(failure.seed) FAILED after \(seedsRun) seeds: \(failure.message)\n"
    if !failure.trace.isEmpty {
      text += "last \(failure.trace.count) events of seed \(failure.seed):\n"
      for line in failure.trace { text += "  \(line)\n" }
    }
    text += "reproduce with: swift package simulate --seed \(failure.seed)"
    return text
  }
}

/// Runs a simulation body over many seeds and reports the first failure with its trace.
public enum SimulationRunner {
  /// Runs `body` once per seed until one throws.
  ///
  /// - Parameters:
  ///   - seeds: the seeds to try, in order.
  ///   - traceCapacity: how many trailing events to show for a failing seed.
  ///   - body: one simulated run; it must be a pure function of the seed. It receives a trace to record
  ///     events into (disabled on the first pass) and throws on any broken invariant.
  public static func run(
    seeds: some Sequence<UInt64>, traceCapacity: Int = 300,
    _ body: (_ seed: UInt64, _ trace: SimulationTrace) throws -> Void
  ) -> SimulationReport {
    var count = 0
    for seed in seeds {
      count += 1
      do {
        try body(seed, SimulationTrace(enabled: false))
      } catch {
        let trace = SimulationTrace(enabled: true, capacity: traceCapacity)
        var message = "\(error)"
        do {
          try body(seed, trace)
          message += " (the replay with tracing on passed: the run is not a pure function of its seed)"
        } catch {
          let replayed = "\(error)"
          if replayed != message {
            // Tracing changed the run: both failures matter, and the run is not a pure function of its seed.
            message +=
              " (the replay with tracing on failed otherwise, so the run is not a pure function of its "
              + "seed: \(replayed))"
          }
        }
        return SimulationReport(
          seedsRun: count, failure: .init(seed: seed, message: message, trace: trace.events))
      }
    }
    return SimulationReport(seedsRun: count, failure: nil)
  }

  /// Like ``run(seeds:traceCapacity:_:)``, for async callers with long runs: the seeds run on a Dispatch
  /// thread outside Swift's cooperative pool, so a run of many seconds does not hold one of the pool's few
  /// threads (one per core) and starve the tasks beside it — in a parallel test run, the tests that wait on
  /// real time.
  public static func runDetached(
    seeds: some Sequence<UInt64> & Sendable, traceCapacity: Int = 300,
    _ body: @escaping @Sendable (_ seed: UInt64, _ trace: SimulationTrace) throws -> Void
  ) async -> SimulationReport {
    await withCheckedContinuation { continuation in
      startThread {
        continuation.resume(returning: run(seeds: seeds, traceCapacity: traceCapacity, body))
      }
    }
  }

  /// Runs `work` — one long simulated run, say — on a thread of its own, outside
  /// Swift's cooperative pool, and returns what it returns: the async form of a synchronous run, for the same
  /// reason as ``runDetached(seeds:traceCapacity:_:)``.
  /// - Throws: what `work` throws.
  public static func offPool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
      startThread { continuation.resume(with: Result { try work() }) }
    }
  }

  /// Runs `work` on a new thread of its own, outside Swift's cooperative pool (which has one thread per core):
  /// a batch of seeds is long synchronous work, and the tasks beside it that wait on real time (timeouts,
  /// heartbeats) must still get a pool thread when they need one. The thread keeps the normal priority: a
  /// lowered one can hold a lock that pool threads need (the test library records every thrown error under a
  /// process-wide lock) and then make them wait behind every other thread of the machine. It ends when `work`
  /// returns.
  ///
  /// Such threads take turns: at most ``concurrentThreads`` of them run at once (one fewer than the machine
  /// has cores, at least one), and the others wait on their own threads. Off the pool is not off the CPU: ten
  /// simulations running side by side on two cores would leave the pool's threads a sixth of a core each, and
  /// the tasks beside them would starve as surely as if the simulations held the pool.
  private static func startThread(_ work: @escaping @Sendable () -> Void) {
    let gate = cpuGate
    let turn: @Sendable () -> Void = {
      gate.wait()
      defer { gate.signal() }
      work()
    }
    startRawThread(turn)
  }

  /// Starts a thread of ``HeavyLane``, which runs for the life of the process.
  static func startLaneThread(_ work: @escaping @Sendable () -> Void) {
    startRawThread(work)
  }

  /// How many off-pool simulation threads run at once in this process.
  public static let concurrentThreads = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)) - 1)

  /// The turns of ``startThread(_:)``: one process-wide gate, because the cores it shares are process-wide.
  private static let cpuGate = DispatchSemaphore(value: concurrentThreads)

  private static func startRawThread(_ work: @escaping @Sendable () -> Void) {
    final class Body: Sendable {
      let work: @Sendable () -> Void
      init(_ work: @escaping @Sendable () -> Void) { self.work = work }
    }
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    pthread_attr_setstacksize(&attributes, 16 << 20)
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    let box = Unmanaged.passRetained(Body(work)).toOpaque()
    var thread = pthread_t()
    let started = pthread_create(
      &thread, &attributes,
      { raw in
        // The pointer is the retained Body passed to pthread_create just below; it is never nil.
        guard let raw else { return nil }
        let body = Unmanaged<Body>.fromOpaque(raw).takeRetainedValue()
        body.work()
        return nil
      }, box)
    if started != 0 {
      // No thread (out of resources): run on a Dispatch worker at normal priority rather than not at all.
      let body = Unmanaged<Body>.fromOpaque(box).takeRetainedValue()
      DispatchQueue.global(qos: .userInitiated).async { body.work() }
    }
  }
}
