import QuorumCore
import Testing

@testable import QuorumRaft

/// Counts the snapshot chunks sent to one node (a drop filter that drops nothing).
private final class ChunkCounter {
  var count = 0
}

/// The review's loop: a follower refuses a snapshot over its size bound, and the leader sent it again after
/// every heartbeat answer, forever. Now the leader stops, reports the refusal once, and shows it in status.
@Suite("Raft: a snapshot a follower refuses as too large")
struct RaftSnapshotRefusalTests {
  @Test("is not resent every round; it is reported once, retried after the back-off or for a newer snapshot")
  func refusedSnapshotIsNotResentForever() throws {
    var options = RaftCoreOptions.defaults
    options.snapshotRefusalBackoffTicks = 200
    var c = TestCluster(3, options: options)
    c.campaign(1)
    c.isolate(3)
    for i in 0..<10 { c.propose(1, "v\(i)") }
    let image = [UInt8](repeating: 7, count: 64)
    let first = c.nodes[1]!.takeSnapshot(at: c[1].appliedIndex, data: image).index
    // Node 3 restarts with a 32-byte limit.
    var small = options
    small.maxSnapshotBytes = 32
    let durable = try #require(c.durable[3])
    c.nodes[3] = RaftCore(
      id: 3, options: small, membership: .empty, hardState: durable.hardState, snapshot: durable.snapshot,
      entries: durable.entries, random: SeededRandom(seed: 3))
    let chunks = ChunkCounter()
    c.dropFilter = { _, to, message in
      if to == 3, case .installSnapshot = message { chunks.count += 1 }
      return false
    }
    c.heal()

    c.tickAll(150)
    #expect(chunks.count == 1, "sent once, refused, not sent again within the back-off")
    let refusals = c.snapshotRefusals[1] ?? []
    #expect(refusals.map(\.peer) == [3] && refusals.map(\.snapshotIndex) == [first])
    #expect(refusals.first?.snapshotBytes == 64)
    #expect(c[1].peerProgress[3]?.snapshotRefusal != nil, "status says why node 3 lags")
    #expect(c.leaders == [1] && c[3].commitIndex < c[1].commitIndex)

    c.tickAll(60)
    #expect(chunks.count == 2, "offered again once the back-off has passed")
    #expect(c.snapshotRefusals[1]?.count == 1, "the same refusal is not reported twice")

    c.propose(1, "more")
    let second = c.nodes[1]!.takeSnapshot(at: c[1].appliedIndex, data: image).index
    c.tickAll(5)
    #expect(chunks.count == 3, "a newer snapshot is offered at once")
    #expect(c.snapshotRefusals[1]?.map(\.snapshotIndex) == [first, second])
  }
}
