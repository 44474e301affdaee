import QuorumCore

/// Generates large key-value histories that are linearizable by construction, for testing and benchmarking the
/// ``LinearizabilityChecker``.
///
/// Clients issue operations one at a time with random think times and durations; each operation takes effect at
/// a random instant inside its interval (its linearization point), and outputs are computed by applying the
/// operations to one sequential map in linearization-point order. Some operations get an unknown outcome: the
/// client gives up at the end of its interval, and the operation either never takes effect or takes effect at
/// a random instant, possibly after the client gave up. Some definitely fail and never take effect. Values
/// written are unique, so a read pins down which write it saw. The history is a function of the seed.
public struct KVHistoryGenerator: Sendable {
  /// The seed the history is a function of.
  public var seed: UInt64
  /// How many operations to generate.
  public var operationCount: Int
  /// How many distinct keys the operations touch.
  public var keyCount: Int
  /// How many clients run concurrently, each with one operation in flight at a time.
  public var clientCount: Int
  /// The probability that an operation's outcome is unknown to its client.
  public var unknownOutcomeProbability: Double
  /// The probability that an operation definitely fails.
  public var failureProbability: Double
  /// The longest interval between an operation's invocation and its return, in nanoseconds.
  public var maxOperationNanoseconds: UInt64
  /// The longest pause of a client between two operations, in nanoseconds.
  public var maxThinkNanoseconds: UInt64

  /// Creates a generator; the defaults make the 10,000-operation, 100-key, 20-client history with 1% unknown
  /// outcomes that the checker is benchmarked on.
  public init(
    seed: UInt64, operationCount: Int = 10_000, keyCount: Int = 100, clientCount: Int = 20,
    unknownOutcomeProbability: Double = 0.01, failureProbability: Double = 0.002,
    maxOperationNanoseconds: UInt64 = 2_000_000, maxThinkNanoseconds: UInt64 = 500_000
  ) {
    precondition(operationCount >= 0, "operationCount must not be negative, got \(operationCount)")
    precondition(keyCount >= 1, "keyCount must be at least 1, got \(keyCount)")
    precondition(clientCount >= 1, "clientCount must be at least 1, got \(clientCount)")
    self.seed = seed
    self.operationCount = operationCount
    self.keyCount = keyCount
    self.clientCount = clientCount
    self.unknownOutcomeProbability = unknownOutcomeProbability
    self.failureProbability = failureProbability
    self.maxOperationNanoseconds = maxOperationNanoseconds
    self.maxThinkNanoseconds = maxThinkNanoseconds
  }

  private enum Kind {
    case get
    case put
    case delete
    case compareAndSwap
  }

  private enum Fate {
    case returns
    case unknown
    case failed
  }

  private struct Planned {
    var client: Int
    var key: Int
    var kind: Kind
    var invokedAt: UInt64
    var returnedAt: UInt64
    var fate: Fate
    /// When it takes effect; `nil` if it never does.
    var linearizedAt: UInt64?
    var input: KVInput = .get(key: "")
    var output: KVOutput?
  }

  /// Generates the history.
  public func generate() -> KVHistory {
    var rng = SeededRandom(seed: seed)
    var planned = plan(&rng)
    execute(&planned, &rng)
    var history = KVHistory()
    for op in planned.sorted(by: { ($0.invokedAt, $0.client) < ($1.invokedAt, $1.client) }) {
      let outcome: OperationOutcome<KVOutput>
      switch op.fate {
      case .returns:
        // Every operation that returns takes effect, so `execute` gave it an output.
        guard let output = op.output else { preconditionFailure("operation without output: \(op)") }
        outcome = .returned(output, at: op.returnedAt)
      case .unknown: outcome = .unknown
      case .failed: outcome = .failed
      }
      history.append(client: op.client, op.input, invokedAt: op.invokedAt, outcome: outcome)
    }
    return history
  }

  /// Chooses each operation's client, key, kind, interval, fate and linearization point.
  private func plan(_ rng: inout SeededRandom) -> [Planned] {
    var clientFreeAt = (0..<clientCount).map { _ in UInt64.random(in: 0...maxThinkNanoseconds, using: &rng) }
    var planned: [Planned] = []
    planned.reserveCapacity(operationCount)
    for _ in 0..<operationCount {
      var client = 0
      for c in clientFreeAt.indices where clientFreeAt[c] < clientFreeAt[client] { client = c }
      let invokedAt = clientFreeAt[client]
      let duration = UInt64.random(in: 1...max(1, maxOperationNanoseconds), using: &rng)
      let returnedAt = invokedAt + duration
      let fate: Fate =
        rng.chance(unknownOutcomeProbability) ? .unknown : rng.chance(failureProbability) ? .failed : .returns
      let linearizedAt: UInt64?
      switch fate {
      case .returns: linearizedAt = UInt64.random(in: invokedAt...returnedAt, using: &rng)
      case .failed: linearizedAt = nil
      case .unknown:
        // Half never take effect; the rest take effect at any time, even well after the client gave up.
        linearizedAt =
          rng.chance(0.5) ? nil : UInt64.random(in: invokedAt...(returnedAt + 4 * duration), using: &rng)
      }
      let draw = Int.random(in: 0..<10, using: &rng)
      let kind: Kind = draw < 4 ? .get : draw < 7 ? .put : draw < 8 ? .delete : .compareAndSwap
      planned.append(
        Planned(
          client: client, key: Int.random(in: 0..<keyCount, using: &rng), kind: kind, invokedAt: invokedAt,
          returnedAt: returnedAt, fate: fate, linearizedAt: linearizedAt))
      clientFreeAt[client] = returnedAt + UInt64.random(in: 0...maxThinkNanoseconds, using: &rng)
    }
    return planned
  }

  /// Applies the operations that take effect to a sequential map in linearization-point order, choosing inputs
  /// and computing outputs.
  private func execute(_ planned: inout [Planned], _ rng: inout SeededRandom) {
    var store: [String?] = Array(repeating: nil, count: keyCount)
    var written: [[String]] = Array(repeating: [], count: keyCount)
    let order = planned.indices.sorted {
      (planned[$0].linearizedAt ?? UInt64.max, $0) < (planned[$1].linearizedAt ?? UInt64.max, $1)
    }
    for index in order {
      let op = planned[index]
      let key = "k\(op.key)"
      let current = store[op.key]
      let fresh = "v\(index)"
      switch op.kind {
      case .get:
        planned[index].input = .get(key: key)
        planned[index].output = .value(current)
      case .put:
        planned[index].input = .put(key: key, value: fresh)
        planned[index].output = .ok
      case .delete:
        planned[index].input = .delete(key: key)
        planned[index].output = .ok
      case .compareAndSwap:
        // Half the time expect the current value (so it swaps), otherwise an older value or absent.
        let older = written[op.key].isEmpty || rng.chance(0.2) ? nil : written[op.key].randomElement(using: &rng)
        let expected = rng.chance(0.5) ? current : older
        let new = rng.chance(0.1) ? nil : fresh
        planned[index].input = .compareAndSwap(key: key, expected: expected, new: new)
        planned[index].output = .swapped(expected == current)
      }
      guard op.linearizedAt != nil else { continue }
      switch planned[index].input {
      case .get: break
      case .put(_, let value): store[op.key] = value
      case .delete: store[op.key] = nil
      case .compareAndSwap(_, let expected, let new) where expected == current: store[op.key] = new
      case .compareAndSwap: break
      }
      if let value = store[op.key], value != current { written[op.key].append(value) }
    }
  }
}
