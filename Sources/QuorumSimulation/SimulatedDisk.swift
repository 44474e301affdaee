import Glibc
import QuorumCore
public import QuorumStorage
import Synchronization

/// A simulated machine's disk for one node's consensus storage: what survives a crash, record by record.
///
/// The node talks to it through a ``SimulatedStorage`` handle (one per incarnation of the node), which behaves
/// as `MemoryStorage` does while the node runs — the same validation, the same answers — and takes virtual
/// time for every durable operation. What the disk adds is the difference between written and durable:
///
/// - A ``QuorumStorage/StorageWrite`` becomes records in the order the write-ahead log writes them
///   (its `walRecords(of:)`), queued until the write's `fdatasync` completes. A crash keeps the durable records plus a
///   random prefix of the queued ones: a write can be torn between its entries and its hard state.
/// - A snapshot is durable once its own save completes; storing it makes no other queued write durable. A crash
///   during the save loses it.
/// - Compaction removes durable entries at once; the disk records a violation if it removes entries no durable
///   snapshot covers (a crash there would lose committed data).
/// - Faults: ``failWrites(probability:)`` makes writes fail with `EIO` or `ENOSPC`, after writing a random prefix of
///   their records; ``failSnapshots(probability:)`` makes snapshot saves fail before they change anything, as when
///   the snapshot's file cannot be written (``QuorumStorage/StorageError/snapshotNotStored(underlying:)``).
public final class SimulatedDisk<Entry: StorableEntry>: Sendable {
  enum Record {
    case entry(Entry)
    case hardState([UInt8])
    /// An entry a snapshot that discarded the log superseded before it was synced: it takes its place in the
    /// queue (so a write's count of its own records stays right) and writes nothing.
    case superseded
  }

  struct Image {
    var hardState: [UInt8]?
    var snapshot: StoredSnapshot?
    var entries: [Entry] = []

    mutating func apply(_ record: Record, mode: LogWriteMode) {
      switch record {
      case .hardState(let bytes):
        hardState = bytes
      case .superseded:
        break
      case .entry(let entry):
        let position = lowerBound(entry.index)
        switch mode {
        case .truncateSuffix:
          entries.removeSubrange(position...)
          entries.append(entry)
        case .replace:
          if position < entries.count, entries[position].index == entry.index {
            entries[position] = entry
          } else {
            entries.insert(entry, at: position)
          }
        }
      }
    }

    mutating func store(_ stored: StoredSnapshot, discardingLog: Bool) {
      if stored.index >= (snapshot?.index ?? 0) { snapshot = stored }
      if discardingLog { entries.removeAll() }
    }

    mutating func compact(through index: UInt64) {
      entries.removeSubrange(..<lowerBound(index &+ 1))
    }

    func lowerBound(_ index: UInt64) -> Int {
      var low = 0
      var high = entries.count
      while low < high {
        let middle = (low + high) / 2
        if entries[middle].index < index { low = middle + 1 } else { high = middle }
      }
      return low
    }
  }

  private struct State {
    var durable = Image()
    var pending: [Record] = []
    var incarnation: UInt64 = 0
    var writeFailureProbability = 0.0
    var snapshotFailureProbability = 0.0
    var failedSnapshots = 0
    var violations: [String] = []
    var writes = 0
    var failedWrites = 0
    var tornRecords = 0
  }

  /// How overwrites are treated (Raft: truncate the suffix; Paxos: replace one position).
  public let mode: LogWriteMode
  private let state = Mutex(State())
  private let scheduler: SimulationScheduler
  private let latency: DelayDistribution
  private let onDurable: (@Sendable ([Entry], [UInt8]?) -> Void)?
  private let onViolation: (@Sendable (String) -> Void)?

  /// Creates an empty disk whose durable operations take `latency` of virtual time. `onDurable` sees every
  /// entry and hard state the moment it becomes durable — by a completed write, or by surviving a crash.
  public init(
    mode: LogWriteMode, scheduler: SimulationScheduler,
    latency: DelayDistribution = .uniform(.microseconds(50), .milliseconds(2)),
    onDurable: (@Sendable (_ entries: [Entry], _ hardState: [UInt8]?) -> Void)? = nil,
    onViolation: (@Sendable (String) -> Void)? = nil
  ) {
    self.mode = mode
    self.scheduler = scheduler
    self.latency = latency
    self.onDurable = onDurable
    self.onViolation = onViolation
  }

  private func report(_ records: some Sequence<Record>) {
    guard let onDurable else { return }
    var entries: [Entry] = []
    var hardState: [UInt8]?
    for record in records {
      switch record {
      case .entry(let entry): entries.append(entry)
      case .hardState(let bytes): hardState = bytes
      case .superseded: break
      }
    }
    if !entries.isEmpty || hardState != nil { onDurable(entries, hardState) }
  }

  /// The records a write-ahead log writes for `write`, in the order `FileStorage` writes them: the entries
  /// (the first one truncates any conflicting suffix), then the hard state, so a torn write never leaves a hard
  /// state — a commit index — pointing at entries it did not write.
  static func walRecords(of write: StorageWrite<Entry>) -> [Record] {
    var records = write.entries.map(Record.entry)
    if let hardState = write.hardState {
      // The same decision `FileStorage` follows, so a change to it is tested here too.
      if StorageWrite<Entry>.hardStateRecordGoesLast {
        records.append(.hardState(hardState))
      } else {
        records.insert(.hardState(hardState), at: 0)
      }
    }
    return records
  }

  /// Opens the disk for a new incarnation of its node; handles of earlier incarnations stop working.
  public func open() -> SimulatedStorage<Entry> {
    let (incarnation, image) = state.withLock { s -> (UInt64, Image) in
      s.incarnation += 1
      return (s.incarnation, s.durable)
    }
    return SimulatedStorage(disk: self, incarnation: incarnation, image: image)
  }

  /// The machine crashed: durable records survive, plus a random prefix of those still queued; every handle
  /// stops working.
  public func crash() {
    let survivors = scheduler.random { rng in Int.random(in: 0...Int.max, using: &rng) }
    let kept = state.withLock { s -> [Record] in
      let kept = s.pending.isEmpty ? 0 : survivors % (s.pending.count + 1)
      for record in s.pending.prefix(kept) { s.durable.apply(record, mode: mode) }
      s.tornRecords += s.pending.dropFirst(kept).filter { if case .superseded = $0 { false } else { true } }.count
      defer { s.pending.removeAll() }
      s.incarnation += 1
      return Array(s.pending.prefix(kept))
    }
    report(kept)
  }

  /// Makes each later write fail with probability `probability` (with `EIO` or `ENOSPC`).
  public func failWrites(probability: Double) {
    state.withLock { $0.writeFailureProbability = probability }
  }

  /// Makes each later snapshot save fail with probability `probability`, before it changes anything (with
  /// ``QuorumStorage/StorageError/snapshotNotStored(underlying:)`` around `EIO` or `ENOSPC`).
  public func failSnapshots(probability: Double) {
    state.withLock { $0.snapshotFailureProbability = probability }
  }

  /// Snapshot saves failed by ``failSnapshots(probability:)``.
  public var failedSnapshots: Int { state.withLock { $0.failedSnapshots } }

  /// Throws the failure ``failSnapshots(probability:)`` draws for the next snapshot save, if it draws one.
  fileprivate func drawSnapshotFailure(incarnation: UInt64) throws {
    try checkAlive(incarnation)
    let p = state.withLock { $0.snapshotFailureProbability }
    guard p > 0 else { return }
    let failure = scheduler.random { rng -> Int32? in
      Double.random(in: 0..<1, using: &rng) < p ? (Bool.random(using: &rng) ? EIO : ENOSPC) : nil
    }
    guard let failure else { return }
    state.withLock { $0.failedSnapshots += 1 }
    throw StorageError.snapshotNotStored(
      underlying: .io(operation: "write snapshot", path: "simulated", errno: failure))
  }

  /// Ways the node broke the storage contract (compaction past every durable snapshot); empty when none.
  public var violations: [String] { state.withLock { $0.violations } }

  /// Counters: writes, failed writes, queued records a crash discarded.
  public var counters: (writes: Int, failedWrites: Int, tornRecords: Int) {
    state.withLock { ($0.writes, $0.failedWrites, $0.tornRecords) }
  }

  /// What a restart would find now.
  var durableImage: Image { state.withLock { $0.durable } }

  // MARK: - Operations for the handles

  fileprivate func checkAlive(_ incarnation: UInt64) throws(StorageError) {
    guard state.withLock({ $0.incarnation == incarnation }) else {
      throw .io(operation: "write (machine crashed)", path: "simulated", errno: EIO)
    }
  }

  fileprivate func write(_ write: StorageWrite<Entry>, incarnation: UInt64) async throws {
    try checkAlive(incarnation)
    let records = Self.walRecords(of: write)
    let (failure, prefix) = scheduler.random { rng -> (Int32?, Int) in
      let p = state.withLock { $0.writeFailureProbability }
      guard p > 0, Double.random(in: 0..<1, using: &rng) < p else { return (nil, records.count) }
      return (Bool.random(using: &rng) ? EIO : ENOSPC, Int.random(in: 0...records.count, using: &rng))
    }
    let start = state.withLock { s -> Int in
      s.writes += 1
      s.pending.append(contentsOf: records.prefix(prefix))
      return s.pending.count - prefix
    }
    if let failure {
      state.withLock { $0.failedWrites += 1 }
      throw StorageError.io(operation: "write", path: "simulated", errno: failure)
    }
    try await scheduler.sleep(for: scheduler.random { latency.sample(&$0) })
    // fdatasync: everything written to the log before it is durable.
    let synced = state.withLock { s -> [Record] in
      guard s.incarnation == incarnation else { return [] }
      let through = min(s.pending.count, start + records.count)
      for record in s.pending.prefix(through) { s.durable.apply(record, mode: mode) }
      defer { s.pending.removeFirst(through) }
      return Array(s.pending.prefix(through))
    }
    report(synced)
    try checkAlive(incarnation)
  }

  fileprivate func saveSnapshot(_ snapshot: StoredSnapshot, discardingLog: Bool, incarnation: UInt64) async throws {
    try checkAlive(incarnation)
    try await scheduler.sleep(for: scheduler.random { latency.sample(&$0) })
    try state.withLock { (s: inout State) throws(StorageError) in
      guard s.incarnation == incarnation else {
        throw .io(operation: "snapshot (machine crashed)", path: "simulated", errno: EIO)
      }
      if discardingLog {
        // The log's entries queued before the discard are superseded by it; a hard state queued with them is not
        // (nor is the place of any record in the queue, which a write in progress counts on).
        s.pending = s.pending.map { if case .entry = $0 { .superseded } else { $0 } }
      }
      s.durable.store(snapshot, discardingLog: discardingLog)
    }
  }

  fileprivate func compact(through index: UInt64, incarnation: UInt64) throws {
    let violation = try state.withLock { (s: inout State) throws(StorageError) -> String? in
      guard s.incarnation == incarnation else {
        throw .io(operation: "compact (machine crashed)", path: "simulated", errno: EIO)
      }
      let covered = s.durable.snapshot?.index ?? 0
      var violation: String?
      if index > covered {
        violation = "compaction through \(index) passes the durable snapshot at \(covered)"
        s.violations.append(violation ?? "")
      }
      s.durable.compact(through: index)
      return violation
    }
    if let violation { onViolation?(violation) }
  }
}

/// One incarnation's handle on a ``SimulatedDisk``: a ``QuorumStorage/ConsensusStorage`` that answers as
/// `MemoryStorage` does and makes writes durable only as the disk allows.
public final class SimulatedStorage<Entry: StorableEntry>: ConsensusStorage, Sendable {
  private let disk: SimulatedDisk<Entry>
  private let incarnation: UInt64
  private let current: MemoryStorage<Entry>
  private let image: SimulatedDisk<Entry>.Image

  init(disk: SimulatedDisk<Entry>, incarnation: UInt64, image: SimulatedDisk<Entry>.Image) {
    self.disk = disk
    self.incarnation = incarnation
    self.current = MemoryStorage(mode: disk.mode)
    self.image = image
  }

  public func recover() async throws -> RecoveredState<Entry> {
    try disk.checkAlive(incarnation)
    // Rebuild what the running node sees from what was durable when this incarnation opened the disk.
    if let snapshot = image.snapshot {
      try await current.saveSnapshot(snapshot, discardingLog: true)
    }
    let base = image.snapshot?.index ?? 0
    // A gap here would be a bug of the disk model or of the node; `MemoryStorage` refuses it, so recovery fails
    // and the simulation reports it.
    let entries = image.entries.filter { $0.index > base }
    if !entries.isEmpty || image.hardState != nil {
      try await current.write(StorageWrite(hardState: image.hardState, entries: entries))
    }
    return try await current.recover()
  }

  public func write(_ write: StorageWrite<Entry>) async throws {
    try await current.write(write)
    try await disk.write(write, incarnation: incarnation)
  }

  public func saveSnapshot(_ snapshot: StoredSnapshot, discardingLog: Bool) async throws {
    try disk.drawSnapshotFailure(incarnation: incarnation)  // Before anything changes, as for a file not written.
    try await current.saveSnapshot(snapshot, discardingLog: discardingLog)
    try await disk.saveSnapshot(snapshot, discardingLog: discardingLog, incarnation: incarnation)
  }

  public func compact(through index: UInt64) async throws {
    try await current.compact(through: index)
    try disk.compact(through: index, incarnation: incarnation)
  }

  public func close() async throws {
    try await current.close()
  }
}
