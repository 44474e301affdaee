public import QuorumCore

/// The bounds and the time rules of a ``TransactionRecords`` table.
public struct TransactionRecordLimits: Sendable, Equatable {
  /// The most records kept at once; a command that would create one more is refused.
  public var maxRecords: Int = 100_000
  /// The most participants a record lists.
  public var maxParticipants: Int = 64
  /// The transaction horizon H: a transaction must be decided within H of its
  /// ``TxnID/startedAtMillis``. A record is never forgotten before its transaction's start plus H, and once log
  /// time is past that point a transaction without a record can no longer commit, so an absent record then
  /// means abort.
  public var transactionHorizonMillis: UInt64 = 60_000
  /// How long past its transaction's start a finished decision is kept for lookups (at least the horizon).
  public var retainDecisionsMillis: UInt64 = 600_000
  /// A command for a transaction that starts more than this after the current log time is refused: its
  /// coordinator's clock is too far ahead (its record would be kept for too long).
  public var maxClockAheadMillis: UInt64 = 60_000
  /// The most coordinators whose next transaction number the table remembers; past it the table forgets those with
  /// the lowest numbers, which then continue from above every number forgotten (see ``TransactionRecords``), so
  /// reservations are never refused for it.
  public var maxCoordinators: Int = 100_000
  /// The most transaction numbers one reservation may take.
  public var maxReservation: UInt64 = 1 << 20

  /// The defaults: 100,000 records of up to 64 participants, a 60 s horizon, decisions kept 10 min.
  public init() {}

  /// Checks that the limits are usable.
  /// - Throws: ``QuorumCore/ConfigurationError`` naming the first unusable limit.
  public func validate() throws(ConfigurationError) {
    guard maxRecords >= 1 else { throw ConfigurationError(setting: "maxRecords", reason: "must be at least 1") }
    guard maxParticipants >= 1 else {
      throw ConfigurationError(setting: "maxParticipants", reason: "must be at least 1")
    }
    guard transactionHorizonMillis >= 1 else {
      throw ConfigurationError(setting: "transactionHorizonMillis", reason: "must be at least 1 ms")
    }
    guard retainDecisionsMillis >= transactionHorizonMillis else {
      throw ConfigurationError(
        setting: "retainDecisionsMillis",
        reason: "\(retainDecisionsMillis) ms is shorter than the horizon of \(transactionHorizonMillis) ms")
    }
    guard maxCoordinators >= 1 else {
      throw ConfigurationError(setting: "maxCoordinators", reason: "must be at least 1")
    }
    guard maxReservation >= 1 else {
      throw ConfigurationError(setting: "maxReservation", reason: "must be at least 1")
    }
  }

  /// How long past its start a decided record is kept: past the horizon even when ``retainDecisionsMillis`` equals
  /// it, since at the start plus the horizon a command without a record is not yet answered abort, and a commit
  /// could then be recorded over an abort just forgotten.
  var retentionMillis: UInt64 { Swift.max(transactionHorizonMillis.addingSaturated(1), retainDecisionsMillis) }
}

/// Why a ``TransactionRecords`` command was refused (it changed nothing).
public enum TransactionRecordError: Error, Hashable, Sendable, CustomStringConvertible {
  /// The table holds its maximum of records.
  case tooManyRecords(limit: Int)
  /// The record would list more participants than allowed.
  case tooManyParticipants(count: Int, limit: Int)
  /// The transaction starts further in the future than the table accepts (the coordinator's clock is ahead).
  case clockAhead(startedAtMillis: UInt64, logTimeMillis: UInt64)
  /// A reservation of 0 or of more than the maximum.
  case invalidReservation(count: UInt64, max: UInt64)
  /// The table holds reservations for its maximum of coordinators. Answered by older versions only: this one
  /// forgets the coordinators with the lowest numbers instead (see ``TransactionRecords``).
  case tooManyCoordinators(limit: Int)

  public var description: String {
    switch self {
    case .tooManyRecords(let limit): return "the record table holds its maximum of \(limit) records"
    case .tooManyParticipants(let count, let limit): return "\(count) participants exceed the limit of \(limit)"
    case .clockAhead(let started, let now):
      return "the transaction starts at \(started) ms, too far after log time \(now) ms"
    case .invalidReservation(let count, let max): return "a reservation of \(count) numbers (1...\(max) allowed)"
    case .tooManyCoordinators(let limit): return "reservations are held for the maximum of \(limit) coordinators"
    }
  }

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .tooManyRecords(let limit):
      writer.writeByte(0)
      writer.write(limit)
    case .tooManyParticipants(let count, let limit):
      writer.writeByte(1)
      writer.write(count)
      writer.write(limit)
    case .clockAhead(let started, let now):
      writer.writeByte(2)
      writer.writeVarint(started)
      writer.writeVarint(now)
    case .invalidReservation(let count, let max):
      writer.writeByte(3)
      writer.writeVarint(count)
      writer.writeVarint(max)
    case .tooManyCoordinators(let limit):
      writer.writeByte(4)
      writer.write(limit)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .tooManyRecords(limit: try reader.read())
    case 1: self = .tooManyParticipants(count: try reader.read(), limit: try reader.read())
    case 2: self = .clockAhead(startedAtMillis: try reader.readVarint(), logTimeMillis: try reader.readVarint())
    case 3: self = .invalidReservation(count: try reader.readVarint(), max: try reader.readVarint())
    case 4: self = .tooManyCoordinators(limit: try reader.read())
    case let tag: throw WireError(.unknownTag(type: "TransactionRecordError", tag: UInt64(tag)), at: at)
    }
  }
}

extension TransactionRecordError: WireCodable {}

/// What the participants of a transaction record are.
public enum TransactionRecordKind: Hashable, Sendable {
  /// Nodes (two-phase commit's participants), each of which records ``TransactionRecordCommand/finished(_:node:)``
  /// for itself.
  case nodes
  /// The groups of a sharded transaction (``TxnShard/party(_:)``). They never record anything in the record; only
  /// its coordinator (the finisher) does, once every group applied the commit.
  case groups
}

/// A state-changing request to ``TransactionRecords``, written to the log (or to a node's local record log).
public enum TransactionRecordCommand: Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// `participant` has made its prepared state durable for `id`, whose participants are `participants`; it
  /// stays pending until it records ``finished(_:node:)``. If the transaction is already decided, nothing is
  /// recorded and the decision is returned: the participant must not vote yes.
  case prepared(TxnID, participant: NodeID, participants: [NodeID])
  /// Decide `id` as `decision` unless it is already decided (a compare-and-set): the answer is the decision that
  /// holds. A commit with a `finisher` keeps the record until that node records ``finished(_:node:)`` (the
  /// coordinator, once every participant acknowledged). `kind` says what the participants are: nodes that record
  /// their own part (two-phase commit's records), or the groups of a sharded transaction, which never do, so that
  /// a resolver may finish such a commit for a coordinator that left it unfinished
  /// (``TransactionRecordQuery/unfinished(minimumAgeMillis:limit:)``).
  case decide(
    TxnID, TransactionDecision, participants: [NodeID], finisher: NodeID?, kind: TransactionRecordKind = .nodes)
  /// `node` is done with `id` (a participant applied the decision, or the coordinator finished phase 2).
  case finished(TxnID, node: NodeID)
  /// Reserve `count` transaction numbers for `coordinator`; the answer is the first.
  case reserve(coordinator: NodeID, count: UInt64)
  /// Move log time forward so that finished records past their retention are forgotten.
  case advanceTime
  /// A wall clock reading (milliseconds since 1970): the table's time moves forward to it if it is behind, and
  /// never back (see ``TransactionRecords``). Written by ``ReplicatedLogRecordChannel`` so that a table in a group
  /// whose log time starts at zero (a ``QuorumCore/ReplicatedLog`` of a Raft or Multi-Paxos node) compares
  /// transactions' starts with a wall clock. A sharded transaction's shard ignores it (its table follows the
  /// shard's own time).
  case clock(wallMillis: UInt64)

  public var description: String {
    switch self {
    case .prepared(let id, let participant, _): return "prepared \(id) by \(participant)"
    case .decide(let id, let decision, _, let finisher, let kind):
      return "decide \(id) \(decision)" + (finisher.map { " finisher \($0)" } ?? "")
        + (kind == .groups ? " (groups)" : "")
    case .finished(let id, let node): return "finished \(id) by \(node)"
    case .reserve(let coordinator, let count): return "reserve \(count) for \(coordinator)"
    case .advanceTime: return "advance-time"
    case .clock(let wall): return "clock \(wall) ms"
    }
  }

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .prepared(let id, let participant, let participants):
      writer.writeByte(0)
      writer.write(id)
      writer.write(participant)
      writer.writeArray(participants)
    case .decide(let id, let decision, let participants, let finisher, let kind):
      // Tag 1 is the decision of two-phase commit's records, as every earlier version wrote it; 5 is a sharded
      // transaction's, with the same fields.
      writer.writeByte(kind == .groups ? 5 : 1)
      writer.write(id)
      writer.write(decision)
      writer.writeArray(participants)
      writer.writeOptional(finisher)
    case .finished(let id, let node):
      writer.writeByte(2)
      writer.write(id)
      writer.write(node)
    case .reserve(let coordinator, let count):
      writer.writeByte(3)
      writer.write(coordinator)
      writer.writeVarint(count)
    case .advanceTime:
      writer.writeByte(4)
    case .clock(let wall):
      writer.writeByte(6)
      writer.writeVarint(wall)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0:
      self = .prepared(try reader.read(), participant: try reader.read(), participants: try reader.readArray())
    case let tag where tag == 1 || tag == 5:
      self = .decide(
        try reader.read(), try reader.read(), participants: try reader.readArray(), finisher: try reader.readOptional(),
        kind: tag == 5 ? .groups : .nodes)
    case 2: self = .finished(try reader.read(), node: try reader.read())
    case 3: self = .reserve(coordinator: try reader.read(), count: try reader.readVarint())
    case 4: self = .advanceTime
    case 6: self = .clock(wallMillis: try reader.readVarint())
    case let tag: throw WireError(.unknownTag(type: "TransactionRecordCommand", tag: UInt64(tag)), at: at)
    }
  }
}

/// The result of a ``TransactionRecordCommand``.
public enum TransactionRecordResponse: Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// The prepared state is recorded; no decision yet.
  case undecided
  /// The decision that holds (the one just recorded, or the earlier one a compare-and-set found). For a
  /// transaction past its horizon without a record, `abort`, and nothing is recorded.
  case decided(TransactionDecision)
  /// The finish is recorded (or there was nothing to finish).
  case finished
  /// Transaction numbers `first ..< first + count` are reserved.
  case reserved(first: UInt64, count: UInt64)
  /// Time moved forward.
  case timeAdvanced
  /// The command was refused and changed nothing.
  case refused(TransactionRecordError)

  public var description: String {
    switch self {
    case .undecided: return "undecided"
    case .decided(let decision): return "decided \(decision)"
    case .finished: return "finished"
    case .reserved(let first, let count): return "reserved \(first)..<\(first + count)"
    case .timeAdvanced: return "time advanced"
    case .refused(let error): return "refused: \(error)"
    }
  }

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .undecided: writer.writeByte(0)
    case .decided(let decision):
      writer.writeByte(1)
      writer.write(decision)
    case .finished: writer.writeByte(2)
    case .reserved(let first, let count):
      writer.writeByte(3)
      writer.writeVarint(first)
      writer.writeVarint(count)
    case .timeAdvanced: writer.writeByte(4)
    case .refused(let error):
      writer.writeByte(5)
      writer.write(error)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .undecided
    case 1: self = .decided(try reader.read())
    case 2: self = .finished
    case 3: self = .reserved(first: try reader.readVarint(), count: try reader.readVarint())
    case 4: self = .timeAdvanced
    case 5: self = .refused(try reader.read())
    case let tag: throw WireError(.unknownTag(type: "TransactionRecordResponse", tag: UInt64(tag)), at: at)
    }
  }
}

/// One record of ``TransactionRecords`` as queries and recovery see it.
public struct TransactionRecordSummary: Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// The transaction.
  public var id: TxnID
  /// The decision, if one is recorded.
  public var decision: TransactionDecision?
  /// Every participant, as the first command about the transaction listed them.
  public var participants: [NodeID]
  /// The nodes that still have to record ``TransactionRecordCommand/finished(_:node:)``: prepared participants
  /// (in a shared table) and the coordinator of a commit.
  public var pending: [NodeID]
  /// The log time the record was created at.
  public var createdAtMillis: UInt64
  /// The log time the decision was recorded at, if decided.
  public var decidedAtMillis: UInt64?
  /// How long the record has existed, in log time, when the answer was made.
  public var ageMillis: UInt64

  /// Creates a summary.
  public init(
    id: TxnID, decision: TransactionDecision?, participants: [NodeID], pending: [NodeID], createdAtMillis: UInt64,
    decidedAtMillis: UInt64?, ageMillis: UInt64
  ) {
    self.id = id
    self.decision = decision
    self.participants = participants
    self.pending = pending
    self.createdAtMillis = createdAtMillis
    self.decidedAtMillis = decidedAtMillis
    self.ageMillis = ageMillis
  }

  /// The lookup status the record gives.
  public var status: TransactionStatus { TransactionStatus(decision) }

  public var description: String {
    "\(id) \(decision.map(\.description) ?? "undecided") participants=\(participants) pending=\(pending) "
      + "age=\(ageMillis)ms"
  }

  public func encode(to writer: inout WireWriter) {
    writer.write(id)
    writer.writeOptional(decision)
    writer.writeArray(participants)
    writer.writeArray(pending)
    writer.writeVarint(createdAtMillis)
    writer.writeOptional(decidedAtMillis)
    writer.writeVarint(ageMillis)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    id = try reader.read()
    decision = try reader.readOptional()
    participants = try reader.readArray()
    pending = try reader.readArray()
    createdAtMillis = try reader.readVarint()
    decidedAtMillis = try reader.readOptional()
    ageMillis = try reader.readVarint()
  }
}

/// A read-only request to ``TransactionRecords``.
public enum TransactionRecordQuery: Hashable, Sendable, WireCodable {
  /// The record of one transaction.
  case record(TxnID)
  /// The records that concern `node` — it coordinates the transaction, is a participant, or is pending — in
  /// identifier order after `after`, at most `limit`: what a restarted node recovers.
  case involving(NodeID, after: TxnID?, limit: Int)
  /// Undecided records with prepared participants whose age is at least `minimumAgeMillis`: transactions in
  /// doubt, oldest first, at most `limit`.
  case inDoubt(minimumAgeMillis: UInt64, limit: Int)
  /// Table counters.
  case counts
  /// Sharded transactions' commit records (``TransactionRecordKind/groups``) that their coordinator has not
  /// finished, decided at least `minimumAgeMillis` ago: commits whose coordinator may have died (or lost its
  /// answers) after applying them, oldest decision first, at most `limit`. Two-phase commit's records are never
  /// listed: their coordinator finishes them when it recovers.
  case unfinished(minimumAgeMillis: UInt64, limit: Int)

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .record(let id):
      writer.writeByte(0)
      writer.write(id)
    case .involving(let node, let after, let limit):
      writer.writeByte(1)
      writer.write(node)
      writer.writeOptional(after)
      writer.write(limit)
    case .inDoubt(let age, let limit):
      writer.writeByte(2)
      writer.writeVarint(age)
      writer.write(limit)
    case .counts: writer.writeByte(3)
    case .unfinished(let age, let limit):
      writer.writeByte(4)
      writer.writeVarint(age)
      writer.write(limit)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .record(try reader.read())
    case 1: self = .involving(try reader.read(), after: try reader.readOptional(), limit: try reader.read())
    case 2: self = .inDoubt(minimumAgeMillis: try reader.readVarint(), limit: try reader.read())
    case 3: self = .counts
    case 4: self = .unfinished(minimumAgeMillis: try reader.readVarint(), limit: try reader.read())
    case let tag: throw WireError(.unknownTag(type: "TransactionRecordQuery", tag: UInt64(tag)), at: at)
    }
  }
}

/// Counters of a ``TransactionRecords`` table.
public struct TransactionRecordCounts: Hashable, Sendable, WireCodable {
  /// Records held.
  public var records: Int
  /// Of which undecided.
  public var undecided: Int
  /// Coordinators with reserved numbers.
  public var coordinators: Int
  /// The table's log time.
  public var logTimeMillis: UInt64

  /// Creates counters.
  public init(records: Int, undecided: Int, coordinators: Int, logTimeMillis: UInt64) {
    self.records = records
    self.undecided = undecided
    self.coordinators = coordinators
    self.logTimeMillis = logTimeMillis
  }

  public func encode(to writer: inout WireWriter) {
    writer.write(records)
    writer.write(undecided)
    writer.write(coordinators)
    writer.writeVarint(logTimeMillis)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    records = try reader.read()
    undecided = try reader.read()
    coordinators = try reader.read()
    logTimeMillis = try reader.readVarint()
  }
}

/// The answer to a ``TransactionRecordQuery``.
public enum TransactionRecordQueryResult: Hashable, Sendable, WireCodable {
  /// One record, or `nil` if there is none.
  case record(TransactionRecordSummary?)
  /// A page of records; `hasMore` if the page was cut at the limit.
  case records([TransactionRecordSummary], hasMore: Bool)
  /// Counters.
  case counts(TransactionRecordCounts)

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .record(let summary):
      writer.writeByte(0)
      writer.writeOptional(summary)
    case .records(let page, let more):
      writer.writeByte(1)
      writer.writeArray(page)
      writer.writeBool(more)
    case .counts(let counts):
      writer.writeByte(2)
      writer.write(counts)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .record(try reader.readOptional())
    case 1: self = .records(try reader.readArray(), hasMore: try reader.readBool())
    case 2: self = .counts(try reader.read())
    case let tag: throw WireError(.unknownTag(type: "TransactionRecordQueryResult", tag: UInt64(tag)), at: at)
    }
  }
}
