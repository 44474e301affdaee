import Quorum
import Synchronization
import Testing

/// Several calls on one `LockClient`: each gets a hold of its own, and a call whose outcome is unknown is cleaned
/// up without waiting for its session to go idle.
extension LockClientTests {
  /// How many bodies run at once, and the most that ever did.
  final class Occupancy: Sendable {
    private let state = Mutex<(inside: Int, most: Int)>((0, 0))
    func enter() {
      state.withLock {
        $0.inside += 1
        $0.most = max($0.most, $0.inside)
      }
    }
    func leave() { state.withLock { $0.inside -= 1 } }
    var inside: Int { state.withLock { $0.inside } }
    var most: Int { state.withLock { $0.most } }
  }

  @Test("two tasks of one client take an exclusive lock in turn, each with a token of its own", arguments: engines)
  func callersOfOneClientExclude(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "callers").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let locks = members.lockClient(lockOptions: Self.steadyLeases, seed: 1)
      let observer = members.lockClient(seed: 2)
      try await closing([locks, observer]) {
        let occupancy = Occupancy()
        let first = Task {
          try await locks.withLock("orders") { token in
            occupancy.enter()
            defer { occupancy.leave() }
            // Holds the lock until the second caller either queues (as it must) or runs its body alongside.
            _ = try await awaitValue("the second caller to queue (or to enter)") {
              if occupancy.inside > 1 { return true }
              return try await observer.status(of: "orders")?.waiters.count == 1 ? true : nil
            }
            return token
          }
        }
        _ = try await awaitValue("the first caller to enter") { occupancy.most == 1 ? true : nil }
        let second = Task {
          try await locks.withLock("orders") { token in
            occupancy.enter()
            defer { occupancy.leave() }
            return token
          }
        }
        let firstToken = try await first.value
        let secondToken = try await second.value
        #expect(occupancy.most == 1, "the bodies overlapped")
        #expect(secondToken > firstToken, "each call had a grant of its own: \(firstToken), \(secondToken)")
        #expect(try await observer.status(of: "orders") == nil, "both released")
      }
    }
  }

  @Test("each semaphore acquire of one client takes a permit of its own: two of two, not a third", arguments: engines)
  func callersOfOneClientTakePermits(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "permits").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let pool = LockMode.semaphore(permits: 2)
      let locks = members.lockClient(lockOptions: Self.steadyLeases, seed: 1)
      let observer = members.lockClient(seed: 2)
      try await closing([locks, observer]) {
        let a = try await locks.lock("pool", mode: pool)
        let b = try await locks.lock("pool", mode: pool)
        #expect(a.token != b.token && a.session != b.session, "\(a), \(b)")
        let status = try #require(try await observer.status(of: "pool"))
        #expect(status.holders.count == 2, "each call took a permit: \(status)")
        #expect(try await locks.tryLock("pool", mode: pool) == nil, "no third permit")
        let third = Task { try await locks.lock("pool", mode: pool, timeout: .seconds(60)) }
        _ = try await awaitValue("the third call to queue") {
          try await observer.status(of: "pool")?.waiters.count == 1 ? true : nil
        }
        #expect(try await locks.unlock(a))
        let c = try await third.value
        #expect(c.token > b.token && c.isValid && b.isValid)
        #expect(try await observer.status(of: "pool")?.holders.count == 2)
        #expect(try await locks.unlock(b))
        #expect(try await locks.unlock(c))
        #expect(try await observer.status(of: "pool") == nil)
      }
    }
  }

  @Test(
    "a call of one client that times out leaves the other call's wait alone: it is granted when the lock is freed",
    arguments: engines)
  func timedOutCallSparesTheOtherWait(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "two-waits").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let holder = members.lockClient(lockOptions: Self.steadyLeases, seed: 1)
      let waiter = members.lockClient(lockOptions: Self.steadyLeases, seed: 2)
      try await closing([holder, waiter]) {
        let held = try await holder.lock("orders")
        let patient = Task { try await waiter.lock("orders") }  // The default wait: a day.
        _ = try await awaitValue("the patient call to queue") {
          try await holder.status(of: "orders")?.waiters.count == 1 ? true : nil
        }
        let impatient = Task { try await waiter.lock("orders", timeout: .seconds(1)) }
        await #expect(throws: LockClientError.timedOut(lock: "orders")) { _ = try await impatient.value }
        #expect(try await holder.unlock(held))
        _ = try await awaitValue("the patient call to be granted", within: .seconds(20)) {
          try await holder.status(of: "orders")?.holders.count == 1 ? true : nil
        }
        let lease = try await patient.value
        #expect(lease.isValid && lease.token > held.token)
        #expect(try await waiter.unlock(lease))
      }
    }
  }

  @Test("a call whose wait the members ended without a word stops waiting at the next check", arguments: engines)
  func vanishedWaitEnds(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "vanished").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let holder = members.lockClient(lockOptions: Self.steadyLeases, seed: 1)
      let waiter = members.lockClient(lockOptions: Self.steadyLeases, seed: 2)
      try await closing([holder, waiter]) {
        let held = try await holder.lock("x")
        let outcome = FailureBox()
        let waiting = Task {
          do { _ = try await waiter.lock("x", timeout: .seconds(600)) } catch { outcome.record(error) }
        }
        let session = try await awaitValue("the waiter to queue") {
          try await holder.status(of: "x")?.waiters.first?.session
        }
        // The session's wait is taken away (as a stale cancel of another call once did): no event says so.
        _ = try await waiter.host.command(
          LockCommand.cancelWait(lock: "x", session: session).wireBytes(), service: LockService.name,
          group: Self.group)
        let error = try await awaitValue("the call to end", within: .seconds(20)) { outcome.error }
        #expect(error as? LockClientError == .timedOut(lock: "x"), "\(error)")
        await waiting.value
        #expect(try await holder.unlock(held))
      }
    }
  }

  @Test(
    "a wait whose cancel failed leaves the queue in the background, though its session holds another lease",
    arguments: engines)
  func failedCancelIsCleanedUp(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "clean-wait").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let holder = members.lockClient(lockOptions: Self.steadyLeases, seed: 1)
      let (waiter, gate) = Self.gatedClient(members, options: Self.steadyLeases, seed: 2)
      let other = members.lockClient(lockOptions: Self.steadyLeases, seed: 3)
      try await closing([holder, waiter, other]) {
        let held = try await holder.lock("x")
        let kept = try await waiter.lock("kept")  // Keeps the waiter's session renewed, and not idle.
        let waiting = Task { try await waiter.lock("x") }
        _ = try await awaitValue("the waiter to queue in the session holding \"kept\"") {
          try await holder.status(of: "x")?.waiters.map(\.session) == [kept.session] ? true : nil
        }
        gate.close()
        waiting.cancel()  // Its cancelWait cannot reach the cluster.
        await #expect(throws: (any Error).self) { _ = try await waiting.value }
        gate.open()
        _ = try await awaitValue("the abandoned wait to leave the queue", within: .seconds(20)) {
          try await holder.status(of: "x")?.waiters.isEmpty == true ? true : nil
        }
        #expect(kept.isValid, "the session was not closed to clean up")
        #expect(try await holder.unlock(held))
        let next = try await other.lock("x", timeout: .seconds(20))
        #expect(next.token > held.token)
        #expect(try await other.unlock(next))
        #expect(try await waiter.unlock(kept))
      }
    }
  }

  @Test(
    "a release that failed is retried in the background, though its session holds another lease",
    arguments: engines)
  func failedReleaseIsRetried(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "clean-release").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let (locks, gate) = Self.gatedClient(members, options: Self.steadyLeases, seed: 1)
      let observer = members.lockClient(seed: 2)
      try await closing([locks, observer]) {
        let kept = try await locks.lock("kept")
        let y = try await locks.lock("y")
        #expect(y.session == kept.session)
        gate.close()
        await #expect(throws: (any Error).self) { _ = try await locks.unlock(y) }
        gate.open()
        _ = try await awaitValue("the release to be retried", within: .seconds(20)) {
          try await observer.status(of: "y") == nil ? true : nil
        }
        #expect(kept.isValid, "the session was not closed to clean up")
        #expect(try await locks.unlock(kept))
      }
    }
  }
}
