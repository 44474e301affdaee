import Glibc
public import QuorumCore
import Synchronization

/// One write-ahead log shared by every consensus group of a process: each group's writes are records in the same
/// segments, so the writes of all groups waiting together reach the disk with one `pwrite` and one `fdatasync`.
///
/// A process that hosts many groups, each with a ``FileStorage`` of its own, syncs one file per group: on a
/// disk where every `fdatasync` is a round trip to the device, sixteen logs synced at once take several times as
/// long as one log carrying their sixteen writes (the host benchmark measures both). A shared log makes the
/// cost of durability per turn of the writer, not per group.
///
/// ``storage(for:mode:maxRecordBytes:entry:)`` gives each group a ``SharedLogStorage``: a
/// ``ConsensusStorage`` with the same rules, the same recovery and the same errors as a ``FileStorage``. Each
/// group chooses its own entry type and ``LogWriteMode`` (a Raft group and a Multi-Paxos group can share one
/// log); snapshots stay one file per snapshot, in a directory per group.
///
/// ## Directory layout
///
/// ```
/// <directory>/LOCK                                  flock'ed while any group is open: one process per directory
/// <directory>/wal/00000000000000000007.wal          shared log segments, numbered consecutively
/// <directory>/wal/spare.ready                       a zero-filled segment prepared in advance
/// <directory>/snapshots/<group>/snapshot-….snap     each group's newest two snapshots
/// ```
///
/// ## Records
///
/// The record framing is ``FileStorage``'s (`[u32 CRC-32C][u32 length][u8 type][payload]`). A segment starts
/// with a segment header whose magic is `QSWL` (mode byte 255: each group has its own mode); every other record
/// is a sync marker (type 8, as ``FileStorage`` writes them, between group records and never in one) or a
/// *group record* (type 6): a varint group number, then that group's records exactly as its own log would
/// hold them (entries, hard state, compaction point, reset), each with its own CRC. The group record's CRC
/// covers them all, so a group's write is kept whole or lost whole by a crash. A group record holding a
/// *forget* record (type 7) alone voids every earlier record of its group (``forget(group:)``).
///
/// Every segment starts with a *checkpoint*: after its header, one group record per group with state to keep
/// (its hard state and compaction point, and the reset of a group whose leader's snapshot discarded its log),
/// so deleting older segments never loses a group's latest hard state.
///
/// ## Recovery
///
/// The first group to call ``SharedLogStorage/recover()`` locks the directory and reads every segment once,
/// with ``FileStorage``'s rules for torn tails and corruption, noting where each group's records are (not the
/// records themselves: a few dozen bytes per record of a group not yet recovered, so a log of many small
/// writes still costs memory in proportion to its length until its groups recover). Each group then reads back
/// and replays its own records with its own entry type when it recovers, exactly as a ``FileStorage``
/// replays its log, so a group's entry that does not decode is reported to that group (with the file and
/// offset). The torn tail of the log, if one was cut, appears in the report of every group.
///
/// ## Deleting segments
///
/// The oldest segment (never the active one) is deleted once every group with entries in it has compacted past
/// them (or installed a leader's snapshot that discarded them), and no group whose records it holds is still to
/// recover: a group that is never opened again keeps the segments that hold its records, and so every later
/// one, until ``forget(group:)`` erases it. A group that recovers when its last record is in an older segment
/// (it was not open when the active one began) gets a copy of its hard state and compaction point in the active
/// segment, synced before any segment is deleted, so its state outlives the segments it was written in.
/// ``pinningGroups()`` names the groups that keep the oldest segment alive, so a host can ask them to snapshot.
///
/// A group installing a leader's snapshot (`saveSnapshot` with `discardingLog`) starts a new segment whose
/// checkpoint resets that group's log: its snapshot file names the segment, and recovery ignores the group's
/// entries before it, as in ``FileStorage``. If a crash came before that segment was written, the group's
/// recovery writes the reset (a later snapshot that keeps the log names no segment, so the reset must be in
/// the log while older segments hold the discarded entries).
///
/// ## Threads
///
/// As ``FileStorage``: every blocking call runs on one serial dispatch queue; writes waiting together, from any
/// group, are appended with one `pwrite` and synced with one `fdatasync`. Snapshot files are the exception:
/// their bodies are written and synced on a queue of their own, so a group saving or installing a large
/// snapshot holds up no other group's writes; the log's queue then only adds a snapshot's header (for an
/// installed one: the segment it names), renames it into place and, for an install, starts the new segment. A failed write or sync makes every
/// group's storage refuse calls until the last of them is closed and they are reopened.
public final class SharedWriteAheadLog: Sendable {
  /// The data directory.
  public let directory: String
  /// When writes are synced.
  public let fsyncPolicy: FsyncPolicy
  /// The size at which segments are rotated.
  public let segmentBytes: Int
  let core: SharedLogCore

  /// Creates the log in `directory` (created if missing). Nothing is opened until a group recovers.
  ///
  /// - Parameters:
  ///   - directory: The data directory; one shared log (process-wide, across processes) at a time.
  ///   - fsync: When writes are made durable (see ``FileStorage/init(directory:mode:fsync:segmentBytes:maxRecordBytes:preallocation:logger:)``).
  ///   - segmentBytes: Segment size; at least 4 KiB.
  ///   - preallocation: How segments reserve space.
  ///   - logger: Where recovery reports and failures go.
  public init(
    directory: String, fsync: FsyncPolicy = .always, segmentBytes: Int = 64 << 20,
    preallocation: WALPreallocation = .zeroFilled, logger: QuorumLogger = QuorumLogger(label: "quorum.storage")
  ) {
    precondition(segmentBytes >= 4096, "segmentBytes must be at least 4096, got \(segmentBytes)")
    self.directory = directory
    self.fsyncPolicy = fsync
    self.segmentBytes = segmentBytes
    core = SharedLogCore(
      directory: directory, policy: fsync, segmentBytes: segmentBytes, preallocation: preallocation, logger: logger)
  }

  /// The storage of `group`, whose entries are `Entry`s written in `mode`. One storage per group at a time.
  ///
  /// - Parameters:
  ///   - group: The group's number in this log; the same number must name the same group across restarts (a
  ///     `QuorumHost` member checks it against the identity it records in ``sideFileDirectory(group:)``).
  ///   - mode: How the group's overwrites are treated; recorded beside the group's snapshots the first time it
  ///     recovers, and reopening it in the other mode throws ``StorageError/incompatible(file:reason:)``.
  ///   - maxRecordBytes: The largest entry encoding or hard state accepted for the group.
  ///   - entry: The group's entry type.
  public func storage<Entry: StorableEntry>(
    for group: UInt64, mode: LogWriteMode = .truncateSuffix, maxRecordBytes: Int = 64 << 20,
    entry: Entry.Type = Entry.self
  ) -> SharedLogStorage<Entry> {
    precondition(
      maxRecordBytes > 0 && maxRecordBytes <= Int(UInt32.max),
      "maxRecordBytes must fit in 32 bits, got \(maxRecordBytes)")
    return SharedLogStorage(core: core, group: group, mode: mode, maxRecordBytes: maxRecordBytes)
  }

  /// Whether `directory` holds a shared log (`true`) or one group's own log, a ``FileStorage``'s (`false`), as
  /// the magic of its oldest readable segment says; `nil` when it holds no segment. Both keep their segments in
  /// `directory/wal`, so only their contents tell them apart.
  public static func holdsSharedLog(directory: String) -> Bool? {
    let walDirectory = directory + "/wal"
    guard let names = try? FileSystem.list(walDirectory) else { return nil }
    let segments = names.filter { name in
      name.hasSuffix(".wal") && name.count > 4 && name.dropLast(4).allSatisfy { $0.isASCII && $0.isNumber }
    }
    for name in segments.sorted() {
      guard let file = try? PosixFile.open(walDirectory + "/" + name, flags: O_RDONLY) else { continue }
      defer { file.close() }
      // The segment header record: CRC, length and type, then the magic.
      var header = [UInt8](repeating: 0, count: WALFormat.headerBytes + 4)
      let read = header.withUnsafeMutableBytes { raw in
        Result { () throws(StorageError) in try file.read(into: raw, at: 0) }
      }
      guard (try? read.get()) == header.count else { continue }
      let magic = header[WALFormat.headerBytes...].reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
      if magic == SharedLogCore.segmentMagic { return true }
      if magic == WALFormat.segmentMagic { return false }
    }
    return nil
  }

  /// The number of `fdatasync` calls made on the log so far; for tests and benchmarks.
  public func syncCount() async throws -> Int {
    let core = self.core
    return try await core.perform { () throws(StorageError) in core.syncCount }
  }

  /// The sequence numbers of the segments on disk, oldest first (empty while no group is open).
  public func segmentSequences() async throws -> [UInt64] {
    let core = self.core
    return try await core.perform { () throws(StorageError) in core.segmentSequences }
  }

  /// The groups whose entries keep the oldest segment on disk: each has entries in it above its compaction
  /// point, or has not recovered since the log was opened (a group this process does not run is one). A group
  /// among the first that snapshots and compacts lets the segment go; one among the second, only
  /// ``forget(group:)``.
  public func pinningGroups() async throws -> [UInt64] {
    let core = self.core
    return try await core.perform { () throws(StorageError) in core.pinningGroups() }
  }

  /// Erases `group` from the log: a durable *forget* record makes every earlier record of the group void, its
  /// snapshot directory is deleted, and the segments it kept on disk can go. For a group this process no
  /// longer runs (removed from this member); afterwards the group is as if it had never written here.
  ///
  /// Forgetting a group deletes this member's replica of it. Do it only once the member has been removed from
  /// the group's configuration: a replica that forgets its log and its vote and then takes part again under
  /// the same node could vote twice in one term.
  ///
  /// The group must not have been recovered since the log was opened (otherwise
  /// ``StorageError/invalidWrite(_:)``). Opens the log if no group has it open, and releases it again after; a
  /// directory locked by another process throws as ``SharedLogStorage/recover()`` does, and a directory with no
  /// log is left as it is. The forget record is synced whatever the ``fsyncPolicy``. A crash after the forget
  /// record is durable and before the snapshots are deleted is finished the next time the log is opened; so is a
  /// deletion that fails, after which every group's storage refuses calls until the log is reopened.
  ///
  /// - Returns: Whether the log or the snapshot directory held anything of the group.
  @discardableResult
  public func forget(group: UInt64) async throws -> Bool {
    let core = self.core
    return try await core.perform { () throws(StorageError) in try core.forget(group: group) }
  }
}

/// One group's storage in a ``SharedWriteAheadLog``: a ``ConsensusStorage`` with ``FileStorage``'s rules.
///
/// Differences from ``FileStorage``: ``recover()`` must come before any other call (a write before it throws
/// ``StorageError/invalidWrite(_:)`` rather than recovering implicitly, and opens nothing), and may be called
/// once per storage. While a group is open, another storage for the same group number is refused
/// (``StorageError/invalidWrite(_:)``), and closing it leaves the open one alone.
public final class SharedLogStorage<Entry: StorableEntry>: ConsensusStorage {
  /// The group's number in the log.
  public let group: UInt64
  /// The group's overwrite rule.
  public let mode: LogWriteMode
  /// The largest record payload (entry encoding or hard state) accepted.
  public let maxRecordBytes: Int
  let core: SharedLogCore
  /// Set by ``close()``; checked before queueing anything.
  let closedFlag = Atomic<Bool>(false)

  init(core: SharedLogCore, group: UInt64, mode: LogWriteMode, maxRecordBytes: Int) {
    self.core = core
    self.group = group
    self.mode = mode
    self.maxRecordBytes = maxRecordBytes
  }

  private func checkOpen() throws(StorageError) {
    if closedFlag.load(ordering: .acquiring) { throw .closed }
  }

  /// This storage's identity in the log: another storage for the same group number is refused.
  private var owner: ObjectIdentifier { ObjectIdentifier(self) }

  /// Runs `body`; a call that raced with ``close()`` and found the group (or the whole log) gone throws
  /// ``StorageError/closed``.
  private func mappingClosed<T>(_ body: () async throws -> T) async throws -> T {
    do {
      return try await body()
    } catch let error as StorageError {
      if case .invalidWrite = error, closedFlag.load(ordering: .acquiring) { throw StorageError.closed }
      throw error
    }
  }

  /// Opens the log if no group has yet, and replays this group's records; see ``SharedWriteAheadLog``.
  public func recover() async throws -> RecoveredState<Entry> {
    try checkOpen()
    let (core, group, owner, mode, limit) = (self.core, self.group, self.owner, self.mode, self.maxRecordBytes)
    return try await mappingClosed {
      try await core.perform { () throws(StorageError) in
        try core.recover(group: group, owner: owner, mode: mode, maxRecordBytes: limit, as: Entry.self)
      }
    }
  }

  /// Appends the hard state and entries; returns once they are durable under the fsync policy.
  public func write(_ write: StorageWrite<Entry>) async throws {
    try await append(write, whenDurable: nil)
  }

  /// Appends like ``write(_:)``; `whenDurable` runs on the log's I/O thread right after the sync that made the
  /// write durable (see ``ConsensusStorage/write(_:whenDurable:)``).
  public func write(_ write: StorageWrite<Entry>, whenDurable: @escaping @Sendable () -> Void) async throws {
    try await append(write, whenDurable: whenDurable)
  }

  private func append(_ write: StorageWrite<Entry>, whenDurable: (@Sendable () -> Void)?) async throws {
    try checkOpen()
    if write.isEmpty {
      whenDurable?()
      return
    }
    let encoded = try WALFormat.encode(write, mode: mode, maxRecordBytes: maxRecordBytes)
    try await mappingClosed { try await core.write(group: group, owner: owner, encoded, whenDurable: whenDurable) }
  }

  /// Writes `snapshot` atomically into the group's snapshot directory; keeps its newest two. With
  /// `discardingLog`, the log continues in a new segment whose checkpoint resets this group's log.
  public func saveSnapshot(_ snapshot: StoredSnapshot, discardingLog: Bool) async throws {
    try checkOpen()
    let (core, group, owner) = (self.core, self.group, self.owner)
    try await mappingClosed {
      let closed: @Sendable () -> Bool = { self.closedFlag.load(ordering: .acquiring) }
      if discardingLog {
        try await core.saveSnapshotDiscardingLog(group: group, owner: owner, snapshot, closed: closed)
      } else {
        try await core.saveSnapshotKeepingLog(group: group, owner: owner, snapshot, closed: closed)
      }
    }
  }

  /// Records the group's compaction point and deletes the oldest segments no group needs any more.
  public func compact(through index: UInt64) async throws {
    try checkOpen()
    let (core, group, owner) = (self.core, self.group, self.owner)
    try await mappingClosed {
      try await core.perform { () throws(StorageError) in try core.compact(group: group, owner: owner, through: index) }
    }
  }

  /// Syncs the log and closes this group's storage; the last group closed releases the files and the
  /// directory lock. Later calls throw ``StorageError/closed``; closing twice is harmless.
  public func close() async throws {
    if closedFlag.exchange(true, ordering: .acquiringAndReleasing) { return }
    let (core, group, owner) = (self.core, self.group, self.owner)
    try await core.perform { () throws(StorageError) in try core.close(group: group, owner: owner) }
  }
}
