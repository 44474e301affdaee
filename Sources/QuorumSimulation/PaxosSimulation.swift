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
  /// Pause between one client's operations.
  public var thinkTime = DelayDistribution.uniform(.zero, .milliseconds(40))
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
/// - a node's durable promise never moves backwards, and only a ballot's owner leads in it.
/// After the healed phase every client operation must have completed and the client history must be
/// linearizable. Any violation throws a ``SimulationFailure``.
public final class PaxosSimulation {
  private struct Durable {
    var hardState = PaxosHardState()
    var entries: [Slot: PaxosEntry] = [:]
    var snapshot: PaxosSnapshot?
  }

  private enum Input {
    case message(NodeID, PaxosMessage)
    case tick
    case request(SimulatedKVClients.Request)
  }

  private struct PendingProposal {
    var data: [UInt8]
    var client: Int
    var attempt: UInt64
  }

  private struct WaitingRead {
    var index: Slot
    var client: Int
    var attempt: UInt64
    var key: String
  }

  private final class Node {
    let id: NodeID
    var core: MultiPaxosCore
    var disk: CrashableStore<Durable>
    var machine = ReplicatedStateMachine(KVStore())
    var applied: Slot = 0
    var up = true
    var incarnation: UInt64 = 0
    var inbox: [Input] = []
    var busy = false
    var inFlight: PaxosReady?
    var proposals: [Slot: PendingProposal] = [:]
    var reads: [UInt64: WaitingRead] = [:]
    var waitingReads: [WaitingRead] = []
    var lastSnapshotIndex: Slot = 0
    var durablePromise: Ballot = .zero
    /// A snapshot is being encoded and stored in the background.
    var snapshotInFlight = false
    /// A stored snapshot waiting to be recorded in the core.
    var storedSnapshot: PaxosSnapshot?

    init(id: NodeID, core: MultiPaxosCore, disk: CrashableStore<Durable>) {
      self.id = id
      self.core = core
      self.disk = disk
    }
  }

  private enum Event {
    case tick(NodeID, UInt64)
    case deliver(Envelope<PaxosMessage>)
    case fsyncDone(NodeID, UInt64)
    case snapshotStored(NodeID, UInt64, PaxosSnapshot)
    case client(SimulatedKVClients.Event)
    case nemesis
    case heal
  }

  /// The run's seed.
  public let seed: UInt64
  /// The run's options.
  public let options: PaxosSimulationOptions
  /// What the run did.
  public private(set) var stats = PaxosSimulationStats()
  /// The client history (filled as the run goes).
  public var history: KVHistory { clients.history }

  private let trace: SimulationTrace
  private let coreOptions: MultiPaxosOptions
  private let members: [NodeID]
  private var rng: SeededRandom
  private var now = VirtualTime.zero
  private var queue = EventQueue<Event>()
  private var network: SimulatedNetwork
  private var nodes: [NodeID: Node] = [:]
  private var clients: SimulatedKVClients
  private var healed = false
  private var nextReadID: UInt64 = 0

  // The oracle.
  private struct BallotTally {
    var fingerprint: UInt64
    var acceptors: Set<NodeID>
  }
  private var acceptances: [Slot: [Ballot: BallotTally]] = [:]
  private var chosen: [Slot: UInt64] = [:]
  private var leaderBallots: Set<Ballot> = []

  /// Prepares a run; nothing happens until ``run()``.
  public init(seed: UInt64, options: PaxosSimulationOptions = PaxosSimulationOptions(), trace: SimulationTrace) {
    self.seed = seed
    self.options = options
    self.trace = trace
    self.rng = SeededRandom(seed: seed)
    var core = options.core
    (core.phase1Quorum, core.phase2Quorum) = options.quorums
    if !options.idleHeartbeatFactors.isEmpty {
      core.idleHeartbeatFactor = options.idleHeartbeatFactors[Int(seed % UInt64(options.idleHeartbeatFactors.count))]
    }
    self.coreOptions = core
    self.members = (1...max(1, options.nodes)).map { NodeID(UInt64($0)) }
    self.network = SimulatedNetwork(defaultFaults: LinkFaults(delay: .uniform(.microseconds(100), .milliseconds(2))))
    let voters = options.nodes
    self.clients = SimulatedKVClients(
      settings: .init(
        clients: options.clients, operationsPerClient: options.operationsPerClient, thinkTime: options.thinkTime,
        keys: options.keys, clientLatency: options.clientLatency, requestTimeout: options.requestTimeout,
        readConsistencies: options.readConsistencies),
      firstTarget: { NodeID(UInt64($0 % voters + 1)) })
  }

  // MARK: - Running

  /// Runs the chaos phase, then the healed phase, checking invariants throughout.
  /// - Throws: ``SimulationFailure`` on any violated invariant, unfinished operation or non-linearizable history.
  public func run() throws {
    for id in members {
      let core = MultiPaxosCore(id: id, members: members, options: coreOptions, random: rng.fork())
      let node = Node(id: id, core: core, disk: CrashableStore(Durable()))
      nodes[id] = node
      let phase = VirtualDuration(nanoseconds: UInt64.random(in: 0..<options.tick.nanoseconds, using: &rng))
      queue.schedule(.tick(id, node.incarnation), at: now + phase)
    }
    for c in 0..<options.clients {
      queue.schedule(.client(.next(client: c)), at: now + VirtualDuration.milliseconds(UInt64(c)))
    }
    queue.schedule(.nemesis, at: now + options.nemesisInterval.sample(&rng))
    queue.schedule(.heal, at: now + options.chaosDuration)
    let deadline = now + options.chaosDuration + options.healDeadline
    while let (time, event) = queue.pop() {
      now = time
      if now > deadline { break }
      stats.events += 1
      try handle(event)
      if clients.allDone && healed { break }
    }
    stats.endTime = now
    stats.operationsCompleted = clients.operationsCompleted
    stats.retries = clients.retries
    stats.slotsChosen = chosen.count
    guard clients.allDone else {
      throw SimulationFailure(
        "liveness: \(clients.unfinishedCount) clients unfinished \(options.healDeadline) after healing; "
          + "\(describeNodes())")
    }
    let result = history.checkLinearizability(maxStatesExplored: 5_000_000)
    if let violation = result.violation {
      throw SimulationFailure("client history is not linearizable:\n\(violation.explanation)")
    }
    if !result.isLinearizable {
      throw SimulationFailure("linearizability check did not finish: \(result)")
    }
  }

  private func describeNodes() -> String {
    members.compactMap { nodes[$0] }.map { n in
      "\(n.id){\(n.up ? n.core.role.description : "down") \(n.core.promised) last=\(n.core.lastSlot) "
        + "chosen=\(n.core.chosenThrough) applied=\(n.applied)}"
    }.joined(separator: " ")
  }

  private func handle(_ event: Event) throws {
    switch event {
    case .tick(let id, let incarnation):
      guard let node = nodes[id], node.up, node.incarnation == incarnation else { return }
      queue.schedule(.tick(id, incarnation), at: now + options.tick)
      node.inbox.append(.tick)
      try process(node)
    case .deliver(let envelope):
      guard let node = nodes[envelope.to], node.up else { return }
      trace.record(now, "\(envelope.from)->\(envelope.to) \(envelope.payload)")
      node.inbox.append(.message(envelope.from, envelope.payload))
      try process(node)
    case .fsyncDone(let id, let incarnation):
      guard let node = nodes[id], node.up, node.incarnation == incarnation else { return }
      try finishReady(node)
    case .snapshotStored(let id, let incarnation, let snapshot):
      // A crash before this point lost the unfinished write.
      guard let node = nodes[id], node.up, node.incarnation == incarnation else { return }
      node.snapshotInFlight = false
      // The file is durable before the node hears of it, unless a leader's snapshot superseded it.
      guard node.disk.storeSnapshot(snapshot, in: \.snapshot, index: \.index) else { return }
      node.storedSnapshot = snapshot
      try process(node)
    case .client(.request(let request)):
      guard let node = nodes[request.target], node.up else { return }  // Lost: the client times out.
      node.inbox.append(.request(request))
      try process(node)
    case .client(let event):
      clients.handle(event, now: now, healed: healed, nodes: members, rng: &rng, trace: trace) { event, time in
        queue.schedule(.client(event), at: time)
      }
    case .nemesis:
      guard !healed else { return }
      nemesis()
      queue.schedule(.nemesis, at: now + options.nemesisInterval.sample(&rng))
    case .heal:
      heal()
    }
  }

  // MARK: - Node shell

  private func process(_ node: Node) throws {
    guard node.up, !node.busy else { return }
    let inputs = node.inbox
    node.inbox = []
    for input in inputs {
      switch input {
      case .tick:
        node.core.tick(now: now.nanoseconds)
        if node.core.isIdle { stats.idleLeaderTicks += 1 }
      case .message(let from, let message): node.core.step(message, from: from)
      case .request(let request): handleRequest(node, request)
      }
    }
    try recordStoredSnapshot(node)
    try startReady(node)
  }

  private func startReady(_ node: Node) throws {
    guard node.up, !node.busy, node.core.hasReady else { return }
    let rd = node.core.ready()
    try checkReady(node, rd)
    for m in rd.eagerMessages { send(from: node.id, m) }
    let needsSync = rd.hardState != nil || !rd.entries.isEmpty || rd.snapshot != nil
    if needsSync {
      node.disk.update { d in
        if let snapshot = rd.snapshot {
          d.snapshot = snapshot
          d.entries = d.entries.filter { $0.key > snapshot.index }
        }
        if let hs = rd.hardState { d.hardState = hs }
        for entry in rd.entries { d.entries[entry.index] = entry }
      }
      node.busy = true
      node.inFlight = rd
      queue.schedule(.fsyncDone(node.id, node.incarnation), at: now + options.fsyncLatency.sample(&rng))
    } else {
      node.inFlight = rd
      try finishReady(node)
    }
  }

  private func finishReady(_ node: Node) throws {
    guard let rd = node.inFlight else { return }
    node.disk.sync()
    node.inFlight = nil
    node.busy = false
    if let hs = rd.hardState {
      if hs.promised < node.durablePromise {
        throw SimulationFailure("\(node.id) made durable promise \(hs.promised) below \(node.durablePromise)")
      }
      node.durablePromise = hs.promised
    }
    for entry in rd.entries { try recordAcceptance(entry, by: node.id) }
    for m in rd.messages { send(from: node.id, m) }
    node.core.advance(rd)
    if let snapshot = rd.snapshot {
      do {
        try node.machine.restore(from: snapshot.data)
      } catch {
        throw SimulationFailure("\(node.id) could not restore snapshot at \(snapshot.index): \(error)")
      }
      node.applied = snapshot.index
      node.lastSnapshotIndex = snapshot.index
      stats.snapshotsInstalled += 1
      trace.record(now, "\(node.id) installed snapshot at \(snapshot.index)")
      for slot in node.proposals.keys.sorted() where slot <= snapshot.index {
        if let p = node.proposals.removeValue(forKey: slot) { reply(p.client, p.attempt, .retry) }
      }
    }
    for entry in rd.chosenEntries { try apply(node, entry) }
    for read in rd.readStates {
      guard var waiting = node.reads.removeValue(forKey: read.id) else { continue }
      waiting.index = read.index
      node.waitingReads.append(waiting)
    }
    for id in rd.failedReads {
      if let waiting = node.reads.removeValue(forKey: id) {
        reply(waiting.client, waiting.attempt, .redirect(node.core.leader))
      }
    }
    answerReads(node)
    maybeSnapshot(node)
    try process(node)
  }

  private func apply(_ node: Node, _ entry: PaxosEntry) throws {
    precondition(entry.index == node.applied + 1, "\(node.id) applying \(entry.index) after \(node.applied)")
    node.applied = entry.index
    let digest = fingerprint(entry)
    guard let value = chosen[entry.index] else {
      throw SimulationFailure(
        "Learning: \(node.id) learned \(entry) at slot \(entry.index), but no value is chosen there")
    }
    if value != digest {
      throw SimulationFailure(
        "Learning: \(node.id) learned \(entry) at slot \(entry.index), which is not the value chosen there")
    }
    var outcome: ApplyOutcome<KVResponse>?
    if entry.kind == .command { outcome = node.machine.apply(entry: entry.data, at: entry.index) }
    trace.record(now, "\(node.id) applies slot \(entry.index): \(outcome.map { "\($0)" } ?? "no-op")")
    guard let pending = node.proposals.removeValue(forKey: entry.index) else { return }
    guard entry.kind == .command, pending.data == entry.data, let outcome else {
      reply(pending.client, pending.attempt, .retry)
      return
    }
    switch outcome {
    case .applied(let response), .duplicate(let response, _): reply(pending.client, pending.attempt, .written(response))
    case .sessionRegistered(let id): reply(pending.client, pending.attempt, .registered(id))
    case .responseForgotten:
      // Unlike Raft, Multi-Paxos can choose an old leader's proposal in a later slot after the client's
      // retry succeeded elsewhere and the client moved on: the session refuses to apply it twice. The client
      // stopped waiting for this attempt long ago.
      reply(pending.client, pending.attempt, .retry)
    case .keptAlive, .timeAdvanced, .sessionExpired, .undecodable, .sessionNotOwned, .sessionQuotaExceeded:
      throw SimulationFailure("unexpected apply outcome \(outcome) at \(entry.index) on \(node.id)")
    }
  }

  private func answerReads(_ node: Node) {
    node.waitingReads.removeAll { read in
      guard read.index <= node.applied else { return false }
      reply(read.client, read.attempt, .read(node.machine.machine.value(read.key)))
      return true
    }
  }

  /// Starts a background snapshot of the applied state, as `MultiPaxosNode` does: the state and its slot are
  /// captured now, and the snapshot is stored after ``PaxosSimulationOptions/snapshotLatency``.
  private func maybeSnapshot(_ node: Node) {
    guard !node.snapshotInFlight, node.storedSnapshot == nil,
      node.applied >= node.lastSnapshotIndex + Slot(options.snapshotEvery)
    else { return }
    let snapshot = PaxosSnapshot(index: node.applied, data: node.machine.snapshot())
    node.snapshotInFlight = true
    queue.schedule(
      .snapshotStored(node.id, node.incarnation, snapshot), at: now + options.snapshotLatency.sample(&rng))
  }

  /// Records a stored snapshot in the core and compacts the log behind it, unless the log moved past it
  /// meanwhile — a leader's snapshot installed in this very batch is not stored yet — with the same guards as
  /// `MultiPaxosNode`.
  private func recordStoredSnapshot(_ node: Node) throws {
    guard let stored = node.storedSnapshot else { return }
    node.storedSnapshot = nil
    guard stored.index > node.lastSnapshotIndex, stored.index >= node.core.firstSlot - 1 else { return }
    let snapshot = node.core.takeSnapshot(at: stored.index, data: stored.data, retainEntries: options.retainEntries)
    node.lastSnapshotIndex = snapshot.index
    stats.snapshotsTaken += 1
    // Compaction, after the snapshot file is durable.
    let firstKept = node.core.firstSlot
    try node.disk.compact(below: firstKept, snapshot: \.snapshot, index: \.index, node: node.id) { d in
      d.entries = d.entries.filter { $0.key >= firstKept }
    }
  }

  private func handleRequest(_ node: Node, _ request: SimulatedKVClients.Request) {
    switch request.operation {
    case .register:
      propose(
        node, request,
        ReplicatedCommand<KVCommand>(timestampMillis: now.nanoseconds / 1_000_000, body: .registerSession))
    case .write(let command, _):
      propose(
        node, request,
        ReplicatedCommand(
          timestampMillis: now.nanoseconds / 1_000_000, request: request.request,
          acknowledgedThrough: request.acknowledged, body: .command(command)))
    case .read(let key, let consistency):
      switch consistency {
      case .linearizable:
        nextReadID += 1
        do {
          try node.core.requestRead(id: nextReadID)
          node.reads[nextReadID] = WaitingRead(index: 0, client: request.client, attempt: request.attempt, key: key)
        } catch {
          reply(request.client, request.attempt, .redirect(node.core.leader))
        }
      case .lease:
        if let index = node.core.leaseReadIndex(now: now.nanoseconds) {
          node.waitingReads.append(
            WaitingRead(index: index, client: request.client, attempt: request.attempt, key: key))
          answerReads(node)
        } else {
          reply(request.client, request.attempt, node.core.role == .leader ? .retry : .redirect(node.core.leader))
        }
      case .stale, .session:
        reply(request.client, request.attempt, .read(node.machine.machine.value(key)))
      }
    }
  }

  private func propose(_ node: Node, _ request: SimulatedKVClients.Request, _ command: ReplicatedCommand<KVCommand>) {
    let data = command.wireBytes()
    do {
      let slot = try node.core.propose(data)
      node.proposals[slot] = PendingProposal(data: data, client: request.client, attempt: request.attempt)
      trace.record(now, "\(node.id) proposes \(command.request.map(\.description) ?? "-") in slot \(slot)")
    } catch .notLeader(let hint) {
      reply(request.client, request.attempt, .redirect(hint))
    } catch {
      reply(request.client, request.attempt, .retry)
    }
  }

  private func reply(_ client: Int, _ attempt: UInt64, _ reply: SimulatedKVClients.Reply) {
    queue.schedule(
      .client(.reply(client: client, attempt: attempt, reply)), at: now + options.clientLatency.sample(&rng))
  }

  private func send(from: NodeID, _ outgoing: PaxosOutgoing) {
    let envelope = Envelope(from: from, to: outgoing.to, payload: outgoing.message)
    for time in network.route(Link(from: from, to: outgoing.to), at: now, using: &rng) {
      queue.schedule(.deliver(envelope), at: time)
    }
  }

  // MARK: - Oracle and invariants

  private func fingerprint(_ entry: PaxosEntry) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325 ^ (UInt64(entry.kind.rawValue) << 56)
    for b in entry.data { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    return h
  }

  /// Records that `node` durably accepted `entry` in its ballot, and decides whether its slot is now chosen.
  private func recordAcceptance(_ entry: PaxosEntry, by node: NodeID) throws {
    let digest = fingerprint(entry)
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
      trace.record(now, "oracle: slot \(entry.index) chosen in \(entry.ballot) (\(entry.kind))")
    }
  }

  private func checkReady(_ node: Node, _ rd: PaxosReady) throws {
    if let soft = rd.softState, soft.role == .leader {
      if soft.ballot.node != node.id {
        throw SimulationFailure("\(node.id) leads in ballot \(soft.ballot), which it does not own")
      }
      if leaderBallots.insert(soft.ballot).inserted {
        stats.leaderships += 1
        trace.record(now, "\(node.id) leads in \(soft.ballot)")
      }
    }
  }

  // MARK: - Nemesis

  private func nemesis() {
    let actions = NemesisAction.allCases.filter { options.nemesis.contains($0) }
    guard !actions.isEmpty else { return }
    let action = actions[Int.random(in: 0..<actions.count, using: &rng)]
    let ids = members
    if let cut = action.applyToNetwork(
      &network, members: ids, leader: { currentLeader() }, rng: &rng, trace: trace, now: now)
    {
      if cut { stats.partitions += 1 }
      return
    }
    switch action {
    case .partition, .oneWayCut, .isolateLeader, .heal, .lossyNetwork, .perfectNetwork:
      break  // Done above.
    case .crash:
      let running = ids.filter { nodes[$0]?.up == true }
      guard running.count > 1 else { return }
      crash(running[Int.random(in: 0..<running.count, using: &rng)])
    case .restart:
      let down = ids.filter { nodes[$0]?.up == false }
      guard !down.isEmpty else { return }
      restart(down[Int.random(in: 0..<down.count, using: &rng)])
    case .membershipChange, .transferLeadership:
      break
    case .lostPeerReport:
      guard
        let (id, peer) = NemesisAction.lostPeerReport(
          among: ids, isUp: { self.nodes[$0]?.up == true }, leaderOf: { self.nodes[$0]?.core.leader }, using: &rng),
        let node = nodes[id]
      else { return }
      node.core.peerLost(peer)
      stats.lostPeerReports += 1
      trace.record(now, "nemesis: \(id) told it lost \(peer)")
    }
  }

  private func currentLeader() -> NodeID? {
    members.last { nodes[$0]?.up == true && nodes[$0]?.core.role == .leader }
  }

  private func crash(_ id: NodeID) {
    guard let node = nodes[id], node.up else { return }
    node.up = false
    node.incarnation += 1
    node.busy = false
    node.inFlight = nil
    node.inbox = []
    node.snapshotInFlight = false
    node.storedSnapshot = nil
    node.disk.crash(using: &rng)
    network.setDown(id, true)
    stats.crashes += 1
    trace.record(now, "nemesis: crash \(id)")
    if options.nemesis.contains(.lostPeerReport) {
      for other in members where other != id && nodes[other]?.up == true {
        nodes[other]?.core.peerLost(id)
        stats.lostPeerReports += 1
      }
    }
  }

  private func restart(_ id: NodeID) {
    guard let node = nodes[id], !node.up else { return }
    let durable = node.disk.durable
    // Whatever survived the crash was accepted, even if the node never said so.
    for slot in durable.entries.keys.sorted() {
      if let entry = durable.entries[slot] {
        do { try recordAcceptance(entry, by: id) } catch { preconditionFailure("\(error)") }
      }
    }
    node.durablePromise = max(node.durablePromise, durable.hardState.promised)
    node.core = MultiPaxosCore(
      id: id, members: members, options: coreOptions, hardState: durable.hardState, snapshot: durable.snapshot,
      entries: durable.entries.keys.sorted().compactMap { durable.entries[$0] }, random: rng.fork())
    node.machine = ReplicatedStateMachine(KVStore())
    node.applied = durable.snapshot?.index ?? 0
    node.lastSnapshotIndex = node.applied
    if let snapshot = durable.snapshot {
      do {
        try node.machine.restore(from: snapshot.data)
      } catch {
        preconditionFailure("\(id): durable snapshot does not restore: \(error)")
      }
    }
    node.proposals = [:]
    node.reads = [:]
    node.waitingReads = []
    node.up = true
    network.setDown(id, false)
    trace.record(
      now, "nemesis: restart \(id) (promised \(durable.hardState.promised), \(durable.entries.count) entries)")
    queue.schedule(.tick(id, node.incarnation), at: now + options.tick)
  }

  private func heal() {
    healed = true
    network.heal()
    network.defaultFaults = LinkFaults(delay: .uniform(.microseconds(100), .milliseconds(2)))
    for id in members where nodes[id]?.up == false { restart(id) }
    trace.record(now, "healed: \(describeNodes())")
  }
}
