import Foundation
import QuorumCore
import Synchronization
import Testing

@testable import QuorumStorage

private func makeStorage(
  _ directory: String, mode: LogWriteMode = .truncateSuffix, fsync: FsyncPolicy = .always, segmentBytes: Int = 4096,
  preallocation: WALPreallocation = .none, maxRecordBytes: Int = 1 << 20
) -> FileStorage<TestEntry> {
  FileStorage(
    directory: directory, mode: mode, fsync: fsync, segmentBytes: segmentBytes, maxRecordBytes: maxRecordBytes,
    preallocation: preallocation, logger: .disabled)
}

/// Writes entries 1...count one write each (so each is its own record), then closes.
private func writeOneByOne(_ directory: String, count: UInt64, preallocation: WALPreallocation) async throws {
  let storage = makeStorage(directory, segmentBytes: 1 << 20, preallocation: preallocation)
  _ = try await storage.recover()
  for index in 1...count { try await storage.write(StorageWrite(entries: [TestEntry(index)])) }
  try await storage.close()
}

@Suite("FileStorage: segments, compaction, policies")
struct FileStorageSegmentTests {
  @Test(arguments: [WALPreallocation.none, .allocated, .zeroFilled])
  func rotationAndCompactionDeleteWholeSegments(_ preallocation: WALPreallocation) async throws {
    try await withTemporaryDirectory { directory in
      var storage = makeStorage(directory, segmentBytes: 4096, preallocation: preallocation)
      _ = try await storage.recover()
      for start in stride(from: UInt64(1), through: 991, by: 10) {
        try await storage.write(
          StorageWrite(hardState: hardState("at \(start)"), entries: entries(start...(start + 9))))
      }
      let segmentsBefore = try segmentFiles(directory)
      #expect(segmentsBefore.count >= 6)
      try await storage.close()

      storage = makeStorage(directory, segmentBytes: 4096, preallocation: preallocation)
      var state = try await storage.recover()
      #expect(state.entries == entries(1...1000))
      #expect(state.report.segmentsRead == segmentsBefore.count)
      #expect(state.hardState == hardState("at 991"))

      try await storage.saveSnapshot(StoredSnapshot(index: 700, term: 1, data: [7]), discardingLog: false)
      try await storage.compact(through: 700)
      let segmentsAfter = try segmentFiles(directory)
      #expect(segmentsAfter.count <= segmentsBefore.count / 2)
      #expect(segmentsAfter.last == segmentsBefore.last)
      try await storage.close()

      storage = makeStorage(directory, segmentBytes: 4096, preallocation: preallocation)
      state = try await storage.recover()
      #expect(state.entries == entries(701...1000))
      #expect(state.snapshot?.index == 700)
      #expect(state.hardState == hardState("at 991"))
      try await storage.close()
    }
  }

  @Test func suffixTruncationAcrossSegments() async throws {
    try await withTemporaryDirectory { directory in
      var storage = makeStorage(directory, segmentBytes: 4096)
      _ = try await storage.recover()
      for start in stride(from: UInt64(1), through: 291, by: 10) {
        try await storage.write(StorageWrite(entries: entries(start...(start + 9))))
      }
      try await storage.write(StorageWrite(entries: entries(50...60, term: 2)))
      try await storage.close()
      storage = makeStorage(directory, segmentBytes: 4096)
      let state = try await storage.recover()
      #expect(state.entries == entries(1...49) + entries(50...60, term: 2))
      try await storage.write(StorageWrite(entries: entries(61...61, term: 2)))
      try await storage.close()
    }
  }

  @Test func aWriteLargerThanASegmentStaysWhole() async throws {
    try await withTemporaryDirectory { directory in
      var storage = makeStorage(directory, segmentBytes: 4096)
      _ = try await storage.recover()
      let big = (UInt64(1)...100).map { TestEntry($0, payload: Array(repeating: UInt8($0), count: 100)) }
      try await storage.write(StorageWrite(entries: big))
      try await storage.write(StorageWrite(entries: [TestEntry(101)]))
      try await storage.close()
      #expect(try segmentFiles(directory).count == 2)
      storage = makeStorage(directory, segmentBytes: 4096)
      #expect(try await storage.recover().entries == big + [TestEntry(101)])
      try await storage.close()
    }
  }

  @Test func newestTwoSnapshotsAreKept() async throws {
    try await withTemporaryDirectory { directory in
      let storage = makeStorage(directory)
      _ = try await storage.recover()
      try await storage.write(StorageWrite(entries: entries(1...50)))
      for index in stride(from: UInt64(10), through: 50, by: 10) {
        try await storage.saveSnapshot(
          StoredSnapshot(index: index, term: 1, data: [UInt8(index)]), discardingLog: false)
      }
      #expect(
        try snapshotFiles(directory) == ["snapshot-00000000000000000040.snap", "snapshot-00000000000000000050.snap"])
      try await storage.close()
    }
  }

  @Test func recordsOverTheLimitAreRefused() async throws {
    try await withTemporaryDirectory { directory in
      let storage = makeStorage(directory, maxRecordBytes: 64)
      _ = try await storage.recover()
      let error = await #expect(throws: StorageError.self) {
        try await storage.write(StorageWrite(entries: [TestEntry(1, payload: Array(repeating: 1, count: 100))]))
      }
      guard case .recordTooLarge(_, let limit) = error else {
        Issue.record("expected recordTooLarge, got \(String(describing: error))")
        return
      }
      #expect(limit == 64)
      await #expect(throws: StorageError.self) {
        try await storage.write(StorageWrite(hardState: Array(repeating: 1, count: 65)))
      }
      try await storage.write(StorageWrite(entries: [TestEntry(1)]))
      try await storage.close()
    }
  }

  @Test func aSecondInstanceFindsTheDirectoryLocked() async throws {
    try await withTemporaryDirectory { directory in
      let first = makeStorage(directory)
      _ = try await first.recover()
      try await first.write(StorageWrite(entries: entries(1...3)))
      let second = makeStorage(directory)
      await #expect(throws: StorageError.directoryLocked(path: directory)) { _ = try await second.recover() }
      try await first.close()
      #expect(try await second.recover().entries == entries(1...3))
      try await second.close()
    }
  }

  @Test func aWriteBeforeRecoverRecoversImplicitly() async throws {
    try await withTemporaryDirectory { directory in
      var storage = makeStorage(directory)
      try await storage.write(StorageWrite(entries: entries(1...3)))
      try await storage.close()
      storage = makeStorage(directory)
      try await storage.write(StorageWrite(entries: entries(4...5)))
      #expect(try await storage.recover().entries == entries(1...5))
      #expect(try await storage.recover().entries == entries(1...5))
      try await storage.close()
    }
  }

  @Test func reopeningInTheOtherModeIsRefused() async throws {
    try await withTemporaryDirectory { directory in
      var storage = makeStorage(directory)
      try await storage.write(StorageWrite(entries: entries(1...3)))
      try await storage.close()
      storage = makeStorage(directory, mode: .replace)
      let error = await #expect(throws: StorageError.self) { _ = try await storage.recover() }
      guard case .incompatible(_, let reason) = error else {
        Issue.record("expected incompatible, got \(String(describing: error))")
        return
      }
      #expect(reason == "written in the other log write mode (byte 0); opened in replace mode")
      try await storage.close()
    }
  }

  @Test(arguments: [FsyncPolicy.never, .batch(interval: .milliseconds(300)), .always])
  func everyFsyncPolicyPersists(_ policy: FsyncPolicy) async throws {
    try await withTemporaryDirectory { directory in
      var storage = makeStorage(directory, fsync: policy)
      _ = try await storage.recover()
      let syncsAtStart = try await storage.syncCount()
      for index in UInt64(1)...20 {
        try await storage.write(StorageWrite(hardState: hardState("\(index)"), entries: [TestEntry(index)]))
      }
      let syncsAfterWrites = try await storage.syncCount()
      switch policy {
      case .always: #expect(syncsAfterWrites - syncsAtStart == 20)
      case .never: #expect(syncsAfterWrites == syncsAtStart)
      case .batch:
        #expect(syncsAfterWrites - syncsAtStart < 20)
        // One more write after this count leaves unsynced data: the timer must sync it on its own.
        let before = try await storage.syncCount()
        try await storage.write(StorageWrite(hardState: hardState("20")))
        // Polled until a deadline that only bounds a failure: a loaded machine runs the timer late, not never.
        let deadline = ContinuousClock.now.advanced(by: .seconds(60))
        var synced = false
        while !synced && ContinuousClock.now < deadline {
          try await Task.sleep(for: .milliseconds(10))
          synced = try await storage.syncCount() > before
        }
        #expect(synced, "the background sync never ran")
      }
      try await storage.close()
      storage = makeStorage(directory, fsync: policy)
      let state = try await storage.recover()
      #expect(state.entries == entries(1...20))
      #expect(state.hardState == hardState("20"))
      try await storage.close()
    }
  }

  @Test func leftoverTemporaryFilesAreRemoved() async throws {
    try await withTemporaryDirectory { directory in
      var storage = makeStorage(directory)
      try await storage.write(StorageWrite(entries: entries(1...3)))
      try await storage.close()
      try writeFile(directory + "/wal/00000000000000000009.wal.tmp", [1, 2, 3])
      try writeFile(directory + "/snapshots/snapshot-00000000000000000009.snap.tmp", [1, 2, 3])
      storage = makeStorage(directory)
      #expect(try await storage.recover().entries == entries(1...3))
      #expect(try snapshotFiles(directory).isEmpty)
      #expect(try segmentFiles(directory).count == 1)
      try await storage.close()
    }
  }

  @Test("a snapshot that keeps the log is written beside log writes; an older or repeated one leaves no file behind")
  func aSnapshotIsStoredWhileLogWritesGoOn() async throws {
    try await withTemporaryDirectory { directory in
      var storage = makeStorage(directory, segmentBytes: 1 << 20)
      _ = try await storage.recover()
      try await storage.write(StorageWrite(entries: entries(1...10)))
      let big = StoredSnapshot(index: 10, term: 1, metadata: [1, 2], data: [UInt8](repeating: 7, count: 4 << 20))
      // Hold the snapshot thread: the snapshot waits there, and log writes must still complete meanwhile.
      // (At most 120 s, a bound on failure only: log writes stuck behind the snapshot would complete after it and
      // fail the check below; thirty fsynced writes can take many seconds in a full parallel run on two cores.)
      let hold = DispatchSemaphore(value: 0)
      storage.core.snapshotQueue.async { _ = hold.wait(timeout: .now() + 120) }
      let saving = storage
      let saved = Task { try await saving.saveSnapshot(big, discardingLog: false) }
      for index in UInt64(11)...40 { try await storage.write(StorageWrite(entries: entries(index...index))) }
      let whileHeld = try FileManager.default.contentsOfDirectory(atPath: directory + "/snapshots")
      #expect(whileHeld.isEmpty, "the snapshot is still held while the log writes completed")
      hold.signal()
      try await saved.value
      await #expect(throws: StorageError.self) {
        try await storage.saveSnapshot(StoredSnapshot(index: 5, term: 1, data: [5]), discardingLog: false)
      }
      // The same index again is already stored: the stored file stays.
      try await storage.saveSnapshot(StoredSnapshot(index: 10, term: 1, data: [10]), discardingLog: false)
      try await storage.compact(through: 10)
      try await storage.close()
      let files = try FileManager.default.contentsOfDirectory(atPath: directory + "/snapshots")
      #expect(files == [SnapshotFile.fileName(index: 10)], "only the published snapshot, no temporary file")
      storage = makeStorage(directory, segmentBytes: 1 << 20)
      let state = try await storage.recover()
      #expect(state.snapshot == big)
      #expect(state.entries == entries(11...40))
      try await storage.close()
    }
  }

  @Test func anInterruptedLogDiscardIsFinishedByRecovery() async throws {
    try await withTemporaryDirectory { directory in
      var storage = makeStorage(directory)
      try await storage.write(StorageWrite(hardState: hardState("term 3"), entries: entries(1...30, term: 3)))
      try await storage.close()
      // The crash came after the snapshot file was written and before the log was reset.
      let segments = try segmentFiles(directory)
      _ = try SnapshotFile.write(
        StoredSnapshot(index: 20, term: 4, data: [20]), discardBeforeSegment: UInt64(segments.count + 1),
        directory: directory + "/snapshots", sync: false
      ) { $0 }
      storage = makeStorage(directory)
      var state = try await storage.recover()
      #expect(state.snapshot?.index == 20)
      #expect(state.entries.isEmpty)
      #expect(state.hardState == hardState("term 3"))
      #expect(try segmentFiles(directory).count == 1)
      try await storage.write(StorageWrite(entries: entries(21...22, term: 4)))
      try await storage.close()
      storage = makeStorage(directory)
      state = try await storage.recover()
      #expect(state.entries == entries(21...22, term: 4))
      #expect(state.hardState == hardState("term 3"))
      try await storage.close()
    }
  }
}

@Suite("FileStorage: torn tails and corruption")
struct FileStorageRecoveryTests {
  /// Cuts the last write (an entry record, then a hard state record) at every byte and checks that recovery
  /// keeps exactly the complete records, reports the cut, and that appends after it survive.
  @Test(arguments: [WALPreallocation.none, .zeroFilled])
  func aTornTailIsCutAtEveryOffset(_ preallocation: WALPreallocation) async throws {
    try await withTemporaryDirectory { directory in
      let storage = makeStorage(directory, segmentBytes: 1 << 16, preallocation: preallocation)
      _ = try await storage.recover()
      try await storage.write(StorageWrite(hardState: hardState("old"), entries: entries(1...4)))
      try await storage.write(StorageWrite(hardState: hardState("new"), entries: [TestEntry(5, term: 2)]))
      try await storage.close()
      let segment = try #require(try segmentFiles(directory).first)
      let pristine = withoutCloseMarker(try readFile(segment))
      let (starts, end) = recordOffsets(pristine)
      let entryStart = starts[starts.count - 2]
      let hardStateStart = starts[starts.count - 1]

      for cut in entryStart..<end {
        var damaged = pristine
        if preallocation == .none {
          damaged.removeSubrange(cut...)
        } else {
          for offset in cut..<end { damaged[offset] = 0 }
        }
        try writeFile(segment, damaged)

        var reopened = makeStorage(directory, segmentBytes: 1 << 16, preallocation: preallocation)
        var state = try await reopened.recover()
        let entryWhole = cut >= hardStateStart
        let validEnd = entryWhole ? hardStateStart : entryStart
        let nonZero = damaged[validEnd..<cut].lastIndex { $0 != 0 }
        let expectedBytes = nonZero.map { $0 + 1 - validEnd } ?? 0
        #expect(state.entries == entries(1...4) + (entryWhole ? [TestEntry(5, term: 2)] : []), "cut at \(cut)")
        #expect(state.hardState == hardState("old"), "cut at \(cut): the hard state record is the last")
        #expect(state.report.truncatedTailBytes == expectedBytes, "cut at \(cut)")
        if expectedBytes > 0 {
          #expect(state.report.truncatedFile == segment)
          #expect(state.report.truncatedOffset == validEnd)
        }
        try await reopened.write(StorageWrite(entries: [TestEntry(5, term: 3), TestEntry(6, term: 3)]))
        try await reopened.close()

        reopened = makeStorage(directory, segmentBytes: 1 << 16, preallocation: preallocation)
        state = try await reopened.recover()
        #expect(state.entries == entries(1...4) + entries(5...6, term: 3), "cut at \(cut)")
        #expect(state.report.truncatedTailBytes == 0, "cut at \(cut)")
        try await reopened.close()
      }
    }
  }

  /// A crash's last append (no sync marker after it) with a flipped bit is a torn tail, cut.
  @Test(arguments: [WALPreallocation.none, .zeroFilled])
  func aFlippedBitInTheLastRecordIsATornTail(_ preallocation: WALPreallocation) async throws {
    try await withTemporaryDirectory { directory in
      try await writeOneByOne(directory, count: 5, preallocation: preallocation)
      let segment = try #require(try segmentFiles(directory).first)
      var bytes = withoutCloseMarker(try readFile(segment))
      let (starts, end) = recordOffsets(bytes)
      let last = try #require(starts.last)
      bytes[end - 3] ^= 0x10
      try writeFile(segment, bytes)
      let storage = makeStorage(directory, segmentBytes: 1 << 20, preallocation: preallocation)
      let state = try await storage.recover()
      #expect(state.entries == entries(1...4))
      #expect(state.report.truncatedTailBytes == end - last)
      #expect(state.report.truncatedOffset == last)
      try await storage.close()
    }
  }

  /// A clean close ends the log with a sync marker: a flipped bit in the last acknowledged record is then
  /// corruption, not a torn write to cut.
  @Test(arguments: [WALPreallocation.none, .zeroFilled])
  func aFlippedBitInTheLastRecordBeforeACleanCloseIsCorruption(_ preallocation: WALPreallocation) async throws {
    try await withTemporaryDirectory { directory in
      try await writeOneByOne(directory, count: 5, preallocation: preallocation)
      let segment = try #require(try segmentFiles(directory).first)
      var bytes = try readFile(segment)
      let (starts, end) = recordOffsets(bytes, markers: true)
      #expect(bytes[starts[starts.count - 1] + 8] == syncMarkerType, "a clean close's marker is last")
      let last = starts[starts.count - 2]
      bytes[end - 20] ^= 0x10
      #expect(end - 20 > last)
      try writeFile(segment, bytes)
      let storage = makeStorage(directory, segmentBytes: 1 << 20, preallocation: preallocation)
      let error = await #expect(throws: StorageError.self) { _ = try await storage.recover() }
      guard case .corruptRecord(let file, let offset, _) = error else {
        Issue.record("expected corruptRecord, got \(String(describing: error))")
        return
      }
      #expect(file == segment && offset == last)
      try await storage.close()
    }
  }

  @Test(arguments: [WALPreallocation.none, .zeroFilled])
  func aFlippedBitInAMiddleRecordIsCorruption(_ preallocation: WALPreallocation) async throws {
    try await withTemporaryDirectory { directory in
      try await writeOneByOne(directory, count: 5, preallocation: preallocation)
      let segment = try #require(try segmentFiles(directory).first)
      let pristine = withoutCloseMarker(try readFile(segment))
      let (starts, _) = recordOffsets(pristine)
      let third = starts[3]  // header, then entries 1, 2, 3...
      // Single flipped bits in the CRC, the length, the type and the payload; then the whole record zeroed,
      // as when a page of a write never reached the disk but a later one did.
      for flipAt in [third, third + 4, third + 8, third + 12, -1] {
        var bytes = pristine
        if flipAt >= 0 {
          bytes[flipAt] ^= 0x01
        } else {
          for offset in third..<starts[4] { bytes[offset] = 0 }
        }
        try writeFile(segment, bytes)
        let storage = makeStorage(directory, segmentBytes: 1 << 20, preallocation: preallocation)
        let error = await #expect(throws: StorageError.self) { _ = try await storage.recover() }
        guard case .corruptRecord(let file, let offset, _) = error else {
          Issue.record("expected corruptRecord, got \(String(describing: error))")
          return
        }
        #expect(file == segment)
        #expect(offset == third)
        try await storage.close()
      }
    }
  }

  @Test func damageInAnEarlierSegmentIsCorruptionEvenAtItsEnd() async throws {
    try await withTemporaryDirectory { directory in
      let storage = makeStorage(directory, segmentBytes: 4096)
      for start in stride(from: UInt64(1), through: 191, by: 10) {
        try await storage.write(StorageWrite(entries: entries(start...(start + 9))))
      }
      try await storage.close()
      let first = try #require(try segmentFiles(directory).first)
      var bytes = withoutCloseMarker(try readFile(first))
      bytes[bytes.count - 2] ^= 0x40
      try writeFile(first, bytes)
      let reopened = makeStorage(directory, segmentBytes: 4096)
      let error = await #expect(throws: StorageError.self) { _ = try await reopened.recover() }
      guard case .corruptRecord(let file, _, _) = error else {
        Issue.record("expected corruptRecord, got \(String(describing: error))")
        return
      }
      #expect(file == first)
    }
  }

  @Test func aMissingSegmentIsCorruption() async throws {
    try await withTemporaryDirectory { directory in
      let storage = makeStorage(directory, segmentBytes: 4096)
      for start in stride(from: UInt64(1), through: 591, by: 10) {
        try await storage.write(StorageWrite(entries: entries(start...(start + 9))))
      }
      try await storage.close()
      let segments = try segmentFiles(directory)
      #expect(segments.count >= 3)
      try FileManager.default.removeItem(atPath: segments[1])
      let reopened = makeStorage(directory, segmentBytes: 4096)
      let error = await #expect(throws: StorageError.self) { _ = try await reopened.recover() }
      guard case .corruptRecord = error else {
        Issue.record("expected corruptRecord, got \(String(describing: error))")
        return
      }
    }
  }

  /// A segment is renamed into place only after its header was written and synced: one found empty or all zeros
  /// (a disk or file-system fault, or a file truncated by hand) lost synced entries and votes. That is corruption
  /// in any segment, the last one included, not an empty segment to replay or an unfinished one to remove.
  @Test(arguments: [false, true])
  func aSegmentWithoutAHeaderIsCorruption(_ lastSegment: Bool) async throws {
    try await withTemporaryDirectory { directory in
      let storage = makeStorage(directory, segmentBytes: 4096)
      _ = try await storage.recover()
      for start in stride(from: UInt64(1), through: 291, by: 10) {
        try await storage.write(
          StorageWrite(hardState: hardState("at \(start)"), entries: entries(start...(start + 9))))
      }
      try await storage.close()
      let segments = try segmentFiles(directory)
      #expect(segments.count >= 3)
      let target = lastSegment ? segments[segments.count - 1] : segments[1]
      let pristine = try readFile(target)
      for emptied in [true, false] {
        try writeFile(target, emptied ? [] : [UInt8](repeating: 0, count: pristine.count))
        let reopened = makeStorage(directory, segmentBytes: 4096)
        let error = await #expect(throws: StorageError.self) { _ = try await reopened.recover() }
        guard case .corruptRecord(let file, let offset, let reason) = error else {
          Issue.record("expected corruptRecord, got \(String(describing: error))")
          return
        }
        #expect(file == target && offset == 0, "emptied: \(emptied)")
        #expect(reason.contains("no valid segment header"))
        try await reopened.close()
        #expect(try segmentFiles(directory) == segments, "nothing removed")
      }
    }
  }

  /// Under the policy that never syncs, a crash can leave the newest segment renamed into place before its
  /// header reached the disk: that one is removed, and recovery says so.
  @Test func anUnfinishedLastSegmentIsRemovedUnderNeverSync() async throws {
    try await withTemporaryDirectory { directory in
      let storage = makeStorage(directory, fsync: .never, segmentBytes: 4096)
      _ = try await storage.recover()
      try await storage.write(StorageWrite(entries: entries(1...5)))
      try await storage.close()
      let segment = try #require(try segmentFiles(directory).first)
      #expect(segment == WALFiles.segmentPath(directory + "/wal", 1))
      let next = WALFiles.segmentPath(directory + "/wal", 2)
      try writeFile(next, [])
      let reopened = makeStorage(directory, fsync: .never, segmentBytes: 4096)
      let state = try await reopened.recover()
      #expect(state.entries == entries(1...5))
      #expect(state.report.removedUnfinishedSegment == next)
      try await reopened.write(StorageWrite(entries: entries(6...6)))
      try await reopened.close()
      let again = makeStorage(directory, fsync: .never, segmentBytes: 4096)
      #expect(try await again.recover().entries == entries(1...6))
      try await again.close()
    }
  }

  /// An acknowledged record written under a larger `maxRecordBytes` is the last of the log; reopening with a
  /// smaller limit must refuse it as such, not take it for a torn tail and cut it off.
  @Test(arguments: [WALPreallocation.none, .zeroFilled])
  func aRecordOverALoweredLimitIsRefusedNotCut(_ preallocation: WALPreallocation) async throws {
    try await withTemporaryDirectory { directory in
      let big = TestEntry(3, payload: (0..<(2 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
      let storage = makeStorage(directory, segmentBytes: 1 << 16, preallocation: preallocation, maxRecordBytes: 4 << 20)
      _ = try await storage.recover()
      try await storage.write(StorageWrite(hardState: hardState("hs"), entries: entries(1...2)))
      try await storage.write(StorageWrite(entries: [big]))
      try await storage.close()
      let segment = try #require(try segmentFiles(directory).last)
      let pristine = try readFile(segment)

      let lowered = makeStorage(directory, segmentBytes: 1 << 16, preallocation: preallocation, maxRecordBytes: 1 << 20)
      let error = await #expect(throws: StorageError.self) { _ = try await lowered.recover() }
      guard case .incompatible(let file, let reason) = error else {
        Issue.record("expected incompatible, got \(String(describing: error))")
        return
      }
      #expect(file == segment)
      #expect(reason.contains("\(1 << 20)") && reason.contains("at least"), "\(reason)")
      try await lowered.close()
      #expect(try readFile(segment) == pristine, "the segment is left as it was")

      let raised = makeStorage(directory, segmentBytes: 1 << 16, preallocation: preallocation, maxRecordBytes: 4 << 20)
      let state = try await raised.recover()
      #expect(state.entries == entries(1...2) + [big])
      #expect(state.report.truncatedTailBytes == 0)
      try await raised.close()
    }
  }

  /// A torn record of a few MiB of incompressible bytes in a large zero-filled segment: each offset there with
  /// a known type byte and a length that fits is a candidate record after the damage. Recovery must still cut
  /// it as a torn tail, checksumming the segment about once rather than every candidate's span.
  /// What a torn record holds: the search after the damage meets few candidate records in random bytes, one every
  /// four bytes in little integers (each a short candidate), one every eight in pairs of a length and a type.
  enum TornPayload: String, CaseIterable, Sendable {
    case random, littleIntegers, lengthsAndTypes

    func bytes(_ count: Int) -> [UInt8] {
      switch self {
      case .random:
        var random = SeededRandom(seed: 51)
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &random) }
      case .littleIntegers:
        return (0..<count).map { (i: Int) -> UInt8 in
          guard i % 4 == 0 else { return 0 }
          return UInt8(truncatingIfNeeded: (i / 4) % 7 + 1)
        }
      case .lengthsAndTypes:
        let pair: [UInt8] = [0x58, 0x02, 0, 0, 1, 0, 0, 0]  // 600, then 1
        return (0..<count).map { pair[$0 % 8] }
      }
    }
  }

  @Test(arguments: TornPayload.allCases)
  func aTornRecordIsCutInBoundedWork(_ kind: TornPayload) async throws {
    try await withTemporaryDirectory { directory in
      let segmentBytes = 16 << 20
      let payload = kind.bytes(3 << 20)
      let storage = makeStorage(
        directory, segmentBytes: segmentBytes, preallocation: .zeroFilled, maxRecordBytes: 8 << 20)
      _ = try await storage.recover()
      try await storage.write(StorageWrite(hardState: hardState("hs"), entries: entries(1...2)))
      try await storage.write(StorageWrite(entries: [TestEntry(3, payload: payload)]))
      try await storage.close()
      let segment = try #require(try segmentFiles(directory).last)
      var bytes = withoutCloseMarker(try readFile(segment))
      #expect(bytes.count == segmentBytes)
      let (starts, end) = recordOffsets(bytes)
      let last = try #require(starts.last)
      for offset in (end - (1 << 20))..<end { bytes[offset] = 0 }  // the last MiB never reached the disk
      try writeFile(segment, bytes)

      let reopened = makeStorage(
        directory, segmentBytes: segmentBytes, preallocation: .zeroFilled, maxRecordBytes: 8 << 20)
      let state = try await reopened.recover()
      #expect(state.entries == entries(1...2))
      #expect(state.hardState == hardState("hs"))
      #expect(state.report.truncatedOffset == last)
      #expect(state.report.damageScanBytes > 0)
      // One pass over the segment, and a bounded cost per candidate: few in random bytes, one every four bytes of
      // the 2 MiB that reached the disk at worst.
      let perCandidate = 2 * RecordSpans.stride + RecordSpans.multiplyWork  // a length's factor is reused
      let bound: Int = kind == .random ? 2 * segmentBytes : segmentBytes + (2 << 20) / 4 * perCandidate
      #expect(
        state.report.damageScanBytes <= bound,
        "checksummed \(state.report.damageScanBytes) bytes looking past the damage")
      try await reopened.close()
    }
  }

  @Test func aGapBetweenEntriesIsCorruption() async throws {
    try await withTemporaryDirectory { directory in
      try await writeOneByOne(directory, count: 5, preallocation: .none)
      let segment = try #require(try segmentFiles(directory).first)
      let bytes = withoutCloseMarker(try readFile(segment))
      let (starts, end) = recordOffsets(bytes)
      // Remove entry 3's record: the records stay valid, but 4 does not follow 2.
      let damaged = Array(bytes[..<starts[3]]) + Array(bytes[starts[4]..<end])
      try writeFile(segment, damaged)
      let storage = makeStorage(directory, segmentBytes: 1 << 20)
      let error = await #expect(throws: StorageError.self) { _ = try await storage.recover() }
      guard case .corruptRecord(_, let offset, _) = error else {
        Issue.record("expected corruptRecord, got \(String(describing: error))")
        return
      }
      #expect(offset == starts[3])
    }
  }

  /// Writes entries 1...4 with hard state "old", then entries 5...16 (about 12 KiB) with hard state "new" in one
  /// append, and `after` more appends; returns the segment, its bytes, the record starts and where the big
  /// append's records begin.
  private func writeAMultiPageAppend(
    _ directory: String, fsync: FsyncPolicy = .always, preallocation: WALPreallocation = .none, after: Int = 0
  ) async throws -> (segment: String, bytes: [UInt8], starts: [Int], appendStart: Int) {
    let storage = makeStorage(directory, fsync: fsync, segmentBytes: 1 << 20, preallocation: preallocation)
    _ = try await storage.recover()
    try await storage.write(StorageWrite(hardState: hardState("old"), entries: entries(1...4), mustSync: true))
    try await storage.write(StorageWrite(hardState: hardState("new"), entries: pageEntries(5...16)))
    for slot in 0..<UInt64(after) { try await storage.write(StorageWrite(entries: [TestEntry(17 + slot)])) }
    try await storage.close()
    let segment = try #require(try segmentFiles(directory).first)
    let bytes = withoutCloseMarker(try readFile(segment))
    let (starts, _) = recordOffsets(bytes)
    return (segment, bytes, starts, starts[6])  // the header, entries 1...4, hard state, then the big append's
  }

  /// The page cache writes an append's pages back in any order, so a crash during an append of several pages
  /// can keep a later page and lose an earlier one: valid records then follow the damage. No sync marker
  /// follows it (nothing of the append was synced), so it is a torn write, cut from the damaged record on.
  @Test(arguments: [WALPreallocation.none, .zeroFilled])
  func anAppendThatLostAMiddlePageIsATornWrite(_ preallocation: WALPreallocation) async throws {
    try await withTemporaryDirectory { directory in
      var (segment, bytes, starts, appendStart) = try await writeAMultiPageAppend(
        directory, preallocation: preallocation)
      let page = losePage(after: appendStart, in: &bytes)
      let cut = damagedRecord(starts, page: page)
      let lastNonZero = try #require(bytes.lastIndex { $0 != 0 })
      #expect(starts.contains { $0 > page + 4096 }, "valid records follow the lost page")
      try writeFile(segment, bytes)

      var storage = makeStorage(directory, segmentBytes: 1 << 20, preallocation: preallocation)
      var state = try await storage.recover()
      let kept = UInt64(starts.firstIndex(of: cut)! - 6)  // the append's records before the damaged one
      #expect(state.entries == entries(1...4) + pageEntries(5...(4 + kept)))
      #expect(state.hardState == hardState("old"))
      #expect(state.report.truncatedOffset == cut)
      #expect(state.report.truncatedTailBytes == lastNonZero + 1 - cut)
      try await storage.write(StorageWrite(entries: entries((5 + kept)...(6 + kept), term: 2)))
      try await storage.close()

      storage = makeStorage(directory, segmentBytes: 1 << 20, preallocation: preallocation)
      state = try await storage.recover()
      #expect(state.entries == entries(1...4) + pageEntries(5...(4 + kept)) + entries((5 + kept)...(6 + kept), term: 2))
      #expect(state.report.truncatedTailBytes == 0)
      try await storage.close()
    }
  }

  /// Under the batch policy every append since the last sync may be torn: a lost page in one leaves the later
  /// ones, unsynced too, to be cut with it.
  @Test func underBatchSyncEveryAppendSinceTheLastSyncIsCutWithTheLostPage() async throws {
    try await withTemporaryDirectory { directory in
      var (segment, bytes, starts, appendStart) = try await writeAMultiPageAppend(
        directory, fsync: .batch(interval: .seconds(3600)), after: 3)
      let page = losePage(after: appendStart, in: &bytes)
      try writeFile(segment, bytes)
      let storage = makeStorage(directory, fsync: .batch(interval: .seconds(3600)), segmentBytes: 1 << 20)
      let state = try await storage.recover()
      let kept = UInt64(starts.firstIndex(of: damagedRecord(starts, page: page))! - 6)
      #expect(state.entries == entries(1...4) + pageEntries(5...(4 + kept)))
      #expect(state.hardState == hardState("old"))
      try await storage.close()
    }
  }

  /// A lost page in an append that a later append's sync marker says was synced is damage to durable
  /// records, which may have been acknowledged: corruption, not a torn write.
  @Test func aLostPageInAnAppendSyncedSinceIsCorruption() async throws {
    try await withTemporaryDirectory { directory in
      var (segment, bytes, starts, appendStart) = try await writeAMultiPageAppend(directory, after: 1)
      let cut = damagedRecord(starts, page: losePage(after: appendStart, in: &bytes))
      try writeFile(segment, bytes)
      let storage = makeStorage(directory, segmentBytes: 1 << 20)
      let error = await #expect(throws: StorageError.self) { _ = try await storage.recover() }
      guard case .corruptRecord(let file, let offset, let reason) = error else {
        Issue.record("expected corruptRecord, got \(String(describing: error))")
        return
      }
      #expect(file == segment)
      #expect(offset == cut)
      #expect(reason.contains("says the damaged bytes had been synced"), "\(reason)")
    }
  }

  /// The records a recovery reads may have been only in the page cache (a process crash, or a failed sync
  /// before the reopen). The reopened log syncs them, and its first append starts with a marker saying so: a
  /// page of them lost later is corruption, not a torn write to cut with the acknowledged appends after it.
  @Test func aLostPageBeforeAReopenIsCorruption() async throws {
    try await withTemporaryDirectory { directory in
      let (segment, _, _, appendStart) = try await writeAMultiPageAppend(directory)
      let storage = makeStorage(directory, segmentBytes: 1 << 20)
      _ = try await storage.recover()
      #expect(try await storage.syncCount() == 1, "the reopened segment is synced")
      try await storage.write(StorageWrite(entries: [TestEntry(17)]))
      try await storage.close()
      var bytes = withoutCloseMarker(try readFile(segment))
      let cut = damagedRecord(recordOffsets(bytes).starts, page: losePage(after: appendStart, in: &bytes))
      try writeFile(segment, bytes)
      let reopened = makeStorage(directory, segmentBytes: 1 << 20)
      let error = await #expect(throws: StorageError.self) { _ = try await reopened.recover() }
      guard case .corruptRecord(_, let offset, let reason) = error else {
        Issue.record("expected corruptRecord, got \(String(describing: error))")
        return
      }
      #expect(offset == cut)
      #expect(reason.contains("says the damaged bytes had been synced"), "\(reason)")
    }
  }

  /// An append's first page often holds the end of records synced before it. Lost, that page reads back as
  /// those records and then zeros (no whole sector of zeros when the append starts in the page's last sector):
  /// zeros from the damaged record to the end of its sector show the lost page too.
  @Test func anAppendThatLostItsFirstPageSharedWithSyncedRecordsIsATornWrite() async throws {
    try await withTemporaryDirectory { directory in
      let storage = makeStorage(directory, segmentBytes: 1 << 20)
      _ = try await storage.recover()
      let segment = try #require(try segmentFiles(directory).first)
      // Small appends until the log ends in the last sector of a page, with room for a record header.
      var index: UInt64 = 1
      while case let end = try readFile(segment).count, end % 4096 <= 4096 - 512 || end % 4096 > 4096 - 64 {
        try await storage.write(StorageWrite(entries: [TestEntry(index)]))
        index += 1
      }
      let syncedEnd = try readFile(segment).count
      try await storage.write(StorageWrite(entries: pageEntries(index...(index + 11))))
      try await storage.close()
      var bytes = withoutCloseMarker(try readFile(segment))
      let page = syncedEnd / 4096 * 4096
      #expect(recordOffsets(bytes).starts.last! > page + 4096, "valid records follow the lost page")
      for at in syncedEnd..<(page + 4096) { bytes[at] = 0 }  // the page as the disk held it before the append
      try writeFile(segment, bytes)

      let reopened = makeStorage(directory, segmentBytes: 1 << 20)
      let state = try await reopened.recover()
      #expect(state.entries == entries(1...(index - 1)))
      #expect(state.report.truncatedOffset == syncedEnd)
      try await reopened.close()
    }
  }

  /// Entries may hold bytes that form a valid sync marker record (a copy of a log segment stored as a value).
  /// Such a record does not record its own offset, so it does not make a torn write before it corruption.
  @Test func bytesFormingASyncMarkerInsideEntriesDoNotCount() async throws {
    try await withTemporaryDirectory { directory in
      var fake = WireWriter()
      fake.writeFixed32(0)
      fake.writeFixed32(2)
      fake.writeByte(syncMarkerType)
      fake.writeVarint(12_345)
      var record = fake.bytes
      let crc = CRC32C.checksum(record[4...])
      for shift in 0..<4 { record[shift] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(shift))) }
      let storage = makeStorage(directory, segmentBytes: 1 << 20)
      _ = try await storage.recover()
      try await storage.write(StorageWrite(entries: entries(1...4), mustSync: true))
      let copies = (UInt64(5)...16).map { TestEntry($0, payload: Array(repeating: record, count: 90).flatMap { $0 }) }
      try await storage.write(StorageWrite(entries: copies))
      try await storage.close()
      let segment = try #require(try segmentFiles(directory).first)
      var bytes = withoutCloseMarker(try readFile(segment))
      let starts = recordOffsets(bytes).starts
      let cut = damagedRecord(starts, page: losePage(after: starts[5], in: &bytes))
      try writeFile(segment, bytes)

      let reopened = makeStorage(directory, segmentBytes: 1 << 20)
      let state = try await reopened.recover()
      #expect(state.report.truncatedOffset == cut)
      #expect(state.entries == entries(1...4) + copies.prefix(starts.firstIndex(of: cut)! - 5))
      try await reopened.close()
    }
  }

  /// Damage that holds no sector of zeros is not a lost page: followed by valid records, even of the same
  /// append, it is corruption.
  @Test func aFlippedBitInTheLastAppendBeforeItsOtherRecordsIsCorruption() async throws {
    try await withTemporaryDirectory { directory in
      var (segment, bytes, _, appendStart) = try await writeAMultiPageAppend(directory)
      bytes[appendStart + 100] ^= 0x04
      try writeFile(segment, bytes)
      let storage = makeStorage(directory, segmentBytes: 1 << 20)
      let error = await #expect(throws: StorageError.self) { _ = try await storage.recover() }
      guard case .corruptRecord(_, let offset, let reason) = error else {
        Issue.record("expected corruptRecord, got \(String(describing: error))")
        return
      }
      #expect(offset == appendStart)
      #expect(reason.contains("shows no sector of zeros"), "\(reason)")
    }
  }

  enum AppendStart: String, CaseIterable, Sendable {
    /// After an append that would have ended in a sector's last 8 bytes, so ends in a filler.
    case afterAFiller
    /// At byte 503 of a sector: the last start that needs no filler (a record header fills the sector exactly).
    case atByte503
  }

  /// An append never ends in the last 8 bytes of a sector (a filler record follows it there): the next append
  /// then starts at least a record header before the sector's end, so when a power failure loses its first
  /// sector (the disk wrote the later ones), the zeros after the synced records show the lost sector, and the
  /// unacknowledged append is cut, not refused as corruption.
  @Test(arguments: AppendStart.allCases)
  func anAppendStartingNearASectorsEndThatLostItsFirstSectorIsATornWrite(_ start: AppendStart) async throws {
    try await withTemporaryDirectory { directory in
      let storage = makeStorage(directory, segmentBytes: 1 << 20)
      _ = try await storage.recover()
      let segment = try #require(try segmentFiles(directory).first)
      var written: [TestEntry] = []
      // Every append synced (fsync always), so the next append starts at the synced end.
      var syncedEnd = try readFile(segment).count
      func append(payload: Int) async throws -> [UInt8] {
        let index = UInt64(written.count) + 1
        let entry = TestEntry(
          index, payload: [UInt8](repeating: UInt8(truncatingIfNeeded: index) | 1, count: payload))
        try await storage.write(StorageWrite(entries: [entry]))
        written.append(entry)
        let bytes = try readFile(segment)
        syncedEnd = bytes.count
        #expect(syncedEnd % 512 < 504, "an append ends at \(syncedEnd), in the last bytes of a sector")
        return bytes
      }
      switch start {
      case .afterAFiller:
        // Appends of growing size until one would have ended in a sector's last 8 bytes (and ends in a filler).
        var sawFiller = false
        for payload in 1...600 {
          let bytes = try await append(payload: payload)
          let starts = recordOffsets(bytes, markers: true).starts
          if bytes[starts[starts.count - 1] + 8] == fillerType {
            sawFiller = true
            break
          }
        }
        #expect(sawFiller, "no append ended in a filler")
      case .atByte503:
        // An append (after one: from the second on, an append starts with a sync marker) measures what an
        // append adds to its payload; the next ends exactly at byte 503 of a sector.
        _ = try await append(payload: 200)
        let before = syncedEnd
        _ = try await append(payload: 200)
        let overhead = syncedEnd - before - 200
        var target = (syncedEnd / 512) * 512 + 503
        while target - syncedEnd - overhead < 200 { target += 512 }
        _ = try await append(payload: target - syncedEnd - overhead)
        try #require(syncedEnd % 512 == 503, "the append ends at \(syncedEnd)")
      }
      let next = UInt64(written.count) + 1
      try await storage.write(StorageWrite(entries: pageEntries(next...(next + 11))))
      try await storage.close()
      var bytes = withoutCloseMarker(try readFile(segment))
      let boundary = (syncedEnd / 512 + 1) * 512
      #expect(boundary - syncedEnd >= 9, "a record header fits before the sector's end")
      #expect(recordOffsets(bytes).starts.last! > boundary, "valid records follow the lost sector")
      for at in syncedEnd..<boundary { bytes[at] = 0 }  // the sector as the disk held it before the append
      try writeFile(segment, bytes)

      let reopened = makeStorage(directory, segmentBytes: 1 << 20)
      let state = try await reopened.recover()
      #expect(state.entries == written)
      #expect(state.report.truncatedOffset == syncedEnd)
      try await reopened.close()
    }
  }

  /// A segment of format version 1, written before sync markers, keeps the old rule: any valid record after
  /// damage makes it corruption. Appends to it carry no markers, so the rule stays sound for it.
  @Test func aVersionOneSegmentKeepsTheStricterRule() async throws {
    try await withTemporaryDirectory { directory in
      var (segment, bytes, _, _) = try await writeAMultiPageAppend(directory)
      // As an older build wrote it: no sync markers, and version 1 in the header record (CRC (4), length (4),
      // type (1), magic (4), version (1), ...).
      let (all, end) = recordOffsets(bytes, markers: true)
      var oldFormat: [UInt8] = []
      for (start, next) in zip(all, all.dropFirst() + [end])
      where bytes[start + 8] != syncMarkerType && bytes[start + 8] != fillerType {
        oldFormat += bytes[start..<next]
      }
      oldFormat[13] = 1
      let headerLength = Int(oldFormat[4]) | Int(oldFormat[5]) << 8
      let crc = CRC32C.checksum(oldFormat[4..<(9 + headerLength)])
      for shift in 0..<4 { oldFormat[shift] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(shift))) }
      let appendStart = recordOffsets(oldFormat).starts[6]  // as in writeAMultiPageAppend
      bytes = oldFormat

      var storage = makeStorage(directory, segmentBytes: 1 << 20)
      try writeFile(segment, bytes)
      _ = try await storage.recover()
      for index in UInt64(17)...19 { try await storage.write(StorageWrite(entries: [TestEntry(index)])) }
      try await storage.close()
      let appended = withoutCloseMarker(try readFile(segment))
      #expect(
        recordOffsets(appended, markers: true).starts == recordOffsets(appended).starts,
        "no sync marker is appended to a version 1 segment")

      _ = losePage(after: appendStart, in: &bytes)
      try writeFile(segment, bytes)
      storage = makeStorage(directory, segmentBytes: 1 << 20)
      let error = await #expect(throws: StorageError.self) { _ = try await storage.recover() }
      guard case .corruptRecord(_, _, let reason) = error else {
        Issue.record("expected corruptRecord, got \(String(describing: error))")
        return
      }
      #expect(reason.contains("a valid record follows"), "\(reason)")
      #expect(!reason.contains("sector") && !reason.contains("marker"), "\(reason)")
    }
  }
}

@Suite("FileStorage: damaged snapshots")
struct FileStorageSnapshotTests {
  private func corrupt(_ path: String) throws {
    var bytes = try readFile(path)
    bytes[bytes.count - 1] ^= 0xff
    try writeFile(path, bytes)
  }

  @Test func aDamagedSnapshotThatTheLogNoLongerCoversIsAnError() async throws {
    try await withTemporaryDirectory { directory in
      var storage = makeStorage(directory)
      try await storage.write(StorageWrite(entries: entries(1...20)))
      try await storage.saveSnapshot(StoredSnapshot(index: 10, term: 1, data: [1, 2, 3]), discardingLog: false)
      try await storage.compact(through: 10)
      try await storage.close()
      let file = directory + "/snapshots/" + (try #require(try snapshotFiles(directory).first))
      try corrupt(file)
      storage = makeStorage(directory)
      let error = await #expect(throws: StorageError.self) { _ = try await storage.recover() }
      guard case .corruptSnapshot(let path, _) = error else {
        Issue.record("expected corruptSnapshot, got \(String(describing: error))")
        return
      }
      #expect(path == file)
      // Truncated to less than a header is damage too.
      try writeFile(file, [1, 2, 3])
      await #expect(throws: StorageError.self) { _ = try await storage.recover() }
      // And a snapshot that is gone altogether.
      try FileManager.default.removeItem(atPath: file)
      let missing = await #expect(throws: StorageError.self) { _ = try await storage.recover() }
      guard case .corruptSnapshot = missing else {
        Issue.record("expected corruptSnapshot, got \(String(describing: missing))")
        return
      }
    }
  }

  @Test func aDamagedNewestSnapshotFallsBackWhenTheLogCoversTheGap() async throws {
    try await withTemporaryDirectory { directory in
      var storage = makeStorage(directory)
      try await storage.write(StorageWrite(entries: entries(1...30)))
      try await storage.saveSnapshot(StoredSnapshot(index: 10, term: 1, data: [10]), discardingLog: false)
      try await storage.compact(through: 10)
      try await storage.saveSnapshot(StoredSnapshot(index: 20, term: 1, data: [20]), discardingLog: false)
      try await storage.close()
      let newest = directory + "/snapshots/" + (try #require(try snapshotFiles(directory).last))
      try corrupt(newest)
      storage = makeStorage(directory)
      let state = try await storage.recover()
      #expect(state.snapshot == StoredSnapshot(index: 10, term: 1, data: [10]))
      #expect(state.entries == entries(11...30))
      #expect(state.report.rejectedSnapshots.count == 1)
      #expect(FileManager.default.fileExists(atPath: newest + ".corrupt"))
      try await storage.close()
    }
  }

  /// A damaged snapshot set aside is a whole copy of the state: only the newest is kept, and only until a
  /// snapshot at or past its index is stored.
  @Test func setAsideSnapshotsAreDeletedOnceANewerOneIsStored() async throws {
    try await withTemporaryDirectory { directory in
      var storage = makeStorage(directory)
      try await storage.write(StorageWrite(entries: entries(1...30)))
      try await storage.saveSnapshot(StoredSnapshot(index: 10, term: 1, data: [10]), discardingLog: false)
      try await storage.compact(through: 10)
      try await storage.saveSnapshot(StoredSnapshot(index: 20, term: 1, data: [20]), discardingLog: false)
      try await storage.close()
      let names = try snapshotFiles(directory)
      let newest = directory + "/snapshots/" + (try #require(names.last))
      try corrupt(newest)
      // One set aside by an earlier recovery.
      let older = directory + "/snapshots/snapshot-00000000000000000015.snap.corrupt"
      try writeFile(older, try readFile(newest))

      storage = makeStorage(directory)
      let state = try await storage.recover()
      #expect(state.snapshot?.index == 10)
      #expect(state.report.rejectedSnapshots.count == 1)
      #expect(
        try snapshotFiles(directory).filter { $0.hasSuffix(".corrupt") } == [names.last! + ".corrupt"],
        "only the newest set-aside file is kept")
      try await storage.saveSnapshot(StoredSnapshot(index: 25, term: 1, data: [25]), discardingLog: false)
      let after = try snapshotFiles(directory)
      #expect(!after.contains { $0.hasSuffix(".corrupt") }, "\(after)")
      try await storage.close()
    }
  }

  /// The version field (bytes 4-7) is outside the checksum. A flipped bit there, the rest of the file intact, is
  /// damage: recovery falls back to the older snapshot, as for any other damage. A file whose rest does not
  /// check out as this version's snapshot is a format this build does not know: incompatible; so is a version
  /// more than one bit away from this one, even when the rest checks out as this version's snapshot.
  @Test func aDamagedVersionFieldIsDamageNotANewerFormat() async throws {
    try await withTemporaryDirectory { directory in
      var storage = makeStorage(directory)
      try await storage.write(StorageWrite(entries: entries(1...30)))
      try await storage.saveSnapshot(StoredSnapshot(index: 10, term: 1, data: [10]), discardingLog: false)
      try await storage.compact(through: 10)
      try await storage.saveSnapshot(StoredSnapshot(index: 20, term: 1, data: [20]), discardingLog: false)
      try await storage.close()
      let newest = directory + "/snapshots/" + (try #require(try snapshotFiles(directory).last))
      let pristine = try readFile(newest)

      var bytes = pristine
      bytes[5] ^= 0x01  // version 1 reads as 257
      try writeFile(newest, bytes)
      storage = makeStorage(directory)
      let state = try await storage.recover()
      #expect(state.snapshot == StoredSnapshot(index: 10, term: 1, data: [10]))
      #expect(state.entries == entries(11...30))
      #expect(state.report.rejectedSnapshots.count == 1)
      #expect(state.report.rejectedSnapshots.first?.contains("version") == true)
      try await storage.close()

      // A newer format: another version, and the rest is not a version 1 snapshot (here: another checksum).
      try FileManager.default.removeItem(atPath: newest + ".corrupt")
      bytes = pristine
      bytes[4] = 2
      bytes[8] ^= 0x01
      try writeFile(newest, bytes)
      storage = makeStorage(directory)
      let error = await #expect(throws: StorageError.self) { _ = try await storage.recover() }
      guard case .incompatible(let file, let reason) = error else {
        Issue.record("expected incompatible, got \(String(describing: error))")
        return
      }
      #expect(file == newest && reason == "snapshot format version 2")
      try await storage.close()

      // Version 2 (two bits away from 1) with the rest a valid version 1 snapshot: a newer format all the same.
      bytes = pristine
      bytes[4] = 2
      try writeFile(newest, bytes)
      storage = makeStorage(directory)
      let newer = await #expect(throws: StorageError.self) { _ = try await storage.recover() }
      guard case .incompatible(let newerFile, let newerReason) = newer else {
        Issue.record("expected incompatible, got \(String(describing: newer))")
        return
      }
      #expect(newerFile == newest && newerReason == "snapshot format version 2")
      try await storage.close()
    }
  }

  @Test func aDamagedLogDiscardingSnapshotIsAnError() async throws {
    try await withTemporaryDirectory { directory in
      var storage = makeStorage(directory)
      try await storage.write(StorageWrite(entries: entries(1...30)))
      try await storage.saveSnapshot(StoredSnapshot(index: 10, term: 1, data: [10]), discardingLog: false)
      try await storage.saveSnapshot(StoredSnapshot(index: 50, term: 2, data: [50]), discardingLog: true)
      try await storage.write(StorageWrite(entries: entries(51...52, term: 2)))
      try await storage.close()
      let newest = directory + "/snapshots/" + (try #require(try snapshotFiles(directory).last))
      try corrupt(newest)
      storage = makeStorage(directory)
      let error = await #expect(throws: StorageError.self) { _ = try await storage.recover() }
      guard case .corruptSnapshot(let path, _) = error else {
        Issue.record("expected corruptSnapshot, got \(String(describing: error))")
        return
      }
      #expect(path == newest)
    }
  }

  /// A leader's snapshot whose file cannot be written (here a directory squats on its temporary file's name, so
  /// opening it fails) fails as retryable, changes nothing, and leaves the storage usable: the same install goes
  /// through once the file can be written.
  @Test func aSnapshotWhoseFileCannotBeWrittenChangesNothingAndMayBeRetried() async throws {
    try await withTemporaryDirectory { directory in
      var storage = makeStorage(directory)
      _ = try await storage.recover()
      try await storage.write(StorageWrite(hardState: hardState("h"), entries: entries(1...5)))
      let snapshot = StoredSnapshot(index: 9, term: 2, data: [9])
      let squatter = directory + "/snapshots/" + SnapshotFile.fileName(index: 9) + ".tmp"
      try FileManager.default.createDirectory(atPath: squatter, withIntermediateDirectories: false)
      let error = await #expect(throws: StorageError.self) {
        try await storage.saveSnapshot(snapshot, discardingLog: true)
      }
      guard case .snapshotNotStored(let underlying)? = error, case .io = underlying else {
        Issue.record("expected snapshotNotStored around an I/O error, got \(String(describing: error))")
        return
      }
      #expect(error?.isRetryable == true)
      try await storage.write(StorageWrite(entries: entries(6...6)))
      try await storage.close()
      try FileManager.default.removeItem(atPath: squatter)

      storage = makeStorage(directory)
      var state = try await storage.recover()
      #expect(state.snapshot == nil)
      #expect(state.entries == entries(1...6))
      try await storage.saveSnapshot(snapshot, discardingLog: true)
      try await storage.close()

      storage = makeStorage(directory)
      state = try await storage.recover()
      #expect(state.snapshot == snapshot)
      #expect(state.entries.isEmpty)
      try await storage.close()
    }
  }
}

@Suite("FileStorage: work run when a write is durable")
struct FileStorageWhenDurableTests {
  @Test("it runs once, after the write's sync and before the writer resumes; a refused write never runs it")
  func runsAfterTheSync() async throws {
    try await withTemporaryDirectory { directory in
      let storage = makeStorage(directory)
      _ = try await storage.recover()
      let before = try await storage.syncCount()
      let runs = Mutex<[Int]>([])
      try await storage.write(StorageWrite(entries: [TestEntry(1)])) {
        // The hook runs on the storage's queue, where the sync count may be read: the write's own fdatasync
        // has happened.
        let syncs = storage.core.syncCount
        runs.withLock { $0.append(syncs) }
      }
      #expect(runs.withLock { $0 } == [before + 1], "ran once, after the write's sync, before write returned")

      // Index 5 after 1 leaves a gap: refused, and the hook does not run.
      await #expect(throws: StorageError.self) {
        try await storage.write(StorageWrite(entries: [TestEntry(5)])) { runs.withLock { $0.append(-2) } }
      }
      try await storage.close()
      await #expect(throws: StorageError.self) {
        try await storage.write(StorageWrite(entries: [TestEntry(2)])) { runs.withLock { $0.append(-3) } }
      }
      #expect(runs.withLock { $0 } == [before + 1])
    }
  }
}
