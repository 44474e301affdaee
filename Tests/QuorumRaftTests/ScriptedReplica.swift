import QuorumCore
import QuorumRaft
import QuorumReplica
import QuorumStorage
import Synchronization

// A `ReplicaEngine` whose every answer the test chooses, to reach the replica runtime's (`ReplicaNode`) paths
// that a real engine reaches only in rare schedules: a proposal displaced at its index, a transfer that never
// completes. It always leads, never sends a message, and commits only if told to.

/// What a scripted engine does, and what a test sees of it.
final class EngineScript: Sendable {
  /// Every proposal lands at log position 1 under a new tag (carried as the entry's term), displacing the one
  /// before: as a new leader's entry replaces a deposed leader's.
  let sameIndex: Bool
  /// Proposals commit in the ready that writes them.
  let commitOnPropose: Bool
  /// The read index of a valid lease, if the engine holds one (it holds it for ever).
  let leaseIndex: UInt64?
  /// How many leadership transfers the engine was asked to start.
  let transferCalls = Atomic<Int>(0)

  init(sameIndex: Bool = false, commitOnPropose: Bool = false, leaseIndex: UInt64? = nil) {
    self.sameIndex = sameIndex
    self.commitOnPropose = commitOnPropose
    self.leaseIndex = leaseIndex
  }
}

/// A Raft configuration's settings with the script the engine follows.
struct ScriptedConfiguration: ReplicaConfiguration {
  var base: RaftConfiguration
  var script: EngineScript

  var members: [NodeID] { base.members }
  var tickInterval: Duration { base.tickInterval }
  var electionTimeout: ClosedRange<Duration> { base.electionTimeout }
  var requestTimeout: Duration { base.requestTimeout }
  var maxPendingRequests: Int { base.maxPendingRequests }
  var maxCommandBytes: Int { base.maxCommandBytes }
  var snapshotEvery: Int { base.snapshotEvery }
  var snapshotRetainEntries: Int { base.snapshotRetainEntries }
  var sessions: SessionPolicy { base.sessions }
  var inputCapacity: Int { base.inputCapacity }
  func validate() throws(ConfigurationError) { try base.validate() }
}

struct ScriptedMessage: Sendable {}

struct ScriptedRaw: Sendable {}

struct ScriptedTicket: ProposalTicket {
  var index: UInt64
  var tag: UInt64
}

struct ScriptedStatus: Sendable {
  var applied: UInt64
  var pendingRequests: Int
}

struct ScriptedEngine: ReplicaEngine {
  typealias Message = ScriptedMessage
  typealias Entry = LogEntry
  typealias Configuration = ScriptedConfiguration
  typealias Raw = ScriptedRaw
  typealias Ticket = ScriptedTicket
  typealias Event = String
  typealias Status = ScriptedStatus

  static var name: String { "scripted" }

  let id: NodeID
  let script: EngineScript
  var lastIndex: UInt64 = 0
  var lastTag: UInt64 = 0
  /// Proposed, not yet handed out in a ready.
  var unwritten: [LogEntry] = []

  static func recover(
    id: NodeID, configuration: ScriptedConfiguration, state: RecoveredState<LogEntry>, random: SeededRandom
  ) throws -> (engine: ScriptedEngine, snapshot: StoredSnapshot?) {
    (ScriptedEngine(id: id, script: configuration.script), nil)
  }

  mutating func advanceClock(to nanos: UInt64) {}
  mutating func tick(now nanos: UInt64) {}
  mutating func step(_ message: ScriptedMessage, from: NodeID) {}

  mutating func propose(_ command: [UInt8]) throws(ConsensusError) -> ScriptedTicket {
    lastTag += 1
    lastIndex = script.sameIndex ? 1 : lastIndex + 1
    unwritten.append(LogEntry(index: lastIndex, term: lastTag, data: command))
    return ScriptedTicket(index: lastIndex, tag: lastTag)
  }

  mutating func changeMembership(_ change: MembershipChange) throws(ConsensusError) -> ScriptedTicket {
    throw .notLeader(hint: nil)
  }

  mutating func transferLeadership(to target: NodeID) throws(ConsensusError) -> TransferProgress {
    script.transferCalls.add(1, ordering: .relaxed)
    return .started
  }

  func transferCompleted(to target: NodeID) -> Bool { false }
  mutating func requestRead(id: UInt64) throws(ConsensusError) { throw .notLeader(hint: nil) }
  func leaseReadIndex(now nanos: UInt64) -> UInt64? { script.leaseIndex }
  mutating func reportUnreachable(_ peer: NodeID) {}
  var hasReady: Bool { !unwritten.isEmpty }

  mutating func ready() -> ReplicaReady<ScriptedEngine> {
    var rd = ReplicaReady<ScriptedEngine>(raw: ScriptedRaw())
    rd.write = StorageWrite(entries: unwritten)
    if script.commitOnPropose { rd.committed = unwritten }
    return rd
  }

  mutating func advance(_ ready: ReplicaReady<ScriptedEngine>) {
    unwritten.removeFirst(ready.write.entries.count)
  }

  func snapshotMetadata(at index: UInt64) -> (term: UInt64, metadata: [UInt8])? { nil }

  mutating func recordSnapshot(_ snapshot: StoredSnapshot, lastRecorded: UInt64, retainEntries: Int) -> UInt64? {
    nil
  }

  func match(_ ticket: ScriptedTicket, committedAs entry: LogEntry) -> ProposalMatch {
    entry.term == ticket.tag ? .proposal : .another
  }

  var leader: NodeID? { id }
  var isLeader: Bool { true }

  func status(applied: UInt64, pendingRequests: Int) -> ScriptedStatus {
    ScriptedStatus(applied: applied, pendingRequests: pendingRequests)
  }

  static func snapshotInstalledEvent(at index: UInt64) -> String { "installed \(index)" }
  static var stoppedEvent: String { "stopped" }
}

/// A machine that tells waiting clients about every command it applies: each applied command is a notification,
/// kept until the node takes it.
struct Announcer: StateMachine {
  enum Question: Sendable { case untold }

  var untold: [UInt64] = []

  mutating func apply(_ command: UInt64, context: ApplyContext) -> UInt64 {
    untold.append(command)
    return command
  }

  func query(_ query: Question) -> Int { untold.count }
  func snapshot() -> [UInt8] { [] }
  mutating func restore(from snapshot: [UInt8]) throws { untold = [] }

  mutating func takeNotifications() -> [UInt64] {
    defer { untold = [] }
    return untold
  }
}

typealias ScriptedNode = ReplicaNode<ScriptedEngine, Announcer>

/// A one-member node on a scripted engine, over `storage` (a ``GatedStorage`` lets a test hold the loop in a write), with the fast live-cluster settings changed by `extra`.
func scriptedNode(
  _ script: EngineScript, storage: GatedStorage = GatedStorage(),
  _ extra: (inout RaftConfiguration) -> Void = { _ in },
  onNotifications: (@Sendable (UInt64, [UInt64]) -> Void)? = nil
) throws -> ScriptedNode {
  let base = try LiveCluster.fast(members: [1], extra)
  let endpoint = try InProcessTransport<ScriptedMessage>().bind(1)
  return ScriptedNode(
    id: 1, configuration: ScriptedConfiguration(base: base, script: script), endpoint: endpoint, storage: storage,
    machine: Announcer(), logger: QuorumLogger(label: "scripted", sink: NullLogSink()),
    onNotifications: onNotifications)
}

/// Runs `node` while `body` runs, then shuts it down, also when `body` throws.
func whileRunning<T: Sendable>(_ node: ScriptedNode, _ body: () async throws -> T) async throws -> T {
  let running = Task { try await node.run() }
  do {
    let result = try await body()
    await node.shutdown()
    _ = await running.result
    return result
  } catch {
    await node.shutdown()
    _ = await running.result
    throw error
  }
}
