import QuorumCore
import Testing

@testable import QuorumPaxos

@Suite("Multi-Paxos: the reads a leader keeps waiting for confirmation are bounded")
struct PaxosUnconfirmedReadsTests {
  @Test("a leader that hears from no acceptor keeps at most 65,536 read ids; the oldest fail")
  func bounded() throws {
    var c = PaxosCluster(3)
    c.elect(1)
    try c.propose("chosen", at: 1)
    var leader = c[1]
    let limit = UInt64(MultiPaxosCore.maxUnconfirmedReads)
    for id in 1...(limit + 2) { try leader.requestRead(id: id) }
    #expect(leader.unconfirmedReads == Int(limit))
    #expect(leader.ready().failedReads == [1, 2], "the two oldest reported failed")
  }
}
