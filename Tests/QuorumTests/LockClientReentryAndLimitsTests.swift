import Quorum
import Synchronization
import Testing

/// Re-entry inside `withLock`, the bound on a client's sessions, and cancels that name their wait.
extension LockClientTests {
  @Test(
    "a call inside withLock for the lock it holds exclusively fails at once as reentrant instead of waiting for itself",
    arguments: engines)
  func reentryIsRefused(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "reentry").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let locks = members.lockClient(lockOptions: Self.steadyLeases, seed: 1)
      let sameHost = LockClient(await locks.host, options: Self.steadyLeases)
      try await closing([locks, sameHost]) {
        let refused = LockClientError.reentrant(lock: "a", held: .exclusive, requested: .exclusive)
        try await locks.withLock("a") { _ in
          // Without the check each of these would wait out its timeout and throw timedOut.
          await #expect(throws: refused) { _ = try await locks.lock("a", timeout: .seconds(5)) }
          await #expect(throws: LockClientError.reentrant(lock: "a", held: .exclusive, requested: .shared)) {
            _ = try await locks.tryLock("a", mode: .shared, timeout: .seconds(5))
          }
          await #expect(throws: refused) { _ = try await sameHost.lock("a", timeout: .seconds(5)) }
          // A task the body waits for inherits the hold.
          let child = Task { try await locks.lock("a", timeout: .seconds(5)) }
          await #expect(throws: refused) { _ = try await child.value }
          // Another lock nests as usual.
          try await locks.withLock("b") { token in #expect(token > .zero) }
        }
        // Shared within shared takes a hold of its own.
        try await locks.withLock("r", mode: .shared) { _ in
          let inner = try await locks.lock("r", mode: .shared, timeout: .seconds(30))
          #expect(inner.isValid)
          #expect(try await locks.unlock(inner))
          await #expect(throws: LockClientError.reentrant(lock: "r", held: .shared, requested: .exclusive)) {
            _ = try await locks.lock("r", timeout: .seconds(5))
          }
        }
        // Once the body has returned the lock is free for the task again.
        let after = try await locks.lock("a", timeout: .seconds(30))
        #expect(try await locks.unlock(after))
      }
    }
  }

  @Test(
    "a call that needs a session beyond the client's limit fails at once instead of opening one more",
    arguments: engines)
  func sessionsAreBounded(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "session-cap").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      var options = Self.steadyLeases
      options.maxSessions = 2
      let locks = members.lockClient(lockOptions: options, seed: 1)
      let observer = members.lockClient(seed: 2)
      try await closing([locks, observer]) {
        let held = try await locks.lock("a")
        let waiting = Task { try await locks.lock("a", timeout: .seconds(60)) }
        _ = try await awaitValue("the second call to queue in a second session") {
          try await observer.status(of: "a")?.waiters.count == 1 ? true : nil
        }
        // Both sessions are taken for "a": a third call may not open another.
        await #expect(throws: LockClientError.tooManySessions(limit: 2)) {
          _ = try await locks.lock("a", timeout: .seconds(5))
        }
        #expect(try await observer.status(of: "a")?.waiters.count == 1, "nothing was sent")
        // Another lock still fits in the sessions already open.
        let other = try await locks.lock("b", timeout: .seconds(30))
        #expect(try await locks.unlock(other))
        #expect(try await locks.unlock(held))
        let next = try await waiting.value
        #expect(next.token > held.token)
        #expect(try await locks.unlock(next))
      }
    }
  }

  @Test(
    "a late cancel of a wait that already ended leaves the next wait of the same session in place",
    arguments: engines)
  func lateCancelSparesNextWait(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "late-cancel").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let holder = members.lockClient(lockOptions: Self.steadyLeases, seed: 1)
      let waiter = members.lockClient(lockOptions: Self.steadyLeases, seed: 2)
      try await closing([holder, waiter]) {
        let held = try await holder.lock("x")
        let first = Task { try await waiter.lock("x", timeout: .seconds(60)) }
        let old = try await awaitValue("the first call to queue") { try await holder.status(of: "x")?.waiters.first }
        first.cancel()
        await #expect(throws: CancellationError.self) { _ = try await first.value }
        let outcome = FailureBox()
        let second = Task {
          do { return try await waiter.lock("x", timeout: .seconds(600)) } catch {
            outcome.record(error)
            throw error
          }
        }
        let current = try await awaitValue("the second call to queue in the same session") {
          try await holder.status(of: "x")?.waiters.first { $0.session == old.session && $0.queuedAt != old.queuedAt }
        }
        // The first call's cancel, as a delayed copy would arrive: it names the wait that already ended.
        let answer = try await waiter.host.command(
          LockCommand.cancelWait(lock: "x", session: old.session, queuedAt: old.queuedAt).wireBytes(),
          service: LockService.name, group: Self.group)
        #expect(try LockResponse(wireBytes: answer) == .waitCancelled(false))
        #expect(try await holder.status(of: "x")?.waiters.map(\.queuedAt) == [current.queuedAt])
        #expect(outcome.error == nil)
        #expect(try await holder.unlock(held))
        let lease = try await second.value
        #expect(lease.token > held.token)
        #expect(try await waiter.unlock(lease))
      }
    }
  }
}
