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
}
