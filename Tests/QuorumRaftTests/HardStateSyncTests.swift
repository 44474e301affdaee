import QuorumCore
import Testing

@testable import QuorumRaft

@Suite("Which hard states must be synced before messages leave")
struct HardStateSyncTests {
  @Test("a vote (term and vote) must be synced even under batch sync; a commit index riding with entries need not")
  func voteMustSyncCommitNeedNot() throws {
    var a = makeCore(1, peers: ids(3))
    var b = makeCore(2, peers: ids(3))
    a.campaign()
    let request = try #require(a.readMessages().first { $0.to == 2 })
    b.step(request.message, from: 1)
    let vote = b.persistReady()
    #expect(vote.hardState?.vote == 1 && vote.hardStateMustSync)
    #expect(vote.messages.contains { if case .voteResponse(let r) = $0.message { r.granted } else { false } })
    #expect(RaftEngine.outgoingWrite(vote).mustSync)

    // a wins, replicates, and commits; b's later hard states only move the commit index.
    for m in vote.messages { a.step(m.message, from: 2) }
    var commitWrites = 0
    for round in 0..<10 {
      if round > 0 { _ = try? a.propose([UInt8(round)]) }  // New entries carry the commit index along.
      for m in a.readMessages() where m.to == 2 { b.step(m.message, from: 1) }
      let rd = b.persistReady()
      if rd.hardState != nil {
        #expect(!rd.hardStateMustSync, "\(String(describing: rd.hardState))")
        #expect(!RaftEngine.outgoingWrite(rd).mustSync)
        commitWrites += 1
      }
      for m in rd.eagerMessages + rd.messages { a.step(m.message, from: 2) }
    }
    #expect(commitWrites > 0, "b never wrote a commit index")
  }
}
