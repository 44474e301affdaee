import QuorumCore
import Testing

@testable import QuorumLocks

@Suite("LockTable: cancels name their wait; expiries are bounded per entry")
struct LockTableCancelAndExpiryTests {
  static let ttl: UInt64 = 100_000

  @Test("a cancel naming an ended wait leaves the session's newer wait for the same lock alone")
  func staleCancelSparesNewerWait() {
    var table = LockTable()
    table.apply(1, at: 0, .openSession(ttlMillis: Self.ttl))
    table.apply(2, at: 0, .openSession(ttlMillis: Self.ttl))
    #expect(table.apply(3, at: 0, acquire("x", s(1))) == granted("x", s(1), t(3)))
    #expect(table.apply(4, at: 0, acquire("x", s(2))) == .queued(position: 0))
    // The call that queued at 4 gives up; its cancel is applied.
    #expect(table.apply(5, at: 0, .cancelWait(lock: "x", session: s(2), queuedAt: 4)) == .waitCancelled(true))
    // Another call of the same client queues in the same session.
    #expect(table.apply(6, at: 0, acquire("x", s(2))) == .queued(position: 0))
    // A second copy of the first cancel (a retry sent as a new request) arrives late: it names the wait of entry 4.
    #expect(table.apply(7, at: 0, .cancelWait(lock: "x", session: s(2), queuedAt: 4)) == .waitCancelled(false))
    #expect(table.waiters("x") == [s(2)], "the newer wait is still queued")
    #expect(table.apply(8, at: 0, .release(lock: "x", session: s(1), token: t(3))) == .released(true))
    #expect(table.holders("x") == [grant("x", s(2), t(8))], "the newer wait was granted")
    #expect(table.takeEvents().contains(.granted(grant("x", s(2), t(8)))))
  }

  @Test("a cancel naming the current wait ends it; one without an entry (the original form) ends any wait")
  func cancelNamingCurrentWait() {
    var table = LockTable()
    table.apply(1, at: 0, .openSession(ttlMillis: Self.ttl))
    table.apply(2, at: 0, .openSession(ttlMillis: Self.ttl))
    table.apply(3, at: 0, acquire("x", s(1)))
    table.apply(4, at: 0, acquire("x", s(2), timeout: 50_000))
    #expect(table.apply(5, at: 0, .cancelWait(lock: "x", session: s(2), queuedAt: 3)) == .waitCancelled(false))
    #expect(table.apply(6, at: 0, .cancelWait(lock: "x", session: s(2), queuedAt: 4)) == .waitCancelled(true))
    #expect(table.waiters("x") == [])
    table.apply(7, at: 0, acquire("x", s(2)))
    #expect(table.apply(8, at: 0, .cancelWait(lock: "x", session: s(2))) == .waitCancelled(true))
    #expect(table.waiters("x") == [])
  }

  @Test("the original cancel form keeps its bytes (tag 5); the form naming a wait round-trips under tag 7")
  func cancelCodec() throws {
    let old = LockCommand.cancelWait(lock: "d", session: s(8))
    #expect(old.wireBytes() == [5, 1, UInt8(ascii: "d"), 8])
    #expect(try LockCommand(wireBytes: [5, 1, UInt8(ascii: "d"), 8]) == old)
    let named = LockCommand.cancelWait(lock: "d", session: s(8), queuedAt: 300)
    #expect(named.wireBytes().first == 7)
    #expect(try LockCommand(wireBytes: named.wireBytes()) == named)
    #expect(named != old)
  }

  /// Five sessions of 1 s holding a lock each, the last one wanted by a long-lived session; at most two expiries
  /// per entry.
  static func burst() throws -> LockTable {
    var table = try LockTable(limits: LockTableLimits(maxExpiriesPerEntry: 2))
    for i in 1...5 { table.apply(UInt64(i), at: 0, .openSession(ttlMillis: 1_000)) }
    table.apply(6, at: 0, .openSession(ttlMillis: 10_000))
    for i in 1...5 {
      #expect(
        table.apply(UInt64(6 + i), at: 0, acquire("k\(i)", s(UInt64(i))))
          == granted("k\(i)", s(UInt64(i)), t(UInt64(6 + i))))
    }
    #expect(table.apply(12, at: 0, acquire("k5", s(6))) == .queued(position: 0))
    _ = table.takeEvents()
    return table
  }

  /// The sessions an entry's events say expired.
  static func expired(_ events: [LockEvent]) -> [LockSessionID] {
    events.compactMap { if case .expired(let id, _) = $0 { id } else { nil } }
  }

  @Test("a burst of due sessions is ended a bounded number per entry, in deadline order, the rest over already")
  func expiriesBoundedPerEntry() throws {
    var table = try Self.burst()
    #expect(table.apply(13, at: 1_000, .advanceTime) == .timeAdvanced)
    #expect(Self.expired(table.takeEvents()) == [s(1), s(2)], "two of five due sessions ended")
    #expect(table.nextDeadlineMillis == 1_000, "the rest are still due: the leader writes another entry at once")
    // The due sessions are over for every command, though their holds are not released yet.
    #expect(!table.isOpen(s(3)) && !table.isOpen(s(5)))
    #expect(table.holders("k5").map(\.session) == [s(5)])
    // This entry ends two more, then answers the keep-alive of the last as expired.
    #expect(table.apply(14, at: 1_000, .keepAlive(session: s(5))) == .sessionExpired(s(5)))
    #expect(Self.expired(table.takeEvents()) == [s(3), s(4)])
    #expect(table.apply(15, at: 1_000, .release(lock: "k5", session: s(5), token: t(11))) == .released(false))
    #expect(
      table.takeEvents() == [
        .expired(session: s(5), lost: [grant("k5", s(5), t(11))]), .granted(grant("k5", s(6), t(15))),
      ])
    #expect(table.apply(16, at: 1_000, acquire("k1", s(4))) == .sessionExpired(s(4)))
    #expect(table.nextDeadlineMillis == 10_000, "the backlog is done")
    #expect(table.holders("k5") == [grant("k5", s(6), t(15))])
  }

  @Test("commands naming a due session are answered as for an expired one, not as another principal's")
  func dueSessionIsOver() throws {
    var table = try LockTable(limits: LockTableLimits(maxExpiriesPerEntry: 1))
    table.apply(1, at: 0, .openSession(ttlMillis: 1_000), by: "alice")
    table.apply(2, at: 0, .openSession(ttlMillis: 1_000), by: "alice")
    table.apply(3, at: 0, acquire("a", s(2)), by: "alice")
    // Entry 4 ends s1 only; s2 is due.
    #expect(table.apply(4, at: 1_000, .closeSession(session: s(2)), by: "bob") == .sessionExpired(s(2)))
    #expect(table.apply(5, at: 1_000, .cancelWait(lock: "a", session: s(2))) == .waitCancelled(false))
    #expect(table.holders("a").isEmpty, "entry 5 ended s2 and released its lock")
  }

  @Test("a waiter at the head of a queue whose session is due is never granted, and the queue waits for it to end")
  func dueHeadWaiterIsNotGranted() throws {
    var table = try LockTable(limits: LockTableLimits(maxExpiriesPerEntry: 1))
    table.apply(1, at: 0, .openSession(ttlMillis: 1_000))
    table.apply(2, at: 0, .openSession(ttlMillis: 1_000))
    table.apply(3, at: 0, .openSession(ttlMillis: 10_000))
    table.apply(4, at: 0, acquire("x", s(1)))
    table.apply(5, at: 0, acquire("x", s(2)))
    table.apply(6, at: 0, acquire("x", s(3)))
    _ = table.takeEvents()
    // Ends s1 (freeing x), but s2, first in line, is due: nobody is granted.
    table.apply(7, at: 1_000, .advanceTime)
    #expect(table.takeEvents() == [.expired(session: s(1), lost: [grant("x", s(1), t(4))])])
    #expect(table.holders("x").isEmpty && table.waiters("x") == [s(2), s(3)])
    // A snapshot of this state restores, and the copy goes on identically.
    var copy = try LockTable(limits: LockTableLimits(maxExpiriesPerEntry: 1))
    try copy.restore(from: table.snapshot())
    #expect(copy.apply(8, at: 1_000, .advanceTime) == table.apply(8, at: 1_000, .advanceTime))
    let events = table.takeEvents()
    #expect(copy.takeEvents() == events)
    #expect(events == [.expired(session: s(2), lost: []), .granted(grant("x", s(3), t(8)))])
    #expect(copy.snapshot() == table.snapshot())
  }

  @Test("by default an entry ends every due session, however many, as before the bound existed (replayed logs agree)")
  func defaultEndsEveryDueSession() {
    var table = LockTable()
    #expect(table.limits.maxExpiriesPerEntry == .max)
    let count: UInt64 = 100
    for i in 1...count { table.apply(i, at: 0, .openSession(ttlMillis: 1_000)) }
    table.apply(count + 1, at: 0, .openSession(ttlMillis: 10_000))
    for i in 1...count {
      #expect(table.apply(count + 1 + i, at: 0, acquire("k\(i)", s(i))) == granted("k\(i)", s(i), t(count + 1 + i)))
    }
    #expect(table.apply(2 * count + 2, at: 0, acquire("k\(count)", s(count + 1))) == .queued(position: 0))
    _ = table.takeEvents()
    table.apply(2 * count + 3, at: 1_000, .advanceTime)
    let events = table.takeEvents()
    #expect(Self.expired(events).count == Int(count), "all 100 due sessions end in the one entry")
    #expect(events.last == .granted(grant("k\(count)", s(count + 1), t(2 * count + 3))))
    #expect(table.nextDeadlineMillis == 10_000)
    #expect(
      table.query(.counts)
        == .counts(
          LockTableCounts(
            sessions: 1, locks: 1, holds: 1, waiters: 0, logTimeMillis: 1_000, appliedIndex: 2 * count + 3)))
  }

  @Test("the expiry bound must be positive")
  func expiryBoundValidated() {
    #expect(throws: ConfigurationError.self) { _ = try LockTable(limits: LockTableLimits(maxExpiriesPerEntry: 0)) }
  }
}
