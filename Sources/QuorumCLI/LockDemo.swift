import Foundation
import Quorum
import Synchronization

/// The lock part of `quorum demo`: workers contending for one lock that guards a shared ledger, then a holder
/// that pauses past its TTL and is fenced off when it wakes.
enum LockDemo {
  /// The shared resource: an append-only ledger that admits a write only under a fencing token at least as high
  /// as any it has admitted, and notes whether two writers were ever inside at once.
  actor Ledger {
    let fence = FencingGuard()
    private(set) var entries: [String] = []
    private(set) var refused = 0
    private var inside = 0
    private(set) var mostInside = 0

    func enter() {
      inside += 1
      mostInside = max(mostInside, inside)
    }

    func leave() { inside -= 1 }

    /// Appends `entry` if `token` is not stale.
    func append(_ entry: String, token: FencingToken) throws(FencingError) {
      do {
        try fence.admit(token, for: "ledger")
      } catch {
        refused += 1
        throw error
      }
      entries.append(entry)
    }
  }

  /// A request channel that a "paused" process cannot use: while paused, every request waits (until its
  /// timeout) instead of reaching the members, as if the process were stopped by a GC pause or a frozen VM.
  final class PausableChannel: RequestChannel, Sendable {
    private let inner: InProcessRequestChannel
    private let paused = Mutex(false)

    init(_ inner: InProcessRequestChannel) { self.inner = inner }

    func pause() { paused.withLock { $0 = true } }
    func resume() { paused.withLock { $0 = false } }

    func send(_ request: [UInt8], to member: NodeID, timeout: Duration) async throws -> [UInt8] {
      let deadline = ContinuousClock.now.advanced(by: timeout)
      while paused.withLock({ $0 }) {
        guard ContinuousClock.now < deadline else { throw RequestChannelError.timeout(member) }
        try await Task.sleep(for: .milliseconds(5))
      }
      return try await inner.send(request, to: member, timeout: timeout)
    }
  }

  /// What the contending workers did, in order.
  final class Record: Sendable {
    let state = Mutex<
      (grants: [(worker: Int, token: FencingToken)], handOffs: [Duration], releasedAt: ContinuousClock.Instant?)
    >(([], [], nil))

    /// A grant to `worker` that it asked for at `asked`; a hand-off if it waited for a release.
    func granted(_ worker: Int, _ token: FencingToken, asked: ContinuousClock.Instant, at: ContinuousClock.Instant) {
      state.withLock { s in
        if let released = s.releasedAt, released > asked { s.handOffs.append(at - released) }
        s.grants.append((worker, token))
      }
    }

    /// The holder is about to release.
    func releasing() { state.withLock { $0.releasedAt = ContinuousClock.now } }
  }

  static func ms(_ d: Duration) -> String { RaftDemo.ms(d) }

  static func run(quick: Bool) async throws {
    let cluster = try Cluster(id: "locks-demo") {
      Member("n1")
      Member("n2")
      Member("n3")
      Logging(StderrLogSink(minimumLevel: .error))
      RaftSettings {
        TickInterval(.milliseconds(10))
        ElectionTimeout(Duration.milliseconds(150)...Duration.milliseconds(300))
        HeartbeatInterval(.milliseconds(50))
      }
    }
    print("\n== Locks: the lock service on the same three-member Raft group as the key-value store")
    let began = ContinuousClock.now
    try await cluster.withLocalMembers { members in
      let leader = try await members.leader()
      print("-> \(leader) leads after \(ms(ContinuousClock.now - began))")
      let ledger = Ledger()
      print("   the ledger (the shared resource) admits a write only under a fencing token at least as high as")
      print("   every token it has admitted (FencingGuard)")
      try await contend(members, ledger: ledger, turns: quick ? 2 : 3)
      try await pausedHolder(members, ledger: ledger)
    }
  }

  /// Four workers, each with its own client and session, take turns on one exclusive lock.
  static func contend(_ members: LocalMembers, ledger: Ledger, turns: Int) async throws {
    let workers = 4
    print("\n== \(workers) workers contend for \"ledger\" (exclusive, TTL 2 s), \(turns) turns each")
    let start = ContinuousClock.now
    let record = Record()
    try await withThrowingTaskGroup(of: Void.self) { group in
      for worker in 1...workers {
        group.addTask {
          let locks = LockClient(members.client(seed: UInt64(worker)))
          for turn in 1...turns {
            let asked = ContinuousClock.now
            let lease = try await locks.lock("ledger", ttl: .seconds(2))
            let granted = ContinuousClock.now
            record.granted(worker, lease.token, asked: asked, at: granted)
            await ledger.enter()
            try await ledger.append("w\(worker) turn \(turn)", token: lease.token)
            print("-> w\(worker) granted \(lease.token) after waiting \(ms(granted - asked)); writes its turn \(turn)")
            try await Task.sleep(for: .milliseconds(15))
            await ledger.leave()
            record.releasing()
            try await locks.unlock(lease)
          }
          await locks.close()
        }
      }
      try await group.waitForAll()
    }
    let all = record.state.withLock { $0.grants }
    let increasing = zip(all, all.dropFirst()).allSatisfy { $0.token < $1.token }
    let mostInside = await ledger.mostInside
    let written = await ledger.entries.count
    let refused = await ledger.refused
    let gaps = record.state.withLock { $0.handOffs }.sorted()
    print(
      "-> \(all.count) grants in \(ms(ContinuousClock.now - start)); tokens strictly increasing in grant order: "
        + "\(increasing ? "yes" : "NO (this must not happen)"); most workers inside at once: \(mostInside)")
    print("-> the ledger admitted \(written) writes and refused \(refused)")
    if !gaps.isEmpty {
      print(
        "-> hand-off (release sent → next worker granted): median \(ms(gaps[gaps.count / 2])); the entry that "
          + "releases the lock grants it to the first waiter, whose client is told by a watch (nobody polls)")
    }
  }

  /// A holder pauses past its TTL; the lock passes on; the holder wakes and its write is refused.
  static func pausedHolder(_ members: LocalMembers, ledger: Ledger) async throws {
    print("\n== A holder that pauses past its TTL (1 s)")
    let channel = PausableChannel(InProcessRequestChannel(hosts: members.hosts))
    var pausedOptions = LockClientOptions()
    pausedOptions.ttl = .seconds(1)
    let sleeper = LockClient(
      HostClient(channel: channel, members: members.hosts.keys.sorted(), map: members.map, seed: 11),
      options: pausedOptions)
    let other = LockClient(members.client(seed: 12))
    let lease = try await sleeper.lock("ledger")
    try await ledger.append("w1 before its pause", token: lease.token)
    print("-> w1 holds ledger with \(lease.token), its lease is valid (\(lease.isValid)), and writes: admitted")

    let waiter = Task { () throws -> (LockLease, ContinuousClock.Instant) in
      let granted = try await other.lock("ledger", ttl: .seconds(5))
      let at = ContinuousClock.now
      try await ledger.append("w2 after w1's lease expired", token: granted.token)
      return (granted, at)
    }
    while (try await other.status(of: "ledger"))?.waiters.isEmpty ?? true {
      try await Task.sleep(for: .milliseconds(5))
    }
    print("-> w2 asks for ledger and queues behind w1")

    let pausedAt = ContinuousClock.now
    channel.pause()
    let lostAt = Task { () -> ContinuousClock.Instant in
      await lease.lost()
      return ContinuousClock.now
    }
    print("-> w1 pauses for 2 s (a GC pause, a stopped VM): it sends nothing, so nothing renews its session")
    try await Task.sleep(for: .seconds(2))
    channel.resume()
    let (granted, grantedAt) = try await waiter.value
    let clientGaveUp = await lostAt.value
    print(
      "-> +\(ms(grantedAt - pausedAt)): log time passes w1's session expiry; that entry ends the session and grants "
        + "ledger to w2 with \(granted.token); w2 writes: admitted")
    print(
      "-> (w1's own client had marked the lease lost at +\(ms(clientGaveUp - pausedAt)): TTL minus a margin after "
        + "its last renewal was sent, before anyone else could be granted the lock)")
    do {
      try await ledger.append("w1 after waking up", token: lease.token)
      print("!! the ledger admitted w1's stale write (this must not happen)")
    } catch {
      print("-> w1 wakes up and writes with \(lease.token) without checking its lease: refused, \(error)")
    }
    let late = try await sleeper.unlock(lease)
    print("-> w1's late release returns \(late): only the owner releases, and w1 no longer owns the lock")
    let holders = (try await other.status(of: "ledger"))?.holders.map { "\($0.session) \($0.token)" } ?? []
    print("-> ledger is held by \(holders.joined(separator: ", ")) (w2)")
    try await other.unlock(granted)
    await sleeper.close()
    await other.close()
  }
}
