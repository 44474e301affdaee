import QuorumCore
import Testing

@testable import QuorumRaft

/// An idle leader heartbeats `idleHeartbeatFactor` times less often (RaftCoreOptions.idleHeartbeatFactor), and
/// its followers wait as many times longer: what turns it on, what turns it off, and that failover still happens.
@Suite("Idle leaders heartbeat less often")
struct IdleHeartbeatTests {
  static let factor = 5

  static var options: RaftCoreOptions {
    var o = RaftCoreOptions()  // pre-vote and check-quorum on, as in a node
    o.idleHeartbeatFactor = factor
    return o
  }

  /// A 3-node group with node 1 leading and one entry committed everywhere.
  static func settledGroup() -> TestCluster {
    var cluster = TestCluster(3, options: options)
    cluster.campaign(1)
    cluster.propose(1, "x")
    return cluster
  }

  /// Ticks every node `ticks` times; returns the heartbeats the leader sent meanwhile.
  static func heartbeats(in cluster: inout TestCluster, over ticks: Int) -> [Heartbeat] {
    var sent: [Heartbeat] = []
    for _ in 0..<ticks {
      for id in cluster.nodes.keys.sorted() where !cluster.down.contains(id) { cluster.nodes[id]?.tick() }
      cluster.processAll()
      sent += cluster.queue.compactMap { if case .heartbeat(let h) = $0.message { h } else { nil } }
      cluster.stabilize()
    }
    return sent
  }

  @Test("after a quiet election timeout the leader heartbeats factor times less often, and says so")
  func turnsIdle() {
    var cluster = Self.settledGroup()
    #expect(!cluster[1].isIdle)
    let busy = Self.heartbeats(in: &cluster, over: 10)
    #expect(busy.count == 20, "one per tick to each of 2 followers while active: \(busy.count)")
    _ = Self.heartbeats(in: &cluster, over: 20)
    #expect(cluster[1].isIdle)
    let idle = Self.heartbeats(in: &cluster, over: 50)
    #expect(idle.count == 2 * 50 / Self.factor, "\(idle.count)")
    #expect(idle.allSatisfy { $0.idleFactor == UInt64(Self.factor) })
    #expect(cluster[2].leaderIdleFactor == Self.factor && cluster[3].leaderIdleFactor == Self.factor)
    #expect(cluster.leaders == [1] && cluster[1].term == cluster[2].term, "no election meanwhile")
  }

  @Test("a proposal, a read or a transfer ends idling at once; appends tell the followers")
  func requestsWakeTheLeader() throws {
    for request in ["propose", "read", "transfer"] {
      var cluster = Self.settledGroup()
      _ = Self.heartbeats(in: &cluster, over: 30)
      #expect(cluster[1].isIdle, "\(request)")
      switch request {
      case "propose": cluster.propose(1, "y")
      case "read": try cluster.nodes[1]?.requestRead(id: 1)
      default: try cluster.nodes[1]?.transferLeadership(to: 2)
      }
      #expect(cluster[1].isIdle == false, "\(request) woke the leader")
      cluster.stabilize()
      let next = Self.heartbeats(in: &cluster, over: 3)
      if request != "transfer" {
        #expect(next.count == 6 && next.allSatisfy { $0.idleFactor == 1 }, "\(request): \(next)")
        #expect(cluster[2].leaderIdleFactor == 1 && cluster[3].leaderIdleFactor == 1, "\(request)")
      }
    }
  }

  @Test("a leader not allowed to idle (its state machine has a deadline coming) stays active, and wakes if idle")
  func idlingForbidden() {
    var cluster = Self.settledGroup()
    cluster.nodes[1]?.idleAllowed = false
    _ = Self.heartbeats(in: &cluster, over: 40)
    #expect(!cluster[1].isIdle)
    cluster.nodes[1]?.idleAllowed = true
    _ = Self.heartbeats(in: &cluster, over: 30)
    #expect(cluster[1].isIdle)
    cluster.nodes[1]?.idleAllowed = false
    #expect(!cluster[1].isIdle, "forbidding idling wakes the leader")
    let next = Self.heartbeats(in: &cluster, over: 2)
    #expect(next.count == 4 && next.allSatisfy { $0.idleFactor == 1 }, "\(next)")
  }

  @Test("the followers of a crashed idle leader wait factor election timeouts, then elect a new leader")
  func failoverOfAnIdleGroup() throws {
    var cluster = Self.settledGroup()
    _ = Self.heartbeats(in: &cluster, over: 30)
    #expect(cluster[1].isIdle)
    cluster.down.insert(1)
    let minimum = RaftCoreOptions().electionTimeoutMinTicks * Self.factor
    let maximum = RaftCoreOptions().electionTimeoutMaxTicks * Self.factor
    var elected: Int?
    for tick in 1...(maximum + 40) {
      cluster.tickAll()
      if cluster.leaders.contains(where: { $0 != 1 }) {
        elected = tick
        break
      }
    }
    let after = try #require(elected, "a new leader within \(maximum + 40) ticks")
    #expect(after >= minimum - RaftCoreOptions().heartbeatTicks * Self.factor, "not before the idle timeout")
    #expect(cluster[2].leaderIdleFactor == 1 || cluster[3].leaderIdleFactor == 1, "the new leader is active")
  }

  @Test("followers whose transport lost the idle leader elect on an active leader's schedule")
  func lostLeaderIsReplacedOnTheActiveSchedule() throws {
    var cluster = Self.settledGroup()
    _ = Self.heartbeats(in: &cluster, over: 30)
    #expect(cluster[1].isIdle && cluster[2].leaderIdleFactor == Self.factor)
    cluster.down.insert(1)
    cluster.nodes[2]?.peerLost(1)
    cluster.nodes[3]?.peerLost(1)
    #expect(cluster[2].leaderIdleFactor == 1 && cluster[3].leaderIdleFactor == 1)
    // Without the report the followers wait at least electionTimeoutMinTicks × factor (failoverOfAnIdleGroup).
    let active = RaftCoreOptions().electionTimeoutMaxTicks
    #expect(cluster[2].quietTicks < active && cluster[3].quietTicks < active, "they wake on the active schedule")
    var elected: Int?
    for tick in 1...(RaftCoreOptions().electionTimeoutMaxTicks * Self.factor + 40) {
      cluster.tickAll()
      if cluster.leaders.contains(where: { $0 != 1 }) {
        elected = tick
        break
      }
    }
    let after = try #require(elected, "a new leader")
    // Within one active election timeout of the report (and a few ticks for the votes); unreported, the
    // followers would have waited at least electionTimeoutMinTicks × factor less one idle heartbeat interval.
    #expect(after <= active + 3, "\(after) ticks")
  }

  @Test("survivors told their idle leader is lost campaign in turn by rank, so they do not split the vote")
  func lostLeaderSurvivorsTakeTurns() throws {
    // Five nodes, so that three survivors could split three ways; all long past their timeouts when told.
    var cluster = TestCluster(5, options: Self.options)
    cluster.campaign(1)
    cluster.propose(1, "x")
    _ = Self.heartbeats(in: &cluster, over: 60)
    #expect(cluster[1].isIdle)
    let term = cluster[2].term
    cluster.down.insert(1)
    _ = Self.heartbeats(in: &cluster, over: 25)  // Past every active timeout, short of the stretched one.
    for id: NodeID in [2, 3, 4, 5] { cluster.nodes[id]?.peerLost(1) }
    #expect(cluster[2].campaignHold == 0 && cluster[3].campaignHold > 0)
    #expect(cluster[3].campaignHold < cluster[4].campaignHold && cluster[4].campaignHold < cluster[5].campaignHold)
    cluster.tickAll()
    #expect(cluster.leaders.filter { $0 != 1 } == [2], "the first in rank wins at the next tick")
    #expect(cluster[2].term == term + 1, "in one election: no split vote")
    for id: NodeID in [3, 4, 5] { #expect(cluster[id].campaignHold == 0, "the new leader's word ends the wait") }
  }

  @Test("a lost-peer report about a live idle leader costs a refused pre-vote: no leader change, no new term")
  func wrongLostReportDoesNotDisrupt() {
    var cluster = Self.settledGroup()
    _ = Self.heartbeats(in: &cluster, over: 30)
    #expect(cluster[1].isIdle)
    let term = cluster[1].term
    cluster.nodes[3]?.peerLost(1)  // 1 is alive: its link to 3 flapped
    cluster.nodes[2]?.peerLost(3)  // not 2's leader: nothing changes
    #expect(cluster[2].leaderIdleFactor == Self.factor && cluster[3].leaderIdleFactor == 1)
    // The leader's next idle heartbeat would restore node 3's stretch: hold those back, so that node 3 acts on
    // the report (as when the link stays down a while).
    cluster.dropFilter = { _, to, message in
      if to == 3, case .heartbeat(let h) = message, h.idleFactor > 1 { return true }
      return false
    }
    // Unreported, node 3 would wait at least electionTimeoutMinTicks × factor less one idle heartbeat interval.
    var wokenAt: Int?
    for tick in 1...(2 * RaftCoreOptions().electionTimeoutMaxTicks) {
      let wasIdle = cluster[1].isIdle
      cluster.tickAll()
      if wasIdle && !cluster[1].isIdle {
        wokenAt = tick
        break
      }
    }
    #expect(wokenAt != nil, "node 3 campaigned on the active schedule; its pre-vote woke the leader")
    cluster.dropFilter = nil
    _ = Self.heartbeats(in: &cluster, over: 300)
    #expect(cluster.leaders == [1] && cluster[1].term == term, "no leader change, no new term")
    #expect(cluster[1].isIdle, "the group idles again")
  }

  @Test("a leader told a follower is lost probes it, and may idle again once the follower answers")
  func leaderIdlesAgainAfterALostFollower() throws {
    var cluster = Self.settledGroup()
    _ = Self.heartbeats(in: &cluster, over: 30)
    #expect(cluster[1].isIdle)
    cluster.nodes[1]?.peerLost(2)
    #expect(cluster[1].progress[2]?.state == .probe)
    // Something other than a write wakes the leader: no append answer will move node 2 back to replicating.
    try cluster.nodes[1]?.requestRead(id: 1)
    #expect(!cluster[1].isIdle)
    _ = Self.heartbeats(in: &cluster, over: 60)
    #expect(cluster[1].progress[2]?.state == .replicate, "a heartbeat answer from a caught-up follower")
    #expect(cluster[1].isIdle, "idle again without a write")
  }

  @Test("a follower that missed the idle heartbeat campaigns in vain and wakes the leader; the term stays")
  func aFollowerThatMissedTheNewsDoesNotDisrupt() {
    var cluster = Self.settledGroup()
    let term = cluster[1].term
    // Node 3 never hears an idle heartbeat: it keeps the normal timeouts and times out first.
    cluster.dropFilter = { _, to, message in
      if to == 3, case .heartbeat(let h) = message, h.idleFactor > 1 { return true }
      return false
    }
    var woken = 0
    for _ in 0..<400 {
      let wasIdle = cluster[1].isIdle
      cluster.tickAll()
      if wasIdle && !cluster[1].isIdle { woken += 1 }
    }
    #expect(woken > 0, "node 3's pre-votes woke the idle leader")
    #expect(cluster.leaders == [1] && cluster[1].term == term, "no leader change, no new term")
  }

  @Test("a heartbeat carries its idle factor on the wire; one without it (an active or older leader's) reads as 1")
  func wire() throws {
    let idle = RaftMessage.heartbeat(Heartbeat(term: 3, commit: 9, round: 4, idleFactor: 5))
    #expect(try RaftMessage(wireBytes: idle.wireBytes()) == idle)
    let active = RaftMessage.heartbeat(Heartbeat(term: 3, commit: 9, round: 4))
    var old = WireWriter()
    old.writeByte(5)
    old.writeVarint(UInt64(3))
    old.writeVarint(UInt64(9))
    old.writeVarint(UInt64(4))
    #expect(active.wireBytes() == old.bytes, "an active leader's heartbeat is encoded as before")
    #expect(try RaftMessage(wireBytes: old.bytes) == active)
  }

  @Test("the factor is validated: 1 ... RaftCore.maxIdleFactor")
  func validation() {
    var o = RaftCoreOptions()
    o.idleHeartbeatFactor = 0
    #expect(throws: ConfigurationError.self) { try o.validate() }
    o.idleHeartbeatFactor = RaftCore.maxIdleFactor + 1
    #expect(throws: ConfigurationError.self) { try o.validate() }
    // An absurd election timeout is refused, not left to trap in the timer's arithmetic.
    o = RaftCoreOptions()
    o.electionTimeoutMaxTicks = (1 << 30) + 1
    #expect(throws: ConfigurationError.self) { try o.validate() }
    o.electionTimeoutMaxTicks = 1 << 30
    #expect(throws: Never.self) { try o.validate() }
    #expect(throws: ConfigurationError.self) {
      _ = try RaftConfiguration {
        Members(1, 2, 3)
        IdleHeartbeatFactor(0)
      }
    }
    #expect(RaftConfiguration().coreOptions.idleHeartbeatFactor == 5)
  }
}
