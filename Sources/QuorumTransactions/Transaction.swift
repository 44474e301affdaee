public import QuorumCore

/// A distributed transaction as an application writes it: work on the participants' resources, then an atomic
/// commit through a ``TransactionCoordinator``.
///
/// ```swift
/// let id = try await coordinator.makeTransactionID()
/// let result = try await Transaction(id: id, participants: [2, 3], via: coordinator) {
///   try await branchA.debit("alice", 10, in: id)   // the application's own calls to its resources
///   try await branchB.credit("bob", 10, in: id)
/// }.execute()
/// switch result {
/// case .committed: print("transferred")
/// case .aborted(let reason): print("not transferred: \(reason)")
/// }
/// // `execute()` throws TransactionError.outcomeUnknown(id) if no outcome came in time:
/// // `try await coordinator.outcome(of: id)` tells later.
/// ```
public struct Transaction: Sendable {
  /// The transaction's identifier.
  public let id: TxnID
  /// The participant nodes whose resources the body works on.
  public let participants: [NodeID]
  /// How long ``execute()`` waits for the outcome after the body; `nil` for the coordinator's default.
  public let deadline: Duration?
  private let coordinator: TransactionCoordinator
  private let body: @Sendable () async throws -> Void

  /// Describes a transaction; nothing happens until ``execute()``.
  public init(
    id: TxnID, participants: [NodeID], via coordinator: TransactionCoordinator, deadline: Duration? = nil,
    _ body: @escaping @Sendable () async throws -> Void = {}
  ) {
    self.id = id
    self.participants = participants
    self.deadline = deadline
    self.coordinator = coordinator
    self.body = body
  }

  /// Runs the body, then commits: returns ``TransactionResult/committed`` or ``TransactionResult/aborted(_:)``.
  /// If the body throws, the participants are told to roll back and the result is
  /// ``TransactionAbortReason/bodyFailed(_:)``.
  /// - Throws: ``TransactionError/outcomeUnknown(_:)`` (look the identifier up later), or another
  ///   ``TransactionError``.
  public func execute() async throws -> TransactionResult {
    do {
      try await body()
    } catch {
      await coordinator.abandon(id, participants: participants)
      return .aborted(.bodyFailed("\(error)"))
    }
    return try await coordinator.commit(id, participants: participants, deadline: deadline)
  }
}
