import QuorumCore
import Testing

@testable import QuorumRaft

@Suite("Pre-vote and check-quorum (thesis §9.6, §6.2)")
struct PreVoteCheckQuorumTests {
  @Test("with pre-vote, a partitioned node does not raise its term and does not disrupt the leader when it returns")
  func preVotePreventsDisruption() {
    var c = TestCluster(3, options: .defaults)
    c.campaign(1)
    #expect(c[1].role == .leader)
    let term = c[1].term
    c.isolate(3)
    c.tickAll(100)
    #expect(c[3].term == term, "pre-votes fail without a quorum, so the term stays")
    #expect(c[3].role == .preCandidate || c[3].role == .follower)
    c.heal()
    c.tickAll(30)
    #expect(c[1].role == .leader)
    #expect(c[1].term == term)
  }

  @Test("without pre-vote, the same returning node forces a new election (the problem pre-vote solves)")
  func withoutPreVoteReturningNodeDisrupts() {
    var c = TestCluster(3, options: .paper)
    c.campaign(1)
    let term = c[1].term
    c.isolate(3)
    c.tickAll(100)
    #expect(c[3].term > term)
    c.heal()
    c.tickAll(50)
    #expect(c[1].term > term || c[1].role != .leader)
  }

  @Test("a pre-vote from a node with a stale log is refused")
  func preVoteRejectsStaleLog() {
    var r = makeCore(1, peers: ids(3), options: .defaults, hardState: HardState(term: 2), entries: log(terms: [1, 2]))
    r.tick(RaftCoreOptions.defaults.electionTimeoutMinTicks)  // a restarted node answers votes only after this
    _ = r.readMessages()
    r.step(
      .requestVote(RequestVote(term: 3, lastLogIndex: 1, lastLogTerm: 1, preVote: true, transfer: false)), from: 2)
    guard case .voteResponse(let resp) = r.readMessages().first?.message else {
      Issue.record("expected a response")
      return
    }
    #expect(!resp.granted && resp.preVote)
    #expect(r.term == 2, "a pre-vote never changes the voter's term")
  }

  @Test("check-quorum: an isolated leader steps down within an election timeout")
  func isolatedLeaderStepsDown() {
    var c = TestCluster(3, options: .defaults)
    c.campaign(1)
    c.isolate(1)
    c.tick(1, c.options.electionTimeoutMinTicks * 2 + 1)
    #expect(c[1].role == .follower)
  }

  @Test("check-quorum: followers that recently heard from the leader ignore a disruptive vote request")
  func followersInLeaseIgnoreVotes() {
    var o = RaftCoreOptions.defaults
    o.preVote = false
    var c = TestCluster(3, options: o)
    c.campaign(1)
    let term = c[1].term
    // Node 3 campaigns on its own, without waiting for a timeout.
    c.nodes[3]!.campaign()
    c.stabilize()
    #expect(c[1].role == .leader)
    #expect(c[2].term == term, "node 2 ignored the higher-term vote request while in lease")
  }

  @Test("a vote request from a node outside the membership is ignored")
  func votesFromUnknownNodesIgnored() {
    var r = makeCore(1, peers: ids(3))
    r.step(
      .requestVote(RequestVote(term: 5, lastLogIndex: 9, lastLogTerm: 9, preVote: false, transfer: false)), from: 9)
    #expect(r.term == 0)
    #expect(r.readMessages().isEmpty)
  }
}

@Suite("Linearizable reads: ReadIndex and leases (thesis §6.4)")
struct ReadTests {
  @Test("ReadIndex confirms leadership with a heartbeat round, then reports the commit index")
  func readIndex() throws {
    var c = TestCluster(3, options: .defaults)
    c.campaign(1)
    c.propose(1, "a")
    let commit = c[1].commitIndex
    try c.nodes[1]!.requestRead(id: 42)
    c.process(1)
    #expect(c.readStates[1, default: []].isEmpty, "not confirmed before a quorum answers")
    c.stabilize()
    #expect(c.readStates[1] == [ReadState(id: 42, index: commit)])
  }

  @Test("many reads share one heartbeat round")
  func readsBatch() throws {
    var c = TestCluster(3, options: .defaults)
    c.campaign(1)
    for i in 0..<10 { try c.nodes[1]!.requestRead(id: UInt64(i)) }
    c.process(1)
    let heartbeats = c.queue.filter { if case .heartbeat = $0.message { return true } else { return false } }
    #expect(heartbeats.count == 2)
    c.stabilize()
    #expect(c.readStates[1]?.map(\.id) == Array(0..<10))
  }

  @Test("a leader that has not committed in its term yet delays reads until its no-op commits")
  func readWaitsForCurrentTermCommit() throws {
    var r = makeCore(1, peers: ids(3))
    r.forceLeader()
    try r.requestRead(id: 1)
    let msgs = r.readMessages()
    #expect(!msgs.contains { if case .heartbeat = $0.message { return true } else { return false } })
    r.step(.appendResponse(AppendResponse(term: r.term, reject: false, index: r.lastIndex)), from: 2)
    let beats = r.readMessages().filter { if case .heartbeat = $0.message { return true } else { return false } }
    #expect(beats.count == 2)
    guard case .heartbeat(let hb) = try #require(beats.first).message else {
      Issue.record("expected a heartbeat, got \(beats)")
      return
    }
    r.step(.heartbeatResponse(HeartbeatResponse(term: r.term, round: hb.round)), from: 2)
    #expect(r.persistReady().readStates.map(\.id) == [1])
  }

  @Test("a partitioned leader never confirms a read, and fails it when it steps down")
  func partitionedLeaderFailsReads() throws {
    var c = TestCluster(3, options: .defaults)
    c.campaign(1)
    c.isolate(1)
    try c.nodes[1]!.requestRead(id: 7)
    c.stabilize()
    #expect(c.readStates[1, default: []].isEmpty)
    c.tick(1, c.options.electionTimeoutMinTicks * 2 + 1)
    #expect(c[1].role == .follower)
    #expect(c.failedReads[1] == [7])
  }

  @Test("a follower refuses ReadIndex with a hint to the leader")
  func followerRefusesRead() {
    var c = TestCluster(3, options: .defaults)
    c.campaign(1)
    #expect(throws: RaftRequestError.notLeader(hint: 1)) { try c.nodes[2]!.requestRead(id: 1) }
  }

  @Test(
    "a lease is valid only after a quorum acknowledged a heartbeat, only for the lease duration, and not during a transfer"
  )
  func leaseReads() throws {
    var o = RaftCoreOptions.defaults
    o.leaseDurationNanos = 1_000
    var c = TestCluster(3, options: o)
    c.nodes[1]!.tick(now: 10_000)
    c.campaign(1)
    #expect(c[1].leaseReadIndex(now: 10_001) == nil, "no heartbeat round acknowledged yet")
    c.nodes[1]!.tick(now: 20_000)  // heartbeat round sent at 20_000
    c.stabilize()
    #expect(c[1].leaseReadIndex(now: 20_500) == c[1].commitIndex)
    #expect(c[1].leaseReadIndex(now: 21_000) == nil, "expired")
    c.nodes[1]!.tick(now: 30_000)
    c.stabilize()
    #expect(c[1].leaseReadIndex(now: 30_100) != nil)
    try c.nodes[1]!.transferLeadership(to: 2)
    #expect(c[1].leaseReadIndex(now: 30_100) == nil, "a transfer ends the lease at once")
  }
}

@Suite("Leadership transfer (thesis §3.10)")
struct TransferTests {
  @Test("transfer to an up-to-date follower makes it leader")
  func transferToUpToDate() throws {
    var c = TestCluster(3, options: .defaults)
    c.campaign(1)
    c.propose(1, "a")
    try c.nodes[1]!.transferLeadership(to: 2)
    c.stabilize()
    #expect(c[2].role == .leader)
    #expect(c[1].role == .follower)
    #expect(c[1].leader == 2)
  }

  @Test("transfer to a lagging follower first catches it up")
  func transferToLagging() throws {
    var c = TestCluster(3, options: .defaults)
    c.campaign(1)
    c.isolate(3)
    for i in 0..<5 { c.propose(1, "v\(i)") }
    c.heal()
    try c.nodes[1]!.transferLeadership(to: 3)
    c.stabilize()
    #expect(c[3].role == .leader)
    #expect(c.appliedCommands(3).prefix(5) == ["v0", "v1", "v2", "v3", "v4"])
  }

  @Test("proposals are refused while a transfer is in progress, and an unreachable target aborts after a timeout")
  func transferTimeout() throws {
    var c = TestCluster(3, options: .defaults)
    c.campaign(1)
    c.isolate(3)
    c.propose(1, "x")
    try c.nodes[1]!.transferLeadership(to: 3)
    #expect(throws: RaftRequestError.transferInProgress) { _ = try c.nodes[1]!.propose([1]) }
    c.cut.remove([1, 2])
    c.cut.remove([2, 1])
    for _ in 0..<(c.options.electionTimeoutMinTicks + 1) {
      c.tick(1)
      c.stabilize()
    }
    #expect(c[1].role == .leader)
    #expect(c[1].transferee == nil)
    #expect(throws: Never.self) { _ = try c.nodes[1]!.propose([1]) }
  }

  @Test("transfer to a non-voter is refused")
  func transferToLearnerRefused() {
    var c = TestCluster(3, options: .defaults, learners: [4])
    c.campaign(1)
    #expect(throws: RaftRequestError.self) { try c.nodes[1]!.transferLeadership(to: 4) }
  }
}

@Suite("Snapshots and log compaction (§7)")
struct SnapshotTests {
  @Test("a follower behind the compaction point catches up by a chunked snapshot")
  func laggingFollowerGetsSnapshot() {
    var o = RaftCoreOptions.defaults
    o.snapshotChunkBytes = 7
    var c = TestCluster(3, options: o)
    c.campaign(1)
    c.isolate(3)
    for i in 0..<20 { c.propose(1, "v\(i)") }
    let applied = c[1].appliedIndex
    let data = Array("state-machine-image-at-\(applied)".utf8)
    c.nodes[1]!.takeSnapshot(at: applied, data: data)
    #expect(c[1].firstIndex == applied + 1)
    c.heal()
    c.tickAll(2)
    c.stabilize()
    #expect(c[3].commitIndex == c[1].commitIndex)
    #expect(c.durable[3]?.snapshot?.data == data, "the whole snapshot arrived across \(data.count / 7 + 1) chunks")
    c.propose(1, "after")
    #expect(c.appliedCommands(3) == ["after"])
  }

  @Test("a snapshot older than the follower's commit index is not installed")
  func staleSnapshotIgnored() {
    var r = makeCore(2, peers: ids(3), hardState: HardState(term: 1, commit: 2), entries: log(terms: [1, 1, 1]))
    r.step(
      .installSnapshot(
        InstallSnapshot(
          term: 1, index: 2, snapshotTerm: 1, membership: Membership(voters: Set(ids(3))), totalBytes: 1, offset: 0,
          chunk: [0])), from: 1)
    let rd = r.persistReady()
    #expect(rd.snapshot == nil)
    #expect(r.lastIndex == 3)
  }

  @Test("a snapshot larger than the limit is refused")
  func oversizedSnapshotRefused() {
    var o = RaftCoreOptions.paper
    o.maxSnapshotBytes = 10
    var r = makeCore(2, peers: ids(3), options: o)
    r.step(
      .installSnapshot(
        InstallSnapshot(
          term: 1, index: 5, snapshotTerm: 1, membership: Membership(voters: Set(ids(3))), totalBytes: 11, offset: 0,
          chunk: [0])), from: 1)
    guard case .snapshotResponse(let resp) = r.readMessages().first?.message else {
      Issue.record("expected a snapshot response")
      return
    }
    #expect(resp.reject)
  }

  @Test("a node restarts from its snapshot and the entries after it")
  func restartFromSnapshot() {
    var c = TestCluster(3, options: .defaults)
    c.campaign(1)
    for i in 0..<5 { c.propose(1, "v\(i)") }
    let applied = c[2].appliedIndex
    let snap = c.nodes[2]!.takeSnapshot(at: applied - 2, data: [1, 2, 3])
    c.durable[2]!.snapshot = snap
    c.durable[2]!.entries = c.durable[2]!.entries.filter { $0.index > snap.index }
    c.restart(2)
    #expect(c[2].firstIndex == snap.index + 1)
    #expect(c[2].lastIndex == c[1].lastIndex)
    c.propose(1, "after")
    #expect(c[2].commitIndex == c[1].commitIndex)
  }
}

@Suite("Membership changes: joint consensus and learners (§6)")
struct MembershipTests {
  @Test("a joining node learns the log as a learner, is promoted through a joint configuration, and votes")
  func addLearnerThenPromote() throws {
    var c = TestCluster(3, options: .defaults)
    c.addJoiner(4)
    c.campaign(1)
    c.propose(1, "before")
    _ = try c.nodes[1]!.proposeMembership(.change([.addLearner(4)]))
    c.stabilize()
    #expect(c[1].membership.learners == [4])
    c.tickAll(1)
    c.stabilize()
    #expect(c.appliedCommands(4) == ["before"])
    #expect(!c[4].isPromotable)
    _ = try c.nodes[1]!.proposeMembership(.change([.addVoter(4)]))
    c.stabilize()
    #expect(c[1].membership == Membership(voters: [1, 2, 3, 4]), "joint configuration left automatically")
    #expect(c[4].membership == c[1].membership)
    #expect(c[4].isPromotable)
  }

  @Test("only one membership change may be pending at a time")
  func onePendingChange() throws {
    var c = TestCluster(3, options: .defaults)
    c.campaign(1)
    c.isolate(2)
    c.isolate(3)
    _ = try c.nodes[1]!.proposeMembership(.change([.remove(3)]))
    #expect(throws: RaftRequestError.self) { _ = try c.nodes[1]!.proposeMembership(.change([.remove(2)])) }
  }

  @Test("in a joint configuration, commitment needs a majority of both the old and the new voters")
  func jointNeedsBothMajorities() throws {
    var c = TestCluster(3, options: .defaults)
    c.addJoiner(4)
    c.addJoiner(5)
    c.campaign(1)
    _ = try c.nodes[1]!.proposeMembership(.change([.addVoter(4), .addVoter(5), .remove(2), .remove(3)]))
    c.stabilize()
    #expect(c[1].membership == Membership(voters: [1, 4, 5]))
    // Now cut 4 and 5 away: the new configuration {1,4,5} has no majority with 1 alone.
    c.isolate(4)
    c.isolate(5)
    let commit = c[1].commitIndex
    c.propose(1, "x")
    #expect(c[1].commitIndex == commit)
  }

  @Test("a removed leader steps down and the remaining voters carry on")
  func removeLeader() throws {
    var c = TestCluster(3, options: .defaults)
    c.campaign(1)
    _ = try c.nodes[1]!.proposeMembership(.change([.remove(1)]))
    c.stabilize()
    c.tickAll(c.options.electionTimeoutMaxTicks * 3)
    c.stabilize()
    #expect(c[1].role == .follower)
    let leaders = c.leaders
    #expect(leaders.count == 1 && leaders.first != 1)
    let leader = try #require(leaders.first)
    c.propose(leader, "after removal")
    let other: NodeID = leader == 2 ? 3 : 2
    #expect(c.appliedCommands(other).last == "after removal")
  }

  @Test("invalid membership changes are refused with a reason")
  func invalidChanges() {
    let m = Membership(voters: [1, 2, 3])
    #expect(throws: MembershipError.self) { try m.applying(.change([])) }
    #expect(throws: MembershipError.self) { try m.applying(.change([.remove(9)])) }
    #expect(throws: MembershipError.self) { try m.applying(.change([.remove(1), .remove(2), .remove(3)])) }
    #expect(throws: MembershipError.self) { try m.applying(.change([.addVoter(4), .remove(4)])) }
    #expect(throws: MembershipError.self) { try m.applying(.leaveJoint) }
    #expect(throws: MembershipError.self) { try m.applying(.change([.addVoter(.none)])) }
  }
}

@Suite("Replication flow control and log repair")
struct FlowControlTests {
  @Test("conflict hints let the leader skip a whole divergent term in one round trip")
  func fastBackoff() {
    // The follower holds 50 entries of term 2 that the leader (term 3, entries of term 1) never had.
    var leader = makeCore(
      1, peers: ids(3), hardState: HardState(term: 3), entries: log(terms: [Term](repeating: 1, count: 5)))
    var follower = makeCore(
      2, peers: ids(3), hardState: HardState(term: 3),
      entries: log(terms: [Term](repeating: 1, count: 5) + [Term](repeating: 2, count: 50)))
    leader.forceLeader()
    // The first probe went out inside forceLeader; a heartbeat response prompts the next one.
    leader.step(.heartbeatResponse(HeartbeatResponse(term: leader.term, round: 0)), from: 2)
    var rounds = 0
    var pending = leader.readMessages().filter { $0.to == 2 }
    while !pending.isEmpty && rounds < 20 {
      rounds += 1
      for m in pending { follower.step(m.message, from: 1) }
      for reply in follower.readMessages() { leader.step(reply.message, from: 2) }
      pending = leader.readMessages().filter {
        $0.to == 2 && !{ if case .heartbeat = $0.message { true } else { false } }($0)
      }
    }
    #expect(follower.lastIndex == leader.lastIndex)
    #expect(follower.term(at: 6) == leader.term)
    #expect(rounds <= 3, "took \(rounds) round trips")
  }

  @Test("the in-flight window bounds AppendEntries sent without acknowledgement")
  func inflightWindow() throws {
    var o = RaftCoreOptions.paper
    o.maxInflightMessages = 3
    o.maxEntriesBytesPerMessage = 1
    var r = makeCore(1, peers: ids(2), options: o)
    r.forceLeader()
    r.step(.appendResponse(AppendResponse(term: r.term, reject: false, index: r.lastIndex)), from: 2)
    _ = r.readMessages()
    for i in 0..<10 { _ = try r.propose([UInt8(i)]) }
    let apps = r.readMessages().filter { if case .appendEntries = $0.message { return true } else { return false } }
    #expect(apps.count == 3)
  }

  @Test("proposals are refused with overloaded once too many bytes are uncommitted")
  func uncommittedLimit() {
    var o = RaftCoreOptions.paper
    o.maxUncommittedBytes = 200
    var r = makeCore(1, peers: ids(3), options: o)
    r.forceLeader()
    var accepted = 0
    var refused = false
    for _ in 0..<10 {
      do {
        _ = try r.propose([UInt8](repeating: 0, count: 50))
        accepted += 1
      } catch {
        #expect(error == .overloaded)
        refused = true
        break
      }
    }
    #expect(refused)
    #expect(accepted >= 1 && accepted <= 4)
  }

  @Test("followers refuse proposals with a hint to the leader")
  func followerRefusesProposal() {
    var c = TestCluster(3)
    c.campaign(1)
    #expect(throws: RaftRequestError.notLeader(hint: 1)) { _ = try c.nodes[2]!.propose([1]) }
  }
}

@Suite("Wire format of Raft messages")
struct RaftWireTests {
  @Test("every message kind round-trips through the codec")
  func roundTrip() throws {
    let messages: [RaftMessage] = [
      .requestVote(RequestVote(term: 3, lastLogIndex: 9, lastLogTerm: 2, preVote: true, transfer: false)),
      .voteResponse(VoteResponse(term: 3, granted: true, preVote: false)),
      .appendEntries(
        AppendEntries(
          term: 4, prevLogIndex: 7, prevLogTerm: 3,
          entries: [LogEntry(index: 8, term: 4, data: [1, 2]), LogEntry(index: 9, term: 4, kind: .noop)], commit: 6)),
      .appendResponse(AppendResponse(term: 4, reject: true, index: 7, hintIndex: 5, hintTerm: 2)),
      .heartbeat(Heartbeat(term: 4, commit: 6, round: 99)),
      .heartbeatResponse(HeartbeatResponse(term: 4, round: 99)),
      .installSnapshot(
        InstallSnapshot(
          term: 4, index: 100, snapshotTerm: 3, membership: Membership(voters: [1, 2], learners: [3]), totalBytes: 10,
          offset: 4, chunk: [1, 2, 3])),
      .snapshotResponse(SnapshotResponse(term: 4, index: 100, nextOffset: 7)),
      .timeoutNow(term: 4),
    ]
    for m in messages {
      #expect(try RaftMessage(wireBytes: m.wireBytes()) == m)
    }
  }

  @Test("AppendEntries with non-contiguous entries is rejected by the decoder")
  func nonContiguousRejected() {
    let bad = RaftMessage.appendEntries(
      AppendEntries(
        term: 1, prevLogIndex: 0, prevLogTerm: 0,
        entries: [LogEntry(index: 1, term: 1), LogEntry(index: 3, term: 1)], commit: 0))
    #expect(throws: WireError.self) { try RaftMessage(wireBytes: bad.wireBytes()) }
  }

  @Test("an unknown message tag is a typed error naming the type")
  func unknownTag() {
    do {
      _ = try RaftMessage(wireBytes: [77])
      Issue.record("decoded garbage")
    } catch {
      #expect(error.kind == .unknownTag(type: "RaftMessage", tag: 77))
    }
  }
}

@Suite("Raft: a voter the uncommitted configuration leaves out still campaigns")
struct RaftOutgoingVoterTests {
  /// Drops `from`'s appends to `targets` that carry a membership entry leaving a joint configuration.
  static func dropLeaving(from: NodeID, to targets: Set<NodeID>) -> (NodeID, NodeID, RaftMessage) -> Bool {
    { source, target, message in
      guard source == from, targets.contains(target), case .appendEntries(let append) = message else { return false }
      return append.entries.contains { entry in
        entry.kind == .membership && (try? Membership(wireBytes: entry.data))?.isJoint == false
      }
    }
  }

  /// The leaders among the nodes that are up (a node taken down keeps the role it had).
  func live(_ c: TestCluster) -> [NodeID] { c.leaders.filter { !c.down.contains($0) } }

  @Test("a voter demoted to learner, alone in holding the new configuration, is elected and hands over")
  func demotedVoterElected() throws {
    var c = TestCluster(4, options: .defaults)
    c.campaign(1)
    c.dropFilter = Self.dropLeaving(from: 1, to: [2, 3])
    _ = try c.nodes[1]!.proposeMembership(.change([.addLearner(4)]))
    c.stabilize()
    #expect(!c[4].membership.isJoint && c[4].membership.learners == [4], "\(c[4].membership)")
    #expect(c[2].membership.isJoint && c[3].membership.isJoint)
    // The old leader is lost. 2 and 3 need 4's vote (old majority of 1-4), and 4's log is ahead of theirs.
    c.down.insert(1)
    c.dropFilter = nil
    c.tickAll(500)
    #expect(!live(c).isEmpty, "no leader: \(c[2].membership), \(c[4].membership)")
    #expect(live(c).allSatisfy { $0 == 2 || $0 == 3 }, "the learner hands over once the configuration commits")
  }

  @Test("a removed leader that alone with one follower holds the new configuration lets the others elect")
  func removedLeaderRestarted() throws {
    var c = TestCluster(4, options: .defaults)
    c.campaign(1)
    c.dropFilter = Self.dropLeaving(from: 1, to: [3, 4])
    _ = try c.nodes[1]!.proposeMembership(.change([.remove(1)]))
    c.stabilize()
    #expect(!c[2].membership.isJoint && c[3].membership.isJoint && c[4].membership.isJoint)
    // 1 restarts as a follower, 2 is lost: 3 and 4 need 1's vote for the old majority, and 1 is ahead of them.
    c.restart(1)
    c.down.insert(2)
    c.dropFilter = nil
    c.tickAll(500)
    #expect(!live(c).isEmpty, "no leader: \(c[1].membership), \(c[3].membership)")
  }

  @Test("campaign() on a leader does nothing")
  func campaignOnLeader() {
    var c = TestCluster(3, options: .defaults)
    c.campaign(1)
    let term = c[1].term
    #expect(c.nodes[1]!.campaign() == false)
    #expect(c[1].role == .leader && c[1].term == term)
  }
}
