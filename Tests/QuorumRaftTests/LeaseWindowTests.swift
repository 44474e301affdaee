import QuorumCore
import Testing

@testable import QuorumRaft

private let ms: UInt64 = 1_000_000

/// Options as a node runs them: 10 ms ticks, 150–300 ms elections, a 15 ms drift bound, lease reads on.
private func nodeOptions() throws -> RaftCoreOptions {
  try RaftConfiguration { Members(1, 2, 3) }.coreOptions
}

extension RaftCore {
  /// Steps a vote request from `from` and returns whether it was granted.
  fileprivate mutating func grants(
    _ from: NodeID, term: Term, preVote: Bool, lastLogIndex: LogIndex = 100, lastLogTerm: Term = 100
  ) -> Bool {
    step(
      .requestVote(
        RequestVote(term: term, lastLogIndex: lastLogIndex, lastLogTerm: lastLogTerm, preVote: preVote, transfer: false)
      ),
      from: from)
    return readMessages().contains {
      if $0.to == from, case .voteResponse(let r) = $0.message { return r.granted }
      return false
    }
  }

  /// Ticks `count` times with the clock standing at `now`: the missed ticks of a stall, fired back to back.
  fileprivate mutating func tickBurst(_ count: Int, at now: UInt64) {
    for _ in 0..<count { tick(now: now) }
  }

  fileprivate mutating func campaigned() -> Bool {
    readMessages().contains {
      if case .requestVote = $0.message { return true }
      return false
    }
  }
}

/// The review's lease bug: after a stall the shell fires the missed ticks back to back, and a follower that
/// counted them as time would stop refusing votes (and would campaign itself) a few milliseconds after
/// acknowledging the leader's heartbeat — while the leader's lease, measured on its clock, still runs.
@Suite("Raft: the vote-refusal window is measured on the monotonic clock")
struct RaftLeaseWindowTests {
  @Test("ticks in a burst right after a heartbeat: the follower neither campaigns nor votes until 150 ms have passed")
  func burstAfterHeartbeat() throws {
    let options = try nodeOptions()
    #expect(options.voteRefusalWindowNanos == 150 * ms)
    var follower = makeCore(2, peers: ids(3), options: options)
    follower.advanceClock(to: 1_000 * ms)
    follower.step(.heartbeat(Heartbeat(term: 1, commit: 0, round: 1)), from: 1)
    _ = follower.readMessages()
    follower.tickBurst(40, at: 1_005 * ms)  // More than the longest election timeout, 5 ms after the heartbeat.
    let started1 = follower.campaigned()
    #expect(!started1, "a burst of ticks must not start an election inside the window")
    #expect(follower.role == .follower && follower.leader == 1)
    let granted2 = follower.grants(3, term: 2, preVote: true)
    #expect(!granted2, "pre-vote 5 ms after the heartbeat")
    let granted3 = follower.grants(3, term: 2, preVote: false)
    #expect(!granted3, "vote 5 ms after the heartbeat")
    #expect(follower.term == 1, "an ignored vote request changes nothing")

    follower.advanceClock(to: 1_149 * ms)
    let granted4 = follower.grants(3, term: 2, preVote: true)
    #expect(!granted4, "149 ms after the heartbeat")
    follower.advanceClock(to: 1_150 * ms)
    let granted5 = follower.grants(3, term: 2, preVote: true)
    #expect(granted5, "the window has passed")
    follower.tick(now: 1_150 * ms)
    let started6 = follower.campaigned()
    #expect(started6, "and the overdue election starts at the next tick")
  }

  @Test("a node restarted from durable state refuses votes for a window from its first clock reading")
  func restartWindow() throws {
    var restarted = makeCore(2, peers: ids(3), options: try nodeOptions(), hardState: HardState(term: 4, vote: 1))
    restarted.advanceClock(to: 7_000 * ms)
    restarted.tickBurst(40, at: 7_001 * ms)
    let started7 = restarted.campaigned()
    #expect(!started7)
    let granted8 = restarted.grants(3, term: 5, preVote: true)
    #expect(!granted8, "1 ms after restarting, after a burst of ticks")
    restarted.advanceClock(to: 7_150 * ms)
    let granted9 = restarted.grants(3, term: 5, preVote: true)
    #expect(granted9)
  }

  @Test("a higher-term message that is not from a leader moves the term but does not end the window")
  func higherTermResponseKeepsTheWindow() throws {
    var follower = makeCore(2, peers: ids(3), options: try nodeOptions())
    follower.advanceClock(to: 1_000 * ms)
    follower.step(.heartbeat(Heartbeat(term: 1, commit: 0, round: 1)), from: 1)
    _ = follower.readMessages()
    follower.advanceClock(to: 1_010 * ms)
    follower.step(.appendResponse(AppendResponse(term: 5, reject: false, index: 0)), from: 3)
    #expect(follower.term == 5 && follower.leader == nil)
    follower.tickBurst(40, at: 1_020 * ms)
    let started10 = follower.campaigned()
    #expect(!started10)
    let granted11 = follower.grants(3, term: 6, preVote: true)
    #expect(!granted11, "20 ms after leader 1's heartbeat")
    follower.advanceClock(to: 1_150 * ms)
    let granted12 = follower.grants(3, term: 6, preVote: true)
    #expect(granted12)
  }

  @Test(
    "a vote request in a term a response moved this node to is refused inside the window too (and a pre-vote request)"
  )
  func sameTermVoteInsideTheWindow() throws {
    var follower = makeCore(2, peers: ids(5), options: try nodeOptions())
    follower.advanceClock(to: 1_000 * ms)
    follower.step(.heartbeat(Heartbeat(term: 4, commit: 0, round: 1)), from: 1)
    _ = follower.readMessages()
    follower.advanceClock(to: 1_010 * ms)
    // Node 4, a candidate of term 5, refuses this node's pre-vote: the refusal moves it to term 5, no leader, no vote.
    follower.step(.voteResponse(VoteResponse(term: 5, granted: false, preVote: true)), from: 4)
    #expect(follower.term == 5 && follower.leader == nil)
    // Node 3's request for term 5, delayed in the network, now arrives in this node's own term.
    let granted13 = follower.grants(3, term: 5, preVote: false)
    #expect(!granted13, "10 ms after leader 1's heartbeat: leader 1's lease still counts on this node")
    let granted14 = follower.grants(3, term: 5, preVote: true)
    #expect(!granted14, "a pre-vote in the window either")
    follower.advanceClock(to: 1_150 * ms)
    let granted15 = follower.grants(3, term: 5, preVote: false)
    #expect(granted15, "the window has passed")
    let granted16 = follower.grants(3, term: 5, preVote: false)
    #expect(granted16, "a repeated request gets the vote already given")
  }

  @Test("a higher-term heartbeat comes from that term's leader: it restarts the window")
  func higherTermLeaderRestartsTheWindow() throws {
    var follower = makeCore(2, peers: ids(3), options: try nodeOptions())
    follower.advanceClock(to: 1_000 * ms)
    follower.step(.heartbeat(Heartbeat(term: 1, commit: 0, round: 1)), from: 1)
    follower.advanceClock(to: 1_100 * ms)
    follower.step(.heartbeat(Heartbeat(term: 2, commit: 0, round: 1)), from: 3)
    _ = follower.readMessages()
    #expect(follower.term == 2 && follower.leader == 3)
    follower.tickBurst(40, at: 1_200 * ms)
    let granted13 = follower.grants(1, term: 3, preVote: true)
    #expect(!granted13, "100 ms after leader 3's heartbeat")
    follower.advanceClock(to: 1_250 * ms)
    let granted14 = follower.grants(1, term: 3, preVote: true)
    #expect(granted14)
  }

  @Test("campaign() refuses inside the window measured on the clock")
  func campaignRefusesInsideTheWindow() throws {
    var follower = makeCore(2, peers: ids(3), options: try nodeOptions())
    follower.advanceClock(to: 1_000 * ms)
    follower.step(.heartbeat(Heartbeat(term: 1, commit: 0, round: 1)), from: 1)
    _ = follower.readMessages()
    follower.advanceClock(to: 1_100 * ms)
    let started15 = follower.campaign()
    #expect(!started15)
    let started16 = follower.campaigned()
    #expect(!started16)
    follower.advanceClock(to: 1_150 * ms)
    let started17 = follower.campaign()
    #expect(started17)
    let started18 = follower.campaigned()
    #expect(started18)
  }
}

@Suite("Raft: lease settings are validated against the refusal window")
struct RaftLeaseValidationTests {
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

  @Test("a drift bound of zero, or one that leaves no lease, is refused when lease reads are on")
  func configuration() throws {
    #expect(setting { _ = try RaftConfiguration { LeaseReads(clockDriftBound: .zero) } } == "LeaseReads")
    #expect(setting { _ = try RaftConfiguration { LeaseReads(clockDriftBound: .milliseconds(140)) } } == "LeaseReads")
    let tight = try RaftConfiguration { LeaseReads(clockDriftBound: .milliseconds(139)) }
    #expect(tight.coreOptions.leaseDurationNanos == 1 * ms, "150 ms window - 10 ms tick - 139 ms drift")
    let off = try RaftConfiguration {
      LeaseReads(clockDriftBound: .zero)
      LeaseReads(false)
    }
    #expect(off.coreOptions.leaseDurationNanos == 0)
  }

  @Test("core options: the lease must end a tick and the drift bound before the refusal window")
  func coreOptions() throws {
    var options = try nodeOptions()
    try options.validate()
    #expect(options.leaseDurationNanos + options.clockDriftBoundNanos + options.tickNanos == 150 * ms)
    options.leaseDurationNanos += 1
    #expect(setting { try options.validate() } == "leaseDurationNanos")
    options = try nodeOptions()
    options.clockDriftBoundNanos = 0
    #expect(setting { try options.validate() } == "clockDriftBoundNanos")
    options = try nodeOptions()
    options.tickNanos = 0
    #expect(setting { try options.validate() } == "tickNanos")
    options = try nodeOptions()
    options.checkQuorum = false
    #expect(setting { try options.validate() } == "leaseDurationNanos")
  }
}
