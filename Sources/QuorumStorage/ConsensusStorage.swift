public import QuorumCore

/// A log entry that a ``ConsensusStorage`` can persist: it knows its own position.
public protocol StorableEntry: WireCodable, Sendable {
  /// The entry's log position (Raft index, Paxos slot). Positions start at 1.
  var index: UInt64 { get }
}

/// A state-machine snapshot plus the protocol's metadata about it, as stored on disk.
public struct StoredSnapshot: Sendable, Equatable {
  /// The last log position the snapshot covers.
  public var index: UInt64
  /// The term (Raft) or epoch of the entry at ``index``.
  public var term: UInt64
  /// Protocol-specific metadata, such as the membership configuration at ``index``.
  public var metadata: [UInt8]
  /// The state machine's serialised state.
  public var data: [UInt8]

  /// Creates a snapshot record.
  public init(index: UInt64, term: UInt64, metadata: [UInt8] = [], data: [UInt8]) {
    self.index = index
    self.term = term
    self.metadata = metadata
    self.data = data
  }
}

/// How an entry written at a position that is already stored is treated.
public enum LogWriteMode: Sendable, Equatable {
  /// Raft's rule: writing at position `i` replaces the entry at `i` and discards every entry after it.
  case truncateSuffix
  /// Paxos's rule: writing at position `i` replaces only the entry at `i`; later positions stay.
  case replace
}

/// One durable write: an optional new hard state and entries, made durable together.
///
/// A crash in the middle of a write may keep part of it. Implementations must keep the parts in order —
/// entries (and the truncation they imply) before the hard state — so that a recovered hard state always comes
/// with every entry written with it: a Raft hard state's commit index may cover entries of the same write.
public struct StorageWrite<Entry: StorableEntry>: Sendable {
  /// The protocol's small durable state (Raft: term, vote, commit; Paxos: promised ballot), if it changed.
  public var hardState: [UInt8]?
  /// Entries in ascending position order.
  public var entries: [Entry]
  /// Whether the write must be durable when the call returns even under ``FsyncPolicy/batch(interval:)``: it
  /// carries a hard state that a message about to leave promises (a Raft term or vote, a Paxos promise). A
  /// node that voted and forgot it after a power loss could vote twice in one term. Under
  /// ``FsyncPolicy/never`` nothing is synced.
  public var mustSync: Bool

  /// Creates a write.
  public init(hardState: [UInt8]? = nil, entries: [Entry] = [], mustSync: Bool = false) {
    self.hardState = hardState
    self.entries = entries
    self.mustSync = mustSync
  }

  /// Whether there is nothing to write.
  public var isEmpty: Bool { hardState == nil && entries.isEmpty }

  /// Where a write-ahead log puts a write's hard-state record: after its entries (`true`), so that any prefix a
  /// torn write leaves is consistent — the new hard state (a Raft commit index) never survives without the
  /// entries it covers. `FileStorage` and the simulator's disk both follow this one decision.
  package static var hardStateRecordGoesLast: Bool { true }
}

/// What recovery found and did.
public struct RecoveryReport: Sendable, Equatable, CustomStringConvertible {
  /// Log segment files read.
  public var segmentsRead: Int = 0
  /// Records replayed.
  public var recordsRead: Int = 0
  /// Bytes cut from a torn tail (a record the crash left half written), or 0.
  public var truncatedTailBytes: Int = 0
  /// Where the torn tail was cut, if it was: file and offset.
  public var truncatedAt: String?
  /// The segment file whose torn tail was cut, if one was.
  public var truncatedFile: String?
  /// The byte offset in ``truncatedFile`` where the cut was made (the end of the last valid record).
  public var truncatedOffset: Int?
  /// A last segment file without a valid header that recovery removed, if it did: only under
  /// ``FsyncPolicy/never``, whose crash can leave a new segment renamed into place before its header reached
  /// the disk. (Under a policy that syncs, a segment without a valid header is
  /// ``StorageError/corruptRecord(file:offset:reason:)``.)
  public var removedUnfinishedSegment: String?
  /// Snapshot files found damaged and set aside (renamed with a `.corrupt` suffix) because an older valid
  /// snapshot plus the log still covered everything; each is "path: reason".
  public var rejectedSnapshots: [String] = []
  /// Bytes checksummed while making sure that nothing valid follows a torn tail (for tests: the search must
  /// stay within a small multiple of the segment's size).
  var damageScanBytes = 0

  /// Creates an empty report.
  public init() {}

  public var description: String {
    var text = "\(recordsRead) records in \(segmentsRead) segments"
    if truncatedTailBytes > 0 {
      text += "; torn tail of \(truncatedTailBytes) bytes truncated at \(truncatedAt ?? "?")"
    }
    if let removedUnfinishedSegment { text += "; unfinished segment removed: \(removedUnfinishedSegment)" }
    if !rejectedSnapshots.isEmpty { text += "; rejected snapshots: \(rejectedSnapshots.joined(separator: ", "))" }
    return text
  }
}

/// Everything a node made durable before it stopped.
public struct RecoveredState<Entry: StorableEntry>: Sendable {
  /// The last hard state written, if any.
  public var hardState: [UInt8]?
  /// The newest snapshot, if any.
  public var snapshot: StoredSnapshot?
  /// The stored entries after the snapshot, in ascending position order (contiguous in
  /// ``LogWriteMode/truncateSuffix`` mode, possibly with gaps in ``LogWriteMode/replace`` mode).
  public var entries: [Entry]
  /// What recovery found.
  public var report: RecoveryReport

  /// Creates a recovered state.
  public init(
    hardState: [UInt8]? = nil, snapshot: StoredSnapshot? = nil, entries: [Entry] = [],
    report: RecoveryReport = RecoveryReport()
  ) {
    self.hardState = hardState
    self.snapshot = snapshot
    self.entries = entries
    self.report = report
  }
}

/// When written data is forced to the disk.
public enum FsyncPolicy: Sendable, Equatable, CustomStringConvertible {
  /// Every ``ConsensusStorage/write(_:)`` returns only after `fdatasync`: nothing acknowledged is lost.
  case always
  /// Writes return after reaching the operating system; a background sync runs every `interval`. A crash
  /// (of the machine, not the process) can lose up to `interval` of acknowledged writes — but never a vote,
  /// a change of term or a promise: writes marked ``StorageWrite/mustSync`` are synced before they return.
  case batch(interval: Duration)
  /// Never sync; the operating system flushes when it likes. For tests and throw-away clusters only.
  case never

  public var description: String {
    switch self {
    case .always: return "always"
    case .batch(let interval): return "batch(\(interval))"
    case .never: return "never"
    }
  }
}

/// Why storage failed. Corruption is never skipped silently.
public enum StorageError: Error, Sendable, Equatable, CustomStringConvertible {
  /// A system call failed.
  case io(operation: String, path: String, errno: Int32)
  /// A record before the end of the log is damaged: the log cannot be trusted past it.
  case corruptRecord(file: String, offset: Int, reason: String)
  /// A snapshot file is damaged.
  case corruptSnapshot(file: String, reason: String)
  /// A record is larger than the configured limit.
  case recordTooLarge(bytes: Int, limit: Int)
  /// Entries were not in ascending, contiguous order, or started past the end of the log.
  case invalidWrite(String)
  /// The storage was closed.
  case closed
  /// Another process holds the data directory.
  case directoryLocked(path: String)
  /// A file was written in a format version this build does not read, with another ``LogWriteMode``, or with
  /// records larger than the `maxRecordBytes` it is opened with (raise the limit to read them).
  case incompatible(file: String, reason: String)
  /// Opening a file failed because the process (`EMFILE`) or the system (`ENFILE`) has no file descriptor left,
  /// even after waiting a little. Nothing is wrong with the disk, and nothing was half written: the storage
  /// stays usable and the call may be retried (``isRetryable``) once descriptors are free.
  case descriptorsExhausted(operation: String, path: String, errno: Int32)
  /// Storing a snapshot failed before anything durable changed: writing or syncing its temporary file failed
  /// (`underlying` says how — the disk is full, say, or the write reported an I/O error). The stored snapshot,
  /// log and hard state are as they were, the storage stays usable, and the call may be retried
  /// (``isRetryable``): a replica refuses the leader's snapshot for now rather than stop.
  indirect case snapshotNotStored(underlying: StorageError)

  /// Whether the same call may succeed later without reopening the storage: descriptors ran out, or a snapshot
  /// could not be written and nothing changed (``snapshotNotStored(underlying:)``). The failed call left the
  /// storage consistent, and making it again is safe: it changed nothing durable, or (a leader's snapshot whose
  /// superseded segments found no descriptor for their deletion) it took effect, and storing the same snapshot
  /// again finishes it.
  public var isRetryable: Bool {
    switch self {
    case .descriptorsExhausted, .snapshotNotStored: return true
    default: return false
    }
  }

  /// This error, as the failure of writing a snapshot's temporary file, which changes nothing durable: an error
  /// that is already retryable stays as it is; a closed storage stays closed.
  package var asSnapshotNotStored: StorageError {
    switch self {
    case .descriptorsExhausted, .snapshotNotStored, .closed: return self
    default: return .snapshotNotStored(underlying: self)
    }
  }

  public var description: String {
    switch self {
    case .io(let op, let path, let code): return "\(op) failed on \(path): errno \(code)"
    case .corruptRecord(let file, let offset, let reason):
      return "corrupt record in \(file) at byte \(offset): \(reason)"
    case .corruptSnapshot(let file, let reason): return "corrupt snapshot \(file): \(reason)"
    case .recordTooLarge(let bytes, let limit): return "record of \(bytes) bytes exceeds the limit of \(limit)"
    case .invalidWrite(let why): return "invalid write: \(why)"
    case .closed: return "storage closed"
    case .directoryLocked(let path): return "data directory \(path) is locked by another process"
    case .incompatible(let file, let reason): return "incompatible file \(file): \(reason)"
    case .descriptorsExhausted(let op, let path, let code):
      return "\(op) failed on \(path): out of file descriptors (errno \(code)); raise the open-file limit"
    case .snapshotNotStored(let underlying):
      return "snapshot not stored (nothing changed; may be retried): \(underlying)"
    }
  }
}

/// Durable storage for a consensus node: a log of entries, a small hard state, and snapshots.
///
/// Implementations: `MemoryStorage` (nothing survives the process; for tests and benchmarks) and
/// `FileStorage` (segmented write-ahead log with per-record CRC-32C, atomic snapshot files).
/// Methods may do blocking I/O on a storage-owned thread; they never block Swift's cooperative pool.
///
/// Calls may overlap: a node stores its own snapshots (`saveSnapshot` with `discardingLog: false`) from a
/// background task while its loop goes on calling ``write(_:)``, ``compact(through:)`` and, for a snapshot
/// from the leader, `saveSnapshot` with `discardingLog: true`. Each call must be atomic with respect to the
/// others, and a snapshot older than the stored one must be refused with ``StorageError/invalidWrite(_:)``
/// (the node then drops it as superseded) rather than replace a newer one.
public protocol ConsensusStorage<Entry>: Sendable {
  /// The entry type.
  associatedtype Entry: StorableEntry

  /// Reads back everything durable. Call once, before any write.
  func recover() async throws -> RecoveredState<Entry>

  /// Writes a hard state and/or entries; returns once they are durable under the fsync policy.
  func write(_ write: StorageWrite<Entry>) async throws

  /// Writes like ``write(_:)`` and runs `whenDurable` as soon as the write is durable, before returning.
  ///
  /// A storage that does its I/O on a thread of its own runs `whenDurable` on that thread, the moment the sync
  /// returns: a node hands it the messages that had to wait for the write (a follower's acknowledgement), so
  /// they leave without waiting for the node's own task to be scheduled again. `whenDurable` does not run if
  /// the write fails. The default implementation awaits ``write(_:)`` and then runs it.
  func write(_ write: StorageWrite<Entry>, whenDurable: @escaping @Sendable () -> Void) async throws

  /// Stores `snapshot` atomically. With `discardingLog`, every stored entry is dropped (a follower that
  /// installs a leader's snapshot); otherwise entries up to the snapshot's index become eligible for
  /// ``compact(through:)``.
  func saveSnapshot(_ snapshot: StoredSnapshot, discardingLog: Bool) async throws

  /// Discards stored entries at positions up to `index` (which a saved snapshot covers).
  func compact(through index: UInt64) async throws

  /// Flushes and releases resources; later calls throw ``StorageError/closed``.
  func close() async throws
}

extension ConsensusStorage {
  /// Awaits ``write(_:)``, then runs `whenDurable`.
  public func write(_ write: StorageWrite<Entry>, whenDurable: @escaping @Sendable () -> Void) async throws {
    try await self.write(write)
    whenDurable()
  }
}
