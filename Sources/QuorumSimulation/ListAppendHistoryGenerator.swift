import QuorumCore

/// Generates list-append transaction histories of a correct (strictly serializable) store, for testing and
/// benchmarking the ``TransactionChecker``, optionally with one injected fault.
///
/// Clients run transactions one at a time with random durations and think times. Each transaction that takes
/// effect does so atomically at a random instant inside its interval, against one map of lists, in the order of
/// those instants; that is what makes the history strictly serializable. Some transactions abort (their reads
/// are computed but nothing is applied), some end with an unknown outcome: half of those never take effect,
/// the rest take effect at a random instant, possibly after the client gave up. Appended values are unique.
/// With ``finalReads`` a last transaction, on a client of its own, reads every key after everything else took
/// effect, so every applied append is observed. The history is a function of the seed.
public struct ListAppendHistoryGenerator: Sendable {
  /// A fault to inject into the store, each chosen so the checker is certain to detect it when ``finalReads``
  /// is on.
  public enum Fault: Hashable, Sendable, CaseIterable {
    /// Once a value of a key has been observed by a committed read and another value follows it, the store
    /// loses it. The committed read that saw it and the final read disagree at its index: an
    /// ``TransactionAnomaly/Kind/incompatibleOrder`` at every level.
    case droppedAppend
    /// A committed transaction reads a key from a stale snapshot that lacks the latest value its own client
    /// already observed (read, or appended and committed). Serializable on its own, but the client's earlier
    /// transaction completed first: a G-single cycle through a real-time edge (strict serializability), or a
    /// process edge.
    case staleRead
  }

  /// Where a fault was injected.
  public struct InjectedFault: Hashable, Sendable, CustomStringConvertible {
    /// The fault.
    public var fault: Fault
    /// The key it affected.
    public var key: String
    /// For ``Fault/droppedAppend`` the transaction whose append was lost; for ``Fault/staleRead`` the
    /// transaction that read the stale snapshot.
    public var transaction: TransactionID

    /// Creates a description of an injected fault.
    public init(fault: Fault, key: String, transaction: TransactionID) {
      self.fault = fault
      self.key = key
      self.transaction = transaction
    }

    public var description: String {
      switch fault {
      case .droppedAppend: return "the store dropped \(transaction)'s append to \(key)"
      case .staleRead: return "\(transaction) read \(key) from a stale snapshot"
      }
    }
  }

  /// A generated history and the fault injected into it, if any.
  public struct Output: Sendable {
    /// The history.
    public var history: TransactionHistory
    /// The fault injected, or `nil` if none was asked for or no point of the run allowed it.
    public var injectedFault: InjectedFault?
  }

  /// The seed the history is a function of.
  public var seed: UInt64
  /// How many transactions to generate (plus the final read, if any).
  public var transactionCount: Int
  /// How many distinct keys the transactions touch.
  public var keyCount: Int
  /// How many clients run concurrently, each with one transaction in flight at a time.
  public var clientCount: Int
  /// The most micro-operations in one transaction (each has between 1 and this many).
  public var maxOperationsPerTransaction: Int
  /// The probability that a micro-operation is a read rather than an append.
  public var readProbability: Double
  /// The probability that a transaction aborts.
  public var abortProbability: Double
  /// The probability that a transaction's outcome is unknown to its client.
  public var unknownOutcomeProbability: Double
  /// The longest interval between a transaction's invocation and its completion, in nanoseconds.
  public var maxTransactionNanoseconds: UInt64
  /// The longest pause of a client between two transactions, in nanoseconds (at least 1 ns always passes).
  public var maxThinkNanoseconds: UInt64
  /// Whether a last transaction reads every key once everything else took effect.
  public var finalReads: Bool
  /// The fault to inject in the second half of the run, if any.
  public var fault: Fault?

  /// Creates a generator; the defaults make a 10,000-transaction, 20-key, 10-client history with 5% aborts and
  /// 5% unknown outcomes.
  public init(
    seed: UInt64, transactionCount: Int = 10_000, keyCount: Int = 20, clientCount: Int = 10,
    maxOperationsPerTransaction: Int = 4, readProbability: Double = 0.5, abortProbability: Double = 0.05,
    unknownOutcomeProbability: Double = 0.05, maxTransactionNanoseconds: UInt64 = 2_000_000,
    maxThinkNanoseconds: UInt64 = 500_000, finalReads: Bool = true, fault: Fault? = nil
  ) {
    precondition(transactionCount >= 0, "transactionCount must not be negative, got \(transactionCount)")
    precondition(keyCount >= 1, "keyCount must be at least 1, got \(keyCount)")
    precondition(clientCount >= 1, "clientCount must be at least 1, got \(clientCount)")
    precondition(maxOperationsPerTransaction >= 1, "maxOperationsPerTransaction must be at least 1")
    self.seed = seed
    self.transactionCount = transactionCount
    self.keyCount = keyCount
    self.clientCount = clientCount
    self.maxOperationsPerTransaction = maxOperationsPerTransaction
    self.readProbability = readProbability
    self.abortProbability = abortProbability
    self.unknownOutcomeProbability = unknownOutcomeProbability
    self.maxTransactionNanoseconds = maxTransactionNanoseconds
    self.maxThinkNanoseconds = maxThinkNanoseconds
    self.finalReads = finalReads
    self.fault = fault
  }

  private struct Planned {
    var client: Int
    var invokedAt: UInt64
    var completedAt: UInt64
    var outcome: TransactionOutcome
    /// When it takes effect (or, for an aborted one, computes its reads); `nil` if it never does.
    var effectAt: UInt64?
    var operations: [ListAppendOperation]
    /// Whether its appends are applied to the store.
    var applies: Bool
  }

  /// The store the planned transactions run against, with what clients have observed of it.
  private struct Store {
    var lists: [[Int]]
    /// Per key, the longest list a committed read returned.
    var longestObserved: [Int]
    /// Per client and key, the length of the longest prefix the client saw in a committed transaction (by
    /// reading it, or by appending its last element).
    var clientObserved: [[Int]]
  }

  /// Generates the history.
  public func generate() -> Output {
    var rng = SeededRandom(seed: seed)
    var planned = plan(&rng)
    var store = Store(
      lists: Array(repeating: [], count: keyCount), longestObserved: Array(repeating: 0, count: keyCount),
      clientObserved: Array(repeating: Array(repeating: 0, count: keyCount), count: clientCount + 1))
    let order = planned.indices.filter { planned[$0].effectAt != nil }.sorted {
      (planned[$0].effectAt ?? 0, $0) < (planned[$1].effectAt ?? 0, $1)
    }
    var injected: (fault: Fault, key: Int, planned: Int)?
    for (step, index) in order.enumerated() {
      if injected == nil, let fault, step >= transactionCount / 2, index < transactionCount {
        injected = inject(fault, into: &planned, at: index, store: &store)
      }
      if injected?.planned == index && injected?.fault == .staleRead { continue }
      execute(&planned[index], store: &store)
    }
    let sorted = planned.indices.sorted {
      (planned[$0].invokedAt, planned[$0].client, $0) < (planned[$1].invokedAt, planned[$1].client, $1)
    }
    var history = TransactionHistory()
    var idOf = [TransactionID](repeating: TransactionID(rawValue: 0), count: planned.count)
    for index in sorted {
      let t = planned[index]
      idOf[index] = history.append(
        client: t.client, invokedAt: t.invokedAt, completedAt: t.outcome == .unknown ? nil : t.completedAt,
        outcome: t.outcome, operations: t.operations)
    }
    let report = injected.map { InjectedFault(fault: $0.fault, key: "k\($0.key)", transaction: idOf[$0.planned]) }
    return Output(history: history, injectedFault: report)
  }

  /// Chooses each transaction's client, interval, outcome, effect instant and micro-operations.
  private func plan(_ rng: inout SeededRandom) -> [Planned] {
    var clientFreeAt = (0..<clientCount).map { _ in UInt64.random(in: 0...maxThinkNanoseconds, using: &rng) }
    var nextValue = 1
    var planned: [Planned] = []
    planned.reserveCapacity(transactionCount + 1)
    var latestEffect: UInt64 = 0
    for _ in 0..<transactionCount {
      var client = 0
      for c in clientFreeAt.indices where clientFreeAt[c] < clientFreeAt[client] { client = c }
      let invokedAt = clientFreeAt[client]
      let duration = UInt64.random(in: 1...max(1, maxTransactionNanoseconds), using: &rng)
      let completedAt = invokedAt + duration
      let outcome: TransactionOutcome =
        rng.chance(unknownOutcomeProbability) ? .unknown : rng.chance(abortProbability) ? .aborted : .committed
      var effectAt: UInt64? = UInt64.random(in: invokedAt...completedAt, using: &rng)
      if outcome == .unknown {
        // Half never take effect; the rest take effect at any time, even well after the client gave up.
        effectAt = rng.chance(0.5) ? nil : UInt64.random(in: invokedAt...(completedAt + 4 * duration), using: &rng)
      }
      latestEffect = max(latestEffect, effectAt ?? 0, completedAt)
      var operations: [ListAppendOperation] = []
      for _ in 0..<Int.random(in: 1...maxOperationsPerTransaction, using: &rng) {
        let key = "k\(Int.random(in: 0..<keyCount, using: &rng))"
        if rng.chance(readProbability) {
          operations.append(.read(key: key, values: nil))
        } else {
          operations.append(.append(key: key, value: nextValue))
          nextValue += 1
        }
      }
      planned.append(
        Planned(
          client: client, invokedAt: invokedAt, completedAt: completedAt, outcome: outcome, effectAt: effectAt,
          operations: operations, applies: outcome == .committed || (outcome == .unknown && effectAt != nil)))
      clientFreeAt[client] = completedAt + 1 + UInt64.random(in: 0...maxThinkNanoseconds, using: &rng)
    }
    if finalReads {
      let start = latestEffect + 1
      planned.append(
        Planned(
          client: clientCount, invokedAt: start, completedAt: start + 2, outcome: .committed, effectAt: start + 1,
          operations: (0..<keyCount).map { .read(key: "k\($0)", values: nil) }, applies: true))
    }
    return planned
  }

  /// Runs one transaction against the store: its reads see the store and its own appends; its appends are
  /// applied if it takes effect; reads are recorded unless its outcome is unknown.
  private func execute(_ transaction: inout Planned, store: inout Store) {
    var own: [Int: [Int]] = [:]
    for (position, operation) in transaction.operations.enumerated() {
      let k = keyNumber(operation.key)
      switch operation {
      case .append(_, let value):
        if transaction.applies {
          store.lists[k].append(value)
          if transaction.outcome == .committed {
            store.clientObserved[transaction.client][k] = store.lists[k].count
          }
        } else {
          own[k, default: []].append(value)
        }
      case .read(let key, _):
        let list = store.lists[k] + own[k, default: []]
        transaction.operations[position] = .read(key: key, values: transaction.outcome == .unknown ? nil : list)
        if transaction.outcome == .committed {
          store.longestObserved[k] = max(store.longestObserved[k], list.count)
          store.clientObserved[transaction.client][k] = max(store.clientObserved[transaction.client][k], list.count)
        }
      }
    }
  }

  /// Injects `fault` just before planned transaction `index` runs, if the store allows it now; returns where.
  private func inject(
    _ fault: Fault, into planned: inout [Planned], at index: Int, store: inout Store
  ) -> (fault: Fault, key: Int, planned: Int)? {
    switch fault {
    case .droppedAppend:
      // A value at index j that a committed read saw, with another value after it.
      for k in 0..<keyCount where store.longestObserved[k] >= 1 && store.lists[k].count >= 2 {
        let j = min(store.longestObserved[k], store.lists[k].count - 1) - 1
        let value = store.lists[k].remove(at: j)
        guard let writer = planned.firstIndex(where: { $0.operations.contains(.append(key: "k\(k)", value: value)) })
        else { preconditionFailure("value \(value) of key k\(k) has no planned writer") }
        return (fault, k, writer)
      }
      return nil
    case .staleRead:
      let transaction = planned[index]
      guard transaction.outcome == .committed,
        let k = (0..<keyCount).first(where: { store.clientObserved[transaction.client][$0] >= 1 })
      else { return nil }
      let stale = Array(store.lists[k].prefix(store.clientObserved[transaction.client][k] - 1))
      planned[index].operations = [.read(key: "k\(k)", values: stale)]
      return (fault, k, index)
    }
  }

  private func keyNumber(_ key: String) -> Int {
    guard let number = Int(key.dropFirst()) else { preconditionFailure("generated key \(key) is not k<number>") }
    return number
  }
}
