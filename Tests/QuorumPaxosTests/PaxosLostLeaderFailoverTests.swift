import QuorumCore
import QuorumKV
import QuorumPaxos
import Testing

/// As in Raft: the followers of an idle Multi-Paxos leader wait its idle factor times longer — unless their
/// transport reports the leader lost; then the node actors fail over on an active leader's schedule.
@Suite("A reported loss of an idle Multi-Paxos leader", .timeLimit(.minutes(2)))
struct PaxosLostLeaderFailoverTests {
  @Test(
    "a crashed idle leader's followers, told by the transport, elect a new leader long before the stretched timeout")
  func reportedCrashOfAnIdleLeader() async throws {
    // Election timeouts of 400–800 ms stretched 100 times: without the report no follower may probe, nor promise,
    // for at least 40 s after the leader's last heartbeat.
    let configuration = try PaxosLiveCluster.fast(members: [1, 2, 3]) {
      $0.idleHeartbeatFactor = 100
      $0.electionTimeout = .milliseconds(400)...(.milliseconds(800))
    }
    try await withPaxosCluster(configuration, start: [1, 2, 3]) { cluster in
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
      // Unreported, the first campaign comes 40 s after the leader's last heartbeat, which was at most
      // 100 heartbeats (1.5 s) before the crash: at least 38.5 s after it. Reported, one election timeout; the
      // bound leaves room for a loaded machine (a CI run beside two busy processes took 3.5 s with 80–160 ms
      // timeouts, a local run at load 28 took 9.2 s) and still tells the two apart.
      #expect(took < .seconds(20), "a new leader before the stretched timeout: \(took)")
    }
  }
}
