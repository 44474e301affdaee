import QuorumCore
import Testing

@testable import QuorumLocks

@Suite("LockTable: bounds, snapshots and codecs")
struct LockTableBoundsAndSnapshotTests {
  @Test("every bound gives its typed error and changes nothing")
  func bounds() throws {
    let limits = LockTableLimits(
      maxSessions: 3, maxLocks: 3, maxWaitersPerLock: 1, maxNameBytes: 4, maxHoldsPerSession: 2, minTTLMillis: 100,
      maxTTLMillis: 1_000, maxSemaphorePermits: 3, maxListCount: 2)
    var table = try LockTable(limits: limits)
    let ttlError = { (ttl: UInt64) in
      LockResponse.failed(.ttlOutOfRange(requestedMillis: ttl, minMillis: 100, maxMillis: 1_000))
    }
    #expect(table.apply(1, at: 0, .openSession(ttlMillis: 99)) == ttlError(99))
    #expect(table.apply(2, at: 0, .openSession(ttlMillis: 1_001)) == ttlError(1_001))
    for i in 3...5 { table.apply(UInt64(i), at: 0, .openSession(ttlMillis: 1_000)) }
    #expect(table.apply(6, at: 0, .openSession(ttlMillis: 1_000)) == .failed(.tooManySessions(limit: 3)))
    #expect(table.apply(7, at: 0, acquire("", s(3))) == .failed(.invalidName(bytes: 0, maxBytes: 4)))
    #expect(table.apply(8, at: 0, acquire("abcdé", s(3))) == .failed(.invalidName(bytes: 6, maxBytes: 4)))
    #expect(
      table.apply(9, at: 0, acquire("a", s(3), .semaphore(permits: 0)))
        == .failed(.invalidPermits(requested: 0, max: 3)))
    #expect(
      table.apply(10, at: 0, acquire("a", s(3), .semaphore(permits: 4)))
        == .failed(.invalidPermits(requested: 4, max: 3)))
    #expect(table.apply(11, at: 0, acquire("a", s(3))) == granted("a", s(3), t(11)))
    #expect(table.apply(12, at: 0, acquire("b", s(3))) == granted("b", s(3), t(12)))
    #expect(table.apply(13, at: 0, acquire("c", s(3))) == .failed(.tooManyHolds(session: s(3), limit: 2)))
    #expect(table.apply(14, at: 0, acquire("c", s(4))) == granted("c", s(4), t(14)))
    #expect(table.apply(15, at: 0, acquire("d", s(4))) == .failed(.tooManyLocks(limit: 3)))
    #expect(table.apply(16, at: 0, acquire("a", s(4))) == .queued(position: 0))
    #expect(table.apply(17, at: 0, acquire("b", s(4))) == .failed(.tooManyHolds(session: s(4), limit: 2)))
    #expect(table.apply(18, at: 0, acquire("a", s(5))) == .failed(.tooManyWaiters(lock: "a", limit: 1)))
    #expect(table.apply(19, at: 0, acquire("b", s(5), wait: false)) == .busy)
    #expect(
      table.query(.counts)
        == .counts(LockTableCounts(sessions: 3, locks: 3, holds: 3, waiters: 1, logTimeMillis: 0, appliedIndex: 19)))
    #expect(table.takeEvents().count == 3, "only the three grants happened")
    #expect(
      table.query(.list(prefix: "", after: nil, limit: 100))
        == .locks(
          [
            LockSummary(name: "a", kind: .readWrite, holders: 1, waiters: 1, lastToken: t(11)),
            LockSummary(name: "b", kind: .readWrite, holders: 1, waiters: 0, lastToken: t(12)),
          ], hasMore: true))
  }

  @Test("unusable limits are refused with the setting named")
  func limitsValidated() {
    let expected = ConfigurationError(setting: "LockLimits.maxTTLMillis", reason: "5 ms is below minTTLMillis (10 ms)")
    #expect(throws: expected) { _ = try LockTable(limits: LockTableLimits(minTTLMillis: 10, maxTTLMillis: 5)) }
    #expect(throws: ConfigurationError.self) { _ = try LockTable(limits: LockTableLimits(maxWaitersPerLock: 0)) }
    #expect(throws: ConfigurationError.self) { _ = try LockTable(limits: LockTableLimits(maxSemaphorePermits: 0)) }
  }

  /// A table with sessions, every kind of lock, holders sharing tokens and waiters with and without timeouts.
  static func busyTable() -> LockTable {
    var table = LockTable()
    for i in 1...5 { table.apply(UInt64(i), at: 100, .openSession(ttlMillis: 10_000 + UInt64(i))) }
    table.apply(6, at: 100, acquire("x", s(1)))
    table.apply(7, at: 100, acquire("x", s(2), timeout: 5_000))
    table.apply(8, at: 100, acquire("x", s(3), .exclusive))
    table.apply(9, at: 100, acquire("r", s(2), .shared))
    table.apply(10, at: 100, acquire("r", s(4)))
    table.apply(11, at: 100, acquire("r", s(5), .shared))
    table.apply(12, at: 100, acquire("p", s(3), .semaphore(permits: 2)))
    table.apply(13, at: 100, acquire("p", s(4), .semaphore(permits: 2)))
    table.apply(14, at: 100, acquire("p", s(5), .semaphore(permits: 2), timeout: 2_000))
    table.apply(15, at: 150, .keepAlive(session: s(1)))
    _ = table.takeEvents()
    return table
  }

  @Test("a restored table snapshots to the same bytes and continues exactly like the original; tokens keep growing")
  func snapshotRoundTrip() throws {
    var original = Self.busyTable()
    let bytes = original.snapshot()
    var restored = LockTable()
    try restored.restore(from: bytes)
    #expect(restored.snapshot() == bytes)
    #expect(restored.invariantViolations() == [])
    #expect(restored.nextDeadlineMillis == original.nextDeadlineMillis)
    let lastToken = original.holders("x").first?.token
    let script: [(UInt64, LockCommand)] = [
      (200, .release(lock: "x", session: s(1), token: t(6))),
      (300, .release(lock: "r", session: s(2), token: t(9))),
      (2_100, .advanceTime),
      (5_100, acquire("x", s(1))),
      (10_102, .advanceTime),
    ]
    for (offset, (millis, command)) in script.enumerated() {
      let index = UInt64(16 + offset)
      #expect(original.apply(index, at: millis, command) == restored.apply(index, at: millis, command))
      #expect(original.takeEvents() == restored.takeEvents())
      #expect(original.snapshot() == restored.snapshot())
    }
    let newToken = try #require(restored.holders("x").first?.token)
    #expect(newToken > lastToken ?? .zero)
  }

  @Test("locks named in different normal forms snapshot and restore (Swift's < orders no such pair)")
  func namesInMixedNormalForms() throws {
    // "\u{E9}e" and "e\u{301}" are different names, yet Swift's `<` holds neither before the other.
    let names = ["\u{E9}e", "e\u{301}", "e\u{301}e\u{301}", "\u{E9}", "x"]
    var table = LockTable()
    table.apply(1, at: 0, .openSession(ttlMillis: 10_000))
    for (i, name) in names.enumerated() { table.apply(UInt64(2 + i), at: 0, acquire(name, s(1))) }
    #expect(table.locks.count == 4)  // "e\u{301}" and "\u{E9}" are one name.
    var restored = LockTable()
    try restored.restore(from: table.snapshot())
    #expect(restored.snapshot() == table.snapshot())
    #expect(restored.invariantViolations() == [])
    // A repeated name is still refused.
    var w = WireWriter()
    for value: UInt64 in [1, 0, 10, 0, 2] { w.writeVarint(value) }  // version, time, index, 0 sessions, 2 locks
    for _ in 0..<2 {
      w.writeString("x")
      w.write(LockKind.readWrite)
      w.write(t(0))
      w.writeVarint(0)
      w.writeVarint(0)
    }
    #expect(throws: WireError.self) { try restored.restore(from: w.bytes) }
  }

  @Test("a truncated, re-versioned or inconsistent snapshot is a WireError and leaves the table as it was")
  func badSnapshots() throws {
    var table = Self.busyTable()
    let good = table.snapshot()
    #expect(throws: WireError.self) { try table.restore(from: Array(good.dropLast(2))) }
    var versioned = good
    versioned[0] = 3
    #expect(throws: WireError(.unsupportedVersion(3), at: 0)) { try table.restore(from: versioned) }
    // Decodes, but a holder belongs to no session.
    var w = WireWriter()
    for value: UInt64 in [1, 0, 10, 0, 1] { w.writeVarint(value) }  // version, time, index, 0 sessions, 1 lock
    w.writeString("x")
    w.write(LockKind.readWrite)
    w.write(t(5))
    w.writeVarint(1)
    w.write(s(3))
    w.write(LockMode.exclusive)
    w.write(t(5))
    w.writeVarint(0)
    #expect(throws: WireError.self) { try table.restore(from: w.bytes) }
    #expect(table.snapshot() == good)
  }

  @Test("a snapshot with a session of zero TTL is refused: its keep-alive would leave it due in the entry granting it")
  func zeroTTLSnapshotRefused() throws {
    var table = LockTable()
    table.apply(1, at: 1_000, .openSession(ttlMillis: 5_000))
    table.apply(2, at: 1_000, .openSession(ttlMillis: 9_000))
    table.apply(3, at: 1_000, acquire("x", s(1)))
    #expect(table.apply(4, at: 1_000, acquire("x", s(2))) == .queued(position: 0))
    // Restored as it is, s2 renewed in the entry where s1 expires (6000) would expire at 6000 and be granted x
    // in that entry: the grant's check that the holder's session outlives the entry traps.
    var hostile = table
    hostile.sessions[s(2)]?.ttlMillis = 0
    var restored = LockTable()
    #expect(throws: WireError.self) { try restored.restore(from: hostile.snapshot()) }
    #expect(restored.snapshot() == LockTable().snapshot(), "the table is unchanged")
    try restored.restore(from: table.snapshot())
    #expect(restored.apply(5, at: 6_000, .keepAlive(session: s(2))) == .keptAlive(expiresAtMillis: 15_000))
    #expect(restored.holders("x") == [grant("x", s(2), t(5))])
  }

  @Test("random corruption of a snapshot never traps: it is refused, or restores a table that applies cleanly")
  func corruptedSnapshotsNeverTrap() {
    let good = Self.busyTable().snapshot()
    var random = SeededRandom(seed: 11)
    var refused = 0
    var restored = 0
    for _ in 0..<2_000 {
      var bytes = good
      switch random.next() % 3 {
      case 0: bytes[Int(random.next() % UInt64(bytes.count))] ^= UInt8(truncatingIfNeeded: random.next() | 1)
      case 1: bytes.removeLast(Int(random.next() % UInt64(bytes.count)) + 1)
      default: bytes.insert(UInt8(truncatingIfNeeded: random.next()), at: Int(random.next() % UInt64(bytes.count)))
      }
      var table = LockTable()
      do {
        try table.restore(from: bytes)
      } catch {
        refused += 1
        continue
      }
      restored += 1
      guard table.appliedIndex < .max else { continue }
      table.apply(table.appliedIndex + 1, at: table.logTimeMillis, .advanceTime)
    }
    #expect(refused > 0 && restored > 0, "both outcomes exercised: \(refused) refused, \(restored) restored")
  }

  @Test("commands, responses, queries, results and events round-trip through the codec; bad tags are errors")
  func codecs() throws {
    let g = grant("a", s(1), .semaphore(permits: 3), t(9))
    let commands: [LockCommand] = [
      .openSession(ttlMillis: 5_000), .keepAlive(session: s(2)), .closeSession(session: s(3)),
      acquire("é/x", s(4), .shared, wait: true, timeout: 70), acquire("b", s(5), .semaphore(permits: 2), wait: false),
      .release(lock: "c", session: s(6), token: t(7)), .cancelWait(lock: "d", session: s(8)),
      .cancelWait(lock: "d", session: s(8), queuedAt: 9), .advanceTime,
    ]
    for c in commands { #expect(try LockCommand(wireBytes: c.wireBytes()) == c) }
    let errors: [LockError] = [
      .tooManySessions(limit: 1), .tooManyLocks(limit: 2), .tooManyWaiters(lock: "a", limit: 3),
      .tooManyHolds(session: s(1), limit: 4), .invalidName(bytes: 0, maxBytes: 5),
      .ttlOutOfRange(requestedMillis: 1, minMillis: 2, maxMillis: 3), .invalidPermits(requested: 0, max: 9),
      .kindMismatch(lock: "a", existing: .readWrite, requested: .semaphore(permits: 2)),
      .permitsMismatch(lock: "a", existing: 2, requested: 3),
      .conflictingReentry(lock: "a", existing: .shared, requested: .exclusive),
    ]
    let responses: [LockResponse] =
      [
        .sessionOpened(s(1), expiresAtMillis: 9), .keptAlive(expiresAtMillis: 10), .sessionClosed(releasedLocks: 2),
        .sessionExpired(s(3)), .granted(g), .queued(position: 4), .busy, .released(true), .waitCancelled(false),
        .timeAdvanced,
      ] + errors.map { .failed($0) }
    for r in responses { #expect(try LockResponse(wireBytes: r.wireBytes()) == r) }
    let queries: [LockQuery] = [
      .lock("a"), .session(s(1)), .list(prefix: "p", after: "p/1", limit: 5), .list(prefix: "", after: nil, limit: 0),
      .counts,
    ]
    for q in queries { #expect(try LockQuery(wireBytes: q.wireBytes()) == q) }
    let table = Self.busyTable()
    let results: [LockQueryResult] = [
      table.query(.lock("x")), table.query(.lock("nope")), table.query(.session(s(2))), table.query(.session(s(99))),
      table.query(.list(prefix: "", after: nil, limit: 10)), table.query(.counts),
    ]
    for r in results { #expect(try LockQueryResult(wireBytes: r.wireBytes()) == r) }
    let events: [LockEvent] = [
      .granted(g), .released(g), .expired(session: s(1), lost: [g, g]), .waitTimedOut(lock: "a", session: s(2)),
    ]
    for e in events { #expect(try LockEvent(wireBytes: e.wireBytes()) == e) }
    #expect(throws: WireError(.unknownTag(type: "LockCommand", tag: 8), at: 0)) { try LockCommand(wireBytes: [8]) }
    #expect(throws: WireError.self) { try LockResponse(wireBytes: [4, 1, 0x61]) }
    // Every truncation of every encoding is an error, never a trap.
    for bytes in commands.map({ $0.wireBytes() }) {
      for length in 0..<bytes.count {
        #expect(throws: WireError.self) { try LockCommand(wireBytes: Array(bytes[..<length])) }
      }
    }
    for bytes in responses.map({ $0.wireBytes() }) {
      for length in 0..<bytes.count {
        #expect(throws: WireError.self) { try LockResponse(wireBytes: Array(bytes[..<length])) }
      }
    }
  }
}
