import QuorumCore
import QuorumKV
import QuorumRaft
import QuorumStorage
import Synchronization
import Testing

/// Memory storage whose next writes fail as when the process runs out of file descriptors.
final class DescriptorStarvedStorage: ConsensusStorage, Sendable {
  let inner = MemoryStorage<LogEntry>()
  let failures = Atomic<Int>(0)
  let refused = Atomic<Int>(0)

  func recover() async throws -> RecoveredState<LogEntry> { try await inner.recover() }
  func write(_ write: StorageWrite<LogEntry>) async throws {
    if failures.load(ordering: .relaxed) > 0 {
      failures.subtract(1, ordering: .relaxed)
      refused.add(1, ordering: .relaxed)
      throw StorageError.descriptorsExhausted(operation: "open", path: "test", errno: 24)
    }
    try await inner.write(write)
  }
  func saveSnapshot(_ snapshot: StoredSnapshot, discardingLog: Bool) async throws {
    try await inner.saveSnapshot(snapshot, discardingLog: discardingLog)
  }
  func compact(through index: UInt64) async throws { try await inner.compact(through: index) }
  func close() async throws { try await inner.close() }
}

@Suite("Running out of file descriptors", .timeLimit(.minutes(1)))
struct DescriptorRetryTests {
  @Test("a write that finds no descriptor is retried: the node keeps running and commits once descriptors return")
  func nodeRetriesStarvedWrites() async throws {
    let storage = DescriptorStarvedStorage()
    let transport = InProcessTransport<RaftMessage>()
    let node = RaftNode(
      id: 1, configuration: try LiveCluster.fast(members: [1]), endpoint: try transport.bind(1), storage: storage,
      machine: KVStore(), logger: QuorumLogger(label: "test", sink: NullLogSink()))
    let running = Task { try await node.run() }
    try await eventually("the single node to lead") { await node.status.role == .leader }
    _ = try await node.propose(.put(key: "before", value: [1]))
    storage.failures.store(4, ordering: .relaxed)
    _ = try await node.propose(.put(key: "during", value: [2]))
    #expect(storage.refused.load(ordering: .relaxed) == 4, "the write was refused, then retried")
    #expect(await node.localQuery(.get(key: "during")) == .value([2]))
    await node.shutdown()
    try await running.value
  }
}
