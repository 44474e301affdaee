import Dispatch
import Foundation
import QuorumCore
import Synchronization
import Testing

@testable import QuorumStorage

private func makeLog(_ directory: String, fsync: FsyncPolicy = .always, segmentBytes: Int = 4096)
  -> SharedWriteAheadLog
{
  SharedWriteAheadLog(
    directory: directory, fsync: fsync, segmentBytes: segmentBytes, preallocation: .none, logger: .disabled)
}

/// An entry type that reads only a position: a `TestEntry`'s records do not decode as one.
private struct ShortEntry: StorableEntry, Equatable {
  var index: UInt64

  func encode(to writer: inout WireWriter) { writer.writeVarint(index) }

  init(from reader: inout WireReader) throws(WireError) { index = try reader.readVarint() }
}

/// A padded entry, so that a few writes fill a 4 KiB segment.
private func bigEntries(_ positions: ClosedRange<UInt64>, term: UInt64 = 1) -> [TestEntry] {
  positions.map { TestEntry($0, term: term, payload: [UInt8](repeating: UInt8(truncatingIfNeeded: $0), count: 100)) }
}

/// Blocks a thread until opened; for holding the log's queue while requests pile up behind it.
private final class Gate: @unchecked Sendable {
  private let semaphore = DispatchSemaphore(value: 0)
  let entered = Atomic<Bool>(false)

  func pass() {
    entered.store(true, ordering: .releasing)
    semaphore.wait()
  }

  func open() { semaphore.signal() }
}

/// A task executor that runs the jobs queued on it only when told, all in one pass (``ThreadBatch``) on the
/// caller's thread: as an event loop runs the turns of the replicas on it.
private final class PassExecutor: TaskExecutor, Sendable {
  private let jobs = Mutex<[UnownedJob]>([])

  var waiting: Int { jobs.withLock { $0.count } }

  func enqueue(_ job: consuming ExecutorJob) {
    let job = UnownedJob(job)
    jobs.withLock { $0.append(job) }
  }

  /// Runs the queued jobs in one pass, and those they queue, until none is left (as the loop runs what its own
  /// jobs hand it before it waits again); `atEnd` runs inside the pass, after them, before its deferred work.
  func runPass<T>(_ atEnd: () -> T) -> T {
    var result: T?
    ThreadBatch.run {
      while case let taken = jobs.withLock({ queued -> [UnownedJob] in
        defer { queued = [] }
        return queued
      }), !taken.isEmpty {
        for job in taken { job.runSynchronously(on: asUnownedTaskExecutor()) }
      }
      result = atEnd()
    }
    // Set inside the pass just above.
    return result!
  }
}

/// Waits (polling) until `condition` holds; fails the test after ten seconds.
private func waitUntil(_ what: Comment, _ condition: () async throws -> Bool) async throws {
  let deadline = ContinuousClock.now + .seconds(10)
  while try await !condition() {
    if ContinuousClock.now > deadline {
      Issue.record("timed out waiting: \(what)")
      return
    }
    try await Task.sleep(for: .milliseconds(1))
  }
}

/// Groups 1 and 2 of `log`, recovered.
private func openTwo(_ log: SharedWriteAheadLog) async throws -> (
  SharedLogStorage<TestEntry>, SharedLogStorage<TestEntry>
) {
  let a = log.storage(for: 1, entry: TestEntry.self)
  let b = log.storage(for: 2, entry: TestEntry.self)
  _ = try await a.recover()
  _ = try await b.recover()
  return (a, b)
}

/// A log whose first segment only group 2 keeps: group 2 writes three entries (and, with `snapshotOfB`, a
/// snapshot at 2), group 1 five; then, with only group 1 open, group 1 fills segments and compacts them all.
/// Returns the log and group 1's storage, open, and the segments on disk.
private func pinnedByAnAbsentGroup(_ directory: String, snapshotOfB: Bool = false) async throws
  -> (SharedWriteAheadLog, SharedLogStorage<TestEntry>, [UInt64])
{
  let first = makeLog(directory)
  let (a, b) = try await openTwo(first)
  try await b.write(StorageWrite(hardState: hardState("b"), entries: entries(1...3)))
  if snapshotOfB { try await b.saveSnapshot(StoredSnapshot(index: 2, term: 1, data: [9]), discardingLog: false) }
  try await a.write(StorageWrite(entries: bigEntries(1...5)))
  try await a.close()
  try await b.close()

  // Only group 1 this time: group 2's records keep the first segment, and so every later one.
  let log = makeLog(directory)
  let reopened = log.storage(for: 1, entry: TestEntry.self)
  _ = try await reopened.recover()
  for start in stride(from: UInt64(6), through: 196, by: 5) {
    try await reopened.write(StorageWrite(entries: bigEntries(start...(start + 4))))
  }
  try await reopened.saveSnapshot(StoredSnapshot(index: 200, term: 1, data: [1]), discardingLog: false)
  try await reopened.compact(through: 200)
  let pinned = try await log.segmentSequences()
  #expect(pinned.count > 4)
  #expect(try await log.pinningGroups() == [2])
  return (log, reopened, pinned)
}

/// Writes `write` into both the storage and its in-memory model.
private func write(
  _ write: StorageWrite<TestEntry>, _ storage: SharedLogStorage<TestEntry>, _ model: MemoryStorage<TestEntry>
) async throws {
  try await storage.write(write)
  try await model.write(write)
}

@Suite("Shared write-ahead log: groups, segments, recovery")
struct SharedLogTests {
  @Test func groupsInterleaveAndEachRecoversItsOwn() async throws {
    try await withTemporaryDirectory { directory in
      let log = makeLog(directory)
      let modes: [LogWriteMode] = [.truncateSuffix, .replace, .truncateSuffix]
      let stores = modes.enumerated().map {
        log.storage(for: UInt64($0.offset + 1), mode: $0.element, entry: TestEntry.self)
      }
      let models = modes.map { MemoryStorage<TestEntry>(mode: $0) }
      for (store, model) in zip(stores, models) {
        _ = try await store.recover()
        _ = try await model.recover()
      }
      for round in UInt64(0)..<60 {
        // Group 1 appends one entry a round; group 2 (replace mode) writes sparse slots and now and then
        // replaces an older one; group 3 appends three and sometimes overwrites its suffix with a new term.
        async let one: Void = write(
          StorageWrite(hardState: hardState("one \(round)"), entries: bigEntries((round + 1)...(round + 1))),
          stores[0], models[0])
        var slots = [TestEntry(1000 + 2 * round, term: 1)]
        if round % 5 == 4 { slots.insert(TestEntry(1000 + round, term: 2), at: 0) }
        async let two: Void = write(
          StorageWrite(hardState: round % 3 == 0 ? hardState("two \(round)") : nil, entries: slots), stores[1],
          models[1])
        let start = round * 3 + 1
        async let three: Void = write(StorageWrite(entries: entries(start...(start + 2))), stores[2], models[2])
        _ = try await (one, two, three)
        if round % 7 == 6 {
          try await write(
            StorageWrite(hardState: hardState("three \(round)"), entries: entries((start + 1)...(start + 2), term: 2)),
            stores[2], models[2])
        }
      }
      #expect(try await log.segmentSequences().count > 2)
      for store in stores { try await store.close() }

      let reopened = makeLog(directory)
      for (slot, mode) in modes.enumerated() {
        let state = try await reopened.storage(for: UInt64(slot + 1), mode: mode, entry: TestEntry.self).recover()
        let expected = try await models[slot].recover()
        #expect(state.entries == expected.entries, "group \(slot + 1)")
        #expect(state.hardState == expected.hardState, "group \(slot + 1)")
        #expect(state.report.truncatedTailBytes == 0)
      }
    }
  }

  @Test func concurrentWritesOfManyGroupsShareOneSync() async throws {
    try await withTemporaryDirectory { directory in
      let log = makeLog(directory, segmentBytes: 1 << 20)
      let stores = (UInt64(1)...32).map { log.storage(for: $0, entry: TestEntry.self) }
      for store in stores { _ = try await store.recover() }
      let syncsBefore = try await log.syncCount()

      // Hold the log's queue, queue one write from each group behind it, then let them all go: they are one
      // batch, appended together and synced once.
      let gate = Gate()
      let core = log.core
      let holder = Task { try await core.perform { () throws(StorageError) in gate.pass() } }
      try await waitUntil("the queue is held") { gate.entered.load(ordering: .acquiring) }
      try await withThrowingTaskGroup(of: Void.self) { tasks in
        for store in stores {
          tasks.addTask {
            try await store.write(StorageWrite(hardState: hardState("g\(store.group)"), entries: entries(1...2)))
          }
        }
        try await waitUntil("32 writes are queued") { core.queuedRequestCount == stores.count }
        gate.open()
        try await tasks.waitForAll()
      }
      try await holder.value
      #expect(try await log.syncCount() - syncsBefore == 1)
      for store in stores { try await store.close() }

      let reopened = makeLog(directory, segmentBytes: 1 << 20)
      for group in UInt64(1)...32 {
        let state = try await reopened.storage(for: group, entry: TestEntry.self).recover()
        #expect(state.entries == entries(1...2))
        #expect(state.hardState == hardState("g\(group)"))
      }
    }
  }

  /// Groups taking their turns in one pass of a thread (as replicas on one event loop do) wake the writer once,
  /// at the end of the pass: every write of the pass is queued when it wakes, and one sync makes them durable.
  @Test func writesQueuedInOnePassWakeTheWriterOnce() async throws {
    try await withTemporaryDirectory { directory in
      let log = makeLog(directory, segmentBytes: 1 << 20)
      let stores = (UInt64(1)...8).map { log.storage(for: $0, entry: TestEntry.self) }
      for store in stores { _ = try await store.recover() }
      let syncsBefore = try await log.syncCount()
      let executor = PassExecutor()
      let writes = stores.map { store in
        Task(executorPreference: executor) {
          try await store.write(StorageWrite(hardState: hardState("g\(store.group)"), entries: entries(1...2)))
        }
      }
      try await waitUntil("every write task waits for the pass") { executor.waiting == stores.count }
      // The writer idle, so that the pass's first write is the one that must wake it (a drain still running from
      // the calls above would take the writes itself).
      try await waitUntil("the writer is idle") { !log.core.isDraining }
      let queuedAtEnd = executor.runPass {
        // A long pass (other groups' turns): a writer woken by the first write would have taken them all by now.
        usleep(20_000)
        return log.core.queuedRequestCount
      }
      #expect(queuedAtEnd == stores.count, "no write went to the writer before the pass ended")
      // The writes resume on the executor once durable: passes until they are done.
      let finished = Task {
        for write in writes { try await write.value }
      }
      try await waitUntil("the writes finish") {
        _ = executor.runPass { 0 }
        let synced = try await log.syncCount() != syncsBefore
        return synced && executor.waiting == 0 && log.core.queuedRequestCount == 0
      }
      try await finished.value
      #expect(try await log.syncCount() - syncsBefore == 1)
      for store in stores { try await store.close() }
    }
  }

  @Test func batchPolicySyncsOnItsTimer() async throws {
    try await withTemporaryDirectory { directory in
      let log = makeLog(directory, fsync: .batch(interval: .milliseconds(5)))
      let store = log.storage(for: 1, entry: TestEntry.self)
      _ = try await store.recover()
      let before = try await log.syncCount()
      try await store.write(StorageWrite(entries: entries(1...3)))
      try await waitUntil("the timer syncs") { try await log.syncCount() > before }
      try await store.close()
    }
  }

  @Test func aGroupWithEntriesInTheOldestSegmentPinsItUntilItCompacts() async throws {
    try await withTemporaryDirectory { directory in
      let log = makeLog(directory)
      let (a, b) = try await openTwo(log)
      // B's hard state is written once, in the first segment: after it goes, only checkpoints hold it.
      try await b.write(StorageWrite(hardState: hardState("b"), entries: entries(1...3)))
      for start in stride(from: UInt64(1), through: 196, by: 5) {
        try await a.write(StorageWrite(hardState: hardState("a \(start)"), entries: bigEntries(start...(start + 4))))
      }
      let before = try await log.segmentSequences()
      #expect(before.count > 4)
      #expect(before.first == 1)

      try await a.saveSnapshot(StoredSnapshot(index: 200, term: 1, data: [1]), discardingLog: false)
      try await a.compact(through: 200)
      #expect(try await log.pinningGroups() == [2])
      #expect(try await log.segmentSequences() == before)

      try await b.saveSnapshot(StoredSnapshot(index: 3, term: 1, data: [2]), discardingLog: false)
      try await b.compact(through: 3)
      let after = try await log.segmentSequences()
      #expect(after == [before.last!])
      #expect(try segmentFiles(directory).count == 1)
      #expect(try await log.pinningGroups() == [])
      try await a.close()
      try await b.close()

      let reopened = makeLog(directory)
      let stateA = try await reopened.storage(for: 1, entry: TestEntry.self).recover()
      #expect(stateA.entries == [])
      #expect(stateA.snapshot?.index == 200)
      #expect(stateA.hardState == hardState("a 196"))
      let reopenedB = reopened.storage(for: 2, entry: TestEntry.self)
      let stateB = try await reopenedB.recover()
      #expect(stateB.entries == [])
      #expect(stateB.snapshot?.index == 3)
      #expect(stateB.hardState == hardState("b"))
      // The compaction points survived too: writing below them is refused, after them accepted.
      await #expect(throws: StorageError.self) { try await reopenedB.write(StorageWrite(entries: entries(3...3))) }
      try await reopenedB.write(StorageWrite(entries: entries(4...4)))
    }
  }

  @Test func aGroupNotOpenedThisRunPinsItsSegments() async throws {
    try await withTemporaryDirectory { directory in
      var (log, a, pinned) = try await pinnedByAnAbsentGroup(directory)
      #expect(pinned.first == 1)
      try await a.close()

      log = makeLog(directory)
      a = log.storage(for: 1, entry: TestEntry.self)
      let b = log.storage(for: 2, entry: TestEntry.self)
      #expect(try await a.recover().snapshot?.index == 200)
      let stateB = try await b.recover()
      #expect(stateB.entries == entries(1...3))
      #expect(stateB.hardState == hardState("b"))
      try await b.saveSnapshot(StoredSnapshot(index: 3, term: 1, data: [2]), discardingLog: false)
      try await b.compact(through: 3)
      #expect(try await log.segmentSequences() == [pinned.last!])
      try await a.close()
      try await b.close()
    }
  }

  /// A group this process no longer runs is forgotten: its segments go, its snapshots are deleted, and the group
  /// starts empty if it is ever opened again; the other group keeps everything.
  @Test func aForgottenGroupNoLongerPinsSegments() async throws {
    try await withTemporaryDirectory { directory in
      var (log, a, pinned) = try await pinnedByAnAbsentGroup(directory, snapshotOfB: true)
      let snapshotsOfB = directory + "/snapshots/2"
      #expect(FileManager.default.fileExists(atPath: snapshotsOfB))

      #expect(try await log.forget(group: 2))
      #expect(try await log.segmentSequences() == [try #require(pinned.last)])
      #expect(try await log.pinningGroups() == [])
      #expect(!FileManager.default.fileExists(atPath: snapshotsOfB))
      #expect(try await log.forget(group: 2) == false)  // Nothing left of it.
      // A's log and its state are untouched; B, opened again, starts empty.
      try await a.write(StorageWrite(hardState: hardState("a"), entries: bigEntries(201...202)))
      var b = log.storage(for: 2, entry: TestEntry.self)
      let fresh = try await b.recover()
      #expect(fresh.entries.isEmpty && fresh.hardState == nil && fresh.snapshot == nil)
      try await b.write(StorageWrite(hardState: hardState("b again"), entries: entries(1...1)))
      try await a.close()
      try await b.close()

      // After a restart the forget still holds: B's old records are void, its new ones are read.
      log = makeLog(directory)
      a = log.storage(for: 1, entry: TestEntry.self)
      b = log.storage(for: 2, entry: TestEntry.self)
      let stateA = try await a.recover()
      #expect(stateA.snapshot?.index == 200)
      #expect(stateA.entries == bigEntries(201...202))
      #expect(stateA.hardState == hardState("a"))
      let stateB = try await b.recover()
      #expect(stateB.entries == entries(1...1))
      #expect(stateB.hardState == hardState("b again"))
      #expect(stateB.snapshot == nil)
      try await a.close()
      try await b.close()
    }
  }

  /// Forgetting needs no group open (the log is opened for it and released after), and refuses a group
  /// recovered in this run. A crash after the forget record and before the snapshots were deleted is finished
  /// when the log is next opened, before the group could find them.
  @Test func forgettingOfflineRefusingAnOpenGroupAndFinishingAfterACrash() async throws {
    try await withTemporaryDirectory { directory in
      var log = makeLog(directory)
      let (a, first) = try await openTwo(log)
      var b = first
      try await a.write(StorageWrite(hardState: hardState("a"), entries: entries(1...2)))
      try await b.write(StorageWrite(hardState: hardState("b"), entries: entries(1...2)))
      await #expect(throws: StorageError.self) { try await log.forget(group: 2) }
      try await a.close()
      try await b.close()

      // A directory without a log is left alone: no empty log is made to forget nothing in.
      let elsewhere = directory + "/no-log-here"
      #expect(try await makeLog(elsewhere).forget(group: 2) == false)
      #expect(!FileManager.default.fileExists(atPath: elsewhere))

      log = makeLog(directory)
      #expect(try await log.forget(group: 2))
      // Released: another log object (another process) can open the directory.
      log = makeLog(directory)
      // As if the crash came before the snapshots were deleted.
      let leftover = directory + "/snapshots/2"
      try FileManager.default.createDirectory(atPath: leftover, withIntermediateDirectories: true)
      let stale = try #require(FileManager.default.contents(atPath: directory + "/snapshots/1/MODE"))
      #expect(FileManager.default.createFile(atPath: leftover + "/MODE", contents: stale))
      #expect(FileManager.default.createFile(atPath: leftover + "/snapshot-stale.snap", contents: Data([1, 2, 3])))
      let reopenedA = log.storage(for: 1, entry: TestEntry.self)
      #expect(try await reopenedA.recover().entries == entries(1...2))
      #expect(!FileManager.default.fileExists(atPath: leftover))
      b = log.storage(for: 2, entry: TestEntry.self)
      let stateB = try await b.recover()
      #expect(stateB.entries.isEmpty && stateB.hardState == nil)
      try await reopenedA.close()
      try await b.close()
    }
  }

  /// A forget whose snapshot deletion fails after its record is durable leaves the log refusing every call
  /// until it is reopened: the forgotten group, recovered again in the same run, must not start from the
  /// forgotten replica's snapshot; the reopen finishes the deletion.
  @Test func aForgetWhoseSnapshotDeletionFailsIsFinishedByTheReopen() async throws {
    try await withTemporaryDirectory { directory in
      var log = makeLog(directory)
      var b = log.storage(for: 2, entry: TestEntry.self)
      _ = try await b.recover()
      try await b.write(StorageWrite(hardState: hardState("b"), entries: entries(1...3)))
      try await b.saveSnapshot(StoredSnapshot(index: 2, term: 1, data: [9]), discardingLog: false)
      try await b.close()

      log = makeLog(directory)
      let a = log.storage(for: 1, entry: TestEntry.self)
      _ = try await a.recover()
      log.core.snapshotRemovalFaults.failNext(1, with: EIO)
      await #expect(throws: StorageError.self) { try await log.forget(group: 2) }
      b = log.storage(for: 2, entry: TestEntry.self)
      // Before the fix the group recovered here from the forgotten replica's snapshot at 2.
      await #expect(throws: StorageError.self) { try await b.recover() }
      try? await a.close()
      try? await b.close()

      log = makeLog(directory)
      b = log.storage(for: 2, entry: TestEntry.self)
      let fresh = try await b.recover()
      #expect(fresh.snapshot == nil && fresh.entries.isEmpty && fresh.hardState == nil)
      try await b.close()
    }
  }

  /// A write too large for one group record fails alone with `recordTooLarge`: nothing of it is written, the
  /// log is not poisoned, and both groups write on.
  @Test func aWriteTooLargeForAGroupRecordFailsAlone() async throws {
    try await withTemporaryDirectory { directory in
      var log = makeLog(directory, segmentBytes: 1 << 20)
      let (a, b) = try await openTwo(log)
      log.core.writeChunkLimit.store(4096, ordering: .relaxed)
      await #expect {
        try await a.write(StorageWrite(entries: bigEntries(1...100)))
      } throws: { error in
        guard case .recordTooLarge? = error as? StorageError else { return false }
        return true
      }
      try await a.write(StorageWrite(hardState: hardState("a"), entries: bigEntries(1...2)))
      try await b.write(StorageWrite(entries: entries(1...3)))
      try await a.close()
      try await b.close()

      log = makeLog(directory, segmentBytes: 1 << 20)
      let reopenedA = log.storage(for: 1, entry: TestEntry.self)
      let reopenedB = log.storage(for: 2, entry: TestEntry.self)
      let stateA = try await reopenedA.recover()
      #expect(stateA.entries == bigEntries(1...2))
      #expect(stateA.hardState == hardState("a"))
      #expect(try await reopenedB.recover().entries == entries(1...3))
      try await reopenedA.close()
      try await reopenedB.close()
    }
  }

  /// A compaction that frees no segment makes no sync of its own: groups asked to release their entries at once
  /// would otherwise each hold every group's writes behind an `fdatasync`. The compaction points are synced
  /// once, before the segments a compaction frees are deleted, and survive a restart.
  @Test func compactionSyncsOnlyBeforeDeletingSegments() async throws {
    try await withTemporaryDirectory { directory in
      var log = makeLog(directory)
      var (a, b) = try await openTwo(log)
      try await b.write(StorageWrite(entries: entries(1...3)))  // B's entries keep the first segment.
      for start in stride(from: UInt64(1), through: 97, by: 4) {  // Leaves room in the last segment (below).
        try await a.write(StorageWrite(entries: bigEntries(start...(start + 3))))
      }
      try await a.saveSnapshot(StoredSnapshot(index: 100, term: 1, data: [1]), discardingLog: false)
      try await b.saveSnapshot(StoredSnapshot(index: 3, term: 1, data: [2]), discardingLog: false)
      let segments = try await log.segmentSequences()
      #expect(segments.count > 2)
      // The compaction records must fit in the last segment, or the rotation they cause syncs.
      let lastSegment = try #require(try segmentFiles(directory).last)
      #expect(try readFile(lastSegment).count < 4096 - 256, "the writes leave room in the last segment")
      let before = try await log.syncCount()
      try await a.compact(through: 100)
      #expect(try await log.segmentSequences() == segments, "B still keeps the first segment")
      #expect(try await log.syncCount() == before, "a compaction that frees nothing does not sync")
      try await b.compact(through: 3)
      #expect(try await log.segmentSequences() == [segments.last!])
      #expect(try await log.syncCount() == before + 1, "one sync before the deletions")
      try await a.close()
      try await b.close()

      log = makeLog(directory)
      a = log.storage(for: 1, entry: TestEntry.self)
      b = log.storage(for: 2, entry: TestEntry.self)
      #expect(try await a.recover().entries.isEmpty)
      #expect(try await b.recover().entries.isEmpty)
      await #expect(throws: StorageError.self) { try await a.write(StorageWrite(entries: entries(100...100))) }
      try await a.write(StorageWrite(entries: entries(101...101)))
      try await b.write(StorageWrite(entries: entries(4...4)))
      try await a.close()
      try await b.close()
    }
  }

  /// A group whose only records are in segments written before this run: when it recovers they are dead (its
  /// entries compacted), so they go, and its hard state and compaction point must not go with them.
  @Test func aGroupsStateOutlivesTheSegmentsItWasWrittenIn() async throws {
    try await withTemporaryDirectory { directory in
      var log = makeLog(directory)
      var (a, b) = try await openTwo(log)
      try await b.write(StorageWrite(hardState: hardState("b"), entries: entries(1...3)))
      try await b.saveSnapshot(StoredSnapshot(index: 3, term: 1, data: [3]), discardingLog: false)
      try await b.compact(through: 3)
      try await a.close()
      try await b.close()

      log = makeLog(directory)
      a = log.storage(for: 1, entry: TestEntry.self)
      _ = try await a.recover()
      for start in stride(from: UInt64(1), through: 96, by: 5) {
        try await a.write(StorageWrite(entries: bigEntries(start...(start + 4))))
      }
      try await a.saveSnapshot(StoredSnapshot(index: 100, term: 1, data: [1]), discardingLog: false)
      try await a.compact(through: 100)
      #expect(try await log.pinningGroups() == [2])
      try await a.close()

      log = makeLog(directory)
      a = log.storage(for: 1, entry: TestEntry.self)
      b = log.storage(for: 2, entry: TestEntry.self)
      _ = try await a.recover()
      #expect(try await b.recover().hardState == hardState("b"))
      #expect(try await log.segmentSequences().count == 1)
      try await a.close()
      try await b.close()

      log = makeLog(directory)
      b = log.storage(for: 2, entry: TestEntry.self)
      let state = try await b.recover()
      #expect(state.hardState == hardState("b"))
      #expect(state.snapshot?.index == 3)
      await #expect(throws: StorageError.self) { try await b.write(StorageWrite(entries: entries(3...3))) }
      try await b.write(StorageWrite(entries: entries(4...4)))
      try await b.close()
    }
  }

  /// With many groups a checkpoint can outgrow a segment: a segment holding nothing past its checkpoint must
  /// not be rotated away again, or every write would start a new segment.
  @Test func aCheckpointLargerThanASegmentDoesNotRotateEveryWrite() async throws {
    try await withTemporaryDirectory { directory in
      let log = makeLog(directory)
      let stores = (UInt64(1)...150).map { log.storage(for: $0, entry: TestEntry.self) }
      for store in stores {
        _ = try await store.recover()
        try await store.write(StorageWrite(hardState: [UInt8](repeating: 7, count: 40)))
      }
      let before = try await log.segmentSequences().last!
      for index in UInt64(1)...20 { try await stores[0].write(StorageWrite(entries: entries(index...index))) }
      #expect(try await log.segmentSequences().last! - before <= 1)
      for store in stores { try await store.close() }
      let state = try await makeLog(directory).storage(for: 1, entry: TestEntry.self).recover()
      #expect(state.entries == entries(1...20))
    }
  }

  @Test func aLeadersSnapshotInOneGroupLeavesTheOthersAlone() async throws {
    try await withTemporaryDirectory { directory in
      var log = makeLog(directory)
      var (a, b) = try await openTwo(log)
      for round in UInt64(0)..<20 {
        try await a.write(
          StorageWrite(hardState: hardState("a \(round)"), entries: bigEntries((round + 1)...(round + 1))))
        try await b.write(
          StorageWrite(hardState: hardState("b \(round)"), entries: bigEntries((round + 1)...(round + 1))))
      }
      try await b.saveSnapshot(StoredSnapshot(index: 50, term: 3, data: [5]), discardingLog: true)
      try await b.write(StorageWrite(entries: entries(51...53, term: 3)))
      try await a.write(StorageWrite(entries: bigEntries(21...21)))
      try await a.close()
      try await b.close()

      log = makeLog(directory)
      a = log.storage(for: 1, entry: TestEntry.self)
      b = log.storage(for: 2, entry: TestEntry.self)
      let stateA = try await a.recover()
      #expect(stateA.entries == bigEntries(1...21))
      #expect(stateA.hardState == hardState("a 19"))
      let stateB = try await b.recover()
      #expect(stateB.snapshot?.index == 50)
      #expect(stateB.entries == entries(51...53, term: 3))
      #expect(stateB.hardState == hardState("b 19"))
      // A's entries hold the old segments; once A compacts they go, B's discarded entries with them.
      try await a.saveSnapshot(StoredSnapshot(index: 21, term: 1, data: [1]), discardingLog: false)
      try await a.compact(through: 21)
      #expect(try await log.pinningGroups() == [])
      #expect(try await log.segmentSequences().count == 1)
      try await a.close()
      try await b.close()
    }
  }

  /// A leader's snapshot is written off the log's queue: while one group's install is still writing its body
  /// (held here), another group's write is appended, synced and answered.
  @Test func aLeadersSnapshotBeingWrittenHoldsUpNoOtherGroup() async throws {
    try await withTemporaryDirectory { directory in
      var log = makeLog(directory)
      var (a, b) = try await openTwo(log)
      try await a.write(StorageWrite(hardState: hardState("a"), entries: bigEntries(1...3)))
      try await b.write(StorageWrite(hardState: hardState("b"), entries: bigEntries(1...3)))
      let gate = Gate()
      log.core.snapshotBodyHook.withLock { $0 = { gate.pass() } }
      let data = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
      let install = Task { [b] in
        try await b.saveSnapshot(StoredSnapshot(index: 50, term: 3, metadata: [9, 9], data: data), discardingLog: true)
      }
      try await waitUntil("the snapshot's body is being written") { gate.entered.load(ordering: .acquiring) }
      let written = try await withThrowingTaskGroup(of: Bool.self) { tasks in
        tasks.addTask { [a] in
          try await a.write(StorageWrite(entries: bigEntries(4...4)))
          return true
        }
        tasks.addTask {
          try await Task.sleep(for: .seconds(60))
          return false
        }
        let first = try await tasks.next() ?? false
        // Lets the snapshot go on, and with it (if it held the writer) the write, so that the group can end.
        gate.open()
        tasks.cancelAll()
        return first
      }
      #expect(written, "another group's write waited for a snapshot's body")
      try await install.value
      try await b.write(StorageWrite(entries: entries(51...52, term: 3)))
      try await a.close()
      try await b.close()

      log = makeLog(directory)
      a = log.storage(for: 1, entry: TestEntry.self)
      b = log.storage(for: 2, entry: TestEntry.self)
      #expect(try await a.recover().entries == bigEntries(1...4))
      let stateB = try await b.recover()
      #expect(stateB.snapshot == StoredSnapshot(index: 50, term: 3, metadata: [9, 9], data: data))
      #expect(stateB.entries == entries(51...52, term: 3))
      #expect(stateB.hardState == hardState("b"))
      try await a.close()
      try await b.close()
    }
  }

  /// A leader's snapshot is not queued behind the groups' own snapshots: while a group's snapshot that keeps its
  /// log is still being written (held here), another group's install and its own install are stored, and the
  /// held snapshot, superseded by its group's install, is refused as older once it is let go.
  @Test func aLeadersSnapshotIsNotQueuedBehindTheGroupsOwnSnapshots() async throws {
    try await withTemporaryDirectory { directory in
      var log = makeLog(directory)
      var (a, b) = try await openTwo(log)
      try await a.write(StorageWrite(hardState: hardState("a"), entries: bigEntries(1...3)))
      try await b.write(StorageWrite(hardState: hardState("b"), entries: bigEntries(1...3)))
      let gate = Gate()
      log.core.keptSnapshotHook.withLock { $0 = { gate.pass() } }
      let own = Task { [a] in
        try await a.saveSnapshot(StoredSnapshot(index: 3, term: 1, data: [3]), discardingLog: false)
      }
      try await waitUntil("the group's own snapshot is being written") { gate.entered.load(ordering: .acquiring) }
      let installed = try await withThrowingTaskGroup(of: Bool.self) { tasks in
        tasks.addTask { [a, b] in
          try await b.saveSnapshot(StoredSnapshot(index: 40, term: 2, data: [4, 0]), discardingLog: true)
          try await a.saveSnapshot(StoredSnapshot(index: 50, term: 3, data: [5, 0]), discardingLog: true)
          return true
        }
        tasks.addTask {
          try await Task.sleep(for: .seconds(60))
          return false
        }
        let first = try await tasks.next() ?? false
        // Lets the held snapshot go on, and with it (if they waited behind it) the installs, so the group can end.
        gate.open()
        tasks.cancelAll()
        return first
      }
      #expect(installed, "a leader's snapshot waited for a group's own snapshot to be written")
      await #expect(throws: StorageError.self) { try await own.value }
      try await a.close()
      try await b.close()

      log = makeLog(directory)
      a = log.storage(for: 1, entry: TestEntry.self)
      b = log.storage(for: 2, entry: TestEntry.self)
      #expect(try await a.recover().snapshot == StoredSnapshot(index: 50, term: 3, data: [5, 0]))
      #expect(try await b.recover().snapshot == StoredSnapshot(index: 40, term: 2, data: [4, 0]))
      try await a.close()
      try await b.close()
    }
  }

  /// A leader's snapshot whose file was written, with the crash before the segment that resets the group's log:
  /// the group's entries in the older segments stay discarded. `othersFirst`: another group's run moves the log
  /// past the named segment before the group recovers.
  @Test(arguments: [false, true])
  func aCrashBetweenALeadersSnapshotAndItsSegment(othersFirst: Bool) async throws {
    try await withTemporaryDirectory { directory in
      var log = makeLog(directory)
      var a = log.storage(for: 1, entry: TestEntry.self)
      var g = log.storage(for: 2, mode: .replace, entry: TestEntry.self)
      _ = try await a.recover()
      _ = try await g.recover()
      try await g.write(StorageWrite(hardState: hardState("g"), entries: entries(1...10)))
      try await a.write(StorageWrite(entries: bigEntries(1...3)))
      let next = try await log.segmentSequences().last! + 1
      try await a.close()
      try await g.close()
      // What saveSnapshot(discardingLog: true) writes before it rotates.
      try SnapshotFile.write(
        StoredSnapshot(index: 5, term: 2, data: [5]), discardBeforeSegment: next,
        directory: directory + "/snapshots/2", sync: true
      ) { $0 }

      if othersFirst {
        log = makeLog(directory)
        a = log.storage(for: 1, entry: TestEntry.self)
        _ = try await a.recover()
        // A's entries keep the older segments (and G's discarded entries in them) on disk.
        for start in stride(from: UInt64(4), through: 39, by: 5) {
          try await a.write(StorageWrite(entries: bigEntries(start...(start + 4))))
        }
        #expect(try await log.segmentSequences().last! >= next)
        try await a.close()
      }

      log = makeLog(directory)
      a = log.storage(for: 1, entry: TestEntry.self)
      g = log.storage(for: 2, mode: .replace, entry: TestEntry.self)
      _ = try await a.recover()
      var state = try await g.recover()
      #expect(state.snapshot?.index == 5)
      #expect(state.entries == [])
      #expect(state.hardState == hardState("g"))
      try await g.write(StorageWrite(entries: entries(6...7, term: 2)))
      // A later snapshot that keeps the log names no segment: the reset must be in the log.
      try await g.saveSnapshot(StoredSnapshot(index: 6, term: 2, data: [6]), discardingLog: false)
      try await a.close()
      try await g.close()

      log = makeLog(directory)
      g = log.storage(for: 2, mode: .replace, entry: TestEntry.self)
      state = try await g.recover()
      #expect(state.snapshot?.index == 6)
      #expect(state.entries == entries(7...7, term: 2))
      #expect(state.hardState == hardState("g"))
      try await g.close()
    }
  }

  /// After a leader's snapshot and a later one that keeps the log, a restart must not count the group's
  /// discarded entries as live: they would keep the old segments for as long as the group's log stays below them.
  @Test func discardedEntriesDoNotPinSegmentsAfterARestart() async throws {
    try await withTemporaryDirectory { directory in
      var log = makeLog(directory)
      var a = log.storage(for: 1, entry: TestEntry.self)
      var g = log.storage(for: 2, entry: TestEntry.self)
      _ = try await a.recover()
      _ = try await g.recover()
      for start in stride(from: UInt64(1), through: 91, by: 10) {
        try await g.write(StorageWrite(entries: bigEntries(start...(start + 9))))
        try await a.write(StorageWrite(entries: entries(start...(start + 9))))
      }
      try await g.saveSnapshot(StoredSnapshot(index: 50, term: 2, data: [5]), discardingLog: true)
      let reset = try await log.segmentSequences().last!
      try await g.write(StorageWrite(entries: entries(51...55, term: 2)))
      try await g.saveSnapshot(StoredSnapshot(index: 55, term: 2, data: [5]), discardingLog: false)
      try await g.compact(through: 55)
      try await a.close()
      try await g.close()

      log = makeLog(directory)
      a = log.storage(for: 1, entry: TestEntry.self)
      g = log.storage(for: 2, entry: TestEntry.self)
      _ = try await a.recover()
      #expect(try await g.recover().entries == [])
      try await a.saveSnapshot(StoredSnapshot(index: 100, term: 1, data: [1]), discardingLog: false)
      try await a.compact(through: 100)
      #expect(try await log.pinningGroups() == [])
      #expect(try await log.segmentSequences().first! >= reset)
      try await a.close()
      try await g.close()
    }
  }

  enum TailDamage: String, CaseIterable, Sendable {
    case truncated
    case flipped
  }

  @Test(arguments: TailDamage.allCases)
  func aTornTailIsCutAndReportedToEveryGroup(_ damage: TailDamage) async throws {
    try await withTemporaryDirectory { directory in
      var log = makeLog(directory)
      var stores = (UInt64(1)...3).map { log.storage(for: $0, entry: TestEntry.self) }
      for store in stores { _ = try await store.recover() }
      for store in stores {
        try await store.write(StorageWrite(hardState: hardState("h \(store.group)"), entries: entries(1...5)))
      }
      // Group 2's write is the log's last record.
      try await stores[1].write(StorageWrite(hardState: hardState("lost"), entries: entries(6...7)))
      for store in stores { try await store.close() }

      let path = try segmentFiles(directory).last!
      var bytes = withoutCloseMarker(try readFile(path))
      let (starts, end) = recordOffsets(bytes)
      #expect(end == bytes.count)
      let last = starts.last!
      switch damage {
      case .truncated: bytes.removeLast((end - last) / 2)
      case .flipped: bytes[end - 2] ^= 0x40
      }
      try writeFile(path, bytes)

      log = makeLog(directory)
      stores = (UInt64(1)...3).map { log.storage(for: $0, entry: TestEntry.self) }
      for store in stores {
        let state = try await store.recover()
        #expect(state.report.truncatedTailBytes > 0 && state.report.truncatedTailBytes <= bytes.count - last)
        #expect(state.report.truncatedFile == path)
        #expect(state.report.truncatedOffset == last)
        #expect(state.entries == entries(1...5))
        #expect(state.hardState == hardState("h \(store.group)"))
      }
      // The log goes on after the cut.
      try await stores[1].write(StorageWrite(entries: entries(6...6, term: 2)))
      for store in stores { try await store.close() }
      log = makeLog(directory)
      let state = try await log.storage(for: 2, entry: TestEntry.self).recover()
      #expect(state.entries == entries(1...5) + entries(6...6, term: 2))
      #expect(state.report.truncatedTailBytes == 0)
    }
  }

  /// As in a group's own log: the last group to close ends the log with a sync marker, so a flipped bit in the
  /// last acknowledged group record is corruption, not a torn tail to cut.
  @Test func aFlippedBitInTheLastRecordBeforeACleanCloseIsCorruption() async throws {
    try await withTemporaryDirectory { directory in
      let log = makeLog(directory)
      let (a, b) = try await openTwo(log)
      try await a.write(StorageWrite(hardState: hardState("a"), entries: entries(1...3)))
      try await b.write(StorageWrite(hardState: hardState("b"), entries: entries(1...3)))
      try await a.close()
      try await b.close()
      try await expectFlippedBitInLastRecordIsCorruption(directory, at: 12, "the last group record")
    }
  }

  /// A forget with no group open ends the log too (it is opened for the forget and released after): a marker
  /// follows the forget record, so a flipped bit in it is corruption, not a torn tail whose cut would bring the
  /// forgotten group's records back.
  @Test func aFlippedBitInAForgetRecordWrittenWithNoGroupOpenIsCorruption() async throws {
    try await withTemporaryDirectory { directory in
      var log = makeLog(directory)
      let (a, b) = try await openTwo(log)
      try await a.write(StorageWrite(hardState: hardState("a"), entries: entries(1...3)))
      try await b.write(StorageWrite(hardState: hardState("b"), entries: entries(1...3)))
      try await a.close()
      try await b.close()
      log = makeLog(directory)
      #expect(try await log.forget(group: 2))
      try await expectFlippedBitInLastRecordIsCorruption(directory, at: 9, "the forget record")
    }
  }

  /// Flips a bit `byte` bytes into the last record of the newest segment (which a sync marker must follow), and
  /// expects recovering group 2 to report that record as corrupt rather than cut it as a torn tail.
  private func expectFlippedBitInLastRecordIsCorruption(
    _ directory: String, at byte: Int, _ what: String, sourceLocation: SourceLocation = #_sourceLocation
  ) async throws {
    let path = try #require(try segmentFiles(directory).last, sourceLocation: sourceLocation)
    var bytes = try readFile(path)
    let last = try #require(recordOffsets(bytes).starts.last, sourceLocation: sourceLocation)
    #expect(
      recordOffsets(bytes, markers: true).starts.last != last, "a marker follows \(what)",
      sourceLocation: sourceLocation)
    bytes[last + byte] ^= 0x10
    try writeFile(path, bytes)
    let store = makeLog(directory).storage(for: 2, entry: TestEntry.self)
    let error = await #expect(throws: StorageError.self, sourceLocation: sourceLocation) {
      _ = try await store.recover()
    }
    guard case .corruptRecord(let file, let offset, _) = error else {
      Issue.record("expected corruptRecord, got \(String(describing: error))", sourceLocation: sourceLocation)
      return
    }
    #expect(file == path && offset == last, sourceLocation: sourceLocation)
    try await store.close()
  }

  /// A segment's checkpoint that ends in the last bytes of a sector is followed by a filler, which is part of its
  /// header: a segment holding only the two holds no records, so a write too large for it is appended there
  /// rather than starting yet another segment (one made by a snapshot's reset).
  @Test func aFreshSegmentWhoseCheckpointNeedsAFillerTakesALargeWrite() async throws {
    try await withTemporaryDirectory { directory in
      let log = makeLog(directory)
      let store = log.storage(for: 1, entry: TestEntry.self)
      _ = try await store.recover()
      var next: UInt64 = 1
      var stateBytes = 100
      var checkpointEnd = 0
      var bytes: [UInt8] = []
      // The checkpoint grows with the group's hard state: adjust it until the checkpoint needs a filler.
      for _ in 0..<4 {
        try await store.write(
          StorageWrite(
            hardState: [UInt8](repeating: 7, count: stateBytes), entries: bigEntries(next...(next + 2))))
        next += 3
        try await store.saveSnapshot(StoredSnapshot(index: next - 1, term: 1, data: [1]), discardingLog: true)
        bytes = try readFile(try #require(try segmentFiles(directory).last))
        let last = try #require(recordOffsets(bytes, markers: true).starts.last)
        checkpointEnd = bytes[last + 8] == fillerType ? last : bytes.count
        if checkpointEnd % 512 > 503 { break }
        stateBytes += (507 - checkpointEnd % 512 + 512) % 512
      }
      try #require(checkpointEnd % 512 > 503, "the checkpoint needs a filler")
      #expect(bytes.count == checkpointEnd + 9, "the segment holds its checkpoint and a filler")
      let segments = try await log.segmentSequences()
      try await store.write(StorageWrite(entries: bigEntries(next...(next + 35))))
      #expect(try await log.segmentSequences() == segments)
      #expect(try readFile(try #require(try segmentFiles(directory).last)).count > 4096 - 512)
      try await store.close()
    }
  }

  /// A crash may keep any prefix of the last write: a group record cut anywhere is a torn tail (its own
  /// records inside it, whole or not, are not "valid records after the damage"), and the write is lost whole.
  @Test func aGroupRecordCutAtEveryByteIsLostWhole() async throws {
    try await withTemporaryDirectory { directory in
      let log = makeLog(directory, segmentBytes: 1 << 16)
      let (a, b) = try await openTwo(log)
      try await a.write(StorageWrite(hardState: hardState("a"), entries: entries(1...2)))
      try await b.write(StorageWrite(hardState: hardState("b1"), entries: entries(1...2)))
      try await b.write(StorageWrite(hardState: hardState("b2"), entries: entries(3...5, term: 2)))
      try await a.close()
      try await b.close()
      let path = try segmentFiles(directory).last!
      let pristine = withoutCloseMarker(try readFile(path))
      let (starts, end) = recordOffsets(pristine)
      for cut in (starts.last! + 1)..<end {
        try writeFile(path, Array(pristine[..<cut]))
        let reopened = makeLog(directory, segmentBytes: 1 << 16)
        let reopenedA = reopened.storage(for: 1, entry: TestEntry.self)
        let reopenedB = reopened.storage(for: 2, entry: TestEntry.self)
        let stateA = try await reopenedA.recover()
        let stateB = try await reopenedB.recover()
        #expect(stateA.entries == entries(1...2), "cut at \(cut)")
        #expect(stateB.entries == entries(1...2), "cut at \(cut)")
        #expect(stateB.hardState == hardState("b1"), "cut at \(cut)")
        #expect(stateB.report.truncatedOffset == starts.last!, "cut at \(cut)")
        try await reopenedA.close()
        try await reopenedB.close()
      }
    }
  }

  /// One append carrying a large write of group 1 and a small one of group 2 (group commit) loses a page of
  /// group 1's record and keeps group 2's: a torn write, since no sync marker follows the damage. Both writes
  /// are cut; what each group had synced before stays.
  @Test func anAppendOfTwoGroupsThatLostAPageIsATornWrite() async throws {
    try await withTemporaryDirectory { directory in
      var log = makeLog(directory, segmentBytes: 1 << 20)
      var (a, b) = try await openTwo(log)
      try await a.write(StorageWrite(hardState: hardState("a"), entries: entries(1...2)))
      try await b.write(StorageWrite(hardState: hardState("b"), entries: entries(1...2)))
      let path = try #require(try segmentFiles(directory).last)
      let syncedEnd = try readFile(path).count

      // Hold the log's queue and queue the two writes behind it, group 1's first: one append.
      let gate = Gate()
      let core = log.core
      let holder = Task { try await core.perform { () throws(StorageError) in gate.pass() } }
      try await waitUntil("the queue is held") { gate.entered.load(ordering: .acquiring) }
      let (heldA, heldB) = (a, b)
      let big = Task { try await heldA.write(StorageWrite(hardState: hardState("a2"), entries: pageEntries(3...14))) }
      try await waitUntil("group 1's write is queued") { core.queuedRequestCount == 1 }
      let small = Task { try await heldB.write(StorageWrite(hardState: hardState("b2"), entries: entries(3...3))) }
      try await waitUntil("group 2's write is queued") { core.queuedRequestCount == 2 }
      gate.open()
      try await big.value
      try await small.value
      try await holder.value
      try await a.close()
      try await b.close()

      var bytes = withoutCloseMarker(try readFile(path))
      let appended = recordOffsets(bytes).starts.filter { $0 >= syncedEnd }
      #expect(appended.count == 2, "one group record per write")
      let page = losePage(after: appended[0], in: &bytes)
      #expect(page + 4096 <= appended[1], "the lost page lies in group 1's record")
      try writeFile(path, bytes)

      log = makeLog(directory, segmentBytes: 1 << 20)
      (a, b) = (log.storage(for: 1, entry: TestEntry.self), log.storage(for: 2, entry: TestEntry.self))
      let stateA = try await a.recover()
      let stateB = try await b.recover()
      #expect(stateA.entries == entries(1...2))
      #expect(stateA.hardState == hardState("a"))
      #expect(stateB.entries == entries(1...2))
      #expect(stateB.hardState == hardState("b"))
      #expect(stateB.report.truncatedOffset == appended[0])
      try await a.close()
      try await b.close()
    }
  }

  /// A shared log looks for valid group records after damage; a sync marker after it says the damaged bytes
  /// had been synced even when the group records after it are damaged too, and makes it corruption.
  @Test func damageToSyncedRecordsIsCorruptionWhenTheRecordsAfterAreDamagedToo() async throws {
    try await withTemporaryDirectory { directory in
      let log = makeLog(directory, segmentBytes: 1 << 20)
      let (a, b) = try await openTwo(log)
      try await a.write(StorageWrite(hardState: hardState("a"), entries: pageEntries(1...12)))
      try await b.write(StorageWrite(hardState: hardState("b"), entries: entries(1...2)))
      try await a.close()
      try await b.close()
      let path = try #require(try segmentFiles(directory).last)
      var bytes = withoutCloseMarker(try readFile(path))
      let starts = recordOffsets(bytes).starts
      #expect(starts.count == 3, "the header, then one group record per write")
      let page = losePage(after: starts[1], in: &bytes)
      #expect(page + 4096 <= starts[2], "the lost page lies in group 1's record")
      bytes[starts[2] + 12] ^= 0x01

      try writeFile(path, bytes)
      let reopened = makeLog(directory, segmentBytes: 1 << 20)
      let error = await #expect(throws: StorageError.self) {
        _ = try await reopened.storage(for: 1, entry: TestEntry.self).recover()
      }
      guard case .corruptRecord(let file, let offset, let reason) = error else {
        Issue.record("expected corruptRecord, got \(String(describing: error))")
        return
      }
      #expect(file == path)
      #expect(offset == starts[1])
      #expect(reason.contains("says the damaged bytes had been synced"), "\(reason)")
    }
  }

  @Test(arguments: [false, true])
  func damageBeforeTheTailIsCorruption(inOlderSegment: Bool) async throws {
    try await withTemporaryDirectory { directory in
      let log = makeLog(directory)
      let (a, b) = try await openTwo(log)
      for start in stride(from: UInt64(1), through: 91, by: 10) {
        try await a.write(StorageWrite(entries: bigEntries(start...(start + 9))))
        try await b.write(StorageWrite(entries: entries(start...(start + 9))))
      }
      try await a.close()
      try await b.close()
      let files = try segmentFiles(directory)
      #expect(files.count >= 2)
      let path = inOlderSegment ? files[0] : files.last!
      var bytes = withoutCloseMarker(try readFile(path))
      let (starts, _) = recordOffsets(bytes)
      #expect(starts.count >= 3)
      bytes[starts[1] + 12] ^= 0x01  // Inside a record that valid records follow.
      try writeFile(path, bytes)

      let reopened = makeLog(directory)
      let error = await #expect(throws: StorageError.self) {
        _ = try await reopened.storage(for: 1, entry: TestEntry.self).recover()
      }
      guard case .corruptRecord(let file, let offset, _) = error else {
        Issue.record("expected corruptRecord, got \(String(describing: error))")
        return
      }
      #expect(file == path)
      #expect(offset == starts[1])
    }
  }

  @Test func aGroupWhoseEntriesDoNotDecodeFailsAlone() async throws {
    try await withTemporaryDirectory { directory in
      var log = makeLog(directory)
      let stores = (UInt64(1)...3).map { log.storage(for: $0, entry: TestEntry.self) }
      for store in stores { _ = try await store.recover() }
      for store in stores { try await store.write(StorageWrite(hardState: hardState("h"), entries: entries(1...4))) }
      for store in stores { try await store.close() }

      log = makeLog(directory)
      let one = log.storage(for: 1, entry: TestEntry.self)
      let two = log.storage(for: 2, entry: ShortEntry.self)
      let three = log.storage(for: 3, entry: TestEntry.self)
      #expect(try await one.recover().entries == entries(1...4))
      let error = await #expect(throws: StorageError.self) { _ = try await two.recover() }
      guard case .corruptRecord(let file, _, let reason) = error else {
        Issue.record("expected corruptRecord, got \(String(describing: error))")
        return
      }
      #expect(file == (try segmentFiles(directory)).last!)
      #expect(reason.contains("does not decode"))
      #expect(try await three.recover().entries == entries(1...4))
      try await one.write(StorageWrite(entries: entries(5...5)))
      // The failure changed nothing: the group recovers with the right entry type, beside the others.
      try await two.close()
      let twoAgain = log.storage(for: 2, entry: TestEntry.self)
      #expect(try await twoAgain.recover().entries == entries(1...4))
      try await twoAgain.close()
      try await one.close()
      try await three.close()
    }
  }

  /// As in a group's own log: a segment found empty or all zeros lost synced records (every group's), whether it
  /// is the last one or not.
  @Test(arguments: [false, true])
  func aSegmentWithoutAHeaderIsCorruption(_ lastSegment: Bool) async throws {
    try await withTemporaryDirectory { directory in
      var log = makeLog(directory)
      let (a, b) = try await openTwo(log)
      for start in stride(from: UInt64(1), through: 41, by: 10) {
        try await a.write(StorageWrite(hardState: hardState("a"), entries: bigEntries(start...(start + 9))))
        try await b.write(StorageWrite(hardState: hardState("b"), entries: bigEntries(start...(start + 9))))
      }
      try await a.close()
      try await b.close()
      let segments = try segmentFiles(directory)
      #expect(segments.count >= 3)
      let target = lastSegment ? segments[segments.count - 1] : segments[1]
      try writeFile(target, [UInt8](repeating: 0, count: try readFile(target).count))
      log = makeLog(directory)
      let store = log.storage(for: 1, entry: TestEntry.self)
      let error = await #expect(throws: StorageError.self) { _ = try await store.recover() }
      guard case .corruptRecord(let file, let offset, _) = error else {
        Issue.record("expected corruptRecord, got \(String(describing: error))")
        return
      }
      #expect(file == target && offset == 0)
      try await store.close()
      #expect(try segmentFiles(directory) == segments, "nothing removed")
    }
  }

  @Test func aGroupsOwnLogIsNotASharedLogNorTheOtherWayRound() async throws {
    try await withTemporaryDirectory { directory in
      let own = FileStorage<TestEntry>(
        directory: directory, segmentBytes: 4096, preallocation: .none, logger: .disabled)
      _ = try await own.recover()
      try await own.write(StorageWrite(entries: entries(1...3)))
      try await own.close()
      let shared = makeLog(directory).storage(for: 1, entry: TestEntry.self)
      let error = await #expect(throws: StorageError.self) { _ = try await shared.recover() }
      guard case .incompatible(_, let reason) = error else {
        Issue.record("expected incompatible, got \(String(describing: error))")
        return
      }
      #expect(reason == "a group's own log segment, not a shared log segment")
      try await shared.close()
    }
    try await withTemporaryDirectory { directory in
      let shared = makeLog(directory).storage(for: 1, entry: TestEntry.self)
      _ = try await shared.recover()
      try await shared.write(StorageWrite(entries: entries(1...3)))
      try await shared.close()
      let own = FileStorage<TestEntry>(
        directory: directory, segmentBytes: 4096, preallocation: .none, logger: .disabled)
      let error = await #expect(throws: StorageError.self) { _ = try await own.recover() }
      guard case .incompatible(_, let reason) = error else {
        Issue.record("expected incompatible, got \(String(describing: error))")
        return
      }
      #expect(reason == "a shared log's segment (SharedWriteAheadLog), not a group's own log segment")
      try await own.close()
    }
  }

  @Test("a group reopened in the other write mode is refused, as a FileStorage is; another group is not disturbed")
  func aGroupReopenedInTheOtherModeIsRefused() async throws {
    try await withTemporaryDirectory { directory in
      var log = makeLog(directory)
      let first = log.storage(for: 1, mode: .truncateSuffix, entry: TestEntry.self)
      let second = log.storage(for: 2, mode: .replace, entry: TestEntry.self)
      _ = try await first.recover()
      _ = try await second.recover()
      try await first.write(StorageWrite(entries: entries(1...3)))
      try await second.write(StorageWrite(entries: [TestEntry(5)]))
      try await first.close()
      try await second.close()

      log = makeLog(directory)
      let wrong = log.storage(for: 1, mode: .replace, entry: TestEntry.self)
      let error = await #expect(throws: StorageError.self) { _ = try await wrong.recover() }
      guard case .incompatible(_, let reason) = error else {
        Issue.record("expected incompatible, got \(String(describing: error))")
        return
      }
      #expect(reason.contains("truncateSuffix"), "\(reason)")
      let other = log.storage(for: 2, mode: .replace, entry: TestEntry.self)
      #expect(try await other.recover().entries == [TestEntry(5)])
      let right = log.storage(for: 1, mode: .truncateSuffix, entry: TestEntry.self)
      #expect(try await right.recover().entries == entries(1...3))
      try await other.close()
      try await right.close()
      try await wrong.close()
    }
  }

  @Test func closingGroupsOneByOne() async throws {
    try await withTemporaryDirectory { directory in
      let log = makeLog(directory)
      let (a, b) = try await openTwo(log)
      await #expect(throws: StorageError.self) { _ = try await a.recover() }
      await #expect(throws: StorageError.directoryLocked(path: directory)) {
        _ = try await makeLog(directory).storage(for: 3, entry: TestEntry.self).recover()
      }
      try await a.write(StorageWrite(entries: entries(1...2)))
      try await a.close()
      try await a.close()

      try await b.write(StorageWrite(hardState: hardState("b"), entries: entries(1...3)))
      try await b.saveSnapshot(StoredSnapshot(index: 2, term: 1, data: [2]), discardingLog: false)
      try await b.compact(through: 2)
      await #expect(throws: StorageError.closed) { try await a.write(StorageWrite(entries: entries(3...3))) }
      await #expect(throws: StorageError.closed) { try await a.compact(through: 1) }
      await #expect(throws: StorageError.closed) {
        try await a.saveSnapshot(StoredSnapshot(index: 2, term: 1, data: []), discardingLog: false)
      }
      await #expect(throws: StorageError.closed) {
        try await a.saveSnapshot(StoredSnapshot(index: 2, term: 1, data: []), discardingLog: true)
      }
      await #expect(throws: StorageError.closed) { _ = try await a.recover() }
      // A group closed while the log is open cannot recover again until every group has closed.
      await #expect(throws: StorageError.self) { _ = try await log.storage(for: 1, entry: TestEntry.self).recover() }
      try await b.close()

      // The last close released the directory: another log opens it while this one still exists.
      let second = makeLog(directory)
      let stateA = try await second.storage(for: 1, entry: TestEntry.self).recover()
      #expect(stateA.entries == entries(1...2))
      let stateB = try await second.storage(for: 2, entry: TestEntry.self).recover()
      #expect(stateB.entries == entries(3...3))
      #expect(stateB.hardState == hardState("b"))
      _ = log.directory
    }
  }

  @Test func aSecondStorageForAnOpenGroupCannotTouchIt() async throws {
    try await withTemporaryDirectory { directory in
      let log = makeLog(directory)
      let first = log.storage(for: 1, entry: TestEntry.self)
      let second = log.storage(for: 1, entry: TestEntry.self)
      _ = try await first.recover()
      await #expect(throws: StorageError.self) { _ = try await second.recover() }
      await #expect(throws: StorageError.self) { try await second.write(StorageWrite(entries: entries(1...1))) }
      try await second.close()
      try await first.write(StorageWrite(entries: entries(1...2)))
      try await first.close()
      #expect(try await makeLog(directory).storage(for: 1, entry: TestEntry.self).recover().entries == entries(1...2))
    }
  }

  /// A leader's snapshot whose directory sync fails after the rename poisons the log: the snapshot on disk names a
  /// segment not yet started, so a write the group appended to the old segment would be acknowledged and then
  /// discarded by the next recovery (as it was before the fix). The reopen finishes the install from the disk.
  @Test func anInstallWhoseDirectorySyncFailsAfterTheRenamePoisonsTheLog() async throws {
    try await withTemporaryDirectory { directory in
      let log = makeLog(directory)
      let (a, b) = try await openTwo(log)
      try await a.write(StorageWrite(hardState: hardState("a"), entries: entries(1...3)))
      try await b.write(StorageWrite(hardState: hardState("b"), entries: entries(1...2)))
      log.core.snapshotSyncFaults.failNext(1, with: EIO)
      let error = await #expect(throws: StorageError.self) {
        try await a.saveSnapshot(StoredSnapshot(index: 10, term: 2, data: [10]), discardingLog: true)
      }
      #expect(error?.isRetryable == false, "\(String(describing: error))")
      await #expect(throws: StorageError.self) { try await a.write(StorageWrite(entries: entries(4...5))) }
      await #expect(throws: StorageError.self) { try await b.write(StorageWrite(entries: entries(3...3))) }
      try? await a.close()
      try? await b.close()

      let reopened = makeLog(directory)
      let a2 = reopened.storage(for: 1, entry: TestEntry.self)
      let b2 = reopened.storage(for: 2, entry: TestEntry.self)
      let recoveredA = try await a2.recover()
      let recoveredB = try await b2.recover()
      #expect(recoveredA.snapshot?.index == 10)
      #expect(recoveredA.entries.isEmpty)
      #expect(recoveredA.hardState == hardState("a"))
      #expect(recoveredB.entries == entries(1...2))
      #expect(recoveredB.hardState == hardState("b"))
      try await a2.write(StorageWrite(entries: entries(11...12, term: 2)))
      try await a2.close()
      try await b2.close()

      let third = makeLog(directory)
      let a3 = third.storage(for: 1, entry: TestEntry.self)
      #expect(try await a3.recover().entries == entries(11...12, term: 2))
      try await a3.close()
    }
  }

  /// A write that needs a new segment when no descriptor is left fails alone, retryably; the log goes on.
  /// As in a group's own log: a compaction record that needs a new segment which cannot be opened writes
  /// nothing, and fails retryably without poisoning the log.
  /// A leader's snapshot prepares its new segment (and opens the directories) before the snapshot is renamed into
  /// place: a want of descriptors for any of them writes nothing and fails retryably, without poisoning the log.
  @Test(arguments: [0, 1])
  func anInstallThatFindsNoDescriptorIsRetryable(_ skipping: Int) async throws {
    try await withTemporaryDirectory { directory in
      let log = makeLog(directory)
      let (a, b) = try await openTwo(log)
      try await a.write(StorageWrite(hardState: hardState("a"), entries: entries(1...3)))
      log.core.openFaults.failNext(1000, skipping: skipping)
      let snapshot = StoredSnapshot(index: 10, term: 2, data: [10])
      let error = await #expect(throws: StorageError.self) { try await a.saveSnapshot(snapshot, discardingLog: true) }
      #expect(error?.isRetryable == true, "\(String(describing: error))")
      log.core.openFaults.failNext(0)
      #expect(try FileSystem.list(directory + "/snapshots/1").allSatisfy { !$0.hasSuffix(".snap") })
      try await b.write(StorageWrite(hardState: hardState("b"), entries: entries(1...2)))
      try await a.write(StorageWrite(entries: entries(4...4)))
      try await a.saveSnapshot(snapshot, discardingLog: true)
      try await a.write(StorageWrite(entries: entries(11...11, term: 2)))
      try await a.close()
      try await b.close()

      let reopened = makeLog(directory)
      let stateA = try await reopened.storage(for: 1, entry: TestEntry.self).recover()
      #expect(stateA.snapshot?.index == 10)
      #expect(stateA.entries == entries(11...11, term: 2))
      #expect(try await reopened.storage(for: 2, entry: TestEntry.self).recover().entries == entries(1...2))
    }
  }

  @Test func aCompactionThatFindsNoDescriptorIsRetryable() async throws {
    try await withTemporaryDirectory { directory in
      let log = makeLog(directory)
      let (a, b) = try await openTwo(log)
      var index: UInt64 = 0
      while index < 1000 {
        let room = 4096 - (FileSystem.size(of: try #require(try segmentFiles(directory).last)) ?? 0)
        if room < 40 { break }
        index += 1
        let payload = room >= 120 ? 40 : max(0, room - 45)
        try await a.write(StorageWrite(entries: [TestEntry(index, payload: [UInt8](repeating: 7, count: payload))]))
      }
      try await a.saveSnapshot(StoredSnapshot(index: index, term: 1, data: [1]), discardingLog: false)
      log.core.openFaults.failNext(1000)
      let error = await #expect(throws: StorageError.self) { try await a.compact(through: index) }
      #expect(error?.isRetryable == true, "\(String(describing: error))")
      log.core.openFaults.failNext(0)
      try await b.write(StorageWrite(hardState: hardState("b"), entries: entries(1...2)))
      try await a.compact(through: index)
      try await a.close()
      try await b.close()

      let reopened = makeLog(directory)
      #expect(try await reopened.storage(for: 1, entry: TestEntry.self).recover().snapshot?.index == index)
      #expect(try await reopened.storage(for: 2, entry: TestEntry.self).recover().entries == entries(1...2))
    }
  }

  @Test func runningOutOfDescriptorsForANewSegmentFailsOnlyTheWritesThatNeedIt() async throws {
    try await withTemporaryDirectory { directory in
      let log = makeLog(directory)
      let (a, b) = try await openTwo(log)
      let big = { (index: UInt64) in TestEntry(index, payload: [UInt8](repeating: 9, count: 3000)) }
      try await a.write(StorageWrite(entries: [big(1)]))
      log.core.openFaults.failNext(1000)
      let error = await #expect(throws: StorageError.self) { try await a.write(StorageWrite(entries: [big(2)])) }
      #expect(error?.isRetryable == true)
      try await b.write(StorageWrite(hardState: hardState("b"), entries: entries(1...2)))
      log.core.openFaults.failNext(0)
      try await a.write(StorageWrite(entries: [big(2)]))
      try await a.close()
      try await b.close()

      let reopened = makeLog(directory)
      #expect(try await reopened.storage(for: 1, entry: TestEntry.self).recover().entries == [big(1), big(2)])
      #expect(try await reopened.storage(for: 2, entry: TestEntry.self).recover().entries == entries(1...2))
    }
  }

  /// A leader's snapshot whose new segment cannot be created (an I/O error, not a want of descriptors) poisons the
  /// log: every group's calls fail until all are closed. The segment is prepared before the snapshot is renamed
  /// into place, so reopened, the group is as before the install (a failure after the rename is
  /// anInstallWhoseDirectorySyncFailsAfterTheRenamePoisonsTheLog).
  @Test func aFailedRotationPoisonsEveryGroupUntilReopened() async throws {
    try await withTemporaryDirectory { directory in
      var log = makeLog(directory)
      var a = log.storage(for: 1, entry: TestEntry.self)
      var g = log.storage(for: 2, entry: TestEntry.self)
      _ = try await a.recover()
      _ = try await g.recover()
      try await g.write(StorageWrite(hardState: hardState("g"), entries: entries(1...10)))
      try await a.write(StorageWrite(hardState: hardState("a"), entries: entries(1...3)))
      log.core.openFaults.failNext(1, with: EIO)
      await #expect(throws: StorageError.self) {
        try await g.saveSnapshot(StoredSnapshot(index: 5, term: 2, data: [5]), discardingLog: true)
      }
      log.core.openFaults.failNext(0)
      await #expect(throws: StorageError.self) { try await a.write(StorageWrite(entries: entries(4...4))) }
      await #expect(throws: StorageError.self) { try await a.compact(through: 1) }
      await #expect(throws: StorageError.self) { try await g.write(StorageWrite(entries: entries(6...6))) }
      // A group that was not open cannot join a poisoned log either.
      await #expect(throws: StorageError.self) { _ = try await log.storage(for: 3, entry: TestEntry.self).recover() }
      try await a.close()
      try await g.close()

      log = makeLog(directory)
      a = log.storage(for: 1, entry: TestEntry.self)
      g = log.storage(for: 2, entry: TestEntry.self)
      let stateA = try await a.recover()
      #expect(stateA.entries == entries(1...3))
      #expect(stateA.hardState == hardState("a"))
      let stateG = try await g.recover()
      #expect(stateG.snapshot == nil)
      #expect(stateG.entries == entries(1...10))
      #expect(stateG.hardState == hardState("g"))
      try await g.saveSnapshot(StoredSnapshot(index: 5, term: 2, data: [5]), discardingLog: true)
      try await g.write(StorageWrite(entries: entries(6...6, term: 2)))
      try await a.close()
      try await g.close()
    }
  }

  @Test func aWriteBeforeRecoveryNeitherOpensTheLogNorHoldsTheDirectory() async throws {
    try await withTemporaryDirectory { directory in
      let log = makeLog(directory)
      let early = log.storage(for: 1, entry: TestEntry.self)
      await #expect(throws: StorageError.self) { try await early.write(StorageWrite(entries: entries(1...1))) }
      await #expect(throws: StorageError.self) { try await early.compact(through: 1) }
      #expect(try await log.segmentSequences() == [])

      let other = makeLog(directory).storage(for: 1, entry: TestEntry.self)
      _ = try await other.recover()
      try await other.close()
      _ = log.directory
    }
  }

  @Test func aGroupThatFailedToRecoverReleasesTheDirectoryWhenClosed() async throws {
    try await withTemporaryDirectory { directory in
      let first = makeLog(directory).storage(for: 1, entry: TestEntry.self)
      _ = try await first.recover()
      try await first.write(StorageWrite(entries: entries(1...2)))
      try await first.close()

      let log = makeLog(directory)
      let wrongType = log.storage(for: 1, entry: ShortEntry.self)
      await #expect(throws: StorageError.self) { _ = try await wrongType.recover() }
      try await wrongType.close()

      let other = makeLog(directory).storage(for: 1, entry: TestEntry.self)
      #expect(try await other.recover().entries == entries(1...2))
      try await other.close()
      _ = log.directory
    }
  }
}
