import QuorumCore
import QuorumSimulation
import QuorumTestSupport
import Testing

/// The naive definition, for comparison with the checker: try every order of the operations that respects
/// real-time order, with every subset of the unknown-outcome operations, on the whole map (no partitioning).
private enum BruteForceOracle {
  struct Op {
    var input: KVInput
    var output: KVOutput?
    var invokedAt: UInt64
    var returnedAt: UInt64?
  }

  static func isLinearizable(_ history: KVHistory) -> Bool {
    let ops = history.operations.compactMap { op -> Op? in
      if case .failed = op.outcome { return nil }
      return Op(input: op.input, output: op.output, invokedAt: op.invokedAt, returnedAt: op.returnedAt)
    }
    let known = ops.filter { $0.returnedAt != nil }
    let unknown = ops.filter { $0.returnedAt == nil }
    for mask in 0..<(1 << unknown.count) {
      let included = known + unknown.indices.filter { mask & (1 << $0) != 0 }.map { unknown[$0] }
      if search(included, remaining: (1 << included.count) - 1, [:]) { return true }
    }
    return false
  }

  /// Whether the operations in `remaining` (a bitmask) can be ordered from `store` on.
  private static func search(_ ops: [Op], remaining: Int, _ store: [String: String]) -> Bool {
    if remaining == 0 { return true }
    for i in ops.indices where remaining & (1 << i) != 0 {
      // `i` may go next only if no other remaining operation returned before `i` was invoked.
      let blocked = ops.indices.contains { j in
        j != i && remaining & (1 << j) != 0 && (ops[j].returnedAt.map { $0 < ops[i].invokedAt } ?? false)
      }
      if blocked { continue }
      var next = store
      let output = apply(ops[i].input, to: &next)
      if let expected = ops[i].output, expected != output { continue }
      if search(ops, remaining: remaining & ~(1 << i), next) { return true }
    }
    return false
  }

  static func apply(_ input: KVInput, to store: inout [String: String]) -> KVOutput {
    switch input {
    case .get(let key): return .value(store[key])
    case .put(let key, let value):
      store[key] = value
      return .ok
    case .delete(let key):
      store[key] = nil
      return .ok
    case .compareAndSwap(let key, let expected, let new):
      guard store[key] == expected else { return .swapped(false) }
      store[key] = new
      return .swapped(true)
    }
  }
}

/// Random histories of at most 7 operations on 1–2 keys with few values, so that reads are ambiguous and
/// intervals overlap and touch.
private enum SmallHistories {
  static let values: [String?] = [nil, "a", "b", "c"]

  static func make(_ rng: inout SeededRandom) -> KVHistory {
    let keys = rng.chance(0.5) ? ["x"] : ["x", "y"]
    let count = Int.random(in: 1...7, using: &rng)
    // Some histories are rich in unknown outcomes, which is where the search takes shortcuts.
    let unknownProbability = rng.chance(0.3) ? 0.45 : 0.12
    var ops: [(client: Int, input: KVInput, invoked: UInt64, returned: UInt64, fate: Int)] = []
    for _ in 0..<count {
      let key = keys.randomElement(using: &rng) ?? "x"
      let input: KVInput
      switch Int.random(in: 0..<8, using: &rng) {
      case 0..<3: input = .get(key: key)
      case 3..<5: input = .put(key: key, value: randomValue(&rng) ?? "a")
      case 5: input = .delete(key: key)
      default: input = .compareAndSwap(key: key, expected: randomValue(&rng), new: randomValue(&rng))
      }
      let invoked = UInt64.random(in: 0...12, using: &rng)
      let returned = invoked + UInt64.random(in: 0...8, using: &rng)
      // fate: 0 returns, 1 unknown, 2 failed
      let fate = rng.chance(unknownProbability) ? 1 : rng.chance(0.06) ? 2 : 0
      ops.append((Int.random(in: 0..<4, using: &rng), input, invoked, returned, fate))
    }

    // Outputs: either from a real execution at random linearization points (sometimes with one output then
    // altered), or entirely random.
    var outputs: [KVOutput] = []
    if rng.chance(0.7) {
      var points: [(time: UInt64, index: Int)] = []
      for (index, op) in ops.enumerated() {
        switch op.fate {
        case 0: points.append((UInt64.random(in: op.invoked...op.returned, using: &rng), index))
        case 1 where rng.chance(0.5):
          points.append((UInt64.random(in: op.invoked...(op.invoked + 20), using: &rng), index))
        default: break
        }
      }
      var store: [String: String] = [:]
      outputs = ops.map { _ in .ok }
      for point in points.sorted(by: { ($0.time, $0.index) < ($1.time, $1.index) }) {
        outputs[point.index] = BruteForceOracle.apply(ops[point.index].input, to: &store)
      }
      for index in ops.indices where !points.contains(where: { $0.index == index }) {
        outputs[index] = randomOutput(for: ops[index].input, &rng)
      }
      if rng.chance(0.4), let victim = ops.indices.randomElement(using: &rng) {
        outputs[victim] = randomOutput(for: ops[victim].input, &rng)
      }
    } else {
      outputs = ops.map { randomOutput(for: $0.input, &rng) }
    }

    var history = KVHistory()
    for (op, output) in zip(ops, outputs) {
      let outcome: OperationOutcome<KVOutput> =
        op.fate == 1 ? .unknown : op.fate == 2 ? .failed : .returned(output, at: op.returned)
      history.append(client: op.client, op.input, invokedAt: op.invoked, outcome: outcome)
    }
    return history
  }

  static func randomValue(_ rng: inout SeededRandom) -> String? {
    values.randomElement(using: &rng) ?? nil
  }

  static func randomOutput(for input: KVInput, _ rng: inout SeededRandom) -> KVOutput {
    if rng.chance(0.03) { return rng.chance(0.5) ? .ok : .swapped(true) }  // occasionally the wrong kind
    switch input {
    case .get: return .value(randomValue(&rng))
    case .put, .delete: return .ok
    case .compareAndSwap: return .swapped(rng.chance(0.5))
    }
  }
}

@Suite("Linearizability: checker against brute force")
struct LinearizabilityOracleTests {
  @Test(.heavy, arguments: [UInt64(10_000), 20_000, 30_000, 40_000])
  func agreesWithBruteForce(firstSeed: UInt64) {
    let count: UInt64 = 1_500
    var linearizable = 0
    var mismatches = 0
    for seed in firstSeed..<(firstSeed + count) {
      var rng = SeededRandom(seed: seed)
      let history = SmallHistories.make(&rng)
      let expected = BruteForceOracle.isLinearizable(history)
      if expected { linearizable += 1 }
      for (name, checker) in KVCheckers.all {
        let result = checker.check(history)
        guard result.isLinearizable != expected || (!expected && !result.isViolation) else { continue }
        mismatches += 1
        if mismatches <= 5 {
          Issue.record("seed \(seed): brute force says \(expected), \(name) search says \(result)\n\(history)")
        }
      }
    }
    #expect(mismatches == 0)
    // Neither kind may be rare, or agreement would prove little.
    #expect(linearizable > Int(count) / 10, "only \(linearizable) of \(count) histories are linearizable")
    #expect(Int(count) - linearizable > Int(count) / 10, "only \(Int(count) - linearizable) are not linearizable")
  }
}

@Suite("Linearizability: large generated histories")
struct LinearizabilityLargeHistoryTests {
  @Test(.heavy, arguments: [UInt64(42), 7])
  func acceptsGeneratedHistory(seed: UInt64) {
    let history = KVHistoryGenerator(seed: seed).generate()
    #expect(history.count == 10_000)
    let unknown = history.operations.filter { $0.isOutcomeUnknown }.count
    #expect(unknown > 30 && unknown < 300, "seed \(seed): \(unknown) unknown outcomes")
    let result = history.checkLinearizability()
    #expect(result.isLinearizable, "seed \(seed): \(result)")
    #expect(result.stats.partitionsChecked == 100)
  }

  @Test func generatorIsAFunctionOfItsSeed() {
    let a = KVHistoryGenerator(seed: 5, operationCount: 500).generate()
    let b = KVHistoryGenerator(seed: 5, operationCount: 500).generate()
    let c = KVHistoryGenerator(seed: 6, operationCount: 500).generate()
    #expect(a.operations == b.operations)
    #expect(a.operations != c.operations)
  }

  @Test func rejectsReadOfAValueNeverWritten() throws {
    var history = KVHistoryGenerator(seed: 42).generate()
    let read = try #require(
      history.operations.last { op in
        if case .get = op.input, case .returned(.value(.some), _) = op.outcome { return true }
        return false
      })
    let returnedAt = try #require(read.returnedAt)
    history.overrideOutcome(read.id, .returned(.value("never-written"), at: returnedAt))
    let result = history.checkLinearizability()
    let violation = try #require(result.violation, "\(result)")
    #expect(violation.partition == read.input.key)
  }

  @Test(.heavy, arguments: [UInt64(42), 7, 99])
  func rejectsStaleRead(seed: UInt64) throws {
    var history = KVHistoryGenerator(seed: seed).generate()
    let (read, stale) = try #require(Self.staleReadCorruption(history), "seed \(seed): no candidate")
    let returnedAt = try #require(history[read].returnedAt)
    history.overrideOutcome(read, .returned(.value(stale), at: returnedAt))
    let result = history.checkLinearizability()
    let violation = try #require(result.violation, "seed \(seed): \(result)")
    #expect(violation.partition == history[read].input.key)
    #expect(violation.operations.contains(read))
  }

  /// Finds a read R and a value u such that reading u is certainly illegal: u was written only by a put P, and
  /// a write W that certainly took effect lies strictly between P and R in real time. Values are unique per
  /// write in generated histories.
  static func staleReadCorruption(_ history: KVHistory) -> (OperationID, String)? {
    let ops = history.operations
    func certainWrite(_ op: HistoryOperation<KVInput, KVOutput>) -> Bool {
      switch (op.input, op.output) {
      case (.put, .ok?), (.delete, .ok?), (.compareAndSwap, .swapped(true)?): return true
      default: return false
      }
    }
    for read in ops.reversed() {
      guard case .get(let key) = read.input, read.returnedAt != nil else { continue }
      let writes = ops.filter {
        $0.input.key == key && certainWrite($0) && $0.returnedAt.map { $0 < read.invokedAt } == true
      }
      for put in writes {
        guard case .put(_, let value) = put.input, let putReturned = put.returnedAt else { continue }
        if writes.contains(where: { $0.id != put.id && $0.invokedAt > putReturned }) { return (read.id, value) }
      }
    }
    return nil
  }
}
