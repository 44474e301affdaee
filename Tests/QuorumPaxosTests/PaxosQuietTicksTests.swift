import QuorumCore
import QuorumTestSupport
import Testing

@testable import QuorumPaxos

/// ``MultiPaxosCore/quietTicks`` lets an idle follower sleep through ticks and apply them later in one go; that
/// is only sound if those ticks really do nothing but advance counters. This test ticks copies of cores through
/// their quiet ticks in every state a seeded run of elections, crashes, lost messages and proposals reaches.
@Suite("Multi-Paxos quiet ticks are quiet")
struct PaxosQuietTicksTests {
  /// Ticks a copy of `core` through its quiet ticks; returns why they were not quiet, if they were not.
  static func loudness(of core: MultiPaxosCore) -> String? {
    let quiet = core.quietTicks
    guard quiet > 0 else { return nil }
    var copy = core
    let before = "\(copy.role) \(copy.leader.map { "\($0)" } ?? "-") \(copy.chosenThrough)"
    for tick in 1...min(quiet, 10_000) {  // a leader alone has Int.max quiet ticks
      copy.tick()
      if copy.hasReady { return "tick \(tick) of \(quiet) quiet ones made a ready (\(before))" }
      let after = "\(copy.role) \(copy.leader.map { "\($0)" } ?? "-") \(copy.chosenThrough)"
      if after != before { return "tick \(tick) of \(quiet) quiet ones changed \(before) to \(after)" }
    }
    return nil
  }

  @Test(
    "every node's quiet ticks produce nothing, in every state a faulty run reaches (leaders' too)", .heavy,
    arguments: [2, 5], [1, 4])
  func quietTicksAreQuiet(heartbeatTicks: Int, idleFactor: Int) {
    var options = MultiPaxosOptions.testing(3)
    options.heartbeatTicks = heartbeatTicks
    options.idleHeartbeatFactor = idleFactor
    var cluster = PaxosCluster(3, options: options, seed: 11)
    var random = SeededRandom(seed: 5)
    var checked = 0
    var quietSeen = 0
    var quietLeaders = 0
    for step in 0..<3_000 {
      for id in cluster.members where !cluster.down.contains(id) {
        let core = cluster[id]
        if core.quietTicks > 0 { quietSeen += 1 }
        if core.quietTicks > 0 && core.role == .leader { quietLeaders += 1 }
        if let problem = Self.loudness(of: core) {
          Issue.record("step \(step), \(id) as \(core.role): \(problem)")
          return
        }
        checked += 1
      }
      switch random.next() % 12 {
      case 0:
        // Crash one node for a while (its messages are lost meanwhile).
        cluster.down = [NodeID(random.next() % 3 + 1)]
      case 1:
        for id in cluster.down { cluster.restart(id, seed: random.next()) }
        cluster.down = []
      case 2:
        // Lose a tenth of the messages for a while.
        var loss = SeededRandom(seed: random.next())
        cluster.dropFilter = { _, _, _ in loss.next() % 10 == 0 }
      case 3:
        cluster.dropFilter = nil
      case 4, 5:
        if let leader = cluster.members.first(where: { !cluster.down.contains($0) && cluster[$0].role == .leader }) {
          _ = try? cluster.propose("v\(step)", at: leader)
        }
      default: break
      }
      cluster.tickAll()
    }
    #expect(checked > 7_000)
    #expect(quietSeen > 1_000, "the run spends time in quiet states: \(quietSeen) of \(checked)")
    #expect(quietLeaders > 100, "leaders sleep between heartbeats: \(quietLeaders)")
  }

  @Test("a leader alone in its group sleeps through every tick: none of them does anything")
  func aLeaderAloneSleeps() throws {
    var cluster = PaxosCluster(1, options: MultiPaxosOptions.testing(1))
    cluster.elect(1)
    _ = try cluster.propose("x", at: 1)
    #expect(cluster[1].role == .leader)
    #expect(cluster[1].quietTicks == Int.max)
    #expect(Self.loudness(of: cluster[1]) == nil)
  }
}

@Suite("Multi-Paxos: who may be helped to campaign")
struct PaxosCampaignHelpTests {
  /// The probe answer `to` gives a candidate it does not know as a voter, whose first slot not known chosen is
  /// `ahead` slots past its own.
  static func answer(ahead: Slot) throws -> Bool {
    var cluster = PaxosCluster(3)
    cluster.elect(1)
    for i in 0..<3 { try cluster.propose("v\(i)", at: 1) }
    cluster.down = [1]  // The leader is gone; n2 may promise again once its lease has run out.
    cluster.expireLeases()
    cluster.queue.removeAll()
    var n2 = cluster[2]
    let fromSlot = n2.chosenThrough + 1 + ahead
    n2.step(.probe(Prepare(ballot: Ballot(round: 50, node: 9), fromSlot: fromSlot)), from: 9)
    let rd = n2.ready()
    let answers = (rd.eagerMessages + rd.messages).compactMap { outgoing -> Bool? in
      if case .probeResponse(let response) = outgoing.message, outgoing.to == 9 { return response.granted }
      return nil
    }
    return try #require(answers.first as Bool?)
  }

  @Test("a node that is no voter here is helped only if it knows more of the chosen log (it may be a newer voter)")
  func unknownVoterAhead() throws {
    #expect(try Self.answer(ahead: 0) == false, "a removed node, or a stranger, that knows no more is refused")
    #expect(try Self.answer(ahead: 1) == true, "one that knows more chosen slots may have been added since")
  }
}
