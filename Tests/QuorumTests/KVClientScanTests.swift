import QuorumCore
import QuorumKV
import QuorumRaft
import Testing

/// The in-process ``KVClient``'s scan over a Raft group whose store holds more than one answer of the store may
/// carry (``KVStore/maxScanBytes``, ``KVStore/maxScanEntries``): the client follows the pages' tokens, so nothing
/// past the first answer's bounds is dropped.
@Suite("KVClient scans follow pages", .timeLimit(.minutes(3)))
struct KVClientScanTests {
  /// A store holding `count` keys named by `key`, with values made by `value` (applied directly: the scan, not
  /// the writes, is under test).
  private func store(count: Int, key: (Int) -> String, value: (Int) -> [UInt8]) -> KVStore {
    var store = KVStore()
    for n in 0..<count {
      _ = store.apply(
        .put(key: key(n), value: value(n)), context: ApplyContext(index: UInt64(n + 1), timestampMillis: 0))
    }
    return store
  }

  @Test("values larger than one answer's byte bound all come back")
  func largeValues() async throws {
    let big = store(count: 3, key: { "big/\($0)" }, value: { [UInt8](repeating: UInt8($0), count: 600_000) })
    try await withOneRaftNode(big) { node in
      let kv = KVClient(members: [1: node], retry: RetryPolicy(maxAttempts: 2_000))
      let pairs = try await kv.scan(prefix: "", limit: 1000)
      #expect(pairs.map(\.key) == ["big/0", "big/1", "big/2"])
      #expect(pairs.map { $0.value.first } == [0, 1, 2] && pairs.allSatisfy { $0.value.count == 600_000 })
      #expect(try await kv.scan(prefix: "big/", limit: 2).map(\.key) == ["big/0", "big/1"], "the limit still holds")
    }
  }

  @Test("more keys than one answer's entry bound all come back, up to the limit")
  func manyKeys() async throws {
    let keys = 12_000
    let many = store(count: keys, key: { "k/\(String(100_000 + $0))" }, value: { _ in [1] })
    try await withOneRaftNode(many) { node in
      let kv = KVClient(members: [1: node], retry: RetryPolicy(maxAttempts: 2_000))
      let pairs = try await kv.scan(prefix: "k/", limit: 20_000)
      #expect(pairs.count == keys)
      #expect(pairs.map(\.key).elementsEqual((0..<keys).map { "k/\(String(100_000 + $0))" }), "each key once, in order")
      #expect(try await kv.scan(prefix: "k/", limit: 10_500).count == 10_500)
      #expect(try await kv.scan(prefix: "k/", limit: 0).isEmpty)
      // Read in pieces, each starting after the last key of the one before: every key once, in order.
      var pieces: [String] = []
      var after: String?
      for _ in 0..<10 {
        let piece = try await kv.scan(prefix: "k/", after: after, limit: 5_000)
        guard let last = piece.last else { break }
        pieces += piece.map(\.key)
        after = last.key
      }
      #expect(pieces.elementsEqual((0..<keys).map { "k/\(String(100_000 + $0))" }), "the pieces, each key once")
      #expect(try await kv.scan(prefix: "k/", after: "k/111998").map(\.key) == ["k/111999"])
    }
  }
}
