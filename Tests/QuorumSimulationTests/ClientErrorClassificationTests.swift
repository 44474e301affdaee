import QuorumCore
import QuorumHost
import QuorumLocks
import Testing

@testable import QuorumSimulation

@Suite("The node simulation fails a run on a client error a correct cluster never gives")
struct ClientErrorClassificationTests {
  @Test("deadlines, unknown outcomes and retryable consensus refusals are part of a faulty network's life")
  func expected() {
    let errors: [any Error] = [
      QuorumClientError.timeout(outcomeUnknown: true, lastFailure: nil),
      QuorumClientError.timeout(outcomeUnknown: false, lastFailure: "unreachable"),
      QuorumClientError.outcomeUnknown,
      QuorumClientError.rejected(.consensus(.sessionExpired(7))),
      QuorumClientError.rejected(.consensus(.leaseExpired)),
      QuorumClientError.rejected(.consensus(.notLeader(hint: nil))),
      CancellationError(),
    ]
    for error in errors { #expect(ClusterSimulation.unexpectedFailure(error) == nil, "\(error)") }
  }

  @Test("an undecodable reply, a refused request or session, or a foreign error fails the run")
  func unexpected() {
    struct Other: Error {}
    let errors: [any Error] = [
      QuorumClientError.badReply("get answered with a list"),
      QuorumClientError.rejected(.malformed("x")),
      QuorumClientError.rejected(.serviceNotCarried("kv", known: [])),
      QuorumClientError.rejected(.wrongGroup(key: "k", service: "kv", owner: 2)),
      QuorumClientError.rejected(.consensus(.sessionNotOwned(3))),
      QuorumClientError.rejected(.consensus(.sessionQuotaExceeded(limit: 1))),
      QuorumClientError.rejected(.consensus(.commandTooLarge(bytes: 2, limit: 1))),
      QuorumClientError.refused("no credential"),
      Other(),
    ]
    for error in errors { #expect(ClusterSimulation.unexpectedFailure(error) != nil, "\(error)") }
  }

  @Test("a refusal, or a deadline before anything was sent, is the client's claim that a write was not applied")
  func notApplied() {
    let claims: [any Error] = [
      QuorumClientError.timeout(outcomeUnknown: false, lastFailure: nil),
      QuorumClientError.rejected(.consensus(.sessionExpired(7))),
      QuorumClientError.refused("no credential"),
    ]
    for error in claims { #expect(ClusterSimulation.claimsNotApplied(error), "\(error)") }
    struct Other: Error {}
    let noClaims: [any Error] = [
      QuorumClientError.timeout(outcomeUnknown: true, lastFailure: "timed out"),
      QuorumClientError.outcomeUnknown,
      QuorumClientError.badReply("x"),
      CancellationError(),
      Other(),
    ]
    for error in noClaims { #expect(!ClusterSimulation.claimsNotApplied(error), "\(error)") }
  }

  @Test("a lock call that waited in vain or lost its session is expected; a refusal or a nonsense answer fails the run")
  func lockErrors() {
    let expected: [any Error] = [
      LockClientError.timedOut(lock: "lx"), LockClientError.sessionLost(lock: "lx"),
      LockClientError.tooManySessions(limit: 4), QuorumClientError.timeout(outcomeUnknown: true, lastFailure: nil),
    ]
    for error in expected { #expect(ClusterSimulation.unexpectedFailure(error) == nil, "\(error)") }
    let unexpected: [any Error] = [
      LockClientError.refused(.tooManyLocks(limit: 1)), LockClientError.unexpected("granted twice"),
      LockClientError.closed, LockClientError.reentrant(lock: "lx", held: .exclusive, requested: .exclusive),
      QuorumClientError.badReply("not a lock response"),
    ]
    for error in unexpected { #expect(ClusterSimulation.unexpectedFailure(error) != nil, "\(error)") }
  }
}
