/// A sequential specification the ``LinearizabilityChecker`` compares a concurrent history against.
///
/// A model is a deterministic state machine: ``step(_:_:_:)`` says which state follows from applying one input,
/// and whether the output the client saw is possible. A model may split its history into independent
/// partitions (P-compositionality, Horn & Kroening 2015): a key-value store is linearizable exactly when each
/// key's sub-history is, so each key is checked on its own, which keeps the search small.
public protocol LinearizabilityModel {
  /// The state of the specification within one partition. Hashable so the checker can remember which states it
  /// has already explored.
  associatedtype State: Hashable
  /// What a client asks for.
  associatedtype Input
  /// What a client receives.
  associatedtype Output
  /// What tells partitions apart; ``SinglePartition`` when the history cannot be split.
  associatedtype PartitionKey: Hashable & Sendable = SinglePartition

  /// The state of every partition before any operation.
  var initialState: State { get }

  /// The state after applying `input` to `state`, or `nil` if the specification cannot produce `output` from
  /// `state`.
  ///
  /// `output` is `nil` when the client never learned it (unknown outcome): then any output is acceptable and
  /// the step only computes the effect. The step must be a pure function of its arguments.
  func step(_ state: State, _ input: Input, _ output: Output?) -> State?

  /// The partition `input` belongs to.
  func partitionKey(for input: Input) -> PartitionKey

  /// Whether `input` never changes the state, so an operation with unknown outcome and this input can be dropped
  /// before the search (it could only ever be linearized as a no-op). Defaults to `false`.
  func isReadOnly(_ input: Input) -> Bool

  /// A short text for `state`, used in explanations.
  func describe(state: State) -> String

  /// A short text for an operation, used in explanations; `output` is `nil` when unknown.
  func describe(input: Input, output: Output?) -> String
}

/// The partition key of a model whose history is checked as one piece.
public struct SinglePartition: Hashable, Sendable, CustomStringConvertible {
  /// The one partition.
  public init() {}
  /// `all`.
  public var description: String { "all" }
}

extension LinearizabilityModel where PartitionKey == SinglePartition {
  /// Puts every operation in the one partition.
  public func partitionKey(for input: Input) -> SinglePartition { SinglePartition() }
}

extension LinearizabilityModel {
  /// No input is assumed read-only.
  public func isReadOnly(_ input: Input) -> Bool { false }

  /// The state as `String(describing:)` prints it.
  public func describe(state: State) -> String { String(describing: state) }

  /// `input -> output`, or `input -> ?` when the output is unknown.
  public func describe(input: Input, output: Output?) -> String {
    guard let output else { return "\(input) -> ?" }
    return "\(input) -> \(output)"
  }
}

/// Counters describing the work one check did.
public struct LinearizabilityStats: Sendable, Hashable, CustomStringConvertible {
  /// Partitions searched (every one up to the first violation, including those that ran out of budget).
  public var partitionsChecked = 0
  /// Operations that took part in the search (failed operations and unknown read-only ones are dropped).
  public var operationsChecked = 0
  /// Search states reached: distinct (set of linearized operations, model state) pairs, plus the states the
  /// targeted strategy reaches through unknown-outcome operations; summed over every strategy the portfolio ran
  /// and every partition. ``LinearizabilityChecker/maxStatesExplored`` bounds it per partition.
  public var statesExplored = 0
  /// Times the search undid a tentative linearization.
  public var backtracks = 0

  /// Creates zeroed counters.
  public init() {}

  public var description: String {
    "\(partitionsChecked) partitions, \(operationsChecked) operations, \(statesExplored) states explored, "
      + "\(backtracks) backtracks"
  }
}

/// Why a history is not linearizable: the partition that has no linearization, and what the search found there.
public struct LinearizabilityViolation<PartitionKey: Hashable & Sendable>: Sendable, CustomStringConvertible {
  /// The partition (for a key-value store, the key) whose operations have no linearization.
  public var partition: PartitionKey
  /// The operations of that partition that took part in the search, by invocation time.
  public var operations: [OperationID]
  /// The longest sequence of operations the search could linearize, in linearization order (including any
  /// unknown-outcome operations it chose to apply); the search found no way to extend it to every operation.
  public var longestLinearizablePrefix: [OperationID]
  /// A readable account: each operation with its times and output, the longest prefix, the state after it and
  /// the operations that could not follow it.
  public var explanation: String

  /// Creates a violation report.
  public init(
    partition: PartitionKey, operations: [OperationID], longestLinearizablePrefix: [OperationID],
    explanation: String
  ) {
    self.partition = partition
    self.operations = operations
    self.longestLinearizablePrefix = longestLinearizablePrefix
    self.explanation = explanation
  }

  public var description: String { explanation }
}

/// The outcome of a linearizability check.
public struct LinearizabilityResult<PartitionKey: Hashable & Sendable>: Sendable, CustomStringConvertible {
  /// The checker's conclusion.
  public enum Verdict: Sendable {
    /// Every partition has a linearization.
    case linearizable
    /// One partition has none (the first found, in the order of the partitions' first operations).
    case notLinearizable(LinearizabilityViolation<PartitionKey>)
    /// No partition has a violation, but the budget of explored states ran out while searching `partition`
    /// (the first partition where it did), so nothing is known about that one. Every partition was searched.
    case unknown(partition: PartitionKey)
  }

  /// The conclusion.
  public var verdict: Verdict
  /// What the search did.
  public var stats: LinearizabilityStats

  /// Creates a result.
  public init(verdict: Verdict, stats: LinearizabilityStats) {
    self.verdict = verdict
    self.stats = stats
  }

  /// Whether the history was proven linearizable.
  public var isLinearizable: Bool {
    if case .linearizable = verdict { return true }
    return false
  }

  /// Whether the history was proven not linearizable.
  public var isViolation: Bool { violation != nil }

  /// The violation, if the history was proven not linearizable.
  public var violation: LinearizabilityViolation<PartitionKey>? {
    if case .notLinearizable(let violation) = verdict { return violation }
    return nil
  }

  public var description: String {
    switch verdict {
    case .linearizable: return "linearizable (\(stats))"
    case .notLinearizable(let violation): return "NOT linearizable (\(stats))\n\(violation.explanation)"
    case .unknown(let partition):
      return "unknown: the budget ran out while checking partition \(partition) (\(stats))"
    }
  }
}

/// An order in which the ``LinearizabilityChecker`` tries the moves of its search.
///
/// Every strategy gives the same verdict; each is exponentially faster than the other on some histories, so by
/// default the checker runs both in turn with growing budgets (a portfolio, as Lowe runs two algorithms in
/// competition), which costs a small factor over the better one.
public enum LinearizabilitySearchStrategy: Sendable, Hashable, CaseIterable {
  /// Porcupine's order: the operations that may go next in invocation order, whatever their outcome, so an
  /// operation with unknown outcome is first tried as soon as it is invoked. Fast when such operations take
  /// effect soon after their invocation, the common case; slow when one is observed only much later while many
  /// are pending.
  case eager
  /// Each move is "some operations with unknown outcome, then one with a known output", and those with unknown
  /// outcome are tried only where the next known output can use them. Fast when one takes effect or is observed
  /// long after other operations; slower per state otherwise.
  case targeted
}

/// Decides whether a concurrent history is linearizable with respect to a sequential ``LinearizabilityModel``.
///
/// A history is *linearizable* (Herlihy & Wing 1990) if each operation can be given a single instant between its
/// invocation and its return at which it takes effect, so that the outputs are those of the model applied in the
/// order of those instants. Operation A must precede B exactly when A returned strictly before B was invoked;
/// equal timestamps count as concurrent. An operation with unknown outcome (``OperationOutcome/unknown`` or
/// still ``OperationOutcome/pending``) has no return time: it may take effect at any instant after its
/// invocation, or never, and accepts any output. Failed operations (``OperationOutcome/failed``) are dropped.
///
/// ## Algorithm
///
/// The history is first split into partitions by ``LinearizabilityModel/partitionKey(for:)`` and each is checked
/// on its own (P-compositionality, Horn & Kroening 2015). Within a partition the checker runs the depth-first
/// search of Wing & Gong (1993) with Lowe's just-in-time linearization (2017), as the Porcupine checker does:
/// invocation and return events are kept in one time-ordered list; the search walks it and tries to linearize
/// each invoked operation by stepping the model; when it reaches the return of an operation it has not
/// linearized, it must backtrack and undo its most recent tentative choice. Each search state is memoized as
/// (set of linearized operations as a bitset, model state), and reaching one again is pruned, since the search
/// from it is known to fail. The search succeeds once every operation with a known output is linearized;
/// operations with unknown outcome left over are taken never to have happened.
///
/// Operations with unknown outcome never return, so each stays a candidate to the end of its partition and the
/// plain search is exponential in their number. Two additions keep that in check: a state is also pruned when
/// it differs from one already reached only by having linearized more of them (subsumption: linearizing one is
/// never required and constrains nothing, so the smaller set can do all the larger can), and the search runs
/// with two move orders in turn (``LinearizabilitySearchStrategy``), each with a budget slice that grows fourfold
/// per round, since each order is exponentially faster than the other on some histories. The tests compare the
/// verdicts of each order and of the portfolio with a brute-force enumeration on thousands of small histories.
///
/// ## Limits
///
/// - Deciding linearizability is NP-complete (Gibbons & Korach 1997). Memoization makes typical histories fast:
///   the cost grows with how many operations of one partition overlap in time, not with the history's length.
///   Measured on generated histories of 2,000 operations on one key: ~30 ms with 8 clients, but out of reach
///   (millions of states) with 20 clients all on one key, and up to a few seconds with 8 clients and 20% unknown
///   outcomes. ``maxStatesExplored`` bounds the work on each partition; a partition where it runs out does not
///   stop the others from being searched, so a violation in any partition is still found. Only when none has
///   one and some ran out is the verdict ``LinearizabilityResult/Verdict/unknown(partition:)``, never a guess.
/// - Memory grows with the states explored: two bitsets of the partition's size and one model state each.
/// - The model must be deterministic (one successor state per step) and an operation must belong to exactly one
///   partition; multi-key operations need a model whose partition covers all the keys they touch.
/// - The verdict is only as good as the timestamps: all clients must share one clock that never goes backwards.
/// - Partitions are searched one after another on the calling thread.
public struct LinearizabilityChecker<Model: LinearizabilityModel> {
  /// The sequential specification.
  public var model: Model
  /// The most search states to explore in each partition before giving up on it; `nil` for no limit. The
  /// whole check explores at most this many times the number of partitions. A partition given up on yields
  /// ``LinearizabilityResult/Verdict/unknown(partition:)`` unless another partition has a violation.
  public var maxStatesExplored: Int?

  /// The move orders to run in turn, each with a growing share of the budget, until one reaches a verdict. All
  /// give the same verdicts; they differ in speed. Defaults to all of them.
  public var strategies: [LinearizabilitySearchStrategy]

  /// Creates a checker for `model`, optionally bounded to `maxStatesExplored` search states.
  public init(
    model: Model, maxStatesExplored: Int? = nil,
    strategies: [LinearizabilitySearchStrategy] = LinearizabilitySearchStrategy.allCases
  ) {
    precondition(maxStatesExplored.map { $0 >= 0 } ?? true, "maxStatesExplored must not be negative")
    precondition(!strategies.isEmpty, "a checker needs at least one search strategy")
    self.model = model
    self.maxStatesExplored = maxStatesExplored
    self.strategies = strategies
  }

  /// Checks `history`.
  ///
  /// Partitions are searched in the order of their first operation, each with its own budget; the first
  /// partition without a linearization is reported, whether or not an earlier one ran out of budget.
  public func check(_ history: History<Model.Input, Model.Output>) -> LinearizabilityResult<Model.PartitionKey> {
    check(history.operations)
  }

  /// Checks a list of operations (for example a filtered ``History/operations``). Identifiers need not be
  /// contiguous but must be unique.
  public func check(
    _ operations: [HistoryOperation<Model.Input, Model.Output>]
  ) -> LinearizabilityResult<Model.PartitionKey> {
    var stats = LinearizabilityStats()
    var firstUnknown: Model.PartitionKey?
    for (key, partition) in partitions(operations) {
      stats.partitionsChecked += 1
      stats.operationsChecked += partition.count
      var budget = maxStatesExplored ?? Int.max
      switch search(partition, budget: &budget, stats: &stats) {
      case .linearizable: continue
      case .outOfBudget:
        // Unknown is not an answer while another partition may hold a violation: search them all.
        if firstUnknown == nil { firstUnknown = key }
      case .notLinearizable(let strategy):
        var replay = LinearizabilitySearch(model: model, operations: partition)
        let outcome = replay.run(budget: Int.max, strategy: strategy, recordingLongestPrefix: true)
        guard case .notLinearizable(let prefix) = outcome else {
          preconditionFailure("the linearizability search of partition \(key) is not deterministic")
        }
        let violation = replay.violation(partition: key, longestPrefix: prefix)
        return LinearizabilityResult(verdict: .notLinearizable(violation), stats: stats)
      }
    }
    if let firstUnknown { return LinearizabilityResult(verdict: .unknown(partition: firstUnknown), stats: stats) }
    return LinearizabilityResult(verdict: .linearizable, stats: stats)
  }

  private enum PartitionOutcome {
    case linearizable
    case notLinearizable(LinearizabilitySearchStrategy)
    case outOfBudget
  }

  /// Runs the search strategies in turn on one partition, each with a slice of the budget that grows fourfold
  /// per round, until one of them reaches a verdict: a portfolio costs a small factor over the strategy that
  /// suits the partition, where either one alone can be exponentially slower on some histories.
  private func search(
    _ partition: [HistoryOperation<Model.Input, Model.Output>], budget: inout Int, stats: inout LinearizabilityStats
  ) -> PartitionOutcome {
    // One strategy alone gets the whole budget at once: restarting it would only repeat work.
    var slice = strategies.count == 1 ? budget : max(20_000, 16 * partition.count)
    while true {
      for strategy in strategies {
        var search = LinearizabilitySearch(model: model, operations: partition)
        let outcome = search.run(budget: min(slice, budget), strategy: strategy)
        stats.statesExplored += search.statesExplored
        stats.backtracks += search.backtracks
        budget -= search.statesExplored
        switch outcome {
        case .linearizable: return .linearizable
        case .notLinearizable: return .notLinearizable(strategy)
        case .outOfBudget: if budget == 0 { return .outOfBudget }
        }
      }
      slice = slice.multipliedReportingOverflow(by: 4).overflow ? Int.max : slice * 4
    }
  }

  /// Splits the operations that matter by partition key, keeping the order of first appearance.
  private func partitions(
    _ operations: [HistoryOperation<Model.Input, Model.Output>]
  ) -> [(Model.PartitionKey, [HistoryOperation<Model.Input, Model.Output>])] {
    var indexOfKey: [Model.PartitionKey: Int] = [:]
    var result: [(Model.PartitionKey, [HistoryOperation<Model.Input, Model.Output>])] = []
    for op in operations {
      if case .failed = op.outcome { continue }
      if op.isOutcomeUnknown && model.isReadOnly(op.input) { continue }
      let key = model.partitionKey(for: op.input)
      if let index = indexOfKey[key] {
        result[index].1.append(op)
      } else {
        indexOfKey[key] = result.count
        result.append((key, [op]))
      }
    }
    return result
  }
}

extension LinearizabilityChecker: Sendable where Model: Sendable {}
