import QuorumCore
import Testing

@testable import QuorumTCP

/// ``LinkTable``: found by a linear search while small, through a dictionary of positions past its limit, and
/// the same answers either way.
@Suite("Link tables")
struct LinkTableTests {
  @Test("every peer finds its own value, and an unknown peer none, below, at and past the linear limit")
  func lookups() {
    let limit = LinkTable<Int>.linearLimit
    for count in [0, 1, limit - 1, limit, limit + 1, limit + 2, 4 * limit] {
      var table = LinkTable<Int>()
      // Ids out of order and sparse, as peers join a cluster.
      let ids = (0..<count).map { NodeID(rawValue: UInt64(($0 * 37) % 1_009 + 1)) }
      for (index, id) in ids.enumerated() {
        table.add(index * 10, for: id)
        // Everything added so far is found, whichever way the table searches now.
        for (earlier, known) in ids[...index].enumerated() {
          #expect(table[known] == earlier * 10, "\(count) peers, after adding \(index + 1): \(known)")
        }
      }
      #expect(table[NodeID(rawValue: 5_000)] == nil, "\(count) peers")
      #expect(table.peers == ids && table.handles == ids.indices.map { $0 * 10 })
    }
  }
}
