import QuorumCore
import QuorumHost
import QuorumSimulation
import Testing

/// The lock service under the nemesis: production hosts and production `LockClient`s on the seeded scheduler, with
/// every fault plus lock clients that pause past their TTL while holding a lock. ``LockHistoryChecker`` checks
/// the committed logs and the clients' use of their leases after every job; a failure names its seed.
@Suite("Whole-node simulations with a lock workload")
struct LockSimulationTests {
  /// Lock clients only (no key-value clients), so that each seed is about the locks.
  static func options(_ engine: EngineKind) -> ClusterSimulationOptions {
    var options = ClusterSimulationOptions.single(engine)
    options.clients = 0
    options.lockWorkload.clients = 4
    // More pauses and cuts than the default, so that a few seeds of a debug build meet every lease fault.
    options.lockWorkload.pauseProbability = 0.5
    options.lockWorkload.cutProbability = 0.5
    return options
  }

  @Test(
    "lock clients under every fault: no two owners, tokens increase, permits conserved",
    // A debug build beside every other suite: 16 seeds per engine here; CI runs 200 per engine in release. A stale
    // write that meets the fence is rare (the holder must wake past its lease before its loss notice stops it):
    // these ranges hold at least one such seed per engine. The fence itself is tested deterministically in the
    // lock service's anomaly tests.
    arguments: [
      (EngineKind.raft, UInt64(16)..<32), (EngineKind.multiPaxos, UInt64(10_000)..<10_016),
    ])
  func locks(_ engine: EngineKind, _ seeds: Range<UInt64>) async {
    let (report, stats) = await NodeSimulationTests.run(seeds: seeds, options: Self.options(engine))
    #expect(report.passed, "\(report)")
    #expect(report.seedsRun == seeds.count, "\(report)")
    #expect(stats.lockGrants > 10 * seeds.count && stats.lockUses > 100 * seeds.count, "\(stats)")
    #expect(stats.lockLeasesLost > seeds.count / 4, "holders paused past their TTL: \(stats)")
    #expect(stats.lockWritesFenced > 0, "stale writes met the fence: \(stats)")
    #expect(stats.lockStaleReleases > 0, "releases with an old grant's token, each checked to free nothing: \(stats)")
    #expect(stats.crashes > 0 && stats.partitions > 0 && stats.leaderships > seeds.count, "\(stats)")
  }
}
