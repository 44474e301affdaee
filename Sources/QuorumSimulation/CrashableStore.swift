public import QuorumCore

/// A value on a simulated disk that distinguishes what a running node sees from what survives a crash.
///
/// Updates apply to ``current`` at once and are queued until ``sync()`` makes them durable, as writes sit in
/// the page cache until `fsync`. ``crash(using:)`` keeps the durable value plus a random prefix of the
/// queued updates (the kernel may have flushed some of them on its own), and discards the rest. A protocol
/// that acknowledges something before syncing it loses it here, as it would on a real machine.
public struct CrashableStore<Value> {
  /// What the running node reads.
  public private(set) var current: Value
  /// What is certain to survive a crash.
  public private(set) var durable: Value
  private var pending: [(inout Value) -> Void] = []

  /// Creates a store whose durable and current values are `initial`.
  public init(_ initial: Value) {
    current = initial
    durable = initial
  }

  /// Whether updates are waiting for ``sync()``.
  public var hasUnsyncedUpdates: Bool { !pending.isEmpty }

  /// Applies `update` to the current value and queues it for durability.
  public mutating func update(_ update: @escaping (inout Value) -> Void) {
    update(&current)
    pending.append(update)
  }

  /// Makes every queued update durable (an `fsync`).
  public mutating func sync() {
    guard !pending.isEmpty else { return }
    durable = current
    pending.removeAll()
  }

  /// Simulates a crash: keeps the durable value plus a random prefix of unsynced updates, and returns what
  /// the restarted node will find.
  @discardableResult
  public mutating func crash(using rng: inout SeededRandom) -> Value {
    let survivors = pending.isEmpty ? 0 : Int.random(in: 0...pending.count, using: &rng)
    for update in pending.prefix(survivors) { update(&durable) }
    pending.removeAll()
    current = durable
    return durable
  }
}

extension CrashableStore {
  /// Applies `change` to the current and the durable value at once, leaving the queued updates unsynced: a
  /// write synced on its own (a snapshot file, a compaction), which makes no other write durable.
  private mutating func applyDurably(_ change: (inout Value) -> Void) {
    change(&current)
    change(&durable)
  }

  /// Stores `snapshot` in the value's `snapshot` field durably, as a node's background task writes and syncs a
  /// snapshot file (the log's unsynced writes stay unsynced); refused (returning `false`, nothing written) when
  /// the value already holds a snapshot at the same or a later index, as storage refuses an older snapshot.
  mutating func storeSnapshot<Snapshot>(
    _ snapshot: Snapshot, in field: WritableKeyPath<Value, Snapshot?>, index: (Snapshot) -> UInt64
  ) -> Bool {
    guard index(snapshot) > current[keyPath: field].map(index) ?? 0 else { return false }
    applyDurably { $0[keyPath: field] = snapshot }
    return true
  }

  /// Drops what lies below `firstKept` (with `drop`) durably, as storage compacts its log (the log's unsynced
  /// writes stay unsynced); throws if that would pass the snapshot in the value's `snapshot` field, which
  /// storage refuses.
  mutating func compact<Snapshot>(
    below firstKept: UInt64, snapshot field: KeyPath<Value, Snapshot?>, index: (Snapshot) -> UInt64,
    node: NodeID, drop: @escaping (inout Value) -> Void
  ) throws {
    let stored = current[keyPath: field].map(index) ?? 0
    guard firstKept - 1 <= stored else {
      throw SimulationFailure("\(node) compacts through \(firstKept - 1), past its stored snapshot at \(stored)")
    }
    applyDurably(drop)
  }
}
