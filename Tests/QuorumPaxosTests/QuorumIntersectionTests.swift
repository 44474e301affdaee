import QuorumCore
import Testing

@testable import QuorumPaxos

/// The review found that single-decree options, proposers and learners accepted quorums that need not
/// intersect (|Q1| + |Q2| ≤ N), with which two values can be chosen.
@Suite("Single-decree Paxos: quorums that need not intersect are refused")
struct QuorumIntersectionTests {
  private func setting(_ options: SynodOptions, acceptors: Int) -> String? {
    do {
      try options.validate(acceptorCount: acceptors)
      return nil
    } catch {
      return error.setting
    }
  }

  @Test("validate(acceptorCount:) names the quorum at fault")
  func validation() {
    #expect(setting(SynodOptions(phase1Quorum: 2, phase2Quorum: 2), acceptors: 3) == nil)
    #expect(setting(SynodOptions(phase1Quorum: 4, phase2Quorum: 2), acceptors: 5) == nil, "Flexible Paxos")
    #expect(setting(SynodOptions(phase1Quorum: 1, phase2Quorum: 2), acceptors: 3) == "phase2Quorum")
    #expect(setting(SynodOptions(phase1Quorum: 3, phase2Quorum: 2), acceptors: 5) == "phase2Quorum")
    #expect(setting(SynodOptions(phase1Quorum: 0, phase2Quorum: 3), acceptors: 3) == "phase1Quorum")
    #expect(setting(SynodOptions(phase1Quorum: 2, phase2Quorum: 4), acceptors: 3) == "phase2Quorum")
    #expect(
      setting(SynodOptions(phase1Quorum: 2, phase2Quorum: 2, retransmitTicks: 0), acceptors: 3) == "retransmitTicks")
    #expect(setting(.majority(of: 4), acceptors: 4) == nil)
  }

  @Test("a proposer with quorums 1 + 2 of 3 acceptors stops as a broken precondition")
  func proposerRefuses() async {
    await #expect(processExitsWith: .failure) {
      _ = ProposerCore<String>(
        id: 11, acceptors: [1, 2, 3], learners: [21], options: SynodOptions(phase1Quorum: 1, phase2Quorum: 2),
        random: SeededRandom(seed: 1))
    }
  }

  @Test("a learner whose quorum (2 of 4) need not meet a phase-1 quorum (2 of 4) stops as a broken precondition")
  func learnerRefuses() async {
    await #expect(processExitsWith: .failure) {
      _ = LearnerCore<String>(
        id: 21, acceptors: [1, 2, 3, 4], peers: [], options: SynodOptions(phase1Quorum: 2, phase2Quorum: 2))
    }
  }

  @Test("valid options still build every role")
  func validOptionsBuild() {
    let proposer = ProposerCore<String>(
      id: 11, acceptors: [1, 2, 3], learners: [21], options: .majority(of: 3), random: SeededRandom(seed: 1))
    let learner = LearnerCore<String>(id: 21, acceptors: [1, 2, 3], peers: [], options: .majority(of: 3))
    #expect(proposer.phase == .idle && learner.chosen == nil)
  }
}
