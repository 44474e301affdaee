import QuorumCore
import QuorumReplica
import Testing

@testable import QuorumPaxos

@Suite("Multi-Paxos: which committed entry a pending proposal stands for")
struct ProposalMatchTests {
  let engine = MultiPaxosEngine(
    core: MultiPaxosCore(id: 1, members: [1, 2, 3], options: .testing(3), random: SeededRandom(seed: 1)))
  let mine = Ballot(round: 2, node: 1)
  let later = Ballot(round: 3, node: 2)
  let bytes: [UInt8] = [1, 2, 3]

  @Test("the same bytes in the ballot it was proposed in are the proposal; other bytes are another leader's")
  func sameBallot() {
    let ticket = MultiPaxosEngine.Ticket(index: 5, ballot: mine, kind: .command, data: bytes)
    #expect(engine.match(ticket, committedAs: PaxosEntry(index: 5, ballot: mine, data: bytes)) == .proposal)
    #expect(engine.match(ticket, committedAs: PaxosEntry(index: 5, ballot: later, data: [9])) == .another)
    #expect(
      engine.match(ticket, committedAs: PaxosEntry(index: 5, ballot: mine, kind: .membership, data: bytes))
        == .another)
  }

  @Test(
    "the same bytes chosen in a later ballot may be another leader's identical entry (two session registrations stamped in the same millisecond): the outcome is unknown, not this caller's"
  )
  func laterBallot() {
    let ticket = MultiPaxosEngine.Ticket(index: 1, ballot: mine, kind: .command, data: bytes)
    #expect(engine.match(ticket, committedAs: PaxosEntry(index: 1, ballot: later, data: bytes)) == .sameValue)
  }
}
