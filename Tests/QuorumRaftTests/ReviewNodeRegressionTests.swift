import QuorumCore
import QuorumKV
import QuorumRaft
import QuorumStorage
import Synchronization
import Testing

final class Counter: Sendable {
  let value = Atomic<Int>(0)
}

/// Memory storage whose writes can be made to fail.
final class FailingStorage: ConsensusStorage {
  let inner = MemoryStorage<LogEntry>()
  let failWrites = Atomic<Bool>(false)

  func recover() async throws -> RecoveredState<LogEntry> { try await inner.recover() }
  func write(_ write: StorageWrite<LogEntry>) async throws {
    if failWrites.load(ordering: .relaxed) { throw StorageError.io(operation: "write", path: "test", errno: 5) }
    try await inner.write(write)
  }
  func saveSnapshot(_ snapshot: StoredSnapshot, discardingLog: Bool) async throws {
    try await inner.saveSnapshot(snapshot, discardingLog: discardingLog)
  }
  func compact(through index: UInt64) async throws { try await inner.compact(through: index) }
  func close() async throws { try await inner.close() }
}

@Suite("Review regressions: RaftNode", .timeLimit(.minutes(1)))
struct ReviewNodeRegressionTests {
  @Test("when a storage write fails, run() ends and every waiting request is answered")
  func storageFailureAnswersWaiters() async throws {
    let storage = FailingStorage()
    let cluster = LiveCluster(configuration: try LiveCluster.fast(members: [1]))
    try await cluster.start(1, storage: storage)
    _ = try await cluster.leader()
    let node = try #require(await cluster.node(1))
    storage.failWrites.store(true, ordering: .relaxed)
    let answered = Counter()
    for i in 0..<2 {
      Task {
        _ = try? await node.propose(.put(key: "k\(i)", value: [1]))
        answered.value.add(1, ordering: .relaxed)
      }
      try await Task.sleep(for: .milliseconds(50))
    }
    let deadline = ContinuousClock.now.advanced(by: .seconds(2))
    while answered.value.load(ordering: .relaxed) < 2 && ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(10))
    }
    #expect(
      answered.value.load(ordering: .relaxed) == 2,
      "a request waiting when the write failed, or sent after, was never answered")
  }
}
