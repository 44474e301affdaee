import QuorumCore
import Testing

@testable import QuorumLocks

@Suite("Lock sessions belong to the principal that opened them")
struct SessionOwnerTests {
  @Test("another principal can neither keep alive, close, acquire, release nor stop waiting with a session")
  func othersAreRefused() {
    var table = LockTable()
    #expect(
      table.apply(1, at: 1_000, .openSession(ttlMillis: 10_000), by: "alice")
        == .sessionOpened(s(1), expiresAtMillis: 11_000))
    #expect(table.apply(2, at: 1_000, acquire("orders", s(1)), by: "alice") == granted("orders", s(1), t(2)))
    _ = table.apply(3, at: 1_000, .openSession(ttlMillis: 10_000), by: "alice")
    #expect(table.apply(4, at: 1_000, acquire("orders", s(3)), by: "alice") == .queued(position: 0))
    let refused = LockResponse.failed(.sessionNotOwned(s(1)))
    #expect(table.apply(5, at: 2_000, .release(lock: "orders", session: s(1), token: t(2)), by: "bob") == refused)
    #expect(table.apply(6, at: 2_000, .closeSession(session: s(1)), by: "bob") == refused)
    #expect(table.apply(7, at: 2_000, .keepAlive(session: s(1)), by: "bob") == refused)
    #expect(table.apply(8, at: 2_000, acquire("stock", s(1)), by: "bob") == refused)
    #expect(
      table.apply(9, at: 2_000, .cancelWait(lock: "orders", session: s(3)), by: "bob")
        == .failed(.sessionNotOwned(s(3))))
    // No principal is another principal too (a client in the server's process, or one without authentication).
    #expect(table.apply(10, at: 2_000, .closeSession(session: s(1))) == refused)
    #expect(table.holders("orders") == [grant("orders", s(1), t(2))])
    #expect(table.waiters("orders") == [s(3)])
    // The owner still can.
    #expect(
      table.apply(11, at: 2_000, .release(lock: "orders", session: s(1), token: t(2)), by: "alice") == .released(true))
    #expect(table.holders("orders") == [grant("orders", s(3), t(11))])
  }

  @Test("owners survive a snapshot; a first-format snapshot's sessions, with no owner recorded, serve anyone")
  func snapshots() throws {
    var table = LockTable()
    _ = table.apply(1, at: 1_000, .openSession(ttlMillis: 10_000), by: "alice")
    _ = table.apply(2, at: 1_000, .openSession(ttlMillis: 10_000))
    var restored = LockTable()
    try restored.restore(from: table.snapshot())
    #expect(restored.snapshot() == table.snapshot())
    #expect(restored.apply(3, at: 1_000, .keepAlive(session: s(1)), by: "bob") == .failed(.sessionNotOwned(s(1))))
    #expect(restored.apply(4, at: 1_000, .keepAlive(session: s(2)), by: "bob") == .failed(.sessionNotOwned(s(2))))
    #expect(restored.apply(5, at: 1_000, .keepAlive(session: s(2))) == .keptAlive(expiresAtMillis: 11_000))

    // Version 1: the same sessions, without owners.
    var w = WireWriter()
    w.writeVarint(1)  // version
    w.writeVarint(1_000)  // log time
    w.writeVarint(2)  // applied index
    w.writeVarint(2)  // sessions
    for id in [s(1), s(2)] {
      w.write(id)
      w.writeVarint(10_000)
      w.writeVarint(11_000)
    }
    w.writeVarint(0)  // locks
    var old = LockTable()
    try old.restore(from: w.bytes)
    #expect(old.apply(3, at: 1_000, .keepAlive(session: s(1)), by: "bob") == .keptAlive(expiresAtMillis: 11_000))
    var again = LockTable()
    try again.restore(from: old.snapshot())
    #expect(again.snapshot() == old.snapshot(), "rewritten in the current format, owners still unknown")
  }

  @Test("the refusal round-trips on the wire")
  func wire() throws {
    let error = LockError.sessionNotOwned(s(7))
    #expect(try LockError(wireBytes: error.wireBytes()) == error)
    #expect(error.description.contains("belongs to another principal"))
  }
}
