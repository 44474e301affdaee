import QuorumCore
public import QuorumPaxos

/// The shape of one simulated single-decree Paxos run.
public struct SynodSimulationOptions: Sendable {
  /// Acceptors (identifiers 1, 2, …).
  public var acceptors = 3
  /// Proposers (identifiers 11, 12, …), each proposing its own value.
  public var proposers = 3
  /// Learners (identifiers 21, 22, …).
  public var learners = 2
  /// The phase-1 quorum; `nil` for the smallest that meets every phase-2 quorum (a majority by default).
  public var phase1Quorum: Int?
  /// The phase-2 quorum; `nil` for a majority (or the smallest that meets every phase-1 quorum).
  public var phase2Quorum: Int?
  /// Whether proposer 11 owns the lowest ballot and skips phase 1 on its first attempt; `nil` decides per
  /// seed.
  public var distinguishedProposer: Bool?
  /// Virtual time per tick.
  public var tick = VirtualDuration.milliseconds(10)
  /// Proposers first propose at a random time in this window (short: they duel).
  public var proposeWindow = VirtualDuration.milliseconds(30)
  /// How long faults are injected before the healed phase.
  public var chaosDuration = VirtualDuration.seconds(1)
  /// How long the healed phase may take for every proposer and learner to know the chosen value.
  public var healDeadline = VirtualDuration.seconds(30)
  /// Latency of a durable write.
  public var fsyncLatency = DelayDistribution.uniform(.microseconds(50), .milliseconds(2))
  /// The faults the nemesis may choose from (``NemesisAction/isolateLeader`` isolates a proposer).
  public var nemesis: Set<NemesisAction> = [
    .partition, .oneWayCut, .isolateLeader, .heal, .crash, .restart, .lossyNetwork, .perfectNetwork,
  ]
  /// Time between nemesis actions.
  public var nemesisInterval = DelayDistribution.uniform(.milliseconds(10), .milliseconds(150))
  /// Ticks before resending, and the back-off bounds, of the cores.
  public var retransmitTicks = 3
  /// The first back-off bound in ticks.
  public var backoffInitialTicks = 2
  /// The largest back-off bound in ticks.
  public var backoffMaxTicks = 16

  /// Defaults: 3 acceptors, 3 dueling proposers, 2 learners, 1 s of chaos with every fault.
  public init() {}

  /// The quorum sizes in force.
  public var quorums: (phase1: Int, phase2: Int) {
    switch (phase1Quorum, phase2Quorum) {
    case (let q1?, let q2?): return (q1, q2)
    case (let q1?, nil): return (q1, acceptors - q1 + 1)
    case (nil, let q2?): return (acceptors - q2 + 1, q2)
    case (nil, nil): return (acceptors / 2 + 1, acceptors / 2 + 1)
    }
  }
}

/// What a single-decree run did.
public struct SynodSimulationStats: Sendable, CustomStringConvertible {
  /// Events processed.
  public var events = 0
  /// Ballots started by all proposers.
  public var ballots = 0
  /// Crashes injected.
  public var crashes = 0
  /// Partitions and cuts injected.
  public var partitions = 0
  /// The ballot in which a quorum first accepted the chosen value.
  public var chosenIn: Ballot?
  /// Virtual time at the end.
  public var endTime = VirtualTime.zero

  /// Creates empty statistics.
  public init() {}

  public var description: String {
    "events=\(events) ballots=\(ballots) crashes=\(crashes) partitions=\(partitions) "
      + "chosen-in=\(chosenIn.map(\.description) ?? "-") end=\(endTime)"
  }
}

/// A single-decree Paxos instance — acceptor, proposer and learner cores as separate nodes — run in virtual
/// time under a seeded nemesis: three proposers race to choose their own values while the network
/// partitions, drops, duplicates, reorders and delays, and nodes crash, keeping only what they synced.
///
/// An oracle sees every acceptance become durable and knows when a phase-2 quorum has accepted one ballot:
/// the chosen value. After every event it checks that a ballot carries one value, that at most one value is
/// ever chosen, and that every value a proposer returns or a learner learns is the chosen one. After healing,
/// every proposer must return and every learner must learn within the deadline.
public final class SynodSimulation {
  private typealias Value = UInt64

  private enum Role {
    case acceptor(AcceptorCore<Value>, CrashableStore<AcceptorState<Value>>)
    case proposer(ProposerCore<Value>, CrashableStore<ProposerState>)
    case learner(LearnerCore<Value>)
  }

  private final class Node {
    let id: NodeID
    var role: Role
    var up = true
    var incarnation: UInt64 = 0
    var inbox: [(NodeID, SynodMessage<Value>)] = []
    var ticksDue = 0
    var wantsToPropose = false
    var wantsToAsk = false
    var wantsToStart = false
    var busy = false
    var held: [SynodOutgoing<Value>] = []
    var result: Value?

    init(id: NodeID, role: Role) {
      self.id = id
      self.role = role
    }
  }

  private enum Event {
    case tick(NodeID, UInt64)
    case deliver(Envelope<SynodMessage<Value>>)
    case fsyncDone(NodeID, UInt64)
    case propose(NodeID)
    case nemesis
    case heal
  }

  /// The run's seed.
  public let seed: UInt64
  /// The run's options.
  public let options: SynodSimulationOptions
  /// What the run did.
  public private(set) var stats = SynodSimulationStats()

  private let trace: SimulationTrace
  private let synodOptions: SynodOptions
  private let acceptorIDs: [NodeID]
  private let proposerIDs: [NodeID]
  private let learnerIDs: [NodeID]
  private var rng: SeededRandom
  private var now = VirtualTime.zero
  private var queue = EventQueue<Event>()
  private var network: SimulatedNetwork
  private var nodes: [NodeID: Node] = [:]
  private var healed = false

  // The oracle.
  private var tallies: [Ballot: (value: Value, acceptors: Set<NodeID>)] = [:]
  private var chosen: Value?

  /// Prepares a run; nothing happens until ``run()``.
  public init(seed: UInt64, options: SynodSimulationOptions = SynodSimulationOptions(), trace: SimulationTrace) {
    self.seed = seed
    self.options = options
    self.trace = trace
    var rng = SeededRandom(seed: seed)
    acceptorIDs = (1...max(1, options.acceptors)).map { NodeID(UInt64($0)) }
    proposerIDs = (1...max(1, options.proposers)).map { NodeID(UInt64(10 + $0)) }
    learnerIDs = options.learners > 0 ? (1...options.learners).map { NodeID(UInt64(20 + $0)) } : []
    let distinguished = options.distinguishedProposer ?? Bool.random(using: &rng)
    let (q1, q2) = options.quorums
    synodOptions = SynodOptions(
      phase1Quorum: q1, phase2Quorum: q2, retransmitTicks: options.retransmitTicks,
      backoffInitialTicks: options.backoffInitialTicks, backoffMaxTicks: options.backoffMaxTicks,
      distinguishedProposer: distinguished ? proposerIDs.first : nil)
    self.rng = rng
    network = SimulatedNetwork(defaultFaults: LinkFaults(delay: .uniform(.microseconds(100), .milliseconds(2))))
  }

  // MARK: - Running

  /// Runs the chaos phase, then the healed phase, checking the invariants after every event.
  /// - Throws: ``SimulationFailure`` on a violated invariant or if the instance does not finish after healing.
  public func run() throws {
    for id in acceptorIDs {
      addNode(id, .acceptor(AcceptorCore(id: id, learners: learnerIDs), CrashableStore(AcceptorState())))
    }
    for id in proposerIDs {
      let core = ProposerCore<Value>(
        id: id, acceptors: acceptorIDs, learners: learnerIDs, options: synodOptions, random: rng.fork())
      addNode(id, .proposer(core, CrashableStore(ProposerState())))
      nodes[id]?.wantsToStart = true
      let at = VirtualDuration(nanoseconds: UInt64.random(in: 0...options.proposeWindow.nanoseconds, using: &rng))
      queue.schedule(.propose(id), at: now + at)
    }
    for id in learnerIDs {
      addNode(id, .learner(LearnerCore(id: id, acceptors: acceptorIDs, peers: learnerIDs, options: synodOptions)))
    }
    queue.schedule(.nemesis, at: now + options.nemesisInterval.sample(&rng))
    queue.schedule(.heal, at: now + options.chaosDuration)
    let deadline = now + options.chaosDuration + options.healDeadline
    while let (time, event) = queue.pop() {
      now = time
      if now > deadline { break }
      stats.events += 1
      try handle(event)
      if healed && finished { break }
    }
    stats.endTime = now
    guard finished else {
      let missing = (proposerIDs + learnerIDs).filter { nodes[$0]?.result == nil }
      throw SimulationFailure(
        "liveness: \(missing) do not know the chosen value \(options.healDeadline) after healing "
          + "(chosen: \(chosen.map(String.init) ?? "nothing"))")
    }
  }

  private var finished: Bool {
    (proposerIDs + learnerIDs).allSatisfy { nodes[$0]?.result != nil }
  }

  private func addNode(_ id: NodeID, _ role: Role) {
    nodes[id] = Node(id: id, role: role)
    let phase = VirtualDuration(nanoseconds: UInt64.random(in: 0..<options.tick.nanoseconds, using: &rng))
    queue.schedule(.tick(id, 0), at: now + phase)
  }

  private func handle(_ event: Event) throws {
    switch event {
    case .tick(let id, let incarnation):
      guard let node = nodes[id], node.up, node.incarnation == incarnation else { return }
      queue.schedule(.tick(id, incarnation), at: now + options.tick)
      node.ticksDue += 1
      try process(node)
    case .deliver(let envelope):
      guard let node = nodes[envelope.to], node.up else { return }
      trace.record(now, "\(envelope.from)->\(envelope.to) \(envelope.payload)")
      node.inbox.append((envelope.from, envelope.payload))
      try process(node)
    case .fsyncDone(let id, let incarnation):
      guard let node = nodes[id], node.up, node.incarnation == incarnation else { return }
      try finishSync(node)
    case .propose(let id):
      guard let node = nodes[id] else { return }
      node.wantsToPropose = true
      try process(node)
    case .nemesis:
      guard !healed else { return }
      nemesis()
      queue.schedule(.nemesis, at: now + options.nemesisInterval.sample(&rng))
    case .heal:
      try heal()
    }
  }

  // MARK: - Node shells

  private func process(_ node: Node) throws {
    guard node.up, !node.busy else { return }
    let messages = node.inbox
    node.inbox = []
    let ticks = node.ticksDue
    node.ticksDue = 0
    switch node.role {
    case .acceptor(var core, var disk):
      var effects: [AcceptorEffect<Value>] = []
      for (from, message) in messages { effects += core.step(.message(from: from, message)) }
      var newest: AcceptorState<Value>?
      for case .persist(let state) in effects { newest = state }
      let sends = effects.compactMap { effect -> SynodOutgoing<Value>? in
        if case .send(let m) = effect { return m }
        return nil
      }
      if let newest { disk.update { $0 = newest } }
      node.role = .acceptor(core, disk)
      hold(node, sends, sync: newest != nil)
    case .proposer(var core, var disk):
      var effects: [ProposerEffect<Value>] = []
      let ballotsBefore = core.ballotsStarted
      defer { stats.ballots += core.ballotsStarted - ballotsBefore }
      if node.wantsToStart {
        // The shell reserves rounds right after recovery and handles nothing before the write is durable.
        node.wantsToStart = false
        effects += core.step(.start)
      }
      if node.wantsToPropose {
        node.wantsToPropose = false
        effects += core.step(.propose(UInt64(node.id.rawValue) * 1000 + seed % 1000))
      }
      for (from, message) in messages { effects += core.step(.message(from: from, message)) }
      for _ in 0..<ticks { effects += core.step(.tick) }
      var sync = false
      var sends: [SynodOutgoing<Value>] = []
      for effect in effects {
        switch effect {
        case .persist(let state):
          disk.update { $0 = state }
          sync = true
        case .send(let m):
          sends.append(m)
        case .chosen(let value):
          try observe(value, at: node, what: "proposer returned")
        }
      }
      node.role = .proposer(core, disk)
      hold(node, sends, sync: sync)
    case .learner(var core):
      var effects: [LearnerEffect<Value>] = []
      if node.wantsToAsk {
        node.wantsToAsk = false
        effects += core.step(.ask)
      }
      for (from, message) in messages { effects += core.step(.message(from: from, message)) }
      for _ in 0..<ticks { effects += core.step(.tick) }
      var sends: [SynodOutgoing<Value>] = []
      for effect in effects {
        switch effect {
        case .send(let m): sends.append(m)
        case .learned(let value): try observe(value, at: node, what: "learner learned")
        }
      }
      node.role = .learner(core)
      hold(node, sends, sync: false)
    }
  }

  /// Sends at once, or after a simulated fsync when a durable write came first.
  private func hold(_ node: Node, _ sends: [SynodOutgoing<Value>], sync: Bool) {
    guard sync else {
      for m in sends { send(from: node.id, m) }
      return
    }
    node.held = sends
    node.busy = true
    queue.schedule(.fsyncDone(node.id, node.incarnation), at: now + options.fsyncLatency.sample(&rng))
  }

  private func finishSync(_ node: Node) throws {
    switch node.role {
    case .acceptor(let core, var disk):
      disk.sync()
      try recordAcceptance(disk.durable, by: node.id)
      node.role = .acceptor(core, disk)
    case .proposer(let core, var disk):
      disk.sync()
      node.role = .proposer(core, disk)
    case .learner:
      break
    }
    node.busy = false
    let held = node.held
    node.held = []
    for m in held { send(from: node.id, m) }
    try process(node)
  }

  private func send(from: NodeID, _ outgoing: SynodOutgoing<Value>) {
    let envelope = Envelope(from: from, to: outgoing.to, payload: outgoing.message)
    for time in network.route(Link(from: from, to: outgoing.to), at: now, using: &rng) {
      queue.schedule(.deliver(envelope), at: time)
    }
  }

  // MARK: - Oracle

  private func recordAcceptance(_ state: AcceptorState<Value>, by acceptor: NodeID) throws {
    guard let accepted = state.accepted else { return }
    var tally = tallies[accepted.ballot] ?? (accepted.value, [])
    if tally.value != accepted.value {
      throw SimulationFailure(
        "Ballot uniqueness: \(accepted.ballot) carried \(tally.value) and \(accepted.value) (at \(acceptor))")
    }
    tally.acceptors.insert(acceptor)
    tallies[accepted.ballot] = tally
    guard tally.acceptors.count >= synodOptions.phase2Quorum else { return }
    if let chosen, chosen != accepted.value {
      throw SimulationFailure(
        "Safety: \(accepted.value) chosen in \(accepted.ballot) by \(tally.acceptors.sorted()) after \(chosen) was "
          + "chosen in \(stats.chosenIn.map(\.description) ?? "?")")
    }
    if chosen == nil {
      chosen = accepted.value
      stats.chosenIn = accepted.ballot
      trace.record(now, "oracle: \(accepted.value) chosen in \(accepted.ballot) by \(tally.acceptors.sorted())")
    }
  }

  private func observe(_ value: Value, at node: Node, what: String) throws {
    guard let chosen else {
      throw SimulationFailure("\(node.id): \(what) \(value), but no value is chosen")
    }
    if value != chosen {
      throw SimulationFailure("\(node.id): \(what) \(value), but \(chosen) is the chosen value")
    }
    if let previous = node.result, previous != value {
      throw SimulationFailure("\(node.id): \(what) \(value) after \(previous)")
    }
    node.result = value
    trace.record(now, "\(node.id): \(what) \(value)")
  }

  // MARK: - Nemesis

  private var allIDs: [NodeID] { acceptorIDs + proposerIDs + learnerIDs }

  private func nemesis() {
    let actions = NemesisAction.allCases.filter { options.nemesis.contains($0) }
    guard !actions.isEmpty else { return }
    let action = actions[Int.random(in: 0..<actions.count, using: &rng)]
    let ids = allIDs
    // The faults the Raft and Multi-Paxos simulations share; Synod has its own leaderless isolation and a
    // lossier network.
    if [.partition, .oneWayCut, .heal, .perfectNetwork].contains(action),
      let cut = action.applyToNetwork(&network, members: ids, leader: { nil }, rng: &rng, trace: trace, now: now)
    {
      if cut { stats.partitions += 1 }
      return
    }
    switch action {
    case .partition, .oneWayCut, .heal, .perfectNetwork:
      break  // Done above.
    case .isolateLeader:
      let proposer = proposerIDs[Int.random(in: 0..<proposerIDs.count, using: &rng)]
      network.partition([proposer], ids.filter { $0 != proposer })
      stats.partitions += 1
      trace.record(now, "nemesis: isolate proposer \(proposer)")
    case .crash:
      let running = ids.filter { nodes[$0]?.up == true }
      guard running.count > 1 else { return }
      crash(running[Int.random(in: 0..<running.count, using: &rng)])
    case .restart:
      let down = ids.filter { nodes[$0]?.up == false }
      guard !down.isEmpty else { return }
      try? restart(down[Int.random(in: 0..<down.count, using: &rng)])
    case .lossyNetwork:
      network.defaultFaults = LinkFaults(
        dropProbability: Double.random(in: 0.01...0.3, using: &rng),
        duplicateProbability: Double.random(in: 0...0.2, using: &rng),
        delay: .uniform(.microseconds(100), .milliseconds(UInt64.random(in: 2...30, using: &rng))),
        reorderProbability: Double.random(in: 0...0.3, using: &rng), reorderWindow: .milliseconds(20))
      trace.record(now, "nemesis: lossy network \(network.defaultFaults)")
    case .membershipChange, .transferLeadership, .lostPeerReport:
      break
    }
  }

  private func crash(_ id: NodeID) {
    guard let node = nodes[id], node.up else { return }
    node.up = false
    node.incarnation += 1
    node.busy = false
    node.held = []
    node.inbox = []
    node.ticksDue = 0
    switch node.role {
    case .acceptor(let core, var disk):
      disk.crash(using: &rng)
      node.role = .acceptor(core, disk)
    case .proposer(let core, var disk):
      disk.crash(using: &rng)
      node.role = .proposer(core, disk)
    case .learner:
      break
    }
    network.setDown(id, true)
    stats.crashes += 1
    trace.record(now, "nemesis: crash \(id)")
  }

  private func restart(_ id: NodeID) throws {
    guard let node = nodes[id], !node.up else { return }
    switch node.role {
    case .acceptor(_, let disk):
      // Whatever survived the crash was accepted, even if the acceptor never said so.
      try recordAcceptance(disk.durable, by: id)
      node.role = .acceptor(AcceptorCore(id: id, learners: learnerIDs, state: disk.durable), disk)
    case .proposer(_, let disk):
      let core = ProposerCore<Value>(
        id: id, acceptors: acceptorIDs, learners: learnerIDs, options: synodOptions, state: disk.durable,
        random: rng.fork())
      node.role = .proposer(core, disk)
      node.wantsToStart = true
      // Its client is still waiting: it proposes again (a restarted proposer remembers nothing else).
      if node.result == nil { node.wantsToPropose = true }
    case .learner:
      node.role = .learner(LearnerCore(id: id, acceptors: acceptorIDs, peers: learnerIDs, options: synodOptions))
      node.result = nil
      if healed { node.wantsToAsk = true }
    }
    node.up = true
    network.setDown(id, false)
    trace.record(now, "nemesis: restart \(id)")
    queue.schedule(.tick(id, node.incarnation), at: now + options.tick)
  }

  private func heal() throws {
    healed = true
    network.heal()
    network.defaultFaults = LinkFaults(delay: .uniform(.microseconds(100), .milliseconds(2)))
    for id in allIDs where nodes[id]?.up == false { try restart(id) }
    for id in learnerIDs where nodes[id]?.result == nil {
      nodes[id]?.wantsToAsk = true
      if let node = nodes[id] { try process(node) }
    }
    for id in proposerIDs where nodes[id]?.result == nil {
      nodes[id]?.wantsToPropose = true
      if let node = nodes[id] { try process(node) }
    }
    trace.record(now, "healed")
  }
}
