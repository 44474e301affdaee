import CQuorumSystem
import Dispatch
import Glibc
import QuorumCore
import Synchronization

/// Monotonic nanoseconds (CLOCK_MONOTONIC).
func monotonicNanos() -> UInt64 {
  var ts = timespec()
  clock_gettime(CLOCK_MONOTONIC, &ts)
  return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Something registered with an ``EventLoop`` for readiness events. Called on the loop thread only.
protocol LoopHandler: AnyObject {
  /// Handles the epoll readiness bits `events`.
  func handle(events: UInt32)
  /// Called once when the loop shuts down with the handler still registered: close the descriptor.
  func loopDidShutDown()
}

/// A reference-counted box for a thread body (pthread passes one raw pointer).
private final class ThreadBody {
  let run: @Sendable () -> Void
  init(_ run: @escaping @Sendable () -> Void) { self.run = run }
}

/// Starts a detached thread running `body`; returns `false` if the system refused.
func startDetachedThread(_ body: @escaping @Sendable () -> Void) -> Bool {
  let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
  var thread = pthread_t()
  let result = pthread_create(
    &thread, nil,
    { argument in
      // The pointer is the retained ThreadBody passed below; it is always present.
      guard let argument else { return nil }
      Unmanaged<ThreadBody>.fromOpaque(argument).takeRetainedValue().run()
      return nil
    }, box)
  guard result == 0 else {
    Unmanaged<ThreadBody>.fromOpaque(box).release()
    return false
  }
  pthread_detach(thread)
  return true
}

/// One thread that owns a set of sockets: it waits in `epoll_wait`, reads, writes, accepts and connects,
/// and runs timers. Other threads (Swift tasks included) never touch the sockets; they hand work over with
/// ``execute(_:)``, which queues a closure under a mutex and wakes the loop through an `eventfd` (one
/// `write` per wake-up, however many closures are queued in the meantime).
///
/// Swift's cooperative pool is never blocked: the loop thread is a dedicated pthread, and tasks that wait
/// for it suspend on continuations that the loop resumes.
final class EventLoop: @unchecked Sendable {
  // Safety of @unchecked Sendable: `commands`, `wakePending`, `stopped` and `thread` are synchronised (Mutex/Atomic);
  // every other stored property is read and written only on the loop thread, from `run()` and from the
  // closures and handlers it calls. The file descriptors are immutable after init.
  private struct Timer {
    var id: UInt64
    var deadline: UInt64
    var action: () -> Void
  }

  private let epollFD: Int32
  private let wakeFD: Int32
  private let commands = Mutex<[@Sendable () -> Void]>([])
  private let wakePending = Atomic<Bool>(false)
  private let stopped = Atomic<Bool>(false)
  /// The loop's thread, once it runs.
  private let thread = Atomic<UInt>(0)
  let logger: QuorumLogger

  private var handlers: [UInt64: any LoopHandler] = [:]
  private var nextToken: UInt64 = 1
  private var timers: [Timer] = []
  private var nextTimerID: UInt64 = 1
  private var running = true
  /// Scratch space for reads, shared by every connection of this loop (one thread reads at a time): taken for a
  /// read (``takeReadScratch()``) and given back after it. Loop thread only.
  private var readScratch: [UInt8] = []
  /// Where host names are resolved (the system resolver blocks), so the loop never waits for DNS.
  private let resolver = DispatchQueue(label: "quorum.tcp.resolver", qos: .utility, attributes: .concurrent)
  /// Work to do once per loop iteration, after all events (used to batch flushes).
  private var afterEvents: [() -> Void] = []
  /// Passes through `epoll_wait`, for a failure report (a loop that stopped turning shows it).
  private var iterations: UInt64 = 0

  /// Creates the epoll instance and the wake-up eventfd; the thread starts with ``start()``.
  init(logger: QuorumLogger) throws(TCPTransportError) {
    let epollFD = cq_epoll_create()
    guard epollFD >= 0 else { throw .system(operation: "epoll_create1", address: nil, errno: errno) }
    let wakeFD = cq_eventfd()
    guard wakeFD >= 0 else {
      let code = errno
      Glibc.close(epollFD)
      throw .system(operation: "eventfd", address: nil, errno: code)
    }
    guard cq_epoll_ctl(epollFD, 1, wakeFD, CQ_EPOLLIN, 0) == 0 else {
      let code = errno
      Glibc.close(epollFD)
      Glibc.close(wakeFD)
      throw .system(operation: "epoll_ctl", address: nil, errno: code)
    }
    self.epollFD = epollFD
    self.wakeFD = wakeFD
    self.logger = logger
  }

  /// The read scratch buffer (256 KiB), taken from the loop until ``returnReadScratch(_:)``; a fresh one if it is
  /// already taken (a read inside another's delivery). Loop thread only.
  func takeReadScratch() -> [UInt8] {
    var scratch: [UInt8] = []
    swap(&scratch, &readScratch)
    if scratch.isEmpty { scratch = [UInt8](repeating: 0, count: 256 << 10) }
    return scratch
  }

  /// Gives the read scratch buffer back, for the next read. Loop thread only.
  func returnReadScratch(_ scratch: inout [UInt8]) {
    swap(&scratch, &readScratch)
  }

  /// Starts the loop thread.
  func start() throws(TCPTransportError) {
    guard startDetachedThread({ [self] in run() }) else {
      throw .system(operation: "pthread_create", address: nil, errno: errno)
    }
  }

  /// Whether ``stop()`` has taken effect (the loop no longer runs commands it is given).
  var isStopped: Bool { stopped.load(ordering: .acquiring) }

  /// Resolves `address` — at once if it is numeric, otherwise on the resolver queue — and calls
  /// `completion` with the numeric address on the loop thread. Nothing is called if the loop stopped.
  func resolve(_ address: TCPAddress, then completion: @escaping @Sendable (Result<TCPAddress, TCPCloseReason>) -> Void)
  {
    if address.isNumeric {
      completion(.success(address))
      return
    }
    resolver.async { [self] in
      let result = address.resolved()
      _ = execute { completion(result) }
    }
  }

  /// Runs `work` on the loop thread soon. Returns `false` (and drops `work`) if the loop has stopped.
  @discardableResult
  func execute(_ work: @escaping @Sendable () -> Void) -> Bool {
    if isCurrentThread && !stopped.load(ordering: .acquiring) {
      // Queued by the loop itself (a node running on it sending, a job it resumed): run after the current
      // events, before the loop waits again — no write to the wake-up descriptor, no extra pass through epoll.
      afterEvents.append(work)
      return true
    }
    let accepted = commands.withLock { queue -> Bool in
      if stopped.load(ordering: .acquiring) { return false }
      queue.append(work)
      return true
    }
    guard accepted else { return false }
    if !wakePending.exchange(true, ordering: .acquiringAndReleasing) {
      var one: UInt64 = 1
      _ = Glibc.write(wakeFD, &one, 8)
    }
    return true
  }

  /// Runs `work` on the loop thread and waits for it; `nil` if the loop has stopped.
  func submit<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T? {
    await withUnsafeContinuation { (continuation: UnsafeContinuation<T?, Never>) in
      let accepted = execute { continuation.resume(returning: work()) }
      if !accepted { continuation.resume(returning: nil) }
    }
  }

  /// Stops the loop: registered handlers are told to close, then the thread exits.
  func stop() {
    execute { [self] in running = false }
  }

  // MARK: Loop-thread API

  /// Registers `fd` for `events`; returns its token, or `nil` if epoll refused.
  func register(_ fd: Int32, _ handler: any LoopHandler, events: UInt32) -> UInt64? {
    let token = nextToken
    nextToken += 1
    guard cq_epoll_ctl(epollFD, 1, fd, events, token) == 0 else { return nil }
    handlers[token] = handler
    return token
  }

  /// Changes the interest of a registered descriptor.
  func modify(_ fd: Int32, token: UInt64, events: UInt32) -> Bool {
    cq_epoll_ctl(epollFD, 3, fd, events, token) == 0
  }

  /// Removes a descriptor from epoll (keeping the handler if `keepHandler`).
  func unregister(_ fd: Int32, token: UInt64, keepHandler: Bool = false) {
    _ = cq_epoll_ctl(epollFD, 2, fd, 0, token)
    if !keepHandler { handlers[token] = nil }
  }

  /// Re-adds a descriptor removed with `keepHandler: true`.
  func reregister(_ fd: Int32, token: UInt64, events: UInt32) -> Bool {
    cq_epoll_ctl(epollFD, 1, fd, events, token) == 0
  }

  /// Forgets a handler whose descriptor is no longer registered.
  func forget(token: UInt64) { handlers[token] = nil }

  /// Runs `action` on the loop thread after `delay`; returns an identifier for ``cancelTimer(_:)``.
  @discardableResult
  func schedule(after delay: Duration, _ action: @escaping () -> Void) -> UInt64 {
    let id = nextTimerID
    nextTimerID += 1
    timers.append(Timer(id: id, deadline: monotonicNanos() &+ delay.nanoseconds, action: action))
    return id
  }

  /// Cancels a timer (harmless if it already ran).
  func cancelTimer(_ id: UInt64) {
    if let index = timers.firstIndex(where: { $0.id == id }) { timers.remove(at: index) }
  }

  /// Runs `action` once after the current batch of events (so many frames queued in one batch are flushed
  /// with one system call).
  func afterCurrentEvents(_ action: @escaping () -> Void) {
    afterEvents.append(action)
  }

  /// The loop's state in one line, for a failure report (loop thread).
  var stateDescription: String {
    let queued = commands.withLock { $0.count }
    return "iterations=\(iterations) handlers=\(handlers.count) timers=\(timers.count) commands-queued=\(queued) "
      + "wake-pending=\(wakePending.load(ordering: .relaxed))"
  }

  // MARK: The loop

  /// Whether the caller runs on the loop's thread.
  var isCurrentThread: Bool { pthread_equal(thread.load(ordering: .acquiring), pthread_self()) != 0 }

  private func run() {
    thread.store(pthread_self(), ordering: .releasing)
    var tokens = [UInt64](repeating: 0, count: 256)
    var events = [UInt32](repeating: 0, count: 256)
    while running {
      iterations &+= 1
      let timeout = nextTimeoutMillis()
      let count = tokens.withUnsafeMutableBufferPointer { t in
        events.withUnsafeMutableBufferPointer { e in
          cq_epoll_wait(epollFD, t.baseAddress!, e.baseAddress!, 256, timeout)  // safe: 256 elements each
        }
      }
      if count < 0 {
        let code = errno
        if code != EINTR { logger.error("epoll_wait failed: \(errnoDescription(code))") }
        continue
      }
      // One pass: what the turns run here defer (a shared log's wake-up of its writer) happens once, after all
      // of them (``QuorumCore/ThreadBatch``).
      ThreadBatch.run {
        for index in 0..<Int(count) {
          let token = tokens[index]
          if token == 0 {
            drainCommands()
          } else if let handler = handlers[token] {
            handler.handle(events: events[index])
          }
        }
        runAfterEvents()
        runDueTimers()
      }
    }
    shutDown()
  }

  private func runAfterEvents() {
    while !afterEvents.isEmpty {
      let actions = afterEvents
      afterEvents = []
      for action in actions { action() }
    }
  }

  private func nextTimeoutMillis() -> Int32 {
    if !afterEvents.isEmpty { return 0 }
    guard let earliest = timers.min(by: { $0.deadline < $1.deadline })?.deadline else { return -1 }
    let now = monotonicNanos()
    if earliest <= now { return 0 }
    let millis = (earliest - now + 999_999) / 1_000_000
    return Int32(min(millis, 60_000))
  }

  private func runDueTimers() {
    guard !timers.isEmpty else { return }
    let now = monotonicNanos()
    var due: [Timer] = []
    timers.removeAll { timer in
      guard timer.deadline <= now else { return false }
      due.append(timer)
      return true
    }
    due.sort { $0.deadline < $1.deadline }
    for timer in due { timer.action() }
    runAfterEvents()
  }

  private func drainCommands() {
    var counter: UInt64 = 0
    _ = Glibc.read(wakeFD, &counter, 8)
    // Clear the flag before taking the queue: a command queued after this point wakes the loop again.
    wakePending.store(false, ordering: .sequentiallyConsistent)
    let work = commands.withLock { queue -> [@Sendable () -> Void] in
      let taken = queue
      queue.removeAll(keepingCapacity: true)
      return taken
    }
    for item in work { item() }
  }

  private func shutDown() {
    let remaining = commands.withLock { queue -> [@Sendable () -> Void] in
      stopped.store(true, ordering: .releasing)
      let taken = queue
      queue.removeAll()
      return taken
    }
    for handler in Array(handlers.values) { handler.loopDidShutDown() }
    handlers.removeAll()
    // Commands queued before the stop still run (they resume waiting continuations), after every socket
    // is closed.
    for item in remaining { item() }
    runAfterEvents()
    timers.removeAll()
    Glibc.close(epollFD)
    Glibc.close(wakeFD)
  }
}

/// The loop is also a task executor: a task started with it as its executor preference (see
/// ``InboundConnection``'s stalled deliveries) runs its jobs on the loop's thread, between events, so that a
/// continuation resumed by another thread (a consumer making room in a mailbox) continues at once rather than
/// waiting for a thread of the cooperative pool.
extension EventLoop: TaskExecutor {
  func enqueue(_ job: consuming ExecutorJob) {
    let job = UnownedJob(job)
    let executor = asUnownedTaskExecutor()
    if execute({ job.runSynchronously(on: executor) }) { return }
    // The loop has stopped: the job must still run (its task holds a mailbox sender or a continuation that
    // someone awaits), so it runs on a Dispatch thread. Such a task only finishes: it finds the mailbox closed
    // and its hand-back to the loop is refused.
    DispatchQueue.global().async { job.runSynchronously(on: executor) }
  }
}
