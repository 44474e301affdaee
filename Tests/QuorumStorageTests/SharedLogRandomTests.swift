import Foundation
import Glibc
import QuorumCore
import Testing

@testable import QuorumStorage

/// A small deterministic generator.
private struct Mixer {
  var state: UInt64
  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
  mutating func below(_ n: UInt64) -> UInt64 { n == 0 ? 0 : next() % n }
}

/// Runs of a shared log, each opening a random subset of four groups (two in each write mode) and making random
/// writes, snapshots (keeping the log, some past its end), compactions and leaders' snapshots (some whose new
/// segment fails, poisoning the log), then closing; every group that recovers must hold what an in-memory
/// storage given the same calls holds. Groups left closed for a run keep segments that the others' deletions
/// must not take their state with (the case recovery's state copy is for).
@Suite("Shared log: random runs against the in-memory model")
struct SharedLogRandomTests {
  @Test(arguments: 0..<48)
  func randomRuns(seed: Int) async throws {
    try await withTemporaryDirectory { directory in
      var random = Mixer(state: UInt64(seed) &* 7919 &+ 1)
      let groups: [UInt64] = [1, 2, 3, 4]
      let modes: [UInt64: LogWriteMode] = [1: .truncateSuffix, 2: .replace, 3: .truncateSuffix, 4: .replace]
      let models = Dictionary(uniqueKeysWithValues: groups.map { ($0, MemoryStorage<TestEntry>(mode: modes[$0]!)) })
      var term: UInt64 = 1
      var snapshotData: UInt8 = 0
      for run in 0..<16 {
        let log = SharedWriteAheadLog(
          directory: directory, fsync: .always, segmentBytes: 4096, preallocation: .none, logger: .disabled)
        var open = random.below(2) == 0 ? groups : groups.filter { _ in random.below(2) != 0 }
        if open.isEmpty { open = [groups[Int(random.below(4))]] }
        var stores: [UInt64: SharedLogStorage<TestEntry>] = [:]
        for group in open {
          let store = log.storage(for: group, mode: modes[group]!, entry: TestEntry.self)
          let state = try await store.recover()
          let expected = try await models[group]!.recover()
          #expect(state.entries == expected.entries, "seed \(seed) run \(run) group \(group)")
          #expect(state.hardState == expected.hardState, "seed \(seed) run \(run) group \(group)")
          #expect(state.snapshot?.index == expected.snapshot?.index, "seed \(seed) run \(run) group \(group)")
          stores[group] = store
        }
        var poisoned = false
        for _ in 0..<random.below(50) {
          let group = open[Int(random.below(UInt64(open.count)))]
          let store = stores[group]!
          let model = models[group]!
          let now = try await model.recover()
          let base = now.snapshot?.index ?? 0
          let floorish = now.entries.first.map { $0.index - 1 } ?? base
          let end = now.entries.last?.index ?? max(base, floorish)
          switch random.below(10) {
          case 0..<5:
            term += random.below(4) == 0 ? 1 : 0
            var write: StorageWrite<TestEntry>
            let hard = random.below(6) == 0 ? hardState("g\(group) t\(term) \(random.below(1000))") : nil
            if modes[group] == .truncateSuffix {
              let low = max(base, floorish) + 1
              let start = random.below(4) == 0 && end >= low ? low + random.below(end - low + 1) : end + 1
              let count = 1 + random.below(6)
              write = StorageWrite(
                hardState: hard,
                entries: (start..<(start + count)).map {
                  TestEntry($0, term: term, payload: [UInt8](repeating: UInt8(truncatingIfNeeded: $0), count: 90))
                })
            } else {
              let low = max(base, floorish) + 1
              var slots: [UInt64] = []
              var slot = low + random.below(end + 4 - low + 1)
              for _ in 0..<(1 + random.below(4)) {
                slots.append(slot)
                slot += 1 + random.below(3)
              }
              write = StorageWrite(
                hardState: hard,
                entries: slots.map {
                  TestEntry($0, term: term, payload: [UInt8](repeating: UInt8(truncatingIfNeeded: $0), count: 90))
                })
            }
            if random.below(8) == 0 { write = StorageWrite(hardState: hard ?? hardState("only \(group)")) }
            try await store.write(write)
            try await model.write(write)
          case 5..<8:
            // A snapshot that keeps the log, then compaction up to it.
            // Now and then past the log's end (a snapshot that keeps a log shorter than it): the next write
            // resets the log.
            let past = random.below(6) == 0 ? 1 + random.below(3) : 0
            guard end + past > base else { continue }
            let index = past > 0 ? end + past : random.below(2) == 0 ? end : base + 1 + random.below(end - base)
            snapshotData &+= 1
            let snapshot = StoredSnapshot(index: index, term: term, data: [snapshotData])
            try await store.saveSnapshot(snapshot, discardingLog: false)
            try await model.saveSnapshot(snapshot, discardingLog: false)
            let through = random.below(2) == 0 ? index : base + random.below(index - base + 1)
            try await store.compact(through: through)
            try await model.compact(through: through)
          case 8:
            // A leader's snapshot, discarding the log.
            let index = max(base, end) + random.below(5)
            guard index > 0 else { continue }
            snapshotData &+= 1
            let snapshot = StoredSnapshot(index: index, term: term, data: [snapshotData])
            try await store.saveSnapshot(snapshot, discardingLog: true)
            try await model.saveSnapshot(snapshot, discardingLog: true)
          case 9 where random.below(3) == 0:
            // A leader's snapshot whose directory sync fails after its rename: the snapshot file is in place,
            // its new segment not made, the log is poisoned; the next run must finish the discard.
            let index = max(base, end) + random.below(5)
            guard index > 0 else { continue }
            snapshotData &+= 1
            let snapshot = StoredSnapshot(index: index, term: term, data: [snapshotData])
            log.core.snapshotSyncFaults.failNext(1, with: EIO)
            await #expect(throws: StorageError.self) { try await store.saveSnapshot(snapshot, discardingLog: true) }
            try await model.saveSnapshot(snapshot, discardingLog: true)
            poisoned = true
          default:
            break
          }
          if poisoned { break }
        }
        for store in stores.values { try await store.close() }
      }
      let log = SharedWriteAheadLog(
        directory: directory, fsync: .always, segmentBytes: 4096, preallocation: .none, logger: .disabled)
      var stores: [SharedLogStorage<TestEntry>] = []
      for group in groups {
        let store = log.storage(for: group, mode: modes[group]!, entry: TestEntry.self)
        stores.append(store)
        let state = try await store.recover()
        let expected = try await models[group]!.recover()
        #expect(state.entries == expected.entries, "seed \(seed) at the end, group \(group)")
        #expect(state.hardState == expected.hardState, "seed \(seed) at the end, group \(group)")
        #expect(state.snapshot == expected.snapshot, "seed \(seed) at the end, group \(group)")
      }
      for store in stores { try await store.close() }
    }
  }
}
