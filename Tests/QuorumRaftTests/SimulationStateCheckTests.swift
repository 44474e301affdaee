import QuorumCore
import Testing

@testable import QuorumSimulation

@Suite("The core simulation checks every replica's state")
struct SimulationStateCheckTests {
  @Test("a follower whose installed snapshot leaves it in a state the log does not make fails the run")
  func damagedSnapshotInstallIsCaught() async {
    var options = RaftSimulationOptions()
    options.damagesInstalledSnapshots = true
    let planted = options
    // The 3-node suite installs snapshots in a few of every 80 seeds: some of these 40 do.
    let report = await SimulationRunner.runDetached(seeds: 0..<40) { seed, trace in
      try RaftSimulation(seed: seed, options: planted, trace: trace).run()
    }
    #expect(!report.passed)
    #expect(report.failure?.message.contains("State Machine Safety") == true, "\(report)")
  }
}
