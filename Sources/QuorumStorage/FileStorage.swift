public import QuorumCore

/// How ``FileStorage`` reserves disk space for a new write-ahead-log segment.
public enum WALPreallocation: Sendable, Equatable {
  /// Write the whole segment with zeros (a background thread prepares the next one) so later `fdatasync`s
  /// only flush data: the fastest durable appends, at the cost of writing each segment twice.
  case zeroFilled
  /// Reserve the blocks with `posix_fallocate`: cheap, but each sync still converts unwritten extents.
  case allocated
  /// Grow the file as records are appended.
  case none
}

/// Durable storage in a directory: a segmented write-ahead log with a CRC-32C per record, and snapshot files
/// written atomically.
///
/// ## Directory layout
///
/// ```
/// <directory>/LOCK                                   flock'ed while open: one process per directory
/// <directory>/wal/00000000000000000007.wal           log segments, numbered consecutively
/// <directory>/wal/spare.ready                        a zero-filled segment prepared in advance
/// <directory>/snapshots/snapshot-00000000000000001500.snap   the newest two snapshots
/// ```
///
/// ## Write-ahead-log records
///
/// A segment is a sequence of records, each
///
/// ```
/// [u32 CRC-32C][u32 payload length][u8 type][payload]      integers little-endian
/// ```
///
/// The CRC covers the length, the type and the payload (everything after itself). Types:
///
/// | type | record | payload |
/// |---|---|---|
/// | 1 | segment header (always first) | magic `QWAL` (u32), version (u8: 3, or 2 or 1 from an older build), write mode (u8: 0 truncateSuffix, 1 replace), segment number (u64) |
/// | 2 | entry | the entry's `WireCodable` encoding |
/// | 3 | hard state | the opaque bytes; the last one replayed wins |
/// | 4 | compaction point | varint position: entries up to it are gone |
/// | 5 | reset | varint position: every entry held so far is dropped; the log continues after it |
/// | 8 | sync marker (version 2) | varint offset: every byte of the segment before it had been synced when this was written |
/// | 9 | filler (version 3) | empty: ends an append (or a checkpoint) that would otherwise end in the last 8 bytes of a 512-byte sector; skipped |
///
/// A sync marker starts an append when the log was synced since the last marker (so at most one per
/// `fdatasync`; none under ``FsyncPolicy/never``). A version 1 segment, written by an older build, is read and
/// appended to without markers until it is rotated away; an older build refuses a version 2 segment with
/// ``StorageError/incompatible(file:reason:)``. Likewise a version 2 segment goes on without fillers until it is
/// rotated away, and a build that reads only versions 1 and 2 refuses a version 3 segment as incompatible. A filler
/// keeps the next append from starting where a lost first sector could not be told from corruption (recovery
/// needs zeros through at least a record header, 9 bytes, from the damaged record to the end of its sector).
///
/// Type 0 does not exist, so zeros — the unwritten rest of a preallocated segment — never parse as a record.
///
/// The hard state lives in the log, not in a file of its own: a ``ConsensusStorage/write(_:)`` that carries a
/// hard state and entries appends their records with one `pwrite` and makes both durable with one
/// `fdatasync`. Within one write the records go reset (when needed), entries, then hard state: a crash may
/// leave any prefix of them on the disk, and this order means a torn write loses the new hard state rather
/// than keeping it over the old entries (a Raft commit index in it could then cover entries that were never
/// committed). Every segment starts with a *checkpoint*: its header, then the current hard state and
/// compaction point, so deleting older segments never loses them.
///
/// Overwrites are implied by replay. In ``LogWriteMode/truncateSuffix`` mode an entry record at position
/// `i` discards every entry at or after `i` held so far; in ``LogWriteMode/replace`` mode it replaces only
/// `i`. A segment is rotated when the next write would pass `segmentBytes` (one write never spans two
/// segments, so a single larger write makes a larger segment). A new segment is written under a temporary
/// name, synced, renamed into place, and the directory synced.
///
/// ## Snapshot files
///
/// ```
/// offset  0  u32 magic "QSNP"       offset 28  u64 discard-before segment (0: none)
///         4  u32 version (1)               36  u64 metadata length
///         8  u32 CRC-32C of bytes 12…      44  u64 data length
///        12  u64 index                     52  metadata, then data
///        20  u64 term
/// ```
///
/// Written as a temporary file (`snapshot-<index>.snap….tmp`), synced, renamed, the directory synced; the
/// newest two are kept.
/// A snapshot saved with `discardingLog` records the number of the segment the log continues in: entries in
/// older segments are ignored by recovery even if the crash came before the log was reset.
///
/// ## Recovery rules
///
/// ``recover()`` replays every segment in order and verifies every CRC.
/// - **Torn tail.** If the last segment ends with damage — a partial header, a partial payload, a CRC
///   mismatch, non-zero bytes where the zeros should start — and no valid record follows it, the damage is
///   what a crash leaves mid-write. It is cut off (overwritten with zeros, or the file truncated), reported in
///   ``RecoveryReport`` (``RecoveryReport/truncatedTailBytes``, file, offset) and logged; new records go
///   right after the last valid one.
/// - **Torn write of several pages.** The page cache writes an append's pages back in any order, so a crash
///   may keep a later page of it and lose an earlier one, which reads back as zeros: valid records then follow
///   the damage. In a version 2 segment such damage is cut as a torn tail too (everything from the damaged
///   record on) when it shows a lost sector (a 512-byte-aligned sector of zeros, or zeros from the damaged
///   record to the end of its sector) and no valid sync marker follows it. A torn write only damages bytes
///   not yet synced, and a marker after damaged bytes says they had been (the first append after each sync
///   starts with one, as does the first after opening unless the policy is ``FsyncPolicy/never``): such damage
///   is corruption. A marker records its own offset, so bytes inside an entry that happen to form one do not
///   count. With no marker after it, recovery cannot tell a torn write from media damage that zeroed a sector
///   of the appends made since the last append that followed a sync (under ``FsyncPolicy/always``, the last
///   append), or damage that began earlier and wiped out every marker after it. It takes it for the torn
///   write, by far the likelier, and cuts it, as it cuts damage at the very end of the log; the report and the
///   log say what was cut.
/// - **Corruption.** A damaged record followed by a valid one (other than in a torn write of several pages),
///   damage in any segment but the last, a record with a valid CRC that does not decode, a missing segment
///   number, or (in ``LogWriteMode/truncateSuffix`` mode) a gap between entries throws
///   ``StorageError/corruptRecord(file:offset:reason:)``. Nothing is skipped silently.
/// - **Snapshots.** The newest valid snapshot is used. A damaged newer snapshot is set aside (renamed
///   `….corrupt`, listed in ``RecoveryReport/rejectedSnapshots``) only if the log still holds every entry
///   after the older snapshot (no compaction or reset past it); otherwise recovery throws
///   ``StorageError/corruptSnapshot(file:reason:)``. An unknown format version throws
///   ``StorageError/incompatible(file:reason:)``.
/// - Returned entries exclude those the snapshot covers.
///
/// ## Write rules
///
/// As ``MemoryStorage``: entries ascend from position 1 (contiguous in ``LogWriteMode/truncateSuffix``
/// mode), none at or below the snapshot, none past the end of the log in ``LogWriteMode/truncateSuffix``
/// mode; ``compact(through:)`` may not pass the snapshot; a snapshot may not be older than the stored one.
/// Violations throw ``StorageError/invalidWrite(_:)`` and change nothing.
///
/// ## Threads
///
/// Every blocking call runs on a dedicated serial dispatch queue, never on Swift's cooperative pool; entries
/// are encoded and checksummed by the caller. Writes waiting together are appended with one `pwrite` and
/// synced with one `fdatasync` (group commit). A failed write or sync leaves the storage refusing every
/// call with that error until it is reopened: what the kernel holds after a failed `fdatasync` cannot be
/// trusted. Call ``recover()`` first; a write before it recovers implicitly and discards what it read.
public final class FileStorage<Entry: StorableEntry>: ConsensusStorage {
  /// The data directory.
  public let directory: String
  /// The overwrite rule.
  public let mode: LogWriteMode
  /// When writes are synced.
  public let fsyncPolicy: FsyncPolicy
  /// The size at which log segments are rotated.
  public let segmentBytes: Int
  /// The largest record payload (entry encoding or hard state) accepted.
  public let maxRecordBytes: Int
  /// How segments are preallocated.
  public let preallocation: WALPreallocation
  let core: FileStorageCore<Entry>

  /// Creates storage in `directory` (created if missing). Nothing is opened until ``recover()``.
  ///
  /// - Parameters:
  ///   - directory: The data directory; one ``FileStorage`` (process-wide, across processes) at a time.
  ///   - mode: How an entry written at a stored position is treated; recorded in every segment, and
  ///     reopening with the other mode throws ``StorageError/incompatible(file:reason:)``.
  ///   - fsync: When writes are made durable. Under ``FsyncPolicy/never`` structural changes (new segments,
  ///     snapshots, compaction) are not synced either, so a machine crash may leave a log that does not
  ///     recover.
  ///   - segmentBytes: Segment size; at least 4 KiB.
  ///   - maxRecordBytes: The largest record payload accepted, and the largest read back during recovery: a
  ///     record written under a larger limit makes recovery throw ``StorageError/incompatible(file:reason:)``
  ///     (it is never taken for damage), so lower the limit only for a new directory.
  ///   - preallocation: How segments reserve space.
  ///   - logger: Where recovery reports and failures go.
  public init(
    directory: String, mode: LogWriteMode = .truncateSuffix, fsync: FsyncPolicy = .always,
    segmentBytes: Int = 64 << 20, maxRecordBytes: Int = 64 << 20, preallocation: WALPreallocation = .zeroFilled,
    logger: QuorumLogger = QuorumLogger(label: "quorum.storage")
  ) {
    precondition(segmentBytes >= 4096, "segmentBytes must be at least 4096, got \(segmentBytes)")
    precondition(
      maxRecordBytes > 0 && maxRecordBytes <= Int(UInt32.max),
      "maxRecordBytes must fit in 32 bits, got \(maxRecordBytes)")
    self.directory = directory
    self.mode = mode
    self.fsyncPolicy = fsync
    self.segmentBytes = segmentBytes
    self.maxRecordBytes = maxRecordBytes
    self.preallocation = preallocation
    core = FileStorageCore(
      directory: directory, mode: mode, policy: fsync, segmentBytes: segmentBytes, maxRecordBytes: maxRecordBytes,
      preallocation: preallocation, logger: logger)
  }

  /// Locks the directory and replays it; see the recovery rules above. Calling it again re-reads the files.
  ///
  /// Throws ``StorageError/directoryLocked(path:)`` if another ``FileStorage`` holds the directory.
  public func recover() async throws -> RecoveredState<Entry> {
    let core = self.core
    return try await core.perform { () throws(StorageError) in try core.recover() }
  }

  /// Appends the hard state and entries; returns once they are durable under the fsync policy.
  public func write(_ write: StorageWrite<Entry>) async throws {
    try await append(write, whenDurable: nil)
  }

  /// Appends like ``write(_:)``; `whenDurable` runs on the storage's I/O thread right after the sync that made
  /// the write durable (see ``ConsensusStorage/write(_:whenDurable:)``).
  public func write(_ write: StorageWrite<Entry>, whenDurable: @escaping @Sendable () -> Void) async throws {
    try await append(write, whenDurable: whenDurable)
  }

  private func append(_ write: StorageWrite<Entry>, whenDurable: (@Sendable () -> Void)?) async throws {
    if write.isEmpty {
      if core.closedFlag.load(ordering: .acquiring) { throw StorageError.closed }
      whenDurable?()
      return
    }
    let encoded = try WALFormat.encode(write, mode: mode, maxRecordBytes: maxRecordBytes)
    try await core.write(encoded, whenDurable: whenDurable)
  }

  /// Writes `snapshot` atomically; keeps the newest two snapshot files.
  ///
  /// With `discardingLog`, the log continues in a new segment that starts with a reset to the snapshot's
  /// index, and every older segment is deleted.
  ///
  /// Without `discardingLog`, the file is written and synced on a separate thread while log writes go on,
  /// and only renamed into place in order with them: log writes do not wait for a large snapshot.
  public func saveSnapshot(_ snapshot: StoredSnapshot, discardingLog: Bool) async throws {
    let core = self.core
    if !discardingLog {
      try await core.saveSnapshotKeepingLog(snapshot)
      return
    }
    try await core.perform { () throws(StorageError) in
      try core.saveSnapshot(snapshot, discardingLog: discardingLog)
    }
  }

  /// Records the compaction point and deletes the oldest segments whose entries all lie at or below
  /// `index`. The active segment is never deleted.
  public func compact(through index: UInt64) async throws {
    let core = self.core
    try await core.perform { () throws(StorageError) in try core.compact(through: index) }
  }

  /// Syncs, closes the files and releases the directory lock; later calls throw ``StorageError/closed``.
  /// Closing twice is harmless.
  public func close() async throws {
    let core = self.core
    try await core.perform { () throws(StorageError) in try core.close() }
  }

  /// The number of `fdatasync` calls made on the log so far; for tests and benchmarks.
  public func syncCount() async throws -> Int {
    let core = self.core
    return try await core.perform { () throws(StorageError) in core.syncCount }
  }
}
