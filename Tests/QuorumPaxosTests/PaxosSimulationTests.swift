import QuorumCore
import QuorumPaxos
import QuorumSimulation
import Testing

// Whole clusters under the seeded nemesis (partitions, one-way cuts, crashes that lose unsynced writes,
// drops, duplicates, reordering, delays), checked after every event. These debug-build runs cover a few
// hundred seeds; CI runs thousands more in release mode (`quorum simulate --protocol paxos|synod`).

@Suite("Multi-Paxos under simulated faults")
struct PaxosSimulationTests {
  static func run(seeds: Range<UInt64>, options: PaxosSimulationOptions) async -> SimulationReport {
    await SimulationRunner.runDetached(seeds: seeds) { seed, trace in
      try PaxosSimulation(seed: seed, options: options, trace: trace).run()
    }
  }

  @Test("3 nodes, majority quorums, every fault")
  func threeNodes() async {
    let report = await Self.run(seeds: 0..<100, options: PaxosSimulationOptions())
    #expect(report.passed, "\(report)")
  }

  @Test("5 nodes, flexible quorums Q1=4, Q2=2")
  func fiveNodesFlexible() async {
    var options = PaxosSimulationOptions()
    options.nodes = 5
    options.phase1Quorum = 4
    options.phase2Quorum = 2
    let report = await Self.run(seeds: 10_000..<10_030, options: options)
    #expect(report.passed, "\(report)")
  }

  @Test("4 nodes, flexible quorums Q1=2, Q2=3: two leaders may coexist, never two chosen values")
  func fourNodesSmallPhase1() async {
    var options = PaxosSimulationOptions()
    options.nodes = 4
    options.phase1Quorum = 2
    options.phase2Quorum = 3
    let report = await Self.run(seeds: 20_000..<20_030, options: options)
    #expect(report.passed, "\(report)")
  }

  @Test("a run does real work: leaders change, slots are chosen, faults happen, snapshots are installed")
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

@Suite("Single-decree Paxos under simulated faults")
struct SynodSimulationTests {
  static func run(seeds: Range<UInt64>, options: SynodSimulationOptions) async -> SimulationReport {
    await SimulationRunner.runDetached(seeds: seeds) { seed, trace in
      try SynodSimulation(seed: seed, options: options, trace: trace).run()
    }
  }

  @Test("3 acceptors, three dueling proposers, two learners, every fault")
  func threeAcceptors() async {
    let report = await Self.run(seeds: 0..<400, options: SynodSimulationOptions())
    #expect(report.passed, "\(report)")
  }

  @Test("5 acceptors, flexible quorums Q1=4, Q2=2")
  func fiveAcceptorsFlexible() async {
    var options = SynodSimulationOptions()
    options.acceptors = 5
    options.phase1Quorum = 4
    options.phase2Quorum = 2
    let report = await Self.run(seeds: 5_000..<5_200, options: options)
    #expect(report.passed, "\(report)")
  }

  @Test("proposers really duel: some runs need several ballots")
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
