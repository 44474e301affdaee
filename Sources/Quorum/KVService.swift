/// Serves the client protocol for one member: decodes each ``ClientRequest`` that arrives on the member's
/// TCP listener, carries it out on the member's `RaftNode<KVStore>`, and replies with a ``ClientReply``.
///
/// A follower answers leader-only requests with ``ClientFailure`` `notLeader`, naming the leader and its
/// address from the transport's address book: the client follows that redirect. Exactly-once execution is
/// the node's (sessions are part of the replicated state), so a client that retries a write with the same
/// `RequestID` on another member after a failure has it applied once.
public struct KVService: Sendable {
  /// The member's Raft node.
  public let node: RaftNode<KVStore>
  private let addressOf: @Sendable (NodeID) -> TCPAddress?
  private let addresses: @Sendable () -> [NodeID: TCPAddress]
  private let logger: QuorumLogger

  /// Creates a service for `node`, redirecting clients with the addresses of `transport`.
  public init(node: RaftNode<KVStore>, transport: TCPTransport<RaftMessage>, logger: QuorumLogger = .disabled) {
    self.node = node
    self.addressOf = { transport.address(of: $0) }
    self.addresses = { transport.addresses }
    self.logger = logger
  }

  /// Answers requests from `requests` until it is closed and drained; each request runs in its own child
  /// task, so a slow write never holds up a read. Returns when every request taken has been answered.
  public func serve(_ requests: Mailbox<TCPRequest>) async {
    await withDiscardingTaskGroup { group in
      var batch: [TCPRequest] = []
      while await requests.receive(into: &batch, limit: 256) {
        for request in batch {
          group.addTask {
            let reply: ClientReply
            do {
              reply = await handle(try ClientRequest(wireBytes: request.body))
            } catch {
              logger.warning("undecodable client request from \(request.remote): \(error)")
              reply = .failure(ClientFailure(.stopped, detail: "undecodable request: \(error)"))
            }
            request.respond(reply.wireBytes(reservingCapacity: 64))
          }
        }
        batch.removeAll(keepingCapacity: true)
      }
    }
  }

  /// Carries out one request.
  public func handle(_ request: ClientRequest) async -> ClientReply {
    do {
      switch request {
      case .registerSession:
        return .session(try await node.registerSession())
      case .command(let command, let id, let acknowledged):
        return .response(try await node.propose(command, request: id, acknowledgedThrough: acknowledged))
      case .query(let query, let consistency):
        return .queryResult(try await node.read(query, consistency: consistency))
      case .status:
        return .status(await status())
      case .membership(let operation):
        try await node.changeMembership(.change([operation]))
        return .done
      case .transferLeadership(let target):
        try await node.transferLeadership(to: target)
        return .done
      }
    } catch let error as ConsensusError {
      if case .notLeader(let hint?) = error {
        return .failure(ClientFailure(error, leaderAddress: addressOf(hint)))
      }
      return .failure(ClientFailure(error))
    } catch {
      return .failure(ClientFailure(.stopped, detail: "\(error)"))
    }
  }

  /// The member's status record.
  public func status() async -> MemberStatus {
    let s = await node.status
    let peers = s.peers.keys.sorted().compactMap { id -> PeerLag? in
      guard let progress = s.peers[id] else { return nil }
      return PeerLag(
        node: id, match: progress.match, lag: s.lastIndex > progress.match ? s.lastIndex - progress.match : 0,
        isLearner: progress.isLearner, recentlyActive: progress.recentlyActive)
    }
    return MemberStatus(
      node: s.id, role: s.role.rawValue, term: s.term, leader: s.leader, commitIndex: s.commitIndex,
      appliedIndex: s.appliedIndex, lastIndex: s.lastIndex, voters: s.membership.voters.sorted(),
      learners: s.membership.learners.sorted(), peers: peers, addresses: addresses())
  }
}
