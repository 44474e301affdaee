public import QuorumCore

/// Identifies an owner session of the lock table: the log index of the entry that opened it.
///
/// Owner sessions are the lock service's leases (like etcd's): every lock is held by one, and all of a
/// session's locks are released when it is closed or its TTL runs out in log time. They are separate from the
/// exactly-once request sessions of ``QuorumCore/ReplicatedStateMachine``, which only deduplicate retries.
public struct LockSessionID: RawRepresentable, Hashable, Comparable, Sendable, WireCodable, CustomStringConvertible {
  /// The log index of the entry that opened the session.
  public var rawValue: UInt64

  /// Creates an identifier from its numeric value.
  public init(rawValue: UInt64) { self.rawValue = rawValue }

  /// Creates an identifier from its numeric value.
  public init(_ rawValue: UInt64) { self.rawValue = rawValue }

  /// `s<number>`.
  public var description: String { "s\(rawValue)" }

  public static func < (lhs: LockSessionID, rhs: LockSessionID) -> Bool { lhs.rawValue < rhs.rawValue }

  public func encode(to writer: inout WireWriter) { writer.writeVarint(rawValue) }

  public init(from reader: inout WireReader) throws(WireError) { rawValue = try reader.readVarint() }
}

/// A fencing token: the log index of the entry that granted a lock.
///
/// Log indexes only grow, across leader changes, snapshots and restarts, so each later grant of the same lock
/// carries a larger token. A protected resource remembers the largest token it has seen for a lock and refuses
/// smaller ones (``FencingGuard``), which shuts out a holder that paused past its lease and woke up believing
/// it still held the lock. Holders granted together in one entry (shared holders, semaphore permits) share a
/// token; an exclusive holder never shares its token with another holder.
public struct FencingToken: RawRepresentable, Hashable, Comparable, Sendable, WireCodable, CustomStringConvertible {
  /// The log index of the granting entry.
  public var rawValue: UInt64

  /// Creates a token from its numeric value.
  public init(rawValue: UInt64) { self.rawValue = rawValue }

  /// Creates a token from its numeric value.
  public init(_ rawValue: UInt64) { self.rawValue = rawValue }

  /// The token below every grant (no grant is made at index 0).
  public static let zero = FencingToken(rawValue: 0)

  /// `t<number>`.
  public var description: String { "t\(rawValue)" }

  public static func < (lhs: FencingToken, rhs: FencingToken) -> Bool { lhs.rawValue < rhs.rawValue }

  public func encode(to writer: inout WireWriter) { writer.writeVarint(rawValue) }

  public init(from reader: inout WireReader) throws(WireError) { rawValue = try reader.readVarint() }
}

/// How a session asks to hold a lock.
public enum LockMode: Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// The only holder (the writer of a reader/writer lock).
  case exclusive
  /// One of any number of shared holders (the readers of a reader/writer lock); excludes an exclusive holder.
  case shared
  /// One permit of a counting semaphore with `permits` permits. Every acquire of the same semaphore must name
  /// the same number of permits.
  case semaphore(permits: UInt32)

  /// The kind of lock this mode applies to.
  public var kind: LockKind {
    switch self {
    case .exclusive, .shared: return .readWrite
    case .semaphore(let permits): return .semaphore(permits: permits)
    }
  }

  public var description: String {
    switch self {
    case .exclusive: return "exclusive"
    case .shared: return "shared"
    case .semaphore(let permits): return "semaphore(\(permits))"
    }
  }

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .exclusive: writer.writeByte(0)
    case .shared: writer.writeByte(1)
    case .semaphore(let permits):
      writer.writeByte(2)
      writer.writeVarint(UInt64(permits))
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .exclusive
    case 1: self = .shared
    case 2: self = .semaphore(permits: try reader.readVarint(as: UInt32.self))
    case let tag: throw WireError(.unknownTag(type: "LockMode", tag: UInt64(tag)), at: at)
    }
  }
}

/// What kind of lock a name currently denotes. A name's kind is fixed by its first acquire and lasts while the
/// lock has holders or waiters.
public enum LockKind: Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// A reader/writer lock: one ``LockMode/exclusive`` holder or any number of ``LockMode/shared`` ones.
  case readWrite
  /// A counting semaphore with this many permits.
  case semaphore(permits: UInt32)

  /// Whether a request in `mode` is for a lock of this kind.
  public func accepts(_ mode: LockMode) -> Bool { mode.kind == self }

  public var description: String {
    switch self {
    case .readWrite: return "read-write"
    case .semaphore(let permits): return "semaphore(\(permits))"
    }
  }

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .readWrite: writer.writeByte(0)
    case .semaphore(let permits):
      writer.writeByte(1)
      writer.writeVarint(UInt64(permits))
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .readWrite
    case 1: self = .semaphore(permits: try reader.readVarint(as: UInt32.self))
    case let tag: throw WireError(.unknownTag(type: "LockKind", tag: UInt64(tag)), at: at)
    }
  }
}

/// One session's hold of one lock: who, how, and the fencing token to present to protected resources.
public struct LockGrant: Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// The lock's name.
  public var lock: String
  /// The holding session.
  public var session: LockSessionID
  /// The mode it holds the lock in.
  public var mode: LockMode
  /// The fencing token: the log index of the granting entry.
  public var token: FencingToken

  /// Creates a grant.
  public init(lock: String, session: LockSessionID, mode: LockMode, token: FencingToken) {
    self.lock = lock
    self.session = session
    self.mode = mode
    self.token = token
  }

  public var description: String { "\(lock) \(mode) by \(session) \(token)" }

  public func encode(to writer: inout WireWriter) {
    writer.writeString(lock)
    session.encode(to: &writer)
    mode.encode(to: &writer)
    token.encode(to: &writer)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    lock = try reader.readString()
    session = try reader.read(LockSessionID.self, field: "session")
    mode = try reader.read(LockMode.self, field: "mode")
    token = try reader.read(FencingToken.self, field: "token")
  }
}

/// Why the lock table refused a command. Refusals change nothing.
public enum LockError: Error, Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// ``LockTableLimits/maxSessions`` sessions are open.
  case tooManySessions(limit: Int)
  /// ``LockTableLimits/maxLocks`` locks have holders or waiters.
  case tooManyLocks(limit: Int)
  /// ``LockTableLimits/maxWaitersPerLock`` sessions already wait for this lock.
  case tooManyWaiters(lock: String, limit: Int)
  /// The session already holds or waits for ``LockTableLimits/maxHoldsPerSession`` locks.
  case tooManyHolds(session: LockSessionID, limit: Int)
  /// The lock name is empty or longer than ``LockTableLimits/maxNameBytes`` bytes of UTF-8.
  case invalidName(bytes: Int, maxBytes: Int)
  /// The session TTL is outside ``LockTableLimits/minTTLMillis``...``LockTableLimits/maxTTLMillis``.
  case ttlOutOfRange(requestedMillis: UInt64, minMillis: UInt64, maxMillis: UInt64)
  /// A semaphore was asked for with zero permits or more than ``LockTableLimits/maxSemaphorePermits``.
  case invalidPermits(requested: UInt32, max: UInt32)
  /// The name is currently a lock of another kind (a reader/writer lock asked for as a semaphore, or the
  /// reverse).
  case kindMismatch(lock: String, existing: LockKind, requested: LockMode)
  /// The name is currently a semaphore with a different number of permits.
  case permitsMismatch(lock: String, existing: UInt32, requested: UInt32)
  /// The session already holds or waits for this lock in another mode (no upgrade or downgrade in place:
  /// release first).
  case conflictingReentry(lock: String, existing: LockMode, requested: LockMode)
  /// The session belongs to another principal (the one whose request opened it): only its owner may keep it
  /// alive, close it, or acquire, release or stop waiting for locks with it.
  case sessionNotOwned(LockSessionID)

  public var description: String {
    switch self {
    case .tooManySessions(let limit): return "too many sessions (limit \(limit))"
    case .tooManyLocks(let limit): return "too many locks (limit \(limit))"
    case .tooManyWaiters(let lock, let limit): return "too many waiters for \(lock) (limit \(limit))"
    case .tooManyHolds(let session, let limit):
      return "session \(session) holds or waits for too many locks (limit \(limit))"
    case .invalidName(let bytes, let maxBytes): return "lock name of \(bytes) bytes (must be 1...\(maxBytes))"
    case .ttlOutOfRange(let requested, let min, let max):
      return "session TTL \(requested) ms outside \(min)...\(max) ms"
    case .invalidPermits(let requested, let max): return "semaphore of \(requested) permits (must be 1...\(max))"
    case .kindMismatch(let lock, let existing, let requested):
      return "\(lock) is a \(existing) lock; cannot acquire it as \(requested)"
    case .permitsMismatch(let lock, let existing, let requested):
      return "\(lock) is a semaphore of \(existing) permits, not \(requested)"
    case .conflictingReentry(let lock, let existing, let requested):
      return "the session already has \(lock) as \(existing); cannot acquire it as \(requested)"
    case .sessionNotOwned(let session): return "session \(session) belongs to another principal"
    }
  }

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .tooManySessions(let limit):
      writer.writeByte(0)
      writer.write(limit)
    case .tooManyLocks(let limit):
      writer.writeByte(1)
      writer.write(limit)
    case .tooManyWaiters(let lock, let limit):
      writer.writeByte(2)
      writer.writeString(lock)
      writer.write(limit)
    case .tooManyHolds(let session, let limit):
      writer.writeByte(3)
      writer.write(session)
      writer.write(limit)
    case .invalidName(let bytes, let maxBytes):
      writer.writeByte(4)
      writer.write(bytes)
      writer.write(maxBytes)
    case .ttlOutOfRange(let requested, let min, let max):
      writer.writeByte(5)
      writer.writeVarint(requested)
      writer.writeVarint(min)
      writer.writeVarint(max)
    case .invalidPermits(let requested, let max):
      writer.writeByte(6)
      writer.write(requested)
      writer.write(max)
    case .kindMismatch(let lock, let existing, let requested):
      writer.writeByte(7)
      writer.writeString(lock)
      writer.write(existing)
      writer.write(requested)
    case .permitsMismatch(let lock, let existing, let requested):
      writer.writeByte(8)
      writer.writeString(lock)
      writer.write(existing)
      writer.write(requested)
    case .conflictingReentry(let lock, let existing, let requested):
      writer.writeByte(9)
      writer.writeString(lock)
      writer.write(existing)
      writer.write(requested)
    case .sessionNotOwned(let session):
      writer.writeByte(10)
      writer.write(session)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .tooManySessions(limit: try reader.read())
    case 1: self = .tooManyLocks(limit: try reader.read())
    case 2: self = .tooManyWaiters(lock: try reader.readString(), limit: try reader.read())
    case 3: self = .tooManyHolds(session: try reader.read(), limit: try reader.read())
    case 4: self = .invalidName(bytes: try reader.read(), maxBytes: try reader.read())
    case 5:
      self = .ttlOutOfRange(
        requestedMillis: try reader.readVarint(), minMillis: try reader.readVarint(), maxMillis: try reader.readVarint()
      )
    case 6: self = .invalidPermits(requested: try reader.read(), max: try reader.read())
    case 7:
      self = .kindMismatch(lock: try reader.readString(), existing: try reader.read(), requested: try reader.read())
    case 8:
      self = .permitsMismatch(lock: try reader.readString(), existing: try reader.read(), requested: try reader.read())
    case 9:
      self = .conflictingReentry(
        lock: try reader.readString(), existing: try reader.read(), requested: try reader.read())
    case 10: self = .sessionNotOwned(try reader.read())
    case let tag: throw WireError(.unknownTag(type: "LockError", tag: UInt64(tag)), at: at)
    }
  }
}

/// The bounds of a ``LockTable``. Every replica of a group must use the same limits (they decide responses),
/// so they belong to the group's configuration. Exceeding one gives a ``LockError``, never a crash.
public struct LockTableLimits: Hashable, Sendable {
  /// The most open sessions. Default 100,000: a session costs a few hundred bytes plus its holds.
  public var maxSessions: Int
  /// The most locks with a holder or a waiter (a free lock is forgotten). Default 100,000.
  public var maxLocks: Int
  /// The most sessions queued behind one lock. Default 1,024: a queue is scanned when a waiter leaves it, so
  /// this bounds that work, and a longer queue means the lock is the bottleneck anyway.
  public var maxWaitersPerLock: Int
  /// The longest lock name, in bytes of UTF-8. Default 256.
  public var maxNameBytes: Int
  /// The most locks one session may hold or wait for at once. Default 1,024: closing or expiring a session
  /// releases them all in one entry, so this bounds that entry's work.
  public var maxHoldsPerSession: Int
  /// The shortest session TTL, in milliseconds of log time. Default 1,000 ms: a lease shorter than a leader
  /// election (Raft's default election timeout is 150–300 ms, and a client needs a round trip to renew)
  /// would expire during ordinary failovers.
  public var minTTLMillis: UInt64
  /// The longest session TTL. Default 600,000 ms (10 minutes): a dead client holds its locks this long at most.
  public var maxTTLMillis: UInt64
  /// The most permits of one semaphore. Default 10,000 (each holder is one session).
  public var maxSemaphorePermits: UInt32
  /// The most entries one listing query returns. Default 1,000.
  public var maxListCount: Int
  /// The most sessions one entry ends for their expiry. Default `Int.max`: unlimited, every due session is ended
  /// in the first entry at or after its expiry, exactly as before this limit existed.
  ///
  /// A bounded value (an opt-in) bounds an entry's work when a burst of sessions is due at once (a client fleet cut
  /// off together), since each releases up to ``maxHoldsPerSession`` locks. A session is over at its expiry whatever
  /// this says: the commands naming it are answered as for an expired session and none of its waits is granted;
  /// releasing what it holds waits for the following entries (``LockTable/nextDeadlineMillis`` stays due, so the
  /// leader proposes them as time-only entries, one at a time at its ticks: about `maxExpiriesPerEntry` sessions
  /// per tick when nothing else is written). Meanwhile due sessions still count towards ``maxSessions``, ``maxLocks``
  /// and ``maxWaitersPerLock`` unless ``endDueAtFullLimits`` is set. A lock whose only holder is a due session still
  /// answers a no-wait acquire `busy` until the session is ended.
  ///
  /// This is replicated behaviour, not a local tuning knob: it decides in which entry a session's locks are
  /// released, and so which waiter is granted with which fencing token. Every member of a group must use the same
  /// value from the group's first entry on (like the engine's session policy). Changing it on a group with
  /// history makes replicas diverge: a member that re-applies old entries with another value (after restoring an
  /// older snapshot, or during a rolling restart) ends a different set of sessions in them than the members that
  /// applied them first.

  public var maxExpiriesPerEntry: Int
  /// The most waits one entry ends because their timeout passed. Default `Int.max`: unlimited, every wait whose
  /// timeout has passed is ended in the first entry at or after it, exactly as before this limit existed.
  ///
  /// A bounded value (an opt-in) bounds an entry's work when many waits time out together (each takes its waiter
  /// out of a queue of up to ``maxWaitersPerLock``). Those ended are the earliest timeouts first (then the earliest
  /// queued). A wait is over at its timeout whatever this says: it is never granted (a queue whose first waiter is
  /// such a wait waits for it to be ended), and an acquire or a cancel of its session for its lock ends it first, as
  /// the unbounded table would have at the start of the entry. The others are ended by the following entries
  /// (``LockTable/nextDeadlineMillis`` stays due, so the leader proposes them as time-only entries, one at a time at
  /// its ticks). Meanwhile a status read may still list such a waiter, with its timeout in the past.
  ///
  /// Like ``maxExpiriesPerEntry``, this is replicated behaviour, not a local tuning knob: it decides in which entry
  /// a wait ends, and so which waiter is granted with which fencing token. Every member of a group must use the same
  /// value from the group's first entry on; changing it on a group with history makes replicas diverge.
  public var maxWaitTimeoutsPerEntry: Int
  /// Whether a command that finds a limit reached first ends the sessions and waits that are due but were left for
  /// later entries by ``maxExpiriesPerEntry`` or ``maxWaitTimeoutsPerEntry``. Default `false`: such sessions and
  /// waits count towards the limits until an entry ends them, and the command is refused.
  ///
  /// When set (an opt-in), due sessions and waits do not refuse live clients: an acquire of a new lock that finds
  /// ``maxLocks`` locks ends due sessions, earliest deadline first, until one is freed; an acquire that would queue
  /// behind ``maxWaitersPerLock`` waiters ends that queue's due waits and the due sessions of its waiters, first in
  /// line first (an open never finds ``maxSessions`` sessions with one of them due, since the entry's own expiries
  /// have ended one). Each within another budget of the bound, judged by the entry's log time so that every replica
  /// ends the same; the command is refused only if that leaves no room. It runs only for a command the table would
  /// not refuse for naming another principal's session. With both bounds unlimited nothing is ever left due and this
  /// changes nothing.
  ///
  /// Like the bounds, this is replicated behaviour, not a local tuning knob: it decides whether an entry grants or
  /// refuses, which sessions it ends, and so which waiter is granted with which fencing token. Every member of a
  /// group must use the same value from the group's first entry on; changing it on a group with history makes
  /// replicas diverge. Builds before this setting always refused such a command, so a group keeps that behaviour,
  /// on every build, until it is created with this set.
  public var endDueAtFullLimits: Bool

  /// Creates limits; every argument defaults to the value documented on its property.
  public init(
    maxSessions: Int = 100_000, maxLocks: Int = 100_000, maxWaitersPerLock: Int = 1_024, maxNameBytes: Int = 256,
    maxHoldsPerSession: Int = 1_024, minTTLMillis: UInt64 = 1_000, maxTTLMillis: UInt64 = 600_000,
    maxSemaphorePermits: UInt32 = 10_000, maxListCount: Int = 1_000, maxExpiriesPerEntry: Int = .max,
    maxWaitTimeoutsPerEntry: Int = .max, endDueAtFullLimits: Bool = false
  ) {
    self.maxSessions = maxSessions
    self.maxLocks = maxLocks
    self.maxWaitersPerLock = maxWaitersPerLock
    self.maxNameBytes = maxNameBytes
    self.maxHoldsPerSession = maxHoldsPerSession
    self.minTTLMillis = minTTLMillis
    self.maxTTLMillis = maxTTLMillis
    self.maxSemaphorePermits = maxSemaphorePermits
    self.maxListCount = maxListCount
    self.maxExpiriesPerEntry = maxExpiriesPerEntry
    self.maxWaitTimeoutsPerEntry = maxWaitTimeoutsPerEntry
    self.endDueAtFullLimits = endDueAtFullLimits
  }

  /// Checks that every limit is usable.
  /// - Throws: ``QuorumCore/ConfigurationError`` naming the first bad limit.
  public func validate() throws(ConfigurationError) {
    func positive(_ value: Int, _ name: String) throws(ConfigurationError) {
      guard value > 0 else { throw ConfigurationError(setting: name, reason: "must be positive, not \(value)") }
    }
    try positive(maxSessions, "LockLimits.maxSessions")
    try positive(maxLocks, "LockLimits.maxLocks")
    try positive(maxWaitersPerLock, "LockLimits.maxWaitersPerLock")
    try positive(maxNameBytes, "LockLimits.maxNameBytes")
    try positive(maxHoldsPerSession, "LockLimits.maxHoldsPerSession")
    try positive(maxListCount, "LockLimits.maxListCount")
    try positive(maxExpiriesPerEntry, "LockLimits.maxExpiriesPerEntry")
    try positive(maxWaitTimeoutsPerEntry, "LockLimits.maxWaitTimeoutsPerEntry")
    guard minTTLMillis > 0 else {
      throw ConfigurationError(setting: "LockLimits.minTTLMillis", reason: "must be positive")
    }
    guard maxTTLMillis >= minTTLMillis else {
      throw ConfigurationError(
        setting: "LockLimits.maxTTLMillis", reason: "\(maxTTLMillis) ms is below minTTLMillis (\(minTTLMillis) ms)")
    }
    guard maxSemaphorePermits > 0 else {
      throw ConfigurationError(setting: "LockLimits.maxSemaphorePermits", reason: "must be positive")
    }
  }
}
