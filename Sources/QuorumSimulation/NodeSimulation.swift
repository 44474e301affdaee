public import QuorumCore
public import QuorumKV
public import QuorumReplica
public import QuorumStorage

/// The shape of one whole-node simulated run (``NodeSimulation``).
public struct NodeSimulationOptions: Sendable {
  /// Founding voters.
  public var voters = 3
  /// Extra node identifiers the nemesis may add as members (engines that support membership changes).
  public var spareNodes = 2
  /// Concurrent clients.
  public var clients = 4
  /// Distinct keys (fewer keys mean more contention).
  public var keys = 4
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
  /// A client gives up on an attempt that got no reply for this long.
  public var requestTimeout = VirtualDuration.milliseconds(400)
  /// Probability that a client gives up on an operation after a failed attempt (its outcome stays unknown).
  public var giveUpProbability = 0.1
  /// The consistency levels clients read at (each read picks one). Linearizable and lease reads go through the
  /// linearizability checker; stale reads are checked against the committed prefix they report.
  public var readConsistencies: [ReadConsistency] = [.linearizable, .lease, .stale]
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
  /// Engine variant knobs (Raft: `paper` turns off pre-vote and check-quorum; Paxos: quorum sizes).
  public var variant = NodeSimulationVariant()

  /// Defaults: 3 voters, 2 spares, 4 clients on 4 keys, 3 s of chaos with every fault.
  public init() {}
}

/// Engine-specific knobs of a ``NodeSimulation``.
public struct NodeSimulationVariant: Sendable {
  /// Raft: the paper's algorithm (no pre-vote, no check-quorum, hence no leases).
  public var raftPaper = false
  /// Multi-Paxos: phase-1 and phase-2 quorum sizes (`nil`: majorities).
  public var paxosQuorums: (phase1: Int, phase2: Int)?

  /// The default variant.
  public init() {}
}

/// The faults a whole-node simulation may inject.
public enum NodeNemesis: String, Sendable, CaseIterable, Hashable {
  /// Split nodes (and clients) into two random sides.
  case partition
  /// Cut one direction of one link.
  case oneWayCut
  /// Cut the current leader off from everyone.
  case isolateLeader
  /// Restore every link.
  case heal
  /// Crash a node: its process stops at once, and its disk keeps what was durable plus a random prefix of the
  /// records it had queued (a torn write).
  case crash
  /// Restart a crashed node from its disk.
  case restart
  /// Freeze a node's process for up to a few election timeouts (a GC pause, a VM migration).
  case pause
  /// Make a node's timers fire late for a while (a stalled timer thread).
  case stallTimers
  /// Step a node's wall clock by seconds (NTP); the monotonic clock is unmoved.
  case jumpWallClock
  /// Make a node's disk fail writes (`EIO`, `ENOSPC`) for a while; the node stops and is restarted later.
  case diskFaults
  /// Make the network lossy: drops, duplicates, reordering, and delays beyond the election timeout.
  case lossyNetwork
  /// Make the network perfect again.
  case perfectNetwork
  /// Add or remove a member, or promote a learner (through the leader).
  case membershipChange
  /// Ask the leader to hand leadership to a random voter.
  case transferLeadership
}

/// What a whole-node run did, for reports and for checking that the faults happened.
public struct NodeSimulationStats: Sendable, CustomStringConvertible {
  /// Scheduler jobs run.
  public var jobs: UInt64 = 0
  /// Distinct leaderships (terms or ballots led).
  public var leaderships = 0
  /// Crashes injected (including nodes stopped by disk faults).
  public var crashes = 0
  /// Partitions and cuts injected.
  public var partitions = 0
  /// Process pauses and timer stalls injected.
  public var stalls = 0
  /// Writes failed by injected disk faults.
  public var diskFaults = 0
  /// Queued disk records lost to crashes.
  public var tornRecords = 0
  /// Membership changes that committed.
  public var membershipChanges = 0
  /// Leadership transfers that completed.
  public var transfers = 0
  /// Client operations completed with a known outcome.
  public var operationsCompleted = 0
  /// Operations whose outcome stayed unknown (the client gave up).
  public var unknownOutcomes = 0
  /// Client attempts retried.
  public var retries = 0
  /// Stale reads checked against the committed prefix.
  public var staleReadsChecked = 0
  /// Write responses checked against the reference replica.
  public var writeResponsesChecked = 0
  /// Entries the reference replica applied.
  public var entriesApplied: UInt64 = 0
  /// Virtual time at the end.
  public var endTime = VirtualTime.zero

  /// Empty statistics.
  public init() {}

  public var description: String {
    "jobs=\(jobs) leaderships=\(leaderships) crashes=\(crashes) partitions=\(partitions) stalls=\(stalls) "
      + "diskFaults=\(diskFaults) torn=\(tornRecords) membership=\(membershipChanges) transfers=\(transfers) "
      + "ops=\(operationsCompleted) unknown=\(unknownOutcomes) retries=\(retries) staleReads=\(staleReadsChecked) "
      + "writes=\(writeResponsesChecked) applied=\(entriesApplied) end=\(endTime)"
  }
}

/// An engine the whole-node simulation can run: how to configure it for simulated time, and which invariants to
/// check while it runs.
public protocol SimulatedEngine: ReplicaEngine {
  /// How the engine's storage treats overwrites.
  static var logWriteMode: LogWriteMode { get }
  /// Whether the nemesis may change the membership and transfer leadership.
  static var supportsMembershipChanges: Bool { get }
  /// The configuration for a run: small timeouts, frequent snapshots, small messages.
  static func simulationConfiguration(members: [NodeID], options: NodeSimulationOptions) -> Configuration
  /// The invariant checker for a run.
  static func makeChecker(configuration: Configuration, trace: SimulationTrace) -> ReplicaChecker<Self>
  /// The voters of the membership a node's status reports (for convergence checks and the nemesis).
  static func voters(in status: Status) -> [NodeID]
  /// Every member (voter or learner) in a node's status.
  static func members(in status: Status) -> [NodeID]
  /// Whether the status says the node leads.
  static func isLeader(_ status: Status) -> Bool
  /// The term or ballot round in a status (newer leaders have higher ones).
  static func epoch(_ status: Status) -> UInt64
  /// The applied index in a status.
  static func appliedIndex(_ status: Status) -> UInt64
}

/// A client's call to a simulated server.
enum KVCall: Sendable {
  case register
  case write(KVCommand, RequestID, acknowledged: UInt64)
  case read(key: String, ReadConsistency, atLeast: UInt64)
}

/// A simulated server's reply.
enum KVReply: Sendable {
  case registered(UInt64)
  case written(KVResponse)
  case read([UInt8]?, index: UInt64)
  case failure(ConsensusError)
}

/// A whole cluster of the production replica actors (`RaftNode` or `MultiPaxosNode`, unmodified) running on a
/// ``SimulationScheduler``: one thread, virtual time, seeded interleavings. Nodes use ``SimulatedClock``s that
/// drift, jump and stall, ``SimulatedDisk``s that tear writes at crashes and fail on command, and a
/// ``VirtualNetwork``; clients send their requests through the same network and retry, time out and give up.
///
/// Invariants are checked after every scheduler job (the engine's checker sees every ready and every apply);
/// after the heal, every client must complete fresh writes and every replica must converge to the same state.
/// Client histories of linearizable and lease reads and all writes go through the linearizability checker;
/// stale reads are checked against the committed prefix at the index they report, and per client they never go
/// back; every write's returned value is checked against a reference replica fed the committed log.
///
/// `@unchecked Sendable`: the simulation's state is touched only by jobs of its scheduler, which runs them one at
/// a time on the thread that called ``run()``.
public final class NodeSimulation<Engine: SimulatedEngine>: @unchecked Sendable {
  private final class Member {
    let id: NodeID
    let disk: SimulatedDisk<Engine.Entry>
    let clock: SimulatedClock
    var incarnation: UInt32 = 0
    var node: ReplicaNode<Engine, KVStore>?
    var up = false
    var restartWanted = false

    init(id: NodeID, disk: SimulatedDisk<Engine.Entry>, clock: SimulatedClock) {
      self.id = id
      self.disk = disk
      self.clock = clock
    }

    var process: UInt32 { UInt32(truncatingIfNeeded: id.rawValue) << 16 | incarnation }
  }

  /// The run's seed.
  public let seed: UInt64
  /// The run's options.
  public let options: NodeSimulationOptions
  /// What the run did.
  public private(set) var stats = NodeSimulationStats()

  private let trace: SimulationTrace
  private let scheduler: SimulationScheduler
  private let network: VirtualNetwork<Engine.Message>
  private let requests: VirtualRequests<KVCall, KVReply>
  private let configuration: Engine.Configuration
  private let checker: ReplicaChecker<Engine>
  private let history = KVHistoryRecorder()
  private var members: [NodeID: Member] = [:]
  private var healed = false
  private var clientsDone = 0
  private var converged = false
  private var failure: SimulationFailure?
  private var staleReads: [(client: Int, key: String, value: [UInt8]?, index: UInt64)] = []
  private var writeResponses: [(RequestID, KVResponse)] = []

  /// Prepares a run; nothing happens until ``run()``.
  public init(seed: UInt64, options: NodeSimulationOptions = NodeSimulationOptions(), trace: SimulationTrace) {
    self.seed = seed
    self.options = options
    self.trace = trace
    let scheduler = SimulationScheduler(seed: seed)
    self.scheduler = scheduler
    var observe: (@Sendable (VirtualTime, Envelope<Engine.Message>) -> Void)?
    if trace.isEnabled {
      observe = { time, envelope in trace.record(time, "\(envelope.from)->\(envelope.to) \(envelope.payload)") }
    }
    self.network = VirtualNetwork(
      scheduler: scheduler, faults: LinkFaults(delay: .uniform(.microseconds(100), .milliseconds(2))),
      observe: observe)
    self.requests = VirtualRequests(scheduler: scheduler, network: network)
    let founders = (1...options.voters).map { NodeID(UInt64($0)) }
    self.configuration = Engine.simulationConfiguration(members: founders, options: options)
    self.checker = Engine.makeChecker(configuration: configuration, trace: trace)
  }

  // MARK: - Running

  /// Runs the chaos phase, then the healed phase, checking invariants after every job.
  /// - Throws: ``SimulationFailure`` on any violated invariant, unfinished operation, divergence or
  ///   non-linearizable history.
  public func run() throws {
    checker.now = { [scheduler] in scheduler.now }
    let founders = (1...options.voters).map { NodeID(UInt64($0)) }
    let everyone = Engine.supportsMembershipChanges ? options.voters + options.spareNodes : options.voters
    for n in 1...everyone {
      let id = NodeID(UInt64(n))
      let drift = scheduler.random { Int64.random(in: -options.maxDriftPPM...options.maxDriftPPM, using: &$0) }
      let offset = scheduler.random { UInt64.random(in: 0...1_000_000_000_000, using: &$0) }
      let checker = self.checker
      let disk = SimulatedDisk<Engine.Entry>(
        mode: Engine.logWriteMode, scheduler: scheduler, latency: options.diskLatency,
        onDurable: { entries, hardState in checker.becameDurable(id, entries: entries, hardState: hardState) },
        onViolation: { checker.fail("storage contract broken by \(id): \($0)") })
      members[id] = Member(
        id: id, disk: disk, clock: SimulatedClock(scheduler: scheduler, driftPPM: drift, offsetNanos: offset))
    }
    for id in founders { start(id, joining: false) }
    for c in 0..<options.clients {
      let client = c
      scheduler.spawn(on: clientProcess(c)) { [self] in await runClient(client) }
    }
    scheduler.spawn(on: Self.nemesisProcess) { [self] in await runNemesis() }
    scheduler.schedule(at: VirtualTime.zero + options.chaosDuration) { [self] in heal() }
    let deadline = VirtualTime.zero + options.chaosDuration + options.healDeadline
    let checker = self.checker
    let outcome = try scheduler.run(
      until: deadline, stopWhen: { [self] in converged || failure != nil },
      afterEachJob: { [self] in if let failure = checker.failure ?? failure { throw failure } })
    stats.jobs = scheduler.jobsRun
    stats.endTime = scheduler.now
    stats.leaderships = checker.leaderships
    stats.entriesApplied = checker.referenceApplied
    for member in members.values { stats.tornRecords += member.disk.counters.tornRecords }
    if let failure = checker.failure ?? failure { throw failure }
    guard converged else {
      throw SimulationFailure(
        "liveness: after healing, \(options.clients - clientsDone) clients unfinished and replicas "
          + "\(converged ? "" : "not ")converged by \(scheduler.now) (\(outcome)); \(describeMembers())")
    }
    try checkHistory()
  }

  private static var nemesisProcess: UInt32 { 0xFFFF_FFF0 }
  private static var checkerProcess: UInt32 { 0xFFFF_FFF1 }
  private func clientProcess(_ c: Int) -> UInt32 { 0xFFFE_0000 | UInt32(c) }
  private func clientNode(_ c: Int) -> NodeID { NodeID(UInt64(1000 + c)) }

  private func describeMembers() -> String {
    members.keys.sorted().compactMap { members[$0] }.map { m in "\(m.id){\(m.up ? "up" : "down")}" }.joined(
      separator: " ")
  }

  private func fail(_ message: String) {
    if failure == nil { failure = SimulationFailure(message) }
  }

  // MARK: - Nodes

  private func start(_ id: NodeID, joining: Bool) {
    guard let member = members[id] else { return }
    member.incarnation += 1
    member.up = true
    member.restartWanted = false
    let process = member.process
    var configuration = self.configuration
    if joining { configuration = Engine.simulationConfiguration(members: [], options: options) }
    let endpoint = network.bind(id)
    network.withNetwork { $0.setDown(id, false) }
    let node = ReplicaNode<Engine, KVStore>(
      id: id, configuration: configuration, endpoint: endpoint, storage: member.disk.open(), machine: KVStore(),
      runtime: NodeRuntime(clock: member.clock, executor: scheduler.executor(for: process)),
      seed: seed ^ (id.rawValue << 32) ^ UInt64(member.incarnation), logger: .disabled, observer: checker)
    member.node = node
    requests.serve(id, process: process) { call in await Self.serve(call, on: node) }
    trace.record(scheduler.now, "start \(id) incarnation \(member.incarnation)\(joining ? " (joining)" : "")")
    let incarnation = member.incarnation
    scheduler.spawn(on: process) { [self] in
      do {
        try await node.run()
      } catch let error as StorageError {
        // An injected disk fault stops the node, as it must: it is restarted like a crashed one.
        nodeStopped(id, incarnation: incarnation, error: error)
      } catch {
        fail("\(id) stopped with an unexpected error: \(error)")
      }
    }
  }

  private func nodeStopped(_ id: NodeID, incarnation: UInt32, error: StorageError) {
    guard let member = members[id], member.incarnation == incarnation, member.up else { return }
    guard case .io = error else {
      fail("\(id) stopped with a storage error that is not an injected fault: \(error)")
      return
    }
    trace.record(scheduler.now, "\(id) stopped after a disk fault: \(error)")
    stats.diskFaults += 1
    crash(id)
    member.restartWanted = true
  }

  private func crash(_ id: NodeID) {
    guard let member = members[id], member.up else { return }
    member.up = false
    scheduler.pause(member.process, until: VirtualTime(nanoseconds: .max))
    network.withNetwork { $0.setDown(id, true) }
    requests.stopServing(id)
    member.disk.crash()
    member.node = nil
    stats.crashes += 1
    trace.record(scheduler.now, "crash \(id)")
  }

  private static func serve(_ call: KVCall, on node: ReplicaNode<Engine, KVStore>) async -> KVReply {
    do {
      switch call {
      case .register:
        return .registered(try await node.registerSession())
      case .write(let command, let request, let acknowledged):
        return .written(try await node.propose(command, request: request, acknowledgedThrough: acknowledged))
      case .read(let key, let consistency, let atLeast):
        let answer = try await node.read(.get(key: key), consistency: consistency, atLeast: atLeast)
        guard case .value(let value) = answer.value else { return .failure(.stopped) }
        return .read(value, index: answer.index)
      }
    } catch let error as ConsensusError {
      return .failure(error)
    } catch {
      return .failure(.stopped)
    }
  }

  // MARK: - Clients

  private func runClient(_ c: Int) async {
    let me = clientNode(c)
    var target = NodeID(UInt64(c % options.voters + 1))
    var session: UInt64?
    var sequence: UInt64 = 0
    var lastIndex: UInt64 = 0
    var freshWrites = 0
    while true {
      if healed && freshWrites >= options.freshWritesAfterHeal { break }
      if session == nil {
        switch await requests.call(.register, from: me, to: target, timeout: options.requestTimeout) {
        case .registered(let id)?:
          session = id
          sequence = 0
        case .failure(.notLeader(let hint?))?:
          target = hint
        default:
          target = randomNode()
          stats.retries += 1
          await pause(.milliseconds(UInt64(scheduler.random { Int.random(in: 1...30, using: &$0) })))
        }
        continue
      }
      guard let open = session else { continue }
      let key = "k\(scheduler.random { Int.random(in: 0..<options.keys, using: &$0) })"
      let roll = scheduler.random { Int.random(in: 0..<100, using: &$0) }
      if roll < 40 && !healed {
        let levels = options.readConsistencies.isEmpty ? [ReadConsistency.linearizable] : options.readConsistencies
        let level = levels[scheduler.random { Int.random(in: 0..<levels.count, using: &$0) }]
        await read(c, key: key, consistency: level, target: &target, lastIndex: &lastIndex)
      } else {
        sequence += 1
        let outcome = await write(
          c, key: key, roll: roll, request: RequestID(session: open, sequence: sequence), target: &target)
        if outcome == .sessionLost { session = nil }
        if healed && outcome == .done { freshWrites += 1 }
      }
      await pause(scheduler.random { options.thinkTime.sample(&$0) })
    }
    clientsDone += 1
    trace.record(scheduler.now, "client \(c) done")
    if clientsDone == options.clients { startConvergenceCheck() }
  }

  private func pause(_ duration: VirtualDuration) async {
    try? await scheduler.sleep(for: duration)
  }

  private func randomNode() -> NodeID {
    let ids = members.keys.sorted()
    return ids[scheduler.random { Int.random(in: 0..<ids.count, using: &$0) }]
  }

  private enum WriteOutcome {
    case done
    case unknown
    case sessionLost
  }

  private func write(
    _ c: Int, key: String, roll: Int, request: RequestID, target: inout NodeID
  ) async -> WriteOutcome {
    let value = "c\(c)-\(request.sequence)"
    let command: KVCommand
    let input: KVInput
    if roll < 75 {
      command = .put(key: key, value: Array(value.utf8))
      input = .put(key: key, value: value)
    } else if roll < 85 {
      command = .delete(key: key)
      input = .delete(key: key)
    } else {
      let expected: String? =
        scheduler.random { Bool.random(using: &$0) }
        ? nil
        : "c\(scheduler.random { Int.random(in: 0..<options.clients, using: &$0) })-\(max(1, request.sequence - 1))"
      command = .compareAndSwap(key: key, expected: expected.map { Array($0.utf8) }, new: Array(value.utf8))
      input = .compareAndSwap(key: key, expected: expected, new: value)
    }
    let op = history.invoke(client: c, input, at: scheduler.now.nanoseconds)
    let call = KVCall.write(command, request, acknowledged: request.sequence - 1)
    while true {
      let reply = await requests.call(call, from: clientNode(c), to: target, timeout: options.requestTimeout)
      switch reply {
      case .written(let response)?:
        let output: KVOutput
        if case .swapped(let swapped, _) = response { output = .swapped(swapped) } else { output = .ok }
        history.complete(op, output, at: scheduler.now.nanoseconds)
        trace.record(scheduler.now, "client \(c) \(input) [\(request)] -> \(response)")
        writeResponses.append((request, response))
        stats.operationsCompleted += 1
        return .done
      case .failure(.sessionExpired)?:
        history.markUnknown(op)
        stats.unknownOutcomes += 1
        return .sessionLost
      case .failure(.notLeader(let hint))?:
        target = hint.flatMap { members[$0] != nil ? $0 : nil } ?? randomNode()
      default:
        // No reply, a timeout, an unknown outcome, a stopped node: the write may or may not have happened.
        // Retrying with the same request id is safe; sometimes the client gives up instead.
        if !healed, scheduler.random({ $0.chance(options.giveUpProbability) }) {
          history.markUnknown(op)
          stats.unknownOutcomes += 1
          return .unknown
        }
        target = randomNode()
      }
      stats.retries += 1
      await pause(.milliseconds(UInt64(scheduler.random { Int.random(in: 1...30, using: &$0) })))
    }
  }

  private func read(
    _ c: Int, key: String, consistency: ReadConsistency, target: inout NodeID, lastIndex: inout UInt64
  ) async {
    let checked = consistency != .stale
    let op = checked ? history.invoke(client: c, .get(key: key), at: scheduler.now.nanoseconds) : nil
    for _ in 0..<8 {
      let call = KVCall.read(key: key, consistency, atLeast: consistency == .stale ? lastIndex : 0)
      let reply = await requests.call(call, from: clientNode(c), to: target, timeout: options.requestTimeout)
      switch reply {
      case .read(let value, let index)?:
        trace.record(scheduler.now, "client \(c) get \(key) (\(consistency)) -> \(value?.count ?? -1)B at \(index)")
        if let op {
          history.complete(op, .value(value.map { String(decoding: $0, as: UTF8.self) }), at: scheduler.now.nanoseconds)
          stats.operationsCompleted += 1
        } else {
          if index < lastIndex {
            fail("stale read of \(key) by client \(c) went back from index \(lastIndex) to \(index)")
          }
          staleReads.append((c, key, value, index))
        }
        lastIndex = max(lastIndex, index)
        return
      case .failure(.notLeader(let hint))?:
        target = hint.flatMap { members[$0] != nil ? $0 : nil } ?? randomNode()
      default:
        target = randomNode()
      }
      stats.retries += 1
      await pause(.milliseconds(UInt64(scheduler.random { Int.random(in: 1...30, using: &$0) })))
    }
    if let op { history.markFailed(op) }  // A read that never answered changed nothing.
  }

  // MARK: - Nemesis

  private func runNemesis() async {
    while !healed {
      await pause(scheduler.random { options.nemesisInterval.sample(&$0) })
      guard !healed else { return }
      let actions = NodeNemesis.allCases.filter {
        options.nemesis.contains($0)
          && (Engine.supportsMembershipChanges || ($0 != .membershipChange && $0 != .transferLeadership))
      }
      guard !actions.isEmpty else { return }
      await act(actions[scheduler.random { Int.random(in: 0..<actions.count, using: &$0) }])
    }
  }

  private func upMembers() -> [Member] {
    members.keys.sorted().compactMap { members[$0] }.filter { $0.up }
  }

  private func leader() async -> (NodeID, ReplicaNode<Engine, KVStore>)? {
    for member in upMembers() {
      guard let node = member.node, let status = await node.currentStatus, Engine.isLeader(status) else { continue }
      return (member.id, node)
    }
    return nil
  }

  private func pick<T>(_ items: [T]) -> T? {
    guard !items.isEmpty else { return nil }
    return items[scheduler.random { Int.random(in: 0..<items.count, using: &$0) }]
  }

  private func act(_ action: NodeNemesis) async {
    let ids = members.keys.sorted()
    let now = scheduler.now
    switch action {
    case .partition:
      var a: [NodeID] = []
      var b: [NodeID] = []
      for id in ids + (0..<options.clients).map(clientNode) {
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
      guard let (leader, _) = await leader() else { return }
      network.withNetwork { $0.partition([leader], ids.filter { $0 != leader }) }
      stats.partitions += 1
      trace.record(now, "nemesis: isolate leader \(leader)")
    case .heal:
      network.withNetwork { $0.heal() }
      trace.record(now, "nemesis: heal network")
    case .crash:
      let running = upMembers()
      guard running.count > 1, let victim = pick(running) else { return }
      crash(victim.id)
    case .restart:
      guard let down = pick(ids.compactMap { members[$0] }.filter { !$0.up && $0.incarnation > 0 }) else { return }
      start(down.id, joining: false)
    case .pause:
      guard let victim = pick(upMembers()) else { return }
      let length = VirtualDuration.milliseconds(UInt64(scheduler.random { Int.random(in: 20...400, using: &$0) }))
      scheduler.pause(victim.process, until: now + length)
      stats.stalls += 1
      trace.record(now, "nemesis: pause \(victim.id) for \(length)")
    case .stallTimers:
      guard let victim = pick(upMembers()) else { return }
      let length = VirtualDuration.milliseconds(UInt64(scheduler.random { Int.random(in: 20...400, using: &$0) }))
      victim.clock.stallTimers(until: now + length)
      stats.stalls += 1
      trace.record(now, "nemesis: stall \(victim.id)'s timers for \(length)")
    case .jumpWallClock:
      guard let victim = pick(upMembers()) else { return }
      let jump = scheduler.random { Int64.random(in: -3_600_000...3_600_000, using: &$0) }
      victim.clock.jumpWallClock(by: jump)
      trace.record(now, "nemesis: \(victim.id)'s wall clock jumps \(jump) ms")
    case .diskFaults:
      guard let victim = pick(upMembers()) else { return }
      victim.disk.failWrites(probability: 0.05)
      trace.record(now, "nemesis: \(victim.id)'s disk fails 5% of writes")
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
      guard let (leaderID, node) = await leader(), let status = await node.currentStatus,
        let target = pick(Engine.voters(in: status).filter { $0 != leaderID })
      else { return }
      trace.record(now, "nemesis: transfer leadership \(leaderID) -> \(target)")
      scheduler.spawn(on: Self.nemesisProcess) { [self] in
        if (try? await node.transferLeadership(to: target)) != nil { stats.transfers += 1 }
      }
    }
    for member in upMembers() where member.restartWanted { start(member.id, joining: false) }
    for member in members.values where !member.up && member.restartWanted {
      if scheduler.random({ $0.chance(0.5) }) { start(member.id, joining: false) }
    }
  }

  private func changeMembership() async {
    guard let (leaderID, node) = await leader(), let status = await node.currentStatus else { return }
    let voters = Set(Engine.voters(in: status))
    let all = Set(Engine.members(in: status))
    var choices: [MembershipChange] = []
    for id in members.keys.sorted() where !all.contains(id) {
      choices.append(.change([.addLearner(id)]))
      choices.append(.change([.addVoter(id)]))
    }
    for id in all.subtracting(voters).sorted() {
      choices.append(.change([.addVoter(id)]))
      choices.append(.change([.remove(id)]))
    }
    if voters.count > 2 { for id in voters.sorted() { choices.append(.change([.remove(id)])) } }
    guard let change = pick(choices) else { return }
    if case .change(let operations) = change {
      for operation in operations {
        if case .remove = operation { continue }
        // A node joining for the first time starts empty and learns the membership from the leader.
        if let member = members[operation.node], !member.up, member.incarnation == 0 {
          start(operation.node, joining: true)
        }
      }
    }
    trace.record(scheduler.now, "nemesis: membership \(change) via \(leaderID)")
    scheduler.spawn(on: Self.nemesisProcess) { [self] in
      if (try? await node.changeMembership(change)) != nil { stats.membershipChanges += 1 }
    }
  }

  private func heal() {
    healed = true
    network.withNetwork {
      $0.heal()
      $0.defaultFaults = LinkFaults(delay: .uniform(.microseconds(100), .milliseconds(2)))
    }
    for member in members.values {
      member.disk.failWrites(probability: 0)
      if !member.up && member.incarnation > 0 { start(member.id, joining: false) }
    }
    trace.record(scheduler.now, "healed")
  }

  // MARK: - Convergence and histories

  /// After the clients finish: waits until every member of the final membership has applied the same
  /// position and holds the same state as the reference replica.
  private func startConvergenceCheck() {
    scheduler.spawn(on: Self.checkerProcess) { [self] in
      while failure == nil {
        if await replicasAgree() {
          converged = true
          return
        }
        await pause(.milliseconds(20))
      }
    }
  }

  private func replicasAgree() async -> Bool {
    // The group's membership, as its newest leader sees it (a removed leader may linger in an old term).
    var membership: [NodeID] = []
    var newest: UInt64 = 0
    for member in upMembers() {
      guard let node = member.node, let status = await node.currentStatus, Engine.isLeader(status),
        Engine.epoch(status) >= newest
      else { continue }
      newest = Engine.epoch(status)
      membership = Engine.members(in: status)
    }
    guard !membership.isEmpty else { return false }
    var applied: Set<UInt64> = []
    var states: [[KVPair]] = []
    for id in membership {
      guard let member = members[id], member.up, let node = member.node, let status = await node.currentStatus
      else { return false }
      applied.insert(Engine.appliedIndex(status))
      guard case .entries(let pairs) = await node.localQuery(.scan(prefix: "", limit: Int.max)) else { return false }
      states.append(pairs)
    }
    guard applied.count == 1, let index = applied.first, index == checker.referenceApplied,
      states.allSatisfy({ $0 == states[0] })
    else { return false }
    let reference = checker.referenceState
    if states[0] != reference {
      fail("replicas converged on a state that differs from the reference replica's at \(index)")
    }
    return true
  }

  private func checkHistory() throws {
    for (request, response) in writeResponses {
      guard let expected = checker.responses[request] else {
        throw SimulationFailure("write \(request) was acknowledged but never applied")
      }
      if expected != response {
        throw SimulationFailure("write \(request) returned \(response), but applying it gave \(expected)")
      }
      stats.writeResponsesChecked += 1
    }
    for read in staleReads {
      let value = checker.value(of: read.key, at: read.index)
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

/// Checks a simulated cluster while it runs: sees every ready and every apply of every node (through
/// ``QuorumReplica/ReplicaObserver``) and keeps a reference replica fed the committed log.
///
/// The base class checks State Machine Safety (every node applies the same entry at each position), replays the
/// committed log into a reference `KVStore` (with exactly-once sessions, as the nodes do) and remembers each
/// key's values by position, so the simulation can check stale reads and the values writes returned. Engine
/// checkers override ``willCarryOut(_:ready:engine:)`` and ``didPersist(_:ready:)`` for their own invariants.
///
/// `@unchecked Sendable`: a simulation runs every job on one thread, and the observer is only called from jobs.
open class ReplicaChecker<Engine: ReplicaEngine>: ReplicaObserver, @unchecked Sendable {
  /// The first violation found, if any.
  public private(set) var failure: SimulationFailure?
  /// Distinct leaderships seen.
  public var leaderships = 0
  /// The run's trace.
  public let trace: SimulationTrace
  /// The current virtual time (set by the simulation).
  public var now: () -> VirtualTime = { .zero }

  private var appliedDigest: [UInt64: UInt64] = [:]
  private var reference: ReplicatedStateMachine<KVStore>
  /// The last position the reference replica applied.
  public private(set) var referenceApplied: UInt64 = 0
  private var waiting: [UInt64: (isCommand: Bool, data: [UInt8])] = [:]
  private var valuesByKey: [String: [(index: UInt64, value: [UInt8]?)]] = [:]
  /// The response of each request the reference replica applied.
  public private(set) var responses: [RequestID: KVResponse] = [:]

  /// Creates a checker whose reference replica uses `sessions`.
  public init(sessions: SessionPolicy, trace: SimulationTrace) {
    self.reference = ReplicatedStateMachine(KVStore(), policy: sessions)
    self.trace = trace
  }

  /// Records a violation (the first one wins).
  public func fail(_ message: String) {
    if failure == nil { failure = SimulationFailure(message) }
  }

  /// A digest of an entry's kind and payload.
  public static func fingerprint(isCommand: Bool, data: [UInt8]) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325 ^ (isCommand ? 1 : 0)
    for b in data { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    return h
  }

  /// Engine invariants before a ready is carried out.
  open func willCarryOut(_ node: NodeID, ready: ReplicaReady<Engine>, engine: Engine) {}
  /// Engine invariants once a ready's write is durable.
  open func didPersist(_ node: NodeID, ready: ReplicaReady<Engine>) {}
  /// Engine invariants when entries or a hard state of `node` become durable on its disk (by a completed write,
  /// or by surviving a crash in the middle of one).
  open func becameDurable(_ node: NodeID, entries: [Engine.Entry], hardState: [UInt8]?) {}
  /// Engine invariants when a node applies an entry.
  open func didApply(_ node: NodeID, entry: Engine.Entry) {}

  public func node(_ node: NodeID, group: GroupID, willCarryOut ready: ReplicaReady<Engine>, engine: Engine) {
    willCarryOut(node, ready: ready, engine: engine)
  }

  public func node(_ node: NodeID, group: GroupID, didPersist ready: ReplicaReady<Engine>) {
    didPersist(node, ready: ready)
  }

  public func node(_ node: NodeID, group: GroupID, applied entry: Engine.Entry) {
    let digest = Self.fingerprint(isCommand: entry.isCommand, data: entry.data)
    if let seen = appliedDigest[entry.index], seen != digest {
      fail("State Machine Safety: \(node) applied a different entry at \(entry.index)")
    }
    appliedDigest[entry.index] = digest
    didApply(node, entry: entry)
    if entry.index > referenceApplied { waiting[entry.index] = (entry.isCommand, entry.data) }
    while let next = waiting.removeValue(forKey: referenceApplied + 1) {
      referenceApplied += 1
      guard next.isCommand else { continue }
      let outcome = reference.apply(entry: next.data, at: referenceApplied)
      if case .applied(let response) = outcome,
        let command = try? ReplicatedCommand<KVCommand>(wireBytes: next.data)
      {
        if let request = command.request, responses[request] == nil { responses[request] = response }
        if case .command(let body) = command.body {
          let value = reference.machine.value(body.key)
          if valuesByKey[body.key]?.last?.value != value || valuesByKey[body.key] == nil {
            valuesByKey[body.key, default: []].append((referenceApplied, value))
          }
        }
      }
    }
  }

  public func node(_ node: NodeID, group: GroupID, recordedSnapshotAt index: UInt64, compactedThrough: UInt64) {}

  /// The value of `key` after the committed prefix ending at `index`.
  public func value(of key: String, at index: UInt64) -> [UInt8]? {
    valuesByKey[key]?.last(where: { $0.index <= index })?.value ?? nil
  }

  /// The reference replica's whole state.
  public var referenceState: [KVPair] {
    guard case .entries(let pairs) = reference.query(.scan(prefix: "", limit: Int.max)) else { return [] }
    return pairs
  }
}
