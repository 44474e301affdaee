import QuorumCore
import QuorumTestSupport
import Testing

@testable import QuorumStorage

@Suite("Log model and codecs")
struct LogModelTests {
  /// Bit-at-a-time CRC-32C: the definition, to check the table-driven version against.
  func naiveCRC32C(_ bytes: [UInt8]) -> UInt32 {
    var crc: UInt32 = ~0
    for byte in bytes {
      crc ^= UInt32(byte)
      for _ in 0..<8 { crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
    }
    return ~crc
  }

  @Test func crcMatchesTheBitwiseDefinition() {
    var generator = SeededRandom(seed: 11)
    #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
    for length in [0, 1, 7, 8, 9, 15, 16, 17, 100, 115, 4096, 10_007] {
      let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
      #expect(CRC32C.checksum(bytes) == naiveCRC32C(bytes), "length \(length)")
      let split = length / 3
      let continued = CRC32C.checksum(bytes[split...], continuing: CRC32C.checksum(bytes[..<split]))
      #expect(continued == naiveCRC32C(bytes), "length \(length) split at \(split)")
      // The table (the fallback where the processor has no CRC-32C instruction) agrees, and so does a start
      // that is not 8-byte aligned.
      #expect(bytes.withUnsafeBytes { CRC32C.tableChecksum($0) } == naiveCRC32C(bytes), "length \(length)")
      if length > 3 {
        #expect(CRC32C.checksum(bytes[3...]) == naiveCRC32C(Array(bytes[3...])), "length \(length) from 3")
      }
    }
  }

  @Test func truncateSuffixLogAppliesOverwritesAndRejectsGaps() {
    var log = EntryLog<TestEntry>(mode: .truncateSuffix)
    var stored = true
    for index in UInt64(1)...100 { stored = stored && log.append(TestEntry(index), at: index) }
    #expect(stored)
    stored = log.append(TestEntry(50, term: 2), at: 50)
    #expect(stored && log.count == 50)
    stored = log.append(TestEntry(52), at: 52)
    #expect(!stored, "a gap after 50")
    log.removeThrough(10)
    #expect(log.firstPosition == 11)
    let tail = log.entries(after: 40)
    #expect(tail == entries(41...49) + [TestEntry(50, term: 2)])
    stored = log.append(TestEntry(5, term: 3), at: 5)
    let all = log.entries(after: 0)
    #expect(stored && all == [TestEntry(5, term: 3)])
    log.reset(to: 30)
    #expect(log.count == 0 && log.end == 30)
    stored = log.append(TestEntry(32), at: 32)
    #expect(!stored, "a gap after the reset point")
    stored = log.append(TestEntry(31), at: 31)
    let taken = log.takeEntries()
    #expect(stored && taken == [TestEntry(31)])
    #expect(log.count == 0)
  }

  @Test func replaceLogKeepsOrderAndReplacesInPlace() {
    var log = EntryLog<TestEntry>(mode: .replace)
    var stored = true
    for index: UInt64 in [5, 1, 9, 3, 7, 3, 1] {
      stored = stored && log.append(TestEntry(index, term: index), at: index)
    }
    let positions = log.entries(after: 0).map(\.index)
    #expect(stored && positions == [1, 3, 5, 7, 9])
    stored = log.append(TestEntry(5, term: 50), at: 5)
    log.removeThrough(3)
    let remaining = log.entries(after: 0)
    #expect(stored && remaining == [TestEntry(5, term: 50), TestEntry(7, term: 7), TestEntry(9, term: 9)])
    #expect(log.firstPosition == 5)
  }

  @Test func positionRulesNameTheirReasons() throws {
    var position = LogPosition(mode: .truncateSuffix)
    #expect(try position.check(first: 1, last: 3) == nil)
    position.didAppend(first: 1, last: 3)
    #expect(throws: StorageError.self) { try position.check(first: 5, last: 5) }
    position.snapshotIndex = 10
    #expect(try position.check(first: 11, last: 11) == 10)
    #expect(throws: StorageError.self) { try position.check(first: 10, last: 10) }
    #expect(throws: StorageError.self) {
      try LogPosition.checkShape([TestEntry(1), TestEntry(3)], mode: .truncateSuffix)
    }
    try LogPosition.checkShape([TestEntry(1), TestEntry(3)], mode: .replace)
    #expect(throws: StorageError.self) { try LogPosition.checkShape([TestEntry(3), TestEntry(3)], mode: .replace) }
  }

  @Test func walRecordsRoundTripAndZerosEndTheLog() throws {
    var writer = WireWriter()
    WALFormat.appendSegmentHeader(sequence: 7, mode: .replace, to: &writer)
    WALFormat.appendRecord(.hardState, payload: [1, 2, 3], to: &writer)
    let encoded = try WALFormat.encode(
      StorageWrite(entries: entries(1...2)), mode: .truncateSuffix, maxRecordBytes: 1000)
    writer.writeRaw(encoded.bytes)
    let bytes = writer.bytes + [UInt8](repeating: 0, count: 64)
    var types: [UInt8] = []
    bytes.withUnsafeBytes { raw in
      let lastNonZero = WALFormat.lastNonZeroOffset(raw)
      var offset = 0
      while true {
        switch WALFormat.step(raw, at: offset, lastNonZero: lastNonZero) {
        case .record(let type, let payload):
          types.append(type)
          offset = payload.upperBound
        case .end:
          #expect(offset == writer.count)
          return
        case .bad(let reason):
          Issue.record("bad record at \(offset): \(reason)")
          return
        }
      }
    }
    #expect(types == [1, 3, 2, 2])
    #expect(encoded.entryRange == 1...2)
  }

  @Test func checksumsOfSpansFollowFromRunningChecksums() {
    var random = SeededRandom(seed: 7)
    let bytes = (0..<5000).map { _ in UInt8.random(in: 0...255, using: &random) }
    bytes.withUnsafeBytes { raw in
      var work = 0
      var spans = RecordSpans(raw, from: 3, work: &work)
      #expect(work == (5000 - 3) / RecordSpans.stride * RecordSpans.stride)
      for _ in 0..<200 {
        let lower = Int.random(in: 3...5000, using: &random)
        let upper = Int.random(in: lower...5000, using: &random)
        #expect(spans.checksum(of: lower..<upper, work: &work) == CRC32C.checksum(Array(bytes[lower..<upper])))
      }
      // Spans of one length reuse their shift's factor.
      for lower in stride(from: 3, to: 4000, by: 97) {
        #expect(
          spans.checksum(of: lower..<(lower + 700), work: &work) == CRC32C.checksum(Array(bytes[lower..<(lower + 700)]))
        )
      }
    }
  }

  @Test(.heavy) func theSearchAfterDamageFindsAValidRecordAndGivesUpPastItsBudget() {
    var random = SeededRandom(seed: 8)
    var bytes = (0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &random) }
    var writer = WireWriter()
    WALFormat.appendRecord(.hardState, payload: [1, 2, 3, 0, 0], to: &writer)
    let at = 700_001
    bytes.replaceSubrange(at..<(at + writer.count), with: writer.bytes)
    bytes += [UInt8](repeating: 0, count: 1 << 20)
    bytes.withUnsafeBytes { raw in
      let lastNonZero = WALFormat.lastNonZeroOffset(raw)
      var work = 0
      #expect(WALFormat.nextValidRecord(raw, after: 10, lastNonZero: lastNonZero, work: &work) == .at(at))
      #expect(work <= 2 * raw.count)
      work = 0
      #expect(WALFormat.nextValidRecord(raw, after: at, lastNonZero: lastNonZero, work: &work) == .none)
      work = 0
      #expect(
        WALFormat.nextValidRecord(raw, after: 10, lastNonZero: lastNonZero, budget: 1 << 20, work: &work)
          == .undecided)
    }
  }
}
