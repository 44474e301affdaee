public import QuorumCore
public import QuorumReplica

/// Settings of a Paxos group — single-decree (``Synod``) or Multi-Paxos (``MultiPaxosNode``) — in real
/// units, validated as a whole.
///
/// Build one with the DSL — each line is a setting; anything left out keeps its default:
///
/// ```swift
/// let configuration = try PaxosConfiguration {
///   Members(1, 2, 3, 4, 5)
///   Quorums(phase1: 4, phase2: 2)          // Flexible Paxos: |Q1| + |Q2| > N
///   ElectionTimeout(Duration.milliseconds(150)...Duration.milliseconds(300))
///   HeartbeatInterval(.milliseconds(50))
///   LeaseReads(clockDriftBound: .milliseconds(15))
///   Snapshots(every: 10_000, retain: 1_000)
/// }
/// ```
///
/// ``validate()`` runs when the DSL finishes (and when a node starts) and throws a
/// ``QuorumCore/ConfigurationError`` naming the offending setting: quorums that need not intersect
/// (|Q1| + |Q2| ≤ N), a quorum below 1 or above the member count, an empty or duplicated member list, a node
/// identifier of 0, a heartbeat not well below the election timeout, a lease longer than the election
/// timeout allows, and so on.
///
/// The setting types share their names with `RaftConfiguration`'s where the meaning is the same; inside
/// either DSL the compiler picks the right one from the context, so a file may import both modules.
public struct PaxosConfiguration: Sendable, Equatable {
  /// The acceptors. In Multi-Paxos every member also proposes (when it leads) and learns; these are the
  /// founding voters, and an empty list makes a Multi-Paxos node that waits to be added to an existing group
  /// (it learns the configuration from the leader).
  public var members: [NodeID] = []
  /// The phase-1 (prepare) quorum size; `nil` means the smallest size that intersects every phase-2
  /// quorum, or a majority when both sizes are left out.
  ///
  /// In Multi-Paxos, sizes given (or derived from one given) stay fixed through membership changes, and a change
  /// they would not fit (|Q1| + |Q2| ≤ N, or a quorum above N) is refused; with both left out quorums are
  /// majorities of each configuration's voters.
  public var phase1Quorum: Int?
  /// The phase-2 (accept) quorum size; `nil` means the smallest size that intersects every phase-1
  /// quorum, or a majority when both sizes are left out.
  public var phase2Quorum: Int?
  /// A follower that hears nothing from a leader for a timeout drawn from this range starts phase 1.
  public var electionTimeout: ClosedRange<Duration> = .milliseconds(150)...(.milliseconds(300))
  /// How often a leader sends heartbeats.
  public var heartbeatInterval: Duration = .milliseconds(50)
  /// How many times less often an idle Multi-Paxos leader sends heartbeats (see
  /// ``MultiPaxosOptions/idleHeartbeatFactor``). As in Raft, `nil` (the default) lets the host choose:
  /// ``defaultIdleHeartbeatFactor`` (5: a crashed idle leader is replaced after 0.75–1.5 s instead of 150–300 ms),
  /// or ``detectedIdleHeartbeatFactor`` (20) for groups served over TCP, whose followers hear from their
  /// transport when the leader's process is lost (``QuorumCore/TransportEndpoint/onPeerLost(_:)``) and then time
  /// out as with an active leader. 1 turns idling off; at most ``MultiPaxosCore/maxIdleFactor``.
  ///
  /// - Note: An optional since the transport picks the default (it was an `Int` defaulting to 5): code that
  ///   reads it for the factor in force reads `coreOptions.idleHeartbeatFactor` instead.
  public var idleHeartbeatFactor: Int?
  /// The idle factor of a group whose transport detects no lost peer: 5.
  public static let defaultIdleHeartbeatFactor = 5
  /// The idle factor of a group whose transport reports lost peers (TCP): 20.
  public static let detectedIdleHeartbeatFactor = 20
  /// The clock granularity: timeouts are counted in ticks of this length.
  public var tickInterval: Duration = .milliseconds(10)
  /// How long a proposer waits for answers before sending a prepare or accept again (same ballot).
  public var retransmitInterval: Duration = .milliseconds(50)
  /// A single-decree proposer pre-empted twice in a row waits a random time below this before its next
  /// ballot, doubling per further pre-emption up to ``proposerBackoffMax``.
  public var proposerBackoffInitial: Duration = .milliseconds(10)
  /// The longest single-decree back-off.
  public var proposerBackoffMax: Duration = .milliseconds(200)
  /// The single-decree proposer that owns the lowest ballot and may skip phase 1 on its first attempt.
  public var distinguishedProposer: NodeID?
  /// Whether a Multi-Paxos leader serves lease reads without a round trip.
  public var leaseReads = true
  /// The most the clocks of two nodes may drift apart over one election timeout; must be positive with lease
  /// reads on. An acceptor refuses to promise a new ballot for the minimum election timeout (in whole ticks)
  /// after hearing from its leader, on its own monotonic clock; the lease lasts that window less one tick (a
  /// margin for when the clock is read) less this bound.
  public var clockDriftBound: Duration = .milliseconds(15)
  /// Take a snapshot after this many applied slots, once the entries applied since the last snapshot
  /// also add up to its size, so a large state is not rewritten for every few writes (0 disables automatic
  /// snapshots).
  public var snapshotEvery = 10_000
  /// Slots kept before a snapshot so that lagging replicas can catch up without it.
  public var snapshotRetainEntries = 1_000
  /// Bytes per snapshot chunk.
  public var snapshotChunkBytes = 1 << 20
  /// The largest snapshot a replica accepts.
  public var maxSnapshotBytes = 1 << 30
  /// The most entry bytes in one accept or promise message (at least one entry is always sent).
  public var maxEntriesBytesPerMessage = 1 << 20
  /// The most accept messages in flight to one acceptor (the pipeline depth).
  public var maxInflightMessages = 256
  /// Proposals are refused while this many bytes are proposed but not chosen.
  public var maxUncommittedBytes = 64 << 20
  /// The largest command accepted.
  public var maxCommandBytes = 4 << 20
  /// The most requests waiting in a node; beyond it requests fail with
  /// ``QuorumCore/ConsensusError/overloaded(limit:)``.
  public var maxPendingRequests = 65_536
  /// How long a request may wait before failing with ``QuorumCore/ConsensusError/timeout``.
  public var requestTimeout: Duration = .seconds(5)
  /// Exactly-once session limits.
  public var sessions = SessionPolicy()
  /// Capacity of each actor's input mailbox.
  public var inputCapacity = 65_536

  /// The most members a group may have (acknowledgements are counted in a 64-bit set).
  public static let maxMembers = 64

  /// The defaults: majority quorums, 150–300 ms elections, 50 ms heartbeats, 10 ms ticks, lease reads.
  public init() {}

  /// Builds a configuration from DSL settings and validates it.
  public init(@PaxosConfigurationBuilder _ settings: () -> [any PaxosSetting]) throws(ConfigurationError) {
    self.init()
    for setting in settings() { setting.apply(to: &self) }
    try validate()
  }

  /// The phase-1 and phase-2 quorum sizes for the founding members.
  public var quorums: (phase1: Int, phase2: Int) {
    let n = members.count
    switch (phase1Quorum, phase2Quorum) {
    case (let q1?, let q2?): return (q1, q2)
    case (let q1?, nil): return (q1, n - q1 + 1)
    case (nil, let q2?): return (n - q2 + 1, q2)
    case (nil, nil): return (n / 2 + 1, n / 2 + 1)
    }
  }

  private func ticks(_ d: Duration) -> Int { Int((d / tickInterval).rounded(.down)) }

  /// How long an acceptor refuses new ballots after hearing from its leader, on its monotonic clock: the
  /// minimum election timeout in whole ticks.
  private var refusalWindow: Duration { tickInterval * max(0, ticks(electionTimeout.lowerBound)) }

  /// The lease: the refusal window less one tick (a margin for the time between a message's arrival and the
  /// clock reading it is timed by) less the clock-drift bound.
  private var leaseDuration: Duration { refusalWindow - tickInterval - clockDriftBound }

  /// Checks every setting and their relations.
  public func validate() throws(ConfigurationError) {
    func fail(_ setting: String, _ reason: String) -> ConfigurationError {
      ConfigurationError(setting: setting, reason: reason)
    }
    if members.contains(.none) { throw fail("Members", "node id 0 is reserved") }
    if Set(members).count != members.count { throw fail("Members", "duplicate node ids in \(members)") }
    if members.count > Self.maxMembers {
      throw fail("Members", "\(members.count) members; at most \(Self.maxMembers) are supported")
    }
    let n = members.count
    if n == 0 && (phase1Quorum == nil) != (phase2Quorum == nil) {
      throw fail(
        "Quorums",
        "a node that joins a group (no members) needs both quorum sizes or neither: the missing one is derived "
          + "from the founding members, which it does not know")
    }
    let (q1, q2) = quorums
    if n > 0 {
      if !(1...n).contains(q1) { throw fail("Quorums", "the phase-1 quorum \(q1) must be between 1 and \(n)") }
      if !(1...n).contains(q2) { throw fail("Quorums", "the phase-2 quorum \(q2) must be between 1 and \(n)") }
      if q1 + q2 <= n {
        throw fail(
          "Quorums",
          "phase-1 quorum \(q1) + phase-2 quorum \(q2) must exceed the \(n) members (Flexible Paxos: every "
            + "phase-1 quorum must intersect every phase-2 quorum)")
      }
    }
    if let p = distinguishedProposer, p == .none { throw fail("DistinguishedProposer", "node id 0 is reserved") }
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
    if let factor = idleHeartbeatFactor, !(1...MultiPaxosCore.maxIdleFactor).contains(factor) {
      throw fail("IdleHeartbeatFactor", "must be 1 (no idling) ... \(MultiPaxosCore.maxIdleFactor), got \(factor)")
    }
    if heartbeatInterval * 3 > electionTimeout.lowerBound {
      throw fail(
        "HeartbeatInterval",
        "\(heartbeatInterval) is not well below the minimum election timeout \(electionTimeout.lowerBound) "
          + "(at most a third of it)")
    }
    guard retransmitInterval >= tickInterval else {
      throw fail("Retransmit", "\(retransmitInterval) is shorter than one tick (\(tickInterval))")
    }
    guard proposerBackoffInitial >= .zero, proposerBackoffMax >= proposerBackoffInitial else {
      throw fail("ProposerBackoff", "need 0 ≤ initial ≤ maximum")
    }
    if leaseReads {
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
      ("MaxUncommittedBytes", maxUncommittedBytes), ("MaxSnapshotBytes", maxSnapshotBytes),
    ]
    for (name, value) in positives where value < 1 { throw fail(name, "must be at least 1, got \(value)") }
    if snapshotEvery < 0 || snapshotRetainEntries < 0 { throw fail("Snapshots", "counts must not be negative") }
    if maxCommandBytes > maxUncommittedBytes {
      throw fail("MaxCommandBytes", "a command larger than MaxUncommittedBytes could never be proposed")
    }
    guard requestTimeout > .zero else { throw fail("RequestTimeout", "must be positive") }
    try coreOptions.validate(memberCount: n)
    if n > 0 { try synodOptions.validate(acceptorCount: n) }
  }

  /// The Multi-Paxos core's options, in ticks.
  public var coreOptions: MultiPaxosOptions {
    var o = MultiPaxosOptions()
    let (q1, q2) = quorums
    o.phase1Quorum = q1
    o.phase2Quorum = q2
    o.majorityQuorums = phase1Quorum == nil && phase2Quorum == nil
    o.electionTimeoutMinTicks = ticks(electionTimeout.lowerBound)
    o.electionTimeoutMaxTicks = max(o.electionTimeoutMinTicks + 1, ticks(electionTimeout.upperBound))
    o.heartbeatTicks = max(1, ticks(heartbeatInterval))
    o.idleHeartbeatFactor = idleHeartbeatFactor ?? Self.defaultIdleHeartbeatFactor
    o.retransmitTicks = max(1, ticks(retransmitInterval))
    o.maxEntriesBytesPerMessage = maxEntriesBytesPerMessage
    o.maxInflightMessages = maxInflightMessages
    o.maxUncommittedBytes = maxUncommittedBytes
    o.snapshotChunkBytes = snapshotChunkBytes
    o.maxSnapshotBytes = maxSnapshotBytes
    o.snapshotRefusalBackoffTicks = 20 * o.electionTimeoutMinTicks  // Retry a refused snapshot every ~20 timeouts.
    o.tickNanos = tickInterval.nanoseconds
    o.clockDriftBoundNanos = clockDriftBound.nanoseconds
    o.leaseDurationNanos = leaseReads ? leaseDuration.nanoseconds : 0  // A negative duration gives 0.
    return o
  }

  /// The single-decree cores' options, in ticks.
  public var synodOptions: SynodOptions {
    let (q1, q2) = quorums
    return SynodOptions(
      phase1Quorum: q1, phase2Quorum: q2, retransmitTicks: max(1, ticks(retransmitInterval)),
      backoffInitialTicks: ticks(proposerBackoffInitial), backoffMaxTicks: ticks(proposerBackoffMax),
      distinguishedProposer: distinguishedProposer)
  }
}

/// One line of the ``PaxosConfiguration`` DSL.
public protocol PaxosSetting: Sendable {
  /// Writes the setting into a configuration.
  func apply(to configuration: inout PaxosConfiguration)
}

/// Collects ``PaxosSetting`` lines into a list.
@resultBuilder
public enum PaxosConfigurationBuilder {
  /// One setting.
  public static func buildExpression(_ setting: any PaxosSetting) -> [any PaxosSetting] { [setting] }
  /// A line both engines take (``QuorumReplica/Snapshots``, ``QuorumReplica/LeaseReads``, …).
  public static func buildExpression(_ setting: any ReplicaSetting) -> [any PaxosSetting] { [SharedSetting(setting)] }
  /// A block of settings.
  public static func buildBlock(_ parts: [any PaxosSetting]...) -> [any PaxosSetting] { parts.flatMap { $0 } }
  /// An `if` without `else`.
  public static func buildOptional(_ part: [any PaxosSetting]?) -> [any PaxosSetting] { part ?? [] }
  /// The first branch of an `if`/`else`.
  public static func buildEither(first: [any PaxosSetting]) -> [any PaxosSetting] { first }
  /// The second branch of an `if`/`else`.
  public static func buildEither(second: [any PaxosSetting]) -> [any PaxosSetting] { second }
  /// A `for` loop.
  public static func buildArray(_ parts: [[any PaxosSetting]]) -> [any PaxosSetting] { parts.flatMap { $0 } }
}

/// The phase-1 and phase-2 quorum sizes (Flexible Paxos: any sizes with |Q1| + |Q2| > N).
///
/// A small phase-2 quorum makes every write cheaper; the price is a larger phase-1 quorum, paid only when
/// leadership changes. Leave one out to derive it from the other.
public struct Quorums: PaxosSetting {
  let phase1: Int?
  let phase2: Int?
  /// Sets either or both quorum sizes.
  public init(phase1: Int? = nil, phase2: Int? = nil) {
    self.phase1 = phase1
    self.phase2 = phase2
  }
  public func apply(to c: inout PaxosConfiguration) {
    c.phase1Quorum = phase1
    c.phase2Quorum = phase2
  }
}

/// How long a proposer waits before resending a prepare or accept with the same ballot.
public struct Retransmit: PaxosSetting {
  let interval: Duration
  /// Resends after `interval` without an answer.
  public init(after interval: Duration) { self.interval = interval }
  public func apply(to c: inout PaxosConfiguration) { c.retransmitInterval = interval }
}

/// The randomized back-off of dueling single-decree proposers.
public struct ProposerBackoff: PaxosSetting {
  let initial: Duration
  let maximum: Duration
  /// Sets the first back-off bound and its cap.
  public init(initial: Duration, maximum: Duration) {
    self.initial = initial
    self.maximum = maximum
  }
  public func apply(to c: inout PaxosConfiguration) {
    c.proposerBackoffInitial = initial
    c.proposerBackoffMax = maximum
  }
}

/// The single-decree proposer that owns round 0, the lowest ballot: its first proposal skips phase 1,
/// since no acceptor can have accepted anything in a lower ballot (Lamport, "Fast Paxos", §2.2).
public struct DistinguishedProposer: PaxosSetting {
  let id: NodeID
  /// Names the proposer.
  public init(_ id: NodeID) { self.id = id }
  public func apply(to c: inout PaxosConfiguration) { c.distinguishedProposer = id }
}

extension PaxosConfiguration: ReplicaConfigurationFields {}

/// A line both engines take, as a line of this engine's DSL.
struct SharedSetting: PaxosSetting {
  let setting: any ReplicaSetting
  init(_ setting: any ReplicaSetting) { self.setting = setting }
  func apply(to configuration: inout PaxosConfiguration) { setting.apply(to: &configuration) }
}
