import Foundation
import Quorum
import Synchronization
import Testing

/// The lock service end to end: `LockClient`s against a lock group of three in-process members, on each engine.
///
/// A lease that must run out has a 3 s TTL (``mortalLeases``), so the suite stays fast; a lease that must last
/// through a test's set-up has 10 s (``steadyLeases``): a full parallel run on two cores can delay a renewal by
/// more than a second, and a shorter lease then expires before the step the test is about. Every wait for
/// something to happen is a poll with a generous bound that only a broken run reaches.
@Suite("Lock client against in-process clusters", .serialized, .timeLimit(.minutes(5)))
struct LockClientTests {
  static let engines: [EngineKind] = [.raft, .multiPaxos]
  /// The lock group (the only `Group` line of ``cluster(_:_:)``).
  static let group: GroupID = 1

  /// Three in-process members with one lock group on `engine`.
  static func cluster(_ engine: EngineKind, _ name: String, snapshotEvery: Int? = nil) throws -> Cluster {
    try Cluster(id: ClusterID(rawValue: "locks-\(name)-\(engine)")) {
      Member("n1")
      Member("n2")
      Member("n3")
      Logging(NullLogSink())
      RaftSettings {
        TickInterval(.milliseconds(10))
        ElectionTimeout(Duration.milliseconds(150)...Duration.milliseconds(300))
        HeartbeatInterval(.milliseconds(30))
        if let snapshotEvery { Snapshots(every: snapshotEvery, retain: 2) }
      }
      PaxosSettings {
        TickInterval(.milliseconds(10))
        ElectionTimeout(Duration.milliseconds(150)...Duration.milliseconds(300))
        HeartbeatInterval(.milliseconds(30))
        if let snapshotEvery { Snapshots(every: snapshotEvery, retain: 2) }
      }
      Group("locks", engine: engine) { Locks() }
    }
  }

  /// Leases of the table's shortest TTL (1 s), watches re-checked every second.
  static var shortLeases: LockClientOptions {
    var options = LockClientOptions()
    options.ttl = .seconds(1)
    options.watchInterval = .seconds(1)
    return options
  }

  /// Leases that run out 3 s after their keep-alives stop (for a client a test cuts off).
  static var mortalLeases: LockClientOptions {
    var options = LockClientOptions()
    options.ttl = .seconds(3)
    options.renewFraction = 0.2
    options.watchInterval = .seconds(1)
    return options
  }

  /// Leases that outlast a slow failover on a busy machine (10 s), renewed every half second.
  static var steadyLeases: LockClientOptions {
    var options = LockClientOptions()
    options.renewFraction = 0.05
    options.watchInterval = .seconds(1)
    return options
  }

  /// Calls that give up after a few seconds, so that a client cut off by a test does not hold it up for long.
  static var quickCalls: HostClientOptions {
    var options = HostClientOptions()
    options.deadline = .seconds(3)
    options.attemptTimeout = .milliseconds(500)
    return options
  }

  /// A lock client whose traffic a test can cut (as a process pause or a partition does) and whose replies it
  /// can lose.
  static func gatedClient(
    _ members: LocalMembers, options: LockClientOptions = mortalLeases, seed: UInt64
  ) -> (LockClient, GatedChannel) {
    let channel = GatedChannel(InProcessRequestChannel(hosts: members.hosts))
    let host = HostClient(
      channel: channel, members: members.hosts.keys.sorted(), map: members.map, options: quickCalls, seed: seed)
    return (LockClient(host, options: options), channel)
  }

  // MARK: - Fair hand-off

  @Test(
    "waiters are granted in arrival order, each with a larger token; a second call of the holder's client waits",
    arguments: engines)
  func fifoHandOff(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "fifo").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      // Patient calls: on a loaded machine a queued acquire's reply may take longer than the default deadline,
      // and a waiter whose call gives up leaves the queue, which is not what this test is about.
      var patient = HostClientOptions()
      patient.deadline = .seconds(60)
      // Leases as patient as the calls: a renewal is a call too, and on a machine loaded enough to hold a call
      // for many seconds a 10 s lease can lapse; the lock then moves on out of the order this test checks.
      var patientLeases = Self.steadyLeases
      patientLeases.ttl = patient.deadline
      let clients = (1...4).map {
        members.lockClient(lockOptions: patientLeases, options: patient, seed: UInt64($0))
      }
      try await closing(clients) {
        let first = try await clients[0].lock("orders")
        #expect(
          try await clients[0].tryLock("orders") == nil, "no re-entry: the holder's client is not granted it again")
        #expect(try await clients[1].tryLock("orders") == nil, "a busy lock is not granted without waiting")
        var waiters: [Task<LockLease, any Error>] = []
        var failures: [FailureBox] = []
        for c in 1...3 {
          let client = clients[c]
          let failure = FailureBox()
          failures.append(failure)
          waiters.append(
            Task {
              do { return try await client.lock("orders") } catch {
                failure.record(error)
                throw error
              }
            })
          _ = try await awaitValue("waiter \(c) to queue") { [failures] in
            // A waiter whose call failed leaves the queue (or never joins it): say why rather than wait out the
            // bound.
            if let error = failures.lazy.compactMap(\.error).first { throw error }
            return try await clients[0].status(of: "orders")?.waiters.count == c ? true : nil
          }
        }
        let before = try #require(try await clients[0].status(of: "orders"))
        let queued = before.waiters.map(\.session)
        if let error = failures.lazy.compactMap(\.error).first { throw error }
        if queued.count != 3 {
          // A waiter left: give a call that is failing the moment to say why, then report everything.
          try await Task.sleep(for: .seconds(2))
          let errors = failures.map { $0.error.map { "\($0)" } ?? "still waiting" }
          let holder = "the first holder's lease \(first.session) token \(first.token) valid: \(first.isValid)"
          Issue.record("a waiter left the queue: \(before); waiters' calls: \(errors); \(holder)")
          return
        }
        var previous = first
        for (i, waiter) in waiters.enumerated() {
          #expect(try await clients[i].unlock(previous), "the holder's release takes effect")
          let lease = try await waiter.value
          #expect(lease.session == queued[i], "waiter \(i + 1) of \(queued) is granted next")
          #expect(lease.token > previous.token, "\(lease.token) follows \(previous.token)")
          #expect(lease.isValid)
          let status = try #require(try await clients[0].status(of: "orders"))
          #expect(status.holders.map(\.session) == [lease.session] && status.holders.first?.token == lease.token)
          #expect(status.waiters.map(\.session) == Array(queued[(i + 1)...]), "the rest still wait, in order")
          previous = lease
        }
        #expect(try await clients[3].unlock(previous))
        #expect(try await clients[0].status(of: "orders") == nil, "a free lock is forgotten")
      }
    }
  }

  @Test(
    "shared holders coexist; an exclusive request waits for them and a later shared one waits behind it",
    arguments: engines)
  func sharedAndExclusive(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "shared").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let clients = (1...4).map { members.lockClient(seed: UInt64($0)) }
      try await closing(clients) {
        let readerA = try await clients[0].lock("doc", mode: .shared)
        let readerB = try await clients[1].lock("doc", mode: .shared)
        #expect(readerA.isValid && readerB.isValid)
        let writerClient = clients[2]
        let writer = Task { try await writerClient.lock("doc", mode: .exclusive) }
        _ = try await awaitValue("the writer to queue") {
          try await clients[0].status(of: "doc")?.waiters.count == 1 ? true : nil
        }
        let lateReaderClient = clients[3]
        let lateReader = Task { try await lateReaderClient.lock("doc", mode: .shared) }
        _ = try await awaitValue("the late reader to queue behind the writer") {
          try await clients[0].status(of: "doc")?.waiters.count == 2 ? true : nil
        }
        #expect(try await clients[0].status(of: "doc")?.holders.count == 2, "the late reader was not let in")
        #expect(try await clients[0].unlock(readerA))
        #expect(try await clients[0].status(of: "doc")?.waiters.count == 2, "one reader still holds")
        #expect(try await clients[1].unlock(readerB))
        let written = try await writer.value
        #expect(written.mode == .exclusive && written.token > max(readerA.token, readerB.token))
        #expect(try await clients[0].status(of: "doc")?.holders.map(\.session) == [written.session])
        #expect(try await clients[2].unlock(written))
        let read = try await lateReader.value
        #expect(read.mode == .shared && read.token > written.token)
        #expect(try await clients[3].unlock(read))
      }
    }
  }

  // MARK: - Leases

  @Test(
    "a holder whose keep-alives stop loses its lease before the next waiter is granted; the fence refuses it",
    arguments: engines)
  func pausedHolderIsFenced(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "paused").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let (paused, gate) = Self.gatedClient(members, seed: 1)
      let next = members.lockClient(lockOptions: Self.steadyLeases, seed: 2)
      try await closing([paused, next]) {
        let fence = FencingGuard()
        let stale = try await paused.lock("ledger")
        try fence.admit(stale.token, for: "ledger")
        let waiter = Task { try await next.lock("ledger") }
        _ = try await awaitValue("the next client to queue") {
          try await next.status(of: "ledger")?.waiters.count == 1 ? true : nil
        }
        gate.close()  // The holder's process pauses: no keep-alive reaches the cluster.
        let granted = try await waiter.value
        #expect(!stale.isValid, "the paused holder gave its lease up before anyone else was granted it")
        try await awaitLost(stale)
        #expect(granted.token > stale.token)
        try fence.admit(granted.token, for: "ledger")
        #expect(throws: FencingError.staleToken(lock: "ledger", presented: stale.token, highest: granted.token)) {
          try fence.admit(stale.token, for: "ledger")
        }
        gate.open()  // The holder wakes up and releases late: its release must not free the new holder's grant.
        #expect(try await paused.unlock(stale) == false)
        let status = try #require(try await next.status(of: "ledger"))
        #expect(status.holders.map(\.session) == [granted.session] && status.holders.first?.token == granted.token)
        #expect(granted.isValid)
        #expect(try await next.unlock(granted))
      }
    }
  }

  @Test("a waiter whose own session expired is skipped: the lock goes to the next live waiter", arguments: engines)
  func expiredWaiterIsSkipped(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "skip").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let holder = members.lockClient(lockOptions: Self.steadyLeases, seed: 1)
      let (doomed, gate) = Self.gatedClient(members, seed: 2)
      let live = members.lockClient(lockOptions: Self.steadyLeases, seed: 3)
      try await closing([holder, doomed, live]) {
        let held = try await holder.lock("queue")
        let doomedWait = Task { try await doomed.tryLock("queue", timeout: .seconds(3)) }
        _ = try await awaitValue("the doomed waiter to queue") {
          try await holder.status(of: "queue")?.waiters.count == 1 ? true : nil
        }
        let doomedSession = try #require(try await holder.status(of: "queue")?.waiters.first?.session)
        let liveWait = Task { try await live.lock("queue") }
        _ = try await awaitValue("the live waiter to queue") {
          try await holder.status(of: "queue")?.waiters.count == 2 ? true : nil
        }
        gate.close()
        _ = try await awaitValue("the doomed waiter's session to expire") {
          let waiters = try await holder.status(of: "queue")?.waiters.map(\.session) ?? []
          return waiters.contains(doomedSession) ? nil : true
        }
        #expect(try await holder.unlock(held))
        let granted = try await liveWait.value
        #expect(granted.token > held.token && granted.session != doomedSession)
        gate.open()
        let late = (try? await doomedWait.value) ?? nil
        #expect(late?.isValid != true, "a lease of an expired session is never valid: \(String(describing: late))")
        #expect(try await live.status(of: "queue")?.holders.map(\.session) == [granted.session])
        #expect(try await live.unlock(granted))
      }
    }
  }

  @Test(
    "a semaphore's permits are conserved and come back when a holder's session closes or expires",
    arguments: engines)
  func semaphorePermits(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "semaphore").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let pool = LockMode.semaphore(permits: 2)
      let closer = members.lockClient(lockOptions: Self.steadyLeases, seed: 1)
      let (dying, gate) = Self.gatedClient(members, seed: 2)
      let waiters = (3...4).map { members.lockClient(lockOptions: Self.steadyLeases, seed: UInt64($0)) }
      let observer = members.lockClient(seed: 5)
      try await closing([closer, dying, observer] + waiters) {
        let first = try await closer.lock("pool", mode: pool)
        let second = try await dying.lock("pool", mode: pool)
        #expect(first.isValid && second.isValid)
        var tasks: [Task<LockLease, any Error>] = []
        for (i, client) in waiters.enumerated() {
          tasks.append(Task { try await client.lock("pool", mode: pool) })
          _ = try await awaitValue("waiter \(i) to queue") {
            try await observer.status(of: "pool")?.waiters.count == i + 1 ? true : nil
          }
        }
        await #expect(throws: LockClientError.refused(.permitsMismatch(lock: "pool", existing: 2, requested: 3))) {
          _ = try await observer.tryLock("pool", mode: .semaphore(permits: 3))
        }
        #expect(try await observer.status(of: "pool")?.holders.count == 2, "two permits, two holders")
        await closer.close()  // Its session closes: its permit goes to the first waiter at once.
        #expect(!first.isValid)
        let third = try await tasks[0].value
        #expect(third.token > second.token)
        #expect(try await observer.status(of: "pool")?.holders.count == 2)
        gate.close()  // The other holder dies: its permit comes back when its session expires.
        let fourth = try await tasks[1].value
        #expect(!second.isValid, "the dead holder gave its permit up first")
        #expect(fourth.token > third.token)
        let status = try #require(try await observer.status(of: "pool"))
        #expect(Set(status.holders.map(\.session)) == [third.session, fourth.session] && status.waiters.isEmpty)
        gate.open()
      }
    }
  }

  @Test(
    "withLock runs the body with the token and unlocks after it, also when it throws or the lease is lost",
    arguments: engines)
  func withLockScopes(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "scoped").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let locks = members.lockClient(lockOptions: Self.steadyLeases, seed: 1)
      let (losing, gate) = Self.gatedClient(members, seed: 2)
      try await closing([locks, losing]) {
        let observed = try await locks.withLock("scoped") { token in
          token
        }
        #expect(observed > .zero)
        #expect(try await locks.status(of: "scoped") == nil, "released after the body")
        struct BodyFailed: Error, Equatable {}
        await #expect(throws: BodyFailed()) {
          _ = try await locks.withLock("scoped") { _ -> Int in throw BodyFailed() }
        }
        #expect(try await locks.status(of: "scoped") == nil, "released after the body threw")
        let again = try await locks.withLock("scoped") { token in token }
        #expect(again > observed)

        let cancelled = Atomic<Bool>(false)
        let error = await #expect(throws: LockClientError.self) {
          _ = try await losing.withLock("scoped") { _ -> Int in
            gate.close()  // Its keep-alives stop reaching the cluster while the body runs.
            while !Task.isCancelled { try? await Task.sleep(for: .milliseconds(10)) }
            cancelled.store(true, ordering: .relaxed)
            return 0
          }
        }
        guard case .leaseLost(let lock, _)? = error else {
          Issue.record("expected leaseLost, got \(String(describing: error))")
          return
        }
        #expect(lock == "scoped")
        let bodyWasCancelled = cancelled.load(ordering: .relaxed)
        #expect(bodyWasCancelled, "the body was cancelled when the lease was lost")
        gate.open()
        let afterwards = try await locks.lock("scoped")
        #expect(afterwards.token > again)
        #expect(try await locks.unlock(afterwards))
      }
    }
  }

  @Test("every lease of a session is lost with it: two granted in one entry", arguments: engines)
  func sessionLossReachesEveryLease(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "every").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let holder = members.lockClient(seed: 1)
      let waiter = members.lockClient(seed: 2)
      try await closing([holder, waiter]) {
        _ = try await holder.lock("a")
        _ = try await holder.lock("b")
        let waitA = Task { try await waiter.lock("a") }
        let waitB = Task { try await waiter.lock("b") }
        _ = try await awaitValue("the waiter to queue for both") {
          let a = try await holder.status(of: "a")?.waiters.count
          let b = try await holder.status(of: "b")?.waiters.count
          return a == 1 && b == 1 ? true : nil
        }
        await holder.close()  // Frees both in one entry: the waiter is granted both with one token.
        let a = try await waitA.value
        let b = try await waitB.value
        #expect(a.token == b.token && a.session == b.session, "granted by the same entry")
        #expect(try await waiter.tryLock("a") == nil, "no re-entry: a second call does not share the hold")
        await waiter.close()
        #expect(!a.isValid && !b.isValid, "\(a.isValid) \(b.isValid)")
        for lease in [a, b] { try await awaitLost(lease) }
      }
    }
  }

  /// Runs `body` with a lock client whose channel can hold one request or reply, holding lock `orders`; `body`
  /// returns the lease a second `lock("orders")` got, which must be a fresh grant standing for the lock's holder.
  static func raceWithRelease(
    _ engine: EngineKind, _ name: String,
    _ body: @escaping @Sendable (LockClient, HoldingChannel, LockLease) async throws -> LockLease
  ) async throws {
    try await cluster(engine, name).withLocalMembers { members in
      _ = try await awaitLeader(members)
      let channel = HoldingChannel(InProcessRequestChannel(hosts: members.hosts))
      let client = LockClient(
        HostClient(channel: channel, members: members.hosts.keys.sorted(), map: members.map, seed: 1),
        options: steadyLeases)
      try await closing([client]) {
        let first = try await client.lock("orders")
        let lease = try await body(client, channel, first)
        #expect(lease.token > first.token, "the released grant \(first.token) was handed out again as \(lease)")
        #expect(lease.isValid)
        let status = try #require(try await client.status(of: "orders"))
        #expect(status.holders.map(\.token) == [lease.token], "the lease stands for the lock's holder: \(status)")
        #expect(try await client.unlock(lease))
      }
    }
  }

  @Test(
    "a second call for a lock the client holds waits in another session and is granted by the release",
    arguments: engines)
  func lateReentryAnswerIsNotALease(_ engine: EngineKind) async throws {
    try await Self.raceWithRelease(engine, "late-reentry") { client, channel, first in
      channel.holdNextReply { if case .acquire(let lock, _, _, _, _) = $0 { lock == "orders" } else { false } }
      let reentry = Task { try await client.lock("orders") }
      _ = try await awaitValue("the re-entry to be applied, its answer held") { channel.isHolding ? true : nil }
      #expect(try await client.unlock(first), "the release takes effect")
      channel.releaseHeld()
      return try await reentry.value
    }
  }

  @Test(
    "an acquire made while a release of the same lock is in flight uses another session, and acquires afresh",
    arguments: engines)
  func acquireWaitsForARelease(_ engine: EngineKind) async throws {
    try await Self.raceWithRelease(engine, "reentry-during-release") { client, channel, first in
      channel.holdNextRequest { if case .release = $0 { true } else { false } }
      let unlocking = Task { try await client.unlock(first) }
      _ = try await awaitValue("the release to be held before it is sent") { channel.isHolding ? true : nil }
      let second = Task { try await client.lock("orders") }
      // The acquire goes out in another session and queues behind the grant the held release ends.
      _ = try await awaitValue("the second call to queue") {
        try await client.status(of: "orders")?.waiters.count == 1 ? true : nil
      }
      channel.releaseHeld()
      #expect(try await unlocking.value, "the release takes effect")
      return try await second.value
    }
  }

  @Test(
    "a call that fails in a session leaves the other calls waiting in it alone: a cancelled wait ends only its own",
    arguments: engines)
  func failedCallSparesConcurrentWaits(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "spare-waits").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let holder = members.lockClient(lockOptions: Self.steadyLeases, seed: 1)
      let waiter = members.lockClient(lockOptions: Self.steadyLeases, seed: 2)
      try await closing([holder, waiter]) {
        let a = try await holder.lock("a")
        _ = try await holder.lock("b")
        let waitA = Task { try await waiter.lock("a") }
        let waitB = Task { try await waiter.lock("b") }
        _ = try await awaitValue("the waiter to queue for both") {
          let a = try await holder.status(of: "a")?.waiters.count
          let b = try await holder.status(of: "b")?.waiters.count
          return a == 1 && b == 1 ? true : nil
        }
        waitB.cancel()
        await #expect(throws: CancellationError.self) { try await waitB.value }
        #expect(try await holder.status(of: "b")?.waiters.isEmpty == true, "the cancelled wait left the queue")
        #expect(try await holder.unlock(a))
        let lease = try await waitA.value
        #expect(lease.isValid && lease.token > a.token, "the other wait in the session was granted: \(lease)")
      }
    }
  }

  @Test("a lease is invalid once its deadline passes on the client's clock, before the renewal task notices")
  func validityFollowsTheClock() async throws {
    try await Self.cluster(.raft, "clock").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let clock = ManualClientClock()
      let locks = LockClient(members.client(seed: 1), options: Self.shortLeases, clock: clock)
      try await closing([locks]) {
        let lease = try await locks.lock("clocked")
        #expect(lease.isValid)
        clock.advance(by: .milliseconds(500))
        #expect(lease.isValid, "half a TTL later, with no renewal yet, the lease still holds")
        clock.advance(by: .milliseconds(500))
        #expect(!lease.isValid, "a TTL after the session was opened, without a renewal, it cannot be relied on")
        clock.wakeSleepers()
        try await awaitLost(lease)
      }
    }
  }

  @Test(
    "a grant that reaches a waiter after its client gave the session up is handed back, and the call says so",
    arguments: engines)
  func grantAfterSessionGivenUp(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "late-grant").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let holder = members.lockClient(lockOptions: Self.steadyLeases, seed: 1)
      let clock = ManualClientClock()
      var options = LockClientOptions()
      options.ttl = .seconds(60)  // The members keep the session throughout the test without a renewal.
      options.watchInterval = .seconds(60)  // The waiter's watch is still waiting when the grant comes.
      let waiter = LockClient(members.client(seed: 2), options: options, clock: clock)
      try await closing([holder, waiter]) {
        let held = try await holder.lock("late")
        let other = try await waiter.lock("other")  // A lease of the session the waiter waits in.
        let waiting = Task { try await waiter.lock("late") }
        _ = try await awaitValue("the waiter to queue") {
          try await holder.status(of: "late")?.waiters.map(\.session) == [other.session] ? true : nil
        }
        // The client's clock passes the session's deadline: the client gives the session up (its lease of
        // "other" is lost), while the members, whose clocks hardly moved, keep it.
        clock.advance(by: options.ttl)
        clock.wakeSleepers()
        try await awaitLost(other)
        #expect(try await holder.unlock(held))  // Grants "late" to the session the waiter gave up.
        await #expect(throws: LockClientError.sessionLost(lock: "late")) {
          let lease = try await waiting.value
          Issue.record("the call returned \(lease), valid: \(lease.isValid)")
        }
        let status = try await holder.status(of: "late")
        #expect(
          status == nil, "the grant went back at once, not when the session expires: \(String(describing: status))")
      }
    }
  }

  // MARK: - Failures of the cluster

  @Test(
    "an acquire whose outcome is unknown is undone in the background: nothing held, and the session's other leases live on",
    arguments: engines)
  func unknownOutcomeLeavesNothingHeld(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "unknown").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let (locks, channel) = Self.gatedClient(members, options: LockClientOptions(), seed: 1)
      let other = members.lockClient(lockOptions: Self.steadyLeases, seed: 2)
      try await closing([locks, other]) {
        let kept = try await locks.lock("kept")  // Keeps the session renewed.
        // The acquire is applied, its reply lost, and every retry fails: the caller cannot know it holds "orphan".
        channel.loseNextReply(thenClose: true) { if case .acquire = $0 { true } else { false } }
        await #expect(throws: QuorumClientError.self) { _ = try await locks.lock("orphan") }
        channel.open()
        // The clean-up releases the orphaned grant in the background; the session and its other lease live on.
        let orphan = try await other.lock("orphan", timeout: .seconds(20))
        #expect(orphan.token > kept.token, "granted after the orphaned grant")
        #expect(kept.isValid, "the session was not given up")
        #expect(try await other.unlock(orphan))
        #expect(try await locks.unlock(kept))
      }
    }
  }

  @Test("a session that finishes opening after close() is closed at once, and the call that opened it fails")
  func sessionOpenedAcrossCloseIsClosed() async throws {
    try await Self.cluster(.raft, "closed").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let (locks, channel) = Self.gatedClient(members, options: Self.steadyLeases, seed: 1)
      let other = members.lockClient(lockOptions: Self.steadyLeases, seed: 2)
      try await closing([locks, other]) {
        channel.holdNextReply { if case .openSession = $0 { true } else { false } }
        let call = Task { try await locks.lock("x") }
        _ = try await awaitValue("the session's opening to be held") { channel.isHolding ? true : nil }
        await locks.close()
        channel.releaseHeld()
        await #expect(throws: LockClientError.closed) { _ = try await call.value }
        #expect(try await other.status(of: "x") == nil, "nothing was acquired in a session nobody would close")
        let later = try await locks.lock("x")  // A later call opens a new session.
        #expect(try await locks.unlock(later))
      }
    }
  }

  @Test("a waiter whose watch fails at one member watches at another", arguments: engines)
  func watchMovesOn(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "watch").withLocalMembers { members in
      let leader = try await Self.awaitLeader(members)
      let holder = members.lockClient(lockOptions: Self.steadyLeases, seed: 1)
      let (waiter, channel) = Self.gatedClient(members, options: Self.steadyLeases, seed: 2)
      try await closing([holder, waiter]) {
        let held = try await holder.lock("watched")
        let waiting = Task { try await waiter.lock("watched", timeout: .seconds(30)) }
        _ = try await awaitValue("the waiter to queue") {
          try await holder.status(of: "watched")?.waiters.count == 1 ? true : nil
        }
        #expect(try await Self.leader(members, excluding: []) == leader, "the waiter queued through \(leader)")
        channel.cut(leader)  // The waiter can no longer reach the member it watches at.
        #expect(try await holder.unlock(held))
        let granted = try await waiting.value
        #expect(granted.token > held.token)
        channel.open()
      }
    }
  }

  @Test("a cancelled lock call leaves the queue, and the next waiter is granted", arguments: engines)
  func cancelledWaitLeavesTheQueue(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "cancel").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let clients = (1...3).map { members.lockClient(lockOptions: Self.steadyLeases, seed: UInt64($0)) }
      try await closing(clients) {
        let held = try await clients[0].lock("cancel")
        let impatientClient = clients[1]
        let impatient = Task { try await impatientClient.lock("cancel") }
        _ = try await awaitValue("the impatient waiter to queue") {
          try await clients[0].status(of: "cancel")?.waiters.count == 1 ? true : nil
        }
        let patientClient = clients[2]
        let patient = Task { try await patientClient.lock("cancel") }
        _ = try await awaitValue("the patient waiter to queue") {
          try await clients[0].status(of: "cancel")?.waiters.count == 2 ? true : nil
        }
        impatient.cancel()
        _ = try await awaitValue("the cancelled waiter to leave the queue") {
          try await clients[0].status(of: "cancel")?.waiters.count == 1 ? true : nil
        }
        await #expect(throws: CancellationError.self) { _ = try await impatient.value }
        #expect(try await clients[0].unlock(held))
        let granted = try await patient.value
        #expect(granted.token > held.token)
        #expect(try await clients[2].unlock(granted))
      }
    }
  }

  @Test(
    "tokens increase across a leadership transfer and across the leader stopping, with a waiter handed off",
    arguments: engines)
  func tokensAcrossLeaderChanges(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "failover").withLocalMembers { members in
      let first = try await Self.awaitLeader(members)
      let a = members.lockClient(lockOptions: Self.steadyLeases, seed: 1)
      let b = members.lockClient(lockOptions: Self.steadyLeases, seed: 2)
      try await closing([a, b]) {
        let before = try await a.lock("leader")
        #expect(try await a.unlock(before))
        let target = try #require(members.hosts.keys.sorted().first { $0 != first })
        try await a.host.transferLeadership(of: Self.group, to: target)
        let transferred = try await a.lock("leader")
        #expect(transferred.token > before.token)
        let waiting = Task { try await b.lock("leader") }
        _ = try await awaitValue("b to queue") { try await a.status(of: "leader")?.waiters.count == 1 ? true : nil }
        let leader = try await Self.awaitLeader(members)
        await members.hosts[leader]?.shutdown()
        #expect(try await a.unlock(transferred), "the release goes through the new leader")
        let handedOff = try await waiting.value
        #expect(handedOff.token > transferred.token)
        #expect(transferred.isValid == false && handedOff.isValid)
        #expect(try await b.unlock(handedOff))
        let after = try await a.lock("leader")
        #expect(after.token > handedOff.token)
        #expect(try await a.unlock(after))
      }
    }
  }

  @Test("a membership change while locks are held keeps the leases and the queue", arguments: engines)
  func membershipChangeWhileHeld(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "members").withLocalMembers { members in
      let leader = try await Self.awaitLeader(members)
      let holder = members.lockClient(lockOptions: Self.steadyLeases, seed: 1)
      let waiter = members.lockClient(lockOptions: Self.steadyLeases, seed: 2)
      try await closing([holder, waiter]) {
        let held = try await holder.lock("config")
        let waiting = Task { try await waiter.lock("config") }
        _ = try await awaitValue("the waiter to queue") {
          try await holder.status(of: "config")?.waiters.count == 1 ? true : nil
        }
        let removed = try #require(members.hosts.keys.sorted().last { $0 != leader })
        try await holder.host.changeMembership(.remove(removed), group: Self.group)
        // Several renewals later, across the change, the lease still holds.
        let renewed = try await awaitValue("the holder's session to be renewed twice") {
          let status = try await holder.status(of: "config")
          let expires = status?.holders.first?.sessionExpiresAtMillis ?? 0
          return expires > 0 ? expires : nil
        }
        _ = try await awaitValue("two more renewals") {
          let expires = try await holder.status(of: "config")?.holders.first?.sessionExpiresAtMillis ?? 0
          return expires > renewed + 500 ? true : nil
        }
        #expect(held.isValid)
        let statuses = try await holder.host.statuses()
        let voters = try #require(statuses.filter(\.isLeader).max { $0.epoch < $1.epoch }).voters
        #expect(!voters.contains(removed), "\(removed) left: voters \(voters)")
        #expect(try await holder.unlock(held))
        let granted = try await waiting.value
        #expect(granted.token > held.token)
        #expect(try await waiter.unlock(granted))
      }
    }
  }

  @Test(
    "a lost reply does not lose the call: a retried acquire and a retried release take effect once",
    arguments: engines)
  func lostReplies(_ engine: EngineKind) async throws {
    try await Self.cluster(engine, "replies").withLocalMembers { members in
      _ = try await Self.awaitLeader(members)
      let (locks, channel) = Self.gatedClient(members, options: LockClientOptions(), seed: 1)
      try await closing([locks]) {
        let warm = try await locks.lock("warm-up")  // Opens the session, so the next command is the acquire.
        #expect(try await locks.unlock(warm))
        channel.loseNextReply { if case .acquire = $0 { true } else { false } }
        let lease = try await locks.lock("once")
        #expect(channel.repliesLost == 1)
        let status = try #require(try await locks.status(of: "once"))
        #expect(status.holders.count == 1 && status.holders.first?.token == lease.token)
        #expect(status.lastToken == lease.token, "the retry made no second grant")
        channel.loseNextReply { if case .release = $0 { true } else { false } }
        #expect(try await locks.unlock(lease), "the retried release answers what the first one did")
        #expect(channel.repliesLost == 2)
        #expect(try await locks.status(of: "once") == nil)
      }
    }
  }

  /// Waits for a member to lead the lock group, and returns the newest leader.
  static func awaitLeader(_ members: LocalMembers) async throws -> NodeID {
    try await awaitValue("a leader of the lock group") { try await leader(members, excluding: []) }
  }

  /// The newest leader of the lock group among members not in `excluding`.
  static func leader(_ members: LocalMembers, excluding: Set<NodeID>) async throws -> NodeID? {
    var best: GroupStatus?
    for id in members.hosts.keys.sorted() where !excluding.contains(id) {
      guard let status = await members.hosts[id]?.group(group)?.status(), status.isLeader else { continue }
      if status.epoch >= best?.epoch ?? 0 { best = status }
    }
    return best?.node
  }
}

/// Waits for `lease.lost()` to return (the bound only limits how long a broken run takes to fail).
func awaitLost(_ lease: LockLease) async throws {
  final class Flag: Sendable { let raised = Mutex(false) }
  let flag = Flag()
  Task {
    await lease.lost()
    flag.raised.withLock { $0 = true }
  }
  _ = try await awaitValue("\(lease) to be lost") { flag.raised.withLock { $0 } ? true : nil }
}

/// Runs `body`, then closes `clients` (also when it throws), so that no keep-alive outlives the test.
func closing<T>(
  _ clients: [LockClient], isolation: isolated (any Actor)? = #isolation, _ body: () async throws -> T
) async throws -> T {
  do {
    let result = try await body()
    for client in clients { await client.close() }
    return result
  } catch {
    for client in clients { await client.close() }
    throw error
  }
}

/// A request channel a test can cut, and that can lose the reply to one chosen lock command.
final class GatedChannel: RequestChannel {
  private struct State {
    var open = true
    var cut: Set<NodeID> = []
    var loseReply: (@Sendable (LockCommand) -> Bool)?
    var keepLosing = false
    var failQueries = false
    var closeAfterLoss = false
    var repliesLost = 0
    var holdReply: (@Sendable (LockCommand) -> Bool)?
    var held: CheckedContinuation<Void, Never>?
  }

  private let inner: any RequestChannel
  private let state = Mutex(State())

  init(_ inner: any RequestChannel) { self.inner = inner }

  /// Cuts the client off: requests fail as if the cluster were unreachable.
  func close() { state.withLock { $0.open = false } }
  /// Lets requests through again.
  func open() { state.withLock { $0.open = true } }
  /// Cuts the client off from `member` only.
  func cut(_ member: NodeID) { state.withLock { _ = $0.cut.insert(member) } }
  /// Loses the reply to the next lock command matching `matches` (the command itself is delivered), and cuts the
  /// client off from then on if `thenClose`.
  func loseNextReply(thenClose: Bool = false, _ matches: @escaping @Sendable (LockCommand) -> Bool) {
    state.withLock {
      $0.loseReply = matches
      $0.closeAfterLoss = thenClose
    }
  }
  /// Loses the reply to every lock command matching `matches` (the commands themselves are delivered), and fails
  /// every query, until ``stopLosing()``.
  func loseEveryReply(_ matches: @escaping @Sendable (LockCommand) -> Bool) {
    state.withLock {
      $0.loseReply = matches
      $0.keepLosing = true
      $0.failQueries = true
    }
  }
  /// Stops losing replies and failing queries.
  func stopLosing() {
    state.withLock {
      $0.loseReply = nil
      $0.keepLosing = false
      $0.failQueries = false
    }
  }
  /// How many replies were lost.
  var repliesLost: Int { state.withLock { $0.repliesLost } }
  /// Holds the reply to the next lock command matching `matches` (the command itself is applied) until
  /// ``releaseHeld()``.
  func holdNextReply(_ matches: @escaping @Sendable (LockCommand) -> Bool) { state.withLock { $0.holdReply = matches } }
  /// Whether a reply is being held.
  var isHolding: Bool { state.withLock { $0.held != nil } }
  /// Lets the held reply through.
  func releaseHeld() {
    state.withLock { s in
      defer { s.held = nil }
      return s.held
    }?.resume()
  }

  func send(_ request: [UInt8], to member: NodeID, timeout: Duration) async throws -> [UInt8] {
    guard state.withLock({ $0.open && !$0.cut.contains(member) }) else {
      throw RequestChannelError.unreachable(member, "cut off by the test")
    }
    if state.withLock({ $0.failQueries }), case .query? = try? HostRequest(wireBytes: request) {
      throw RequestChannelError.unreachable(member, "queries cut off by the test")
    }
    let reply = try await inner.send(request, to: member, timeout: timeout)
    var command: LockCommand?
    if case .command(_, let body, _, _)? = try? HostRequest(wireBytes: request), body.service == LockService.name {
      command = try? LockCommand(wireBytes: body.payload)
    }
    let lost = state.withLock { s -> Bool in
      guard s.open && !s.cut.contains(member) else { return true }
      guard let command, let matches = s.loseReply, matches(command) else { return false }
      if !s.keepLosing { s.loseReply = nil }
      s.repliesLost += 1
      if s.closeAfterLoss { s.open = false }
      return true
    }
    if lost { throw RequestChannelError.timeout(member) }
    let hold = state.withLock { s -> Bool in
      guard let command, let matches = s.holdReply, matches(command) else { return false }
      s.holdReply = nil
      return true
    }
    if hold { await withCheckedContinuation { continuation in state.withLock { $0.held = continuation } } }
    return reply
  }
}

/// A client clock that moves only when the test says so, and whose sleepers wake only when told.
final class ManualClientClock: NodeClock {
  private struct State {
    var now: UInt64 = 1_000_000_000
    var sleepers: [UInt64: (deadline: UInt64, continuation: CheckedContinuation<Void, any Error>)] = [:]
    var nextSleeper: UInt64 = 0
  }

  private let state = Mutex(State())

  func monotonicNanos() -> UInt64 { state.withLock { $0.now } }
  func wallClockMillis() -> UInt64 { monotonicNanos() / 1_000_000 }

  /// Moves the clock forward without waking anyone.
  func advance(by duration: Duration) { state.withLock { $0.now += duration.nanoseconds } }

  /// Wakes every sleeper whose deadline has come.
  func wakeSleepers() {
    let due = state.withLock { s -> [CheckedContinuation<Void, any Error>] in
      let ids = s.sleepers.filter { $0.value.deadline <= s.now }.map(\.key)
      return ids.compactMap { s.sleepers.removeValue(forKey: $0)?.continuation }
    }
    for continuation in due { continuation.resume() }
  }

  func sleep(untilNanos deadline: UInt64) async throws {
    let id = state.withLock { s -> UInt64 in
      s.nextSleeper += 1
      return s.nextSleeper
    }
    try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
        let ready = state.withLock { s -> Bool? in
          if Task.isCancelled { return false }
          if s.now >= deadline { return true }
          s.sleepers[id] = (deadline, continuation)
          return nil
        }
        switch ready {
        case true?: continuation.resume()
        case false?: continuation.resume(throwing: CancellationError())
        case nil: break
        }
      }
    } onCancel: {
      let sleeper = state.withLock { $0.sleepers.removeValue(forKey: id) }
      sleeper?.continuation.resume(throwing: CancellationError())
    }
  }
}

/// The error a background call failed with, for a poll to report.
final class FailureBox: Sendable {
  private let state = Mutex<(any Error)?>(nil)
  func record(_ error: any Error) { state.withLock { $0 = error } }
  var error: (any Error)? { state.withLock { $0 } }
}

/// A request channel that can hold back the reply to one chosen lock command (the command itself is applied)
/// until the test lets it through.
final class HoldingChannel: RequestChannel {
  private struct State {
    var matches: (@Sendable (LockCommand) -> Bool)?
    var holdsRequest = false
    var held: CheckedContinuation<Void, Never>?
    var released = false
    var sent: [LockCommand] = []
  }

  private let inner: any RequestChannel
  private let state = Mutex(State())

  init(_ inner: any RequestChannel) { self.inner = inner }

  /// Holds the reply to the next lock command matching `matches`.
  func holdNextReply(_ matches: @escaping @Sendable (LockCommand) -> Bool) { state.withLock { $0.matches = matches } }
  /// Holds the next lock command matching `matches` itself, before it reaches the member.
  func holdNextRequest(_ matches: @escaping @Sendable (LockCommand) -> Bool) {
    state.withLock {
      $0.matches = matches
      $0.holdsRequest = true
    }
  }
  /// The lock commands sent to members so far.
  var sent: [LockCommand] { state.withLock { $0.sent } }
  /// Whether a reply is being held.
  var isHolding: Bool { state.withLock { $0.held != nil } }
  /// Lets the held reply through (or the next one, if none is held yet).
  func releaseHeld() {
    let held = state.withLock { s -> CheckedContinuation<Void, Never>? in
      s.released = true
      defer { s.held = nil }
      return s.held
    }
    held?.resume()
  }

  func send(_ request: [UInt8], to member: NodeID, timeout: Duration) async throws -> [UInt8] {
    var command: LockCommand?
    if case .command(_, let body, _, _)? = try? HostRequest(wireBytes: request), body.service == LockService.name {
      command = try? LockCommand(wireBytes: body.payload)
    }
    let holdsRequest = state.withLock { s in
      guard let command, s.holdsRequest, s.matches.map({ $0(command) }) ?? false else { return false }
      s.holdsRequest = false
      return true
    }
    if holdsRequest { await hold() }
    if let command { state.withLock { $0.sent.append(command) } }
    let reply = try await inner.send(request, to: member, timeout: timeout)
    guard !holdsRequest, let command, state.withLock({ s in s.matches.map { $0(command) } ?? false }) else {
      return reply
    }
    await hold()
    return reply
  }

  private func hold() async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
      let go = state.withLock { s -> Bool in
        s.matches = nil
        if s.released { return true }
        s.held = continuation
        return false
      }
      if go { continuation.resume() }
    }
  }
}
