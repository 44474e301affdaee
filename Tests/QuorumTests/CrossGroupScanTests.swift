import Quorum
import Testing

@Suite("Scans across groups", .timeLimit(.minutes(2)))
struct CrossGroupScanTests {
  @Test("a scan pages through a prefix spread over several groups by the last key it returned")
  func pagesAcrossGroups() async throws {
    let cluster = try Cluster(id: "cross-scan") {
      Member("n1")
      Group("a", slots: [0...1364]) { KeyValue() }
      Group("b", slots: [1365...2729]) { KeyValue() }
      Group("c", slots: [2730...4095]) { KeyValue() }
    }
    try await withSingleMember(cluster, settings: cluster.hostSettings) { _, kv in
      let keys = (0..<40).map { "k/\($0 < 10 ? "0" : "")\($0)" }
      for key in keys { try await kv.put(key, key) }
      try await kv.put("other", "not in the prefix")
      var holders: Set<GroupID> = []
      for key in keys { holders.insert(try await kv.client.group(for: key, service: "kv")) }
      #expect(holders.count == 3, "the keys fall in every group")

      var seen: [String] = []
      var after: String?
      var calls = 0
      while calls < 20 {
        calls += 1
        let page = try await kv.scan(prefix: "k/", after: after, limit: 7)
        #expect(page.count <= 7)
        guard let last = page.last else { break }
        seen += page.map(\.key)
        after = last.key
      }
      #expect(seen == keys, "every key once, in key order")
      #expect(calls == 7, "five pages of 7, one of 5 and an empty one: \(calls)")
      #expect(try await kv.scan(prefix: "k/", after: "k/38", limit: 10).map(\.key) == ["k/39"])
      #expect(try await kv.scan(prefix: "k/", after: "k/39").isEmpty)
      // A start before the prefix reads the prefix from its first key; one past it reads nothing.
      #expect(try await kv.scan(prefix: "k/", after: "a", limit: 2).map(\.key) == ["k/00", "k/01"])
      #expect(try await kv.scan(prefix: "k/", after: "z").isEmpty)
    }
  }
}
