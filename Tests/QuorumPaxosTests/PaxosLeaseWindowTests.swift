import QuorumCore
import Testing

@testable import QuorumPaxos

private let ms: UInt64 = 1_000_000
private let leaderBallot = Ballot(round: 1, node: 1)
private let rivalBallot = Ballot(round: 2, node: 3)

/// Options as a node runs them: 10 ms ticks, 150–300 ms elections, 15 ms drift bound, lease reads on.
private func nodeOptions() throws -> MultiPaxosOptions {
  try PaxosConfiguration {
    Members(1, 2, 3)
    TickInterval(.milliseconds(10))
    ElectionTimeout(Duration.milliseconds(150)...Duration.milliseconds(300))
    LeaseReads(clockDriftBound: .milliseconds(15))
  }.coreOptions
}

extension MultiPaxosCore {
  /// Steps node 3's prepare for a ballot above the leader's and returns whether it was promised.
  fileprivate mutating func promisesRival() -> Bool {
    step(.prepare(Prepare(ballot: rivalBallot, fromSlot: 1)), from: 3)
    return readMessages().contains {
      if $0.to == 3, case .promise = $0.message { return true }
      return false
    }
  }

  /// Whether this node asked anyone for a ballot of its own (probe or prepare) since the last look.
  fileprivate mutating func campaigned() -> Bool {
    readMessages().contains {
      switch $0.message {
      case .probe, .prepare: return true
      default: return false
      }
    }
  }

  fileprivate mutating func heartbeat(at now: UInt64) {
    advanceClock(to: now)
    step(.heartbeat(Heartbeat(ballot: leaderBallot, chosenThrough: 0, round: 1)), from: 1)
    _ = readMessages()
  }
}

/// The review's Multi-Paxos lease bug: an acceptor counted tick events from the leader's heartbeat, so it could
/// promise a new ballot (minimum timeout ÷ tick − 1) ticks of real time later, while the leader's lease ran the
/// whole minimum timeout less the drift bound — and a drift bound of zero was accepted.
@Suite("Multi-Paxos: the promise-refusal window is measured on the monotonic clock")
struct PaxosLeaseWindowTests {
  @Test("heartbeat at 9.9 ms, ticks every 10 ms: at 150 ms (15 ticks later) the rival's prepare is still refused")
  func fifteenTicksAreNot150Milliseconds() throws {
    let options = try nodeOptions()
    #expect(options.promiseRefusalWindowNanos == 150 * ms)
    var acceptor = MultiPaxosCore(id: 2, members: [1, 2, 3], options: options, random: SeededRandom(seed: 2))
    acceptor.heartbeat(at: 9_900_000)
    for tick in 1...15 { acceptor.tick(now: UInt64(tick) * 10 * ms) }
    #expect(acceptor.sinceLeaderContact == 15, "15 ticks: a tick count would promise now")
    let early = acceptor.promisesRival()
    #expect(!early, "140.1 ms after the heartbeat")
    #expect(acceptor.promised == leaderBallot)
    acceptor.advanceClock(to: 159_899_999)
    let stillEarly = acceptor.promisesRival()
    #expect(!stillEarly, "1 ns before the window ends")
    // The old leader's lease started at most when it sent the heartbeat and lasts 125 ms: over by 134.9 ms,
    // well before the window ends at 159.9 ms (the drift bound, 15 ms, and a tick, 10 ms, of margin).
    #expect(9_900_000 + options.leaseDurationNanos + options.clockDriftBoundNanos + options.tickNanos <= 159_900_000)
    acceptor.advanceClock(to: 159_900_000)
    let promised = acceptor.promisesRival()
    #expect(promised, "the window has passed")
    #expect(acceptor.promised == rivalBallot)
  }

  @Test("ticks in a burst right after a heartbeat: no promise, no probe of its own, until 150 ms have passed")
  func burstAfterHeartbeat() throws {
    var acceptor = MultiPaxosCore(id: 2, members: [1, 2, 3], options: try nodeOptions(), random: SeededRandom(seed: 2))
    acceptor.heartbeat(at: 1_000 * ms)
    for _ in 0..<40 { acceptor.tick(now: 1_005 * ms) }
    let probed = acceptor.campaigned()
    #expect(!probed, "40 ticks 5 ms after the heartbeat must not start phase 1")
    #expect(acceptor.role == .follower && acceptor.leader == 1)
    let early = acceptor.promisesRival()
    #expect(!early, "5 ms after the heartbeat")
    acceptor.advanceClock(to: 1_150 * ms)
    let promised = acceptor.promisesRival()
    #expect(promised)
  }

  @Test("a node refuses new ballots for a window from its first clock reading after it starts")
  func startWindow() throws {
    var acceptor = MultiPaxosCore(id: 2, members: [1, 2, 3], options: try nodeOptions(), random: SeededRandom(seed: 2))
    acceptor.advanceClock(to: 3_000 * ms)
    for _ in 0..<40 { acceptor.tick(now: 3_001 * ms) }
    let probed = acceptor.campaigned()
    #expect(!probed)
    let early = acceptor.promisesRival()
    #expect(!early, "1 ms after starting, after 40 ticks")
    acceptor.advanceClock(to: 3_150 * ms)
    let promised = acceptor.promisesRival()
    #expect(promised)
  }
}

/// The public `campaign()` skipped leader stickiness: it promised itself a new ballot and sent prepares while its
/// own acceptor would have refused that ballot to anyone else, which a timeout-driven campaign never does.
@Suite("Multi-Paxos: campaign() respects leader stickiness")
struct PaxosCampaignStickinessTests {
  @Test("while the leader was heard within a minimum election timeout (counted in ticks), campaign() is refused")
  func refusedByTickCount() {
    var node = MultiPaxosCore(id: 2, members: [1, 2, 3], options: .testing(3), random: SeededRandom(seed: 2))
    node.step(.heartbeat(Heartbeat(ballot: leaderBallot, chosenThrough: 0, round: 1)), from: 1)
    _ = node.readMessages()
    node.tick(9)
    let refused = node.campaign()
    #expect(!refused)
    let asked = node.campaigned()
    #expect(!asked, "no prepare while leader 1 is live")
    #expect(node.promised == leaderBallot && node.role == .follower && node.leader == 1)
    node.tick()
    let started = node.campaign()
    #expect(started, "a minimum election timeout of ticks without the leader")
    let askedNow = node.campaigned()
    #expect(askedNow)
    #expect(node.promised > leaderBallot)
  }

  @Test("inside the window measured on the clock, a burst of ticks does not let campaign() through")
  func refusedByClock() throws {
    var node = MultiPaxosCore(id: 2, members: [1, 2, 3], options: try nodeOptions(), random: SeededRandom(seed: 2))
    node.heartbeat(at: 1_000 * ms)
    for _ in 0..<40 { node.tick(now: 1_005 * ms) }
    let refused = node.campaign()
    #expect(!refused)
    node.advanceClock(to: 1_150 * ms)
    let started = node.campaign()
    #expect(started)
  }
}

@Suite("Multi-Paxos: lease settings are validated against the refusal window")
struct PaxosLeaseValidationTests {
  private func setting(_ body: () throws -> Void) -> String? {
    do {
      try body()
      return nil
    } catch let error as ConfigurationError {
      return error.setting
    } catch {
      return "unexpected \(error)"
    }
  }

  @Test("the review's settings (10 ms ticks, 150–300 ms timeouts, drift 0) are refused, naming LeaseReads")
  func zeroDriftRefused() {
    let refused = setting {
      _ = try PaxosConfiguration {
        Members(1, 2, 3)
        TickInterval(.milliseconds(10))
        ElectionTimeout(Duration.milliseconds(150)...Duration.milliseconds(300))
        LeaseReads(clockDriftBound: .zero)
      }
    }
    #expect(refused == "LeaseReads")
    let noLease = setting {
      _ = try PaxosConfiguration {
        Members(1, 2, 3)
        LeaseReads(clockDriftBound: .milliseconds(140))
      }
    }
    #expect(noLease == "LeaseReads", "150 ms window - 10 ms tick leaves nothing after 140 ms of drift")
  }

  @Test("core options: the lease must end a tick and the drift bound before the window; quorums must intersect")
  func coreOptions() throws {
    var options = try nodeOptions()
    try options.validate(memberCount: 3)
    options.leaseDurationNanos += 1
    #expect(setting { try options.validate(memberCount: 3) } == "leaseDurationNanos")
    options = try nodeOptions()
    options.clockDriftBoundNanos = 0
    #expect(setting { try options.validate(memberCount: 3) } == "clockDriftBoundNanos")
    options = try nodeOptions()
    options.tickNanos = 0
    #expect(setting { try options.validate(memberCount: 3) } == "tickNanos")
    options = try nodeOptions()
    options.majorityQuorums = false  // Fixed sizes (majorities follow the member count and always intersect).
    #expect(setting { try options.validate(memberCount: 4) } == "phase2Quorum", "2 + 2 do not exceed 4")
  }
}
