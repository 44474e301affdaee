public import QuorumCore

/// One buffered write of a transaction: set `key` to `value`, or delete it when `value` is `nil`.
public struct TxnWrite: Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// The key.
  public var key: String
  /// The new value; `nil` deletes the key.
  public var value: [UInt8]?

  /// Creates a write.
  public init(key: String, value: [UInt8]?) {
    self.key = key
    self.value = value
  }

  public var description: String { "\(key)=" + (value.map { "\($0.count)B" } ?? "deleted") }

  public func encode(to writer: inout WireWriter) {
    writer.writeString(key)
    writer.writeOptional(value)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    key = try reader.readString()
    value = try reader.readOptional()
  }
}

/// A lock mode of the shard's per-key locks.
public enum TxnLockMode: UInt8, Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// A read lock: any number of readers, no writer.
  case shared = 0
  /// A write lock: one holder, no readers.
  case exclusive = 1

  public var description: String { self == .shared ? "shared" : "exclusive" }

  public func encode(to writer: inout WireWriter) { writer.writeByte(rawValue) }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    let raw = try reader.readByte()
    guard let mode = TxnLockMode(rawValue: raw) else {
      throw WireError(.unknownTag(type: "TxnLockMode", tag: UInt64(raw)), at: at)
    }
    self = mode
  }
}

/// A lock request that could not be granted (no-wait): `key` is held by `holder` in `mode`.
public struct TxnConflict: Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// The key.
  public var key: String
  /// A transaction holding it.
  public var holder: TxnID
  /// How `holder` holds it.
  public var mode: TxnLockMode

  /// Creates a conflict report.
  public init(key: String, holder: TxnID, mode: TxnLockMode) {
    self.key = key
    self.holder = holder
    self.mode = mode
  }

  public var description: String { "\(key) held \(mode) by \(holder)" }

  public func encode(to writer: inout WireWriter) {
    writer.writeString(key)
    writer.write(holder)
    writer.write(mode)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    key = try reader.readString()
    holder = try reader.read()
    mode = try reader.read()
  }
}

/// The bounds and timings of a ``TxnShard``.
public struct TxnShardLimits: Sendable, Equatable {
  /// The most transactions in progress (active or prepared) at once.
  public var maxTransactions: Int = 10_000
  /// The most ended transactions remembered (to answer late or repeated commands truthfully). When it is full
  /// the oldest are forgotten, and commands about a transaction started no later than the newest forgotten one
  /// are refused as aborted.
  public var maxRemembered: Int = 100_000
  /// The most keys one transaction reads and writes here.
  public var maxKeysPerTransaction: Int = 1_000
  /// The longest key, in UTF-8 bytes.
  public var maxKeyBytes: Int = 1_024
  /// The largest value, in bytes.
  public var maxValueBytes: Int = 1 << 20
  /// An unprepared transaction with no command for this long (in log time) is aborted and its locks released.
  public var idleTimeoutMillis: UInt64 = 10_000
  /// The transaction horizon: no transaction starts here (its first command) more than this after its
  /// ``TxnID/startedAtMillis``, which is what lets ended transactions be forgotten.
  public var transactionHorizonMillis: UInt64 = 30_000
  /// The decision records' table (decisions of transactions whose record lives in this group).
  public var records = TransactionRecordLimits()

  /// The defaults: 10,000 transactions of up to 1,000 keys, 1 MiB values, 10 s idle timeout, 30 s horizon.
  public init() {
    records.transactionHorizonMillis = 30_000
    records.retainDecisionsMillis = 600_000
  }

  /// Checks that the limits are usable.
  /// - Throws: ``QuorumCore/ConfigurationError`` naming the first unusable limit.
  public func validate() throws(ConfigurationError) {
    for (name, value) in [
      ("maxTransactions", maxTransactions), ("maxRemembered", maxRemembered),
      ("maxKeysPerTransaction", maxKeysPerTransaction), ("maxKeyBytes", maxKeyBytes), ("maxValueBytes", maxValueBytes),
    ] where value < 1 {
      throw ConfigurationError(setting: name, reason: "must be at least 1 (got \(value))")
    }
    guard idleTimeoutMillis >= 1, transactionHorizonMillis >= 1 else {
      throw ConfigurationError(setting: "idleTimeoutMillis", reason: "timeouts must be at least 1 ms")
    }
    try records.validate()
  }

  /// The bytes a command may need besides its keys and values (tags, the transaction's identifier, the lengths, the
  /// participants, and the group's own framing: service name, session, principal). 4 KiB.
  public static let commandFramingBytes = 4_096

  /// Checks the limits, and that the largest write they admit — a key of ``maxKeyBytes`` with a value of
  /// ``maxValueBytes`` — fits in a command of `maxCommandBytes` (the group's consensus limit, 4 MiB by default) with
  /// ``commandFramingBytes`` to spare: otherwise the shard admits a write no command can carry to it.
  /// - Throws: ``QuorumCore/ConfigurationError`` naming the first unusable limit.
  public func validate(maxCommandBytes: Int) throws(ConfigurationError) {
    try validate()
    let largest = maxKeyBytes.addingReportingOverflow(maxValueBytes)
    let needed = largest.partialValue.addingReportingOverflow(Self.commandFramingBytes)
    guard !largest.overflow, !needed.overflow, needed.partialValue <= maxCommandBytes else {
      throw ConfigurationError(
        setting: "maxValueBytes",
        reason:
          "a key of \(maxKeyBytes) bytes with a value of \(maxValueBytes) bytes does not fit in a command of "
          + "\(maxCommandBytes) bytes (with \(Self.commandFramingBytes) bytes of framing)")
    }
  }

  /// The refusal of a key, if it is empty or longer than ``maxKeyBytes``.
  public func check(key: String) -> TxnShardError? {
    let bytes = key.utf8.count
    guard bytes >= 1, bytes <= maxKeyBytes else { return .invalidKey(bytes: bytes, limit: maxKeyBytes) }
    return nil
  }

  /// The refusal of a transaction's `writes` in one group that also read `reading` there, if any: the shard's
  /// rules, which a client checks too before sending them (``ShardedTransactions``).
  public func check(_ writes: [TxnWrite], reading: Set<String>) -> TxnShardError? {
    var keys = reading
    var written: Set<String> = []
    for write in writes {
      if let error = check(key: write.key) { return error }
      guard written.insert(write.key).inserted else { return .duplicateKey(write.key) }
      if let value = write.value, value.count > maxValueBytes {
        return .valueTooLarge(bytes: value.count, limit: maxValueBytes)
      }
      keys.insert(write.key)
    }
    guard keys.count <= maxKeysPerTransaction else {
      return .tooManyKeys(count: keys.count, limit: maxKeysPerTransaction)
    }
    return nil
  }
}

/// Why a ``TxnShard`` command was refused.
public enum TxnShardError: Error, Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// The shard holds its maximum of transactions in progress.
  case tooManyTransactions(limit: Int)
  /// The transaction would touch more keys here than allowed.
  case tooManyKeys(count: Int, limit: Int)
  /// A key is empty or longer than allowed.
  case invalidKey(bytes: Int, limit: Int)
  /// A value is larger than allowed.
  case valueTooLarge(bytes: Int, limit: Int)
  /// A key is written twice in one command.
  case duplicateKey(String)
  /// A read or a one-shot commit of a transaction already prepared here.
  case alreadyPrepared(TxnID)
  /// A commit of a transaction that is not prepared here.
  case notPrepared(TxnID)
  /// A commit of a transaction the shard does not know (never prepared here, or ended and forgotten).
  case unknownTransaction(TxnID)
  /// A read of a transaction that already ended here.
  case alreadyEnded(TxnID)
  /// A transaction that starts further after the shard's time than
  /// ``TransactionRecordLimits/maxClockAheadMillis`` (of ``TxnShardLimits/records``): its client's clock runs
  /// ahead. Admitted, it would be remembered as ended until the shard's time passed its start, crowding out
  /// others.
  case startsAhead(TxnID, shardMillis: UInt64)

  public var description: String {
    switch self {
    case .tooManyTransactions(let limit): return "the shard already runs \(limit) transactions"
    case .tooManyKeys(let count, let limit): return "\(count) keys exceed the limit of \(limit) per transaction"
    case .invalidKey(let bytes, let limit): return "a key of \(bytes) bytes (1...\(limit) allowed)"
    case .valueTooLarge(let bytes, let limit): return "a value of \(bytes) bytes exceeds the limit of \(limit)"
    case .duplicateKey(let key): return "\(key) is written twice"
    case .alreadyPrepared(let id): return "\(id) is already prepared here"
    case .notPrepared(let id): return "\(id) is not prepared here"
    case .unknownTransaction(let id): return "\(id) is not known here"
    case .alreadyEnded(let id): return "\(id) already ended here"
    case .startsAhead(let id, let shard):
      return
        "\(id) starts at \(id.startedAtMillis) ms, too far after the shard's time, \(shard) ms (is its clock ahead?)"
    }
  }

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .tooManyTransactions(let limit):
      writer.writeByte(0)
      writer.write(limit)
    case .tooManyKeys(let count, let limit):
      writer.writeByte(1)
      writer.write(count)
      writer.write(limit)
    case .invalidKey(let bytes, let limit):
      writer.writeByte(2)
      writer.write(bytes)
      writer.write(limit)
    case .valueTooLarge(let bytes, let limit):
      writer.writeByte(3)
      writer.write(bytes)
      writer.write(limit)
    case .duplicateKey(let key):
      writer.writeByte(4)
      writer.writeString(key)
    case .alreadyPrepared(let id):
      writer.writeByte(5)
      writer.write(id)
    case .notPrepared(let id):
      writer.writeByte(6)
      writer.write(id)
    case .unknownTransaction(let id):
      writer.writeByte(7)
      writer.write(id)
    case .alreadyEnded(let id):
      writer.writeByte(8)
      writer.write(id)
    case .startsAhead(let id, let shard):
      writer.writeByte(9)
      writer.write(id)
      writer.writeVarint(shard)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .tooManyTransactions(limit: try reader.read())
    case 1: self = .tooManyKeys(count: try reader.read(), limit: try reader.read())
    case 2: self = .invalidKey(bytes: try reader.read(), limit: try reader.read())
    case 3: self = .valueTooLarge(bytes: try reader.read(), limit: try reader.read())
    case 4: self = .duplicateKey(try reader.readString())
    case 5: self = .alreadyPrepared(try reader.read())
    case 6: self = .notPrepared(try reader.read())
    case 7: self = .unknownTransaction(try reader.read())
    case 8: self = .alreadyEnded(try reader.read())
    case 9: self = .startsAhead(try reader.read(), shardMillis: try reader.readVarint())
    case let tag: throw WireError(.unknownTag(type: "TxnShardError", tag: UInt64(tag)), at: at)
    }
  }
}

/// A state-changing request to a ``TxnShard``, written to its group's log.
public enum TxnShardCommand: Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// Read `key` for `txn`, taking a shared lock on it (no-wait: a conflict is answered at once).
  case read(TxnID, key: String)
  /// Prepare `txn` here: take exclusive locks on the written keys (no-wait) and keep the writes, durable in the
  /// log, until the decision. The read locks stay too. `participants` are every group of the transaction and
  /// `recordGroup` the one holding its decision record (for whoever resolves it if the client disappears).
  case prepare(TxnID, writes: [TxnWrite], participants: [GroupID], recordGroup: GroupID)
  /// Apply `txn`'s prepared writes and release its locks.
  case commit(TxnID)
  /// Drop `txn`'s writes and release its locks (whatever its state; remembered, so a late prepare is refused).
  case abort(TxnID)
  /// The single-group fast path: check the locks, read `reads`, apply `writes` and end `txn`, all in this one
  /// entry (the transaction's earlier reads here, if any, hold their locks until then).
  case commitLocal(TxnID, reads: [String], writes: [TxnWrite])
  /// A command for the group's transaction-record table (decisions of transactions whose record lives here).
  case records(TransactionRecordCommand)
  /// Move log time forward so that idle transactions expire and ended ones are forgotten.
  case advanceTime

  /// The transaction the command is about, if any.
  public var transaction: TxnID? {
    switch self {
    case .read(let id, _), .prepare(let id, _, _, _), .commit(let id), .abort(let id), .commitLocal(let id, _, _):
      return id
    case .records, .advanceTime: return nil
    }
  }

  public var description: String {
    switch self {
    case .read(let id, let key): return "read \(key) by \(id)"
    case .prepare(let id, let writes, let participants, let recordGroup):
      return "prepare \(id) writes=\(writes) groups=\(participants) record=\(recordGroup)"
    case .commit(let id): return "commit \(id)"
    case .abort(let id): return "abort \(id)"
    case .commitLocal(let id, let reads, let writes): return "commit-local \(id) reads=\(reads) writes=\(writes)"
    case .records(let command): return "records: \(command)"
    case .advanceTime: return "advance-time"
    }
  }

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .read(let id, let key):
      writer.writeByte(0)
      writer.write(id)
      writer.writeString(key)
    case .prepare(let id, let writes, let participants, let recordGroup):
      writer.writeByte(1)
      writer.write(id)
      writer.writeArray(writes)
      writer.writeArray(participants)
      writer.write(recordGroup)
    case .commit(let id):
      writer.writeByte(2)
      writer.write(id)
    case .abort(let id):
      writer.writeByte(3)
      writer.write(id)
    case .commitLocal(let id, let reads, let writes):
      writer.writeByte(4)
      writer.write(id)
      writer.writeArray(reads)
      writer.writeArray(writes)
    case .records(let command):
      writer.writeByte(5)
      writer.write(command)
    case .advanceTime:
      writer.writeByte(6)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .read(try reader.read(), key: try reader.readString())
    case 1:
      self = .prepare(
        try reader.read(), writes: try reader.readArray(), participants: try reader.readArray(),
        recordGroup: try reader.read())
    case 2: self = .commit(try reader.read())
    case 3: self = .abort(try reader.read())
    case 4: self = .commitLocal(try reader.read(), reads: try reader.readArray(), writes: try reader.readArray())
    case 5: self = .records(try reader.read())
    case 6: self = .advanceTime
    case let tag: throw WireError(.unknownTag(type: "TxnShardCommand", tag: UInt64(tag)), at: at)
    }
  }
}

/// The value of one key read by ``TxnShardCommand/commitLocal(_:reads:writes:)``.
public struct TxnRead: Hashable, Sendable, WireCodable {
  /// The key.
  public var key: String
  /// Its committed value before the transaction's writes, or `nil` if absent.
  public var value: [UInt8]?

  /// Creates a read result.
  public init(key: String, value: [UInt8]?) {
    self.key = key
    self.value = value
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeString(key)
    writer.writeOptional(value)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    key = try reader.readString()
    value = try reader.readOptional()
  }
}

/// The result of a ``TxnShardCommand``.
public enum TxnShardResponse: Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// A read's value (`nil`: absent); the transaction holds a shared lock on the key.
  case value([UInt8]?)
  /// Prepared: the transaction's locks and writes are held here until the decision (a yes vote).
  case prepared
  /// The transaction holds nothing here: nothing to commit (a read-only vote).
  case readOnly
  /// Committed here (by ``TxnShardCommand/commit(_:)``, or earlier).
  case committed
  /// Committed in one entry, with the values read.
  case committedLocal([TxnRead])
  /// Aborted here: by an abort, a conflict, its idle timeout, its horizon, or an earlier decision. A read or
  /// prepare answered so must not go on: the transaction aborts.
  case aborted
  /// A lock could not be granted (no-wait). A prepare (or a one-shot commit of a transaction that read here)
  /// answered so aborted the transaction here and released its locks; a read, or a one-shot commit of a
  /// transaction that had read nothing here, changed nothing (locks it took here earlier are still held). Either
  /// way the client aborts it everywhere and may retry it as a new transaction.
  case conflict(TxnConflict)
  /// The answer of the group's record table.
  case record(TransactionRecordResponse)
  /// Time moved forward.
  case timeAdvanced
  /// The command was refused and changed nothing.
  case failed(TxnShardError)

  public var description: String {
    switch self {
    case .value(let value): return "value " + (value.map { "\($0.count)B" } ?? "absent")
    case .prepared: return "prepared"
    case .readOnly: return "read-only"
    case .committed: return "committed"
    case .committedLocal(let reads): return "committed reading \(reads.map(\.key))"
    case .aborted: return "aborted"
    case .conflict(let conflict): return "conflict: \(conflict)"
    case .record(let response): return "record: \(response)"
    case .timeAdvanced: return "time advanced"
    case .failed(let error): return "failed: \(error)"
    }
  }

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .value(let value):
      writer.writeByte(0)
      writer.writeOptional(value)
    case .prepared: writer.writeByte(1)
    case .readOnly: writer.writeByte(2)
    case .committed: writer.writeByte(3)
    case .committedLocal(let reads):
      writer.writeByte(4)
      writer.writeArray(reads)
    case .aborted: writer.writeByte(5)
    case .conflict(let conflict):
      writer.writeByte(6)
      writer.write(conflict)
    case .record(let response):
      writer.writeByte(7)
      writer.write(response)
    case .timeAdvanced: writer.writeByte(8)
    case .failed(let error):
      writer.writeByte(9)
      writer.write(error)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .value(try reader.readOptional())
    case 1: self = .prepared
    case 2: self = .readOnly
    case 3: self = .committed
    case 4: self = .committedLocal(try reader.readArray())
    case 5: self = .aborted
    case 6: self = .conflict(try reader.read())
    case 7: self = .record(try reader.read())
    case 8: self = .timeAdvanced
    case 9: self = .failed(try reader.read())
    case let tag: throw WireError(.unknownTag(type: "TxnShardResponse", tag: UInt64(tag)), at: at)
    }
  }
}

/// A read-only request to a ``TxnShard``.
public enum TxnShardQuery: Hashable, Sendable, WireCodable {
  /// The committed value of `key`, outside any transaction (no lock; it may be overwritten by a transaction
  /// prepared here).
  case get(String)
  /// What the shard knows of `txn`, and its decision record if it lives here.
  case status(TxnID)
  /// Transactions prepared here and not yet decided, at least `minimumAgeMillis` old in log time, oldest first.
  case inDoubt(minimumAgeMillis: UInt64, limit: Int)
  /// A query of the group's record table.
  case records(TransactionRecordQuery)
  /// Counters.
  case counts

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .get(let key):
      writer.writeByte(0)
      writer.writeString(key)
    case .status(let id):
      writer.writeByte(1)
      writer.write(id)
    case .inDoubt(let age, let limit):
      writer.writeByte(2)
      writer.writeVarint(age)
      writer.write(limit)
    case .records(let query):
      writer.writeByte(3)
      writer.write(query)
    case .counts: writer.writeByte(4)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .get(try reader.readString())
    case 1: self = .status(try reader.read())
    case 2: self = .inDoubt(minimumAgeMillis: try reader.readVarint(), limit: try reader.read())
    case 3: self = .records(try reader.read())
    case 4: self = .counts
    case let tag: throw WireError(.unknownTag(type: "TxnShardQuery", tag: UInt64(tag)), at: at)
    }
  }
}

/// Where a transaction stands in one shard.
public enum TxnShardState: Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// Reading (holding shared locks), not prepared; `idleMillis` since its last command.
  case active(idleMillis: UInt64)
  /// Prepared for `ageMillis`; waiting for the decision.
  case prepared(ageMillis: UInt64)
  /// Committed here.
  case committed
  /// Aborted here.
  case aborted
  /// Not known here (never seen, or ended and forgotten).
  case unknown

  public var description: String {
    switch self {
    case .active(let idle): return "active (idle \(idle) ms)"
    case .prepared(let age): return "prepared \(age) ms ago"
    case .committed: return "committed"
    case .aborted: return "aborted"
    case .unknown: return "unknown"
    }
  }

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .active(let idle):
      writer.writeByte(0)
      writer.writeVarint(idle)
    case .prepared(let age):
      writer.writeByte(1)
      writer.writeVarint(age)
    case .committed: writer.writeByte(2)
    case .aborted: writer.writeByte(3)
    case .unknown: writer.writeByte(4)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .active(idleMillis: try reader.readVarint())
    case 1: self = .prepared(ageMillis: try reader.readVarint())
    case 2: self = .committed
    case 3: self = .aborted
    case 4: self = .unknown
    case let tag: throw WireError(.unknownTag(type: "TxnShardState", tag: UInt64(tag)), at: at)
    }
  }
}

/// A transaction prepared in a shard and not yet decided.
public struct TxnInDoubt: Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// The transaction.
  public var id: TxnID
  /// Every group of the transaction.
  public var participants: [GroupID]
  /// The group holding its decision record.
  public var recordGroup: GroupID
  /// How long it has been prepared here, in log time.
  public var ageMillis: UInt64
  /// The keys it writes here.
  public var keys: [String]

  /// Creates an entry.
  public init(id: TxnID, participants: [GroupID], recordGroup: GroupID, ageMillis: UInt64, keys: [String]) {
    self.id = id
    self.participants = participants
    self.recordGroup = recordGroup
    self.ageMillis = ageMillis
    self.keys = keys
  }

  public var description: String {
    "\(id) prepared \(ageMillis) ms ago, record in \(recordGroup), groups \(participants), keys \(keys)"
  }

  public func encode(to writer: inout WireWriter) {
    writer.write(id)
    writer.writeArray(participants)
    writer.write(recordGroup)
    writer.writeVarint(ageMillis)
    writer.writeArray(keys)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    id = try reader.read()
    participants = try reader.readArray()
    recordGroup = try reader.read()
    ageMillis = try reader.readVarint()
    keys = try reader.readArray()
  }
}

/// Counters of a ``TxnShard``.
public struct TxnShardCounts: Hashable, Sendable, WireCodable {
  /// Keys stored.
  public var keys: Int
  /// Transactions reading (unprepared).
  public var active: Int
  /// Transactions prepared.
  public var prepared: Int
  /// Ended transactions remembered.
  public var remembered: Int
  /// Keys locked.
  public var lockedKeys: Int
  /// Decision records held.
  public var records: Int
  /// The shard's log time.
  public var logTimeMillis: UInt64

  /// Creates counters.
  public init(
    keys: Int, active: Int, prepared: Int, remembered: Int, lockedKeys: Int, records: Int, logTimeMillis: UInt64
  ) {
    self.keys = keys
    self.active = active
    self.prepared = prepared
    self.remembered = remembered
    self.lockedKeys = lockedKeys
    self.records = records
    self.logTimeMillis = logTimeMillis
  }

  public func encode(to writer: inout WireWriter) {
    for count in [keys, active, prepared, remembered, lockedKeys, records] { writer.write(count) }
    writer.writeVarint(logTimeMillis)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    keys = try reader.read()
    active = try reader.read()
    prepared = try reader.read()
    remembered = try reader.read()
    lockedKeys = try reader.read()
    records = try reader.read()
    logTimeMillis = try reader.readVarint()
  }
}

/// The answer to a ``TxnShardQuery``.
public enum TxnShardQueryResult: Hashable, Sendable, WireCodable {
  /// A committed value (`nil`: absent).
  case value([UInt8]?)
  /// A transaction's state here, and its decision record if the record lives in this group.
  case status(TxnShardState, record: TransactionRecordSummary?)
  /// Transactions in doubt; `hasMore` if the page was cut.
  case inDoubt([TxnInDoubt], hasMore: Bool)
  /// A record-table answer.
  case records(TransactionRecordQueryResult)
  /// Counters.
  case counts(TxnShardCounts)

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .value(let value):
      writer.writeByte(0)
      writer.writeOptional(value)
    case .status(let state, let record):
      writer.writeByte(1)
      writer.write(state)
      writer.writeOptional(record)
    case .inDoubt(let page, let more):
      writer.writeByte(2)
      writer.writeArray(page)
      writer.writeBool(more)
    case .records(let result):
      writer.writeByte(3)
      writer.write(result)
    case .counts(let counts):
      writer.writeByte(4)
      writer.write(counts)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .value(try reader.readOptional())
    case 1: self = .status(try reader.read(), record: try reader.readOptional())
    case 2: self = .inDoubt(try reader.readArray(), hasMore: try reader.readBool())
    case 3: self = .records(try reader.read())
    case 4: self = .counts(try reader.read())
    case let tag: throw WireError(.unknownTag(type: "TxnShardQueryResult", tag: UInt64(tag)), at: at)
    }
  }
}
