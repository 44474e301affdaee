public import QuorumCore
import QuorumKV
public import QuorumPaxos

/// The shape of one simulated Multi-Paxos run.
public struct PaxosSimulationOptions: Sendable {
  /// Acceptors (every one also proposes when it leads, and learns).
  public var nodes = 3
  /// The phase-1 quorum; `nil` for the smallest that meets every phase-2 quorum (a majority by default).
  public var phase1Quorum: Int?
  /// The phase-2 quorum; `nil` for a majority (or the smallest that meets every phase-1 quorum).
  public var phase2Quorum: Int?
  /// Concurrent clients.
  public var clients = 4
  /// The most operations one client performs. Clients work until the healed phase begins.
  public var operationsPerClient = 200
  /// Pause between one client's operations (unless ``thinkTimes`` chooses one by seed).
  public var thinkTime = DelayDistribution.uniform(.zero, .milliseconds(40))
  /// The pauses runs choose from, by seed (`(seed / 2) % count`, so that every pause meets both idle-heartbeat
  /// factors): with the default, half the runs pause up to 40 ms and half up to 400 ms, leaving the cluster
  /// idle at times. Empty keeps ``thinkTime``.
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
  /// Take a snapshot after this many applied slots.
  public var snapshotEvery = 25
  /// How long encoding and storing a snapshot takes. As in `MultiPaxosNode`, it runs in the background: the
  /// node goes on stepping and applying meanwhile, and records the snapshot (compacting its log) afterwards.
  public var snapshotLatency = DelayDistribution.uniform(.microseconds(100), .milliseconds(40))
  /// Slots kept before a snapshot's index.
  public var retainEntries = 4
  /// A client retries a request that got no answer for this long.
  public var requestTimeout = VirtualDuration.milliseconds(400)
  /// The consistency levels clients read at (each read picks one at random).
  public var readConsistencies: [ReadConsistency] = [.linearizable, .lease]
  /// The faults the nemesis may choose from (membership changes and transfers do not apply to Paxos).
  public var nemesis: Set<NemesisAction> = [
    .partition, .oneWayCut, .isolateLeader, .heal, .crash, .restart, .lossyNetwork, .perfectNetwork,
    .lostPeerReport,
  ]
  /// Time between nemesis actions.
  public var nemesisInterval = DelayDistribution.uniform(.milliseconds(50), .milliseconds(400))
  /// The idle-heartbeat factors runs choose from, by seed (`seed % count`): with the default, odd seeds run
  /// leaders that idle (``QuorumPaxos/MultiPaxosOptions/idleHeartbeatFactor`` 3) and even ones leaders that never
  /// do. Empty keeps ``core``'s own factor.
  public var idleHeartbeatFactors = [1, 3]
  /// The pure core's options (quorums are filled in from ``phase1Quorum``/``phase2Quorum``).
  public var core: MultiPaxosOptions = {
    var o = MultiPaxosOptions()
    o.electionTimeoutMinTicks = 10
    o.electionTimeoutMaxTicks = 20
    o.heartbeatTicks = 2
    o.retransmitTicks = 3
    o.maxEntriesBytesPerMessage = 256
    o.maxInflightMessages = 8
    o.snapshotChunkBytes = 128
    o.leaseDurationNanos = 10 * 10_000_000 * 9 / 10  // 90% of the minimum election timeout
    return o
  }()

  /// Defaults: 3 nodes with majority quorums, 4 clients on 4 keys, 3 s of chaos with every fault.
  public init() {}

  /// The quorum sizes in force.
  public var quorums: (phase1: Int, phase2: Int) {
    switch (phase1Quorum, phase2Quorum) {
    case (let q1?, let q2?): return (q1, q2)
    case (let q1?, nil): return (q1, nodes - q1 + 1)
    case (nil, let q2?): return (nodes - q2 + 1, q2)
    case (nil, nil): return (nodes / 2 + 1, nodes / 2 + 1)
    }
  }
}

/// What a Multi-Paxos run did.
public struct PaxosSimulationStats: Sendable, CustomStringConvertible {
  /// Events processed.
  public var events = 0
  /// Distinct leader ballots seen.
  public var leaderships = 0
  /// Ticks of leaders heartbeating less often (``QuorumPaxos/MultiPaxosCore/isIdle``).
  public var idleLeaderTicks = 0
  /// Lost-peer reports the nemesis made (``NemesisAction/lostPeerReport``), crashes' included.
  public var lostPeerReports = 0
  /// Crashes injected.
  public var crashes = 0
  /// Partitions and cuts injected.
  public var partitions = 0
  /// Snapshots installed from a leader.
  public var snapshotsInstalled = 0
  /// Snapshots taken in the background and recorded (compacting the log).
  public var snapshotsTaken = 0
  /// Slots known chosen by the oracle.
  public var slotsChosen = 0
  /// Client operations completed (with a known outcome).
  public var operationsCompleted = 0
  /// Client retries.
  public var retries = 0
  /// Virtual time at the end.
  public var endTime = VirtualTime.zero

  /// Creates empty statistics.
  public init() {}

  public var description: String {
    "events=\(events) leaderships=\(leaderships) crashes=\(crashes) partitions=\(partitions) "
      + "snapshots=\(snapshotsTaken)/\(snapshotsInstalled) chosen=\(slotsChosen) ops=\(operationsCompleted) retries=\(retries) "
      + "idle-leader-ticks=\(idleLeaderTicks) lost-peer-reports=\(lostPeerReports) end=\(endTime)"
  }
}

/// A whole Multi-Paxos cluster of ``QuorumPaxos/MultiPaxosCore`` values with key-value clients, run in
/// virtual time under the same seeded nemesis as ``RaftSimulation``.
///
/// Each node's shell behaves like the real `MultiPaxosNode`: it takes a ready, sends the leader's accepts,
/// writes the rest to a ``CrashableStore`` and waits a simulated fsync before sending the promises and
/// acceptances that depend on it and applying chosen slots. Crashes lose unsynced writes (keeping a random
/// prefix).
///
/// An oracle watches every acceptance as it becomes durable and knows, for every slot, which value (if any)
/// a phase-2 quorum accepted in one ballot: the value *chosen*. After every event the run checks that
/// - a ballot proposes one value per slot;
/// - at most one value is ever chosen per slot;
/// - every value a node learns (applies) for a slot is the value chosen there;
/// - a node's durable promise never moves backwards, and only a ballot's owner leads in it;
/// - no node whose lease read is valid has promised a lower ballot than a leader already elected.
/// After the healed phase every client operation must have completed and the client history must be
/// linearizable. Any violation throws a ``SimulationFailure``.
public final class PaxosSimulation {
  /// The run's seed.
  public let seed: UInt64
  /// The run's options.
  public let options: PaxosSimulationOptions
  /// What the run did.
  public var stats: PaxosSimulationStats { shell.statistics }
  /// The client history (filled as the run goes).
  public var history: KVHistory { shell.clients.history }

  private let shell: CoreSimulationShell<PaxosDriver>

  /// Prepares a run; nothing happens until ``run()``.
  public init(seed: UInt64, options: PaxosSimulationOptions = PaxosSimulationOptions(), trace: SimulationTrace) {
    self.seed = seed
    var options = options
    if !options.thinkTimes.isEmpty {
      options.thinkTime = options.thinkTimes[Int(seed / 2 % UInt64(options.thinkTimes.count))]
    }
    self.options = options
    self.shell = CoreSimulationShell(driver: PaxosDriver(options: options, seed: seed), seed: seed, trace: trace)
  }

  /// Runs the chaos phase, then the healed phase, checking invariants throughout.
  /// - Throws: ``SimulationFailure`` on any violated invariant, unfinished operation or non-linearizable history.
  public func run() throws {
    try shell.run()
  }
}

/// Multi-Paxos's part of a ``PaxosSimulation``: its cores and the oracle that knows which value each slot
/// chose.
final class PaxosDriver: CoreSimulationDriver {
  /// What a Multi-Paxos node keeps on disk.
  struct Durable: SimulatedDurable {
    var hardState = PaxosHardState()
    var entries: [Slot: PaxosEntry] = [:]
    var snapshot: PaxosSnapshot?

    mutating func persist(_ rd: PaxosReady) {
      if let snapshot = rd.snapshot {
        self.snapshot = snapshot
        entries = entries.filter { $0.key > snapshot.index }
      }
      if let hs = rd.hardState { hardState = hs }
      for entry in rd.entries { entries[entry.index] = entry }
    }

    mutating func compact(below firstKept: Slot) {
      entries = entries.filter { $0.key >= firstKept }
    }
  }

  /// A value some acceptors accepted for a slot in one ballot.
  private struct BallotTally {
    var fingerprint: UInt64
    var acceptors: Set<NodeID>
  }

  let options: PaxosSimulationOptions
  /// The cores' options, with the quorums and the idle-heartbeat factor in force.
  let coreOptions: MultiPaxosOptions
  let foundingMembers: [NodeID]
  let leaseFallsBackToReadIndex = false
  let toleratesForgottenResponses = true
  let tracesLearning = true
  /// Distinct leader ballots seen.
  private(set) var leaderships = 0
  private var acceptances: [Slot: [Ballot: BallotTally]] = [:]
  private var chosen: [Slot: UInt64] = [:]
  private var leaderBallots: Set<Ballot> = []
  /// The highest ballot a leader was elected in.
  private var highestLeaderBallot = Ballot.zero
  private var durablePromise: [NodeID: Ballot] = [:]

  /// Slots known chosen by the oracle.
  var slotsChosen: Int { chosen.count }

  init(options: PaxosSimulationOptions, seed: UInt64) {
    self.options = options
    var core = options.core
    (core.phase1Quorum, core.phase2Quorum) = options.quorums
    if !options.idleHeartbeatFactors.isEmpty {
      core.idleHeartbeatFactor = options.idleHeartbeatFactors[Int(seed % UInt64(options.idleHeartbeatFactors.count))]
    }
    self.coreOptions = core
    self.foundingMembers = (1...max(1, options.nodes)).map { NodeID(UInt64($0)) }
  }

  func foundingCore(_ id: NodeID, random: SeededRandom) -> MultiPaxosCore {
    MultiPaxosCore(id: id, members: foundingMembers, options: coreOptions, random: random)
  }

  func restartedCore(
    _ id: NodeID, from durable: Durable, random: SeededRandom, in shell: Shell
  ) throws -> MultiPaxosCore {
    // Whatever survived the crash was accepted, even if the node never said so.
    for slot in durable.entries.keys.sorted() {
      if let entry = durable.entries[slot] { try recordAcceptance(entry, by: id, in: shell) }
    }
    durablePromise[id] = max(durablePromise[id] ?? .zero, durable.hardState.promised)
    let entries = durable.entries.keys.sorted().compactMap { durable.entries[$0] }
    // What MultiPaxosEngine.recover checks before a node starts: an honest log never holds a slot further past
    // the ones before it than any acceptor stores (the crash histories here test that claim).
    do {
      try MultiPaxosCore.validateRecovered(snapshot: durable.snapshot, entries: entries)
    } catch {
      throw SimulationFailure("\(id) cannot restart from its durable log: \(error)")
    }
    return MultiPaxosCore(
      id: id, members: foundingMembers, options: coreOptions, hardState: durable.hardState,
      snapshot: durable.snapshot, entries: entries, random: random)
  }

  func describe(_ durable: Durable) -> String {
    "promised \(durable.hardState.promised), \(durable.entries.count) entries"
  }

  func describe(_ n: Shell.Node) -> String {
    "\(n.id){\(n.up ? n.core.role.description : "down") \(n.core.promised) last=\(n.core.lastSlot) "
      + "chosen=\(n.core.chosenThrough) applied=\(n.applied)}"
  }

  /// Captures the applied state, as `MultiPaxosNode` does.
  func snapshot(of node: Shell.Node) -> PaxosSnapshot? {
    PaxosSnapshot(index: node.applied, data: node.machine.snapshot())
  }

  func canRecord(_ snapshot: PaxosSnapshot, in core: MultiPaxosCore) -> Bool { true }

  func nemesis(_ action: NemesisAction, in shell: Shell) {}  // Membership changes and transfers are Raft's.

  func addCounts(to stats: inout PaxosSimulationStats) {
    stats.leaderships = leaderships
    stats.slotsChosen = slotsChosen
  }

  // MARK: - Oracle and invariants

  /// Records that `node` durably accepted `entry` in its ballot, and decides whether its slot is now chosen.
  private func recordAcceptance(_ entry: PaxosEntry, by node: NodeID, in shell: Shell) throws {
    let digest = entry.fingerprint
    var tally = acceptances[entry.index]?[entry.ballot] ?? BallotTally(fingerprint: digest, acceptors: [])
    if tally.fingerprint != digest {
      throw SimulationFailure(
        "Ballot uniqueness: ballot \(entry.ballot) proposed two values for slot \(entry.index) (\(node) accepted one)")
    }
    tally.acceptors.insert(node)
    acceptances[entry.index, default: [:]][entry.ballot] = tally
    guard tally.acceptors.count >= coreOptions.phase2Quorum else { return }
    if let value = chosen[entry.index] {
      if value != digest {
        throw SimulationFailure(
          "Safety: two values chosen for slot \(entry.index); the second in ballot \(entry.ballot) by "
            + "\(tally.acceptors.sorted())")
      }
    } else {
      chosen[entry.index] = digest
      shell.trace.record(shell.now, "oracle: slot \(entry.index) chosen in \(entry.ballot) (\(entry.kind))")
    }
  }

  /// Checks that a node's durable promise never moves backwards, and records its durable acceptances.
  func readyPersisted(_ rd: PaxosReady, of node: Shell.Node, in shell: Shell) throws {
    if let hs = rd.hardState {
      let promised = durablePromise[node.id] ?? .zero
      if hs.promised < promised {
        throw SimulationFailure("\(node.id) made durable promise \(hs.promised) below \(promised)")
      }
      durablePromise[node.id] = hs.promised
    }
    for entry in rd.entries { try recordAcceptance(entry, by: node.id, in: shell) }
  }

  /// Checks that a node learns only the value chosen in a slot.
  func checkApplied(_ entry: PaxosEntry, by node: Shell.Node) throws {
    guard let value = chosen[entry.index] else {
      throw SimulationFailure(
        "Learning: \(node.id) learned \(entry) at slot \(entry.index), but no value is chosen there")
    }
    if value != entry.fingerprint {
      throw SimulationFailure(
        "Learning: \(node.id) learned \(entry) at slot \(entry.index), which is not the value chosen there")
    }
  }

  /// Leases: no leader whose lease read is valid now may lead in a lower ballot than a leader already elected,
  /// or a lease read could miss that leader's writes.
  func checkLeases(in shell: Shell) throws {
    for node in shell.nodes.values where node.up && node.core.promised < highestLeaderBallot {
      guard let index = node.core.leaseReadIndex(now: shell.now.nanoseconds) else { continue }
      throw SimulationFailure(
        "Lease: \(node.id) (ballot \(node.core.promised)) would serve a lease read at slot \(index), but "
          + "\(highestLeaderBallot.node) was elected leader in \(highestLeaderBallot)")
    }
  }

  func checkReady(_ rd: PaxosReady, of node: Shell.Node, in shell: Shell) throws {
    if let soft = rd.softState, soft.role == .leader {
      if soft.ballot.node != node.id {
        throw SimulationFailure("\(node.id) leads in ballot \(soft.ballot), which it does not own")
      }
      if leaderBallots.insert(soft.ballot).inserted {
        leaderships += 1
        highestLeaderBallot = max(highestLeaderBallot, soft.ballot)
        shell.trace.record(shell.now, "\(node.id) leads in \(soft.ballot)")
      }
    }
  }
}

extension MultiPaxosCore: SimulatedCore {
  var isLeader: Bool { role == .leader }
  var firstIndex: Slot { firstSlot }

  mutating func proposeCommand(_ data: [UInt8]) -> SimulatedProposal<PaxosProposalTag> {
    do {
      let slot = try propose(data)
      return .accepted(index: slot, tag: PaxosProposalTag(ballot: entry(at: slot)?.ballot ?? promised, data: data))
    } catch .notLeader(let hint) {
      return .redirect(hint)
    } catch {
      return .retry
    }
  }

  /// As `MultiPaxosEngine` matches: the same bytes in the ballot they were proposed in. The same bytes chosen in a
  /// later ballot may be another leader's identical entry (two session registrations stamped in the same
  /// millisecond), whose answer is not this client's: the client retries.
  static func proposal(_ tag: PaxosProposalTag, matches entry: PaxosEntry) -> Bool {
    tag.ballot == entry.ballot && tag.data == entry.data
  }
}

/// What a simulated Multi-Paxos proposal is recognised by when its slot is chosen.
struct PaxosProposalTag: Sendable {
  var ballot: Ballot
  var data: [UInt8]
}

extension PaxosReady: SimulatedReady {
  var entriesToApply: [PaxosEntry] { chosenEntries }
}

extension PaxosEntry: SimulatedEntry {
  var isCommand: Bool { kind == .command }
  var fingerprint: UInt64 { Self.fingerprint(salt: 0, kind: kind.rawValue, data: data) }
}

extension PaxosSnapshot: SimulatedSnapshot {}
extension PaxosOutgoing: SimulatedOutgoing {}
extension PaxosReadState: SimulatedReadState {}

extension PaxosSimulationOptions: CoreSimulationOptions {}
extension PaxosSimulationStats: CoreSimulationStatistics {}
