import Dispatch
import QuorumCore
import Synchronization
import Testing

@Suite("ThreadBatch defers work to the end of a thread's pass")
struct ThreadBatchTests {
  @Test("work deferred in a pass runs after it, in order, on the same thread; outside a pass nothing is deferred")
  func deferredWorkRunsAfterThePass() {
    // On a thread of its own: the pass is per thread, and the test's task may move between threads.
    let log = Mutex<[String]>([])
    let done = DispatchSemaphore(value: 0)
    DispatchQueue.global().async {
      #expect(ThreadBatch.deferUntilEnd { log.withLock { $0.append("never") } } == false)
      ThreadBatch.run {
        log.withLock { $0.append("body 1") }
        #expect(ThreadBatch.deferUntilEnd { log.withLock { $0.append("first") } })
        // A pass inside a pass is part of it: its deferred work waits for the outer pass.
        ThreadBatch.run {
          let deferred = ThreadBatch.deferUntilEnd {
            log.withLock { $0.append("second") }
            // Work deferred by deferred work runs before the pass returns.
            let again = ThreadBatch.deferUntilEnd { log.withLock { $0.append("third") } }
            #expect(again)
          }
          #expect(deferred)
        }
        log.withLock { $0.append("body 2") }
      }
      log.withLock { $0.append("after") }
      #expect(ThreadBatch.deferUntilEnd { log.withLock { $0.append("never") } } == false)
      done.signal()
    }
    done.wait()
    #expect(log.withLock { $0 } == ["body 1", "body 2", "first", "second", "third", "after"])
  }
}
