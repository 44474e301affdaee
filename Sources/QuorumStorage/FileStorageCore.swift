import Dispatch
import Glibc
import QuorumCore
import Synchronization

/// The engine behind ``FileStorage``: owns the files and does every blocking call on one serial queue.
///
/// Requests are queued in ``inbox`` and drained by one block on ``queue``; consecutive writes found in the
/// inbox are appended with one `pwrite` and made durable with one `fdatasync` (group commit).
///
/// Safety of `@unchecked Sendable`: every stored `var` is read and written only by code running on ``queue`` (the
/// drain loop, the batch-sync timer whose source targets ``queue``, and `deinit`, which runs when nothing
/// else holds a reference). The `let`s are immutable, and ``inbox`` and ``closedFlag`` are synchronized
/// types.
final class FileStorageCore<Entry: StorableEntry>: @unchecked Sendable {
  // MARK: Configuration

  let directory: String
  let walDirectory: String
  let snapshotDirectory: String
  let mode: LogWriteMode
  let policy: FsyncPolicy
  let segmentBytes: Int
  let maxRecordBytes: Int
  let preallocation: WALPreallocation
  let logger: QuorumLogger
  private let queue = DispatchQueue(label: "quorum.storage.io", qos: .userInitiated)
  /// Where snapshot files are written, so that log writes on ``queue`` go on meanwhile. Internal so that
  /// tests can hold it.
  let snapshotQueue = DispatchQueue(label: "quorum.storage.snapshot", qos: .utility)
  /// Numbers the temporary files of snapshots written on ``snapshotQueue``.
  private let snapshotSequence = Atomic<UInt64>(0)
  /// Makes those names unique to this instance, so a late clean-up by a closed instance can never remove a
  /// file of the next instance opened on the same directory.
  private let instanceToken = UInt32.random(in: 0...UInt32.max)
  private let spare: SpareSegment?
  /// Failures a test injects into the opens of log segments.
  let openFaults = OpenFaults()
  /// Failures a test injects into the directory syncs that follow a snapshot's rename into place.
  let snapshotSyncFaults = OpenFaults()

  // MARK: Request queue

  private let inbox = WALInbox<WALFormat.EncodedWrite>()
  /// Set once ``close()`` has run, so calls can fail fast without queueing.
  let closedFlag = Atomic<Bool>(false)

  /// Stores a snapshot that keeps the log (see ``FileStorage/saveSnapshot(_:discardingLog:)``) in two
  /// stages: the file is written and synced on ``snapshotQueue`` while log writes carry on, then renamed
  /// into place on ``queue``, in order with every other request.
  func saveSnapshotKeepingLog(_ snapshot: StoredSnapshot) async throws {
    if closedFlag.load(ordering: .acquiring) { throw StorageError.closed }
    let directory = snapshotDirectory
    let sync = policy != .never
    let suffix = ".\(instanceToken).\(snapshotSequence.add(1, ordering: .relaxed).newValue).tmp"
    let temporary: String = try await withCheckedThrowingContinuation { continuation in
      snapshotQueue.async { [self] in
        continuation.resume(
          with: Result { () throws(StorageError) -> String in
            // close() waits for this queue after setting the flag: a write that starts later must not.
            if closedFlag.load(ordering: .acquiring) { throw .closed }
            return try SnapshotFile.writeTemporary(
              snapshot, discardBeforeSegment: 0, directory: directory, sync: sync, suffix: suffix)
          })
      }
    }
    try await perform { () throws(StorageError) in
      do throws(StorageError) {
        try self.publishSnapshot(temporary, index: snapshot.index)
      } catch {
        try? FileSystem.remove(temporary)
        throw error
      }
    }
  }

  // MARK: State confined to `queue`

  private enum Phase {
    case initial
    case open
    case failed(StorageError)
    case closed
  }

  private struct Segment {
    var sequence: UInt64
    /// The highest entry position written in the segment, or 0.
    var maxEntryIndex: UInt64
  }

  private var phase = Phase.initial
  private var lockFile: PosixFile?
  private var position: LogPosition
  private var hardState: [UInt8]?
  private var segments: [Segment] = []
  private var active: WALActiveSegment?
  private var dirty = false
  private var timer: (any DispatchSourceTimer)?
  /// `fdatasync` calls on the log made so far (for tests and benchmarks).
  private(set) var syncCount = 0
  /// `fsync` calls on directories made so far by this core (for tests).
  private(set) var directorySyncCount = 0

  private func syncDirectory(_ path: String) throws(StorageError) {
    try FileSystem.syncDirectory(path)
    directorySyncCount += 1
  }

  init(
    directory: String, mode: LogWriteMode, policy: FsyncPolicy, segmentBytes: Int, maxRecordBytes: Int,
    preallocation: WALPreallocation, logger: QuorumLogger
  ) {
    self.directory = directory
    walDirectory = directory + "/wal"
    snapshotDirectory = directory + "/snapshots"
    self.mode = mode
    self.policy = policy
    self.segmentBytes = segmentBytes
    self.maxRecordBytes = maxRecordBytes
    self.preallocation = preallocation
    self.logger = logger
    position = LogPosition(mode: mode)
    spare =
      preallocation == .zeroFilled
      ? SpareSegment(directory: walDirectory, bytes: segmentBytes, sync: policy != .never, logger: logger) : nil
  }

  deinit {
    timer?.cancel()
    active?.file.close()
    lockFile?.close()
    spare?.cancel()
  }

  /// Whether structural changes (new segments, snapshots, compaction) are synced before they are relied on.
  private var syncsStructure: Bool { policy != .never }

  // MARK: Submitting requests

  /// Queues an encoded write; returns when it is durable under the fsync policy. `whenDurable` runs on the I/O
  /// queue as soon as it is, before the caller resumes.
  func write(_ write: WALFormat.EncodedWrite, whenDurable: (@Sendable () -> Void)? = nil) async throws {
    if closedFlag.load(ordering: .acquiring) { throw StorageError.closed }
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
      enqueue(.write(write, WALWaiter(continuation: continuation, then: whenDurable)))
    }
  }

  /// Runs `body` on the I/O queue, in order with every other request, and returns its result.
  func perform<T: Sendable>(_ body: @escaping @Sendable () throws(StorageError) -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
      enqueue(WALInbox.task(body, resuming: continuation))
    }
  }

  private func enqueue(_ request: WALInbox<WALFormat.EncodedWrite>.Request) {
    if inbox.enqueue(request) { queue.async { self.inbox.drain(self.appendWrites) } }
  }

  // MARK: Lifecycle (on `queue`)

  private func ensureOpen() throws(StorageError) {
    switch phase {
    case .open: return
    case .closed: throw .closed
    case .failed(let error): throw error
    case .initial: _ = try recover()
    }
  }

  /// Opens the directory (locking it) and replays everything; a second call re-reads the files.
  func recover() throws(StorageError) -> RecoveredState<Entry> {
    switch phase {
    case .closed: throw .closed
    case .failed(let error): throw error
    case .open: releaseFiles()
    case .initial: break
    }
    do {
      let state = try openAndReplay()
      phase = .open
      return state
    } catch {
      releaseFiles()
      lockFile?.close()
      lockFile = nil
      phase = .initial
      throw error
    }
  }

  /// Syncs, releases the files and the directory lock. Later calls throw ``StorageError/closed``.
  func close() throws(StorageError) {
    if case .closed = phase { return }
    closedFlag.store(true, ordering: .releasing)
    // A snapshot file still being written finishes before the directory lock is released.
    snapshotQueue.sync {}
    var failure: StorageError?
    if case .open = phase, syncsStructure, active != nil {
      do throws(StorageError) {
        try syncActive()
        // A marker after the last append: damage found in it later is corruption, not a torn write.
        if try active?.appendSyncMarker() == true { try syncActive() }
      } catch {
        failure = error
      }
    }
    releaseFiles()
    spare?.cancel()
    lockFile?.close()
    lockFile = nil
    phase = .closed
    if let failure { throw failure }
  }

  private func releaseFiles() {
    timer?.cancel()
    timer = nil
    active?.file.close()
    active = nil
    segments = []
    dirty = false
  }

  /// After a failed write or sync nothing in the page cache can be trusted: refuse everything until the
  /// storage is reopened. Returns the error the storage now reports, which callers throw: a retryable one
  /// (descriptors ran out) becomes a non-retryable ``StorageError/io(operation:path:errno:)``, since only
  /// reopening can help.
  @discardableResult
  private func poison(_ error: StorageError) -> StorageError {
    let failure = error.poisoning
    logger.error("storage failed; it must be reopened", ["error": "\(failure)", "directory": directory])
    phase = .failed(failure)
    return failure
  }

  // MARK: Writing (on `queue`)

  private func appendWrites(_ group: [(WALFormat.EncodedWrite, WALWaiter)]) {
    var outcomes = [StorageError?](repeating: nil, count: group.count)
    do throws(StorageError) {
      try ensureOpen()
    } catch {
      for (_, waiter) in group { waiter.fail(error) }
      return
    }
    var pending: [[UInt8]] = []
    var pendingBytes = 0
    var accepted: [Int] = []
    var mustSync = false
    do throws(StorageError) {
      for (slot, (write, _)) in group.enumerated() {
        var resetPoint: UInt64?
        if let range = write.entryRange {
          do throws(StorageError) {
            resetPoint = try position.check(first: range.lowerBound, last: range.upperBound)
          } catch {
            outcomes[slot] = error
            continue
          }
        }
        var bytes = write.bytes
        if let resetPoint {
          bytes.insert(contentsOf: WALFormat.resetRecord(resetPoint), at: 0)  // Before the entries it makes room for.
        }
        if needsRotation(adding: pendingBytes + bytes.count, pendingBytes: pendingBytes) {
          try flush(&pending, &pendingBytes)
          try rotate()
        }
        pending.append(bytes)
        pendingBytes += bytes.count
        if let resetPoint { position.didReset(to: resetPoint) }
        if let range = write.entryRange {
          if mode == .truncateSuffix && range.lowerBound <= position.end {
            // The entries from the write's first position on are superseded: no segment needs to be kept for
            // them any more (replay drops them again when it meets this write).
            Self.clampMaxima(&segments, below: range.lowerBound)
          }
          position.didAppend(first: range.lowerBound, last: range.upperBound)
          segments[segments.count - 1].maxEntryIndex = max(segments[segments.count - 1].maxEntryIndex, range.upperBound)
        }
        if let newHardState = write.hardState { hardState = newHardState }
        mustSync = mustSync || write.mustSync
        accepted.append(slot)
      }
      try flush(&pending, &pendingBytes)
      if !accepted.isEmpty { try syncAfterWrite(mustSync: mustSync) }
    } catch .descriptorsExhausted(let operation, let path, let code) where pending.isEmpty {
      // A new segment could not be opened (no descriptor left). The writes accepted so far were flushed and
      // synced into the old segment, which stays active; the rest were not started. Nothing is damaged: they
      // fail with an error that says so, and may be retried.
      let error = StorageError.descriptorsExhausted(operation: operation, path: path, errno: code)
      logger.warning("out of file descriptors; writes may be retried", ["error": "\(error)"])
      let done = Set(accepted)
      for slot in group.indices where outcomes[slot] == nil && !done.contains(slot) { outcomes[slot] = error }
    } catch {
      // Nothing in this group is known to be durable, including the writes already appended.
      let failure = poison(error)
      for slot in group.indices where outcomes[slot] == nil { outcomes[slot] = failure }
    }
    for (slot, (_, waiter)) in group.enumerated() {
      if let error = outcomes[slot] {
        waiter.fail(error)
      } else {
        waiter.succeed()
      }
    }
  }

  /// Lowers every segment's highest live entry position to below `first`, where a truncating write replaces the
  /// entries from `first` on.
  private static func clampMaxima(_ segments: inout [Segment], below first: UInt64) {
    for index in segments.indices where segments[index].maxEntryIndex >= first {
      segments[index].maxEntryIndex = first - 1
    }
  }

  /// Whether `bytes` more do not fit in the active segment, which holds more than its header.
  private func needsRotation(adding bytes: Int, pendingBytes: Int) -> Bool {
    active?.needsRotation(adding: bytes, pendingBytes: pendingBytes, segmentBytes: segmentBytes) ?? false
  }

  /// Appends the pending chunks to the active segment with one `pwrite`.
  private func flush(_ pending: inout [[UInt8]], _ pendingBytes: inout Int) throws(StorageError) {
    try active?.flush(&pending, &pendingBytes)
  }

  /// Appends records (not entries) to the active segment, rotating first if they do not fit.
  private func appendRecords(_ bytes: [UInt8]) throws(StorageError) {
    if needsRotation(adding: bytes.count, pendingBytes: 0) { try rotate() }
    var pending = [bytes]
    var pendingBytes = bytes.count
    try flush(&pending, &pendingBytes)
  }

  private func syncAfterWrite(mustSync: Bool) throws(StorageError) {
    switch policy {
    case .always: try syncActive()
    case .batch: if mustSync { try syncActive() } else { dirty = true }
    case .never: break
    }
  }

  private func syncActive() throws(StorageError) {
    guard let file = active?.file else { return }
    try file.dataSync()
    active?.didSync()
    syncCount += 1
    dirty = false
  }

  private func batchSync() {
    guard case .open = phase, dirty else { return }
    do throws(StorageError) {
      try syncActive()
    } catch {
      poison(error)
    }
  }

  // MARK: Segments (on `queue`)

  private func segmentPath(_ sequence: UInt64) -> String { WALFiles.segmentPath(walDirectory, sequence) }

  /// The records every segment starts with: its header, then the state that deleting older segments must
  /// not lose (hard state, compaction point), then `reset` if given.
  private func checkpoint(sequence: UInt64, reset: UInt64?) -> (bytes: [UInt8], headerEnd: Int) {
    var writer = WireWriter(reservingCapacity: 64 + (hardState?.count ?? 0))
    WALFormat.appendSegmentHeader(sequence: sequence, mode: mode, to: &writer)
    let headerEnd = writer.count
    if let hardState { WALFormat.appendRecord(.hardState, payload: hardState, to: &writer) }
    if position.floor > 0 { WALFormat.appendIndexRecord(.floor, position.floor, to: &writer) }
    if let reset { WALFormat.appendIndexRecord(.reset, reset, to: &writer) }
    return (writer.bytes, headerEnd)
  }

  /// Prepares segment `sequence` (temporary name, preallocated, checkpoint written and synced, directory opened):
  /// see ``WALPreparedSegment``.
  private func prepareSegment(_ sequence: UInt64, reset: UInt64?) throws(StorageError) -> WALPreparedSegment {
    let (bytes, headerEnd) = checkpoint(sequence: sequence, reset: reset)
    return try WALFiles.prepareSegment(
      segmentPath(sequence), checkpoint: bytes, headerEnd: headerEnd, spare: spare, preallocation: preallocation,
      segmentBytes: segmentBytes, faults: openFaults, sync: syncsStructure, onDataSync: { syncCount += 1 })
  }

  /// Creates segment `sequence` atomically (prepared, renamed, directory synced) and returns it open for appending.
  private func createSegment(_ sequence: UInt64, reset: UInt64?) throws(StorageError) -> WALActiveSegment {
    try prepareSegment(sequence, reset: reset).commit { directorySyncCount += 1 }
  }

  /// Finishes the active segment (synced unless the policy is `.never`) and starts the next one.
  private func rotate(reset: UInt64? = nil) throws(StorageError) {
    try finishRotation(try prepareRotation(reset: reset))
  }

  /// The first half of ``rotate(reset:)``: syncs the active segment and prepares the next. Running out of
  /// descriptors here changes nothing on disk (retryable).
  private func prepareRotation(reset: UInt64?) throws(StorageError) -> WALPreparedSegment {
    guard active != nil, let last = segments.last else {
      preconditionFailure("rotate() without an active segment; phase \(phase)")
    }
    if syncsStructure { try syncActive() }
    return try prepareSegment(last.sequence + 1, reset: reset)
  }

  /// The second half of ``rotate(reset:)``: puts the prepared segment in place and makes it the active one. A
  /// failure here is not retryable (``WALPreparedSegment/commit(onDirectorySync:)``).
  private func finishRotation(_ next: WALPreparedSegment) throws(StorageError) {
    guard let old = active, let last = segments.last else {
      preconditionFailure("rotate() without an active segment; phase \(phase)")
    }
    let segment = try next.commit { directorySyncCount += 1 }
    old.file.close()
    active = segment
    segments.append(Segment(sequence: last.sequence + 1, maxEntryIndex: 0))
    dirty = false
  }

  /// Deletes the oldest segments, except the active one, while `deletable` holds for them.
  private func deleteSegments(while deletable: (Segment) -> Bool) throws(StorageError) {
    var deleted = 0
    while segments.count > 1, deletable(segments[0]) {
      try FileSystem.remove(segmentPath(segments[0].sequence))
      segments.removeFirst()
      deleted += 1
    }
    if deleted > 0 && syncsStructure { try syncDirectory(walDirectory) }
  }

  // MARK: Snapshots and compaction (on `queue`)

  /// Stores `snapshot` (see ``FileStorage/saveSnapshot(_:discardingLog:)``).
  func saveSnapshot(_ snapshot: StoredSnapshot, discardingLog: Bool) throws(StorageError) {
    try ensureOpen()
    if snapshot.index < position.snapshotIndex {
      throw .invalidWrite(
        "snapshot at \(snapshot.index) is older than the stored snapshot at \(position.snapshotIndex)")
    }
    guard let last = segments.last else { preconditionFailure("open storage without segments; phase \(phase)") }
    // The snapshot names the segment its log continues in, so a crash between writing it and writing that
    // segment still discards the old entries (recovery finishes the job).
    let discardBefore = discardingLog ? last.sequence + 1 : 0
    // A failure here touched only the temporary file: the node may refuse this snapshot and go on.
    let temporary = try SnapshotFile.writeTemporary(
      snapshot, discardBeforeSegment: discardBefore, directory: snapshotDirectory, sync: syncsStructure,
      suffix: ".tmp")
    // Everything that needs a file descriptor comes before the snapshot's rename (the commit point): the next
    // segment is prepared, and the directories opened, while nothing has changed, so running out of descriptors
    // leaves the log as it was and may be retried. A failed sync of the active segment poisons, as always.
    var next: WALPreparedSegment?
    do throws(StorageError) {
      if discardingLog { next = try prepareRotation(reset: snapshot.index) }
    } catch .descriptorsExhausted(let operation, let path, let code) {
      try? FileSystem.remove(temporary)
      throw descriptorsRanOut(operation, path, code, logger: logger)
    } catch {
      try? FileSystem.remove(temporary)
      throw poison(error)
    }
    // A failure after the rename (its directory sync) poisons the storage, as the disk is then ahead of the
    // log's state (a reopen finishes the job); one before it leaves the log as it was.
    do throws(StorageError) {
      try SnapshotFile.publish(
        temporary, index: snapshot.index, directory: snapshotDirectory, sync: syncsStructure,
        faults: snapshotSyncFaults
      ) { poison($0) }
    } catch {
      next?.abandon()
      try? FileSystem.remove(temporary)
      throw error
    }
    position.snapshotIndex = snapshot.index
    if let next {
      do throws(StorageError) {
        try finishRotation(next)
      } catch {
        throw poison(error)
      }
      position.didReset(to: snapshot.index)
      try deleteSegments { $0.sequence < discardBefore }
    }
    SnapshotFile.prune(snapshotDirectory, logger: logger)
  }

  /// Renames a snapshot written by ``saveSnapshotKeepingLog(_:)`` into place. A snapshot older than the
  /// stored one is refused; one at the same index is already stored (the state at an index is unique) and the
  /// stored file is kept, since a leader's snapshot file also records which log segments it discarded.
  private func publishSnapshot(_ temporary: String, index: UInt64) throws(StorageError) {
    try ensureOpen()
    if index < position.snapshotIndex {
      throw .invalidWrite("snapshot at \(index) is older than the stored snapshot at \(position.snapshotIndex)")
    }
    if index == position.snapshotIndex && index > 0 {
      try? FileSystem.remove(temporary)
      return
    }
    // A directory sync that fails after the rename poisons the storage, as every failed sync does.
    try SnapshotFile.publish(
      temporary, index: index, directory: snapshotDirectory, sync: syncsStructure, faults: snapshotSyncFaults
    ) { poison($0) }
    position.snapshotIndex = index
    SnapshotFile.prune(snapshotDirectory, logger: logger)
  }

  /// Discards entries up to `index` (see ``FileStorage/compact(through:)``).
  func compact(through index: UInt64) throws(StorageError) {
    try ensureOpen()
    guard index > position.floor else { return }
    if index > position.snapshotIndex {
      throw .invalidWrite("compaction through \(index) passes the snapshot at \(position.snapshotIndex)")
    }
    do throws(StorageError) {
      var writer = WireWriter(reservingCapacity: 20)
      WALFormat.appendIndexRecord(.floor, index, to: &writer)
      try appendRecords(writer.bytes)
      // The compaction point must be durable before the segments that held the entries disappear.
      if syncsStructure { try syncActive() }
    } catch .descriptorsExhausted(let operation, let path, let code) {
      // As in appendWrites: the compaction point needed a new segment, which could not be opened. Nothing was
      // written and the old segment stays active: the compaction may be retried.
      throw descriptorsRanOut(operation, path, code, logger: logger)
    } catch {
      throw poison(error)
    }
    position.floor = index
    try deleteSegments { $0.maxEntryIndex <= index }
  }

  // MARK: Recovery (on `queue`)

  private func lockDirectory() throws(StorageError) {
    if lockFile != nil { return }
    lockFile = try WALFiles.lockDirectory(directory)
  }

  /// Removes temporary files a crash may have left.
  private func removeLeftovers() throws(StorageError) {
    for name in try FileSystem.list(walDirectory) where name.hasSuffix(".tmp") || name == "spare.zeroing" {
      try FileSystem.remove(walDirectory + "/" + name)
    }
    if let spare, let size = FileSystem.size(of: spare.readyPath), size < segmentBytes {
      try FileSystem.remove(spare.readyPath)
    }
    for name in try FileSystem.list(snapshotDirectory) where name.hasSuffix(".tmp") {
      try FileSystem.remove(snapshotDirectory + "/" + name)
    }
  }

  private func openAndReplay() throws(StorageError) -> RecoveredState<Entry> {
    // Directories created now are made durable in their parents before anything is written in them.
    for path in [directory, walDirectory, snapshotDirectory] {
      try FileSystem.makeDirectories(path, syncParents: syncsStructure) { parent throws(StorageError) in
        try syncDirectory(parent)
      }
    }
    try lockDirectory()
    try removeLeftovers()

    let (loaded, rejected) = try SnapshotFile.loadNewest(in: snapshotDirectory, logger: logger)
    let snapshotIndex = loaded?.snapshot.index ?? 0
    let discardBefore = loaded?.discardBeforeSegment ?? 0
    let sequences = try WALFiles.listSegments(walDirectory)

    var replay = WALReplay<Entry>(
      mode: mode, maxRecordBytes: maxRecordBytes, discardBeforeSegment: discardBefore, logger: logger)
    // One buffer for every segment: a fresh 64 MiB array per segment costs a page fault per 4 KiB.
    var buffer: [UInt8] = []
    for (slot, sequence) in sequences.enumerated() {
      let path = segmentPath(sequence)
      let file = try PosixFile.open(path, flags: O_RDONLY)
      let length: Int
      do throws(StorageError) {
        length = try file.size()
        if buffer.count < length { buffer = [UInt8](repeating: 0, count: length) }
        let read = buffer.withUnsafeMutableBytes { raw in
          Result { () throws(StorageError) in
            try file.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<length]), at: 0)
          }
        }
        if try read.get() != length { throw ioError("read (file shrank)", path, EIO) }
        file.close()
      } catch {
        file.close()
        throw error
      }
      try replay.replay(
        segment: sequence, path: path, bytes: buffer, length: length, isLast: slot == sequences.count - 1)
    }

    try replay.settle(
      snapshotIndex: snapshotIndex, loaded: loaded?.snapshot, rejected: rejected,
      snapshotDirectory: snapshotDirectory, logDirectory: walDirectory)

    var report = replay.report
    segments = replay.segments.map { Segment(sequence: $0.sequence, maxEntryIndex: $0.maxEntryIndex) }
    hardState = replay.hardState
    position = LogPosition(mode: mode, snapshotIndex: snapshotIndex, floor: replay.floor, end: replay.log.end)
    try openActiveSegment(tail: replay.tail, report: &report)
    if let loaded, discardBefore > 0 { try finishDiscard(loaded.snapshot.index, before: discardBefore) }

    try SnapshotFile.setAside(
      rejected, in: snapshotDirectory, recoveredAt: snapshotIndex, report: &report, logger: logger)
    if case .batch(let interval) = policy { startBatchTimer(interval) }
    logger.info(
      "recovered", ["directory": directory, "report": "\(report)", "entries": "\(replay.log.count)"])
    return RecoveredState(
      hardState: replay.hardState, snapshot: loaded?.snapshot, entries: replay.log.takeEntries(), report: report)
  }

  /// Opens the last segment for appending after repairing a torn tail, or creates the first segment.
  private func openActiveSegment(tail: WALTail?, report: inout RecoveryReport) throws(StorageError) {
    guard let tail else {
      let sequence = segments.last.map { $0.sequence + 1 } ?? 1
      active = try createSegment(sequence, reset: nil)
      segments.append(Segment(sequence: sequence, maxEntryIndex: 0))
      return
    }
    guard
      let repaired = try WALFiles.repair(
        tail, sync: syncsStructure, report: &report, logger: logger, onDataSync: { syncCount += 1 })
    else {
      // The segment's creation was unfinished (no header; only under the policy that never syncs): start it
      // afresh.
      segments.removeLast()
      active = try createSegment(tail.sequence, reset: nil)
      segments.append(Segment(sequence: tail.sequence, maxEntryIndex: 0))
      return
    }
    active = WALActiveSegment(
      file: repaired.file, offset: repaired.end, headerEnd: tail.headerEnd, version: tail.version,
      synced: syncsStructure)
    if preallocation == .zeroFilled { spare?.prepare() }
  }

  /// Completes a log-discarding snapshot install that a crash interrupted: the log must continue in segment
  /// `before`, and no older segment may remain.
  private func finishDiscard(_ index: UInt64, before: UInt64) throws(StorageError) {
    guard let last = segments.last else { return }
    if last.sequence < before {
      let next = try createSegment(before, reset: index)
      active?.file.close()
      active = next
      segments.append(Segment(sequence: before, maxEntryIndex: 0))
      position.didReset(to: index)
    }
    try deleteSegments { $0.sequence < before }
  }

  private func startBatchTimer(_ interval: Duration) {
    timer = WALFiles.batchTimer(every: interval, on: queue) { [weak self] in self?.batchSync() }
  }
}

extension StorageError {
  /// The error a storage that `self` poisoned reports from then on: `self`, except that a retryable error
  /// becomes ``io(operation:path:errno:)``. Retrying cannot help a poisoned storage (a node would retry a
  /// call that can never succeed); only reopening it can.
  var poisoning: StorageError {
    guard case .descriptorsExhausted(let operation, let path, let code) = self else { return self }
    return .io(
      operation: operation + " (out of file descriptors; the storage must be reopened)", path: path, errno: code)
  }
}

/// The retryable error for a call that found no file descriptor before it wrote anything, logged on `logger`.
func descriptorsRanOut(_ operation: String, _ path: String, _ code: Int32, logger: QuorumLogger) -> StorageError {
  let error = StorageError.descriptorsExhausted(operation: operation, path: path, errno: code)
  logger.warning("out of file descriptors; nothing was written, the call may be retried", ["error": "\(error)"])
  return error
}
