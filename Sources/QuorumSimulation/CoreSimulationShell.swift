import QuorumCore
import QuorumKV

/// A log entry as the core-level simulations apply it (a Raft entry or a Multi-Paxos slot).
protocol SimulatedEntry: Sendable {
  /// The entry's position: its index or slot.
  var index: UInt64 { get }
  /// Whether the entry carries a client command (not a no-op or a configuration).
  var isCommand: Bool { get }
  /// The entry's payload.
  var data: [UInt8] { get }
  /// A digest of what the entry holds, for the invariant checks (``fingerprint(salt:kind:data:)``).
  var fingerprint: UInt64 { get }
}

extension SimulatedEntry {
  /// An FNV-1a digest of `data`, seeded with `salt` and the entry's `kind`.
  static func fingerprint(salt: UInt64, kind: UInt8, data: [UInt8]) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325 ^ salt ^ (UInt64(kind) << 56)
    for b in data { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    return h
  }
}

/// A snapshot as the core-level simulations store and install it.
protocol SimulatedSnapshot: Sendable {
  /// The last index (or slot) the snapshot covers.
  var index: UInt64 { get }
  /// The encoded state machine.
  var data: [UInt8] { get }
}

/// A message a core wants sent.
protocol SimulatedOutgoing: Sendable {
  /// What is sent.
  associatedtype Message: Sendable
  /// The receiver.
  var to: NodeID { get }
  /// The message.
  var message: Message { get }
}

/// A confirmed linearizable read.
protocol SimulatedReadState {
  /// The caller's identifier for the read.
  var id: UInt64 { get }
  /// The index (or slot) the state machine must reach before the read is answered.
  var index: UInt64 { get }
}

/// What a core hands its shell to persist, send and apply (a `RaftReady` or a `PaxosReady`).
protocol SimulatedReady: Sendable {
  /// The messages it sends.
  associatedtype Outgoing: SimulatedOutgoing
  /// The entries it persists and applies.
  associatedtype Entry: SimulatedEntry
  /// The snapshots it installs.
  associatedtype Snapshot: SimulatedSnapshot
  /// Its confirmed reads.
  associatedtype ReadState: SimulatedReadState
  /// The hard state it persists.
  associatedtype HardState
  /// The hard state to persist, if it changed.
  var hardState: HardState? { get }
  /// Entries to persist.
  var entries: [Entry] { get }
  /// A snapshot received from the leader, to persist and restore.
  var snapshot: Snapshot? { get }
  /// Messages that may be sent before persisting.
  var eagerMessages: [Outgoing] { get }
  /// Messages to send after persisting.
  var messages: [Outgoing] { get }
  /// Entries known committed (chosen), to apply in order.
  var entriesToApply: [Entry] { get }
  /// Confirmed linearizable reads.
  var readStates: [ReadState] { get }
  /// Reads that can no longer be confirmed, by identifier.
  var failedReads: [UInt64] { get }
}

extension SimulatedReady {
  /// Whether the ready writes anything that must be synced before its ``messages`` leave.
  var needsSync: Bool { hardState != nil || !entries.isEmpty || snapshot != nil }
}

/// What a proposal came to: accepted at an index with a protocol's tag to recognise it when it is applied,
/// or refused.
enum SimulatedProposal<Tag> {
  /// Proposed at `index`; `tag` tells whether the entry later applied there is this proposal.
  case accepted(index: UInt64, tag: Tag)
  /// Not the leader: the client should try `hint`.
  case redirect(NodeID?)
  /// Refused for now: the client should retry.
  case retry
}

/// A pure consensus core as the core-level simulations drive it (`RaftCore`, `MultiPaxosCore`).
protocol SimulatedCore {
  /// What ``ready()`` returns.
  associatedtype Ready: SimulatedReady
  /// What a pending proposal remembers to recognise its entry (Raft: its term; Multi-Paxos: its bytes).
  associatedtype ProposalTag
  /// Whether ``ready()`` has anything.
  var hasReady: Bool { get }
  /// Whether a leader heartbeats less often for now.
  var isIdle: Bool { get }
  /// The leader this node knows of.
  var leader: NodeID? { get }
  /// Whether this node leads.
  var isLeader: Bool { get }
  /// The first index (or slot) still in the log.
  var firstIndex: UInt64 { get }
  /// Advances the logical clock one tick.
  mutating func tick(now: UInt64)
  /// Handles a message from a peer.
  mutating func step(_ message: Ready.Outgoing.Message, from: NodeID)
  /// Takes what must be persisted, sent and applied.
  mutating func ready() -> Ready
  /// Acknowledges that `ready` was persisted and handled.
  mutating func advance(_ ready: Ready)
  /// Starts a linearizable read; throws when this node cannot serve it.
  mutating func requestRead(id: UInt64) throws
  /// The index a lease read may be served at now, if the lease holds.
  func leaseReadIndex(now: UInt64) -> UInt64?
  /// Tells the core that its failure detector lost `peer`.
  mutating func peerLost(_ peer: NodeID)
  /// Records a snapshot of the applied state at `index` and compacts the log behind it.
  mutating func takeSnapshot(at index: UInt64, data: [UInt8], retainEntries: Int) -> Ready.Snapshot
  /// Proposes a client command.
  mutating func proposeCommand(_ data: [UInt8]) -> SimulatedProposal<ProposalTag>
  /// Whether `entry`, applied where a proposal with `tag` was made, is that proposal.
  static func proposal(_ tag: ProposalTag, matches entry: Ready.Entry) -> Bool
}

/// What a simulated node keeps on its disk.
protocol SimulatedDurable {
  /// The ready it persists.
  associatedtype Ready: SimulatedReady
  /// An empty disk.
  init()
  /// The stored snapshot.
  var snapshot: Ready.Snapshot? { get set }
  /// Writes what `ready` asks to persist.
  mutating func persist(_ ready: Ready)
  /// Drops the entries below `firstKept`.
  mutating func compact(below firstKept: UInt64)
}

/// What differs between the core-level simulations: how cores are made, the protocol's invariant checks and
/// oracle, and the faults only one protocol has. The ``CoreSimulationShell`` does the rest.
protocol CoreSimulationDriver: AnyObject {
  /// The core driven.
  associatedtype Core: SimulatedCore
  /// What a node keeps on disk.
  associatedtype Durable: SimulatedDurable where Durable.Ready == Core.Ready
  /// The simulation's options.
  associatedtype Options: CoreSimulationOptions
  /// The simulation's statistics.
  associatedtype Stats: CoreSimulationStatistics
  /// The shell that drives the cores.
  typealias Shell = CoreSimulationShell<Self>
  /// The run's options.
  var options: Options { get }
  /// The founding members, in order.
  var foundingMembers: [NodeID] { get }
  /// Whether a lease read the lease cannot serve falls back to a linearizable read (as `RaftNode` does)
  /// rather than being refused.
  var leaseFallsBackToReadIndex: Bool { get }
  /// Whether a forgotten response is an expected outcome of applying a proposal (see
  /// ``CoreSimulationShell/apply(_:_:)``).
  var toleratesForgottenResponses: Bool { get }
  /// Whether proposals, applications and installed snapshots go to the trace.
  var tracesLearning: Bool { get }
  /// A founding member's core.
  func foundingCore(_ id: NodeID, random: SeededRandom) -> Core
  /// The core of a node restarting from `durable`.
  ///
  /// - Throws: ``SimulationFailure`` when `durable` is not what a node may restart from (the engine's own
  ///   recovery checks refuse it).
  func restartedCore(_ id: NodeID, from durable: Durable, random: SeededRandom, in shell: Shell) throws -> Core
  /// A short account of `durable` for the trace.
  func describe(_ durable: Durable) -> String
  /// A short account of `node` for the trace and failures.
  func describe(_ node: Shell.Node) -> String
  /// Checks a ready as the core hands it out.
  func checkReady(_ ready: Core.Ready, of node: Shell.Node, in shell: Shell) throws
  /// Checks a ready once it is durable, before its messages leave.
  func readyPersisted(_ ready: Core.Ready, of node: Shell.Node, in shell: Shell) throws
  /// Checks, after every event, that no node whose lease read is valid now has a lower term (or ballot) than a
  /// leader already elected.
  func checkLeases(in shell: Shell) throws
  /// Checks an entry as `node` applies it.
  func checkApplied(_ entry: Core.Ready.Entry, by node: Shell.Node) throws
  /// A snapshot of `node`'s applied state to store in the background, if the core can take one now.
  func snapshot(of node: Shell.Node) -> Core.Ready.Snapshot?
  /// Whether a stored snapshot may still be recorded in `core` (beyond the shell's own guards).
  func canRecord(_ snapshot: Core.Ready.Snapshot, in core: Core) -> Bool
  /// Adds the protocol's own counts to `stats`.
  func addCounts(to stats: inout Stats)
  /// Carries out a fault the shell does not know (a membership change, a leadership transfer).
  func nemesis(_ action: NemesisAction, in shell: Shell)
}

/// The options the core-level simulations share, under the same names in ``RaftSimulationOptions`` and
/// ``PaxosSimulationOptions``.
protocol CoreSimulationOptions {
  /// Concurrent clients.
  var clients: Int { get }
  /// The most operations one client performs.
  var operationsPerClient: Int { get }
  /// Pause between one client's operations.
  var thinkTime: DelayDistribution { get }
  /// Distinct keys.
  var keys: Int { get }
  /// Latency between a client and a node.
  var clientLatency: DelayDistribution { get }
  /// A client retries a request that got no answer for this long.
  var requestTimeout: VirtualDuration { get }
  /// The consistency levels clients read at.
  var readConsistencies: [ReadConsistency] { get }
  /// Virtual time per tick.
  var tick: VirtualDuration { get }
  /// How long faults are injected before the healed phase.
  var chaosDuration: VirtualDuration { get }
  /// How long the healed phase may take to finish every operation.
  var healDeadline: VirtualDuration { get }
  /// Latency of a durable write.
  var fsyncLatency: DelayDistribution { get }
  /// Take a snapshot after this many applied entries.
  var snapshotEvery: Int { get }
  /// How long encoding and storing a snapshot takes.
  var snapshotLatency: DelayDistribution { get }
  /// Entries kept before a snapshot's index.
  var retainEntries: Int { get }
  /// The faults the nemesis may choose from.
  var nemesis: Set<NemesisAction> { get }
  /// Time between nemesis actions.
  var nemesisInterval: DelayDistribution { get }
  /// A planted bug, for the tests of the shell's own checks (see ``RaftSimulationOptions``).
  var damagesInstalledSnapshots: Bool { get }
}

extension CoreSimulationOptions {
  var damagesInstalledSnapshots: Bool { false }

  /// The clients' settings.
  var clientSettings: SimulatedKVClients.Settings {
    .init(
      clients: clients, operationsPerClient: operationsPerClient, thinkTime: thinkTime, keys: keys,
      clientLatency: clientLatency, requestTimeout: requestTimeout, readConsistencies: readConsistencies)
  }
}

/// The statistics the core-level simulations share, under the same names in ``RaftSimulationStats`` and
/// ``PaxosSimulationStats``.
protocol CoreSimulationStatistics {
  /// Empty statistics.
  init()
  /// Events processed.
  var events: Int { get set }
  /// Crashes injected.
  var crashes: Int { get set }
  /// Partitions and cuts injected.
  var partitions: Int { get set }
  /// Ticks of leaders heartbeating less often.
  var idleLeaderTicks: Int { get set }
  /// Lost-peer reports the nemesis made, crashes' included.
  var lostPeerReports: Int { get set }
  /// Snapshots installed from a leader.
  var snapshotsInstalled: Int { get set }
  /// Snapshots taken in the background and recorded.
  var snapshotsTaken: Int { get set }
  /// Client operations completed (with a known outcome).
  var operationsCompleted: Int { get set }
  /// Client retries.
  var retries: Int { get set }
  /// Virtual time at the end.
  var endTime: VirtualTime { get set }
}

/// A cluster of pure cores with key-value clients, run in virtual time under a seeded nemesis: the node shell
/// and the run that ``RaftSimulation`` and ``PaxosSimulation`` share, with a ``CoreSimulationDriver`` for
/// what differs.
///
/// Each node's shell behaves like the real node: it takes a ready, sends the eager messages, writes the rest
/// to a ``CrashableStore`` and waits a simulated fsync before sending the messages that depend on it and
/// applying committed entries. Inputs that arrive meanwhile are batched. Snapshots are stored in the
/// background. Crashes lose unsynced writes (keeping a random prefix). Clients use exactly-once sessions and
/// retry until they get an answer.
final class CoreSimulationShell<Driver: CoreSimulationDriver> {
  typealias Core = Driver.Core
  typealias Ready = Core.Ready
  typealias Entry = Ready.Entry
  typealias Snapshot = Ready.Snapshot
  typealias Message = Ready.Outgoing.Message

  /// An input a node batches while it waits for an fsync.
  enum Input {
    case message(NodeID, Message)
    case tick
    case request(SimulatedKVClients.Request)
  }

  /// A client's proposal waiting to be applied.
  struct PendingProposal {
    var tag: Core.ProposalTag
    var client: Int
    var attempt: UInt64
  }

  /// A read waiting for its index to be confirmed or applied.
  struct WaitingRead {
    var index: UInt64
    var client: Int
    var attempt: UInt64
    var key: String
  }

  /// One node: its core, its disk, its state machine and what its shell is waiting for.
  final class Node {
    let id: NodeID
    var core: Core
    var disk = CrashableStore(Driver.Durable())
    var machine = ReplicatedStateMachine(KVStore())
    var applied: UInt64 = 0
    var up = true
    var incarnation: UInt64 = 0
    var inbox: [Input] = []
    var busy = false
    var inFlight: Ready?
    var proposals: [UInt64: PendingProposal] = [:]
    var reads: [UInt64: WaitingRead] = [:]
    var waitingReads: [WaitingRead] = []
    var lastSnapshotIndex: UInt64 = 0
    /// A snapshot is being encoded and stored in the background.
    var snapshotInFlight = false
    /// A stored snapshot waiting to be recorded in the core.
    var storedSnapshot: Snapshot?

    init(id: NodeID, core: Core) {
      self.id = id
      self.core = core
    }
  }

  /// What happens at a virtual time.
  enum Event {
    case tick(NodeID, UInt64)
    case deliver(Envelope<Message>)
    case fsyncDone(NodeID, UInt64)
    case snapshotStored(NodeID, UInt64, Snapshot)
    case client(SimulatedKVClients.Event)
    case nemesis
    case heal
  }

  /// What differs between the protocols.
  let driver: Driver
  /// The run's options.
  let settings: Driver.Options
  /// What the run did, as far as the shell counts (see ``statistics``).
  private var stats = Driver.Stats()
  /// The trace of the run.
  let trace: SimulationTrace
  /// Every random choice of the run.
  var rng: SeededRandom
  /// The current virtual time.
  private(set) var now = VirtualTime.zero
  private var queue = EventQueue<Event>()
  private var network: SimulatedNetwork
  /// The nodes by identifier, crashed ones included.
  private(set) var nodes: [NodeID: Node] = [:]
  /// The clients and their history.
  private(set) var clients: SimulatedKVClients
  private var healed = false
  private var nextReadID: UInt64 = 0
  /// The entries applied, in order (entry `i` at position `i - 1`), as the first node to apply each did; the
  /// protocol's checks make every node apply the same ones.
  private var appliedLog: [Entry] = []
  /// A state machine fed from ``appliedLog``: what every replica's state must be at its applied index, however
  /// it got there (entries, a leader's snapshot, a restart from its own).
  private var reference = ReplicatedStateMachine(KVStore())
  private var referenceApplied: UInt64 = 0

  /// What the run did: the shell's counts and the driver's.
  var statistics: Driver.Stats {
    var statistics = stats
    driver.addCounts(to: &statistics)
    return statistics
  }

  /// Prepares a run of `driver`'s protocol; nothing happens until ``run()``.
  init(driver: Driver, seed: UInt64, trace: SimulationTrace) {
    self.driver = driver
    self.settings = driver.options
    self.trace = trace
    self.rng = SeededRandom(seed: seed)
    self.network = SimulatedNetwork(defaultFaults: LinkFaults(delay: .uniform(.microseconds(100), .milliseconds(2))))
    let founders = driver.foundingMembers.count
    self.clients = SimulatedKVClients(
      settings: settings.clientSettings, firstTarget: { NodeID(UInt64($0 % founders + 1)) })
  }

  // MARK: - Running

  /// Runs the chaos phase, then the healed phase, checking invariants throughout.
  /// - Throws: ``SimulationFailure`` on any violated invariant, unfinished operation or non-linearizable history.
  func run() throws {
    for id in driver.foundingMembers { addNode(id, core: driver.foundingCore(id, random: rng.fork())) }
    for c in 0..<settings.clients {
      queue.schedule(.client(.next(client: c)), at: now + VirtualDuration.milliseconds(UInt64(c)))
    }
    queue.schedule(.nemesis, at: now + settings.nemesisInterval.sample(&rng))
    queue.schedule(.heal, at: now + settings.chaosDuration)
    let deadline = now + settings.chaosDuration + settings.healDeadline
    while let (time, event) = queue.pop() {
      now = time
      if now > deadline { break }
      stats.events += 1
      try handle(event)
      try driver.checkLeases(in: self)
      if clients.allDone && healed { break }
    }
    stats.endTime = now
    stats.operationsCompleted = clients.operationsCompleted
    stats.retries = clients.retries
    guard clients.allDone else {
      throw SimulationFailure(
        "liveness: \(clients.unfinishedCount) clients unfinished \(settings.healDeadline) after healing; "
          + "leaders: \(nodes.values.filter { $0.up && $0.core.isLeader }.map(\.id).sorted()); \(describeNodes())")
    }
    let result = clients.history.checkLinearizability(maxStatesExplored: 5_000_000)
    if let violation = result.violation {
      throw SimulationFailure("client history is not linearizable:\n\(violation.explanation)")
    }
    if !result.isLinearizable {
      throw SimulationFailure("linearizability check did not finish: \(result)")
    }
    // Every replica's state, not only what clients saw from leaders: a follower damaged by a snapshot or a
    // restart shows here even if it never led.
    for node in nodes.values.filter(\.up).sorted(by: { ($0.applied, $0.id) < ($1.applied, $1.id) }) {
      try checkState(of: node, what: "at the end")
    }
  }

  /// Checks that `node`'s replicated state (sessions and store) is the reference's at the node's applied index.
  private func checkState(of node: Node, what: String) throws {
    let index = node.applied
    guard index <= UInt64(appliedLog.count) else {
      throw SimulationFailure(
        "\(node.id) \(what) is at index \(index), beyond every entry applied anywhere (\(appliedLog.count))")
    }
    if referenceApplied > index {
      reference = ReplicatedStateMachine(KVStore())
      referenceApplied = 0
    }
    while referenceApplied < index {
      let entry = appliedLog[Int(referenceApplied)]
      if entry.isCommand { _ = reference.apply(entry: entry.data, at: entry.index) }
      referenceApplied += 1
    }
    guard node.machine.snapshot() == reference.snapshot() else {
      throw SimulationFailure(
        "State Machine Safety: \(node.id) \(what) holds a state that the entries through \(index) do not make "
          + "(\(node.machine.machine.count) keys, \(node.machine.sessionCount) sessions; expected "
          + "\(reference.machine.count) keys, \(reference.sessionCount) sessions)")
    }
  }

  /// Adds a node running `core` (a founder or one joining), ticking from a random phase.
  func addNode(_ id: NodeID, core: Core) {
    let node = Node(id: id, core: core)
    nodes[id] = node
    let phase = VirtualDuration(nanoseconds: UInt64.random(in: 0..<settings.tick.nanoseconds, using: &rng))
    queue.schedule(.tick(id, node.incarnation), at: now + phase)
    pump(node)
  }

  /// Every node, described by the driver.
  private func describeNodes() -> String {
    nodes.keys.sorted().compactMap { nodes[$0] }.map { driver.describe($0) }.joined(separator: " ")
  }

  private func handle(_ event: Event) throws {
    switch event {
    case .tick(let id, let incarnation):
      guard let node = nodes[id], node.up, node.incarnation == incarnation else { return }
      queue.schedule(.tick(id, incarnation), at: now + settings.tick)
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
      try nemesis()
      queue.schedule(.nemesis, at: now + settings.nemesisInterval.sample(&rng))
    case .heal:
      try heal()
    }
  }

  // MARK: - Node shell

  /// Feeds a node's batched inputs to its core, unless it waits for an fsync, and starts its next ready.
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

  /// Takes a node's ready, if it has one: sends its eager messages and writes the rest, finishing it after a
  /// simulated fsync (at once when there is nothing to write).
  func startReady(_ node: Node) throws {
    guard node.up, !node.busy, node.core.hasReady else { return }
    let rd = node.core.ready()
    try driver.checkReady(rd, of: node, in: self)
    for m in rd.eagerMessages { send(from: node.id, m) }
    node.inFlight = rd
    if rd.needsSync {
      node.disk.update { d in d.persist(rd) }
      node.busy = true
      queue.schedule(.fsyncDone(node.id, node.incarnation), at: now + settings.fsyncLatency.sample(&rng))
    } else {
      try finishReady(node)
    }
  }

  /// Finishes a node's durable ready: sends its messages, installs its snapshot, applies its entries and
  /// answers its reads.
  private func finishReady(_ node: Node) throws {
    guard let rd = node.inFlight else { return }
    node.disk.sync()
    node.inFlight = nil
    node.busy = false
    try driver.readyPersisted(rd, of: node, in: self)
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
      if settings.damagesInstalledSnapshots {
        let planted = ReplicatedCommand<KVCommand>(timestampMillis: 0, body: .command(.put(key: "planted", value: [1])))
        _ = node.machine.apply(planted, at: snapshot.index)
      }
      try checkState(of: node, what: "after installing the snapshot at \(snapshot.index)")
      stats.snapshotsInstalled += 1
      if driver.tracesLearning { trace.record(now, "\(node.id) installed snapshot at \(snapshot.index)") }
      for index in node.proposals.keys.sorted() where index <= snapshot.index {
        // Applied or not, it is inside the snapshot: the client retries and its session decides.
        if let p = node.proposals.removeValue(forKey: index) { reply(p.client, p.attempt, .retry) }
      }
    }
    for entry in rd.entriesToApply { try apply(node, entry) }
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

  /// Applies a committed entry to a node's state machine and answers the proposal made there, if any.
  private func apply(_ node: Node, _ entry: Entry) throws {
    precondition(entry.index == node.applied + 1, "\(node.id) applying \(entry.index) after \(node.applied)")
    node.applied = entry.index
    try driver.checkApplied(entry, by: node)
    if appliedLog.count == entry.index - 1 { appliedLog.append(entry) }
    var outcome: ApplyOutcome<KVResponse>?
    if entry.isCommand { outcome = node.machine.apply(entry: entry.data, at: entry.index) }
    if driver.tracesLearning {
      trace.record(now, "\(node.id) applies slot \(entry.index): \(outcome.map { "\($0)" } ?? "no-op")")
    }
    guard let pending = node.proposals.removeValue(forKey: entry.index) else { return }
    guard entry.isCommand, Core.proposal(pending.tag, matches: entry), let outcome else {
      reply(pending.client, pending.attempt, .retry)
      return
    }
    switch outcome {
    case .applied(let response), .duplicate(let response, _): reply(pending.client, pending.attempt, .written(response))
    case .sessionRegistered(let id): reply(pending.client, pending.attempt, .registered(id))
    case .responseForgotten where driver.toleratesForgottenResponses:
      // Unlike Raft, Multi-Paxos can choose an old leader's proposal in a later slot after the client's
      // retry succeeded elsewhere and the client moved on: the session refuses to apply it twice. The client
      // stopped waiting for this attempt long ago.
      reply(pending.client, pending.attempt, .retry)
    case .keptAlive, .timeAdvanced, .sessionExpired, .responseForgotten, .undecodable, .sessionNotOwned,
      .sessionQuotaExceeded:
      throw SimulationFailure("unexpected apply outcome \(outcome) at \(entry.index) on \(node.id)")
    }
  }

  /// Answers the reads whose index the node has applied.
  private func answerReads(_ node: Node) {
    node.waitingReads.removeAll { read in
      guard read.index <= node.applied else { return false }
      reply(read.client, read.attempt, .read(node.machine.machine.value(read.key)))
      return true
    }
  }

  /// Starts a background snapshot of the applied state, as the real nodes do: the state is captured now, and
  /// the snapshot is stored after ``CoreSimulationSettings/snapshotLatency``.
  private func maybeSnapshot(_ node: Node) {
    guard !node.snapshotInFlight, node.storedSnapshot == nil,
      node.applied >= node.lastSnapshotIndex + UInt64(settings.snapshotEvery), let snapshot = driver.snapshot(of: node)
    else { return }
    node.snapshotInFlight = true
    queue.schedule(
      .snapshotStored(node.id, node.incarnation, snapshot), at: now + settings.snapshotLatency.sample(&rng))
  }

  /// Records a stored snapshot in the core and compacts the log behind it, unless the log moved past it
  /// meanwhile — a leader's snapshot installed in this very batch is not stored yet — with the same guards as
  /// the real nodes.
  private func recordStoredSnapshot(_ node: Node) throws {
    guard let stored = node.storedSnapshot else { return }
    node.storedSnapshot = nil
    guard stored.index > node.lastSnapshotIndex, stored.index >= node.core.firstIndex - 1,
      driver.canRecord(stored, in: node.core)
    else { return }
    let snapshot = node.core.takeSnapshot(at: stored.index, data: stored.data, retainEntries: settings.retainEntries)
    node.lastSnapshotIndex = snapshot.index
    stats.snapshotsTaken += 1
    // Compaction, after the snapshot file is durable.
    let firstKept = node.core.firstIndex
    try node.disk.compact(below: firstKept, snapshot: \.snapshot, index: \.index, node: node.id) { d in
      d.compact(below: firstKept)
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
        if consistency == .lease {
          if let index = node.core.leaseReadIndex(now: now.nanoseconds) {
            node.waitingReads.append(
              WaitingRead(index: index, client: request.client, attempt: request.attempt, key: key))
            answerReads(node)
            return
          }
          guard driver.leaseFallsBackToReadIndex else {
            reply(request.client, request.attempt, node.core.isLeader ? .retry : .redirect(node.core.leader))
            return
          }
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

  private func propose(_ node: Node, _ request: SimulatedKVClients.Request, _ command: ReplicatedCommand<KVCommand>) {
    switch node.core.proposeCommand(command.wireBytes()) {
    case .accepted(let index, let tag):
      node.proposals[index] = PendingProposal(tag: tag, client: request.client, attempt: request.attempt)
      if driver.tracesLearning {
        trace.record(now, "\(node.id) proposes \(command.request.map(\.description) ?? "-") in slot \(index)")
      }
    case .redirect(let hint):
      reply(request.client, request.attempt, .redirect(hint))
    case .retry:
      reply(request.client, request.attempt, .retry)
    }
  }

  private func reply(_ client: Int, _ attempt: UInt64, _ reply: SimulatedKVClients.Reply) {
    queue.schedule(
      .client(.reply(client: client, attempt: attempt, reply)),
      at: now + settings.clientLatency.sample(&rng))
  }

  private func send(from: NodeID, _ outgoing: Ready.Outgoing) {
    let envelope = Envelope(from: from, to: outgoing.to, payload: outgoing.message)
    for time in network.route(Link(from: from, to: outgoing.to), at: now, using: &rng) {
      queue.schedule(.deliver(envelope), at: time)
    }
  }

  // MARK: - Nemesis

  private func nemesis() throws {
    let actions = NemesisAction.allCases.filter { settings.nemesis.contains($0) }
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
      try restart(down[Int.random(in: 0..<down.count, using: &rng)])
    case .membershipChange, .transferLeadership:
      driver.nemesis(action, in: self)
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

  /// The running leader with the highest identifier, if any.
  func currentLeader() -> NodeID? {
    nodes.keys.sorted().last { nodes[$0]?.up == true && nodes[$0]?.core.isLeader == true }
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
    if settings.nemesis.contains(.lostPeerReport) {
      for other in nodes.keys.sorted() where nodes[other]?.up == true {
        nodes[other]?.core.peerLost(id)
        stats.lostPeerReports += 1
      }
    }
  }

  private func restart(_ id: NodeID) throws {
    guard let node = nodes[id], !node.up else { return }
    let durable = node.disk.durable
    node.core = try driver.restartedCore(id, from: durable, random: rng.fork(), in: self)
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
    try checkState(of: node, what: "restarted from its snapshot")
    node.proposals = [:]
    node.reads = [:]
    node.waitingReads = []
    node.up = true
    network.setDown(id, false)
    trace.record(now, "nemesis: restart \(id) (\(driver.describe(durable)))")
    queue.schedule(.tick(id, node.incarnation), at: now + settings.tick)
    pump(node)
  }

  /// Starts a node's ready outside the run loop, where a failure cannot be thrown.
  private func pump(_ node: Node) {
    do { try startReady(node) } catch { preconditionFailure("\(error)") }
  }

  private func heal() throws {
    healed = true
    network.heal()
    network.defaultFaults = LinkFaults(delay: .uniform(.microseconds(100), .milliseconds(2)))
    for id in nodes.keys.sorted() where nodes[id]?.up == false { try restart(id) }
    trace.record(now, "healed: \(describeNodes())")
  }
}
