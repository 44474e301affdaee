import QuorumCore
import QuorumKV
import QuorumRaft
import QuorumReplica
import QuorumStorage
import Synchronization
import Testing

/// Memory storage whose next writes fail as when the process runs out of file descriptors.
final class DescriptorStarvedStorage: ConsensusStorage, Sendable {
  let inner = MemoryStorage<LogEntry>()
  let failures = Atomic<Int>(0)
  let refused = Atomic<Int>(0)
  /// Compactions still to refuse, refused, and done.
  let compactFailures = Atomic<Int>(0)
  let compactRefused = Atomic<Int>(0)
  let compacted = Atomic<Int>(0)

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
  func compact(through index: UInt64) async throws {
    if compactFailures.load(ordering: .relaxed) > 0 {
      compactFailures.subtract(1, ordering: .relaxed)
      compactRefused.add(1, ordering: .relaxed)
      throw StorageError.descriptorsExhausted(operation: "open", path: "test", errno: 24)
    }
    try await inner.compact(through: index)
    compacted.add(1, ordering: .relaxed)
  }
  func close() async throws { try await inner.close() }
}

/// Records how far each recorded snapshot's report says the storage is compacted.
final class CompactionReports: ReplicaObserver, Sendable {
  let reports = Mutex<[UInt64]>([])

  func node(_ node: NodeID, group: GroupID, willCarryOut ready: ReplicaReady<RaftEngine>, engine: RaftEngine) {}
  func node(_ node: NodeID, group: GroupID, didPersist ready: ReplicaReady<RaftEngine>) {}
  func node(_ node: NodeID, group: GroupID, applied entry: LogEntry) {}
  func node(_ node: NodeID, group: GroupID, recordedSnapshotAt index: UInt64, compactedThrough: UInt64) {
    reports.withLock { $0.append(compactedThrough) }
  }
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

  @Test("a compaction that finds no descriptor is skipped: the node keeps running and compacts after a later snapshot")
  func nodeSkipsStarvedCompactions() async throws {
    let storage = DescriptorStarvedStorage()
    storage.compactFailures.store(1, ordering: .relaxed)
    let observer = CompactionReports()
    let transport = InProcessTransport<RaftMessage>()
    let configuration = try LiveCluster.fast(members: [1]) {
      $0.snapshotEvery = 4
      $0.snapshotRetainEntries = 0
    }
    let node = RaftNode(
      id: 1, configuration: configuration, endpoint: try transport.bind(1), storage: storage, machine: KVStore(),
      logger: QuorumLogger(label: "test", sink: NullLogSink()), observer: observer)
    let running = Task { try await node.run() }
    try await eventually("the single node to lead") { await node.status.role == .leader }
    var key = 0
    try await eventually("a compaction after the refused one") {
      key += 1
      _ = try await node.propose(.put(key: "k\(key)", value: [1]))
      return storage.compacted.load(ordering: .relaxed) > 0
    }
    #expect(storage.compactRefused.load(ordering: .relaxed) == 1)
    // The first snapshot's compaction was refused: its report says nothing was compacted.
    #expect(observer.reports.withLock { $0.first } == 0)
    #expect(await node.localQuery(.get(key: "k\(key)")) == .value([1]))
    await node.shutdown()
    try await running.value
  }
}
