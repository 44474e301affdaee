public import QuorumCore

/// A Raft peer message. Every message carries the sender's term.
public enum RaftMessage: Sendable, Equatable, WireCodable, CustomStringConvertible {
  /// RequestVote (§5.2), or its pre-vote probe (thesis §9.6).
  case requestVote(RequestVote)
  /// The reply to a vote or pre-vote request.
  case voteResponse(VoteResponse)
  /// AppendEntries with entries (§5.3).
  case appendEntries(AppendEntries)
  /// The reply to AppendEntries or to a completed snapshot.
  case appendResponse(AppendResponse)
  /// An empty AppendEntries that keeps followers from starting elections and confirms leadership for reads.
  case heartbeat(Heartbeat)
  /// The reply to a heartbeat.
  case heartbeatResponse(HeartbeatResponse)
  /// One chunk of InstallSnapshot (§7).
  case installSnapshot(InstallSnapshot)
  /// The reply to a snapshot chunk.
  case snapshotResponse(SnapshotResponse)
  /// Tells the leadership-transfer target to start an election at once (thesis §3.10).
  case timeoutNow(term: Term)

  /// The sender's term.
  public var term: Term {
    switch self {
    case .requestVote(let m): return m.term
    case .voteResponse(let m): return m.term
    case .appendEntries(let m): return m.term
    case .appendResponse(let m): return m.term
    case .heartbeat(let m): return m.term
    case .heartbeatResponse(let m): return m.term
    case .installSnapshot(let m): return m.term
    case .snapshotResponse(let m): return m.term
    case .timeoutNow(let term): return term
    }
  }

  /// The bound on terms (2^63 − 1): a message's term must lie below it, and one at or above it is refused. Terms
  /// grow by one per election, so an honest group needs centuries at a million elections a second to come near
  /// it. Without a bound a term near `UInt64.max` from a faulty peer would leave no term to campaign in (the next
  /// election's `term + 1` would overflow); and were a term at the bound accepted, a faulty peer sending one would
  /// leave every honest node's next term above the bound, refused by everyone, so the group could never elect
  /// again. A faulty peer can still send a term just below it, as it can disturb the group in many other ways:
  /// Raft tolerates crashes, not lies.
  public static let maxTerm: Term = .max / 2

  /// Why no honest peer sends this message, or `nil`: its term is at or above ``maxTerm``. Its decoder refuses
  /// such a message, and ``RaftCore`` drops one that was never encoded.
  public var malformation: String? {
    term >= Self.maxTerm ? "term \(term) at or above the bound \(Self.maxTerm)" : nil
  }

  /// Bytes the message counts for in flow control.
  public var byteSize: Int {
    switch self {
    case .appendEntries(let m): return 32 + m.entries.reduce(0) { $0 + $1.byteSize }
    case .installSnapshot(let m): return 48 + m.chunk.count
    default: return 32
    }
  }

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .requestVote(let m):
      writer.writeByte(1)
      m.encode(to: &writer)
    case .voteResponse(let m):
      writer.writeByte(2)
      m.encode(to: &writer)
    case .appendEntries(let m):
      writer.writeByte(3)
      m.encode(to: &writer)
    case .appendResponse(let m):
      writer.writeByte(4)
      m.encode(to: &writer)
    case .heartbeat(let m):
      writer.writeByte(5)
      m.encode(to: &writer)
    case .heartbeatResponse(let m):
      writer.writeByte(6)
      m.encode(to: &writer)
    case .installSnapshot(let m):
      writer.writeByte(7)
      m.encode(to: &writer)
    case .snapshotResponse(let m):
      writer.writeByte(8)
      m.encode(to: &writer)
    case .timeoutNow(let term):
      writer.writeByte(9)
      writer.writeVarint(term)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    let tag = try reader.readByte()
    do throws(WireError) {
      switch tag {
      case 1: self = .requestVote(try RequestVote(from: &reader))
      case 2: self = .voteResponse(try VoteResponse(from: &reader))
      case 3: self = .appendEntries(try AppendEntries(from: &reader))
      case 4: self = .appendResponse(try AppendResponse(from: &reader))
      case 5: self = .heartbeat(try Heartbeat(from: &reader))
      case 6: self = .heartbeatResponse(try HeartbeatResponse(from: &reader))
      case 7: self = .installSnapshot(try InstallSnapshot(from: &reader))
      case 8: self = .snapshotResponse(try SnapshotResponse(from: &reader))
      case 9: self = .timeoutNow(term: try reader.readVarint())
      default: throw WireError(.unknownTag(type: "RaftMessage", tag: UInt64(tag)), at: at)
      }
      if let problem = malformation { throw WireError(.invalidValue(problem), at: at) }
    } catch {
      throw error.inside("RaftMessage")
    }
  }

  public var description: String {
    switch self {
    case .requestVote(let m):
      return "\(m.preVote ? "PreVote" : "Vote")(t\(m.term) last=\(m.lastLogIndex)@\(m.lastLogTerm)"
        + "\(m.transfer ? " transfer" : ""))"
    case .voteResponse(let m):
      return "\(m.preVote ? "PreVote" : "Vote")Resp(t\(m.term) \(m.granted ? "granted" : "rejected"))"
    case .appendEntries(let m):
      return "App(t\(m.term) prev=\(m.prevLogIndex)@\(m.prevLogTerm) n=\(m.entries.count)"
        + "\(m.entries.isEmpty ? "" : " \(m.entries[0].index)...\(m.entries[m.entries.count - 1].index)") commit=\(m.commit))"
    case .appendResponse(let m):
      return m.reject
        ? "AppResp(t\(m.term) reject \(m.index) hint=\(m.hintIndex)@\(m.hintTerm))"
        : "AppResp(t\(m.term) ok \(m.index))"
    case .heartbeat(let m):
      return
        "Heartbeat(t\(m.term) commit=\(m.commit) round=\(m.round)\(m.idleFactor == 1 ? "" : " idle×\(m.idleFactor)"))"
    case .heartbeatResponse(let m): return "HeartbeatResp(t\(m.term) round=\(m.round))"
    case .installSnapshot(let m):
      return "Snap(t\(m.term) \(m.index)@\(m.snapshotTerm) off=\(m.offset)+\(m.chunk.count)/\(m.totalBytes))"
    case .snapshotResponse(let m):
      return "SnapResp(t\(m.term) \(m.index) next=\(m.nextOffset)\(m.reject ? " reject" : ""))"
    case .timeoutNow(let term): return "TimeoutNow(t\(term))"
    }
  }
}

/// RequestVote arguments (Figure 2), also used for pre-votes.
public struct RequestVote: Sendable, Equatable, WireCodable {
  /// The candidate's term (for a pre-vote: the term it would campaign in).
  public var term: Term
  /// Index of the candidate's last log entry.
  public var lastLogIndex: LogIndex
  /// Term of the candidate's last log entry.
  public var lastLogTerm: Term
  /// A pre-vote probe: no one changes term or vote because of it.
  public var preVote: Bool
  /// Sent after a leadership transfer's TimeoutNow: voters ignore their leader lease.
  public var transfer: Bool

  /// Creates the message.
  public init(term: Term, lastLogIndex: LogIndex, lastLogTerm: Term, preVote: Bool, transfer: Bool) {
    self.term = term
    self.lastLogIndex = lastLogIndex
    self.lastLogTerm = lastLogTerm
    self.preVote = preVote
    self.transfer = transfer
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeVarint(term)
    writer.writeVarint(lastLogIndex)
    writer.writeVarint(lastLogTerm)
    writer.writeByte((preVote ? 1 : 0) | (transfer ? 2 : 0))
  }

  public init(from reader: inout WireReader) throws(WireError) {
    term = try reader.readVarint()
    lastLogIndex = try reader.readVarint()
    lastLogTerm = try reader.readVarint()
    let flags = try reader.readByte()
    preVote = flags & 1 != 0
    transfer = flags & 2 != 0
  }
}

/// The reply to ``RequestVote``.
public struct VoteResponse: Sendable, Equatable, WireCodable {
  /// The voter's term (for a granted pre-vote: the term asked about).
  public var term: Term
  /// Whether the vote was granted.
  public var granted: Bool
  /// Whether this answers a pre-vote.
  public var preVote: Bool

  /// Creates the message.
  public init(term: Term, granted: Bool, preVote: Bool) {
    self.term = term
    self.granted = granted
    self.preVote = preVote
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeVarint(term)
    writer.writeByte((granted ? 1 : 0) | (preVote ? 2 : 0))
  }

  public init(from reader: inout WireReader) throws(WireError) {
    term = try reader.readVarint()
    let flags = try reader.readByte()
    granted = flags & 1 != 0
    preVote = flags & 2 != 0
  }
}

/// AppendEntries arguments (Figure 2).
public struct AppendEntries: Sendable, Equatable, WireCodable {
  /// The leader's term.
  public var term: Term
  /// Index of the entry preceding ``entries``.
  public var prevLogIndex: LogIndex
  /// Term of that entry.
  public var prevLogTerm: Term
  /// Entries to store (empty for a probe).
  public var entries: [LogEntry]
  /// The leader's commit index.
  public var commit: LogIndex

  /// Creates the message.
  public init(term: Term, prevLogIndex: LogIndex, prevLogTerm: Term, entries: [LogEntry], commit: LogIndex) {
    self.term = term
    self.prevLogIndex = prevLogIndex
    self.prevLogTerm = prevLogTerm
    self.entries = entries
    self.commit = commit
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeVarint(term)
    writer.writeVarint(prevLogIndex)
    writer.writeVarint(prevLogTerm)
    writer.writeVarint(commit)
    writer.writeArray(entries)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    term = try reader.readVarint()
    prevLogIndex = try reader.readVarint()
    prevLogTerm = try reader.readVarint()
    commit = try reader.readVarint()
    entries = try reader.read([LogEntry].self, field: "entries")
    // Checked as it counts: a previous index at the top of the range must be refused, not overflow.
    var expected = prevLogIndex
    for entry in entries {
      let (next, overflow) = expected.addingReportingOverflow(1)
      guard !overflow, entry.index == next else {
        throw reader.error(.invalidValue("entry index \(entry.index) after \(expected)"))
      }
      expected = next
    }
  }
}

/// The reply to ``AppendEntries`` (and to a completed snapshot).
public struct AppendResponse: Sendable, Equatable, WireCodable {
  /// The follower's term.
  public var term: Term
  /// Whether the consistency check failed.
  public var reject: Bool
  /// On success: the follower's last index matching the leader. On reject: the rejected `prevLogIndex`.
  public var index: LogIndex
  /// On reject: where the leader should try next (conflict hint, thesis §5.3 optimisation).
  public var hintIndex: LogIndex
  /// On reject: the term of the follower's entry at ``hintIndex``.
  public var hintTerm: Term

  /// Creates the message.
  public init(term: Term, reject: Bool, index: LogIndex, hintIndex: LogIndex = 0, hintTerm: Term = 0) {
    self.term = term
    self.reject = reject
    self.index = index
    self.hintIndex = hintIndex
    self.hintTerm = hintTerm
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeVarint(term)
    writer.writeBool(reject)
    writer.writeVarint(index)
    writer.writeVarint(hintIndex)
    writer.writeVarint(hintTerm)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    term = try reader.readVarint()
    reject = try reader.readBool()
    index = try reader.readVarint()
    hintIndex = try reader.readVarint()
    hintTerm = try reader.readVarint()
  }
}

/// A heartbeat: the leader's term and a safe commit index for this follower.
public struct Heartbeat: Sendable, Equatable, WireCodable {
  /// The leader's term.
  public var term: Term
  /// `min(follower's match index, leader's commit)`: never beyond what the follower is known to hold.
  public var commit: LogIndex
  /// The read round this heartbeat confirms (ReadIndex); echoed in the response.
  public var round: UInt64
  /// 1, or how many times less often an idle leader heartbeats (``RaftCoreOptions/idleHeartbeatFactor``): the
  /// follower waits as many times longer before it campaigns or grants a vote.
  public var idleFactor: UInt64

  /// Creates the message.
  public init(term: Term, commit: LogIndex, round: UInt64, idleFactor: UInt64 = 1) {
    self.term = term
    self.commit = commit
    self.round = round
    self.idleFactor = idleFactor
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeVarint(term)
    writer.writeVarint(commit)
    writer.writeVarint(round)
    if idleFactor != 1 { writer.writeVarint(idleFactor) }
  }

  /// Reads a heartbeat; one without the idle factor (an active leader's, or an older version's) has factor 1.
  public init(from reader: inout WireReader) throws(WireError) {
    term = try reader.readVarint()
    commit = try reader.readVarint()
    round = try reader.readVarint()
    idleFactor = reader.isAtEnd ? 1 : try reader.readVarint()
  }
}

/// The reply to a ``Heartbeat``.
public struct HeartbeatResponse: Sendable, Equatable, WireCodable {
  /// The follower's term.
  public var term: Term
  /// The round echoed from the heartbeat.
  public var round: UInt64

  /// Creates the message.
  public init(term: Term, round: UInt64) {
    self.term = term
    self.round = round
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeVarint(term)
    writer.writeVarint(round)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    term = try reader.readVarint()
    round = try reader.readVarint()
  }
}

/// One chunk of a snapshot (§7), sent in order; the follower acknowledges each.
public struct InstallSnapshot: Sendable, Equatable, WireCodable {
  /// The leader's term.
  public var term: Term
  /// The last index the snapshot covers.
  public var index: LogIndex
  /// The term of that entry.
  public var snapshotTerm: Term
  /// The membership at ``index``.
  public var membership: Membership
  /// The snapshot's total size in bytes.
  public var totalBytes: UInt64
  /// Where this chunk starts.
  public var offset: UInt64
  /// The chunk's bytes.
  public var chunk: [UInt8]

  /// Creates the message.
  public init(
    term: Term, index: LogIndex, snapshotTerm: Term, membership: Membership, totalBytes: UInt64, offset: UInt64,
    chunk: [UInt8]
  ) {
    self.term = term
    self.index = index
    self.snapshotTerm = snapshotTerm
    self.membership = membership
    self.totalBytes = totalBytes
    self.offset = offset
    self.chunk = chunk
  }

  /// Whether this is the last chunk.
  public var isLast: Bool { offset + UInt64(chunk.count) >= totalBytes }

  public func encode(to writer: inout WireWriter) {
    writer.writeVarint(term)
    writer.writeVarint(index)
    writer.writeVarint(snapshotTerm)
    membership.encode(to: &writer)
    writer.writeVarint(totalBytes)
    writer.writeVarint(offset)
    writer.writeBytes(chunk)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    term = try reader.readVarint()
    index = try reader.readVarint()
    snapshotTerm = try reader.readVarint()
    membership = try reader.read(Membership.self, field: "membership")
    totalBytes = try reader.readVarint()
    offset = try reader.readVarint()
    chunk = try reader.readBytes()
    // Checked: an offset near the top of the range must be refused, not overflow.
    let (end, overflow) = offset.addingReportingOverflow(UInt64(chunk.count))
    guard !overflow, end <= totalBytes else {
      throw reader.error(.invalidValue("chunk ends past the snapshot's total size"))
    }
  }
}

/// The reply to a snapshot chunk.
public struct SnapshotResponse: Sendable, Equatable, WireCodable {
  /// The follower's term.
  public var term: Term
  /// The snapshot index being acknowledged.
  public var index: LogIndex
  /// The offset the follower expects next (the total size once complete).
  public var nextOffset: UInt64
  /// Whether the follower refused the snapshot (for example, too large).
  public var reject: Bool

  /// Creates the message.
  public init(term: Term, index: LogIndex, nextOffset: UInt64, reject: Bool = false) {
    self.term = term
    self.index = index
    self.nextOffset = nextOffset
    self.reject = reject
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeVarint(term)
    writer.writeVarint(index)
    writer.writeVarint(nextOffset)
    writer.writeBool(reject)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    term = try reader.readVarint()
    index = try reader.readVarint()
    nextOffset = try reader.readVarint()
    reject = try reader.readBool()
  }
}
