import QuorumCore
import QuorumKV
import QuorumRaft
import Testing

/// The followers of an idle leader wait its idle factor times longer — unless their transport reports the
/// leader lost: then the node actors, not only the pure core, fail over on an active leader's schedule.
@Suite("A reported loss of an idle leader", .timeLimit(.minutes(2)))
struct LostLeaderFailoverTests {
  @Test(
    "a crashed idle leader's followers, told by the transport, elect a new leader long before the stretched timeout")
  func reportedCrashOfAnIdleLeader() async throws {
    // Election timeouts of 80–160 ms stretched 100 times: without the report no follower may campaign, nor grant a
    // vote, for at least 8 s after the leader's last heartbeat.
    let configuration = try LiveCluster.fast(members: [1, 2, 3]) { $0.idleHeartbeatFactor = 100 }
    try await withLiveCluster(configuration, start: [1, 2, 3]) { cluster in
      let leader = try await cluster.leader()
      let followers = [NodeID(1), 2, 3].filter { $0 != leader.id }
      try await eventually("the leader idles and both followers heard so") {
        guard await leader.node.status.isIdle else { return false }
        for id in followers where await cluster.node(id)?.status.leaderIdleFactor != 100 { return false }
        return true
      }
      let crash = ContinuousClock.now
      await cluster.stop(leader.id)  // its endpoint closes: the in-process transport reports it lost
      let next = try await cluster.leader(within: .seconds(60))
      let took = ContinuousClock.now - crash
      #expect(next.id != leader.id)
      // Unreported, the first campaign comes 8 s after the leader's last heartbeat, which was at most
      // 100 heartbeats (1.5 s) before the crash: at least 6.5 s after it. Reported, one election timeout; the
      // bound leaves room for a loaded machine (a CI run beside two busy processes took 3.5 s) and still tells
      // the two apart.
      #expect(took < .seconds(6), "a new leader before the stretched timeout: \(took)")
    }
  }
}
