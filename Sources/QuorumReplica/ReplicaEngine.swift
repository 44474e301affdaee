public import QuorumCore
public import QuorumStorage

/// A log entry as the replica runtime sees it: a position, whether it carries a client command, and bytes.
public protocol ReplicaEntry: StorableEntry {
  /// Whether the entry carries an encoded `ReplicatedCommand` (not a no-op or a membership change).
  var isCommand: Bool { get }
  /// The entry's payload.
  var data: [UInt8] { get }
}

/// One message an engine asks the runtime to send.
public struct ReplicaOutgoing<Message: Sendable>: Sendable {
  /// The receiving node.
  public var to: NodeID
  /// The protocol message.
  public var message: Message

  /// Creates an outgoing message.
  public init(to: NodeID, message: Message) {
    self.to = to
    self.message = message
  }
}

/// What the runtime must do with a snapshot an engine hands it (one from the leader, to install).
public struct ReplicaSnapshotInstall: Sendable {
  /// The snapshot to store atomically, then restore the state machine from.
  public var stored: StoredSnapshot
  /// Whether storing it discards every stored entry (Raft: the log conflicts with or ends before it).
  public var discardingLog: Bool
  /// Entries up to here are compacted once the snapshot is stored (Multi-Paxos keeps later slots).
  public var compactThrough: UInt64?

  /// Creates an install order.
  public init(stored: StoredSnapshot, discardingLog: Bool, compactThrough: UInt64?) {
    self.stored = stored
    self.discardingLog = discardingLog
    self.compactThrough = compactThrough
  }
}

/// The answer to a read-index request: the read may be served once the state machine has applied `index`.
public struct ReplicaReadState: Sendable, Equatable {
  /// The read request's id.
  public var id: UInt64
  /// The commit index (or chosen slot) the read must wait for.
  public var index: UInt64

  /// Creates a read state.
  public init(id: UInt64, index: UInt64) {
    self.id = id
    self.index = index
  }
}

/// Everything one turn of the run loop must carry out, in the durability order the runtime guarantees:
/// send ``eagerMessages``; store ``snapshot`` and ``write`` durably; send ``messages``; restore the snapshot and
/// apply ``committed``; answer reads.
public struct ReplicaReady<Engine: ReplicaEngine>: Sendable {
  /// Messages that may leave before the write is durable (a leader's replication: it counts itself towards
  /// a quorum only after its own write).
  public var eagerMessages: [ReplicaOutgoing<Engine.Message>] = []
  /// Hard state and entries to make durable.
  public var write = StorageWrite<Engine.Entry>()
  /// A snapshot from the leader to store and install.
  public var snapshot: ReplicaSnapshotInstall?
  /// Messages that promise what the write stored (votes, promises, acknowledgements).
  public var messages: [ReplicaOutgoing<Engine.Message>] = []
  /// Entries known committed (chosen), to apply in order.
  public var committed: [Engine.Entry] = []
  /// Read-index requests whose index is now known.
  public var readStates: [ReplicaReadState] = []
  /// Read-index requests that failed (leadership lost).
  public var failedReads: [UInt64] = []
  /// Whether this node leads now, if that changed.
  public var leadershipChanged: Bool = false
  /// Engine-specific events (role, leader, membership changes), in order.
  public var events: [Engine.Event] = []
  /// Peers the engine stopped replicating to, and why (for example a snapshot the peer refused as too large).
  public var peerFailures: [(peer: NodeID, reason: String)] = []
  /// The engine's own ready, handed back in ``ReplicaEngine/advance(_:)``.
  public var raw: Engine.Raw

  /// Creates a ready around the engine's own.
  @inlinable public init(raw: Engine.Raw) { self.raw = raw }
}

/// Whether a committed entry is the proposal a pending request's ticket stood for.
public enum ProposalMatch: Sendable, Equatable {
  /// It is: the request was committed at that position.
  case proposal
  /// It is another leader's: the request was not committed.
  case another
  /// It carries the same value, but another leader may have proposed the same bytes (two registrations of a
  /// session stamped in the same millisecond are identical): the request may or may not have been committed,
  /// and the entry's outcome may be another client's.
  case sameValue
}

/// Where a pending proposal sits in the log, and how to tell at apply time whether it is the entry there.
public protocol ProposalTicket: Sendable {
  /// The log position (index or slot) the proposal was appended at.
  var index: UInt64 { get }
}

/// How a leadership transfer request is answered.
public enum TransferProgress: Sendable, Equatable {
  /// Nothing to wait for (the target already leads, or is this node and it leads).
  case done
  /// The transfer started; it completes when the target is seen leading.
  case started
}

/// The settings every engine's configuration has, which the replica runtime reads.
public protocol ReplicaConfiguration: Sendable {
  /// The founding members of a new group (empty: a node that waits to be added).
  var members: [NodeID] { get }
  /// How often the engine is ticked.
  var tickInterval: Duration { get }
  /// The election timeout range (a leadership transfer waits up to twice its upper bound).
  var electionTimeout: ClosedRange<Duration> { get }
  /// How long a request may wait for its answer.
  var requestTimeout: Duration { get }
  /// The most requests waiting at once.
  var maxPendingRequests: Int { get }
  /// The largest encoded command accepted.
  var maxCommandBytes: Int { get }
  /// Take a snapshot after this many applied entries (0: never).
  var snapshotEvery: Int { get }
  /// Entries kept in the log behind a snapshot (for slow followers).
  var snapshotRetainEntries: Int { get }
  /// The exactly-once session limits.
  var sessions: SessionPolicy { get }
  /// Capacity of the node's request mailbox.
  var inputCapacity: Int { get }
  /// Checks the configuration.
  func validate() throws(ConfigurationError)
}

/// A consensus protocol's pure core, adapted to the one replica runtime (``ReplicaNode``).
///
/// An engine is a deterministic value: no clocks, no I/O, no randomness except the seeded generator it was
/// given. The runtime feeds it time, messages and requests, and carries out its ``ReplicaReady``s. Raft
/// (`RaftEngine`) and Multi-Paxos (`MultiPaxosEngine`) conform, so every service, the server host and the
/// simulator see one shape of engine.
public protocol ReplicaEngine: Sendable {
  /// The protocol's message type.
  associatedtype Message: Sendable
  /// The protocol's log entry.
  associatedtype Entry: ReplicaEntry
  /// The protocol's validated settings.
  associatedtype Configuration: ReplicaConfiguration
  /// The protocol's own ready (handed back to ``advance(_:)``).
  associatedtype Raw: Sendable
  /// Identifies a pending proposal.
  associatedtype Ticket: ProposalTicket
  /// What the node publishes to applications watching it.
  associatedtype Event: Sendable
  /// The node's status report.
  associatedtype Status: Sendable

  /// The protocol's name, for logs and status reports (`raft`, `multi-paxos`).
  static var name: String { get }

  /// Rebuilds the engine from what storage recovered (or bootstraps a new group when storage is empty and
  /// the configuration names members). Returns the snapshot the state machine must be restored from.
  /// - Throws: ``QuorumCore/ConfigurationError`` or a recovery error when the stored state is unusable.
  static func recover(
    id: NodeID, configuration: Configuration, state: RecoveredState<Entry>, random: SeededRandom
  ) throws -> (engine: Self, snapshot: StoredSnapshot?)

  /// Moves the engine's notion of monotonic time forward (never back), before a batch is stepped.
  mutating func advanceClock(to nanos: UInt64)
  /// One tick of the timer.
  mutating func tick(now nanos: UInt64)
  /// A message from a peer.
  mutating func step(_ message: Message, from: NodeID)
  /// Appends an encoded `ReplicatedCommand` (leader only).
  mutating func propose(_ command: [UInt8]) throws(ConsensusError) -> Ticket
  /// Appends a membership change (leader only).
  mutating func changeMembership(_ change: MembershipChange) throws(ConsensusError) -> Ticket
  /// Starts handing leadership to `target`.
  mutating func transferLeadership(to target: NodeID) throws(ConsensusError) -> TransferProgress
  /// Whether a transfer to `target` has completed (this node sees `target` leading).
  func transferCompleted(to target: NodeID) -> Bool
  /// Starts a read-index round for read `id` (leader only).
  mutating func requestRead(id: UInt64) throws(ConsensusError)
  /// The index a lease read may be served at now, if the lease holds.
  func leaseReadIndex(now nanos: UInt64) -> UInt64?
  /// The transport refused a message to `peer` (queue full): stop streaming to it for now.
  mutating func reportUnreachable(_ peer: NodeID)
  /// The transport's failure detector lost `peer` (its process exited, or its link went silent): a follower
  /// whose leader it is stops waiting out the leader's idle factor and times out as with an active leader. The
  /// default ignores it.
  mutating func peerLost(_ peer: NodeID)
  /// Whether there is work for the runtime.
  var hasReady: Bool { get }
  /// How many of the next ticks are certain to change nothing but the engine's own counters — no message, no
  /// change of role, nothing ready — whatever the clock says. The runtime may then apply them late, all at once,
  /// before the next input, and not wake for each (idle groups cost little). 0, the default, when the next tick
  /// may act.
  var quietTicks: Int { get }
  /// Whether a leader may heartbeat less often while nothing happens (Raft's ``QuorumRaft/RaftCoreOptions/idleHeartbeatFactor``).
  /// The runtime forbids it while the state machine has a deadline (a lock's lease, a transaction's timeout), so
  /// that a failover then takes an active group's election time. The default ignores it.
  mutating func allowIdling(_ allowed: Bool)
  /// Takes the work for this turn.
  mutating func ready() -> ReplicaReady<Self>
  /// Tells the engine the ready was carried out (written, sent, applied).
  mutating func advance(_ ready: ReplicaReady<Self>)
  /// The term (epoch) and metadata a snapshot at `index` carries, or `nil` if one cannot be taken there now.
  func snapshotMetadata(at index: UInt64) -> (term: UInt64, metadata: [UInt8])?
  /// Records a snapshot the node stored itself; returns the position storage may compact through, or `nil`
  /// when the log moved past it meanwhile (a leader's snapshot) and it must be dropped.
  mutating func recordSnapshot(_ snapshot: StoredSnapshot, lastRecorded: UInt64, retainEntries: Int) -> UInt64?
  /// Whether the committed `entry` is the proposal `ticket` stood for, another leader's at that position, or the
  /// same value whose proposer cannot be told (``ProposalMatch``).
  func match(_ ticket: Ticket, committedAs entry: Entry) -> ProposalMatch
  /// The leader this node knows of.
  var leader: NodeID? { get }
  /// Whether this node leads.
  var isLeader: Bool { get }
  /// The status report, given what only the runtime knows.
  func status(applied: UInt64, pendingRequests: Int) -> Status
  /// The event published when the node installs a snapshot at `index`.
  static func snapshotInstalledEvent(at index: UInt64) -> Event
  /// The event published when the node stops.
  static var stoppedEvent: Event { get }
}

extension ReplicaEngine {
  /// Every tick may act: the runtime wakes for each.
  public var quietTicks: Int { 0 }

  /// The engine has no idle mode.
  public mutating func allowIdling(_ allowed: Bool) {}

  /// The engine ignores the failure detector: it times out on its own schedule.
  public mutating func peerLost(_ peer: NodeID) {}

  /// Reads the engine where it is stored. The runtime keeps its engine in an optional, in code that is not
  /// specialised for the engine type, where `engine?.isLeader` copies the whole engine (its log and peer
  /// tables: a retain per field) to read one flag; `engine?.inspect { $0.isLeader }`, a mutating call through
  /// optional chaining, reaches it in place instead.
  @inlinable mutating func inspect<T>(_ body: (Self) -> T) -> T { body(self) }
}
