import QuorumCore
import QuorumTestSupport
import Testing

/// Encodes with `write` and reads back with `read`, requiring every byte to be consumed.
func roundTrip<T>(
  _ value: T, _ write: (inout WireWriter, T) -> Void, _ read: (inout WireReader) throws -> T
) throws -> (value: T, bytes: [UInt8]) {
  var writer = WireWriter()
  write(&writer, value)
  var reader = WireReader(writer.bytes)
  let decoded = try read(&reader)
  try reader.expectEnd()
  return (decoded, writer.bytes)
}

@Suite("Wire codec round trips")
struct WireRoundTripTests {
  static let seeds: [UInt64] = [1, 2, 3]

  @Test("varints: known encodings and sizes")
  func varintEncodings() throws {
    let cases: [(UInt64, [UInt8])] = [
      (0, [0x00]), (1, [0x01]), (127, [0x7F]), (128, [0x80, 0x01]), (300, [0xAC, 0x02]),
      (16_383, [0xFF, 0x7F]), (16_384, [0x80, 0x80, 0x01]),
      (UInt64.max, [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
    ]
    for (value, expected) in cases {
      let (decoded, bytes) = try roundTrip(value, { $0.writeVarint($1) }, { try $0.readVarint() })
      #expect(bytes == expected, "\(value)")
      #expect(decoded == value)
      #expect(varintSize(value) == expected.count)
    }
  }

  @Test("varints: random values of every width", arguments: seeds)
  func varints(seed: UInt64) throws {
    var rng = SeededRandom(seed: seed)
    let edges: [UInt64] = [0, 1, 127, 128, 255, 256, 16_383, 16_384, 1 << 63, UInt64.max - 1, UInt64.max]
    for value in edges + (0..<5_000).map({ _ in randomVarint(&rng) }) {
      let (decoded, bytes) = try roundTrip(value, { $0.writeVarint($1) }, { try $0.readVarint() })
      check(decoded == value, "\(value) decoded as \(decoded)")
      check(bytes.count == varintSize(value), "\(value) took \(bytes.count) bytes")
      try check(UInt64(wireBytes: value.wireBytes()) == value)
    }
  }

  @Test("signed varints are zig-zag encoded, Int64.min and max included", arguments: seeds)
  func signedVarints(seed: UInt64) throws {
    let known: [(Int64, [UInt8])] = [(0, [0]), (-1, [1]), (1, [2]), (-64, [0x7F]), (64, [0x80, 0x01])]
    for (value, expected) in known {
      var writer = WireWriter()
      writer.writeSignedVarint(value)
      #expect(writer.bytes == expected, "\(value)")
    }
    var rng = SeededRandom(seed: seed)
    let edges: [Int64] = [0, -1, 1, Int64.min, Int64.max, Int64.min + 1, Int64.max - 1]
    for value in edges + (0..<5_000).map({ _ in Int64(bitPattern: randomVarint(&rng)) }) {
      let (decoded, _) = try roundTrip(
        value, { $0.writeSignedVarint($1) }, { try $0.readSignedVarint() })
      check(decoded == value)
      try check(Int64(wireBytes: value.wireBytes()) == value)
      try check(Int(wireBytes: Int(value).wireBytes()) == Int(value))
    }
  }

  @Test("fixed-width integers are little-endian", arguments: seeds)
  func fixedWidth(seed: UInt64) throws {
    var writer = WireWriter()
    writer.writeFixed32(0x0403_0201)
    writer.writeFixed64(0x0807_0605_0403_0201)
    #expect(writer.bytes == [1, 2, 3, 4, 1, 2, 3, 4, 5, 6, 7, 8])
    writer.patchFixed32(0xDDCC_BBAA, at: 0)
    #expect(writer.bytes.prefix(4) == [0xAA, 0xBB, 0xCC, 0xDD])
    var rng = SeededRandom(seed: seed)
    for _ in 0..<2_000 {
      let v64 = rng.next()
      let v32 = UInt32(truncatingIfNeeded: rng.next())
      try check(roundTrip(v32, { $0.writeFixed32($1) }, { try $0.readFixed32() }).value == v32)
      try check(roundTrip(v64, { $0.writeFixed64($1) }, { try $0.readFixed64() }).value == v64)
    }
  }

  @Test("bools, bytes and small integer types")
  func smallTypes() throws {
    for value in [false, true] { #expect(try Bool(wireBytes: value.wireBytes()) == value) }
    #expect(true.wireBytes() == [1] && false.wireBytes() == [0])
    for value in [0, 1, 255] as [UInt8] { #expect(try UInt8(wireBytes: value.wireBytes()) == value) }
    for value in [0, 1, UInt16.max] { #expect(try UInt16(wireBytes: value.wireBytes()) == value) }
    for value in [0, 1, UInt32.max] { #expect(try UInt32(wireBytes: value.wireBytes()) == value) }
    let raw: [UInt8] = [9, 8, 7]
    var writer = WireWriter()
    writer.writeRaw(raw)
    var reader = WireReader(writer.bytes)
    #expect(try reader.readRaw(count: 2) == [9, 8])
    try reader.skip(1)
    #expect(reader.isAtEnd && reader.remaining == 0)
  }

  @Test("strings, non-ASCII included, and byte strings of random content", .heavy, arguments: seeds)
  func stringsAndBytes(seed: UInt64) throws {
    var rng = SeededRandom(seed: seed)
    let fixed = ["", "a", "héllo", "日本語", "🙂👍🏽", "\u{0}", String(repeating: "x", count: 300)]
    for value in fixed + (0..<2_000).map({ _ in randomString(&rng) }) {
      try check(String(wireBytes: value.wireBytes()) == value)
      check(value.wireBytes().count == varintSize(UInt64(value.utf8.count)) + value.utf8.count)
    }
    for _ in 0..<2_000 {
      let bytes = randomBytes(&rng, maxCount: 300)
      let encoded = bytes.wireBytes()
      check(encoded == Array(UInt64(bytes.count).wireBytes() + bytes), "[UInt8] is a length-prefixed byte string")
      try check([UInt8](wireBytes: encoded) == bytes)
    }
  }

  @Test("nested arrays and optionals", arguments: seeds)
  func nested(seed: UInt64) throws {
    var rng = SeededRandom(seed: seed)
    for _ in 0..<1_000 {
      let matrix: [[UInt64]] = (0..<Int.random(in: 0...4, using: &rng)).map { _ in
        (0..<Int.random(in: 0...4, using: &rng)).map { _ in randomVarint(&rng) }
      }
      try check([[UInt64]](wireBytes: matrix.wireBytes()) == matrix)
      let optionals: [String?] = (0..<Int.random(in: 0...5, using: &rng)).map { _ in
        rng.chance(0.5) ? randomString(&rng) : nil
      }
      try check([String?](wireBytes: optionals.wireBytes()) == optionals)
      let deep: [[Int64]?]? = rng.chance(0.2) ? nil : [nil, [Int64(bitPattern: randomVarint(&rng))], []]
      try check([[Int64]?]?(wireBytes: deep.wireBytes()) == deep)
    }
  }

  @Test("identifiers", arguments: seeds)
  func identifiers(seed: UInt64) throws {
    var rng = SeededRandom(seed: seed)
    for _ in 0..<1_000 {
      let node = NodeID(randomVarint(&rng))
      let group = GroupID(rawValue: randomVarint(&rng))
      let cluster = ClusterID(rawValue: randomString(&rng))
      try check(NodeID(wireBytes: node.wireBytes()) == node)
      try check(GroupID(wireBytes: group.wireBytes()) == group)
      try check(ClusterID(wireBytes: cluster.wireBytes()) == cluster)
    }
    #expect(NodeID(300).wireBytes() == [0xAC, 0x02])
  }

  @Test("whole messages and envelopes round-trip, header fields included", .heavy, arguments: seeds)
  func envelopes(seed: UInt64) throws {
    var rng = SeededRandom(seed: seed)
    for _ in 0..<1_000 {
      let probe = Probe.random(&rng)
      try check(Probe(wireBytes: probe.wireBytes()) == probe)
      let envelope = Envelope(
        from: NodeID(randomVarint(&rng)), to: NodeID(randomVarint(&rng)), group: GroupID(rawValue: randomVarint(&rng)),
        payload: probe)
      let protocolNumber = UInt8.random(in: 0...255, using: &rng)
      let bytes = WireEnvelope.encode(envelope, protocolNumber: protocolNumber)
      check(bytes.prefix(4) == [0x51, 0x52, WireEnvelopeHeader.currentVersion, protocolNumber])
      let decoded = try WireEnvelope.decode(Probe.self, from: bytes, expectedProtocol: protocolNumber)
      check(decoded == envelope)
      var reader = WireReader(bytes)
      let header = try WireEnvelope.decodeHeader(from: &reader)
      let expected = WireEnvelopeHeader(
        protocolNumber: protocolNumber, group: envelope.group, from: envelope.from, to: envelope.to)
      check(header == expected, "\(header) != \(expected)")
      try check(Probe(from: &reader) == probe && reader.isAtEnd)
    }
  }

  @Test("decodeEnvelope collects what decode returns, and nothing from a payload that does not end the frame")
  func decodeEnvelopeAppends() throws {
    var batch: [Envelope<String>] = [Envelope(from: 9, to: 9, payload: "earlier")]
    let envelope = Envelope(from: 1, to: 2, group: 3, payload: "payload")
    let frame = WireEnvelope.encode(envelope, protocolNumber: WireProtocol.raft)
    var reader = WireReader(frame)
    let header = try WireEnvelope.decodeHeader(from: &reader)
    try String.decodeEnvelope(header, payloadFrom: &reader, appendingTo: &batch)
    #expect(batch.map(\.payload) == ["earlier", "payload"])
    #expect(batch.last == (try WireEnvelope.decode(String.self, from: frame, expectedProtocol: WireProtocol.raft)))

    // Trailing bytes after the payload: an error, and the batch is unchanged.
    var trailing = WireReader(frame + [0])
    let again = try WireEnvelope.decodeHeader(from: &trailing)
    #expect(throws: WireError.self) { try String.decodeEnvelope(again, payloadFrom: &trailing, appendingTo: &batch) }
    // A truncated payload: an error inside the payload, and the batch is unchanged.
    var truncated = WireReader(Array(frame.dropLast()))
    let header3 = try WireEnvelope.decodeHeader(from: &truncated)
    let error = #expect(throws: WireError.self) {
      try String.decodeEnvelope(header3, payloadFrom: &truncated, appendingTo: &batch)
    }
    #expect(error?.path.first == "payload")
    #expect(batch.count == 2)
  }

  @Test("an envelope decodes from a range inside a larger buffer")
  func envelopeInRange() throws {
    let envelope = Envelope(from: 1, to: 2, group: 3, payload: "payload")
    let frame = WireEnvelope.encode(envelope, protocolNumber: WireProtocol.raft)
    let buffer: [UInt8] = [0xEE, 0xEE, 0xEE] + frame + [0xEE]
    let range = 3..<(3 + frame.count)
    #expect(
      try WireEnvelope.decode(String.self, from: buffer, range: range, expectedProtocol: WireProtocol.raft) == envelope)
    #expect(throws: WireError(.unknownTag(type: "protocol", tag: 1), at: 6, path: ["header"])) {
      try WireEnvelope.decode(String.self, from: buffer, range: range, expectedProtocol: WireProtocol.paxos)
    }
  }

  @Test(
    "a length-prefixed part written in place is byte for byte a byte string", .heavy,
    arguments: [0, 1, 127, 128, 16_383, 16_384, 2_097_152])
  func lengthPrefixedInPlace(length: Int) {
    let part = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
    var copied = WireWriter()
    copied.writeVarint(42)
    copied.writeBytes(part)
    copied.writeVarint(43)
    var inPlace = WireWriter()
    inPlace.writeVarint(42)
    inPlace.writeLengthPrefixed { writer in
      // Written in two pieces, so the body itself grows the buffer.
      writer.writeRaw(part.prefix(length / 2))
      writer.writeRaw(part.dropFirst(length / 2))
    }
    inPlace.writeVarint(43)
    #expect(inPlace.bytes == copied.bytes)
  }

  @Test("an array of large values is written into room made once, with the same bytes as one by one")
  func arrayOfLargeValues() throws {
    let values = (0..<10).map { [UInt8](repeating: UInt8($0), count: 16 << 10) }
    var writer = WireWriter()
    writer.writeArray(values)
    var oneByOne = WireWriter()
    oneByOne.writeVarint(UInt64(values.count))
    for value in values { value.encode(to: &oneByOne) }
    #expect(writer.bytes == oneByOne.bytes)
    // Room for the nine after the first, and an eighth more: not the next doubling of a buffer grown from empty.
    #expect(writer.bytes.capacity < writer.count + writer.count / 4, "capacity \(writer.bytes.capacity)")
    var reader = WireReader(writer.bytes)
    #expect(try reader.readArray([UInt8].self) == values)
  }
}
