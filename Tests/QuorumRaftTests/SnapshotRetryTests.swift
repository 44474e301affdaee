import QuorumCore
import QuorumKV
import QuorumRaft
import QuorumStorage
import QuorumTestSupport
import Testing

@Suite("A background snapshot the disk refused is taken again", .timeLimit(.minutes(2)))
struct SnapshotRetryTests {
  @Test("after a refused background snapshot, the next is taken once `snapshotEvery` more small entries applied")
  func refusedSnapshotIsRetaken() async throws {
    let configuration = try LiveCluster.fast(members: [1]) { $0.snapshotEvery = 20 }
    let storage = FullDiskOnSnapshotStorage(MemoryStorage<LogEntry>(), onlyInstalls: false)
    let cluster = LiveCluster(configuration: configuration)
    do {
      try await cluster.start(1, storage: storage)
      // A state of about 20 KB: each snapshot waits for as many bytes of entries since the one before.
      let large = [UInt8](repeating: 7, count: 1_000)
      var n = 0
      func putLarge() async throws {
        _ = try await withLeader(cluster) { try await $0.propose(.put(key: "large-\(n % 20)", value: large)) }
        n += 1
      }
      while storage.stored.load(ordering: .relaxed) < 2 { try await putLarge() }
      // The next snapshot is refused, as on a full disk (the file could not be written: retryable).
      storage.failures.store(1, ordering: .relaxed)
      while storage.refused.load(ordering: .relaxed) < 1 { try await putLarge() }
      let stored = storage.stored.load(ordering: .relaxed)
      // Small entries: far fewer bytes than the state. The refused snapshot's bytes still count towards the next,
      // which is due once `snapshotEvery` more entries applied; without them none would be for another 20 KB.
      for i in 0..<(2 * configuration.snapshotEvery) {
        _ = try await withLeader(cluster) { try await $0.propose(.put(key: "small", value: bytes("\(i % 10)"))) }
      }
      try await eventually("a snapshot after the refused one", within: .seconds(10)) {
        storage.stored.load(ordering: .relaxed) > stored
      }
      await cluster.stopAll()
    } catch {
      await cluster.stopAll()
      throw error
    }
  }
}
