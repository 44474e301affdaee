import QuorumCore
import Testing

@testable import QuorumRaft

/// Messages with a term no honest peer reaches (from a buggy, version-skewed or compromised member): a term at
/// the top of the range used to become the node's own, and its next election's `term + 1` trapped. Now the
/// decoder refuses them and the core drops (and counts) one that was never encoded.
@Suite("Raft cores under absurd terms")
struct AbsurdTermTests {
  @Test("the refused messages show in the node's status")
  func refusedMessagesInStatus() {
    var node = makeCore(1, peers: ids(3), options: .defaults)
    node.step(.heartbeat(Heartbeat(term: .max, commit: 0, round: 1)), from: 2)
    #expect(RaftEngine(core: node).status(applied: 0, pendingRequests: 0).refusedMessages == 1)
  }

  @Test("a message with term 2^64-1 is dropped, and the node's later elections do not trap")
  func termAtTheTop() {
    let messages: [RaftMessage] = [
      .heartbeat(Heartbeat(term: .max, commit: 0, round: 1)),
      .appendResponse(AppendResponse(term: .max, reject: true, index: 0)),
      .requestVote(RequestVote(term: .max, lastLogIndex: 0, lastLogTerm: 0, preVote: false, transfer: false)),
      .timeoutNow(term: .max),
    ]
    for options in [RaftCoreOptions.paper, .defaults] {
      for message in messages {
        var node = makeCore(1, peers: ids(3), options: options)
        node.step(message, from: 2)
        #expect(node.term < RaftMessage.maxTerm, "\(message)")
        #expect(node.refusedMessages == 1, "\(message)")
        // Its election timeouts expire, again and again: it campaigns each time.
        for _ in 0..<100 {
          node.tick()
          _ = node.readMessages()
        }
        #expect(node.role != .follower, "\(message)")
      }
    }
  }

  @Test("a faulty peer's term at exactly the bound is refused: the others still elect a leader without it")
  func faultyTermAtTheBoundDoesNotWedge() {
    var c = TestCluster(3)
    let messages: [RaftMessage] = [
      .heartbeat(Heartbeat(term: RaftMessage.maxTerm, commit: 0, round: 1)),
      .requestVote(
        RequestVote(term: RaftMessage.maxTerm, lastLogIndex: 0, lastLogTerm: 0, preVote: false, transfer: false)),
    ]
    for message in messages {
      for id: NodeID in [1, 2] { c[id].step(message, from: 3) }
    }
    c.down = [3]
    for id: NodeID in [1, 2] {
      #expect(c[id].term < RaftMessage.maxTerm - 1 && c[id].refusedMessages == UInt64(messages.count))
    }
    var ticks = 0
    while ticks < 50 * c.options.electionTimeoutMaxTicks && ![1, 2].contains(where: { c[$0].role == .leader }) {
      c.tickAll()
      ticks += 1
    }
    // Before, both took the bound as their term, and every campaign's next term was refused by the other.
    #expect([1, 2].contains { c[$0].role == .leader }, "no leader after \(ticks) ticks")
  }

  @Test("a node at the term just below the bound never campaigns past it")
  func termJustBelowTheBound() {
    var node = makeCore(1, peers: ids(3))
    node.step(.heartbeat(Heartbeat(term: RaftMessage.maxTerm - 1, commit: 0, round: 1)), from: 2)
    _ = node.readMessages()
    #expect(node.term == RaftMessage.maxTerm - 1)
    for _ in 0..<100 {
      node.tick()
      for out in node.readMessages() { #expect(out.message.malformation == nil, "\(out.message)") }
    }
    #expect(node.term == RaftMessage.maxTerm - 1 && node.role == .follower)
  }

  @Test("a node restarted with a damaged stored term of 2^64 - 1 idles instead of trapping when it times out")
  func storedTermAtTheTop() {
    var node = makeCore(1, peers: ids(3), hardState: HardState(term: .max))
    for _ in 0..<100 {
      node.tick()
      for out in node.readMessages() { #expect(out.message.malformation == nil, "\(out.message)") }
    }
    #expect(node.term == .max && node.role == .follower)
  }

  @Test("a leader drops an append response about entries past its log instead of trapping on its index or hint")
  func appendResponsePastTheLog() {
    for index: LogIndex in [.max, 1 << 62] {
      var leader = makeCore(1, peers: ids(3))
      leader.forceLeader()
      let term = leader.term
      leader.step(.appendResponse(AppendResponse(term: term, reject: false, index: index)), from: 2)
      #expect((leader.progress[2]?.match ?? .max) <= leader.lastIndex, "index \(index)")
      #expect((leader.progress[2]?.next ?? .max) <= leader.lastIndex + 1, "index \(index)")
      #expect(leader.refusedMessages == 1, "index \(index)")
      _ = leader.readMessages()
    }
    // A rejection of the probe just sent, with a hint at the top: the next probe stays inside the log.
    var leader = makeCore(1, peers: ids(3))
    leader.forceLeader()
    let probed = (leader.progress[3]?.next ?? 1) - 1
    let reject = AppendResponse(term: leader.term, reject: true, index: probed, hintIndex: .max, hintTerm: 0)
    leader.step(.appendResponse(reject), from: 3)
    #expect((leader.progress[3]?.next ?? .max) <= leader.lastIndex + 1)
    #expect(leader.role == .leader)
  }

  @Test("a leader drops a heartbeat answer naming a read round it never started, and confirms no read with it")
  func heartbeatAnswerToAnUnstartedRound() throws {
    var leader = makeCore(1, peers: ids(3))
    leader.forceLeader()
    // Its no-op commits, so reads are served from now on.
    leader.step(.appendResponse(AppendResponse(term: leader.term, reject: false, index: leader.lastIndex)), from: 2)
    _ = leader.readMessages()
    // Node 2 answers a round far ahead of any heartbeat sent: it is refused.
    leader.step(.heartbeatResponse(HeartbeatResponse(term: leader.term, round: 1_000_000)), from: 2)
    #expect(leader.refusedMessages == 1)
    // The read's round starts; neither that nor an old answer from node 2 may confirm it: node 2 has not heard
    // of the round, and node 3 has not answered, so only the leader itself vouches for it.
    try leader.requestRead(id: 1)
    #expect(leader.persistReady().readStates.isEmpty)
    leader.step(.heartbeatResponse(HeartbeatResponse(term: leader.term, round: 0)), from: 2)
    #expect(leader.persistReady().readStates.isEmpty)
  }

  @Test("the decoder refuses a term past the bound")
  func decoderRefusesImpossibleTerms() {
    let refused: [RaftMessage] = [
      .heartbeat(Heartbeat(term: .max, commit: 0, round: 1)),
      .heartbeat(Heartbeat(term: 1 << 63, commit: 0, round: 1)),
      .heartbeat(Heartbeat(term: RaftMessage.maxTerm, commit: 0, round: 1)),
      .timeoutNow(term: .max),
      .appendEntries(
        AppendEntries(term: .max, prevLogIndex: 4, prevLogTerm: 2, entries: [LogEntry(index: 5, term: 2)], commit: 4)),
      .requestVote(RequestVote(term: .max, lastLogIndex: 0, lastLogTerm: 0, preVote: true, transfer: false)),
    ]
    for message in refused {
      #expect(message.malformation != nil, "\(message)")
      #expect(throws: WireError.self, "\(message)") { try RaftMessage(wireBytes: message.wireBytes()) }
    }
    let accepted: [RaftMessage] = [
      .heartbeat(Heartbeat(term: RaftMessage.maxTerm - 1, commit: 0, round: 1)),
      .appendEntries(
        AppendEntries(
          term: 3, prevLogIndex: 4, prevLogTerm: 2,
          entries: [LogEntry(index: 5, term: 2), LogEntry(index: 6, term: 3)],
          commit: 4)),
    ]
    for message in accepted {
      #expect(message.malformation == nil, "\(message)")
      #expect((try? RaftMessage(wireBytes: message.wireBytes())) == message, "\(message)")
    }
  }
}
