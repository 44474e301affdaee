public import QuorumCore
import QuorumKV
public import QuorumRaft

/// The faults a simulated run may inject.
public enum NemesisAction: String, Sendable, CaseIterable, Hashable {
  /// Split the nodes into two random groups.
  case partition
  /// Cut one direction of one link.
  case oneWayCut
  /// Cut the current leader off from everyone.
  case isolateLeader
  /// Restore every link.
  case heal
  /// Crash a running node: it loses whatever it had not synced.
  case crash
  /// Restart a crashed node from what it had made durable.
  case restart
  /// Make the network lossy: drops, duplicates, reordering, longer delays.
  case lossyNetwork
  /// Make the network perfect again.
  case perfectNetwork
  /// Add or remove a member, or promote a learner (through the leader).
  case membershipChange
  /// Ask the leader to transfer leadership to a random voter.
  case transferLeadership
  /// Tell a running node that its failure detector lost a peer: its leader half the time (crashed, cut off, or
  /// alive — a wrong report), else another node. Crashes are also reported to every running node, as a TCP link
  /// reports a dead process.
  case lostPeerReport

  /// The node told of a lost peer and the peer (``lostPeerReport``), drawn from `ids`.
  static func lostPeerReport(
    among ids: [NodeID], isUp: (NodeID) -> Bool, leaderOf: (NodeID) -> NodeID?, using rng: inout SeededRandom
  ) -> (node: NodeID, peer: NodeID)? {
    let running = ids.filter(isUp)
    guard !running.isEmpty, ids.count > 1 else { return nil }
    let node = running[Int.random(in: 0..<running.count, using: &rng)]
    let others = ids.filter { $0 != node }
    let other = others[Int.random(in: 0..<others.count, using: &rng)]
    let leader = leaderOf(node).flatMap { $0 == node ? nil : $0 }
    return (node, Bool.random(using: &rng) ? leader ?? other : other)
  }
}

/// The shape of one simulated Raft run.
public struct RaftSimulationOptions: Sendable {
  /// Founding voters.
  public var voters = 3
  /// A planted bug, for the tests of the simulation's own checks: a node that installs a leader's snapshot
  /// writes one key of its own into its state.
  var damagesInstalledSnapshots = false
  /// Extra node identifiers the nemesis may add as members.
  public var spareNodes = 2
  /// Concurrent clients.
  public var clients = 4
  /// The most operations one client performs. Clients work until the healed phase begins, so most runs
  /// stop well before this.
  public var operationsPerClient = 200
  /// Pause between one client's operations (unless ``thinkTimes`` chooses one by seed).
  public var thinkTime = DelayDistribution.uniform(.zero, .milliseconds(40))
  /// The pauses runs choose from, by seed (`(seed / 2) % count`, so that every pause meets both idle-heartbeat
  /// factors): with the default, half the runs pause up to 40 ms and half up to 400 ms. The long pauses leave
  /// the cluster idle at times, when a follower that lost its leader may hold as long a log as the others and can
  /// be elected (while clients write all the time, the §5.4.1 check usually refuses it). Empty keeps
  /// ``thinkTime``.
  public var thinkTimes: [DelayDistribution] = [
    .uniform(.zero, .milliseconds(40)), .uniform(.zero, .milliseconds(400)),
  ]
  /// Distinct keys (fewer keys mean more contention).
  public var keys = 4
  /// Virtual time per tick.
  public var tick = VirtualDuration.milliseconds(10)
  /// How long faults are injected before the healed phase.
  public var chaosDuration = VirtualDuration.seconds(3)
  /// How long the healed phase may take to finish every operation.
  public var healDeadline = VirtualDuration.seconds(60)
  /// Latency of a durable write.
  public var fsyncLatency = DelayDistribution.uniform(.microseconds(50), .milliseconds(2))
  /// Latency between a client and a node.
  public var clientLatency = DelayDistribution.uniform(.microseconds(100), .milliseconds(1))
  /// Take a snapshot after this many applied entries.
  public var snapshotEvery = 25
  /// How long encoding and storing a snapshot takes. As in `RaftNode`, it runs in the background: the node
  /// goes on stepping and applying meanwhile, and records the snapshot (compacting its log) afterwards.
  public var snapshotLatency = DelayDistribution.uniform(.microseconds(100), .milliseconds(40))
  /// Entries kept before a snapshot's index.
  public var retainEntries = 4
  /// A client retries a request that got no answer for this long.
  public var requestTimeout = VirtualDuration.milliseconds(400)
  /// The consistency levels clients read at (each read picks one at random). Every read is recorded and checked
  /// as linearizable, so only `.linearizable` and `.lease` belong here: session and stale reads are checked by the
  /// node-level simulation, against a reference replica at the position they report.
  public var readConsistencies: [ReadConsistency] = [.linearizable, .lease]
  /// The faults the nemesis may choose from.
  public var nemesis = Set(NemesisAction.allCases)
  /// Time between nemesis actions.
  public var nemesisInterval = DelayDistribution.uniform(.milliseconds(50), .milliseconds(400))
  /// The idle-heartbeat factors runs choose from, by seed (`seed % count`): with the default, odd seeds run
  /// leaders that idle (``QuorumRaft/RaftCoreOptions/idleHeartbeatFactor`` 3) and even ones leaders that never
  /// do. Empty keeps ``core``'s own factor.
  public var idleHeartbeatFactors = [1, 3]
  /// The pure core's options (election timeouts in ticks and so on).
  public var core: RaftCoreOptions = {
    var o = RaftCoreOptions()
    o.electionTimeoutMinTicks = 10
    o.electionTimeoutMaxTicks = 20
    o.heartbeatTicks = 2
    o.maxEntriesBytesPerMessage = 256
    o.maxInflightMessages = 8
    o.snapshotChunkBytes = 128
    o.leaseDurationNanos = (10 - 1) * 10_000_000  // (minimum election timeout - 1) ticks; no clock drift
    return o
  }()

  /// Defaults: 3 voters, 2 spares, 4 clients on 4 keys, 3 s of chaos with every fault.
  public init() {}
}

/// What a run did, for reports and for checking that faults actually happened.
public struct RaftSimulationStats: Sendable, CustomStringConvertible {
  /// Events processed.
  public var events = 0
  /// Distinct (term, leader) pairs seen.
  public var leaderships = 0
  /// Crashes injected.
  public var crashes = 0
  /// Partitions and cuts injected.
  public var partitions = 0
  /// Membership changes accepted by a leader.
  public var membershipChanges = 0
  /// Leadership transfers requested.
  public var transfers = 0
  /// Ticks of leaders heartbeating less often (``QuorumRaft/RaftCore/isIdle``).
  public var idleLeaderTicks = 0
  /// Lost-peer reports the nemesis made (``NemesisAction/lostPeerReport``), crashes' included.
  public var lostPeerReports = 0
  /// Snapshots installed on followers.
  public var snapshotsInstalled = 0
  /// Snapshots taken in the background and recorded (compacting the log).
  public var snapshotsTaken = 0
  /// Client operations completed (with a known outcome).
  public var operationsCompleted = 0
  /// Client retries.
  public var retries = 0
  /// Virtual time at the end.
  public var endTime = VirtualTime.zero

  public var description: String {
    "events=\(events) leaderships=\(leaderships) crashes=\(crashes) partitions=\(partitions) "
      + "membership=\(membershipChanges) transfers=\(transfers) snapshots=\(snapshotsTaken)/\(snapshotsInstalled) "
      + "ops=\(operationsCompleted) retries=\(retries) idle-leader-ticks=\(idleLeaderTicks) "
      + "lost-peer-reports=\(lostPeerReports) end=\(endTime)"
  }
}

/// A whole Raft cluster of ``QuorumRaft/RaftCore`` values with key-value clients, run in virtual time under a
/// seeded nemesis.
///
/// Each node's shell behaves like the real `RaftNode`: it takes a ready, sends the leader's replication
/// messages, writes the rest to a ``CrashableStore`` and waits a simulated fsync before sending the messages
/// that depend on it and applying committed entries. Inputs that arrive meanwhile are batched. Crashes lose
/// unsynced writes (keeping a random prefix). Clients use exactly-once sessions and retry until they get an
/// answer.
///
/// After every event the run checks Election Safety, Log Matching, Leader Completeness and State Machine
/// Safety, and that no node whose lease read is valid has a lower term than a leader already elected; after every
/// ready, that a leader moves its commit index only onto an entry of its own term (§5.4.2); after the healed phase every operation must have completed and the client history must be
/// linearizable. Any violation throws a ``SimulationFailure``.
public final class RaftSimulation {
  /// The run's seed.
  public let seed: UInt64
  /// The run's options.
  public let options: RaftSimulationOptions
  /// What the run did.
  public var stats: RaftSimulationStats { shell.statistics }
  /// The client history (filled as the run goes).
  public var history: KVHistory { shell.clients.history }

  private let shell: CoreSimulationShell<RaftDriver>

  /// Prepares a run; nothing happens until ``run()``.
  public init(seed: UInt64, options: RaftSimulationOptions = RaftSimulationOptions(), trace: SimulationTrace) {
    self.seed = seed
    var options = options
    if !options.idleHeartbeatFactors.isEmpty {
      options.core.idleHeartbeatFactor =
        options.idleHeartbeatFactors[Int(seed % UInt64(options.idleHeartbeatFactors.count))]
    }
    if !options.thinkTimes.isEmpty {
      options.thinkTime = options.thinkTimes[Int(seed / 2 % UInt64(options.thinkTimes.count))]
    }
    self.options = options
    self.shell = CoreSimulationShell(driver: RaftDriver(options: options), seed: seed, trace: trace)
  }

  /// Runs the chaos phase, then the healed phase, checking invariants throughout.
  /// - Throws: ``SimulationFailure`` on any violated invariant, unfinished operation or non-linearizable history.
  public func run() throws {
    try shell.run()
  }
}

/// Raft's part of a ``RaftSimulation``: its cores, its invariant checks (Election Safety, Log Matching, Leader
/// Completeness, State Machine Safety) and the faults only Raft has (membership changes, leadership transfers).
private final class RaftDriver: CoreSimulationDriver {
  /// What a Raft node keeps on disk.
  struct Durable: SimulatedDurable {
    var hardState = HardState()
    var entries: [LogEntry] = []
    var snapshot: RaftSnapshot?

    mutating func persist(_ rd: RaftReady) {
      if let snapshot = rd.snapshot {
        // As the core does: keep later entries only if the log agrees with the snapshot at its index.
        let keep = entries.contains { $0.index == snapshot.index && $0.term == snapshot.term }
        self.snapshot = snapshot
        entries = keep ? entries.filter { $0.index > snapshot.index } : []
      }
      if let hs = rd.hardState { hardState = hs }
      if let first = rd.entries.first {
        entries.removeAll { $0.index >= first.index }
        entries.append(contentsOf: rd.entries)
      }
    }

    mutating func compact(below firstKept: LogIndex) {
      entries.removeAll { $0.index < firstKept }
    }
  }

  let options: RaftSimulationOptions
  let foundingMembers: [NodeID]
  let leaseFallsBackToReadIndex = true  // As RaftNode does: ReadIndex when the lease is not valid.
  let toleratesForgottenResponses = false
  let tracesLearning = false
  private let founding: Membership
  /// Distinct (term, leader) pairs seen.
  private(set) var leaderships = 0
  /// Membership changes accepted by a leader.
  private(set) var membershipChanges = 0
  /// Leadership transfers requested.
  private(set) var transfers = 0

  // Invariant bookkeeping.
  private var leaderOfTerm: [Term: NodeID] = [:]
  /// The highest term a leader was elected in.
  private var highestLeaderTerm: Term = 0
  /// Each node's commit index at its last ready, by node and incarnation (a restart recovers its own).
  private var commitSeen: [NodeID: (incarnation: UInt64, commit: LogIndex)] = [:]
  private var entryAt: [LogIndex: [Term: (data: UInt64, prevTerm: Term)]] = [:]
  private var committedTerm: [LogIndex: Term] = [:]
  private var maxCommitted: LogIndex = 0
  private var appliedEntry: [LogIndex: UInt64] = [:]

  init(options: RaftSimulationOptions) {
    self.options = options
    self.founding = Membership(voters: Set((1...options.voters).map { NodeID(UInt64($0)) }))
    self.foundingMembers = founding.voters.sorted()
  }

  func foundingCore(_ id: NodeID, random: SeededRandom) -> RaftCore {
    RaftCore.bootstrap(id: id, options: options.core, membership: founding, random: random)
  }

  func restartedCore(_ id: NodeID, from durable: Durable, random: SeededRandom, in shell: Shell) -> RaftCore {
    RaftCore(
      id: id, options: options.core, membership: .empty, hardState: durable.hardState, snapshot: durable.snapshot,
      entries: durable.entries, random: random)
  }

  func describe(_ durable: Durable) -> String {
    "term \(durable.hardState.term), \(durable.entries.count) entries"
  }

  func describe(_ n: Shell.Node) -> String {
    "\(n.id){\(n.up ? n.core.role.description : "down") t\(n.core.term) last=\(n.core.lastIndex) "
      + "commit=\(n.core.commitIndex) applied=\(n.applied) \(n.core.membership)}"
  }

  /// Starts a background snapshot, as `RaftNode` does, only of persisted entries: it captures the applied
  /// index's term and membership with the state.
  func snapshot(of node: Shell.Node) -> RaftSnapshot? {
    guard node.applied <= node.core.persistedIndex, let term = node.core.term(at: node.applied) else { return nil }
    return RaftSnapshot(
      index: node.applied, term: term,
      membership: node.core.membership(at: node.applied) ?? node.core.membership, data: node.machine.snapshot())
  }

  func canRecord(_ snapshot: RaftSnapshot, in core: RaftCore) -> Bool {
    core.term(at: snapshot.index) == snapshot.term
  }

  func addCounts(to stats: inout RaftSimulationStats) {
    stats.leaderships = leaderships
    stats.membershipChanges = membershipChanges
    stats.transfers = transfers
  }

  // MARK: - Invariants

  func checkApplied(_ entry: LogEntry, by node: Shell.Node) throws {
    let digest = entry.fingerprint
    if let seen = appliedEntry[entry.index], seen != digest {
      throw SimulationFailure("State Machine Safety: \(node.id) applied a different entry at \(entry.index)")
    }
    appliedEntry[entry.index] = digest
  }

  func readyPersisted(_ rd: RaftReady, of node: Shell.Node, in shell: Shell) throws {}

  func checkReady(_ rd: RaftReady, of node: Shell.Node, in shell: Shell) throws {
    let core = node.core
    if let soft = rd.softState, soft.role == .leader {
      if let other = leaderOfTerm[soft.term], other != node.id {
        throw SimulationFailure("Election Safety: \(other) and \(node.id) both leaders of term \(soft.term)")
      }
      if leaderOfTerm[soft.term] == nil { leaderships += 1 }
      leaderOfTerm[soft.term] = node.id
      highestLeaderTerm = max(highestLeaderTerm, soft.term)
      shell.trace.record(shell.now, "\(node.id) became leader of term \(soft.term)")
      // Leader Completeness: every committed entry is in the new leader's log.
      if core.lastIndex < maxCommitted {
        throw SimulationFailure(
          "Leader Completeness: \(node.id) leads term \(soft.term) with last index \(core.lastIndex) < committed \(maxCommitted)"
        )
      }
      for index in max(core.firstIndex, 1)...max(core.firstIndex, maxCommitted) where index <= maxCommitted {
        if let t = committedTerm[index], core.term(at: index) != t {
          throw SimulationFailure(
            "Leader Completeness: \(node.id) (term \(soft.term)) has \(String(describing: core.term(at: index))) at committed index \(index) of term \(t)"
          )
        }
      }
    }
    try checkCommitRule(of: node)
    // Only a leader's replication may leave before the ready's write ("acknowledged ⇒ durable").
    if let violation = RaftDurability.eagerViolation(
      rd.eagerMessages, term: core.term, ledTerm: leaderOfTerm[core.term] == node.id)
    {
      throw SimulationFailure("\(node.id) \(violation)")
    }
    // Log Matching, incrementally: an (index, term) pair identifies one entry and one predecessor term.
    for entry in rd.entries {
      let prevTerm =
        core.term(at: entry.index - 1) ?? (rd.entries.first(where: { $0.index == entry.index - 1 })?.term ?? 0)
      let record = (data: entry.fingerprint, prevTerm: prevTerm)
      if let seen = entryAt[entry.index]?[entry.term] {
        if seen.data != record.data || (seen.prevTerm != record.prevTerm && entry.index > core.firstIndex) {
          throw SimulationFailure(
            "Log Matching: \(node.id) holds a different entry \(entry.index)@\(entry.term) than another node")
        }
      } else {
        entryAt[entry.index, default: [:]][entry.term] = record
      }
    }
    // Committed entries never change.
    for entry in rd.committedEntries {
      if let t = committedTerm[entry.index], t != entry.term {
        throw SimulationFailure(
          "Commitment: \(node.id) committed \(entry.index)@\(entry.term) but \(entry.index)@\(t) was committed before")
      }
      committedTerm[entry.index] = entry.term
      maxCommitted = max(maxCommitted, entry.index)
    }
  }

  /// The commit rule (§5.4.2, Figure 8): a leader moves its commit index only onto an entry of its own term,
  /// never by counting replicas of an earlier term's entry. A violation loses a committed entry only after four
  /// faults in a row, which the nemesis rarely lines up; this catches the rule's breach itself.
  private func checkCommitRule(of node: Shell.Node) throws {
    let core = node.core
    let seen = commitSeen[node.id]
    let before = seen?.incarnation == node.incarnation ? seen?.commit ?? 0 : 0
    commitSeen[node.id] = (node.incarnation, core.commitIndex)
    guard core.role == .leader, core.commitIndex > before else { return }
    let entryTerm = core.term(at: core.commitIndex)
    if entryTerm != core.term {
      throw SimulationFailure(
        "Commit rule (§5.4.2): \(node.id), leader of term \(core.term), moved its commit index from \(before) to "
          + "\(core.commitIndex), an entry of term \(entryTerm.map { "\($0)" } ?? "unknown")")
    }
  }

  /// Leases (thesis §6.4): no leader whose lease read is valid now may have a lower term than a leader already
  /// elected, or a lease read could miss that leader's writes.
  func checkLeases(in shell: Shell) throws {
    for node in shell.nodes.values where node.up && node.core.term < highestLeaderTerm {
      guard let index = node.core.leaseReadIndex(now: shell.now.nanoseconds) else { continue }
      throw SimulationFailure(
        "Lease: \(node.id) (term \(node.core.term)) would serve a lease read at \(index), but \(leaderOfTerm[highestLeaderTerm].map { "\($0)" } ?? "a node") "
          + "was elected leader of term \(highestLeaderTerm)")
    }
  }

  // MARK: - Nemesis

  func nemesis(_ action: NemesisAction, in shell: Shell) {
    switch action {
    case .membershipChange:
      membershipChange(in: shell)
    case .transferLeadership:
      guard let leader = shell.currentLeader(), let node = shell.nodes[leader] else { return }
      let voters = node.core.membership.voters.sorted().filter { $0 != leader }
      guard !voters.isEmpty else { return }
      let target = voters[Int.random(in: 0..<voters.count, using: &shell.rng)]
      if (try? node.core.transferLeadership(to: target)) != nil {
        transfers += 1
        shell.trace.record(shell.now, "nemesis: transfer leadership \(leader) -> \(target)")
        try? shell.startReady(node)
      }
    default:
      break  // The shell's own.
    }
  }

  private func membershipChange(in shell: Shell) {
    guard let leaderID = shell.currentLeader(), let leader = shell.nodes[leaderID] else { return }
    let membership = leader.core.membership
    let allIDs = (1...(options.voters + options.spareNodes)).map { NodeID(UInt64($0)) }
    var choices: [MembershipChange] = []
    for id in allIDs where !membership.allMembers.contains(id) {
      choices.append(.change([.addLearner(id)]))
      choices.append(.change([.addVoter(id)]))
    }
    for id in membership.learners.sorted() {
      choices.append(.change([.addVoter(id)]))
      choices.append(.change([.remove(id)]))
    }
    if membership.voters.count > 2 {
      for id in membership.voters.sorted() { choices.append(.change([.remove(id)])) }
    }
    guard !choices.isEmpty else { return }
    let change = choices[Int.random(in: 0..<choices.count, using: &shell.rng)]
    guard (try? leader.core.proposeMembership(change)) != nil else { return }
    membershipChanges += 1
    shell.trace.record(shell.now, "nemesis: membership \(change) via \(leaderID)")
    for case .addLearner(let id) in change.operations where shell.nodes[id] == nil { join(id, in: shell) }
    for case .addVoter(let id) in change.operations where shell.nodes[id] == nil { join(id, in: shell) }
    try? shell.startReady(leader)
  }

  private func join(_ id: NodeID, in shell: Shell) {
    shell.addNode(id, core: RaftCore(id: id, options: options.core, membership: .empty, random: shell.rng.fork()))
  }
}

extension RaftCore: SimulatedCore {
  var isLeader: Bool { role == .leader }

  mutating func proposeCommand(_ data: [UInt8]) -> SimulatedProposal<Term> {
    do {
      let (index, term) = try propose(data)
      return .accepted(index: index, tag: term)
    } catch .notLeader(let hint) {
      return .redirect(hint)
    } catch {
      return .retry
    }
  }

  static func proposal(_ term: Term, matches entry: LogEntry) -> Bool { term == entry.term }
}

extension RaftReady: SimulatedReady {
  var entriesToApply: [LogEntry] { committedEntries }
}

extension LogEntry: SimulatedEntry {
  var isCommand: Bool { kind == .command }
  var fingerprint: UInt64 { Self.fingerprint(salt: term, kind: kind.rawValue, data: data) }
}

extension RaftSnapshot: SimulatedSnapshot {}
extension RaftOutgoing: SimulatedOutgoing {}
extension ReadState: SimulatedReadState {}

extension MembershipChange {
  fileprivate var operations: [MembershipOperation] {
    if case .change(let ops) = self { return ops }
    return []
  }
}

extension RaftSimulationOptions: CoreSimulationOptions {}
extension RaftSimulationStats: CoreSimulationStatistics {}
