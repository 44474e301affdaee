import QuorumCore

extension LockTable {
  /// The snapshot format this build writes. It reads version 1 too, whose sessions have no recorded owner (any
  /// principal may use them, as before owners were checked).
  static let snapshotVersion: UInt64 = 2

  /// Serialises the table deterministically: sessions by identifier, locks by name, holders by session,
  /// waiters in queue order. Derived indexes (each session's holds and waits, the deadline heaps) are not
  /// written; ``restore(from:)`` rebuilds them. Pending events are not state and are not written.
  public func snapshot() -> [UInt8] {
    var w = WireWriter(reservingCapacity: 32 + sessions.count * 12 + locks.count * 48)
    w.writeVarint(Self.snapshotVersion)
    w.writeVarint(logTimeMillis)
    w.writeVarint(appliedIndex)
    w.writeVarint(UInt64(sessions.count))
    for id in sessions.keys.sorted() {
      guard let session = sessions[id] else { continue }
      w.write(id)
      w.writeVarint(session.ttlMillis)
      w.writeVarint(session.expiresAtMillis)
      // Owner: 0 none (no principal), 1 a principal's name follows, 2 unknown (restored from version 1).
      if session.ownerUnknown {
        w.writeByte(2)
      } else if let owner = session.owner {
        w.writeByte(1)
        w.writeString(owner)
      } else {
        w.writeByte(0)
      }
    }
    w.writeVarint(UInt64(locks.count))
    for name in KeyOrder.sorted(locks.keys) {
      guard let lock = locks[name] else { continue }
      w.writeString(name)
      w.write(lock.kind)
      w.write(lock.lastToken)
      w.writeVarint(UInt64(lock.holders.count))
      for id in lock.holders.keys.sorted() {
        guard let holder = lock.holders[id] else { continue }
        w.write(id)
        w.write(holder.mode)
        w.write(holder.token)
      }
      w.writeVarint(UInt64(lock.waiters.count))
      for waiter in lock.waiters {
        w.write(waiter.session)
        w.write(waiter.mode)
        w.writeVarint(waiter.queuedAt)
        w.writeOptional(waiter.timeoutAtMillis)
      }
    }
    return w.bytes
  }

  /// Replaces the state with a snapshot made by ``snapshot()``, rebuilding every index; pending events are
  /// dropped. The limits stay this table's own.
  ///
  /// The snapshot is checked as well as decoded (sorted and unique identifiers, sessions with a TTL, holders and
  /// waiters of known sessions, modes that fit their lock, no more holders than the lock admits, tokens not above the
  /// applied index), so a snapshot that decodes but breaks the table's invariants is refused rather than trapping
  /// later.
  /// - Throws: ``QuorumCore/WireError``; the table is unchanged when it throws.
  public mutating func restore(from snapshot: [UInt8]) throws {
    var r = WireReader(snapshot, limits: .snapshot(snapshot))
    let version = try r.readVarint()
    guard version == 1 || version == Self.snapshotVersion else {
      throw WireError(.unsupportedVersion(UInt8(truncatingIfNeeded: version)), at: 0)
    }
    var table = self
    table.events = []
    table.logTimeMillis = try r.readVarint()
    table.appliedIndex = try r.readVarint()
    table.sessions = try Self.readSessions(&r, appliedIndex: table.appliedIndex, version: version)
    table.locks = [:]
    table.timedWaiters = [:]
    let lockCount = try r.readCount()
    table.locks.reserveCapacity(lockCount)
    for _ in 0..<lockCount {
      let at = r.position
      let name = try r.readString()
      // Written in key order by this build; a build before 2026-12-07 sorted by Swift's `<`, which is no total
      // order for names spelled in different normal forms (see `KeyOrder`), so only a repeated name is refused.
      guard !name.isEmpty, table.locks[name] == nil else {
        throw WireError(.invalidValue("lock name \"\(name)\" empty or repeated"), at: at)
      }
      do {
        let lock = try table.readLock(&r)
        table.locks[name] = lock
        try table.index(lock, named: name, at: at)
      } catch { throw error.inside(name) }
    }
    try r.expectEnd()
    table.rebuildSessionExpiries()
    table.rebuildWaiterTimeouts()
    self = table
  }

  private static func readSessions(_ r: inout WireReader, appliedIndex: UInt64, version: UInt64) throws(WireError)
    -> [LockSessionID: Session]
  {
    let count = try r.readCount()
    var sessions: [LockSessionID: Session] = [:]
    sessions.reserveCapacity(count)
    var previous: LockSessionID?
    for _ in 0..<count {
      var at = r.position
      let id = try r.read(LockSessionID.self)
      guard previous.map({ $0 < id }) ?? true, id.rawValue > 0, id.rawValue <= appliedIndex else {
        throw WireError(.invalidValue("session \(id) out of order or beyond applied index \(appliedIndex)"), at: at)
      }
      previous = id
      at = r.position
      let ttl = try r.readVarint()
      // A session opened with no TTL (never accepted by openSession) would be due in the entry renewing it, and a
      // waiter granted in that entry trips the grant's check that its session outlives the entry.
      guard ttl > 0 else { throw WireError(.invalidValue("session \(id) has a TTL of 0 ms"), at: at) }
      var session = Session(ttlMillis: ttl, expiresAtMillis: try r.readVarint())
      if version >= 2 {
        let ownerAt = r.position
        switch try r.readByte() {
        case 0: break
        case 1: session.owner = try r.readString()
        case 2: session.ownerUnknown = true
        case let tag: throw WireError(.unknownTag(type: "session owner", tag: UInt64(tag)), at: ownerAt)
        }
      } else {
        session.ownerUnknown = true
      }
      sessions[id] = session
    }
    return sessions
  }

  private func readLock(_ r: inout WireReader) throws(WireError) -> Lock {
    var at = r.position
    let kind = try r.read(LockKind.self, field: "kind")
    if case .semaphore(let permits) = kind, permits == 0 {
      throw WireError(.invalidValue("semaphore of 0 permits"), at: at)
    }
    at = r.position
    let lastToken = try r.read(FencingToken.self)
    guard lastToken.rawValue <= appliedIndex else {
      throw WireError(.invalidValue("last token \(lastToken) beyond applied index \(appliedIndex)"), at: at)
    }
    var lock = Lock(kind: kind, lastToken: lastToken)
    let holderCount = try r.readCount()
    var previous: LockSessionID?
    for _ in 0..<holderCount {
      at = r.position
      let id = try r.read(LockSessionID.self)
      let mode = try r.read(LockMode.self, field: "mode")
      let token = try r.read(FencingToken.self)
      guard previous.map({ $0 < id }) ?? true, sessions[id] != nil else {
        throw WireError(.invalidValue("holder \(id) unknown or out of order"), at: at)
      }
      guard kind.accepts(mode), lock.admits(mode) else {
        throw WireError(.invalidValue("holder \(id) as \(mode) does not fit a \(kind) lock held so"), at: at)
      }
      guard token > .zero, token <= lastToken else {
        throw WireError(.invalidValue("holder \(id) token \(token) not in 1...\(lastToken)"), at: at)
      }
      previous = id
      lock.holders[id] = Holder(mode: mode, token: token)
    }
    let waiterCount = try r.readCount()
    lock.waiters.reserveCapacity(waiterCount)
    for _ in 0..<waiterCount {
      at = r.position
      let waiter = Waiter(
        session: try r.read(LockSessionID.self), mode: try r.read(LockMode.self, field: "mode"),
        queuedAt: try r.readVarint(), timeoutAtMillis: try r.readOptional(UInt64.self))
      guard sessions[waiter.session] != nil, lock.holders[waiter.session] == nil, kind.accepts(waiter.mode),
        waiter.queuedAt > 0, waiter.queuedAt <= appliedIndex
      else {
        throw WireError(.invalidValue("waiter \(waiter.session) unknown, a holder, or of another kind"), at: at)
      }
      lock.waiters.append(waiter)
    }
    guard !lock.holders.isEmpty || !lock.waiters.isEmpty else {
      throw WireError(.invalidValue("lock with neither holders nor waiters"), at: r.position)
    }
    // After every apply the first waiter is one the holders do not admit (or it would have been granted), unless
    // its session is due and waits to be ended.
    if let head = lock.waiters.first, lock.admits(head.mode),
      (sessions[head.session]?.expiresAtMillis ?? 0) > logTimeMillis
    {
      throw WireError(.invalidValue("first waiter \(head.session) could have been granted"), at: r.position)
    }
    return lock
  }

  /// Records `lock`'s holders and waiters in their sessions and the timeout index, refusing duplicates.
  private mutating func index(_ lock: Lock, named name: String, at offset: Int) throws(WireError) {
    for id in lock.holders.keys { sessions.modify(id) { _ = $0.holds.insert(name) } }
    for waiter in lock.waiters {
      let inserted = sessions.modify(waiter.session) { $0.waits.insert(name).inserted } ?? false
      guard inserted else {
        throw WireError(.invalidValue("session \(waiter.session) queued twice"), at: offset)
      }
      if waiter.timeoutAtMillis != nil {
        guard timedWaiters.updateValue(WaiterRef(lock: name, session: waiter.session), forKey: waiter.queuedAt) == nil
        else { throw WireError(.invalidValue("two waiters queued at \(waiter.queuedAt)"), at: offset) }
      }
    }
  }

  /// Every way the derived indexes disagree with the locks, or the state breaks an invariant that holds after
  /// each apply; empty when consistent. For tests: O(everything).
  func invariantViolations() -> [String] {
    var problems: [String] = []
    var holds: [LockSessionID: Set<String>] = [:]
    var waits: [LockSessionID: Set<String>] = [:]
    var timed: [UInt64: WaiterRef] = [:]
    var earliest: UInt64?
    func note(_ deadline: UInt64) { earliest = Swift.min(earliest ?? .max, deadline) }
    for (name, lock) in locks {
      if lock.holders.isEmpty && lock.waiters.isEmpty { problems.append("\(name) is empty") }
      if lock.holders.values.contains(where: { $0.mode == .exclusive }) && lock.holders.count > 1 {
        problems.append("\(name) has an exclusive holder among \(lock.holders.count)")
      }
      if case .semaphore(let permits) = lock.kind, lock.holders.count > Int(permits) {
        problems.append("\(name) has \(lock.holders.count) holders of \(permits) permits")
      }
      if let head = lock.waiters.first, lock.admits(head.mode), sessions[head.session].map({ isDue($0) }) != true,
        !isDue(head)
      {
        problems.append("\(name)'s first waiter \(head.session) could be granted")
      }
      for (id, holder) in lock.holders {
        holds[id, default: []].insert(name)
        if holder.token > lock.lastToken { problems.append("\(name) holder \(id) token above last token") }
        if !lock.kind.accepts(holder.mode) { problems.append("\(name) holder \(id) of the wrong kind") }
      }
      for waiter in lock.waiters {
        waits[waiter.session, default: []].insert(name)
        if let timeout = waiter.timeoutAtMillis {
          timed[waiter.queuedAt] = WaiterRef(lock: name, session: waiter.session)
          // Left for a later entry only by a bound on wait timeouts per entry.
          if timeout <= logTimeMillis && limits.maxWaitTimeoutsPerEntry == .max {
            problems.append("\(name) waiter \(waiter.session) past its timeout")
          }
          note(timeout)
        }
      }
    }
    for (id, session) in sessions {
      if session.holds != holds[id] ?? [] {
        problems.append("\(id) holds \(session.holds) but locks say \(holds[id] ?? [])")
      }
      if session.waits != waits[id] ?? [] {
        problems.append("\(id) waits \(session.waits) but locks say \(waits[id] ?? [])")
      }
      if !sessionExpiries.items.contains(Deadline(millis: session.expiresAtMillis, id: id.rawValue)) {
        problems.append("\(id) missing from the expiry heap")
      }
      note(session.expiresAtMillis)
    }
    for id in Set(holds.keys).union(waits.keys) where sessions[id] == nil {
      problems.append("\(id) holds or waits without a session")
    }
    if timed != timedWaiters { problems.append("timed waiters index \(timedWaiters) but queues say \(timed)") }
    for (queuedAt, ref) in timed {
      let timeout = locks[ref.lock]?.waiters.first { $0.queuedAt == queuedAt }?.timeoutAtMillis
      if let timeout, !waiterTimeouts.items.contains(Deadline(millis: timeout, id: queuedAt)) {
        problems.append("waiter \(queuedAt) missing from the timeout heap")
      }
    }
    if nextDeadlineMillis != earliest {
      problems.append(
        "next deadline \(String(describing: nextDeadlineMillis)) but earliest is \(String(describing: earliest))")
    }
    if !touched.isEmpty { problems.append("touched locks left over: \(touched)") }
    return problems
  }
}
