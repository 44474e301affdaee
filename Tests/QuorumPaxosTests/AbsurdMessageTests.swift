import QuorumCore
import QuorumTestSupport
import Testing

@testable import QuorumPaxos

/// Messages that decode (or were never encoded) but that no honest peer sends: absurd slots and ballots from a
/// buggy, version-skewed or compromised member. Each used to trap, hang or exhaust memory at the receiver; now
/// the decoder refuses what is structurally impossible, and the core drops (and counts) what is absurd next to
/// its own state.
@Suite("Multi-Paxos cores under absurd messages")
struct AbsurdMessageTests {
  /// A three-node cluster led by node 1, with two commands chosen everywhere.
  static func ledCluster() throws -> PaxosCluster {
    var c = PaxosCluster(3)
    c.elect(1)
    try c.propose("a", at: 1)
    try c.propose("b", at: 1)
    return c
  }

  /// Node 1 of a fresh three-node cluster as a candidate whose own promise is durable, its prepares taken.
  static func candidate() -> (MultiPaxosCore, Ballot) {
    var node = PaxosCluster(3)[1]
    let campaigned = node.campaign()
    #expect(campaigned)
    _ = node.readMessages()  // Persists its ballot: its own promise counts.
    #expect(node.role == .candidate)
    return (node, node.promised)
  }

  @Test("an acceptor drops an accept for slot 2^62, far past its log, and answers nothing")
  func acceptFarAhead() throws {
    let c = try Self.ledCluster()
    var follower = c[2]
    let before = follower.lastSlot
    let ballot = follower.promised
    let entry = PaxosEntry(index: 1 << 62, ballot: ballot, kind: .command, data: [1])
    follower.step(.accept(Accept(ballot: ballot, entries: [entry], chosenThrough: 0)), from: 1)
    #expect(follower.lastSlot == before)
    #expect(follower.refusedMessages == 1)
    var sent = follower.readMessages()
    #expect(!sent.contains { if case .accepted = $0.message { true } else { false } })
    // An accept within reach (just past a gap: this acceptor missed a slot) is still stored and answered.
    let near = PaxosEntry(index: before + 2, ballot: ballot, kind: .command, data: [2])
    follower.step(.accept(Accept(ballot: ballot, entries: [near], chosenThrough: 0)), from: 1)
    #expect(follower.lastSlot == before + 2)
    sent = follower.readMessages()
    #expect(sent.contains { if case .accepted = $0.message { true } else { false } })
  }

  @Test("the refused messages show in the node's status")
  func refusedMessagesInStatus() throws {
    var follower = try Self.ledCluster()[2]
    let entry = PaxosEntry(index: 1 << 62, ballot: follower.promised, kind: .command, data: [1])
    follower.step(.accept(Accept(ballot: follower.promised, entries: [entry], chosenThrough: 0)), from: 1)
    #expect(MultiPaxosEngine(core: follower).status(applied: 0, pendingRequests: 0).refusedMessages == 1)
  }

  @Test("an acceptor stores accepts in order however far they run past its chosen point", .heavy)
  func acceptsInOrderPastTheReach() throws {
    let c = try Self.ledCluster()
    var follower = c[2]
    let ballot = follower.promised
    let reach = follower.acceptReach
    // The leader pipelines far ahead of what is chosen (a burst of small commands, say): every accept continues
    // the acceptor's log, so it opens no gap, and the chosen point they carry stays behind.
    var next = follower.lastSlot + 1
    let stop = follower.chosenThrough + reach + 1_000
    while next <= stop {
      let entries = (next..<min(next + 4_096, stop + 1)).map {
        PaxosEntry(index: $0, ballot: ballot, kind: .command, data: [1])
      }
      follower.step(.accept(Accept(ballot: ballot, entries: entries, chosenThrough: 0)), from: 1)
      _ = follower.readMessages()
      next += Slot(entries.count)
    }
    #expect(follower.lastSlot == stop)
    #expect(follower.refusedMessages == 0)
  }

  @Test("a leader stepping an acknowledgement of slots 1...2^64-1 (or 1...2^62) returns at once")
  func acceptedHugeRange() throws {
    for last: Slot in [.max, 1 << 62] {
      let c = try Self.ledCluster()
      var leader = c[1]
      let chosen = leader.chosenThrough
      let acknowledged = Accepted(ballot: leader.promised, firstSlot: 1, lastSlot: last, chosenThrough: 0)
      leader.step(.accepted(acknowledged), from: 2)
      #expect(leader.role == .leader)
      #expect(leader.chosenThrough == chosen)
      #expect(leader.refusedMessages == (last == .max ? 1 : 0), "last slot \(last)")
    }
  }

  @Test("a leader keeps a member's reported chosen point within the slots it proposed")
  func acceptedChosenPointCapped() throws {
    for reported: Slot in [.max, 1 << 62] {
      let c = try Self.ledCluster()
      var leader = c[1]
      let acknowledged = Accepted(ballot: leader.promised, firstSlot: 2, lastSlot: 2, chosenThrough: reported)
      leader.step(.accepted(acknowledged), from: 2)
      #expect((leader.peerProgress[2]?.chosenThrough ?? .max) <= leader.lastSlot, "reported \(reported)")
      // Its repair and heartbeats go on without trapping.
      leader.tick(3)
      _ = leader.readMessages()
      let response = HeartbeatResponse(
        ballot: leader.promised, round: 1_000, leaderChosenThrough: leader.chosenThrough, chosenThrough: reported)
      leader.step(.heartbeatResponse(response), from: 3)
      #expect((leader.peerProgress[3]?.chosenThrough ?? .max) <= leader.lastSlot, "reported \(reported)")
      #expect(leader.role == .leader)
    }
  }

  @Test("a candidate stepping a promise covering through 2^64-1 neither traps nor leads")
  func promiseCoveringEverything() {
    var (node, ballot) = Self.candidate()
    node.step(
      .promise(Promise(ballot: ballot, fromSlot: 1, entries: [], coveredThrough: .max, lastSlot: 0, chosenThrough: 0)),
      from: 2)
    #expect(node.role == .candidate)
    #expect(node.refusedMessages == 1)
  }

  @Test("a candidate drops a complete promise reporting slot 2^62 instead of proposing in every slot up to it")
  func promiseFarAhead() {
    var (node, ballot) = Self.candidate()
    let far: Slot = 1 << 62
    node.step(
      .promise(Promise(ballot: ballot, fromSlot: 1, entries: [], coveredThrough: far, lastSlot: far, chosenThrough: 0)),
      from: 2)
    #expect(node.role == .candidate)
    #expect(node.lastSlot == 0)
    #expect(node.refusedMessages == 1)
    // An honest promise from the other acceptor still elects it.
    node.step(
      .promise(Promise(ballot: ballot, fromSlot: 1, entries: [], coveredThrough: 0, lastSlot: 0, chosenThrough: 0)),
      from: 3)
    #expect(node.role == .leader)
  }

  @Test("a heartbeat (or refusal) with ballot round 2^64-1 is dropped, and the node's later elections do not trap")
  func ballotAtTheTop() throws {
    let top = Ballot(round: .max, node: 2)
    let messages: [PaxosMessage] = [
      .heartbeat(Heartbeat(ballot: top, chosenThrough: 0, round: 1)),
      .reject(Reject(ballot: Ballot(round: 1, node: 1), promised: top)),
      .prepare(Prepare(ballot: top, fromSlot: 1)),
    ]
    for message in messages {
      var node = PaxosCluster(3)[1]
      node.step(message, from: 2)
      #expect(node.promised.round < Ballot.maxRound, "\(message)")
      #expect(node.highestSeen.round < Ballot.maxRound, "\(message)")
      #expect(node.refusedMessages == 1, "\(message)")
      // Its timeouts expire: it probes, then (granted by nobody) probes again.
      for _ in 0..<100 {
        node.tick()
        _ = node.readMessages()
      }
      #expect(node.role == .preCandidate)
    }
  }

  @Test("a node following a ballot just below the bound never promises one at it, so it can restart")
  func ballotAtTheBound() throws {
    var node = PaxosCluster(3)[1]
    let top = Ballot(round: Ballot.maxRound - 1, node: 3)
    node.step(.heartbeat(Heartbeat(ballot: top, chosenThrough: 0, round: 1)), from: 3)
    _ = node.readMessages()
    #expect(node.promised == top)
    // The leader hands over: the next ballot of node 1 would be at the bound, which every peer refuses.
    node.step(.campaignNow(CampaignNow(ballot: top)), from: 3)
    for _ in 0..<100 {
      node.tick()
      for out in node.readMessages() { #expect(out.message.malformation == nil, "\(out.message)") }
    }
    #expect(node.promised.round < Ballot.maxRound)
    #expect((try? PaxosHardState(wireBytes: node.hardState.wireBytes())) != nil, "the promise loads after a restart")
  }

  @Test("a node following a ballot just below the bound sends no probe at the bound when its leader goes quiet")
  func noProbeAtTheBound() {
    var node = PaxosCluster(3)[1]
    let top = Ballot(round: Ballot.maxRound - 1, node: 3)
    node.step(.heartbeat(Heartbeat(ballot: top, chosenThrough: 0, round: 1)), from: 3)
    _ = node.readMessages()
    // Before, each election timeout sent a probe at (maxRound, 1), which every peer dropped as malformed and
    // counted against this honest node.
    var sent = 0
    for _ in 0..<200 {
      node.tick()
      for out in node.readMessages() {
        sent += 1
        #expect(out.message.malformation == nil, "\(out.message)")
      }
    }
    #expect(node.role == .follower && node.promised == top)
    #expect(sent == 0)
  }

  @Test("a faulty peer's ballot at exactly the bound is refused: the others still elect a leader without it")
  func faultyBallotAtTheBoundDoesNotWedge() {
    // Node 3 has the highest identifier: a ballot at the bound from it would leave nodes 1 and 2 no higher one.
    var c = PaxosCluster(3)
    let top = Ballot(round: Ballot.maxRound, node: 3)
    let messages: [PaxosMessage] = [
      .heartbeat(Heartbeat(ballot: top, chosenThrough: 0, round: 1)),
      .prepare(Prepare(ballot: top, fromSlot: 1)),
      .reject(Reject(ballot: Ballot(round: 1, node: 1), promised: top)),
    ]
    for message in messages {
      for id: NodeID in [1, 2] { c[id].step(message, from: 3) }
      #expect(message.malformation != nil, "\(message)")
      #expect(throws: WireError.self, "\(message)") { try PaxosMessage(wireBytes: message.wireBytes()) }
    }
    c.down = [3]
    for id: NodeID in [1, 2] {
      #expect(c[id].refusedMessages == UInt64(messages.count))
      #expect(c[id].promised.round < Ballot.maxRound && c[id].highestSeen.round < Ballot.maxRound)
    }
    var ticks = 0
    while ticks < 20 * c.options.electionTimeoutMaxTicks && ![1, 2].contains(where: { c[$0].role == .leader }) {
      c.tickAll()
      ticks += 1
    }
    // Before, both followed node 3's ballot, and neither could promise itself one above it.
    #expect([1, 2].contains { c[$0].role == .leader }, "no leader after \(ticks) ticks")
    // A stored promise at the bound (written by a build that accepted it from peers) still loads.
    #expect((try? PaxosHardState(wireBytes: PaxosHardState(promised: top).wireBytes())) != nil)
  }

  @Test("the decoder refuses messages no honest peer sends, with a WireError")
  func decoderRefusesImpossibleMessages() {
    let ballot = Ballot(round: 3, node: 1)
    func entry(_ index: Slot) -> PaxosEntry { PaxosEntry(index: index, ballot: ballot, kind: .command, data: [7]) }
    let refused: [(String, PaxosMessage)] = [
      ("accept with a gap", .accept(Accept(ballot: ballot, entries: [entry(5), entry(9)], chosenThrough: 0))),
      ("accept out of order", .accept(Accept(ballot: ballot, entries: [entry(6), entry(5)], chosenThrough: 0))),
      ("accept at slot 0", .accept(Accept(ballot: ballot, entries: [entry(0), entry(1)], chosenThrough: 0))),
      ("accept past the top", .accept(Accept(ballot: ballot, entries: [entry(.max)], chosenThrough: 0))),
      ("accept's chosen point", .accept(Accept(ballot: ballot, entries: [], chosenThrough: .max))),
      (
        "promise entry outside its range",
        .promise(
          Promise(ballot: ballot, fromSlot: 4, entries: [entry(3)], coveredThrough: 9, lastSlot: 9, chosenThrough: 0))
      ),
      (
        "promise entry past its coverage",
        .promise(
          Promise(ballot: ballot, fromSlot: 4, entries: [entry(10)], coveredThrough: 9, lastSlot: 10, chosenThrough: 0))
      ),
      (
        "promise entries repeated",
        .promise(
          Promise(
            ballot: ballot, fromSlot: 4, entries: [entry(5), entry(5)], coveredThrough: 9, lastSlot: 9, chosenThrough: 0
          ))
      ),
      (
        "promise covering everything",
        .promise(
          Promise(ballot: ballot, fromSlot: 4, entries: [], coveredThrough: .max, lastSlot: 9, chosenThrough: 0))
      ),
      ("accepted, empty range", .accepted(Accepted(ballot: ballot, firstSlot: 9, lastSlot: 5, chosenThrough: 0))),
      ("accepted, to the top", .accepted(Accepted(ballot: ballot, firstSlot: 1, lastSlot: .max, chosenThrough: 0))),
      ("accepted, chosen point", .accepted(Accepted(ballot: ballot, firstSlot: 1, lastSlot: 1, chosenThrough: .max))),
      (
        "heartbeat, top ballot", .heartbeat(Heartbeat(ballot: Ballot(round: .max, node: 2), chosenThrough: 0, round: 1))
      ),
      (
        "heartbeat, ballot at the bound",
        .heartbeat(Heartbeat(ballot: Ballot(round: Ballot.maxRound, node: 2), chosenThrough: 0, round: 1))
      ),
      (
        "heartbeat, ballot past the bound",
        .heartbeat(Heartbeat(ballot: Ballot(round: 1 << 63, node: 2), chosenThrough: 0, round: 1))
      ),
      ("reject, top promise", .reject(Reject(ballot: ballot, promised: Ballot(round: .max, node: 2)))),
      ("prepare, top handoff", .prepare(Prepare(ballot: ballot, fromSlot: 1, handoff: Ballot(round: .max, node: 2)))),
      ("probe, top slot", .probe(Prepare(ballot: ballot, fromSlot: .max))),
      (
        "snapshot, top index",
        .snapshot(SnapshotChunk(ballot: ballot, index: .max, totalBytes: 1, offset: 0, chunk: [1]))
      ),
      ("campaign, top ballot", .campaignNow(CampaignNow(ballot: Ballot(round: .max, node: 2)))),
    ]
    for (name, message) in refused {
      #expect(message.malformation != nil, "\(name)")
      #expect(throws: WireError.self, "\(name)") { try PaxosMessage(wireBytes: message.wireBytes()) }
    }
    // Their honest neighbours decode.
    let accepted: [PaxosMessage] = [
      .accept(Accept(ballot: ballot, entries: [entry(5), entry(6)], chosenThrough: 4)),
      .promise(
        Promise(
          ballot: ballot, fromSlot: 4, entries: [entry(4), entry(9)], coveredThrough: 9, lastSlot: 12, chosenThrough: 3)
      ),
      .promise(Promise(ballot: ballot, fromSlot: 8, entries: [], coveredThrough: 7, lastSlot: 5, chosenThrough: 5)),
      .accepted(Accepted(ballot: ballot, firstSlot: 5, lastSlot: 5, chosenThrough: 4)),
      .heartbeat(
        Heartbeat(ballot: Ballot(round: Ballot.maxRound - 1, node: 2), chosenThrough: PaxosMessage.maxSlot, round: 1)),
    ]
    for message in accepted {
      #expect(message.malformation == nil, "\(message)")
      #expect((try? PaxosMessage(wireBytes: message.wireBytes())) == message, "\(message)")
    }
  }

  @Test("a stored promise with ballot round 2^64-1 is refused at decoding, not trapped on at the next election")
  func storedTopBallot() {
    let state = PaxosHardState(promised: Ballot(round: .max, node: 2))
    #expect(throws: WireError.self) { try PaxosHardState(wireBytes: state.wireBytes()) }
  }
}
