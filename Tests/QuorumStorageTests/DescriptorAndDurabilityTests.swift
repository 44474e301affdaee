import Foundation
import Glibc
import QuorumCore
import Testing

@testable import QuorumStorage

@Suite("FileStorage when descriptors run out")
struct DescriptorExhaustionTests {
  func storage(_ directory: String) -> FileStorage<TestEntry> {
    FileStorage(directory: directory, segmentBytes: 4096, preallocation: .none, logger: .disabled)
  }

  /// An entry large enough that every write of one opens a new segment.
  func big(_ index: UInt64) -> TestEntry {
    TestEntry(index, payload: [UInt8](repeating: UInt8(index % 251), count: 3000))
  }

  @Test(
    "EMFILE and ENFILE opening a segment are waited out, then typed and retryable; the storage stays usable",
    arguments: [EMFILE, ENFILE])
  func openFailuresAreRetryable(_ code: Int32) async throws {
    try await withTemporaryDirectory { directory in
      let store = storage(directory)
      _ = try await store.recover()
      try await store.write(StorageWrite(hardState: hardState("term 1"), entries: [big(1)]))
      // A few failed opens are waited out in place.
      store.core.openFaults.failNext(3, with: code)
      for index in UInt64(2)...5 { try await store.write(StorageWrite(entries: [big(index)])) }
      // More than the storage waits for: a typed error that says to retry, and nothing is poisoned.
      store.core.openFaults.failNext(1000, with: code)
      do {
        try await store.write(StorageWrite(hardState: hardState("term 2"), entries: [big(6)]))
        Issue.record("the write succeeded without a descriptor")
      } catch let error as StorageError {
        #expect(error.isRetryable, "\(error)")
        guard case .descriptorsExhausted(_, _, let errno) = error else {
          Issue.record("not typed as exhausted descriptors: \(error)")
          return
        }
        #expect(errno == code)
      }
      store.core.openFaults.failNext(0)
      try await store.write(StorageWrite(hardState: hardState("term 2"), entries: [big(6)]))
      try await store.close()

      let reopened = storage(directory)
      let state = try await reopened.recover()
      #expect(state.entries.map(\.index) == Array(1...6))
      #expect(state.entries == (1...6).map(big))
      #expect(state.hardState == hardState("term 2"))
      try await reopened.close()
    }
  }

  @Test("a compaction whose record needs a new segment that cannot be opened is retryable; nothing is poisoned")
  func aCompactionThatFindsNoDescriptorIsRetryable() async throws {
    try await withTemporaryDirectory { directory in
      let store = storage(directory)
      _ = try await store.recover()
      // Small appends until a compaction record (with the sync marker before it) no longer fits in the segment.
      var index: UInt64 = 0
      while index < 1000 {
        let segment = try #require(try segmentFiles(directory).last)
        let room = 4096 - (FileSystem.size(of: segment) ?? 0)
        if room < 30 { break }
        index += 1
        let payload = room >= 100 ? 40 : max(0, room - 35)
        try await store.write(StorageWrite(entries: [TestEntry(index, payload: [UInt8](repeating: 7, count: payload))]))
      }
      try await store.saveSnapshot(StoredSnapshot(index: index, term: 1, data: [1]), discardingLog: false)
      let segments = try segmentFiles(directory)
      store.core.openFaults.failNext(1000)
      do {
        try await store.compact(through: index)
        Issue.record("the compaction succeeded without a descriptor")
      } catch let error as StorageError {
        #expect(error.isRetryable, "\(error)")
      }
      store.core.openFaults.failNext(0)
      #expect(try segmentFiles(directory) == segments, "nothing was deleted")
      try await store.write(StorageWrite(entries: [TestEntry(index + 1)]))
      try await store.compact(through: index)
      try await store.close()

      let reopened = storage(directory)
      let state = try await reopened.recover()
      #expect(state.snapshot?.index == index)
      #expect(state.entries == [TestEntry(index + 1)])
      try await reopened.close()
    }
  }

  @Test(
    "a leader's snapshot that finds no descriptor for its new segment or a directory is retryable: nothing is stored",
    arguments: [0, 1])
  func anInstallThatFindsNoDescriptorIsRetryable(_ skipping: Int) async throws {
    try await withTemporaryDirectory { directory in
      let store = storage(directory)
      _ = try await store.recover()
      try await store.write(StorageWrite(hardState: hardState("term 1"), entries: [big(1)]))
      // The new segment is prepared before the snapshot is renamed into place: its file (skipping 0) or the log's
      // directory, opened for the sync after its rename (skipping 1), finds no descriptor while nothing changed.
      store.core.openFaults.failNext(1000, skipping: skipping)
      let snapshot = StoredSnapshot(index: 1, term: 1, data: [7])
      let error = await #expect(throws: StorageError.self) {
        try await store.saveSnapshot(snapshot, discardingLog: true)
      }
      #expect(error?.isRetryable == true, "\(String(describing: error))")
      store.core.openFaults.failNext(0)
      #expect(try FileSystem.list(directory + "/snapshots").isEmpty, "no snapshot file is left")
      #expect(try FileSystem.list(directory + "/wal").allSatisfy { !$0.hasSuffix(".tmp") })
      // The storage goes on, and the install may be retried.
      try await store.write(StorageWrite(hardState: hardState("term 2")))
      try await store.saveSnapshot(snapshot, discardingLog: true)
      try await store.write(StorageWrite(entries: [big(2)]))
      try await store.close()

      let reopened = storage(directory)
      let state = try await reopened.recover()
      #expect(state.snapshot?.index == 1)
      #expect(state.entries == [big(2)])
      #expect(state.hardState == hardState("term 2"))
      try await reopened.close()
    }
  }

  @Test("a rotation that took the spare segment and found no descriptor for it gives the spare back")
  func aRotationThatFindsNoDescriptorKeepsTheSpare() async throws {
    try await withTemporaryDirectory { directory in
      let store = FileStorage<TestEntry>(
        directory: directory, segmentBytes: 4096, preallocation: .zeroFilled, logger: .disabled)
      _ = try await store.recover()
      try await store.write(StorageWrite(hardState: hardState("term 1"), entries: [big(1)]))
      let spare = directory + "/wal/spare.ready"
      let deadline = ContinuousClock.now + .seconds(60)
      while FileSystem.size(of: spare) != 4096 && ContinuousClock.now < deadline {
        try await Task.sleep(for: .milliseconds(5))
      }
      #expect(FileSystem.size(of: spare) == 4096, "a spare is ready")
      store.core.openFaults.failNext(1000)
      let error = await #expect(throws: StorageError.self) { try await store.write(StorageWrite(entries: [big(2)])) }
      #expect(error?.isRetryable == true, "\(String(describing: error))")
      store.core.openFaults.failNext(0)
      // Given back, not deleted: the next rotation need not write a segment of zeros on the writer.
      #expect(FileSystem.size(of: spare) == 4096)
      try await store.write(StorageWrite(entries: [big(2)]))
      try await store.close()
    }
  }

  @Test("a rotation whose directory finds no descriptor for its sync is retryable; nothing is poisoned")
  func aRotationWhoseDirectorySyncFindsNoDescriptorIsRetryable() async throws {
    try await withTemporaryDirectory { directory in
      let store = storage(directory)
      _ = try await store.recover()
      try await store.write(StorageWrite(hardState: hardState("term 1"), entries: [big(1)]))
      // The segment file opens; the directory, opened for the sync after its rename, does not.
      store.core.openFaults.failNext(1000, skipping: 1)
      let error = await #expect(throws: StorageError.self) { try await store.write(StorageWrite(entries: [big(2)])) }
      #expect(error?.isRetryable == true, "\(String(describing: error))")
      store.core.openFaults.failNext(0)
      try await store.write(StorageWrite(entries: [big(2)]))
      try await store.close()

      let reopened = storage(directory)
      #expect(try await reopened.recover().entries == [big(1), big(2)])
      try await reopened.close()
    }
  }
}

@Suite("FileStorage durability: hard states under batch sync, new directories")
struct DurabilityTests {
  @Test("a leader's snapshot whose directory sync fails after its rename poisons the storage; a reopen finishes it")
  func anInstallWhoseDirectorySyncFailsPoisons() async throws {
    try await withTemporaryDirectory { directory in
      let open = {
        FileStorage<TestEntry>(directory: directory, segmentBytes: 4096, preallocation: .none, logger: .disabled)
      }
      let store = open()
      _ = try await store.recover()
      try await store.write(StorageWrite(hardState: hardState("term 1"), entries: entries(1...3)))
      store.core.snapshotSyncFaults.failNext(1, with: EIO)
      let error = await #expect(throws: StorageError.self) {
        try await store.saveSnapshot(StoredSnapshot(index: 10, term: 2, data: [10]), discardingLog: true)
      }
      #expect(error?.isRetryable == false, "\(String(describing: error))")
      // The snapshot is in place and names a segment not yet started, so an entry appended to the old segment
      // would be discarded by the next recovery: before the fix this write was acknowledged and then lost.
      await #expect(throws: StorageError.self) { try await store.write(StorageWrite(entries: entries(4...5))) }
      try? await store.close()

      let reopened = open()
      let state = try await reopened.recover()
      #expect(state.snapshot?.index == 10)
      #expect(state.entries.isEmpty)
      #expect(state.hardState == hardState("term 1"))
      try await reopened.write(StorageWrite(entries: entries(11...12, term: 2)))
      try await reopened.close()
      let again = open()
      #expect(try await again.recover().entries == entries(11...12, term: 2))
      try await again.close()
    }
  }

  @Test("under batch sync a write marked mustSync is synced before it returns; others wait for the timer")
  func batchSyncsWhatMustBeDurable() async throws {
    try await withTemporaryDirectory { directory in
      let store = FileStorage<TestEntry>(
        directory: directory, fsync: .batch(interval: .seconds(3600)), segmentBytes: 1 << 20, preallocation: .none,
        logger: .disabled)
      _ = try await store.recover()
      let base = try await store.syncCount()
      try await store.write(StorageWrite(entries: entries(1...3)))
      try await store.write(StorageWrite(hardState: hardState("commit 3"), entries: entries(4...4)))
      #expect(try await store.syncCount() == base, "entries and a commit index ride on the batch timer")
      try await store.write(StorageWrite(hardState: hardState("term 2, vote n3"), mustSync: true))
      #expect(try await store.syncCount() == base + 1, "a vote is on disk before the call returns")
      try await store.close()
    }
  }

  @Test("every directory the storage creates is synced in its parent, once; reopening creates and syncs none")
  func newDirectoriesAreSynced() async throws {
    try await withTemporaryDirectory { root in
      let directory = "\(root)/a/b"
      let store = FileStorage<TestEntry>(
        directory: directory, segmentBytes: 4096, preallocation: .none, logger: .disabled)
      _ = try await store.recover()
      let core = store.core
      // a, b, wal, snapshots (the temporary root is created too), then the first segment's rename in wal.
      let created = try await core.perform { core.directorySyncCount }
      #expect(created == 6, "\(created) directory syncs")
      try await store.close()
      let again = FileStorage<TestEntry>(
        directory: directory, segmentBytes: 4096, preallocation: .none, logger: .disabled)
      _ = try await again.recover()
      let reopenedCore = again.core
      #expect(try await reopenedCore.perform { reopenedCore.directorySyncCount } == 0)
      try await again.close()
    }
  }

  @Test("makeDirectories syncs the parent of each directory it creates, in order, and nothing when all exist")
  func makeDirectoriesSyncsParents() throws {
    let root = FileManager.default.temporaryDirectory.path + "/quorum-mkdir-" + UUID().uuidString
    defer { try? FileManager.default.removeItem(atPath: root) }
    var synced: [String] = []
    let created = try FileSystem.makeDirectories("\(root)/x/y", syncParents: true) { synced.append($0) }
    #expect(created == [root, "\(root)/x", "\(root)/x/y"])
    #expect(synced == [(root as NSString).deletingLastPathComponent, root, "\(root)/x"])
    synced = []
    #expect(try FileSystem.makeDirectories("\(root)/x/y", syncParents: true) { synced.append($0) }.isEmpty)
    #expect(synced.isEmpty)
  }
}
