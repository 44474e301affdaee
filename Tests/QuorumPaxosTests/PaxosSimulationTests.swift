import QuorumCore
import QuorumPaxos
import QuorumSimulation
import QuorumTestSupport
import Synchronization
import Testing

// Whole clusters under the seeded nemesis (partitions, one-way cuts, crashes that lose unsynced writes,
// drops, duplicates, reordering, delays), checked after every event. These debug-build runs cover a few
// hundred seeds; CI runs thousands more in release mode (`quorum simulate --protocol paxos|synod`).

/// The summed statistics of a batch of Multi-Paxos runs, and the fewest operations any one run completed.
struct PaxosTotals: Sendable, CustomStringConvertible {
  var sum = PaxosSimulationStats()
  var runs = 0
  var fewestOperations = Int.max

  mutating func add(_ stats: PaxosSimulationStats) {
    runs += 1
    fewestOperations = min(fewestOperations, stats.operationsCompleted)
    sum.events += stats.events
    sum.leaderships += stats.leaderships
    sum.crashes += stats.crashes
    sum.partitions += stats.partitions
    sum.snapshotsInstalled += stats.snapshotsInstalled
    sum.snapshotsTaken += stats.snapshotsTaken
    sum.slotsChosen += stats.slotsChosen
    sum.operationsCompleted += stats.operationsCompleted
    sum.retries += stats.retries
    sum.idleLeaderTicks += stats.idleLeaderTicks
    sum.lostPeerReports += stats.lostPeerReports
  }

  var description: String { "\(runs) runs (fewest operations in one: \(fewestOperations)): \(sum)" }
}

@Suite("Multi-Paxos under simulated faults")
struct PaxosSimulationTests {
  static func run(seeds: Range<UInt64>, options: PaxosSimulationOptions) async -> (SimulationReport, PaxosTotals) {
    let totals = Mutex(PaxosTotals())
    let report = await SimulationRunner.runDetached(seeds: seeds) { seed, trace in
      let simulation = PaxosSimulation(seed: seed, options: options, trace: trace)
      defer {
        let stats = simulation.stats
        totals.withLock { $0.add(stats) }
      }
      try simulation.run()
    }
    return (report, totals.withLock { $0 })
  }

  @Test("3 nodes, majority quorums, every fault")
  func threeNodes() async {
    let (report, totals) = await Self.run(seeds: 0..<50, options: PaxosSimulationOptions())
    #expect(report.passed, "\(report)")
    #expect(report.seedsRun == 50 && totals.runs == 50, "\(report); \(totals)")
    #expect(totals.fewestOperations > 0, "\(totals)")
    #expect(totals.sum.operationsCompleted > 5_000 && totals.sum.slotsChosen > 3_500, "\(totals)")
    #expect(totals.sum.leaderships > 75 && totals.sum.crashes > 30 && totals.sum.partitions > 100, "\(totals)")
    #expect(totals.sum.snapshotsTaken > 250 && totals.sum.snapshotsInstalled > 25, "\(totals)")
    #expect(totals.sum.idleLeaderTicks > 0, "odd seeds' leaders idle when every follower is caught up: \(totals)")
    #expect(totals.sum.lostPeerReports > 50, "lost-peer reports, right and wrong ones: \(totals)")
  }

  @Test("5 nodes, flexible quorums Q1=4, Q2=2")
  func fiveNodesFlexible() async {
    var options = PaxosSimulationOptions()
    options.nodes = 5
    options.phase1Quorum = 4
    options.phase2Quorum = 2
    let (report, totals) = await Self.run(seeds: 10_000..<10_015, options: options)
    #expect(report.passed, "\(report)")
    #expect(report.seedsRun == 15 && totals.runs == 15, "\(report); \(totals)")
    #expect(totals.fewestOperations > 0, "\(totals)")
    #expect(totals.sum.operationsCompleted > 1_750 && totals.sum.leaderships > 15, "\(totals)")
    #expect(totals.sum.crashes > 10 && totals.sum.partitions > 25 && totals.sum.snapshotsInstalled > 10, "\(totals)")
  }

  @Test("4 nodes, flexible quorums Q1=2, Q2=3: two leaders may coexist, never two chosen values")
  func fourNodesSmallPhase1() async {
    var options = PaxosSimulationOptions()
    options.nodes = 4
    options.phase1Quorum = 2
    options.phase2Quorum = 3
    let (report, totals) = await Self.run(seeds: 20_000..<20_015, options: options)
    #expect(report.passed, "\(report)")
    #expect(report.seedsRun == 15 && totals.runs == 15, "\(report); \(totals)")
    #expect(totals.fewestOperations > 0, "\(totals)")
    #expect(totals.sum.operationsCompleted > 1_250 && totals.sum.leaderships > 40, "\(totals)")
    #expect(totals.sum.crashes > 10 && totals.sum.partitions > 30 && totals.sum.snapshotsInstalled > 5, "\(totals)")
  }

  @Test("a run does real work: leaders change, slots are chosen, faults happen, snapshots are installed", .heavy)
  func runsDoWork() throws {
    var totals = PaxosSimulationStats()
    for seed: UInt64 in 0..<10 {
      let sim = PaxosSimulation(seed: seed, options: PaxosSimulationOptions(), trace: SimulationTrace(enabled: false))
      try sim.run()
      totals.leaderships += sim.stats.leaderships
      totals.slotsChosen += sim.stats.slotsChosen
      totals.crashes += sim.stats.crashes
      totals.partitions += sim.stats.partitions
      totals.snapshotsInstalled += sim.stats.snapshotsInstalled
      totals.operationsCompleted += sim.stats.operationsCompleted
      #expect(sim.history.count > 0)
    }
    #expect(totals.leaderships > 10)
    #expect(totals.slotsChosen > 500)
    #expect(totals.crashes > 0 && totals.partitions > 0)
    #expect(totals.snapshotsInstalled > 0)
    #expect(totals.operationsCompleted > 500)
  }

  @Test("the same seed replays the same run")
  func deterministic() throws {
    func stats(_ seed: UInt64) throws -> String {
      let sim = PaxosSimulation(seed: seed, options: PaxosSimulationOptions(), trace: SimulationTrace(enabled: false))
      try sim.run()
      return sim.stats.description
    }
    #expect(try stats(77) == stats(77))
  }
}

/// What a batch of single-decree runs did.
struct SynodTotals: Sendable, CustomStringConvertible {
  var runs = 0
  var chosen = 0
  var ballots = 0
  var crashes = 0
  var partitions = 0

  mutating func add(_ stats: SynodSimulationStats) {
    runs += 1
    if stats.chosenIn != nil { chosen += 1 }
    ballots += stats.ballots
    crashes += stats.crashes
    partitions += stats.partitions
  }

  var description: String {
    "\(runs) runs, \(chosen) chose a value: ballots=\(ballots) crashes=\(crashes) partitions=\(partitions)"
  }
}

@Suite("Single-decree Paxos under simulated faults")
struct SynodSimulationTests {
  static func run(seeds: Range<UInt64>, options: SynodSimulationOptions) async -> (SimulationReport, SynodTotals) {
    let totals = Mutex(SynodTotals())
    let report = await SimulationRunner.runDetached(seeds: seeds) { seed, trace in
      let simulation = SynodSimulation(seed: seed, options: options, trace: trace)
      defer {
        let stats = simulation.stats
        totals.withLock { $0.add(stats) }
      }
      try simulation.run()
    }
    return (report, totals.withLock { $0 })
  }

  @Test("3 acceptors, three dueling proposers, two learners, every fault")
  func threeAcceptors() async {
    let (report, totals) = await Self.run(seeds: 0..<200, options: SynodSimulationOptions())
    #expect(report.passed, "\(report)")
    #expect(report.seedsRun == 200 && totals.runs == 200, "\(report); \(totals)")
    #expect(totals.chosen == 200, "every run chooses a value once healed: \(totals)")
    #expect(totals.ballots > 400 && totals.crashes > 150 && totals.partitions > 450, "\(totals)")
  }

  @Test("5 acceptors, flexible quorums Q1=4, Q2=2")
  func fiveAcceptorsFlexible() async {
    var options = SynodSimulationOptions()
    options.acceptors = 5
    options.phase1Quorum = 4
    options.phase2Quorum = 2
    let (report, totals) = await Self.run(seeds: 5_000..<5_100, options: options)
    #expect(report.passed, "\(report)")
    #expect(report.seedsRun == 100 && totals.runs == 100, "\(report); \(totals)")
    #expect(totals.chosen == 100, "every run chooses a value once healed: \(totals)")
    #expect(totals.ballots > 225 && totals.crashes > 75 && totals.partitions > 225, "\(totals)")
  }

  @Test("proposers really duel: some runs need several ballots", .heavy)
  func duels() throws {
    var most = 0
    for seed: UInt64 in 0..<50 {
      let sim = SynodSimulation(seed: seed, options: SynodSimulationOptions(), trace: SimulationTrace(enabled: false))
      try sim.run()
      most = max(most, sim.stats.ballots)
    }
    #expect(most >= 4)
  }
}
