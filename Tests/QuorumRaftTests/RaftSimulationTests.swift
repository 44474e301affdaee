import QuorumCore
import QuorumRaft
import QuorumSimulation
import Synchronization
import Testing

/// Raft cores under the seeded nemesis. Every seed must pass, and the seeds together must have done what a
/// passing run claims to survive: a simulation that never crashed a node or completed an operation proves nothing.
@Suite("Raft under simulated faults")
struct RaftSimulationTests {
  /// The summed statistics of a batch of runs, and the fewest operations any one run completed.
  /// (`RaftSimulationStats` has no public initializer to sum into.)
  struct Totals: Sendable, CustomStringConvertible {
    var runs = 0
    var fewestOperations = Int.max
    var operationsCompleted = 0
    var leaderships = 0
    var crashes = 0
    var partitions = 0
    var membershipChanges = 0
    var transfers = 0
    var snapshotsTaken = 0
    var snapshotsInstalled = 0
    var idleLeaderTicks = 0
    var lostPeerReports = 0

    mutating func add(_ stats: RaftSimulationStats) {
      runs += 1
      fewestOperations = min(fewestOperations, stats.operationsCompleted)
      operationsCompleted += stats.operationsCompleted
      leaderships += stats.leaderships
      crashes += stats.crashes
      partitions += stats.partitions
      membershipChanges += stats.membershipChanges
      transfers += stats.transfers
      snapshotsTaken += stats.snapshotsTaken
      snapshotsInstalled += stats.snapshotsInstalled
      idleLeaderTicks += stats.idleLeaderTicks
      lostPeerReports += stats.lostPeerReports
    }

    var description: String {
      "\(runs) runs (fewest operations in one: \(fewestOperations)): ops=\(operationsCompleted) "
        + "leaderships=\(leaderships) crashes=\(crashes) partitions=\(partitions) "
        + "membership=\(membershipChanges) transfers=\(transfers) snapshots=\(snapshotsTaken)/\(snapshotsInstalled) "
        + "idle-leader-ticks=\(idleLeaderTicks) lost-peer-reports=\(lostPeerReports)"
    }
  }

  static func run(seeds: Range<UInt64>, options: RaftSimulationOptions) async -> (SimulationReport, Totals) {
    let totals = Mutex(Totals())
    let report = await SimulationRunner.runDetached(seeds: seeds) { seed, trace in
      let simulation = RaftSimulation(seed: seed, options: options, trace: trace)
      defer {
        let stats = simulation.stats
        totals.withLock { $0.add(stats) }
      }
      try simulation.run()
    }
    return (report, totals.withLock { $0 })
  }

  @Test("3 nodes, every fault, many seeds")
  func threeNodes() async {
    let (report, totals) = await Self.run(seeds: 0..<80, options: RaftSimulationOptions())
    #expect(report.passed, "\(report)")
    #expect(report.seedsRun == 80 && totals.runs == 80, "\(report); \(totals)")
    #expect(totals.fewestOperations > 0, "\(totals)")
    let sum = totals
    #expect(sum.operationsCompleted > 8_000 && sum.leaderships > 160, "\(totals)")
    #expect(sum.crashes > 40 && sum.partitions > 40, "\(totals)")
    #expect(sum.membershipChanges > 20 && sum.transfers > 20, "\(totals)")
    #expect(sum.snapshotsTaken > 40 && sum.snapshotsInstalled > 4, "\(totals)")
    #expect(sum.idleLeaderTicks > 100, "odd seeds' leaders idle between faults and requests: \(totals)")
    #expect(sum.lostPeerReports > 100, "lost-peer reports, right and wrong ones: \(totals)")
  }

  @Test("5 nodes, every fault, many seeds")
  func fiveNodes() async {
    var options = RaftSimulationOptions()
    options.voters = 5
    let (report, totals) = await Self.run(seeds: 10_000..<10_040, options: options)
    #expect(report.passed, "\(report)")
    #expect(report.seedsRun == 40 && totals.runs == 40, "\(report); \(totals)")
    #expect(totals.fewestOperations > 0, "\(totals)")
    let sum = totals
    #expect(sum.operationsCompleted > 4_000 && sum.leaderships > 80, "\(totals)")
    #expect(sum.crashes > 20 && sum.partitions > 20 && sum.membershipChanges > 8, "\(totals)")
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
    let (report, totals) = await Self.run(seeds: 20_000..<20_060, options: options)
    #expect(report.passed, "\(report)")
    #expect(report.seedsRun == 60 && totals.runs == 60, "\(report); \(totals)")
    #expect(totals.fewestOperations > 0, "\(totals)")
    let sum = totals
    #expect(sum.operationsCompleted > 6_000 && sum.leaderships > 120, "\(totals)")
    #expect(sum.crashes > 20 && sum.partitions > 20, "\(totals)")
    #expect(sum.membershipChanges == 0 && sum.transfers == 0, "only the faults asked for: \(totals)")
  }
}
