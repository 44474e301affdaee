import Synchronization

/// Identifies one transaction of a ``TransactionHistory``: its position in the order of invocation.
public struct TransactionID: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
  /// The index of the transaction in ``TransactionHistory/transactions``.
  public var rawValue: Int

  /// Creates an identifier from an index into ``TransactionHistory/transactions``.
  public init(rawValue: Int) { self.rawValue = rawValue }

  /// `T<index>`.
  public var description: String { "T\(rawValue)" }

  public static func < (lhs: TransactionID, rhs: TransactionID) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// One micro-operation of a list-append transaction.
///
/// In the list-append workload (Kingsbury & Alvaro, "Elle", VLDB 2020) every key holds a list of integers;
/// a transaction appends values to lists and reads whole lists. The workload appends each value at most once
/// per key, so a read names exactly which appends it saw and in which order, which is what lets the
/// ``TransactionChecker`` infer the order of versions and the dependencies between transactions.
public enum ListAppendOperation: Hashable, Sendable, CustomStringConvertible {
  /// Append `value` to the list at `key`.
  case append(key: String, value: Int)
  /// Read the whole list at `key`; `values` is `nil` when the result is unknown (for example in a transaction
  /// whose outcome is unknown).
  case read(key: String, values: [Int]?)

  /// The key the operation touches.
  public var key: String {
    switch self {
    case .append(let key, _), .read(let key, _): return key
    }
  }

  /// `append(x, 3)`, `read(x) -> [1, 2]`, or `read(x) -> ?`.
  public var description: String {
    switch self {
    case .append(let key, let value): return "append(\(key), \(value))"
    case .read(let key, let values?): return "read(\(key)) -> \(values)"
    case .read(let key, nil): return "read(\(key)) -> ?"
    }
  }
}

/// What became of a transaction.
public enum TransactionOutcome: Hashable, Sendable, CustomStringConvertible {
  /// The client learned that it committed.
  case committed
  /// The client learned that it aborted: none of its appends may ever become visible.
  case aborted
  /// The client never learned the outcome (timeout, lost reply, still in flight when the history ended): it may
  /// or may not have committed, at any time after its invocation.
  case unknown

  /// `committed`, `aborted` or `unknown`.
  public var description: String {
    switch self {
    case .committed: return "committed"
    case .aborted: return "aborted"
    case .unknown: return "unknown"
    }
  }
}

/// One transaction of a ``TransactionHistory``: who ran it, when, what became of it, and its micro-operations.
public struct TransactionRecord: Hashable, Sendable, CustomStringConvertible {
  /// The transaction's identifier within its history.
  public var id: TransactionID
  /// The client (process) that ran it. A client runs one transaction at a time.
  public var client: Int
  /// When the client began it, in nanoseconds.
  public var invokedAt: UInt64
  /// When the client learned it committed or aborted, in nanoseconds; `nil` when the outcome is unknown.
  public var completedAt: UInt64?
  /// What became of it.
  public var outcome: TransactionOutcome
  /// Its micro-operations in program order. For a committed transaction the reads carry the lists the client
  /// received; the checker ignores the reads of aborted and unknown transactions.
  public var operations: [ListAppendOperation]

  /// Creates a record.
  public init(
    id: TransactionID, client: Int, invokedAt: UInt64, completedAt: UInt64?, outcome: TransactionOutcome,
    operations: [ListAppendOperation]
  ) {
    self.id = id
    self.client = client
    self.invokedAt = invokedAt
    self.completedAt = completedAt
    self.outcome = outcome
    self.operations = operations
  }

  /// `T3 client 2 [20, 30] committed: append(x, 1) read(y) -> [4]`; an unknown outcome shows `[20, ∞]`.
  public var description: String {
    let end = completedAt.map(String.init) ?? "∞"
    let ops = operations.map(\.description).joined(separator: " ")
    return "\(id) client \(client) [\(invokedAt), \(end)] \(outcome): \(ops)"
  }
}

/// A record of list-append transactions for the ``TransactionChecker``: each transaction's client, invocation
/// and completion times, outcome and micro-operations.
///
/// A harness records each transaction as it runs:
///
/// ```swift
/// var history = TransactionHistory()
/// let t = history.invoke(client: 1, operations: [.append(key: "x", value: 1), .read(key: "y", values: nil)], at: now)
/// // … when the commit reply arrives, with the lists the reads returned:
/// history.commit(t, operations: [.append(key: "x", value: 1), .read(key: "y", values: [3])], at: later)
/// // or history.abort(t, at: later); or, if the client gave up: history.markUnknown(t)
/// ```
///
/// or builds a whole history at once with ``append(client:invokedAt:completedAt:outcome:operations:)``.
/// Timestamps are nanoseconds on one clock shared by all clients that never goes backwards (the simulator's
/// `VirtualTime.nanoseconds`, or a monotonic clock); they matter only for the real-time order
/// (``TransactionChecker/realTimeOrder``). A transaction never completed counts as having an unknown outcome.
/// To record from several tasks at once use ``ConcurrentTransactionRecorder``.
public struct TransactionHistory: Hashable, Sendable, CustomStringConvertible {
  /// Every transaction recorded, in invocation-recording order; ``TransactionID/rawValue`` indexes it.
  public private(set) var transactions: [TransactionRecord] = []

  /// Creates an empty history.
  public init() {}

  /// The number of transactions recorded.
  public var count: Int { transactions.count }

  /// The transaction with identifier `id`.
  public subscript(id: TransactionID) -> TransactionRecord { transactions[id.rawValue] }

  /// Records that `client` began a transaction at `at` nanoseconds, with the micro-operations it plans (reads
  /// with unknown results); returns the handle to complete it with.
  @discardableResult
  public mutating func invoke(client: Int, operations: [ListAppendOperation] = [], at time: UInt64) -> TransactionID {
    let id = TransactionID(rawValue: transactions.count)
    transactions.append(
      TransactionRecord(
        id: id, client: client, invokedAt: time, completedAt: nil, outcome: .unknown, operations: operations))
    return id
  }

  /// Records that `client` began a transaction at the virtual instant `time`.
  @discardableResult
  public mutating func invoke(
    client: Int, operations: [ListAppendOperation] = [], at time: VirtualTime
  ) -> TransactionID {
    invoke(client: client, operations: operations, at: time.nanoseconds)
  }

  /// Records that transaction `id` committed at `at` nanoseconds; `operations`, if given, replaces the planned
  /// micro-operations (pass them with the lists the reads returned).
  ///
  /// A transaction marked unknown may still commit if its reply turns up; completing one twice, or before its
  /// invocation, is a bug in the harness and stops the program.
  public mutating func commit(_ id: TransactionID, operations: [ListAppendOperation]? = nil, at time: UInt64) {
    complete(id, .committed, operations: operations, at: time)
  }

  /// Records that transaction `id` committed at the virtual instant `time`.
  public mutating func commit(_ id: TransactionID, operations: [ListAppendOperation]? = nil, at time: VirtualTime) {
    commit(id, operations: operations, at: time.nanoseconds)
  }

  /// Records that transaction `id` aborted at `at` nanoseconds: none of its appends may ever become visible.
  public mutating func abort(_ id: TransactionID, operations: [ListAppendOperation]? = nil, at time: UInt64) {
    complete(id, .aborted, operations: operations, at: time)
  }

  /// Records that transaction `id` aborted at the virtual instant `time`.
  public mutating func abort(_ id: TransactionID, operations: [ListAppendOperation]? = nil, at time: VirtualTime) {
    abort(id, operations: operations, at: time.nanoseconds)
  }

  /// Records that the client of transaction `id` gave up on it: it may or may not commit, at any later time.
  /// `operations`, if given, replaces the planned micro-operations.
  ///
  /// Calling it on a transaction already unknown only replaces the operations; on a completed one it stops the
  /// program.
  public mutating func markUnknown(_ id: TransactionID, operations: [ListAppendOperation]? = nil) {
    let record = transactions[id.rawValue]
    precondition(
      record.completedAt == nil, "transaction \(id) of client \(record.client) marked unknown after \(record.outcome)")
    if let operations { transactions[id.rawValue].operations = operations }
  }

  /// Records a whole transaction at once (for generated or hand-written histories); returns its identifier.
  ///
  /// `completedAt` must be given for a committed or aborted transaction and `nil` for an unknown one.
  @discardableResult
  public mutating func append(
    client: Int, invokedAt: UInt64, completedAt: UInt64?, outcome: TransactionOutcome,
    operations: [ListAppendOperation]
  ) -> TransactionID {
    let id = invoke(client: client, operations: operations, at: invokedAt)
    switch (outcome, completedAt) {
    case (.unknown, nil): break
    case (.unknown, let time?):
      preconditionFailure("transaction \(id) has an unknown outcome but a completion time \(time)")
    case (_, nil): preconditionFailure("transaction \(id) is \(outcome) but has no completion time")
    case (_, let time?): complete(id, outcome, operations: nil, at: time)
    }
    return id
  }

  private mutating func complete(
    _ id: TransactionID, _ outcome: TransactionOutcome, operations: [ListAppendOperation]?, at time: UInt64
  ) {
    let record = transactions[id.rawValue]
    precondition(
      record.completedAt == nil,
      "transaction \(id) of client \(record.client) completed twice (already \(record.outcome))")
    precondition(
      time >= record.invokedAt,
      "transaction \(id) completes at \(time) ns, before its invocation at \(record.invokedAt)")
    transactions[id.rawValue].outcome = outcome
    transactions[id.rawValue].completedAt = time
    if let operations { transactions[id.rawValue].operations = operations }
  }

  /// One transaction per line, as ``TransactionRecord/description`` prints it.
  public var description: String { transactions.map(\.description).joined(separator: "\n") }
}

/// A thread-safe ``TransactionHistory`` recorder for clients running in several tasks or actors at once.
///
/// Every call takes a lock, so the recorded order and timestamps are consistent across tasks. Methods without an
/// `at:` argument read the recorder's clock inside the lock: by default nanoseconds of `ContinuousClock` since the
/// recorder was created.
public final class ConcurrentTransactionRecorder: Sendable {
  private let state: Mutex<TransactionHistory>
  private let clock: @Sendable () -> UInt64

  /// Creates a recorder whose timestamps come from `clock` (nanoseconds, never decreasing).
  public init(clock: @escaping @Sendable () -> UInt64) {
    state = Mutex(TransactionHistory())
    self.clock = clock
  }

  /// Creates a recorder timing transactions with `ContinuousClock`, in nanoseconds since its creation.
  public convenience init() {
    let origin = ContinuousClock.now
    self.init(clock: {
      let elapsed = origin.duration(to: .now).components
      return UInt64(max(0, elapsed.seconds)) &* 1_000_000_000 &+ UInt64(max(0, elapsed.attoseconds / 1_000_000_000))
    })
  }

  /// Records that `client` began a transaction now, with the micro-operations it plans.
  @discardableResult
  public func invoke(client: Int, operations: [ListAppendOperation] = []) -> TransactionID {
    state.withLock { $0.invoke(client: client, operations: operations, at: clock()) }
  }

  /// Records that transaction `id` committed now, with the micro-operations and read results if given.
  public func commit(_ id: TransactionID, operations: [ListAppendOperation]? = nil) {
    state.withLock { $0.commit(id, operations: operations, at: clock()) }
  }

  /// Records that transaction `id` aborted now.
  public func abort(_ id: TransactionID, operations: [ListAppendOperation]? = nil) {
    state.withLock { $0.abort(id, operations: operations, at: clock()) }
  }

  /// Records that the client of transaction `id` gave up on it; see ``TransactionHistory/markUnknown(_:operations:)``.
  public func markUnknown(_ id: TransactionID, operations: [ListAppendOperation]? = nil) {
    state.withLock { $0.markUnknown(id, operations: operations) }
  }

  /// A copy of everything recorded so far.
  public var history: TransactionHistory {
    state.withLock { $0 }
  }
}
