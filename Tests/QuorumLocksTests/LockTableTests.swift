import QuorumCore
import Testing

@testable import QuorumLocks

@Suite("LockTable: sessions, modes, queues and tokens")
struct LockTableTests {
  let ttl: UInt64 = 100_000

  @Test("a session is named by its entry's index, renewed by keep-alive from log time, and expires at its deadline")
  func sessionLifecycle() {
    var table = LockTable()
    #expect(table.apply(1, at: 1_000, .openSession(ttlMillis: 5_000)) == .sessionOpened(s(1), expiresAtMillis: 6_000))
    #expect(table.nextDeadlineMillis == 6_000)
    #expect(table.apply(2, at: 4_000, .keepAlive(session: s(1))) == .keptAlive(expiresAtMillis: 9_000))
    #expect(table.nextDeadlineMillis == 9_000)
    table.apply(3, at: 8_999, .advanceTime)
    #expect(table.isOpen(s(1)))
    #expect(table.takeEvents() == [])
    // A keep-alive in the entry that reaches the expiry is too late: expiry is decided first.
    #expect(table.apply(4, at: 9_000, .keepAlive(session: s(1))) == .sessionExpired(s(1)))
    #expect(!table.isOpen(s(1)))
    #expect(table.takeEvents() == [.expired(session: s(1), lost: [])])
    #expect(table.nextDeadlineMillis == nil)
  }

  @Test("log time never goes backwards: an entry stamped earlier than the last one is applied at the later time")
  func monotonicTime() {
    var table = LockTable()
    table.apply(1, at: 10_000, .openSession(ttlMillis: 5_000))
    #expect(table.apply(2, at: 3_000, .keepAlive(session: s(1))) == .keptAlive(expiresAtMillis: 15_000))
    #expect(table.logTimeMillis == 10_000)
  }

  @Test("closing a session releases its locks (handing them on in the same entry) and cancels its waits")
  func closeSession() {
    var table = LockTable()
    table.apply(1, at: 0, .openSession(ttlMillis: ttl))
    table.apply(2, at: 0, .openSession(ttlMillis: ttl))
    #expect(table.apply(3, at: 0, acquire("a", s(1))) == granted("a", s(1), t(3)))
    #expect(table.apply(4, at: 0, acquire("b", s(1), .shared)) == granted("b", s(1), .shared, t(4)))
    #expect(table.apply(5, at: 0, acquire("a", s(2))) == .queued(position: 0))
    #expect(table.apply(6, at: 0, acquire("c", s(2))) == granted("c", s(2), t(6)))
    #expect(table.apply(7, at: 0, acquire("c", s(1))) == .queued(position: 0))
    _ = table.takeEvents()
    #expect(table.apply(8, at: 0, .closeSession(session: s(1))) == .sessionClosed(releasedLocks: 2))
    #expect(
      table.takeEvents() == [
        .released(grant("a", s(1), t(3))), .released(grant("b", s(1), .shared, t(4))), .granted(grant("a", s(2), t(8))),
      ])
    #expect(table.holders("a") == [grant("a", s(2), t(8))])
    #expect(table.holders("b") == [])
    #expect(table.waiters("c") == [])
    #expect(table.apply(9, at: 0, .closeSession(session: s(1))) == .sessionExpired(s(1)))
    #expect(table.apply(10, at: 0, acquire("d", s(1))) == .sessionExpired(s(1)))
  }

  @Test("an exclusive lock has one holder; others are told busy or queue, and a release grants the next in its entry")
  func exclusive() {
    var table = LockTable()
    for i in 1...3 { table.apply(UInt64(i), at: 0, .openSession(ttlMillis: ttl)) }
    #expect(table.apply(4, at: 0, acquire("x", s(1))) == granted("x", s(1), t(4)))
    #expect(table.apply(5, at: 0, acquire("x", s(2), wait: false)) == .busy)
    #expect(table.apply(6, at: 0, acquire("x", s(2))) == .queued(position: 0))
    #expect(table.apply(7, at: 0, acquire("x", s(3))) == .queued(position: 1))
    _ = table.takeEvents()
    #expect(table.apply(8, at: 0, .release(lock: "x", session: s(1), token: t(4))) == .released(true))
    #expect(table.takeEvents() == [.released(grant("x", s(1), t(4))), .granted(grant("x", s(2), t(8)))])
    #expect(table.holders("x") == [grant("x", s(2), t(8))])
    #expect(table.waiters("x") == [s(3)])
  }

  @Test("shared holders coexist; a shared request behind a queued writer waits (no writer starvation)")
  func sharedAndFIFO() {
    var table = LockTable()
    for i in 1...4 { table.apply(UInt64(i), at: 0, .openSession(ttlMillis: ttl)) }
    #expect(table.apply(5, at: 0, acquire("d", s(1), .shared)) == granted("d", s(1), .shared, t(5)))
    #expect(table.apply(6, at: 0, acquire("d", s(2), .shared)) == granted("d", s(2), .shared, t(6)))
    #expect(table.apply(7, at: 0, acquire("d", s(3))) == .queued(position: 0))
    // Compatible with the holders, but a writer waits first: FIFO.
    #expect(table.apply(8, at: 0, acquire("d", s(4), .shared, wait: false)) == .busy)
    #expect(table.apply(9, at: 0, acquire("d", s(4), .shared)) == .queued(position: 1))
    #expect(table.apply(10, at: 0, .release(lock: "d", session: s(1), token: t(5))) == .released(true))
    #expect(table.holders("d") == [grant("d", s(2), .shared, t(6))])
    #expect(table.apply(11, at: 0, .release(lock: "d", session: s(2), token: t(6))) == .released(true))
    #expect(table.holders("d") == [grant("d", s(3), t(11))])
    #expect(table.apply(12, at: 0, acquire("d", s(1), .shared)) == .queued(position: 1))
    _ = table.takeEvents()
    // The writer leaves: both readers at the head of the queue are granted together, with one token.
    #expect(table.apply(13, at: 0, .release(lock: "d", session: s(3), token: t(11))) == .released(true))
    #expect(
      table.takeEvents() == [
        .released(grant("d", s(3), t(11))), .granted(grant("d", s(4), .shared, t(13))),
        .granted(grant("d", s(1), .shared, t(13))),
      ])
    #expect(table.holders("d") == [grant("d", s(1), .shared, t(13)), grant("d", s(4), .shared, t(13))])
  }

  @Test("a semaphore grants N permits, refuses other permit counts and kinds, and a dead holder's permit returns")
  func semaphore() {
    var table = LockTable()
    table.apply(1, at: 0, .openSession(ttlMillis: 2_000))
    for i in 2...4 { table.apply(UInt64(i), at: 0, .openSession(ttlMillis: ttl)) }
    let two = LockMode.semaphore(permits: 2)
    #expect(table.apply(5, at: 0, acquire("pool", s(1), two)) == granted("pool", s(1), two, t(5)))
    #expect(table.apply(6, at: 0, acquire("pool", s(2), two)) == granted("pool", s(2), two, t(6)))
    #expect(
      table.apply(7, at: 0, acquire("pool", s(3), .semaphore(permits: 3)))
        == .failed(.permitsMismatch(lock: "pool", existing: 2, requested: 3)))
    #expect(
      table.apply(8, at: 0, acquire("pool", s(3)))
        == .failed(.kindMismatch(lock: "pool", existing: .semaphore(permits: 2), requested: .exclusive)))
    #expect(table.apply(9, at: 0, acquire("pool", s(3), two)) == .queued(position: 0))
    #expect(table.apply(10, at: 0, acquire("pool", s(4), two)) == .queued(position: 1))
    #expect(table.holders("pool").count == 2)
    _ = table.takeEvents()
    // s1's session dies: its permit goes to the first waiter in the same entry.
    table.apply(11, at: 2_000, .advanceTime)
    #expect(
      table.takeEvents() == [
        .expired(session: s(1), lost: [grant("pool", s(1), two, t(5))]), .granted(grant("pool", s(3), two, t(11))),
      ])
    #expect(table.holders("pool").map(\.session) == [s(2), s(3)])
    table.apply(12, at: 2_000, .closeSession(session: s(2)))
    #expect(table.holders("pool").map(\.session) == [s(3), s(4)])
    #expect(table.waiters("pool") == [])
    #expect(
      table.apply(13, at: 2_000, acquire("rw", s(3), .shared)) == granted("rw", s(3), .shared, t(13)))
    #expect(
      table.apply(14, at: 2_000, acquire("rw", s(4), two))
        == .failed(.kindMismatch(lock: "rw", existing: .readWrite, requested: two)))
  }

  @Test("a release by a non-owner, of another lock, or with a stale token returns false and changes nothing")
  func releaseOwnerCheck() {
    var table = LockTable()
    table.apply(1, at: 0, .openSession(ttlMillis: ttl))
    table.apply(2, at: 0, .openSession(ttlMillis: ttl))
    table.apply(3, at: 0, acquire("x", s(1)))
    table.apply(4, at: 0, acquire("x", s(2)))
    let before = table
    _ = table.takeEvents()
    #expect(table.apply(5, at: 0, .release(lock: "x", session: s(2), token: t(3))) == .released(false))
    #expect(table.apply(6, at: 0, .release(lock: "x", session: s(1), token: t(4))) == .released(false))
    #expect(table.apply(7, at: 0, .release(lock: "y", session: s(1), token: t(3))) == .released(false))
    #expect(table.apply(8, at: 0, .release(lock: "x", session: s(9), token: t(3))) == .released(false))
    #expect(table.locks == before.locks && table.sessions == before.sessions)
    #expect(table.takeEvents() == [])
    // Once released and re-granted, the old token is stale.
    #expect(table.apply(9, at: 0, .release(lock: "x", session: s(1), token: t(3))) == .released(true))
    #expect(table.apply(10, at: 0, .release(lock: "x", session: s(2), token: t(9))) == .released(true))
    #expect(table.apply(11, at: 0, acquire("x", s(1))) == granted("x", s(1), t(11)))
    #expect(table.apply(12, at: 0, .release(lock: "x", session: s(1), token: t(3))) == .released(false))
    #expect(table.holders("x") == [grant("x", s(1), t(11))])
  }

  @Test("a release racing its own session's expiry cannot release the next holder's grant")
  func releaseRacingExpiry() {
    var table = LockTable()
    table.apply(1, at: 0, .openSession(ttlMillis: 5_000))
    table.apply(2, at: 0, .openSession(ttlMillis: ttl))
    table.apply(3, at: 0, acquire("x", s(1)))
    #expect(table.apply(4, at: 0, acquire("x", s(2))) == .queued(position: 0))
    _ = table.takeEvents()
    // The release is committed in the entry where s1's lease runs out: the expiry comes first and hands x on.
    #expect(table.apply(5, at: 5_000, .release(lock: "x", session: s(1), token: t(3))) == .released(false))
    #expect(
      table.takeEvents() == [
        .expired(session: s(1), lost: [grant("x", s(1), t(3))]), .granted(grant("x", s(2), t(5))),
      ])
    // And a later retry of that release does nothing either.
    #expect(table.apply(6, at: 5_001, .release(lock: "x", session: s(1), token: t(3))) == .released(false))
    #expect(table.holders("x") == [grant("x", s(2), t(5))])
  }

  @Test("a waiter whose session expired is never granted, even when it expires in the entry that frees the lock")
  func noGrantToExpiredWaiter() {
    // The waiter's session dies first; the lock is released later and skips it.
    var table = LockTable()
    table.apply(1, at: 0, .openSession(ttlMillis: ttl))
    table.apply(2, at: 0, .openSession(ttlMillis: 3_000))
    table.apply(3, at: 0, .openSession(ttlMillis: ttl))
    table.apply(4, at: 0, acquire("x", s(1)))
    table.apply(5, at: 0, acquire("x", s(2)))
    table.apply(6, at: 0, acquire("x", s(3)))
    table.apply(7, at: 3_000, .advanceTime)
    #expect(table.waiters("x") == [s(3)])
    #expect(table.apply(8, at: 3_000, .release(lock: "x", session: s(1), token: t(4))) == .released(true))
    #expect(table.holders("x") == [grant("x", s(3), t(8))])

    // The holder (expiring first) and the first waiter both expire in one entry: the grant skips the waiter.
    var same = LockTable()
    same.apply(1, at: 0, .openSession(ttlMillis: 10_000))
    same.apply(2, at: 0, .openSession(ttlMillis: 10_500))
    same.apply(3, at: 0, .openSession(ttlMillis: ttl))
    same.apply(4, at: 0, acquire("x", s(1)))
    same.apply(5, at: 0, acquire("x", s(2)))
    same.apply(6, at: 0, acquire("x", s(3)))
    _ = same.takeEvents()
    same.apply(7, at: 11_000, .advanceTime)
    #expect(
      same.takeEvents() == [
        .expired(session: s(1), lost: [grant("x", s(1), t(4))]), .expired(session: s(2), lost: []),
        .granted(grant("x", s(3), t(7))),
      ])
  }

  @Test("a wait times out in log time, and leaving the queue lets compatible waiters behind it through")
  func waitTimeout() {
    var table = LockTable()
    for i in 1...3 { table.apply(UInt64(i), at: 1_000, .openSession(ttlMillis: ttl)) }
    table.apply(4, at: 1_000, acquire("r", s(1), .shared))
    #expect(table.apply(5, at: 1_000, acquire("r", s(2), timeout: 500)) == .queued(position: 0))
    #expect(table.apply(6, at: 1_000, acquire("r", s(3), .shared)) == .queued(position: 1))
    #expect(table.nextDeadlineMillis == 1_500)
    _ = table.takeEvents()
    table.apply(7, at: 1_499, .advanceTime)
    #expect(table.waiters("r") == [s(2), s(3)])
    table.apply(8, at: 1_500, .advanceTime)
    #expect(
      table.takeEvents() == [.waitTimedOut(lock: "r", session: s(2)), .granted(grant("r", s(3), .shared, t(8)))])
    #expect(table.holders("r") == [grant("r", s(1), .shared, t(4)), grant("r", s(3), .shared, t(8))])
    #expect(table.nextDeadlineMillis == 101_000)
  }

  @Test("re-entry returns the same grant and token; re-queueing returns the position; another mode is refused")
  func reentry() {
    var table = LockTable()
    table.apply(1, at: 0, .openSession(ttlMillis: ttl))
    table.apply(2, at: 0, .openSession(ttlMillis: ttl))
    #expect(table.apply(3, at: 0, acquire("x", s(1))) == granted("x", s(1), t(3)))
    #expect(table.apply(4, at: 0, acquire("x", s(1))) == granted("x", s(1), t(3)))
    #expect(table.apply(5, at: 0, acquire("x", s(1), wait: false)) == granted("x", s(1), t(3)))
    #expect(
      table.apply(6, at: 0, acquire("x", s(1), .shared))
        == .failed(.conflictingReentry(lock: "x", existing: .exclusive, requested: .shared)))
    #expect(table.apply(7, at: 0, acquire("x", s(2))) == .queued(position: 0))
    #expect(table.apply(8, at: 0, acquire("x", s(2), wait: false)) == .queued(position: 0))
    #expect(
      table.apply(9, at: 0, acquire("x", s(2), .shared))
        == .failed(.conflictingReentry(lock: "x", existing: .exclusive, requested: .shared)))
    #expect(table.takeEvents() == [.granted(grant("x", s(1), t(3)))])
    #expect(table.holders("x").count == 1)
    #expect(table.waiters("x") == [s(2)])
  }

  @Test("an acquire retried in the entry where its turn comes is answered with the grant, not a queue position")
  func queuedThenGrantedInOneEntry() {
    var table = LockTable()
    table.apply(1, at: 0, .openSession(ttlMillis: 2_000))
    table.apply(2, at: 0, .openSession(ttlMillis: ttl))
    table.apply(3, at: 0, acquire("x", s(1)))
    #expect(table.apply(4, at: 0, acquire("x", s(2))) == .queued(position: 0))
    #expect(table.apply(5, at: 2_000, acquire("x", s(2))) == granted("x", s(2), t(5)))
  }

  @Test("a lock freed by an expiry is free for the command of the same entry, even as another kind of lock")
  func freedLockIsFreeInTheSameEntry() {
    var table = LockTable()
    table.apply(1, at: 0, .openSession(ttlMillis: 2_000))
    table.apply(2, at: 0, .openSession(ttlMillis: ttl))
    table.apply(3, at: 0, acquire("n", s(1), .semaphore(permits: 2)))
    #expect(table.apply(4, at: 2_000, acquire("n", s(2))) == granted("n", s(2), t(4)))
    #expect(table.query(.lock("n")).kindOf == .readWrite)
  }

  @Test("a zero wait timeout means do not wait")
  func zeroTimeout() {
    var table = LockTable()
    table.apply(1, at: 0, .openSession(ttlMillis: ttl))
    table.apply(2, at: 0, .openSession(ttlMillis: ttl))
    table.apply(3, at: 0, acquire("x", s(1)))
    #expect(table.apply(4, at: 0, acquire("x", s(2), timeout: 0)) == .busy)
    #expect(table.waiters("x") == [])
    #expect(table.apply(5, at: 0, .release(lock: "x", session: s(1), token: t(3))) == .released(true))
    #expect(table.apply(6, at: 0, acquire("x", s(2), timeout: 0)) == granted("x", s(2), t(6)))
  }

  @Test("cancelling a wait leaves the queue and lets compatible waiters behind it through")
  func cancelWait() {
    var table = LockTable()
    for i in 1...3 { table.apply(UInt64(i), at: 0, .openSession(ttlMillis: ttl)) }
    table.apply(4, at: 0, acquire("r", s(1), .shared))
    table.apply(5, at: 0, acquire("r", s(2)))
    table.apply(6, at: 0, acquire("r", s(3), .shared))
    #expect(table.apply(7, at: 0, .cancelWait(lock: "r", session: s(2))) == .waitCancelled(true))
    #expect(table.holders("r").map(\.session) == [s(1), s(3)])
    #expect(table.apply(8, at: 0, .cancelWait(lock: "r", session: s(2))) == .waitCancelled(false))
    #expect(table.apply(9, at: 0, .cancelWait(lock: "r", session: s(1))) == .waitCancelled(false))
  }

  @Test("events come out in the order things happened in the entry, and takeEvents clears them")
  func eventOrder() {
    var table = LockTable()
    table.apply(1, at: 0, .openSession(ttlMillis: 1_000))
    for i in 2...4 { table.apply(UInt64(i), at: 0, .openSession(ttlMillis: ttl)) }
    table.apply(5, at: 0, acquire("a", s(1)))
    table.apply(6, at: 0, acquire("a", s(2)))
    table.apply(7, at: 0, acquire("b", s(3)))
    table.apply(8, at: 0, acquire("b", s(4), timeout: 1_000))
    #expect(table.pendingEvents == [.granted(grant("a", s(1), t(5))), .granted(grant("b", s(3), t(7)))])
    #expect(table.takeEvents().count == 2)
    #expect(table.takeEvents() == [])
    // One entry: s1 expires (first), s4's wait times out (second), the command releases b, then a is handed on.
    #expect(table.apply(9, at: 1_000, .release(lock: "b", session: s(3), token: t(7))) == .released(true))
    #expect(
      table.takeEvents() == [
        .expired(session: s(1), lost: [grant("a", s(1), t(5))]), .waitTimedOut(lock: "b", session: s(4)),
        .released(grant("b", s(3), t(7))), .granted(grant("a", s(2), t(9))),
      ])
    #expect(table.takeEvents() == [])
    #expect(table.query(.lock("b")) == .lock(nil), "a free lock is forgotten")
  }

  @Test("queries report a lock's holders and waiters, a session's holds and waits, pages of locks, and counts")
  func queries() {
    var table = LockTable()
    table.apply(1, at: 500, .openSession(ttlMillis: 5_000))
    table.apply(2, at: 500, .openSession(ttlMillis: 7_000))
    table.apply(3, at: 500, acquire("jobs/a", s(1)))
    table.apply(4, at: 500, acquire("jobs/a", s(2), timeout: 900))
    table.apply(5, at: 500, acquire("jobs/b", s(2), .shared))
    table.apply(6, at: 500, acquire("other", s(1), .semaphore(permits: 4)))
    #expect(
      table.query(.lock("jobs/a"))
        == .lock(
          LockStatus(
            name: "jobs/a", kind: .readWrite, lastToken: t(3),
            holders: [LockHolderStatus(session: s(1), mode: .exclusive, token: t(3), sessionExpiresAtMillis: 5_500)],
            waiters: [LockWaiterStatus(session: s(2), mode: .exclusive, queuedAt: 4, timeoutAtMillis: 1_400)])))
    #expect(
      table.query(.session(s(2)))
        == .session(
          LockSessionStatus(
            session: s(2), ttlMillis: 7_000, expiresAtMillis: 7_500, holds: [grant("jobs/b", s(2), .shared, t(5))],
            waits: [LockWaitStatus(lock: "jobs/a", mode: .exclusive, position: 0, timeoutAtMillis: 1_400)])))
    #expect(table.query(.session(s(3))) == .session(nil))
    #expect(
      table.query(.list(prefix: "jobs/", after: nil, limit: 1))
        == .locks(
          [LockSummary(name: "jobs/a", kind: .readWrite, holders: 1, waiters: 1, lastToken: t(3))], hasMore: true))
    #expect(
      table.query(.list(prefix: "jobs/", after: "jobs/a", limit: 10))
        == .locks(
          [LockSummary(name: "jobs/b", kind: .readWrite, holders: 1, waiters: 0, lastToken: t(5))], hasMore: false))
    #expect(table.query(.list(prefix: "", after: nil, limit: -3)) == .locks([], hasMore: true))
    #expect(
      table.query(.counts)
        == .counts(
          LockTableCounts(sessions: 2, locks: 3, holds: 3, waiters: 1, logTimeMillis: 500, appliedIndex: 6)))
  }

  @Test("keep-alives do not grow the expiry index without bound")
  func expiryIndexBounded() {
    var table = LockTable()
    table.apply(1, at: 0, .openSession(ttlMillis: 60_000))
    for i in 2...2_000 { table.apply(UInt64(i), at: UInt64(i), .keepAlive(session: s(1))) }
    #expect(table.sessionExpiries.count <= 2 * 1 + 64 + 1)
    #expect(table.nextDeadlineMillis == 62_000)
  }

  @Test("applying an entry whose index does not exceed the last applied one traps: tokens would repeat")
  func indexMustIncrease() async {
    await #expect(processExitsWith: .failure) {
      var table = LockTable()
      _ = table.apply(.openSession(ttlMillis: 5_000), context: ApplyContext(index: 5, timestampMillis: 0))
      _ = table.apply(.advanceTime, context: ApplyContext(index: 5, timestampMillis: 0))
    }
  }
}
