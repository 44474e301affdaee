import QuorumCore
import QuorumRaft
import QuorumReplica
import QuorumStorage
import Synchronization
import Testing

/// Storage that holds every snapshot that keeps the log until the test opens the gate (at most 60 s, so a
/// broken node fails the test instead of hanging it). It waits by sleeping, never by blocking a thread.
final class GatedSnapshotStorage: ConsensusStorage {
  let inner = MemoryStorage<LogEntry>()
  private let open = Atomic<Bool>(false)
  private let startedCount = Atomic<Int>(0)
  private let gaveUp = Atomic<Bool>(false)

  /// How many snapshots reached the gate.
  var started: Int { startedCount.load(ordering: .relaxed) }
  /// Whether a snapshot gave up waiting.
  var timedOut: Bool { gaveUp.load(ordering: .relaxed) }
  func release() { open.store(true, ordering: .releasing) }

  func recover() async throws -> RecoveredState<LogEntry> { try await inner.recover() }
  func write(_ write: StorageWrite<LogEntry>) async throws { try await inner.write(write) }
  func compact(through index: UInt64) async throws { try await inner.compact(through: index) }
  func close() async throws { try await inner.close() }

  func saveSnapshot(_ snapshot: StoredSnapshot, discardingLog: Bool) async throws {
    if !discardingLog {
      _ = startedCount.add(1, ordering: .relaxed)
      let deadline = ContinuousClock.now.advanced(by: .seconds(60))
      while !open.load(ordering: .acquiring) {
        if ContinuousClock.now > deadline {
          gaveUp.store(true, ordering: .relaxed)
          break
        }
        try await Task.sleep(for: .milliseconds(1))
      }
    }
    try await inner.saveSnapshot(snapshot, discardingLog: discardingLog)
  }
}

/// A running sum. Replaying a log on top of a snapshot taken at the wrong index double-counts or drops
/// additions, so the sum also checks that a snapshot's data and index agree.
struct RunningSum: StateMachine {
  var total: UInt64 = 0

  mutating func apply(_ command: UInt64, context: ApplyContext) -> UInt64 {
    total &+= command
    return total
  }
  func query(_ query: UInt64) -> UInt64 { total }
  func snapshot() -> [UInt8] {
    var writer = WireWriter()
    writer.writeVarint(total)
    return writer.bytes
  }
  mutating func restore(from snapshot: [UInt8]) throws {
    var reader = WireReader(snapshot)
    total = try reader.readVarint()
  }
}

/// A one-node Raft group with short timeouts, whose requests wait up to a minute.
private func oneNode(snapshotEvery: Int, retain: Int) throws -> RaftConfiguration {
  var configuration = try RaftConfiguration {
    Members([1])
    TickInterval(.milliseconds(5))
    ElectionTimeout(Duration.milliseconds(30)...Duration.milliseconds(60))
    HeartbeatInterval(.milliseconds(10))
    RequestLimits(timeout: .seconds(60))
  }
  configuration.snapshotEvery = snapshotEvery
  configuration.snapshotRetainEntries = retain
  return configuration
}

/// Node 1 of `transport`, keeping a running sum in `storage`.
private func makeNode(
  _ configuration: RaftConfiguration, transport: InProcessTransport<RaftMessage>, storage: GatedSnapshotStorage
) throws -> RaftNode<RunningSum> {
  RaftNode(
    id: 1, configuration: configuration, endpoint: try transport.bind(1), storage: storage, machine: RunningSum(),
    seed: 1, logger: QuorumLogger(label: "raft", sink: NullLogSink()))
}

/// Proposes `amount` once the single node has elected itself (it refuses until then); returns the sum.
private func proposeOnceLeading(_ node: RaftNode<RunningSum>, _ amount: UInt64) async throws -> UInt64 {
  try await awaitValue("node 1 to lead and apply \(amount)") {
    do {
      return try await node.propose(amount)
    } catch ConsensusError.notLeader {
      return nil
    }
  }
}

@Suite("RaftNode snapshots in the background", .timeLimit(.minutes(2)))
struct BackgroundSnapshotTests {
  @Test("proposals commit while a snapshot is being stored, and a restart replays onto it exactly")
  func proposalsGoOnDuringASnapshot() async throws {
    let transport = InProcessTransport<RaftMessage>()
    let storage = GatedSnapshotStorage()
    let configuration = try oneNode(snapshotEvery: 5, retain: 0)
    func start() throws -> (RaftNode<RunningSum>, Task<Void, any Error>) {
      let node = try makeNode(configuration, transport: transport, storage: storage)
      return (node, Task { try await node.run() })
    }
    var (node, task) = try start()
    func propose(_ amount: UInt64) async throws -> UInt64 { try await proposeOnceLeading(node, amount) }
    for amount in UInt64(1)...10 { _ = try await propose(amount) }
    // The first snapshot reaches the gate and waits there; the node goes on committing meanwhile.
    try await eventually("the first snapshot to reach the gate") { storage.started > 0 }
    #expect(storage.started == 1)
    for amount in UInt64(11)...30 { _ = try await propose(amount) }
    #expect(!storage.timedOut, "proposals waited for the snapshot")
    #expect(await node.status.snapshotIndex == 0)
    storage.release()
    try await eventually("the snapshot to be recorded") { await node.status.snapshotIndex > 0 }
    let status = await node.status
    #expect(status.snapshotIndex > 0 && status.firstIndex == status.snapshotIndex + 1, "compacted behind it")
    node.stop()
    try await task.value
    #expect(try await storage.recover().snapshot != nil)

    (node, task) = try start()
    #expect(try await propose(0) == (1...30).reduce(0, +), "snapshot plus replayed entries")
    node.stop()
    try await task.value
  }
}

extension BackgroundSnapshotTests {
  @Test("a release snapshots early within its budget and compacts only through a stored snapshot")
  func aReleaseRequestSnapshotsWithinItsBudget() async throws {
    let transport = InProcessTransport<RaftMessage>()
    let storage = GatedSnapshotStorage()
    // No snapshot of its own schedule, and one that keeps every entry: only a release compacts the storage.
    let node = try makeNode(try oneNode(snapshotEvery: 1_000, retain: 1_000), transport: transport, storage: storage)
    let task = Task { try await node.run() }
    func propose(_ amount: UInt64) async throws { _ = try await proposeOnceLeading(node, amount) }
    func firstStored() async throws -> UInt64? { try await storage.inner.recover().entries.first?.index }
    for amount in UInt64(1)...10 { try await propose(amount) }
    let last = try #require(try await storage.inner.recover().entries.last?.index)
    // Never snapshotted: the release snapshots at once, and waits for that snapshot before compacting.
    node.releaseStoredEntries(snapshotBudgetBytes: 1 << 20)
    try await eventually("the release's snapshot to reach the gate") { storage.started == 1 }
    try await propose(11)
    #expect(try await firstStored() == 1, "nothing compacted before the snapshot is stored")
    storage.release()
    try await eventually("the snapshot to be recorded") { await node.status.snapshotIndex >= last }
    let snapshotIndex = await node.status.snapshotIndex
    try await eventually("the storage to be compacted through it") {
      try await firstStored() == snapshotIndex + 1
    }
    // The last snapshot (a few bytes) exceeds a budget of none: no snapshot, though entries were applied. A
    // release with room then snapshots at the newest entry; had the first one started a snapshot, that one would
    // be recorded at an older index, or the second would find it running and take none.
    try await propose(12)
    node.releaseStoredEntries(snapshotBudgetBytes: 0)
    try await propose(13)  // after the request, in the same inputs
    let newest = try #require(try await storage.inner.recover().entries.last?.index)
    node.releaseStoredEntries(snapshotBudgetBytes: 1 << 20)
    try await eventually("the second release's snapshot to be recorded") {
      await node.status.snapshotIndex > snapshotIndex
    }
    #expect(await node.status.snapshotIndex == newest)
    #expect(storage.started == 2, "the release without budget took no snapshot")
    // Compacted through the newest entry, the storage holds none.
    try await eventually("the storage to be compacted through it") { try await firstStored() == nil }
    node.stop()
    try await task.value
  }
}

@Suite("When a replica snapshots")
struct SnapshotScheduleTests {
  @Test("every N entries, once the log since the last snapshot is as large as it")
  func amortisedAgainstTheState() {
    func due(_ applied: UInt64, every: Int = 10, bytesSince: Int, lastBytes: Int) -> Bool {
      SnapshotSchedule.isDue(
        applied: applied, lastSnapshot: 100, every: every, bytesSince: bytesSince, lastSnapshotBytes: lastBytes)
    }
    // A small state: the entry count decides.
    #expect(!due(109, bytesSince: 500, lastBytes: 200))
    #expect(due(110, bytesSince: 500, lastBytes: 200))
    // A large state written by small entries: not until the log since is as large as the state.
    #expect(!due(110, bytesSince: 999, lastBytes: 1_000))
    #expect(!due(5_000, bytesSince: 25_999_999, lastBytes: 26_000_000))
    #expect(due(5_000, bytesSince: 26_000_000, lastBytes: 26_000_000))
    // The first snapshot (nothing stored yet) waits for the count only; 0 turns snapshots off.
    #expect(due(110, bytesSince: 0, lastBytes: 0))
    #expect(!due(1_000_000, every: 0, bytesSince: 1 << 30, lastBytes: 0))
  }

  @Test("early, for a request to release stored entries, only when the last snapshot fits the log it would free")
  func earlyForAReleaseWithinItsBudget() {
    func early(_ applied: UInt64, lastBytes: Int, budget: Int) -> Bool {
      SnapshotSchedule.mayTakeEarly(
        applied: applied, lastSnapshot: 100, lastSnapshotBytes: lastBytes, budgetBytes: budget)
    }
    #expect(early(101, lastBytes: 0, budget: 0), "a group that never snapshotted")
    #expect(early(101, lastBytes: 64 << 20, budget: 128 << 20))
    #expect(!early(101, lastBytes: 100 << 20, budget: 64 << 20), "a large state waits for its own schedule")
    #expect(!early(100, lastBytes: 0, budget: 1 << 30), "nothing applied since the last snapshot: compaction alone")
  }
}
