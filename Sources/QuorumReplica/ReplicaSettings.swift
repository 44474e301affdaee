public import QuorumCore

/// The settings Raft's and Multi-Paxos's configurations have in common, so that one DSL line (``Snapshots``,
/// ``LeaseReads``, …) serves either engine's builder. `RaftConfiguration` and `PaxosConfiguration` conform.
public protocol ReplicaConfigurationFields: Sendable {
  /// The founding voters of a new group (empty: join an existing group).
  var members: [NodeID] { get set }
  /// Election timeouts are drawn uniformly from this range.
  var electionTimeout: ClosedRange<Duration> { get set }
  /// How often a leader sends heartbeats.
  var heartbeatInterval: Duration { get set }
  /// How many times less often an idle leader heartbeats (`nil`: the host chooses).
  var idleHeartbeatFactor: Int? { get set }
  /// The clock granularity: timeouts are counted in ticks of this length.
  var tickInterval: Duration { get set }
  /// Whether lease reads are served without a round trip.
  var leaseReads: Bool { get set }
  /// The most two nodes' clocks may drift apart over one election timeout.
  var clockDriftBound: Duration { get set }
  /// Applied entries between automatic snapshots (0: none).
  var snapshotEvery: Int { get set }
  /// Entries kept before a snapshot for lagging followers.
  var snapshotRetainEntries: Int { get set }
  /// Bytes per snapshot chunk sent to a follower.
  var snapshotChunkBytes: Int { get set }
  /// The most entry bytes in one replication message.
  var maxEntriesBytesPerMessage: Int { get set }
  /// The most replication messages in flight to one follower.
  var maxInflightMessages: Int { get set }
  /// Proposals are refused while this many bytes are appended but uncommitted.
  var maxUncommittedBytes: Int { get set }
  /// How long a request may wait before it fails.
  var requestTimeout: Duration { get set }
  /// The most requests waiting in a node.
  var maxPendingRequests: Int { get set }
  /// The largest command accepted.
  var maxCommandBytes: Int { get set }
  /// Exactly-once session limits.
  var sessions: SessionPolicy { get set }
}

/// A DSL line either engine's configuration builder takes: it sets fields both configurations have.
public protocol ReplicaSetting: Sendable {
  /// Sets the fields this line is about.
  func apply<Configuration: ReplicaConfigurationFields>(to configuration: inout Configuration)
}

/// The founding voters.
public struct Members: ReplicaSetting {
  let ids: [NodeID]
  /// Sets the voters.
  public init(_ ids: NodeID...) { self.ids = ids }
  /// Sets the voters.
  public init(_ ids: [NodeID]) { self.ids = ids }
  public func apply<C: ReplicaConfigurationFields>(to c: inout C) { c.members = ids }
}

/// The election timeout range.
public struct ElectionTimeout: ReplicaSetting {
  let range: ClosedRange<Duration>
  /// Sets the range election timeouts are drawn from.
  public init(_ range: ClosedRange<Duration>) { self.range = range }
  public func apply<C: ReplicaConfigurationFields>(to c: inout C) { c.electionTimeout = range }
}

/// The heartbeat interval.
public struct HeartbeatInterval: ReplicaSetting {
  let interval: Duration
  /// Sets how often a leader heartbeats.
  public init(_ interval: Duration) { self.interval = interval }
  public func apply<C: ReplicaConfigurationFields>(to c: inout C) { c.heartbeatInterval = interval }
}

/// How many times less often an idle leader heartbeats (1 turns idling off).
public struct IdleHeartbeatFactor: ReplicaSetting {
  let factor: Int
  /// Sets the idle factor.
  public init(_ factor: Int) { self.factor = factor }
  public func apply<C: ReplicaConfigurationFields>(to c: inout C) { c.idleHeartbeatFactor = factor }
}

/// The tick length.
public struct TickInterval: ReplicaSetting {
  let interval: Duration
  /// Sets the tick length.
  public init(_ interval: Duration) { self.interval = interval }
  public func apply<C: ReplicaConfigurationFields>(to c: inout C) { c.tickInterval = interval }
}

/// Lease reads and the clock-drift bound they rely on.
public struct LeaseReads: ReplicaSetting {
  let enabled: Bool
  let drift: Duration?
  /// Enables lease reads with the given clock-drift bound.
  public init(clockDriftBound: Duration) {
    enabled = true
    drift = clockDriftBound
  }
  /// Enables or disables lease reads.
  public init(_ enabled: Bool) {
    self.enabled = enabled
    drift = nil
  }
  public func apply<C: ReplicaConfigurationFields>(to c: inout C) {
    c.leaseReads = enabled
    if let drift { c.clockDriftBound = drift }
  }
}

/// Automatic snapshots.
public struct Snapshots: ReplicaSetting {
  let every: Int
  let retain: Int
  let chunkBytes: Int?
  /// Snapshot every `every` applied entries, keeping `retain` entries before each snapshot.
  public init(every: Int, retain: Int = 1_000, chunkBytes: Int? = nil) {
    self.every = every
    self.retain = retain
    self.chunkBytes = chunkBytes
  }
  public func apply<C: ReplicaConfigurationFields>(to c: inout C) {
    c.snapshotEvery = every
    c.snapshotRetainEntries = retain
    if let chunkBytes { c.snapshotChunkBytes = chunkBytes }
  }
}

/// Replication flow control (Raft also bounds the bytes in flight: `InflightBytes`).
public struct FlowControl: ReplicaSetting {
  let messageBytes: Int?
  let inflightMessages: Int?
  let uncommittedBytes: Int?
  /// Sets any of the flow-control limits; `nil` keeps the default.
  public init(maxEntriesBytesPerMessage: Int? = nil, maxInflightMessages: Int? = nil, maxUncommittedBytes: Int? = nil) {
    messageBytes = maxEntriesBytesPerMessage
    inflightMessages = maxInflightMessages
    uncommittedBytes = maxUncommittedBytes
  }
  public func apply<C: ReplicaConfigurationFields>(to c: inout C) {
    if let messageBytes { c.maxEntriesBytesPerMessage = messageBytes }
    if let inflightMessages { c.maxInflightMessages = inflightMessages }
    if let uncommittedBytes { c.maxUncommittedBytes = uncommittedBytes }
  }
}

/// Limits on client requests.
public struct RequestLimits: ReplicaSetting {
  let timeout: Duration?
  let pending: Int?
  let commandBytes: Int?
  /// Sets any of the request limits; `nil` keeps the default.
  public init(timeout: Duration? = nil, maxPending: Int? = nil, maxCommandBytes: Int? = nil) {
    self.timeout = timeout
    self.pending = maxPending
    self.commandBytes = maxCommandBytes
  }
  public func apply<C: ReplicaConfigurationFields>(to c: inout C) {
    if let timeout { c.requestTimeout = timeout }
    if let pending { c.maxPendingRequests = pending }
    if let commandBytes { c.maxCommandBytes = commandBytes }
  }
}

/// Exactly-once session limits.
public struct Sessions: ReplicaSetting {
  let policy: SessionPolicy
  /// Sets the session policy (see ``QuorumCore/SessionPolicy``).
  public init(
    timeout: Duration = .seconds(300), maxSessions: Int = 100_000, maxResponsesPerSession: Int = 256,
    maxSessionsPerPrincipal: Int = 4096, maxResponseBytesPerSession: Int = 1 << 20
  ) {
    policy = SessionPolicy(
      timeoutMillis: timeout.nanoseconds / 1_000_000, maxSessions: maxSessions,
      maxResponsesPerSession: maxResponsesPerSession, maxSessionsPerPrincipal: maxSessionsPerPrincipal,
      maxResponseBytesPerSession: maxResponseBytesPerSession)
  }
  public func apply<C: ReplicaConfigurationFields>(to c: inout C) { c.sessions = policy }
}
