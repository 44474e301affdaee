import QuorumCore
import QuorumKV
import QuorumPaxos
import QuorumStorage
import Synchronization
import Testing

/// Memory storage whose next snapshot stores, once armed, fail as on a full disk: nothing is stored and the
/// storage stays usable.
final class FullDiskOnSnapshotStorage: ConsensusStorage, Sendable {
  let inner = MemoryStorage<PaxosEntry>(mode: .replace)
  /// Snapshot stores still to refuse, refused, and stored.
  let failures = Atomic<Int>(0)
  let refused = Atomic<Int>(0)
  let stored = Atomic<Int>(0)

  func recover() async throws -> RecoveredState<PaxosEntry> { try await inner.recover() }
  func write(_ write: StorageWrite<PaxosEntry>) async throws { try await inner.write(write) }
  func saveSnapshot(_ snapshot: StoredSnapshot, discardingLog: Bool) async throws {
    if failures.load(ordering: .relaxed) > 0 {
      failures.subtract(1, ordering: .relaxed)
      refused.add(1, ordering: .relaxed)
      // 5 is EIO: the write of the snapshot's file failed.
      throw StorageError.snapshotNotStored(underlying: .io(operation: "write", path: "test", errno: 5))
    }
    try await inner.saveSnapshot(snapshot, discardingLog: discardingLog)
    stored.add(1, ordering: .relaxed)
  }
  func compact(through index: UInt64) async throws { try await inner.compact(through: index) }
  func close() async throws { try await inner.close() }
}

@Suite("Multi-Paxos: installing a leader's snapshot that cannot be stored now", .timeLimit(.minutes(2)))
struct PaxosInstallRetryTests {
  @Test("a replica whose disk refuses the leader's snapshot for a while stays up, stores it later and catches up")
  func replicaRetriesRefusedInstall() async throws {
    let configuration = try PaxosLiveCluster.fast(members: [1, 2, 3]) {
      $0.snapshotEvery = 20
      $0.snapshotRetainEntries = 2
      $0.snapshotChunkBytes = 64
    }
    let storages: [NodeID: FullDiskOnSnapshotStorage] = [1: .init(), 2: .init(), 3: .init()]
    let cluster = PaxosLiveCluster(configuration: configuration)
    do {
      for id in storages.keys.sorted() { try await cluster.start(id, storage: storages[id]) }
      let leader = try await cluster.leader()
      let lagging: NodeID = leader.id == 3 ? 2 : 3
      let storage = try #require(storages[lagging])
      await cluster.stop(lagging)
      for i in 0..<100 {
        _ = try await withPaxosLeader(cluster) {
          try await $0.propose(.put(key: "k\(i)", value: bytes("value-\(i)")))
        }
      }
      let last = try await linearizableRead(cluster, "k99")
      // It applied too little to snapshot on its own before the leader's snapshot arrives: the three refused
      // stores are tries of that install.
      storage.failures.store(3, ordering: .relaxed)
      let events = try await cluster.start(lagging)
      let node = try #require(await cluster.node(lagging))
      // Without the retry the node stops at the first refusal and this read fails with `stopped`.
      #expect(try await staleRead(node, "k99", atLeast: last.index) == .value(bytes("value-99")))
      #expect(await node.localQuery(.count) == .count(100))
      #expect(storage.refused.load(ordering: .relaxed) == 3, "every refusal was met")
      let installed = try await firstEvent(events, "a snapshot installed on \(lagging)") {
        if case .snapshotInstalled = $0 { true } else { false }
      }
      guard case .snapshotInstalled(let slot) = installed else {
        Issue.record("expected a snapshot, got \(installed)")
        await cluster.stopAll()
        return
      }
      #expect(slot > 2)
      await cluster.stopAll()
    } catch {
      await cluster.stopAll()
      throw error
    }
  }
}
