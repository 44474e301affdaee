public import QuorumCore

/// A request from a client to a server hosting consensus groups. Every request names its group; service
/// requests also name the service within the group.
///
/// Any member may receive any request. One that needs a group's leader and reaches another member is answered
/// with ``HostError/consensus(_:)`` `notLeader`, naming the leader and its address, so the client can follow the
/// redirect; one for a key another group owns is answered ``HostError/wrongGroup(key:service:owner:)``.
public enum HostRequest: Sendable, Equatable, WireCodable, CustomStringConvertible {
  /// Open an exactly-once session in `group` (a session covers every service of the group).
  case registerSession(group: GroupID)
  /// Apply a service command, exactly once if `request` is given.
  case command(group: GroupID, ServiceCommand, request: RequestID?, acknowledgedThrough: UInt64)
  /// Read from a service at a consistency, from a state including at least log position `atLeast`.
  case query(group: GroupID, service: String, payload: [UInt8], consistency: ReadConsistency, atLeast: UInt64)
  /// Report the status of `group`, or of every group this member hosts.
  case status(group: GroupID?)
  /// Change `group`'s membership by one operation.
  case membership(group: GroupID, MembershipOperation)
  /// Hand `group`'s leadership to a member.
  case transferLeadership(group: GroupID, to: NodeID)
  /// Send the cluster map (members, groups, placement).
  case clusterMap
  /// Wait (at most `timeoutMillis`) for notifications of `service` in `group` watched by `key`, produced by entries
  /// after position `after`; the answer is every such notification the member holds, none at the timeout, or at
  /// once none and a position past `after` when some of them may be missing (see
  /// ``HostReply/notifications(_:index:)``).
  case watch(group: GroupID, service: String, key: String, after: UInt64, timeoutMillis: UInt64)

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .registerSession(let group):
      writer.writeByte(1)
      group.encode(to: &writer)
    case .command(let group, let command, let request, let acknowledged):
      writer.writeByte(2)
      group.encode(to: &writer)
      command.encode(to: &writer)
      writer.writeOptional(request)
      writer.writeVarint(acknowledged)
    case .query(let group, let service, let payload, let consistency, let atLeast):
      writer.writeByte(3)
      group.encode(to: &writer)
      writer.writeString(service)
      writer.writeBytes(payload)
      consistency.encode(to: &writer)
      writer.writeVarint(atLeast)
    case .status(let group):
      writer.writeByte(4)
      writer.writeOptional(group)
    case .membership(let group, let operation):
      writer.writeByte(5)
      group.encode(to: &writer)
      operation.encode(to: &writer)
    case .transferLeadership(let group, let target):
      writer.writeByte(6)
      group.encode(to: &writer)
      target.encode(to: &writer)
    case .clusterMap:
      writer.writeByte(7)
    case .watch(let group, let service, let key, let after, let timeout):
      writer.writeByte(8)
      group.encode(to: &writer)
      writer.writeString(service)
      writer.writeString(key)
      writer.writeVarint(after)
      writer.writeVarint(timeout)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 1: self = .registerSession(group: try reader.read())
    case 2:
      self = .command(
        group: try reader.read(), try reader.read(ServiceCommand.self, field: "command"),
        request: try reader.readOptional(RequestID.self), acknowledgedThrough: try reader.readVarint())
    case 3:
      self = .query(
        group: try reader.read(), service: try reader.readString(), payload: try reader.readBytes(),
        consistency: try reader.read(), atLeast: try reader.readVarint())
    case 4: self = .status(group: try reader.readOptional(GroupID.self))
    case 5: self = .membership(group: try reader.read(), try reader.read(MembershipOperation.self))
    case 6: self = .transferLeadership(group: try reader.read(), to: try reader.read())
    case 7: self = .clusterMap
    case 8:
      self = .watch(
        group: try reader.read(), service: try reader.readString(), key: try reader.readString(),
        after: try reader.readVarint(), timeoutMillis: try reader.readVarint())
    case let tag: throw WireError(.unknownTag(type: "HostRequest", tag: UInt64(tag)), at: at)
    }
  }

  /// The least role a client needs for this request: ``QuorumCore/ClientRole/read`` for the cluster map,
  /// status, queries and watches; ``QuorumCore/ClientRole/write`` for sessions and service commands (puts,
  /// deletes, locks, transactions); ``QuorumCore/ClientRole/admin`` for membership changes and leadership
  /// transfer.
  public var neededRole: ClientRole {
    switch self {
    case .clusterMap, .status, .query, .watch: return .read
    case .registerSession, .command: return .write
    case .membership, .transferLeadership: return .admin
    }
  }

  /// The group the request is for, if it is for one.
  public var group: GroupID? {
    switch self {
    case .registerSession(let g), .command(let g, _, _, _), .query(let g, _, _, _, _), .membership(let g, _),
      .transferLeadership(let g, _), .watch(let g, _, _, _, _):
      return g
    case .status(let g): return g
    case .clusterMap: return nil
    }
  }

  public var description: String {
    switch self {
    case .registerSession(let group): return "register-session \(group)"
    case .command(let group, let command, let request, _):
      return "\(group) \(command)\(request.map { " [\($0)]" } ?? "")"
    case .query(let group, let service, _, let consistency, _): return "\(group) \(service) read (\(consistency))"
    case .status(let group): return "status \(group.map(\.description) ?? "all")"
    case .membership(let group, let operation): return "\(group) \(operation)"
    case .transferLeadership(let group, let target): return "\(group) transfer-leadership \(target)"
    case .clusterMap: return "cluster-map"
    case .watch(let group, let service, let key, let after, _): return "\(group) \(service) watch \(key) after \(after)"
    }
  }
}

/// A server's answer to a ``HostRequest``.
public enum HostReply: Sendable, Equatable, WireCodable {
  /// The session opened by ``HostRequest/registerSession(group:)``.
  case session(UInt64)
  /// A service's answer (its encoded response or query result) and the log position it reflects (for reads:
  /// the index applied when the answer was read; for commands: the index the command was applied at).
  case answer([UInt8], index: UInt64)
  /// The notifications a watch found (encoded by their service), oldest first, and the newest one's position
  /// (or the watch's `after` when none came).
  ///
  /// No notifications and a position past the watch's `after` means the watch was **truncated**: notifications
  /// produced after `after`, up to and including `index`, may be missing at this member (it dropped the oldest
  /// to keep its bound, or installed or restarted from a snapshot covering those entries). The client reads the
  /// watched state, then watches after `index`. Members of earlier releases never answer so (they answer `after`
  /// when nothing came), so the form needs no new tag: a client of an earlier release takes it for an empty
  /// answer at a later position, and the lock client of those releases checks its session's state at once.
  case notifications([[UInt8]], index: UInt64)
  /// Status records.
  case statuses([GroupStatus])
  /// A membership change or leadership transfer completed.
  case done
  /// The cluster map.
  case clusterMap(ClusterMap)
  /// The request failed.
  case failure(HostFailure)

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .session(let id):
      writer.writeByte(1)
      writer.writeVarint(id)
    case .answer(let bytes, let index):
      writer.writeByte(2)
      writer.writeBytes(bytes)
      writer.writeVarint(index)
    case .statuses(let statuses):
      writer.writeByte(3)
      writer.writeArray(statuses)
    case .done:
      writer.writeByte(4)
    case .clusterMap(let map):
      writer.writeByte(5)
      map.encode(to: &writer)
    case .failure(let failure):
      writer.writeByte(6)
      failure.encode(to: &writer)
    case .notifications(let payloads, let index):
      writer.writeByte(7)
      writer.writeVarint(UInt64(payloads.count))
      for payload in payloads { writer.writeBytes(payload) }
      writer.writeVarint(index)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 1: self = .session(try reader.readVarint())
    case 2: self = .answer(try reader.readBytes(), index: try reader.readVarint())
    case 3: self = .statuses(try reader.readArray(GroupStatus.self))
    case 4: self = .done
    case 5: self = .clusterMap(try reader.read(ClusterMap.self, field: "clusterMap"))
    case 6: self = .failure(try reader.read(HostFailure.self, field: "failure"))
    case 7:
      let count = try reader.readCount()
      var payloads: [[UInt8]] = []
      for _ in 0..<count { payloads.append(try reader.readBytes()) }
      self = .notifications(payloads, index: try reader.readVarint())
    case let tag: throw WireError(.unknownTag(type: "HostReply", tag: UInt64(tag)), at: at)
    }
  }
}

/// Why a server could not carry out a request.
public enum HostError: Error, Sendable, Equatable, WireCodable, CustomStringConvertible {
  /// The group's consensus engine refused or failed it (`notLeader` names the leader to retry at).
  case consensus(ConsensusError)
  /// No group with this id exists in the cluster.
  case unknownGroup(GroupID)
  /// The group exists but this member does not replicate it; retry at one of its members.
  case notHosted(GroupID, members: [NodeID])
  /// The group does not carry this service.
  case unknownService(String, group: GroupID)
  /// The key belongs to another group: send the request there.
  case wrongGroup(key: String, service: String, owner: GroupID)
  /// The request could not be decoded, or its payload is not the service's.
  case malformed(String)
  /// The client's role does not allow the request: it holds `role` and the request needs `needed`.
  case forbidden(role: ClientRole, needed: ClientRole)
  /// The member's storage occupies more than its space quota: writes are refused until space returns (delete
  /// keys or release locks, which are still accepted; the next snapshot and compaction then free the space).
  case spaceQuotaExceeded(usedBytes: Int, quotaBytes: Int)
  /// The answer would not fit in one frame; ask for less (a scan with a smaller limit, then its continuation).
  case replyTooLarge(bytes: Int, limit: Int)
  /// No group of the cluster carries this service (a client finds this out from the cluster map, before sending
  /// anything); `known` lists the services the cluster's groups do carry.
  case serviceNotCarried(String, known: [String])

  public var description: String {
    switch self {
    case .consensus(let error): return "\(error)"
    case .unknownGroup(let group): return "unknown group \(group)"
    case .notHosted(let group, let members):
      return
        "this member does not replicate \(group) (its members: \(members.map(\.description).joined(separator: ", ")))"
    case .unknownService(let service, let group): return "group \(group) carries no service '\(service)'"
    case .wrongGroup(let key, let service, let owner): return "\(service) key '\(key)' belongs to group \(owner)"
    case .malformed(let why): return "malformed request: \(why)"
    case .forbidden(let role, let needed):
      return "forbidden: the request needs the \(needed) role, the client has \(role)"
    case .spaceQuotaExceeded(let used, let quota):
      return "space quota exceeded: the storage holds \(used) bytes of a \(quota)-byte quota; only reads, deletes "
        + "and releases are accepted until space returns"
    case .replyTooLarge(let bytes, let limit): return "the reply of \(bytes) bytes exceeds the \(limit)-byte limit"
    case .serviceNotCarried(let service, let known):
      return "no group of the cluster carries service '\(service)' (carried: \(known.joined(separator: ", ")))"
    }
  }

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .consensus(let error):
      writer.writeByte(0)
      error.encode(to: &writer)
    case .unknownGroup(let group):
      writer.writeByte(1)
      group.encode(to: &writer)
    case .notHosted(let group, let members):
      writer.writeByte(2)
      group.encode(to: &writer)
      writer.writeArray(members)
    case .unknownService(let service, let group):
      writer.writeByte(3)
      writer.writeString(service)
      group.encode(to: &writer)
    case .wrongGroup(let key, let service, let owner):
      writer.writeByte(4)
      writer.writeString(key)
      writer.writeString(service)
      owner.encode(to: &writer)
    case .malformed(let why):
      writer.writeByte(5)
      writer.writeString(why)
    case .forbidden(let role, let needed):
      writer.writeByte(6)
      writer.writeByte(role.rawValue)
      writer.writeByte(needed.rawValue)
    case .spaceQuotaExceeded(let used, let quota):
      writer.writeByte(7)
      writer.writeVarint(UInt64(max(0, used)))
      writer.writeVarint(UInt64(max(0, quota)))
    case .replyTooLarge(let bytes, let limit):
      writer.writeByte(8)
      writer.writeVarint(UInt64(max(0, bytes)))
      writer.writeVarint(UInt64(max(0, limit)))
    case .serviceNotCarried(let service, let known):
      writer.writeByte(9)
      writer.writeString(service)
      writer.writeArray(known)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .consensus(try reader.read())
    case 1: self = .unknownGroup(try reader.read())
    case 2: self = .notHosted(try reader.read(), members: try reader.readArray(NodeID.self))
    case 3: self = .unknownService(try reader.readString(), group: try reader.read())
    case 4: self = .wrongGroup(key: try reader.readString(), service: try reader.readString(), owner: try reader.read())
    case 5: self = .malformed(try reader.readString())
    case 6: self = .forbidden(role: try Self.readRole(&reader), needed: try Self.readRole(&reader))
    case 7:
      self = .spaceQuotaExceeded(
        usedBytes: Int(clamping: try reader.readVarint()), quotaBytes: Int(clamping: try reader.readVarint()))
    case 8:
      self = .replyTooLarge(
        bytes: Int(clamping: try reader.readVarint()), limit: Int(clamping: try reader.readVarint()))
    case 9: self = .serviceNotCarried(try reader.readString(), known: try reader.readArray(String.self))
    case let tag: throw WireError(.unknownTag(type: "HostError", tag: UInt64(tag)), at: at)
    }
  }
}

extension HostError {
  fileprivate static func readRole(_ reader: inout WireReader) throws(WireError) -> ClientRole {
    let at = reader.position
    let raw = try reader.readByte()
    guard let role = ClientRole(rawValue: raw) else {
      throw WireError(.unknownTag(type: "ClientRole", tag: UInt64(raw)), at: at)
    }
    return role
  }
}

/// A failed request: the error, and the leader's client address when the error is `notLeader`.
public struct HostFailure: Error, Sendable, Equatable, WireCodable, CustomStringConvertible {
  /// What went wrong.
  public var error: HostError
  /// The leader's address (`host:port`), when the error is `notLeader` and the leader is known.
  public var leaderAddress: String?

  /// Creates a failure.
  public init(_ error: HostError, leaderAddress: String? = nil) {
    self.error = error
    self.leaderAddress = leaderAddress
  }

  public func encode(to writer: inout WireWriter) {
    error.encode(to: &writer)
    writer.writeOptional(leaderAddress)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    error = try reader.read()
    leaderAddress = try reader.readOptional(String.self)
  }

  public var description: String {
    error.description + (leaderAddress.map { " at \($0)" } ?? "")
  }
}

/// One peer's replication state as a group's leader sees it.
public struct PeerLag: Sendable, Equatable, WireCodable {
  /// The peer.
  public var node: NodeID
  /// The highest position known replicated (Raft) or chosen (Paxos) on it.
  public var match: UInt64
  /// How many positions it is behind the leader's last.
  public var lag: UInt64
  /// Whether it is a learner.
  public var isLearner: Bool
  /// Whether the leader heard from it recently.
  public var recentlyActive: Bool
  /// Why the leader stopped replicating to it, if it did (for example a refused snapshot).
  public var note: String?

  /// Creates a record.
  public init(node: NodeID, match: UInt64, lag: UInt64, isLearner: Bool, recentlyActive: Bool, note: String? = nil) {
    self.node = node
    self.match = match
    self.lag = lag
    self.isLearner = isLearner
    self.recentlyActive = recentlyActive
    self.note = note
  }

  public func encode(to writer: inout WireWriter) {
    node.encode(to: &writer)
    writer.writeVarint(match)
    writer.writeVarint(lag)
    writer.writeBool(isLearner)
    writer.writeBool(recentlyActive)
    writer.writeOptional(note)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    node = try reader.read()
    match = try reader.readVarint()
    lag = try reader.readVarint()
    isLearner = try reader.readBool()
    recentlyActive = try reader.readBool()
    note = try reader.readOptional(String.self)
  }
}

/// One member's view of one group, as `quorum status` prints it.
///
/// On the wire a record is length-prefixed, and a reader ignores the bytes after the fields it knows: a later
/// build appends its new fields to the record, and this one still reads the rest of a status reply.
public struct GroupStatus: Sendable, Equatable, WireCodable {
  /// The group.
  public var group: GroupID
  /// Its name.
  public var name: String
  /// Its engine.
  public var engine: EngineKind
  /// The member reporting.
  public var node: NodeID
  /// The member's role in the group (`leader`, `follower`, `candidate`, …).
  public var role: String
  /// Its term (Raft) or promised ballot round (Paxos).
  public var epoch: UInt64
  /// The leader it knows of.
  public var leader: NodeID?
  /// The commit index (Raft) or chosen point (Paxos).
  public var commitIndex: UInt64
  /// The position applied to its state machine.
  public var appliedIndex: UInt64
  /// The last position in its log.
  public var lastIndex: UInt64
  /// The newest snapshot's position.
  public var snapshotIndex: UInt64
  /// The voters in force.
  public var voters: [NodeID]
  /// The learners in force.
  public var learners: [NodeID]
  /// Per-peer replication (only when the member leads).
  public var peers: [PeerLag]
  /// Requests waiting for an answer.
  public var pendingRequests: Int
  /// Messages from the group's peers the member dropped as impossible from an honest peer (Raft's
  /// `RaftStatus.refusedMessages`, Multi-Paxos's `MultiPaxosStatus.refusedMessages`) since it started: a count
  /// that grows points at a faulty or incompatible member.
  public var refusedMessages: UInt64

  /// Creates a status record.
  public init(
    group: GroupID, name: String, engine: EngineKind, node: NodeID, role: String, epoch: UInt64, leader: NodeID?,
    commitIndex: UInt64, appliedIndex: UInt64, lastIndex: UInt64, snapshotIndex: UInt64, voters: [NodeID],
    learners: [NodeID], peers: [PeerLag], pendingRequests: Int, refusedMessages: UInt64 = 0
  ) {
    self.group = group
    self.name = name
    self.engine = engine
    self.node = node
    self.role = role
    self.epoch = epoch
    self.leader = leader
    self.commitIndex = commitIndex
    self.appliedIndex = appliedIndex
    self.lastIndex = lastIndex
    self.snapshotIndex = snapshotIndex
    self.voters = voters
    self.learners = learners
    self.peers = peers
    self.pendingRequests = pendingRequests
    self.refusedMessages = refusedMessages
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeLengthPrefixed { encodeFields(to: &$0) }
  }

  private func encodeFields(to writer: inout WireWriter) {
    group.encode(to: &writer)
    writer.writeString(name)
    engine.encode(to: &writer)
    node.encode(to: &writer)
    writer.writeString(role)
    writer.writeVarint(epoch)
    writer.writeOptional(leader)
    writer.writeVarint(commitIndex)
    writer.writeVarint(appliedIndex)
    writer.writeVarint(lastIndex)
    writer.writeVarint(snapshotIndex)
    writer.writeArray(voters)
    writer.writeArray(learners)
    writer.writeArray(peers)
    writer.writeVarint(UInt64(max(0, pendingRequests)))
    writer.writeVarint(refusedMessages)
  }

  public init(from outer: inout WireReader) throws(WireError) {
    let length = try outer.readLength(limit: outer.limits.maxBytesLength)
    var reader = WireReader(outer.bytes, range: outer.position..<(outer.position + length), limits: outer.limits)
    group = try reader.read()
    name = try reader.readString()
    engine = try reader.read()
    node = try reader.read()
    role = try reader.readString()
    epoch = try reader.readVarint()
    leader = try reader.readOptional(NodeID.self)
    commitIndex = try reader.readVarint()
    appliedIndex = try reader.readVarint()
    lastIndex = try reader.readVarint()
    snapshotIndex = try reader.readVarint()
    voters = try reader.readArray(NodeID.self)
    learners = try reader.readArray(NodeID.self)
    peers = try reader.readArray(PeerLag.self)
    pendingRequests = Int(try reader.readVarint(as: UInt32.self))
    refusedMessages = try reader.readVarint()
    // What remains of the record are fields a later build appended: skipped, not refused.
    try outer.skip(length)
  }

  /// Whether the member leads the group.
  public var isLeader: Bool { role == "leader" }
}
