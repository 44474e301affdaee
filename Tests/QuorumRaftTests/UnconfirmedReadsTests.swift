import QuorumCore
import Testing

@testable import QuorumRaft

@Suite("Raft: the reads a leader keeps waiting for confirmation are bounded")
struct UnconfirmedReadsTests {
  @Test("a leader cut off from every follower, with check-quorum off, keeps at most 65,536 read ids; the oldest fail")
  func boundedWithoutCheckQuorum() throws {
    var options = RaftCoreOptions.defaults
    options.checkQuorum = false
    var c = TestCluster(3, options: options)
    c.campaign(1)
    c.propose(1, "committed in the leader's term")
    c.down = [2, 3]
    var leader = c[1]
    let limit = UInt64(RaftCore.maxUnconfirmedReads)
    for id in 1...(limit + 2) { try leader.requestRead(id: id) }
    #expect(leader.unconfirmedReads == Int(limit))
    #expect(leader.ready().failedReads == [1, 2], "the two oldest reported failed")
  }
}
