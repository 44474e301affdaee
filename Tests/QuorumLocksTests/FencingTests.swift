import QuorumCore
import Synchronization
import Testing

@testable import QuorumLocks

@Suite("Fencing tokens")
struct FencingTests {
  @Test("a token below the highest admitted is refused with both named; an equal or higher one is admitted")
  func state() throws {
    var fence = FencingState()
    try fence.admit(t(5), for: "orders")
    try fence.admit(t(5), for: "orders")
    try fence.admit(t(9), for: "orders")
    #expect(throws: FencingError.staleToken(lock: "orders", presented: t(7), highest: t(9))) {
      try fence.admit(t(7), for: "orders")
    }
    #expect(fence.highestToken(for: "orders") == t(9), "a refusal changes nothing")
    // Locks are fenced independently.
    try fence.admit(t(1), for: "invoices")
    #expect(fence.highestToken(for: "invoices") == t(1))
    #expect(fence.count == 2)
  }

  @Test("a holder paused past its lease is fenced off once the next holder has written")
  func pausedHolder() throws {
    var table = LockTable()
    let fence = FencingGuard()
    table.apply(1, at: 0, .openSession(ttlMillis: 5_000))
    table.apply(2, at: 0, .openSession(ttlMillis: 60_000))
    guard case .granted(let first) = table.apply(3, at: 0, acquire("orders", s(1))) else {
      Issue.record("the first acquire was not granted")
      return
    }
    try fence.admit(first.token, for: "orders")
    #expect(table.apply(4, at: 100, acquire("orders", s(2))) == .queued(position: 0))
    // s1 pauses (a long GC, say) and sends no keep-alive; its lease runs out in log time and s2 gets the lock.
    table.apply(5, at: 5_000, .advanceTime)
    let second = try #require(table.holders("orders").first)
    #expect(second.session == s(2) && second.token > first.token)
    try fence.admit(second.token, for: "orders")
    // s1 wakes up and writes with its old token: refused.
    #expect(throws: FencingError.staleToken(lock: "orders", presented: first.token, highest: second.token)) {
      try fence.admit(first.token, for: "orders")
    }
    #expect(table.apply(6, at: 5_001, .release(lock: "orders", session: s(1), token: first.token)) == .released(false))
  }

  @Test("concurrent admissions through the guard never admit a token below one admitted before")
  func concurrentGuard() async throws {
    let fence = FencingGuard()
    let log = AdmissionLog()
    await withTaskGroup(of: Void.self) { group in
      for worker in 0..<8 {
        group.addTask {
          var random = SeededRandom(seed: UInt64(worker))
          for _ in 0..<500 {
            let token = FencingToken(1 + random.next() % 1_000)
            do {
              try fence.withAdmission(token, for: "r") { log.admitted.withLock { $0.append(token.rawValue) } }
            } catch {
              log.refused.add(1, ordering: .relaxed)
            }
          }
        }
      }
    }
    let order = log.admitted.withLock { $0 }
    #expect(order.count + log.refused.load(ordering: .relaxed) == 8 * 500)
    #expect(zip(order, order.dropFirst()).allSatisfy { $0 <= $1 }, "admitted tokens never go down")
    #expect(fence.highestToken(for: "r").map(\.rawValue) == order.last)
  }

  @Test("withAdmission does not run the body for a stale token, and passes the body's own error through")
  func withAdmissionErrors() throws {
    struct Boom: Error, Equatable {}
    let fence = FencingGuard()
    try fence.admit(t(4), for: "x")
    var ran = false
    do {
      try fence.withAdmission(t(3), for: "x") { ran = true }
      Issue.record("a stale token was admitted")
    } catch {
      guard case .fenced(.staleToken(lock: "x", presented: t(3), highest: t(4))) = error else {
        Issue.record("unexpected \(error)")
        return
      }
    }
    #expect(!ran)
    do {
      try fence.withAdmission(t(4), for: "x") { () throws(Boom) in throw Boom() }
      Issue.record("the body's error was swallowed")
    } catch {
      guard case .body(Boom()) = error else {
        Issue.record("unexpected \(error)")
        return
      }
    }
  }
}

/// What the concurrent admission test saw, shared by its tasks.
final class AdmissionLog: Sendable {
  /// Admitted tokens, in the order the guard admitted them (appended while the guard is held).
  let admitted = Mutex<[UInt64]>([])
  /// How many admissions were refused.
  let refused = Atomic<Int>(0)
}
