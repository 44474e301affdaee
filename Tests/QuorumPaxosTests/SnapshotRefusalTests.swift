import QuorumCore
import Testing

@testable import QuorumPaxos

/// Counts the snapshot chunks sent to one node (a drop filter that drops nothing).
private final class ChunkCounter {
  var count = 0
}

/// The review's loop: a replica refuses a snapshot over its size bound, and the leader restarted the transfer
/// at every answer, forever. Now the leader stops, reports the refusal once, and shows it in status.
@Suite("Multi-Paxos: a snapshot a replica refuses as too large")
struct PaxosSnapshotRefusalTests {
  @Test("is not resent every round; it is reported once, retried after the back-off or for a newer snapshot")
  func refusedSnapshotIsNotResentForever() throws {
    var options = MultiPaxosOptions.testing(3)
    options.snapshotRefusalBackoffTicks = 200
    var c = PaxosCluster(3, options: options)
    c.elect(1)
    c.down = [3]
    for i in 0..<10 { try c.propose("v\(i)", at: 1) }
    let image = [UInt8](repeating: 7, count: 64)
    let first = c.nodes[1]!.takeSnapshot(at: c[1].appliedThrough, data: image).index
    // Node 3 restarts with a 32-byte limit.
    var small = options
    small.maxSnapshotBytes = 32
    let durable = try #require(c.durable[3])
    var restarted = MultiPaxosCore(
      id: 3, members: c.members, options: small, hardState: durable.hardState, snapshot: durable.snapshot,
      entries: durable.entries.keys.sorted().compactMap { durable.entries[$0] }, random: SeededRandom(seed: 3))
    restarted.sinceLeaderContact = options.electionTimeoutMinTicks
    c.nodes[3] = restarted
    c.queue.removeAll()
    let chunks = ChunkCounter()
    c.dropFilter = { _, to, message in
      if to == 3, case .snapshot = message { chunks.count += 1 }
      return false
    }
    c.down = []

    c.tickAll(150)
    #expect(chunks.count == 1, "sent once, refused, not sent again within the back-off")
    let refusals = c.snapshotRefusals[1] ?? []
    #expect(refusals.map(\.peer) == [3] && refusals.map(\.snapshotIndex) == [first])
    #expect(refusals.first?.snapshotBytes == 64)
    #expect(c[1].peerProgress[3]?.snapshotRefusal != nil, "status says why node 3 lags")
    #expect(c[1].role == .leader && c[3].chosenThrough < c[1].chosenThrough)

    c.tickAll(60)
    #expect(chunks.count == 2, "offered again once the back-off has passed")
    #expect(c.snapshotRefusals[1]?.count == 1, "the same refusal is not reported twice")

    try c.propose("more", at: 1)
    let second = c.nodes[1]!.takeSnapshot(at: c[1].appliedThrough, data: image).index
    c.tickAll(8)
    #expect(chunks.count == 3, "a newer snapshot is offered at once")
    #expect(c.snapshotRefusals[1]?.map(\.snapshotIndex) == [first, second])
  }
}
