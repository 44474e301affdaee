import QuorumCore
import QuorumKV
import QuorumPaxos
import QuorumStorage
import QuorumTestSupport
import Testing

@Suite("Multi-Paxos: installing a leader's snapshot that cannot be stored now", .timeLimit(.minutes(2)))
struct PaxosInstallRetryTests {
  /// What the lagging replica's storage refuses: the leader's snapshot, three times (as a full disk), or the
  /// compaction behind it, once (as when the compaction record finds no descriptor for its segment).
  enum Refusal: Sendable, CustomStringConvertible {
    case snapshotStores
    case compaction

    var description: String { self == .snapshotStores ? "three snapshot stores" : "the compaction behind it" }
  }

  @Test(
    "a replica whose disk refuses the leader's snapshot, or the compaction behind it, stays up and catches up",
    arguments: [Refusal.snapshotStores, .compaction])
  func replicaRetriesRefusedInstall(refusing refusal: Refusal) async throws {
    let configuration = try PaxosLiveCluster.fast(members: [1, 2, 3]) {
      $0.snapshotEvery = 20
      $0.snapshotRetainEntries = 2
      $0.snapshotChunkBytes = 64
    }
    let storages: [NodeID: FullDiskOnSnapshotStorage<PaxosEntry>] = ([1, 2, 3] as [NodeID]).reduce(into: [:]) {
      $0[$1] = FullDiskOnSnapshotStorage(MemoryStorage<PaxosEntry>(mode: .replace), onlyInstalls: false)
    }
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
      // stores are tries of that install, and the first compaction is the one behind it.
      switch refusal {
      case .snapshotStores: storage.failures.store(3, ordering: .relaxed)
      case .compaction: storage.compactFailures.store(1, ordering: .relaxed)
      }
      let events = try await cluster.start(lagging)
      let node = try #require(await cluster.node(lagging))
      // Without the retry (or with the compaction's failure thrown) the node stops at the first refusal and this
      // read fails with `stopped`.
      #expect(try await staleRead(node, "k99", atLeast: last.index) == .value(bytes("value-99")))
      #expect(await node.localQuery(.count) == .count(100))
      switch refusal {
      case .snapshotStores: #expect(storage.refused.load(ordering: .relaxed) == 3, "every refusal was met")
      case .compaction:
        #expect(storage.refusedCompactions.load(ordering: .relaxed) == 1, "the refusal was met")
        #expect(storage.stored.load(ordering: .relaxed) >= 1, "the snapshot was stored")
      }
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
