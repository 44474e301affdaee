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
  /// A membership change: the complete resulting ``QuorumCore/Membership``, encoded. It takes effect as soon as it is in
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
