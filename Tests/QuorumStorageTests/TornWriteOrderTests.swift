import Foundation
import QuorumCore
import QuorumStorage
import Testing

private func openStorage(_ directory: String, preallocation: WALPreallocation) -> FileStorage<TestEntry> {
  FileStorage(
    directory: directory, mode: .truncateSuffix, fsync: .always, segmentBytes: 1 << 16, maxRecordBytes: 1 << 20,
    preallocation: preallocation, logger: .disabled)
}

/// A crash may keep any prefix of a write's records. These tests cut the last write at every byte and check
/// that what recovery returns is a state the node really was in: never the new hard state without every entry
/// written with it (a Raft commit index in it may cover exactly those entries).
@Suite("FileStorage: a torn write never keeps the hard state without its entries")
struct TornWriteOrderTests {
  /// Damages `segment` from `cut` on (truncated, or zeroed when preallocated) and recovers.
  private func recover(
    _ directory: String, segment: String, pristine: [UInt8], cut: Int, end: Int, preallocation: WALPreallocation
  ) async throws -> RecoveredState<TestEntry> {
    var damaged = pristine
    if preallocation == .none {
      damaged.removeSubrange(cut...)
    } else {
      for offset in cut..<end { damaged[offset] = 0 }
    }
    try writeFile(segment, damaged)
    let storage = openStorage(directory, preallocation: preallocation)
    let state = try await storage.recover()
    try await storage.close()
    return state
  }

  @Test(
    "new-term entries with the commit index covering them, cut anywhere: old hard state, or all new entries",
    arguments: [WALPreallocation.none, .zeroFilled])
  func overwriteThenCommit(_ preallocation: WALPreallocation) async throws {
    try await withTemporaryDirectory { directory in
      let storage = openStorage(directory, preallocation: preallocation)
      _ = try await storage.recover()
      // A follower holds entries 1...10 of term 1, 1...7 committed.
      try await storage.write(StorageWrite(hardState: hardState("term 1 commit 7"), entries: entries(1...10)))
      // The term-2 leader replaces 8...10 and says they are committed: one write.
      let newEntries = entries(8...10, term: 2)
      try await storage.write(StorageWrite(hardState: hardState("term 2 commit 10"), entries: newEntries))
      try await storage.close()

      let segment = try #require(try segmentFiles(directory).first)
      let pristine = withoutCloseMarker(try readFile(segment))
      let (starts, end) = recordOffsets(pristine)
      let lastWriteStart = starts[starts.count - 4]  // Three entries and a hard state.
      var cutsKeepingNewHardState = 0
      for cut in lastWriteStart...end {
        let state = try await recover(
          directory, segment: segment, pristine: pristine, cut: cut, end: end, preallocation: preallocation)
        if state.hardState == hardState("term 2 commit 10") {
          cutsKeepingNewHardState += 1
          #expect(state.entries == entries(1...7) + newEntries, "cut at \(cut): new hard state without its entries")
        } else {
          #expect(state.hardState == hardState("term 1 commit 7"), "cut at \(cut)")
          #expect(Array(state.entries.prefix(7)) == entries(1...7), "cut at \(cut)")
        }
      }
      #expect(cutsKeepingNewHardState == 1, "only the uncut write keeps the new hard state")
    }
  }

  @Test(
    "a write past a snapshot (reset, entries, hard state), cut anywhere: never the new hard state alone",
    arguments: [WALPreallocation.none, .zeroFilled])
  func resetThenEntries(_ preallocation: WALPreallocation) async throws {
    try await withTemporaryDirectory { directory in
      let storage = openStorage(directory, preallocation: preallocation)
      _ = try await storage.recover()
      try await storage.write(StorageWrite(hardState: hardState("old"), entries: entries(1...10)))
      try await storage.saveSnapshot(StoredSnapshot(index: 15, term: 1, data: [1, 2, 3]), discardingLog: false)
      let newEntries = entries(16...18, term: 2)
      try await storage.write(StorageWrite(hardState: hardState("new"), entries: newEntries))
      try await storage.close()

      let segment = try #require(try segmentFiles(directory).last)
      let pristine = withoutCloseMarker(try readFile(segment))
      let (starts, end) = recordOffsets(pristine)
      let lastWriteStart = starts[starts.count - 5]  // A reset, three entries and a hard state.
      var cutsKeepingNewHardState = 0
      for cut in lastWriteStart...end {
        let state = try await recover(
          directory, segment: segment, pristine: pristine, cut: cut, end: end, preallocation: preallocation)
        if state.hardState == hardState("new") {
          cutsKeepingNewHardState += 1
          #expect(state.entries == newEntries, "cut at \(cut): new hard state without its entries")
        } else {
          #expect(state.hardState == hardState("old"), "cut at \(cut)")
        }
      }
      #expect(cutsKeepingNewHardState == 1, "only the uncut write keeps the new hard state")
    }
  }
}
