import Dispatch
import QuorumCore
import Synchronization
import Testing

@Suite("ThreadBatch defers work to the end of a thread's pass")
struct ThreadBatchTests {
  @Test("work deferred in a pass runs after it, in order, on the same thread; outside a pass nothing is deferred")
  func deferredWorkRunsAfterThePass() {
    // On a thread of its own: the pass is per thread, and the test's task may move between threads. What
    // `deferUntilEnd` returns is logged and checked below, on the test's task: an expectation failing on this
    // Dispatch thread would be attributed to no test.
    let log = Mutex<[String]>([])
    let done = DispatchSemaphore(value: 0)
    DispatchQueue.global().async {
      let note = { (line: String) in log.withLock { $0.append(line) } }
      note("outside a pass: \(ThreadBatch.deferUntilEnd { note("never") })")
      ThreadBatch.run {
        note("body 1")
        note("deferred: \(ThreadBatch.deferUntilEnd { note("first") })")
        // A pass inside a pass is part of it: its deferred work waits for the outer pass.
        ThreadBatch.run {
          let deferred = ThreadBatch.deferUntilEnd {
            note("second")
            // Work deferred by deferred work runs before the pass returns.
            note("deferred again: \(ThreadBatch.deferUntilEnd { note("third") })")
          }
          note("deferred in the inner pass: \(deferred)")
        }
        note("body 2")
      }
      note("after")
      note("outside a pass: \(ThreadBatch.deferUntilEnd { note("never") })")
      done.signal()
    }
    done.wait()
    #expect(
      log.withLock { $0 } == [
        "outside a pass: false", "body 1", "deferred: true", "deferred in the inner pass: true", "body 2", "first",
        "second", "deferred again: true", "third", "after", "outside a pass: false",
      ])
  }
}
