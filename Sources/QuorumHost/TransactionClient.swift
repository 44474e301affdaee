public import QuorumCore
public import QuorumTransactions

/// The `txn` service of a cluster of group hosts as a ``QuorumTransactions/TxnShardChannel``: keys are placed
/// by the cluster map's slots for the `txn` service, commands are exactly-once (the ``HostClient``'s session per
/// group), queries linearizable.
///
/// ``QuorumTransactions/ShardedTransactions`` runs on top of it:
///
/// ```swift
/// let db = ShardedTransactions(client: hostClient, coordinator: 7001)
/// try await db.transaction { tx in
///   let a = try await tx.getString("a") ?? "0"
///   tx.put("b", a)
/// }
/// ```
public struct HostTxnChannel: TxnShardChannel {
  /// The client underneath (shared with other services' clients).
  public let client: HostClient

  /// A channel over `client`.
  public init(_ client: HostClient) { self.client = client }

  public func group(for key: String) async throws -> GroupID {
    try await client.group(for: key, service: TxnShardService.name)
  }

  /// - Throws: ``QuorumTransactions/TxnShardRejection`` for a command the group certainly did not apply and would
  ///   refuse again (``QuorumClientError/rejected(_:)`` and ``QuorumClientError/refused(_:)``); the client's other
  ///   errors as they are — among them ``HostError/replyTooLarge(bytes:limit:)``, a reply replaced after the
  ///   command was applied: its effect is unknown to the client, as for a lost answer.
  public func command(_ command: TxnShardCommand, group: GroupID) async throws -> TxnShardResponse {
    let bytes: [UInt8]
    do {
      bytes = try await client.command(command.wireBytes(), service: TxnShardService.name, group: group)
    } catch QuorumClientError.rejected(let error) where !Self.isAfterApplying(error) {
      throw TxnShardRejection("\(error)")
    } catch QuorumClientError.refused(let why) {
      throw TxnShardRejection(why)
    }
    do {
      return try TxnShardResponse(wireBytes: bytes)
    } catch {
      throw QuorumClientError.badReply("\(error)")
    }
  }

  /// Whether the group produced `error` after applying the command: the command took effect.
  static func isAfterApplying(_ error: HostError) -> Bool {
    if case .replyTooLarge = error { return true }
    return false
  }

  public func query(_ query: TxnShardQuery, group: GroupID) async throws -> TxnShardQueryResult {
    let (bytes, _) = try await client.query(query.wireBytes(), service: TxnShardService.name, group: group)
    do {
      return try TxnShardQueryResult(wireBytes: bytes)
    } catch {
      throw QuorumClientError.badReply("\(error)")
    }
  }

  /// The groups carrying the `txn` service.
  public func groups() async throws -> [GroupID] { try await client.groups(carrying: TxnShardService.name) }
}

extension ShardedTransactions {
  /// Transactions over the `txn` service of the cluster `client` talks to, this client acting as coordinator
  /// `coordinator`.
  ///
  /// Transaction numbers are reserved durably in the cluster (per coordinator), so identifiers never repeat, even
  /// across restarts. A record table remembers the numbers of at most
  /// ``QuorumTransactions/TransactionRecordLimits/maxCoordinators`` coordinators and forgets the least used past
  /// that, safely (a forgotten coordinator continues above every number it forgot), so a fresh identifier per
  /// process is fine.
  /// - Parameters:
  ///   - client: the cluster's client (deadlines, retries, sessions).
  ///   - coordinator: this client's identity as a coordinator, distinct from the other clients'.
  ///   - seed: seeds the back-off jitter.
  public init(client: HostClient, coordinator: NodeID, seed: UInt64 = 1) {
    self.init(channel: HostTxnChannel(client), options: ShardedTransactionOptions(coordinator: coordinator), seed: seed)
  }
}
