import QuorumCore
import QuorumStorage
import Testing

@testable import QuorumPaxos

// Membership changes, leadership transfer and per-member progress in Multi-Paxos, as transcripts of the pure
// core. The rule (MultiPaxosCore's documentation): one change of at most one voter at a time, with quorum sizes
// that still intersect; a leader sends and stores nothing after a configuration entry until that slot is chosen;
// a candidate needs phase-1 quorums of the configuration it knows and of every configuration the reports hold.

extension MultiPaxosOptions {
  /// The test options with quorums that are majorities of each configuration's voters.
  static func majorities(_ n: Int) -> MultiPaxosOptions {
    var o = MultiPaxosOptions.testing(n)
    o.majorityQuorums = true
    return o
  }
}

extension PaxosCluster {
  /// Starts `id` with nothing stored and no members: a node waiting to be added, which learns the
  /// configuration from the leader.
  mutating func join(_ id: NodeID, seed: UInt64 = 50) {
    nodes[id] = MultiPaxosCore(id: id, members: [], options: options, random: SeededRandom(seed: seed &+ id.rawValue))
    durable[id] = (PaxosHardState(), [:], nil)
    applied[id] = []
    members.append(id)
  }

  /// Proposes a membership change on `leader` and delivers until quiet; returns the configuration's slot.
  @discardableResult
  mutating func change(_ change: MembershipChange, at leader: NodeID) throws(PaxosRequestError) -> Slot {
    var node = self[leader]
    let slot = try node.proposeMembership(change)
    self[leader] = node
    stabilize()
    return slot
  }

  /// Asks `leader` to hand leadership to `target` (without delivering anything).
  mutating func transfer(from leader: NodeID, to target: NodeID) throws(PaxosRequestError) {
    var node = self[leader]
    try node.transferLeadership(to: target)
    self[leader] = node
  }

  /// Ticks every running node once at a time until `done` holds or `limit` ticks passed; returns the ticks.
  mutating func tick(until done: (PaxosCluster) -> Bool, limit: Int) -> Int {
    var n = 0
    while !done(self) && n < limit {
      tickAll()
      n += 1
    }
    return n
  }

  /// The commands `id` applied, in order (no-ops and configurations left out).
  func commands(_ id: NodeID) -> [String] {
    (applied[id] ?? []).filter { $0.kind == .command }.map { String(decoding: $0.data, as: UTF8.self) }
  }

  /// The nodes leading now.
  var leaders: [NodeID] { members.filter { !down.contains($0) && self[$0].role == .leader } }
}

@Suite("Multi-Paxos: membership changes")
struct PaxosMembershipTests {
  @Test("an added learner receives the log and learns the configuration, but counts in no quorum")
  func learner() throws {
    var c = PaxosCluster(3, options: .majorities(3))
    c.join(4)
    c.elect(1)
    try c.propose("a", at: 1)
    let slot = try c.change(.change([.addLearner(4)]), at: 1)
    #expect(c[1].isChosen(slot))
    #expect(c[1].membership == Membership(voters: [1, 2, 3], learners: [4]))
    #expect(c[1].peerProgress[4]?.isLearner == true)
    #expect(c[1].peerProgress[2]?.isLearner == false)
    try c.propose("b", at: 1)
    c.tickAll(c.options.heartbeatTicks * 2)  // The heartbeat shows what the learner misses; catch-up sends it.
    #expect(c.commands(4).suffix(2) == ["a", "b"])
    #expect(c[4].membership == Membership(voters: [1, 2, 3], learners: [4]))
    #expect(!c[4].isPromotable)

    // The leader and the learner accept, but that is one voter of three: nothing is chosen.
    c.down = [2, 3]
    var leader = c[1]
    let lonely = try leader.propose(bytes("c"))
    c[1] = leader
    c.stabilize()
    #expect(c[4].entry(at: lonely)?.data == bytes("c"), "the learner accepted it")
    #expect(!c[1].isChosen(lonely), "a leader and a learner are no phase-2 quorum of {1, 2, 3}")
    c.down = [3]
    _ = c.tick(until: { $0[1].isChosen(lonely) }, limit: c.options.retransmitTicks * 2)
    #expect(c[1].isChosen(lonely), "with voter 2 back it is")
  }

  @Test("a promoted learner counts: four voters need three acceptances")
  func promote() throws {
    var c = PaxosCluster(3, options: .majorities(3))
    c.join(4)
    c.elect(1)
    try c.change(.change([.addLearner(4)]), at: 1)
    try c.change(.change([.addVoter(4)]), at: 1)
    #expect(c[1].membership == Membership(voters: [1, 2, 3, 4]))
    #expect(c[1].peerProgress[4]?.isLearner == false)
    c.down = [2, 3]
    var leader = c[1]
    let slot = try leader.propose(bytes("x"))
    c[1] = leader
    c.stabilize()
    #expect(c[4].entry(at: slot)?.data == bytes("x"))
    #expect(!c[1].isChosen(slot), "two of four voters are no majority")
    c.down = [3]
    _ = c.tick(until: { $0[1].isChosen(slot) }, limit: c.options.retransmitTicks * 2)
    #expect(c[1].isChosen(slot), "three of four are")
  }

  @Test("a removed member learns it was removed, gets nothing more, cannot campaign and is not listened to")
  func remove() throws {
    var c = PaxosCluster(3, options: .majorities(3))
    c.elect(1)
    try c.propose("a", at: 1)
    try c.change(.change([.remove(3)]), at: 1)
    #expect(c[1].membership == Membership(voters: [1, 2]))
    #expect(c[1].peerProgress[3] == nil)
    #expect(c[3].membership == Membership(voters: [1, 2]), "the leader's last word told it the change was chosen")
    try c.propose("b", at: 1)
    #expect(c.commands(2).last == "b")
    #expect(c.commands(3).last != "b")
    c.expireLeases()
    var three = c[3]
    let started = three.campaign()
    #expect(!started)
    let before = c[2].promised
    c.nodes[2]?.step(.prepare(Prepare(ballot: Ballot(round: 99, node: 3), fromSlot: 1)), from: 3)
    #expect(c[2].promised == before, "a prepare from a removed member is ignored")
  }

  @Test("removing the leader: once the change is chosen it hands over to a caught-up voter and steps down")
  func removeLeader() throws {
    var c = PaxosCluster(3, options: .majorities(3))
    c.elect(1)
    try c.propose("a", at: 1)
    try c.change(.change([.remove(1)]), at: 1)
    var leader = c[1]
    #expect(throws: PaxosRequestError.transferInProgress) { try leader.propose(bytes("refused")) }
    // Every acceptor heard from node 1 just now: without the hand-over nobody could lead for an election timeout.
    let ticks = c.tick(until: { !$0.leaders.isEmpty && !$0.leaders.contains(1) }, limit: 50)
    #expect(ticks < c.options.electionTimeoutMinTicks, "the successor took over inside every refusal window")
    let successor = try #require(c.leaders.first)
    #expect([2, 3].contains(successor))
    #expect(c[successor].membership == Membership(voters: [2, 3]))
    #expect(c[1].role == .follower && !c[1].isPromotable)
    try c.propose("b", at: successor)
    #expect(c.commands(2).suffix(2) == ["a", "b"])
    #expect(c.commands(3).suffix(2) == ["a", "b"])
  }

  @Test("a change racing a leader crash: the new leader needs phase-1 quorums of the old and the new configuration")
  func jointPhaseOne() throws {
    var c = PaxosCluster(3, options: .majorities(3))
    c.join(4)
    c.elect(1)
    try c.propose("a", at: 1)
    // Node 1 proposes adding voter 4; only node 2 hears of it, then node 1 crashes.
    c.dropFilter = { from, to, _ in from == 1 && to != 2 }
    var leader = c[1]
    let slot = try leader.proposeMembership(.change([.addVoter(4)]))
    c[1] = leader
    c.stabilize()
    #expect(c[2].entry(at: slot)?.kind == .membership)
    #expect(c[3].entry(at: slot) == nil && c[4].entry(at: slot) == nil)
    c.dropFilter = nil
    c.down = [1, 4]
    // Node 3 never saw the change. {2, 3} is a phase-1 quorum of {1, 2, 3}, but node 2 reports the
    // configuration {1, 2, 3, 4}, of which {2, 3} is no phase-1 quorum (3 of 4): node 3 must not lead.
    c.elect(3)
    #expect(c[3].role == .candidate)
    // With node 4 reachable, node 3 asks it too (a voter the reports revealed) and leads.
    c.down = [1]
    _ = c.tick(until: { $0[3].role == .leader }, limit: c.options.retransmitTicks * 2)
    #expect(c[3].role == .leader)
    #expect(c[3].isChosen(slot), "it completed the change")
    #expect(c[3].membership == Membership(voters: [1, 2, 3, 4]))
    try c.propose("b", at: 3)
    #expect(c.commands(4).last == "b")
  }

  @Test("a node that joins empty learns the configuration from the log, then may campaign and lead")
  func joinEmpty() throws {
    var c = PaxosCluster(3, options: .majorities(3))
    c.join(4)
    #expect(c[4].membership == .empty && !c[4].isPromotable)
    c.elect(1)
    try c.propose("a", at: 1)
    try c.change(.change([.addVoter(4)]), at: 1)
    c.tickAll(c.options.heartbeatTicks * 2)
    #expect(c[4].membership == Membership(voters: [1, 2, 3, 4]))
    #expect(c[4].isPromotable)
    #expect(c.commands(4).contains("a"), "caught up on what was chosen before it joined")
    c.elect(4)
    #expect(c[4].role == .leader)
    try c.propose("b", at: 4)
    #expect(c.commands(1).last == "b")
  }

  @Test("the leader sends and stores nothing after a configuration entry until that slot is chosen")
  func holdsAfterConfiguration() throws {
    var c = PaxosCluster(3, options: .majorities(3))
    c.join(4)
    c.elect(1)
    c.down = [2, 3]
    var leader = c[1]
    let slot = try leader.proposeMembership(.change([.addLearner(4)]))
    let held = try leader.propose(bytes("held"))
    #expect(held == slot + 1)
    c[1] = leader
    c.processAll()
    #expect(c[1].hasPendingMembershipChange)
    #expect(c.durable[1]?.entries[held] == nil, "not even the leader's own acceptor took it")
    let sentHeld = c.queue.contains { item in
      if case .accept(let m) = item.message { return m.entries.contains { $0.index == held } }
      return false
    }
    #expect(!sentHeld)
    #expect(
      throws: PaxosRequestError.membershipChangeRejected("a membership change is already in progress")
    ) {
      var again = c[1]
      _ = try again.proposeMembership(.change([.remove(4)]))
    }
    c.down = [3]
    _ = c.tick(until: { $0[1].isChosen(held) }, limit: c.options.retransmitTicks * 3)
    #expect(c[1].isChosen(slot) && c[1].isChosen(held))
    #expect(c.commands(2).last == "held")
  }

  @Test("flexible quorums: a change that would leave |Q1| + |Q2| ≤ N, or a quorum above N, is refused")
  func flexibleQuorumRefusal() throws {
    var c = PaxosCluster(5, options: .testing(5, phase1: 4, phase2: 2))
    c.join(6)
    c.elect(1)
    do {
      try c.change(.change([.addVoter(6)]), at: 1)
      Issue.record("a sixth voter was accepted with quorums 4 + 2")
    } catch .membershipChangeRejected(let why) {
      #expect(why.contains("4 + 2 do not exceed the 6 voters"), "\(why)")
    } catch {
      Issue.record("unexpected \(error)")
    }
    try c.change(.change([.addLearner(6)]), at: 1)  // Learners do not count: allowed.
    try c.change(.change([.remove(5)]), at: 1)  // 4 + 2 > 4.
    #expect(c[1].membership == Membership(voters: [1, 2, 3, 4], learners: [6]))
    #expect(
      throws: PaxosRequestError.membershipChangeRejected("the phase-1 quorum 4 must be between 1 and the 3 voters")
    ) {
      try c.change(.change([.remove(4)]), at: 1)
    }
    try c.propose("still fine", at: 1)
    #expect(c.commands(2).last == "still fine")
  }

  @Test("a change alters one voter at a time, and configurations are never joint")
  func oneVoterAtATime() {
    let current = Membership(voters: [1, 2, 3], learners: [4])
    let options = MultiPaxosOptions.majorities(3)
    #expect(throws: PaxosRequestError.self) {
      try MultiPaxosCore.membership(after: current, .change([.addVoter(4), .addVoter(5)]), options: options)
    }
    #expect(throws: PaxosRequestError.self) {
      try MultiPaxosCore.membership(after: current, .change([.addVoter(5), .remove(1)]), options: options)
    }
    #expect(throws: PaxosRequestError.self) {
      try MultiPaxosCore.membership(after: current, .leaveJoint, options: options)
    }
    // A demotion is one voter fewer, in one step (no joint configuration to leave).
    let demoted = try? MultiPaxosCore.membership(after: current, .change([.addLearner(3)]), options: options)
    #expect(demoted == Membership(voters: [1, 2], learners: [3, 4]))
  }

  @Test("a snapshot records the configuration; a restart and a node that joins take it from there")
  func snapshotCarriesMembership() throws {
    var c = PaxosCluster(3, options: .majorities(3))
    c.elect(1)
    try c.propose("a", at: 1)
    try c.change(.change([.remove(3)]), at: 1)
    try c.propose("b", at: 1)
    var leader = c[1]
    let snapshot = leader.takeSnapshot(at: leader.appliedThrough, data: bytes("state"), retainEntries: 0)
    c[1] = leader
    #expect(snapshot.membership == Membership(voters: [1, 2]))
    #expect(try PaxosSnapshot(stored: snapshot.stored) == snapshot, "the configuration is in the stored metadata")

    // Node 2 restarts from a snapshot of its own: the founding members are {1, 2, 3}, its snapshot says {1, 2}.
    var two = c[2]
    let own = two.takeSnapshot(at: two.appliedThrough, data: bytes("state"), retainEntries: 0)
    let kept = c.durable[2]?.entries.filter { $0.key > own.index } ?? [:]
    c.durable[2]?.snapshot = own
    c.durable[2]?.entries = kept
    c.restart(2)
    #expect(c[2].membership == Membership(voters: [1, 2]))

    // A node that joins after everything was compacted learns the configuration from the snapshot.
    c.join(5)
    try c.change(.change([.addLearner(5)]), at: 1)
    c.tickAll(c.options.heartbeatTicks * 3)
    #expect(c[5].snapshot?.membership == Membership(voters: [1, 2]))
    #expect(c[5].membership == Membership(voters: [1, 2], learners: [5]))
  }

  @Test("a restart in the middle of a change: the configuration in doubt is completed by the next leader")
  func restartMidChange() throws {
    var c = PaxosCluster(3, options: .majorities(3))
    c.join(4)
    c.elect(1)
    try c.propose("a", at: 1)
    // Node 2 accepts the change; node 1 never hears back, so it never learns the change is chosen.
    c.dropFilter = { from, to, _ in (from == 1 && to != 2) || (from == 2 && to == 1) }
    var leader = c[1]
    let slot = try leader.proposeMembership(.change([.addVoter(4)]))
    _ = try leader.propose(bytes("held"))
    c[1] = leader
    c.stabilize()
    c.dropFilter = nil
    c.down = [1]
    c.restart(2)
    #expect(c[2].membership == Membership(voters: [1, 2, 3]), "not known chosen after the restart")
    #expect(c[2].entry(at: slot)?.kind == .membership, "but held in its log")
    c.elect(2)
    #expect(c[2].role == .leader, "phase-1 quorums {2, 3} of {1, 2, 3} and {2, 3, 4} of {1, 2, 3, 4}")
    #expect(c[2].isChosen(slot))
    #expect(c[2].membership == Membership(voters: [1, 2, 3, 4]))
    #expect(!c.commands(2).contains("held"), "the proposal held behind the change never left node 1")
    try c.propose("b", at: 2)
    #expect(c.commands(4).last == "b")
  }
}

@Suite("Multi-Paxos: leadership transfer")
struct PaxosTransferTests {
  @Test("the target, brought up to date, takes over at once, inside every acceptor's refusal window")
  func transfer() throws {
    var c = PaxosCluster(3, options: .majorities(3))
    c.elect(1)
    try c.propose("a", at: 1)
    try c.transfer(from: 1, to: 3)
    var leader = c[1]
    #expect(throws: PaxosRequestError.transferInProgress) { try leader.propose(bytes("refused")) }
    #expect(leader.leaseReadIndex(now: 0) == nil, "a leader handing over serves no lease read")
    let ticks = c.tick(until: { $0[3].role == .leader }, limit: 50)
    #expect(ticks < c.options.electionTimeoutMinTicks)
    #expect(c[3].role == .leader)
    #expect(c[1].role == .follower && c[1].leader == 3)
    try c.propose("b", at: 3)
    #expect(c.commands(1).suffix(2) == ["a", "b"])
  }

  @Test("a transfer to a target that does not take over is abandoned after an election timeout; proposals resume")
  func transferTimeout() throws {
    var c = PaxosCluster(3, options: .majorities(3))
    c.elect(1)
    try c.propose("a", at: 1)
    c.tickAll(c.options.heartbeatTicks)
    #expect(c[1].leaseReadIndex(now: 0) != nil, "a lease before the transfer")
    c.down = [3]
    try c.transfer(from: 1, to: 3)
    #expect(c[1].transferee == 3)
    c.tickAll(c.options.electionTimeoutMinTicks)
    #expect(c[1].role == .leader && c[1].transferee == nil)
    try c.propose("resumed", at: 1)
    #expect(c.commands(2).last == "resumed")
    #expect(c[1].leaseReadIndex(now: 0) == nil, "the lease stays forfeited in this ballot")
  }

  @Test("a transfer is refused to a non-voter and while a membership change is in doubt")
  func transferRefused() throws {
    var c = PaxosCluster(3, options: .majorities(3))
    c.join(4)
    c.elect(1)
    try c.change(.change([.addLearner(4)]), at: 1)
    #expect(throws: PaxosRequestError.membershipChangeRejected("n4 is not a voter")) {
      try c.transfer(from: 1, to: 4)
    }
    c.down = [2, 3]
    var leader = c[1]
    _ = try leader.proposeMembership(.change([.addVoter(4)]))
    c[1] = leader
    #expect(throws: PaxosRequestError.membershipChangeRejected("a membership change is in progress")) {
      try c.transfer(from: 1, to: 2)
    }
  }
}

@Suite("Multi-Paxos: node simulation regressions")
struct PaxosNodeSimulationRegressionTests {
  // paxos seed 3471 (3 nodes): a new leader re-sent slots 14…19, chosen long before, to an acceptor that knew
  // them chosen and was storing a snapshot at 25 in the background; the acceptor wrote them again in the new
  // ballot, below the snapshot storage had just taken, and stopped with a storage error.
  @Test("an acceptor acknowledges slots it knows chosen without storing them again")
  func chosenSlotsAreNotRewritten() {
    var acceptor = MultiPaxosCore(id: 3, members: ids(3), options: .testing(3), random: SeededRandom(seed: 3))
    let first = Ballot(round: 1, node: 1)
    let values = (1...3).map { PaxosEntry(index: Slot($0), ballot: first, data: bytes("v\($0)")) }
    acceptor.step(.accept(Accept(ballot: first, entries: values, chosenThrough: 3)), from: 1)
    #expect(acceptor.ready().entries.count == 3)
    #expect(acceptor.chosenThrough == 3)

    let second = Ballot(round: 2, node: 2)
    let again = values.map { PaxosEntry(index: $0.index, ballot: second, data: $0.data) }
    acceptor.step(.accept(Accept(ballot: second, entries: again, chosenThrough: 1)), from: 2)
    let rd = acceptor.ready()
    #expect(rd.entries.isEmpty, "nothing to store: every slot is known chosen with that value")
    #expect(
      rd.messages.map(\.message) == [
        .accepted(Accepted(ballot: second, firstSlot: 1, lastSlot: 3, chosenThrough: 3))
      ])
  }
}
