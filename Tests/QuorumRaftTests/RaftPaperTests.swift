import QuorumCore
import Testing

@testable import QuorumRaft

// Conformance with "In Search of an Understandable Consensus Algorithm" (Ongaro & Ousterhout), section by
// section, covering the claims etcd-io/raft checks in raft_paper_test.go. These run with the paper's
// algorithm: pre-vote and check-quorum off (they have their own suites).

@Suite("§5.1 Raft basics: terms")
struct PaperBasicsTests {
  @Test(
    "a follower, candidate or leader seeing a higher term adopts it and becomes follower",
    arguments: [
      RaftRole.follower, .candidate, .leader,
    ])
  func updateTermFromMessage(role: RaftRole) {
    var r = makeCore(1, peers: ids(3))
    switch role {
    case .candidate:
      r.campaign()
    case .leader:
      r.forceLeader()
    default:
      break
    }
    _ = r.readMessages()
    r.step(.appendEntries(AppendEntries(term: 5, prevLogIndex: 0, prevLogTerm: 0, entries: [], commit: 0)), from: 2)
    #expect(r.term == 5)
    #expect(r.role == .follower)
    #expect(r.leader == 2)
  }

  @Test("messages from a stale term are ignored")
  func rejectStaleTermMessage() {
    var r = makeCore(1, peers: ids(3), hardState: HardState(term: 2))
    r.step(.appendEntries(AppendEntries(term: 1, prevLogIndex: 0, prevLogTerm: 0, entries: [], commit: 0)), from: 2)
    #expect(r.leader == nil)
    #expect(r.term == 2)
    #expect(r.readMessages().isEmpty)
    r.step(
      .requestVote(RequestVote(term: 1, lastLogIndex: 9, lastLogTerm: 9, preVote: false, transfer: false)), from: 2)
    #expect(r.vote == .none)
    #expect(r.readMessages().isEmpty)
  }
}

@Suite("§5.2 Leader election")
struct PaperElectionTests {
  @Test("servers start as followers")
  func startAsFollower() {
    let r = makeCore(1, peers: ids(3))
    #expect(r.role == .follower)
    #expect(r.term == 0)
  }

  @Test("a leader sends heartbeats to every peer each heartbeat interval")
  func leaderBroadcastsHeartbeat() {
    var o = RaftCoreOptions.paper
    o.heartbeatTicks = 2
    var r = makeCore(1, peers: ids(3), options: o)
    r.forceLeader()
    _ = r.readMessages()
    r.tick(1)
    #expect(r.readMessages().isEmpty)
    r.tick(1)
    let beats = r.readMessages()
    #expect(beats.map(\.to).sorted() == [2, 3])
    for m in beats {
      guard case .heartbeat(let hb) = m.message else {
        Issue.record("expected heartbeat, got \(m)")
        continue
      }
      #expect(hb.term == r.term)
    }
  }

  @Test(
    "on election timeout a follower or candidate starts an election: new term, self-vote, RequestVote to all",
    arguments: [RaftRole.follower, .candidate])
  func startElectionOnTimeout(role: RaftRole) {
    var r = makeCore(1, peers: ids(3))
    if role == .candidate {
      r.campaign()
      _ = r.readMessages()
    }
    let startTerm = r.term
    var ticks = 0
    while r.term == startTerm && ticks <= r.options.electionTimeoutMaxTicks {
      r.tick()
      ticks += 1
    }
    #expect(ticks <= r.options.electionTimeoutMaxTicks)
    #expect(r.role == .candidate)
    #expect(r.term == startTerm + 1)
    #expect(r.vote == 1)
    let msgs = r.readMessages()
    #expect(Set(msgs.map(\.to)) == [2, 3])
    for m in msgs {
      guard case .requestVote(let v) = m.message else {
        Issue.record("expected RequestVote, got \(m)")
        continue
      }
      #expect(v.term == r.term && !v.preVote)
    }
  }

  @Test(
    "one round of RequestVote decides the election by majority",
    arguments: [
      // (cluster size, votes granted by others, votes rejected by others, expected role)
      (1, 0, 0, RaftRole.leader),
      (3, 1, 0, .leader), (3, 2, 0, .leader), (3, 0, 2, .follower), (3, 0, 1, .candidate),
      (5, 2, 0, .leader), (5, 4, 0, .leader), (5, 1, 0, .candidate), (5, 0, 3, .follower), (5, 1, 3, .follower),
    ])
  func electionInOneRound(size: Int, granted: Int, rejected: Int, expected: RaftRole) {
    var r = makeCore(1, peers: ids(size))
    r.campaign()
    _ = r.readMessages()
    let peers = ids(size).dropFirst()
    for peer in peers.prefix(granted) {
      r.step(.voteResponse(VoteResponse(term: r.term, granted: true, preVote: false)), from: peer)
    }
    for peer in peers.dropFirst(granted).prefix(rejected) {
      r.step(.voteResponse(VoteResponse(term: r.term, granted: false, preVote: false)), from: peer)
    }
    #expect(r.role == expected)
  }

  @Test("a follower votes for at most one candidate per term, first come first served")
  func followerVote() {
    for (vote, candidate, grant) in [
      (NodeID.none, NodeID(2), true), (.none, 3, true), (2, 2, true), (3, 3, true),
      (2, 3, false), (3, 2, false),
    ] {
      var r = makeCore(1, peers: ids(3), hardState: HardState(term: 1, vote: vote))
      r.step(
        .requestVote(RequestVote(term: 1, lastLogIndex: 0, lastLogTerm: 0, preVote: false, transfer: false)),
        from: candidate)
      let msgs = r.readMessages()
      #expect(msgs.count == 1)
      guard case .voteResponse(let resp) = msgs.first?.message else {
        Issue.record("expected a vote response")
        continue
      }
      #expect(resp.granted == grant, "vote=\(vote) candidate=\(candidate)")
    }
  }

  @Test("a candidate that hears from a leader of its term or later falls back to follower")
  func candidateFallback() {
    for term: Term in [1, 2] {
      var r = makeCore(1, peers: ids(3))
      r.campaign()
      #expect(r.role == .candidate && r.term == 1)
      r.step(
        .appendEntries(AppendEntries(term: term, prevLogIndex: 0, prevLogTerm: 0, entries: [], commit: 0)), from: 2)
      #expect(r.role == .follower)
      #expect(r.term == term)
      #expect(r.leader == 2)
    }
  }

  @Test("election timeouts are randomized across the whole range [min, max)")
  func electionTimeoutRandomized() {
    var seen = Set<Int>()
    var r = makeCore(1, peers: ids(3))
    for _ in 0..<400 {
      let before = r.term
      var ticks = 0
      while r.term == before {
        r.tick()
        ticks += 1
      }
      _ = r.readMessages()
      seen.insert(ticks)
    }
    let o = r.options
    #expect(seen.allSatisfy { $0 >= o.electionTimeoutMinTicks && $0 < o.electionTimeoutMaxTicks })
    #expect(seen.count == o.electionTimeoutMaxTicks - o.electionTimeoutMinTicks)
  }

  @Test("randomized timeouts usually let one server time out alone (non-conflicting elections)")
  func electionTimeoutsRarelyConflict() {
    var conflicts = 0
    let rounds = 500
    for round in 0..<rounds {
      var nodes = ids(5).map { makeCore($0, peers: ids(5), seed: UInt64(round) * 31) }
      var timedOut = 0
      while timedOut == 0 {
        for i in nodes.indices {
          nodes[i].tick()
          if nodes[i].role == .candidate { timedOut += 1 }
        }
      }
      if timedOut > 1 { conflicts += 1 }
    }
    // With a 10-tick spread and 5 servers, a tie is expected in well under a third of rounds.
    #expect(Double(conflicts) / Double(rounds) < 0.35)
  }
}

@Suite("§5.3 Log replication")
struct PaperReplicationTests {
  @Test("the leader appends a proposal to its log and replicates it with AppendEntries")
  func leaderStartReplication() {
    var r = makeCore(1, peers: ids(3))
    r.forceLeader()
    r.step(.appendResponse(AppendResponse(term: r.term, reject: false, index: r.lastIndex)), from: 2)
    r.step(.appendResponse(AppendResponse(term: r.term, reject: false, index: r.lastIndex)), from: 3)
    _ = r.readMessages()
    let last = r.lastIndex
    let proposed = try? r.propose(Array("some data".utf8))
    #expect(proposed?.index == last + 1)
    let msgs = r.readMessages()
    #expect(Set(msgs.map(\.to)) == [2, 3])
    for m in msgs {
      guard case .appendEntries(let app) = m.message else {
        Issue.record("expected AppendEntries, got \(m)")
        continue
      }
      #expect(app.prevLogIndex == last)
      #expect(app.entries.map(\.index) == [last + 1])
      #expect(app.entries.first?.data == Array("some data".utf8))
    }
  }

  @Test("an entry is committed once a majority stores it, and the commit index travels in AppendEntries")
  func leaderCommitEntry() {
    var c = TestCluster(3)
    c.campaign(1)
    c.propose(1, "x")
    let idx = c[1].lastIndex
    #expect(c[1].commitIndex == idx)
    for id in ids(3) {
      #expect(c[id].commitIndex == idx, "\(id) learned the commit index")
      #expect(c.appliedCommands(id) == ["x"])
    }
  }

  @Test(
    "the leader commits when a majority (counting itself) acknowledges",
    arguments: [
      (1, [Int](), true), (3, [], false), (3, [2], true), (3, [2, 3], true), (5, [], false), (5, [2], false),
      (5, [2, 3], true), (5, [2, 3, 4, 5], true),
    ])
  func leaderAcknowledgeCommit(size: Int, ackers: [Int], committed: Bool) throws {
    var r = makeCore(1, peers: ids(size))
    r.forceLeader()
    for peer in ids(size).dropFirst() {
      r.step(.appendResponse(AppendResponse(term: r.term, reject: false, index: r.lastIndex)), from: peer)
    }
    _ = r.readMessages()
    let (index, _) = try r.propose(Array("x".utf8))
    _ = r.readMessages()
    for peer in ackers {
      r.step(.appendResponse(AppendResponse(term: r.term, reject: false, index: index)), from: NodeID(UInt64(peer)))
    }
    #expect((r.commitIndex >= index) == committed)
  }

  @Test("committing an entry commits every preceding entry, including earlier leaders'")
  func leaderCommitPrecedingEntries() throws {
    for prior in [[Term](), [2], [1, 1], [1, 2]] {
      var r = makeCore(1, peers: ids(3), hardState: HardState(term: 2), entries: log(terms: prior))
      r.forceLeader()
      _ = r.readMessages()
      _ = try r.propose(Array("x".utf8))
      _ = r.readMessages()
      r.step(.appendResponse(AppendResponse(term: r.term, reject: false, index: r.lastIndex)), from: 2)
      #expect(r.commitIndex == r.lastIndex)
      let committed = r.persistReady().committedEntries
      #expect(committed.map(\.index) == Array(1...r.lastIndex))
    }
  }

  @Test("a follower applies entries in log order once it learns they are committed")
  func followerCommitEntry() {
    let entries = [LogEntry(index: 1, term: 1, data: [1]), LogEntry(index: 2, term: 1, data: [2])]
    for commit: LogIndex in [1, 2] {
      var r = makeCore(1, peers: ids(3))
      r.step(
        .appendEntries(AppendEntries(term: 1, prevLogIndex: 0, prevLogTerm: 0, entries: entries, commit: commit)),
        from: 2)
      #expect(r.commitIndex == commit)
      #expect(r.persistReady().committedEntries == Array(entries.prefix(Int(commit))))
    }
  }

  @Test("a follower rejects AppendEntries whose previous entry it does not hold (consistency check)")
  func followerCheckAppend() {
    let existing = log(terms: [1, 2])
    for (prevTerm, prevIndex, reject) in [
      (Term(0), LogIndex(0), false), (1, 1, false), (2, 2, false), (1, 2, true),
      (3, 3, true),
    ] {
      var r = makeCore(1, peers: ids(3), hardState: HardState(term: 2), entries: existing)
      r.step(
        .appendEntries(AppendEntries(term: 2, prevLogIndex: prevIndex, prevLogTerm: prevTerm, entries: [], commit: 1)),
        from: 2)
      let msgs = r.readMessages()
      guard case .appendResponse(let resp) = msgs.first?.message else {
        Issue.record("expected a response")
        continue
      }
      #expect(resp.reject == reject, "prev=\(prevIndex)@\(prevTerm)")
    }
  }

  @Test("a follower deletes conflicting entries and everything after them, then appends")
  func followerAppendEntries() {
    let cases: [(prevIndex: LogIndex, prevTerm: Term, new: [LogEntry], want: [Term])] = [
      (2, 2, [LogEntry(index: 3, term: 3)], [1, 2, 3]),
      (1, 1, [LogEntry(index: 2, term: 3), LogEntry(index: 3, term: 4)], [1, 3, 4]),
      (0, 0, [LogEntry(index: 1, term: 1)], [1, 2]),
      (0, 0, [LogEntry(index: 1, term: 3)], [3]),
    ]
    for c in cases {
      var r = makeCore(1, peers: ids(3), hardState: HardState(term: 1), entries: log(terms: [1, 2]))
      r.step(
        .appendEntries(
          AppendEntries(term: 2, prevLogIndex: c.prevIndex, prevLogTerm: c.prevTerm, entries: c.new, commit: 0)),
        from: 2)
      #expect(r.entries(from: 1, through: r.lastIndex).map(\.term) == c.want)
    }
  }

  /// Figure 7: a leader at term 8 brings each follower's log (a)–(f) to match its own.
  @Test(
    "the leader repairs any follower log into its own (Figure 7)",
    arguments: [
      [Term](arrayLiteral: 1, 1, 1, 4, 4, 5, 5, 6, 6),  // (a)
      [1, 1, 1, 4],  // (b)
      [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],  // (c)
      [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],  // (d)
      [1, 1, 1, 4, 4, 4, 4],  // (e)
      [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],  // (f)
    ])
  func figure7(followerTerms: [Term]) {
    let leaderTerms: [Term] = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
    var c = TestCluster(3)
    c.nodes[1] = makeCore(1, peers: ids(3), hardState: HardState(term: 7), entries: log(terms: leaderTerms))
    c.nodes[2] = makeCore(2, peers: ids(3), hardState: HardState(term: 7), entries: log(terms: followerTerms))
    // A third node that votes for the leader and then takes no part (its log is empty).
    c.nodes[3] = makeCore(3, peers: ids(3), hardState: HardState(term: 7))
    c.durable[1] = (HardState(term: 7), log(terms: leaderTerms), nil)
    c.durable[2] = (HardState(term: 7), log(terms: followerTerms), nil)
    // (d) holds a longer log from term 7, so it will not vote for 1; node 3 supplies the majority.
    c.campaign(1)
    #expect(c[1].role == .leader && c[1].term == 8)
    c.propose(1, "8")
    let want = c[1].entries(from: 1, through: c[1].lastIndex)
    #expect(c[2].entries(from: 1, through: c[2].lastIndex) == want)
    #expect(c[2].commitIndex == c[1].commitIndex)
  }
}

@Suite("§5.4 Safety")
struct PaperSafetyTests {
  @Test("a candidate's RequestVote carries its last log index and term")
  func voteRequestCarriesLastEntry() {
    for terms in [[Term](arrayLiteral: 1), [1, 2], [1, 1, 3]] {
      var r = makeCore(1, peers: ids(3), hardState: HardState(term: terms.last ?? 0), entries: log(terms: terms))
      r.campaign()
      let requests = r.readMessages().compactMap { m -> RequestVote? in
        if case .requestVote(let v) = m.message { return v } else { return nil }
      }
      #expect(requests.count == 2, "one RequestVote per peer")
      for v in requests {
        #expect(v.lastLogIndex == LogIndex(terms.count))
        #expect(v.lastLogTerm == terms.last)
      }
    }
  }

  @Test("a voter refuses a candidate whose log is less up to date than its own (§5.4.1)")
  func voterUpToDateCheck() {
    let cases: [(voter: [Term], lastIndex: LogIndex, lastTerm: Term, grant: Bool)] = [
      ([1], 1, 1, true), ([1], 2, 1, true), ([1, 1], 1, 1, false),
      ([1], 1, 2, true), ([1], 2, 2, true), ([1, 1], 1, 2, true),
      ([2], 1, 1, false), ([2], 2, 1, false), ([2, 2], 1, 1, false),
    ]
    for c in cases {
      var r = makeCore(1, peers: ids(3), entries: log(terms: c.voter))
      r.step(
        .requestVote(
          RequestVote(term: 3, lastLogIndex: c.lastIndex, lastLogTerm: c.lastTerm, preVote: false, transfer: false)),
        from: 2)
      guard case .voteResponse(let resp) = r.readMessages().first?.message else {
        Issue.record("expected a vote response")
        continue
      }
      #expect(resp.granted == c.grant, "voter \(c.voter) candidate \(c.lastIndex)@\(c.lastTerm)")
    }
  }

  @Test("a leader never commits an entry of an earlier term by counting replicas (§5.4.2)")
  func onlyCommitsCurrentTerm() {
    // Log from terms 1 and 2; the new leader is in term 3 and its no-op is index 3.
    for (ackIndex, expectedCommit) in [(LogIndex(1), LogIndex(0)), (2, 0), (3, 3)] {
      var r = makeCore(1, peers: ids(3), hardState: HardState(term: 2), entries: log(terms: [1, 2]))
      r.forceLeader()
      _ = r.readMessages()
      r.step(.appendResponse(AppendResponse(term: r.term, reject: false, index: ackIndex)), from: 2)
      #expect(r.commitIndex == expectedCommit, "acked \(ackIndex)")
    }
  }
}
