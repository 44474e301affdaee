import QuorumCore
import QuorumTestSupport
import Testing

@testable import QuorumKV

@Suite("Bounded prefix scans with continuation tokens")
struct ScanTests {
  func ctx(_ i: UInt64) -> ApplyContext { ApplyContext(index: i, timestampMillis: 0) }

  /// Every page of a scan, following the tokens.
  func pages(_ kv: KVStore, prefix: String, limit: Int, maxBytes: Int) throws -> [[KVPair]] {
    var pages: [[KVPair]] = []
    var after: String?
    for _ in 0..<10_000 {
      guard
        case .page(let pairs, let next) = kv.query(
          .scanPage(prefix: prefix, after: after, limit: limit, maxBytes: maxBytes))
      else { throw ScanFailure("not a page") }
      pages.append(pairs)
      guard let next else { return pages }
      #expect(next == pairs.last?.key, "the token is the last key returned")
      after = next
    }
    throw ScanFailure("the scan did not end")
  }

  struct ScanFailure: Error {
    let why: String
    init(_ why: String) { self.why = why }
  }

  @Test("pages of a prefix scan cover its keys once, in order, within the page's count")
  func pagingByCount() throws {
    var kv = KVStore()
    var index: UInt64 = 0
    for name in ["user/", "users", "user", "usef/", "zzz", "a"] {
      for n in 0..<7 {
        index += 1
        _ = kv.apply(.put(key: "\(name)\(n)", value: [UInt8(n)]), context: ctx(index))
      }
    }
    let all = try pages(kv, prefix: "user/", limit: 3, maxBytes: 1 << 20)
    #expect(all.map(\.count) == [3, 3, 1])
    #expect(all.flatMap { $0 }.map(\.key) == (0..<7).map { "user/\($0)" })
    #expect(try pages(kv, prefix: "user", limit: 5, maxBytes: 1 << 20).flatMap { $0 }.count == 21)
    #expect(try pages(kv, prefix: "nothing", limit: 5, maxBytes: 1 << 20) == [[]])
    // A token before the prefix starts at the prefix; one past it ends the scan.
    guard case .page(let early, _) = kv.query(.scanPage(prefix: "user/", after: "a", limit: 2, maxBytes: 1 << 20)),
      case .page(let late, let none) = kv.query(.scanPage(prefix: "user/", after: "user/9", limit: 2, maxBytes: 100))
    else {
      Issue.record("not pages")
      return
    }
    #expect(early.map(\.key) == ["user/0", "user/1"])
    #expect(late.isEmpty && none == nil)
  }

  @Test("pages are bounded in bytes, hold at least one entry, and the store caps what a scan asks for")
  func pagingByBytes() throws {
    var kv = KVStore()
    for n in 10..<40 {
      _ = kv.apply(.put(key: "big/\(n)", value: [UInt8](repeating: 1, count: 100_000)), context: ctx(UInt64(n + 1)))
    }
    let byBytes = try pages(kv, prefix: "big/", limit: 1000, maxBytes: 250_000)
    #expect(byBytes.map(\.count) == Array(repeating: 2, count: 15))
    let tiny = try pages(kv, prefix: "big/", limit: 1000, maxBytes: 1)
    #expect(tiny.count == 30 && tiny.allSatisfy { $0.count == 1 }, "a page always makes progress")
    // Asking for everything gets the store's byte cap (each entry counts its key, value and 16 bytes); the old
    // unpaged scan is capped the same way.
    let capped = try pages(kv, prefix: "big/", limit: 1000, maxBytes: Int(Int32.max))
    #expect(capped[0].count == KVStore.maxScanBytes / 100_022)
    #expect(capped.flatMap { $0 }.count == 30)
    guard case .entries(let unpaged) = kv.query(.scan(prefix: "big/", limit: 1000)) else {
      Issue.record("not entries")
      return
    }
    #expect(unpaged.count == capped[0].count)

    var many = KVStore()
    for n in 0..<(KVStore.maxScanEntries + 5) {
      _ = many.apply(.put(key: "k\(n)", value: []), context: ctx(UInt64(n + 1)))
    }
    guard
      case .page(let first, let next) = many.query(
        .scanPage(prefix: "k", after: nil, limit: Int(Int32.max), maxBytes: Int(Int32.max)))
    else {
      Issue.record("not a page")
      return
    }
    #expect(first.count == KVStore.maxScanEntries && next != nil)
  }

  @Test("the key order stays that of the dictionary through puts, deletes, swaps and restores (seeded)")
  func orderMatchesNaiveScan() throws {
    var random = SeededRandom(seed: 42)
    var kv = KVStore()
    var keys = Set<String>()
    for step in 1...6000 {
      let key = "k\(random.next() % 1500)"
      switch random.next() % 4 {
      case 0, 1:
        _ = kv.apply(.put(key: key, value: [1]), context: ctx(UInt64(step)))
        keys.insert(key)
      case 2:
        _ = kv.apply(.delete(key: key), context: ctx(UInt64(step)))
        keys.remove(key)
      default:
        let new: [UInt8]? = random.next() % 2 == 0 ? nil : [2]
        let current = kv.value(key)
        _ = kv.apply(.compareAndSwap(key: key, expected: current, new: new), context: ctx(UInt64(step)))
        if new == nil { keys.remove(key) } else { keys.insert(key) }
      }
    }
    let scanned = try pages(kv, prefix: "k", limit: 97, maxBytes: 1 << 20).flatMap { $0 }.map(\.key)
    #expect(scanned == keys.sorted())
    var restored = KVStore()
    try restored.restore(from: kv.snapshot())
    #expect(
      try pages(restored, prefix: "k1", limit: 50, maxBytes: 1 << 20).flatMap { $0 }.map(\.key)
        == keys.filter { $0.hasPrefix("k1") }.sorted())
    #expect(restored == kv)
  }

  @Test("a prefix or a key not in NFC does not end a scan before the keys with the prefix")
  func prefixesInAnyCanonicalSpelling() throws {
    func scan(_ keys: [String], _ prefix: String) throws -> [String] {
      var kv = KVStore()
      for (i, key) in keys.enumerated() { _ = kv.apply(.put(key: key, value: [1]), context: ctx(UInt64(i + 1))) }
      return try pages(kv, prefix: prefix, limit: 2, maxBytes: 1 << 20).flatMap { $0 }.map(\.key)
    }
    // "\u{E9}\u{300}" is one character, so it lacks the prefix é; "\u{E9}\u{3B1}" (é, α) has it.
    #expect(try scan(["\u{E9}\u{300}", "\u{E9}\u{3B1}"], "e\u{301}") == ["\u{E9}\u{3B1}"])
    #expect(try scan(["e\u{301}\u{300}", "\u{E9}\u{3B1}"], "\u{E9}") == ["\u{E9}\u{3B1}"])
    // Seeded: keys and prefixes spelled from precomposed and decomposed letters and combining marks; a scan
    // returns exactly the keys with the prefix, in key order (not Swift's `<`, which is no total order here).
    let alphabet = ["e", "\u{E9}", "e\u{301}", "\u{300}", "\u{301}", "\u{3B1}", "a"]
    var random = SeededRandom(seed: 7)
    func word(_ length: UInt64) -> String {
      (0..<(1 + random.next() % length)).map { _ in alphabet[Int(random.next() % UInt64(alphabet.count))] }.joined()
    }
    for _ in 0..<40 {
      var kv = KVStore()
      var keys = Set<String>()
      for i in 0..<40 {
        let key = word(4)
        keys.insert(key)
        _ = kv.apply(.put(key: key, value: [1]), context: ctx(UInt64(i + 1)))
      }
      for _ in 0..<10 {
        let prefix = word(2)
        let scanned = try pages(kv, prefix: prefix, limit: 3, maxBytes: 1 << 20).flatMap { $0 }.map(\.key)
        #expect(
          scanned == KeyOrder.sorted(keys.filter { $0.hasPrefix(prefix) }), "prefix \(Array(prefix.unicodeScalars))")
      }
    }
  }

  @Test("scan pages and their results round-trip through the wire format")
  func wire() throws {
    let queries: [KVQuery] = [
      .scanPage(prefix: "p", after: nil, limit: 3, maxBytes: 10),
      .scanPage(prefix: "", after: "x", limit: 0, maxBytes: 0),
    ]
    for query in queries { #expect(try KVQuery(wireBytes: query.wireBytes()) == query) }
    let results: [KVQueryResult] = [
      .page([KVPair("a", [1], modifiedAt: 4)], next: "a"), .page([], next: nil),
    ]
    for result in results { #expect(try KVQueryResult(wireBytes: result.wireBytes()) == result) }
  }

  @Test("a scan asking for everything (Int.max) is sent as the largest count the wire carries, not refused")
  func unboundedLimitsAreClamped() throws {
    let everything = KVQuery.scanPage(prefix: "p", after: nil, limit: .max, maxBytes: .max)
    let largest = Int(UInt32.max)
    #expect(
      try KVQuery(wireBytes: everything.wireBytes())
        == .scanPage(prefix: "p", after: nil, limit: largest, maxBytes: largest))
    #expect(
      try KVQuery(wireBytes: KVQuery.scan(prefix: "", limit: .max).wireBytes()) == .scan(prefix: "", limit: largest))
  }
}

@Suite("SortedKeys")
struct SortedKeysTests {
  @Test("inserts and removes keep every key once, in order, across chunk splits and empty chunks (seeded)")
  func matchesASortedSet() {
    var random = SeededRandom(seed: 7)
    var keys = SortedKeys()
    var model = Set<String>()
    for _ in 0..<20_000 {
      let key = String(random.next() % 3000)
      if random.next() % 3 == 0 {
        keys.remove(key)
        model.remove(key)
      } else {
        keys.insert(key)
        model.insert(key)
      }
    }
    #expect(Array(keys.all) == model.sorted())
    #expect(keys.count == model.count)
    var after: [String] = []
    keys.forEach(from: "2", after: true) { key in
      after.append(key)
      return after.count < 10
    }
    #expect(after == Array(model.sorted().filter { $0 > "2" }.prefix(10)))
  }
}

@Suite("Key order")
struct KeyOrderTests {
  @Test("key order is a strict total order that agrees with ==, where Swift's < on strings is not", .heavy)
  func strictTotalOrderAgreeingWithEquality() {
    let alphabet = [
      "e", "\u{E9}", "e\u{301}", "\u{300}", "\u{301}", "\u{3B1}", "a", "\u{1100}", "\u{1161}", "\u{AC00}",
    ]
    var random = SeededRandom(seed: 11)
    func word() -> String {
      (0..<(1 + random.next() % 4)).map { _ in alphabet[Int(random.next() % UInt64(alphabet.count))] }.joined()
    }
    let words = (0..<300).map { _ in word() }
    for a in words {
      for b in words {
        let ab = KeyOrder.precedes(a, b)
        let ba = KeyOrder.precedes(b, a)
        #expect(!(ab && ba))
        #expect((!ab && !ba) == (a == b), "\(Array(a.unicodeScalars)) \(Array(b.unicodeScalars))")
      }
    }
    // The case Swift's `<` gets wrong on this toolchain: neither before the other, yet not equal.
    #expect(KeyOrder.precedes("e\u{301}", "\u{E9}e"))
    #expect(!KeyOrder.precedes("\u{E9}e", "e\u{301}"))
    // ASCII keys keep their byte order.
    #expect(KeyOrder.sorted(["b", "a", "ab", "B", ""]) == ["", "B", "a", "ab", "b"])
  }
}
