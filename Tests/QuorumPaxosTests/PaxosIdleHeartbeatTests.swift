import QuorumCore
import Testing

@testable import QuorumPaxos

/// An idle Multi-Paxos leader heartbeats `idleHeartbeatFactor` times less often, and its followers wait as many
/// times longer: what turns it on, what turns it off, and that failover still happens.
@Suite("Idle Multi-Paxos leaders heartbeat less often")
struct PaxosIdleHeartbeatTests {
  static let factor = 4

  static var options: MultiPaxosOptions {
    var o = MultiPaxosOptions.testing(3)
    o.idleHeartbeatFactor = factor
    return o
  }

  /// A 3-node group with node 1 leading and one value chosen everywhere.
  static func settledGroup() throws -> PaxosCluster {
    var cluster = PaxosCluster(3, options: options)
    cluster.elect(1)
    try cluster.propose("x", at: 1)
    return cluster
  }

  /// Ticks every running node `ticks` times; returns the heartbeats sent meanwhile.
  static func heartbeats(in cluster: inout PaxosCluster, over ticks: Int) -> [Heartbeat] {
    var sent: [Heartbeat] = []
    for _ in 0..<ticks {
      for id in cluster.members where !cluster.down.contains(id) { cluster.nodes[id]?.tick() }
      cluster.processAll()
      sent += cluster.queue.compactMap { if case .heartbeat(let h) = $0.message { h } else { nil } }
      cluster.stabilize()
    }
    return sent
  }

  @Test("after a quiet election timeout the leader heartbeats factor times less often, and says so")
  func turnsIdle() throws {
    var cluster = try Self.settledGroup()
    let heartbeatTicks = Self.options.heartbeatTicks
    _ = Self.heartbeats(in: &cluster, over: 30)
    #expect(cluster[1].isIdle)
    let period = heartbeatTicks * Self.factor
    let idle = Self.heartbeats(in: &cluster, over: period * 10)
    #expect(idle.count == 2 * 10, "one per idle period to each of 2 followers: \(idle.count)")
    #expect(idle.allSatisfy { $0.idleFactor == UInt64(Self.factor) })
    #expect(cluster[2].leaderIdleFactor == Self.factor && cluster[3].leaderIdleFactor == Self.factor)
    #expect(cluster[2].leader == 1 && cluster[3].leader == 1 && cluster[1].role == .leader)
  }

  @Test("a proposal, a read or a transfer ends idling at once; the next heartbeats are at the normal rate")
  func requestsWakeTheLeader() throws {
    for request in ["propose", "read", "transfer"] {
      var cluster = try Self.settledGroup()
      _ = Self.heartbeats(in: &cluster, over: 30)
      #expect(cluster[1].isIdle, "\(request)")
      switch request {
      case "propose": try cluster.propose("y", at: 1)
      case "read": try cluster.nodes[1]?.requestRead(id: 1)
      default: try cluster.nodes[1]?.transferLeadership(to: 2)
      }
      #expect(cluster[1].isIdle == false, "\(request) woke the leader")
      cluster.stabilize()
      if request != "transfer" {
        let next = Self.heartbeats(in: &cluster, over: Self.options.heartbeatTicks * 2)
        #expect(!next.isEmpty && next.allSatisfy { $0.idleFactor == 1 }, "\(request): \(next)")
      }
    }
  }

  @Test("the followers of a crashed idle leader wait factor election timeouts, then elect a new leader")
  func failoverOfAnIdleGroup() throws {
    var cluster = try Self.settledGroup()
    _ = Self.heartbeats(in: &cluster, over: 30)
    #expect(cluster[1].isIdle)
    cluster.down.insert(1)
    let minimum = Self.options.electionTimeoutMinTicks * Self.factor
    let maximum = Self.options.electionTimeoutMaxTicks * Self.factor
    var elected: Int?
    for tick in 1...(maximum + 60) {
      cluster.tickAll()
      if cluster[2].role == .leader || cluster[3].role == .leader {
        elected = tick
        break
      }
    }
    let after = try #require(elected, "a new leader within \(maximum + 60) ticks")
    #expect(after >= minimum - Self.options.heartbeatTicks * Self.factor, "not before the idle timeout: \(after)")
  }

  @Test("followers whose transport lost the idle leader elect on an active leader's schedule")
  func lostLeaderIsReplacedOnTheActiveSchedule() throws {
    var cluster = try Self.settledGroup()
    _ = Self.heartbeats(in: &cluster, over: 30)
    #expect(cluster[1].isIdle && cluster[2].leaderIdleFactor == Self.factor)
    cluster.down.insert(1)
    cluster.nodes[2]?.peerLost(1)
    cluster.nodes[3]?.peerLost(1)
    #expect(cluster[2].leaderIdleFactor == 1 && cluster[3].leaderIdleFactor == 1)
    let active = Self.options.electionTimeoutMaxTicks
    #expect(cluster[2].quietTicks < active && cluster[3].quietTicks < active, "they wake on the active schedule")
    var elected: Int?
    for tick in 1...(Self.options.electionTimeoutMaxTicks * Self.factor + 60) {
      cluster.tickAll()
      if cluster[2].role == .leader || cluster[3].role == .leader {
        elected = tick
        break
      }
    }
    let after = try #require(elected, "a new leader")
    // Within one active election timeout of the report (and a few ticks for the ballot); unreported, the
    // followers would have waited at least electionTimeoutMinTicks × factor less one idle heartbeat interval.
    #expect(after <= active + 3, "\(after) ticks")
  }

  @Test("a lost-peer report about a live idle leader costs a refused campaign: no leader change, no new ballot")
  func wrongLostReportDoesNotDisrupt() throws {
    var cluster = try Self.settledGroup()
    _ = Self.heartbeats(in: &cluster, over: 30)
    #expect(cluster[1].isIdle)
    let ballot = cluster[1].promised
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
    for tick in 1...(Self.options.electionTimeoutMaxTicks + 5) {
      let wasIdle = cluster[1].isIdle
      cluster.tickAll()
      if wasIdle && !cluster[1].isIdle {
        wokenAt = tick
        break
      }
    }
    #expect(wokenAt != nil, "node 3 campaigned on the active schedule, which woke the leader")
    cluster.dropFilter = nil
    _ = Self.heartbeats(in: &cluster, over: 300)
    #expect(cluster[1].role == .leader && cluster[1].promised == ballot, "no leader change, no new ballot")
    #expect(cluster[1].isIdle, "the group idles again")
  }

  @Test("a follower that missed the idle heartbeat campaigns in vain and wakes the leader, who stays leader")
  func aFollowerThatMissedTheNewsDoesNotDisrupt() throws {
    var cluster = try Self.settledGroup()
    let ballot = cluster[1].promised
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
    #expect(woken > 0, "node 3's campaign woke the idle leader")
    #expect(cluster[1].role == .leader && cluster[1].promised == ballot, "no new ballot won")
  }

  @Test("a leader not allowed to idle stays active, and wakes when forbidden")
  func idlingForbidden() throws {
    var cluster = try Self.settledGroup()
    cluster.nodes[1]?.idleAllowed = false
    _ = Self.heartbeats(in: &cluster, over: 40)
    #expect(!cluster[1].isIdle)
    cluster.nodes[1]?.idleAllowed = true
    _ = Self.heartbeats(in: &cluster, over: 40)
    #expect(cluster[1].isIdle)
    cluster.nodes[1]?.idleAllowed = false
    #expect(!cluster[1].isIdle)
  }

  @Test("a heartbeat carries its idle factor on the wire; one without it reads as 1; the factor is validated")
  func wireAndValidation() throws {
    let idle = PaxosMessage.heartbeat(
      Heartbeat(ballot: Ballot(round: 2, node: 1), chosenThrough: 9, round: 4, idleFactor: 5))
    #expect(try PaxosMessage(wireBytes: idle.wireBytes()) == idle)
    let active = PaxosMessage.heartbeat(Heartbeat(ballot: Ballot(round: 2, node: 1), chosenThrough: 9, round: 4))
    #expect(try PaxosMessage(wireBytes: active.wireBytes()) == active)
    #expect(active.wireBytes().count < idle.wireBytes().count, "an active leader's heartbeat is encoded as before")
    var o = MultiPaxosOptions.testing(3)
    o.idleHeartbeatFactor = 0
    #expect(throws: ConfigurationError.self) { try o.validate(memberCount: 3) }
    // An absurd election timeout is refused, not left to trap in the timer's arithmetic.
    func refused(_ ticks: Int) -> String? {
      var options = MultiPaxosOptions.testing(3)
      options.electionTimeoutMaxTicks = ticks
      do {
        try options.validate(memberCount: 3)
        return nil
      } catch {
        return error.setting
      }
    }
    #expect(refused((1 << 30) + 1) == "electionTimeoutMaxTicks")
    #expect(refused(1 << 30) != "electionTimeoutMaxTicks")
    #expect(PaxosConfiguration().coreOptions.idleHeartbeatFactor == 5)
  }
}
