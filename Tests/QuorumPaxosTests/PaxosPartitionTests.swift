import QuorumCore
import QuorumKV
import QuorumPaxos
import Testing

// A replica on the in-process transport sends through its endpoint directly (not through the endpoint protocol):
// the transport's cut links must hold on that path too, or a node cut off from its group would go on deciding.

@Suite("MultiPaxosNode on a partitioned in-process transport", .timeLimit(.minutes(2)))
struct PaxosPartitionTests {
  @Test("a leader cut off from its acceptors chooses nothing: its request fails instead of being applied")
  func isolatedLeaderChoosesNothing() async throws {
    let configuration = try PaxosLiveCluster.fast(members: [1, 2, 3]) { $0.requestTimeout = .milliseconds(300) }
    try await withPaxosCluster(configuration, start: [1, 2, 3]) { cluster in
      let leader = try await cluster.isolateLeader()
      do {
        _ = try await leader.node.propose(.put(key: "lost", value: [1]))
        Issue.record("an isolated leader had a write chosen")
      } catch let error as ConsensusError {
        #expect(error.isLeadershipChurn, "unexpected \(error)")
      }
      #expect(await leader.node.localQuery(.get(key: "lost")) == .value(nil), "applied while cut off")
    }
  }
}

extension PaxosLiveCluster {
  /// Cuts the current leader off from every other node and returns it, checked to lead once it has stepped
  /// everything sent to it before the cut (a node that had lost leadership just before is healed and the next
  /// leader is tried).
  func isolateLeader() async throws -> Leader {
    try await awaitValue("a leader isolated while it leads") {
      let leader = try await self.leader()
      transport.isolate(leader.id)
      // A read queued now is answered in a turn that has stepped every message delivered before the cut.
      _ = try await leader.node.read(.get(key: ""), consistency: .stale)
      let s = await leader.node.status
      if s.role == .leader && s.ballot == leader.ballot { return leader }
      transport.heal()
      return nil
    }
  }
}
