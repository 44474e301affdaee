import QuorumCore
import Testing

@testable import QuorumLocks

@Suite("LockTable: sessions and waits already due do not refuse live clients (opt-in, endDueAtFullLimits)")
struct LockTableDueQuotaTests {
  static let long: UInt64 = 100_000

  @Test("an acquire of a new lock that finds maxLocks locks ends due sessions first, earliest first, until one is free")
  func dueHoldersDoNotFillTheLocks() throws {
    var table = try LockTable(limits: LockTableLimits(maxLocks: 2, maxExpiriesPerEntry: 1, endDueAtFullLimits: true))
    for i in 1...3 { table.apply(UInt64(i), at: 0, .openSession(ttlMillis: 1_000)) }
    table.apply(4, at: 0, .openSession(ttlMillis: Self.long))
    table.apply(5, at: 0, acquire("a", s(2)))
    table.apply(6, at: 0, acquire("b", s(3)))
    _ = table.takeEvents()
    // The entry's own expiry ends s1, which holds nothing; s2 and s3 are due, and their locks fill the table.
    #expect(table.apply(7, at: 1_000, acquire("c", s(4))) == granted("c", s(4), t(7)))
    #expect(
      table.takeEvents() == [
        .expired(session: s(1), lost: []), .expired(session: s(2), lost: [grant("a", s(2), t(5))]),
        .granted(grant("c", s(4), t(7))),
      ])
    #expect(table.holders("b") == [grant("b", s(3), t(6))], "only what was needed: s3 waits for a later entry")
  }

  @Test("an acquire behind a full queue ends the due sessions of its waiters first")
  func dueWaitersDoNotFillTheQueue() throws {
    var table = try LockTable(
      limits: LockTableLimits(maxWaitersPerLock: 2, maxExpiriesPerEntry: 1, endDueAtFullLimits: true))
    for i in 1...3 { table.apply(UInt64(i), at: 0, .openSession(ttlMillis: 1_000)) }
    table.apply(4, at: 0, .openSession(ttlMillis: Self.long))
    table.apply(5, at: 0, .openSession(ttlMillis: Self.long))
    table.apply(6, at: 0, acquire("x", s(4)))
    table.apply(7, at: 0, acquire("x", s(2)))
    table.apply(8, at: 0, acquire("x", s(3)))
    _ = table.takeEvents()
    // The entry's own expiry ends s1 (no locks); s2 and s3, due, still fill x's queue.
    #expect(table.apply(9, at: 1_000, acquire("x", s(5))) == .queued(position: 1))
    #expect(table.waiters("x") == [s(3), s(5)])
    #expect(table.takeEvents() == [.expired(session: s(1), lost: []), .expired(session: s(2), lost: [])])
  }

  @Test("an acquire behind a full queue ends its waits whose timeout passed first")
  func dueWaitsDoNotFillTheQueue() throws {
    var table = try LockTable(
      limits: LockTableLimits(maxWaitersPerLock: 2, maxWaitTimeoutsPerEntry: 1, endDueAtFullLimits: true))
    for i in 1...4 { table.apply(UInt64(i), at: 0, .openSession(ttlMillis: Self.long)) }
    table.apply(5, at: 0, acquire("y", s(1)))
    table.apply(6, at: 0, acquire("x", s(1)))
    table.apply(7, at: 0, acquire("y", s(2), timeout: 1_000))
    table.apply(8, at: 0, acquire("x", s(2), timeout: 1_000))
    table.apply(9, at: 0, acquire("x", s(3), timeout: 1_000))
    _ = table.takeEvents()
    // The entry's own expiry ends s2's wait for y (queued first); both waits for x are due and fill its queue.
    #expect(table.apply(10, at: 1_000, acquire("x", s(4))) == .queued(position: 1))
    #expect(table.waiters("x") == [s(3), s(4)])
    #expect(
      table.takeEvents() == [.waitTimedOut(lock: "y", session: s(2)), .waitTimedOut(lock: "x", session: s(2))])
  }

  @Test("a restored copy makes the same room in the same entry")
  func restoredCopyAgrees() throws {
    var table = try LockTable(limits: LockTableLimits(maxLocks: 2, maxExpiriesPerEntry: 1, endDueAtFullLimits: true))
    for i in 1...3 { table.apply(UInt64(i), at: 0, .openSession(ttlMillis: 1_000)) }
    table.apply(4, at: 0, .openSession(ttlMillis: Self.long))
    table.apply(5, at: 0, acquire("a", s(2)))
    table.apply(6, at: 0, acquire("b", s(3)))
    var copy = try LockTable(limits: table.limits)
    try copy.restore(from: table.snapshot())
    _ = table.takeEvents()
    #expect(copy.apply(7, at: 1_000, acquire("c", s(4))) == table.apply(7, at: 1_000, acquire("c", s(4))))
    #expect(copy.takeEvents() == table.takeEvents())
    #expect(copy.snapshot() == table.snapshot())
  }

  @Test("with no room to make, the limit still refuses")
  func stillRefusedWhenNothingIsDue() throws {
    var table = try LockTable(limits: LockTableLimits(maxLocks: 1, maxExpiriesPerEntry: 1, endDueAtFullLimits: true))
    table.apply(1, at: 0, .openSession(ttlMillis: Self.long))
    table.apply(2, at: 0, acquire("a", s(1)))
    #expect(table.apply(3, at: 1_000, acquire("b", s(1))) == .failed(.tooManyLocks(limit: 1)))
  }

  @Test("without the opt-in, due holders count towards maxLocks, as in builds before it (their logs apply the same)")
  func withoutTheOptInDueHoldersStillRefuse() throws {
    var table = try LockTable(limits: LockTableLimits(maxLocks: 2, maxExpiriesPerEntry: 1))
    for i in 1...3 { table.apply(UInt64(i), at: 0, .openSession(ttlMillis: 1_000)) }
    table.apply(4, at: 0, .openSession(ttlMillis: Self.long))
    table.apply(5, at: 0, acquire("a", s(2)))
    table.apply(6, at: 0, acquire("b", s(3)))
    _ = table.takeEvents()
    #expect(table.apply(7, at: 1_000, acquire("c", s(4))) == .failed(.tooManyLocks(limit: 2)))
    #expect(table.takeEvents() == [.expired(session: s(1), lost: [])])
    #expect(table.holders("a") == [grant("a", s(2), t(5))], "s2 is ended by a later entry")
  }

  @Test("an acquire naming another principal's session makes no room: it is refused before")
  func foreignAcquireMakesNoRoom() throws {
    var table = try LockTable(limits: LockTableLimits(maxLocks: 2, maxExpiriesPerEntry: 1, endDueAtFullLimits: true))
    for i in 1...3 { table.apply(UInt64(i), at: 0, .openSession(ttlMillis: 1_000)) }
    table.apply(4, at: 0, .openSession(ttlMillis: Self.long), by: "owner")
    table.apply(5, at: 0, acquire("a", s(2)))
    table.apply(6, at: 0, acquire("b", s(3)))
    _ = table.takeEvents()
    #expect(table.apply(7, at: 1_000, acquire("c", s(4)), by: "intruder") == .failed(.sessionNotOwned(s(4))))
    #expect(table.takeEvents() == [.expired(session: s(1), lost: [])], "only the entry's own expiry")
    #expect(table.holders("a") == [grant("a", s(2), t(5))])
  }
}
