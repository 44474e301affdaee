public import QuorumCore
public import QuorumHost
public import QuorumStorage
import Synchronization

/// One simulated machine's disks: one ``SimulatedDisk`` per group the machine hosts, created when the host first
/// opens the group's storage and kept across the machine's crashes and restarts.
public final class SimulatedGroupStorage: GroupStorageProvider, Sendable {
  private let node: NodeID
  private let scheduler: SimulationScheduler
  private let latency: DelayDistribution
  private let onDurable: @Sendable (GroupID, [any StorableEntry], [UInt8]?) -> Void
  private let onViolation: @Sendable (GroupID, String) -> Void
  private let disks = Mutex<[GroupID: any SimulatedDiskControl]>([:])
  private let writeFailureProbability = Mutex(0.0)
  private let snapshotFailureProbability = Mutex(0.0)

  /// Creates a machine's disks; `onDurable` and `onViolation` see what each group's disk reports.
  public init(
    node: NodeID, scheduler: SimulationScheduler, latency: DelayDistribution,
    onDurable: @escaping @Sendable (GroupID, [any StorableEntry], [UInt8]?) -> Void,
    onViolation: @escaping @Sendable (GroupID, String) -> Void
  ) {
    self.node = node
    self.scheduler = scheduler
    self.latency = latency
    self.onDurable = onDurable
    self.onViolation = onViolation
  }

  public func storage<Entry: StorableEntry>(for group: GroupSpec, mode: LogWriteMode, entry: Entry.Type) throws
    -> any ConsensusStorage<Entry>
  {
    let disk = disks.withLock { table -> SimulatedDisk<Entry>? in
      if let existing = table[group.id] { return existing as? SimulatedDisk<Entry> }
      let onDurable = self.onDurable
      let onViolation = self.onViolation
      let id = group.id
      let disk = SimulatedDisk<Entry>(
        mode: mode, scheduler: scheduler, latency: latency,
        onDurable: { entries, hardState in onDurable(id, entries, hardState) },
        onViolation: { onViolation(id, $0) })
      table[group.id] = disk
      return disk
    }
    guard let disk else {
      throw StorageError.incompatible(file: "group \(group.id)", reason: "opened with another entry type")
    }
    disk.failWrites(probability: writeFailureProbability.withLock { $0 })
    disk.failSnapshots(probability: snapshotFailureProbability.withLock { $0 })
    return disk.open()
  }

  /// The machine crashed: every disk keeps what was durable plus a random prefix of its queued records.
  public func crash() {
    for disk in disks.withLock({ table in table.keys.sorted().compactMap { table[$0] } }) { disk.crash() }
  }

  /// Makes each later write of every disk fail with probability `probability`.
  public func failWrites(probability: Double) {
    writeFailureProbability.withLock { $0 = probability }
    for disk in disks.withLock({ table in table.keys.sorted().compactMap { table[$0] } }) {
      disk.failWrites(probability: probability)
    }
  }

  /// Makes each later snapshot save of every disk fail with probability `probability`, changing nothing.
  public func failSnapshots(probability: Double) {
    snapshotFailureProbability.withLock { $0 = probability }
    for disk in disks.withLock({ table in table.keys.sorted().compactMap { table[$0] } }) {
      disk.failSnapshots(probability: probability)
    }
  }

  /// Snapshot saves failed, over every disk.
  public var failedSnapshots: Int {
    disks.withLock { table in table.values.reduce(0) { $0 + $1.failedSnapshots } }
  }

  /// What a restart would find on `group`'s disk now; nil when the machine has no disk for the group yet (or one
  /// of another entry type).
  func durableImage<Entry: StorableEntry>(of group: GroupID, as: Entry.Type) -> SimulatedDisk<Entry>.Image? {
    (disks.withLock { $0[group] } as? SimulatedDisk<Entry>)?.durableImage
  }

  /// Queued records lost to crashes, over every disk.
  public var tornRecords: Int {
    disks.withLock { table in table.values.reduce(0) { $0 + $1.counters.tornRecords } }
  }
}

/// The controls of a ``SimulatedDisk`` that do not depend on its entry type.
protocol SimulatedDiskControl: Sendable {
  func crash()
  func failWrites(probability: Double)
  func failSnapshots(probability: Double)
  var failedSnapshots: Int { get }
  var counters: (writes: Int, failedWrites: Int, tornRecords: Int) { get }
}

extension SimulatedDisk: SimulatedDiskControl {}
