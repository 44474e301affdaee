import Foundation
import QuorumCore
import QuorumStorage
import QuorumTestSupport
import Testing

@testable import QuorumPaxos

/// Counts what a cluster's filter sees; a class because the filter is a stored closure.
private final class PrepareLog: @unchecked Sendable {
  // Safety of `@unchecked Sendable`: used by one test on one task, never shared.
  var ballots: Set<Ballot> = []
}

/// Counts the prepares each node receives from node 1; a class because the filter is a stored closure.
private final class PrepareCounts: @unchecked Sendable {
  // Safety of `@unchecked Sendable`: used by one test on one task, never shared.
  var to: [NodeID: Int] = [:]
}

/// Nodes far behind the others (restarted with an old log, cut off for long) and logs far apart: elections
/// converge, recovery refuses what no acceptor stores, and read rounds count only when started.
@Suite("Multi-Paxos: nodes far behind, far slots, read rounds")
struct PaxosFarBehindTests {
  /// Options whose reach (``MultiPaxosCore/acceptReach``) is its floor, 2^16 slots.
  static var options: MultiPaxosOptions {
    var o = MultiPaxosOptions.testing(3)
    o.maxInflightMessages = 1
    return o
  }

  /// Past the largest reach from slot 10: a candidate holding the first ten slots cannot take a report of it.
  static let far: Slot = 11 + MultiPaxosCore.maxAcceptReach

  /// Three nodes: 2 and 3 hold the first ten slots and the two up to `far` accepted in one ballot (a log an
  /// acceptor could write: the gap is the largest reach), 1 (restarted with an old log) the first ten. Every
  /// accept is dropped, so the test measures the election alone.
  static func cluster(seed: UInt64, far: Slot = far) -> PaxosCluster {
    var c = PaxosCluster(3, options: options, seed: seed)
    let ballot = Ballot(round: 1, node: 2)
    let log = (Array(1...10) + [far - 1, far]).map { PaxosEntry(index: $0, ballot: ballot, kind: .command, data: []) }
    for id in c.members {
      c.nodes[id] = MultiPaxosCore(
        id: id, members: c.members, options: options, hardState: PaxosHardState(promised: ballot),
        entries: id == 1 ? Array(log.prefix(10)) : log, random: SeededRandom(seed: seed &+ id.rawValue))
    }
    c.expireLeases()
    return c
  }

  @Test(
    "a candidate far behind the others makes way at once: the node holding the slots leads within two timeouts", .heavy)
  func farBehindCandidateMakesWay() {
    let far = Self.far
    var measured = 0
    var seed: UInt64 = 0
    // Three seeds: the up-to-date leader re-proposes the million slots up to `far`, seconds in a debug build.
    while measured < 3 {
      seed += 1
      // The far-behind node times out first (its timeout is drawn from the seed, whatever its log).
      let plain = PaxosCluster(3, options: Self.options, seed: seed)
      let timeouts = plain.members.map { plain[$0].currentElectionTimeout }
      guard timeouts[0] < min(timeouts[1], timeouts[2]) else { continue }
      measured += 1
      var c = Self.cluster(seed: seed, far: far)
      #expect(c.members.map { c[$0].currentElectionTimeout } == timeouts)
      #expect(c[1].lastSlot + MultiPaxosCore.maxAcceptReach < far)
      let prepares = PrepareLog()
      c.dropFilter = { from, _, message in
        switch message {
        case .prepare(let m):
          if from == 1 { prepares.ballots.insert(m.ballot) }
          return false
        case .accept: return true
        default: return false
        }
      }
      var ticks = 0
      while ticks < 400 && !c.members.contains(where: { c[$0].role == .leader }) {
        c.tickAll()
        ticks += 1
      }
      let leader = c.members.first { c[$0].role == .leader }
      // Node 1 drops both up-to-date promises (it cannot take their slots), steps down and waits longer than
      // the others: one of them leads in its first timeout after node 1's prepare reset it. Before, node 1 kept
      // its candidacy and started another at its next timeout, resetting theirs, until one timed out first.
      #expect(leader == 2 || leader == 3, "seed \(seed): leader \(leader.map(\.description) ?? "none")")
      #expect(prepares.ballots.count == 1, "seed \(seed): node 1 campaigned \(prepares.ballots.count) times")
      #expect(
        ticks <= 2 * Self.options.electionTimeoutMaxTicks,
        "seed \(seed): \(ticks) ticks to elect a leader, node 1 campaigning \(prepares.ballots.count) times")
    }
  }

  @Test("a candidate goes on without an acceptor far ahead while a quorum of the others can answer", .heavy)
  func farAheadAcceptorSetAside() {
    var c = Self.cluster(seed: 1)
    // Node 3 restarted with the old log too: 1 and 3 make a quorum without 2.
    c.nodes[3] = c[1].withID(3, seed: 3)
    c.expireLeases()
    c.dropFilter = { _, _, message in if case .accept = message { true } else { false } }
    c.elect(1)
    #expect(c[1].role == .leader)
    #expect(c[1].refusedMessages >= 1, "node 2's promise is still dropped")
  }

  @Test(
    "two live nodes do not block each other: one behind the other's snapshot, the other holding slots past its reach",
    .heavy
  )
  func behindSnapshotAndBeyondOwnReach() {
    // Node 3 led under options of the largest reach and is down. Node 1 accepted its proposals far ahead but
    // never learnt them chosen (the notices were lost); node 2, whose own reach is the smallest, missed them
    // but holds a snapshot past node 1's chosen point.
    var wide = Self.options
    wide.maxInflightMessages = 1 << 10
    let ballot = Ballot(round: 1, node: 3)
    let snapshotIndex: Slot = 10
    let far = snapshotIndex + (1 << 16) + 100
    var c = PaxosCluster(3, options: Self.options, seed: 1)
    c.nodes[1] = MultiPaxosCore(
      id: 1, members: c.members, options: wide, hardState: PaxosHardState(promised: ballot),
      entries: (1...far).map { PaxosEntry(index: $0, ballot: ballot, kind: .command, data: []) },
      random: SeededRandom(seed: 1))
    c.nodes[2] = MultiPaxosCore(
      id: 2, members: c.members, options: Self.options, hardState: PaxosHardState(promised: ballot),
      snapshot: PaxosSnapshot(index: snapshotIndex, data: []), random: SeededRandom(seed: 2))
    c.down = [3]
    c.expireLeases()
    #expect(wide.quorums(voters: 3) == Self.options.quorums(voters: 3))
    #expect(c[1].acceptReach == MultiPaxosCore.maxAcceptReach && c[1].chosenThrough < snapshotIndex)
    #expect(c[2].lastSlot + c[2].acceptReach < far, "node 1 holds slots past node 2's own reach")
    c.dropFilter = { _, _, message in if case .accept = message { true } else { false } }
    // Node 2 refuses node 1's probes (node 1 lacks slots node 2 compacted). Before, node 1's promise was past
    // node 2's own reach: node 2 set it aside, had no quorum, stepped down, and so on until node 3 came back.
    var ticks = 0
    while ticks < 20 * Self.options.electionTimeoutMaxTicks && c[2].role != .leader {
      c.tickAll()
      ticks += 1
    }
    #expect(c[2].role == .leader, "no leader after \(ticks) ticks")
    #expect(c[1].role != .leader)
  }

  @Test("a candidate retransmits no prepare to an acceptor it set aside, only to those that have not answered")
  func noPrepareRetransmittedToSetAside() {
    let options = MultiPaxosOptions.testing(5)
    var c = PaxosCluster(5, options: options, seed: 1)
    // Node 2 holds slots past node 1's largest reach; nodes 4 and 5 never answer, so node 1 stays a candidate
    // (1, 3 and either of them would make a quorum without 2).
    let ballot = Ballot(round: 1, node: 2)
    c.nodes[2] = MultiPaxosCore(
      id: 2, members: c.members, options: options, hardState: PaxosHardState(promised: ballot),
      entries: (Array(1...10) + [Self.far - 1, Self.far]).map { PaxosEntry(index: $0, ballot: ballot) },
      random: SeededRandom(seed: 2))
    // Node 1 restarted with an old log, promised in node 2's ballot: node 2 does not reject its next one.
    c.nodes[1] = MultiPaxosCore(
      id: 1, members: c.members, options: options, hardState: PaxosHardState(promised: ballot),
      random: SeededRandom(seed: 1))
    c.expireLeases()
    let prepares = PrepareCounts()
    c.dropFilter = { from, to, message in
      if from == 1, case .prepare = message { prepares.to[to, default: 0] += 1 }
      return [4, 5].contains(from) || [4, 5].contains(to)
    }
    c.nodes[1]?.campaign()
    c.stabilize()
    #expect(c[1].role == .candidate)
    #expect(c[1].refusedMessages == 1, "node 2's promise is dropped and node 2 set aside")
    // Node 1 alone ticks, up to just before its election timeout: several retransmission rounds.
    let ticks = c[1].currentElectionTimeout - 1
    #expect(ticks >= 3 * options.retransmitTicks)
    for _ in 0..<ticks {
      c.nodes[1]?.tick()
      c.stabilize()
    }
    #expect(c[1].role == .candidate)
    #expect(prepares.to[4] ?? 0 >= 3 && prepares.to[5] ?? 0 >= 3, "retransmitted to the silent acceptors")
    #expect(prepares.to[2] == 1, "node 2 was sent \(prepares.to[2] ?? 0) prepares")
    #expect(prepares.to[3] == 1, "node 3 answered in full")
  }

  @Test(
    "two live nodes converge when one is behind the other's snapshot and holds slots past its reach: the acceptor sends the candidate its snapshot",
    .heavy
  )
  func behindSnapshotAndBeyondLargestReach() {
    // Node 3 led and is down. Node 1 accepted its proposals further past node 2's log than any acceptor reaches,
    // but learnt none of them chosen; node 2 missed them and holds a snapshot past node 1's chosen point.
    var options = Self.options
    options.snapshotChunkBytes = 1_000
    let ballot = Ballot(round: 1, node: 3)
    let snapshotIndex: Slot = 10
    let reach = MultiPaxosCore.maxAcceptReach
    let far = snapshotIndex + reach + 2
    let state = (0..<4_500).map { UInt8(truncatingIfNeeded: $0) }
    var c = PaxosCluster(3, options: options, seed: 1)
    c.nodes[1] = MultiPaxosCore(
      id: 1, members: c.members, options: options, hardState: PaxosHardState(promised: ballot),
      entries: (Array(1...5) + [5 + reach, far]).map { PaxosEntry(index: $0, ballot: ballot, kind: .command) },
      random: SeededRandom(seed: 1))
    c.nodes[2] = MultiPaxosCore(
      id: 2, members: c.members, options: options, hardState: PaxosHardState(promised: ballot),
      snapshot: PaxosSnapshot(index: snapshotIndex, data: state), random: SeededRandom(seed: 2))
    c.down = [3]
    c.expireLeases()
    #expect(c[2].lastSlot + reach < c[1].lastSlot, "node 2 cannot take node 1's report")
    #expect(c[1].chosenThrough < snapshotIndex, "node 2 refuses node 1's candidacy")
    // The election alone: a leader's accepts (a million slots re-proposed) are dropped.
    c.dropFilter = { _, _, message in if case .accept = message { true } else { false } }
    var ticks = 0
    while ticks < 20 * options.electionTimeoutMaxTicks && !c.members.contains(where: { c[$0].role == .leader }) {
      c.tickAll()
      ticks += 1
    }
    // Before, node 2 refused node 1's probes and set node 1 aside in its own elections, until node 3 came back.
    #expect(c[1].role == .leader, "no leader after \(ticks) ticks")
    #expect(c[1].snapshot?.index == snapshotIndex && c[1].snapshot?.data == state, "node 1 installed the snapshot")
    #expect(c.durable[1]?.snapshot?.data == state)
    #expect(c[1].chosenThrough >= snapshotIndex)
  }

  @Test("a snapshot offered by an acceptor is installed by a node following no one, and changes no promise")
  func offeredSnapshotInstalledWithoutFollowing() {
    var c = PaxosCluster(3, seed: 1)
    var node = c[1]
    let promised = node.promised
    let chunk = SnapshotChunk(
      ballot: .zero, index: 7, membership: Membership(voters: Set(c.members)), totalBytes: 3, offset: 0,
      chunk: [1, 2, 3])
    node.step(.snapshot(chunk), from: 2)
    #expect(node.chosenThrough == 7 && node.snapshot?.data == [1, 2, 3])
    #expect(node.leader == nil && node.role == .follower && node.promised == promised)
    let acks = node.readMessages().compactMap { out -> SnapshotAck? in
      if case .snapshot = out.message { return nil }
      if case .snapshotAck(let ack) = out.message { return ack }
      return nil
    }
    #expect(acks == [SnapshotAck(ballot: .zero, index: 7, nextOffset: 3, reject: false)])
    // A leader ignores an offer (it refuses it as not needed).
    c.elect(1)
    var leader = c[1]
    leader.step(.snapshot(SnapshotChunk(ballot: .zero, index: 50, totalBytes: 1, offset: 0, chunk: [9])), from: 2)
    #expect(leader.chosenThrough < 50 && leader.role == .leader)
  }

  @Test(
    "an acceptor offering its snapshot to a candidate that acknowledges nothing pauses, longer each time",
    arguments: [false, true])
  func offerToSilentCandidatePauses(olderBuild: Bool) {
    let options = MultiPaxosOptions.testing(3)
    var acceptor = MultiPaxosCore(
      id: 2, members: ids(3), options: options,
      snapshot: PaxosSnapshot(index: 10, data: Array(repeating: 7, count: 10_000)), random: SeededRandom(seed: 2))
    acceptor.sinceLeaderContact = 100
    let ticks = 2000
    var chunks = 0
    for t in 0..<ticks {
      // Node 1, behind the snapshot, probes every 15 ticks and is refused, which starts an offer.
      if t % 15 == 0 {
        acceptor.step(.probe(Prepare(ballot: Ballot(round: UInt64(t + 1), node: 1), fromSlot: 3)), from: 1)
      }
      acceptor.tick()
      for out in acceptor.readMessages() {
        guard case .snapshot(let chunk) = out.message else { continue }
        #expect(out.to == 1 && chunk.ballot == .zero)
        chunks += 1
        // An older build refuses the chunk as a leader's below its promise; otherwise it never arrives.
        if olderBuild {
          acceptor.step(.reject(Reject(ballot: .zero, promised: Ballot(round: 1, node: 3))), from: 1)
        }
      }
    }
    // Before, a chunk every retransmit period (over 600); now at most three per pause, the first 80 ticks long.
    let perOffer = olderBuild ? 1 : 1 + MultiPaxosCore.maxUnacknowledgedOfferResends
    #expect(chunks >= perOffer && chunks <= perOffer * (ticks / options.electionTimeoutMaxTicks / 4 + 1))
    #expect(acceptor.offerPauseTicks(silences: 1) == 80 && acceptor.offerPauseTicks(silences: 2) == 160)
    #expect(acceptor.offerPauseTicks(silences: 3) == 200 && acceptor.offerPauseTicks(silences: .max) == 200)
  }

  @Test("an absurd election timeout saturates an offer's pause: never shorter after more silences, never wrapped")
  func offerPauseSaturates() {
    // Four times 2^62 ticks overflows 64 bits; 2^44 doubled twenty times too; and the largest timeout of all.
    for (maxTicks, backoff) in [(1 << 62, 200), (1 << 42, Int.max), (Int.max, Int.max)] {
      var options = MultiPaxosOptions.testing(3)
      options.electionTimeoutMaxTicks = maxTicks
      options.snapshotRefusalBackoffTicks = backoff
      let acceptor = MultiPaxosCore(id: 2, members: ids(3), options: options, random: SeededRandom(seed: 2))
      let (product, overflow) = UInt64(maxTicks).multipliedReportingOverflow(by: 4)
      let base = overflow ? UInt64.max : product
      var previous: UInt64 = 0
      for silences in [1, 2, 3, 20, 21, 22, 40, .max] {
        let pause = acceptor.offerPauseTicks(silences: silences)
        #expect(pause >= base && pause >= previous, "timeout \(maxTicks), \(silences) silences: \(pause)")
        previous = pause
      }
    }
  }

  @Test("with an absurd election timeout, an offer to a candidate that acknowledges nothing pauses for good")
  func offerWithAbsurdTimeoutPausesForGood() {
    var options = MultiPaxosOptions.testing(3)
    options.electionTimeoutMaxTicks = 1 << 62
    var acceptor = MultiPaxosCore(
      id: 2, members: ids(3), options: options,
      snapshot: PaxosSnapshot(index: 10, data: Array(repeating: 7, count: 10_000)), random: SeededRandom(seed: 2))
    acceptor.sinceLeaderContact = 100
    var chunks = 0
    for t in 0..<2_000 {
      if t % 15 == 0 {
        acceptor.step(.probe(Prepare(ballot: Ballot(round: UInt64(t + 1), node: 1), fromSlot: 3)), from: 1)
      }
      acceptor.tick()
      for out in acceptor.readMessages() {
        if case .snapshot = out.message { chunks += 1 }
      }
    }
    // The first chunk and its resends, then a pause longer than the test (a pause wrapped round past the current
    // tick would end at once, and the next probe would start the offer again).
    #expect(chunks == 1 + MultiPaxosCore.maxUnacknowledgedOfferResends, "\(chunks) chunks")
  }

  @Test("offers paused for good do not keep a further candidate out: a full table gives up a paused offer")
  func fullTableOfPausedOffersTakesANewCandidate() {
    // More silent candidates than the table holds (eight), each paused for good by an absurd election timeout.
    let candidates = MultiPaxosCore.maxOffers + 2
    var options = MultiPaxosOptions.testing(candidates + 1)
    options.electionTimeoutMaxTicks = 1 << 62
    var acceptor = MultiPaxosCore(
      id: 1, members: ids(candidates + 1), options: options,
      snapshot: PaxosSnapshot(index: 10, data: Array(repeating: 7, count: 10_000)), random: SeededRandom(seed: 2))
    acceptor.sinceLeaderContact = 100
    var round: UInt64 = 0
    // Probes from `candidate` (behind the snapshot) for `ticks` ticks; returns the snapshot chunks it was sent.
    func probe(from candidate: NodeID, ticks: Int) -> Int {
      var chunks = 0
      for t in 0..<ticks {
        if t % 15 == 0 {
          round += 1
          acceptor.step(.probe(Prepare(ballot: Ballot(round: round, node: candidate), fromSlot: 3)), from: candidate)
        }
        acceptor.tick()
        for out in acceptor.readMessages() where out.to == candidate {
          if case .snapshot = out.message { chunks += 1 }
        }
      }
      return chunks
    }
    let offered = ids(candidates + 1).dropFirst().map { probe(from: $0, ticks: 200) }
    // Every candidate gets the first chunk and its resends, then nothing: the pause has no end.
    #expect(offered == Array(repeating: 1 + MultiPaxosCore.maxUnacknowledgedOfferResends, count: candidates))
    // The two last took the slots of the two first (the pauses end together: the lowest candidates give way).
    let last = NodeID(UInt64(candidates + 1))
    #expect(probe(from: last, ticks: 200) == 0, "a candidate whose offer holds its slot stays paused")
  }

  @Test("more silent candidates than the offer table holds: each gets no more chunks than a silent candidate alone")
  func crowdOfSilentCandidatesKeepsBackOff() {
    let candidates = MultiPaxosCore.maxOffers + 2
    let members = ids(candidates + 1)
    // The chunks each of the first `probing` candidates (2, 3, ...) gets over `ticks` ticks, each probing (behind
    // the snapshot, acknowledging nothing) every 15 ticks, with a normal election timeout: pauses of 80, 160, then
    // 200 ticks.
    func chunks(probing: Int, ticks: Int) -> [Int] {
      var acceptor = MultiPaxosCore(
        id: 1, members: members, options: MultiPaxosOptions.testing(members.count),
        snapshot: PaxosSnapshot(index: 10, data: Array(repeating: 7, count: 10_000)), random: SeededRandom(seed: 2))
      acceptor.sinceLeaderContact = 100
      var counts = Array(repeating: 0, count: probing)
      var round: UInt64 = 0
      for t in 0..<ticks {
        if t % 15 == 0 {
          for candidate in members.dropFirst().prefix(probing) {
            round += 1
            acceptor.step(.probe(Prepare(ballot: Ballot(round: round, node: candidate), fromSlot: 3)), from: candidate)
          }
        }
        acceptor.tick()
        for out in acceptor.readMessages() {
          if case .snapshot = out.message { counts[Int(out.to.rawValue) - 2] += 1 }
        }
      }
      return counts
    }
    let ticks = 6_000
    let alone = chunks(probing: 1, ticks: ticks)[0]
    let crowd = chunks(probing: candidates, ticks: ticks)
    // Alone: three chunks per offer, about one offer per pause. Before, a candidate left out of the full table lost
    // its count of silences, and each of its probes while out started a new offer (and left another out).
    #expect(alone > 0 && alone <= 3 * (ticks / 200 + 3), "\(alone) chunks alone")
    #expect(crowd.allSatisfy { $0 > 0 && $0 <= alone }, "alone \(alone), in the crowd \(crowd)")
  }

  @Test("a candidate that acknowledges each chunk after the resends ran out still gets the whole snapshot")
  func offerToSlowCandidateCompletes() {
    var options = MultiPaxosOptions.testing(3)
    options.snapshotChunkBytes = 1_000
    var acceptor = MultiPaxosCore(
      id: 2, members: ids(3), options: options,
      snapshot: PaxosSnapshot(index: 10, data: Array(repeating: 7, count: 10_000)), random: SeededRandom(seed: 2))
    acceptor.sinceLeaderContact = 100
    // Each acknowledgement arrives four retransmit periods after its chunk: after the offer's resends ran out.
    let delay = 4 * options.retransmitTicks
    var pending: [(due: Int, ack: SnapshotAck)] = []
    var acknowledged: UInt64 = 0
    var installedAt: Int?
    for t in 0..<3_000 where installedAt == nil {
      if t % 15 == 0 {
        acceptor.step(.probe(Prepare(ballot: Ballot(round: UInt64(t + 1), node: 1), fromSlot: 3)), from: 1)
      }
      while let first = pending.first, first.due <= t {
        pending.removeFirst()
        acceptor.step(.snapshotAck(first.ack), from: 1)
      }
      acceptor.tick()
      for out in acceptor.readMessages() {
        guard case .snapshot(let chunk) = out.message, out.to == 1 else { continue }
        let next = chunk.offset + UInt64(chunk.chunk.count)
        if chunk.offset == acknowledged {
          acknowledged = next
          if next == chunk.totalBytes { installedAt = t }
        }
        pending.append((t + delay, SnapshotAck(ballot: .zero, index: chunk.index, nextOffset: next, reject: false)))
      }
    }
    #expect(installedAt != nil, "the candidate got \(acknowledged) of 10,000 bytes in 3,000 ticks")
  }

  /// What a file storage holding `slots` recovers.
  static func stored(_ slots: [Slot], ballot: Ballot) async throws -> RecoveredState<PaxosEntry> {
    let root = tempDirectory("paxos-far-slot")
    defer { try? FileManager.default.removeItem(atPath: root) }
    let storage = FileStorage<PaxosEntry>(directory: root, mode: .replace)
    try await storage.write(
      StorageWrite(
        hardState: PaxosHardState(promised: ballot).wireBytes(),
        entries: slots.map { PaxosEntry(index: $0, ballot: ballot, kind: .command, data: [1]) }))
    try await storage.close()
    let reopened = FileStorage<PaxosEntry>(directory: root, mode: .replace)
    let state = try await reopened.recover()
    try await reopened.close()
    #expect(state.entries.map(\.index) == slots)
    return state
  }

  @Test("recovery refuses a stored slot far past the rest, naming it, instead of holding every slot before it")
  func recoveryRefusesFarSlot() async throws {
    let configuration = try PaxosConfiguration { Members(1, 2, 3) }
    let ballot = Ballot(round: 1, node: 1)
    let reach = MultiPaxosCore.maxAcceptReach
    // Just past the largest reach first: loading it would cost a million empty records, not all the memory.
    for far in [2 + reach + 1, 1 << 40] {
      let state = try await Self.stored([1, 2, far], ballot: ballot)
      try #require(throws: PaxosRecoveryError.slotBeyondReach(slot: far, after: 2, reach: reach)) {
        _ = try MultiPaxosEngine.recover(
          id: 1, configuration: configuration, state: state, random: SeededRandom(seed: 1))
      }
    }
    // A log an acceptor could have written passes: gaps of the largest reach, above a snapshot.
    let snapshot = PaxosSnapshot(index: 100, data: [])
    let honest = [101, 100 + reach, 100 + 2 * reach].map { PaxosEntry(index: $0, ballot: ballot) }
    try MultiPaxosCore.validateRecovered(snapshot: snapshot, entries: honest)
    #expect(throws: PaxosRecoveryError.slotBeyondReach(slot: 101 + reach, after: 100, reach: reach)) {
      try MultiPaxosCore.validateRecovered(
        snapshot: snapshot, entries: [PaxosEntry(index: 101 + reach, ballot: ballot)])
    }
  }

  @Test("both recovery refusals of far slots name the older build as a cause, and the remedy")
  func farSlotErrorsNameTheOlderBuild() {
    let errors: [PaxosRecoveryError] = [
      .slotBeyondReach(slot: 1 << 30, after: 2, reach: 1 << 20),
      .tooManyEmptySlots(slot: 1 << 30, empty: 1 << 23, bound: 1 << 22),
    ]
    for error in errors {
      #expect(error.description.contains("written by a build from before 2026-12-07"), "\(error)")
      #expect(error.description.contains("empty data directory"), "\(error)")
    }
  }

  @Test("recovery refuses a chain of entries each a reach apart, instead of holding every slot it spans")
  func recoveryRefusesChainOfFarSlots() async throws {
    let configuration = try PaxosConfiguration { Members(1, 2, 3) }
    let ballot = Ballot(round: 1, node: 1)
    let reach = MultiPaxosCore.maxAcceptReach
    let bound = MultiPaxosCore.maxRecoveredGapSlots
    // Every gap is the largest reach, so no entry is beyond the one before it; five gaps leave more empty slots
    // than the bound (loading them would cost five million empty records; a longer chain, any number).
    let chain = (0...5).map { 1 + Slot($0) * reach }
    let state = try await Self.stored(chain, ballot: ballot)
    let empty = 5 * (reach - 1)
    #expect(empty > bound && 4 * (reach - 1) <= bound)
    try #require(throws: PaxosRecoveryError.tooManyEmptySlots(slot: chain[5], empty: empty, bound: bound)) {
      _ = try MultiPaxosEngine.recover(id: 1, configuration: configuration, state: state, random: SeededRandom(seed: 1))
    }
    // Above a snapshot, counted from it; four such gaps pass.
    let snapshot = PaxosSnapshot(index: 100, data: [])
    let four = (1...4).map { PaxosEntry(index: 100 + Slot($0) * reach, ballot: ballot) }
    try MultiPaxosCore.validateRecovered(snapshot: snapshot, entries: four)
    #expect(throws: PaxosRecoveryError.tooManyEmptySlots(slot: 100 + 5 * reach, empty: 5 * (reach - 1), bound: bound)) {
      try MultiPaxosCore.validateRecovered(
        snapshot: snapshot, entries: four + [PaxosEntry(index: 100 + 5 * reach, ballot: ballot)])
    }
    #expect(
      PaxosRecoveryError.tooManyEmptySlots(slot: 9, empty: 8, bound: 7).description.contains("restore its data"))
  }

  @Test("a leader counts no answer to a read round it has not started: a faulty member confirms no later read")
  func readRoundNotStarted() throws {
    var c = PaxosCluster(3)
    c.elect(1)
    try c.propose("a", at: 1)
    var leader = c[1]
    _ = leader.readMessages()
    // A faulty member answers a round far ahead of the leader's.
    let response = HeartbeatResponse(
      ballot: leader.promised, round: 1 << 40, leaderChosenThrough: leader.chosenThrough,
      chosenThrough: leader.chosenThrough)
    leader.step(.heartbeatResponse(response), from: 2)
    #expect(leader.refusedMessages == 1)
    // The leader is then cut off from both: a read must not be confirmed by its own acknowledgement and the
    // faulty one's advance answer.
    try leader.requestRead(id: 7)
    var confirmed: [PaxosReadState] = []
    var rounds: [UInt64] = []
    for _ in 0..<3 {
      let ready = leader.ready()
      leader.advance(ready)
      confirmed += ready.readStates
      for case .heartbeat(let m) in (ready.eagerMessages + ready.messages).map(\.message) { rounds.append(m.round) }
      leader.tick()
    }
    #expect(confirmed.isEmpty, "a read confirmed by no member but the leader")
    // An honest answer to a round sent since confirms it.
    let round = try #require(rounds.max())
    leader.step(
      .heartbeatResponse(
        HeartbeatResponse(
          ballot: leader.promised, round: round, leaderChosenThrough: leader.chosenThrough,
          chosenThrough: leader.chosenThrough)), from: 3)
    #expect(leader.ready().readStates.map(\.id) == [7])
  }
}

extension MultiPaxosCore {
  /// The same durable state restarted as node `id`.
  fileprivate func withID(_ id: NodeID, seed: UInt64) -> MultiPaxosCore {
    MultiPaxosCore(
      id: id, members: members, options: options, hardState: hardState, snapshot: snapshot,
      entries: log.entries(from: firstSlot, through: lastSlot), random: SeededRandom(seed: seed))
  }
}
