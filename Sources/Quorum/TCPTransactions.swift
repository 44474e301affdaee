public import QuorumCore
public import QuorumTransactions

extension TCPClient {
  /// Serializable transactions over the cluster's `txn` service, through this client's connections, this client
  /// acting as their coordinator (two-phase commit with the decision recorded in the cluster, so a client that
  /// dies mid-commit blocks nothing: the groups' leaders finish what it left).
  ///
  /// ```swift
  /// let client = TCPClient(
  ///   cluster: "bank", members: [TCPAddress("127.0.0.1:7001")!],
  ///   credential: try TCPClientCredential(name: "teller", secretFile: "teller.key"))
  /// let db = client.transactions(coordinator: 7001)
  /// try await db.transaction { tx in
  ///   let a = Int(try await tx.getString("alice") ?? "0") ?? 0
  ///   let b = Int(try await tx.getString("bob") ?? "0") ?? 0
  ///   tx.put("alice", String(a - 10))
  ///   tx.put("bob", String(b + 10))
  /// }
  /// ```
  ///
  /// A transaction whose commit answer was lost throws
  /// ``QuorumTransactions/ShardedTransactionError/outcomeUnknown(_:groups:)``; look it up with
  /// ``QuorumTransactions/ShardedTransactions/outcome(of:groups:)``.
  /// - Parameters:
  ///   - coordinator: this client's coordinator identity, distinct from other clients' (`nil`: a random one; the
  ///     record tables remember a bounded number of coordinators and forget the others safely, see
  ///     ``QuorumTransactions/ShardedTransactions/init(client:coordinator:seed:)``).
  ///   - seed: seeds the back-off jitter.
  public func transactions(coordinator: NodeID? = nil, seed: UInt64 = 1) -> ShardedTransactions {
    ShardedTransactions(client: host, coordinator: coordinator ?? .randomCoordinator(), seed: seed)
  }
}
