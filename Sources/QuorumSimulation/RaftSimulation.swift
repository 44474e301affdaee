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
  /// Extra node identifiers the nemesis may add as members.
  public var spareNodes = 2
  /// Concurrent clients.
  public var clients = 4
  /// The most operations one client performs. Clients work until the healed phase begins, so most runs
  /// stop well before this.
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
  /// Take a snapshot after this many applied entries.
  public var snapshotEvery = 25
  /// How long encoding and storing a snapshot takes. As in `RaftNode`, it runs in the background: the node
  /// goes on stepping and applying meanwhile, and records the snapshot (compacting its log) afterwards.
  public var snapshotLatency = DelayDistribution.uniform(.microseconds(100), .milliseconds(40))
  /// Entries kept before a snapshot's index.
  public var retainEntries = 4
  /// A client retries a request that got no answer for this long.
  public var requestTimeout = VirtualDuration.milliseconds(400)
  /// The consistency levels clients read at (each read picks one at random). Stale reads are not recorded
  /// in the history: they are allowed to be stale.
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
/// Safety; after the healed phase every operation must have completed and the client history must be
/// linearizable. Any violation throws a ``SimulationFailure``.
public final class RaftSimulation {
  private struct Durable {
    var hardState = HardState()
    var entries: [LogEntry] = []
    var snapshot: RaftSnapshot?
  }

  private enum Input {
    case message(NodeID, RaftMessage)
    case tick
    case request(SimulatedKVClients.Request)
  }

  private struct PendingProposal {
    var term: Term
    var client: Int
    var attempt: UInt64
  }

  private struct WaitingRead {
    var index: LogIndex
    var client: Int
    var attempt: UInt64
    var key: String
  }

  private final class Node {
    let id: NodeID
    var core: RaftCore
    var disk: CrashableStore<Durable>
    var machine = ReplicatedStateMachine(KVStore())
    var applied: LogIndex = 0
    var up = true
    var incarnation: UInt64 = 0
    var inbox: [Input] = []
    var busy = false
    var inFlight: RaftReady?
    var proposals: [LogIndex: PendingProposal] = [:]
    var reads: [UInt64: WaitingRead] = [:]
    var waitingReads: [WaitingRead] = []
    var lastSnapshotIndex: LogIndex = 0
    /// A snapshot is being encoded and stored in the background.
    var snapshotInFlight = false
    /// A stored snapshot waiting to be recorded in the core.
    var storedSnapshot: RaftSnapshot?

    init(id: NodeID, core: RaftCore, disk: CrashableStore<Durable>) {
      self.id = id
      self.core = core
      self.disk = disk
    }
  }

  private enum Event {
    case tick(NodeID, UInt64)
    case deliver(Envelope<RaftMessage>)
    case fsyncDone(NodeID, UInt64)
    case snapshotStored(NodeID, UInt64, RaftSnapshot)
    case client(SimulatedKVClients.Event)
    case nemesis
    case heal
  }

  /// The run's seed.
  public let seed: UInt64
  /// The run's options.
  public let options: RaftSimulationOptions
  /// What the run did.
  public private(set) var stats = RaftSimulationStats()
  /// The client history (filled as the run goes).
  public var history: KVHistory { clients.history }

  private let trace: SimulationTrace
  private var rng: SeededRandom
  private var now = VirtualTime.zero
  private var queue = EventQueue<Event>()
  private var network: SimulatedNetwork
  private var nodes: [NodeID: Node] = [:]
  private var clients: SimulatedKVClients
  private var healed = false
  private var nextReadID: UInt64 = 0

  // Invariant bookkeeping.
  private var leaderOfTerm: [Term: NodeID] = [:]
  private var entryAt: [LogIndex: [Term: (data: UInt64, prevTerm: Term)]] = [:]
  private var committedTerm: [LogIndex: Term] = [:]
  private var maxCommitted: LogIndex = 0
  private var appliedEntry: [LogIndex: UInt64] = [:]

  /// Prepares a run; nothing happens until ``run()``.
  public init(seed: UInt64, options: RaftSimulationOptions = RaftSimulationOptions(), trace: SimulationTrace) {
    self.seed = seed
    var options = options
    if !options.idleHeartbeatFactors.isEmpty {
      options.core.idleHeartbeatFactor =
        options.idleHeartbeatFactors[Int(seed % UInt64(options.idleHeartbeatFactors.count))]
    }
    self.options = options
    self.trace = trace
    self.rng = SeededRandom(seed: seed)
    self.network = SimulatedNetwork(defaultFaults: LinkFaults(delay: .uniform(.microseconds(100), .milliseconds(2))))
    let voters = options.voters
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
    let founding = Membership(voters: Set((1...options.voters).map { NodeID(UInt64($0)) }))
    for id in founding.voters.sorted() {
      let core = RaftCore.bootstrap(id: id, options: options.core, membership: founding, random: rng.fork())
      addNode(id, core: core)
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
    guard clients.allDone else {
      throw SimulationFailure(
        "liveness: \(clients.unfinishedCount) clients unfinished \(options.healDeadline) after healing; "
          + "leaders: \(nodes.values.filter { $0.up && $0.core.role == .leader }.map(\.id)); \(describeNodes())")
    }
    let result = history.checkLinearizability(maxStatesExplored: 5_000_000)
    if let violation = result.violation {
      throw SimulationFailure("client history is not linearizable:\n\(violation.explanation)")
    }
    if !result.isLinearizable {
      throw SimulationFailure("linearizability check did not finish: \(result)")
    }
  }

  private func addNode(_ id: NodeID, core: RaftCore) {
    let node = Node(id: id, core: core, disk: CrashableStore(Durable()))
    nodes[id] = node
    let phase = VirtualDuration(nanoseconds: UInt64.random(in: 0..<options.tick.nanoseconds, using: &rng))
    queue.schedule(.tick(id, node.incarnation), at: now + phase)
    pump(node)
  }

  private func describeNodes() -> String {
    nodes.keys.sorted().compactMap { nodes[$0] }.map { n in
      "\(n.id){\(n.up ? n.core.role.description : "down") t\(n.core.term) last=\(n.core.lastIndex) "
        + "commit=\(n.core.commitIndex) applied=\(n.applied) \(n.core.membership)}"
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
      clients.handle(event, now: now, healed: healed, nodes: nodes.keys.sorted(), rng: &rng, trace: trace) {
        event, time in queue.schedule(.client(event), at: time)
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
          // As the core does: keep later entries only if the log agrees with the snapshot at its index.
          let keep = d.entries.contains { $0.index == snapshot.index && $0.term == snapshot.term }
          d.snapshot = snapshot
          d.entries = keep ? d.entries.filter { $0.index > snapshot.index } : []
        }
        if let hs = rd.hardState { d.hardState = hs }
        if let first = rd.entries.first {
          d.entries.removeAll { $0.index >= first.index }
          d.entries.append(contentsOf: rd.entries)
        }
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
    for m in rd.messages { send(from: node.id, m) }
    node.core.advance(rd)
    if let snapshot = rd.snapshot {
      do {
        try node.machine.restore(from: snapshot.data)
      } catch {
        throw SimulationFailure("\(node.id) could not restore snapshot \(snapshot): \(error)")
      }
      node.applied = snapshot.index
      node.lastSnapshotIndex = snapshot.index
      stats.snapshotsInstalled += 1
      for index in node.proposals.keys.sorted() where index <= snapshot.index {
        // Applied or not, it is inside the snapshot: the client retries and its session decides.
        if let p = node.proposals.removeValue(forKey: index) { reply(p.client, p.attempt, .retry) }
      }
    }
    for entry in rd.committedEntries { try apply(node, entry) }
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

  private func apply(_ node: Node, _ entry: LogEntry) throws {
    precondition(entry.index == node.applied + 1, "\(node.id) applying \(entry.index) after \(node.applied)")
    node.applied = entry.index
    let digest = fingerprint(entry)
    if let seen = appliedEntry[entry.index], seen != digest {
      throw SimulationFailure("State Machine Safety: \(node.id) applied a different entry at \(entry.index)")
    }
    appliedEntry[entry.index] = digest
    var outcome: ApplyOutcome<KVResponse>?
    if entry.kind == .command { outcome = node.machine.apply(entry: entry.data, at: entry.index) }
    guard let pending = node.proposals.removeValue(forKey: entry.index) else { return }
    guard pending.term == entry.term, let outcome else {
      reply(pending.client, pending.attempt, .retry)
      return
    }
    switch outcome {
    case .applied(let response), .duplicate(let response, _): reply(pending.client, pending.attempt, .written(response))
    case .sessionRegistered(let id): reply(pending.client, pending.attempt, .registered(id))
    case .keptAlive, .timeAdvanced, .sessionExpired, .responseForgotten, .undecodable, .sessionNotOwned,
      .sessionQuotaExceeded:
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

  /// Starts a background snapshot of the applied state, as `RaftNode` does: the state and its index, term
  /// and membership are captured now, and the snapshot is stored after ``RaftSimulationOptions/snapshotLatency``.
  private func maybeSnapshot(_ node: Node) {
    guard !node.snapshotInFlight, node.storedSnapshot == nil,
      node.applied >= node.lastSnapshotIndex + LogIndex(options.snapshotEvery),
      node.applied <= node.core.persistedIndex, let term = node.core.term(at: node.applied)
    else { return }
    let snapshot = RaftSnapshot(
      index: node.applied, term: term,
      membership: node.core.membership(at: node.applied) ?? node.core.membership, data: node.machine.snapshot())
    node.snapshotInFlight = true
    queue.schedule(
      .snapshotStored(node.id, node.incarnation, snapshot), at: now + options.snapshotLatency.sample(&rng))
  }

  /// Records a stored snapshot in the core and compacts the log behind it, unless the log moved past it
  /// meanwhile (with the same guards as `RaftNode`).
  private func recordStoredSnapshot(_ node: Node) throws {
    guard let snapshot = node.storedSnapshot else { return }
    node.storedSnapshot = nil
    guard snapshot.index > node.lastSnapshotIndex, snapshot.index >= node.core.firstIndex - 1,
      node.core.term(at: snapshot.index) == snapshot.term
    else { return }
    node.core.takeSnapshot(at: snapshot.index, data: snapshot.data, retainEntries: options.retainEntries)
    node.lastSnapshotIndex = snapshot.index
    stats.snapshotsTaken += 1
    // Compaction, after the snapshot file is durable.
    let firstKept = node.core.firstIndex
    try node.disk.compact(below: firstKept, snapshot: \.snapshot, index: \.index, node: node.id) { d in
      d.entries.removeAll { $0.index < firstKept }
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
      case .linearizable, .lease:
        // As RaftNode does: a lease read is served from the lease when it is valid, otherwise by ReadIndex.
        if consistency == .lease, let index = node.core.leaseReadIndex(now: now.nanoseconds) {
          node.waitingReads.append(
            WaitingRead(index: index, client: request.client, attempt: request.attempt, key: key))
          answerReads(node)
          return
        }
        nextReadID += 1
        do {
          try node.core.requestRead(id: nextReadID)
          node.reads[nextReadID] = WaitingRead(index: 0, client: request.client, attempt: request.attempt, key: key)
        } catch {
          reply(request.client, request.attempt, .redirect(node.core.leader))
        }
      case .stale, .session:
        reply(request.client, request.attempt, .read(node.machine.machine.value(key)))
      }
    }
  }

  private func propose(
    _ node: Node, _ request: SimulatedKVClients.Request, _ command: ReplicatedCommand<KVCommand>
  ) {
    do {
      let (index, term) = try node.core.propose(command.wireBytes())
      node.proposals[index] = PendingProposal(term: term, client: request.client, attempt: request.attempt)
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

  private func send(from: NodeID, _ outgoing: RaftOutgoing) {
    let envelope = Envelope(from: from, to: outgoing.to, payload: outgoing.message)
    for time in network.route(Link(from: from, to: outgoing.to), at: now, using: &rng) {
      queue.schedule(.deliver(envelope), at: time)
    }
  }

  // MARK: - Invariants

  private func fingerprint(_ entry: LogEntry) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325 ^ entry.term ^ (UInt64(entry.kind.rawValue) << 56)
    for b in entry.data { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    return h
  }

  private func checkReady(_ node: Node, _ rd: RaftReady) throws {
    let core = node.core
    if let soft = rd.softState, soft.role == .leader {
      if let other = leaderOfTerm[soft.term], other != node.id {
        throw SimulationFailure("Election Safety: \(other) and \(node.id) both leaders of term \(soft.term)")
      }
      if leaderOfTerm[soft.term] == nil { stats.leaderships += 1 }
      leaderOfTerm[soft.term] = node.id
      trace.record(now, "\(node.id) became leader of term \(soft.term)")
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
    // Log Matching, incrementally: an (index, term) pair identifies one entry and one predecessor term.
    for entry in rd.entries {
      let prevTerm =
        core.term(at: entry.index - 1) ?? (rd.entries.first(where: { $0.index == entry.index - 1 })?.term ?? 0)
      let record = (data: fingerprint(entry), prevTerm: prevTerm)
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

  // MARK: - Nemesis

  private func nemesis() {
    let actions = NemesisAction.allCases.filter { options.nemesis.contains($0) }
    guard !actions.isEmpty else { return }
    let action = actions[Int.random(in: 0..<actions.count, using: &rng)]
    let ids = nodes.keys.sorted()
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
    case .membershipChange:
      membershipChange()
    case .transferLeadership:
      guard let leader = currentLeader(), let node = nodes[leader] else { return }
      let voters = node.core.membership.voters.sorted().filter { $0 != leader }
      guard !voters.isEmpty else { return }
      let target = voters[Int.random(in: 0..<voters.count, using: &rng)]
      if (try? node.core.transferLeadership(to: target)) != nil {
        stats.transfers += 1
        trace.record(now, "nemesis: transfer leadership \(leader) -> \(target)")
        try? startReady(node)
      }
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
    nodes.keys.sorted().last { nodes[$0]?.up == true && nodes[$0]?.core.role == .leader }
  }

  private func membershipChange() {
    guard let leaderID = currentLeader(), let leader = nodes[leaderID] else { return }
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
    let change = choices[Int.random(in: 0..<choices.count, using: &rng)]
    guard (try? leader.core.proposeMembership(change)) != nil else { return }
    stats.membershipChanges += 1
    trace.record(now, "nemesis: membership \(change) via \(leaderID)")
    for case .addLearner(let id) in change.operations where nodes[id] == nil { join(id) }
    for case .addVoter(let id) in change.operations where nodes[id] == nil { join(id) }
    try? startReady(leader)
  }

  private func join(_ id: NodeID) {
    addNode(id, core: RaftCore(id: id, options: options.core, membership: .empty, random: rng.fork()))
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
      for other in nodes.keys.sorted() where nodes[other]?.up == true {
        nodes[other]?.core.peerLost(id)
        stats.lostPeerReports += 1
      }
    }
  }

  private func restart(_ id: NodeID) {
    guard let node = nodes[id], !node.up else { return }
    let durable = node.disk.durable
    node.core = RaftCore(
      id: id, options: options.core, membership: .empty, hardState: durable.hardState, snapshot: durable.snapshot,
      entries: durable.entries, random: rng.fork())
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
    trace.record(now, "nemesis: restart \(id) (term \(durable.hardState.term), \(durable.entries.count) entries)")
    queue.schedule(.tick(id, node.incarnation), at: now + options.tick)
    pump(node)
  }

  private func pump(_ node: Node) {
    do { try startReady(node) } catch { preconditionFailure("\(error)") }
  }

  private func heal() {
    healed = true
    network.heal()
    network.defaultFaults = LinkFaults(delay: .uniform(.microseconds(100), .milliseconds(2)))
    for id in nodes.keys.sorted() where nodes[id]?.up == false { restart(id) }
    trace.record(now, "healed: \(describeNodes())")
  }
}

extension MembershipChange {
  fileprivate var operations: [MembershipOperation] {
    if case .change(let ops) = self { return ops }
    return []
  }
}
