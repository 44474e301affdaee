import QuorumCore
import Testing

@testable import QuorumTransactions

@Suite("Coordinator core: two-phase commit with presumed abort")
struct CoordinatorCoreTests {
  let t = txn(7)

  @Test("commit: prepares go to every participant, and the commit is recorded before anyone is told")
  func commitRecordsBeforeTelling() {
    var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions())
    #expect(
      c.step(.begin(t, participants: [2, 3])) == [
        send(2, .prepare(t, participants: [2, 3], recordStore: nil)),
        send(3, .prepare(t, participants: [2, 3], recordStore: nil)),
      ])
    #expect(c.step(.message(from: 2, .vote(t, .yes))) == [])
    #expect(c.step(.message(from: 3, .vote(t, .yes))) == [.recordDecision(t, .commit, participants: [2, 3])])
    #expect(c.status(of: t) == .inProgress)
    #expect(
      c.step(.decisionRecorded(t, .commit)) == [
        send(2, .decision(t, .commit)), send(3, .decision(t, .commit)), .finished(t, .committed),
      ])
    #expect(c.step(.message(from: 2, .ack(t))) == [])
    #expect(c.step(.message(from: 3, .ack(t))) == [.recordFinished(t)])
    #expect(c.step(.finishRecorded(t)) == [])
    #expect(c.activeCount == 0)
    #expect(c.status(of: t) == .committed)
  }

  @Test("the end of a commit record that fails is written again, so that the shared record can be forgotten")
  func finishRetried() {
    var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions(), recordStore: 9)
    _ = c.step(.begin(t, participants: [2, 3]))
    _ = c.step(.message(from: 2, .vote(t, .yes)))
    _ = c.step(.message(from: 3, .vote(t, .yes)))
    _ = c.step(.decisionRecorded(t, .commit))
    _ = c.step(.message(from: 2, .ack(t)))
    #expect(c.step(.message(from: 3, .ack(t))) == [.recordFinished(t)])
    _ = c.step(.recordFailed(t))
    #expect(c.status(of: t) == .committed)
    #expect(
      c.ticks(30).contains(.recordFinished(t)),
      "otherwise the record stays pending on this coordinator until it restarts")
    #expect(c.step(.message(from: 3, .decisionRequest(t))) == [send(3, .decision(t, .commit))])
    #expect(c.step(.finishRecorded(t)) == [])
    #expect(c.activeCount == 0)
    #expect(c.status(of: t) == .committed)
  }

  @Test("abandoning a transaction that already committed changes nothing: it is still reported committed")
  func abandonAfterCommit() {
    var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions(), recordStore: 9)
    _ = c.step(.begin(t, participants: [2]))
    #expect(c.step(.message(from: 2, .outcome(t, .commit))) == [.finished(t, .committed)])
    #expect(c.step(.abandon(t, participants: [2])) == [], "nothing to roll back")
    #expect(c.status(of: t) == .committed)
    #expect(c.step(.message(from: 2, .vote(t, .yes))) == [send(2, .decision(t, .commit))], "a late copy")
    let u = txn(8)
    #expect(
      c.step(.abandon(u, participants: [2, 3])) == [send(2, .decision(u, .abort)), send(3, .decision(u, .abort))])
    #expect(c.status(of: u) == .aborted)
  }

  @Test("a no vote aborts at once: nothing is recorded, the others are told, the no voter is not")
  func noVoteAborts() {
    var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions())
    _ = c.step(.begin(t, participants: [2, 3, 4]))
    #expect(c.step(.message(from: 3, .vote(t, .yes))) == [])
    #expect(
      c.step(.message(from: 2, .vote(t, .no))) == [
        send(3, .decision(t, .abort)), send(4, .decision(t, .abort)), .finished(t, .aborted(.votedNo(2))),
      ])
    #expect(c.step(.message(from: 4, .vote(t, .yes))) == [send(4, .decision(t, .abort))], "a late yes is answered")
    #expect(c.status(of: t) == .aborted)
  }

  @Test("read-only voters skip phase 2; all read-only commits with nothing recorded or sent")
  func readOnly() {
    var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions())
    _ = c.step(.begin(t, participants: [2, 3]))
    _ = c.step(.message(from: 2, .vote(t, .readOnly)))
    #expect(c.step(.message(from: 3, .vote(t, .yes))) == [.recordDecision(t, .commit, participants: [3])])
    #expect(c.step(.decisionRecorded(t, .commit)) == [send(3, .decision(t, .commit)), .finished(t, .committed)])
    let u = txn(8)
    _ = c.step(.begin(u, participants: [2, 3]))
    _ = c.step(.message(from: 2, .vote(u, .readOnly)))
    #expect(c.step(.message(from: 3, .vote(u, .readOnly))) == [.finished(u, .committed)])
  }

  @Test("one participant commits in one phase (non-blocking mode) and the participant's outcome is the result")
  func onePhase() {
    var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions(), recordStore: 9)
    #expect(c.step(.begin(t, participants: [2])) == [send(2, .commitOnePhase(t, recordStore: 9))])
    #expect(c.ticks(2) == [send(2, .commitOnePhase(t, recordStore: 9))], "resent after the first retry interval")
    #expect(c.step(.message(from: 2, .outcome(t, .commit))) == [.finished(t, .committed)])
    #expect(c.step(.message(from: 2, .outcome(t, .commit))) == [], "a duplicate outcome changes nothing")
    let u = txn(8)
    _ = c.step(.begin(u, participants: [2]))
    #expect(c.step(.message(from: 2, .outcome(u, .abort))) == [.finished(u, .aborted(.participantAborted(2)))])
  }

  @Test("a one-phase participant that answers with a vote (another store) goes on in two phases, decided here")
  func onePhaseAnsweredWithAVote() {
    var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions(), recordStore: 9)
    _ = c.step(.begin(t, participants: [2]))
    #expect(c.step(.message(from: 3, .vote(t, .yes))) == [], "not the participant")
    #expect(c.step(.message(from: 2, .vote(t, .yes))) == [.recordDecision(t, .commit, participants: [2])])
    #expect(c.step(.decisionRecorded(t, .commit)) == [send(2, .decision(t, .commit)), .finished(t, .committed)])
    #expect(c.step(.message(from: 2, .ack(t))) == [.recordFinished(t)])
    let u = txn(8)
    _ = c.step(.begin(u, participants: [2]))
    #expect(c.step(.message(from: 2, .vote(u, .no))) == [.finished(u, .aborted(.votedNo(2)))])
  }

  /// In classic mode a one-phase participant would decide in its own log: a coordinator that restarted, or lost
  /// the answer, finds no record and presumes abort for a transaction that committed. Both phases put the
  /// decision in the coordinator's own record.
  @Test("in classic mode one participant goes through both phases, the decision recorded by the coordinator")
  func classicSingleParticipantUsesTwoPhases() {
    var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions())
    #expect(c.step(.begin(t, participants: [2])) == [send(2, .prepare(t, participants: [2], recordStore: nil))])
    #expect(c.step(.message(from: 2, .vote(t, .yes))) == [.recordDecision(t, .commit, participants: [2])])
    #expect(c.step(.decisionRecorded(t, .commit)) == [send(2, .decision(t, .commit)), .finished(t, .committed)])
  }

  @Test("duplicate and reordered votes, acks and questions change nothing")
  func duplicates() {
    var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions())
    _ = c.step(.begin(t, participants: [2, 3]))
    #expect(c.step(.message(from: 9, .vote(t, .yes))) == [], "not a participant")
    #expect(c.step(.message(from: 2, .ack(t))) == [], "an ack before the decision")
    #expect(c.step(.message(from: 2, .decisionRequest(t))) == [], "undecided: no answer")
    _ = c.step(.message(from: 2, .vote(t, .yes)))
    #expect(c.step(.message(from: 2, .vote(t, .yes))) == [])
    #expect(c.step(.message(from: 2, .vote(t, .no))) == [], "a changed vote is ignored")
    _ = c.step(.message(from: 3, .vote(t, .yes)))
    #expect(c.step(.message(from: 3, .vote(t, .yes))) == [], "the decision is being recorded: nothing to say yet")
    _ = c.step(.decisionRecorded(t, .commit))
    #expect(c.step(.decisionRecorded(t, .commit)) == [], "a duplicate record answer")
    #expect(c.step(.message(from: 3, .vote(t, .yes))) == [send(3, .decision(t, .commit))], "a yes voter missed it")
    _ = c.step(.message(from: 2, .ack(t)))
    #expect(c.step(.message(from: 2, .ack(t))) == [])
    #expect(c.step(.message(from: 3, .ack(t))) == [.recordFinished(t)])
    #expect(c.step(.message(from: 3, .ack(t))) == [])
    #expect(c.step(.message(from: 3, .decisionRequest(t))) == [send(3, .decision(t, .commit))])
  }

  @Test("missing votes abort after the vote timeout; prepares are resent to the silent ones before it")
  func voteTimeout() {
    var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions())
    _ = c.step(.begin(t, participants: [2, 3]))
    _ = c.step(.message(from: 2, .vote(t, .yes)))
    let resends = c.ticks(9).sent
    #expect(
      !resends.isEmpty
        && resends.allSatisfy { $0 == TransactionOutgoing(to: 3, .prepare(t, participants: [2, 3], recordStore: nil)) })
    #expect(
      c.ticks(1) == [
        send(2, .decision(t, .abort)), send(3, .decision(t, .abort)),
        .finished(t, .aborted(.voteTimeout(missing: [3]))),
      ])
  }

  @Test("a timed-out abort racing a late yes vote: the vote is answered with the abort")
  func timeoutRacesLateYes() {
    var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions())
    _ = c.step(.begin(t, participants: [2, 3]))
    _ = c.step(.message(from: 2, .vote(t, .yes)))
    let timedOut = c.ticks(10)
    #expect(timedOut.contains(.finished(t, .aborted(.voteTimeout(missing: [3])))))
    #expect(c.step(.message(from: 3, .vote(t, .yes))) == [send(3, .decision(t, .abort))])
  }

  @Test("phase-2 retries back off: an unresponsive participant gets fewer and fewer resends")
  func phase2BackOff() {
    var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions())
    _ = c.step(.begin(t, participants: [2, 3]))
    _ = c.step(.message(from: 2, .vote(t, .yes)))
    _ = c.step(.message(from: 3, .vote(t, .yes)))
    _ = c.step(.decisionRecorded(t, .commit))
    _ = c.step(.message(from: 2, .ack(t)))
    var resendTicks: [UInt64] = []
    for _ in 0..<200 where c.step(.tick(wallClockMillis: 2_000)).contains(send(3, .decision(t, .commit))) {
      resendTicks.append(c.now)
    }
    let gaps = zip(resendTicks.dropFirst(), resendTicks).map { $0 - $1 }
    // 2, 4, 8, 16, then capped at 16 ticks.
    #expect(Array(gaps.prefix(4)) == [4, 8, 16, 16])
    #expect(resendTicks.count <= 14, "\(resendTicks.count) resends in 200 ticks")
  }

  @Test("retries are capped per tick over all transactions: a burst of due retries trickles out")
  func retryBudget() {
    var options = quickCoordinatorOptions()
    options.retriesPerTick = 3
    var c = CoordinatorCore(id: 1, options: options)
    let ids = (1...10).map { txn($0) }
    for id in ids {
      _ = c.step(.begin(id, participants: [2, 3]))
      _ = c.step(.message(from: 2, .vote(id, .yes)))
    }
    _ = c.ticks(1)
    let perTick = (0..<4).map { _ in c.ticks(1).sent.count }
    #expect(perTick.allSatisfy { $0 <= 3 }, "\(perTick)")
    #expect(perTick.reduce(0, +) >= 10, "every transaction got its resend within four ticks: \(perTick)")
  }

  @Test("a question about a transaction the coordinator does not track is answered from the record, never guessed")
  func unknownAnsweredFromRecord() {
    var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions())
    #expect(c.step(.message(from: 2, .decisionRequest(t))) == [.recordDecision(t, .abort, participants: [])])
    #expect(c.step(.message(from: 3, .decisionRequest(t))) == [], "one read for both askers")
    #expect(c.step(.decisionRecorded(t, .commit)) == [send(2, .decision(t, .commit)), send(3, .decision(t, .commit))])
    #expect(c.step(.message(from: 2, .decisionRequest(txn(9, coordinator: 5)))) == [], "another coordinator's")
  }

  @Test("non-blocking: a participant resolved abort first, so the coordinator's commit loses")
  func commitLosesToResolvedAbort() {
    var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions(), recordStore: 77)
    #expect(
      c.step(.begin(t, participants: [2, 3])).sent.map(\.message) == [
        .prepare(t, participants: [2, 3], recordStore: 77), .prepare(t, participants: [2, 3], recordStore: 77),
      ])
    _ = c.step(.message(from: 2, .vote(t, .yes)))
    _ = c.step(.message(from: 3, .vote(t, .yes)))
    #expect(
      c.step(.decisionRecorded(t, .abort)) == [
        send(2, .decision(t, .abort)), send(3, .decision(t, .abort)), .finished(t, .aborted(.resolvedAbort)),
      ])
  }

  @Test("a failed decision record is retried after a back-off, and nothing is sent meanwhile")
  func recordRetry() {
    var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions())
    _ = c.step(.begin(t, participants: [2, 3]))
    _ = c.step(.message(from: 2, .vote(t, .yes)))
    _ = c.step(.message(from: 3, .vote(t, .yes)))
    #expect(c.step(.recordFailed(t)) == [])
    #expect(c.ticks(3) == [])
    #expect(c.ticks(1) == [.recordDecision(t, .commit, participants: [2, 3])], "after twice the first interval")
    #expect(c.ticks(20) == [], "in flight: no second write")
  }

  @Test("a commit the record table refuses for good aborts at once, the participants told, not retried to the horizon")
  func refusedCommitAbortsAtOnce() {
    var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions(), recordStore: 77)
    _ = c.step(.begin(t, participants: [2, 3]))
    _ = c.step(.message(from: 2, .vote(t, .yes)))
    #expect(c.step(.message(from: 3, .vote(t, .yes))) == [.recordDecision(t, .commit, participants: [2, 3])])
    let full = TransactionStoreError.refused(.tooManyRecords(limit: 10))
    #expect(
      c.step(.recordRefused(t, full)) == [
        send(2, .decision(t, .abort)), send(3, .decision(t, .abort)), .finished(t, .aborted(.recordRefused(full))),
      ])
    #expect(c.activeCount == 0)
    #expect(c.status(of: t) == .aborted)
    #expect(c.ticks(50) == [], "nothing written again")
    #expect(c.step(.message(from: 2, .decisionRequest(t))) == [send(2, .decision(t, .abort))])
    // Turned away before the log (too large for it): the same.
    let u = txn(8)
    _ = c.step(.begin(u, participants: [2, 3]))
    _ = c.step(.message(from: 2, .vote(u, .yes)))
    _ = c.step(.message(from: 3, .vote(u, .yes)))
    let large = TransactionStoreError.rejected("command of 900 bytes exceeds the limit of 512")
    #expect(c.step(.recordRefused(u, large)).last == .finished(u, .aborted(.recordRefused(large))))
  }

  @Test("a refusal after an unanswered write of the commit is retried: that write may still land")
  func refusalAfterLostWriteRetried() {
    var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions(), recordStore: 77)
    _ = c.step(.begin(t, participants: [2, 3]))
    _ = c.step(.message(from: 2, .vote(t, .yes)))
    _ = c.step(.message(from: 3, .vote(t, .yes)))
    #expect(c.step(.recordFailed(t)) == [])
    #expect(c.ticks(4) == [.recordDecision(t, .commit, participants: [2, 3])])
    #expect(c.step(.recordRefused(t, .refused(.tooManyRecords(limit: 10)))) == [])
    #expect(c.status(of: t) == .inProgress)
    #expect(c.ticks(10).contains(.recordDecision(t, .commit, participants: [2, 3])))
    #expect(c.step(.decisionRecorded(t, .commit)).last == .finished(t, .committed), "the lost write had landed")
  }

  @Test("a commit turned away before the log after an unanswered write is not resent: an abort is written instead")
  func rejectionAfterLostWriteWritesAnAbort() {
    let large = TransactionStoreError.rejected("command of 900 bytes exceeds the limit of 512")
    for lostWriteLanded in [false, true] {
      var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions(), recordStore: 77)
      _ = c.step(.begin(t, participants: [2, 3]))
      _ = c.step(.message(from: 2, .vote(t, .yes)))
      _ = c.step(.message(from: 3, .vote(t, .yes)))
      #expect(c.step(.recordFailed(t)) == [])
      #expect(c.ticks(4) == [.recordDecision(t, .commit, participants: [2, 3])])
      #expect(c.step(.recordRefused(t, large)) == [], "that unanswered write may still land: not aborted yet")
      #expect(c.status(of: t) == .inProgress)
      let writes = c.ticks(10).filter { if case .recordDecision = $0 { true } else { false } }
      #expect(writes == [.recordDecision(t, .abort, participants: [])], "the commit is not resent")
      if lostWriteLanded {
        #expect(c.step(.decisionRecorded(t, .commit)).last == .finished(t, .committed))
      } else {
        #expect(
          c.step(.decisionRecorded(t, .abort)) == [
            send(2, .decision(t, .abort)), send(3, .decision(t, .abort)), .finished(t, .aborted(.resolvedAbort)),
          ])
      }
    }
  }

  @Test("a commit refused because the table's time lags is retried, and aborts once past its horizon")
  func clockAheadRetriedUntilHorizon() {
    var options = quickCoordinatorOptions()
    options.transactionHorizonMillis = 1_000
    var c = CoordinatorCore(id: 1, options: options, recordStore: 77)
    let start = txn(9, started: 10_000)
    _ = c.step(.tick(wallClockMillis: 10_000))
    _ = c.step(.begin(start, participants: [2, 3]))
    _ = c.step(.message(from: 2, .vote(start, .yes)))
    _ = c.step(.message(from: 3, .vote(start, .yes)))
    let lagging = TransactionStoreError.refused(.clockAhead(startedAtMillis: 10_000, logTimeMillis: 0))
    #expect(c.step(.recordRefused(start, lagging)) == [])
    #expect(c.ticks(10).contains(.recordDecision(start, .commit, participants: [2, 3])), "written again")
    _ = c.step(.tick(wallClockMillis: 11_001))
    #expect(
      c.step(.recordRefused(start, lagging)) == [
        send(2, .decision(start, .abort)), send(3, .decision(start, .abort)), .finished(start, .aborted(.expired)),
      ])
  }

  @Test("a restarted coordinator resumes phase 2 of unfinished commits and aborts undecided logged ones")
  func recovery() {
    var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions(), recordStore: 77)
    let committed = TransactionRecordSummary(
      id: txn(1), decision: .commit, participants: [2, 3], pending: [1], createdAtMillis: 1_000, decidedAtMillis: 1_000,
      ageMillis: 0)
    let undecided = TransactionRecordSummary(
      id: txn(2), decision: nil, participants: [2, 3], pending: [2], createdAtMillis: 1_000, decidedAtMillis: nil,
      ageMillis: 0)
    let done = TransactionRecordSummary(
      id: txn(3), decision: .commit, participants: [2, 3], pending: [], createdAtMillis: 1_000, decidedAtMillis: 1_000,
      ageMillis: 0)
    #expect(c.step(.recovered([committed, undecided, done])) == [])
    let first = c.ticks(1)
    #expect(
      first == [
        send(2, .decision(txn(1), .commit)), send(3, .decision(txn(1), .commit)),
        .recordDecision(txn(2), .abort, participants: []),
      ])
    #expect(
      c.step(.decisionRecorded(txn(2), .abort)) == [
        send(2, .decision(txn(2), .abort)), .finished(txn(2), .aborted(.resolvedAbort)),
      ])
    #expect(c.status(of: txn(3)) == .committed)
    _ = c.step(.message(from: 2, .ack(txn(1))))
    #expect(c.step(.message(from: 3, .ack(txn(1)))) == [.recordFinished(txn(1))])
  }

  @Test("begin refuses bad requests without sending anything")
  func rejections() {
    var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions())
    #expect(
      c.step(.begin(txn(1, coordinator: 2), participants: [3])) == [.rejected(txn(1, coordinator: 2), .foreignID(2))])
    #expect(c.step(.begin(t, participants: [])) == [.rejected(t, .noParticipants)])
    #expect(c.step(.begin(t, participants: [2, 2])) == [.rejected(t, .duplicateParticipant(2))])
    #expect(c.step(.begin(t, participants: [1, 2])) == [.rejected(t, .coordinatorIsParticipant)])
    _ = c.step(.begin(t, participants: [2, 3]))
    #expect(c.step(.begin(t, participants: [2, 3])) == [.rejected(t, .duplicateID)])
    _ = c.ticks(1, wall: 1_000_000)
    #expect(c.step(.begin(txn(2), participants: [2])) == [.rejected(txn(2), .expired)])
  }

  @Test("an outcome settled by a lookup is remembered: the transaction cannot begin after it")
  func settledIsFinal() {
    var c = CoordinatorCore(id: 1, options: quickCoordinatorOptions())
    #expect(c.step(.settled(t, .abort)) == [])
    #expect(c.status(of: t) == .aborted)
    #expect(c.step(.begin(t, participants: [2, 3])) == [.rejected(t, .duplicateID)])
    _ = c.step(.begin(txn(2), participants: [2, 3]))
    #expect(c.step(.settled(txn(2), .abort)) == [], "in progress: not the lookup's to settle")
    #expect(c.status(of: txn(2)) == .inProgress)
  }
}
