import QuorumCore
import QuorumKV
import QuorumStorage
import Testing

@testable import QuorumPaxos

@Suite("PaxosConfiguration validation")
struct PaxosConfigurationTests {
  func error(_ build: () throws -> PaxosConfiguration) -> ConfigurationError? {
    do {
      _ = try build()
      return nil
    } catch {
      return error as? ConfigurationError
    }
  }

  @Test("the DSL builds a valid configuration and converts durations to ticks", arguments: [true, false])
  func valid(explicitDrift: Bool) throws {
    let c = try PaxosConfiguration {
      Members(1, 2, 3, 4, 5)
      Quorums(phase1: 4, phase2: 2)
      ElectionTimeout(Duration.milliseconds(150)...Duration.milliseconds(300))
      HeartbeatInterval(.milliseconds(50))
      // Both branches of an `if` in the builder are taken (the default drift bound is 15 ms).
      if explicitDrift { LeaseReads(clockDriftBound: .milliseconds(15)) } else { LeaseReads(true) }
    }
    let o = c.coreOptions
    #expect(o.phase1Quorum == 4 && o.phase2Quorum == 2)
    #expect(o.electionTimeoutMinTicks == 15)
    #expect(o.electionTimeoutMaxTicks == 30)
    #expect(o.heartbeatTicks == 5)
    #expect(o.leaseDurationNanos == 125_000_000, "150 ms refusal window - 10 ms tick - 15 ms drift")
    #expect(o.tickNanos == 10_000_000 && o.clockDriftBoundNanos == 15_000_000)
  }

  @Test(
    "quorum sizes left out are derived: majorities, or the smallest that intersects the other",
    arguments: [
      (5, nil, nil, 3, 3), (4, nil, nil, 3, 3), (5, 4, nil, 4, 2), (5, nil, 2, 4, 2), (3, nil, 1, 3, 1),
    ] as [(Int, Int?, Int?, Int, Int)])
  func derivedQuorums(n: Int, q1: Int?, q2: Int?, expected1: Int, expected2: Int) throws {
    let c = try PaxosConfiguration {
      Members((1...n).map { NodeID(UInt64($0)) })
      Quorums(phase1: q1, phase2: q2)
    }
    #expect(c.quorums.phase1 == expected1)
    #expect(c.quorums.phase2 == expected2)
  }

  @Test("each invalid setting is named in the error")
  func invalid() {
    #expect(error { try PaxosConfiguration { Members(1, 2, 2) } }?.setting == "Members")
    #expect(error { try PaxosConfiguration { Members(0, 1) } }?.setting == "Members")
    // No members: a node that joins an existing group; it needs both quorum sizes or neither.
    #expect(error { try PaxosConfiguration { Members() } } == nil)
    #expect(
      error {
        try PaxosConfiguration {
          Members()
          Quorums(phase1: 2)
        }
      }?.setting == "Quorums")
    #expect(error { try PaxosConfiguration { Members((1...65).map { NodeID(UInt64($0)) }) } }?.setting == "Members")
    #expect(
      error {
        try PaxosConfiguration {
          Members(1, 2, 3, 4)
          Quorums(phase1: 2, phase2: 2)
        }
      }?.setting == "Quorums", "2 + 2 does not exceed 4: two quorums could miss each other")
    #expect(
      error {
        try PaxosConfiguration {
          Members(1, 2, 3)
          Quorums(phase1: 3, phase2: 0)
        }
      }?.setting == "Quorums", "Q2 < 1")
    #expect(
      error {
        try PaxosConfiguration {
          Members(1, 2, 3)
          Quorums(phase1: 4, phase2: 1)
        }
      }?.setting == "Quorums", "a quorum larger than the group")
    #expect(
      error {
        try PaxosConfiguration {
          Members(1, 2, 3)
          HeartbeatInterval(.milliseconds(100))
        }
      }?.setting == "HeartbeatInterval")
    #expect(
      error {
        try PaxosConfiguration {
          Members(1, 2, 3)
          ElectionTimeout(Duration.milliseconds(150)...Duration.milliseconds(150))
        }
      }?.setting == "ElectionTimeout")
    #expect(
      error {
        try PaxosConfiguration {
          Members(1, 2, 3)
          LeaseReads(clockDriftBound: .seconds(1))
        }
      }?.setting == "LeaseReads")
    #expect(
      error {
        try PaxosConfiguration {
          Members(1, 2, 3)
          FlowControl(maxInflightMessages: 0)
        }
      }?.setting == "MaxInflightMessages")
    #expect(
      error {
        try PaxosConfiguration {
          Members(1, 2, 3)
          Retransmit(after: .microseconds(10))
        }
      }?.setting == "Retransmit")
    #expect(
      error {
        try PaxosConfiguration {
          Members(1, 2, 3)
          ProposerBackoff(initial: .milliseconds(50), maximum: .milliseconds(10))
        }
      }?.setting == "ProposerBackoff")
    #expect(
      error {
        try PaxosConfiguration {
          Members(1, 2, 3)
          DistinguishedProposer(0)
        }
      }?.setting == "DistinguishedProposer")
  }

  @Test("a node that is not a founding member starts as a non-voter that learns the configuration, not a candidate")
  func notAFoundingMember() throws {
    let configuration = try PaxosConfiguration { Members(1, 2, 3) }
    let engine = try MultiPaxosEngine.recover(
      id: 9, configuration: configuration, state: RecoveredState<PaxosEntry>(), random: SeededRandom(seed: 9)
    ).engine
    #expect(engine.core.membership == Membership(voters: [1, 2, 3]), "the founding members govern the first slots")
    #expect(!engine.core.isPromotable)
    var core = engine.core
    core.sinceLeaderContact = 1_000  // Outside the refusal window: only its not being a voter stops it.
    let started = core.campaign()
    #expect(!started, "a non-voter never campaigns")
  }
}
