import QuorumCore
import Testing

@testable import QuorumPaxos

// Multi-Paxos as "Paxos Made Simple" §3 describes it (a distinguished leader runs phase 1 once for all
// future slots, then phase 2 per slot; a new leader completes the unfinished slots and fills gaps with
// no-ops), with the engineering of "Paxos Made Live" (leases, catch-up, snapshots) and the quorums of
// Flexible Paxos.

@Suite("Multi-Paxos: phase 1 and leader change")
struct MultiPaxosLeaderChangeTests {
  @Test(
    "a follower that hears no leader probes first; with a phase-1 quorum of grants it promises itself a ballot, then prepares"
  )
  func candidacy() {
    var n = MultiPaxosCore(id: 1, members: ids(3), options: .testing(3), random: SeededRandom(seed: 1))
    n.tick(n.currentElectionTimeout)
    #expect(n.role == .preCandidate)
    let probes = n.ready()
    #expect(probes.hardState == nil, "a probe changes nothing durable")
    guard case .probe(let probe)? = probes.messages.first?.message else {
      Issue.record("expected probes, got \(probes.messages)")
      return
    }
    #expect(probes.messages.map(\.to) == [2, 3])
    n.advance(probes)
    n.step(.probeResponse(ProbeResponse(ballot: probe.ballot, granted: true)), from: 2)
    #expect(n.role == .candidate)
    let rd = n.ready()
    let ballot = n.promised
    #expect(ballot == probe.ballot)
    #expect(rd.hardState == PaxosHardState(promised: ballot), "the self-promise is persisted in this ready")
    #expect(rd.eagerMessages.isEmpty, "nothing is sent before the self-promise is durable")
    #expect(rd.messages.map(\.to) == [2, 3])
    for m in rd.messages { #expect(m.message == .prepare(Prepare(ballot: ballot, fromSlot: 1))) }
  }

  @Test(
    "a node cut off from a leader the others still follow cannot depose it: its probe is refused, its promise unchanged"
  )
  func probeProtectsLeader() throws {
    var c = PaxosCluster(3)
    c.elect(1)
    try c.propose("a", at: 1)
    let leaderBallot = c[1].promised
    c.dropFilter = { from, to, _ in from == 1 && to == 3 }  // Node 3 stops hearing from the leader.
    var three = c[3]
    three.tick(three.currentElectionTimeout + 1)
    c[3] = three
    c.stabilize()
    #expect(c[3].role == .preCandidate)
    #expect(c[3].promised == leaderBallot, "no new promise")
    #expect(c[1].role == .leader)
    try c.propose("b", at: 1)
    #expect(c.appliedTexts(2) == ["a", "b"])
  }

  @Test("with complete promises from a phase-1 quorum the candidate leads")
  func leads() {
    var c = PaxosCluster(3)
    c.elect(1)
    #expect(c[1].role == .leader)
    #expect(c[2].leader == 1 && c[3].leader == 1)
    #expect(c[2].promised == c[1].promised)
  }

  @Test(
    "a new leader proposes, slot by slot, the highest-ballot value its phase-1 quorum reported, and no-ops in the gaps")
  func reproposesAndFillsGaps() {
    // Q1 = 3, Q2 = 1: every acceptor's report counts.
    var c = PaxosCluster(3, options: .testing(3, phase1: 3))
    let old = Ballot(round: 1, node: 3)
    let newer = Ballot(round: 2, node: 3)
    c.durable[2] = (
      PaxosHardState(promised: old),
      [
        1: PaxosEntry(index: 1, ballot: old, data: bytes("old")),
        3: PaxosEntry(index: 3, ballot: old, data: bytes("c")),
      ], nil
    )
    c.durable[3] = (PaxosHardState(promised: newer), [1: PaxosEntry(index: 1, ballot: newer, data: bytes("new"))], nil)
    c.restart(2)
    c.restart(3)
    c.elect(1)
    if c[1].role != .leader { c.elect(1) }  // The first ballot was below the acceptors' promises.
    #expect(c[1].role == .leader)
    let ballot = c[1].promised
    #expect(c[1].entry(at: 1) == PaxosEntry(index: 1, ballot: ballot, data: bytes("new")))
    #expect(c[1].entry(at: 2) == PaxosEntry(index: 2, ballot: ballot, kind: .noop))
    #expect(c[1].entry(at: 3) == PaxosEntry(index: 3, ballot: ballot, data: bytes("c")))
    for id in ids(3) { #expect(c.appliedTexts(id) == ["new", "-", "c"]) }
  }

  @Test("a chosen value never changes: a later leader that never saw it learns it in phase 1 and keeps it")
  func chosenSurvivesLeaderChange() throws {
    var c = PaxosCluster(3)
    c.down = [3]
    c.elect(1)
    try c.propose("x", at: 1)
    #expect(c[1].chosenThrough == 1)
    // Everyone restarts (forgetting what they knew was chosen); node 3, which never saw "x", leads.
    c.down = []
    for id in ids(3) { c.restart(id, seed: id.rawValue) }
    c.down = [1]
    c.elect(3)
    #expect(c[3].role == .leader)
    try c.propose("y", at: 3)
    #expect(c.appliedTexts(3) == ["x", "y"])
    #expect(c.appliedTexts(2) == ["x", "y"])
  }

  @Test("a deposed leader's accepts are refused with the higher ballot, and it steps down")
  func deposedLeaderStepsDown() throws {
    var c = PaxosCluster(3)
    c.elect(1)
    try c.propose("a", at: 1)
    c.down = [1]
    c.elect(2)
    #expect(c[2].role == .leader)
    c.down = []
    var one = c[1]
    _ = try one.propose(bytes("late"))
    c[1] = one
    c.stabilize()
    #expect(c[1].role == .follower)
    try c.propose("b", at: 2)
    #expect(c[1].promised == c[2].promised, "it follows the new leader")
    for id in ids(3) { #expect(c.appliedTexts(id).last == "b") }
    #expect(!c.appliedTexts(2).contains("late"))
  }

  @Test("a candidate whose first unknown slot a minority compacted leads on the others' promises")
  func behindSnapshotOfAMinority() {
    // Seed 41000749: the only acceptor ahead was one that removed itself from the group, and never campaigned.
    var candidate = MultiPaxosCore(id: 1, members: ids(3), options: .testing(3), random: SeededRandom(seed: 1))
    candidate.sinceLeaderContact = 100
    let started = candidate.campaign()
    #expect(started)
    _ = candidate.readMessages()
    let ballot = candidate.promised
    candidate.step(
      .reject(Reject(ballot: ballot, promised: .zero, reason: .behindSnapshot, snapshotIndex: 10)), from: 2)
    #expect(candidate.role == .candidate, "nodes 1 and 3 are still a phase-1 quorum")
    candidate.step(
      .promise(Promise(ballot: ballot, fromSlot: 1, entries: [], coveredThrough: 0, lastSlot: 0, chosenThrough: 0)),
      from: 3)
    _ = candidate.ready()
    #expect(candidate.role == .leader)
  }

  @Test("a candidate whose first unknown slot an acceptor has compacted is refused and waits")
  func behindSnapshotRefused() {
    var acceptor = MultiPaxosCore(
      id: 2, members: ids(3), options: .testing(3), snapshot: PaxosSnapshot(index: 10, data: []),
      random: SeededRandom(seed: 2))
    acceptor.sinceLeaderContact = 100
    let ballot = Ballot(round: 1, node: 1)
    acceptor.step(.prepare(Prepare(ballot: ballot, fromSlot: 3)), from: 1)
    let reply = acceptor.readMessages()
    #expect(reply.count == 2)
    #expect(
      reply.first?.message
        == .reject(Reject(ballot: ballot, promised: .zero, reason: .behindSnapshot, snapshotIndex: 10)))
    // Then it offers its snapshot, outside any ballot (the candidate installs it without following it).
    if case .snapshot(let chunk) = reply.last?.message {
      #expect(chunk.ballot == .zero && chunk.index == 10 && chunk.offset == 0)
    } else {
      Issue.record("no snapshot offered: \(reply)")
    }
    #expect(acceptor.promised == .zero, "the refusal promises nothing")
    var candidate = MultiPaxosCore(id: 1, members: ids(3), options: .testing(3), random: SeededRandom(seed: 1))
    candidate.sinceLeaderContact = 100  // Past the stickiness a node starts with.
    let started = candidate.campaign()
    #expect(started)
    _ = candidate.readMessages()
    for acceptor: NodeID in [2, 3] {
      candidate.step(
        .reject(Reject(ballot: candidate.promised, promised: .zero, reason: .behindSnapshot, snapshotIndex: 10)),
        from: acceptor)
    }
    // With both others refusing, no phase-1 quorum is left to report the compacted slots.
    #expect(candidate.role == .follower)
    #expect(candidate.currentElectionTimeout > candidate.options.electionTimeoutMaxTicks, "it waits longer")
  }
}

@Suite("Multi-Paxos: phase 2")
struct MultiPaxosPhase2Tests {
  @Test("proposals made together travel as one batched accept per acceptor")
  func batching() throws {
    var c = PaxosCluster(3)
    c.elect(1)
    var leader = c[1]
    for text in ["a", "b", "c"] { _ = try leader.propose(bytes(text)) }
    let rd = leader.ready()
    let accepts = rd.eagerMessages.filter { if case .accept = $0.message { true } else { false } }
    #expect(accepts.map(\.to) == [2, 3])
    for m in accepts {
      guard case .accept(let a) = m.message else { continue }
      #expect(a.entries.map(\.index) == [1, 2, 3])
    }
    #expect(rd.entries.map(\.index) == [1, 2, 3], "the leader's own acceptance is persisted in the same ready")
  }

  @Test("the pipeline to each acceptor is bounded by maxInflightMessages")
  func pipelineBound() throws {
    var options = MultiPaxosOptions.testing(3)
    options.maxInflightMessages = 2
    options.maxEntriesBytesPerMessage = 1  // One entry per message.
    var c = PaxosCluster(3, options: options)
    c.elect(1)
    var leader = c[1]
    for i in 0..<5 { _ = try leader.propose(bytes("v\(i)")) }
    let rd = leader.ready()
    let toTwo = rd.eagerMessages.filter { $0.to == 2 && { if case .accept = $0.message { true } else { false } }($0) }
    #expect(toTwo.count == 2)
    c[1] = leader
    leader.advance(rd)
    c[1] = leader
    for m in rd.eagerMessages + rd.messages { c.queue.append((1, m.to, m.message)) }
    c.stabilize()
    for id in ids(3) { #expect(c.appliedTexts(id) == ["v0", "v1", "v2", "v3", "v4"]) }
  }

  @Test("a slot is chosen once a phase-2 quorum accepted it; the leader's own acceptance counts once durable")
  func chosenNeedsDurableQuorum() throws {
    var c = PaxosCluster(3)
    c.elect(1)
    var leader = c[1]
    let slot = try leader.propose(bytes("a"))
    let rd = leader.ready()
    let ballot = leader.promised
    leader.step(.accepted(Accepted(ballot: ballot, firstSlot: slot, lastSlot: slot, chosenThrough: 0)), from: 2)
    #expect(!leader.isChosen(slot), "one acceptor of two: the leader's own write is not durable yet")
    leader.advance(rd)
    #expect(leader.isChosen(slot))
  }

  @Test("acceptances in another ballot do not count")
  func staleAcceptancesIgnored() throws {
    var c = PaxosCluster(3)
    c.elect(1)
    var leader = c[1]
    let slot = try leader.propose(bytes("a"))
    leader.advance(leader.ready())
    let other = Ballot(round: 0, node: 2)
    leader.step(.accepted(Accepted(ballot: other, firstSlot: slot, lastSlot: slot, chosenThrough: 0)), from: 2)
    #expect(!leader.isChosen(slot))
  }

  @Test("an acceptor learns a slot is chosen only if it accepted it in the leader's ballot")
  func learnsByBallot() {
    let old = Ballot(round: 1, node: 3)
    let leaderBallot = Ballot(round: 2, node: 1)
    var f = MultiPaxosCore(
      id: 2, members: ids(3), options: .testing(3), hardState: PaxosHardState(promised: old),
      entries: [PaxosEntry(index: 1, ballot: old, data: bytes("maybe"))], random: SeededRandom(seed: 2))
    f.step(.heartbeat(Heartbeat(ballot: leaderBallot, chosenThrough: 1, round: 1)), from: 1)
    #expect(!f.isChosen(1), "slot 1 holds a proposal of another ballot")
    let reply = f.readMessages()
    #expect(
      reply.map(\.message) == [
        .heartbeatResponse(HeartbeatResponse(ballot: leaderBallot, round: 1, leaderChosenThrough: 1, chosenThrough: 0))
      ])
    f.step(
      .accept(
        Accept(
          ballot: leaderBallot, entries: [PaxosEntry(index: 1, ballot: leaderBallot, data: bytes("chosen"))],
          chosenThrough: 1)), from: 1)
    #expect(f.isChosen(1))
    #expect(f.entry(at: 1)?.data == bytes("chosen"))
  }

  @Test("a replica that missed slots reports a chosen point below the leader's and is sent them again")
  func catchUp() throws {
    var c = PaxosCluster(3)
    c.down = [3]
    c.elect(1)
    for text in ["a", "b", "c"] { try c.propose(text, at: 1) }
    c.down = []
    c.tickAll(c.options.heartbeatTicks * 2)
    #expect(c.appliedTexts(3) == ["a", "b", "c"])
  }

  @Test("a replica behind the leader's compaction point is sent the snapshot")
  func snapshotCatchUp() throws {
    var options = MultiPaxosOptions.testing(3)
    options.snapshotChunkBytes = 3
    var c = PaxosCluster(3, options: options)
    c.down = [3]
    c.elect(1)
    for i in 0..<6 { try c.propose("v\(i)", at: 1) }
    var leader = c[1]
    leader.takeSnapshot(at: 6, data: bytes("snapshot-6"), retainEntries: 0)
    c[1] = leader
    c.down = []
    c.tickAll(c.options.heartbeatTicks * 2)
    #expect(
      c[3].snapshot == PaxosSnapshot(index: 6, membership: Membership(voters: [1, 2, 3]), data: bytes("snapshot-6")))
    #expect(c[3].chosenThrough == 6)
    try c.propose("after", at: 1)
    #expect(c.appliedTexts(3) == ["after"], "applied after the snapshot")
  }

  /// A leader that compacted past replica 3 (down meanwhile) has just begun sending it a snapshot of `chunks`
  /// chunks of 3 bytes: the first chunk is in the queue. Returns the cluster and the snapshot's bytes.
  static func sendingSnapshot(chunks: Int) throws -> (PaxosCluster, [UInt8]) {
    var options = MultiPaxosOptions.testing(3)
    options.snapshotChunkBytes = 3
    var c = PaxosCluster(3, options: options)
    c.down = [3]
    c.elect(1)
    for i in 0..<6 { try c.propose("v\(i)", at: 1) }
    let data = [UInt8](repeating: 7, count: 3 * chunks)
    var leader = c[1]
    leader.takeSnapshot(at: 6, data: data, retainEntries: 0)
    c[1] = leader
    c.down = []
    for _ in 0..<c.options.heartbeatTicks { c.nodes[1]?.tick() }
    c.processAll()
    return (c, data)
  }

  @Test(
    "duplicated snapshot acknowledgements and a late duplicate of the first chunk neither multiply the chunk streams nor restart the transfer"
  )
  func duplicateSnapshotAcksDoNotMultiplyChunks() throws {
    var (c, data) = try Self.sendingSnapshot(chunks: 20)
    var chunks = 0
    var duplicatedAcks = 0
    var firstChunk: PaxosMessage?
    while !c.queue.isEmpty {
      let (from, to, message) = c.queue.removeFirst()
      var copies = 1
      if case .snapshot(let chunk) = message {
        chunks += 1
        if chunk.offset == 0 { firstChunk = message }
        if chunk.offset == 30, let firstChunk {
          c.nodes[to]?.step(firstChunk, from: from)  // the network delivers the first chunk again, late
          c.processAll()
        }
      }
      if case .snapshotAck = message, duplicatedAcks < 3 {
        duplicatedAcks += 1
        copies = 2  // the network delivers this acknowledgement twice
      }
      for _ in 0..<copies {
        c.nodes[to]?.step(message, from: from)
        c.processAll()
      }
    }
    #expect(c[3].snapshot?.data == data, "the transfer completed")
    #expect(chunks <= 20 + duplicatedAcks + 1, "\(chunks) chunks sent for a 20-chunk snapshot")
  }

  @Test("a stale acknowledgement past what the replica holds, after a lost chunk, does not stall the transfer")
  func staleSnapshotAckAfterALostChunk() throws {
    var (c, data) = try Self.sendingSnapshot(chunks: 10)
    var lostOne = false
    for _ in 0..<500 where c[3].snapshot?.data != data {
      guard !c.queue.isEmpty else {
        c.nodes[1]?.tick()  // the stall timer resends
        c.processAll()
        continue
      }
      let (from, to, message) = c.queue.removeFirst()
      if case .snapshot(let chunk) = message, chunk.offset == 3, !lostOne {
        lostOne = true
        // The chunk at 3 is lost, and an old acknowledgement of 6 (from an earlier transfer, say) arrives.
        c.nodes[1]?.step(
          .snapshotAck(SnapshotAck(ballot: chunk.ballot, index: chunk.index, nextOffset: 6, reject: false)), from: 3)
        c.processAll()
        continue
      }
      c.nodes[to]?.step(message, from: from)
      c.processAll()
    }
    #expect(lostOne)
    #expect(c[3].snapshot?.data == data, "the transfer never finished")
  }

  @Test(
    "a chosen slot resent in a new ballot is acknowledged but not written again (found by the node simulation)"
  )
  func chosenSlotsAreNotRewritten() throws {
    var c = PaxosCluster(3)
    c.elect(1)
    for i in 0..<3 { try c.propose("v\(i)", at: 1) }
    c.tickAll(c.options.heartbeatTicks * 2)
    #expect(c[2].chosenThrough == 3)
    c.elect(3)
    #expect(c[3].role == .leader)
    var two = c[2]
    _ = two.ready()
    let ballot = c[3].promised
    // Storage may already hold a snapshot past slot 2 that this core has not recorded yet: writing slot 2 again
    // would be refused there and stop the node. The chosen value is final anyway.
    two.step(
      .accept(
        Accept(ballot: ballot, entries: [PaxosEntry(index: 2, ballot: ballot, data: bytes("v1"))], chosenThrough: 3)),
      from: 3)
    let rd = two.ready()
    #expect(rd.entries.isEmpty, "wrote \(rd.entries)")
    #expect(
      rd.messages.contains { if case .accepted(let a) = $0.message { return a.lastSlot == 2 } else { return false } })
  }

  @Test(
    "a replica that restarts forgetting what was chosen is repaired from where it really is (found by the node simulation)"
  )
  func restartedReplicaIsRepairedFromItsRealChosenPoint() throws {
    var c = PaxosCluster(3)
    c.elect(1)
    for i in 0..<6 { try c.propose("v\(i)", at: 1) }
    // A new ballot of the same leader: slots 1...6 stay chosen in the old ballot, in every log.
    c.elect(1)
    try c.propose("x", at: 1)
    #expect((c[1].peerProgress[2]?.chosenThrough ?? 0) >= 6, "the leader heard node 2 was far along")
    // Node 2 restarts: its log holds slots 1...7, but which were chosen is not durable. It can learn slot 7 from
    // the leader's chosen notice (same ballot) but not slots 1...6 (older ballot): the leader must resend them.
    c.restart(2)
    c.tickAll(c.options.heartbeatTicks * 4)
    #expect(c[2].chosenThrough == 7)
    #expect(c.appliedTexts(2) == ["v0", "v1", "v2", "v3", "v4", "v5", "x"])
  }

}

@Suite("Multi-Paxos: leases and reads")
struct MultiPaxosReadTests {
  @Test("an acceptor that heard from its leader refuses to promise another ballot for a minimum election timeout")
  func leaderStickiness() {
    var c = PaxosCluster(3)
    c.elect(1)
    var f = c[3]
    let ballot = Ballot.next(above: f.promised, for: 2)
    f.step(.heartbeat(Heartbeat(ballot: c[1].promised, chosenThrough: 0, round: 9)), from: 1)
    _ = f.readMessages()
    f.step(.prepare(Prepare(ballot: ballot, fromSlot: 1)), from: 2)
    #expect(f.readMessages().isEmpty, "refused silently")
    #expect(f.promised == c[1].promised)
    f.tick(c.options.electionTimeoutMinTicks)
    f.step(.prepare(Prepare(ballot: ballot, fromSlot: 1)), from: 2)
    #expect(f.promised == ballot)
  }

  @Test(
    "a restarted acceptor refuses new ballots for a minimum election timeout: it cannot know when it last heard a leader"
  )
  func stickinessAfterRestart() {
    var f = MultiPaxosCore(id: 3, members: ids(3), options: .testing(3), random: SeededRandom(seed: 3))
    let ballot = Ballot(round: 4, node: 2)
    f.step(.prepare(Prepare(ballot: ballot, fromSlot: 1)), from: 2)
    #expect(f.promised == .zero)
    f.tick(f.options.electionTimeoutMinTicks)
    f.step(.prepare(Prepare(ballot: ballot, fromSlot: 1)), from: 2)
    #expect(f.promised == ballot)
  }

  @Test("a linearizable read is confirmed by a heartbeat round that a phase-2 quorum acknowledged")
  func readIndex() throws {
    var c = PaxosCluster(3)
    c.elect(1)
    try c.propose("a", at: 1)
    c.down = [2, 3]
    var leader = c[1]
    try leader.requestRead(id: 7)
    c[1] = leader
    c.stabilize()
    #expect(c.readStates[1, default: []].isEmpty, "no quorum answered")
    c.down = [3]
    leader = c[1]
    try leader.requestRead(id: 8)
    c[1] = leader
    c.stabilize()
    #expect(c.readStates[1]?.map(\.id) == [7, 8])
    #expect(c.readStates[1]?.last?.index == 1)
  }

  @Test("a follower refuses reads and proposals, naming its leader")
  func followerRedirects() {
    var c = PaxosCluster(3)
    c.elect(1)
    var f = c[2]
    #expect(throws: PaxosRequestError.notLeader(hint: 1)) { try f.requestRead(id: 1) }
    #expect(throws: PaxosRequestError.notLeader(hint: 1)) { _ = try f.propose([1]) }
  }

  @Test("a lease read is served without a round trip while the lease lasts")
  func lease() throws {
    var c = PaxosCluster(3)
    c.elect(1)
    try c.propose("a", at: 1)
    let lease = c.options.leaseDurationNanos
    // The heartbeat round sent at time 0, when it took office, was acknowledged by a quorum.
    #expect(c[1].leaseReadIndex(now: lease / 2) == 1)
    #expect(c[1].leaseReadIndex(now: lease) == nil, "expired")
    var leader = c[1]
    leader.tick(now: 1_000)
    leader.tick(now: 1_000)  // A heartbeat round goes out at time 1000.
    c[1] = leader
    #expect(c[1].leaseReadIndex(now: 1_010) == nil, "not acknowledged yet")
    c.stabilize()
    #expect(c[1].leaseReadIndex(now: 1_010) == 1)
    #expect(c[1].leaseReadIndex(now: 1_000 + lease) == nil, "expired")
  }

  @Test("a leader cut off from a phase-2 quorum steps down (check-quorum)")
  func checkQuorum() {
    var c = PaxosCluster(3)
    c.elect(1)
    c.down = [2, 3]
    var leader = c[1]
    leader.tick(c.options.electionTimeoutMinTicks * 2)
    #expect(leader.role == .follower)
  }
}

@Suite("Multi-Paxos: flexible quorums (|Q1| + |Q2| > N)")
struct FlexibleQuorumTests {
  @Test("with N=4, Q1=3, Q2=2: leading needs three promises, choosing needs two acceptances")
  func fourNodes() throws {
    var c = PaxosCluster(4, options: .testing(4, phase1: 3, phase2: 2))
    c.down = [3, 4]
    c.elect(1)
    #expect(c[1].role == .candidate, "two promises of three needed")
    c.down = [4]
    c.elect(1)
    #expect(c[1].role == .leader)
    c.down = [3, 4]
    try c.propose("a", at: 1)
    #expect(c[1].chosenThrough == 1, "the leader and node 2 form a phase-2 quorum")
  }

  @Test("with N=3, Q1=3, Q2=1: the leader alone chooses, and a new leader needs everyone")
  func writeOne() throws {
    var c = PaxosCluster(3, options: .testing(3, phase1: 3, phase2: 1))
    c.elect(1)
    c.down = [2, 3]
    try c.propose("alone", at: 1)
    #expect(c[1].chosenThrough == 1)
    c.down = [1]
    c.elect(2)
    #expect(c[2].role == .candidate)
    c.down = []
    c.tickAll(1)
    c.elect(2)
    #expect(c[2].role == .leader)
    try c.propose("next", at: 2)
    #expect(c.appliedTexts(2) == ["alone", "next"])
  }
}

@Suite("Multi-Paxos: determinism")
struct MultiPaxosDeterminismTests {
  @Test("the same seed and inputs produce the same messages")
  func sameSeedSameRun() throws {
    func run() throws -> [String] {
      var c = PaxosCluster(3, seed: 42)
      var log: [String] = []
      for _ in 0..<40 {
        c.tickAll(1)
        log.append(c.members.map { "\(c[$0].role)\(c[$0].promised)" }.joined(separator: ","))
      }
      return log
    }
    #expect(try run() == run())
  }
}
