/// A request from a client to a cluster member, carried over TCP with protocol number
/// ``QuorumCore/WireProtocol/client`` (see `TCPRequestClient` and `TCPEndpoint.requests`).
///
/// Every request may be sent to any member. One that needs the leader and reaches a follower is answered
/// with ``ClientFailure`` `notLeader`, naming the leader and its address, so the client can follow the
/// redirect.
public enum ClientRequest: Sendable, Equatable, WireCodable, CustomStringConvertible {
  /// Open an exactly-once session.
  case registerSession
  /// Apply a key-value command, exactly once if `request` is given.
  case command(KVCommand, request: RequestID?, acknowledgedThrough: UInt64)
  /// Read at the given consistency (`stale` reads are answered by any member).
  case query(KVQuery, consistency: ReadConsistency)
  /// Report the member's view of the cluster.
  case status
  /// Change the membership (add a learner, promote to voter, remove).
  case membership(MembershipOperation)
  /// Hand leadership to a member.
  case transferLeadership(NodeID)

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .registerSession:
      writer.writeByte(1)
    case .command(let command, let request, let acknowledged):
      writer.writeByte(2)
      command.encode(to: &writer)
      writer.writeOptional(request)
      writer.writeVarint(acknowledged)
    case .query(let query, let consistency):
      writer.writeByte(3)
      query.encode(to: &writer)
      consistency.encode(to: &writer)
    case .status:
      writer.writeByte(4)
    case .membership(let operation):
      writer.writeByte(5)
      operation.encode(to: &writer)
    case .transferLeadership(let node):
      writer.writeByte(6)
      node.encode(to: &writer)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 1: self = .registerSession
    case 2:
      self = .command(
        try reader.read(KVCommand.self, field: "command"), request: try reader.readOptional(RequestID.self),
        acknowledgedThrough: try reader.readVarint())
    case 3: self = .query(try KVQuery(from: &reader), consistency: try ReadConsistency(from: &reader))
    case 4: self = .status
    case 5: self = .membership(try reader.read(MembershipOperation.self, field: "membership"))
    case 6: self = .transferLeadership(try reader.read(NodeID.self))
    case let tag: throw WireError(.unknownTag(type: "ClientRequest", tag: UInt64(tag)), at: at)
    }
  }

  public var description: String {
    switch self {
    case .registerSession: return "register-session"
    case .command(let command, let request, _): return "\(command)\(request.map { " [\($0)]" } ?? "")"
    case .query(let query, let consistency): return "\(query) (\(consistency))"
    case .status: return "status"
    case .membership(let operation): return "\(operation)"
    case .transferLeadership(let node): return "transfer-leadership \(node)"
    }
  }
}

/// A member's answer to a ``ClientRequest``.
public enum ClientReply: Sendable, Equatable, WireCodable {
  /// The session opened by ``ClientRequest/registerSession``.
  case session(UInt64)
  /// The result of a command.
  case response(KVResponse)
  /// The result of a query.
  case queryResult(KVQueryResult)
  /// The member's status.
  case status(MemberStatus)
  /// A membership change or leadership transfer completed.
  case done
  /// The request failed.
  case failure(ClientFailure)

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .session(let id):
      writer.writeByte(1)
      writer.writeVarint(id)
    case .response(let response):
      writer.writeByte(2)
      response.encode(to: &writer)
    case .queryResult(let result):
      writer.writeByte(3)
      result.encode(to: &writer)
    case .status(let status):
      writer.writeByte(4)
      status.encode(to: &writer)
    case .done:
      writer.writeByte(5)
    case .failure(let failure):
      writer.writeByte(6)
      failure.encode(to: &writer)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 1: self = .session(try reader.readVarint())
    case 2: self = .response(try reader.read(KVResponse.self, field: "response"))
    case 3: self = .queryResult(try KVQueryResult(from: &reader))
    case 4: self = .status(try reader.read(MemberStatus.self, field: "status"))
    case 5: self = .done
    case 6: self = .failure(try reader.read(ClientFailure.self, field: "failure"))
    case let tag: throw WireError(.unknownTag(type: "ClientReply", tag: UInt64(tag)), at: at)
    }
  }
}

/// Why a member could not carry out a request, with the redirect a client needs.
public struct ClientFailure: Error, Sendable, Equatable, WireCodable, CustomStringConvertible {
  /// What went wrong, as the consensus engine reported it (`notLeader` carries the leader's id).
  public var error: ConsensusError
  /// The leader's client address, when the error is `notLeader` and the leader is known.
  public var leaderAddress: TCPAddress?
  /// A request the member could not decode, or another error that is not a ``QuorumCore/ConsensusError``.
  public var detail: String?

  /// Creates a failure.
  public init(_ error: ConsensusError, leaderAddress: TCPAddress? = nil, detail: String? = nil) {
    self.error = error
    self.leaderAddress = leaderAddress
    self.detail = detail
  }

  public func encode(to writer: inout WireWriter) {
    error.encode(to: &writer)
    writer.writeOptional(leaderAddress?.description)
    writer.writeOptional(detail)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    error = try ConsensusError(from: &reader)
    let at = reader.position
    if let text = try reader.readOptional(String.self) {
      guard let address = TCPAddress(text) else { throw WireError(.invalidValue("address \(text)"), at: at) }
      leaderAddress = address
    } else {
      leaderAddress = nil
    }
    detail = try reader.readOptional(String.self)
  }

  public var description: String {
    var text = error.description
    if let leaderAddress { text += " at \(leaderAddress)" }
    if let detail { text += ": \(detail)" }
    return text
  }
}

/// One peer's replication state as the leader sees it.
public struct PeerLag: Sendable, Equatable, WireCodable {
  /// The peer.
  public var node: NodeID
  /// The highest index known replicated on it.
  public var match: UInt64
  /// How many entries it is behind the leader's last index.
  public var lag: UInt64
  /// Whether it is a learner.
  public var isLearner: Bool
  /// Whether the leader heard from it recently.
  public var recentlyActive: Bool

  /// Creates a record.
  public init(node: NodeID, match: UInt64, lag: UInt64, isLearner: Bool, recentlyActive: Bool) {
    self.node = node
    self.match = match
    self.lag = lag
    self.isLearner = isLearner
    self.recentlyActive = recentlyActive
  }

  public func encode(to writer: inout WireWriter) {
    node.encode(to: &writer)
    writer.writeVarint(match)
    writer.writeVarint(lag)
    writer.writeBool(isLearner)
    writer.writeBool(recentlyActive)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    node = try reader.read()
    match = try reader.readVarint()
    lag = try reader.readVarint()
    isLearner = try reader.readBool()
    recentlyActive = try reader.readBool()
  }
}

/// A member's view of the cluster, as `quorum status` prints it.
public struct MemberStatus: Sendable, Equatable, WireCodable {
  /// The member.
  public var node: NodeID
  /// `leader`, `follower`, `candidate` or `preCandidate`.
  public var role: String
  /// Its current term.
  public var term: UInt64
  /// The leader it knows of.
  public var leader: NodeID?
  /// Its commit index.
  public var commitIndex: UInt64
  /// The index applied to its state machine.
  public var appliedIndex: UInt64
  /// The last index in its log.
  public var lastIndex: UInt64
  /// The voters in force.
  public var voters: [NodeID]
  /// The learners in force.
  public var learners: [NodeID]
  /// Per-peer replication (only when the member is leader).
  public var peers: [PeerLag]
  /// The member's address book.
  public var addresses: [NodeID: TCPAddress]

  /// Creates a status record.
  public init(
    node: NodeID, role: String, term: UInt64, leader: NodeID?, commitIndex: UInt64, appliedIndex: UInt64,
    lastIndex: UInt64, voters: [NodeID], learners: [NodeID], peers: [PeerLag], addresses: [NodeID: TCPAddress]
  ) {
    self.node = node
    self.role = role
    self.term = term
    self.leader = leader
    self.commitIndex = commitIndex
    self.appliedIndex = appliedIndex
    self.lastIndex = lastIndex
    self.voters = voters
    self.learners = learners
    self.peers = peers
    self.addresses = addresses
  }

  public func encode(to writer: inout WireWriter) {
    node.encode(to: &writer)
    writer.writeString(role)
    writer.writeVarint(term)
    writer.writeOptional(leader)
    writer.writeVarint(commitIndex)
    writer.writeVarint(appliedIndex)
    writer.writeVarint(lastIndex)
    writer.writeArray(voters)
    writer.writeArray(learners)
    writer.writeArray(peers)
    let sorted = addresses.keys.sorted()
    writer.writeVarint(UInt64(sorted.count))
    for node in sorted {
      node.encode(to: &writer)
      writer.writeString(addresses[node]?.description ?? "")
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    node = try reader.read()
    role = try reader.readString()
    term = try reader.readVarint()
    leader = try reader.readOptional(NodeID.self)
    commitIndex = try reader.readVarint()
    appliedIndex = try reader.readVarint()
    lastIndex = try reader.readVarint()
    voters = try reader.readArray(NodeID.self)
    learners = try reader.readArray(NodeID.self)
    peers = try reader.readArray(PeerLag.self)
    let count = try reader.readCount()
    var addresses: [NodeID: TCPAddress] = [:]
    for _ in 0..<count {
      let node = try reader.read(NodeID.self)
      let at = reader.position
      let text = try reader.readString()
      guard let address = TCPAddress(text) else { throw WireError(.invalidValue("address \(text)"), at: at) }
      addresses[node] = address
    }
    self.addresses = addresses
  }
}
