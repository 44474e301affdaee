import QuorumCore
import QuorumPaxos
import QuorumRaft
import QuorumSimulation
import Synchronization
import Testing

/// The production node actors under the seeded scheduler: every seed must pass, and the seeds together must have
/// exercised the faults they claim to inject (a simulation that never crashed anything proves nothing).
@Suite("Whole-node simulations of the production actors")
struct NodeSimulationTests {
  /// Runs `seeds` and returns the report plus the summed statistics.
  static func run<Engine: SimulatedEngine>(
    _ engine: Engine.Type, seeds: Range<UInt64>, options: NodeSimulationOptions = NodeSimulationOptions()
  ) async -> (SimulationReport, NodeSimulationStats) {
    let total = Mutex(NodeSimulationStats())
    let report = await SimulationRunner.runDetached(seeds: seeds) { seed, trace in
      let simulation = NodeSimulation<Engine>(seed: seed, options: options, trace: trace)
      defer {
        let stats = simulation.stats
        total.withLock { sum in
          sum.jobs += stats.jobs
          sum.crashes += stats.crashes
          sum.partitions += stats.partitions
          sum.stalls += stats.stalls
          sum.diskFaults += stats.diskFaults
          sum.tornRecords += stats.tornRecords
          sum.membershipChanges += stats.membershipChanges
          sum.transfers += stats.transfers
          sum.operationsCompleted += stats.operationsCompleted
          sum.unknownOutcomes += stats.unknownOutcomes
          sum.staleReadsChecked += stats.staleReadsChecked
          sum.writeResponsesChecked += stats.writeResponsesChecked
          sum.leaderships += stats.leaderships
        }
      }
      try simulation.run()
    }
    return (report, total.withLock { $0 })
  }

  @Test("Raft nodes, 3 voters, every fault")
  func raft() async {
    let (report, stats) = await Self.run(RaftEngine.self, seeds: 0..<40)
    #expect(report.passed, "\(report)")
    #expect(report.seedsRun == 40, "\(report)")
    #expect(stats.crashes > 0 && stats.partitions > 0 && stats.stalls > 0, "\(stats)")
    #expect(stats.diskFaults > 0 && stats.membershipChanges > 0, "\(stats)")
    #expect(stats.leaderships > 40, "\(stats)")
    #expect(stats.operationsCompleted > 2_000 && stats.unknownOutcomes > 0, "\(stats)")
    #expect(stats.staleReadsChecked > 100 && stats.writeResponsesChecked > 1_000, "\(stats)")
  }

  @Test("Raft nodes, 5 voters")
  func raftFive() async {
    var options = NodeSimulationOptions()
    options.voters = 5
    let (report, stats) = await Self.run(RaftEngine.self, seeds: 1_000..<1_015, options: options)
    #expect(report.passed, "\(report)")
    #expect(report.seedsRun == 15, "\(report)")
    #expect(stats.operationsCompleted > 500, "\(stats)")
  }

  @Test("Raft nodes, the paper's algorithm (no pre-vote, no check-quorum, no leases)")
  func raftPaper() async {
    var options = NodeSimulationOptions()
    options.variant.raftPaper = true
    options.readConsistencies = [.linearizable, .stale]
    let (report, stats) = await Self.run(RaftEngine.self, seeds: 2_000..<2_015, options: options)
    #expect(report.passed, "\(report)")
    #expect(report.seedsRun == 15, "\(report)")
    #expect(stats.operationsCompleted > 500, "\(stats)")
  }

  @Test("Multi-Paxos nodes, 3 acceptors, every fault")
  func paxos() async {
    let (report, stats) = await Self.run(MultiPaxosEngine.self, seeds: 0..<30)
    #expect(report.passed, "\(report)")
    #expect(report.seedsRun == 30, "\(report)")
    #expect(stats.crashes > 0 && stats.partitions > 0 && stats.stalls > 0 && stats.diskFaults > 0, "\(stats)")
    #expect(stats.operationsCompleted > 1_500 && stats.writeResponsesChecked > 800, "\(stats)")
  }

  @Test("Multi-Paxos nodes, 5 acceptors with flexible quorums 4 and 2")
  func paxosFlexible() async {
    var options = NodeSimulationOptions()
    options.voters = 5
    options.variant.paxosQuorums = (phase1: 4, phase2: 2)
    let (report, stats) = await Self.run(MultiPaxosEngine.self, seeds: 3_000..<3_010, options: options)
    #expect(report.passed, "\(report)")
    #expect(report.seedsRun == 10, "\(report)")
    #expect(stats.operationsCompleted > 300, "\(stats)")
  }

  @Test("Single-decree Paxos role actors: three dueling proposers, every fault")
  func synod() async {
    let proposals = Mutex(0)
    let crashes = Mutex(0)
    let report = await SimulationRunner.runDetached(seeds: 0..<100) { seed, trace in
      let simulation = SynodNodeSimulation(seed: seed, trace: trace)
      defer {
        proposals.withLock { $0 += simulation.stats.proposalsReturned }
        crashes.withLock { $0 += simulation.stats.crashes }
      }
      try simulation.run()
    }
    #expect(report.passed, "\(report)")
    #expect(report.seedsRun == 100, "\(report)")
    #expect(proposals.withLock { $0 } > 3_000)
    #expect(crashes.withLock { $0 } > 20)
  }

  @Test("a seed replays exactly: the same trace, job for job")
  func replay() throws {
    let first = SimulationTrace(enabled: true, capacity: 10)
    let second = SimulationTrace(enabled: true, capacity: 10)
    let a = NodeSimulation<RaftEngine>(seed: 42, trace: first)
    let b = NodeSimulation<RaftEngine>(seed: 42, trace: second)
    try a.run()
    try b.run()
    #expect(first.digest == second.digest)
    #expect(a.stats.jobs == b.stats.jobs)
    #expect(first.recorded > 500)
    let other = SimulationTrace(enabled: true, capacity: 10)
    try NodeSimulation<RaftEngine>(seed: 43, trace: other).run()
    #expect(other.digest != first.digest)
  }
}
