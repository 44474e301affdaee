import QuorumCore
public import QuorumPaxos
import QuorumStorage

/// What a single-decree run of the production role actors did.
public struct SynodNodeSimulationStats: Sendable, CustomStringConvertible {
  /// Scheduler jobs run.
  public var jobs: UInt64 = 0
  /// Crashes injected (acceptors and proposers, including those stopped by disk faults).
  public var crashes = 0
  /// Partitions and cuts injected.
  public var partitions = 0
  /// Process pauses and timer stalls injected.
  public var stalls = 0
  /// Proposals that returned the chosen value.
  public var proposalsReturned = 0
  /// The ballot in which a phase-2 quorum first accepted the chosen value.
  public var chosenIn: Ballot?
  /// Virtual time at the end.
  public var endTime = VirtualTime.zero

  public var description: String {
    "jobs=\(jobs) crashes=\(crashes) partitions=\(partitions) stalls=\(stalls) proposals=\(proposalsReturned) "
      + "chosen-in=\(chosenIn.map(\.description) ?? "-") end=\(endTime)"
  }
}

/// Single-decree Paxos with the production role actors — `PaxosAcceptor`, `PaxosProposer`, `PaxosLearner`,
/// unmodified — on a ``SimulationScheduler``: proposers race to choose their own values while the network
/// partitions, drops, duplicates, reorders and delays, processes pause, timers stall, disks fail writes, and
/// acceptors and proposers crash keeping only what their disks made durable (torn at the record level).
///
/// An oracle sees every acceptance the moment it becomes durable on an acceptor's disk and knows when a phase-2
/// quorum has accepted one ballot: the chosen value. After every job it checks that a ballot carries one value
/// and that at most one value is ever chosen; every value a proposer returns or a learner learns must be that
/// value. After healing, every proposer must return and every learner must learn.
///
/// Safety of `@unchecked Sendable`: touched only by the scheduler's jobs, one at a time, on the thread running ``run()``.
public final class SynodNodeSimulation: @unchecked Sendable {
  private typealias Value = UInt64

  private final class Role {
    let id: NodeID
    let disk: SimulatedDisk<PaxosEntry>?
    let clock: SimulatedClock
    var incarnation: UInt32 = 0
    var up = false
    var acceptor: PaxosAcceptor<Value>?
    var proposer: PaxosProposer<Value>?
    var learner: PaxosLearner<Value>?

    init(id: NodeID, disk: SimulatedDisk<PaxosEntry>?, clock: SimulatedClock) {
      self.id = id
      self.disk = disk
      self.clock = clock
    }

    var process: UInt32 { UInt32(truncatingIfNeeded: id.rawValue) << 16 | incarnation }
  }

  /// The run's seed.
  public let seed: UInt64
  /// The run's options.
  public let options: SynodSimulationOptions
  /// What the run did.
  public private(set) var stats = SynodNodeSimulationStats()

  private let trace: SimulationTrace
  private let scheduler: SimulationScheduler
  private let network: VirtualNetwork<SynodMessage<Value>>
  private let configuration: PaxosConfiguration
  private let acceptorIDs: [NodeID]
  private let proposerIDs: [NodeID]
  private let learnerIDs: [NodeID]
  private var roles: [NodeID: Role] = [:]
  private var healed = false
  private var finishedProposers: Set<NodeID> = []
  private var finishedLearners: Set<NodeID> = []
  private var failure: SimulationFailure?
  // The oracle.
  private var tallies: [Ballot: (value: Value, acceptors: Set<NodeID>)] = [:]
  private var chosen: Value?

  /// Prepares a run; nothing happens until ``run()``.
  public init(seed: UInt64, options: SynodSimulationOptions = SynodSimulationOptions(), trace: SimulationTrace) {
    self.seed = seed
    self.options = options
    self.trace = trace
    self.scheduler = SimulationScheduler(seed: seed)
    self.network = VirtualNetwork(
      scheduler: scheduler, faults: LinkFaults(delay: .uniform(.microseconds(100), .milliseconds(2))))
    acceptorIDs = (1...options.acceptors).map { NodeID(UInt64($0)) }
    proposerIDs = (1...options.proposers).map { NodeID(UInt64(10 + $0)) }
    learnerIDs = (1...options.learners).map { NodeID(UInt64(20 + $0)) }
    var c = PaxosConfiguration()
    c.members = acceptorIDs
    let quorums = options.quorums
    c.phase1Quorum = quorums.phase1
    c.phase2Quorum = quorums.phase2
    c.tickInterval = .nanoseconds(Int64(options.tick.nanoseconds))
    c.retransmitInterval = .nanoseconds(Int64(options.tick.nanoseconds) * Int64(options.retransmitTicks))
    c.proposerBackoffInitial = .nanoseconds(Int64(options.tick.nanoseconds) * Int64(options.backoffInitialTicks))
    c.proposerBackoffMax = .nanoseconds(Int64(options.tick.nanoseconds) * Int64(options.backoffMaxTicks))
    c.requestTimeout = .milliseconds(500)
    c.leaseReads = false
    var coin = SeededRandom(seed: seed ^ 0xD157)
    let distinguished = options.distinguishedProposer ?? coin.chance(0.5)
    if distinguished { c.distinguishedProposer = proposerIDs[0] }
    configuration = c
  }

  /// Runs the chaos phase, then the healed phase.
  /// - Throws: ``SimulationFailure`` on a violated invariant or if the instance does not finish after healing.
  public func run() throws {
    for id in acceptorIDs + proposerIDs + learnerIDs {
      let isLearner = learnerIDs.contains(id)
      let disk: SimulatedDisk<PaxosEntry>? =
        isLearner
        ? nil
        : SimulatedDisk(
          mode: .replace, scheduler: scheduler, latency: options.fsyncLatency,
          onDurable: { [self] _, hardState in
            if let hardState, acceptorIDs.contains(id) { recordAcceptance(hardState, by: id) }
          })
      let drift = scheduler.random { Int64.random(in: -20_000...20_000, using: &$0) }
      roles[id] = Role(id: id, disk: disk, clock: SimulatedClock(scheduler: scheduler, driftPPM: drift))
      start(id)
    }
    for (n, id) in proposerIDs.enumerated() {
      let delay = scheduler.random {
        VirtualDuration(nanoseconds: UInt64.random(in: 0...options.proposeWindow.nanoseconds, using: &$0))
      }
      let value = Value(1000 + n)
      scheduler.schedule(at: scheduler.now + delay) { [self] in drivePropose(id, value: value) }
    }
    for id in learnerIDs { driveLearner(id) }
    scheduler.spawn(on: 0xFFFF_FFF0) { [self] in await runNemesis() }
    scheduler.schedule(at: VirtualTime.zero + options.chaosDuration) { [self] in heal() }
    let deadline = VirtualTime.zero + options.chaosDuration + options.healDeadline
    _ = try scheduler.run(
      until: deadline,
      stopWhen: { [self] in
        failure != nil || (finishedProposers.count == proposerIDs.count && finishedLearners.count == learnerIDs.count)
      },
      afterEachJob: { [self] in if let failure { throw failure } })
    stats.jobs = scheduler.jobsRun
    stats.endTime = scheduler.now
    if let failure { throw failure }
    let missing = Set(proposerIDs).subtracting(finishedProposers).union(Set(learnerIDs).subtracting(finishedLearners))
    guard missing.isEmpty else {
      throw SimulationFailure(
        "liveness: \(missing.sorted()) do not know the chosen value \(options.healDeadline) after healing "
          + "(chosen: \(chosen.map(String.init) ?? "nothing"))")
    }
  }

  private func fail(_ message: String) {
    if failure == nil { failure = SimulationFailure(message) }
  }

  // MARK: - Roles

  private func start(_ id: NodeID) {
    guard let role = roles[id] else { return }
    role.incarnation += 1
    role.up = true
    let endpoint = network.bind(id)
    network.withNetwork { $0.setDown(id, false) }
    let runtime = NodeRuntime(clock: role.clock, executor: scheduler.executor(for: role.process))
    let incarnation = role.incarnation
    trace.record(scheduler.now, "start \(id) incarnation \(incarnation)")
    if acceptorIDs.contains(id), let disk = role.disk {
      let acceptor = PaxosAcceptor<Value>(
        id: id, configuration: configuration, learners: learnerIDs, endpoint: endpoint, storage: disk.open(),
        logger: .disabled)
      role.acceptor = acceptor
      scheduler.spawn(on: role.process) { [self] in
        do { try await acceptor.run() } catch { stopped(id, incarnation: incarnation, error: error) }
      }
    } else if proposerIDs.contains(id), let disk = role.disk {
      let proposer = PaxosProposer<Value>(
        id: id, configuration: configuration, learners: learnerIDs, endpoint: endpoint, storage: disk.open(),
        runtime: runtime, seed: seed ^ id.rawValue << 8 ^ UInt64(incarnation), logger: .disabled)
      role.proposer = proposer
      scheduler.spawn(on: role.process) { [self] in
        do { try await proposer.run() } catch { stopped(id, incarnation: incarnation, error: error) }
      }
    } else {
      let learner = PaxosLearner<Value>(
        id: id, configuration: configuration, peers: learnerIDs.filter { $0 != id }, endpoint: endpoint,
        runtime: runtime, logger: .disabled)
      role.learner = learner
      scheduler.spawn(on: role.process) { [self] in
        do { try await learner.run() } catch { stopped(id, incarnation: incarnation, error: error) }
      }
    }
  }

  private func stopped(_ id: NodeID, incarnation: UInt32, error: any Error) {
    guard let role = roles[id], role.incarnation == incarnation, role.up else { return }
    guard case .io = error as? StorageError else {
      fail("\(id) stopped with an unexpected error: \(error)")
      return
    }
    trace.record(scheduler.now, "\(id) stopped after a disk fault: \(error)")
    crash(id)
  }

  private func crash(_ id: NodeID) {
    guard let role = roles[id], role.up else { return }
    role.up = false
    scheduler.pause(role.process, until: VirtualTime(nanoseconds: .max))
    network.withNetwork { $0.setDown(id, true) }
    role.disk?.crash()
    role.acceptor = nil
    role.proposer = nil
    role.learner = nil
    stats.crashes += 1
    trace.record(scheduler.now, "crash \(id)")
  }

  /// Keeps asking proposer `id` to propose `value` — again and again through the chaos, each answer checked
  /// against the oracle, across the proposer's crashes and restarts — until a call started after the heal returns.
  private func drivePropose(_ id: NodeID, value: Value) {
    guard let role = roles[id], !finishedProposers.contains(id) else { return }
    guard role.up, let proposer = role.proposer else {
      scheduler.schedule(at: scheduler.now + .milliseconds(20)) { [self] in drivePropose(id, value: value) }
      return
    }
    let incarnation = role.incarnation
    let afterHeal = healed
    scheduler.spawn(on: role.process) { [self] in
      do {
        let result = try await proposer.propose(value)
        observe(result, at: id, what: "proposer returned")
        stats.proposalsReturned += 1
        if afterHeal {
          finishedProposers.insert(id)
          return
        }
      } catch {
        trace.record(scheduler.now, "\(id) propose failed: \(error)")
      }
      guard roles[id]?.incarnation == incarnation else { return }
      let pause = VirtualDuration.milliseconds(UInt64(scheduler.random { Int.random(in: 5...60, using: &$0) }))
      scheduler.schedule(at: scheduler.now + pause) { [self] in drivePropose(id, value: value) }
    }
    // A crash freezes the proposer with the call inside: carry on with the next incarnation.
    watchIncarnation(id, incarnation) { [self] in drivePropose(id, value: value) }
  }

  private func watchIncarnation(_ id: NodeID, _ incarnation: UInt32, then action: @escaping @Sendable () -> Void) {
    scheduler.schedule(at: scheduler.now + .milliseconds(50)) { [self] in
      guard let role = roles[id] else { return }
      if role.incarnation != incarnation || !role.up {
        action()
      } else {
        watchIncarnation(id, incarnation, then: action)
      }
    }
  }

  /// Keeps asking learner `id` for the value until a question asked after the heal is answered.
  private func driveLearner(_ id: NodeID) {
    guard let role = roles[id], !finishedLearners.contains(id), let learner = role.learner else { return }
    let afterHeal = healed
    scheduler.spawn(on: role.process) { [self] in
      do {
        let value = try await learner.value()
        observe(value, at: id, what: "learner learned")
        if afterHeal {
          finishedLearners.insert(id)
          return
        }
      } catch {
        trace.record(scheduler.now, "\(id) learner: \(error)")
      }
      try? await scheduler.sleep(for: .milliseconds(UInt64(scheduler.random { Int.random(in: 5...60, using: &$0) })))
      driveLearner(id)
    }
  }

  // MARK: - Oracle

  private func recordAcceptance(_ bytes: [UInt8], by acceptor: NodeID) {
    guard let state = try? AcceptorState<Value>(wireBytes: bytes) else {
      fail("\(acceptor) made an undecodable state durable")
      return
    }
    guard let accepted = state.accepted else { return }
    var tally = tallies[accepted.ballot] ?? (accepted.value, [])
    if tally.value != accepted.value {
      fail("ballot \(accepted.ballot) carries two values: \(tally.value) and \(accepted.value)")
    }
    tally.acceptors.insert(acceptor)
    tallies[accepted.ballot] = tally
    guard tally.acceptors.count >= configuration.quorums.phase2 else { return }
    if let chosen, chosen != accepted.value {
      fail("Safety: \(accepted.value) chosen in \(accepted.ballot) after \(chosen) was chosen")
    }
    if chosen == nil {
      chosen = accepted.value
      stats.chosenIn = accepted.ballot
      trace.record(scheduler.now, "oracle: \(accepted.value) chosen in \(accepted.ballot)")
    }
  }

  private func observe(_ value: Value, at id: NodeID, what: String) {
    guard let chosen else {
      fail("\(id): \(what) \(value), but no value is chosen")
      return
    }
    if value != chosen { fail("\(id): \(what) \(value), but \(chosen) is the chosen value") }
  }

  // MARK: - Nemesis

  private func runNemesis() async {
    let ids = acceptorIDs + proposerIDs + learnerIDs
    while !healed {
      try? await scheduler.sleep(for: scheduler.random { options.nemesisInterval.sample(&$0) })
      guard !healed else { return }
      let roll = scheduler.random { Int.random(in: 0..<10, using: &$0) }
      let now = scheduler.now
      func pick(_ from: [NodeID]) -> NodeID? {
        from.isEmpty ? nil : from[scheduler.random { Int.random(in: 0..<from.count, using: &$0) }]
      }
      switch roll {
      case 0:
        var a: [NodeID] = []
        var b: [NodeID] = []
        for id in ids { if scheduler.random({ Bool.random(using: &$0) }) { a.append(id) } else { b.append(id) } }
        network.withNetwork {
          $0.heal()
          $0.partition(a, b)
        }
        stats.partitions += 1
        trace.record(now, "nemesis: partition \(a) | \(b)")
      case 1:
        guard let from = pick(ids), let to = pick(ids.filter { $0 != from }) else { continue }
        network.withNetwork { $0.cutOneWay(from: from, to: to) }
        stats.partitions += 1
      case 2:
        network.withNetwork { $0.heal() }
      case 3:
        let crashable = (acceptorIDs + proposerIDs).filter { roles[$0]?.up == true }
        if let victim = pick(crashable) { crash(victim) }
      case 4:
        if let down = pick(ids.filter { roles[$0]?.up == false }) { start(down) }
      case 5:
        guard let victim = pick(ids.filter { roles[$0]?.up == true }), let role = roles[victim] else { continue }
        let length = VirtualDuration.milliseconds(UInt64(scheduler.random { Int.random(in: 10...200, using: &$0) }))
        scheduler.pause(role.process, until: now + length)
        stats.stalls += 1
        trace.record(now, "nemesis: pause \(victim) for \(length)")
      case 6:
        guard let victim = pick(ids), let role = roles[victim] else { continue }
        role.clock.stallTimers(
          until: now + .milliseconds(UInt64(scheduler.random { Int.random(in: 10...200, using: &$0) })))
        stats.stalls += 1
      case 7:
        if let victim = pick(acceptorIDs + proposerIDs) { roles[victim]?.disk?.failWrites(probability: 0.1) }
      case 8:
        let faults = scheduler.random { rng in
          LinkFaults(
            dropProbability: Double.random(in: 0.01...0.3, using: &rng),
            duplicateProbability: Double.random(in: 0...0.1, using: &rng),
            delay: .longTail(typical: .milliseconds(1), tail: .milliseconds(200), tailProbability: 0.05),
            reorderProbability: Double.random(in: 0...0.3, using: &rng), reorderWindow: .milliseconds(10))
        }
        network.withNetwork { $0.defaultFaults = faults }
      default:
        network.withNetwork { $0.defaultFaults = LinkFaults(delay: .uniform(.microseconds(100), .milliseconds(2))) }
      }
    }
  }

  private func heal() {
    healed = true
    network.withNetwork {
      $0.heal()
      $0.defaultFaults = LinkFaults(delay: .uniform(.microseconds(100), .milliseconds(2)))
    }
    for id in roles.keys.sorted() {
      guard let role = roles[id] else { continue }
      role.disk?.failWrites(probability: 0)
      if !role.up {
        start(id)
        if learnerIDs.contains(id) { driveLearner(id) }
      }
    }
    trace.record(scheduler.now, "healed")
  }
}
