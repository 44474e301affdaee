import Synchronization

/// Storage that keeps everything in memory: nothing survives the process.
///
/// `MemoryStorage` implements the whole ``ConsensusStorage`` contract — both ``LogWriteMode``s, snapshots,
/// compaction and the validation rules of ``FileStorage`` — without encoding anything, so tests and
/// benchmarks pay only for the protocol under test. ``recover()`` returns what a restarted node would find
/// had every write been durable; it may be called at any time and as often as wanted.
///
/// Writes are validated exactly as ``FileStorage`` validates them: entries ascend from position 1 (contiguous
/// in ``LogWriteMode/truncateSuffix`` mode), none at or below the snapshot, and in
/// ``LogWriteMode/truncateSuffix`` mode none past the end of the log.
public final class MemoryStorage<Entry: StorableEntry>: ConsensusStorage {
  private struct State: ~Copyable, Sendable {
    var position: LogPosition
    var log: EntryLog<Entry>
    var hardState: [UInt8]?
    var snapshot: StoredSnapshot?
    var closed = false
  }

  private let state: Mutex<State>

  /// The overwrite rule this storage applies.
  public let mode: LogWriteMode

  /// Creates empty storage applying `mode`.
  public init(mode: LogWriteMode = .truncateSuffix) {
    self.mode = mode
    state = Mutex(State(position: LogPosition(mode: mode), log: EntryLog(mode: mode)))
  }

  /// Returns the stored hard state, the newest snapshot and the entries after it.
  public func recover() async throws -> RecoveredState<Entry> {
    try state.withLock { state throws(StorageError) in
      if state.closed { throw .closed }
      let entries = state.log.entries(after: state.position.base)
      var report = RecoveryReport()
      report.recordsRead = entries.count
      return RecoveredState(hardState: state.hardState, snapshot: state.snapshot, entries: entries, report: report)
    }
  }

  /// Stores a hard state and/or entries; it is "durable" at once.
  public func write(_ write: StorageWrite<Entry>) async throws {
    try LogPosition.checkShape(write.entries, mode: mode)
    try state.withLock { state throws(StorageError) in
      if state.closed { throw .closed }
      let entries = write.entries
      let count = entries.count
      if count > 0 {
        let first = entries[0].index
        let last = entries[count - 1].index
        if let resetPoint = try state.position.check(first: first, last: last) {
          state.log.reset(to: resetPoint)
          state.position.didReset(to: resetPoint)
        }
        var slot = 0
        while slot < count {
          let index = entries[slot].index
          let stored = state.log.append(entries[slot], at: index)
          precondition(stored, "entry \(index) rejected after validation; log end \(state.log.end)")
          slot += 1
        }
        state.position.didAppend(first: first, last: last)
      }
      if let hardState = write.hardState { state.hardState = hardState }
    }
  }

  /// Stores `snapshot`; with `discardingLog`, drops every stored entry.
  ///
  /// Throws ``StorageError/invalidWrite(_:)`` if `snapshot` is older than the stored snapshot.
  public func saveSnapshot(_ snapshot: StoredSnapshot, discardingLog: Bool) async throws {
    try state.withLock { state throws(StorageError) in
      if state.closed { throw .closed }
      if snapshot.index < state.position.snapshotIndex {
        throw .invalidWrite(
          "snapshot at \(snapshot.index) is older than the stored snapshot at \(state.position.snapshotIndex)")
      }
      state.snapshot = snapshot
      state.position.snapshotIndex = snapshot.index
      if discardingLog {
        state.log.reset(to: snapshot.index)
        state.position.didReset(to: snapshot.index)
      }
    }
  }

  /// Drops the entries at positions up to `index`, which must not pass the stored snapshot.
  public func compact(through index: UInt64) async throws {
    try state.withLock { state throws(StorageError) in
      if state.closed { throw .closed }
      guard index > state.position.floor else { return }
      if index > state.position.snapshotIndex {
        throw .invalidWrite(
          "compaction through \(index) passes the snapshot at \(state.position.snapshotIndex)")
      }
      state.log.removeThrough(index)
      state.position.floor = index
    }
  }

  /// Drops everything; later calls throw ``StorageError/closed``. Closing twice is harmless.
  public func close() async throws {
    state.withLock { state in
      state.closed = true
      state.log.reset(to: 0)
      state.snapshot = nil
      state.hardState = nil
    }
  }
}
