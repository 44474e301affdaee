import Synchronization

/// Identifies one operation of a ``History``: its position in the order of invocation.
public struct OperationID: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
  /// The index of the operation in ``History/operations``.
  public var rawValue: Int

  /// Creates an identifier from an index into ``History/operations``.
  public init(rawValue: Int) { self.rawValue = rawValue }

  /// `#<index>`.
  public var description: String { "#\(rawValue)" }

  public static func < (lhs: OperationID, rhs: OperationID) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// What became of an operation after its invocation.
public enum OperationOutcome<Output> {
  /// Still in flight. The checker treats it as ``unknown``: the history may end before the reply arrives.
  case pending
  /// The client received `output` at `at` nanoseconds.
  case returned(Output, at: UInt64)
  /// The client gave up (timeout, leadership change): the operation may or may not have taken effect, now or at
  /// any later time.
  case unknown
  /// The operation definitely never took effect (for example refused by a follower); the checker ignores it.
  case failed
}

extension OperationOutcome: Sendable where Output: Sendable {}
extension OperationOutcome: Equatable where Output: Equatable {}

/// One client operation: what was asked, when, and what came back.
public struct HistoryOperation<Input, Output> {
  /// The operation's identifier within its history.
  public var id: OperationID
  /// The client that issued it.
  public var client: Int
  /// What the client asked for.
  public var input: Input
  /// When the client invoked it, in nanoseconds.
  public var invokedAt: UInt64
  /// What became of it.
  public var outcome: OperationOutcome<Output>

  /// Creates an operation.
  public init(id: OperationID, client: Int, input: Input, invokedAt: UInt64, outcome: OperationOutcome<Output>) {
    self.id = id
    self.client = client
    self.input = input
    self.invokedAt = invokedAt
    self.outcome = outcome
  }

  /// The output, if the client received one.
  public var output: Output? {
    if case .returned(let output, _) = outcome { return output }
    return nil
  }

  /// When the client received the output, if it did.
  public var returnedAt: UInt64? {
    if case .returned(_, let time) = outcome { return time }
    return nil
  }

  /// Whether the operation may have taken effect without the client learning its output (``OperationOutcome/unknown``
  /// or ``OperationOutcome/pending``).
  public var isOutcomeUnknown: Bool {
    switch outcome {
    case .pending, .unknown: return true
    case .returned, .failed: return false
    }
  }
}

extension HistoryOperation: Sendable where Input: Sendable, Output: Sendable {}

extension HistoryOperation: CustomStringConvertible {
  /// `#3 client 2 [20, 30] put(x, "1") -> ok`; an unknown outcome shows `[20, ∞] … -> ?`.
  public var description: String {
    switch outcome {
    case .returned(let output, let time): return "\(id) client \(client) [\(invokedAt), \(time)] \(input) -> \(output)"
    case .pending: return "\(id) client \(client) [\(invokedAt), ∞] \(input) -> ? (pending)"
    case .unknown: return "\(id) client \(client) [\(invokedAt), ∞] \(input) -> ? (unknown)"
    case .failed: return "\(id) client \(client) [\(invokedAt), -] \(input) (failed)"
    }
  }
}
extension HistoryOperation: Equatable where Input: Equatable, Output: Equatable {}

/// A record of client operations, their invocation and return times and their outputs, for the linearizability
/// checker.
///
/// A simulation harness records each operation as it happens:
///
/// ```swift
/// var history = KVHistory()
/// let op = history.invoke(client: 1, .put(key: "x", value: "1"), at: now)
/// // … later, when the reply arrives:
/// history.complete(op, .ok, at: later)
/// // or, if the client gave up: history.markUnknown(op); if it certainly failed: history.markFailed(op)
/// ```
///
/// Timestamps are nanoseconds on any clock that never goes backwards and is shared by all clients: the simulator's
/// `VirtualTime.nanoseconds`, or a monotonic clock. An operation that is never completed counts as having an
/// unknown outcome. History is a value type; to record from several tasks at once use
/// ``ConcurrentHistoryRecorder``. Check a key-value history with
/// ``History/checkLinearizability(maxStatesExplored:)``, any other with a ``LinearizabilityChecker``.
public struct History<Input, Output> {
  /// Every operation recorded, in invocation-recording order; ``OperationID/rawValue`` indexes it.
  public private(set) var operations: [HistoryOperation<Input, Output>] = []

  /// Creates an empty history.
  public init() {}

  /// The number of operations recorded.
  public var count: Int { operations.count }

  /// The operations still waiting for `complete(_:_:at:)`, ``markUnknown(_:)`` or ``markFailed(_:)``.
  public var pendingCount: Int {
    operations.reduce(0) { count, op in
      if case .pending = op.outcome { return count + 1 }
      return count
    }
  }

  /// The operation with identifier `id`.
  public subscript(id: OperationID) -> HistoryOperation<Input, Output> { operations[id.rawValue] }

  /// Records that `client` invoked `input` at `at` nanoseconds; returns the handle to complete it with.
  @discardableResult
  public mutating func invoke(client: Int, _ input: Input, at time: UInt64) -> OperationID {
    let id = OperationID(rawValue: operations.count)
    operations.append(HistoryOperation(id: id, client: client, input: input, invokedAt: time, outcome: .pending))
    return id
  }

  /// Records that `client` invoked `input` at the virtual instant `time`.
  @discardableResult
  public mutating func invoke(client: Int, _ input: Input, at time: VirtualTime) -> OperationID {
    invoke(client: client, input, at: time.nanoseconds)
  }

  /// Records that operation `id` returned `output` at `at` nanoseconds.
  ///
  /// An operation marked unknown may still be completed if its reply turns up; completing it twice, completing a
  /// failed one, or returning before the invocation is a bug in the harness and stops the program.
  public mutating func complete(_ id: OperationID, _ output: Output, at time: UInt64) {
    let op = operations[id.rawValue]
    switch op.outcome {
    case .pending, .unknown: break
    case .returned, .failed:
      preconditionFailure("operation \(id) of client \(op.client) completed twice (outcome already \(op.outcome))")
    }
    precondition(
      time >= op.invokedAt, "operation \(id) returns at \(time) ns, before its invocation at \(op.invokedAt) ns")
    operations[id.rawValue].outcome = .returned(output, at: time)
  }

  /// Records that operation `id` returned `output` at the virtual instant `time`.
  public mutating func complete(_ id: OperationID, _ output: Output, at time: VirtualTime) {
    complete(id, output, at: time.nanoseconds)
  }

  /// Records that the client of operation `id` gave up on it: it may or may not take effect, at any later time.
  ///
  /// Calling it on an operation already unknown does nothing; on a completed or failed one it stops the program.
  public mutating func markUnknown(_ id: OperationID) {
    let op = operations[id.rawValue]
    switch op.outcome {
    case .pending, .unknown: operations[id.rawValue].outcome = .unknown
    case .returned, .failed:
      preconditionFailure("operation \(id) of client \(op.client) marked unknown after outcome \(op.outcome)")
    }
  }

  /// Records that operation `id` definitely never took effect; the checker ignores it.
  ///
  /// Only an operation without output can fail; calling it on a completed one stops the program.
  public mutating func markFailed(_ id: OperationID) {
    let op = operations[id.rawValue]
    switch op.outcome {
    case .pending, .unknown, .failed: operations[id.rawValue].outcome = .failed
    case .returned:
      preconditionFailure("operation \(id) of client \(op.client) marked failed after outcome \(op.outcome)")
    }
  }

  /// Records a whole operation at once (for generated or hand-written histories); returns its identifier.
  @discardableResult
  public mutating func append(
    client: Int, _ input: Input, invokedAt: UInt64, outcome: OperationOutcome<Output>
  ) -> OperationID {
    let id = invoke(client: client, input, at: invokedAt)
    switch outcome {
    case .pending: break
    case .returned(let output, let time): complete(id, output, at: time)
    case .unknown: markUnknown(id)
    case .failed: markFailed(id)
    }
    return id
  }

  /// Replaces the outcome of operation `id` without the checks of `complete(_:_:at:)`, for tests that corrupt a
  /// history on purpose.
  public mutating func overrideOutcome(_ id: OperationID, _ outcome: OperationOutcome<Output>) {
    operations[id.rawValue].outcome = outcome
  }
}

extension History: Sendable where Input: Sendable, Output: Sendable {}

extension History: CustomStringConvertible {
  /// One operation per line, as ``HistoryOperation/description`` prints it.
  public var description: String { operations.map(\.description).joined(separator: "\n") }
}

/// A thread-safe ``History`` recorder for clients running in several tasks or actors at once.
///
/// Every call takes a lock, so the recorded order and timestamps are consistent across tasks. Methods without an
/// `at:` argument read the recorder's clock inside the lock: by default nanoseconds of `ContinuousClock` since the
/// recorder was created.
public final class ConcurrentHistoryRecorder<Input: Sendable, Output: Sendable>: Sendable {
  private let state: Mutex<History<Input, Output>>
  private let clock: @Sendable () -> UInt64

  /// Creates a recorder whose timestamps come from `clock` (nanoseconds, never decreasing).
  public init(clock: @escaping @Sendable () -> UInt64) {
    state = Mutex(History())
    self.clock = clock
  }

  /// Creates a recorder timing operations with `ContinuousClock`, in nanoseconds since its creation.
  public convenience init() {
    let origin = ContinuousClock.now
    self.init(clock: {
      let elapsed = origin.duration(to: .now).components
      return UInt64(max(0, elapsed.seconds)) &* 1_000_000_000 &+ UInt64(max(0, elapsed.attoseconds / 1_000_000_000))
    })
  }

  /// Records that `client` invoked `input` now.
  @discardableResult
  public func invoke(client: Int, _ input: Input) -> OperationID {
    state.withLock { $0.invoke(client: client, input, at: clock()) }
  }

  /// Records that `client` invoked `input` at `at` nanoseconds.
  @discardableResult
  public func invoke(client: Int, _ input: Input, at time: UInt64) -> OperationID {
    state.withLock { $0.invoke(client: client, input, at: time) }
  }

  /// Records that operation `id` returned `output` now.
  public func complete(_ id: OperationID, _ output: Output) {
    state.withLock { $0.complete(id, output, at: clock()) }
  }

  /// Records that operation `id` returned `output` at `at` nanoseconds.
  public func complete(_ id: OperationID, _ output: Output, at time: UInt64) {
    state.withLock { $0.complete(id, output, at: time) }
  }

  /// Records that the client of operation `id` gave up on it; see ``History/markUnknown(_:)``.
  public func markUnknown(_ id: OperationID) {
    state.withLock { $0.markUnknown(id) }
  }

  /// Records that operation `id` definitely never took effect; see ``History/markFailed(_:)``.
  public func markFailed(_ id: OperationID) {
    state.withLock { $0.markFailed(id) }
  }

  /// A copy of everything recorded so far.
  public var history: History<Input, Output> {
    state.withLock { $0 }
  }
}
