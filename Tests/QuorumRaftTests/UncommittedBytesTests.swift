import QuorumCore
import Testing

@testable import QuorumRaft

/// The review found that the leader's uncommitted-bytes counter never added its no-op or membership entries,
/// so proposals were admitted past `maxUncommittedBytes` while those were outstanding.
@Suite("Raft: the uncommitted-bytes limit counts no-op and membership entries")
struct UncommittedBytesTests {
  /// A leader of {1, 2, 3} whose followers have acknowledged nothing, with a 100-byte limit.
  private func leader() -> RaftCore {
    var options = RaftCoreOptions.paper
    options.maxUncommittedBytes = 100
    var core = makeCore(1, peers: ids(3), options: options)
    core.forceLeader()
    return core
  }

  private func acknowledge(_ core: inout RaftCore, through index: LogIndex) {
    core.step(.appendResponse(AppendResponse(term: core.term, reject: false, index: index)), from: 2)
    _ = core.readMessages()
  }

  @Test("the uncommitted no-op (16 bytes) plus a 96-byte command exceed 100 bytes; once it commits they fit")
  func noopCounts() throws {
    var core = leader()
    let noop = core.lastIndex
    #expect(core.entry(at: noop)?.kind == .noop && core.commitIndex < noop)
    #expect(throws: RaftRequestError.overloaded) { _ = try core.propose([UInt8](repeating: 1, count: 80)) }
    acknowledge(&core, through: noop)
    #expect(core.commitIndex == noop)
    _ = try core.propose([UInt8](repeating: 1, count: 80))
  }

  @Test("an uncommitted membership entry counts until it commits")
  func membershipCounts() throws {
    var core = leader()
    acknowledge(&core, through: core.lastIndex)
    let change = try core.proposeMembership(.change([.addLearner(4)]))
    let size = try #require(core.entry(at: change)).byteSize
    #expect(throws: RaftRequestError.overloaded) {
      _ = try core.propose([UInt8](repeating: 1, count: 100 - size - 16 + 1))
    }
    acknowledge(&core, through: change)
    #expect(core.commitIndex == change)
    _ = try core.propose([UInt8](repeating: 1, count: 100 - size - 16 + 1))
  }
}
