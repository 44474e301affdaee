import QuorumCore
import Testing

@testable import QuorumRaft

/// Delivers messages between the given cores until none is left (messages to other nodes are dropped).
private func exchange(_ nodes: inout [NodeID: RaftCore], _ first: [RaftOutgoing], from origin: NodeID) {
  var queue = first.map { (from: origin, out: $0) }
  var steps = 0
  while !queue.isEmpty && steps < 10_000 {
    steps += 1
    let (from, out) = queue.removeFirst()
    guard nodes[out.to] != nil else { continue }
    nodes[out.to]!.step(out.message, from: from)
    for reply in nodes[out.to]!.readMessages() { queue.append((out.to, reply)) }
  }
}

@Suite("Review regressions")
struct ReviewRegressionTests {
  @Test("a follower that keeps its log after installing a snapshot acknowledges only the snapshot's index (§7)")
  func snapshotKeepingLogDoesNotOverclaim() throws {
    let members = Membership(voters: Set(ids(3)))
    // The leader (2) compacted through 5; after 5 its log holds its own term-3 entries.
    var leader = makeCore(
      2, peers: ids(3), hardState: HardState(term: 3, commit: 8),
      entries: (6...8).map { LogEntry(index: $0, term: 3, data: [UInt8($0)]) },
      snapshot: RaftSnapshot(index: 5, term: 1, membership: members, data: [5]))
    // Follower 1 agrees through 5, then holds entries of a deposed term-2 leader that were never committed.
    var follower = makeCore(
      1, peers: ids(3), hardState: HardState(term: 2, commit: 3), entries: log(terms: [1, 1, 1, 1, 1, 2, 2, 2, 2, 2]))
    leader.forceLeader()  // term 4, no-op at 9
    #expect(leader.role == .leader && leader.lastIndex == 9)
    // An acknowledgement of index 3 (the follower's answer to any AppendEntries below its commit index) sends
    // the leader below its compaction point, so it sends its snapshot at 5, which matches the follower's log.
    follower.step(.heartbeat(Heartbeat(term: leader.term, commit: 0, round: 0)), from: 2)
    _ = follower.readMessages()
    leader.step(.appendResponse(AppendResponse(term: leader.term, reject: false, index: 3)), from: 1)
    var nodes: [NodeID: RaftCore] = [1: follower, 2: leader]
    exchange(&nodes, nodes[2]!.readMessages(), from: 2)
    leader = nodes[2]!
    follower = nodes[1]!
    let match = try #require(leader.peerProgress[1]?.match, "the leader tracks follower 1")
    #expect(match <= leader.lastIndex, "match \(match) beyond the leader's last index \(leader.lastIndex)")
    #expect(match >= 6, "the follower acknowledged entries after the snapshot, so the loop below checks them")
    for index in stride(from: 6, through: min(match, leader.lastIndex), by: 1) {
      #expect(
        follower.term(at: index) == leader.term(at: index),
        "the leader counts the follower as holding \(index), but its entry there is from another term")
    }
    #expect(
      leader.commitIndex < 9 || follower.term(at: 9) == leader.term(at: 9),
      "index 9 committed while only the leader holds it")
    #expect(follower.lastIndex == 9 && follower.term(at: 9) == leader.term, "the leader repairs the follower's log")
  }

  @Test("a leader elected in the same ready as its term change sends nothing before that term is durable")
  func singleVoterLeaderWaitsForDurableTerm() throws {
    let durable = (hardState: HardState(term: 1, commit: 1), entries: log(terms: [1]))
    var learner = makeCore(2, peers: [1], hardState: durable.hardState, entries: durable.entries, learners: [2])
    // Incarnation A of the only voter wins at once, proposes X, sends eagerly, and crashes before its write.
    var a = makeCore(1, peers: [1], hardState: durable.hardState, entries: durable.entries, learners: [2])
    a.campaign()
    _ = try a.propose(Array("X".utf8))
    let rdA = a.ready()
    #expect(rdA.hardState?.term == 2)
    #expect(rdA.eagerMessages.isEmpty, "messages of term 2 may be sent only once term 2 is durable")
    for m in rdA.eagerMessages where m.to == 2 { learner.step(m.message, from: 1) }
    _ = learner.readMessages()
    // Incarnation B restarts from the durable state, wins term 2 again and proposes Y at the same index.
    var b = makeCore(1, peers: [1], hardState: durable.hardState, entries: durable.entries, learners: [2])
    b.campaign()
    _ = try b.propose(Array("Y".utf8))
    var nodes: [NodeID: RaftCore] = [2: learner, 1: b]
    for _ in 0..<3 {
      exchange(&nodes, nodes[1]!.readMessages(), from: 1)
      nodes[1]!.tick()
    }
    b = nodes[1]!
    learner = nodes[2]!
    #expect(b.term == 2 && b.commitIndex == 3)
    #expect(learner.entry(at: 3) == b.entry(at: 3), "the learner kept incarnation A's entry at 3@2")
  }

  @Test("a TimeoutNow delivered after its transfer was aborted cannot elect a leader during the old leader's lease")
  func abortedTransferEndsLeasesForTheTerm() throws {
    var o = RaftCoreOptions.defaults
    o.leaseDurationNanos = 1_000_000
    var c = TestCluster(3, options: o)
    c.campaign(1)
    try c.nodes[1]!.transferLeadership(to: 2)  // 2 is up to date: TimeoutNow goes out at once
    c.process(1)
    let timeoutNow = c.queue.filter { if case .timeoutNow = $0.message { return true } else { return false } }
    #expect(timeoutNow.count == 1)
    c.queue.removeAll { if case .timeoutNow = $0.message { return true } else { return false } }  // delayed
    var now: UInt64 = 0
    for _ in 0..<o.electionTimeoutMinTicks {  // the transfer is aborted
      now += 1_000
      c.nodes[1]!.tick(now: now)
      c.stabilize()
    }
    #expect(c[1].role == .leader && c[1].transferee == nil)
    let oldCommit = c[1].commitIndex
    // The delayed TimeoutNow arrives; node 1 hears nothing more.
    c.isolate(1)
    for m in timeoutNow { c.nodes[2]!.step(m.message, from: 1) }
    c.stabilize()
    c.propose(2, "written after")
    #expect(c[2].role == .leader && c[2].commitIndex > oldCommit)
    #expect(
      c[1].leaseReadIndex(now: now + 1) == nil,
      "node 1 would serve a lease read at \(oldCommit) while \(c[2].commitIndex) is committed")
  }

  @Test("a follower that restarts does not vote for a minimum election timeout, so leases survive its restart")
  func restartedFollowerHonoursLeases() {
    var o = RaftCoreOptions.defaults
    o.leaseDurationNanos = 1_000_000
    var c = TestCluster(3, options: o)
    c.campaign(1)
    c.cut = [[1, 3], [3, 1]]  // 3 stops hearing from the leader
    c.nodes[1]!.tick(now: 1_000)
    c.stabilize()  // a heartbeat round acknowledged by 2: the lease starts
    #expect(c[1].leaseReadIndex(now: 2_000) != nil)
    c.restart(2)  // 2 crashes and comes straight back
    c.nodes[3]!.campaign()  // 3's election timeout has expired
    c.stabilize()
    c.propose(3, "written after")
    #expect(
      c[3].role != .leader || c[1].leaseReadIndex(now: 2_000) == nil,
      "3 leads term \(c[3].term) while 1 still holds its lease")
  }

  @Test("duplicated snapshot acknowledgements do not multiply the chunks in flight")
  func duplicateSnapshotResponsesDoNotMultiplyChunks() {
    var (c, data) = sendingSnapshot(chunks: 20)
    var chunks = 0
    var duplicated = 0
    while let m = c.queue.first {
      c.queue.removeFirst()
      if case .installSnapshot = m.message { chunks += 1 }
      var copies = 1
      if case .snapshotResponse = m.message, duplicated < 3 {
        duplicated += 1
        copies = 2  // the network delivers this acknowledgement twice
      }
      for _ in 0..<copies {
        c.nodes[m.to]?.step(m.message, from: m.from)
        c.process(m.to)
      }
    }
    #expect(c.durable[3]?.snapshot?.data == data)
    #expect(chunks <= 20 + duplicated, "\(chunks) chunks sent for a 20-chunk snapshot")
  }

  @Test(
    "a stale snapshot acknowledgement past what the follower holds, after a lost chunk, does not stall the transfer")
  func staleSnapshotResponseAfterALostChunk() {
    var (c, data) = sendingSnapshot(chunks: 10)
    var lostOne = false
    for _ in 0..<2_000 where c.durable[3]?.snapshot?.data != data {
      guard let m = c.queue.first else {
        c.nodes[1]!.tick()  // the stall timer resends
        c.process(1)
        continue
      }
      c.queue.removeFirst()
      if case .installSnapshot(let chunk) = m.message, chunk.offset == 4, !lostOne {
        lostOne = true
        // The chunk at 4 is lost, and an old answer of 8 (from an earlier transfer, say) arrives.
        c.nodes[1]?.step(
          .snapshotResponse(SnapshotResponse(term: chunk.term, index: chunk.index, nextOffset: 8)), from: 3)
        c.process(1)
        continue
      }
      c.nodes[m.to]?.step(m.message, from: m.from)
      c.process(m.to)
    }
    #expect(lostOne)
    #expect(c.durable[3]?.snapshot?.data == data, "the transfer never finished")
  }

  @Test("a snapshot transfer resumed by a new leader starts over rather than splicing two leaders' chunks")
  func snapshotChunksFromDifferentLeadersAreNotSpliced() {
    let members = Membership(voters: Set(ids(3)))
    var r = makeCore(3, peers: ids(3), hardState: HardState(term: 2), entries: log(terms: [1]))
    func chunk(term: Term, offset: UInt64, _ bytes: String) -> RaftMessage {
      .installSnapshot(
        InstallSnapshot(
          term: term, index: 5, snapshotTerm: 1, membership: members, totalBytes: 8, offset: offset,
          chunk: Array(bytes.utf8)))
    }
    // Leader 1 of term 2 and leader 2 of term 3 each serialised the state at index 5 in their own way.
    r.step(chunk(term: 2, offset: 0, "AAAA"), from: 1)
    r.step(chunk(term: 3, offset: 4, "bbbb"), from: 2)
    let rd = r.persistReady()
    #expect(rd.snapshot == nil, "installed \(String(decoding: rd.snapshot?.data ?? [], as: UTF8.self))")
  }
}

/// A leader that compacted past follower 3 (cut off meanwhile) is about to send it a snapshot of `chunks` chunks
/// of 4 bytes. Returns the cluster and the snapshot's bytes.
private func sendingSnapshot(chunks: Int) -> (TestCluster, [UInt8]) {
  var o = RaftCoreOptions.defaults
  o.snapshotChunkBytes = 4
  var c = TestCluster(3, options: o)
  c.campaign(1)
  c.isolate(3)
  for i in 0..<5 { c.propose(1, "v\(i)") }
  let data = [UInt8](repeating: 7, count: 4 * chunks)
  let applied = c[1].appliedIndex
  c.nodes[1]?.takeSnapshot(at: applied, data: data)
  c.heal()
  c.nodes[1]?.tick()  // a heartbeat; 3's answer sends it the snapshot
  c.process(1)
  return (c, data)
}
