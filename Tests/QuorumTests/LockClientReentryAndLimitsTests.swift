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
    "a permit inside holds of every permit of the semaphore fails at once as reentrant; inside fewer it is granted",
    arguments: engines)
  func permitInEveryPermitIsRefused(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "reentry-permits").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let locks = members.lockClient(lockOptions: Self.steadyLeases, seed: 1)
      try await closing([locks]) {
        let one = LockMode.semaphore(permits: 1)
        _ = try await locks.withLock("s1", mode: one) { _ in
          // Without the check this would wait out its timeout and throw timedOut.
          await #expect(throws: LockClientError.reentrant(lock: "s1", held: one, requested: one)) {
            _ = try await locks.lock("s1", mode: one, timeout: .seconds(5))
          }
        }
        let two = LockMode.semaphore(permits: 2)
        _ = try await locks.withLock("s2", mode: two) { _ in
          // One of two permits held: the second is free, and granted.
          try await locks.withLock("s2", mode: two) { _ in
            await #expect(throws: LockClientError.reentrant(lock: "s2", held: two, requested: two)) {
              _ = try await locks.lock("s2", mode: two, timeout: .seconds(5))
            }
          }
        }
        #expect(try await locks.status(of: "s1") == nil)
        #expect(try await locks.status(of: "s2") == nil)
      }
    }
  }

  @Test(
    "a hundred concurrent shared holds of one lock through one client are all granted with the default options",
    arguments: engines)
  func concurrencyIsNotRefused(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "many-shared").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      var patient = HostClientOptions()
      patient.deadline = .seconds(60)
      let locks = members.lockClient(lockOptions: Self.steadyLeases, options: patient, seed: 1)
      let observer = members.lockClient(seed: 2)
      try await closing([locks, observer]) {
        let count = 100
        // Each hold takes a session of its own (a session holds a lock once): more than the default 64.
        let leases = try await withThrowingTaskGroup(of: LockLease.self) { group in
          for _ in 0..<count { group.addTask { try await locks.lock("r", mode: .shared, timeout: .seconds(60)) } }
          var leases: [LockLease] = []
          for try await lease in group { leases.append(lease) }
          return leases
        }
        #expect(Set(leases.map(\.session)).count == count)
        #expect(try await observer.status(of: "r")?.holders.count == count)
        for lease in leases { #expect(try await locks.unlock(lease)) }
        #expect(try await observer.status(of: "r") == nil)
      }
    }
  }

  @Test(
    "sessions stuck with clean-ups after failed calls are bounded: at the limit a call needing one more fails at once",
    arguments: engines)
  func stuckSessionsAreBounded(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "session-cap").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      var options = Self.steadyLeases
      options.maxSessions = 2
      let (locks, gate) = Self.gatedClient(members, options: options, seed: 1)
      let observer = members.lockClient(seed: 2)
      try await closing([locks, observer]) {
        let warm = try await locks.lock("other")
        #expect(try await locks.unlock(warm))
        // Every command about "doomed" is applied but its answer lost, and no query is answered: each call fails with
        // an unknown outcome and leaves a clean-up that keeps "doomed" taken in its session, so the next call needs
        // another session.
        gate.loseEveryReply { command in
          switch command {
          case .acquire("doomed", _, _, _, _), .release("doomed", _, _), .cancelWait("doomed", _, _): return true
          default: return false
          }
        }
        for _ in 0..<2 {
          await #expect(throws: (any Error).self) { _ = try await locks.lock("doomed", timeout: .seconds(60)) }
        }
        let status = try #require(try await observer.status(of: "doomed"))
        #expect(Set(status.holders.map(\.session) + status.waiters.map(\.session)).count == 2)
        // Two sessions are stuck: a third call may not open another.
        await #expect(throws: LockClientError.tooManySessions(limit: 2)) {
          _ = try await locks.lock("doomed", timeout: .seconds(5))
        }
        let after = try #require(try await observer.status(of: "doomed"))
        #expect(after.lastToken == status.lastToken && after.waiters == status.waiters, "nothing was sent")
        // Another lock still fits in the sessions already open.
        let other = try await locks.lock("other", timeout: .seconds(30))
        #expect(try await locks.unlock(other))
        // Once the members answer again the clean-ups finish, and the lock can be taken.
        gate.stopLosing()
        let lease = try await awaitValue("the clean-ups to finish") {
          try? await locks.tryLock("doomed", timeout: .seconds(5))
        }
        #expect(lease.token > status.lastToken)
        #expect(try await locks.unlock(lease))
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

/// Leaving a queue whose wait was queued by another entry than the acquire's answer names.
extension LockClientTests {
  /// Queues `session` for `name` by hand, as a call of unknown outcome can leave it: a wait no call stands for.
  static func orphanWait(_ name: String, session: LockSessionID, through client: LockClient) async throws -> UInt64 {
    let bytes = try await client.host.command(
      LockCommand.acquire(lock: name, session: session, mode: .exclusive, wait: true, waitTimeoutMillis: nil)
        .wireBytes(), service: LockService.name, group: Self.group)
    #expect(try LockResponse(wireBytes: bytes) == .queued(position: 0))
    let status = try #require(try await client.status(of: name))
    return try #require(status.waiters.first { $0.session == session }?.queuedAt)
  }

  @Test(
    "a call that gives up its wait leaves the queue even when its wait was queued by an earlier entry",
    arguments: engines)
  func leavesOrphanedWait(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "orphan-wait").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let (locks, gate) = Self.gatedClient(members, options: Self.steadyLeases, seed: 1)
      let holder = members.lockClient(lockOptions: Self.steadyLeases, seed: 2)
      try await closing([locks, holder]) {
        let warm = try await locks.lock("warm-up")
        let session = warm.session
        #expect(try await locks.unlock(warm))
        let x = try await holder.lock("x")
        let y = try await holder.lock("y")
        // The client's session already waits for "x"; its call re-enters that wait, and the answer's index is the
        // call's own entry, not the one that queued the wait.
        let orphan = try await Self.orphanWait("x", session: session, through: holder)
        #expect(try await locks.tryLock("x", timeout: .seconds(2)) == nil)
        #expect(try await holder.status(of: "x")?.waiters == [], "the wait of entry \(orphan) is left behind")
        // The same when the call's cancel goes unanswered and a background clean-up takes over.
        _ = try await Self.orphanWait("y", session: session, through: holder)
        gate.loseEveryReply { if case .cancelWait("y", _, _) = $0 { true } else { false } }
        await #expect(throws: (any Error).self) { _ = try await locks.tryLock("y", timeout: .seconds(2)) }
        gate.stopLosing()
        _ = try await awaitValue("the clean-up to leave the queue of y") {
          try await holder.status(of: "y")?.waiters.isEmpty == true ? true : nil
        }
        #expect(try await holder.unlock(x))
        #expect(try await holder.unlock(y))
        #expect(try await holder.status(of: "x") == nil, "nobody was granted")
        #expect(try await holder.status(of: "y") == nil, "nobody was granted")
      }
    }
  }
}
