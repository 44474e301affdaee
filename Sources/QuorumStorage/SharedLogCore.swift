import Dispatch
import Glibc
import QuorumCore
import Synchronization

/// The engine behind ``SharedWriteAheadLog``: owns the files and every group's log state, and does every
/// blocking call on one serial queue (see ``FileStorageCore``, whose request queue and group commit it shares
/// in shape).
///
/// Safety of `@unchecked Sendable`: every stored `var` is read and written only by code running on ``queue`` (the
/// drain loop, the batch-sync timer whose source targets ``queue``, and `deinit`, which runs when nothing
/// else holds a reference). The `let`s are immutable, and ``inbox`` is a `WALInbox`, which locks its own state.
final class SharedLogCore: @unchecked Sendable {
  // MARK: Configuration

  let directory: String
  let walDirectory: String
  let snapshotRoot: String
  let policy: FsyncPolicy
  let segmentBytes: Int
  let preallocation: WALPreallocation
  let logger: QuorumLogger
  private let queue = DispatchQueue(label: "quorum.sharedlog.io", qos: .userInitiated)
  /// Where snapshot files that keep the log are written, so that log writes on ``queue`` go on meanwhile.
  private let snapshotQueue = DispatchQueue(label: "quorum.sharedlog.snapshot", qos: .utility)
  /// Where the bodies of leaders' snapshots are written: not behind the groups' own snapshots on
  /// ``snapshotQueue``, which the install supersedes (for its group) or has nothing to do with (for the others),
  /// and which may take long, while the installing replica waits for its install.
  private let installQueue = DispatchQueue(label: "quorum.sharedlog.install", qos: .userInitiated)
  private let snapshotSequence = Atomic<UInt64>(0)
  /// Makes temporary snapshot names unique to this instance (see ``FileStorageCore``).
  private let instanceToken = UInt32.random(in: 0...UInt32.max)
  private let spare: SpareSegment?
  /// Failures tests inject into the opens of new segments.
  let openFaults = OpenFaults()
  /// Failures tests inject into the deletions of a forgotten group's snapshot files.
  let snapshotRemovalFaults = OpenFaults()
  /// Failures tests inject into the directory syncs that follow a snapshot's rename into place.
  let snapshotSyncFaults = OpenFaults()
  /// Runs where an installed snapshot's body is about to be written (on the install queue); tests hold it there.
  let snapshotBodyHook = Mutex<(@Sendable () -> Void)?>(nil)
  /// Runs where a snapshot that keeps the log is about to be written (on the snapshot queue); tests hold it there.
  let keptSnapshotHook = Mutex<(@Sendable () -> Void)?>(nil)
  /// The largest group record a write may make: ``maxChunkBytes``, lowered by tests.
  let writeChunkLimit = Atomic<Int>(maxChunkBytes)

  /// "QSWL", little-endian: a shared log's segment.
  static let segmentMagic: UInt32 = 0x4C57_5351
  /// The mode byte of a shared segment header: each group has its own mode.
  static let modeByte: UInt8 = 255
  /// The largest group record believed during recovery (a group's write is one record).
  static let maxChunkBytes = Int(UInt32.max) - WALFormat.headerBytes

  // MARK: Request queue

  /// One group's write, as queued.
  private struct Write: Sendable {
    var group: UInt64
    var owner: ObjectIdentifier
    var write: WALFormat.EncodedWrite
  }

  private let inbox = WALInbox<Write>()

  /// Requests queued and not yet taken by the drain loop; for tests that hold the queue to make a batch.
  var queuedRequestCount: Int { inbox.count }
  /// Whether the drain loop runs; for tests that need the writer idle.
  var isDraining: Bool { inbox.isDraining }

  // MARK: State confined to `queue`

  private enum Phase {
    case initial
    case open
    case failed(StorageError)
  }

  /// Where a group's records are in one segment, as the scan found them: the records after the group number.
  /// Only their place is kept, not the bytes (read again when the group recovers), so a log with many groups
  /// does not sit in memory until they all have. The segment cannot go meanwhile: a group still to recover
  /// keeps every segment holding its records.
  private struct Chunk {
    var sequence: UInt64
    var path: String
    /// Where the records start in the file.
    var offset: Int
    var length: Int
  }

  /// Reads chunks back from their segments, keeping the last segment open (a group's chunks come in segment
  /// order).
  private struct ChunkReader {
    private var open: (path: String, file: PosixFile)?

    mutating func read(_ chunk: Chunk) throws(StorageError) -> [UInt8] {
      if open?.path != chunk.path {
        close()
        open = (chunk.path, try PosixFile.open(chunk.path, flags: O_RDONLY))
      }
      guard let file = open?.file else { preconditionFailure("opened just above") }
      var bytes = [UInt8](repeating: 0, count: chunk.length)
      let read = bytes.withUnsafeMutableBytes { raw in
        Result { () throws(StorageError) in try file.read(into: raw, at: chunk.offset) }
      }
      if try read.get() != chunk.length { throw ioError("read (file shrank)", chunk.path, EIO) }
      return bytes
    }

    mutating func close() {
      open?.file.close()
      open = nil
    }
  }

  /// A recovered group's log state.
  private struct Group {
    var position: LogPosition
    var hardState: [UInt8]?
    /// Whether its storage is open (recovered and not closed).
    var open: Bool
    /// The storage that recovered it: the only one whose calls it takes.
    var owner: ObjectIdentifier
  }

  private struct Segment {
    var sequence: UInt64
    /// The highest entry position of each recovered group with live entries in the segment.
    var maxEntryIndex: [UInt64: UInt64] = [:]
    /// Groups with records in the segment that have not recovered yet: they keep it.
    var unrecovered: Set<UInt64> = []
  }

  private var phase = Phase.initial
  private var lockFile: PosixFile?
  private var segments: [Segment] = []
  private var active: WALActiveSegment?
  private var groups: [UInt64: Group] = [:]
  /// Records of groups that have not recovered yet, from the scan.
  private var pending: [UInt64: [Chunk]] = [:]
  /// What the scan found and did (torn tail), copied into every group's report.
  private var scanReport = RecoveryReport()
  private var openGroups = 0
  private var dirty = false
  private var timer: (any DispatchSourceTimer)?
  /// `fdatasync` calls on the log made so far.
  private(set) var syncCount = 0

  init(directory: String, policy: FsyncPolicy, segmentBytes: Int, preallocation: WALPreallocation, logger: QuorumLogger)
  {
    self.directory = directory
    walDirectory = directory + "/wal"
    snapshotRoot = directory + "/snapshots"
    self.policy = policy
    self.segmentBytes = segmentBytes
    self.preallocation = preallocation
    self.logger = logger
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

  private var syncsStructure: Bool { policy != .never }

  var segmentSequences: [UInt64] { segments.map(\.sequence) }

  func snapshotDirectory(_ group: UInt64) -> String { snapshotRoot + "/\(group)" }

  // MARK: Submitting requests

  func write(
    group: UInt64, owner: ObjectIdentifier, _ write: WALFormat.EncodedWrite, whenDurable: (@Sendable () -> Void)?
  ) async throws {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
      enqueue(
        .write(
          Write(group: group, owner: owner, write: write),
          WALWaiter(continuation: continuation, then: whenDurable)))
    }
  }

  func perform<T: Sendable>(_ body: @escaping @Sendable () throws(StorageError) -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
      enqueue(WALInbox.task(body, resuming: continuation))
    }
  }

  /// Queues `request`; the first one queued while the writer is idle wakes it, at the end of the caller's pass
  /// (``QuorumCore/ThreadBatch``) if it runs in one: the groups taking their turns on one event loop then reach the
  /// writer together, and one `fdatasync` makes all their writes durable, rather than one for the first group's
  /// write and another for the rest.
  private func enqueue(_ request: WALInbox<Write>.Request) {
    guard inbox.enqueue(request) else { return }
    let wake = { [self] in queue.async { self.inbox.drain(self.appendWrites) } }
    if !ThreadBatch.deferUntilEnd(wake) { wake() }
  }

  // MARK: Lifecycle (on `queue`)

  private func ensureOpen() throws(StorageError) {
    switch phase {
    case .open: return
    case .failed(let error): throw error
    case .initial: try openAndScan()
    }
  }

  /// The group's state, if `owner` recovered it and has not closed it. Only ``recover(group:owner:mode:maxRecordBytes:as:)``
  /// opens the log: a call before it (or after the last group closed) throws, and leaves the directory alone.
  private func openGroup(_ group: UInt64, owner: ObjectIdentifier) throws(StorageError) -> Group {
    switch phase {
    case .open: break
    case .failed(let error): throw error
    case .initial: throw .invalidWrite("group \(group) of the shared log \(directory) has not recovered")
    }
    guard let state = groups[group] else {
      throw .invalidWrite("group \(group) of the shared log \(directory) has not recovered")
    }
    guard state.owner == owner else {
      throw .invalidWrite("group \(group) of the shared log \(directory) is open in another storage")
    }
    if !state.open { throw .closed }
    return state
  }

  /// Closes `group`'s storage (if `owner` recovered it); the last one closed syncs and releases everything,
  /// as does closing a storage whose recovery failed while no group is open.
  func close(group: UInt64, owner: ObjectIdentifier) throws(StorageError) {
    var failure: StorageError?
    if let state = groups[group], state.open, state.owner == owner {
      groups[group]?.open = false
      openGroups -= 1
      if case .open = phase, syncsStructure, dirty || openGroups == 0, active != nil {
        do throws(StorageError) {
          try syncActive()
          // The log closes: a marker after the last append, so that damage found in it later is corruption, not
          // a torn write.
          if openGroups == 0, try active?.appendSyncMarker() == true { try syncActive() }
        } catch {
          failure = poison(error)
        }
      }
    }
    if openGroups == 0 { release() }
    if let failure { throw failure }
  }

  /// Releases the files and the directory lock, and forgets every group: the next group to recover reads the
  /// files afresh.
  private func release() {
    if case .initial = phase, lockFile == nil { return }
    if case .open = phase, syncsStructure, active != nil {
      // Every path that ends the log (the last close, a forget or a failed recovery with no group open) leaves
      // a marker after its last append, so that damage found in it later is corruption, not a torn write that
      // replay would cut (a cut forget record would bring the forgotten group's records back).
      do throws(StorageError) {
        if dirty { try syncActive() }
        if try active?.appendSyncMarker() == true { try syncActive() }
      } catch {
        logger.error(
          "shared log: the closing sync marker failed", ["error": "\(error)", "directory": directory])
      }
    }
    snapshotQueue.sync {}
    installQueue.sync {}
    timer?.cancel()
    timer = nil
    active?.file.close()
    active = nil
    segments = []
    groups = [:]
    pending = [:]
    scanReport = RecoveryReport()
    openGroups = 0
    dirty = false
    spare?.cancel()
    lockFile?.close()
    lockFile = nil
    phase = .initial
  }

  /// Returns the error the storage now reports, which callers throw: a retryable one (descriptors ran out) becomes
  /// a non-retryable ``StorageError/io(operation:path:errno:)``, since only reopening can help.
  @discardableResult
  private func poison(_ error: StorageError) -> StorageError {
    let failure = error.poisoning
    logger.error("shared log failed; its groups must be reopened", ["error": "\(failure)", "directory": directory])
    phase = .failed(failure)
    return failure
  }

  // MARK: Writing (on `queue`)

  private func appendWrites(_ batch: [(Write, WALWaiter)]) {
    var outcomes = [StorageError?](repeating: nil, count: batch.count)
    var pendingChunks: [[UInt8]] = []
    var pendingBytes = 0
    var accepted: [Int] = []
    var mustSync = false
    do throws(StorageError) {
      for (slot, (request, _)) in batch.enumerated() {
        let (group, write) = (request.group, request.write)
        var state: Group
        var resetPoint: UInt64?
        let chunk: [UInt8]
        do throws(StorageError) {
          state = try openGroup(group, owner: request.owner)
          if let range = write.entryRange {
            resetPoint = try state.position.check(first: range.lowerBound, last: range.upperBound)
          }
          // A write too large for one group record is that group's error (nothing of it is written), not the log's.
          chunk = try Self.chunk(
            group: group, reset: resetPoint, records: write.bytes, limit: writeChunkLimit.load(ordering: .relaxed))
        } catch {
          outcomes[slot] = error
          continue
        }
        if needsRotation(adding: pendingBytes + chunk.count, pendingBytes: pendingBytes) {
          try flush(&pendingChunks, &pendingBytes)
          try rotate()
        }
        pendingChunks.append(chunk)
        pendingBytes += chunk.count
        if let resetPoint {
          state.position.didReset(to: resetPoint)
          // The reset dropped every entry the group had stored: none of them keeps a segment any more.
          for index in segments.indices { segments[index].maxEntryIndex[group] = nil }
        }
        if let range = write.entryRange {
          if state.position.mode == .truncateSuffix && range.lowerBound <= state.position.end {
            // The group's entries from the write's first position on are superseded: no segment needs to be
            // kept for them any more (replay drops them again when it meets this write).
            for index in segments.indices {
              if let highest = segments[index].maxEntryIndex[group], highest >= range.lowerBound {
                segments[index].maxEntryIndex[group] = range.lowerBound - 1
              }
            }
          }
          state.position.didAppend(first: range.lowerBound, last: range.upperBound)
          let last = segments.count - 1
          segments[last].maxEntryIndex[group] = max(segments[last].maxEntryIndex[group] ?? 0, range.upperBound)
        }
        if let newHardState = write.hardState { state.hardState = newHardState }
        groups[group] = state
        mustSync = mustSync || write.mustSync
        accepted.append(slot)
      }
      try flush(&pendingChunks, &pendingBytes)
      if !accepted.isEmpty { try syncAfterWrite(mustSync: mustSync) }
    } catch .descriptorsExhausted(let operation, let path, let code) where pendingChunks.isEmpty {
      // As in FileStorageCore: a new segment could not be opened; what was accepted before is durable in the
      // old segment, which stays active, and the rest may be retried.
      let error = StorageError.descriptorsExhausted(operation: operation, path: path, errno: code)
      logger.warning("out of file descriptors; writes may be retried", ["error": "\(error)"])
      let done = Set(accepted)
      for slot in batch.indices where outcomes[slot] == nil && !done.contains(slot) { outcomes[slot] = error }
    } catch {
      let failure = poison(error)
      for slot in batch.indices where outcomes[slot] == nil { outcomes[slot] = failure }
    }
    for (slot, (_, waiter)) in batch.enumerated() {
      if let error = outcomes[slot] {
        waiter.fail(error)
      } else {
        waiter.succeed()
      }
    }
  }

  /// A group record: the group number, a reset record when one is needed, then the group's records.
  private static func chunk(group: UInt64, reset: UInt64?, records: [UInt8], limit: Int = maxChunkBytes)
    throws(StorageError) -> [UInt8]
  {
    var writer = WireWriter(reservingCapacity: records.count + 32)
    let start = WALFormat.beginRecord(.groupChunk, in: &writer)
    writer.writeVarint(group)
    if let reset { WALFormat.appendIndexRecord(.reset, reset, to: &writer) }  // Before the entries it makes room for.
    writer.writeRaw(records)
    try WALFormat.endRecord(at: start, in: &writer, limit: limit)
    return writer.bytes
  }

  /// The group record that forgets `group`: a forget record alone.
  private static func forgetChunk(group: UInt64) throws(StorageError) -> [UInt8] {
    var records = WireWriter(reservingCapacity: WALFormat.headerBytes)
    WALFormat.appendRecord(.forget, payload: [], to: &records)
    return try chunk(group: group, reset: nil, records: records.bytes)
  }

  /// Whether the records of a group record, at `records` in `bytes`, are a forget record alone (the group
  /// record's checksum covers them).
  private static func isForget(_ bytes: [UInt8], _ records: Range<Int>) -> Bool {
    records.count == WALFormat.headerBytes && bytes[records.lowerBound + 8] == WALRecordType.forget.rawValue
  }

  private func needsRotation(adding bytes: Int, pendingBytes: Int) -> Bool {
    active?.needsRotation(adding: bytes, pendingBytes: pendingBytes, segmentBytes: segmentBytes) ?? false
  }

  private func flush(_ pending: inout [[UInt8]], _ pendingBytes: inout Int) throws(StorageError) {
    try active?.flush(&pending, &pendingBytes)
  }

  /// Appends `bytes` (whole records) to the active segment, rotating first if they do not fit.
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

  /// The segment's header, then one group record per recovered group with state to keep (hard state,
  /// compaction point), and the reset of `reset`'s group.
  private func checkpoint(sequence: UInt64, reset: (group: UInt64, index: UInt64)?) throws(StorageError) -> [UInt8] {
    var writer = WireWriter(reservingCapacity: 64)
    WALFormat.appendSegmentHeader(sequence: sequence, magic: Self.segmentMagic, modeByte: Self.modeByte, to: &writer)
    var bytes = writer.bytes
    for group in groups.keys.sorted() {
      guard let state = groups[group] else { continue }
      let records = Self.stateRecords(state)
      let resetHere = reset?.group == group ? reset?.index : nil
      if records.isEmpty && resetHere == nil { continue }
      bytes.append(contentsOf: try Self.chunk(group: group, reset: resetHere, records: records))
    }
    return bytes
  }

  /// The records that restore a group's state without its entries: its hard state and compaction point.
  private static func stateRecords(_ state: Group) -> [UInt8] {
    var records = WireWriter(reservingCapacity: 32 + (state.hardState?.count ?? 0))
    if let hardState = state.hardState { WALFormat.appendRecord(.hardState, payload: hardState, to: &records) }
    if state.position.floor > 0 { WALFormat.appendIndexRecord(.floor, state.position.floor, to: &records) }
    return records.bytes
  }

  /// Prepares segment `sequence` (see ``WALPreparedSegment``).
  private func prepareSegment(_ sequence: UInt64, reset: (group: UInt64, index: UInt64)?) throws(StorageError)
    -> WALPreparedSegment
  {
    let bytes = try checkpoint(sequence: sequence, reset: reset)
    // The checkpoint counts as the header (see needsRotation): with many groups it can outgrow the segment
    // size, and every write would start a new segment.
    return try WALFiles.prepareSegment(
      segmentPath(sequence), checkpoint: bytes, headerEnd: bytes.count, spare: spare, preallocation: preallocation,
      segmentBytes: segmentBytes, faults: openFaults, sync: syncsStructure, onDataSync: { syncCount += 1 })
  }

  private func createSegment(_ sequence: UInt64, reset: (group: UInt64, index: UInt64)?) throws(StorageError)
    -> WALActiveSegment
  {
    try prepareSegment(sequence, reset: reset).commit {}
  }

  private func rotate(reset: (group: UInt64, index: UInt64)? = nil) throws(StorageError) {
    try finishRotation(try prepareRotation(reset: reset))
  }

  /// The first half of ``rotate(reset:)``: syncs the active segment and prepares the next. Running out of
  /// descriptors here changes nothing on disk (retryable).
  private func prepareRotation(reset: (group: UInt64, index: UInt64)?) throws(StorageError) -> WALPreparedSegment {
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
    let segment = try next.commit {}
    old.file.close()
    active = segment
    segments.append(Segment(sequence: last.sequence + 1))
    dirty = false
  }

  /// Whether no group needs anything in `segment` any more.
  private func isDead(_ segment: Segment) -> Bool {
    guard segment.unrecovered.isEmpty else { return false }
    for (group, index) in segment.maxEntryIndex where index > (groups[group]?.position.floor ?? 0) {
      return false
    }
    return true
  }

  /// Deletes the oldest segments, except the active one, while no group needs them.
  private func deleteDeadSegments() throws(StorageError) {
    var deleted = 0
    while segments.count > 1, isDead(segments[0]) {
      if deleted == 0, dirty, syncsStructure {
        // Copies of a recovered group's state appended since the last sync (see recover) must be durable before
        // the records they copy go.
        do throws(StorageError) {
          try syncActive()
        } catch {
          throw poison(error)
        }
      }
      try FileSystem.remove(segmentPath(segments[0].sequence))
      segments.removeFirst()
      deleted += 1
    }
    if deleted > 0 && syncsStructure { try FileSystem.syncDirectory(walDirectory) }
  }

  /// Forgets `group`: its records in the log become void and its snapshots are deleted, so that the segments
  /// holding its records can go (see ``SharedWriteAheadLog/forget(group:)``). Opens the log if no group has,
  /// and releases it again after. Returns whether the log or the snapshots held anything of the group.
  func forget(group: UInt64) throws(StorageError) -> Bool {
    // No log here: nothing to forget, and no empty log to leave behind.
    if case .initial = phase, !FileSystem.isDirectory(walDirectory) { return false }
    try ensureOpen()
    defer { if openGroups == 0 { release() } }
    if let state = groups[group] {
      throw .invalidWrite(
        "group \(group) of the shared log \(directory) "
          + (state.open ? "is open" : "was recovered by this process")
          + "; only a group no storage has recovered since the log was opened can be forgotten")
    }
    let held = pending[group] != nil
    if held {
      // The forget record is the commit point: durable before anything else goes.
      do throws(StorageError) {
        try appendRecords(try Self.forgetChunk(group: group))
        try syncActive()  // Whatever the policy: snapshots and segments are deleted next.
      } catch {
        throw poison(error)
      }
      pending[group] = nil
      for slot in segments.indices { segments[slot].unrecovered.remove(group) }
    }
    let hadSnapshots: Bool
    do throws(StorageError) {
      hadSnapshots = try removeSnapshots(of: group)
    } catch {
      // The forget record is durable, but some of the forgotten replica's snapshots may be left: the group,
      // recovered again in this run, would start from them, and the record that tells the next open to delete
      // them could go with its segment meanwhile. Refuse everything until the log is reopened, which finishes
      // the deletion (as after a crash).
      throw held ? poison(error) : error
    }
    if held { try deleteDeadSegments() }
    return held || hadSnapshots
  }

  /// Deletes `group`'s snapshot directory (its snapshots and recorded write mode), if there is one; returns
  /// whether there was.
  @discardableResult
  private func removeSnapshots(of group: UInt64) throws(StorageError) -> Bool {
    let path = snapshotDirectory(group)
    guard FileSystem.isDirectory(path) else { return false }
    for name in try FileSystem.list(path) {
      if snapshotRemovalFaults.injected() != nil { throw ioError("unlink", path + "/" + name) }
      try FileSystem.remove(path + "/" + name)
    }
    try FileSystem.removeDirectory(path)
    if syncsStructure { try FileSystem.syncDirectory(snapshotRoot) }
    return true
  }

  func pinningGroups() -> [UInt64] {
    guard segments.count > 1 else { return [] }
    let oldest = segments[0]
    var pinning = oldest.maxEntryIndex.compactMap { group, index in
      index > (groups[group]?.position.floor ?? 0) ? group : nil
    }
    pinning.append(contentsOf: oldest.unrecovered)
    return pinning.sorted()
  }

  // MARK: Snapshots and compaction (on `queue`)

  /// Runs `body` on `queue` (the snapshot or the install queue), where snapshot files are written while the log's
  /// queue goes on.
  private func on<T: Sendable>(_ queue: DispatchQueue, _ body: @escaping @Sendable () throws(StorageError) -> T)
    async throws -> T
  {
    try await withCheckedThrowingContinuation { continuation in
      queue.async { continuation.resume(with: Result { () throws(StorageError) -> T in try body() }) }
    }
  }

  /// Installs a leader's snapshot, discarding the group's log. The snapshot's body is written and synced on the
  /// snapshot queue, off the writer every group shares, so a large snapshot does not hold up the other groups'
  /// writes (and with them their replicas' turns: a leader waiting on the log sends no heartbeat); the writer
  /// then adds the header, which names the segment the group's log continues in, renames the file into place
  /// and starts that segment.
  func saveSnapshotDiscardingLog(
    group: UInt64, owner: ObjectIdentifier, _ snapshot: StoredSnapshot, closed: @escaping @Sendable () -> Bool
  ) async throws {
    let directory = snapshotDirectory(group)
    let sync = policy != .never
    let suffix = ".\(instanceToken).\(snapshotSequence.add(1, ordering: .relaxed).newValue).tmp"
    let body = try await on(installQueue) { () throws(StorageError) in
      self.snapshotBodyHook.withLock { $0 }?()
      if closed() { throw .closed }
      return try SnapshotFile.writeBody(snapshot, directory: directory, sync: sync, suffix: suffix)
    }
    try await perform { () throws(StorageError) in
      do throws(StorageError) {
        try self.installSnapshot(group: group, owner: owner, body)
      } catch {
        // installSnapshot closed the body's file (finished or discarded it).
        try? FileSystem.remove(body.temporary)
        throw error
      }
    }
  }

  private func installSnapshot(group: UInt64, owner: ObjectIdentifier, _ body: SnapshotFile.PreparedBody)
    throws(StorageError)
  {
    var state: Group
    do throws(StorageError) {
      state = try openGroup(group, owner: owner)
      if body.index < state.position.snapshotIndex {
        throw .invalidWrite(
          "snapshot at \(body.index) is older than the stored snapshot at \(state.position.snapshotIndex)")
      }
    } catch {
      body.discard()
      throw error
    }
    guard let last = segments.last else { preconditionFailure("open shared log without segments; phase \(phase)") }
    // As in FileStorage: the snapshot names the segment the group's log continues in, so a crash before that
    // segment exists still discards the group's older entries.
    let discardBefore = last.sequence + 1
    let directory = snapshotDirectory(group)
    try SnapshotFile.finish(body, discardBeforeSegment: discardBefore, sync: syncsStructure)
    // Everything that needs a file descriptor comes before the snapshot's rename (the commit point): the next
    // segment is prepared, and the directories opened, while nothing has changed, so running out of descriptors
    // leaves the log as it was and may be retried (the caller removes the temporary snapshot). A failed sync of
    // the active segment poisons, as always.
    let next: WALPreparedSegment
    do throws(StorageError) {
      next = try prepareRotation(reset: (group, body.index))
    } catch .descriptorsExhausted(let operation, let path, let code) {
      throw descriptorsRanOut(operation, path, code, logger: logger)
    } catch {
      throw poison(error)
    }
    // Once the snapshot is renamed into place it names a segment not yet started: a failure from here on leaves
    // the disk ahead of the log's state, so it poisons the log (a reopen finishes the install from the disk).
    do throws(StorageError) {
      try SnapshotFile.publish(
        body.temporary, index: body.index, directory: directory, sync: syncsStructure, faults: snapshotSyncFaults
      ) { poison($0) }
    } catch {
      next.abandon()
      throw error
    }
    state.position.snapshotIndex = body.index
    groups[group] = state
    do throws(StorageError) {
      try finishRotation(next)
    } catch {
      throw poison(error)
    }
    groups[group]?.position.didReset(to: body.index)
    for slot in segments.indices where segments[slot].sequence < discardBefore {
      segments[slot].maxEntryIndex[group] = nil
    }
    try deleteDeadSegments()
    SnapshotFile.prune(directory, logger: logger)
  }

  func saveSnapshotKeepingLog(
    group: UInt64, owner: ObjectIdentifier, _ snapshot: StoredSnapshot, closed: @escaping @Sendable () -> Bool
  ) async throws {
    let directory = snapshotDirectory(group)
    let sync = policy != .never
    let suffix = ".\(instanceToken).\(snapshotSequence.add(1, ordering: .relaxed).newValue).tmp"
    let temporary = try await on(snapshotQueue) { () throws(StorageError) in
      self.keptSnapshotHook.withLock { $0 }?()
      if closed() { throw .closed }
      return try SnapshotFile.writeTemporary(
        snapshot, discardBeforeSegment: 0, directory: directory, sync: sync, suffix: suffix)
    }
    try await perform { () throws(StorageError) in
      do throws(StorageError) {
        try self.publishSnapshot(group: group, owner: owner, temporary, index: snapshot.index)
      } catch {
        try? FileSystem.remove(temporary)
        throw error
      }
    }
  }

  private func publishSnapshot(group: UInt64, owner: ObjectIdentifier, _ temporary: String, index: UInt64)
    throws(StorageError)
  {
    let state = try openGroup(group, owner: owner)
    if index < state.position.snapshotIndex {
      throw .invalidWrite("snapshot at \(index) is older than the stored snapshot at \(state.position.snapshotIndex)")
    }
    if index == state.position.snapshotIndex && index > 0 {
      try? FileSystem.remove(temporary)
      return
    }
    let directory = snapshotDirectory(group)
    // A directory sync that fails after the rename poisons the log, as every failed sync does.
    try SnapshotFile.publish(
      temporary, index: index, directory: directory, sync: syncsStructure, faults: snapshotSyncFaults
    ) { poison($0) }
    groups[group]?.position.snapshotIndex = index
    SnapshotFile.prune(directory, logger: logger)
  }

  func compact(group: UInt64, owner: ObjectIdentifier, through index: UInt64) throws(StorageError) {
    let state = try openGroup(group, owner: owner)
    guard index > state.position.floor else { return }
    if index > state.position.snapshotIndex {
      throw .invalidWrite("compaction through \(index) passes the snapshot at \(state.position.snapshotIndex)")
    }
    do throws(StorageError) {
      var records = WireWriter(reservingCapacity: 20)
      WALFormat.appendIndexRecord(.floor, index, to: &records)
      try appendRecords(try Self.chunk(group: group, reset: nil, records: records.bytes))
    } catch .descriptorsExhausted(let operation, let path, let code) {
      // As in appendWrites: the compaction point needed a new segment, which could not be opened. Nothing was
      // written and the old segment stays active: the compaction may be retried.
      throw descriptorsRanOut(operation, path, code, logger: logger)
    } catch {
      throw poison(error)
    }
    // The compaction point must be durable before the segments that held the entries disappear:
    // deleteDeadSegments syncs first when something is unsynced. Until then a lost compaction point only brings
    // back entries the snapshot covers, which recovery drops. No sync per compaction: every group's writes would
    // wait behind it, and a host asks many groups to compact at once.
    dirty = true
    groups[group]?.position.floor = index
    try deleteDeadSegments()
  }

  // MARK: Recovery (on `queue`)

  /// Locks the directory, reads every segment once, sets each group's records aside, repairs a torn tail and
  /// opens the last segment for appending.
  private func openAndScan() throws(StorageError) {
    do throws(StorageError) {
      for path in [directory, walDirectory, snapshotRoot] {
        try FileSystem.makeDirectories(path, syncParents: syncsStructure) { parent throws(StorageError) in
          try FileSystem.syncDirectory(parent)
        }
      }
      if lockFile == nil { lockFile = try WALFiles.lockDirectory(directory) }
      for name in try FileSystem.list(walDirectory) where name.hasSuffix(".tmp") || name == "spare.zeroing" {
        try FileSystem.remove(walDirectory + "/" + name)
      }
      if let spare, let size = FileSystem.size(of: spare.readyPath), size < segmentBytes {
        try FileSystem.remove(spare.readyPath)
      }
      var report = RecoveryReport()
      var forgotten: Set<UInt64> = []
      let tail = try scan(report: &report, forgotten: &forgotten)
      try openActiveSegment(tail: tail, report: &report)
      // A forget whose snapshots were not all removed before a crash: finished now, before the group could be
      // opened again and find them.
      for group in forgotten.sorted() { try removeSnapshots(of: group) }
      scanReport = report
      phase = .open
      if case .batch(let interval) = policy { startBatchTimer(interval) }
      logger.info("opened shared log", ["directory": directory, "report": "\(report)", "groups": "\(pending.count)"])
    } catch {
      active?.file.close()
      active = nil
      segments = []
      pending = [:]
      lockFile?.close()
      lockFile = nil
      throw error
    }
  }

  /// Reads every segment, noting where each group's records are; returns the last segment's tail. Groups whose
  /// last group record is a forget record go into `forgotten`.
  private func scan(report: inout RecoveryReport, forgotten: inout Set<UInt64>) throws(StorageError) -> WALTail? {
    let sequences = try WALFiles.listSegments(walDirectory)
    var buffer: [UInt8] = []
    var tail: WALTail?
    for (slot, sequence) in sequences.enumerated() {
      let path = segmentPath(sequence)
      let length = try Self.read(path, into: &buffer)
      let isLast = slot == sequences.count - 1
      var segment = Segment(sequence: sequence)
      let result = buffer.withUnsafeBytes { raw in
        Result { () throws(StorageError) -> WALTail in
          var cursor = WALCursor(
            UnsafeRawBufferPointer(rebasing: raw[0..<length]), path: path, isLast: isLast,
            maxRecordBytes: Self.maxChunkBytes, laterRecordType: WALRecordType.groupChunk.rawValue)
          var headerEnd = 0
          var version: UInt8 = 0
          while let (type, payload, offset) = try cursor.next() {
            if offset == 0 {
              version = try WALFormat.checkSegmentHeader(
                type: type, payload: payload, bytes: buffer, sequence: sequence, path: path, shared: true,
                mode: nil)
              headerEnd = payload.upperBound
              cursor.marksSyncs = version >= 2
            } else if type == WALRecordType.syncMarker.rawValue || type == WALRecordType.filler.rawValue {
              // A marker is read by the cursor when it meets damage; nothing to replay in either.
            } else {
              guard type == WALRecordType.groupChunk.rawValue else {
                throw .corruptRecord(
                  file: path, offset: offset, reason: "record type \(type) where a shared log holds group records")
              }
              var reader = WireReader(buffer, range: payload)
              let group: UInt64
              do throws(WireError) {
                group = try reader.readVarint()
              } catch {
                throw .corruptRecord(file: path, offset: offset, reason: "bad group number: \(error)")
              }
              let start = payload.upperBound - reader.remaining
              if Self.isForget(buffer, start..<payload.upperBound) {
                // Everything the group wrote before is void: it keeps no segment and has nothing to replay.
                pending[group] = nil
                for slot in segments.indices { segments[slot].unrecovered.remove(group) }
                segment.unrecovered.remove(group)
                forgotten.insert(group)
              } else {
                pending[group, default: []].append(
                  Chunk(sequence: sequence, path: path, offset: start, length: payload.upperBound - start))
                segment.unrecovered.insert(group)
                forgotten.remove(group)
              }
            }
            report.recordsRead += 1
          }
          // The last segment's missing header is judged by WALFiles.repair, which knows the policy.
          if headerEnd == 0 && !isLast { throw WALFiles.missingHeader(path, lastSegment: false) }
          return WALTail(
            sequence: sequence, path: path, validEnd: cursor.offset, headerEnd: headerEnd, fileSize: length,
            damage: cursor.damage, version: version)
        }
      }
      let found = try result.get()
      report.segmentsRead += 1
      segments.append(segment)
      if isLast { tail = found }
    }
    return tail
  }

  /// Reads the whole file at `path` into `buffer` (grown if needed); returns its length.
  private static func read(_ path: String, into buffer: inout [UInt8]) throws(StorageError) -> Int {
    let file = try PosixFile.open(path, flags: O_RDONLY)
    defer { file.close() }
    let length = try file.size()
    if buffer.count < length { buffer = [UInt8](repeating: 0, count: length) }
    let read = buffer.withUnsafeMutableBytes { raw in
      Result { () throws(StorageError) in
        try file.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<length]), at: 0)
      }
    }
    if try read.get() != length { throw ioError("read (file shrank)", path, EIO) }
    return length
  }

  private func openActiveSegment(tail: WALTail?, report: inout RecoveryReport) throws(StorageError) {
    if let tail,
      let repaired = try WALFiles.repair(
        tail, sync: syncsStructure, report: &report, logger: logger, onDataSync: { syncCount += 1 })
    {
      active = WALActiveSegment(
        file: repaired.file, offset: repaired.end, headerEnd: tail.headerEnd, version: tail.version,
        synced: syncsStructure)
      if preallocation == .zeroFilled { spare?.prepare() }
      return
    }
    // No segment yet, or (under the policy that never syncs) the last one's creation was unfinished: no header,
    // so no group record either.
    if tail != nil { segments.removeLast() }
    let sequence = tail?.sequence ?? 1
    active = try createSegment(sequence, reset: nil)
    segments.append(Segment(sequence: sequence))
  }

  /// Replays `group`'s records with its entry type; see ``SharedWriteAheadLog``. A failure before the group is
  /// registered leaves nothing changed (and, when no group is open, the directory released, as ``FileStorage``
  /// does); a failure after it (a new segment or a deletion that failed) poisons the log or leaves the group open,
  /// to be closed.
  func recover<Entry: StorableEntry>(
    group: UInt64, owner: ObjectIdentifier, mode: LogWriteMode, maxRecordBytes: Int, as entry: Entry.Type
  ) throws(StorageError) -> RecoveredState<Entry> {
    try ensureOpen()
    do throws(StorageError) {
      return try replayAndRegister(
        group: group, owner: owner, mode: mode, maxRecordBytes: maxRecordBytes, as: entry)
    } catch {
      if openGroups == 0 { release() }
      throw error
    }
  }

  /// Records `mode` for `group` the first time it recovers (a `MODE` file beside its snapshots, written
  /// atomically), and refuses another mode later with ``StorageError/incompatible(file:reason:)``, as a
  /// ``FileStorage`` opened in the other mode does: replaying a log in the wrong mode would rebuild another log.
  private func checkMode(_ mode: LogWriteMode, group: UInt64, in directory: String) throws(StorageError) {
    let path = directory + "/MODE"
    let name = Array((mode == .truncateSuffix ? "truncateSuffix" : "replace").utf8)
    if let stored = try SideFile.read(path, maxBytes: 64) {
      guard stored == name else {
        throw .incompatible(
          file: path,
          reason:
            "group \(group) was written in \(String(decoding: stored, as: UTF8.self)) mode; opened in \(mode) mode")
      }
      return
    }
    try SideFile.write(name, to: path, sync: syncsStructure)
  }

  private func replayAndRegister<Entry: StorableEntry>(
    group: UInt64, owner: ObjectIdentifier, mode: LogWriteMode, maxRecordBytes: Int, as entry: Entry.Type
  ) throws(StorageError) -> RecoveredState<Entry> {
    if let state = groups[group] {
      throw .invalidWrite(
        "group \(group) of the shared log \(directory) "
          + (state.open ? "is already open" : "was closed; reopen the log to recover it again"))
    }
    let snapshotDirectory = snapshotDirectory(group)
    try FileSystem.makeDirectories(snapshotDirectory, syncParents: syncsStructure) { parent throws(StorageError) in
      try FileSystem.syncDirectory(parent)
    }
    for name in try FileSystem.list(snapshotDirectory) where name.hasSuffix(".tmp") {
      try FileSystem.remove(snapshotDirectory + "/" + name)
    }
    try checkMode(mode, group: group, in: snapshotDirectory)
    let (loaded, rejected) = try SnapshotFile.loadNewest(in: snapshotDirectory, logger: logger)
    let snapshotIndex = loaded?.snapshot.index ?? 0
    let discardBefore = loaded?.discardBeforeSegment ?? 0

    var replay = WALReplay<Entry>(
      mode: mode, maxRecordBytes: maxRecordBytes, discardBeforeSegment: discardBefore, logger: logger)
    var maxEntryIndex: [UInt64: UInt64] = [:]
    let chunks = pending[group] ?? []
    var reader = ChunkReader()
    defer { reader.close() }
    for chunk in chunks {
      let resets = replay.resets
      let bytes = try reader.read(chunk)
      let (highest, supersededFrom) = try replay.replayChunk(
        bytes, sequence: chunk.sequence, path: chunk.path, fileOffset: chunk.offset)
      // A reset (first in its group record) drops every entry read before it: they keep no segment.
      if replay.resets != resets { maxEntryIndex = [:] }
      // An entry that truncated the log replaced every entry read before it from its position on: they keep no
      // segment either (as appendWrites records).
      if let supersededFrom {
        for (sequence, index) in maxEntryIndex where index >= supersededFrom {
          maxEntryIndex[sequence] = supersededFrom - 1
        }
      }
      if highest > 0 && chunk.sequence >= discardBefore {
        maxEntryIndex[chunk.sequence] = max(maxEntryIndex[chunk.sequence] ?? 0, highest)
      }
    }
    try replay.settle(
      snapshotIndex: snapshotIndex, loaded: loaded?.snapshot, rejected: rejected,
      snapshotDirectory: snapshotDirectory, logDirectory: walDirectory)
    var report = scanReport
    report.recordsRead = replay.report.recordsRead
    try SnapshotFile.setAside(
      rejected, in: snapshotDirectory, recoveredAt: snapshotIndex, report: &report, logger: logger)

    // Registered from here on: what follows changes the log.
    pending[group] = nil
    for slot in segments.indices {
      segments[slot].unrecovered.remove(group)
      if let highest = maxEntryIndex[segments[slot].sequence] { segments[slot].maxEntryIndex[group] = highest }
    }
    let state = Group(
      position: LogPosition(mode: mode, snapshotIndex: snapshotIndex, floor: replay.floor, end: replay.log.end),
      hardState: replay.hardState, open: true, owner: owner)
    groups[group] = state
    openGroups += 1
    guard let first = segments.first, let last = segments.last else {
      preconditionFailure("open shared log without segments; phase \(phase)")
    }
    // A leader's snapshot discarded the group's entries before segment `discardBefore`, but no reset of the
    // group's log follows them: the crash came before that segment was written, or it was written by another
    // group's run, while this group was not open. A later snapshot that keeps the log names no segment, so the
    // reset must be in the log before the old entries can be read again.
    let reset: UInt64? =
      if let loaded, discardBefore > 0, replay.resets == 0, first.sequence < discardBefore {
        loaded.snapshot.index
      } else {
        nil
      }
    // The group's hard state and compaction point are only in checkpoints of segments written while it was open
    // and in its own records: if none of them is in the active segment, the segments that hold them could be
    // deleted (they are dead once this group is open) and its state with them. Copy it into the active segment;
    // it is synced before any segment is deleted.
    let stateElsewhere = (state.hardState != nil || state.position.floor > 0) && chunks.last?.sequence != last.sequence
    do throws(StorageError) {
      if let reset, last.sequence < discardBefore {
        try rotate(reset: (group, reset))
      } else if reset != nil || stateElsewhere {
        try appendRecords(try Self.chunk(group: group, reset: reset, records: Self.stateRecords(state)))
        dirty = true
      }
    } catch {
      throw poison(error)
    }
    if let reset { groups[group]?.position.didReset(to: reset) }
    try deleteDeadSegments()
    return RecoveredState(
      hardState: replay.hardState, snapshot: loaded?.snapshot, entries: replay.log.takeEntries(), report: report)
  }

  private func startBatchTimer(_ interval: Duration) {
    timer = WALFiles.batchTimer(every: interval, on: queue) { [weak self] in self?.batchSync() }
  }
}
