import QuorumCore
import QuorumHost
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
}
