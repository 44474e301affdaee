import QuorumStorage
import Testing

/// The ``ConsensusStorage`` contract, run against every backend: what is written comes back after a restart.
@Suite("Storage behaviour (every backend)")
struct StorageBehaviourTests {
  @Test(arguments: Backend.allCases)
  func writesComeBackAfterRestart(_ backend: Backend) async throws {
    try await withHarness(backend) { harness in
      let (storage, empty) = try await harness.open()
      #expect(empty.entries.isEmpty && empty.hardState == nil && empty.snapshot == nil)
      try await storage.write(StorageWrite(hardState: hardState("t1"), entries: entries(1...3)))
      try await storage.write(StorageWrite(entries: entries(4...10)))
      let (reopened, state) = try await harness.restart(storage)
      #expect(state.entries == entries(1...10))
      #expect(state.hardState == hardState("t1"))
      #expect(state.snapshot == nil)
      #expect(state.report.truncatedTailBytes == 0)
      try await harness.finish(reopened)
    }
  }

  @Test(arguments: Backend.allCases)
  func overwritingTruncatesTheSuffix(_ backend: Backend) async throws {
    try await withHarness(backend) { harness in
      let (storage, _) = try await harness.open()
      try await storage.write(StorageWrite(entries: entries(1...10)))
      try await storage.write(StorageWrite(entries: entries(6...7, term: 2)))
      var (reopened, state) = try await harness.restart(storage)
      #expect(state.entries == entries(1...5) + entries(6...7, term: 2))
      // Overwriting from the very first position drops everything.
      try await reopened.write(StorageWrite(entries: entries(1...2, term: 3)))
      (reopened, state) = try await harness.restart(reopened)
      #expect(state.entries == entries(1...2, term: 3))
      try await harness.finish(reopened)
    }
  }

  @Test(arguments: Backend.allCases)
  func replaceModeReplacesOnlyThePosition(_ backend: Backend) async throws {
    try await withHarness(backend, mode: .replace) { harness in
      let (storage, _) = try await harness.open()
      try await storage.write(StorageWrite(entries: entries(1...3)))
      try await storage.write(StorageWrite(entries: [TestEntry(5), TestEntry(9)]))
      try await storage.write(StorageWrite(entries: [TestEntry(2, term: 2), TestEntry(5, term: 2)]))
      try await storage.write(StorageWrite(entries: [TestEntry(4)]))
      var (reopened, state) = try await harness.restart(storage)
      let expected = [
        TestEntry(1), TestEntry(2, term: 2), TestEntry(3), TestEntry(4), TestEntry(5, term: 2), TestEntry(9),
      ]
      #expect(state.entries == expected)
      try await reopened.saveSnapshot(StoredSnapshot(index: 3, term: 1, data: [3]), discardingLog: false)
      try await reopened.compact(through: 3)
      (reopened, state) = try await harness.restart(reopened)
      #expect(state.entries == Array(expected.dropFirst(3)))
      #expect(state.snapshot?.index == 3)
      try await harness.finish(reopened)
    }
  }

  @Test(arguments: Backend.allCases)
  func theLatestHardStateWins(_ backend: Backend) async throws {
    try await withHarness(backend) { harness in
      let (storage, _) = try await harness.open()
      try await storage.write(StorageWrite(hardState: hardState("term 1")))
      try await storage.write(StorageWrite(hardState: hardState("term 2"), entries: entries(1...2)))
      try await storage.write(StorageWrite(entries: entries(3...4)))
      try await storage.write(StorageWrite(hardState: hardState("term 3 vote n2")))
      try await storage.write(StorageWrite(entries: entries(5...5)))
      let (reopened, state) = try await harness.restart(storage)
      #expect(state.hardState == hardState("term 3 vote n2"))
      #expect(state.entries == entries(1...5))
      try await harness.finish(reopened)
    }
  }

  @Test(arguments: Backend.allCases)
  func snapshotAndCompaction(_ backend: Backend) async throws {
    try await withHarness(backend) { harness in
      let (storage, _) = try await harness.open()
      try await storage.write(StorageWrite(hardState: hardState("h"), entries: entries(1...100)))
      let snapshot = StoredSnapshot(index: 60, term: 1, metadata: [1, 2, 3], data: Array(repeating: 7, count: 1000))
      try await storage.saveSnapshot(snapshot, discardingLog: false)
      // Before compaction the covered entries are still stored, but recovery does not return them.
      var (reopened, state) = try await harness.restart(storage)
      #expect(state.snapshot == snapshot)
      #expect(state.entries == entries(61...100))
      try await reopened.compact(through: 60)
      try await reopened.write(StorageWrite(entries: entries(101...110)))
      (reopened, state) = try await harness.restart(reopened)
      #expect(state.snapshot == snapshot)
      #expect(state.entries == entries(61...110))
      #expect(state.hardState == hardState("h"))
      try await harness.finish(reopened)
    }
  }

  @Test(arguments: Backend.allCases)
  func snapshotDiscardingTheLog(_ backend: Backend) async throws {
    try await withHarness(backend) { harness in
      let (storage, _) = try await harness.open()
      try await storage.write(StorageWrite(hardState: hardState("term 4"), entries: entries(1...30, term: 4)))
      let snapshot = StoredSnapshot(index: 20, term: 5, data: [20])
      try await storage.saveSnapshot(snapshot, discardingLog: true)
      var (reopened, state) = try await harness.restart(storage)
      #expect(state.snapshot == snapshot)
      #expect(state.entries.isEmpty)
      #expect(state.hardState == hardState("term 4"))
      // The log continues right after the snapshot; positions it covers are immutable.
      await #expect(throws: StorageError.self) { try await reopened.write(StorageWrite(entries: entries(20...21))) }
      await #expect(throws: StorageError.self) { try await reopened.write(StorageWrite(entries: entries(23...24))) }
      try await reopened.write(StorageWrite(entries: entries(21...25, term: 5)))
      (reopened, state) = try await harness.restart(reopened)
      #expect(state.snapshot == snapshot)
      #expect(state.entries == entries(21...25, term: 5))
      try await harness.finish(reopened)
    }
  }

  @Test(arguments: Backend.allCases)
  func aSnapshotBeyondTheLogMovesItsEnd(_ backend: Backend) async throws {
    try await withHarness(backend) { harness in
      let (storage, _) = try await harness.open()
      try await storage.write(StorageWrite(entries: entries(1...10)))
      let snapshot = StoredSnapshot(index: 40, term: 2, data: [])
      try await storage.saveSnapshot(snapshot, discardingLog: false)
      try await storage.write(StorageWrite(entries: entries(41...42, term: 2)))
      var (reopened, state) = try await harness.restart(storage)
      #expect(state.entries == entries(41...42, term: 2))
      try await reopened.write(StorageWrite(entries: entries(43...43, term: 2)))
      (reopened, state) = try await harness.restart(reopened)
      #expect(state.entries == entries(41...43, term: 2))
      try await harness.finish(reopened)
    }
  }

  @Test(arguments: Backend.allCases)
  func invalidWritesAreRejectedAndChangeNothing(_ backend: Backend) async throws {
    try await withHarness(backend) { harness in
      let (storage, _) = try await harness.open()
      await #expect(throws: StorageError.self) { try await storage.write(StorageWrite(entries: entries(2...3))) }
      await #expect(throws: StorageError.self) { try await storage.write(StorageWrite(entries: [TestEntry(0)])) }
      try await storage.write(StorageWrite(entries: entries(1...5)))
      await #expect(throws: StorageError.self) {
        try await storage.write(StorageWrite(entries: [TestEntry(6), TestEntry(8)]))
      }
      await #expect(throws: StorageError.self) { try await storage.write(StorageWrite(entries: entries(7...9))) }
      await #expect(throws: StorageError.self) { try await storage.compact(through: 2) }
      try await storage.saveSnapshot(StoredSnapshot(index: 3, term: 1, data: []), discardingLog: false)
      await #expect(throws: StorageError.self) {
        try await storage.saveSnapshot(StoredSnapshot(index: 2, term: 1, data: []), discardingLog: false)
      }
      await #expect(throws: StorageError.self) { try await storage.write(StorageWrite(entries: entries(3...6))) }
      await #expect(throws: StorageError.self) { try await storage.compact(through: 4) }
      let (reopened, state) = try await harness.restart(storage)
      #expect(state.entries == entries(4...5))
      #expect(state.snapshot?.index == 3)
      try await harness.finish(reopened)
    }
  }

  @Test(arguments: Backend.allCases)
  func closedStorageRefusesCalls(_ backend: Backend) async throws {
    try await withHarness(backend) { harness in
      let (storage, _) = try await harness.open()
      try await storage.write(StorageWrite(entries: entries(1...1)))
      try await storage.close()
      try await storage.close()
      await #expect(throws: StorageError.closed) { try await storage.write(StorageWrite(entries: entries(2...2))) }
      await #expect(throws: StorageError.closed) { try await storage.write(StorageWrite()) }
      await #expect(throws: StorageError.closed) { _ = try await storage.recover() }
      await #expect(throws: StorageError.closed) { try await storage.compact(through: 1) }
      await #expect(throws: StorageError.closed) {
        try await storage.saveSnapshot(StoredSnapshot(index: 1, term: 1, data: []), discardingLog: false)
      }
    }
  }

  @Test(arguments: Backend.allCases)
  func manyRestartsWithAppendsInBetween(_ backend: Backend) async throws {
    try await withHarness(backend) { harness in
      var (storage, state) = try await harness.open()
      var expected: [TestEntry] = []
      for round in UInt64(0)..<6 {
        #expect(state.entries == expected)
        #expect(state.hardState == (round == 0 ? nil : hardState("round \(round - 1)")))
        let batch = entries((round * 50 + 1)...(round * 50 + 50), term: round + 1)
        try await storage.write(StorageWrite(hardState: hardState("round \(round)"), entries: batch))
        expected += batch
        (storage, state) = try await harness.restart(storage)
      }
      #expect(state.entries == expected)
      try await harness.finish(storage)
    }
  }

  /// Entries overwritten by a truncating write keep no segment: once the log is compacted past the overwrite's
  /// start, the segments that held only older entries go, even though they held positions far beyond the
  /// compaction point (a deposed leader's uncommitted run). Also after a restart, whose replay finds the maxima
  /// again.
  @Test(arguments: [Backend.file, .preallocatedFile, .sharedLog], [false, true])
  func segmentsOfOverwrittenEntriesGoWithCompaction(_ backend: Backend, restartFirst: Bool) async throws {
    try await withHarness(backend) { harness in
      var (storage, _) = try await harness.open()
      for start in stride(from: UInt64(1), through: 991, by: 10) {
        try await storage.write(StorageWrite(entries: entries(start...(start + 9))))
      }
      try await storage.write(StorageWrite(entries: entries(50...60, term: 2)))
      #expect(try segmentFiles(harness.directory).count >= 3)
      if restartFirst { (storage, _) = try await harness.restart(storage) }
      try await storage.saveSnapshot(StoredSnapshot(index: 60, term: 2, data: [6]), discardingLog: false)
      try await storage.compact(through: 60)
      #expect(try segmentFiles(harness.directory).count == 1, "only the segment with the overwrite is left")
      let (reopened, state) = try await harness.restart(storage)
      #expect(state.entries.isEmpty)
      #expect(state.snapshot?.index == 60)
      try await reopened.write(StorageWrite(entries: entries(61...61, term: 2)))
      try await harness.finish(reopened)
    }
  }

  @Test(arguments: Backend.allCases)
  func concurrentWritersAllLand(_ backend: Backend) async throws {
    try await withHarness(backend, mode: .replace) { harness in
      let (storage, _) = try await harness.open()
      try await withThrowingTaskGroup(of: Void.self) { group in
        for slot in UInt64(1)...64 {
          group.addTask { try await storage.write(StorageWrite(entries: [TestEntry(slot)])) }
        }
        try await group.waitForAll()
      }
      let (reopened, state) = try await harness.restart(storage)
      #expect(state.entries == entries(1...64))
      try await harness.finish(reopened)
    }
  }
}
