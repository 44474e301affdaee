public import QuorumCore

/// A Multi-Paxos node's role. Role is state inside the one node: every node is acceptor and learner
/// always, and proposer while it leads.
public enum PaxosRole: String, Sendable, Equatable, CustomStringConvertible {
  /// Accepts and learns; follows the leader it heard from last.
  case follower
  /// Heard no leader for an election timeout: probing whether a phase-1 quorum would promise a new ballot,
  /// before promising it to itself.
  case preCandidate
  /// Running phase 1 for a new ballot.
  case candidate
  /// Completed phase 1: proposes in phase 2 for every slot from its first unknown one on.
  case leader

  public var description: String { rawValue }
}

/// Tuning of the pure core, in ticks and bytes. ``PaxosConfiguration`` builds it from durations.
public struct MultiPaxosOptions: Sendable, Equatable {
  /// Acceptors that must promise a ballot before its candidate leads (|Q1|).
  public var phase1Quorum = 2
  /// Acceptors that must accept a proposal for it to be chosen (|Q2|). |Q1| + |Q2| must exceed the members.
  public var phase2Quorum = 2
  /// Whether quorums are majorities of the voters of each configuration (|Q1| = |Q2| = ⌊N/2⌋ + 1), following
  /// membership changes, instead of the fixed sizes ``phase1Quorum`` and ``phase2Quorum``. With fixed sizes a
  /// membership change that would leave |Q1| + |Q2| ≤ N, or a quorum larger than N, is refused.
  public var majorityQuorums = false
  /// The shortest election timeout in ticks; each timeout is drawn from `min..<max`.
  public var electionTimeoutMinTicks = 10
  /// One past the longest election timeout in ticks.
  public var electionTimeoutMaxTicks = 20
  /// Ticks between heartbeats.
  public var heartbeatTicks = 1
  /// How many times less often an idle leader heartbeats; 1 (the default) keeps every leader active. As in Raft
  /// (``QuorumRaft``'s `RaftCoreOptions.idleHeartbeatFactor`): a leader nothing was asked of for a minimum
  /// election timeout, with every slot it proposed chosen and every follower caught up and answering, heartbeats
  /// this many times less often and says so; its followers wait as many times longer before they campaign or
  /// promise another ballot. A request or a message a follower starts ends it. Leases are not stretched.
  public var idleHeartbeatFactor = 1
  /// Ticks before an unanswered accept or prepare is sent again.
  public var retransmitTicks = 5
  /// The most entry bytes in one accept or promise (at least one entry is always sent).
  public var maxEntriesBytesPerMessage = 1 << 20
  /// The most accept messages in flight to one acceptor.
  public var maxInflightMessages = 256
  /// Proposals are refused while this many bytes are proposed but not chosen.
  public var maxUncommittedBytes = 64 << 20
  /// The most entry bytes handed out for applying per ready.
  public var maxApplyBytesPerBatch = 8 << 20
  /// Bytes per snapshot chunk.
  public var snapshotChunkBytes = 1 << 20
  /// The largest snapshot accepted from a leader.
  public var maxSnapshotBytes = 1 << 30
  /// After an acceptor refused a snapshot as too large, leader ticks before the same snapshot is offered
  /// again (a newer snapshot or a new leader retries at once). The default is 20 default minimum election
  /// timeouts.
  public var snapshotRefusalBackoffTicks = 200
  /// How long a leader may serve lease reads after a phase-2 quorum acknowledged a heartbeat, in the time
  /// units of `now` (nanoseconds in the node shell); 0 disables lease reads. Must end at least one tick and the
  /// clock-drift bound before the promise-refusal window (``promiseRefusalWindowNanos``) does; ``validate(memberCount:)``
  /// checks it and ``PaxosConfiguration`` computes it.
  public var leaseDurationNanos: UInt64 = 0
  /// The length of one tick in the time units of `now` (nanoseconds in the node shell). When set, an
  /// acceptor measures how long ago it heard from its leader on the shell's monotonic clock
  /// (``MultiPaxosCore/advanceClock(to:)``) and refuses to promise a new ballot for
  /// ``promiseRefusalWindowNanos`` of it, however the ticks were delivered. 0 (the default, for tests that
  /// drive the core by ticks alone) counts ticks only, which ticks fired back to back shorten: lease reads need
  /// it set.
  public var tickNanos: UInt64 = 0
  /// The most the clocks of two nodes may drift apart over one election timeout, in the units of `now`. Only
  /// ``validate(memberCount:)`` reads it: the lease must end this much (and a tick) before the refusal window.
  public var clockDriftBoundNanos: UInt64 = 0

  /// Defaults: majority quorums of 3, 10–20 tick elections, a heartbeat every tick.
  public init() {}

  /// The phase-1 and phase-2 quorum sizes for a configuration of `voters` voters.
  public func quorums(voters: Int) -> (phase1: Int, phase2: Int) {
    majorityQuorums ? (voters / 2 + 1, voters / 2 + 1) : (phase1Quorum, phase2Quorum)
  }

  /// Why quorums of these sizes cannot serve a configuration of `voters` voters (each between 1 and N, and
  /// |Q1| + |Q2| > N so that every phase-1 quorum meets every phase-2 quorum), or `nil` if they can.
  public func quorumProblem(voters n: Int) -> String? {
    let (q1, q2) = quorums(voters: n)
    if !(1...max(1, n)).contains(q1) { return "the phase-1 quorum \(q1) must be between 1 and the \(n) voters" }
    if !(1...max(1, n)).contains(q2) { return "the phase-2 quorum \(q2) must be between 1 and the \(n) voters" }
    if q1 + q2 <= n {
      return "quorums \(q1) + \(q2) do not exceed the \(n) voters: they need not intersect"
    }
    return nil
  }

  /// How long after hearing from its leader an acceptor refuses to promise a new ballot, measured on its
  /// monotonic clock: the minimum election timeout, `electionTimeoutMinTicks × tickNanos` (0 when
  /// ``tickNanos`` is 0).
  public var promiseRefusalWindowNanos: UInt64 { UInt64(max(0, electionTimeoutMinTicks)) &* tickNanos }

  /// Checks the options for a group of `memberCount` acceptors: quorums between 1 and the member count that
  /// intersect (|Q1| + |Q2| > N); with lease reads on, a lease that ends at least one tick and the clock-drift
  /// bound before the promise-refusal window, and a drift bound that is not zero. The error names the
  /// offending option.
  public func validate(memberCount: Int) throws(ConfigurationError) {
    func fail(_ option: String, _ reason: String) -> ConfigurationError {
      ConfigurationError(setting: option, reason: reason)
    }
    // A node that joins an existing group (no members yet) learns the configuration; its quorums are checked
    // against every configuration it is given.
    if memberCount > 0 && !majorityQuorums {
      if !(1...memberCount).contains(phase1Quorum) {
        throw fail("phase1Quorum", "\(phase1Quorum) must be between 1 and the \(memberCount) members")
      }
      if !(1...memberCount).contains(phase2Quorum) {
        throw fail("phase2Quorum", "\(phase2Quorum) must be between 1 and the \(memberCount) members")
      }
      if phase1Quorum + phase2Quorum <= memberCount {
        throw fail(
          "phase2Quorum",
          "quorums \(phase1Quorum) + \(phase2Quorum) do not exceed the \(memberCount) members: they need not "
            + "intersect")
      }
    }
    try TimingChecks.validateTimers(
      electionMin: electionTimeoutMinTicks, electionMax: electionTimeoutMaxTicks, heartbeat: heartbeatTicks,
      idleFactor: idleHeartbeatFactor, maxIdleFactor: MultiPaxosCore.maxIdleFactor)
    if retransmitTicks < 1 { throw fail("retransmitTicks", "must be at least 1") }
    try TimingChecks.validateLease(
      durationNanos: leaseDurationNanos, driftBoundNanos: clockDriftBoundNanos, tickNanos: tickNanos,
      window: promiseRefusalWindowNanos, windowName: "promise-refusal window")
  }
}

/// A linearizable read confirmed by a heartbeat round: once the state machine has applied ``index``, the
/// read may be answered.
public struct PaxosReadState: Sendable, Equatable {
  /// The caller's identifier for the read.
  public var id: UInt64
  /// The leader's chosen point when the read was requested.
  public var index: Slot
}

/// The node's volatile view, reported when it changes.
public struct PaxosSoftState: Sendable, Equatable {
  /// The node's role.
  public var role: PaxosRole
  /// The leader it follows (itself when leading).
  public var leader: NodeID?
  /// The ballot it promised.
  public var ballot: Ballot
}

/// A replica refused the leader's snapshot because it is larger than the replica accepts
/// (``MultiPaxosOptions/maxSnapshotBytes`` there). The leader stops sending it that snapshot and reports the
/// refusal once, in ``PaxosReady/snapshotRefusals``; it tries again only when something changes: a newer
/// snapshot, a new leader, or after ``MultiPaxosOptions/snapshotRefusalBackoffTicks`` (the replica may have
/// been restarted with a larger limit). Until then the replica stays behind, and
/// ``PaxosPeerProgress/snapshotRefusal`` says why.
public struct PaxosSnapshotRefusal: Sendable, Equatable, CustomStringConvertible {
  /// The replica that refused.
  public var peer: NodeID
  /// The refused snapshot's last slot.
  public var snapshotIndex: Slot
  /// The refused snapshot's size in bytes.
  public var snapshotBytes: Int
  /// A sentence for the log.
  public var reason: String

  public var description: String { "\(peer) refused snapshot \(snapshotIndex): \(reason)" }
}

/// Everything the shell must do after a batch of inputs, in order:
///
/// 1. send ``eagerMessages`` (a leader's accepts and heartbeats: its ballot is already durable, and it counts
///    its own acceptance only after step 2);
/// 2. persist ``snapshot`` (keeping the stored entries above it, then compacting up to it), ``hardState`` and
///    ``entries`` (each replaces only its own slot) and make them durable;
/// 3. send ``messages`` (promises and acceptances, which report what step 2 stored);
/// 4. call ``MultiPaxosCore/advance(_:)`` with this ready;
/// 5. restore the state machine from ``snapshot`` if present, then apply ``chosenEntries`` in order and
///    answer ``readStates`` once their index is applied.
public struct PaxosReady: Sendable {
  /// The hard state to persist, if it changed.
  public var hardState: PaxosHardState?
  /// Accepted proposals to persist, ascending.
  public var entries: [PaxosEntry] = []
  /// A snapshot received from the leader, to persist and restore.
  public var snapshot: PaxosSnapshot?
  /// Messages that may be sent before persisting.
  public var eagerMessages: [PaxosOutgoing] = []
  /// Messages to send after persisting.
  public var messages: [PaxosOutgoing] = []
  /// Chosen entries to apply, in slot order.
  public var chosenEntries: [PaxosEntry] = []
  /// Confirmed linearizable reads.
  public var readStates: [PaxosReadState] = []
  /// Reads that can no longer be confirmed (leadership lost), by identifier.
  public var failedReads: [UInt64] = []
  /// The volatile state, if it changed.
  public var softState: PaxosSoftState?
  /// Replicas that refused a snapshot as too large, each reported once (see ``PaxosSnapshotRefusal``): the
  /// shell logs them; an operator raises the replica's limit or shrinks the state.
  public var snapshotRefusals: [PaxosSnapshotRefusal] = []

  /// Whether there is nothing to do.
  public var isEmpty: Bool {
    hardState == nil && entries.isEmpty && snapshot == nil && eagerMessages.isEmpty && messages.isEmpty
      && chosenEntries.isEmpty && readStates.isEmpty && failedReads.isEmpty && softState == nil
      && snapshotRefusals.isEmpty
  }
}

/// Why the core refused a local request.
public enum PaxosRequestError: Error, Sendable, Equatable {
  /// Not the leader; the hint is the leader this node follows.
  case notLeader(hint: NodeID?)
  /// Too many bytes are proposed but not chosen.
  case overloaded
  /// Leadership is being handed over (a transfer, or this leader removed itself): it proposes nothing.
  case transferInProgress
  /// The membership change (or transfer) cannot be made now, and why: another change is in progress, the
  /// change alters more than one voter, or the quorum sizes would not fit the new configuration.
  case membershipChangeRejected(String)
}

/// The leader's view of one member (an acceptor, or a learner), for status displays.
public struct PaxosPeerProgress: Sendable, Equatable {
  /// The member's reported chosen point.
  public var chosenThrough: Slot
  /// The next slot the leader will send it.
  public var next: Slot
  /// Accept messages awaiting an answer.
  public var inflight: Int
  /// Whether a snapshot is being sent to it.
  public var receivingSnapshot: Bool
  /// Why the leader is not sending it a snapshot it needs (it refused one as too large), or `nil`.
  public var snapshotRefusal: String? = nil
  /// Whether it is a learner (it receives the log but counts in no quorum) in the newest configuration.
  public var isLearner = false
  /// Whether the leader heard from it in the current check-quorum period.
  public var recentlyActive = false
}

/// Multi-Paxos as a pure, deterministic value: every node is an acceptor and a learner for every slot, and a
/// proposer while it leads.
///
/// `MultiPaxosCore` does no input/output, reads no clock and draws randomness only from the seeded generator
/// it is given. The shell feeds it inputs — ``tick(now:)``, ``step(_:from:)``, ``propose(_:)``,
/// ``requestRead(id:)`` — takes a ``PaxosReady`` with ``ready()``, carries it out in the documented order
/// and reports back with ``advance(_:)``.
///
/// ### The protocol
///
/// - **Phase 1, once for all slots.** A follower that hears no leader for a randomized election timeout
///   becomes a candidate: it promises itself a ballot above every ballot it has seen (durably, before asking
///   anyone) and sends `Prepare(ballot, fromSlot)` where `fromSlot` is its first slot not known chosen.
///   Acceptors promise for every slot from there on and report what they accepted there, in bounded chunks.
/// - **Leader change.** With complete reports from a phase-1 quorum the candidate leads. For every slot up
///   to the highest reported it proposes, in its ballot: the chosen value if any acceptor knows it, else the
///   value of the highest-ballot proposal reported (P2c), else a no-op (filling the gap).
/// - **Phase 2 per slot, batched and pipelined.** Client commands get the next slots; one accept message
///   carries a batch of consecutive slots, and up to ``MultiPaxosOptions/maxInflightMessages`` batches per
///   acceptor are in flight. A slot is chosen once a phase-2 quorum accepted the leader's proposal; its own
///   acceptance counts once durable.
/// - **Learning.** Accepts and heartbeats carry the leader's chosen point; an acceptor marks chosen every
///   slot up to it whose entry it accepted *in the leader's ballot* (the leader proposes one value per slot
///   per ballot, and for a chosen slot that value is the chosen one). A replica missing slots reports a
///   chosen point below the leader's; the leader resends those slots as accepts (catch-up), or its snapshot
///   once it has compacted them.
/// - **Leases and reads.** Heartbeats are numbered rounds; a round acknowledged by a phase-2 quorum (which
///   meets every phase-1 quorum) confirms leadership for ReadIndex reads and starts a lease. Acceptors refuse
///   to promise a new ballot (their own included) for a minimum election timeout after hearing from their
///   leader — and after they start, since a crash forgets when that was — so no other leader can complete
///   phase 1 during the lease. With ``MultiPaxosOptions/tickNanos`` set, that window is measured on the
///   shell's monotonic clock (``advanceClock(to:)``), so ticks fired in a burst cannot shorten it. A message
///   with a higher ballot from a leader (accept, heartbeat, snapshot) makes this node follow that leader and
///   restarts the window; any other (a prepare or probe refused inside the window, a reject) neither restarts
///   nor ends it.
/// - **Compaction.** ``takeSnapshot(at:data:retainEntries:)`` drops applied slots; a candidate whose first
///   unknown slot an acceptor has compacted is refused (``RejectReason/behindSnapshot``); it goes on while a
///   phase-1 quorum of the others can still answer, and otherwise waits for a leader to send it the snapshot.
///   The acceptor that refused it sends it its snapshot too, unless it follows a live leader (ballot zero: the
///   receiver follows no one), so two live nodes far apart do not wait for a third.
/// - **Membership changes.** A configuration is a log entry (``PaxosEntryKind/membership``) carrying the
///   whole resulting ``QuorumCore/Membership``; it governs every slot after its own, and travels in snapshots.
///   Learners receive everything but count in no quorum. The rule that keeps quorums intersecting:
///   1. one change at a time, altering at most one voter, and only to quorum sizes that still intersect
///      (|Q1| + |Q2| > N for the new N, each between 1 and N);
///   2. a leader sends and stores nothing after a configuration entry's slot until that slot is chosen, so at
///      most one configuration is in doubt, at the tail of what any leader proposed;
///   3. a candidate needs complete reports from a phase-1 quorum of the configuration known at its first
///      unknown slot *and* of every configuration the reports hold above it (the highest-ballot proposal of
///      each slot): with a configuration in doubt, quorums of the old and the new one, as Raft's C(old,new).
///   Since two successive configurations differ by one voter and both satisfy |Q1| + |Q2| > N, a phase-1
///   quorum of either meets a phase-2 quorum of the other: a value chosen under the old configuration after a
///   configuration entry a later leader resurrects (an old proposal found by phase 1) stays visible.
///   A leader removed (or demoted) by a chosen change hands over to its most caught-up voter
///   (``PaxosMessage/campaignNow(_:)``) and steps down. ``transferLeadership(to:)`` hands over on request.
public struct MultiPaxosCore: Sendable {
  /// This node.
  public let id: NodeID
  /// The options in force.
  public let options: MultiPaxosOptions

  /// The ballot promised (durable).
  public private(set) var promised: Ballot
  /// The role.
  public private(set) var role: PaxosRole = .follower
  /// The leader followed (this node when leading).
  public private(set) var leader: NodeID?
  /// The highest ballot seen anywhere.
  public private(set) var highestSeen: Ballot
  /// Peer messages dropped unread because no honest peer sends them: malformed
  /// (``PaxosMessage/malformation``), naming slots further beyond this node's log than a leader or acceptor can
  /// reach (``acceptReach``; ``maxAcceptReach`` for the promises a candidate takes), or answering a read round
  /// this leader has not started. A count that grows points at a faulty or version-skewed member; the node's
  /// status shows it (``MultiPaxosStatus/refusedMessages``).
  public private(set) var refusedMessages: UInt64 = 0

  var log: PaxosLog
  private var random: SeededRandom
  private var electionElapsed = 0
  private var heartbeatElapsed = 0
  /// Ticks since this node last heard from its leader (or started); it refuses to promise a new ballot
  /// while this is below the minimum election timeout. Internal so tests can expire it.
  var sinceLeaderContact = 0
  private var randomizedElectionTimeout = 0
  /// A leader heartbeating less often (``MultiPaxosOptions/idleHeartbeatFactor``).
  public private(set) var isIdle = false
  /// A leader's ticks since the last request or follower-started message.
  private var ticksSinceActivity = 0
  /// A follower's leader is idle and heartbeats this many times less often: its timeouts stretch as much (1 when
  /// its leader is active or unknown).
  public private(set) var leaderIdleFactor = 1
  /// Whether this leader may turn idle; the shell clears it while its state machine has a deadline coming.
  /// Clearing it wakes an idle leader.
  public var idleAllowed = true {
    didSet { if !idleAllowed { noteActivity() } }
  }
  /// The largest idle factor a follower accepts from a heartbeat (a bound on how long it may wait).
  public static let maxIdleFactor = 100
  private var ticks: UInt64 = 0
  /// The shell's monotonic clock, as last given (never goes back).
  private var now: UInt64 = 0
  /// When (``now``) this node last heard from its leader (or led, or first read the clock after starting);
  /// with ``MultiPaxosOptions/tickNanos`` set it refuses new ballots for
  /// ``MultiPaxosOptions/promiseRefusalWindowNanos`` after it.
  private var leaderContactNanos: UInt64?
  /// Not yet given the clock since starting: the refusal window starts at the first reading.
  private var awaitingFirstClock = true

  // Learning from the current leader's chosen point.
  private var commitBallot: Ballot = .zero
  private var commitThrough: Slot = 0

  // Candidate.
  private struct Merged: Sendable {
    var entry: PaxosEntry
    var chosen: Bool
  }
  private struct Candidacy: Sendable {
    var ballot: Ballot
    var fromSlot: Slot
    /// The configuration known at `fromSlot` (the newest known chosen).
    var known: Membership
    /// The ballot of the leader that handed over (``Prepare/handoff``), or zero.
    var handoff: Ballot
    /// The acceptors asked, and the slot each report continues from.
    var cursor: [NodeID: Slot] = [:]
    var complete: Set<NodeID> = []
    var merged: [Slot: Merged] = [:]
    /// The slots whose merged proposal is a configuration entry.
    var configSlots: Set<Slot> = []
    var maxSlot: Slot = 0
    var selfDurable = false
    /// The acceptors whose report this candidate cannot use, being too far behind them: they compacted slots it
    /// lacks (``RejectReason/behindSnapshot``), or they hold slots more than ``maxAcceptReach`` past its last.
    var behind: Set<NodeID> = []
  }
  private var candidacy: Candidacy?
  private var probeBallot: Ballot = .zero
  private var probeGrants: Set<NodeID> = []

  // Leader.
  private struct Batch: Sendable {
    var first: Slot
    var last: Slot
    var sentAt: UInt64
  }
  private struct Peer: Sendable {
    var bit: UInt64
    var next: Slot
    var inflight: [Batch] = []
    var chosen: Slot = 0
    var ackedRound: UInt64 = 0
    var recentActive = true
    /// When this acceptor last acknowledged an accept.
    var lastHeard: UInt64 = 0
    /// When the newest batch it acknowledged was sent: an older batch still unacknowledged was lost.
    var newestAckedSentAt: UInt64 = 0
    /// The last slot of the catch-up batch most recently sent, and when.
    var repairUntil: Slot = 0
    var repairSentAt: UInt64 = 0
    var snapshotIndex: Slot = 0
    var snapshotOffset: UInt64 = 0
    var snapshotSentAt: UInt64 = 0
    /// The snapshot this acceptor refused as too large (0: none), and when: not offered again before the
    /// back-off unless a newer snapshot replaces it.
    var refusedSnapshot: Slot = 0
    var refusedAt: UInt64 = 0
    /// Why it is not sent a snapshot, for status displays.
    var snapshotRefusal: String?
    /// The chosen point last sent to this acceptor.
    var toldChosen: Slot = 0
  }
  private var peers: [NodeID: Peer] = [:]
  private var peerOrder: [NodeID] = []
  private var selfBit: UInt64 = 0
  /// A configuration as a leader uses it: from the slot after ``slot`` on, quorums of ``membership``'s voters
  /// (``mask`` in the acknowledgement bits) of these sizes.
  private struct Configuration: Sendable {
    var slot: Slot
    var membership: Membership
    var phase1: Int
    var phase2: Int
    var mask: UInt64
  }
  /// Leader: the configurations of every slot after the chosen point, ascending: the first governs
  /// `chosenThrough + 1`, each later one the slots after its own.
  private var configurations: [Configuration] = []
  /// Leader: the configuration entry sent but not yet chosen; nothing after it is sent until it is.
  private var pendingConfigSlot: Slot?
  /// Leader: proposals after ``pendingConfigSlot``, in slot order, neither sent nor stored until it is chosen.
  private var held: [SlotRecord] = []
  /// Leader: every slot from its first unknown one up to here holds its own proposal (or a chosen value); the
  /// records above it are older proposals its acceptor accepted, which it never sends.
  private var releasedThrough: Slot = 0
  /// Leader: the slot its next proposal takes.
  private var nextSlot: Slot = 1
  /// Leader: the acknowledgement bit of each voter of ``configurations``.
  private var bitOf: [NodeID: UInt64] = [:]
  /// Leader: the voter it hands leadership to, and whether it steps down once it has (it was removed).
  public private(set) var transferee: NodeID?
  private var stepDownAfterTransfer = false
  private var campaignNowSentAt: UInt64?
  /// Leader: it started a hand-over in this ballot. A delayed ``CampaignNow`` may yet elect the target past
  /// every acceptor's refusal window, so it serves no lease read again in this ballot.
  private var leaseForfeited = false
  /// The last slot whose value phase 1 recovered; the leader serves reads once it has chosen everything
  /// up to here.
  private(set) var recoveryEnd: Slot = 0
  private var uncommittedBytes = 0
  private var needsBroadcast = false
  private var needsChosenNotice = false

  // Reads and leases.
  private struct PendingRead: Sendable {
    var id: UInt64
    var index: Slot
    var round: UInt64
  }
  private var readRound: UInt64 = 0
  private var needsReadRound = false
  private var pendingReads = FIFOQueue<PendingRead>()
  private var readsAwaitingRecovery = FIFOQueue<UInt64>()
  /// The most reads a leader keeps waiting for confirmation; past it the oldest is reported failed.
  static let maxUnconfirmedReads = 65_536
  /// The reads waiting for confirmation (at most ``maxUnconfirmedReads``).
  var unconfirmedReads: Int { pendingReads.count + readsAwaitingRecovery.count }
  private var roundSentAt = FIFOQueue<(round: UInt64, at: UInt64)>()
  private var leaseStart: UInt64?

  // A snapshot being received.
  private struct IncomingSnapshot: Sendable {
    var from: NodeID
    var ballot: Ballot
    var index: Slot
    var membership: Membership
    var totalBytes: UInt64
    var data: [UInt8]
  }
  private var incomingSnapshot: IncomingSnapshot?
  private var pendingSnapshot: PaxosSnapshot?

  // Snapshots offered to candidates this acceptor refused as behind it (not as a leader: ballot zero).
  private struct Offer: Sendable {
    /// The snapshot offered, and the offset of the chunk last sent.
    var index: Slot
    var offset: UInt64
    /// When the chunk was last sent, and when the candidate last acknowledged progress.
    var sentAt: UInt64
    var progressAt: UInt64
    /// Offering is paused until this tick (nil: chunks are being sent). The candidate refused the snapshot as too
    /// large (`refused`), or left it unacknowledged (`silences` times in a row; its next acknowledgement of progress
    /// ends such a pause).
    var pausedUntil: UInt64?
    var refused = false
    /// Chunks resent since the candidate last acknowledged progress.
    var resends = 0
    /// Offers in a row the candidate left unacknowledged: each pause is twice as long as the one before.
    var silences = 0
  }
  private var offers: [NodeID: Offer] = [:]
  /// The most candidates offered a snapshot at once; a full table gives up a paused offer for a new candidate.
  static let maxOffers = 8
  /// Paused offers a full table gave up, kept (without sending anything) so that a candidate's pause and its count
  /// of silences outlast its turn out of the table: without them, with more silent candidates than the table
  /// holds, one was always out, and each of its probes started a new offer (a chunk and its resends) and put
  /// another out, defeating the doubling pause.
  private var setAsideOffers: [NodeID: Offer] = [:]
  /// The most offers set aside; past it the one whose pause ends first is forgotten.
  static let maxSetAsideOffers = 64
  /// The most chunks an acceptor resends of a snapshot it offers a candidate (ballot zero) while the candidate
  /// acknowledges none; it then offers none for a pause of four maximum election timeouts, doubling with each offer
  /// in a row left unacknowledged, at most `snapshotRefusalBackoffTicks` if that is longer. A build from before
  /// 2026-12-07 refuses the first chunk, which pauses the offer at once.
  public static let maxUnacknowledgedOfferResends = 2

  // Outputs accumulated for the next ready.
  private var outbox: [PaxosOutgoing] = []
  private var eagerOutbox: [PaxosOutgoing] = []
  private var unstable: [Slot] = []
  private var unstableSorted = true
  private var readStates: [PaxosReadState] = []
  private var failedReads: [UInt64] = []
  private var snapshotRefusals: [PaxosSnapshotRefusal] = []
  private var lastHardState: PaxosHardState
  private var lastSoftState: PaxosSoftState

  /// Creates a node from its durable state.
  ///
  /// - Parameters:
  ///   - id: this node.
  ///   - members: the founding voters of the group (at most 64), the configuration of every slot before the
  ///     first configuration entry; empty for a node that joins an existing group and learns its
  ///     configuration from the leader. A node need not be a founding member.
  ///   - options: quorums, timeouts and limits.
  ///   - hardState: the recovered promise.
  ///   - snapshot: the recovered snapshot, if any (without a recorded configuration: the founding members').
  ///   - entries: the recovered accepted proposals above the snapshot, as ``validateRecovered(snapshot:entries:)``
  ///     accepts them.
  ///   - random: the seeded generator for election timeouts.
  public init(
    id: NodeID, members: [NodeID], options: MultiPaxosOptions = MultiPaxosOptions(),
    hardState: PaxosHardState = PaxosHardState(), snapshot: PaxosSnapshot? = nil, entries: [PaxosEntry] = [],
    random: SeededRandom
  ) {
    precondition(id != .none, "node id 0 is reserved")
    precondition(members.count <= 64, "at most 64 members")
    if !members.isEmpty, let problem = options.quorumProblem(voters: Set(members).count) {
      preconditionFailure("founding members \(members.sorted()): \(problem)")
    }
    self.id = id
    self.options = options
    self.random = random
    self.promised = hardState.promised
    self.highestSeen = hardState.promised
    self.log = PaxosLog(snapshot: snapshot, entries: entries, membership: Membership(voters: Set(members)))
    self.lastHardState = hardState
    self.lastSoftState = PaxosSoftState(role: .follower, leader: nil, ballot: hardState.promised)
    resetElectionTimeout()
  }

  // MARK: - Views

  /// Every slot up to here is known chosen.
  public var chosenThrough: Slot { log.chosenThrough }
  /// Every slot up to here has been handed out for applying.
  public var appliedThrough: Slot { log.applying }
  /// The last slot holding a proposal.
  public var lastSlot: Slot { log.lastSlot }
  /// The first slot still held in memory.
  public var firstSlot: Slot { log.offset + 1 }
  /// The newest snapshot.
  public var snapshot: PaxosSnapshot? { log.snapshot }
  /// The durable state.
  public var hardState: PaxosHardState { PaxosHardState(promised: promised) }
  /// The volatile state.
  public var softState: PaxosSoftState { PaxosSoftState(role: role, leader: leader, ballot: promised) }
  /// The proposal this node accepted at `slot`, if held.
  public func entry(at slot: Slot) -> PaxosEntry? { log[slot]?.entry }
  /// Whether this node knows `slot` is chosen.
  public func isChosen(_ slot: Slot) -> Bool { slot <= log.offset || (log[slot]?.chosen ?? false) }
  /// Whether a leader has chosen every slot phase 1 recovered (required before serving reads).
  public var isRecovered: Bool { role == .leader && log.chosenThrough >= recoveryEnd }
  /// The election timeout currently drawn, in ticks.
  public var currentElectionTimeout: Int { randomizedElectionTimeout }
  /// The membership in force: on a leader the newest configuration it proposed (chosen or not, as Raft's
  /// leader shows its newest entry); elsewhere the newest configuration known chosen (the founding members
  /// until one is, or ``QuorumCore/Membership/empty`` on a node that joined and has learnt none yet).
  public var membership: Membership {
    role == .leader ? (configurations.last?.membership ?? log.membership) : log.membership
  }
  /// The voters of ``membership``, sorted.
  public var members: [NodeID] { membership.allVoters.sorted() }
  /// The configuration in force after `slot` (the newest configuration entry at or before it), for a slot this
  /// node knows chosen and has not compacted; what a snapshot at `slot` records.
  public func membership(through slot: Slot) -> Membership {
    log.membership(through: min(max(slot, log.offset), log.chosenThrough))
  }
  /// Whether this node may campaign: it is a voter of the newest configuration it knows chosen.
  public var isPromotable: Bool { log.membership.isVoter(id) }
  /// Whether a membership change is proposed but not yet chosen (leader only).
  public var hasPendingMembershipChange: Bool { pendingConfigSlot != nil }
  /// The leader's view of each member (empty unless leading).
  public var peerProgress: [NodeID: PaxosPeerProgress] {
    let newest = membership
    var out: [NodeID: PaxosPeerProgress] = [:]
    for (node, peer) in peers {
      out[node] = PaxosPeerProgress(
        chosenThrough: peer.chosen, next: peer.next, inflight: peer.inflight.count,
        receivingSnapshot: peer.snapshotIndex > 0, snapshotRefusal: peer.snapshotRefusal,
        isLearner: !newest.isVoter(node), recentlyActive: peer.recentActive)
    }
    return out
  }

  /// The configuration of `slot` as this leader sees it: the newest of ``configurations`` before it.
  private func configuration(of slot: Slot) -> Configuration {
    var found = configurations[0]
    for configuration in configurations.dropFirst() where configuration.slot < slot { found = configuration }
    return found
  }

  /// How many slots past the end of what it holds (its last slot, or its chosen point if that is further) an
  /// acceptor stores a leader's proposals (a candidate takes an acceptor's report up to ``maxAcceptReach`` past
  /// its own last slot, what an acceptor may hold under any options):
  /// ``MultiPaxosOptions/maxInflightMessages`` accepts of at most ``MultiPaxosOptions/maxEntriesBytesPerMessage``
  /// bytes, each entry at least 24, but at least 2^16 and at most 2^20 slots. Every slot up to there costs memory
  /// even when empty (a gap is held as empty records), so an accept naming a slot further away (a promise, one
  /// further than ``maxAcceptReach``) is dropped (``refusedMessages``) rather than stored: a faulty leader's slot
  /// 2^62 would take the memory of 2^62 records. Accepts in order open no gap and are never dropped; an honest
  /// leader whose accepts would open a gap that wide (this acceptor missed a great many slots, or restarted far
  /// behind) has them treated as lost, and its repair, which starts after this acceptor's chosen point, brings
  /// it up; an honest candidate more than ``maxAcceptReach`` behind leaves the election to a node that is not.
  public var acceptReach: Slot {
    let perMessage = max(1, options.maxEntriesBytesPerMessage / PaxosEntry(index: 0, ballot: .zero).byteSize)
    let (window, overflow) = max(1, options.maxInflightMessages).multipliedReportingOverflow(by: perMessage)
    return min(Slot(max(overflow ? Int.max : window, 1 << 16)), Self.maxAcceptReach)
  }

  /// The largest ``acceptReach`` under any options: 2^20 slots.
  public static let maxAcceptReach: Slot = 1 << 20

  /// The most empty slots a recovered log may hold in all, between its snapshot and its last entry:
  /// 4 × ``maxAcceptReach`` (about four million). The node holds an empty record for each (some 60 bytes), and a
  /// leader fills each with a no-op, so this bounds the memory a recovered log takes beyond its entries.
  public static let maxRecoveredGapSlots: Slot = 4 * maxAcceptReach

  /// Checks recovered entries before a node restarts from them; the shell calls it with what it read from
  /// storage, before ``init(id:members:options:hardState:snapshot:entries:random:)`` (which holds a record for
  /// every slot from the snapshot to the last entry, empty ones included).
  ///
  /// An acceptor stores a proposal at most ``acceptReach`` slots past the end of what it holds, and a leader
  /// proposes in order, so in a log it wrote every entry lies at most ``maxAcceptReach`` slots (the most under
  /// any options, which may have changed since) past the snapshot and the entries before it. And the slots it
  /// lacks lie in the window of accepts a leader has in flight to it (at most ``maxAcceptReach`` slots), or below
  /// a new leader's first slot until that leader's repair fills them: a few such windows at most, so the empty
  /// slots in all are bounded too (``maxRecoveredGapSlots``). Without that bound a chain of entries each
  /// ``maxAcceptReach`` past the one before (a damaged or crafted log whose checksums hold) took memory for every
  /// slot it skipped: a thousand entries, a billion empty records. The memory a recovered log takes is its
  /// entries' plus at most ``maxRecoveredGapSlots`` empty records.
  ///
  /// A log written by a build from before this check (before 2026-12-07), whose acceptors stored proposals at
  /// any distance, may hold wider gaps and is refused too: such a node cannot restart from its log. Restore
  /// its data directory from a snapshot of a member of the group, or remove it from the group and add it back
  /// as a new member with an empty data directory (it then receives a snapshot).
  ///
  /// - Throws: ``PaxosRecoveryError/slotBeyondReach(slot:after:reach:)`` for the first entry further away;
  ///   ``PaxosRecoveryError/tooManyEmptySlots(slot:empty:bound:)`` for the first entry after which more than
  ///   ``maxRecoveredGapSlots`` slots are empty.
  public static func validateRecovered(snapshot: PaxosSnapshot?, entries: [PaxosEntry]) throws(PaxosRecoveryError) {
    var end = snapshot?.index ?? 0
    var empty: Slot = 0
    for entry in entries {
      let (limit, overflow) = end.addingReportingOverflow(maxAcceptReach)
      if !overflow && entry.index > limit {
        throw .slotBeyondReach(slot: entry.index, after: end, reach: maxAcceptReach)
      }
      if entry.index > end {
        // At most maxAcceptReach per entry (checked above; past an overflowing end, below it), and the sum
        // stops at the bound: no overflow.
        empty += entry.index - end - 1
        if empty > maxRecoveredGapSlots {
          throw .tooManyEmptySlots(slot: entry.index, empty: empty, bound: maxRecoveredGapSlots)
        }
        end = entry.index
      }
    }
  }

  /// `slot` plus ``acceptReach``, or `Slot.max` past it.
  private func reach(from slot: Slot) -> Slot {
    let (limit, overflow) = slot.addingReportingOverflow(acceptReach)
    return overflow ? .max : limit
  }

  /// Whether `members` hold a phase-1 (or phase-2) quorum of `membership`'s voters.
  private func isQuorum(_ members: Set<NodeID>, of membership: Membership, phase1: Bool) -> Bool {
    let (q1, q2) = options.quorums(voters: membership.allVoters.count)
    var count = 0
    for voter in membership.allVoters where members.contains(voter) { count += 1 }
    return count >= (phase1 ? q1 : q2)
  }

  // MARK: - Time

  /// Advances logical time by one tick. `now` is the shell's monotonic clock, as in ``advanceClock(to:)``.
  /// Election, heartbeat and retransmission timeouts count ticks; leases and the promise-refusal window use
  /// `now`.
  public mutating func tick(now: UInt64 = 0) {
    advanceClock(to: now)
    ticks &+= 1
    sinceLeaderContact += 1
    if !offers.isEmpty { tickOffers() }
    switch role {
    case .leader: tickLeader()
    case .candidate, .preCandidate, .follower: tickElection()
    }
  }

  /// Gives the core the shell's monotonic clock (nanoseconds in the node shell); a value below the last one
  /// is ignored, so the clock never goes back. The shell calls it with the time it took a batch of messages
  /// out of its mailbox, before stepping them: a message from the leader is timed by it, and the
  /// promise-refusal window (``MultiPaxosOptions/promiseRefusalWindowNanos``) runs from there.
  public mutating func advanceClock(to nanos: UInt64) {
    now = max(now, nanos)
    if awaitingFirstClock {
      // The first reading since starting: a leader may have been heard just before a crash.
      awaitingFirstClock = false
      leaderContactNanos = now
    }
  }

  /// Records the shell's monotonic clock without ticking; the same as ``advanceClock(to:)``.
  public mutating func observe(now: UInt64) { advanceClock(to: now) }

  /// The shell's failure detector (its transport) lost `peer`. A follower whose leader it is drops the leader's
  /// idle factor, so it probes and promises on an active leader's schedule, counted from the leader's last
  /// message, instead of waiting out the stretched one. Safety does not rest on it, but a wrong report is not
  /// free: once an active election timeout passes without a word from the leader, the misinformed follower
  /// probes (a pre-vote), forgetting its leader until the leader's next message; the probe wakes an idle
  /// leader, and the followers that still hear the leader refuse it. The survivors of a real loss need no turns
  /// (Raft's survivors take them): of two ballots the higher wins.
  public mutating func peerLost(_ peer: NodeID) {
    if role != .leader && peer == leader { leaderIdleFactor = 1 }
  }

  /// Whether this node heard from its leader (or led, or started) less than the promise-refusal window ago,
  /// by the monotonic clock; always `false` without ``MultiPaxosOptions/tickNanos``.
  private var inClockLeaseWindow: Bool {
    guard options.tickNanos > 0 else { return false }
    if awaitingFirstClock { return true }
    guard let contact = leaderContactNanos else { return false }
    return now &- contact < options.promiseRefusalWindowNanos
  }

  /// Leader stickiness: whether this node's acceptor refuses to promise a new ballot to anyone but its leader
  /// (itself included) because it heard from that leader within a minimum election timeout, counted in ticks
  /// or measured on the monotonic clock. Either count suffices to refuse. The leases rest on it.
  private var refusesNewBallots: Bool {
    sinceLeaderContact < options.electionTimeoutMinTicks * leaderIdleFactor || inClockLeaseWindow
  }

  private mutating func noteLeaderContact() {
    sinceLeaderContact = 0
    leaderContactNanos = now
  }

  /// How many of the next ticks are certain to do nothing but advance counters: no message, no change of role,
  /// nothing ready. A follower's election timeout ends them (a learner's ticks never campaign, and only free an
  /// abandoned snapshot). A leader has some when nothing it sent waits to be resent — no batch of accepts in
  /// flight, no snapshot being sent, no transfer — until its next heartbeat or check-quorum. A candidate's
  /// prepares are timed tick by tick, so it wakes for each. A shell may apply quiet ticks late and in one go,
  /// before the next message, with the same result as one at a time.
  public var quietTicks: Int {
    guard !hasReady, !offering else { return 0 }
    switch role {
    case .follower:
      guard isPromotable else { return options.electionTimeoutMinTicks }
      return max(0, randomizedElectionTimeout * leaderIdleFactor - electionElapsed - 1)
    case .leader:
      guard transferee == nil,
        peerOrder.allSatisfy({ peers[$0].map { $0.inflight.isEmpty && $0.snapshotIndex == 0 } ?? true })
      else { return 0 }
      // Alone, it heartbeats nobody and its check-quorum always finds itself: no tick of its does anything.
      if peerOrder.isEmpty { return Int.max }
      let heartbeatDue = options.heartbeatTicks * heartbeatScale - heartbeatElapsed
      return max(0, min(heartbeatDue, options.electionTimeoutMinTicks * heartbeatScale - electionElapsed) - 1)
    case .candidate, .preCandidate:
      return 0
    }
  }

  private mutating func tickElection() {
    electionElapsed += 1
    if incomingSnapshot != nil, electionElapsed >= options.electionTimeoutMinTicks * 4 {
      incomingSnapshot = nil  // The leader stopped sending it; free the memory.
    }
    // Ticks fired in a burst after a stall reach the timeout early: within the window measured on the clock
    // this node would promise itself a ballot while the leader it acknowledged may still hold a lease.
    if electionElapsed >= randomizedElectionTimeout * leaderIdleFactor && !inClockLeaseWindow && isPromotable {
      startProbe()
    } else if role == .candidate {
      retransmitPrepares()
    }
  }

  private mutating func tickLeader() {
    noteLeaderContact()  // A leader is in contact with itself: its own acceptor keeps the lease too.
    heartbeatElapsed += 1
    electionElapsed += 1
    ticksSinceActivity += 1
    if electionElapsed >= options.electionTimeoutMinTicks * heartbeatScale {
      electionElapsed = 0
      var active: Set<NodeID> = [id]
      for peer in peerOrder where peers[peer]?.recentActive == true { active.insert(peer) }
      for peer in peerOrder { peers[peer]?.recentActive = false }
      if !configurations.allSatisfy({ isQuorum(active, of: $0.membership, phase1: false) }) {
        // Check-quorum: a leader cut off from a phase-2 quorum can choose nothing; let another lead.
        becomeFollower(leader: nil)
        return
      }
      if transferee != nil {
        // The target did not take over within an election timeout: resume, or (removed) just step down.
        if stepDownAfterTransfer {
          becomeFollower(leader: nil)
          return
        }
        transferee = nil
      }
    }
    if heartbeatElapsed >= options.heartbeatTicks * heartbeatScale {
      heartbeatElapsed = 0
      if !isIdle && mayTurnIdle { isIdle = true }
      broadcastHeartbeat()
    }
    for peer in peerOrder {
      retransmitAccepts(to: peer)
      retrySnapshot(to: peer)
    }
  }

  /// Whether this leader may heartbeat less often from now on: idling is on and allowed, nothing was asked of it
  /// for a minimum election timeout, every slot it proposed is chosen, no configuration change or transfer is
  /// under way, and every follower has nothing in flight, knows the chosen point and answered the last round.
  private var mayTurnIdle: Bool {
    guard options.idleHeartbeatFactor > 1, idleAllowed, ticksSinceActivity >= options.electionTimeoutMinTicks,
      transferee == nil, pendingConfigSlot == nil, held.isEmpty, pendingReads.isEmpty,
      readsAwaitingRecovery.isEmpty, isRecovered, nextSlot == log.chosenThrough + 1, !peerOrder.isEmpty
    else { return false }
    return peerOrder.allSatisfy { id in
      guard let peer = peers[id] else { return true }
      return peer.inflight.isEmpty && peer.snapshotIndex == 0 && peer.chosen == log.chosenThrough
        && peer.ackedRound >= readRound
    }
  }

  /// How many times longer than normal this leader's heartbeat and check-quorum periods are: its idle factor
  /// while idle, else 1.
  private var heartbeatScale: Int { isIdle ? options.idleHeartbeatFactor : 1 }

  /// A request or a follower-started message: an idle leader heartbeats at the normal rate again.
  private mutating func noteActivity() {
    ticksSinceActivity = 0
    guard isIdle else { return }
    isIdle = false
    heartbeatElapsed = max(heartbeatElapsed, options.heartbeatTicks - 1)
  }

  private mutating func resetElectionTimeout() {
    let lo = options.electionTimeoutMinTicks
    let hi = max(options.electionTimeoutMaxTicks, lo + 1)
    randomizedElectionTimeout = Int.random(in: lo..<hi, using: &random)
  }

  // MARK: - Roles

  private mutating func clearLeadership() {
    peers = [:]
    peerOrder = []
    needsBroadcast = false
    needsReadRound = false
    leaseStart = nil
    roundSentAt.removeAll()
    while let read = pendingReads.popFirst() { failedReads.append(read.id) }
    failedReads.append(contentsOf: readsAwaitingRecovery.elements)
    readsAwaitingRecovery.removeAll()
    uncommittedBytes = 0
    recoveryEnd = 0
    candidacy = nil
    configurations = []
    pendingConfigSlot = nil
    held = []
    releasedThrough = 0
    nextSlot = 1
    bitOf = [:]
    selfBit = 0
    transferee = nil
    stepDownAfterTransfer = false
    campaignNowSentAt = nil
    leaseForfeited = false
  }

  private mutating func becomeFollower(leader newLeader: NodeID?) {
    clearLeadership()
    role = .follower
    leader = newLeader
    isIdle = false
    leaderIdleFactor = 1
    electionElapsed = 0
    heartbeatElapsed = 0
    resetElectionTimeout()
  }

  /// Starts phase 1 now, without probing first — unless this node is not a voter of the newest configuration
  /// it knows chosen, or its own acceptor would refuse the new ballot to another candidate (leader
  /// stickiness: it heard from a leader, or led, or started, within a minimum election timeout), as a campaign
  /// that a timeout starts would be refused by its probe. Returns whether it started.
  @discardableResult
  public mutating func campaign() -> Bool {
    guard isPromotable, !refusesNewBallots else { return false }
    startCandidacy()
    return true
  }

  /// The configurations this node holds above its chosen point (not known chosen), ascending.
  private var configurationsAboveChosen: [Membership] {
    log.configSlots.filter { $0 > log.chosenThrough }.compactMap { log.configuration(at: $0) }
  }

  /// Whether `node` may ask this acceptor for a promise: a voter of the newest configuration known chosen or of
  /// one held above it (it may be chosen already), or anyone while this node knows no configuration (it is
  /// joining). A removed node that lost track cannot disturb the group.
  private func mayCampaign(_ node: NodeID) -> Bool {
    if log.membership.allMembers.isEmpty || log.membership.isVoter(node) { return true }
    return configurationsAboveChosen.contains { $0.isVoter(node) }
  }

  /// Whether a candidate may be helped: a voter as far as this node knows, or one that knows more of the log
  /// chosen (`fromSlot`, its first slot not known chosen, is past this node's) and so may know a configuration
  /// that made it a voter. Without the second, a member that missed the slots adding a voter refuses that voter
  /// for ever; when the others were removed meanwhile, no one could lead (found by the node simulation: n4
  /// added, n3 and n1 removed while n2 was cut off, then n2 refused n4 and n1 refused n2). A removed node knows
  /// no more than the members that saw its removal, so it still cannot disturb them.
  private func mayHelpCampaign(_ node: NodeID, fromSlot: Slot) -> Bool {
    mayCampaign(node) || fromSlot > log.chosenThrough + 1
  }

  /// The voters a candidate asks first: those of the newest configuration known chosen and of every one held
  /// above it.
  private var campaignTargets: [NodeID] {
    var voters = log.membership.allVoters
    for configuration in configurationsAboveChosen { voters.formUnion(configuration.allVoters) }
    voters.remove(id)
    return voters.sorted()
  }

  /// Asks every acceptor whether it would promise a ballot above everything seen, changing nothing; phase 1
  /// starts only once a phase-1 quorum (this node included) of each configuration it knows says yes.
  private mutating func startProbe() {
    clearLeadership()
    leader = nil
    electionElapsed = 0
    resetElectionTimeout()
    let ballot = Ballot.next(above: max(promised, highestSeen), for: id)
    guard ballot.peerMalformation == nil else {
      // At the bound on rounds, as in startCandidacy: every peer would drop the probe and count it against this
      // node in refusedMessages.
      role = .follower
      return
    }
    role = .preCandidate
    probeBallot = ballot
    probeGrants = [id]
    if probeSucceeded {
      startCandidacy()
      return
    }
    let probe = Prepare(ballot: probeBallot, fromSlot: log.chosenThrough + 1)
    for member in campaignTargets { send(member, .probe(probe)) }
  }

  private var probeSucceeded: Bool {
    ([log.membership] + configurationsAboveChosen).allSatisfy { isQuorum(probeGrants, of: $0, phase1: true) }
  }

  private mutating func handleProbe(_ m: Prepare, from: NodeID) {
    // Grant exactly when a prepare would be promised now; promise nothing.
    let granted =
      m.ballot > promised && !refusesNewBallots && m.fromSlot > log.offset && role != .leader
      && mayHelpCampaign(from, fromSlot: m.fromSlot)
    send(from, .probeResponse(ProbeResponse(ballot: m.ballot, granted: granted)))
    if m.fromSlot <= log.offset && mayHelpCampaign(from, fromSlot: m.fromSlot) { offerSnapshot(to: from) }
  }

  private mutating func handleProbeResponse(_ m: ProbeResponse, from: NodeID) {
    guard role == .preCandidate, m.ballot == probeBallot, m.granted else { return }
    probeGrants.insert(from)
    if probeSucceeded { startCandidacy() }
  }

  /// Starts phase 1 in a new ballot. `handoff` is the ballot of the leader that asked for it
  /// (``CampaignNow``), or zero.
  private mutating func startCandidacy(handoff: Ballot = .zero) {
    clearLeadership()
    let floor = max(promised, highestSeen)
    let ballot = probeBallot > floor ? probeBallot : Ballot.next(above: floor, for: id)
    guard ballot.peerMalformation == nil else {
      // At or above the bound on rounds (a peer's ballot just below it, with a higher node identifier, left none
      // lower): every member would refuse it. Never promised.
      role = .follower
      leader = nil
      electionElapsed = 0
      resetElectionTimeout()
      return
    }
    promised = ballot
    highestSeen = ballot
    role = .candidate
    leader = nil
    electionElapsed = 0
    resetElectionTimeout()
    let fromSlot = log.chosenThrough + 1
    var c = Candidacy(ballot: ballot, fromSlot: fromSlot, known: log.membership, handoff: handoff)
    let targets = campaignTargets
    for member in targets { c.cursor[member] = fromSlot }
    candidacy = c
    for member in targets {
      send(member, .prepare(Prepare(ballot: ballot, fromSlot: fromSlot, handoff: handoff)))
    }
  }

  private mutating func retransmitPrepares() {
    guard let c = candidacy, electionElapsed > 0, electionElapsed % options.retransmitTicks == 0 else { return }
    for member in c.cursor.keys.sorted() where !c.complete.contains(member) && !c.behind.contains(member) {
      send(member, .prepare(Prepare(ballot: c.ballot, fromSlot: c.cursor[member] ?? c.fromSlot, handoff: c.handoff)))
    }
  }

  /// The candidate's own acceptor promises once its ballot is durable: its log is merged like any promise.
  private mutating func mergeOwnPromise(durable: Ballot) {
    guard var c = candidacy, !c.selfDurable, durable == c.ballot else { return }
    c.selfDurable = true
    for entry in log.entries(from: c.fromSlot, through: log.lastSlot) {
      merge(entry, chosen: isChosen(entry.index), into: &c)
    }
    c.maxSlot = max(c.maxSlot, log.lastSlot)
    c.complete.insert(id)
    candidacy = c
    maybeLead()
  }

  private func merge(_ entry: PaxosEntry, chosen: Bool, into c: inout Candidacy) {
    let slot = entry.index
    guard slot >= c.fromSlot else { return }
    if let existing = c.merged[slot] {
      if existing.chosen {
        precondition(
          !chosen || existing.entry.hasSameValue(as: entry),
          "two chosen values reported for slot \(slot): \(existing.entry) and \(entry)")
        return
      }
      guard chosen || entry.ballot > existing.entry.ballot else { return }
    }
    c.merged[slot] = Merged(entry: entry, chosen: chosen)
    if entry.kind == .membership {
      c.configSlots.insert(slot)
    } else {
      c.configSlots.remove(slot)
    }
  }

  private mutating func handlePromise(_ m: Promise, from: NodeID) {
    guard role == .candidate, var c = candidacy, m.ballot == c.ballot, let expected = c.cursor[from],
      m.fromSlot == expected, !c.complete.contains(from)
    else { return }
    // A report reaching far past this node's log would have it propose (at least a no-op) in every slot up to
    // there: drop it. Its entries lie inside fromSlot...coveredThrough (malformation). The limit is the largest
    // reach under any options (what recovery accepts too), not this node's own: an acceptor that stored a leader's
    // proposals under wider options than this node's may hold more, and a node whose own limit dropped it while
    // that acceptor, behind this node's snapshot, could not lead either would leave two live nodes blocking each
    // other until a third came back.
    let (limit, overflow) = max(log.lastSlot, c.fromSlot - 1).addingReportingOverflow(Self.maxAcceptReach)
    guard overflow || (m.coveredThrough <= limit && m.lastSlot <= limit) else {
      refusedMessages &+= 1
      // An honest acceptor this far ahead (this node restarted with an old log, or was cut off for long) holds
      // slots this candidate cannot take: it goes on without it if it can, and otherwise makes way.
      setAside(from, in: c)
      return
    }
    for entry in m.entries { merge(entry, chosen: entry.index <= m.chosenThrough, into: &c) }
    c.cursor[from] = max(m.coveredThrough + 1, expected)
    if m.isComplete {
      c.complete.insert(from)
      c.maxSlot = max(c.maxSlot, m.lastSlot)
    } else {
      send(from, .prepare(Prepare(ballot: c.ballot, fromSlot: c.cursor[from] ?? expected, handoff: c.handoff)))
    }
    candidacy = c
    maybeLead()
  }

  /// The configurations a candidate needs a phase-1 quorum of: the one known at its first unknown slot, then
  /// every one the merged reports hold above it, in slot order (rule 3 of the membership rule).
  private func requiredConfigurations(_ c: Candidacy) -> [Membership] {
    var out = [c.known]
    for slot in c.configSlots.sorted() {
      if let configuration = c.merged[slot]?.entry.membership { out.append(configuration) }
    }
    return out
  }

  private mutating func maybeLead() {
    guard role == .candidate, var c = candidacy, c.selfDurable else { return }
    let required = requiredConfigurations(c)
    // The reports revealed configurations with voters not asked yet: ask them.
    for configuration in required {
      for voter in configuration.allVoters.sorted() where voter != id && c.cursor[voter] == nil {
        c.cursor[voter] = c.fromSlot
        send(voter, .prepare(Prepare(ballot: c.ballot, fromSlot: c.fromSlot, handoff: c.handoff)))
      }
    }
    candidacy = c
    guard required.allSatisfy({ isQuorum(c.complete, of: $0, phase1: true) }) else { return }
    becomeLeader(c)
  }

  private mutating func becomeLeader(_ c: Candidacy) {
    candidacy = nil
    role = .leader
    leader = id
    isIdle = false
    ticksSinceActivity = 0
    leaderIdleFactor = 1
    electionElapsed = 0
    heartbeatElapsed = 0
    noteLeaderContact()
    configurations = []
    bitOf = [:]
    peers = [:]
    peerOrder = []
    appendConfiguration(log.membership, at: log.membershipSlot)
    syncPeers(next: c.fromSlot)
    releasedThrough = c.fromSlot - 1
    // Re-propose in this ballot everything phase 1 found, and fill the gaps with no-ops. Past a configuration
    // entry not known chosen, the proposals wait (rule 2) until it is.
    var slot = c.fromSlot
    while slot <= c.maxSlot {
      let entry: PaxosEntry
      var chosen = false
      if let merged = c.merged[slot] {
        entry = PaxosEntry(index: slot, ballot: c.ballot, kind: merged.entry.kind, data: merged.entry.data)
        chosen = merged.chosen
      } else {
        entry = PaxosEntry(index: slot, ballot: c.ballot, kind: .noop)
      }
      if let existing = log[slot], existing.chosen {
        precondition(
          existing.entry.hasSameValue(as: entry), "\(id) would re-propose \(entry) over chosen \(existing.entry)")
        chosen = true
      }
      if !chosen { uncommittedBytes += entry.byteSize }
      let record = SlotRecord(entry: entry, chosen: chosen, acks: 0)
      if pendingConfigSlot == nil {
        release(record)
      } else {
        held.append(record)
      }
      slot += 1
    }
    // Drop anything this node holds beyond the recovered range: no quorum member reported it, so it was
    // never chosen, and a stale proposal must not linger where new slots go.
    precondition(log.lastSlot <= max(c.maxSlot, log.chosenThrough), "\(id) holds slots beyond phase 1's report")
    nextSlot = max(c.maxSlot, c.fromSlot - 1) + 1
    recoveryEnd = c.maxSlot
    log.extendChosen()
    pruneConfigurations()
    needsBroadcast = true
    broadcastHeartbeat()
    maybeHandOff()
  }

  // MARK: - Configurations (leader)

  /// Writes one of this leader's proposals into its log (to be sent, and stored by its own acceptor). A
  /// configuration entry starts governing the slots after it; if not known chosen, the proposals after it
  /// wait.
  private mutating func release(_ record: SlotRecord) {
    let slot = record.entry.index
    log[slot] = record
    markUnstable(slot)
    releasedThrough = max(releasedThrough, slot)
    needsBroadcast = true
    guard record.entry.kind == .membership else { return }
    if let configuration = record.entry.membership {
      appendConfiguration(configuration, at: slot)
      syncPeers(next: releasedThrough + 1)
    }
    if !record.chosen { pendingConfigSlot = slot }
  }

  /// Sends what waited behind the pending configuration entry once it is chosen, up to and including the next
  /// configuration entry in doubt.
  private mutating func releaseHeld() {
    while let pending = pendingConfigSlot, isChosen(pending) {
      pendingConfigSlot = nil
      var moved = 0
      while moved < held.count && pendingConfigSlot == nil {
        release(held[moved])
        moved += 1
      }
      held.removeFirst(moved)
    }
  }

  private mutating func appendConfiguration(_ membership: Membership, at slot: Slot) {
    for voter in membership.allVoters.sorted() where bitOf[voter] == nil { bitOf[voter] = freeBit() }
    var mask: UInt64 = 0
    for voter in membership.allVoters { mask |= bitOf[voter] ?? 0 }
    let (q1, q2) = options.quorums(voters: membership.allVoters.count)
    configurations.append(Configuration(slot: slot, membership: membership, phase1: q1, phase2: q2, mask: mask))
  }

  private func freeBit() -> UInt64 {
    var used: UInt64 = 0
    for bit in bitOf.values { used |= bit }
    precondition(used != .max, "\(id): more than 64 voters across the configurations \(configurations.map(\.slot))")
    let free = ~used
    return free & (~free &+ 1)
  }

  /// Drops the configurations that no longer govern an unchosen slot, with their members that are in no other
  /// (after one last word of the chosen point, so a removed member learns it was removed) and the
  /// acknowledgement bits of voters that are gone, cleared from every unchosen slot so that a voter added later
  /// can reuse them.
  private mutating func pruneConfigurations() {
    var dropped = false
    while configurations.count > 1 && configurations[1].slot <= log.chosenThrough {
      configurations.removeFirst()
      dropped = true
    }
    guard dropped else { return }
    var voters: Set<NodeID> = []
    for configuration in configurations { voters.formUnion(configuration.membership.allVoters) }
    var freed: UInt64 = 0
    for (node, bit) in bitOf where !voters.contains(node) {
      freed |= bit
      bitOf[node] = nil
    }
    if freed != 0 {
      var slot = log.chosenThrough + 1
      while slot <= releasedThrough {
        log.update(slot) { $0.acks &= ~freed }
        slot += 1
      }
    }
    syncPeers(next: releasedThrough + 1)
  }

  /// Keeps a peer for every member (voter or learner) of the configurations in use, and nobody else. A new
  /// peer starts at `next`; the heartbeat's chosen point shows what it misses before that, and catch-up sends it.
  private mutating func syncPeers(next: Slot) {
    var wanted: Set<NodeID> = []
    for configuration in configurations { wanted.formUnion(configuration.membership.allMembers) }
    wanted.remove(id)
    for node in peerOrder where !wanted.contains(node) {
      if let peer = peers[node], peer.toldChosen < log.chosenThrough {
        send(node, .accept(Accept(ballot: promised, entries: [], chosenThrough: log.chosenThrough)))
      }
      peers[node] = nil
    }
    peerOrder = wanted.sorted()
    for node in peerOrder {
      var peer = peers[node] ?? Peer(bit: 0, next: next, lastHeard: ticks)
      peer.bit = bitOf[node] ?? 0
      peers[node] = peer
    }
    selfBit = bitOf[id] ?? 0
  }

  /// A leader that is no longer a voter of a chosen configuration hands over to the voter that knows the most
  /// chosen slots and steps down (it would otherwise lead a group it is not in).
  private mutating func maybeHandOff() {
    guard role == .leader, let newest = configurations.last, !newest.membership.isVoter(id),
      pendingConfigSlot == nil, newest.slot <= log.chosenThrough, !stepDownAfterTransfer
    else { return }
    var successor: NodeID?
    var best: Slot = 0
    for voter in newest.membership.allVoters.sorted() {
      guard let peer = peers[voter], successor == nil || peer.chosen > best else { continue }
      successor = voter
      best = peer.chosen
    }
    guard let successor else {
      becomeFollower(leader: nil)
      return
    }
    startTransfer(to: successor)
    stepDownAfterTransfer = true
    tryTransfer()
  }

  private mutating func startTransfer(to target: NodeID) {
    transferee = target
    stepDownAfterTransfer = false
    campaignNowSentAt = nil
    electionElapsed = 0
    leaseStart = nil  // The target wins without waiting for our lease: stop serving lease reads now.
    leaseForfeited = true
  }

  /// Tells the transfer target to campaign once it knows every slot chosen and nothing is left in flight.
  private mutating func tryTransfer() {
    guard role == .leader, let target = transferee, let peer = peers[target] else { return }
    guard held.isEmpty, log.chosenThrough >= releasedThrough, peer.chosen >= log.chosenThrough else { return }
    if let sent = campaignNowSentAt, ticks &- sent < UInt64(options.retransmitTicks) { return }
    campaignNowSentAt = ticks
    send(target, .campaignNow(CampaignNow(ballot: promised)))
    if stepDownAfterTransfer { becomeFollower(leader: nil) }
  }

  // MARK: - Messages

  /// Handles a message from a peer.
  public mutating func step(_ message: PaxosMessage, from: NodeID) {
    guard from != id, from != .none else { return }
    // A message no honest peer sends (its decoder refuses it; this one may not have been encoded) is dropped
    // before it touches anything: an absurd ballot would leave no higher one, an absurd slot overflow.
    guard message.malformation == nil else {
      refusedMessages &+= 1
      return
    }
    // A probe response carries this node's own probe ballot, which nobody has promised.
    let ballot = message.ballot
    if ballot > highestSeen, !message.isProbeResponse { highestSeen = ballot }
    if role == .leader {
      switch message {
      case .heartbeatResponse: break
      default: noteActivity()  // Accepts being answered, or a follower asking for something: stay awake.
      }
    }
    switch message {
    case .prepare(let m): handlePrepare(m, from: from)
    case .promise(let m): handlePromise(m, from: from)
    case .reject(let m): handleReject(m, from: from)
    case .accept(let m): handleAccept(m, from: from)
    case .accepted(let m): handleAccepted(m, from: from)
    case .heartbeat(let m): handleHeartbeat(m, from: from)
    case .heartbeatResponse(let m): handleHeartbeatResponse(m, from: from)
    case .snapshot(let m): handleSnapshot(m, from: from)
    case .snapshotAck(let m): handleSnapshotAck(m, from: from)
    case .probe(let m): handleProbe(m, from: from)
    case .probeResponse(let m): handleProbeResponse(m, from: from)
    case .campaignNow(let m): handleCampaignNow(m, from: from)
    }
  }

  /// The leader hands over: campaign at once, past this node's own refusal window, if it still follows that
  /// leader in that ballot and may campaign.
  private mutating func handleCampaignNow(_ m: CampaignNow, from: NodeID) {
    guard role == .follower, leader == from, m.ballot == promised, isPromotable else { return }
    startCandidacy(handoff: m.ballot)
  }

  private mutating func handlePrepare(_ m: Prepare, from: NodeID) {
    guard mayHelpCampaign(from, fromSlot: m.fromSlot) else { return }  // A removed node must not disturb the group.
    if m.ballot < promised {
      send(from, .reject(Reject(ballot: m.ballot, promised: promised)))
      return
    }
    if m.ballot > promised {
      // Leader stickiness: while this node has heard from its leader within a minimum election timeout (or
      // has just started and cannot know), it refuses to help elect another. This is what makes leases
      // safe; the candidate tries again after its timeout. A hand-over from the leader this node follows (it
      // gave up its lease) is let through.
      let handedOver = m.handoff != .zero && m.handoff == promised
      if refusesNewBallots && from != leader && !handedOver { return }
      if m.fromSlot <= log.offset {
        send(
          from,
          .reject(
            Reject(ballot: m.ballot, promised: promised, reason: .behindSnapshot, snapshotIndex: log.offset)))
        offerSnapshot(to: from)
        return
      }
      becomeFollower(leader: nil)
      promised = m.ballot
    }
    guard m.fromSlot > log.offset else {
      send(
        from,
        .reject(Reject(ballot: m.ballot, promised: promised, reason: .behindSnapshot, snapshotIndex: log.offset)))
      offerSnapshot(to: from)
      return
    }
    // Report what was accepted from `fromSlot` on, bounded in bytes.
    var entries: [PaxosEntry] = []
    var bytes = 0
    var slot = m.fromSlot
    let last = log.lastSlot
    var covered = m.fromSlot - 1
    while slot <= last {
      if let record = log[slot] {
        bytes += record.entry.byteSize
        if !entries.isEmpty && bytes > options.maxEntriesBytesPerMessage { break }
        entries.append(record.entry)
      }
      covered = slot
      slot += 1
    }
    if slot > last { covered = max(covered, last) }
    send(
      from,
      .promise(
        Promise(
          ballot: m.ballot, fromSlot: m.fromSlot, entries: entries, coveredThrough: covered, lastSlot: last,
          chosenThrough: log.chosenThrough)))
  }

  private mutating func handleReject(_ m: Reject, from: NodeID) {
    highestSeen = max(highestSeen, m.promised)
    if m.ballot == Self.offerBallot {
      // A build from before 2026-12-07 refuses an offered snapshot's chunk as a leader's at a ballot below its
      // promise: it cannot take offers.
      pauseOffer(to: from)
      return
    }
    switch role {
    case .candidate:
      guard let c = candidacy, m.ballot == c.ballot else { return }
      if m.reason == .behindSnapshot {
        setAside(from, in: c)
      } else if m.promised > c.ballot {
        becomeFollower(leader: nil)
      }
    case .leader:
      if m.ballot == promised, m.promised > promised { becomeFollower(leader: nil) }
    case .follower, .preCandidate:
      break
    }
  }

  /// A candidate cannot use `from`'s report: `from` compacted slots this candidate lacks, or holds slots beyond
  /// its reach. The others' reports hold every chosen value this node lacks as long as a phase-1 quorum of every
  /// configuration it needs can still answer without the acceptors it is that far behind: it goes on. (The
  /// up-to-date acceptor may not campaign at all: one removed from the group by the entries it holds.)
  /// Otherwise this node cannot lead until it has those slots: it makes way for an up-to-date node, which will
  /// lead and send them, waiting longer than the others before it tries again. Without the wait, a node far
  /// behind that timed out first would start election after election, each resetting the timers of the nodes
  /// that could lead, and delay the failover by as many duels.
  private mutating func setAside(_ from: NodeID, in candidacy: Candidacy) {
    var c = candidacy
    c.behind.insert(from)
    let reachable = requiredConfigurations(c).allSatisfy { configuration in
      isQuorum(configuration.allVoters.subtracting(c.behind), of: configuration, phase1: true)
    }
    if reachable {
      self.candidacy = c
      return
    }
    becomeFollower(leader: nil)
    randomizedElectionTimeout += options.electionTimeoutMaxTicks
  }

  /// Adopts a leader's ballot `ballot` (≥ promised) and resets the election timer. Returns `false` if the
  /// ballot is below the promise (the sender is told).
  private mutating func followLeader(_ ballot: Ballot, from: NodeID) -> Bool {
    if ballot < promised {
      send(from, .reject(Reject(ballot: ballot, promised: promised)))
      return false
    }
    if ballot > promised || role != .follower || leader != from {
      if role != .follower || leader != from { becomeFollower(leader: from) }
      promised = ballot
    }
    electionElapsed = 0
    leaderIdleFactor = 1  // A heartbeat sets it again.
    noteLeaderContact()
    return true
  }

  private mutating func handleAccept(_ m: Accept, from: NodeID) {
    guard followLeader(m.ballot, from: from) else { return }
    if commitBallot != m.ballot {
      commitBallot = m.ballot
      commitThrough = 0
    }
    // Proposals far past what this acceptor holds would be stored behind a gap of empty records: the accept is
    // treated as lost (see acceptReach); the leader's repair resends from the chosen point on. Its entries are
    // consecutive (malformation), so the last is the furthest, and accepts in order open no gap.
    if let furthest = m.entries.last?.index, furthest > reach(from: max(log.chosenThrough, log.lastSlot)) {
      refusedMessages &+= 1
      learnChosen(through: m.chosenThrough, ballot: m.ballot)
      return
    }
    var first: Slot = 0
    var last: Slot = 0
    for entry in m.entries {
      if first == 0 { first = entry.index }
      last = entry.index
      // Slots in the snapshot are chosen and applied; the leader's proposal there is the chosen value.
      guard entry.index > max(log.offset, log.snapshotIndex) else { continue }
      var chosen = false
      if let existing = log[entry.index], existing.chosen {
        precondition(
          existing.entry.hasSameValue(as: entry),
          "\(id): accept of \(entry) in slot \(entry.index) differs from the chosen \(existing.entry)")
        // A chosen value is final: storing it again in the new ballot changes nothing a later phase 1 could
        // learn (every higher ballot proposes this value), and the slot may already be inside a snapshot that
        // storage holds but this core has not recorded yet, where storage refuses writes.
        continue
      }
      // A slot known chosen keeps the value it holds (the same, checked above): storing it again in this ballot
      // adds nothing, and the slot may be covered by a snapshot the shell is storing in the background, behind
      // which storage refuses writes. It is acknowledged all the same: the value is chosen.
      if entry.index <= log.chosenThrough { continue }
      var stored = entry
      stored.ballot = m.ballot
      if entry.index <= commitThrough { chosen = true }
      if let existing = log[entry.index], existing.entry == stored {
        // A resent accept: already accepted in this ballot (and durable, or in this ready's write).
        if chosen && !existing.chosen { log.update(entry.index) { $0.chosen = true } }
        continue
      }
      log[entry.index] = SlotRecord(entry: stored, chosen: chosen, acks: 0)
      markUnstable(entry.index)
    }
    learnChosen(through: m.chosenThrough, ballot: m.ballot)
    // An accept without entries only announces the chosen point; it needs no answer.
    guard first > 0 else { return }
    send(
      from,
      .accepted(
        Accepted(ballot: m.ballot, firstSlot: first, lastSlot: last, chosenThrough: log.chosenThrough)))
  }

  /// Marks chosen every slot up to `through` whose proposal was accepted in `ballot`, the ballot of the
  /// leader that reports `through`.
  private mutating func learnChosen(through: Slot, ballot: Ballot) {
    guard ballot == promised, through > commitThrough || commitBallot != ballot else {
      log.extendChosen()
      return
    }
    let sameBallot = commitBallot == ballot
    let start = sameBallot ? max(commitThrough, log.chosenThrough) : log.chosenThrough
    commitBallot = ballot
    commitThrough = sameBallot ? max(commitThrough, through) : through
    var slot = start + 1
    let last = min(through, log.lastSlot)
    while slot <= last {
      if let record = log[slot], !record.chosen, record.entry.ballot == ballot {
        log.update(slot) { $0.chosen = true }
      }
      slot += 1
    }
    log.extendChosen()
  }

  private mutating func handleHeartbeat(_ m: Heartbeat, from: NodeID) {
    guard followLeader(m.ballot, from: from) else { return }
    leaderIdleFactor = Int(clamping: min(max(1, m.idleFactor), UInt64(Self.maxIdleFactor)))
    learnChosen(through: m.chosenThrough, ballot: m.ballot)
    send(
      from,
      .heartbeatResponse(
        HeartbeatResponse(
          ballot: m.ballot, round: m.round, leaderChosenThrough: m.chosenThrough, chosenThrough: log.chosenThrough)))
  }

  private mutating func handleAccepted(_ m: Accepted, from: NodeID) {
    guard role == .leader, m.ballot == promised, var peer = peers[from] else { return }
    peer.recentActive = true
    peer.lastHeard = ticks
    peer.chosen = max(peer.chosen, plausibleChosen(m.chosenThrough))
    if let i = peer.inflight.firstIndex(where: { $0.last == m.lastSlot && $0.first == m.firstSlot }) {
      peer.newestAckedSentAt = max(peer.newestAckedSentAt, peer.inflight[i].sentAt)
      peer.inflight.remove(at: i)
    }
    let bit = peer.bit
    peers[from] = peer
    if m.firstSlot > 0 {
      // Only this leader's own proposals count: a range past them (from a faulty acceptor) is cut to them.
      var slot = max(m.firstSlot, log.chosenThrough + 1)
      let last = min(m.lastSlot, releasedThrough)
      while slot <= last {
        countAcceptance(slot, bit: bit)
        slot += 1
      }
      advanceChosen()
    }
    if m.lastSlot == peer.repairUntil, peer.chosen < log.chosenThrough {
      repair(peer: from)
    }
    sendAccepts(to: from)
    if from == transferee { tryTransfer() }
  }

  /// Counts `bit`'s acceptance of this leader's proposal at `slot`: chosen once the voters of the slot's
  /// configuration that accepted make a phase-2 quorum of it (learners have no bit in it).
  private mutating func countAcceptance(_ slot: Slot, bit: UInt64) {
    guard let record = log[slot], !record.chosen, record.entry.ballot == promised else { return }
    let acks = record.acks | bit
    let configuration = configuration(of: slot)
    if (acks & configuration.mask).nonzeroBitCount >= configuration.phase2 {
      log.update(slot) {
        $0.acks = acks
        $0.chosen = true
      }
      uncommittedBytes -= record.entry.byteSize
    } else {
      log.update(slot) { $0.acks = acks }
    }
  }

  private mutating func advanceChosen() {
    releaseHeld()
    guard log.extendChosen() else { return }
    needsChosenNotice = true
    pruneConfigurations()
    confirmRecoveredReads()
    maybeHandOff()
  }

  private mutating func handleHeartbeatResponse(_ m: HeartbeatResponse, from: NodeID) {
    guard role == .leader, m.ballot == promised, var peer = peers[from] else { return }
    // An answer to a read round this leader has not started yet comes from no honest member (it echoes the round
    // of a heartbeat of this ballot). Counted, it would acknowledge every round up to it in advance: later reads
    // and leases would be confirmed without this member hearing of them, by this leader alone in a group of three.
    guard m.round <= readRound else {
      refusedMessages &+= 1
      return
    }
    peer.recentActive = true
    // The newest round's answer is the follower's chosen point now, even if it is lower than before: a follower
    // that restarted has forgotten which slots were chosen (that knowledge is not durable) and must be repaired
    // from where it really is, or it never catches up. Older rounds' answers only ever raise it.
    if m.round >= peer.ackedRound {
      peer.chosen = plausibleChosen(m.chosenThrough)
    } else {
      peer.chosen = max(peer.chosen, plausibleChosen(m.chosenThrough))
    }
    peer.ackedRound = max(peer.ackedRound, m.round)
    peers[from] = peer
    // Below the chosen point it was sent, the follower is missing slots (or holds them from another
    // ballot): send them again.
    if m.chosenThrough < m.leaderChosenThrough
      && (peer.repairSentAt == 0 || ticks &- peer.repairSentAt >= UInt64(options.retransmitTicks))
    {
      repair(peer: from)
    }
    confirmReads()
    if from == transferee { tryTransfer() }
  }

  /// A member's reported chosen point, capped at the last slot this leader proposes in: no slot beyond it is
  /// chosen (phase 1 recovered every chosen slot, and later ones are this leader's), so only a faulty member
  /// reports more. (A member may honestly be ahead of a new leader's own chosen point, so that is no cap.)
  private func plausibleChosen(_ reported: Slot) -> Slot { min(reported, nextSlot - 1) }

  /// Resends the slots after the peer's chosen point, as accepts in this ballot, or the snapshot if those
  /// slots are compacted.
  private mutating func repair(peer id: NodeID) {
    guard var peer = peers[id], peer.snapshotIndex == 0 else { return }
    let from = peer.chosen + 1
    if from <= log.offset {
      startSnapshot(to: id)
      return
    }
    let entries = batch(from: from, through: releasedThrough)
    guard let last = entries.last?.index else { return }
    peer.repairUntil = last
    peer.repairSentAt = ticks
    peers[id] = peer
    send(id, .accept(Accept(ballot: promised, entries: entries, chosenThrough: log.chosenThrough)))
  }

  /// Up to a message's worth of the leader's proposals from `from`, stamped with the leader's ballot.
  private func batch(from: Slot, through: Slot) -> [PaxosEntry] {
    var entries: [PaxosEntry] = []
    var bytes = 0
    var slot = from
    while slot <= through {
      guard let record = log[slot] else { break }
      bytes += record.entry.byteSize
      if !entries.isEmpty && bytes > options.maxEntriesBytesPerMessage { break }
      var entry = record.entry
      entry.ballot = promised
      entries.append(entry)
      slot += 1
    }
    return entries
  }

  /// Sends new batches to `peer` while its pipeline has room.
  private mutating func sendAccepts(to id: NodeID) {
    guard var peer = peers[id], peer.snapshotIndex == 0 else { return }
    while peer.inflight.count < options.maxInflightMessages && peer.next <= releasedThrough {
      if peer.next <= log.offset {
        peers[id] = peer
        startSnapshot(to: id)
        return
      }
      let entries = batch(from: peer.next, through: releasedThrough)
      guard let first = entries.first?.index, let last = entries.last?.index else { break }
      send(id, .accept(Accept(ballot: promised, entries: entries, chosenThrough: log.chosenThrough)))
      peer.inflight.append(Batch(first: first, last: last, sentAt: ticks))
      peer.next = last + 1
    }
    peers[id] = peer
  }

  private mutating func retransmitAccepts(to id: NodeID) {
    guard var peer = peers[id], peer.snapshotIndex == 0, !peer.inflight.isEmpty else { return }
    // An acceptor that keeps acknowledging accepts is busy, not deaf: its overdue batches are probably still
    // queued, and resending them would only make it write them twice. An overdue batch is resent once the
    // acceptor has acknowledged nothing for a period, or has acknowledged a batch sent after it (then this
    // one was lost).
    let period = UInt64(options.retransmitTicks)
    let quiet = ticks &- peer.lastHeard >= period
    var resent = 0
    for i in peer.inflight.indices where ticks &- peer.inflight[i].sentAt >= period {
      guard quiet || peer.newestAckedSentAt > peer.inflight[i].sentAt else { continue }
      if resent >= 8 { break }
      let b = peer.inflight[i]
      if b.first <= log.offset {
        peer.inflight = []
        peers[id] = peer
        startSnapshot(to: id)
        return
      }
      let entries = log.entries(from: b.first, through: b.last).map { entry -> PaxosEntry in
        var e = entry
        e.ballot = promised
        return e
      }
      send(id, .accept(Accept(ballot: promised, entries: entries, chosenThrough: log.chosenThrough)))
      peer.inflight[i].sentAt = ticks
      resent += 1
    }
    peers[id] = peer
  }

  private mutating func broadcastAccepts() {
    for peer in peerOrder { sendAccepts(to: peer) }
  }

  private mutating func broadcastHeartbeat() {
    readRound += 1
    roundSentAt.append((readRound, now))
    while roundSentAt.count > 256 { _ = roundSentAt.popFirst() }
    let factor = UInt64(heartbeatScale)
    for peer in peerOrder {
      send(
        peer,
        .heartbeat(Heartbeat(ballot: promised, chosenThrough: log.chosenThrough, round: readRound, idleFactor: factor)))
    }
    confirmReads()  // A group where the leader alone is a phase-2 quorum confirms at once.
  }

  // MARK: - Snapshots

  private mutating func startSnapshot(to id: NodeID) {
    guard var peer = peers[id], let snapshot = log.snapshot else { return }
    if peer.refusedSnapshot == snapshot.index
      && ticks &- peer.refusedAt < UInt64(max(0, options.snapshotRefusalBackoffTicks))
    {
      return  // Refused as too large: wait for a newer snapshot, a new leader or the back-off.
    }
    peer.snapshotIndex = snapshot.index
    peer.snapshotOffset = 0
    peer.inflight = []
    peers[id] = peer
    sendSnapshotChunk(to: id)
  }

  private mutating func sendSnapshotChunk(to id: NodeID) {
    guard var peer = peers[id], peer.snapshotIndex > 0, let snapshot = log.snapshot else { return }
    if snapshot.index != peer.snapshotIndex {
      peer.snapshotIndex = snapshot.index  // A newer snapshot replaced it; start over.
      peer.snapshotOffset = 0
    }
    peer.snapshotSentAt = ticks
    peers[id] = peer
    send(id, .snapshot(chunk(of: snapshot, at: peer.snapshotOffset, ballot: promised)))
  }

  /// The chunk of `snapshot` from `offset` (at most ``MultiPaxosOptions/snapshotChunkBytes``), in `ballot`.
  private func chunk(of snapshot: PaxosSnapshot, at offset: UInt64, ballot: Ballot) -> SnapshotChunk {
    let total = snapshot.data.count
    let start = Int(min(offset, UInt64(total)))
    let end = min(total, start + max(1, options.snapshotChunkBytes))
    return SnapshotChunk(
      ballot: ballot, index: snapshot.index, membership: snapshot.membership ?? .empty, totalBytes: UInt64(total),
      offset: UInt64(start), chunk: start < end ? Array(snapshot.data[start..<end]) : [])
  }

  /// How a sender of snapshot chunks (a leader, or an acceptor offering one) follows an acknowledgement that the
  /// receiver wants byte `acked` next, having last sent the chunk at `sent`: one chunk at a time, following the
  /// receiver's progress or its restart from 0. A duplicated or late acknowledgement would otherwise start another
  /// chain of chunks lasting until the transfer ends; a lost chunk is resent by the stall timer. An answer below
  /// the chunk last sent moves the resend point back without sending: a stale acknowledgement may have moved it
  /// past what the receiver holds, and a receiver that answers the same offset to every chunk would otherwise stall
  /// the transfer for good. Returns the new resend point and whether to send the chunk there now.
  private static func followChunkAck(_ acked: UInt64, sent: UInt64) -> (offset: UInt64, send: Bool) {
    if acked > sent || (acked == 0 && sent > 0) { return (acked, true) }
    return (min(acked, sent), false)
  }

  private mutating func retrySnapshot(to id: NodeID) {
    guard let peer = peers[id], peer.snapshotIndex > 0,
      ticks &- peer.snapshotSentAt >= UInt64(options.retransmitTicks)
    else { return }
    sendSnapshotChunk(to: id)
  }

  // MARK: - Snapshots offered by an acceptor

  /// Sends this acceptor's snapshot to `candidate`, which it refused because the candidate lacks slots it
  /// compacted (``RejectReason/behindSnapshot``). The snapshot holds only chosen slots, so any node may send it
  /// and any may install it; it travels in the leader's chunks with ballot zero (``offerBallot``), which make
  /// the receiver follow no one. Without it a candidate further behind than an acceptor reaches
  /// (``maxAcceptReach``) and that acceptor, when the others are down, blocked each other: the acceptor refused
  /// the candidate, and could not lead itself, the candidate's slots lying past its reach. A leader catches its
  /// followers up itself; an acceptor that follows a live leader leaves it to that leader.
  ///
  /// A candidate that acknowledges nothing (a build from before 2026-12-07, which refuses the chunks, or a link
  /// that carries only its messages) gets the first chunk and ``maxUnacknowledgedOfferResends`` resends, then
  /// none for a pause (``offerPauseTicks``) that doubles with each offer in a row it leaves unacknowledged. Without
  /// it such a candidate got a chunk every retransmit period for as long as it stayed behind, and an older build
  /// following no ballot took each chunk for a leader's and refused other candidates while they came.
  private mutating func offerSnapshot(to candidate: NodeID) {
    guard role != .leader, !refusesNewBallots, let snapshot = log.snapshot else { return }
    var offer = Offer(index: snapshot.index, offset: 0, sentAt: ticks, progressAt: ticks)
    if let previous = offers[candidate] ?? setAsideOffers[candidate] {
      if let until = previous.pausedUntil {
        // Refused as too large: a newer snapshot is offered at once. Left unacknowledged: nothing before the end.
        if ticks < until && (!previous.refused || previous.index == snapshot.index) { return }
      } else if previous.index == snapshot.index {
        return  // Under way.
      }
      offer.silences = previous.silences
      if previous.index == snapshot.index && !previous.refused { offer.offset = previous.offset }
    }
    if offers[candidate] == nil && offers.count >= Self.maxOffers {
      guard let idle = pausedOfferEndingLast() else { return }  // Every slot is sending: wait for one.
      setAside(idle)
    }
    setAsideOffers[candidate] = nil
    offers[candidate] = offer
    sendOfferChunk(to: candidate)
  }

  /// Moves the paused offer to `candidate` out of the table into ``setAsideOffers``, forgetting the set-aside
  /// offer whose pause ends first if there are too many.
  private mutating func setAside(_ candidate: NodeID) {
    guard let offer = offers.removeValue(forKey: candidate) else { return }
    setAsideOffers[candidate] = offer
    guard setAsideOffers.count > Self.maxSetAsideOffers else { return }
    let first = setAsideOffers.keys.sorted().min {
      (setAsideOffers[$0]?.pausedUntil ?? 0) < (setAsideOffers[$1]?.pausedUntil ?? 0)
    }
    if let first { setAsideOffers[first] = nil }
  }

  /// The paused offer whose pause ends last (the lowest candidate of those), if any: the one a full table gives
  /// up (sets aside) for a new candidate. A paused offer sends nothing and is forgotten only one longest pause after
  /// its end; a pause saturated by an absurd election timeout never ends, and such offers would otherwise keep
  /// their slots, and every further candidate out, for good. The candidate given up keeps its pause and its count
  /// of silences (``setAsideOffers``): if it asks again, it is offered again only once its pause is over.
  private func pausedOfferEndingLast() -> NodeID? {
    var last: (candidate: NodeID, until: UInt64)?
    for candidate in offers.keys.sorted() {
      guard let until = offers[candidate]?.pausedUntil else { continue }
      if last.map({ until > $0.until }) ?? true { last = (candidate, until) }
    }
    return last?.candidate
  }

  /// Ticks an offer pauses after the candidate left `silences` offers in a row unacknowledged: four maximum
  /// election timeouts (longer than a candidate's leader stickiness), doubling, at most the refusal back-off
  /// (``MultiPaxosOptions/snapshotRefusalBackoffTicks``) if that is longer. Saturating: an absurd election timeout
  /// gives the longest pause there is, never one wrapped round to nearly nothing.
  func offerPauseTicks(silences: Int) -> UInt64 {
    let base = offerSilenceTicks
    let most = max(base, UInt64(max(0, options.snapshotRefusalBackoffTicks)))
    let shift = UInt64(min(max(0, silences - 1), 20))
    return min(most, base > UInt64.max >> shift ? .max : base << shift)
  }

  /// Four maximum election timeouts, in ticks (saturating): how long an offer waits for a silent candidate.
  private var offerSilenceTicks: UInt64 {
    let (ticks, overflow) = UInt64(max(1, options.electionTimeoutMaxTicks)).multipliedReportingOverflow(by: 4)
    return overflow ? .max : ticks
  }

  /// Pauses the offer to `candidate`: it left the chunks unacknowledged, or refused them as an older build does.
  private mutating func pauseOffer(to candidate: NodeID) {
    guard var offer = offers[candidate], offer.pausedUntil == nil else { return }
    offer.silences += 1
    offer.resends = 0
    let (until, overflow) = ticks.addingReportingOverflow(offerPauseTicks(silences: offer.silences))
    offer.pausedUntil = overflow ? .max : until
    offers[candidate] = offer
  }

  /// The ballot of a snapshot chunk (and its acknowledgement) that an acceptor offers rather than a leader
  /// sends: below every ballot in use.
  static let offerBallot = Ballot.zero

  private mutating func sendOfferChunk(to candidate: NodeID) {
    guard var offer = offers[candidate], offer.pausedUntil == nil else { return }
    guard let snapshot = log.snapshot else {
      offers[candidate] = nil
      return
    }
    if snapshot.index != offer.index {
      offer.index = snapshot.index  // A newer snapshot replaced it; start over.
      offer.offset = 0
    }
    offer.sentAt = ticks
    offers[candidate] = offer
    send(candidate, .snapshot(chunk(of: snapshot, at: offer.offset, ballot: Self.offerBallot)))
  }

  /// Resends a chunk not acknowledged in time, pausing after ``maxUnacknowledgedOfferResends``; gives up on a
  /// candidate silent for four maximum election timeouts, and forgets a pause one longest pause after its end.
  private mutating func tickOffers() {
    if !setAsideOffers.isEmpty {
      for candidate in setAsideOffers.keys.sorted() {
        guard let until = setAsideOffers[candidate]?.pausedUntil else { continue }
        if ticks >= until && ticks &- until >= offerPauseTicks(silences: .max) { setAsideOffers[candidate] = nil }
      }
    }
    for candidate in offers.keys.sorted() {
      guard let offer = offers[candidate] else { continue }
      if let until = offer.pausedUntil {
        if ticks >= until && ticks &- until >= offerPauseTicks(silences: .max) { offers[candidate] = nil }
      } else if role == .leader || ticks &- offer.progressAt >= offerSilenceTicks {
        offers[candidate] = nil  // Leading (its own machinery catches members up), or the candidate is gone.
      } else if ticks &- offer.sentAt >= UInt64(options.retransmitTicks) {
        if offer.resends >= Self.maxUnacknowledgedOfferResends {
          pauseOffer(to: candidate)
        } else {
          offers[candidate]?.resends += 1
          sendOfferChunk(to: candidate)
        }
      }
    }
  }

  /// Whether an offered snapshot is being sent (its chunks are resent tick by tick).
  private var offering: Bool { offers.values.contains { $0.pausedUntil == nil } }

  private mutating func handleOfferAck(_ m: SnapshotAck, from: NodeID) {
    // An offer paused because the candidate was silent takes its answer still: a candidate that acknowledges more
    // slowly than the resends run (a large chunk on a slow link, a slow disk) answers during the pause, and if the
    // answer were dropped it would be offered the same chunk after each pause, never getting past it. One refused
    // as too large waits out its back-off.
    if offers[from] == nil, var aside = setAsideOffers[from], !aside.refused, aside.index == m.index {
      // Set aside while paused for its silence: it answers after all, so its next probe is offered again at once.
      aside.silences = 0
      aside.pausedUntil = ticks
      setAsideOffers[from] = aside
      return
    }
    guard var offer = offers[from], !offer.refused, offer.index == m.index else { return }
    offer.silences = 0  // It answers offers.
    let total = UInt64(log.snapshot?.data.count ?? 0)
    if m.reject && m.nextOffset == 0 && total > 0 {
      offer.refused = true  // Too large for it: not offered again before the back-off.
      offer.pausedUntil = ticks &+ UInt64(max(0, options.snapshotRefusalBackoffTicks))
      offers[from] = offer
      return
    }
    if m.reject || m.nextOffset >= total {
      offers[from] = nil  // Installed, or not needed.
      return
    }
    let (next, sendNow) = Self.followChunkAck(m.nextOffset, sent: offer.offset)
    offer.offset = next
    if sendNow {
      offer.progressAt = ticks
      offer.resends = 0
      offer.pausedUntil = nil
    }
    offers[from] = offer
    if sendNow { sendOfferChunk(to: from) }
  }

  private mutating func handleSnapshot(_ m: SnapshotChunk, from: NodeID) {
    if m.ballot == Self.offerBallot {
      // Offered by an acceptor that refused this node's candidacy as behind it: installed by a node following
      // no leader and not running for one (a candidate that went on without that acceptor needs none).
      guard role == .follower && leader == nil || role == .preCandidate else {
        send(
          from,
          .snapshotAck(SnapshotAck(ballot: m.ballot, index: m.index, nextOffset: m.totalBytes, reject: true)))
        return
      }
    } else {
      guard followLeader(m.ballot, from: from) else { return }
    }
    func ack(_ next: UInt64, reject: Bool) {
      send(from, .snapshotAck(SnapshotAck(ballot: m.ballot, index: m.index, nextOffset: next, reject: reject)))
    }
    if m.index <= log.chosenThrough {
      ack(m.totalBytes, reject: true)  // Nothing new in it.
      return
    }
    if m.totalBytes > UInt64(options.maxSnapshotBytes) {
      ack(0, reject: true)
      return
    }
    // A chunk 0 of the transfer already under way (a duplicate, or the leader starting the same snapshot over)
    // keeps what has arrived: the leader moves on from the offset acknowledged below.
    if m.offset == 0,
      incomingSnapshot.map({
        $0.from != from || $0.ballot != m.ballot || $0.index != m.index || $0.totalBytes != m.totalBytes
      }) ?? true
    {
      var data: [UInt8] = []
      data.reserveCapacity(Int(m.totalBytes))  // At most maxSnapshotBytes (checked above).
      incomingSnapshot = IncomingSnapshot(
        from: from, ballot: m.ballot, index: m.index, membership: m.membership, totalBytes: m.totalBytes, data: data)
    }
    guard var incoming = incomingSnapshot, incoming.index == m.index, incoming.from == from,
      UInt64(incoming.data.count) == m.offset
    else {
      ack(UInt64(incomingSnapshot.map { $0.index == m.index ? $0.data.count : 0 } ?? 0), reject: false)
      return
    }
    incomingSnapshot = nil  // The only reference to the buffer: appending does not copy what has arrived.
    incoming.data.append(contentsOf: m.chunk)
    if UInt64(incoming.data.count) < incoming.totalBytes {
      incomingSnapshot = incoming
      ack(UInt64(incoming.data.count), reject: false)
      return
    }
    let configuration = incoming.membership.allMembers.isEmpty ? nil : incoming.membership
    let snapshot = PaxosSnapshot(index: incoming.index, membership: configuration, data: incoming.data)
    log.install(snapshot)
    pendingSnapshot = snapshot
    unstable.removeAll { $0 <= snapshot.index }
    learnChosen(through: commitThrough, ballot: commitBallot)
    ack(incoming.totalBytes, reject: false)
  }

  private mutating func handleSnapshotAck(_ m: SnapshotAck, from: NodeID) {
    if m.ballot == Self.offerBallot {
      handleOfferAck(m, from: from)
      return
    }
    guard role == .leader, m.ballot == promised, var peer = peers[from], peer.snapshotIndex == m.index else {
      return
    }
    peer.recentActive = true
    let total = log.snapshot?.data.count ?? 0
    if m.reject && m.nextOffset == 0 && total > 0 {
      // Refused as too large (a snapshot it does not need is refused with its full size as the offset):
      // sending it again would loop forever, one chunk per round. Stop until something changes (see
      // PaxosSnapshotRefusal), and say so once.
      peer.snapshotIndex = 0
      peer.snapshotOffset = 0
      let reason =
        "the snapshot of \(total) bytes exceeds the replica's maximum snapshot size; not resent until a newer "
        + "snapshot, a new leader or \(options.snapshotRefusalBackoffTicks) ticks"
      if peer.refusedSnapshot != m.index {
        snapshotRefusals.append(
          PaxosSnapshotRefusal(peer: from, snapshotIndex: m.index, snapshotBytes: total, reason: reason))
      }
      peer.refusedSnapshot = m.index
      peer.refusedAt = ticks
      peer.snapshotRefusal = "refused snapshot \(m.index): " + reason
      peers[from] = peer
      return
    }
    if m.reject || m.nextOffset >= UInt64(total) {
      // Installed, or not needed: everything after the snapshot is sent again, since the batches in flight
      // were forgotten when the transfer began.
      peer.snapshotIndex = 0
      peer.snapshotOffset = 0
      peer.chosen = max(peer.chosen, m.index)
      peer.next = m.index + 1
      if peer.refusedSnapshot > 0 && peer.chosen >= peer.refusedSnapshot {
        peer.refusedSnapshot = 0
        peer.snapshotRefusal = nil
      }
      peers[from] = peer
      sendAccepts(to: from)
      return
    }
    let (next, sendNow) = Self.followChunkAck(m.nextOffset, sent: peer.snapshotOffset)
    peer.snapshotOffset = next
    peers[from] = peer
    if sendNow { sendSnapshotChunk(to: from) }
  }

  // MARK: - Local requests

  /// Proposes a command in the next free slot. Returns the slot; the proposal is sent when the shell next
  /// takes a ready.
  public mutating func propose(_ data: [UInt8]) throws(PaxosRequestError) -> Slot {
    guard role == .leader else { throw .notLeader(hint: leader) }
    noteActivity()
    // Handing over, or about to leave the group: the successor takes new commands.
    guard transferee == nil, membership.isVoter(id) else { throw .transferInProgress }
    let entry = PaxosEntry(index: nextSlot, ballot: promised, kind: .command, data: data)
    if uncommittedBytes > 0 && uncommittedBytes + entry.byteSize > options.maxUncommittedBytes { throw .overloaded }
    return append(entry)
  }

  /// Gives `entry` the next slot: sent now, or held behind a configuration entry in doubt (rule 2).
  private mutating func append(_ entry: PaxosEntry) -> Slot {
    precondition(entry.index == nextSlot, "\(id) appends \(entry) at next slot \(nextSlot)")
    nextSlot += 1
    uncommittedBytes += entry.byteSize
    let record = SlotRecord(entry: entry, chosen: false, acks: 0)
    if pendingConfigSlot == nil {
      release(record)
    } else {
      held.append(record)
    }
    return entry.index
  }

  /// Proposes a membership change: adding a learner, adding or promoting a voter, demoting or removing a member
  /// (this leader included: once the change is chosen it hands over and steps down). Returns the slot of the
  /// configuration entry, which carries the whole resulting membership.
  ///
  /// - Throws: ``PaxosRequestError/membershipChangeRejected(_:)`` while another change is in doubt, for a change
  ///   that alters more than one voter or is invalid, or when the quorum sizes would not fit the new
  ///   configuration; ``PaxosRequestError/transferInProgress`` during a hand-over.
  public mutating func proposeMembership(_ change: MembershipChange) throws(PaxosRequestError) -> Slot {
    guard role == .leader else { throw .notLeader(hint: leader) }
    noteActivity()
    guard transferee == nil else { throw .transferInProgress }
    guard pendingConfigSlot == nil else {
      throw .membershipChangeRejected("a membership change is already in progress")
    }
    let next = try Self.membership(after: membership, change, options: options)
    let entry = PaxosEntry(index: nextSlot, ballot: promised, kind: .membership, data: next.wireBytes())
    return append(entry)
  }

  /// The configuration `change` makes of `current`, or why it is refused: Multi-Paxos configurations are never
  /// joint (a voter change takes effect in one step, see the membership rule), so a change may add or remove at
  /// most one voter, and the quorum sizes must fit the new number of voters.
  public static func membership(
    after current: Membership, _ change: MembershipChange, options: MultiPaxosOptions
  ) throws(PaxosRequestError) -> Membership {
    guard case .change = change else {
      throw .membershipChangeRejected("Multi-Paxos configurations are never joint: there is nothing to leave")
    }
    var next: Membership
    do {
      next = try current.applying(change)
    } catch {
      throw .membershipChangeRejected(error.reason)
    }
    next.outgoingVoters = []
    next.learners.formUnion(next.learnersNext)
    next.learnersNext = []
    let changed = current.allVoters.symmetricDifference(next.voters)
    guard changed.count <= 1 else {
      throw .membershipChangeRejected(
        "a change may add or remove one voter at a time; this one changes \(changed.sorted())")
    }
    guard current.allMembers.union(next.allMembers).count <= 64 else {
      throw .membershipChangeRejected("at most 64 members")
    }
    if let problem = options.quorumProblem(voters: next.voters.count) {
      throw .membershipChangeRejected(problem)
    }
    return next
  }

  /// Starts handing leadership to `target`, a voter (Raft thesis §3.10, in Paxos terms): this leader proposes
  /// nothing more, brings the target up to date (every slot chosen and known to it), then tells it to start
  /// phase 1 at once (``PaxosMessage/campaignNow(_:)``), its prepares let through every acceptor's refusal
  /// window (``Prepare/handoff``). This leader serves no lease read again in its ballot. If the target has not
  /// taken over within a minimum election timeout, the transfer is abandoned and proposals resume.
  public mutating func transferLeadership(to target: NodeID) throws(PaxosRequestError) {
    guard role == .leader else { throw .notLeader(hint: leader) }
    noteActivity()
    guard target != id else { return }
    guard membership.isVoter(target), peers[target] != nil else {
      throw .membershipChangeRejected("\(target) is not a voter")
    }
    guard pendingConfigSlot == nil, membership.isVoter(id) else {
      throw .membershipChangeRejected("a membership change is in progress")
    }
    if transferee == target { return }
    startTransfer(to: target)
    tryTransfer()
  }

  /// Requests a linearizable read. The confirmation arrives as a ``PaxosReadState`` in a later ready (or
  /// the id in ``PaxosReady/failedReads`` if leadership is lost first).
  public mutating func requestRead(id readID: UInt64) throws(PaxosRequestError) {
    guard role == .leader else { throw .notLeader(hint: leader) }
    noteActivity()
    if unconfirmedReads >= Self.maxUnconfirmedReads {
      // The shell gives up on a read at its deadline without telling the core; a leader that hears from no quorum
      // for long would keep every such id. The oldest goes, reported failed.
      if let oldest = readsAwaitingRecovery.popFirst() {
        failedReads.append(oldest)
      } else if let oldest = pendingReads.popFirst() {
        failedReads.append(oldest.id)
      }
    }
    guard isRecovered else {
      readsAwaitingRecovery.append(readID)
      return
    }
    queueRead(readID)
  }

  private mutating func queueRead(_ readID: UInt64) {
    pendingReads.append(PendingRead(id: readID, index: log.chosenThrough, round: readRound + 1))
    needsReadRound = true
  }

  private mutating func confirmRecoveredReads() {
    guard isRecovered, !readsAwaitingRecovery.isEmpty else { return }
    while let read = readsAwaitingRecovery.popFirst() { queueRead(read) }
  }

  /// The newest read round acknowledged by a phase-2 quorum (the leader acknowledges every round itself).
  /// (With a configuration in doubt, a phase-2 quorum of each configuration in use.)
  private var quorumAckedRound: UInt64 {
    var acked = UInt64.max
    for configuration in configurations {
      var rounds: [UInt64] = []
      for voter in configuration.membership.allVoters {
        rounds.append(voter == id ? readRound : (peers[voter]?.ackedRound ?? 0))
      }
      rounds.sort(by: >)
      let needed = configuration.phase2
      acked = min(acked, needed >= 1 && needed <= rounds.count ? rounds[needed - 1] : 0)
    }
    return acked == .max ? 0 : acked
  }

  private mutating func confirmReads() {
    guard role == .leader else { return }
    let acked = quorumAckedRound
    while let read = pendingReads.first, read.round <= acked {
      _ = pendingReads.popFirst()
      readStates.append(PaxosReadState(id: read.id, index: read.index))
    }
    while let sent = roundSentAt.first, sent.round <= acked {
      _ = roundSentAt.popFirst()
      leaseStart = max(leaseStart ?? 0, sent.at)
    }
  }

  /// If this leader's lease is valid at `now`, the slot a lease read must wait for; otherwise `nil`.
  ///
  /// The lease starts when the leader sent a heartbeat round that a phase-2 quorum acknowledged. Every
  /// phase-1 quorum contains one of those acceptors, and each refuses to promise another ballot (its own
  /// included) for ``MultiPaxosOptions/promiseRefusalWindowNanos`` of its monotonic clock after hearing the
  /// heartbeat, so no other leader can exist until ``MultiPaxosOptions/leaseDurationNanos`` later (which
  /// ``MultiPaxosOptions/validate(memberCount:)`` keeps a tick and the clock-drift bound below that window).
  public func leaseReadIndex(now: UInt64) -> Slot? {
    guard isRecovered, !leaseForfeited else { return nil }
    guard options.leaseDurationNanos > 0, let start = leaseStart else { return nil }
    return now < start &+ options.leaseDurationNanos ? log.chosenThrough : nil
  }

  // MARK: - Ready

  private mutating func send(_ to: NodeID, _ message: PaxosMessage) {
    let outgoing = PaxosOutgoing(to: to, message: message)
    if role == .leader {
      switch message {
      case .accept(let m): noteToldChosen(to, m.chosenThrough)
      case .heartbeat(let m): noteToldChosen(to, m.chosenThrough)
      default: break
      }
      switch message {
      case .accept, .heartbeat, .snapshot:
        eagerOutbox.append(outgoing)
        return
      default:
        break
      }
    }
    outbox.append(outgoing)
  }

  private mutating func noteToldChosen(_ peer: NodeID, _ chosen: Slot) {
    guard var p = peers[peer], p.toldChosen < chosen else { return }
    p.toldChosen = chosen
    peers[peer] = p
  }

  private mutating func markUnstable(_ slot: Slot) {
    if let last = unstable.last, slot <= last { unstableSorted = false }
    unstable.append(slot)
  }

  private mutating func flush() {
    guard role == .leader else {
      needsBroadcast = false
      needsReadRound = false
      needsChosenNotice = false
      return
    }
    if needsBroadcast {
      needsBroadcast = false
      broadcastAccepts()
    }
    if needsChosenNotice {
      needsChosenNotice = false
      // Tell every acceptor not told already (by an accept in this batch) that more slots are chosen, as
      // Raft's leader does when its commit index moves, so replicas apply without waiting for a heartbeat.
      for peer in peerOrder where (peers[peer]?.toldChosen ?? 0) < log.chosenThrough {
        send(peer, .accept(Accept(ballot: promised, entries: [], chosenThrough: log.chosenThrough)))
      }
    }
    if needsReadRound {
      needsReadRound = false
      heartbeatElapsed = 0
      broadcastHeartbeat()
    }
  }

  /// Whether ``ready()`` has anything to return.
  public var hasReady: Bool {
    (role == .leader && (needsBroadcast || needsReadRound || needsChosenNotice)) || !outbox.isEmpty
      || !eagerOutbox.isEmpty || !snapshotRefusals.isEmpty
      || !unstable.isEmpty || pendingSnapshot != nil || log.hasChosenToApply || !readStates.isEmpty
      || !failedReads.isEmpty || promised != lastHardState.promised || softState != lastSoftState
  }

  /// Takes everything the shell must now do (see ``PaxosReady`` for the order).
  public mutating func ready() -> PaxosReady {
    flush()
    var ready = PaxosReady()
    ready.snapshot = pendingSnapshot
    pendingSnapshot = nil
    if !unstable.isEmpty {
      if !unstableSorted {
        unstable.sort()
        unstableSorted = true
      }
      let floor = max(log.offset, log.snapshotIndex)
      var previous: Slot = 0
      ready.entries.reserveCapacity(unstable.count)
      for slot in unstable where slot != previous && slot > floor {
        previous = slot
        if let record = log[slot] { ready.entries.append(record.entry) }
      }
      unstable.removeAll(keepingCapacity: true)
    }
    let hs = hardState
    if hs != lastHardState {
      ready.hardState = hs
      lastHardState = hs
    }
    let ss = softState
    if ss != lastSoftState {
      ready.softState = ss
      lastSoftState = ss
    }
    ready.eagerMessages = eagerOutbox
    ready.messages = outbox
    eagerOutbox = []
    outbox = []
    ready.chosenEntries = log.takeChosen(maxBytes: options.maxApplyBytesPerBatch)
    ready.readStates = readStates
    ready.failedReads = failedReads
    ready.snapshotRefusals = snapshotRefusals
    readStates = []
    failedReads = []
    snapshotRefusals = []
    return ready
  }

  /// Reports that the shell carried out `ready`: its hard state and entries are durable. A candidate now
  /// counts its own promise, a leader its own acceptances.
  public mutating func advance(_ ready: PaxosReady) {
    if let hardState = ready.hardState { mergeOwnPromise(durable: hardState.promised) }
    guard role == .leader, !ready.entries.isEmpty else { return }
    for entry in ready.entries where entry.ballot == promised && entry.index > log.chosenThrough {
      countAcceptance(entry.index, bit: selfBit)
    }
    advanceChosen()
  }

  /// Records a state-machine snapshot taken after applying everything through `slot`, and compacts the
  /// in-memory log, keeping `retainEntries` slots before it so that slightly lagging replicas can still be
  /// sent proposals instead of the snapshot. Returns the snapshot for the shell to persist.
  ///
  /// - Precondition: `slot` has been handed out for applying.
  @discardableResult
  public mutating func takeSnapshot(at slot: Slot, data: [UInt8], retainEntries: Int = 0) -> PaxosSnapshot {
    precondition(slot <= log.applying, "snapshot at \(slot) beyond applied \(log.applying)")
    let snapshot = PaxosSnapshot(index: slot, membership: membership(through: slot), data: data)
    let keep = Slot(max(0, retainEntries))
    log.compact(snapshot: snapshot, through: slot > keep ? slot - keep : 0)
    unstable.removeAll { $0 <= slot }
    return snapshot
  }
}

extension PaxosMessage {
  fileprivate var isProbeResponse: Bool {
    if case .probeResponse = self { return true }
    return false
  }
}
