import QuorumCore
import Testing

@testable import QuorumTransactions

@Suite("Participant core: voting, phase 2, termination")
struct ParticipantCoreTests {
  let t = txn(7)

  /// A participant `2` that has voted yes on `t` (participants 2 and 3, coordinator 1).
  func prepared(recordStore: UInt64? = nil, prepareStore: UInt64? = nil) -> ParticipantCore {
    var p = ParticipantCore(id: 2, options: quickParticipantOptions(), recordStore: recordStore)
    _ = p.step(.message(from: 1, .prepare(t, participants: [2, 3], recordStore: prepareStore)))
    _ = p.step(.voted(t, .yes))
    _ = p.step(.preparedRecorded(t, decided: nil))
    return p
  }

  @Test("a yes vote is made durable before it is sent")
  func durableBeforeYes() {
    var p = ParticipantCore(id: 2, options: quickParticipantOptions())
    #expect(p.step(.message(from: 1, .prepare(t, participants: [2, 3], recordStore: nil))) == [.prepare(t)])
    #expect(p.step(.voted(t, .yes)) == [.recordPrepared(t, participants: [2, 3])])
    #expect(p.step(.preparedRecorded(t, decided: nil)) == [psend(1, .vote(t, .yes))])
    #expect(p.inDoubt == [t])
  }

  @Test("phase 2: commit is applied, the record ended, then acknowledged; abort is applied without an ack")
  func phase2() {
    var p = prepared()
    #expect(p.step(.message(from: 1, .decision(t, .commit))) == [.apply(t, .commit)])
    #expect(p.step(.applied(t)) == [.recordFinished(t)])
    #expect(p.step(.finishRecorded(t)) == [psend(1, .ack(t))])
    #expect(p.status(of: t) == .committed)
    #expect(p.step(.message(from: 1, .decision(t, .commit))) == [psend(1, .ack(t))], "the ack may have been lost")
    var q = prepared()
    #expect(q.step(.message(from: 1, .decision(t, .abort))) == [.apply(t, .abort)])
    #expect(q.step(.applied(t)) == [.recordFinished(t)])
    #expect(q.step(.finishRecorded(t)) == [], "an abort is not acknowledged")
    #expect(q.trackedCount == 0)
  }

  @Test("a record whose end fails is ended again: after an abort, and after a one-phase commit")
  func finishRetried() {
    var q = prepared(recordStore: 9, prepareStore: 9)
    #expect(q.step(.message(from: 1, .decision(t, .abort))) == [.apply(t, .abort)])
    #expect(q.step(.applied(t)) == [.recordFinished(t)])
    _ = q.step(.recordFailed(t))
    #expect(
      q.ticks(30).contains(.recordFinished(t)),
      "otherwise the shared record stays pending on this participant, and is never forgotten")
    #expect(q.step(.finishRecorded(t)) == [], "an abort is not acknowledged")
    #expect(q.trackedCount == 0)
    #expect(q.status(of: t) == .aborted)

    var p = ParticipantCore(id: 2, options: quickParticipantOptions(), recordStore: 9)
    _ = p.step(.message(from: 1, .commitOnePhase(t, recordStore: 9)))
    _ = p.step(.voted(t, .yes))
    _ = p.step(.decisionRecorded(t, .commit))
    #expect(p.step(.applied(t)) == [psend(1, .outcome(t, .commit)), .recordFinished(t)])
    _ = p.step(.recordFailed(t))
    #expect(p.step(.message(from: 1, .commitOnePhase(t, recordStore: 9))) == [psend(1, .outcome(t, .commit))], "a copy")
    #expect(p.ticks(30).contains(.recordFinished(t)))
    #expect(p.step(.finishRecorded(t)) == [], "a one-phase commit was answered already")
    #expect(p.trackedCount == 0)
    #expect(p.status(of: t) == .committed)
  }

  @Test("a no vote rolls back; a read-only vote ends the transaction here")
  func noAndReadOnly() {
    var p = ParticipantCore(id: 2, options: quickParticipantOptions())
    _ = p.step(.message(from: 1, .prepare(t, participants: [2, 3], recordStore: nil)))
    #expect(p.step(.voted(t, .no)) == [.apply(t, .abort), psend(1, .vote(t, .no))])
    #expect(p.step(.applied(t)) == [])
    #expect(
      p.step(.message(from: 1, .prepare(t, participants: [2, 3], recordStore: nil))) == [psend(1, .vote(t, .no))],
      "a duplicate prepare gets the same vote")
    let u = txn(8)
    _ = p.step(.message(from: 1, .prepare(u, participants: [2, 3], recordStore: nil)))
    #expect(p.step(.voted(u, .readOnly)) == [psend(1, .vote(u, .readOnly))])
    #expect(p.trackedCount == 0)
  }

  @Test("a prepare whose record fails on disk becomes a no vote and a rollback")
  func preparedRecordFails() {
    var p = ParticipantCore(id: 2, options: quickParticipantOptions())
    _ = p.step(.message(from: 1, .prepare(t, participants: [2, 3], recordStore: nil)))
    _ = p.step(.voted(t, .yes))
    #expect(
      p.step(.recordFailed(t)) == [.recordDecision(t, .abort), psend(1, .vote(t, .no))],
      "the write may land later: record the abort, so that it records nothing then")
    #expect(
      p.step(.message(from: 1, .prepare(t, participants: [2, 3], recordStore: nil))) == [psend(1, .vote(t, .no))])
    #expect(p.step(.finishRecorded(t)) == [], "not asked for yet")
    #expect(p.step(.recordFailed(t)) == [])
    #expect(p.ticks(30).filter { $0 == .recordDecision(t, .abort) }.count == 1, "written again after a back-off")
    #expect(
      p.step(.decisionRecorded(t, .abort)) == [.recordFinished(t)],
      "the write may have landed: end it before rolling back")
    #expect(p.step(.finishRecorded(t)) == [.apply(t, .abort)])
    #expect(p.step(.applied(t)) == [])
    #expect(p.trackedCount == 0)
    #expect(p.status(of: t) == .aborted)

    // A commit cannot be recorded without this participant's yes; should the record hold one all the same, the
    // application (still prepared) follows it, as every other party does.
    var q = ParticipantCore(id: 2, options: quickParticipantOptions(), recordStore: 9)
    _ = q.step(.message(from: 1, .prepare(t, participants: [2, 3], recordStore: 9)))
    _ = q.step(.voted(t, .yes))
    _ = q.step(.recordFailed(t))
    #expect(q.step(.decisionRecorded(t, .commit)) == [.apply(t, .commit)])
  }

  @Test("a prepared record the table refused ends the yes at once: nothing to withdraw, nothing to wait for")
  func preparedRecordRefused() {
    var p = ParticipantCore(id: 2, options: quickParticipantOptions(), recordStore: 9)
    _ = p.step(.message(from: 1, .prepare(t, participants: [2, 3], recordStore: 9)))
    _ = p.step(.voted(t, .yes))
    // Recording the abort first (as for a write that may land late) would be refused the same way, for as long
    // as the table is full, with the resource held prepared meanwhile.
    #expect(p.step(.recordRefused(t)) == [psend(1, .vote(t, .no)), .apply(t, .abort)])
    #expect(p.step(.applied(t)) == [])
    #expect(p.trackedCount == 0)
    #expect(p.status(of: t) == .aborted)
  }

  @Test("a yes that could not be made durable is not rolled back before its record is ended")
  func preparedRecordFailsThenCrash() {
    var p = ParticipantCore(id: 2, options: quickParticipantOptions(), recordStore: 9)
    _ = p.step(.message(from: 1, .prepare(t, participants: [2, 3], recordStore: 9)))
    _ = p.step(.voted(t, .yes))
    var effects = p.step(.recordFailed(t))
    #expect(effects.contains(psend(1, .vote(t, .no))))
    effects += p.ticks(30)
    // The prepared record landed after all, and the node crashes before it is ended: the restart finds it and
    // restores the transaction as prepared, and answers the coordinator's next prepare (the no was lost) yes.
    let landed = TransactionRecordSummary(
      id: t, decision: nil, participants: [2, 3], pending: [2, 3], createdAtMillis: 1_000, decidedAtMillis: nil,
      ageMillis: 0)
    var restarted = ParticipantCore(id: 2, options: quickParticipantOptions(), recordStore: 9)
    _ = restarted.step(.recovered([landed]))
    let vote = restarted.step(.message(from: 1, .prepare(t, participants: [2, 3], recordStore: 9)))
    #expect(vote == [psend(1, .vote(t, .yes))])
    #expect(
      !effects.contains(.apply(t, .abort)),
      "the resource rolled back, and then the node voted yes: the coordinator may commit what this branch undid")
  }

  @Test("duplicate and reordered messages are harmless")
  func duplicates() {
    var p = ParticipantCore(id: 2, options: quickParticipantOptions())
    _ = p.step(.message(from: 1, .prepare(t, participants: [2, 3], recordStore: nil)))
    #expect(p.step(.message(from: 1, .prepare(t, participants: [2, 3], recordStore: nil))) == [], "still preparing")
    _ = p.step(.voted(t, .yes))
    #expect(p.step(.message(from: 1, .prepare(t, participants: [2, 3], recordStore: nil))) == [], "still recording")
    _ = p.step(.preparedRecorded(t, decided: nil))
    #expect(
      p.step(.message(from: 1, .prepare(t, participants: [2, 3], recordStore: nil))) == [psend(1, .vote(t, .yes))])
    #expect(p.step(.message(from: 1, .decision(t, .commit))) == [.apply(t, .commit)])
    #expect(p.step(.message(from: 1, .decision(t, .commit))) == [], "applying already")
    #expect(p.step(.message(from: 1, .decision(t, .abort))) == [], "a contradicting copy is ignored")
    #expect(p.step(.message(from: 1, .prepare(t, participants: [2, 3], recordStore: nil))) == [])
    #expect(
      p.step(.message(from: 1, .decision(txn(99), .abort))) == [.apply(txn(99), .abort)],
      "an abort of something unknown rolls back whatever the application did for it")
    _ = p.step(.applied(txn(99)))
    #expect(p.step(.message(from: 1, .decision(txn(99), .abort))) == [], "once")
  }

  @Test("an abort that overtakes the prepare's durable write wins once the write is done")
  func abortDuringRecording() {
    var p = ParticipantCore(id: 2, options: quickParticipantOptions())
    _ = p.step(.message(from: 1, .prepare(t, participants: [2, 3], recordStore: nil)))
    _ = p.step(.voted(t, .yes))
    #expect(p.step(.message(from: 1, .decision(t, .abort))) == [])
    #expect(p.step(.preparedRecorded(t, decided: nil)) == [.apply(t, .abort)], "no yes vote goes out")
  }

  @Test("work that never gets a prepare aborts on its own after the timeout and tells the coordinator")
  func unpreparedTimeout() {
    var p = ParticipantCore(id: 2, options: quickParticipantOptions())
    _ = p.step(.begin(t))
    #expect(p.ticks(9) == [])
    #expect(p.ticks(1) == [.apply(t, .abort), psend(1, .vote(t, .no))])
    _ = p.step(.applied(t))
    #expect(
      p.step(.message(from: 1, .prepare(t, participants: [2, 3], recordStore: nil))) == [psend(1, .vote(t, .no))],
      "a late prepare is refused")
    #expect(p.step(.message(from: 3, .decisionRequest(t))) == [psend(3, .decision(t, .abort))])
  }

  @Test("prepared, it asks the coordinator, backing off, then (classic) the other participants")
  func inquiryThenCooperative() {
    var p = prepared()
    var asked: [(UInt64, TransactionOutgoing)] = []
    for _ in 0..<60 { for out in p.step(.tick(wallClockMillis: 2_000)).sent { asked.append((p.now, out)) } }
    let toCoordinator = asked.filter { $0.1.to == 1 }.map(\.0)
    let toPeer = asked.filter { $0.1.to == 3 }.map(\.0)
    #expect(Array(toCoordinator.prefix(4)) == [3, 9, 21, 45], "3, then +6, +12, +24 ticks")
    #expect(toPeer.first == 21, "peers are asked once two questions went unanswered")
    #expect(p.step(.message(from: 3, .decision(t, .commit))) == [.apply(t, .commit)], "a peer that knows tells")
  }

  @Test("cooperative termination: a peer answers only with what it knows for certain")
  func peerAnswers() {
    var working = ParticipantCore(id: 3, options: quickParticipantOptions())
    _ = working.step(.begin(t))
    #expect(
      working.step(.message(from: 2, .decisionRequest(t))) == [.apply(t, .abort), psend(2, .decision(t, .abort))],
      "it has not voted: it refuses, so the transaction cannot commit")
    var uncertain = prepared()
    #expect(uncertain.step(.message(from: 3, .decisionRequest(t))) == [], "prepared too: it does not know")
    var stranger = ParticipantCore(id: 3, options: quickParticipantOptions())
    _ = stranger.step(.message(from: 1, .prepare(t, participants: [2, 3], recordStore: nil)))
    _ = stranger.step(.voted(t, .no))
    _ = stranger.step(.applied(t))
    #expect(
      stranger.step(.message(from: 2, .decisionRequest(t))) == [],
      "a no vote to a prepare it did not know proves nothing (it may be a copy after a commit it forgot)")
  }

  @Test("non-blocking: after the unanswered questions it resolves through the shared record")
  func nonBlockingResolution() {
    var p = prepared(recordStore: 77, prepareStore: 77)
    let effects = p.ticks(21)
    #expect(effects.last == .recordDecision(t, .abort))
    #expect(p.ticks(100).sent.isEmpty, "no questions while the record is being read")
    #expect(p.step(.decisionRecorded(t, .commit)) == [.apply(t, .commit)], "the coordinator had recorded commit")
  }

  @Test("a participant with a shared store votes no to a classic prepare")
  func sharedStoreRefusesClassic() {
    var p = ParticipantCore(id: 2, options: quickParticipantOptions(), recordStore: 77)
    #expect(
      p.step(.message(from: 1, .prepare(t, participants: [2, 3], recordStore: nil))) == [psend(1, .vote(t, .no))])
    #expect(
      p.step(.message(from: 1, .prepare(txn(8), participants: [2, 3], recordStore: 78))) == [
        psend(1, .vote(txn(8), .no))
      ])
  }

  @Test("one phase: the participant records its own commit, applies it, answers, and answers copies the same")
  func onePhase() {
    var p = ParticipantCore(id: 2, options: quickParticipantOptions(), recordStore: 9)
    #expect(p.step(.message(from: 1, .commitOnePhase(t, recordStore: 9))) == [.prepare(t)])
    #expect(p.step(.voted(t, .yes)) == [.recordDecision(t, .commit)])
    #expect(p.step(.message(from: 1, .commitOnePhase(t, recordStore: 9))) == [], "in progress")
    #expect(p.step(.decisionRecorded(t, .commit)) == [.apply(t, .commit)])
    #expect(p.step(.applied(t)) == [psend(1, .outcome(t, .commit)), .recordFinished(t)])
    #expect(p.step(.message(from: 1, .commitOnePhase(t, recordStore: 9))) == [psend(1, .outcome(t, .commit))])
  }

  @Test("one phase: a copy that may repeat a forgotten request is checked against the record")
  func onePhaseForgotten() {
    var options = quickParticipantOptions()
    options.rememberedOutcomes = 1
    var p = ParticipantCore(id: 2, options: options, recordStore: 9)
    for n in 1...2 as ClosedRange<UInt64> {
      let id = txn(n)
      _ = p.step(.message(from: 1, .commitOnePhase(id, recordStore: 9)))
      _ = p.step(.voted(id, .yes))
      _ = p.step(.decisionRecorded(id, .commit))
      _ = p.step(.applied(id))
      _ = p.step(.finishRecorded(id))
    }
    #expect(p.step(.message(from: 1, .commitOnePhase(txn(1), recordStore: 9))) == [.lookUp(txn(1))])
    let record = TransactionRecordSummary(
      id: txn(1), decision: .commit, participants: [2], pending: [], createdAtMillis: 1_000, decidedAtMillis: 1_000,
      ageMillis: 0)
    #expect(p.step(.lookedUp(txn(1), record)) == [psend(1, .outcome(txn(1), .commit))])
    #expect(
      p.step(.message(from: 1, .commitOnePhase(txn(3, started: 5_000), recordStore: 9))) == [
        .prepare(txn(3, started: 5_000))
      ],
      "a transaction started after everything forgotten is new: no read")
  }

  @Test("a restarted participant restores its prepared transactions, applies recorded decisions, and asks")
  func recovery() {
    var p = ParticipantCore(id: 2, options: quickParticipantOptions())
    let open = TransactionRecordSummary(
      id: txn(1), decision: nil, participants: [2, 3], pending: [2], createdAtMillis: 1_000, decidedAtMillis: nil,
      ageMillis: 0)
    let decided = TransactionRecordSummary(
      id: txn(2), decision: .commit, participants: [2, 3], pending: [2, 1], createdAtMillis: 1_000,
      decidedAtMillis: 1_000, ageMillis: 0)
    #expect(p.step(.recovered([open, decided])) == [.apply(txn(2), .commit)])
    #expect(p.inDoubt == [txn(1)])
    #expect(p.ticks(1) == [psend(1, .decisionRequest(txn(1)))])
    #expect(p.step(.applied(txn(2))) == [.recordFinished(txn(2))])
    #expect(p.step(.finishRecorded(txn(2))) == [psend(1, .ack(txn(2)))])
  }

  @Test("a restarted participant prepared alone in a classic transaction acknowledges the commit (it is not one-phase)")
  func recoveredSoleParticipantIsTwoPhase() {
    var p = ParticipantCore(id: 2, options: quickParticipantOptions())
    let prepared = TransactionRecordSummary(
      id: txn(1), decision: nil, participants: [2], pending: [2], createdAtMillis: 1_000, decidedAtMillis: nil,
      ageMillis: 0)
    _ = p.step(.recovered([prepared]))
    #expect(p.step(.message(from: 1, .decision(txn(1), .commit))) == [.apply(txn(1), .commit)])
    #expect(p.step(.applied(txn(1))) == [.recordFinished(txn(1))])
    #expect(p.step(.finishRecorded(txn(1))) == [psend(1, .ack(txn(1)))], "an ack, not a one-phase outcome")
  }

  @Test("an unknown commit is acknowledged (it was applied and forgotten); past the horizon a prepare gets no")
  func unknownAndLate() {
    var p = ParticipantCore(id: 2, options: quickParticipantOptions())
    #expect(p.step(.message(from: 1, .decision(t, .commit))) == [psend(1, .ack(t))])
    _ = p.ticks(1, wall: 1_000_000)
    #expect(
      p.step(.message(from: 1, .prepare(t, participants: [2, 3], recordStore: nil))) == [psend(1, .vote(t, .no))])
    var shared = ParticipantCore(id: 2, options: quickParticipantOptions(), recordStore: 9)
    _ = shared.ticks(1, wall: 1_000_000)
    #expect(
      shared.step(.message(from: 1, .commitOnePhase(txn(9), recordStore: 9))) == [], "too late to answer truthfully")
  }

  /// A participant deciding a one-phase commit in a store the coordinator does not read would commit where the
  /// coordinator cannot see it: a coordinator that lost the answer presumes abort in its own store and tells the
  /// application so, over a commit.
  @Test("a one-phase commit over another store than the participant's is answered as a prepare, with a vote")
  func onePhaseOverAnotherStore() {
    var local = ParticipantCore(id: 2, options: quickParticipantOptions())
    #expect(local.step(.message(from: 1, .commitOnePhase(t, recordStore: 9))) == [.prepare(t)])
    #expect(local.step(.voted(t, .yes)) == [.recordPrepared(t, participants: [2])], "prepared, not decided here")
    #expect(local.step(.preparedRecorded(t, decided: nil)) == [psend(1, .vote(t, .yes))])
    #expect(
      local.step(.message(from: 1, .commitOnePhase(t, recordStore: 9))) == [psend(1, .vote(t, .yes))], "a copy")
    #expect(local.step(.message(from: 1, .decision(t, .commit))) == [.apply(t, .commit)])
    #expect(local.step(.applied(t)) == [.recordFinished(t)])
    #expect(local.step(.finishRecorded(t)) == [psend(1, .ack(t))], "acknowledged as in two phases")

    var other = ParticipantCore(id: 2, options: quickParticipantOptions(), recordStore: 8)
    #expect(
      other.step(.message(from: 1, .commitOnePhase(t, recordStore: 9))) == [psend(1, .vote(t, .no))],
      "a shared store takes part only in transactions over itself")
    #expect(
      other.step(.message(from: 1, .commitOnePhase(txn(8), recordStore: nil))) == [.prepare(txn(8))],
      "a coordinator too old to name its store: one phase, as before")
    #expect(other.step(.voted(txn(8), .yes)) == [.recordDecision(txn(8), .commit)])
  }

  /// A coordinator older than the store field (wire tag 1) expects a participant with a local store to decide alone,
  /// and ignores a vote in one phase: a prepare would hold the participant's locks until that coordinator's horizon.
  @Test("a one-phase commit from a coordinator too old to name its store is refused by a local store, at once")
  func oldOnePhaseRefusedByALocalStore() {
    var local = ParticipantCore(id: 2, options: quickParticipantOptions())
    _ = local.step(.begin(t))
    #expect(local.step(.message(from: 1, .commitOnePhase(t, recordStore: nil))) == [.apply(t, .abort)])
    #expect(local.step(.applied(t)) == [psend(1, .outcome(t, .abort))], "an outcome that coordinator understands")
    #expect(local.status(of: t) == .aborted)
    #expect(local.trackedCount == 0)
    #expect(
      local.step(.message(from: 1, .commitOnePhase(t, recordStore: nil))) == [psend(1, .outcome(t, .abort))], "a copy")
    #expect(
      local.step(.message(from: 1, .commitOnePhase(txn(8), recordStore: nil))) == [.apply(txn(8), .abort)],
      "unknown here: whatever the application holds of it is rolled back")
    #expect(local.step(.applied(txn(8))) == [psend(1, .outcome(txn(8), .abort))])
  }
}
