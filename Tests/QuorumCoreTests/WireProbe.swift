import QuorumCore

/// A message shaped like a protocol's, for codec tests: nested arrays, strings, optionals, byte strings,
/// fixed-width fields and an enum with a tag.
///
/// Its encoder can record the offset of every length or count prefix it writes, so that tests can patch
/// exactly those fields.
struct Probe: WireCodable, Equatable {
  enum Body: Equatable {
    case heartbeat(term: UInt64)
    case append(entries: [Entry], commitIndex: UInt64)
    case vote(granted: Bool, reason: String?)
    case snapshot(chunks: [[UInt8]], checksum: UInt32)
  }

  struct Entry: Equatable {
    var term: UInt64
    var index: Int64
    var command: [UInt8]
    var tags: [String]
  }

  var from: NodeID
  var group: GroupID
  var cluster: ClusterID
  var body: Body
  var matrix: [[UInt32]]
  var note: String?
  var hints: [NodeID?]
  var stamp: UInt64

  func encode(to writer: inout WireWriter) {
    var marks: [Int] = []
    encode(to: &writer, marks: &marks)
  }

  /// Encodes, appending to `marks` the offset of each length or count prefix.
  func encode(to w: inout WireWriter, marks: inout [Int]) {
    from.encode(to: &w)
    group.encode(to: &w)
    marks.append(w.count)
    cluster.encode(to: &w)
    switch body {
    case .heartbeat(let term):
      w.writeVarint(0)
      w.writeVarint(term)
    case .append(let entries, let commitIndex):
      w.writeVarint(1)
      marks.append(w.count)
      w.writeVarint(UInt64(entries.count))
      for entry in entries {
        w.writeVarint(entry.term)
        w.writeSignedVarint(entry.index)
        marks.append(w.count)
        w.writeBytes(entry.command)
        marks.append(w.count)
        w.writeVarint(UInt64(entry.tags.count))
        for tag in entry.tags {
          marks.append(w.count)
          w.writeString(tag)
        }
      }
      w.writeVarint(commitIndex)
    case .vote(let granted, let reason):
      w.writeVarint(2)
      w.writeBool(granted)
      w.writeBool(reason != nil)
      if let reason {
        marks.append(w.count)
        w.writeString(reason)
      }
    case .snapshot(let chunks, let checksum):
      w.writeVarint(3)
      marks.append(w.count)
      w.writeVarint(UInt64(chunks.count))
      for chunk in chunks {
        marks.append(w.count)
        w.writeBytes(chunk)
      }
      w.writeFixed32(checksum)
    }
    marks.append(w.count)
    w.writeVarint(UInt64(matrix.count))
    for row in matrix {
      marks.append(w.count)
      w.write(row)
    }
    w.writeBool(note != nil)
    if let note {
      marks.append(w.count)
      w.writeString(note)
    }
    marks.append(w.count)
    w.write(hints)
    w.writeFixed64(stamp)
  }

  init(
    from: NodeID, group: GroupID, cluster: ClusterID, body: Body, matrix: [[UInt32]], note: String?,
    hints: [NodeID?], stamp: UInt64
  ) {
    self.from = from
    self.group = group
    self.cluster = cluster
    self.body = body
    self.matrix = matrix
    self.note = note
    self.hints = hints
    self.stamp = stamp
  }

  init(from r: inout WireReader) throws(WireError) {
    from = try r.read(field: "from")
    group = try r.read(field: "group")
    cluster = try r.read(field: "cluster")
    do { body = try Self.readBody(&r) } catch { throw error.inside("body") }
    matrix = try r.read(field: "matrix")
    note = try r.read(field: "note")
    hints = try r.read(field: "hints")
    do { stamp = try r.readFixed64() } catch { throw error.inside("stamp") }
  }

  private static func readBody(_ r: inout WireReader) throws(WireError) -> Body {
    let start = r.position
    let tag = try r.readVarint()
    switch tag {
    case 0:
      return .heartbeat(term: try r.read(field: "term"))
    case 1:
      let count = try r.readCount()
      var entries: [Entry] = []
      for i in 0..<count {
        do {
          let term: UInt64 = try r.read(field: "term")
          let index: Int64 = try r.read(field: "index")
          let command: [UInt8] = try r.read(field: "command")
          let tags: [String] = try r.read(field: "tags")
          entries.append(Entry(term: term, index: index, command: command, tags: tags))
        } catch {
          throw error.inside("[\(i)]").inside("entries")
        }
      }
      return .append(entries: entries, commitIndex: try r.read(field: "commitIndex"))
    case 2:
      let granted: Bool = try r.read(field: "granted")
      return .vote(granted: granted, reason: try r.read(field: "reason"))
    case 3:
      let chunks: [[UInt8]] = try r.read(field: "chunks")
      do { return .snapshot(chunks: chunks, checksum: try r.readFixed32()) } catch { throw error.inside("checksum") }
    default:
      throw WireError(.unknownTag(type: "Probe.Body", tag: tag), at: start)
    }
  }

  /// A random probe; sizes stay small so that thousands can be encoded quickly.
  static func random(_ rng: inout SeededRandom) -> Probe {
    let body: Body
    switch Int.random(in: 0..<4, using: &rng) {
    case 0: body = .heartbeat(term: randomVarint(&rng))
    case 1:
      let entries = (0..<Int.random(in: 0...4, using: &rng)).map { _ in
        Entry(
          term: randomVarint(&rng), index: Int64(bitPattern: randomVarint(&rng)),
          command: randomBytes(&rng, maxCount: 24),
          tags: (0..<Int.random(in: 0...3, using: &rng)).map { _ in randomString(&rng) })
      }
      body = .append(entries: entries, commitIndex: randomVarint(&rng))
    case 2: body = .vote(granted: rng.chance(0.5), reason: rng.chance(0.5) ? randomString(&rng) : nil)
    default:
      body = .snapshot(
        chunks: (0..<Int.random(in: 0...3, using: &rng)).map { _ in randomBytes(&rng, maxCount: 16) },
        checksum: UInt32.random(in: 0...UInt32.max, using: &rng))
    }
    return Probe(
      from: NodeID(randomVarint(&rng)), group: GroupID(rawValue: randomVarint(&rng)),
      cluster: ClusterID(rawValue: randomString(&rng)), body: body,
      matrix: (0..<Int.random(in: 0...3, using: &rng)).map { _ in
        (0..<Int.random(in: 0...4, using: &rng)).map { _ in UInt32(truncatingIfNeeded: randomVarint(&rng)) }
      },
      note: rng.chance(0.5) ? randomString(&rng) : nil,
      hints: (0..<Int.random(in: 0...3, using: &rng)).map { _ in
        rng.chance(0.3) ? nil : NodeID(randomVarint(&rng))
      },
      stamp: rng.next())
  }
}

/// A random 64-bit value whose bit width is itself random, so every varint length is common.
func randomVarint(_ rng: inout SeededRandom) -> UInt64 {
  let bits = Int.random(in: 0...64, using: &rng)
  return bits == 0 ? 0 : rng.next() >> UInt64(64 - bits)
}

func randomBytes(_ rng: inout SeededRandom, maxCount: Int) -> [UInt8] {
  (0..<Int.random(in: 0...maxCount, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
}

/// Characters of one, two, three and four UTF-8 bytes.
let sampleCharacters: [Character] = ["a", "Z", "0", " ", "é", "ß", "Ж", "中", "語", "€", "🙂", "🧪", "\u{0}", "\n"]

func randomString(_ rng: inout SeededRandom) -> String {
  String((0..<Int.random(in: 0...8, using: &rng)).map { _ in sampleCharacters.randomElement(using: &rng)! })
}
