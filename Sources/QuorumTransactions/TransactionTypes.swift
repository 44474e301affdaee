public import QuorumCore

/// Identifies one distributed transaction: the coordinator that runs it, a number unique for that coordinator,
/// and the coordinator's wall-clock time when it began.
///
/// The start time is part of the identity so that every message and every record about a transaction dates it:
/// a record is kept at least ``TransactionRecordLimits/transactionHorizonMillis`` past it, and no commit is
/// accepted after that horizon, which is what lets a record be forgotten safely (see ``TransactionRecords``).
/// It is data, compared with log time inside state machines, never a replica's clock: a coordinator whose clock
/// is wrong gets its transactions refused or aborted, never two outcomes.
///
/// Printed (and parsed) as `<coordinator>.<sequence>@<startedAtMillis>`, for example `3.17@1733300000123`.
public struct TxnID: Hashable, Comparable, Sendable, WireCodable, LosslessStringConvertible {
  /// The coordinator (a node, or a client acting as coordinator) that runs the transaction and decides it.
  public var coordinator: NodeID
  /// The coordinator's number for it, never reused (reserved durably in blocks, see
  /// ``TransactionRecordStore/reserveSequenceNumbers(for:count:)``).
  public var sequence: UInt64
  /// The coordinator's wall clock when the transaction began, in milliseconds since 1970.
  public var startedAtMillis: UInt64

  /// Creates an identifier.
  public init(coordinator: NodeID, sequence: UInt64, startedAtMillis: UInt64) {
    self.coordinator = coordinator
    self.sequence = sequence
    self.startedAtMillis = startedAtMillis
  }

  /// Parses `3.17@1733300000123` (an `n` before the coordinator is accepted too).
  public init?(_ description: String) {
    let parts = description.split(separator: "@", omittingEmptySubsequences: false)
    guard parts.count == 2, let started = UInt64(parts[1]) else { return nil }
    let head = parts[0].split(separator: ".", omittingEmptySubsequences: false)
    guard head.count == 2, let coordinator = NodeID(String(head[0])), let sequence = UInt64(head[1]) else {
      return nil
    }
    self.init(coordinator: coordinator, sequence: sequence, startedAtMillis: started)
  }

  /// `<coordinator>.<sequence>@<startedAtMillis>`.
  public var description: String { "\(coordinator.rawValue).\(sequence)@\(startedAtMillis)" }

  public static func < (lhs: TxnID, rhs: TxnID) -> Bool {
    (lhs.coordinator, lhs.sequence, lhs.startedAtMillis) < (rhs.coordinator, rhs.sequence, rhs.startedAtMillis)
  }

  public func encode(to writer: inout WireWriter) {
    writer.write(coordinator)
    writer.writeVarint(sequence)
    writer.writeVarint(startedAtMillis)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    coordinator = try reader.read()
    sequence = try reader.readVarint()
    startedAtMillis = try reader.readVarint()
  }

  /// Whether log or wall time `nowMillis` is past this transaction's horizon of `horizonMillis`.
  func isPastHorizon(_ nowMillis: UInt64, horizonMillis: UInt64) -> Bool {
    nowMillis > startedAtMillis.addingSaturated(horizonMillis)
  }
}

/// A transaction decision: the outcome the coordinator (or, in non-blocking mode, whoever records it first)
/// settles for the whole transaction. Not to be confused with a consensus log's commit index.
public enum TransactionDecision: UInt8, Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// Every participant makes the transaction's effects permanent.
  case commit = 0
  /// Every participant undoes them.
  case abort = 1

  public var description: String { self == .commit ? "commit" : "abort" }

  public func encode(to writer: inout WireWriter) { writer.writeByte(rawValue) }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    let raw = try reader.readByte()
    guard let value = TransactionDecision(rawValue: raw) else {
      throw WireError(.unknownTag(type: "TransactionDecision", tag: UInt64(raw)), at: at)
    }
    self = value
  }
}

/// A participant's answer to `prepare`.
public enum TransactionVote: UInt8, Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// Prepared: the participant has made its part durable and can commit or abort, whichever is decided. It
  /// will not decide alone.
  case yes = 0
  /// The participant cannot commit; the transaction aborts. It has rolled back (or will).
  case no = 1
  /// The participant only read: it has already released what it held and takes no part in phase 2.
  case readOnly = 2

  public var description: String {
    switch self {
    case .yes: return "yes"
    case .no: return "no"
    case .readOnly: return "read-only"
    }
  }

  public func encode(to writer: inout WireWriter) { writer.writeByte(rawValue) }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    let raw = try reader.readByte()
    guard let value = TransactionVote(rawValue: raw) else {
      throw WireError(.unknownTag(type: "TransactionVote", tag: UInt64(raw)), at: at)
    }
    self = value
  }
}

/// Why a transaction aborted.
public enum TransactionAbortReason: Hashable, Sendable, CustomStringConvertible {
  /// A participant voted no.
  case votedNo(NodeID)
  /// These participants did not vote in time.
  case voteTimeout(missing: [NodeID])
  /// The decision record already said abort: a participant (non-blocking mode) or a recovering coordinator
  /// resolved the transaction before the coordinator could record its commit.
  case resolvedAbort
  /// The single participant of a one-phase commit decided abort.
  case participantAborted(NodeID)
  /// The transaction's body threw; the participants were told to roll back.
  case bodyFailed(String)
  /// The transaction passed its horizon (``TxnID/startedAtMillis`` plus the horizon) before it could commit.
  case expired
  /// The record store refused the commit for good (a full record table, say): nothing recorded it, and nothing
  /// will, so it aborted at once rather than being retried until its horizon.
  case recordRefused(TransactionStoreError)

  public var description: String {
    switch self {
    case .votedNo(let node): return "\(node) voted no"
    case .voteTimeout(let missing): return "no vote in time from \(missing.map(\.description).joined(separator: ", "))"
    case .resolvedAbort: return "the decision record already said abort"
    case .participantAborted(let node): return "\(node) aborted the one-phase commit"
    case .bodyFailed(let why): return "the transaction body failed: \(why)"
    case .expired: return "the transaction passed its horizon"
    case .recordRefused(let why): return "the commit could not be recorded: \(why)"
    }
  }
}

/// What became of a transaction, as the application sees it.
public enum TransactionResult: Hashable, Sendable, CustomStringConvertible {
  /// Every participant commits (or already did).
  case committed
  /// No participant commits.
  case aborted(TransactionAbortReason)

  public var description: String {
    switch self {
    case .committed: return "committed"
    case .aborted(let reason): return "aborted (\(reason))"
    }
  }

  /// The decision this result reports.
  public var decision: TransactionDecision {
    if case .committed = self { return .commit }
    return .abort
  }
}

/// Why a coordinator refused to begin a transaction (nothing was sent; nothing needs undoing).
public enum TransactionRejection: Hashable, Sendable, CustomStringConvertible {
  /// The identifier is already in use or was used recently.
  case duplicateID
  /// The identifier names another coordinator.
  case foreignID(NodeID)
  /// The participant list is empty.
  case noParticipants
  /// The participant list names a node twice.
  case duplicateParticipant(NodeID)
  /// The coordinator itself is listed as a participant.
  case coordinatorIsParticipant
  /// More participants than the coordinator allows.
  case tooManyParticipants(count: Int, limit: Int)
  /// The coordinator already runs its maximum of transactions.
  case tooManyActive(limit: Int)
  /// The identifier's start time is past the transaction horizon already.
  case expired

  public var description: String {
    switch self {
    case .duplicateID: return "the transaction identifier is already in use"
    case .foreignID(let node): return "the identifier belongs to coordinator \(node)"
    case .noParticipants: return "no participants"
    case .duplicateParticipant(let node): return "\(node) is listed twice"
    case .coordinatorIsParticipant: return "the coordinator cannot be its own participant"
    case .tooManyParticipants(let count, let limit): return "\(count) participants exceed the limit of \(limit)"
    case .tooManyActive(let limit): return "the coordinator already runs \(limit) transactions"
    case .expired: return "the identifier's start time is past the transaction horizon"
    }
  }
}

/// Why a transaction call failed.
public enum TransactionError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The outcome is not known yet (no answer before the deadline, or the coordinator stopped): the
  /// transaction may commit or abort. Look it up later with the identifier.
  case outcomeUnknown(TxnID)
  /// The coordinator refused to begin the transaction.
  case rejected(TxnID, TransactionRejection)
  /// The actor is not running (not started, or shut down).
  case stopped
  /// Too many calls are waiting; retry later.
  case overloaded(limit: Int)

  public var description: String {
    switch self {
    case .outcomeUnknown(let id): return "the outcome of \(id) is unknown; look it up by its identifier"
    case .rejected(let id, let why): return "\(id) refused: \(why)"
    case .stopped: return "the transaction actor is not running"
    case .overloaded(let limit): return "overloaded (\(limit) calls waiting)"
    }
  }
}

/// A transaction's state as a lookup finds it.
public enum TransactionStatus: Hashable, Sendable, CustomStringConvertible {
  /// Not decided yet (votes being collected, or prepared participants in doubt).
  case inProgress
  /// Decided commit.
  case committed
  /// Decided abort.
  case aborted
  /// No trace of it: never begun, aborted without a record (presumed abort), or forgotten after its retention.
  case unknown

  public var description: String {
    switch self {
    case .inProgress: return "in progress"
    case .committed: return "committed"
    case .aborted: return "aborted"
    case .unknown: return "unknown"
    }
  }

  init(_ decision: TransactionDecision?) {
    switch decision {
    case .commit: self = .committed
    case .abort: self = .aborted
    case nil: self = .inProgress
    }
  }
}

extension UInt64 {
  /// `self + other`, or `UInt64.max` if that overflows (a time that never comes).
  func addingSaturated(_ other: UInt64) -> UInt64 {
    let (sum, overflow) = addingReportingOverflow(other)
    return overflow ? .max : sum
  }
}
