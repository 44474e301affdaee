import QuorumCore
import Testing

@testable import QuorumPaxos

// Conformance with "Paxos Made Simple" (Lamport, 2001), §2: the single-decree algorithm, role by role.
// Ballots are written b<round>.<proposer>.

private let b1 = Ballot(round: 1, node: 11)
private let b2 = Ballot(round: 2, node: 12)
private let b3 = Ballot(round: 3, node: 11)

@Suite("§2.2 Acceptors: the promise and accept rules (P1, P1a)")
struct AcceptorRuleTests {
  @Test("P1: an acceptor accepts the first proposal it receives, with no prepare before it")
  func acceptsFirstProposal() {
    var a = AcceptorCore<String>(id: 1, learners: [21])
    let effects = a.step(.message(from: 11, .accept(b1, "x")))
    #expect(a.state.accepted == AcceptedProposal(ballot: b1, value: "x"))
    #expect(effects.sends() == [SynodOutgoing(to: 11, .accepted(b1, "x")), SynodOutgoing(to: 21, .accepted(b1, "x"))])
  }

  @Test("a prepare above every promise is promised, with the highest-numbered proposal accepted")
  func promiseCarriesAcceptedProposal() {
    var a = AcceptorCore<String>(id: 1, learners: [])
    _ = a.step(.message(from: 11, .accept(b1, "x")))
    let effects = a.step(.message(from: 12, .prepare(b2)))
    #expect(a.state.promised == b2)
    #expect(
      effects.sends() == [SynodOutgoing(to: 12, .promise(b2, accepted: AcceptedProposal(ballot: b1, value: "x")))])
  }

  @Test("the promise is persisted before it is sent (the effect order is the durability order)")
  func persistBeforePromise() {
    var a = AcceptorCore<String>(id: 1, learners: [21])
    let promise = a.step(.message(from: 11, .prepare(b1)))
    #expect(promise.count == 2)
    #expect(promise.first == .persist(AcceptorState(promised: b1)))
    let accept = a.step(.message(from: 11, .accept(b1, "x")))
    #expect(accept.first == .persist(AcceptorState(promised: b1, accepted: AcceptedProposal(ballot: b1, value: "x"))))
    #expect(accept.dropFirst().allSatisfy { if case .send = $0 { true } else { false } })
  }

  @Test("P1a: after promising b2, an accept for b1 < b2 is refused with the promised ballot")
  func refusesLowerAccept() {
    var a = AcceptorCore<String>(id: 1, learners: [21])
    _ = a.step(.message(from: 12, .prepare(b2)))
    let effects = a.step(.message(from: 11, .accept(b1, "x")))
    #expect(a.state.accepted == nil)
    #expect(effects == [.send(SynodOutgoing(to: 11, .rejected(b1, promised: b2)))])
  }

  @Test("P1a: an accept at or above the promise is accepted", arguments: [b2, b3])
  func acceptsAtOrAbovePromise(ballot: Ballot) {
    var a = AcceptorCore<String>(id: 1, learners: [])
    _ = a.step(.message(from: 12, .prepare(b2)))
    _ = a.step(.message(from: ballot.node, .accept(ballot, "y")))
    #expect(a.state.accepted == AcceptedProposal(ballot: ballot, value: "y"))
    #expect(a.state.promised == ballot)
  }

  @Test("a prepare below the promise is refused with the promised ballot, so the proposer can go above it")
  func refusesLowerPrepare() {
    var a = AcceptorCore<String>(id: 1, learners: [])
    _ = a.step(.message(from: 12, .prepare(b2)))
    let effects = a.step(.message(from: 11, .prepare(b1)))
    #expect(effects == [.send(SynodOutgoing(to: 11, .rejected(b1, promised: b2)))])
    #expect(a.state.promised == b2)
  }

  @Test("a repeated prepare for the promised ballot is answered again without a new write")
  func repeatedPrepareIsRetransmission() {
    var a = AcceptorCore<String>(id: 1, learners: [])
    _ = a.step(.message(from: 11, .prepare(b1)))
    let again = a.step(.message(from: 11, .prepare(b1)))
    #expect(again == [.send(SynodOutgoing(to: 11, .promise(b1, accepted: nil)))])
  }

  @Test("an acceptor that heard the chosen value answers prepares and queries with it")
  func knowsChosen() {
    var a = AcceptorCore<String>(id: 1, learners: [])
    _ = a.step(.message(from: 11, .chosen("x")))
    #expect(a.step(.message(from: 12, .prepare(b2))) == [.send(SynodOutgoing(to: 12, .chosen("x")))])
    #expect(a.step(.message(from: 21, .query)) == [.send(SynodOutgoing(to: 21, .chosen("x")))])
  }

  @Test("the durable state round-trips through its encoding")
  func stateEncoding() throws {
    let state = AcceptorState(promised: b2, accepted: AcceptedProposal(ballot: b1, value: "x"))
    #expect(try AcceptorState<String>(wireBytes: state.wireBytes()) == state)
  }
}

@Suite("§2.2 Proposers: choosing a value (P2c)")
struct ProposerRuleTests {
  @Test("phase 1 goes to every acceptor with a fresh ballot, after the round reservation is persisted")
  func prepareAfterReservation() {
    var p = ProposerCore<String>(
      id: 11, acceptors: ids(3), learners: [], options: .majority(of: 3), random: SeededRandom(seed: 1))
    let effects = p.step(.propose("v"))
    guard case .persist(let state) = effects.first else {
      Issue.record("expected the reservation first, got \(effects)")
      return
    }
    #expect(state.roundFloor > 1)
    #expect(effects.proposerSends() == ids(3).map { SynodOutgoing(to: $0, .prepare(Ballot(round: 1, node: 11))) })
    #expect(p.phase == .preparing)
  }

  @Test("a proposer reserves its first rounds when it starts, so its first ballot needs no write")
  func reservesAtStart() {
    var p = ProposerCore<String>(
      id: 11, acceptors: ids(3), learners: [], options: .majority(of: 3), random: SeededRandom(seed: 1))
    #expect(p.step(.start) == [.persist(ProposerState(roundFloor: 1 + p.roundsPerReservation))])
    let effects = p.step(.propose("v"))
    #expect(effects.allSatisfy { if case .send = $0 { true } else { false } })
    #expect(p.ballot == Ballot(round: 1, node: 11))
  }

  @Test("a restarted proposer starts above its durable round floor and never reuses a ballot")
  func restartAboveFloor() {
    var p = ProposerCore<String>(
      id: 11, acceptors: ids(3), learners: [], options: .majority(of: 3), state: ProposerState(roundFloor: 17),
      random: SeededRandom(seed: 1))
    _ = p.step(.propose("v"))
    #expect(p.ballot == Ballot(round: 17, node: 11))
  }

  @Test("with no accepted proposal reported, the proposer proposes its own value")
  func proposesOwnValue() {
    var c = SynodCluster()
    c.propose("mine", by: 11)
    c.stabilize()
    #expect(c.chosenBy[11] == "mine")
    #expect(c.learned[21] == "mine")
  }

  @Test("P2c: the proposer adopts the value of the highest-ballot proposal its quorum reports")
  func adoptsHighestAccepted() {
    var c = SynodCluster(acceptors: 3, proposers: [13])
    _ = c.acceptors[1]?.step(.message(from: 11, .accept(b1, "older")))
    _ = c.acceptors[2]?.step(.message(from: 12, .accept(b2, "newer")))
    c.propose("mine", by: 13)
    // Deliver the promises of acceptors 1 and 2 only: a quorum that reports b1/"older" and b2/"newer".
    c.cut = [3]
    c.stabilize()
    #expect(c.chosenBy[13] == "newer")
  }

  @Test("a higher ballot pre-empts a lower one; the pre-empted proposer retries at once above it")
  func higherBallotPreempts() {
    var c = SynodCluster(acceptors: 3, proposers: [11, 12])
    c.propose("a", by: 11)
    // Proposer 11's prepares reach the acceptors and their promises come back: it sends accepts.
    while c.deliverNext(where: { _, _, m in if case .accept = m { false } else { true } }) != nil {}
    #expect(c.proposers[11]?.phase == .accepting)
    // Before the accepts arrive, proposer 12 prepares a higher ballot at every acceptor.
    c.propose("b", by: 12)
    while c.deliverNext(where: { from, _, m in from == 12 || (m.isPromise) }) != nil {}
    // Now 11's accepts arrive and are refused with 12's ballot.
    while c.deliverNext(where: { from, _, _ in from == 11 }) != nil {}
    let refusals = c.queue.filter { if case .rejected = $0.message { true } else { false } }
    #expect(refusals.count == 3)
    c.deliverNext(where: { _, to, m in to == 11 && m.isRejected })
    let retry = c.proposers[11]?.ballot
    #expect(retry.map { $0 > (c.proposers[12]?.ballot ?? .zero) } == true, "retried above the pre-empting ballot")
    #expect(c.proposers[11]?.phase == .preparing)
  }

  @Test("a chosen value never changes: a later proposer with another value and a higher ballot chooses it too")
  func chosenNeverChanges() {
    var c = SynodCluster(acceptors: 3, proposers: [11, 12], learners: [21])
    c.cut = [3]
    c.propose("first", by: 11)
    c.stabilize()
    #expect(c.chosenBy[11] == "first")
    // Acceptors 2 and 3 restart (forgetting the announcement, keeping their durable state); proposer 12 now
    // reaches the quorum {2, 3} and proposes its own value in a higher ballot.
    for id: NodeID in [2, 3] {
      c.acceptors[id] = c.acceptors[id].map { AcceptorCore(id: id, learners: [21], state: $0.state) }
    }
    c.cut = [1]
    c.propose("second", by: 12)
    c.stabilize()
    #expect(c.chosenBy[12] == "first")
    #expect(c.acceptors[3]?.state.accepted?.value == "first")
  }

  @Test("dueling proposers back off by a seeded random delay after a second pre-emption")
  func duelBackoffIsSeeded() {
    func delays(seed: UInt64) -> [ProposerPhase] {
      var p = ProposerCore<String>(
        id: 11, acceptors: ids(3), learners: [],
        options: SynodOptions(phase1Quorum: 2, phase2Quorum: 2, backoffInitialTicks: 8, backoffMaxTicks: 64),
        random: SeededRandom(seed: seed))
      _ = p.step(.propose("v"))
      var phases: [ProposerPhase] = []
      for round in 1...4 {
        guard let ballot = p.ballot else { break }
        _ = p.step(
          .message(from: 1, .rejected(ballot, promised: Ballot(round: ballot.round + UInt64(round), node: 12))))
        phases.append(p.phase)
        while p.phase == .backingOff { _ = p.step(.tick) }
      }
      return phases
    }
    let first = delays(seed: 5)
    #expect(first.first == .preparing, "the first pre-emption retries at once")
    #expect(first == delays(seed: 5), "the same seed backs off the same way")
  }

  @Test("the distinguished proposer owns the lowest ballot and skips phase 1 on its first attempt")
  func distinguishedSkipsPhase1() {
    var options = SynodOptions.majority(of: 3)
    options.distinguishedProposer = 11
    var c = SynodCluster(acceptors: 3, proposers: [11, 12], options: options)
    c.propose("fast", by: 11)
    #expect(c.queue.allSatisfy { if case .accept = $0.message { true } else { false } })
    #expect(c.proposers[11]?.ballot == Ballot(round: 0, node: 11))
    c.stabilize()
    #expect(c.chosenBy[11] == "fast")
    // Every other proposer starts at round 1, above it.
    c.propose("slow", by: 12)
    c.stabilize()
    #expect(c.proposers[12]?.ballot?.round == 1)
    #expect(c.chosenBy[12] == "fast")
  }

  @Test("unanswered messages are resent with the same ballot")
  func retransmits() {
    var c = SynodCluster(acceptors: 3, proposers: [11])
    c.propose("v", by: 11)
    c.queue.removeAll()  // Every prepare is lost.
    c.tick(11, times: c.options.retransmitTicks)
    #expect(c.queue.count == 3)
    #expect(c.proposers[11]?.ballotsStarted == 1)
    c.stabilize()
    #expect(c.chosenBy[11] == "v")
  }
}

@Suite("§2.3 Learners")
struct LearnerRuleTests {
  @Test("a learner counts acceptances per ballot: a quorum across different ballots is not a choice")
  func countsPerBallot() {
    var l = LearnerCore<String>(id: 21, acceptors: ids(3), peers: [], options: .majority(of: 3))
    #expect(l.step(.message(from: 1, .accepted(b1, "v"))).isEmpty)
    #expect(l.step(.message(from: 2, .accepted(b2, "v"))).isEmpty, "b1 and b2 are different ballots")
    #expect(l.chosen == nil)
    #expect(l.step(.message(from: 3, .accepted(b2, "v"))) == [.learned("v")])
  }

  @Test("duplicated acceptances count once")
  func duplicatesCountOnce() {
    var l = LearnerCore<String>(id: 21, acceptors: ids(3), peers: [], options: .majority(of: 3))
    _ = l.step(.message(from: 1, .accepted(b1, "v")))
    #expect(l.step(.message(from: 1, .accepted(b1, "v"))).isEmpty)
    #expect(l.chosen == nil)
  }

  @Test("acceptances from nodes that are not acceptors are ignored")
  func ignoresStrangers() {
    var l = LearnerCore<String>(id: 21, acceptors: ids(3), peers: [], options: .majority(of: 3))
    _ = l.step(.message(from: 1, .accepted(b1, "v")))
    #expect(l.step(.message(from: 99, .accepted(b1, "v"))).isEmpty)
  }

  @Test("a late learner asks the acceptors and the other learners, and learns from their answers")
  func lateLearnerAsks() throws {
    var c = SynodCluster(acceptors: 3, proposers: [11], learners: [21, 22])
    c.cut = [22]
    c.propose("v", by: 11)
    c.stabilize()
    #expect(c.learned[21] == "v")
    #expect(c.learned[22] == nil)
    c.cut = []
    var late = try #require(c.learners[22])
    let asks = late.step(.ask)
    c.learners[22] = late
    #expect(Set(asks.learnerSends().map(\.to)) == [1, 2, 3, 21])
    for m in asks.learnerSends() { c.queue.append((22, m.to, m.message)) }
    c.stabilize()
    #expect(c.learned[22] == "v")
  }

  @Test("a learner keeps asking until it learns")
  func keepsAsking() {
    var l = LearnerCore<String>(id: 21, acceptors: ids(3), peers: [], options: .majority(of: 3))
    _ = l.step(.ask)
    var resent = 0
    for _ in 0..<(3 * l.options.retransmitTicks) { resent += l.step(.tick).count }
    #expect(resent == 9)
    _ = l.step(.message(from: 1, .chosen("v")))
    #expect(l.step(.tick).isEmpty)
  }
}

extension SynodMessage {
  fileprivate var isPromise: Bool { if case .promise = self { true } else { false } }
  fileprivate var isRejected: Bool { if case .rejected = self { true } else { false } }
}
