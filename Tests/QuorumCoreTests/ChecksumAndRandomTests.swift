import QuorumCore
import Testing

@Suite("CRC-32C")
struct CRC32CTests {
  @Test(
    "matches the published check values",
    arguments: [
      (Array("123456789".utf8), 0xE306_9283),
      ([UInt8](repeating: 0, count: 32), 0x8A91_36AA),
      ([UInt8](repeating: 0xFF, count: 32), 0x62A8_AB43),
      (Array(0...31), 0x46DD_794E),
      (Array((0...31).reversed()), 0x113F_DB5C),
      (Array("The quick brown fox jumps over the lazy dog".utf8), 0x2262_0404),
      ([], 0),
    ] as [([UInt8], UInt32)])
  func knownVectors(bytes: [UInt8], expected: UInt32) {
    #expect(CRC32C.checksum(bytes) == expected)
  }

  @Test("checksumming in pieces equals checksumming at once, for every split of random data")
  func incremental() {
    var rng = SeededRandom(seed: 32)
    for length in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 200, 1_000] {
      let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
      let whole = CRC32C.checksum(bytes)
      for split in 0...length {
        let first = CRC32C.checksum(bytes[..<split])
        #expect(CRC32C.checksum(bytes[split...], continuing: first) == whole, "length \(length), split \(split)")
      }
      let three = [0, length / 3, 2 * length / 3, length]
      var crc: UInt32 = 0
      for i in 0..<3 { crc = CRC32C.checksum(bytes[three[i]..<three[i + 1]], continuing: crc) }
      #expect(crc == whole)
      // A collection without contiguous storage takes the copying path and gives the same answer.
      #expect(CRC32C.checksum(bytes.lazy.map { $0 }) == whole)
      bytes.withUnsafeBytes { #expect(CRC32C.checksum($0) == whole) }
    }
  }

  @Test("a single flipped bit changes the checksum")
  func detectsBitFlips() {
    var rng = SeededRandom(seed: 5)
    let bytes = (0..<256).map { _ in UInt8.random(in: 0...255, using: &rng) }
    let original = CRC32C.checksum(bytes)
    for bit in 0..<(bytes.count * 8) {
      var flipped = bytes
      flipped[bit / 8] ^= 1 << (bit % 8)
      #expect(CRC32C.checksum(flipped) != original)
    }
  }
}

@Suite("SeededRandom")
struct SeededRandomTests {
  @Test("the stream is xoshiro256** seeded through SplitMix64 (pinned: every simulation seed depends on it)")
  func pinnedOutput() {
    var zero = SeededRandom(seed: 0)
    #expect(
      (0..<4).map { _ in zero.next() } == [
        0x99EC_5F36_CB75_F2B4, 0xBF6E_1F78_4956_452A, 0x1A5F_849D_4933_E6E0, 0x6AA5_94F1_262D_2D2C,
      ])
    var answer = SeededRandom(seed: 42)
    #expect(answer.next() == 0x1578_0B2E_0C2E_C716)
    #expect(answer.seed == 42)
  }

  @Test("the same seed gives the same stream; different seeds give different streams")
  func determinism() {
    var a = SeededRandom(seed: 123)
    var b = SeededRandom(seed: 123)
    let streamA = (0..<1_000).map { _ in a.next() }
    #expect(streamA == (0..<1_000).map { _ in b.next() })
    var seen: Set<[UInt64]> = []
    for seed in 0..<100 as Range<UInt64> {
      var rng = SeededRandom(seed: seed)
      seen.insert((0..<4).map { _ in rng.next() })
    }
    #expect(seen.count == 100)
    var c = SeededRandom(seed: 124)
    #expect(streamA.prefix(4) != (0..<4).map { _ in c.next() }[...])
  }

  @Test("chance(p) comes up about p of the time", arguments: [0.01, 0.25, 0.5, 0.9])
  func chance(p: Double) {
    var rng = SeededRandom(seed: 77)
    let trials = 100_000
    let hits = (0..<trials).filter { _ in rng.chance(p) }.count
    let expected = p * Double(trials)
    let sigma = (Double(trials) * p * (1 - p)).squareRoot()
    #expect(abs(Double(hits) - expected) < 6 * sigma, "\(hits) hits, expected about \(Int(expected))")
  }

  @Test("chance is never true at 0 or below and always true at 1 or above")
  func chanceBounds() {
    var rng = SeededRandom(seed: 1)
    #expect(!(0..<1_000).contains { _ in rng.chance(0) || rng.chance(-1) })
    #expect((0..<1_000).allSatisfy { _ in rng.chance(1) && rng.chance(2) })
  }

  @Test("fork is deterministic and gives an independent stream")
  func fork() {
    var parent1 = SeededRandom(seed: 9)
    var parent2 = SeededRandom(seed: 9)
    var child1 = parent1.fork()
    var child2 = parent2.fork()
    let childStream = (0..<100).map { _ in child1.next() }
    #expect(childStream == (0..<100).map { _ in child2.next() })
    #expect(parent1.next() == parent2.next())
    var fresh = SeededRandom(seed: 9)
    let parentStream = (0..<100).map { _ in fresh.next() }
    #expect(Set(childStream).isDisjoint(with: parentStream))
    var second = parent1.fork()
    #expect(second.next() != childStream[0])
  }

  @Test("works as the generator of the standard library's random APIs")
  func standardLibrary() {
    var rng = SeededRandom(seed: 3)
    let values = (0..<10_000).map { _ in Int.random(in: 0..<10, using: &rng) }
    #expect(Set(values) == Set(0..<10))
    var a = SeededRandom(seed: 3)
    var b = SeededRandom(seed: 3)
    #expect(Array(0..<50).shuffled(using: &a) == Array(0..<50).shuffled(using: &b))
  }
}
