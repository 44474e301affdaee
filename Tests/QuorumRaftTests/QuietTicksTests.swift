import QuorumCore
import QuorumTestSupport
import Testing

@testable import QuorumRaft

/// ``RaftCore/quietTicks`` lets an idle node sleep through ticks and apply them later in one go; that is only
/// sound if those ticks really do nothing but advance counters. These tests tick copies of cores through their
/// quiet ticks in every state a seeded run of elections, partitions, proposals and membership traffic reaches.
@Suite("Quiet ticks are quiet")
struct QuietTicksTests {
  /// Ticks a copy of `core` through its quiet ticks; returns why they were not quiet, if they were not.
  static func loudness(of core: RaftCore) -> String? {
    let quiet = core.quietTicks
    guard quiet > 0 else { return nil }
    var copy = core
    let before = (copy.role, copy.term, copy.leader, copy.commitIndex)
    for tick in 1...min(quiet, 10_000) {  // a leader alone has Int.max quiet ticks
      copy.tick()
      if copy.hasReady { return "tick \(tick) of \(quiet) quiet ones made a ready (\(before))" }
      let after = (copy.role, copy.term, copy.leader, copy.commitIndex)
      if after != before { return "tick \(tick) of \(quiet) quiet ones changed \(before) to \(after)" }
    }
    return nil
  }

  @Test(
    "every node's quiet ticks produce nothing, in every state a faulty run reaches (leaders idling or not)", .heavy,
    arguments: [false, true], [1, 4])
  func quietTicksAreQuiet(checkQuorum: Bool, idleFactor: Int) {
    var options = RaftCoreOptions.paper
    options.preVote = checkQuorum
    options.checkQuorum = checkQuorum
    options.heartbeatTicks = 3
    options.idleHeartbeatFactor = idleFactor
    var cluster = TestCluster(3, options: options, seed: 11)
    var random = SeededRandom(seed: 5)
    var checked = 0
    var quietSeen = 0
    for step in 0..<3_000 {
      for id in cluster.nodes.keys.sorted() {
        let core = cluster[id]
        if core.quietTicks > 0 { quietSeen += 1 }
        if let problem = Self.loudness(of: core) {
          Issue.record("step \(step), \(id) as \(core.role): \(problem)")
          return
        }
        checked += 1
      }
      switch random.next() % 10 {
      case 0: cluster.isolate(NodeID(random.next() % 3 + 1))
      case 1: cluster.heal()
      case 2, 3:
        if let leader = cluster.nodes.values.first(where: { $0.role == .leader })?.id {
          _ = cluster.propose(leader, "v\(step)")
        }
      default: break
      }
      cluster.tickAll()
    }
    #expect(checked == 9_000)
    #expect(quietSeen > 1_000, "the run spends time in quiet states: \(quietSeen) of \(checked)")
  }

  @Test("a leader alone in its group sleeps through every tick: none of them does anything")
  func aLeaderAloneSleeps() {
    var options = RaftCoreOptions()
    options.checkQuorum = true
    var cluster = TestCluster(1, options: options)
    cluster.campaign(1)
    cluster.propose(1, "x")
    #expect(cluster[1].role == .leader)
    #expect(cluster[1].quietTicks == Int.max)
    #expect(Self.loudness(of: cluster[1]) == nil)
  }
}
