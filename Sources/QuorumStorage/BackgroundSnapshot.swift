public import QuorumCore

/// The bookkeeping of a node that encodes and stores its snapshots in the background: at most one snapshot
/// in flight, its result handed back to the node's run loop, and the task awaited before the node stops.
///
/// The node starts the task with ``start(on:storing:to:encode:report:)`` (on its runtime's executor, so a
/// simulation schedules it with everything else) from a copy of its state machine (a
/// copy-on-write value, cheap until the loop next applies). The task's result comes back through the node's
/// own inputs (`report`), the loop passes it to ``finished(_:)``, and ``takeStored()`` later hands the
/// stored snapshot over for compaction — or rethrows the storage failure, which stops the node like any
/// other failed write.
///
/// Usable from inlinable code, with its state internal rather than private: the replica, whose body is inlinable
/// so that each application compiles it for its engine and machine, checks it on every turn.
@usableFromInline package struct BackgroundSnapshot<Snapshot: Sendable> {
  @usableFromInline var task: Task<Void, Never>?
  @usableFromInline var stored: Snapshot?
  @usableFromInline var failure: (any Error)?

  @inlinable package init() {}

  /// Whether a snapshot is being made or waits to be recorded.
  @inlinable package var isBusy: Bool { task != nil || stored != nil }

  /// Starts a task that encodes a snapshot (`encode`), stores it (keeping the log) and reports the outcome.
  @usableFromInline package mutating func start<Entry>(
    on runtime: NodeRuntime, storing stored: @escaping @Sendable (Snapshot) -> StoredSnapshot,
    to storage: any ConsensusStorage<Entry>,
    encode: @escaping @Sendable () -> Snapshot,
    report: @escaping @Sendable (Result<Snapshot, any Error>) async -> Void
  ) {
    precondition(task == nil, "a snapshot is already being made")
    task = runtime.detached(priority: .utility) {
      let snapshot = encode()
      do {
        try await storage.saveSnapshot(stored(snapshot), discardingLog: false)
        await report(.success(snapshot))
      } catch {
        await report(.failure(error))
      }
    }
  }

  /// Why ``finished(_:)`` dropped a snapshot.
  @usableFromInline package enum Drop: Sendable {
    /// Refused as older than the stored one (a leader's snapshot was installed meanwhile), with the reason.
    case superseded(String)
    /// Not stored for a retryable reason (``StorageError/isRetryable``: a passing want of file descriptors, or a
    /// temporary file that could not be written), with the error: nothing was stored or damaged, and the node
    /// should take another.
    case notStored(String)
  }

  /// Records the task's outcome. A snapshot refused as older than the stored one (a leader's snapshot was
  /// installed meanwhile), or not stored for a retryable reason (a passing want of file descriptors, or a
  /// temporary file that could not be written: ``StorageError/isRetryable``), is dropped; returns which and why
  /// when that happened.
  @usableFromInline package mutating func finished(_ result: Result<Snapshot, any Error>) -> Drop? {
    task = nil
    switch result {
    case .success(let snapshot):
      stored = snapshot
    case .failure(StorageError.invalidWrite(let reason)):
      return .superseded(reason)
    case .failure(let error as StorageError) where error.isRetryable:
      // Out of descriptors, or the file could not be written (a full disk): nothing was stored or damaged; the
      // node snapshots again later.
      return .notStored("\(error)")
    case .failure(let error):
      failure = error
    }
    return nil
  }

  /// The stored snapshot waiting to be recorded, if any; throws the task's storage failure.
  @inlinable package mutating func takeStored() throws -> Snapshot? {
    if let failure { throw failure }
    defer { stored = nil }
    return stored
  }

  /// Hands over the running task, for the node to await before its storage is closed. The node closes
  /// its inputs first, so a task waiting for room there to report is released.
  @usableFromInline package mutating func detachTask() -> Task<Void, Never>? {
    defer { task = nil }
    return task
  }
}
