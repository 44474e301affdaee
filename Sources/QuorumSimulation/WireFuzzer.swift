public import QuorumCore

/// Hostile input for a wire decoder: seeded mutations of valid encodings, and a check that every one of them
/// decodes to a value that survives re-encoding, or is refused with a ``QuorumCore/WireError`` inside the input.
///
/// A decoder that traps instead (an index out of range, an overflowing conversion, an allocation sized by the
/// input) stops the test process, which is the failure this exists to find: a peer's or a client's malformed
/// frame, or a damaged file, must never stop a server. Use it for message types, commands, and the snapshot
/// formats of state machines:
///
/// ```swift
/// let report = WireFuzzer.check(samples: messages, inputs: 20_000, seed: 7)
/// #expect(report.problems.isEmpty, "\(report)")
/// ```
public enum WireFuzzer {
  /// One way to damage an encoding.
  public enum Mutation: CaseIterable, Sendable {
    /// Random bytes in place of the encoding.
    case randomBytes
    /// One to three bits flipped.
    case bitFlips
    /// The end cut off.
    case truncation
    /// A few random bytes inserted.
    case insertion
    /// A few bytes removed.
    case deletion
    /// A stretch of the encoding repeated in place.
    case duplication
    /// The encoding cut and random bytes appended.
    case splice
    /// A huge varint (up to 2⁶⁴ − 1) written over a byte: where it lands on a length or a count, the decoder
    /// must refuse before allocating.
    case hugeVarint
    /// Left alone: must decode.
    case unchanged
  }

  /// `bytes` damaged by `mutation`.
  public static func mutate(_ bytes: [UInt8], _ mutation: Mutation, using random: inout SeededRandom) -> [UInt8] {
    var bytes = bytes
    guard !bytes.isEmpty || mutation == .randomBytes || mutation == .insertion || mutation == .splice else {
      return bytes
    }
    switch mutation {
    case .randomBytes:
      return randomBytes(&random, count: Int.random(in: 0...64, using: &random))
    case .bitFlips:
      for _ in 0..<Int.random(in: 1...3, using: &random) {
        let bit = Int.random(in: 0..<(bytes.count * 8), using: &random)
        bytes[bit / 8] ^= 1 << UInt8(bit % 8)
      }
    case .truncation:
      bytes.removeLast(Int.random(in: 1...bytes.count, using: &random))
    case .insertion:
      bytes.insert(
        contentsOf: randomBytes(&random, count: Int.random(in: 1...8, using: &random)),
        at: Int.random(in: 0...bytes.count, using: &random))
    case .deletion:
      let start = Int.random(in: 0..<bytes.count, using: &random)
      bytes.removeSubrange(start..<min(bytes.count, start + Int.random(in: 1...4, using: &random)))
    case .duplication:
      let start = Int.random(in: 0..<bytes.count, using: &random)
      let end = min(bytes.count, start + Int.random(in: 1...16, using: &random))
      bytes.insert(contentsOf: bytes[start..<end], at: end)
    case .splice:
      let cut = Int.random(in: 0...bytes.count, using: &random)
      bytes = Array(bytes[..<cut]) + randomBytes(&random, count: Int.random(in: 0...32, using: &random))
    case .hugeVarint:
      let huge: [UInt64] = [1 << 20 + 1, 64 << 20 + 1, 1 << 30, 1 << 40, UInt64(Int.max), .max]
      var writer = WireWriter()
      writer.writeVarint(huge[Int.random(in: 0..<huge.count, using: &random)])
      let at = Int.random(in: 0..<bytes.count, using: &random)
      bytes.replaceSubrange(at...at, with: writer.bytes)
    case .unchanged:
      break
    }
    return bytes
  }

  /// What fuzzing one type found.
  public struct Report: Sendable, CustomStringConvertible {
    /// Inputs tried.
    public var inputs = 0
    /// Inputs that decoded (the unchanged ones among them).
    public var decoded = 0
    /// Refusals by the kind of ``QuorumCore/WireError``.
    public var refusals: [String: Int] = [:]
    /// What went wrong: a value that did not survive re-encoding, an error placed outside its input, an
    /// unchanged encoding refused. At most 20 are kept.
    public var problems: [String] = []

    public var description: String {
      let kinds = refusals.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
      return "\(inputs) inputs, \(decoded) decoded; refused: \(kinds)"
        + (problems.isEmpty ? "" : "; problems: " + problems.joined(separator: " | "))
    }

    mutating func note(_ problem: String) {
      if problems.count < 20 { problems.append(problem) }
    }
  }

  /// Decodes `inputs` seeded mutations of the samples' encodings as `T`. Every input must decode to a value
  /// whose encoding decodes to a value with the same encoding, or be refused with an error whose offset lies
  /// within the input; an unchanged sample must decode to a value with the sample's encoding.
  public static func check<T: WireCodable>(
    samples: [T], inputs: Int, seed: UInt64, limits: WireLimits = .default
  ) -> Report {
    run(corpus: samples.map { $0.wireBytes() }, inputs: inputs, seed: seed) { input, original, mutation, report in
      do throws(WireError) {
        let value = try T(wireBytes: input, limits: limits)
        report.decoded += 1
        let encoded = value.wireBytes()
        if mutation == .unchanged && encoded != original {
          report.note("\(T.self): a sample re-encoded differently: \(original) -> \(encoded)")
        }
        do {
          let again = try T(wireBytes: encoded, limits: limits).wireBytes()
          if again != encoded { report.note("\(T.self): \(value) did not survive re-encoding: \(encoded) -> \(again)") }
        } catch {
          report.note("\(T.self): the encoding of \(value) was refused (\(error)): \(encoded)")
        }
      } catch {
        report.refusals[String(String(describing: error.kind).prefix { $0 != "(" }), default: 0] += 1
        if error.offset < 0 || error.offset > input.count {
          report.note("\(T.self): \(error) lies outside the \(input.count) input bytes")
        }
        if mutation == .unchanged { report.note("\(T.self): a valid encoding was refused: \(error)") }
      }
    }
  }

  /// Restores a state machine from `inputs` seeded mutations of the sample snapshots with `restore`, which
  /// restores a fresh machine from the bytes and returns the machine's own snapshot. Every input must be
  /// refused with an error, or restore to a machine whose snapshot restores to the same snapshot; an unchanged
  /// sample must restore to its own bytes. Refusals are counted under their error type's name.
  public static func checkSnapshots(
    samples: [[UInt8]], inputs: Int, seed: UInt64, restore: ([UInt8]) throws -> [UInt8]
  ) -> Report {
    run(corpus: samples, inputs: inputs, seed: seed) { input, original, mutation, report in
      let restored: [UInt8]
      do {
        restored = try restore(input)
      } catch {
        report.refusals[String(describing: type(of: error)), default: 0] += 1
        if mutation == .unchanged { report.note("a valid snapshot was refused: \(error)") }
        return
      }
      report.decoded += 1
      if mutation == .unchanged && restored != original {
        report.note("a sample snapshot restored to other bytes: \(original.count) -> \(restored.count) bytes")
      }
      do {
        let again = try restore(restored)
        if again != restored { report.note("a restored machine's snapshot restored differently") }
      } catch {
        report.note("a restored machine's own snapshot was refused: \(error)")
      }
    }
  }

  /// Hands `body` `inputs` seeded mutations of the corpus's encodings, each with the encoding it came from and
  /// the mutation, counting them in the report.
  private static func run(
    corpus: [[UInt8]], inputs: Int, seed: UInt64,
    _ body: (_ input: [UInt8], _ original: [UInt8], _ mutation: Mutation, _ report: inout Report) -> Void
  ) -> Report {
    var report = Report()
    guard !corpus.isEmpty else {
      report.note("no samples")
      return report
    }
    var random = SeededRandom(seed: seed)
    for _ in 0..<inputs {
      let original = corpus[Int.random(in: 0..<corpus.count, using: &random)]
      let mutation = Mutation.allCases[Int.random(in: 0..<Mutation.allCases.count, using: &random)]
      let input = mutate(original, mutation, using: &random)
      report.inputs += 1
      body(input, original, mutation, &report)
    }
    return report
  }

  private static func randomBytes(_ random: inout SeededRandom, count: Int) -> [UInt8] {
    (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) }
  }
}
