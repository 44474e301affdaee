public import QuorumStorage
public import Synchronization

/// Memory storage whose next snapshot stores, once armed (``failures``), fail as on a full disk: nothing is stored
/// and the storage stays usable. With `onlyInstalls`, only stores of a leader's snapshot (those that discard the
/// log) are refused and counted; the node's own snapshots go through. Its next compactions, once armed
/// (``compactFailures``), find no file descriptor (as when the compaction record needs a new segment): nothing is
/// compacted and the storage stays usable.
public final class FullDiskOnSnapshotStorage<Entry: StorableEntry>: ConsensusStorage, Sendable {
  public let inner: MemoryStorage<Entry>
  private let onlyInstalls: Bool
  /// Snapshot stores still to refuse, refused, and stored.
  public let failures = Atomic<Int>(0)
  public let refused = Atomic<Int>(0)
  public let stored = Atomic<Int>(0)
  /// Compactions still to refuse, and refused.
  public let compactFailures = Atomic<Int>(0)
  public let refusedCompactions = Atomic<Int>(0)

  public init(_ inner: MemoryStorage<Entry>, onlyInstalls: Bool) {
    self.inner = inner
    self.onlyInstalls = onlyInstalls
  }

  public func recover() async throws -> RecoveredState<Entry> { try await inner.recover() }
  public func write(_ write: StorageWrite<Entry>) async throws { try await inner.write(write) }
  public func saveSnapshot(_ snapshot: StoredSnapshot, discardingLog: Bool) async throws {
    let counted = discardingLog || !onlyInstalls
    if counted && failures.load(ordering: .relaxed) > 0 {
      failures.subtract(1, ordering: .relaxed)
      refused.add(1, ordering: .relaxed)
      // 28 is ENOSPC: the write of the snapshot's file found the disk full.
      throw StorageError.snapshotNotStored(underlying: .io(operation: "write", path: "test", errno: 28))
    }
    try await inner.saveSnapshot(snapshot, discardingLog: discardingLog)
    if counted { stored.add(1, ordering: .relaxed) }
  }
  public func compact(through index: UInt64) async throws {
    if compactFailures.load(ordering: .relaxed) > 0 {
      compactFailures.subtract(1, ordering: .relaxed)
      refusedCompactions.add(1, ordering: .relaxed)
      // 24 is EMFILE: opening the segment the compaction record needs found no descriptor.
      throw StorageError.descriptorsExhausted(operation: "open", path: "test", errno: 24)
    }
    try await inner.compact(through: index)
  }
  public func close() async throws { try await inner.close() }
}
