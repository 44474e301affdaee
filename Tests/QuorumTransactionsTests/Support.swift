import QuorumCore
import Testing

@testable import QuorumTransactions

/// Transaction `sequence` of coordinator `coordinator`, started at `started` ms.
func txn(_ sequence: UInt64, coordinator: NodeID = 1, started: UInt64 = 1_000) -> TxnID {
  TxnID(coordinator: coordinator, sequence: sequence, startedAtMillis: started)
}

func send(_ to: NodeID, _ message: TransactionMessage) -> CoordinatorEffect {
  .send(TransactionOutgoing(to: to, message))
}

func psend(_ to: NodeID, _ message: TransactionMessage) -> ParticipantEffect {
  .send(TransactionOutgoing(to: to, message))
}

/// Options with short timeouts, so transcripts stay short.
func quickCoordinatorOptions() -> CoordinatorOptions {
  var options = CoordinatorOptions()
  options.voteTimeoutTicks = 10
  options.retry = RetrySchedule(initialTicks: 2, maxTicks: 16)
  options.transactionHorizonMillis = 60_000
  return options
}

func quickParticipantOptions() -> ParticipantOptions {
  var options = ParticipantOptions()
  options.unpreparedTimeoutTicks = 10
  options.inquiry = RetrySchedule(initialTicks: 3, maxTicks: 24)
  options.escalateAfterInquiries = 2
  return options
}

extension CoordinatorCore {
  /// Ticks `count` times at wall time `wall`, collecting every effect.
  mutating func ticks(_ count: Int, wall: UInt64 = 2_000) -> [CoordinatorEffect] {
    var effects: [CoordinatorEffect] = []
    for _ in 0..<count { effects += step(.tick(wallClockMillis: wall)) }
    return effects
  }
}

extension ParticipantCore {
  mutating func ticks(_ count: Int, wall: UInt64 = 2_000) -> [ParticipantEffect] {
    var effects: [ParticipantEffect] = []
    for _ in 0..<count { effects += step(.tick(wallClockMillis: wall)) }
    return effects
  }
}

extension Array where Element == CoordinatorEffect {
  /// The messages sent, in order.
  var sent: [TransactionOutgoing] {
    compactMap { if case .send(let outgoing) = $0 { outgoing } else { nil } }
  }
}

extension Array where Element == ParticipantEffect {
  var sent: [TransactionOutgoing] {
    compactMap { if case .send(let outgoing) = $0 { outgoing } else { nil } }
  }
}

extension TransactionRecords {
  /// Applies `command` as entry `index` at log time `millis`.
  @discardableResult
  mutating func apply(_ index: UInt64, at millis: UInt64, _ command: TransactionRecordCommand)
    -> TransactionRecordResponse
  {
    apply(command, context: ApplyContext(index: index, timestampMillis: millis))
  }
}
