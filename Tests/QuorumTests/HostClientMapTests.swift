import Quorum
import Testing

/// A channel whose members answer every request with the same cluster map.
struct MapChannel: RequestChannel {
  let map: ClusterMap

  func send(_ request: [UInt8], to member: NodeID, timeout: Duration) async throws -> [UInt8] {
    HostReply.clusterMap(map).wireBytes()
  }
}

@Suite("A client given a bad cluster map")
struct HostClientMapTests {
  @Test("slot ranges that are empty or reach past the last slot are refused when decoded")
  func slotRangesOnTheWire() throws {
    for range in [SlotRange(5, 1), SlotRange(0, ClusterMap.slotCount)] {
      #expect(throws: WireError.self) { try SlotRange(wireBytes: range.wireBytes()) }
    }
    let whole = SlotRange(0, ClusterMap.slotCount - 1)
    #expect(try SlotRange(wireBytes: whole.wireBytes()) == whole)
  }

  @Test("a map that breaks the map's rules is a bad reply, not a route")
  func invalidMapIsABadReply() async throws {
    // Two groups with the same id.
    let map = ClusterMap(
      cluster: "bad", members: [1: ""],
      groups: [
        GroupSpec(id: .default, name: "a", members: [1], services: ["kv"]),
        GroupSpec(id: .default, name: "b", members: [1], services: ["kv"]),
      ])
    let client = HostClient(channel: MapChannel(map: map), members: [1])
    do {
      _ = try await client.clusterMap(deadline: .seconds(5))
      Issue.record("the map was taken")
    } catch QuorumClientError.badReply(let why) {
      #expect(why.contains("invalid cluster map"), "\(why)")
    }
  }
}
