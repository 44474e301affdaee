import Glibc
import QuorumCore
import QuorumSimulation
import QuorumTCP
import Synchronization
import Testing

/// ``TCPTransport/makeLoopExecutor()``: tasks that prefer it run on the thread that reads the sockets — the
/// thread a directly delivered message arrives on — before and after they suspend, and still run once the
/// transport's endpoints have closed.
@Suite("The transport's loop as a task executor", .timeLimit(.minutes(2)))
struct LoopExecutorTests {
  @Test("a task preferring the loop executor runs on the network thread, across suspensions and after close")
  func tasksRunOnTheLoopThread() async throws {
    let (n1, b, n2) = try await TCPTransportTests.twoNodes(
      cluster: ClusterID(rawValue: "loop-executor-\(UInt64.random(in: 0...UInt64.max))"))
    // The thread messages are delivered on is the loop's.
    let loopThread = Mutex<pthread_t?>(nil)
    #expect(n2.deliverDirectly { _ in loopThread.withLock { $0 = pthread_self() } })
    try n1.send(ConformanceMessage(sender: 1, sequence: 0, payload: []), to: 2)
    try await waitUntil("the message is delivered") { loopThread.withLock { $0 } != nil }
    let network = try #require(loopThread.withLock { $0 })

    let executor = try b.makeLoopExecutor()
    let threads = await Task(executorPreference: executor) { () -> [pthread_t] in
      var seen = [pthread_self()]
      try? await Task.sleep(for: .milliseconds(5))
      seen.append(pthread_self())
      // A child task inherits the preference (an unstructured `Task {}` does not).
      async let child = pthread_self()
      seen.append(await child)
      return seen
    }.value
    #expect(threads.map { pthread_equal($0, network) != 0 } == [true, true, true], "steps on the network thread")
    // The caller of this test is not on it.
    #expect(pthread_equal(pthread_self(), network) == 0)

    await n1.close()
    await n2.close()
    // The loop outlives the endpoints while the executor exists; a task preferring it still runs.
    let after = await Task(executorPreference: executor) { pthread_self() }.value
    #expect(pthread_equal(after, network) != 0)
    withExtendedLifetime(executor) {}
  }

  /// The loop runs its events and jobs as passes of its thread (``QuorumCore/ThreadBatch``): what a handler or a
  /// job defers (a shared log's wake-up of its writer) runs on the loop's thread once they are done.
  @Test("what the loop's events and jobs defer runs after them, on the loop's thread")
  func eventsAndJobsRunInAPass() async throws {
    let (n1, b, n2) = try await TCPTransportTests.twoNodes(
      cluster: ClusterID(rawValue: "loop-pass-\(UInt64.random(in: 0...UInt64.max))"))
    let log = Mutex<[String]>([])
    // An event: a message delivered directly, on the loop's thread.
    #expect(
      n2.deliverDirectly { _ in
        let deferred = ThreadBatch.deferUntilEnd { log.withLock { $0.append("after the event") } }
        log.withLock { $0.append(deferred ? "event" : "event outside a pass") }
      })
    try n1.send(ConformanceMessage(sender: 1, sequence: 0, payload: []), to: 2)
    try await waitUntil("the message is delivered") { !log.withLock { $0.isEmpty } }
    // (Deferred work that never runs would leave one line.)
    if log.withLock({ $0 }) == ["event"] {
      try await waitUntil("the deferred work runs") { log.withLock { $0.count } >= 2 }
    }
    #expect(log.withLock { $0 } == ["event", "after the event"])

    // A job of a task preferring the loop.
    let executor = try b.makeLoopExecutor()
    let ranOn = Mutex<pthread_t?>(nil)
    let (deferred, jobThread) = await Task(executorPreference: executor) { () -> (Bool, pthread_t) in
      let deferred = ThreadBatch.deferUntilEnd { ranOn.withLock { $0 = pthread_self() } }
      // Not before the pass ends.
      #expect(ranOn.withLock { $0 } == nil)
      return (deferred, pthread_self())
    }.value
    #expect(deferred, "the job runs in a pass")
    if deferred { try await waitUntil("the deferred work runs") { ranOn.withLock { $0 } != nil } }
    #expect(ranOn.withLock { $0 }.map { pthread_equal($0, jobThread) != 0 } == true, "on the loop's thread")

    await n1.close()
    await n2.close()
    withExtendedLifetime(executor) {}
  }
}
