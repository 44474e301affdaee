public import QuorumCore

/// A node's role. Role is state inside the one node, never a different object (thesis §3, etcd-io/raft).
public enum RaftRole: String, Sendable, Equatable, CustomStringConvertible {
  /// Follows a leader, or waits for one.
  case follower
  /// Asking peers whether it could win an election, without disturbing anyone (pre-vote).
  case preCandidate
  /// Asking peers for votes in a new term.
  case candidate
  /// Accepts proposals and replicates the log.
  case leader

  public var description: String { rawValue }
}

/// Tuning of the pure core, in ticks and bytes. ``RaftConfiguration`` builds it from durations.
public struct RaftCoreOptions: Sendable, Equatable {
  /// The shortest election timeout in ticks; each timeout is drawn from `min..<max`.
  public var electionTimeoutMinTicks: Int = 10
  /// One past the longest election timeout in ticks.
  public var electionTimeoutMaxTicks: Int = 20
  /// Ticks between heartbeats.
  public var heartbeatTicks: Int = 1
  /// How many times less often an idle leader heartbeats; 1 (the default) keeps every leader active.
  ///
  /// A leader is idle once nothing was proposed, read or transferred for a minimum election timeout, and every
  /// follower holds the whole log, knows it committed and answered the last heartbeat round. It then heartbeats
  /// every `heartbeatTicks × idleHeartbeatFactor` ticks and says so in each heartbeat; its followers wait as many
  /// times longer before they campaign or grant a vote, and it allows as many times longer for its quorum to
  /// answer (check-quorum). A request or any message a follower starts ends the idle mode at once. The price is
  /// failover: a crashed idle leader is replaced after `idleHeartbeatFactor` election timeouts. Leases are not
  /// stretched (an idle leader's lapses, and a lease read then takes a round), so safety does not depend on it.
  public var idleHeartbeatFactor: Int = 1
  /// Probe with a pre-vote before a real election, so a node that was partitioned away cannot disrupt the
  /// group when it returns (thesis §9.6).
  public var preVote: Bool = true
  /// A leader steps down when it has not heard from a quorum for an election timeout, and followers that
  /// heard from a leader within the minimum election timeout refuse votes (thesis §6.2, §9.6).
  public var checkQuorum: Bool = true
  /// The most entry bytes in one AppendEntries (at least one entry is always sent).
  public var maxEntriesBytesPerMessage: Int = 1 << 20
  /// The most AppendEntries in flight to one follower.
  public var maxInflightMessages: Int = 256
  /// The most entry bytes in flight to one follower (0 = unlimited).
  public var maxInflightBytes: Int = 32 << 20
  /// Proposals are refused while this many bytes are appended but uncommitted.
  public var maxUncommittedBytes: Int = 64 << 20
  /// The most entry bytes handed out for applying per ready batch.
  public var maxApplyBytesPerBatch: Int = 8 << 20
  /// Bytes per InstallSnapshot chunk.
  public var snapshotChunkBytes: Int = 1 << 20
  /// The largest snapshot a follower accepts.
  public var maxSnapshotBytes: Int = 1 << 30
  /// After a follower refused a snapshot as too large, leader ticks before the same snapshot is offered again
  /// (a newer snapshot or a new term retries at once). The default is 20 default minimum election timeouts.
  public var snapshotRefusalBackoffTicks: Int = 200
  /// How long a leader may serve lease reads after a quorum acknowledged a heartbeat, in the time units of
  /// `now` (nanoseconds in the node shell). 0 disables lease reads. Must end at least one tick and the
  /// clock-drift bound before the vote-refusal window (``voteRefusalWindowNanos``) does; ``validate()`` checks
  /// it and ``RaftConfiguration`` computes it.
  public var leaseDurationNanos: UInt64 = 0
  /// The length of one tick in the time units of `now` (nanoseconds in the node shell). When set, a follower
  /// measures how long ago it heard from a leader on the shell's monotonic clock (``RaftCore/advanceClock(to:)``)
  /// and refuses votes for ``voteRefusalWindowNanos`` of it, however the ticks were delivered. 0 (the default,
  /// for tests that drive the core by ticks alone) counts ticks only: ticks fired back to back after a stall
  /// shorten that window, so lease reads need this set.
  public var tickNanos: UInt64 = 0
  /// The most the clocks of two nodes may drift apart over one election timeout, in the units of `now`. Only
  /// ``validate()`` reads it: the lease must end this much (and a tick) before the refusal window.
  public var clockDriftBoundNanos: UInt64 = 0

  /// Default options: 10–20 tick elections, a heartbeat every tick, pre-vote and check-quorum on.
  public init() {}

  /// How long after hearing from a leader a follower refuses to vote for another candidate, measured on its
  /// monotonic clock: the minimum election timeout, `electionTimeoutMinTicks × tickNanos` (0 when
  /// ``tickNanos`` is 0).
  public var voteRefusalWindowNanos: UInt64 { UInt64(max(0, electionTimeoutMinTicks)) &* tickNanos }

  /// Checks the options on their own and against each other. With lease reads on, the lease must end at
  /// least one tick and the clock-drift bound before the vote-refusal window, the drift bound must not be
  /// zero (clocks always drift) and check-quorum must be on. The error names the offending option.
  public func validate() throws(ConfigurationError) {
    try TimingChecks.validateTimers(
      electionMin: electionTimeoutMinTicks, electionMax: electionTimeoutMaxTicks, heartbeat: heartbeatTicks,
      idleFactor: idleHeartbeatFactor, maxIdleFactor: RaftCore.maxIdleFactor)
    if leaseDurationNanos > 0 && !checkQuorum {
      throw ConfigurationError(setting: "leaseDurationNanos", reason: "lease reads need checkQuorum")
    }
    try TimingChecks.validateLease(
      durationNanos: leaseDurationNanos, driftBoundNanos: clockDriftBoundNanos, tickNanos: tickNanos,
      window: voteRefusalWindowNanos, windowName: "vote-refusal window")
  }
}

/// A message for the shell to send.
public struct RaftOutgoing: Sendable, Equatable, CustomStringConvertible {
  /// The receiver.
  public var to: NodeID
  /// The message.
  public var message: RaftMessage

  /// Creates an outgoing message.
  public init(to: NodeID, message: RaftMessage) {
    self.to = to
    self.message = message
  }

  public var description: String { "->\(to) \(message)" }
}

/// A read confirmed by ReadIndex: once the state machine has applied ``index``, the read may be answered.
public struct ReadState: Sendable, Equatable {
  /// The caller's identifier for the read.
  public var id: UInt64
  /// The commit index at the time the read was requested.
  public var index: LogIndex
}

/// The node's volatile view, reported when it changes.
public struct SoftState: Sendable, Equatable {
  /// The node's role.
  public var role: RaftRole
  /// The leader it knows of.
  public var leader: NodeID?
  /// The current term.
  public var term: Term
}

/// A follower refused the leader's snapshot because it is larger than the follower accepts
/// (``RaftCoreOptions/maxSnapshotBytes`` there). The leader stops sending it that snapshot and reports the
/// refusal once, in ``RaftReady/snapshotRefusals``; it tries again only when something changes: a newer
/// snapshot, a new term (a new leader), or after ``RaftCoreOptions/snapshotRefusalBackoffTicks`` (the
/// follower may have been restarted with a larger limit). Until then the follower stays behind, and
/// ``PeerProgress/snapshotRefusal`` says why.
public struct RaftSnapshotRefusal: Sendable, Equatable, CustomStringConvertible {
  /// The follower that refused.
  public var peer: NodeID
  /// The refused snapshot's index.
  public var snapshotIndex: LogIndex
  /// The refused snapshot's size in bytes.
  public var snapshotBytes: Int
  /// A sentence for the log.
  public var reason: String

  public var description: String { "\(peer) refused snapshot \(snapshotIndex): \(reason)" }
}

/// Everything the shell must do after a batch of inputs, in order (the `Ready` contract):
///
/// 1. send ``eagerMessages`` (leader replication; its own durable term makes this safe, thesis §10.2.1);
/// 2. persist ``snapshot``, ``hardState`` and ``entries`` (entries overwrite any stored suffix from their
///    first index) and make them durable;
/// 3. send ``messages`` (votes and acknowledgements that promise what step 2 stored);
/// 4. call ``RaftCore/advance(_:)`` with this ready;
/// 5. restore the state machine from ``snapshot`` if present, then apply ``committedEntries`` in order and
///    answer ``readStates`` once their index is applied.
public struct RaftReady: Sendable {
  /// The hard state to persist, if it changed.
  public var hardState: HardState?
  /// Whether ``hardState`` changes the term or the vote: then it must be durable before ``messages`` leave
  /// whatever the fsync policy (a commit index alone may ride along unsynced; it is recomputed after a restart).
  public var hardStateMustSync = false
  /// Entries to persist.
  public var entries: [LogEntry] = []
  /// A snapshot received from the leader, to persist and restore.
  public var snapshot: RaftSnapshot?
  /// Whether installing ``snapshot`` discarded the whole log (the log disagreed with it at its index);
  /// otherwise entries after the snapshot's index were kept.
  public var snapshotDiscardsLog = false
  /// Messages that may be sent before persisting (empty when this ready changes the term or vote).
  public var eagerMessages: [RaftOutgoing] = []
  /// Messages to send after persisting.
  public var messages: [RaftOutgoing] = []
  /// Committed entries to apply.
  public var committedEntries: [LogEntry] = []
  /// Confirmed linearizable reads.
  public var readStates: [ReadState] = []
  /// Reads that can no longer be confirmed (leadership lost), by identifier.
  public var failedReads: [UInt64] = []
  /// The volatile state, if it changed.
  public var softState: SoftState?
  /// Followers that refused a snapshot as too large, each reported once (see ``RaftSnapshotRefusal``): the
  /// shell logs them; an operator raises the follower's limit or shrinks the state.
  public var snapshotRefusals: [RaftSnapshotRefusal] = []

  /// Whether there is nothing to do.
  public var isEmpty: Bool {
    hardState == nil && entries.isEmpty && snapshot == nil && eagerMessages.isEmpty && messages.isEmpty
      && committedEntries.isEmpty && readStates.isEmpty && failedReads.isEmpty && softState == nil
      && snapshotRefusals.isEmpty
  }
}

/// Why the core refused a local request.
public enum RaftRequestError: Error, Sendable, Equatable {
  /// Not the leader; the hint is the known leader.
  case notLeader(hint: NodeID?)
  /// A leadership transfer is in progress.
  case transferInProgress
  /// Too many uncommitted bytes.
  case overloaded
  /// A membership change is already pending, or the change is invalid.
  case membershipChangeRejected(String)
}

/// Per-follower replication state, for status displays.
public struct PeerProgress: Sendable, Equatable {
  /// The highest index known replicated on the peer.
  public var match: LogIndex
  /// The next index the leader will send.
  public var next: LogIndex
  /// `probe`, `replicate` or `snapshot`.
  public var state: String
  /// Whether the peer is a learner.
  public var isLearner: Bool
  /// Whether the leader heard from it in the current check-quorum period.
  public var recentlyActive: Bool
  /// Why the leader is not sending it a snapshot it needs (it refused one as too large), or `nil`.
  public var snapshotRefusal: String? = nil
}

/// The Raft consensus algorithm as a pure, deterministic value.
///
/// `RaftCore` does no input/output, reads no clock and draws randomness only from the seeded generator it is
/// given. The node shell feeds it inputs — ``tick(now:)``, ``step(_:from:)``, ``propose(_:kind:)``,
/// ``requestRead(id:)`` — then takes a ``RaftReady`` with ``ready()``, carries it out in the documented
/// order, and reports back with ``advance(_:)``. A simulation drives the same value with virtual time.
///
/// Implemented: leader election with randomized timeouts, pre-vote and check-quorum; log replication with
/// batching, pipelining, a bounded in-flight window, fast conflict back-off and probe/replicate/snapshot
/// states per follower; the §5.4.2 commit rule with a no-op at election; chunked snapshots; joint-consensus
/// membership changes with learners; leadership transfer; ReadIndex and lease reads.
public struct RaftCore: Sendable {
  /// This node.
  public let id: NodeID
  /// The options in force.
  public let options: RaftCoreOptions

  /// The current term.
  public private(set) var term: Term = 0
  /// The vote cast in ``term``.
  public private(set) var vote: NodeID = .none
  /// The current role.
  public private(set) var role: RaftRole = .follower
  /// The known leader of ``term``.
  public private(set) var leader: NodeID?
  /// Peer messages dropped unread because no honest peer sends them: malformed (``RaftMessage/malformation``: a
  /// term at or above ``RaftMessage/maxTerm``), or an append response about entries beyond the leader's log. A count that
  /// grows points at a faulty or version-skewed member; the node's status shows it (``RaftStatus/refusedMessages``).
  public private(set) var refusedMessages: UInt64 = 0
  /// The membership in force: the newest membership entry in the log, committed or not (§6), else the
  /// snapshot's, else the one given at creation.
  public private(set) var membership: Membership
  /// The index of the entry (or snapshot) that set ``membership``; 0 if it was given at creation.
  public private(set) var membershipIndex: LogIndex = 0
  /// Whether this node was a voter of the membership before ``membershipIndex``'s (set by `adopt`).
  private var votedBeforeMembership = false
  private let initialMembership: Membership

  var log: RaftLog
  var progress: [NodeID: Progress] = [:]
  private var votes: [NodeID: Bool] = [:]
  private var electionElapsed = 0
  private var heartbeatElapsed = 0
  private(set) var randomizedElectionTimeout = 0
  /// Ticks a follower told its leader is lost still waits before it may campaign, by its rank among the
  /// survivors (``peerLost(_:)``); 0 otherwise. Cleared by any word from a leader and by a change of role.
  private(set) var campaignHold = 0
  /// Consecutive campaigns (pre-votes, or elections without them) this node started on a timeout while its newest
  /// configuration leaves it out of the voters it moves to (a joint configuration removing it, or one without it not
  /// known committed, ``isPromotable``), and that ended in its next timeout without a single message from any voter of
  /// that configuration. A node removed from the group that never learns the removal committed keeps campaigning so
  /// (the leader stops replicating to it once it appends the configuration without it), and the members, which hold the
  /// new configuration, drop its requests unanswered. From ``silentCampaignsBeforeBackoff`` on its election timeout
  /// doubles with each (``campaignBackoff``), so it disturbs the network less; a message from a voter of its newest
  /// configuration resets it (not one from another node removed with it, which answers its requests). A voter the
  /// configuration keeps, cut off from everyone, is not slowed: it cannot tell that from a group that lost its leader,
  /// and it must not come back late.
  private(set) var silentCampaigns = 0
  /// Whether a message from a voter of the newest configuration arrived since this node last campaigned on a
  /// timeout.
  private var heardSinceCampaign = true
  /// Silent campaigns a node makes at its normal election timeout before it backs off.
  static let silentCampaignsBeforeBackoff = 3
  /// The most a node's election timeout stretches after silent campaigns.
  static let maxCampaignBackoff = 8
  private var rng: SeededRandom
  /// The target of a leadership transfer in progress.
  public private(set) var transferee: NodeID?
  private var uncommittedBytes = 0
  private var needsBroadcast = false
  /// A leader heartbeating less often (``RaftCoreOptions/idleHeartbeatFactor``).
  public private(set) var isIdle = false
  /// Whether this leader may turn idle; the shell clears it while its state machine has a deadline coming (a
  /// lease), so that a failover then takes an active group's election time. Clearing it wakes an idle leader.
  public var idleAllowed = true {
    didSet { if !idleAllowed { noteActivity() } }
  }
  /// A leader's ticks since the last request or follower-started message.
  private var ticksSinceActivity = 0
  /// A follower's leader is idle and heartbeats this many times less often: its timeouts stretch as much (1 when
  /// its leader is active or unknown).
  public private(set) var leaderIdleFactor = 1

  // ReadIndex and leases.
  private struct PendingRead: Sendable {
    var id: UInt64
    var index: LogIndex
    var round: UInt64
  }
  private var readRound: UInt64 = 0
  private var needsReadRound = false
  private var pendingReads = FIFOQueue<PendingRead>()
  private var readsAwaitingCommit = FIFOQueue<UInt64>()
  /// The most reads a leader keeps waiting for confirmation; past it the oldest is reported failed.
  static let maxUnconfirmedReads = 65_536
  /// The reads waiting for confirmation (at most ``maxUnconfirmedReads``).
  var unconfirmedReads: Int { pendingReads.count + readsAwaitingCommit.count }
  private var roundSentAt = FIFOQueue<(round: UInt64, at: UInt64)>()
  private var leaseStart: UInt64?
  /// A transfer was started in this term: its TimeoutNow may still arrive (the network may delay it without
  /// bound) and elect the target past every voter's lease, so this leader serves no lease read until the term ends.
  private var leaseForfeited = false
  /// Restarted from durable state: before the crash this node may have acknowledged a heartbeat that started a
  /// leader's lease, so it refuses votes for a minimum election timeout as if it had just heard from that leader.
  private var restartedRecently = false
  /// The shell's monotonic clock, as last given (never goes back).
  private var now: UInt64 = 0
  /// When (``now``) this node last stepped a message from a leader, or read the clock first after a restart;
  /// `nil` if never. With ``RaftCoreOptions/tickNanos`` set, votes are refused for
  /// ``RaftCoreOptions/voteRefusalWindowNanos`` after it.
  private var leaderContactNanos: UInt64?
  /// Restarted from durable state and not yet given the clock: the refusal window starts at the first reading.
  private var awaitingFirstClock = false

  // A snapshot being received in chunks.
  private struct IncomingSnapshot: Sendable {
    /// The term of the leader sending it: another leader's serialisation of the same state may differ.
    var leaderTerm: Term
    var index: LogIndex
    var term: Term
    var membership: Membership
    var totalBytes: UInt64
    var data: [UInt8]
  }
  private var incomingSnapshot: IncomingSnapshot?

  // Outputs accumulated for the next ready.
  private var outbox: [RaftOutgoing] = []
  private var eagerOutbox: [RaftOutgoing] = []
  private var readStates: [ReadState] = []
  private var failedReads: [UInt64] = []
  private var snapshotRefusals: [RaftSnapshotRefusal] = []
  private var lastHardState: HardState
  private var lastSoftState: SoftState

  /// Creates a node from its durable state.
  ///
  /// - Parameters:
  ///   - id: this node.
  ///   - options: tuning in ticks and bytes.
  ///   - membership: the membership to use when neither the log nor a snapshot holds one. A node joining an
  ///     existing group passes ``QuorumCore/Membership/empty`` and learns the membership from the leader.
  ///   - hardState: the recovered term, vote and commit index.
  ///   - snapshot: the recovered snapshot, if any.
  ///   - entries: the recovered entries after the snapshot.
  ///   - random: the seeded generator for election timeouts.
  public init(
    id: NodeID, options: RaftCoreOptions = RaftCoreOptions(), membership: Membership,
    hardState: HardState = HardState(), snapshot: RaftSnapshot? = nil, entries: [LogEntry] = [],
    random: SeededRandom
  ) {
    precondition(id != .none, "node id 0 is reserved")
    self.id = id
    self.options = options
    self.rng = random
    self.term = hardState.term
    self.vote = hardState.vote
    self.log = RaftLog(snapshot: snapshot, entries: entries, committed: hardState.commit)
    self.initialMembership = membership
    self.membership = membership
    self.lastHardState = HardState(term: hardState.term, vote: hardState.vote, commit: log.committed)
    self.lastSoftState = SoftState(role: .follower, leader: nil, term: hardState.term)
    self.restartedRecently = hardState.term > 0
    self.awaitingFirstClock = hardState.term > 0
    recomputeMembership()
    resetRandomizedElectionTimeout()
  }

  /// Checks that recovered durable state is consistent before a node restarts from it; the shell calls it
  /// with what it decoded from storage, before ``init(id:options:membership:hardState:snapshot:entries:random:)``
  /// (which trusts its arguments: it would clamp a commit index beyond the log and apply what is there).
  ///
  /// - Throws: ``RaftRecoveryError/commitBeyondLog(commit:lastIndex:)`` when the commit index is beyond the
  ///   last recovered entry (or snapshot), ``RaftRecoveryError/logGap(after:next:)`` when the entries do not
  ///   follow the snapshot contiguously.
  public static func validateRecovered(
    hardState: HardState, snapshot: RaftSnapshot?, entries: [LogEntry]
  ) throws(RaftRecoveryError) {
    var last = snapshot?.index ?? 0
    for entry in entries where entry.index > (snapshot?.index ?? 0) {
      if entry.index != last + 1 { throw .logGap(after: last, next: entry.index) }
      last = entry.index
    }
    if hardState.commit > last { throw .commitBeyondLog(commit: hardState.commit, lastIndex: last) }
  }

  /// Creates a founding member of a new group: its log starts with the committed bootstrap entry that
  /// records `membership` (identical on every founding member), so nodes added later learn the founding
  /// membership from the log. Use the plain initializer to restart from durable state or to join an
  /// existing group (with ``QuorumCore/Membership/empty``).
  public static func bootstrap(
    id: NodeID, options: RaftCoreOptions = RaftCoreOptions(), membership: Membership, random: SeededRandom
  ) -> RaftCore {
    let entry = LogEntry(index: 1, term: 0, kind: .membership, data: membership.wireBytes())
    var core = RaftCore(
      id: id, options: options, membership: membership, hardState: HardState(term: 0, vote: .none, commit: 1),
      entries: [entry], random: random)
    core.log.markUnpersisted()  // The shell must write the bootstrap entry like any other.
    core.lastHardState = HardState()
    return core
  }

  // MARK: - Public views

  /// The last index in the log.
  public var lastIndex: LogIndex { log.lastIndex }
  /// The term of the last entry.
  public var lastTerm: Term { log.lastTerm }
  /// The first index still held in memory (entries before it are in the snapshot).
  public var firstIndex: LogIndex { log.firstIndex }
  /// The commit index.
  public var commitIndex: LogIndex { log.committed }
  /// The highest index handed out for applying.
  public var appliedIndex: LogIndex { log.applying }
  /// The highest index known durable on this node.
  public var persistedIndex: LogIndex { log.persisted }
  /// The newest snapshot held.
  public var snapshot: RaftSnapshot? { log.snapshot }
  /// The durable state.
  public var hardState: HardState { HardState(term: term, vote: vote, commit: log.committed) }
  /// The volatile state.
  public var softState: SoftState { SoftState(role: role, leader: leader, term: term) }
  /// Whether this node may campaign: a voter of its latest membership, or, while that membership is not known
  /// to be committed, a voter of the one before it (thesis §4.2.2: a server the uncommitted configuration leaves
  /// out may be needed to elect a leader until it commits; its own vote then does not count).
  public var isPromotable: Bool {
    membership.isVoter(id) || (votedBeforeMembership && membershipIndex > log.committed)
  }
  /// Whether this node is a learner.
  public var isLearner: Bool { membership.learners.contains(id) || membership.learnersNext.contains(id) }
  /// The entry at `index`, if held in memory.
  public func entry(at index: LogIndex) -> LogEntry? { log.entry(at: index) }
  /// The term of the entry at `index`, if known.
  public func term(at index: LogIndex) -> Term? { log.term(at: index) }
  /// Entries `from...to` held in memory (for tests and status).
  public func entries(from: LogIndex, through: LogIndex) -> [LogEntry] {
    guard from <= through else { return [] }
    return log.slice(from: max(from, log.firstIndex), to: through + 1, maxBytes: .max) ?? []
  }
  /// Whether a membership change is in the log but not yet committed.
  public var hasPendingMembershipChange: Bool { membershipIndex > log.committed }
  /// The leader's view of each peer's replication (empty unless leader).
  public var peerProgress: [NodeID: PeerProgress] {
    progress.mapValues {
      PeerProgress(
        match: $0.match, next: $0.next, state: $0.state.description, isLearner: $0.isLearner,
        recentlyActive: $0.recentActive, snapshotRefusal: $0.snapshotRefusal)
    }
  }
  /// The election timeout currently drawn, in ticks.
  public var currentElectionTimeout: Int { randomizedElectionTimeout }
  /// Whether the leader has committed an entry of its own term (required before serving reads).
  public var hasCommittedInCurrentTerm: Bool { log.term(at: log.committed) == term }

  // MARK: - Inputs

  /// Advances logical time by one tick. `now` is the shell's monotonic clock, as in ``advanceClock(to:)``.
  /// Election and heartbeat timeouts count ticks; leases and the vote-refusal window use `now`.
  public mutating func tick(now: UInt64 = 0) {
    advanceClock(to: now)
    switch role {
    case .leader: tickLeader()
    default: tickElection()
    }
  }

  /// Gives the core the shell's monotonic clock (nanoseconds in the node shell); a value below the last one
  /// is ignored, so the clock never goes back. The shell calls it with the time it took a batch of messages
  /// out of its mailboxes, before stepping them: a message from the leader is timed by it, and the
  /// vote-refusal window (``RaftCoreOptions/voteRefusalWindowNanos``) runs from there.
  public mutating func advanceClock(to nanos: UInt64) {
    if awaitingFirstClock {
      // The first reading after a restart: refuse votes for a window from now, as if a leader had just been
      // heard (it may have been, just before the crash).
      awaitingFirstClock = false
      now = max(now, nanos)
      leaderContactNanos = now
      return
    }
    now = max(now, nanos)
  }

  /// Records the shell's monotonic clock without ticking; the same as ``advanceClock(to:)``.
  public mutating func observe(now: UInt64) { advanceClock(to: now) }

  private mutating func tickElection() {
    electionElapsed += 1
    if electionElapsed >= options.electionTimeoutMinTicks { restartedRecently = false }
    if incomingSnapshot != nil, electionElapsed >= options.electionTimeoutMinTicks * 4 {
      incomingSnapshot = nil  // The leader stopped sending it; free the memory.
    }
    // A node within its refusal window does not campaign either: its own vote would count for a new leader
    // while the leader it acknowledged may still hold a lease. Ticks fired in a burst after a stall reach
    // the timeout early; the clock says whether the window has really passed.
    if campaignHold > 0 { campaignHold -= 1 }
    if isPromotable && electionElapsed >= randomizedElectionTimeout * leaderIdleFactor * campaignBackoff
      && campaignHold == 0 && !inClockLeaseWindow
    {
      // The campaign this timeout ends was answered by no voter (a member would have answered, granted or not).
      if role != .follower && !heardSinceCampaign && !membership.voters.contains(id) {
        silentCampaigns = min(silentCampaigns + 1, 64)
      }
      heardSinceCampaign = false
      electionElapsed = 0
      startElection(options.preVote ? .preVote : .election)
    }
  }

  /// How many times longer than drawn this node waits before campaigning: 1 until ``silentCampaignsBeforeBackoff``
  /// silent campaigns in a row (``silentCampaigns``), then 2, 4, and so on up to ``maxCampaignBackoff``.
  /// Deterministic: it stretches the drawn timeout, drawing nothing more.
  var campaignBackoff: Int {
    let excess = silentCampaigns - Self.silentCampaignsBeforeBackoff + 1
    guard excess > 0 else { return 1 }
    return min(1 << min(excess, 16), Self.maxCampaignBackoff)
  }

  /// Whether this node heard from a leader (or restarted) less than the vote-refusal window ago, by the
  /// monotonic clock; always `false` without ``RaftCoreOptions/tickNanos`` or check-quorum.
  private var inClockLeaseWindow: Bool {
    guard options.checkQuorum, options.tickNanos > 0 else { return false }
    if awaitingFirstClock { return true }
    guard let contact = leaderContactNanos else { return false }
    return now &- contact < options.voteRefusalWindowNanos
  }

  /// Whether this node refuses to vote (or pre-vote) for another candidate: it heard from a leader within a
  /// minimum election timeout, counted in ticks since then or measured on the monotonic clock (thesis §4.2.3;
  /// the lease rests on it). Either count suffices to refuse.
  private var refusesVotes: Bool {
    guard options.checkQuorum else { return false }
    // A leader is its own recent contact. (An active one restarts its count every minimum election timeout, so
    // the count below would always refuse; an idle one counts to a longer timeout, and must refuse as long.)
    if role == .leader { return true }
    if (leader != nil || restartedRecently) && electionElapsed < options.electionTimeoutMinTicks * leaderIdleFactor {
      return true
    }
    return inClockLeaseWindow
  }

  private mutating func noteLeaderContact() {
    leaderContactNanos = now
    campaignHold = 0
  }

  /// How many of the next ticks are certain to do nothing but advance counters: no message, no change of role,
  /// nothing ready. A leader's next heartbeat, its check-quorum, a snapshot it resends and an election timeout
  /// all end the quiet; a transfer in progress or pending work allows none. A shell may apply quiet ticks late
  /// and in one go, before the next message, with the same result as one at a time.
  public var quietTicks: Int {
    guard !hasReady else { return 0 }
    switch role {
    case .leader:
      guard transferee == nil else { return 0 }
      // A leader alone in its group sends its heartbeats to nobody, and its check-quorum always finds itself: no
      // tick of its does anything. An idle leader's heartbeat and check-quorum come `heartbeatScale` times later.
      if progress.isEmpty { return Int.max }
      let heartbeatDue = options.heartbeatTicks * heartbeatScale - heartbeatElapsed
      var quiet = min(heartbeatDue, options.electionTimeoutMinTicks * heartbeatScale - electionElapsed)
      for peer in progress.values where peer.state == .snapshot {
        quiet = min(quiet, options.electionTimeoutMinTicks - peer.snapshotIdleTicks)
      }
      return max(0, quiet - 1)
    default:
      // A learner never campaigns; its counters only free an abandoned snapshot, which needs no wake-up.
      guard isPromotable else { return options.electionTimeoutMinTicks }
      let timeout = randomizedElectionTimeout * leaderIdleFactor * campaignBackoff
      return max(0, max(timeout - electionElapsed, campaignHold) - 1)
    }
  }

  private mutating func tickLeader() {
    heartbeatElapsed += 1
    electionElapsed += 1
    ticksSinceActivity += 1
    if electionElapsed >= options.electionTimeoutMinTicks * heartbeatScale {
      electionElapsed = 0
      if options.checkQuorum && !quorumRecentlyActive() {
        becomeFollower(term: term, leader: nil)
        return
      }
      if transferee != nil { transferee = nil }  // Abort a transfer that did not finish in time.
    }
    guard role == .leader else { return }
    if heartbeatElapsed >= options.heartbeatTicks * heartbeatScale {
      heartbeatElapsed = 0
      if !isIdle && mayTurnIdle { isIdle = true }
      broadcastHeartbeat(newRound: true)
    }
    retryStalledSnapshots()
  }

  /// The largest idle factor a follower accepts from a heartbeat (a bound on how long it may wait).
  public static let maxIdleFactor = 100

  /// How many times longer than normal this leader's heartbeat and check-quorum periods are: its idle factor
  /// while idle, else 1.
  private var heartbeatScale: Int { isIdle ? options.idleHeartbeatFactor : 1 }

  /// Whether this leader may heartbeat less often from now on: idle mode is on, nothing was asked of it for a
  /// minimum election timeout, and every follower holds the whole log, knows it committed (the last heartbeat
  /// round carried that commit index) and answered that round.
  private var mayTurnIdle: Bool {
    guard options.idleHeartbeatFactor > 1, idleAllowed, ticksSinceActivity >= options.electionTimeoutMinTicks,
      transferee == nil, pendingReads.isEmpty, readsAwaitingCommit.isEmpty, !membership.isJoint,
      log.committed == log.lastIndex, !progress.isEmpty
    else { return false }
    return progress.values.allSatisfy { pr in
      pr.match == log.lastIndex && pr.state == .replicate && pr.ackedRound >= readRound
    }
  }

  /// A request or a follower-started message: an idle leader heartbeats at the normal rate again.
  private mutating func noteActivity() {
    ticksSinceActivity = 0
    guard isIdle else { return }
    isIdle = false
    // The next heartbeat tells the followers; appends or a read round may tell them sooner.
    heartbeatElapsed = max(heartbeatElapsed, options.heartbeatTicks - 1)
  }

  private mutating func quorumRecentlyActive() -> Bool {
    let active = QuorumMath.committedValue(membership) { peer in
      peer == id ? 1 : ((progress[peer]?.recentActive ?? false) ? 1 : 0)
    }
    for peer in Array(progress.keys) { progress[peer]?.recentActive = false }
    return active == 1
  }

  /// Starts an election now (as if the election timeout had elapsed), if this node is not the leader, may
  /// campaign (``isPromotable``) and is not within its vote-refusal window by the monotonic clock (see
  /// ``RaftCoreOptions/tickNanos``). Returns whether it started one.
  @discardableResult
  public mutating func campaign() -> Bool {
    guard role != .leader, isPromotable, !inClockLeaseWindow else { return false }
    startElection(options.preVote ? .preVote : .election)
    return true
  }

  /// Handles a message from a peer.
  public mutating func step(_ message: RaftMessage, from: NodeID) {
    guard from != id, from != .none else { return }
    // A message no honest peer sends (its decoder refuses it; this one may not have been encoded) is dropped
    // before it touches anything: a term near the top would leave no next term to campaign in.
    guard message.malformation == nil else {
      refusedMessages &+= 1
      return
    }
    // A voter of the newest configuration answers: this node is not cut off, nor removed without knowing it.
    // Campaign on the drawn timeouts. A message from anyone else proves neither: two nodes removed together,
    // each holding the configuration that removes both, answer each other's campaigns, and counting those
    // they would never back off.
    if membership.voters.contains(from) {
      heardSinceCampaign = true
      silentCampaigns = 0
    }
    if case .requestVote = message, !membership.allMembers.isEmpty, !membership.allMembers.contains(from) {
      return  // A removed or unknown node must not disturb the group.
    }
    // A member asking for votes lost touch with this leader: heartbeat at the normal rate again.
    if role == .leader, case .requestVote = message { noteActivity() }
    let msgTerm = message.term
    if msgTerm > term {
      // A higher term and the vote-refusal window: a vote request inside the window is ignored and changes
      // nothing (not even the term). An AppendEntries, heartbeat or snapshot comes from that term's leader: it is
      // leader contact and restarts the window (stepFollower records it). Any other message (a response, a
      // TimeoutNow) moves this node to the term but neither restarts nor ends the window measured on the clock:
      // the leader it last heard may still hold a lease. A TimeoutNow then starts a transfer election, whose
      // requests voters grant inside their windows: the leader that sent it gave up its lease reads for its term.
      switch message {
      case .requestVote(let m):
        if !m.transfer && refusesVotes { return }  // Thesis §4.2.3: ignore disruptive votes while a leader is alive.
        if m.preVote { break }  // Pre-votes never change our term.
        becomeFollower(term: msgTerm, leader: nil)
      case .voteResponse(let m) where m.preVote && m.granted:
        break  // The pre-candidate moves to the term when it wins.
      case .appendEntries, .heartbeat, .installSnapshot:
        becomeFollower(term: msgTerm, leader: from)
      default:
        becomeFollower(term: msgTerm, leader: nil)
      }
    } else if msgTerm < term {
      switch message {
      case .appendEntries, .heartbeat:
        // A stale leader: tell it our term so it steps down (needed with check-quorum/pre-vote, where our
        // term may have advanced without its knowledge).
        if options.checkQuorum || options.preVote {
          send(from, .appendResponse(AppendResponse(term: term, reject: false, index: 0)))
        }
      case .requestVote(let m) where m.preVote:
        send(from, .voteResponse(VoteResponse(term: term, granted: false, preVote: true)))
      default:
        break
      }
      return
    }

    switch message {
    case .requestVote(let m):
      handleVoteRequest(m, from: from)
    case .timeoutNow:
      if role != .leader && isPromotable { startElection(.transfer) }
    default:
      switch role {
      case .leader: stepLeader(message, from: from)
      case .candidate, .preCandidate: stepCandidate(message, from: from)
      case .follower: stepFollower(message, from: from)
      }
    }
  }

  private mutating func handleVoteRequest(_ m: RequestVote, from: NodeID) {
    // The window holds in this term too: a response from another node (a pre-vote refused by a candidate of the
    // new term, say) can move this node into the candidate's term without a leader or a vote, and the leader it
    // last heard may still count on it for its lease. Only a repeat of the vote already given, or a transfer's
    // request, passes.
    let withinWindow = vote != from && !m.transfer && refusesVotes
    let canVote =
      vote == from || (vote == .none && leader == nil) || (m.preVote && m.term > term)
    if canVote && !withinWindow && log.isUpToDate(lastIndex: m.lastLogIndex, lastTerm: m.lastLogTerm) {
      // A granted pre-vote answers in the asked term so the pre-candidate can count it.
      send(from, .voteResponse(VoteResponse(term: m.term, granted: true, preVote: m.preVote)))
      if !m.preVote {
        electionElapsed = 0
        vote = from
      }
    } else {
      send(from, .voteResponse(VoteResponse(term: term, granted: false, preVote: m.preVote)))
    }
  }

  // MARK: - Roles

  private mutating func reset(term newTerm: Term) {
    if term != newTerm {
      term = newTerm
      vote = .none
    }
    leader = nil
    electionElapsed = 0
    heartbeatElapsed = 0
    isIdle = false
    ticksSinceActivity = 0
    leaderIdleFactor = 1
    campaignHold = 0
    resetRandomizedElectionTimeout()
    votes = [:]
    transferee = nil
    progress = [:]
    leaseStart = nil
    leaseForfeited = false
    restartedRecently = false
    roundSentAt.removeAll()
    failPendingReads()
    needsBroadcast = false
    needsReadRound = false
  }

  private mutating func failPendingReads() {
    while let read = pendingReads.popFirst() { failedReads.append(read.id) }
    failedReads.append(contentsOf: readsAwaitingCommit.elements)
    readsAwaitingCommit.removeAll()
  }

  private mutating func resetRandomizedElectionTimeout() {
    let lo = options.electionTimeoutMinTicks
    let hi = max(options.electionTimeoutMaxTicks, lo + 1)
    randomizedElectionTimeout = Int.random(in: lo..<hi, using: &rng)
  }

  private mutating func becomeFollower(term newTerm: Term, leader newLeader: NodeID?) {
    reset(term: newTerm)
    role = .follower
    leader = newLeader
  }

  private enum ElectionKind {
    /// A pre-vote probe (thesis §9.6).
    case preVote
    /// A real election.
    case election
    /// A real election asked for by the leader (TimeoutNow): voters ignore their leader lease.
    case transfer
  }

  private mutating func startElection(_ kind: ElectionKind) {
    guard term < RaftMessage.maxTerm - 1 else {
      // Every member would refuse the next term (a stored term near the bound leaves none): never campaigned in.
      // Written so that a damaged stored term of 2^64 − 1 idles the node instead of trapping on `term + 1`.
      electionElapsed = 0
      resetRandomizedElectionTimeout()
      return
    }
    if kind == .preVote {
      role = .preCandidate
      votes = [:]
      leader = nil
      // Keep term and vote: a pre-vote disturbs no one.
      electionElapsed = 0
      resetRandomizedElectionTimeout()
      requestVotes(term: term + 1, preVote: true, transfer: false)
    } else {
      reset(term: term + 1)
      role = .candidate
      vote = id
      requestVotes(term: term, preVote: false, transfer: kind == .transfer)
    }
  }

  private mutating func requestVotes(term voteTerm: Term, preVote: Bool, transfer: Bool) {
    votes[id] = true
    if QuorumMath.tally(membership, votes) == .won {
      if preVote { startElection(.election) } else { becomeLeader() }
      return
    }
    let request = RequestVote(
      term: voteTerm, lastLogIndex: log.lastIndex, lastLogTerm: log.lastTerm, preVote: preVote, transfer: transfer)
    for peer in membership.allVoters.sorted() where peer != id {
      send(peer, .requestVote(request))
    }
  }

  private mutating func becomeLeader() {
    precondition(role == .candidate, "\(id) becoming leader from \(role)")
    reset(term: term)
    role = .leader
    leader = id
    for peer in membership.allMembers where peer != id {
      progress[peer] = newProgress(peer)
    }
    uncommittedBytes = 0
    // The no-op that commits every earlier entry once it is committed (§5.4.2, §8). It counts towards the
    // uncommitted bytes like any entry of this term: committing it subtracts it again.
    let noop = LogEntry(index: log.lastIndex + 1, term: term, kind: .noop)
    log.appendOne(noop)
    uncommittedBytes += noop.byteSize
    needsBroadcast = true
    // A joint configuration the previous leader did not get to leave is left once it is committed.
    if membership.isJoint && membershipIndex <= log.committed { membershipCommitted() }
  }

  private func newProgress(_ peer: NodeID) -> Progress {
    var p = Progress(
      next: log.lastIndex + 1, isLearner: !membership.isVoter(peer),
      maxInflightMessages: options.maxInflightMessages, maxInflightBytes: options.maxInflightBytes)
    p.recentActive = true
    return p
  }

  private mutating func stepCandidate(_ message: RaftMessage, from: NodeID) {
    switch message {
    case .appendEntries(let m):
      becomeFollower(term: m.term, leader: from)
      noteLeaderContact()
      handleAppend(m, from: from)
    case .heartbeat(let m):
      becomeFollower(term: m.term, leader: from)
      noteLeaderContact()
      handleHeartbeat(m, from: from)
    case .installSnapshot(let m):
      becomeFollower(term: m.term, leader: from)
      noteLeaderContact()
      handleSnapshotChunk(m, from: from)
    case .voteResponse(let m):
      guard m.preVote == (role == .preCandidate) else { return }
      votes[from] = m.granted
      switch QuorumMath.tally(membership, votes) {
      case .won:
        if role == .preCandidate { startElection(.election) } else { becomeLeader() }
      case .lost:
        becomeFollower(term: term, leader: nil)
      case .pending:
        break
      }
    default:
      break
    }
  }

  private mutating func stepFollower(_ message: RaftMessage, from: NodeID) {
    switch message {
    case .appendEntries(let m):
      electionElapsed = 0
      leaderIdleFactor = 1
      leader = from
      noteLeaderContact()
      handleAppend(m, from: from)
    case .heartbeat(let m):
      electionElapsed = 0
      leader = from
      noteLeaderContact()
      handleHeartbeat(m, from: from)
    case .installSnapshot(let m):
      electionElapsed = 0
      leaderIdleFactor = 1
      leader = from
      noteLeaderContact()
      handleSnapshotChunk(m, from: from)
    default:
      break
    }
  }

  // MARK: - Follower replication

  private mutating func handleAppend(_ m: AppendEntries, from: NodeID) {
    if m.prevLogIndex < log.committed {
      send(from, .appendResponse(AppendResponse(term: term, reject: false, index: log.committed)))
      return
    }
    if let (lastNew, firstWritten) = log.maybeAppend(
      prevIndex: m.prevLogIndex, prevTerm: m.prevLogTerm, entries: m.entries)
    {
      if let firstWritten { membershipMayHaveChanged(from: firstWritten) }
      commit(to: min(m.commit, lastNew))
      send(from, .appendResponse(AppendResponse(term: term, reject: false, index: lastNew)))
    } else {
      let hint = log.findConflictByTerm(min(m.prevLogIndex, log.lastIndex), m.prevLogTerm)
      send(
        from,
        .appendResponse(
          AppendResponse(term: term, reject: true, index: m.prevLogIndex, hintIndex: hint.index, hintTerm: hint.term)))
    }
  }

  private mutating func handleHeartbeat(_ m: Heartbeat, from: NodeID) {
    leaderIdleFactor = Int(clamping: min(max(1, m.idleFactor), UInt64(Self.maxIdleFactor)))
    commit(to: min(m.commit, log.lastIndex))
    send(from, .heartbeatResponse(HeartbeatResponse(term: term, round: m.round)))
  }

  private mutating func handleSnapshotChunk(_ m: InstallSnapshot, from: NodeID) {
    func reply(_ next: UInt64, reject: Bool = false) {
      send(from, .snapshotResponse(SnapshotResponse(term: term, index: m.index, nextOffset: next, reject: reject)))
    }
    if m.index <= log.committed {
      // Already have everything it covers: tell the leader where we are.
      send(from, .appendResponse(AppendResponse(term: term, reject: false, index: log.committed)))
      return
    }
    if m.totalBytes > UInt64(options.maxSnapshotBytes) {
      reply(0, reject: true)
      return
    }
    func isSame(_ incoming: IncomingSnapshot) -> Bool {
      incoming.leaderTerm == m.term && incoming.index == m.index && incoming.term == m.snapshotTerm
        && incoming.totalBytes == m.totalBytes
    }
    if m.offset == 0, !(incomingSnapshot.map(isSame) ?? false) {
      // A new transfer (a repeated first chunk of the current one keeps what has arrived).
      var data: [UInt8] = []
      data.reserveCapacity(Int(m.totalBytes))
      incomingSnapshot = IncomingSnapshot(
        leaderTerm: m.term, index: m.index, term: m.snapshotTerm, membership: m.membership,
        totalBytes: m.totalBytes, data: data)
    }
    guard var incoming = incomingSnapshot, isSame(incoming) else {
      reply(0)
      return
    }
    guard UInt64(incoming.data.count) == m.offset else {
      reply(UInt64(incoming.data.count))
      return
    }
    incomingSnapshot = nil  // Avoid copying the buffer while it grows.
    incoming.data.append(contentsOf: m.chunk)
    guard UInt64(incoming.data.count) == incoming.totalBytes else {
      incomingSnapshot = incoming
      reply(UInt64(incoming.data.count))
      return
    }
    let snapshot = RaftSnapshot(
      index: incoming.index, term: incoming.term, membership: incoming.membership, data: incoming.data)
    restore(snapshot)
    // Acknowledge the snapshot's index only: entries kept after it may be a deposed leader's, which the
    // snapshot does not vouch for (etcd-io/raft answers the same way). The leader probes onwards from there.
    send(from, .appendResponse(AppendResponse(term: term, reject: false, index: snapshot.index)))
  }

  private mutating func restore(_ snapshot: RaftSnapshot) {
    log.restore(snapshot)
    recomputeMembership()
  }

  // MARK: - Commitment

  private mutating func commit(to index: LogIndex) {
    guard index > log.committed else { return }
    let old = log.committed
    log.committed = index
    if role == .leader {
      for i in (old + 1)...index {
        if let entry = log.entry(at: i), entry.term == term { uncommittedBytes -= entry.byteSize }
      }
      uncommittedBytes = max(0, uncommittedBytes)
      if !readsAwaitingCommit.isEmpty && hasCommittedInCurrentTerm {
        while let read = readsAwaitingCommit.popFirst() { queueRead(read) }
      }
      if membershipIndex > old && membershipIndex <= index { membershipCommitted() }
    }
  }

  /// The leader's commit rule (§5.3, §5.4.2): the highest index stored on a majority (of each half of a
  /// joint configuration), if it is from the current term.
  @discardableResult
  private mutating func maybeCommit() -> Bool {
    let persisted = log.persisted
    let candidate = QuorumMath.committedValue(membership) { peer in
      peer == id ? persisted : (progress[peer]?.match ?? 0)
    }
    guard candidate > log.committed, candidate != .max, log.term(at: candidate) == term else { return false }
    commit(to: candidate)
    if role == .leader { needsBroadcast = true }
    return true
  }

  /// Sets ``membership`` from the newest membership entry in the log, else the snapshot, else the initial one.
  private mutating func recomputeMembership() {
    var index = log.lastIndex
    while let found = log.lastMembershipIndex(atOrBefore: index) {
      if let entry = log.entry(at: found), let decoded = try? Membership(wireBytes: entry.data) {
        adopt(decoded, at: found)
        return
      }
      index = found - 1
    }
    if let snapshot = log.snapshot {
      adopt(snapshot.membership, at: snapshot.index)
    } else {
      adopt(initialMembership, at: 0)
    }
  }

  /// Entries from `index` on were written or replaced: refresh the membership if it could have changed.
  private mutating func membershipMayHaveChanged(from index: LogIndex) {
    if membershipIndex >= index {
      recomputeMembership()  // The entry that set it was truncated away.
      return
    }
    var i = log.lastIndex
    while i >= index {
      if let entry = log.entry(at: i), entry.kind == .membership, let decoded = try? Membership(wireBytes: entry.data) {
        adopt(decoded, at: i)
        return
      }
      i -= 1
    }
  }

  private mutating func adopt(_ next: Membership, at index: LogIndex) {
    membership = next
    membershipIndex = index
    // A membership from a snapshot or the bootstrap is committed: the one before it no longer matters.
    votedBeforeMembership = index > log.offset && (self.membership(at: index - 1)?.isVoter(id) ?? false)
    guard role == .leader else { return }
    for peer in membership.allMembers where peer != id {
      if progress[peer] == nil {
        progress[peer] = newProgress(peer)
      } else {
        progress[peer]?.isLearner = !membership.isVoter(peer)
      }
    }
    for peer in Array(progress.keys) where !membership.allMembers.contains(peer) {
      progress[peer] = nil
    }
    if let transferee, !membership.isVoter(transferee) { self.transferee = nil }
  }

  /// The leader's membership entry was committed: leave a joint configuration (thesis §4.3), or, if this
  /// leader is no longer a voter, hand over and step down (§6).
  private mutating func membershipCommitted() {
    guard role == .leader else { return }
    if membership.isJoint {
      var next = membership
      next.outgoingVoters = []
      next.learners.formUnion(next.learnersNext)
      next.learnersNext = []
      appendMembership(next)
    } else if !membership.isVoter(id) {
      let candidates = membership.voters.sorted()
      if let successor = candidates.max(by: { (progress[$0]?.match ?? 0) < (progress[$1]?.match ?? 0) }),
        progress[successor]?.match == log.lastIndex
      {
        send(successor, .timeoutNow(term: term))
      }
      becomeFollower(term: term, leader: nil)
    }
  }

  // MARK: - Leader replication

  private mutating func stepLeader(_ message: RaftMessage, from: NodeID) {
    guard var pr = progress[from] else { return }
    pr.recentActive = true
    switch message {
    case .heartbeatResponse: break
    case .appendResponse(let m) where !m.reject && m.index >= log.lastIndex: break
    default: noteActivity()  // A follower behind, or asking for something: wake up.
    }
    switch message {
    case .appendResponse(let m):
      // A follower answers about entries this leader sent it: at most this leader's last index (a leader's log
      // only grows), and a rejection's hint is at most the rejected index. A faulty member's index or hint near the top
      // would overflow the progress arithmetic (`index + 1`), or mark entries replicated that do not exist.
      guard m.index <= log.lastIndex else {
        refusedMessages &+= 1
        return
      }
      if m.reject {
        var hint = min(m.hintIndex, m.index)
        if m.hintTerm > 0 { hint = log.findConflictByTerm(m.hintIndex, m.hintTerm).index }
        if pr.maybeDecrease(rejected: m.index, hint: hint) {
          if pr.state == .replicate { pr.becomeProbe() }
          progress[from] = pr
          sendAppend(to: from, sendIfEmpty: true)
        } else {
          progress[from] = pr
        }
        return
      }
      let wasPaused = pr.isPaused
      if pr.maybeUpdate(m.index) {
        if pr.refusedSnapshot > 0 && pr.match >= pr.refusedSnapshot {
          pr.refusedSnapshot = 0  // It caught up past the refused snapshot after all.
          pr.snapshotRefusal = nil
        }
        switch pr.state {
        case .probe:
          pr.becomeReplicate()
        case .snapshot where pr.match >= pr.pendingSnapshot:
          pr.becomeProbe()
          pr.becomeReplicate()
        case .replicate:
          pr.inflights.free(through: m.index)
        default:
          break
        }
        progress[from] = pr
        if !maybeCommit() && wasPaused { sendAppend(to: from, sendIfEmpty: false) }
        while sendAppend(to: from, sendIfEmpty: false) {}
        if from == transferee, progress[from]?.match == log.lastIndex {
          send(from, .timeoutNow(term: term))
        }
      } else {
        if pr.state == .replicate { pr.inflights.free(through: m.index) }
        progress[from] = pr
      }
    case .heartbeatResponse(let m):
      // A follower echoes the round of a heartbeat this leader sent it, so no honest answer names a round this
      // leader has not started. Counted, such an answer would acknowledge every later round in advance: reads and
      // leases would be confirmed without that member hearing of them (by this leader alone, in a group of three).
      guard m.round <= readRound else {
        refusedMessages &+= 1
        return
      }
      pr.probeSent = false
      pr.ackedRound = max(pr.ackedRound, m.round)
      // If every AppendEntries in the window was lost, no acknowledgement will ever free it. The follower is
      // alive, so let one more through: it either fills the gap or is rejected, which sends us back to probing.
      if pr.state == .replicate && pr.inflights.isFull { pr.inflights.freeFirst() }
      // A probed follower that already holds the whole log (a lost-peer report, or a rejection answered since)
      // has nothing left to probe: stream to it again, so that an idle group can go quiet once more.
      if pr.state == .probe && pr.match == log.lastIndex { pr.becomeReplicate() }
      progress[from] = pr
      if pr.match < log.lastIndex { sendAppend(to: from, sendIfEmpty: true) }
      confirmReads()
    case .snapshotResponse(let m):
      guard pr.state == .snapshot, m.index == pr.pendingSnapshot else {
        progress[from] = pr
        return
      }
      if m.reject {
        // The follower refused the snapshot as too large: sending it again would loop forever, one chunk per
        // round. Stop until something changes (see RaftSnapshotRefusal), and say so once. The probe starts after
        // what the follower holds, not after the snapshot it refused.
        pr.pendingSnapshot = 0
        pr.becomeProbe()
        let bytes = log.snapshot?.data.count ?? 0
        let reason =
          "the snapshot of \(bytes) bytes exceeds the follower's maximum snapshot size; not resent until a newer "
          + "snapshot, a new term or \(options.snapshotRefusalBackoffTicks) ticks"
        if pr.refusedSnapshot != m.index {
          snapshotRefusals.append(
            RaftSnapshotRefusal(peer: from, snapshotIndex: m.index, snapshotBytes: bytes, reason: reason))
        }
        pr.refusedSnapshot = m.index
        pr.refusedSnapshotTicks = 0
        pr.snapshotRefusal = "refused snapshot \(m.index): " + reason
        progress[from] = pr
        return
      }
      // One chunk at a time: follow the follower's progress, or its restart from 0. A duplicated or reordered
      // answer would otherwise start another chain of chunks that lasts until the transfer ends; a lost
      // chunk is resent by the stall timer. An answer below the chunk last sent moves the resend point back
      // without sending: a stale answer may have moved it past what the follower holds, and a follower that
      // answers the same offset to every chunk would otherwise stall the transfer for good.
      guard m.nextOffset > pr.snapshotOffset || (m.nextOffset == 0 && pr.snapshotOffset > 0) else {
        if m.nextOffset < pr.snapshotOffset { pr.snapshotOffset = m.nextOffset }
        progress[from] = pr
        return
      }
      pr.snapshotOffset = m.nextOffset
      pr.snapshotIdleTicks = 0
      progress[from] = pr
      sendSnapshotChunk(to: from)
    default:
      progress[from] = pr
    }
  }

  /// Sends entries (or a snapshot) to `peer` if its progress allows. Returns whether anything was sent.
  @discardableResult
  private mutating func sendAppend(to peer: NodeID, sendIfEmpty: Bool) -> Bool {
    guard var pr = progress[peer], !pr.isPaused else { return false }
    let prevIndex = pr.next - 1
    guard let prevTerm = log.term(at: prevIndex),
      let entries = log.slice(from: pr.next, to: log.lastIndex + 1, maxBytes: options.maxEntriesBytesPerMessage)
    else {
      guard let snapshot = log.snapshot else { return false }
      if pr.refusedSnapshot == snapshot.index && pr.refusedSnapshotTicks < options.snapshotRefusalBackoffTicks {
        return false  // Refused as too large: wait for a newer snapshot, a new term or the back-off.
      }
      pr.becomeSnapshot(snapshot.index)
      progress[peer] = pr
      sendSnapshotChunk(to: peer)
      return true
    }
    if entries.isEmpty && !sendIfEmpty { return false }
    let bytes = entries.reduce(0) { $0 + $1.byteSize }
    send(
      peer,
      .appendEntries(
        AppendEntries(
          term: term, prevLogIndex: prevIndex, prevLogTerm: prevTerm, entries: entries, commit: log.committed)))
    if let last = entries.last {
      pr.sentEntries(last: last.index, bytes: bytes)
    } else if pr.state == .probe {
      pr.probeSent = true
    }
    progress[peer] = pr
    return !entries.isEmpty
  }

  private mutating func sendSnapshotChunk(to peer: NodeID) {
    guard let pr = progress[peer], pr.state == .snapshot else { return }
    guard let snapshot = log.snapshot else { return }
    if snapshot.index != pr.pendingSnapshot {
      progress[peer]?.becomeSnapshot(snapshot.index)  // A newer snapshot replaced it; start over.
    }
    let offset = Int(progress[peer]?.snapshotOffset ?? 0)
    let total = snapshot.data.count
    guard offset < total || total == 0 else { return }
    let end = min(total, offset + max(1, options.snapshotChunkBytes))
    send(
      peer,
      .installSnapshot(
        InstallSnapshot(
          term: term, index: snapshot.index, snapshotTerm: snapshot.term, membership: snapshot.membership,
          totalBytes: UInt64(total), offset: UInt64(offset), chunk: Array(snapshot.data[offset..<end]))))
  }

  private mutating func retryStalledSnapshots() {
    // Most ticks of most leaders have no snapshot in play: skip the sorted walks (an idle host ticks thousands
    // of leaders).
    guard progress.values.contains(where: { $0.refusedSnapshot > 0 || $0.state == .snapshot }) else { return }
    for peer in progress.keys.sorted() where (progress[peer]?.refusedSnapshot ?? 0) > 0 {
      progress[peer]?.refusedSnapshotTicks += 1
    }
    for peer in progress.keys.sorted() where progress[peer]?.state == .snapshot {
      progress[peer]?.snapshotIdleTicks += 1
      if (progress[peer]?.snapshotIdleTicks ?? 0) >= options.electionTimeoutMinTicks {
        progress[peer]?.snapshotIdleTicks = 0
        sendSnapshotChunk(to: peer)
      }
    }
  }

  private mutating func broadcastAppend() {
    for peer in progress.keys.sorted() {
      sendAppend(to: peer, sendIfEmpty: true)
      while sendAppend(to: peer, sendIfEmpty: false) {}
    }
  }

  private mutating func broadcastHeartbeat(newRound: Bool) {
    if newRound {
      readRound += 1
      roundSentAt.append((readRound, now))
      while roundSentAt.count > 256 { _ = roundSentAt.popFirst() }
    }
    for peer in progress.keys.sorted() {
      guard let pr = progress[peer] else { continue }
      send(
        peer,
        .heartbeat(
          Heartbeat(
            term: term, commit: min(pr.match, log.committed), round: readRound,
            idleFactor: UInt64(heartbeatScale))))
    }
    confirmReads()  // A single-voter group confirms at once.
  }

  // MARK: - Local requests

  /// Appends a command (or other entry) to the leader's log. Returns its index and term; the entry is
  /// replicated when the shell next takes a ready.
  public mutating func propose(_ data: [UInt8], kind: EntryKind = .command) throws(RaftRequestError) -> (
    index: LogIndex, term: Term
  ) {
    guard role == .leader else { throw .notLeader(hint: leader) }
    noteActivity()
    guard transferee == nil else { throw .transferInProgress }
    let size = data.count + 16
    if uncommittedBytes > 0 && uncommittedBytes + size > options.maxUncommittedBytes { throw .overloaded }
    let entry = LogEntry(index: log.lastIndex + 1, term: term, kind: kind, data: data)
    log.appendOne(entry)
    uncommittedBytes += size
    needsBroadcast = true
    return (entry.index, entry.term)
  }

  /// Proposes a membership change. Only one change may be pending at a time; changes to the voters go
  /// through a joint configuration that the leader leaves automatically.
  public mutating func proposeMembership(_ change: MembershipChange) throws(RaftRequestError) -> LogIndex {
    guard role == .leader else { throw .notLeader(hint: leader) }
    guard transferee == nil else { throw .transferInProgress }
    guard !hasPendingMembershipChange else {
      throw .membershipChangeRejected("a membership change is already in progress")
    }
    let next: Membership
    do {
      next = try membership.applying(change)
    } catch {
      throw .membershipChangeRejected(error.reason)
    }
    return appendMembership(next)
  }

  @discardableResult
  private mutating func appendMembership(_ next: Membership) -> LogIndex {
    noteActivity()
    let entry = LogEntry(index: log.lastIndex + 1, term: term, kind: .membership, data: next.wireBytes())
    log.appendOne(entry)
    uncommittedBytes += entry.byteSize  // Committing it subtracts it, as for every entry of this term.
    adopt(next, at: entry.index)
    needsBroadcast = true
    return entry.index
  }

  /// Starts transferring leadership to `target` (thesis §3.10): proposals are refused, the target is brought
  /// up to date, then told to campaign at once. Aborted if not done within an election timeout.
  public mutating func transferLeadership(to target: NodeID) throws(RaftRequestError) {
    guard role == .leader else { throw .notLeader(hint: leader) }
    guard target != id else { return }
    guard membership.isVoter(target), progress[target] != nil else {
      throw .membershipChangeRejected("\(target) is not a voter")
    }
    noteActivity()
    if transferee == target { return }
    transferee = target
    electionElapsed = 0
    leaseStart = nil  // The target will win without waiting for our lease: stop serving lease reads now.
    leaseForfeited = true
    if progress[target]?.match == log.lastIndex {
      send(target, .timeoutNow(term: term))
    } else {
      sendAppend(to: target, sendIfEmpty: true)
    }
  }

  /// Requests a linearizable read (ReadIndex, thesis §6.4). The confirmation arrives as a ``ReadState`` in a
  /// later ready (or the id in ``RaftReady/failedReads`` if leadership is lost first).
  public mutating func requestRead(id readID: UInt64) throws(RaftRequestError) {
    guard role == .leader else { throw .notLeader(hint: leader) }
    noteActivity()
    if unconfirmedReads >= Self.maxUnconfirmedReads {
      // The shell gives up on a read at its deadline without telling the core; a leader that hears from no quorum
      // and never steps down (check-quorum off) would keep every such id. The oldest goes, reported failed.
      if let oldest = readsAwaitingCommit.popFirst() {
        failedReads.append(oldest)
      } else if let oldest = pendingReads.popFirst() {
        failedReads.append(oldest.id)
      }
    }
    if !hasCommittedInCurrentTerm {
      readsAwaitingCommit.append(readID)
      return
    }
    queueRead(readID)
  }

  private mutating func queueRead(_ readID: UInt64) {
    pendingReads.append(PendingRead(id: readID, index: log.committed, round: readRound + 1))
    needsReadRound = true
    if membership.allVoters == [id] {
      needsReadRound = false
      readRound += 1
      confirmReads()
    }
  }

  /// The newest round acknowledged by a quorum (the leader counts as acknowledging every round).
  private var quorumAckedRound: UInt64 {
    QuorumMath.committedValue(membership) { peer in
      peer == id ? readRound : (progress[peer]?.ackedRound ?? 0)
    }
  }

  private mutating func confirmReads() {
    guard role == .leader else { return }
    let acked = quorumAckedRound
    while let read = pendingReads.first, read.round <= acked {
      _ = pendingReads.popFirst()
      readStates.append(ReadState(id: read.id, index: read.index))
    }
    while let sent = roundSentAt.first, sent.round <= acked {
      _ = roundSentAt.popFirst()
      if !leaseForfeited { leaseStart = max(leaseStart ?? 0, sent.at) }
    }
  }

  /// If this leader's lease is valid at `now`, the index a lease read must wait for; otherwise `nil`.
  ///
  /// The lease starts when the leader sent a heartbeat round that a quorum acknowledged; those followers
  /// neither vote for anyone else nor campaign for ``RaftCoreOptions/voteRefusalWindowNanos`` of their own
  /// monotonic clocks after hearing it, so no other leader can exist until ``RaftCoreOptions/leaseDurationNanos``
  /// later (which ``RaftCoreOptions/validate()`` keeps a tick and the clock-drift bound below that window).
  public func leaseReadIndex(now: UInt64) -> LogIndex? {
    guard role == .leader, transferee == nil, !leaseForfeited, hasCommittedInCurrentTerm else { return nil }
    if membership.allVoters == [id] { return log.committed }
    guard options.leaseDurationNanos > 0, options.checkQuorum, let start = leaseStart else { return nil }
    return now < start &+ options.leaseDurationNanos ? log.committed : nil
  }

  // MARK: - Ready

  private mutating func send(_ to: NodeID, _ message: RaftMessage) {
    let outgoing = RaftOutgoing(to: to, message: message)
    if role == .leader {
      switch message {
      case .appendEntries, .heartbeat, .installSnapshot, .timeoutNow:
        eagerOutbox.append(outgoing)
        return
      default:
        break
      }
    }
    outbox.append(outgoing)
  }

  private mutating func flush() {
    guard role == .leader else {
      needsBroadcast = false
      needsReadRound = false
      return
    }
    if needsBroadcast {
      needsBroadcast = false
      broadcastAppend()
    }
    if needsReadRound {
      needsReadRound = false
      broadcastHeartbeat(newRound: true)
    }
  }

  /// Whether ``ready()`` has anything to return.
  public var hasReady: Bool {
    (role == .leader && (needsBroadcast || needsReadRound)) || !outbox.isEmpty || !eagerOutbox.isEmpty
      || !readStates.isEmpty || !snapshotRefusals.isEmpty
      || !failedReads.isEmpty || log.unstable <= log.lastIndex || log.pendingSnapshot != nil
      || log.hasCommittedToApply || term != lastHardState.term || vote != lastHardState.vote
      || softState != lastSoftState
  }

  /// Takes everything the shell must now do (see ``RaftReady`` for the order).
  public mutating func ready() -> RaftReady {
    flush()
    var ready = RaftReady()
    ready.snapshot = log.takePendingSnapshot()
    ready.snapshotDiscardsLog = !log.pendingSnapshotKeptLog
    ready.entries = log.takeUnstable()
    // Term and vote must be durable before any message that depends on them. The commit index need not be
    // (it is recomputed after a restart), so it only rides along with other writes instead of costing a
    // sync of its own.
    let hs = hardState
    let termOrVoteChanged = hs.term != lastHardState.term || hs.vote != lastHardState.vote
    if termOrVoteChanged
      || (hs.commit != lastHardState.commit && (!ready.entries.isEmpty || ready.snapshot != nil))
    {
      ready.hardState = hs
      ready.hardStateMustSync = termOrVoteChanged
      lastHardState = hs
    }
    let ss = softState
    if ss != lastSoftState {
      ready.softState = ss
      lastSoftState = ss
    }
    if termOrVoteChanged {
      // A leader elected within this ready (a single voter wins at once) has no durable term yet: its
      // replication waits for the write like every other message. Otherwise a crash before the write lets it
      // win the same term again and send different entries under the same index and term.
      ready.messages = eagerOutbox + outbox
    } else {
      ready.eagerMessages = eagerOutbox
      ready.messages = outbox
    }
    eagerOutbox = []
    outbox = []
    ready.committedEntries = log.takeCommitted(maxBytes: options.maxApplyBytesPerBatch)
    ready.readStates = readStates
    ready.failedReads = failedReads
    ready.snapshotRefusals = snapshotRefusals
    readStates = []
    failedReads = []
    snapshotRefusals = []
    return ready
  }

  /// Reports that the shell carried out `ready`: its entries are durable. A leader now counts them towards
  /// commitment.
  public mutating func advance(_ ready: RaftReady) {
    if let last = ready.entries.last {
      log.persisted(through: last.index, term: last.term)
      if role == .leader { maybeCommit() }
    }
  }

  /// The membership in force at `index` (the newest membership entry at or before it, else the snapshot's,
  /// else the initial one), or `nil` if `index` is compacted away or beyond the log.
  public func membership(at index: LogIndex) -> Membership? {
    guard index >= log.offset, index <= log.lastIndex else { return nil }
    var i = index
    while i > log.offset {
      if let entry = log.entry(at: i), entry.kind == .membership, let decoded = try? Membership(wireBytes: entry.data) {
        return decoded
      }
      i -= 1
    }
    return log.snapshot?.membership ?? initialMembership
  }

  /// Records a state-machine snapshot taken after applying everything through `index`, and compacts the
  /// in-memory log, keeping `retainEntries` entries before `index` so that slightly lagging followers can
  /// still be sent entries instead of the snapshot. Returns the snapshot for the shell to persist.
  ///
  /// - Precondition: `index` has been handed out for applying and is durable.
  @discardableResult
  public mutating func takeSnapshot(at index: LogIndex, data: [UInt8], retainEntries: Int = 0) -> RaftSnapshot {
    precondition(index <= log.applying, "snapshot at \(index) beyond applied \(log.applying)")
    precondition(index >= log.offset, "snapshot at \(index) before the compaction point \(log.offset)")
    let snapshot = RaftSnapshot(
      index: index, term: log.term(at: index) ?? 0, membership: membership(at: index) ?? membership, data: data)
    let keep = LogIndex(max(0, retainEntries))
    let compactThrough = min(index > keep ? index - keep : 0, log.persisted)
    log.compact(through: max(compactThrough, log.offset), snapshot: snapshot)
    return snapshot
  }

  /// Tells the leader a peer is unreachable, so it stops optimistic streaming to it.
  public mutating func reportUnreachable(_ peer: NodeID) {
    guard role == .leader, progress[peer]?.state == .replicate else { return }
    progress[peer]?.becomeProbe()
  }

  /// The shell's failure detector (its transport) lost `peer`. A leader treats it as unreachable
  /// (``reportUnreachable(_:)``: it probes the peer until the peer answers again); a follower whose leader it is
  /// drops the leader's idle factor, so it campaigns and grants votes on an active leader's schedule, counted
  /// from the leader's last message, instead of waiting out the stretched one. Since every survivor hears of the
  /// loss at about the same time, they campaign in turn, by rank among the surviving voters, half a heartbeat
  /// apart, rather than all at the next tick and split the vote.
  ///
  /// Safety does not rest on it, but a wrong report is not free: the misinformed follower campaigns once an
  /// active election timeout passes without a word from its leader. With pre-vote (the default) its pre-vote
  /// wakes an idle leader and is refused by the followers that still hear it; without pre-vote it starts a real
  /// election and bumps the term, as any follower cut off from its leader would.
  public mutating func peerLost(_ peer: NodeID) {
    if role == .leader {
      reportUnreachable(peer)
    } else if peer == leader {
      leaderIdleFactor = 1
      // In turn, by rank, unless their own timeouts come later anyway (see above).
      let survivors = membership.allVoters.subtracting([peer]).sorted()
      if let rank = survivors.firstIndex(of: id) { campaignHold = rank * lostLeaderStaggerTicks }
    }
  }

  /// Ticks between the campaigns of the survivors of a lost leader, by rank (``peerLost(_:)``): half a
  /// heartbeat interval, at least 2 ticks — longer than a pre-vote and a vote take where heartbeats are sized
  /// to the network.
  var lostLeaderStaggerTicks: Int { max(2, options.heartbeatTicks / 2) }
}
