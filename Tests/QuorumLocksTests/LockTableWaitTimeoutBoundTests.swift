import QuorumCore
import Testing

@testable import QuorumLocks

@Suite("LockTable: wait timeouts are bounded per entry (opt-in)")
struct LockTableWaitTimeoutBoundTests {
  /// s1 holds x; s2, s3 and s4 wait for it with a 1 s timeout, s5 without one; at most one wait timeout per entry.
  static func queue(bound: Int = 1) throws -> LockTable {
    var table = try LockTable(limits: LockTableLimits(maxWaitTimeoutsPerEntry: bound))
    for i in 1...5 { table.apply(UInt64(i), at: 0, .openSession(ttlMillis: 100_000)) }
    #expect(table.apply(6, at: 0, acquire("x", s(1))) == granted("x", s(1), t(6)))
    for i in 2...4 { #expect(table.apply(UInt64(5 + i), at: 0, acquire("x", s(UInt64(i)), timeout: 1_000)) != .busy) }
    #expect(table.apply(10, at: 0, acquire("x", s(5))) == .queued(position: 3))
    _ = table.takeEvents()
    return table
  }

  @Test("an entry ends at most the bound of due waits, earliest first; the rest follow in the next entries")
  func boundedPerEntry() throws {
    var table = try Self.queue()
    table.apply(11, at: 1_000, .advanceTime)
    #expect(table.takeEvents() == [.waitTimedOut(lock: "x", session: s(2))])
    #expect(table.waiters("x") == [s(3), s(4), s(5)])
    #expect(table.nextDeadlineMillis == 1_000, "the waits left are still due: the leader proposes more entries")
    // The release ends s3's wait first; s4, now first in line, is due: it is not granted, and s5 waits behind it.
    #expect(table.apply(12, at: 1_000, .release(lock: "x", session: s(1), token: t(6))) == .released(true))
    #expect(table.holders("x").isEmpty && table.waiters("x") == [s(4), s(5)])
    _ = table.takeEvents()
    table.apply(13, at: 1_000, .advanceTime)
    #expect(table.takeEvents() == [.waitTimedOut(lock: "x", session: s(4)), .granted(grant("x", s(5), t(13)))])
    #expect(table.nextDeadlineMillis == 100_000)
  }

  @Test("a cancel of a session's due wait ends that wait first, as an unbounded table would have: nothing to cancel")
  func cancelOfDueWait() throws {
    var table = try Self.queue()
    table.apply(11, at: 1_000, .advanceTime)  // ends s2's wait only
    _ = table.takeEvents()
    // The entry's own expiry ends s3's wait; the cancel finds s4's due and ends it as a timeout.
    #expect(table.apply(12, at: 1_000, .cancelWait(lock: "x", session: s(4), queuedAt: 9)) == .waitCancelled(false))
    #expect(table.takeEvents() == [.waitTimedOut(lock: "x", session: s(3)), .waitTimedOut(lock: "x", session: s(4))])
    #expect(table.waiters("x") == [s(5)])
  }

  @Test("an acquire of a session's due wait ends that wait first and queues again at the back, as after a timeout")
  func acquireOfDueWait() throws {
    var table = try Self.queue()
    // The entry's own expiry ends s2's wait; s3's stays due at the head; s4's acquire ends its own and queues again.
    #expect(table.apply(11, at: 1_000, acquire("x", s(4))) == .queued(position: 2))
    #expect(table.waiters("x") == [s(3), s(5), s(4)])
    #expect(table.takeEvents() == [.waitTimedOut(lock: "x", session: s(2)), .waitTimedOut(lock: "x", session: s(4))])
  }

  @Test("a restored copy goes on identically while due waits are left")
  func restoredCopyAgrees() throws {
    var table = try Self.queue()
    table.apply(11, at: 1_000, .advanceTime)
    _ = table.takeEvents()
    var copy = try LockTable(limits: table.limits)
    try copy.restore(from: table.snapshot())
    for (index, command) in [(12, LockCommand.advanceTime), (13, .release(lock: "x", session: s(1), token: t(6)))] {
      #expect(copy.apply(UInt64(index), at: 1_000, command) == table.apply(UInt64(index), at: 1_000, command))
      #expect(copy.takeEvents() == table.takeEvents())
    }
    #expect(copy.snapshot() == table.snapshot())
  }

  @Test("by default every due wait ends in the first entry at or after its timeout")
  func defaultIsUnbounded() throws {
    var table = try Self.queue(bound: .max)
    #expect(LockTableLimits().maxWaitTimeoutsPerEntry == .max)
    table.apply(11, at: 1_000, .advanceTime)
    #expect(table.takeEvents().count == 3)
    #expect(table.waiters("x") == [s(5)])
  }

  @Test("the wait timeout bound must be positive")
  func validated() {
    #expect(throws: ConfigurationError.self) { _ = try LockTable(limits: LockTableLimits(maxWaitTimeoutsPerEntry: 0)) }
  }
}
