import Glibc

/// Names the seeds that were running when `quorum simulate` crashed.
///
/// A broken invariant inside a protocol core is a `precondition` failure, which kills the process; without
/// this the seed that reproduces it would be lost. Each worker records the seed it is running in its own slot;
/// on SIGILL, SIGTRAP, SIGABRT, SIGSEGV or SIGBUS a handler writes "crashed while running seed …" with the
/// replay command to standard error, then hands the signal to the handler installed before it (Swift's
/// backtracer), so the usual crash report follows.
enum CrashReporter {
  /// The slots and the message prefix, allocated once by ``install(workers:reproduce:)``.
  ///
  /// `nonisolated(unsafe)`: a signal handler can reach only global state. The slots are written by one
  /// worker thread each (aligned 64-bit stores, never torn) and read only by the handler, while the process
  /// dies; the other fields are written once, before any worker starts.
  nonisolated(unsafe) private static var slots: UnsafeMutablePointer<UInt64>?
  nonisolated(unsafe) private static var threads: UnsafeMutablePointer<pthread_t>?
  nonisolated(unsafe) private static var slotCount = 0
  nonisolated(unsafe) private static var reproduce: UnsafeMutablePointer<UInt8>?
  nonisolated(unsafe) private static var reproduceCount = 0
  nonisolated(unsafe) private static var previous: UnsafeMutablePointer<sigaction>?

  private static let signals: [Int32] = [SIGILL, SIGTRAP, SIGABRT, SIGSEGV, SIGBUS]
  private static let idle = UInt64.max

  /// Installs the handler for `workers` workers; `reproduce` is the replay command without the seed.
  static func install(workers: Int, reproduce command: String) {
    let slots = UnsafeMutablePointer<UInt64>.allocate(capacity: max(1, workers))
    slots.initialize(repeating: idle, count: max(1, workers))
    let threads = UnsafeMutablePointer<pthread_t>.allocate(capacity: max(1, workers))
    threads.initialize(repeating: pthread_t(), count: max(1, workers))
    Self.threads = threads
    let text = Array(command.utf8)
    let buffer = UnsafeMutablePointer<UInt8>.allocate(capacity: max(1, text.count))
    buffer.initialize(from: text, count: text.count)
    let previous = UnsafeMutablePointer<sigaction>.allocate(capacity: 32)
    previous.initialize(repeating: sigaction(), count: 32)
    Self.slots = slots
    Self.slotCount = max(1, workers)
    Self.reproduce = buffer
    Self.reproduceCount = text.count
    Self.previous = previous
    for signal in signals {
      var action = sigaction()
      action.__sigaction_handler.sa_sigaction = crashed
      action.sa_flags = SA_SIGINFO
      sigemptyset(&action.sa_mask)
      sigaction(signal, &action, previous + Int(signal))
    }
  }

  /// Records that `worker` is running `seed` (`nil`: nothing).
  static func running(_ seed: UInt64?, worker: Int) {
    guard let slots, let threads, worker < slotCount else { return }
    threads[worker] = pthread_self()
    slots[worker] = seed ?? idle
  }

  private static let crashed:
    @convention(c) (Int32, UnsafeMutablePointer<siginfo_t>?, UnsafeMutableRawPointer?) -> Void = {
      signal, info, context in
      CrashReporter.report()
      if let previous = CrashReporter.previous, signal >= 0, signal < 32 {
        let old = previous[Int(signal)]
        if old.sa_flags & SA_SIGINFO != 0, let handler = old.__sigaction_handler.sa_sigaction {
          handler(signal, info, context)
          return
        }
        var restore = old
        sigaction(signal, &restore, nil)
      }
      raise(signal)
    }

  /// Writes the report with async-signal-safe calls only (no allocation, no locks).
  private static func report() {
    guard let slots, let threads else { return }
    // The signal is delivered to the thread that crashed: name its seed; the others ran concurrently.
    let me = pthread_self()
    var crashed = idle
    for worker in 0..<slotCount where slots[worker] != idle && pthread_equal(threads[worker], me) != 0 {
      crashed = slots[worker]
    }
    if crashed == idle {
      write("\nquorum simulate: crashed while running seeds")
      for worker in 0..<slotCount where slots[worker] != idle {
        write(" ")
        write(number: slots[worker])
      }
      write("\n")
      return
    }
    write("\nquorum simulate: seed ")
    write(number: crashed)
    write(" crashed (a broken invariant; the crash report follows)\nreproduce with: ")
    if let reproduce { _ = Glibc.write(2, reproduce, reproduceCount) }
    write(" --seed ")
    write(number: crashed)
    write("\n")
  }

  private static func write(_ text: StaticString) {
    _ = Glibc.write(2, text.utf8Start, text.utf8CodeUnitCount)
  }

  private static func write(number: UInt64) {
    var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes of stack: room for 20 digits.
    withUnsafeMutableBytes(of: &digits) { raw in
      var n = number
      var i = raw.count
      repeat {
        i -= 1
        raw[i] = UInt8(truncatingIfNeeded: 48 + n % 10)
        n /= 10
      } while n > 0
      if let base = raw.baseAddress { _ = Glibc.write(2, base + i, raw.count - i) }
    }
  }
}
