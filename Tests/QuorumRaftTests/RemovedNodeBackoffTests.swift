import QuorumCore
import QuorumTestSupport
import Testing

@testable import QuorumRaft

/// Counts what a cluster's filter sees; a class because the filter is a stored closure.
private final class VoteRequestLog: @unchecked Sendable {
  // Safety of `@unchecked Sendable`: used by one test on one task, never shared.
  var rounds = 0
}

@Suite("Raft: a removed node that never learns its removal committed backs off its campaigns")
struct RemovedNodeBackoffTests {
  /// Four voters led by 1 remove node 4, which receives the joint configuration but nothing after it: the leader
  /// stops replicating to it once it appends the configuration without it. Node 4 campaigns still (a voter of
  /// the joint configuration, which for all it knows did not commit), and the members, holding the new
  /// configuration, drop its requests unanswered.
  static func removedWithoutCommit() throws -> TestCluster {
    var c = TestCluster(4, options: .defaults)
    c.campaign(1)
    #expect(c.leaders == [1])
    let joint = try c.nodes[1]!.proposeMembership(.change([.remove(4)]))  // Tests only: node 1 exists.
    c.stabilize()
    #expect(c[1].membership == Membership(voters: [1, 2, 3]))
    #expect(c[1].commitIndex > joint, "the leader left the joint configuration")
    #expect(c[4].membership.isJoint && !c[4].membership.voters.contains(4), "node 4 holds the joint configuration")
    #expect(c[4].commitIndex <= joint, "and never learns its removal committed")
    #expect(c[4].isPromotable)
    return c
  }

  @Test("its campaigns, which the members drop unanswered, come at most every eight election timeouts", .heavy)
  func removedNodeBacksOff() throws {
    var c = try Self.removedWithoutCommit()
    let requests = VoteRequestLog()
    c.dropFilter = { from, to, message in
      if from == 4, to == 1, case .requestVote = message { requests.rounds += 1 }
      return false
    }
    let ticks = 2_000
    c.tickAll(ticks)
    // Without backing off: one round every 10 to 20 ticks, 100 or more. With it: four rounds at the drawn
    // timeouts, then two, four, eight times longer: at most 4 + 1 + 1 + 2000 / 80.
    #expect(requests.rounds <= 32, "node 4 campaigned \(requests.rounds) times in \(ticks) ticks")
    #expect(requests.rounds >= 4)
    #expect(c[4].campaignBackoff == RaftCore.maxCampaignBackoff)
    #expect(c.leaders == [1], "the members never noticed")
    // A word from a member, and it campaigns on its drawn timeouts again.
    let term = c[1].term
    c.nodes[4]?.step(.heartbeat(Heartbeat(term: term, commit: 0, round: 0)), from: 1)
    #expect(c[4].campaignBackoff == 1)
  }

  @Test(
    "two nodes removed together, answering each other's campaigns, back off as one does alone", .heavy,
    arguments: [true, false])
  func twoRemovedNodesBackOff(preVote: Bool) throws {
    var options = RaftCoreOptions.defaults
    options.preVote = preVote
    var c = TestCluster(5, options: options)
    c.campaign(1)
    #expect(c.leaders == [1])
    let joint = try c.nodes[1]!.proposeMembership(.change([.remove(4), .remove(5)]))  // Tests only: node 1 exists.
    c.stabilize()
    #expect(c[1].membership == Membership(voters: [1, 2, 3]))
    for removed: NodeID in [4, 5] {
      #expect(c[removed].membership.isJoint && !c[removed].membership.voters.contains(removed))
      #expect(c[removed].commitIndex <= joint, "node \(removed) never learns its removal committed")
    }
    let requests = VoteRequestLog()
    c.dropFilter = { from, to, message in
      if from == 4, to == 1, case .requestVote = message { requests.rounds += 1 }
      return false
    }
    let ticks = 2_000
    c.tickAll(ticks)
    // Nodes 4 and 5 answer each other (both hold the joint configuration, which has both as voters); only the
    // members' silence counts. Before, each answer reset the other's backoff: 100 rounds or more.
    #expect(requests.rounds <= 32, "node 4 campaigned \(requests.rounds) times in \(ticks) ticks")
    #expect(c[4].campaignBackoff == RaftCore.maxCampaignBackoff)
    #expect(c[5].campaignBackoff == RaftCore.maxCampaignBackoff)
    #expect(c.leaders == [1], "the members never noticed")
  }

  @Test("a voter cut off from everyone keeps campaigning on its drawn timeouts")
  func isolatedVoterDoesNotBackOff() {
    var node = makeCore(3, peers: ids(3), options: .defaults)
    var rounds = 0
    for _ in 0..<1_000 {
      node.tick()
      for outgoing in node.readMessages() where outgoing.to == 1 {
        if case .requestVote = outgoing.message { rounds += 1 }
      }
    }
    #expect(rounds >= 1_000 / RaftCoreOptions.defaults.electionTimeoutMaxTicks)
    #expect(node.campaignBackoff == 1)
  }
}
