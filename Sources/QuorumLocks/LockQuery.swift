public import QuorumCore

/// A read-only request to the ``LockTable``, answered from applied state.
public enum LockQuery: Hashable, Sendable, WireCodable {
  /// The holders and waiters of one lock.
  case lock(String)
  /// One session's expiry, holds and waits.
  case session(LockSessionID)
  /// Locks whose names start with `prefix` and sort after `after` (for paging), in name order, at most
  /// `limit` of them and never more than ``LockTableLimits/maxListCount``.
  case list(prefix: String, after: String?, limit: Int)
  /// How many sessions, locks, holds and waiters there are.
  case counts

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .lock(let name):
      writer.writeByte(0)
      writer.writeString(name)
    case .session(let session):
      writer.writeByte(1)
      writer.write(session)
    case .list(let prefix, let after, let limit):
      writer.writeByte(2)
      writer.writeString(prefix)
      writer.writeOptional(after)
      writer.write(limit)
    case .counts:
      writer.writeByte(3)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .lock(try reader.readString())
    case 1: self = .session(try reader.read())
    case 2:
      self = .list(
        prefix: try reader.readString(), after: try reader.readOptional(String.self), limit: try reader.read())
    case 3: self = .counts
    case let tag: throw WireError(.unknownTag(type: "LockQuery", tag: UInt64(tag)), at: at)
    }
  }
}

/// The answer to a ``LockQuery``.
public enum LockQueryResult: Hashable, Sendable, WireCodable {
  /// The lock's status, or nil if it has neither holders nor waiters.
  case lock(LockStatus?)
  /// The session's status, or nil if it is unknown, closed or expired.
  case session(LockSessionStatus?)
  /// A page of locks in name order; `hasMore` if more matched beyond it.
  case locks([LockSummary], hasMore: Bool)
  /// The table's size and clock.
  case counts(LockTableCounts)

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .lock(let status):
      writer.writeByte(0)
      writer.writeOptional(status)
    case .session(let status):
      writer.writeByte(1)
      writer.writeOptional(status)
    case .locks(let summaries, let hasMore):
      writer.writeByte(2)
      writer.writeArray(summaries)
      writer.writeBool(hasMore)
    case .counts(let counts):
      writer.writeByte(3)
      writer.write(counts)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .lock(try reader.readOptional(LockStatus.self))
    case 1: self = .session(try reader.readOptional(LockSessionStatus.self))
    case 2: self = .locks(try reader.readArray(LockSummary.self), hasMore: try reader.readBool())
    case 3: self = .counts(try reader.read(LockTableCounts.self, field: "counts"))
    case let tag: throw WireError(.unknownTag(type: "LockQueryResult", tag: UInt64(tag)), at: at)
    }
  }
}

/// One holder of a lock, as reported by ``LockQuery/lock(_:)``.
public struct LockHolderStatus: Hashable, Sendable, WireCodable {
  /// The holding session.
  public var session: LockSessionID
  /// The mode it holds the lock in.
  public var mode: LockMode
  /// Its fencing token.
  public var token: FencingToken
  /// When the session expires, in log time, unless kept alive.
  public var sessionExpiresAtMillis: UInt64

  /// Creates a holder status.
  public init(session: LockSessionID, mode: LockMode, token: FencingToken, sessionExpiresAtMillis: UInt64) {
    self.session = session
    self.mode = mode
    self.token = token
    self.sessionExpiresAtMillis = sessionExpiresAtMillis
  }

  public func encode(to writer: inout WireWriter) {
    writer.write(session)
    writer.write(mode)
    writer.write(token)
    writer.writeVarint(sessionExpiresAtMillis)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    session = try reader.read()
    mode = try reader.read(LockMode.self, field: "mode")
    token = try reader.read()
    sessionExpiresAtMillis = try reader.readVarint()
  }
}

/// One waiter of a lock, as reported by ``LockQuery/lock(_:)``.
public struct LockWaiterStatus: Hashable, Sendable, WireCodable {
  /// The waiting session.
  public var session: LockSessionID
  /// The mode it asked for.
  public var mode: LockMode
  /// The log index of the acquire that queued it.
  public var queuedAt: UInt64
  /// When it gives up waiting, in log time; nil to wait as long as its session lives.
  public var timeoutAtMillis: UInt64?

  /// Creates a waiter status.
  public init(session: LockSessionID, mode: LockMode, queuedAt: UInt64, timeoutAtMillis: UInt64?) {
    self.session = session
    self.mode = mode
    self.queuedAt = queuedAt
    self.timeoutAtMillis = timeoutAtMillis
  }

  public func encode(to writer: inout WireWriter) {
    writer.write(session)
    writer.write(mode)
    writer.writeVarint(queuedAt)
    writer.writeOptional(timeoutAtMillis)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    session = try reader.read()
    mode = try reader.read(LockMode.self, field: "mode")
    queuedAt = try reader.readVarint()
    timeoutAtMillis = try reader.readOptional(UInt64.self)
  }
}

/// The state of one lock.
public struct LockStatus: Hashable, Sendable, WireCodable {
  /// The lock's name.
  public var name: String
  /// Its kind.
  public var kind: LockKind
  /// The largest token granted for it since it last had neither holders nor waiters.
  public var lastToken: FencingToken
  /// Its holders, by session.
  public var holders: [LockHolderStatus]
  /// Its waiters, first in line first.
  public var waiters: [LockWaiterStatus]

  /// Creates a lock status.
  public init(
    name: String, kind: LockKind, lastToken: FencingToken, holders: [LockHolderStatus], waiters: [LockWaiterStatus]
  ) {
    self.name = name
    self.kind = kind
    self.lastToken = lastToken
    self.holders = holders
    self.waiters = waiters
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeString(name)
    writer.write(kind)
    writer.write(lastToken)
    writer.writeArray(holders)
    writer.writeArray(waiters)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    name = try reader.readString()
    kind = try reader.read(LockKind.self, field: "kind")
    lastToken = try reader.read()
    holders = try reader.readArray()
    waiters = try reader.readArray()
  }
}

/// One lock a session waits for, as reported by ``LockQuery/session(_:)``.
public struct LockWaitStatus: Hashable, Sendable, WireCodable {
  /// The lock's name.
  public var lock: String
  /// The mode asked for.
  public var mode: LockMode
  /// Waiters ahead of this one (0: next in line).
  public var position: Int
  /// When it gives up waiting, in log time; nil to wait as long as its session lives.
  public var timeoutAtMillis: UInt64?

  /// Creates a wait status.
  public init(lock: String, mode: LockMode, position: Int, timeoutAtMillis: UInt64?) {
    self.lock = lock
    self.mode = mode
    self.position = position
    self.timeoutAtMillis = timeoutAtMillis
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeString(lock)
    writer.write(mode)
    writer.write(position)
    writer.writeOptional(timeoutAtMillis)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    lock = try reader.readString()
    mode = try reader.read(LockMode.self, field: "mode")
    position = try reader.read()
    timeoutAtMillis = try reader.readOptional(UInt64.self)
  }
}

/// The state of one owner session.
public struct LockSessionStatus: Hashable, Sendable, WireCodable {
  /// The session.
  public var session: LockSessionID
  /// Its TTL; each keep-alive moves the expiry to this long after its entry's log time.
  public var ttlMillis: UInt64
  /// When it expires, in log time, unless kept alive.
  public var expiresAtMillis: UInt64
  /// The locks it holds, by name.
  public var holds: [LockGrant]
  /// The locks it waits for, by name.
  public var waits: [LockWaitStatus]

  /// Creates a session status.
  public init(
    session: LockSessionID, ttlMillis: UInt64, expiresAtMillis: UInt64, holds: [LockGrant], waits: [LockWaitStatus]
  ) {
    self.session = session
    self.ttlMillis = ttlMillis
    self.expiresAtMillis = expiresAtMillis
    self.holds = holds
    self.waits = waits
  }

  public func encode(to writer: inout WireWriter) {
    writer.write(session)
    writer.writeVarint(ttlMillis)
    writer.writeVarint(expiresAtMillis)
    writer.writeArray(holds)
    writer.writeArray(waits)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    session = try reader.read()
    ttlMillis = try reader.readVarint()
    expiresAtMillis = try reader.readVarint()
    holds = try reader.readArray()
    waits = try reader.readArray()
  }
}

/// One line of a lock listing.
public struct LockSummary: Hashable, Sendable, WireCodable {
  /// The lock's name.
  public var name: String
  /// Its kind.
  public var kind: LockKind
  /// How many sessions hold it.
  public var holders: Int
  /// How many sessions wait for it.
  public var waiters: Int
  /// The largest token granted for it since it last had neither holders nor waiters.
  public var lastToken: FencingToken

  /// Creates a summary.
  public init(name: String, kind: LockKind, holders: Int, waiters: Int, lastToken: FencingToken) {
    self.name = name
    self.kind = kind
    self.holders = holders
    self.waiters = waiters
    self.lastToken = lastToken
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeString(name)
    writer.write(kind)
    writer.write(holders)
    writer.write(waiters)
    writer.write(lastToken)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    name = try reader.readString()
    kind = try reader.read(LockKind.self, field: "kind")
    holders = try reader.read()
    waiters = try reader.read()
    lastToken = try reader.read()
  }
}

/// The size and clock of a ``LockTable``.
public struct LockTableCounts: Hashable, Sendable, WireCodable {
  /// Open sessions.
  public var sessions: Int
  /// Locks with a holder or a waiter.
  public var locks: Int
  /// Holds over all locks (a semaphore or shared lock counts each holder).
  public var holds: Int
  /// Waiters over all locks.
  public var waiters: Int
  /// The log time of the last applied entry.
  public var logTimeMillis: UInt64
  /// The log index of the last applied entry.
  public var appliedIndex: UInt64

  /// Creates counts.
  public init(sessions: Int, locks: Int, holds: Int, waiters: Int, logTimeMillis: UInt64, appliedIndex: UInt64) {
    self.sessions = sessions
    self.locks = locks
    self.holds = holds
    self.waiters = waiters
    self.logTimeMillis = logTimeMillis
    self.appliedIndex = appliedIndex
  }

  public func encode(to writer: inout WireWriter) {
    writer.write(sessions)
    writer.write(locks)
    writer.write(holds)
    writer.write(waiters)
    writer.writeVarint(logTimeMillis)
    writer.writeVarint(appliedIndex)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    sessions = try reader.read()
    locks = try reader.read()
    holds = try reader.read()
    waiters = try reader.read()
    logTimeMillis = try reader.readVarint()
    appliedIndex = try reader.readVarint()
  }
}
