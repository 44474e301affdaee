public import QuorumCore

/// Where the coordinator's decision records and a participant's prepared records are made durable.
///
/// Two implementations:
/// - ``LocalTransactionRecordStore``: the node's own log (a ``QuorumStorage/ConsensusStorage``). Classic
///   two-phase commit: a prepared participant whose coordinator has crashed waits until the coordinator is back
///   (or a peer knows the outcome).
/// - ``ReplicatedTransactionRecordStore``: a ``TransactionRecords`` table in a replicated group, shared by the
///   coordinator and its participants. Non-blocking: a prepared participant that cannot reach the coordinator
///   decides abort through the record unless a commit is recorded there first, so no single crash blocks it.
///
/// Every operation is idempotent, so a caller may retry one whose outcome it does not know.
public protocol TransactionRecordStore: Sendable {
  /// The identity of a store shared by several nodes (the same for every node's handle on it), or `nil` for a
  /// node's own local store. A prepare carries the coordinator's, and a participant resolves through its
  /// store only if its own is the same.
  var sharedIdentity: UInt64? { get }

  /// Makes `participant`'s prepared state of `id` durable. Returns `nil` once recorded, or the decision the
  /// store already holds for `id` (then nothing was recorded and the participant must not vote yes).
  func recordPrepared(_ id: TxnID, participant: NodeID, participants: [NodeID]) async throws -> TransactionDecision?

  /// Records `decision` for `id` unless a decision is already recorded, and returns the decision that holds:
  /// a compare-and-set, atomic in a replicated store. A commit with a `finisher` is kept until that node calls
  /// ``recordFinished(_:by:)``. In a local store an abort with no record is not written (presumed abort: no
  /// record means abort).
  func decideIfUndecided(_ id: TxnID, _ decision: TransactionDecision, participants: [NodeID], finisher: NodeID?)
    async throws -> TransactionDecision

  /// Records that `node` is done with `id`.
  func recordFinished(_ id: TxnID, by node: NodeID) async throws

  /// The record of `id`, if the store has one.
  func outcome(of id: TxnID) async throws -> TransactionRecordSummary?

  /// Every record concerning `node` (as coordinator, participant, or pending), for its recovery.
  func pendingRecords(of node: NodeID) async throws -> [TransactionRecordSummary]

  /// Reserves `count` transaction numbers for `coordinator`, never handed out again.
  func reserveSequenceNumbers(for coordinator: NodeID, count: UInt64) async throws -> Range<UInt64>
}

extension TransactionRecordStore {
  /// Records the coordinator's commit of `id` (a ``decideIfUndecided(_:_:participants:finisher:)`` with the
  /// coordinator as finisher) and returns the decision that holds: abort if a participant resolved it first.
  public func recordDecision(_ id: TxnID, participants: [NodeID]) async throws -> TransactionDecision {
    try await decideIfUndecided(id, .commit, participants: participants, finisher: id.coordinator)
  }
}

/// Why a record store operation failed.
public enum TransactionStoreError: Error, Sendable, Hashable, CustomStringConvertible {
  /// The local store could not write and refuses everything from now on: the node must stop and restart
  /// (recovery reads what reached the disk).
  case unusable(String)
  /// The record table refused the command (a bound, or a coordinator clock too far ahead); nothing changed.
  case refused(TransactionRecordError)
  /// The replicated group did not answer: the operation may or may not have taken effect. Retrying is safe.
  case unavailable(String)
  /// The replicated group turned the command away before its log (too large for it, say): it was certainly not
  /// applied, and would be turned away again.
  case rejected(String)
  /// The store answered something this build does not expect.
  case badAnswer(String)

  public var description: String {
    switch self {
    case .unusable(let why): return "the record store is unusable: \(why)"
    case .refused(let error): return "the record table refused: \(error)"
    case .unavailable(let why): return "the record group did not answer: \(why)"
    case .rejected(let why): return "the record group turned the command away: \(why)"
    case .badAnswer(let why): return "unexpected answer from the record store: \(why)"
    }
  }
}

extension TransactionRecordResponse {
  /// The decision a prepared/decide answer carries.
  func decision(for command: TransactionRecordCommand) throws(TransactionStoreError) -> TransactionDecision? {
    switch self {
    case .undecided: return nil
    case .decided(let decision): return decision
    case .refused(let error): throw .refused(error)
    default: throw .badAnswer("\(self) to \(command)")
    }
  }
}

/// Collects every record concerning `node`, page by page, from `read`.
func collectRecords(
  of node: NodeID, pageSize: Int = 1_024,
  read: (TransactionRecordQuery) async throws -> TransactionRecordQueryResult
) async throws -> [TransactionRecordSummary] {
  var all: [TransactionRecordSummary] = []
  var after: TxnID?
  while true {
    let answer = try await read(.involving(node, after: after, limit: pageSize))
    guard case .records(let page, let more) = answer else { throw TransactionStoreError.badAnswer("\(answer)") }
    all += page
    guard more, let last = page.last else { return all }
    after = last.id
  }
}
