public import QuorumCore
public import QuorumReplica

/// Settings of a Raft node, in real units, validated as a whole.
///
/// Build one with the DSL — each line is a setting; anything left out keeps its default:
///
/// ```swift
/// let configuration = try RaftConfiguration {
///   Members(1, 2, 3)
///   ElectionTimeout(Duration.milliseconds(150)...Duration.milliseconds(300))
///   HeartbeatInterval(.milliseconds(50))
///   LeaseReads(clockDriftBound: .milliseconds(15))
///   Snapshots(every: 10_000, retain: 1_000)
/// }
/// ```
///
/// ``validate()`` runs when the DSL finishes (and when a node starts) and throws a ``QuorumCore/ConfigurationError``
/// naming the offending setting: a heartbeat not well below the election timeout, an empty or duplicated
/// member list, a node identifier of 0, a lease longer than the election timeout allows, and so on.
public struct RaftConfiguration: Sendable, Equatable {
  /// The founding voters of a new group. Empty means "join an existing group" (the node learns the
  /// membership from the leader once added).
  public var members: [NodeID] = []
  /// Founding non-voting members.
  public var learners: [NodeID] = []
  /// Election timeouts are drawn uniformly from this range.
  public var electionTimeout: ClosedRange<Duration> = .milliseconds(150)...(.milliseconds(300))
  /// How often a leader sends heartbeats.
  public var heartbeatInterval: Duration = .milliseconds(50)
  /// How many times less often an idle leader sends heartbeats (see ``RaftCoreOptions/idleHeartbeatFactor``): a
  /// group nobody writes to, reads from or changes for a minimum election timeout, whose followers all hold and
  /// know the whole committed log, heartbeats this many times less often, and its followers wait as many times
  /// longer before campaigning — unless their transport reports the leader's process lost
  /// (``QuorumCore/TransportEndpoint/onPeerLost(_:)``), when they time out as with an active leader.
  ///
  /// `nil` (the default) lets the host choose: ``defaultIdleHeartbeatFactor`` (5: idle heartbeats cost a fifth,
  /// and a crashed idle leader is replaced after 0.75–1.5 s instead of 150–300 ms; etcd's default election
  /// timeout is 1 s), or ``detectedIdleHeartbeatFactor`` (20) for groups served over TCP, whose links detect a
  /// dead or cut-off process within their liveness timeout. 1 turns idling off; at most ``RaftCore/maxIdleFactor``.
  ///
  /// - Note: An optional since the transport picks the default (it was an `Int` defaulting to 5): code that
  ///   reads it for the factor in force reads `coreOptions.idleHeartbeatFactor` instead.
  public var idleHeartbeatFactor: Int?
  /// The idle factor of a group whose transport detects no lost peer: 5.
  public static let defaultIdleHeartbeatFactor = 5
  /// The idle factor of a group whose transport reports lost peers (TCP): 20, one idle heartbeat a second with
  /// the default 50 ms heartbeat.
  public static let detectedIdleHeartbeatFactor = 20
  /// The clock granularity of the node: timeouts are counted in ticks of this length.
  public var tickInterval: Duration = .milliseconds(10)
  /// Probe with a pre-vote before campaigning (thesis §9.6).
  public var preVote = true
  /// Leaders step down without a quorum; followers refuse disruptive votes (thesis §6.2).
  public var checkQuorum = true
  /// Whether lease reads are served without a round trip; otherwise a lease read falls back to ReadIndex.
  public var leaseReads = true
  /// The most the clocks of two nodes may drift apart over one election timeout; must be positive with lease
  /// reads on. A follower refuses votes for the minimum election timeout (in whole ticks) after hearing from
  /// the leader, on its own monotonic clock; the lease lasts that window less one tick (a margin for when the
  /// clock is read) less this bound.
  public var clockDriftBound: Duration = .milliseconds(15)
  /// Take a snapshot after this many applied entries, once the entries applied since the last snapshot
  /// also add up to its size, so a large state is not rewritten for every few writes (0 disables automatic
  /// snapshots).
  public var snapshotEvery = 10_000
  /// Entries kept before a snapshot so lagging followers can catch up without one.
  public var snapshotRetainEntries = 1_000
  /// Bytes per InstallSnapshot chunk.
  public var snapshotChunkBytes = 1 << 20
  /// The largest snapshot a follower accepts.
  public var maxSnapshotBytes = 1 << 30
  /// The most entry bytes in one AppendEntries.
  public var maxEntriesBytesPerMessage = 1 << 20
  /// The most AppendEntries in flight to one follower.
  public var maxInflightMessages = 256
  /// The most entry bytes in flight to one follower.
  public var maxInflightBytes = 32 << 20
  /// Proposals are refused while this many bytes are appended but uncommitted.
  public var maxUncommittedBytes = 64 << 20
  /// The largest command accepted.
  public var maxCommandBytes = 4 << 20
  /// The most requests waiting in a node (proposals, reads, membership changes and leadership transfers);
  /// beyond it requests fail with
  /// ``QuorumCore/ConsensusError/overloaded(limit:)``.
  public var maxPendingRequests = 65_536
  /// How long a request may wait before failing with ``QuorumCore/ConsensusError/timeout``.
  public var requestTimeout: Duration = .seconds(5)
  /// Exactly-once session limits.
  public var sessions = SessionPolicy()
  /// Capacity of the node's input mailbox.
  public var inputCapacity = 65_536

  /// The defaults: 150–300 ms elections, 50 ms heartbeats (250 ms while idle), 10 ms ticks, pre-vote,
  /// check-quorum, lease reads.
  public init() {}

  /// Builds a configuration from DSL settings and validates it.
  public init(@RaftConfigurationBuilder _ settings: () -> [any RaftSetting]) throws(ConfigurationError) {
    self.init()
    for setting in settings() { setting.apply(to: &self) }
    try validate()
  }

  private func ticks(_ d: Duration) -> Int {
    Int((d / tickInterval).rounded(.down))
  }

  /// How long a follower refuses votes after hearing from the leader, on its monotonic clock: the minimum
  /// election timeout in whole ticks.
  private var refusalWindow: Duration { tickInterval * max(0, ticks(electionTimeout.lowerBound)) }

  /// The lease: the refusal window less one tick (a margin for the time between a message's arrival and the
  /// clock reading it is timed by) less the clock-drift bound.
  private var leaseDuration: Duration { refusalWindow - tickInterval - clockDriftBound }

  /// Checks every setting and their relations.
  public func validate() throws(ConfigurationError) {
    func fail(_ setting: String, _ reason: String) -> ConfigurationError {
      ConfigurationError(setting: setting, reason: reason)
    }
    if members.contains(.none) || learners.contains(.none) {
      throw fail("Members", "node id 0 is reserved")
    }
    if Set(members).count != members.count { throw fail("Members", "duplicate node ids in \(members)") }
    if Set(learners).count != learners.count { throw fail("Learners", "duplicate node ids in \(learners)") }
    if !Set(members).isDisjoint(with: learners) {
      throw fail("Learners", "\(Set(members).intersection(learners).sorted()) listed as both member and learner")
    }
    if members.isEmpty && !learners.isEmpty {
      throw fail("Members", "a group with learners needs at least one voting member")
    }
    guard tickInterval > .zero else { throw fail("TickInterval", "must be positive") }
    guard electionTimeout.lowerBound > .zero else { throw fail("ElectionTimeout", "must be positive") }
    if ticks(electionTimeout.lowerBound) < 3 {
      throw fail("ElectionTimeout", "\(electionTimeout.lowerBound) is under 3 ticks of \(tickInterval)")
    }
    if electionTimeout.upperBound < electionTimeout.lowerBound + tickInterval {
      throw fail(
        "ElectionTimeout",
        "the range must span at least one tick (\(tickInterval)) so that timeouts are randomized")
    }
    guard heartbeatInterval >= tickInterval else {
      throw fail("HeartbeatInterval", "\(heartbeatInterval) is shorter than one tick (\(tickInterval))")
    }
    if heartbeatInterval * 3 > electionTimeout.lowerBound {
      throw fail(
        "HeartbeatInterval",
        "\(heartbeatInterval) is not well below the minimum election timeout \(electionTimeout.lowerBound) "
          + "(at most a third of it)")
    }
    if let factor = idleHeartbeatFactor, !(1...RaftCore.maxIdleFactor).contains(factor) {
      throw fail("IdleHeartbeatFactor", "must be 1 (no idling) ... \(RaftCore.maxIdleFactor), got \(factor)")
    }
    if leaseReads {
      guard checkQuorum else { throw fail("LeaseReads", "lease reads need CheckQuorum(true)") }
      guard clockDriftBound > .zero else {
        throw fail("LeaseReads", "the clock-drift bound must be positive: clocks drift (got \(clockDriftBound))")
      }
      guard leaseDuration > .zero else {
        throw fail(
          "LeaseReads",
          "the clock-drift bound \(clockDriftBound) leaves no lease: it must be below the minimum election timeout "
            + "in whole ticks (\(refusalWindow)) less one tick (\(tickInterval))")
      }
    }
    let positives: [(String, Int)] = [
      ("MaxInflightMessages", maxInflightMessages), ("MaxEntriesBytesPerMessage", maxEntriesBytesPerMessage),
      ("SnapshotChunkBytes", snapshotChunkBytes), ("MaxCommandBytes", maxCommandBytes),
      ("MaxPendingRequests", maxPendingRequests), ("InputCapacity", inputCapacity),
      ("MaxUncommittedBytes", maxUncommittedBytes),
    ]
    for (name, value) in positives where value < 1 { throw fail(name, "must be at least 1, got \(value)") }
    if snapshotEvery < 0 || snapshotRetainEntries < 0 { throw fail("Snapshots", "counts must not be negative") }
    if maxCommandBytes > maxUncommittedBytes {
      throw fail("MaxCommandBytes", "a command larger than MaxUncommittedBytes could never be proposed")
    }
    guard requestTimeout > .zero else { throw fail("RequestTimeout", "must be positive") }
    try coreOptions.validate()
  }

  /// The pure core's options, in ticks.
  public var coreOptions: RaftCoreOptions {
    var o = RaftCoreOptions()
    o.electionTimeoutMinTicks = ticks(electionTimeout.lowerBound)
    o.electionTimeoutMaxTicks = max(o.electionTimeoutMinTicks + 1, ticks(electionTimeout.upperBound))
    o.heartbeatTicks = max(1, ticks(heartbeatInterval))
    o.idleHeartbeatFactor = idleHeartbeatFactor ?? Self.defaultIdleHeartbeatFactor
    o.preVote = preVote
    o.checkQuorum = checkQuorum
    o.maxEntriesBytesPerMessage = maxEntriesBytesPerMessage
    o.maxInflightMessages = maxInflightMessages
    o.maxInflightBytes = maxInflightBytes
    o.maxUncommittedBytes = maxUncommittedBytes
    o.snapshotChunkBytes = snapshotChunkBytes
    o.maxSnapshotBytes = maxSnapshotBytes
    o.snapshotRefusalBackoffTicks = 20 * o.electionTimeoutMinTicks  // Retry a refused snapshot every ~20 timeouts.
    o.tickNanos = tickInterval.nanoseconds
    o.clockDriftBoundNanos = clockDriftBound.nanoseconds
    o.leaseDurationNanos = leaseReads ? leaseDuration.nanoseconds : 0  // A negative duration gives 0.
    return o
  }

  /// The founding membership, or ``QuorumCore/Membership/empty`` when joining an existing group.
  public var foundingMembership: Membership {
    Membership(voters: Set(members), learners: Set(learners))
  }
}

/// One line of the ``RaftConfiguration`` DSL.
public protocol RaftSetting: Sendable {
  /// Writes the setting into a configuration.
  func apply(to configuration: inout RaftConfiguration)
}

/// Collects ``RaftSetting`` lines into a list.
@resultBuilder
public enum RaftConfigurationBuilder {
  public static func buildExpression(_ setting: any RaftSetting) -> [any RaftSetting] { [setting] }
  /// A line both engines take (``QuorumReplica/Snapshots``, ``QuorumReplica/LeaseReads``, …).
  public static func buildExpression(_ setting: any ReplicaSetting) -> [any RaftSetting] { [SharedSetting(setting)] }
  public static func buildBlock(_ parts: [any RaftSetting]...) -> [any RaftSetting] { parts.flatMap { $0 } }
  public static func buildOptional(_ part: [any RaftSetting]?) -> [any RaftSetting] { part ?? [] }
  public static func buildEither(first: [any RaftSetting]) -> [any RaftSetting] { first }
  public static func buildEither(second: [any RaftSetting]) -> [any RaftSetting] { second }
  public static func buildArray(_ parts: [[any RaftSetting]]) -> [any RaftSetting] { parts.flatMap { $0 } }
}

/// Founding non-voting members.
public struct Learners: RaftSetting {
  let ids: [NodeID]
  /// Lists the founding learners.
  public init(_ ids: NodeID...) { self.ids = ids }
  public func apply(to c: inout RaftConfiguration) { c.learners = ids }
}

/// The most entry bytes in flight to one follower (Raft's flow control beyond ``QuorumReplica/FlowControl``).
public struct InflightBytes: RaftSetting {
  let bytes: Int
  /// Sets the limit.
  public init(_ bytes: Int) { self.bytes = bytes }
  public func apply(to c: inout RaftConfiguration) { c.maxInflightBytes = bytes }
}

/// Turns pre-vote on or off.
public struct PreVote: RaftSetting {
  let enabled: Bool
  /// Sets pre-vote.
  public init(_ enabled: Bool) { self.enabled = enabled }
  public func apply(to c: inout RaftConfiguration) { c.preVote = enabled }
}

/// Turns check-quorum on or off.
public struct CheckQuorum: RaftSetting {
  let enabled: Bool
  /// Sets check-quorum.
  public init(_ enabled: Bool) { self.enabled = enabled }
  public func apply(to c: inout RaftConfiguration) { c.checkQuorum = enabled }
}

extension RaftConfiguration: ReplicaConfigurationFields {}

/// A line both engines take, as a line of this engine's DSL.
struct SharedSetting: RaftSetting {
  let setting: any ReplicaSetting
  init(_ setting: any ReplicaSetting) { self.setting = setting }
  func apply(to configuration: inout RaftConfiguration) { setting.apply(to: &configuration) }
}
