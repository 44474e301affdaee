import QuorumCore
import QuorumTestSupport
import Testing

/// Hostile input: random and mutated byte strings must decode to a value or a typed `WireError`, never a
/// crash, and lengths are checked before anything is allocated.
@Suite("Wire decoder robustness")
struct WireDecoderRobustnessTests {
  /// Four seeds × 26,000 inputs: over 100,000 in all, run in parallel.
  static let seeds: [UInt64] = [101, 102, 103, 104]
  static let inputsPerSeed = 26_000

  /// One valid envelope frame and the offsets of its length and count prefixes.
  struct Frame {
    var bytes: [UInt8]
    var lengthOffsets: [Int]
  }

  static func frames(_ rng: inout SeededRandom, count: Int) -> [Frame] {
    (0..<count).map { _ in
      var writer = WireWriter()
      let envelope = Envelope(
        from: NodeID(randomVarint(&rng)), to: NodeID(randomVarint(&rng)), group: GroupID(rawValue: randomVarint(&rng)),
        payload: Probe.random(&rng))
      WireEnvelope.encode(envelope.map { _ in [UInt8]() }, protocolNumber: WireProtocol.test, into: &writer)
      writer.bytes.removeLast()  // The placeholder payload; the probe follows, recording its prefixes.
      var marks: [Int] = []
      envelope.payload.encode(to: &writer, marks: &marks)
      return Frame(bytes: writer.bytes, lengthOffsets: marks)
    }
  }

  enum Mutation: CaseIterable {
    case randomBytes, bitFlips, truncation, insertion, deletion, hugeLength, spliced, unchanged
  }

  static func mutate(_ frame: Frame, _ mutation: Mutation, _ rng: inout SeededRandom) -> [UInt8] {
    var bytes = frame.bytes
    switch mutation {
    case .randomBytes:
      return randomBytes(&rng, maxCount: 64)
    case .bitFlips:
      for _ in 0..<Int.random(in: 1...3, using: &rng) {
        let bit = Int.random(in: 0..<(bytes.count * 8), using: &rng)
        bytes[bit / 8] ^= 1 << (bit % 8)
      }
    case .truncation:
      bytes.removeLast(Int.random(in: 1...bytes.count, using: &rng))
    case .insertion:
      bytes.insert(contentsOf: randomBytes(&rng, maxCount: 8), at: Int.random(in: 0...bytes.count, using: &rng))
    case .deletion:
      let start = Int.random(in: 0..<bytes.count, using: &rng)
      bytes.removeSubrange(start..<min(bytes.count, start + Int.random(in: 1...4, using: &rng)))
    case .hugeLength:
      // Replace one length or count prefix with a huge value: the decoder must refuse before allocating.
      guard let offset = frame.lengthOffsets.randomElement(using: &rng) else { return bytes }
      var end = offset
      while bytes[end] >= 0x80 { end += 1 }
      let huge: [UInt64] = [1 << 30, 1 << 40, UInt64(Int.max), UInt64.max, 64 << 20 + 1, 1 << 20 + 1]
      var writer = WireWriter()
      writer.writeVarint(huge.randomElement(using: &rng)!)
      bytes.replaceSubrange(offset...end, with: writer.bytes)
    case .spliced:
      let cut = Int.random(in: 0...bytes.count, using: &rng)
      bytes = Array(bytes[..<cut]) + randomBytes(&rng, maxCount: 32)
    case .unchanged:
      break
    }
    return bytes
  }

  @Test("random and mutated frames decode to a message or a WireError", .heavy, arguments: seeds)
  func fuzzEnvelopes(seed: UInt64) {
    var rng = SeededRandom(seed: seed)
    let frames = Self.frames(&rng, count: 200)
    var decoded = 0
    var failures: [String: Int] = [:]
    for _ in 0..<Self.inputsPerSeed {
      let frame = frames.randomElement(using: &rng)!
      let mutation = Mutation.allCases.randomElement(using: &rng)!
      let bytes = Self.mutate(frame, mutation, &rng)
      do {
        let envelope = try WireEnvelope.decode(Probe.self, from: bytes, expectedProtocol: WireProtocol.test)
        decoded += 1
        // Whatever decoded must re-encode to something that decodes to the same value.
        // (Plain checks rather than #expect in this loop: it runs a hundred thousand times.)
        let again = WireEnvelope.encode(envelope, protocolNumber: WireProtocol.test)
        let redecoded = try? WireEnvelope.decode(Probe.self, from: again, expectedProtocol: WireProtocol.test)
        if redecoded != envelope { Issue.record("\(envelope) did not survive re-encoding: \(again)") }
      } catch {
        if error.offset < 0 || error.offset > bytes.count {
          Issue.record("\(error) has an offset outside the \(bytes.count) input bytes")
        }
        if mutation == .unchanged { Issue.record("a valid frame failed to decode: \(error)") }
        failures[error.kind.name, default: 0] += 1
      }
    }
    #expect(decoded >= Self.inputsPerSeed / 8, "valid and harmlessly mutated frames decode")
    // The mutations reach the interesting refusals, not just truncation.
    for kind in ["truncated", "lengthOverLimit", "countOverLimit", "badMagic", "unknownTag", "trailingBytes"] {
      #expect(failures[kind, default: 0] > 0, "no input failed with \(kind): \(failures)")
    }
  }

  @Test("the primitive readers survive random bytes at every position", .heavy, arguments: seeds)
  func fuzzPrimitiveReaders(seed: UInt64) {
    var rng = SeededRandom(seed: seed)
    let limits = WireLimits(maxBytesLength: 64, maxCollectionCount: 16)
    for _ in 0..<Self.inputsPerSeed / 4 {
      let bytes = rng.chance(0.5) ? randomBytes(&rng, maxCount: 40) : Self.varintHeavyBytes(&rng)
      var reader = WireReader(bytes, limits: limits)
      // A random program of reads, until one fails or the input ends.
      for _ in 0..<12 {
        let before = reader.position
        do {
          switch Int.random(in: 0..<14, using: &rng) {
          case 0: _ = try reader.readVarint()
          case 1: _ = try reader.readSignedVarint()
          case 2: _ = try reader.readFixed32()
          case 3: _ = try reader.readFixed64()
          case 4: _ = try reader.readBool()
          case 5: _ = try reader.readString()
          case 6: _ = try reader.readBytes()
          case 7: _ = try reader.readArray(UInt64.self)
          case 8: _ = try reader.readOptional(String.self)
          case 9: _ = try reader.readVarint(as: UInt16.self)
          case 10: _ = try reader.read([[String?]].self)
          case 11: _ = try reader.readRaw(count: Int.random(in: -2...8, using: &rng))
          case 12: _ = try reader.readLength(limit: Int.random(in: 0...8, using: &rng))
          default: _ = try reader.read(Int.self)
          }
          if reader.position < before { Issue.record("the reader moved backwards from \(before) in \(bytes)") }
        } catch {
          if error.offset < 0 || error.offset > bytes.count { Issue.record("\(error) is outside \(bytes)") }
          break
        }
        if reader.position > reader.end { Issue.record("the reader passed its end in \(bytes)") }
        if reader.isAtEnd { break }
      }
    }
  }

  /// Bytes that are mostly varint continuation bytes, where overflow bugs live.
  static func varintHeavyBytes(_ rng: inout SeededRandom) -> [UInt8] {
    (0..<Int.random(in: 1...24, using: &rng)).map { _ in
      rng.chance(0.8) ? UInt8.random(in: 0x80...0xFF, using: &rng) : UInt8.random(in: 0...3, using: &rng)
    }
  }

  @Test("a 10-byte input claiming a 1 GiB length or count is refused before anything is allocated")
  func hugeClaims() throws {
    var writer = WireWriter()
    writer.writeVarint(1 << 30)
    writer.writeRaw([1, 2, 3, 4, 5])
    let bytes = writer.bytes
    #expect(bytes.count == 10)

    // Against the default limits (64 MiB, about a million elements) the claim is over the limit.
    var reader = WireReader(bytes)
    #expect(throws: WireError(.lengthOverLimit(length: 1 << 30, limit: 64 << 20), at: 0)) { try reader.readBytes() }
    reader = WireReader(bytes)
    #expect(throws: WireError(.lengthOverLimit(length: 1 << 30, limit: 64 << 20), at: 0)) { try reader.readString() }
    reader = WireReader(bytes)
    #expect(throws: WireError(.countOverLimit(count: 1 << 30, limit: 1 << 20), at: 0)) {
      try reader.readArray(UInt64.self)
    }

    // With no configured limit, the bytes actually present are the limit.
    let unlimited = WireLimits(maxBytesLength: .max, maxCollectionCount: .max)
    reader = WireReader(bytes, limits: unlimited)
    #expect(throws: WireError(.truncated(needed: 1 << 30, available: 5), at: 5)) { try reader.readBytes() }
    reader = WireReader(bytes, limits: unlimited)
    #expect(throws: WireError(.countOverLimit(count: 1 << 30, limit: 5), at: 0)) { try reader.read([String].self) }
    reader = WireReader(bytes, limits: unlimited)
    #expect(throws: WireError(.truncated(needed: 1 << 30, available: 5), at: 5)) { try reader.read([UInt8].self) }

    // Inside a message, the refusal names the field.
    var huge = WireWriter()
    WireEnvelope.encode(Envelope(from: 1, to: 2, payload: [UInt8]()), protocolNumber: WireProtocol.test, into: &huge)
    huge.bytes.removeLast()
    huge.writeVarint(UInt64.max)
    let error = #expect(throws: WireError.self) {
      try WireEnvelope.decode([String].self, from: huge.bytes, expectedProtocol: WireProtocol.test)
    }
    #expect(error?.kind == .countOverLimit(count: UInt64.max, limit: 1 << 20))
    #expect(error?.path == ["payload"])
  }
}

@Suite("Wire errors")
struct WireErrorTests {
  func reader(_ bytes: [UInt8], limits: WireLimits = .default) -> WireReader { WireReader(bytes, limits: limits) }

  @Test("truncated input names what was needed and what was left")
  func truncated() {
    var r = reader([1, 2])
    #expect(throws: WireError(.truncated(needed: 4, available: 2), at: 0)) { try r.readFixed32() }
    r = reader([0x80, 0x80])
    #expect(throws: WireError(.truncated(needed: 1, available: 0), at: 2)) { try r.readVarint() }
    r = reader([5, 1, 2])
    #expect(throws: WireError(.truncated(needed: 5, available: 2), at: 1)) { try r.readBytes() }
    r = reader([])
    #expect(throws: WireError(.truncated(needed: 1, available: 0), at: 0)) { try r.readByte() }
    #expect(
      WireError(.truncated(needed: 5, available: 2), at: 1).description
        == "truncated input: needed 5 bytes, 2 available at byte 1")
  }

  @Test("an 11-byte varint and a 64-bit overflow are malformed; the largest 10-byte varint is not")
  func malformedVarint() throws {
    var r = reader([UInt8](repeating: 0x80, count: 10) + [0x01])
    #expect(throws: WireError(.malformedVarint, at: 0)) { try r.readVarint() }
    r = reader([0x00] + [UInt8](repeating: 0xFF, count: 9) + [0x02])
    _ = try r.readByte()
    #expect(throws: WireError(.malformedVarint, at: 1)) { try r.readVarint() }
    r = reader([UInt8](repeating: 0xFF, count: 9) + [0x01])
    #expect(try r.readVarint() == UInt64.max)
    #expect(WireError(.malformedVarint, at: 3).description == "malformed varint at byte 3")
  }

  @Test("lengths and counts over the configured limits")
  func overLimits() {
    let limits = WireLimits(maxBytesLength: 16, maxCollectionCount: 4)
    var r = reader([17] + [UInt8](repeating: 0x61, count: 17), limits: limits)
    #expect(throws: WireError(.lengthOverLimit(length: 17, limit: 16), at: 0)) { try r.readString() }
    r = reader([5, 1, 1, 1, 1, 1], limits: limits)
    #expect(throws: WireError(.countOverLimit(count: 5, limit: 4), at: 0)) { try r.readArray(UInt8.self) }
    r = reader([4, 1, 1], limits: limits)
    #expect(throws: WireError(.countOverLimit(count: 4, limit: 2), at: 0)) { try r.readArray(UInt64.self) }
    #expect(
      WireError(.lengthOverLimit(length: 17, limit: 16), at: 0, path: ["Probe", "note"]).description
        == "length 17 exceeds the limit of 16 at byte 0 in Probe.note")
  }

  @Test("invalid UTF-8, out-of-range values and bad booleans")
  func invalidValues() {
    var r = reader([0x02, 0xC3, 0x28])
    #expect(throws: WireError(.invalidUTF8, at: 0)) { try r.readString() }
    r = reader([0x02])
    #expect(throws: WireError(.invalidValue("boolean byte 2"), at: 0)) { try r.readBool() }
    r = reader([0x80, 0x80, 0x04])
    #expect(throws: WireError(.invalidValue("65536 does not fit in UInt16"), at: 0)) { try r.read(UInt16.self) }
    r = reader([1, 2, 3])
    #expect(throws: WireError(.invalidValue("negative byte count -1"), at: 0)) { try r.readRaw(count: -1) }
    #expect(throws: WireError(.invalidValue("negative byte count -1"), at: 0)) { try r.skip(-1) }
    #expect(WireError(.invalidUTF8, at: 9).description == "string is not valid UTF-8 at byte 9")
  }

  @Test("bad magic, unsupported version, unknown protocol and trailing bytes")
  func envelopeHeader() throws {
    let frame = WireEnvelope.encode(Envelope(from: 1, to: 2, payload: "x"), protocolNumber: WireProtocol.raft)
    var bad = frame
    bad[0] = 0x00
    #expect(throws: WireError(.badMagic(0x5200), at: 0, path: ["header"])) {
      try WireEnvelope.decode(String.self, from: bad, expectedProtocol: WireProtocol.raft)
    }
    bad = frame
    bad[2] = 2
    #expect(throws: WireError(.unsupportedVersion(2), at: 2, path: ["header"])) {
      try WireEnvelope.decode(String.self, from: bad, expectedProtocol: WireProtocol.raft)
    }
    let unknown = #expect(throws: WireError.self) {
      try WireEnvelope.decode(String.self, from: frame, expectedProtocol: WireProtocol.paxos)
    }
    #expect(unknown == WireError(.unknownTag(type: "protocol", tag: 1), at: 3, path: ["header"]))
    #expect(unknown?.description == "unknown protocol tag 1 at byte 3 in header")
    #expect(throws: WireError(.trailingBytes(2), at: frame.count)) {
      try WireEnvelope.decode(String.self, from: frame + [0, 0], expectedProtocol: WireProtocol.raft)
    }
    #expect(throws: WireError(.truncated(needed: 1, available: 0), at: 5, path: ["header"])) {
      try WireEnvelope.decode(String.self, from: Array(frame.prefix(5)), expectedProtocol: WireProtocol.raft)
    }
    #expect(WireError(.badMagic(0x5200), at: 0, path: ["header"]).description == "bad magic 0x5200 at byte 0 in header")
    #expect(WireError(.trailingBytes(2), at: 8).description == "2 trailing bytes at byte 8")
  }

  @Test("an error deep inside a message carries the path to the field and the offset of the bad byte")
  func pathAndOffset() throws {
    let probe = Probe(
      from: 1, group: 2, cluster: "c",
      body: .append(
        entries: [
          Probe.Entry(term: 1, index: 1, command: [1], tags: []),
          Probe.Entry(term: 1, index: 2, command: [2], tags: ["ok", "bad"]),
        ], commitIndex: 2),
      matrix: [], note: nil, hints: [], stamp: 0)
    var frame = WireEnvelope.encode(Envelope(from: 1, to: 2, payload: probe), protocolNumber: WireProtocol.test)
    // Corrupt the first byte of the tag "bad" into an invalid UTF-8 lead byte.
    let badOffset = frame.lastIndex(of: UInt8(ascii: "b"))!
    frame[badOffset] = 0xFF
    let error = #expect(throws: WireError.self) {
      try WireEnvelope.decode(Probe.self, from: frame, expectedProtocol: WireProtocol.test)
    }
    #expect(error?.kind == .invalidUTF8)
    #expect(error?.offset == badOffset - 1, "the offset of the string's length prefix")
    #expect(error?.path == ["payload", "body", "entries", "[1]", "tags", "[1]"])
    #expect(
      error?.description == "string is not valid UTF-8 at byte \(badOffset - 1) in payload.body.entries.[1].tags.[1]")

    var unknownTag = WireEnvelope.encode(Envelope(from: 1, to: 2, payload: probe), protocolNumber: WireProtocol.test)
    let tagOffset = 4 + 3 + 2 + 2  // header word and three varints; the probe's from and group; cluster "c"
    #expect(unknownTag[tagOffset] == 1)
    unknownTag[tagOffset] = 9
    #expect(throws: WireError(.unknownTag(type: "Probe.Body", tag: 9), at: tagOffset, path: ["payload", "body"])) {
      try WireEnvelope.decode(Probe.self, from: unknownTag, expectedProtocol: WireProtocol.test)
    }
  }
}

extension WireError.Kind {
  /// The case name, without building a description (which is slow in a loop run many thousand times).
  var name: String {
    switch self {
    case .truncated: "truncated"
    case .malformedVarint: "malformedVarint"
    case .lengthOverLimit: "lengthOverLimit"
    case .countOverLimit: "countOverLimit"
    case .unknownTag: "unknownTag"
    case .invalidUTF8: "invalidUTF8"
    case .invalidValue: "invalidValue"
    case .badMagic: "badMagic"
    case .unsupportedVersion: "unsupportedVersion"
    case .trailingBytes: "trailingBytes"
    }
  }
}

extension Envelope {
  /// The same addresses around a different payload.
  func map<T>(_ transform: (Payload) -> T) -> Envelope<T> {
    Envelope<T>(from: from, to: to, group: group, payload: transform(payload))
  }
}
