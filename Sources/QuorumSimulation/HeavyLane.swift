import Dispatch
import Glibc
import QuorumCore
import Synchronization

/// Threads outside Swift's cooperative pool that run the jobs of long synchronous work — seeded simulations,
/// model checks, fuzzing loops — as a task executor.
///
/// Why: Swift's cooperative pool has one thread per core. Work that computes for seconds holds one of them for
/// all that time, and in a parallel test run on two cores two such tests hold the whole pool: every task that
/// waits on real time (a heartbeat, a timeout, a TCP round trip) then waits behind them. Work on the lane
/// leaves the pool's threads free, and the operating system shares the cores between the lane and the pool.
///
/// Use it as a task executor preference (`withTaskExecutorPreference(HeavyLane.shared) { … }`): the
/// nonisolated code of the closure, and of the child tasks it starts, runs on the lane; actors keep their own
/// executors. The lane has one thread per core, taking jobs first in first out.
public final class HeavyLane: TaskExecutor, Sendable {
  /// The lane of this process. One is enough: the cores it shares are the process's.
  public static let shared = HeavyLane(threads: max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN))))

  /// Jobs waiting for a thread of the lane, first in first out.
  private let jobs = Mutex(FIFOQueue<UnownedJob>())
  /// One signal per queued job.
  private let ready = DispatchSemaphore(value: 0)
  /// The lane's threads, as they start.
  private let threads = Mutex<[pthread_t]>([])

  private init(threads count: Int) {
    for _ in 0..<count { SimulationRunner.startLaneThread { [self] in run() } }
  }

  /// Whether the caller runs on one of the lane's threads.
  public var isCurrent: Bool {
    let me = pthread_self()
    return threads.withLock { $0.contains { pthread_equal($0, me) != 0 } }
  }

  /// Queues a job; a thread of the lane runs it after the jobs queued before it have started.
  public func enqueue(_ job: consuming ExecutorJob) {
    let unowned = UnownedJob(job)
    jobs.withLock { $0.append(unowned) }
    ready.signal()
  }

  private func run() -> Never {
    let executor = asUnownedTaskExecutor()
    threads.withLock { $0.append(pthread_self()) }
    while true {
      ready.wait()
      // One signal per job, and only a thread that took a signal takes a job: there is one.
      guard let job = jobs.withLock({ $0.popFirst() }) else { continue }
      job.runSynchronously(on: executor)
    }
  }
}
