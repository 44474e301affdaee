public import QuorumCore

/// How a retry interval grows: exponential back-off in ticks, from an initial interval to a cap.
///
/// Each transaction backs off on its own, and a core also caps how many retries it sends per tick across all
/// its transactions, so a coordinator that restarts with thousands of unfinished commits, or a participant with
/// many transactions in doubt, trickles its retries out instead of flooding the network (no retry storms).
public struct RetrySchedule: Sendable, Equatable {
  /// Ticks before the first retry.
  public var initialTicks: UInt64
  /// The largest interval between retries, in ticks.
  public var maxTicks: UInt64

  /// Creates a schedule.
  public init(initialTicks: UInt64, maxTicks: UInt64) {
    self.initialTicks = initialTicks
    self.maxTicks = maxTicks
  }

  /// The interval after `interval`: doubled, capped.
  func next(after interval: UInt64) -> UInt64 { Swift.min(maxTicks, Swift.max(1, interval) &* 2) }

  func validate(_ name: String) throws(ConfigurationError) {
    guard initialTicks >= 1, maxTicks >= initialTicks else {
      throw ConfigurationError(
        setting: name, reason: "needs 1 <= initialTicks <= maxTicks (got \(initialTicks), \(maxTicks))")
    }
  }
}

/// The settings of a ``CoordinatorCore`` (and its actor, ``TransactionCoordinator``).
public struct CoordinatorOptions: Sendable, Equatable {
  /// How often the actor ticks the core.
  public var tickInterval: Duration = .milliseconds(10)
  /// A transaction whose votes are not all in after this many ticks aborts.
  public var voteTimeoutTicks: UInt64 = 200
  /// Resending prepares to silent participants, commits to participants that did not acknowledge, and a
  /// decision record that failed to be written.
  public var retry = RetrySchedule(initialTicks: 5, maxTicks: 400)
  /// The most messages (and record retries) retried per tick, over all transactions.
  public var retriesPerTick: Int = 256
  /// The most transactions in progress at once.
  public var maxActiveTransactions: Int = 10_000
  /// The most participants of one transaction.
  public var maxParticipants: Int = 64
  /// How many recent outcomes the core remembers, to answer late votes and lookups without a record read.
  public var rememberedOutcomes: Int = 10_000
  /// The transaction horizon: a transaction must be decided within this much of its start; the same value as
  /// the record table's ``TransactionRecordLimits/transactionHorizonMillis``.
  public var transactionHorizonMillis: UInt64 = 60_000
  /// How long past its start a decision is sure to be in the record store: after it, a lookup of a transaction
  /// without a record answers ``TransactionStatus/unknown``, where before it presumes abort. Keep it below the
  /// table's ``TransactionRecordLimits/retainDecisionsMillis`` by more than the table's time may run ahead of this
  /// coordinator's wall clock (a clock stepped back, a table following a faster clock): a commit forgotten by the
  /// table would otherwise be reported aborted. The default, 9 minutes, leaves a minute below the table's 10.
  public var retainDecisionsMillis: UInt64 = 540_000
  /// How long ``TransactionCoordinator/commit(_:participants:deadline:)`` waits by default before throwing
  /// ``TransactionError/outcomeUnknown(_:)``.
  public var commitDeadline: Duration = .seconds(10)
  /// Capacity of the actor's request mailbox.
  public var inputCapacity: Int = 65_536

  /// The defaults: 10 ms ticks, 2 s vote timeout, retries from 50 ms to 4 s, 60 s horizon.
  public init() {}

  /// Checks that the settings are usable.
  /// - Throws: ``QuorumCore/ConfigurationError`` naming the first unusable setting.
  public func validate() throws(ConfigurationError) {
    guard tickInterval > .zero else { throw ConfigurationError(setting: "tickInterval", reason: "must be positive") }
    guard voteTimeoutTicks >= 1 else {
      throw ConfigurationError(setting: "voteTimeoutTicks", reason: "must be at least 1")
    }
    try retry.validate("retry")
    for (name, value) in [
      ("retriesPerTick", retriesPerTick), ("maxActiveTransactions", maxActiveTransactions),
      ("maxParticipants", maxParticipants), ("rememberedOutcomes", rememberedOutcomes),
      ("inputCapacity", inputCapacity),
    ] where value < 1 {
      throw ConfigurationError(setting: name, reason: "must be at least 1 (got \(value))")
    }
    guard transactionHorizonMillis >= 1 else {
      throw ConfigurationError(setting: "transactionHorizonMillis", reason: "must be at least 1 ms")
    }
  }
}

/// The settings of a ``ParticipantCore`` (and its actor, ``TransactionParticipantNode``).
public struct ParticipantOptions: Sendable, Equatable {
  /// How often the actor ticks the core.
  public var tickInterval: Duration = .milliseconds(10)
  /// A transaction that began here (``ParticipantInput/begin(_:)``) and has no prepare after this many ticks
  /// aborts on its own.
  public var unpreparedTimeoutTicks: UInt64 = 500
  /// Asking for the decision of a prepared transaction: the first question goes after `initialTicks`, later
  /// ones back off.
  public var inquiry = RetrySchedule(initialTicks: 20, maxTicks: 400)
  /// After this many unanswered questions to the coordinator, a prepared participant also asks the other
  /// participants (classic mode) or resolves the transaction through the replicated record (non-blocking mode).
  /// The coordinator does not answer while it collects votes, so the questions up to the escalation should take
  /// longer than its ``CoordinatorOptions/voteTimeoutTicks``: otherwise a participant aborts a transaction whose
  /// last vote is merely slow. With the defaults the escalation comes after 20 + 40 + 80 + 160 ticks (3 s), past
  /// the coordinator's 2 s.
  public var escalateAfterInquiries: Int = 3
  /// The most questions (and record retries) sent per tick, over all transactions.
  public var retriesPerTick: Int = 256
  /// The most transactions tracked at once (those beyond are refused: a prepare gets a no vote).
  public var maxTransactions: Int = 10_000
  /// How many finished transactions the core remembers, to answer duplicates and peers.
  public var rememberedOutcomes: Int = 10_000
  /// The transaction horizon; the same value as the record table's and the coordinator's.
  public var transactionHorizonMillis: UInt64 = 60_000
  /// Capacity of the actor's input mailbox.
  public var inputCapacity: Int = 65_536

  /// The defaults: 10 ms ticks, 5 s unprepared timeout, questions from 200 ms to 4 s, escalation after 3.
  public init() {}

  /// Checks that the settings are usable.
  /// - Throws: ``QuorumCore/ConfigurationError`` naming the first unusable setting.
  public func validate() throws(ConfigurationError) {
    guard tickInterval > .zero else { throw ConfigurationError(setting: "tickInterval", reason: "must be positive") }
    guard unpreparedTimeoutTicks >= 1 else {
      throw ConfigurationError(setting: "unpreparedTimeoutTicks", reason: "must be at least 1")
    }
    try inquiry.validate("inquiry")
    for (name, value) in [
      ("escalateAfterInquiries", escalateAfterInquiries), ("retriesPerTick", retriesPerTick),
      ("maxTransactions", maxTransactions), ("rememberedOutcomes", rememberedOutcomes),
      ("inputCapacity", inputCapacity),
    ] where value < 1 {
      throw ConfigurationError(setting: name, reason: "must be at least 1 (got \(value))")
    }
    guard transactionHorizonMillis >= 1 else {
      throw ConfigurationError(setting: "transactionHorizonMillis", reason: "must be at least 1 ms")
    }
  }
}

/// A bounded first-in, first-out memory of finished transactions' outcomes.
struct OutcomeMemory<Value: Sendable>: Sendable {
  private(set) var values: [TxnID: Value] = [:]
  private var order: [TxnID] = []
  private var head = 0
  let capacity: Int
  /// The latest start time of any transaction forgotten to make room: a transaction that started after it was
  /// never forgotten, so if it is not here it was never here.
  private(set) var forgottenStartedAtMillis: UInt64 = 0
  private var hasForgotten = false

  init(capacity: Int) { self.capacity = Swift.max(1, capacity) }

  subscript(id: TxnID) -> Value? { values[id] }

  /// Whether `id` may have been here and been forgotten to make room.
  func mayHaveForgotten(_ id: TxnID) -> Bool { hasForgotten && id.startedAtMillis <= forgottenStartedAtMillis }

  mutating func remember(_ id: TxnID, _ value: Value) {
    if values.updateValue(value, forKey: id) == nil { order.append(id) }
    while values.count > capacity, head < order.count {
      let evicted = order[head]
      if values.removeValue(forKey: evicted) != nil {
        forgottenStartedAtMillis = Swift.max(forgottenStartedAtMillis, evicted.startedAtMillis)
        hasForgotten = true
      }
      head += 1
    }
    if head > 1024 && head * 2 > order.count {
      order.removeFirst(head)
      head = 0
    }
  }
}
