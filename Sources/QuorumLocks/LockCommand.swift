public import QuorumCore

/// A state-changing request to the ``LockTable``, written to the log.
public enum LockCommand: Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// Open an owner session that lives `ttlMillis` of log time unless kept alive. Its identifier is the log
  /// index of this entry.
  case openSession(ttlMillis: UInt64)
  /// Renew a session: it now expires `ttlMillis` after this entry's log time.
  case keepAlive(session: LockSessionID)
  /// Close a session: release every lock it holds and cancel every wait.
  case closeSession(session: LockSessionID)
  /// Acquire `lock` in `mode` for `session`. If it cannot be granted now: with `wait`, queue behind the
  /// current waiters (FIFO), giving up after `waitTimeoutMillis` of log time if set; without `wait` (or with a
  /// zero timeout), answer ``LockResponse/busy``. The session's TTL is not renewed by acquiring.
  case acquire(lock: String, session: LockSessionID, mode: LockMode, wait: Bool, waitTimeoutMillis: UInt64?)
  /// Release `lock` if `session` holds it with `token`; otherwise change nothing.
  case release(lock: String, session: LockSessionID, token: FencingToken)
  /// Leave the queue of `lock` if `session` waits there (a client that gave up waiting).
  ///
  /// With `queuedAt`, only the wait queued by that entry is cancelled (the index of the acquire that queued it, as
  /// ``LockWaiterStatus/queuedAt`` shows): a cancel that arrives late, after its own wait ended and the session
  /// queued again for the lock, leaves the newer wait alone and answers ``LockResponse/waitCancelled(_:)`` `false`.
  /// Without it (`nil`, the form of entries written before it existed), whatever wait the session has for the lock
  /// is cancelled.
  case cancelWait(lock: String, session: LockSessionID, queuedAt: UInt64? = nil)
  /// Do nothing but move log time forward, so that due expiries and wait timeouts happen. The leader
  /// proposes it at ``LockTable/nextDeadlineMillis`` when no other command is going to the log.
  case advanceTime

  public var description: String {
    switch self {
    case .openSession(let ttl): return "open-session ttl=\(ttl)ms"
    case .keepAlive(let session): return "keep-alive \(session)"
    case .closeSession(let session): return "close-session \(session)"
    case .acquire(let lock, let session, let mode, let wait, let timeout):
      let waiting = wait ? " wait" + (timeout.map { "<=\($0)ms" } ?? "") : ""
      return "acquire \(lock) \(mode) by \(session)\(waiting)"
    case .release(let lock, let session, let token): return "release \(lock) by \(session) \(token)"
    case .cancelWait(let lock, let session, let queuedAt):
      return "cancel-wait \(lock) by \(session)" + (queuedAt.map { " queued at \($0)" } ?? "")
    case .advanceTime: return "advance-time"
    }
  }

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .openSession(let ttl):
      writer.writeByte(0)
      writer.writeVarint(ttl)
    case .keepAlive(let session):
      writer.writeByte(1)
      writer.write(session)
    case .closeSession(let session):
      writer.writeByte(2)
      writer.write(session)
    case .acquire(let lock, let session, let mode, let wait, let timeout):
      writer.writeByte(3)
      writer.writeString(lock)
      writer.write(session)
      writer.write(mode)
      writer.writeBool(wait)
      writer.writeOptional(timeout)
    case .release(let lock, let session, let token):
      writer.writeByte(4)
      writer.writeString(lock)
      writer.write(session)
      writer.write(token)
    case .cancelWait(let lock, let session, nil):
      // The original form (tag 5), kept byte for byte: entries in existing logs still decode to it. (They apply as
      // they did only with the default, unlimited LockTableLimits.maxExpiriesPerEntry.)
      writer.writeByte(5)
      writer.writeString(lock)
      writer.write(session)
    case .cancelWait(let lock, let session, let queuedAt?):
      writer.writeByte(7)
      writer.writeString(lock)
      writer.write(session)
      writer.writeVarint(queuedAt)
    case .advanceTime:
      writer.writeByte(6)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .openSession(ttlMillis: try reader.readVarint())
    case 1: self = .keepAlive(session: try reader.read())
    case 2: self = .closeSession(session: try reader.read())
    case 3:
      self = .acquire(
        lock: try reader.readString(), session: try reader.read(), mode: try reader.read(LockMode.self, field: "mode"),
        wait: try reader.readBool(), waitTimeoutMillis: try reader.readOptional(UInt64.self))
    case 4: self = .release(lock: try reader.readString(), session: try reader.read(), token: try reader.read())
    case 5: self = .cancelWait(lock: try reader.readString(), session: try reader.read())
    case 6: self = .advanceTime
    case 7:
      self = .cancelWait(lock: try reader.readString(), session: try reader.read(), queuedAt: try reader.readVarint())
    case let tag: throw WireError(.unknownTag(type: "LockCommand", tag: UInt64(tag)), at: at)
    }
  }
}

/// The result of applying a ``LockCommand``.
public enum LockResponse: Hashable, Sendable, WireCodable {
  /// A session was opened; it expires at `expiresAtMillis` of log time unless kept alive.
  case sessionOpened(LockSessionID, expiresAtMillis: UInt64)
  /// The session was renewed; it now expires at `expiresAtMillis` of log time.
  case keptAlive(expiresAtMillis: UInt64)
  /// The session was closed; it held `releasedLocks` locks, now released.
  case sessionClosed(releasedLocks: Int)
  /// The session is unknown, closed or expired: open a new one. Everything it held is already released.
  case sessionExpired(LockSessionID)
  /// The session holds the lock (newly, or already: re-entry returns the existing grant and its token).
  case granted(LockGrant)
  /// The session waits for the lock with `position` waiters ahead of it (0: next in line). The grant will
  /// come in a later entry, as a ``LockEvent/granted(_:)`` event.
  case queued(position: Int)
  /// The lock cannot be granted now and the request did not ask to wait.
  case busy
  /// Whether the release took effect: `false` if the session does not hold the lock with that token (it was
  /// never granted, already released, lost when the session expired, or re-granted with a newer token).
  case released(Bool)
  /// Whether the session was waiting for the lock (and now is not).
  case waitCancelled(Bool)
  /// Time moved forward (the answer to ``LockCommand/advanceTime``).
  case timeAdvanced
  /// The command was refused and changed nothing.
  case failed(LockError)

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .sessionOpened(let session, let expires):
      writer.writeByte(0)
      writer.write(session)
      writer.writeVarint(expires)
    case .keptAlive(let expires):
      writer.writeByte(1)
      writer.writeVarint(expires)
    case .sessionClosed(let released):
      writer.writeByte(2)
      writer.write(released)
    case .sessionExpired(let session):
      writer.writeByte(3)
      writer.write(session)
    case .granted(let grant):
      writer.writeByte(4)
      writer.write(grant)
    case .queued(let position):
      writer.writeByte(5)
      writer.write(position)
    case .busy:
      writer.writeByte(6)
    case .released(let released):
      writer.writeByte(7)
      writer.writeBool(released)
    case .waitCancelled(let cancelled):
      writer.writeByte(8)
      writer.writeBool(cancelled)
    case .timeAdvanced:
      writer.writeByte(9)
    case .failed(let error):
      writer.writeByte(10)
      writer.write(error)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .sessionOpened(try reader.read(), expiresAtMillis: try reader.readVarint())
    case 1: self = .keptAlive(expiresAtMillis: try reader.readVarint())
    case 2: self = .sessionClosed(releasedLocks: try reader.read())
    case 3: self = .sessionExpired(try reader.read())
    case 4: self = .granted(try reader.read(LockGrant.self, field: "grant"))
    case 5: self = .queued(position: try reader.read())
    case 6: self = .busy
    case 7: self = .released(try reader.readBool())
    case 8: self = .waitCancelled(try reader.readBool())
    case 9: self = .timeAdvanced
    case 10: self = .failed(try reader.read(LockError.self, field: "error"))
    case let tag: throw WireError(.unknownTag(type: "LockResponse", tag: UInt64(tag)), at: at)
    }
  }
}

/// Something that happened to a lock or a session while an entry was applied, for the host to tell clients
/// that are not the author of that entry: a queued waiter that was granted, a holder whose lease was lost.
///
/// Collected in order during each apply and drained with ``LockTable/takeEvents()``.
public enum LockEvent: Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// A session was granted a lock. Every grant is reported, including one answered directly to an acquire
  /// (a client matches by lock, session and token and ignores what it already knows).
  case granted(LockGrant)
  /// A holder released a lock, by ``LockCommand/release(lock:session:token:)`` or by closing its session.
  case released(LockGrant)
  /// A session's TTL ran out in log time: every lock it held (`lost`, in name order) is released and every
  /// wait it had is cancelled.
  case expired(session: LockSessionID, lost: [LockGrant])
  /// A waiter's wait timeout passed in log time; it left the queue without the lock.
  case waitTimedOut(lock: String, session: LockSessionID)

  public var description: String {
    switch self {
    case .granted(let grant): return "granted \(grant)"
    case .released(let grant): return "released \(grant)"
    case .expired(let session, let lost):
      return "expired \(session)"
        + (lost.isEmpty ? "" : " lost " + lost.map { "\($0.lock) \($0.token)" }.joined(separator: ", "))
    case .waitTimedOut(let lock, let session): return "wait timed out \(lock) by \(session)"
    }
  }

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .granted(let grant):
      writer.writeByte(0)
      writer.write(grant)
    case .released(let grant):
      writer.writeByte(1)
      writer.write(grant)
    case .expired(let session, let lost):
      writer.writeByte(2)
      writer.write(session)
      writer.writeArray(lost)
    case .waitTimedOut(let lock, let session):
      writer.writeByte(3)
      writer.writeString(lock)
      writer.write(session)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .granted(try reader.read(LockGrant.self, field: "grant"))
    case 1: self = .released(try reader.read(LockGrant.self, field: "grant"))
    case 2: self = .expired(session: try reader.read(), lost: try reader.readArray(LockGrant.self))
    case 3: self = .waitTimedOut(lock: try reader.readString(), session: try reader.read())
    case let tag: throw WireError(.unknownTag(type: "LockEvent", tag: UInt64(tag)), at: at)
    }
  }
}
