public import QuorumCore
public import QuorumPaxos
public import QuorumRaft
import QuorumReplica
public import QuorumStorage

extension RaftEngine: SimulatedEngine {
  public static var logWriteMode: LogWriteMode { .truncateSuffix }
  public static var supportsMembershipChanges: Bool { true }

  public static func simulationConfiguration(members: [NodeID], options: NodeSimulationOptions) -> RaftConfiguration {
    var c = RaftConfiguration()
    c.members = members
    c.tickInterval = .milliseconds(10)
    c.electionTimeout = .milliseconds(100)...(.milliseconds(200))
    c.heartbeatInterval = .milliseconds(20)
    c.preVote = !options.variant.raftPaper
    c.checkQuorum = !options.variant.raftPaper
    c.leaseReads = !options.variant.raftPaper
    c.clockDriftBound = .milliseconds(20)
    c.snapshotEvery = options.snapshotEvery
    c.snapshotRetainEntries = options.retainEntries
    c.snapshotChunkBytes = 128
    c.maxEntriesBytesPerMessage = 256
    c.maxInflightMessages = 8
    c.requestTimeout = .seconds(2)
    return c
  }

  public static func makeChecker(configuration: RaftConfiguration, trace: SimulationTrace) -> ReplicaChecker<
    RaftEngine
  > {
    RaftChecker(sessions: configuration.sessions, trace: trace)
  }

  public static func voters(in status: RaftStatus) -> [NodeID] { status.membership.allVoters.sorted() }
  public static func members(in status: RaftStatus) -> [NodeID] { status.membership.allMembers.sorted() }
  public static func isLeader(_ status: RaftStatus) -> Bool { status.role == .leader }
  public static func appliedIndex(_ status: RaftStatus) -> UInt64 { status.appliedIndex }
  public static func epoch(_ status: RaftStatus) -> UInt64 { status.term }
}

/// Raft's invariants (§5.2–§5.4), checked at every ready of every node: Election Safety (one leader per term),
/// Leader Completeness (a new leader holds every committed entry), Log Matching (an index and term identify one
/// entry and its predecessor's term) and that committed entries never change.
final class RaftChecker: ReplicaChecker<RaftEngine>, @unchecked Sendable {
  private var leaderOfTerm: [Term: NodeID] = [:]
  private var entryAt: [LogIndex: [Term: (data: UInt64, prevTerm: Term)]] = [:]
  private var committedTerm: [LogIndex: Term] = [:]
  private var maxCommitted: LogIndex = 0

  override func willCarryOut(_ node: NodeID, ready: ReplicaReady<RaftEngine>, engine: RaftEngine) {
    let core = engine.core
    let rd = ready.raw
    if let soft = rd.softState, soft.role == .leader {
      if let other = leaderOfTerm[soft.term], other != node {
        fail("Election Safety: \(other) and \(node) both leaders of term \(soft.term)")
      }
      if leaderOfTerm[soft.term] == nil { leaderships += 1 }
      leaderOfTerm[soft.term] = node
      trace.record(now(), "\(node) became leader of term \(soft.term)")
      if core.lastIndex < maxCommitted {
        fail("Leader Completeness: \(node) leads term \(soft.term) with last index \(core.lastIndex) < \(maxCommitted)")
      }
      var index = max(core.firstIndex, 1)
      while index <= maxCommitted {
        if let t = committedTerm[index], let held = core.term(at: index), held != t {
          fail("Leader Completeness: \(node) (term \(soft.term)) has term \(held) at committed \(index) of term \(t)")
        }
        index += 1
      }
    }
    for entry in rd.entries {
      let prevTerm = core.term(at: entry.index - 1) ?? (rd.entries.first { $0.index == entry.index - 1 }?.term ?? 0)
      let record = (data: Self.fingerprint(isCommand: entry.isCommand, data: entry.data), prevTerm: prevTerm)
      if let seen = entryAt[entry.index]?[entry.term] {
        if seen.data != record.data || (seen.prevTerm != record.prevTerm && entry.index > core.firstIndex) {
          fail("Log Matching: \(node) holds a different entry \(entry.index)@\(entry.term) than another node")
        }
      } else {
        entryAt[entry.index, default: [:]][entry.term] = record
      }
    }
    for entry in rd.committedEntries {
      if let t = committedTerm[entry.index], t != entry.term {
        fail("Commitment: \(node) committed \(entry.index)@\(entry.term) but \(entry.index)@\(t) was committed before")
      }
      committedTerm[entry.index] = entry.term
      maxCommitted = max(maxCommitted, entry.index)
    }
  }
}

extension MultiPaxosEngine: SimulatedEngine {
  public static var logWriteMode: LogWriteMode { .replace }
  public static var supportsMembershipChanges: Bool { true }

  public static func simulationConfiguration(members: [NodeID], options: NodeSimulationOptions) -> PaxosConfiguration {
    var c = PaxosConfiguration()
    c.members = members
    if let quorums = options.variant.paxosQuorums {
      c.phase1Quorum = quorums.phase1
      c.phase2Quorum = quorums.phase2
    }
    c.tickInterval = .milliseconds(10)
    c.electionTimeout = .milliseconds(100)...(.milliseconds(200))
    c.heartbeatInterval = .milliseconds(20)
    c.retransmitInterval = .milliseconds(40)
    c.clockDriftBound = .milliseconds(20)
    c.snapshotEvery = options.snapshotEvery
    c.snapshotRetainEntries = options.retainEntries
    c.snapshotChunkBytes = 128
    c.maxEntriesBytesPerMessage = 256
    c.maxInflightMessages = 8
    c.requestTimeout = .seconds(2)
    return c
  }

  public static func makeChecker(configuration: PaxosConfiguration, trace: SimulationTrace) -> ReplicaChecker<
    MultiPaxosEngine
  > {
    PaxosChecker(
      sessions: configuration.sessions, options: configuration.coreOptions,
      founders: Membership(voters: Set(configuration.members)), trace: trace)
  }

  public static func voters(in status: MultiPaxosStatus) -> [NodeID] { status.membership.allVoters.sorted() }
  public static func members(in status: MultiPaxosStatus) -> [NodeID] { status.membership.allMembers.sorted() }
  public static func isLeader(_ status: MultiPaxosStatus) -> Bool { status.role == .leader }
  public static func appliedIndex(_ status: MultiPaxosStatus) -> UInt64 { status.appliedThrough }
  public static func epoch(_ status: MultiPaxosStatus) -> UInt64 { status.ballot.round }
}

/// Multi-Paxos's invariants, from an oracle that watches every acceptance as it becomes durable on an
/// acceptor's disk (a completed write, or records that survived a crash): one value per ballot and slot, at most
/// one value chosen per slot, every value a node learns is the value chosen there, a durable promise never goes
/// back, and a leader leads only in ballots it owns.
///
/// A value is chosen at a slot when, in one ballot, the voters that accepted it make a phase-2 quorum of the
/// slot's configuration — the newest configuration entry learnt before the slot, else the founding members —
/// or of the configuration before that one (a value chosen under the old configuration before a configuration
/// entry that a later leader resurrected and got chosen; both quorums meet every later phase-1 quorum).
/// Learners' acceptances count in no quorum. A slot's configuration is known once every slot before it has been
/// learnt somewhere, which is so when a node first learns the slot: the check runs then, and for every later
/// acceptance.
final class PaxosChecker: ReplicaChecker<MultiPaxosEngine>, @unchecked Sendable {
  private struct Tally {
    var fingerprint: UInt64
    var acceptors: Set<NodeID>
  }

  private let options: MultiPaxosOptions
  private var acceptances: [Slot: [Ballot: Tally]] = [:]
  private var chosen: [Slot: UInt64] = [:]
  /// The configurations learnt, by the slot of their entry (slot 0: the founding members), ascending.
  private var configurations: [(slot: Slot, membership: Membership)]
  private var durablePromise: [NodeID: Ballot] = [:]
  private var leaderBallots: Set<Ballot> = []

  init(sessions: SessionPolicy, options: MultiPaxosOptions, founders: Membership, trace: SimulationTrace) {
    self.options = options
    self.configurations = [(0, founders)]
    super.init(sessions: sessions, trace: trace)
  }

  override func willCarryOut(_ node: NodeID, ready: ReplicaReady<MultiPaxosEngine>, engine: MultiPaxosEngine) {
    guard let soft = ready.raw.softState, soft.role == .leader else { return }
    if soft.ballot.node != node { fail("\(node) leads in ballot \(soft.ballot), which it does not own") }
    if leaderBallots.insert(soft.ballot).inserted {
      leaderships += 1
      trace.record(now(), "\(node) leads in \(soft.ballot)")
    }
  }

  override func becameDurable(_ node: NodeID, entries: [PaxosEntry], hardState: [UInt8]?) {
    if let bytes = hardState {
      guard let hs = try? PaxosHardState(wireBytes: bytes) else {
        fail("\(node) made an undecodable hard state durable")
        return
      }
      if let before = durablePromise[node], hs.promised < before {
        fail("\(node) made durable promise \(hs.promised) below \(before)")
      }
      durablePromise[node] = hs.promised
    }
    for entry in entries {
      let digest = Self.fingerprint(isCommand: entry.isCommand, data: entry.data)
      var tally = acceptances[entry.index]?[entry.ballot] ?? Tally(fingerprint: digest, acceptors: [])
      if tally.fingerprint != digest {
        fail("Ballot uniqueness: ballot \(entry.ballot) proposed two values for slot \(entry.index)")
      }
      tally.acceptors.insert(node)
      acceptances[entry.index, default: [:]][entry.ballot] = tally
      if let value = chosen[entry.index], value != digest, isChosen(tally, at: entry.index) {
        fail("Safety: two values chosen for slot \(entry.index) (ballot \(entry.ballot))")
      }
    }
  }

  /// Whether the tally's acceptors make a phase-2 quorum of the slot's configuration or of the one before it.
  private func isChosen(_ tally: Tally, at slot: Slot) -> Bool {
    guard let current = configurations.lastIndex(where: { $0.slot < slot }) else { return false }
    for i in [current, current - 1] where i >= 0 {
      let voters = configurations[i].membership.allVoters
      let needed = options.quorums(voters: voters.count).phase2
      if tally.acceptors.intersection(voters).count >= needed { return true }
    }
    return false
  }

  override func didApply(_ node: NodeID, entry: PaxosEntry) {
    let digest = Self.fingerprint(isCommand: entry.isCommand, data: entry.data)
    if let value = chosen[entry.index] {
      if value != digest {
        fail("Learning: \(node) learned slot \(entry.index) with a value that is not the one chosen there")
      }
      return
    }
    var values: Set<UInt64> = []
    for (ballot, tally) in acceptances[entry.index] ?? [:] where isChosen(tally, at: entry.index) {
      values.insert(tally.fingerprint)
      trace.record(now(), "oracle: slot \(entry.index) chosen in \(ballot)")
    }
    if values.count > 1 { fail("Safety: two values chosen for slot \(entry.index)") }
    guard values.contains(digest) else {
      fail("Learning: \(node) learned slot \(entry.index), but that value is not chosen there")
      return
    }
    chosen[entry.index] = digest
    if let membership = entry.membership {
      let i = configurations.firstIndex { $0.slot > entry.index } ?? configurations.count
      configurations.insert((entry.index, membership), at: i)
    }
  }
}
