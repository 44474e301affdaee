public import QuorumCore

/// The sharded transactional key-value store as a service of a group's log (name `txn`): a ``TxnShard`` per
/// group. Reads, prepares and one-shot commits are routed by their keys (a prepare carries only the keys of the
/// group it goes to); record commands by the transaction's record key (``recordKey(for:)``), so that any client
/// finds a transaction's decision record from its identifier alone; commits and aborts by transaction go to
/// the groups the client prepared.
public struct TxnShardService: ReplicatedService {
  /// The shards' bounds and timings.
  public var limits: TxnShardLimits

  /// Creates the service with `limits`.
  public init(limits: TxnShardLimits = TxnShardLimits()) { self.limits = limits }

  /// `txn`.
  public static var name: String { "txn" }

  /// An empty shard.
  public func makeMachine() -> TxnShard {
    // The limits were validated when the service was configured; defaults are always valid.
    (try? TxnShard(limits: limits)) ?? TxnShard()
  }

  /// The key whose owner holds the decision record of `id`.
  public static func recordKey(for id: TxnID) -> String { "txn-record/\(id)" }

  /// The key whose owner hands out `coordinator`'s transaction numbers.
  public static func numbersKey(for coordinator: NodeID) -> String { "txn-numbers/\(coordinator.rawValue)" }

  /// The key a command concerns, if any.
  public static func routingKey(of command: TxnShardCommand) -> String? {
    switch command {
    case .read(_, let key): return key
    case .prepare(_, let writes, _, _): return writes.first?.key
    case .commitLocal(_, let reads, let writes): return writes.first?.key ?? reads.first
    case .records(let record): return routingKey(of: record)
    case .commit, .abort, .advanceTime: return nil
    }
  }

  /// Every key a command concerns: all of a prepare's writes, and a one-group commit's writes and reads, must
  /// belong to the group it is sent to.
  public static func routingKeys(of command: TxnShardCommand) -> [String] {
    switch command {
    case .prepare(_, let writes, _, _): return writes.map(\.key)
    case .commitLocal(_, let reads, let writes): return writes.map(\.key) + reads
    default: return routingKey(of: command).map { [$0] } ?? []
    }
  }

  /// The key a record command concerns.
  public static func routingKey(of command: TransactionRecordCommand) -> String? {
    switch command {
    case .prepared(let id, _, _), .decide(let id, _, _, _, _), .finished(let id, _): return recordKey(for: id)
    case .reserve(let coordinator, _): return numbersKey(for: coordinator)
    case .advanceTime, .clock: return nil
    }
  }

  /// The key a query concerns, if any.
  public static func routingKey(of query: TxnShardQuery) -> String? {
    switch query {
    case .get(let key): return key
    case .records(.record(let id)): return recordKey(for: id)
    case .status, .inDoubt, .records, .counts: return nil
    }
  }
}
