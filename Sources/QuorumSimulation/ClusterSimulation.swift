public import QuorumCore
public import QuorumHost
import QuorumKV
import QuorumPaxos
import QuorumRaft
import QuorumReplica
import QuorumStorage

/// One group of a simulated cluster.
public struct SimulatedGroup: Sendable, Equatable {
  /// The group's engine.
  public var engine: EngineKind
  /// How many founding members (taken in turn from the cluster's nodes).
  public var members: Int

  /// Creates a group description.
  public init(engine: EngineKind, members: Int = 3) {
    self.engine = engine
    self.members = members
  }
}

/// The shape of one simulated run of a cluster of group hosts (``ClusterSimulation``).
public struct ClusterSimulationOptions: Sendable {
  /// Server processes that found the groups.
  public var nodes = 3
  /// Extra processes the nemesis may add to groups (when membership changes are on).
  public var spareNodes = 2
  /// The groups; group `i` has its founding members from node `i % nodes` on.
  public var groups: [SimulatedGroup] = [SimulatedGroup(engine: .raft)]
  /// Concurrent clients (each with its own sessions).
  public var clients = 4
  /// Distinct keys (fewer keys mean more contention); they spread over the groups by hash slot.
  public var keys = 6
  /// Pause between one client's operations.
  public var thinkTime = DelayDistribution.uniform(.zero, .milliseconds(40))
  /// How long faults are injected before the healed phase.
  public var chaosDuration = VirtualDuration.seconds(3)
  /// How long the healed phase may take: fresh writes, then every replica converging.
  public var healDeadline = VirtualDuration.seconds(60)
  /// Writes each client must complete after the heal (liveness).
  public var freshWritesAfterHeal = 3
  /// How long a durable write or snapshot takes.
  public var diskLatency = DelayDistribution.uniform(.microseconds(50), .milliseconds(2))
  /// Each operation's deadline during the chaos (the client gives up after it: the outcome of a write is then
  /// unknown); after the heal, operations get the heal deadline.
  public var operationDeadline = DelayDistribution.uniform(.milliseconds(150), .milliseconds(2000))
  /// How long one attempt may wait for a member's reply.
  public var attemptTimeout = VirtualDuration.milliseconds(400)
  /// The consistency levels clients read at. Linearizable and lease reads go through the linearizability checker;
  /// stale reads are checked against the committed prefix they report, and never go back for one client.
  public var readConsistencies: [ReadConsistency] = [.linearizable, .lease, .session, .stale]
  /// The faults the nemesis may choose from.
  public var nemesis = Set(NodeNemesis.allCases)
  /// Time between nemesis actions.
  public var nemesisInterval = DelayDistribution.uniform(.milliseconds(50), .milliseconds(400))
  /// The largest clock drift of a node, in parts per million (either way).
  public var maxDriftPPM: Int64 = 50_000
  /// Take a snapshot after this many applied entries.
  public var snapshotEvery = 25
  /// Entries kept behind a snapshot.
  public var retainEntries = 4
  /// Engine variant knobs.
  public var variant = NodeSimulationVariant()
  /// Lock clients beside the key-value clients (none by default), checked by ``LockHistoryChecker``.
  public var lockWorkload = LockWorkloadOptions()
  /// Every group's exactly-once session policy (the engines' default: a session idle for 5 minutes of log time
  /// expires, 256 answers remembered per session, 100,000 sessions). ``sessionChurn(_:)`` makes them short and
  /// small enough for expiry, eviction and forgotten answers to happen within a run.
  public var sessions = SessionPolicy()
  /// How many of the key-value clients run two operations at once on their one `HostClient`, sharing its
  /// sessions: a session then has several requests outstanding, answered and acknowledged out of order.
  public var pipelinedClients = 0
  /// The longest a nemesis pause of a node's process, or stall of its timers, lasts.
  public var maxPause = VirtualDuration.milliseconds(400)
  /// The network's faults until the nemesis changes them (by default none: 0.1–2 ms per message).
  public var initialLinkFaults = LinkFaults(delay: .uniform(.microseconds(100), .milliseconds(2)))

  /// Defaults: one Raft group on 3 nodes, 2 spares, 4 clients on 6 keys, 3 s of chaos with every fault.
  public init() {}

  /// One group of `engine` on `nodes` nodes.
  public static func single(_ engine: EngineKind, nodes: Int = 3) -> ClusterSimulationOptions {
    var options = ClusterSimulationOptions()
    options.nodes = nodes
    options.groups = [SimulatedGroup(engine: engine, members: nodes)]
    return options
  }

  /// One group of `engine` on 3 nodes whose exactly-once sessions churn within the run (see ``churnSessions()``).
  public static func sessionChurn(_ engine: EngineKind) -> ClusterSimulationOptions {
    var options = single(engine)
    options.churnSessions()
    return options
  }

  /// Makes exactly-once sessions churn within the run: a session idle for 400 ms of log time expires, a session
  /// remembers 2 answers, and a group keeps fewer sessions than there are clients (registering one evicts the
  /// least recently active). Clients sometimes sit idle past the timeout (their next write meets an expired
  /// session: the client renews it and sends the write again), nemesis partitions and pauses outlast it, and
  /// every client runs two operations at once on its one `HostClient`, so a session has several requests
  /// outstanding. An attempt waits 150 ms for its answer: a write whose answer was lost is sent again while the
  /// session is still alive (fewer sessions than clients keep evicting each other), often after the other
  /// operation's newer answers have pushed out its own. Deadlines start at 30 ms, so that a renewal sometimes
  /// leaves no time to send the write again: the client then says it was not applied, and the checker holds it
  /// to that. The network loses and duplicates 3 % of messages from the start (until the nemesis changes it), so
  /// that answers go missing while sessions are alive.
  public mutating func churnSessions() {
    sessions = SessionPolicy(timeoutMillis: 400, maxSessions: max(1, clients - 1), maxResponsesPerSession: 2)
    pipelinedClients = clients
    attemptTimeout = .milliseconds(150)
    operationDeadline = .uniform(.milliseconds(30), .milliseconds(2_000))
    initialLinkFaults = LinkFaults(
      dropProbability: 0.03, duplicateProbability: 0.03, delay: .uniform(.microseconds(100), .milliseconds(2)))
    thinkTime = .longTail(typical: .milliseconds(20), tail: .milliseconds(1_200), tailProbability: 0.08)
    nemesisInterval = .uniform(.milliseconds(100), .milliseconds(900))
    maxPause = .milliseconds(1_000)
  }
}

/// Engine-specific knobs of a simulation.
public struct NodeSimulationVariant: Sendable {
  /// Raft: the paper's algorithm (no pre-vote, no check-quorum, hence no leases).
  public var raftPaper = false
  /// Multi-Paxos: phase-1 and phase-2 quorum sizes (`nil`: majorities).
  public var paxosQuorums: (phase1: Int, phase2: Int)?

  /// The default variant.
  public init() {}
}

/// The faults a simulation may inject.
public enum NodeNemesis: String, Sendable, CaseIterable, Hashable {
  /// Split nodes (and clients) into two random sides: some groups may keep a majority while others lose it.
  case partition
  /// Cut one direction of one link.
  case oneWayCut
  /// Cut a group's leader off from everyone.
  case isolateLeader
  /// Restore every link.
  case heal
  /// Crash a node: its process stops at once, and its disks keep what was durable plus a random prefix of the
  /// records they had queued (torn writes).
  case crash
  /// Restart a crashed node from its disks.
  case restart
  /// Freeze a node's process for up to a few election timeouts (a GC pause, a VM migration).
  case pause
  /// Make a node's timers fire late for a while (a stalled timer thread).
  case stallTimers
  /// Step a node's wall clock by up to an hour (NTP); the monotonic clock is unmoved.
  case jumpWallClock
  /// Make a node's disks fail writes (`EIO`, `ENOSPC`) for a while; its host stops and is restarted later.
  case diskFaults
  /// Make the network lossy: drops, duplicates, reordering, and delays beyond the election timeout.
  case lossyNetwork
  /// Make the network perfect again.
  case perfectNetwork
  /// Add or remove a member of a group, or promote a learner (through the leader).
  case membershipChange
  /// Ask a group's leader to hand leadership to another voter.
  case transferLeadership
}

/// What a run did, for reports and for checking that the faults happened.
public struct NodeSimulationStats: Sendable, CustomStringConvertible {
  /// Scheduler jobs run.
  public var jobs: UInt64 = 0
  /// Distinct leaderships (terms or ballots led, over all groups).
  public var leaderships = 0
  /// Raft messages checked against their sender's disk, and Raft commits checked against its voters' disks
  /// ("acknowledged ⇒ durable").
  public var durabilityChecks = 0
  /// Crashes injected (including hosts stopped by disk faults).
  public var crashes = 0
  /// Partitions and cuts injected.
  public var partitions = 0
  /// Process pauses and timer stalls injected.
  public var stalls = 0
  /// Hosts stopped by injected disk faults.
  public var diskFaults = 0
  /// Queued disk records lost to crashes.
  public var tornRecords = 0
  /// Snapshot saves failed by injected disk faults: the node's own (background) snapshots, dropped and taken
  /// again later, and leaders' snapshots, held and stored again (``heldInstalls``).
  public var snapshotFaults = 0
  /// Failed stores of a leader's snapshot, after each of which the replica held the ready carrying it back (its
  /// acknowledgement among its messages) and tried again after a pause.
  public var heldInstalls = 0
  /// Membership changes that committed.
  public var membershipChanges = 0
  /// Leadership transfers that completed.
  public var transfers = 0
  /// Client operations completed with a known outcome.
  public var operationsCompleted = 0
  /// Operations whose outcome stayed unknown (the client's deadline passed).
  public var unknownOutcomes = 0
  /// Client calls that failed (deadline passed or refused).
  public var retries = 0
  /// Stale reads checked against the committed prefix.
  public var staleReadsChecked = 0
  /// Write results (previous values) checked by the linearizability checker.
  public var writeResponsesChecked = 0
  /// Linearizable reads that answered (each checked by the linearizability checker).
  public var linearizableReads = 0
  /// Lease reads that answered (each checked by the linearizability checker).
  public var leaseReads = 0
  /// Session reads that answered (each checked for read-your-writes and monotonic reads).
  public var sessionReads = 0
  /// Compare-and-swaps that answered that they swapped.
  public var swaps = 0
  /// Calls the cluster refused with a consensus error that retrying does not fix (an expired session, say).
  public var consensusRefusals = 0
  /// Writes whose client said they were certainly not carried out (refused before any attempt could have been,
  /// or the deadline passed before one was sent). They leave the checked history as failed: a write applied
  /// after all shows up as a value no write of the history put there, or as a previous value that does not fit.
  public var writesNotApplied = 0
  /// Exactly-once sessions that expired, idle past the policy's timeout in log time (counted at each group's
  /// reference replica: every replica expires the same sessions at the same entries).
  public var sessionsExpired = 0
  /// Sessions evicted to make room for a registration (the policy's `maxSessions`).
  public var sessionsEvicted = 0
  /// Commands (and lock clients' keep-alives) that reached a log under a session that had expired or been
  /// evicted.
  public var commandsUnderExpiredSessions = 0
  /// Writes a key-value client sent again under a new session after the cluster said their session had expired
  /// (`HostClient`'s renewal).
  public var sessionRenewals = 0
  /// Requests applied before that came again after their session had forgotten the answer (acknowledged, or past
  /// the policy's `maxResponsesPerSession`).
  public var answersForgotten = 0
  /// Entries the reference replicas applied, over all groups.
  public var entriesApplied: UInt64 = 0
  /// Virtual time at the end.
  public var endTime = VirtualTime.zero
  /// Leases lock clients received.
  public var lockGrants = 0
  /// Times lock clients relied on a lease, each checked against the committed logs.
  public var lockUses = 0
  /// Leases lock clients found lost while holding them (their session expired under a pause).
  public var lockLeasesLost = 0
  /// Stale writes (under a lost lease) the fencing check refused.
  public var lockWritesFenced = 0
  /// Releases lock clients sent with an old grant's token while holding a newer grant of the lock, each checked
  /// to free nothing.
  public var lockStaleReleases = 0
  /// Grants, releases and expiries checked in the committed logs.
  public var lockLogEvents = 0

  /// Empty statistics.
  public init() {}

  public var description: String {
    "jobs=\(jobs) leaderships=\(leaderships) durabilityChecks=\(durabilityChecks) crashes=\(crashes) partitions=\(partitions) stalls=\(stalls) "
      + "diskFaults=\(diskFaults) snapshotFaults=\(snapshotFaults) heldInstalls=\(heldInstalls) torn=\(tornRecords) membership=\(membershipChanges) transfers=\(transfers) "
      + "ops=\(operationsCompleted) unknown=\(unknownOutcomes) retries=\(retries) staleReads=\(staleReadsChecked) "
      + "writes=\(writeResponsesChecked) reads(lin/lease/session)=\(linearizableReads)/\(leaseReads)/\(sessionReads) "
      + "swaps=\(swaps) refusals=\(consensusRefusals) notApplied=\(writesNotApplied) applied=\(entriesApplied) "
      + "sessions(expired/evicted/refused/renewed/forgotten)=\(sessionsExpired)/\(sessionsEvicted)/"
      + "\(commandsUnderExpiredSessions)/\(sessionRenewals)/\(answersForgotten) end=\(endTime)"
      + (lockLogEvents == 0
        ? ""
        : " locks: grants=\(lockGrants) uses=\(lockUses) lost=\(lockLeasesLost) fenced=\(lockWritesFenced) "
          + "staleReleases=\(lockStaleReleases) logEvents=\(lockLogEvents)")
  }

  /// Adds `other` to these statistics.
  public mutating func add(_ other: NodeSimulationStats) {
    jobs += other.jobs
    leaderships += other.leaderships
    durabilityChecks += other.durabilityChecks
    crashes += other.crashes
    partitions += other.partitions
    stalls += other.stalls
    diskFaults += other.diskFaults
    tornRecords += other.tornRecords
    snapshotFaults += other.snapshotFaults
    heldInstalls += other.heldInstalls
    membershipChanges += other.membershipChanges
    transfers += other.transfers
    operationsCompleted += other.operationsCompleted
    unknownOutcomes += other.unknownOutcomes
    retries += other.retries
    staleReadsChecked += other.staleReadsChecked
    writeResponsesChecked += other.writeResponsesChecked
    linearizableReads += other.linearizableReads
    leaseReads += other.leaseReads
    sessionReads += other.sessionReads
    swaps += other.swaps
    consensusRefusals += other.consensusRefusals
    writesNotApplied += other.writesNotApplied
    sessionsExpired += other.sessionsExpired
    sessionsEvicted += other.sessionsEvicted
    commandsUnderExpiredSessions += other.commandsUnderExpiredSessions
    sessionRenewals += other.sessionRenewals
    answersForgotten += other.answersForgotten
    entriesApplied += other.entriesApplied
    lockGrants += other.lockGrants
    lockUses += other.lockUses
    lockLeasesLost += other.lockLeasesLost
    lockWritesFenced += other.lockWritesFenced
    lockStaleReleases += other.lockStaleReleases
    lockLogEvents += other.lockLogEvents
  }
}

/// A cluster of the production server hosts (`GroupHost`, unmodified: its groups' `RaftNode`s and
/// `MultiPaxosNode`s, its router, its request handler) and production clients (`KeyValueClient` over
/// `HostClient`), running on a ``SimulationScheduler``: one thread, virtual time, seeded interleavings.
///
/// Each node is a process with a ``SimulatedClock`` that drifts, jumps and stalls and one ``SimulatedDisk`` per
/// group that tears writes at crashes and fails on command. Peers talk over a ``VirtualNetwork``; clients send
/// their requests through the same network, with per-operation deadlines after which a write's outcome is
/// unknown.
///
/// Invariants are checked after every scheduler job (each group's engine checker sees every ready, every
/// durable record and every apply); after the heal, every client must complete fresh writes and every replica of
/// every group must converge to the same state as that group's reference replica, byte for byte. The client
/// history — including the values writes replaced — goes through the linearizability checker; stale reads are
/// checked against the committed prefix at the index they report, and never go back for one client.
///
/// Safety of `@unchecked Sendable`: the simulation's state is touched only by its scheduler's jobs, which run one at a time
/// on the thread that called ``run()``.
public final class ClusterSimulation: @unchecked Sendable {
  private final class Node {
    let id: NodeID
    let disks: SimulatedGroupStorage
    let clock: SimulatedClock
    var incarnation: UInt32 = 0
    var host: GroupHost?
    var up = false
    var restartWanted = false
    var joining: Set<GroupID> = []

    init(id: NodeID, disks: SimulatedGroupStorage, clock: SimulatedClock) {
      self.id = id
      self.disks = disks
      self.clock = clock
    }

    var process: UInt32 { UInt32(truncatingIfNeeded: id.rawValue) << 16 | incarnation }
  }

  /// The run's seed.
  public let seed: UInt64
  /// The run's options.
  public let options: ClusterSimulationOptions
  /// What the run did.
  public private(set) var stats = NodeSimulationStats()

  private let trace: SimulationTrace
  private let scheduler: SimulationScheduler
  private let network: VirtualNetwork<HostMessage>
  private let requests: VirtualRequests<[UInt8], [UInt8]>
  private let map: ClusterMap
  private let settings: HostSettings
  private let placement: Placement
  private var checkers: [GroupID: any GroupChecker] = [:]
  private let history = KVHistoryRecorder()
  private var nodes: [NodeID: Node] = [:]
  private var healed = false
  private var clientsDone = 0
  private var converged = false
  private var failure: SimulationFailure?
  private var staleReads: [(group: GroupID, client: Int, key: String, value: [UInt8]?, index: UInt64)] = []
  private let lockChecker: LockHistoryChecker
  private var lockClients: [SimulatedLockClient] = []

  /// Prepares a run; nothing happens until ``run()``.
  public init(seed: UInt64, options: ClusterSimulationOptions = ClusterSimulationOptions(), trace: SimulationTrace) {
    self.seed = seed
    self.options = options
    self.trace = trace
    let scheduler = SimulationScheduler(seed: seed)
    self.scheduler = scheduler
    var observe: (@Sendable (VirtualTime, Envelope<HostMessage>) -> Void)?
    if trace.isEnabled {
      observe = { time, envelope in
        trace.record(time, "\(envelope.group) \(envelope.from)->\(envelope.to) \(envelope.payload)")
      }
    }
    self.network = VirtualNetwork(
      scheduler: scheduler, faults: options.initialLinkFaults, observe: observe)
    self.requests = VirtualRequests(scheduler: scheduler, network: network)
    var members: [NodeID: String] = [:]
    for n in 1...(options.nodes + options.spareNodes) { members[NodeID(UInt64(n))] = "" }
    var groups: [GroupSpec] = []
    for (i, group) in options.groups.enumerated() {
      let founders = (0..<min(group.members, options.nodes)).map { NodeID(UInt64((i + $0) % options.nodes + 1)) }
      groups.append(
        GroupSpec(
          id: GroupID(rawValue: UInt64(i + 1)), name: "g\(i + 1)", engine: group.engine, members: founders,
          services: ["kv", "locks"]))
    }
    self.map = ClusterMap(cluster: "simulation", members: members, groups: groups)
    self.placement = Placement(map)
    self.settings = Self.settings(options)
    self.lockChecker = LockHistoryChecker(trace: trace, now: { [scheduler] in scheduler.now })
  }

  static func settings(_ options: ClusterSimulationOptions) -> HostSettings {
    var raft = RaftConfiguration()
    raft.tickInterval = .milliseconds(10)
    raft.electionTimeout = .milliseconds(100)...(.milliseconds(200))
    raft.heartbeatInterval = .milliseconds(20)
    raft.preVote = !options.variant.raftPaper
    raft.checkQuorum = !options.variant.raftPaper
    raft.leaseReads = !options.variant.raftPaper
    raft.clockDriftBound = .milliseconds(20)
    raft.snapshotEvery = options.snapshotEvery
    raft.snapshotRetainEntries = options.retainEntries
    raft.snapshotChunkBytes = 128
    raft.maxEntriesBytesPerMessage = 256
    raft.maxInflightMessages = 8
    raft.requestTimeout = .seconds(2)
    raft.sessions = options.sessions
    var paxos = PaxosConfiguration()
    if let quorums = options.variant.paxosQuorums {
      paxos.phase1Quorum = quorums.phase1
      paxos.phase2Quorum = quorums.phase2
    }
    paxos.tickInterval = .milliseconds(10)
    paxos.electionTimeout = .milliseconds(100)...(.milliseconds(200))
    paxos.heartbeatInterval = .milliseconds(20)
    paxos.retransmitInterval = .milliseconds(40)
    paxos.clockDriftBound = .milliseconds(20)
    paxos.snapshotEvery = options.snapshotEvery
    paxos.snapshotRetainEntries = options.retainEntries
    paxos.snapshotChunkBytes = 128
    paxos.maxEntriesBytesPerMessage = 256
    paxos.maxInflightMessages = 8
    paxos.requestTimeout = .seconds(2)
    paxos.sessions = options.sessions
    // No quota: simulated storage has no usage to measure, and measuring it would add jobs to every run.
    return HostSettings(raft: raft, paxos: paxos, spaceQuotaBytes: nil)
  }

  /// The groups whose engine supports membership changes and leadership transfer.
  private var changeableGroups: [GroupSpec] {
    map.groups.filter {
      $0.engine == .raft ? RaftEngine.supportsMembershipChanges : MultiPaxosEngine.supportsMembershipChanges
    }
  }

  // MARK: - Running

  /// Runs the chaos phase, then the healed phase, checking invariants after every job.
  /// - Throws: ``SimulationFailure`` on any violated invariant, unfinished operation, divergence or
  ///   non-linearizable history.
  public func run() throws {
    for group in map.groups {
      switch group.engine {
      case .raft:
        checkers[group.id] = RaftChecker(
          group: group, sessions: settings.raft.sessions, trace: trace, now: { [scheduler] in scheduler.now })
      case .multiPaxos:
        let configuration = MultiPaxosEngine.configuration(for: group, settings: settings, joining: false)
        checkers[group.id] = PaxosChecker(
          group: group, sessions: settings.paxos.sessions, options: configuration.coreOptions,
          founders: Membership(voters: Set(configuration.members)), trace: trace, now: { [scheduler] in scheduler.now })
      }
    }
    for (id, checker) in checkers {
      let lockChecker = self.lockChecker
      checker.onCommittedNotifications = { index, notifications in
        lockChecker.committed(group: id, index: index, notifications: notifications)
      }
    }
    for id in map.members.keys.sorted() {
      let drift = scheduler.random { Int64.random(in: -options.maxDriftPPM...options.maxDriftPPM, using: &$0) }
      let offset = scheduler.random { UInt64.random(in: 0...1_000_000_000_000, using: &$0) }
      let checkers = self.checkers
      let disks = SimulatedGroupStorage(
        node: id, scheduler: scheduler, latency: options.diskLatency,
        onDurable: { group, entries, hardState in
          checkers[group]?.becameDurable(id, entries: entries, hardState: hardState)
        },
        onViolation: { group, violation in checkers[group]?.fail("storage contract broken by \(id): \(violation)") })
      nodes[id] = Node(
        id: id, disks: disks, clock: SimulatedClock(scheduler: scheduler, driftPPM: drift, offsetNanos: offset))
    }
    let disks = nodes.mapValues(\.disks)
    for (group, checker) in checkers {
      (checker as? RaftChecker)?.durableImage = { disks[$0]?.durableImage(of: group, as: LogEntry.self) }
    }
    network.auditSends { [checkers] envelope in
      guard case .raft(let message) = envelope.payload, let checker = checkers[envelope.group] as? RaftChecker
      else { return }
      checker.sent(message, from: envelope.from, to: envelope.to)
    }
    for id in nodes.keys.sorted() where !map.groups(of: id).isEmpty { start(id) }
    for c in 0..<options.clients {
      let client = c
      scheduler.spawn(on: clientProcess(c)) { [self] in await runClient(client) }
    }
    startLockClients()
    scheduler.spawn(on: Self.nemesisProcess) { [self] in await runNemesis() }
    scheduler.schedule(at: VirtualTime.zero + options.chaosDuration) { [self] in heal() }
    let deadline = VirtualTime.zero + options.chaosDuration + options.healDeadline
    let checkers = self.checkers.keys.sorted().compactMap { self.checkers[$0] }
    let outcome = try scheduler.run(
      until: deadline, stopWhen: { [self] in converged || failure != nil },
      afterEachJob: { [self] in
        if let failure { throw failure }
        for checker in checkers { if let failure = checker.failure { throw failure } }
        if let failure = lockChecker.failure { throw failure }
      })
    stats.jobs = scheduler.jobsRun
    stats.endTime = scheduler.now
    for checker in checkers {
      stats.leaderships += checker.leaderships
      stats.entriesApplied += checker.referenceApplied
      stats.durabilityChecks += (checker as? RaftChecker)?.durabilityChecks ?? 0
      stats.heldInstalls += checker.heldInstalls
      let sessions = checker.sessionEvents
      stats.sessionsExpired += sessions.expired
      stats.sessionsEvicted += sessions.evicted
      stats.commandsUnderExpiredSessions += sessions.refusedExpired
      stats.answersForgotten += sessions.answersForgotten
    }
    for node in nodes.values {
      stats.tornRecords += node.disks.tornRecords
      stats.snapshotFaults += node.disks.failedSnapshots
    }
    for client in lockClients {
      stats.lockGrants += client.grants
      stats.lockUses += client.uses
      stats.lockLeasesLost += client.leasesLost
      stats.retries += client.failedCalls
      stats.stalls += client.pauses
      stats.partitions += client.cuts
    }
    stats.lockWritesFenced = lockChecker.staleWritesFenced
    stats.lockStaleReleases = lockChecker.staleReleasesChecked
    stats.lockLogEvents = lockChecker.logEventsChecked
    if let failure = failure ?? checkers.compactMap(\.failure).first ?? lockChecker.failure { throw failure }
    guard converged else {
      throw SimulationFailure(
        "liveness: after healing, \(allClients - clientsDone) clients unfinished and the replicas not "
          + "converged by \(scheduler.now) (\(outcome)); \(describeNodes())")
    }
    try checkHistory()
  }

  private static var nemesisProcess: UInt32 { 0xFFFF_FFF0 }
  private static var checkerProcess: UInt32 { 0xFFFF_FFF1 }
  private func clientProcess(_ c: Int) -> UInt32 { 0xFFFE_0000 | UInt32(c) }
  private func clientNode(_ c: Int) -> NodeID { NodeID(UInt64(1000 + c)) }
  private func lockClientProcess(_ c: Int) -> UInt32 { 0xFFFD_0000 | UInt32(c) }
  private func lockClientNode(_ c: Int) -> NodeID { NodeID(UInt64(2000 + c)) }
  /// Key-value callers (a pipelined client is two) and lock clients: the convergence check starts when all are
  /// done.
  private var allClients: Int {
    options.clients + min(max(0, options.pipelinedClients), options.clients) + options.lockWorkload.clients
  }

  private func startLockClients() {
    for c in 0..<options.lockWorkload.clients {
      let context = SimulatedLockClient.Context(
        scheduler: scheduler, requests: requests, map: map, options: options, checker: lockChecker, trace: trace,
        seed: seed, isHealed: { [unowned self] in healed },
        noteFailure: { [unowned self] error, call in noteFailure(error, of: call) })
      let client = SimulatedLockClient(
        index: c, node: lockClientNode(c), process: lockClientProcess(c), context: context)
      lockClients.append(client)
      scheduler.spawn(on: client.process) { [self] in
        await client.run()
        clientFinished()
      }
    }
  }

  private func clientFinished() {
    clientsDone += 1
    if clientsDone == allClients { startConvergenceCheck() }
  }

  private func describeNodes() -> String {
    nodes.keys.sorted().compactMap { nodes[$0] }.map { "\($0.id){\($0.up ? "up" : "down")}" }.joined(separator: " ")
  }

  private func fail(_ message: String) {
    if failure == nil { failure = SimulationFailure(message) }
  }

  // MARK: - Nodes

  private func start(_ id: NodeID) {
    guard let node = nodes[id] else { return }
    node.incarnation += 1
    node.up = true
    node.restartWanted = false
    let process = node.process
    let endpoint = network.bind(id)
    network.withNetwork { $0.setDown(id, false) }
    let checkers = self.checkers
    let host: GroupHost
    do {
      host = try GroupHost(
        node: id, map: map, settings: settings, storage: node.disks, joining: node.joining,
        runtime: NodeRuntime(clock: node.clock, executor: scheduler.executor(for: process)),
        seed: seed ^ (id.rawValue << 32) ^ UInt64(node.incarnation), logger: .disabled,
        observers: HostObservers(
          raft: { checkers[$0.id] as? RaftChecker }, paxos: { checkers[$0.id] as? PaxosChecker }))
    } catch {
      fail("\(id) could not build its host: \(error)")
      return
    }
    node.host = host
    requests.serve(id, process: process) { bytes in await host.handle(bytes: bytes) }
    trace.record(scheduler.now, "start \(id) incarnation \(node.incarnation)")
    let incarnation = node.incarnation
    scheduler.spawn(on: process) { [self] in
      do {
        try await host.run(attach: { endpoint })
      } catch let error as StorageError {
        // An injected disk fault stops the host, as it must: it is restarted like a crashed one.
        hostStopped(id, incarnation: incarnation, error: error)
      } catch {
        fail("\(id) stopped with an unexpected error: \(error)")
      }
    }
  }

  private func hostStopped(_ id: NodeID, incarnation: UInt32, error: StorageError) {
    guard let node = nodes[id], node.incarnation == incarnation, node.up else { return }
    guard case .io = error else {
      fail("\(id) stopped with a storage error that is not an injected fault: \(error)")
      return
    }
    trace.record(scheduler.now, "\(id) stopped after a disk fault: \(error)")
    stats.diskFaults += 1
    crash(id)
    node.restartWanted = true
  }

  private func crash(_ id: NodeID) {
    guard let node = nodes[id], node.up else { return }
    node.up = false
    scheduler.pause(node.process, until: VirtualTime(nanoseconds: .max))
    network.withNetwork { $0.setDown(id, true) }
    requests.stopServing(id)
    node.disks.crash()
    node.host = nil
    stats.crashes += 1
    // The other processes' links notice: at once when the kernel closes the sockets, or after the liveness
    // timeout when the machine is gone.
    let detection = VirtualDuration.milliseconds(UInt64(scheduler.random { Int.random(in: 0...500, using: &$0) }))
    network.reportLost(id, after: detection)
    trace.record(scheduler.now, "crash \(id) (reported lost after \(detection))")
  }

  // MARK: - Clients

  private func runClient(_ c: Int) async {
    let channel = SimulatedRequestChannel(
      requests: requests, client: clientNode(c),
      observe: { [unowned self] request, reply in noteExchange(client: c, request: request, reply: reply) })
    var clientOptions = HostClientOptions()
    clientOptions.attemptTimeout = options.attemptTimeout.duration
    let client = HostClient(
      channel: channel, members: map.members.keys.sorted(), map: map, options: clientOptions,
      clock: SimulatedClock(scheduler: scheduler), seed: seed &+ UInt64(c))
    let kv = KeyValueClient(client)
    if c < options.pipelinedClients {
      // A second caller on the same `HostClient` (the same sessions), as its own client of the history.
      let second = options.clients + c
      scheduler.spawn(on: clientProcess(c)) { [self] in await runOperations(second, kv) }
    }
    await runOperations(c, kv)
  }

  /// One caller's operations until, after the heal, it has completed its fresh writes. `c` names it in the
  /// history and in the values it writes.
  private func runOperations(_ c: Int, _ kv: KeyValueClient) async {
    var lastIndex: [GroupID: UInt64] = [:]
    var freshWrites = 0
    var sequence = 0
    while !(healed && freshWrites >= options.freshWritesAfterHeal) {
      let key = "k\(scheduler.random { Int.random(in: 0..<options.keys, using: &$0) })"
      let roll = scheduler.random { Int.random(in: 0..<100, using: &$0) }
      let deadline =
        healed ? options.healDeadline.duration : scheduler.random { options.operationDeadline.sample(&$0) }.duration
      if roll < 40 && !healed {
        let levels = options.readConsistencies.isEmpty ? [ReadConsistency.linearizable] : options.readConsistencies
        let level = levels[scheduler.random { Int.random(in: 0..<levels.count, using: &$0) }]
        await read(c, kv, key: key, consistency: level, deadline: deadline, lastIndex: &lastIndex)
      } else {
        sequence += 1
        if await write(c, kv, key: key, roll: roll, value: "c\(c)-\(sequence)", deadline: deadline), healed {
          freshWrites += 1
        }
      }
      try? await scheduler.sleep(for: scheduler.random { options.thinkTime.sample(&$0) })
    }
    trace.record(scheduler.now, "client \(c) done")
    clientFinished()
  }

  /// One write; returns whether its outcome is known.
  private func write(_ c: Int, _ kv: KeyValueClient, key: String, roll: Int, value: String, deadline: Duration)
    async -> Bool
  {
    let input: KVInput
    if roll < 75 {
      input = .put(key: key, value: value)
    } else if roll < 85 {
      input = .delete(key: key)
    } else {
      let other = "c\(scheduler.random { Int.random(in: 0..<options.clients, using: &$0) })-"
      let expected: String? = scheduler.random { Bool.random(using: &$0) } ? nil : other + "\(max(1, value.count % 7))"
      input = .compareAndSwap(key: key, expected: expected, new: value)
    }
    let op = history.invoke(client: c, input, at: scheduler.now.nanoseconds)
    // Once the call returns, `HostClient` sends this write no more: its record of an expired session is done with.
    defer { forgetExpired(input, of: c) }
    do {
      let output: KVOutput
      switch input {
      case .put(_, let value):
        output = .previous(try await kv.put(key, value, deadline: deadline))
        stats.writeResponsesChecked += 1
      case .delete:
        output = .previous(try await kv.delete(key, as: String.self, deadline: deadline))
        stats.writeResponsesChecked += 1
      case .compareAndSwap(_, let expected, let new):
        let swapped = try await kv.compareAndSwap(key, expected: expected, new: new, deadline: deadline).swapped
        if swapped { stats.swaps += 1 }
        output = .swapped(swapped)
      case .get:
        output = .ok
      }
      history.complete(op, output, at: scheduler.now.nanoseconds)
      trace.record(scheduler.now, "client \(c) \(input) -> \(output)")
      stats.operationsCompleted += 1
      return true
    } catch {
      noteFailure(error, of: "client \(c) \(input)")
      if Self.claimsNotApplied(error) {
        // The client says the write was not carried out: the checker holds it to that.
        history.markFailed(op)
        trace.record(scheduler.now, "client \(c) \(input) -> not applied (\(error))")
        stats.writesNotApplied += 1
      } else {
        // The deadline passed after an attempt (or the outcome is unknown): the write may or may not have
        // happened, now or later.
        history.markUnknown(op)
        trace.record(scheduler.now, "client \(c) \(input) -> unknown (\(error))")
        stats.unknownOutcomes += 1
      }
      stats.retries += 1
      return false
    }
  }

  /// Whether a write's `error` is its client's claim that the write was certainly not carried out: a refusal
  /// (`HostClient` reports one only when no attempt can have been carried out, else the outcome is unknown), or a
  /// deadline that passed before any attempt was sent. An unknown outcome, a reply that does not decode, or any
  /// other error claims nothing.
  static func claimsNotApplied(_ error: any Error) -> Bool {
    switch error as? QuorumClientError {
    case .timeout(outcomeUnknown: false, _)?, .rejected?, .refused?: return true
    case .timeout(outcomeUnknown: true, _)?, .outcomeUnknown?, .badReply?, nil: return false
    }
  }

  /// A command and the key-value caller that sent it, to find the same write sent again.
  private struct SentCommand: Hashable {
    var client: Int
    var payload: [UInt8]
  }

  /// Commands the cluster said had an expired session, and that session: sent again under another, they were
  /// renewed. A command's entry goes when the write that sent it returns (``forgetExpired(_:of:)``), so the table
  /// holds at most one entry per caller, not one per expiry of the whole run.
  private var expiredCommands: [SentCommand: UInt64] = [:]

  /// The entries of ``expiredCommands`` (none once every write has returned).
  var expiredCommandsRemembered: Int { expiredCommands.count }

  /// Forgets what ``expiredCommands`` holds for the write of `input` by caller `c`, which has returned: the
  /// `HostClient` (shared by the caller and its pipelined twin, `options.clients` further on) sends it no more.
  private func forgetExpired(_ input: KVInput, of c: Int) {
    guard !expiredCommands.isEmpty else { return }
    let channel = c >= options.clients ? c - options.clients : c
    // The payload as `KeyValueClient` encodes it (strings as their UTF-8 bytes).
    let command: KVCommand
    switch input {
    case .put(let key, let value): command = .put(key: key, value: Array(value.utf8))
    case .delete(let key): command = .delete(key: key)
    case .compareAndSwap(let key, let expected, let new):
      command = .compareAndSwap(key: key, expected: expected.map { Array($0.utf8) }, new: new.map { Array($0.utf8) })
    case .get: return
    }
    expiredCommands[SentCommand(client: channel, payload: command.wireBytes())] = nil
  }

  /// Sees each request of key-value client `c` and its reply (`nil`: none arrived), to count the writes
  /// `HostClient` sent again under a new session after the cluster said their session had expired. (Values are
  /// unique per write, so the same payload from the same client under another session is the same write.)
  private func noteExchange(client c: Int, request: [UInt8], reply: [UInt8]?) {
    guard case .command(_, let command, let id?, _)? = try? HostRequest(wireBytes: request) else { return }
    let sent = SentCommand(client: c, payload: command.payload)
    if let session = expiredCommands[sent], session != id.session {
      expiredCommands[sent] = nil
      stats.sessionRenewals += 1
    }
    if let reply, case .failure(let failure)? = try? HostReply(wireBytes: reply),
      case .consensus(.sessionExpired) = failure.error
    {
      expiredCommands[sent] = id.session
    }
  }

  private func read(
    _ c: Int, _ kv: KeyValueClient, key: String, consistency: ReadConsistency, deadline: Duration,
    lastIndex: inout [GroupID: UInt64]
  ) async {
    let checked = consistency != .stale && consistency != .session
    let op = checked ? history.invoke(client: c, .get(key: key), at: scheduler.now.nanoseconds) : nil
    guard let group = placement.owner(of: key, service: "kv") else { return }
    // A session read must reflect everything this client has seen in the group, its own writes included.
    let seen =
      consistency == .session
      ? max(lastIndex[group] ?? 0, await kv.client.lastSeenIndex(in: group)) : lastIndex[group] ?? 0
    do {
      let (value, index) = try await kv.getIndexed(
        key, consistency: consistency, atLeast: consistency == .stale ? seen : 0, deadline: deadline)
      trace.record(scheduler.now, "client \(c) get \(key) (\(consistency)) -> \(value?.count ?? -1)B at \(index)")
      switch consistency {
      case .linearizable: stats.linearizableReads += 1
      case .lease: stats.leaseReads += 1
      case .session: stats.sessionReads += 1
      case .stale: break
      }
      if let op {
        history.complete(op, .value(value.map { String(decoding: $0, as: UTF8.self) }), at: scheduler.now.nanoseconds)
        stats.operationsCompleted += 1
      } else {
        if index < seen {
          fail("\(consistency) read of \(key) by client \(c) went back from index \(seen) to \(index)")
        }
        staleReads.append((group, c, key, value, index))
      }
      lastIndex[group] = max(seen, index)
    } catch {
      noteFailure(error, of: "client \(c) get \(key) (\(consistency))")
      if let op { history.markFailed(op) }  // A read that never answered changed nothing.
      stats.retries += 1
    }
  }

  /// Fails the run for an error a correct cluster never gives this simulation's clients, which send only
  /// well-formed requests, for keys of their groups, without credentials, to a cluster they configured: a reply
  /// that does not decode, a refusal of the request itself, a session taken or over its quota. Only a deadline, an
  /// unknown outcome, or a consensus refusal of the retryable kind (an expired session, say) is part of a faulty
  /// network's life. Without this, a bug that made every read of one kind fail would take those reads out of the
  /// checked history and pass.
  private func noteFailure(_ error: any Error, of call: @autoclosure () -> String) {
    guard let reason = Self.unexpectedFailure(error) else {
      if case QuorumClientError.rejected(.consensus) = error { stats.consensusRefusals += 1 }
      return
    }
    fail("\(call()) failed with an error a correct cluster never gives it: \(reason)")
  }

  /// Why `error` is not one a simulated client may meet, or `nil` when it may.
  static func unexpectedFailure(_ error: any Error) -> String? {
    if error is CancellationError { return nil }
    if let error = error as? LockClientError { return unexpectedLockFailure(error) }
    guard let error = error as? QuorumClientError else { return "\(type(of: error)): \(error)" }
    switch error {
    case .timeout, .outcomeUnknown: return nil
    case .rejected(.consensus(let reason)):
      switch reason {
      case .commandTooLarge, .sessionNotOwned, .sessionQuotaExceeded, .membershipChangeRejected:
        return "\(error)"
      case .notLeader, .timeout, .dropped, .outcomeUnknown, .stopped, .overloaded, .transferInProgress,
        .sessionExpired, .leaseExpired, .responseForgotten:
        return nil
      }
    case .rejected, .badReply, .refused: return "\(error)"
    }
  }

  /// Why a lock call's `error` is not one a simulated lock client may meet, or `nil` when it may. A wait that ran
  /// out, a session lost to a pause or a cut, or sessions stuck while the members cannot be reached are part of a
  /// faulty network's life. A refusal by the lock table (the clients ask for valid locks of consistent kinds,
  /// within every bound), an answer that makes no sense, a reentrant call, a lease lost inside `withLock` or a
  /// closed client (a simulated lock client makes one call at a time, and none inside another) are not.
  static func unexpectedLockFailure(_ error: LockClientError) -> String? {
    switch error {
    case .timedOut, .sessionLost, .tooManySessions: return nil
    case .refused, .unexpected, .leaseLost, .closed, .reentrant: return "\(error)"
    }
  }

  // MARK: - Nemesis

  private func runNemesis() async {
    while !healed {
      try? await scheduler.sleep(for: scheduler.random { options.nemesisInterval.sample(&$0) })
      guard !healed else { return }
      let actions = NodeNemesis.allCases.filter {
        options.nemesis.contains($0)
          && (!changeableGroups.isEmpty || ($0 != .membershipChange && $0 != .transferLeadership))
      }
      guard let action = pick(actions) else { return }
      await act(action)
    }
  }

  private func upNodes() -> [Node] { nodes.keys.sorted().compactMap { nodes[$0] }.filter { $0.up } }

  /// The newest leader of `group` among the running hosts, and its status.
  private func leader(of group: GroupID) async -> (NodeID, any HostedGroup, GroupStatus)? {
    var best: (NodeID, any HostedGroup, GroupStatus)?
    for node in upNodes() {
      guard let replica = node.host?.group(group) else { continue }
      let status = await replica.status()
      guard status.isLeader, status.epoch >= best?.2.epoch ?? 0 else { continue }
      best = (node.id, replica, status)
    }
    return best
  }

  private func pick<T>(_ items: [T]) -> T? {
    guard !items.isEmpty else { return nil }
    return items[scheduler.random { Int.random(in: 0..<items.count, using: &$0) }]
  }

  private func act(_ action: NodeNemesis) async {
    let ids = nodes.keys.sorted()
    let now = scheduler.now
    switch action {
    case .partition:
      var a: [NodeID] = []
      var b: [NodeID] = []
      for id in ids + (0..<options.clients).map(clientNode) + (0..<options.lockWorkload.clients).map(lockClientNode) {
        if scheduler.random({ Bool.random(using: &$0) }) { a.append(id) } else { b.append(id) }
      }
      network.withNetwork {
        $0.heal()
        $0.partition(a, b)
      }
      stats.partitions += 1
      trace.record(now, "nemesis: partition \(a) | \(b)")
    case .oneWayCut:
      guard let from = pick(ids), let to = pick(ids.filter { $0 != from }) else { return }
      network.withNetwork { $0.cutOneWay(from: from, to: to) }
      stats.partitions += 1
      trace.record(now, "nemesis: cut \(from)->\(to)")
    case .isolateLeader:
      guard let group = pick(map.groups), let (leader, _, _) = await leader(of: group.id) else { return }
      network.withNetwork { $0.partition([leader], ids.filter { $0 != leader }) }
      stats.partitions += 1
      trace.record(now, "nemesis: isolate \(group.name)'s leader \(leader)")
    case .heal:
      network.withNetwork { $0.heal() }
      trace.record(now, "nemesis: heal network")
    case .crash:
      let running = upNodes()
      guard running.count > 1, let victim = pick(running) else { return }
      crash(victim.id)
    case .restart:
      guard let down = pick(ids.compactMap { nodes[$0] }.filter { !$0.up && $0.incarnation > 0 }) else { return }
      start(down.id)
    case .pause:
      guard let victim = pick(upNodes()) else { return }
      let length = pauseLength()
      scheduler.pause(victim.process, until: now + length)
      stats.stalls += 1
      trace.record(now, "nemesis: pause \(victim.id) for \(length)")
    case .stallTimers:
      guard let victim = pick(upNodes()) else { return }
      let length = pauseLength()
      victim.clock.stallTimers(until: now + length)
      stats.stalls += 1
      trace.record(now, "nemesis: stall \(victim.id)'s timers for \(length)")
    case .jumpWallClock:
      guard let victim = pick(upNodes()) else { return }
      let jump = scheduler.random { Int64.random(in: -3_600_000...3_600_000, using: &$0) }
      victim.clock.jumpWallClock(by: jump)
      trace.record(now, "nemesis: \(victim.id)'s wall clock jumps \(jump) ms")
    case .diskFaults:
      guard let victim = pick(upNodes()) else { return }
      victim.disks.failWrites(probability: 0.05)
      // A snapshot that cannot be written changes nothing: the node holds it and tries again, and goes on.
      victim.disks.failSnapshots(probability: 0.3)
      trace.record(now, "nemesis: \(victim.id)'s disks fail 5% of writes and 30% of snapshot saves")
    case .lossyNetwork:
      let faults = scheduler.random { rng in
        LinkFaults(
          dropProbability: Double.random(in: 0.01...0.2, using: &rng),
          duplicateProbability: Double.random(in: 0...0.1, using: &rng),
          delay: .longTail(
            typical: .milliseconds(UInt64.random(in: 1...10, using: &rng)), tail: .milliseconds(500),
            tailProbability: Double.random(in: 0...0.05, using: &rng)),
          reorderProbability: Double.random(in: 0...0.3, using: &rng), reorderWindow: .milliseconds(20))
      }
      network.withNetwork { $0.defaultFaults = faults }
      trace.record(now, "nemesis: lossy network \(faults)")
    case .perfectNetwork:
      network.withNetwork { $0.defaultFaults = LinkFaults(delay: .uniform(.microseconds(100), .milliseconds(2))) }
      trace.record(now, "nemesis: perfect network")
    case .membershipChange:
      await changeMembership()
    case .transferLeadership:
      guard let group = pick(changeableGroups), let (leaderID, replica, status) = await leader(of: group.id),
        let target = pick(status.voters.filter { $0 != leaderID })
      else { return }
      trace.record(now, "nemesis: transfer \(group.name)'s leadership \(leaderID) -> \(target)")
      scheduler.spawn(on: Self.nemesisProcess) { [self] in
        if (try? await replica.transferLeadership(to: target)) != nil { stats.transfers += 1 }
      }
    }
    for node in nodes.keys.sorted().compactMap({ nodes[$0] }) where !node.up && node.restartWanted {
      if scheduler.random({ $0.chance(0.5) }) { start(node.id) }
    }
  }

  /// A nemesis pause or timer stall: 20 ms up to ``ClusterSimulationOptions/maxPause``.
  private func pauseLength() -> VirtualDuration {
    let longest = Int(clamping: max(20, options.maxPause.nanoseconds / 1_000_000))
    return .milliseconds(UInt64(scheduler.random { Int.random(in: 20...longest, using: &$0) }))
  }

  private func changeMembership() async {
    guard let group = pick(changeableGroups), let (leaderID, replica, status) = await leader(of: group.id) else {
      return
    }
    let voters = Set(status.voters)
    let all = voters.union(status.learners)
    var choices: [MembershipOperation] = []
    for id in nodes.keys.sorted() where !all.contains(id) {
      choices.append(.addLearner(id))
      choices.append(.addVoter(id))
    }
    for id in status.learners.sorted() {
      choices.append(.addVoter(id))
      choices.append(.remove(id))
    }
    if voters.count > 2 { for id in voters.sorted() { choices.append(.remove(id)) } }
    guard let operation = pick(choices) else { return }
    if case .remove = operation {
    } else if let node = nodes[operation.node], !node.joining.contains(group.id),
      !group.members.contains(operation.node)
    {
      // A node joining the group for the first time hosts it from now on, empty, and learns the membership from
      // the leader. Its host is rebuilt to add the group (as an operator restarts a server with `--join`).
      node.joining.insert(group.id)
      if node.up { crash(node.id) }
      start(node.id)
    }
    trace.record(scheduler.now, "nemesis: \(group.name) membership \(operation) via \(leaderID)")
    scheduler.spawn(on: Self.nemesisProcess) { [self] in
      if (try? await replica.changeMembership(.change([operation]))) != nil { stats.membershipChanges += 1 }
    }
  }

  private func heal() {
    healed = true
    network.withNetwork {
      $0.heal()
      $0.defaultFaults = LinkFaults(delay: .uniform(.microseconds(100), .milliseconds(2)))
    }
    for node in nodes.keys.sorted().compactMap({ nodes[$0] }) {
      node.disks.failWrites(probability: 0)
      node.disks.failSnapshots(probability: 0)
      if !node.up && node.incarnation > 0 { start(node.id) }
    }
    trace.record(scheduler.now, "healed")
  }

  // MARK: - Convergence and histories

  /// After the clients finish: waits until every member of every group's final membership has applied the same
  /// position with a state byte-identical to the group's reference replica.
  private func startConvergenceCheck() {
    scheduler.spawn(on: Self.checkerProcess) { [self] in
      while failure == nil {
        var all = true
        for group in map.groups where await !groupConverged(group) {
          all = false
          break
        }
        if all {
          converged = true
          return
        }
        try? await scheduler.sleep(for: .milliseconds(20))
      }
    }
  }

  private func groupConverged(_ group: GroupSpec) async -> Bool {
    guard let (_, _, status) = await leader(of: group.id), let checker = checkers[group.id] else { return false }
    var states: [(applied: UInt64, snapshot: [UInt8])] = []
    for id in status.voters + status.learners {
      guard let node = nodes[id], node.up, let replica = node.host?.group(group.id) else { return false }
      states.append(await replica.localState())
    }
    guard let first = states.first, first.applied == checker.referenceApplied,
      states.allSatisfy({ $0.applied == first.applied && $0.snapshot == first.snapshot })
    else {
      trace.record(
        scheduler.now,
        "not converged: \(group.name) \(status.voters + status.learners) applied \(states.map(\.applied)) reference \(checker.referenceApplied) same=\(states.map { $0.snapshot == states.first?.snapshot })"
      )
      return false
    }
    if first.snapshot != checker.referenceSnapshot {
      fail(
        "\(group.name)'s replicas converged on a state that differs from the reference replica's at \(first.applied)")
    }
    await checkStructurally(group, members: status.voters + status.learners, checker: checker)
    return true
  }

  /// Compares each replica's whole state, as a value, with the reference replica's: equal snapshot bytes do not
  /// show what a snapshot's encoding leaves out, which a replica that restored a snapshot lacks while the reference
  /// (which applied every entry) has it. Run once the bytes agree, so it costs one comparison per group per
  /// convergence.
  private func checkStructurally(_ group: GroupSpec, members: [NodeID], checker: any GroupChecker) async {
    // Taken together: the reference may apply more while a replica is asked, and a replica that applied more is
    // left for the next convergence.
    let (reference, referenceApplied) = (checker.referenceMachine, checker.referenceApplied)
    for id in members {
      guard let replica = nodes[id]?.host?.group(group.id), let (applied, machine) = await replica.localMachine(),
        applied == referenceApplied
      else { continue }
      let parts = machine.differences(from: reference)
      guard !parts.isEmpty else { continue }
      let services = parts.contains("machine") ? machine.machine.differingServices(from: reference.machine) : []
      let named = parts.map { $0 == "machine" ? "services \(services.joined(separator: ", "))" : $0 }
      fail(
        "\(group.name)'s replica \(id) holds the reference replica's snapshot bytes at \(applied) but a different "
          + "state: \(named.joined(separator: "; "))")
      return
    }
  }

  private func checkHistory() throws {
    for read in staleReads {
      guard let checker = checkers[read.group] else { continue }
      let value = checker.kvValue(of: read.key, at: read.index)
      if value != read.value {
        throw SimulationFailure(
          "stale read of \(read.key) by client \(read.client) at index \(read.index) returned "
            + "\(read.value.map { String(decoding: $0, as: UTF8.self) } ?? "nil"), but the committed prefix holds "
            + "\(value.map { String(decoding: $0, as: UTF8.self) } ?? "nil")")
      }
      stats.staleReadsChecked += 1
    }
    let result = history.history.checkLinearizability(maxStatesExplored: 5_000_000)
    if let violation = result.violation {
      throw SimulationFailure("client history is not linearizable:\n\(violation.explanation)")
    }
    if !result.isLinearizable {
      throw SimulationFailure("linearizability check did not finish: \(result)")
    }
  }
}

/// A ``QuorumHost/RequestChannel`` over ``VirtualRequests``: what simulated clients use to reach simulated hosts.
struct SimulatedRequestChannel: RequestChannel {
  let requests: VirtualRequests<[UInt8], [UInt8]>
  let client: NodeID
  /// Sees each request and its reply (`nil`: none arrived in time), when the simulation wants to count them.
  var observe: (@Sendable (_ request: [UInt8], _ reply: [UInt8]?) -> Void)? = nil

  func send(_ request: [UInt8], to member: NodeID, timeout: Duration) async throws -> [UInt8] {
    let reply = await requests.call(
      request, from: client, to: member, timeout: VirtualDuration(nanoseconds: timeout.nanoseconds))
    observe?(request, reply)
    guard let reply else { throw RequestChannelError.timeout(member) }
    return reply
  }
}
