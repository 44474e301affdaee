import QuorumCore
import QuorumRaft
import QuorumSimulation
import Testing

@Suite("Raft under simulated faults")
struct RaftSimulationTests {
  static func run(seeds: Range<UInt64>, options: RaftSimulationOptions) async -> SimulationReport {
    await SimulationRunner.runDetached(seeds: seeds) { seed, trace in
      try RaftSimulation(seed: seed, options: options, trace: trace).run()
    }
  }

  @Test("3 nodes, every fault, many seeds")
  func threeNodes() async {
    let report = await Self.run(seeds: 0..<200, options: RaftSimulationOptions())
    #expect(report.passed, "\(report)")
  }

  @Test("5 nodes, every fault, many seeds")
  func fiveNodes() async {
    var options = RaftSimulationOptions()
    options.voters = 5
    let report = await Self.run(seeds: 10_000..<10_100, options: options)
    #expect(report.passed, "\(report)")
  }
}

extension RaftSimulationTests {
  @Test("without pre-vote and check-quorum (the paper's algorithm), a deposed leader lingers; reads stay linearizable")
  func paperAlgorithm() async {
    var options = RaftSimulationOptions()
    options.core.preVote = false
    options.core.checkQuorum = false
    options.core.leaseDurationNanos = 0
    options.readConsistencies = [.linearizable]
    options.nemesis = [.partition, .isolateLeader, .heal, .crash, .restart, .lossyNetwork]
    let report = await Self.run(seeds: 20_000..<20_150, options: options)
    #expect(report.passed, "\(report)")
  }
}
