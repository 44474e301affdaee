public import QuorumCore
public import QuorumStorage

/// A Raft term: a number that increases with every election. At most one leader exists per term.
public typealias Term = UInt64

/// A position in the replicated log, starting at 1. Index 0 means "before the first entry".
public typealias LogIndex = UInt64

/// What an entry carries.
public enum EntryKind: UInt8, Sendable, Equatable {
  /// An application command (opaque bytes for the state machine).
  case command = 0
  /// The empty entry a new leader appends to commit entries of earlier terms (Raft §5.4.2, §8).
  case noop = 1
  /// A membership change: the complete resulting ``Membership``, encoded. It takes effect as soon as it is in
  /// a node's log, committed or not (§6); carrying the whole membership lets a node recompute it when a
  /// conflicting suffix is truncated.
  case membership = 2
}

/// One entry of the replicated log.
public struct LogEntry: Sendable, Equatable, StorableEntry, CustomStringConvertible {
  /// The entry's position.
  public var index: LogIndex
  /// The term in which a leader created the entry.
  public var term: Term
  /// What the entry carries.
  public var kind: EntryKind
  /// The payload: a command's bytes, or an encoded membership change; empty for a no-op.
  public var data: [UInt8]

  /// Creates an entry.
  public init(index: LogIndex, term: Term, kind: EntryKind = .command, data: [UInt8] = []) {
    self.index = index
    self.term = term
    self.kind = kind
    self.data = data
  }

  /// Bytes the entry counts for in flow control (payload plus a fixed overhead).
  @inlinable public var byteSize: Int { data.count + 16 }

  public func encode(to writer: inout WireWriter) {
    writer.writeVarint(index)
    writer.writeVarint(term)
    writer.writeByte(kind.rawValue)
    writer.writeBytes(data)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    index = try reader.readVarint()
    term = try reader.readVarint()
    let tagOffset = reader.position
    let tag = try reader.readByte()
    guard let kind = EntryKind(rawValue: tag) else {
      throw WireError(.unknownTag(type: "EntryKind", tag: UInt64(tag)), at: tagOffset)
    }
    self.kind = kind
    data = try reader.readBytes()
  }

  public var description: String { "\(index)@\(term)\(kind == .command ? "" : "[\(kind)]")" }
}

/// The state a node must make durable before it sends any message that depends on it (Raft Figure 2:
/// `currentTerm` and `votedFor`), plus the commit index so a restart re-applies less.
public struct HardState: Sendable, Equatable, WireCodable, CustomStringConvertible {
  /// The latest term the node has seen.
  public var term: Term
  /// Whom the node voted for in ``term``, or `NodeID.none`.
  public var vote: NodeID
  /// The highest index the node knows to be committed.
  public var commit: LogIndex

  /// Creates a hard state.
  public init(term: Term = 0, vote: NodeID = .none, commit: LogIndex = 0) {
    self.term = term
    self.vote = vote
    self.commit = commit
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeVarint(term)
    writer.writeVarint(vote.rawValue)
    writer.writeVarint(commit)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    term = try reader.readVarint()
    vote = NodeID(rawValue: try reader.readVarint())
    commit = try reader.readVarint()
  }

  public var description: String { "term=\(term) vote=\(vote) commit=\(commit)" }
}

/// Why a node's recovered durable state cannot be trusted: restarting from it could apply entries that were
/// never committed. The node must not start; an operator has to look at (or replace) its data directory.
public enum RaftRecoveryError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The recovered hard state's commit index is beyond the recovered log and snapshot: the hard state was
  /// made durable without the entries it covers (storage wrote them out of order, or lost some).
  case commitBeyondLog(commit: LogIndex, lastIndex: LogIndex)
  /// The recovered entries do not follow the snapshot (or each other) without a gap.
  case logGap(after: LogIndex, next: LogIndex)

  public var description: String {
    switch self {
    case .commitBeyondLog(let commit, let lastIndex):
      return "the recovered commit index \(commit) is beyond the recovered log, which ends at \(lastIndex)"
    case .logGap(let after, let next):
      return "the recovered log has a gap: entry \(next) follows position \(after)"
    }
  }
}

/// The members of a Raft group and their roles, possibly in a joint configuration (Raft §6).
///
/// While ``outgoingVoters`` is non-empty the group is in the joint configuration C(old,new): elections and
/// commitment need separate majorities of ``voters`` (the new set) and ``outgoingVoters`` (the old set).
public struct Membership: Sendable, Equatable, Hashable, WireCodable, CustomStringConvertible {
  /// Voting members (in a joint configuration: the incoming set).
  public var voters: Set<NodeID>
  /// The outgoing voting set of a joint configuration; empty otherwise.
  public var outgoingVoters: Set<NodeID>
  /// Non-voting members: they receive the log but neither vote nor count towards commitment.
  public var learners: Set<NodeID>
  /// Outgoing voters that become learners when the joint configuration is left (demotions).
  public var learnersNext: Set<NodeID>

  /// Creates a membership.
  public init(
    voters: Set<NodeID>, outgoingVoters: Set<NodeID> = [], learners: Set<NodeID> = [],
    learnersNext: Set<NodeID> = []
  ) {
    self.voters = voters
    self.outgoingVoters = outgoingVoters
    self.learners = learners
    self.learnersNext = learnersNext
  }

  /// An empty membership (a node waiting to be added to an existing group).
  public static let empty = Membership(voters: [])

  /// Whether this is a joint configuration.
  public var isJoint: Bool { !outgoingVoters.isEmpty }

  /// Whether `node` votes in either half.
  public func isVoter(_ node: NodeID) -> Bool { voters.contains(node) || outgoingVoters.contains(node) }

  /// Every member: voters of both halves and learners.
  public var allMembers: Set<NodeID> { voters.union(outgoingVoters).union(learners).union(learnersNext) }

  /// Every voter of either half.
  public var allVoters: Set<NodeID> { voters.union(outgoingVoters) }

  public func encode(to writer: inout WireWriter) {
    for set in [voters, outgoingVoters, learners, learnersNext] {
      writer.writeArray(set.sorted())
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    voters = Set(try reader.readArray(NodeID.self))
    outgoingVoters = Set(try reader.readArray(NodeID.self))
    learners = Set(try reader.readArray(NodeID.self))
    learnersNext = Set(try reader.readArray(NodeID.self))
  }

  public var description: String {
    func list(_ s: Set<NodeID>) -> String { s.sorted().map(\.description).joined(separator: ",") }
    var text = "voters=[\(list(voters))]"
    if isJoint { text += " outgoing=[\(list(outgoingVoters))]" }
    if !learners.isEmpty { text += " learners=[\(list(learners))]" }
    if !learnersNext.isEmpty { text += " learnersNext=[\(list(learnersNext))]" }
    return text
  }
}

/// One step of a membership change.
public enum MembershipOperation: Sendable, Equatable, Hashable, WireCodable, CustomStringConvertible {
  /// Make `node` a voter (adds a new node, or promotes a learner).
  case addVoter(NodeID)
  /// Make `node` a learner (adds a new node, or demotes a voter).
  case addLearner(NodeID)
  /// Remove `node` from the group.
  case remove(NodeID)

  /// The node the operation concerns.
  public var node: NodeID {
    switch self {
    case .addVoter(let n), .addLearner(let n), .remove(let n): return n
    }
  }

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .addVoter(let n):
      writer.writeByte(0)
      writer.write(n)
    case .addLearner(let n):
      writer.writeByte(1)
      writer.write(n)
    case .remove(let n):
      writer.writeByte(2)
      writer.write(n)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .addVoter(try reader.read())
    case 1: self = .addLearner(try reader.read())
    case 2: self = .remove(try reader.read())
    case let tag: throw WireError(.unknownTag(type: "MembershipOperation", tag: UInt64(tag)), at: at)
    }
  }

  public var description: String {
    switch self {
    case .addVoter(let n): return "add-voter \(n)"
    case .addLearner(let n): return "add-learner \(n)"
    case .remove(let n): return "remove \(n)"
    }
  }
}

/// A membership change as written in the log: either operations that enter a new configuration, or the
/// instruction to leave a joint configuration.
public enum MembershipChange: Sendable, Equatable, WireCodable, CustomStringConvertible {
  /// Apply these operations. Changes that alter the voters enter a joint configuration, which the leader
  /// leaves automatically once it is committed.
  case change([MembershipOperation])
  /// Leave the current joint configuration.
  case leaveJoint

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .change(let ops):
      writer.writeByte(0)
      writer.writeArray(ops)
    case .leaveJoint:
      writer.writeByte(1)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .change(try reader.readArray(MembershipOperation.self))
    case 1: self = .leaveJoint
    case let tag: throw WireError(.unknownTag(type: "MembershipChange", tag: UInt64(tag)), at: at)
    }
  }

  public var description: String {
    switch self {
    case .change(let ops): return ops.map(\.description).joined(separator: ", ")
    case .leaveJoint: return "leave-joint"
    }
  }
}

/// Why a membership change cannot be applied.
public struct MembershipError: Error, Sendable, Equatable, CustomStringConvertible {
  /// What is wrong.
  public var reason: String
  /// Creates an error.
  public init(_ reason: String) { self.reason = reason }
  public var description: String { reason }
}

extension Membership {
  /// The membership after `change`, or an error saying why the change is invalid here.
  public func applying(_ change: MembershipChange) throws(MembershipError) -> Membership {
    switch change {
    case .leaveJoint:
      guard isJoint else { throw MembershipError("not in a joint configuration") }
      var next = self
      next.outgoingVoters = []
      next.learners.formUnion(learnersNext)
      next.learnersNext = []
      return next
    case .change(let ops):
      guard !isJoint else { throw MembershipError("a joint configuration must be left before another change") }
      guard !ops.isEmpty else { throw MembershipError("empty change") }
      guard Set(ops.map(\.node)).count == ops.count else {
        throw MembershipError("a node appears more than once in one change")
      }
      var next = self
      for op in ops {
        guard op.node != .none else { throw MembershipError("node id 0 is reserved") }
        switch op {
        case .addVoter(let n):
          next.learners.remove(n)
          next.voters.insert(n)
        case .addLearner(let n):
          if next.voters.contains(n) {
            next.voters.remove(n)
            next.learnersNext.insert(n)
          } else {
            next.learners.insert(n)
          }
        case .remove(let n):
          guard allMembers.contains(n) else { throw MembershipError("\(n) is not a member") }
          next.voters.remove(n)
          next.learners.remove(n)
        }
      }
      guard !next.voters.isEmpty else { throw MembershipError("the change would leave no voters") }
      if next.voters != voters {
        next.outgoingVoters = voters
      } else {
        // Only learners changed: no joint phase is needed, demotions cannot happen without a voter change.
        next.learners.formUnion(next.learnersNext)
        next.learnersNext = []
      }
      return next
    }
  }
}
