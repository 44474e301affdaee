import QuorumCore
import QuorumHost
import QuorumLocks

/// The lock workload of a ``ClusterSimulation``: how many lock clients, how long they hold and how they fail.
public struct LockWorkloadOptions: Sendable {
  /// Lock clients (each the production `LockClient` over its own `HostClient`). 0: no lock workload.
  public var clients = 0
  /// The session TTL the clients ask for (the lock table's shortest is 1 s).
  public var ttl = VirtualDuration.seconds(1)
  /// Time between two uses of a lease while it is held.
  public var useInterval = DelayDistribution.uniform(.zero, .milliseconds(300))
  /// How long a client waits for a lock during the chaos (0: only if it is free).
  public var wait = DelayDistribution.uniform(.zero, .milliseconds(800))
  /// The chance that a client holding a lock during the chaos pauses its process (a GC pause, a frozen VM) for
  /// half a TTL to two, so that its session may expire under it.
  public var pauseProbability = 0.25
  /// The chance that a holder uses its lease every few milliseconds for up to two TTLs rather than a few times.
  public var busyHoldProbability = 0.3
  /// The chance that a client holding a lock during the chaos loses its network (nothing it sends arrives) for
  /// half a TTL to two while it goes on using the lock, so that its session may expire while it watches.
  public var cutProbability = 0.25
  /// Lock cycles each client must complete after the heal (liveness).
  public var freshCyclesAfterHeal = 2

  /// No lock clients; 1 s TTLs when there are some.
  public init() {}
}

/// One lock client of a ``ClusterSimulation``: takes, uses and gives back three contended locks — `lx` (exclusive),
/// `lrw` (shared or exclusive) and `lsem` (a semaphore of 2 permits) — through the production `LockClient`, and
/// reports what it holds and when it relies on it to the ``LockHistoryChecker``.
///
/// It runs as its own process on the scheduler, with its own drifting clock. During the chaos, while holding a
/// lock, it sometimes pauses its whole process past its TTL, then checks its lease (it must find it invalid if
/// the session expired) and sometimes writes anyway, for the fencing check to refuse; and it sometimes loses its
/// network while it keeps using the lock every few milliseconds, which finds the last moment it trusts the lease.
/// Its lease margin covers the simulation's largest clock-rate difference between it and any leader (both may
/// drift by ``ClusterSimulationOptions/maxDriftPPM``, in opposite directions), plus 50 ms; with a margin of 1 ms
/// the checker finds a lease relied on after its expiry within a few seeds.
///
/// Safety of `@unchecked Sendable`: it runs as jobs of one simulation, one at a time on the scheduler's thread.
final class SimulatedLockClient: @unchecked Sendable {
  /// What the client needs from its simulation.
  struct Context {
    var scheduler: SimulationScheduler
    var requests: VirtualRequests<[UInt8], [UInt8]>
    var map: ClusterMap
    var options: ClusterSimulationOptions
    var checker: LockHistoryChecker
    var trace: SimulationTrace
    var seed: UInt64
    var isHealed: @Sendable () -> Bool
    /// Fails the run if a call's error is one a correct cluster never gives this client (see
    /// ``ClusterSimulation``'s classification of client errors); `call` names the call.
    var noteFailure: (_ error: any Error, _ call: String) -> Void
  }

  let index: Int
  let node: NodeID
  let process: UInt32
  private let context: Context
  /// Leases received.
  private(set) var grants = 0
  /// Leases relied on.
  private(set) var uses = 0
  /// Leases found lost while held.
  private(set) var leasesLost = 0
  /// Calls that failed (deadline passed, refused) or timed out waiting.
  private(set) var failedCalls = 0
  /// Pauses of the client's process.
  private(set) var pauses = 0
  /// Times the client lost its network.
  private(set) var cuts = 0
  /// Releases sent with an old grant's token while the session held a newer grant of the lock.
  private(set) var staleReleases = 0
  /// Until when the client's network is cut.
  private var cutUntil = VirtualTime.zero
  /// The last lease whose release the log confirmed: its token is dead, and a release that carries it must free
  /// nothing.
  private var released: LockLease?

  init(index: Int, node: NodeID, process: UInt32, context: Context) {
    self.index = index
    self.node = node
    self.process = process
    self.context = context
  }

  private var scheduler: SimulationScheduler { context.scheduler }

  private func random<T>(_ body: (inout SeededRandom) -> T) -> T { scheduler.random(body) }

  /// The lease margin that covers the simulated clocks: a leader's clock may run `1 + d` times as fast as real
  /// time while the client's runs `1 - d` times as fast, so over one TTL log time can gain
  /// `TTL · ((1 + d) / (1 - d) − 1)` on the client's measure.
  static func margin(ttl: VirtualDuration, maxDriftPPM: Int64) -> Duration {
    let d = Double(maxDriftPPM) / 1_000_000
    let gain = Double(ttl.nanoseconds) * ((1 + d) / (1 - d) - 1)
    return .nanoseconds(Int64(gain.rounded(.up))) + .milliseconds(50)
  }

  func run() async {
    let workload = context.options.lockWorkload
    let drift = random { Int64.random(in: -context.options.maxDriftPPM...context.options.maxDriftPPM, using: &$0) }
    let clock = SimulatedClock(scheduler: scheduler, driftPPM: drift)
    var hostOptions = HostClientOptions()
    hostOptions.attemptTimeout = context.options.attemptTimeout.duration
    let host = HostClient(
      channel: CuttableChannel(
        inner: SimulatedRequestChannel(requests: context.requests, client: node), scheduler: scheduler,
        isCut: { [unowned self] in scheduler.now < cutUntil }),
      members: context.map.members.keys.sorted(), map: context.map, options: hostOptions, clock: clock,
      seed: context.seed &+ 0x10C4 &+ UInt64(index))
    var lockOptions = LockClientOptions()
    lockOptions.ttl = workload.ttl.duration
    lockOptions.margin = Self.margin(ttl: workload.ttl, maxDriftPPM: context.options.maxDriftPPM)
    lockOptions.watchInterval = .seconds(1)
    let locks = LockClient(
      host, options: lockOptions, runtime: NodeRuntime(clock: clock, executor: scheduler.executor(for: process)))
    var fresh = 0
    while !(context.isHealed() && fresh >= workload.freshCyclesAfterHeal) {
      let healed = context.isHealed()
      if await cycle(locks, healed: healed), healed { fresh += 1 }
      try? await scheduler.sleep(for: random { context.options.thinkTime.sample(&$0) })
    }
    await locks.close()
    context.trace.record(scheduler.now, "lock client \(index) done")
  }

  /// One acquire, hold and release; returns whether the lock was granted and given back.
  private func cycle(_ locks: LockClient, healed: Bool) async -> Bool {
    let (name, mode) = pickLock()
    let wait =
      healed ? context.options.healDeadline.duration : random { context.options.lockWorkload.wait.sample(&$0) }.duration
    let lease: LockLease
    do {
      guard let granted = try await locks.tryLock(name, mode: mode, timeout: wait) else {
        if healed { failedCalls += 1 }
        return false
      }
      lease = granted
    } catch {
      context.noteFailure(error, "lock client \(index) lock \(name) \(mode)")
      failedCalls += 1
      context.trace.record(scheduler.now, "lock client \(index) \(name) \(mode): \(error)")
      return false
    }
    grants += 1
    context.checker.received(client: index, lease: lease)
    await releaseStale(locks, holding: lease)
    await hold(lease, healed: healed)
    let roll = random { Int.random(in: 0..<100, using: &$0) }
    do {
      if roll < 85 {
        let freed = try await locks.unlock(lease)
        context.trace.record(scheduler.now, "lock client \(index) released \(lease): \(freed)")
        if freed { released = lease }
      } else {
        await locks.close()  // Every session of the client ends, and its locks with it.
        context.trace.record(scheduler.now, "lock client \(index) closed its sessions")
      }
    } catch {
      context.noteFailure(error, "lock client \(index) release of \(lease)")
      failedCalls += 1
      context.trace.record(scheduler.now, "lock client \(index) release of \(lease) failed: \(error)")
    }
    return true
  }

  /// Half the time, when `lease` is a newer grant of the lock in the session whose earlier grant the client
  /// released, sends that release again with the old token (a late retry from a client that lost track, or a
  /// bug): the lock table must not let it end `lease`. The log side of the checker sees a release of a grant that
  /// is not held; the answer must say that nothing was freed.
  private func releaseStale(_ locks: LockClient, holding lease: LockLease) async {
    guard let old = released, old.name == lease.name, old.group == lease.group, old.session == lease.session,
      old.token != lease.token, random({ Bool.random(using: &$0) })
    else { return }
    released = nil
    staleReleases += 1
    do {
      let freed = try await locks.unlock(old)
      context.trace.record(scheduler.now, "lock client \(index) released \(old) again, holding \(lease): \(freed)")
      context.checker.staleRelease(client: index, old: old, holding: lease, freed: freed)
    } catch {
      context.noteFailure(error, "lock client \(index) stale release of \(old)")
      failedCalls += 1
      context.trace.record(scheduler.now, "lock client \(index) stale release of \(old) failed: \(error)")
    }
  }

  private func pickLock() -> (String, LockMode) {
    switch random({ Int.random(in: 0..<4, using: &$0) }) {
    case 0, 1: return ("lx", .exclusive)
    case 2: return ("lrw", random { Bool.random(using: &$0) } ? .shared : .exclusive)
    default: return ("lsem", .semaphore(permits: 2))
    }
  }

  /// Holds the lease, checking it before each use: a few uses far apart, or (a busy holder) uses every few
  /// milliseconds for up to two TTLs, which finds the last moment the client still trusts its lease — past the
  /// log's expiry if the client's margin is too small. During the chaos the process may pause once, at a random
  /// point of the hold, for half a TTL to two.
  private func hold(_ lease: LockLease, healed: Bool) async {
    let workload = context.options.lockWorkload
    let ttl = workload.ttl.nanoseconds
    let start = scheduler.now
    let busyFor: VirtualDuration? =
      random({ $0.chance(workload.busyHoldProbability) })
      ? VirtualDuration(nanoseconds: random { UInt64.random(in: 0...2 * ttl, using: &$0) }) : nil
    var usesLeft = random { Int.random(in: 1...4, using: &$0) }
    var pauseAt: VirtualTime? =
      !healed && random({ $0.chance(workload.pauseProbability) })
      ? start + VirtualDuration(nanoseconds: random { UInt64.random(in: 0...ttl, using: &$0) }) : nil
    var cutAt: VirtualTime? =
      !healed && random({ $0.chance(workload.cutProbability) })
      ? start + VirtualDuration(nanoseconds: random { UInt64.random(in: 0...ttl / 2, using: &$0) }) : nil
    while busyFor.map({ scheduler.now < start + $0 }) ?? (usesLeft > 0) {
      usesLeft -= 1
      let interval =
        busyFor == nil
        ? random { workload.useInterval.sample(&$0) }
        : .microseconds(random { UInt64.random(in: 2_000...20_000, using: &$0) })
      try? await scheduler.sleep(for: interval)
      if let at = pauseAt, scheduler.now >= at {
        pauseAt = nil
        let length = VirtualDuration(nanoseconds: random { UInt64.random(in: ttl / 2...ttl * 2, using: &$0) })
        pauses += 1
        context.trace.record(scheduler.now, "lock client \(index) pauses for \(length) holding \(lease)")
        scheduler.pause(process, until: scheduler.now + length)
        try? await scheduler.sleep(for: .microseconds(1))  // Runs again when the pause ends.
      }
      if let at = cutAt, scheduler.now >= at {
        cutAt = nil
        let length = VirtualDuration(nanoseconds: random { UInt64.random(in: ttl / 2...ttl * 2, using: &$0) })
        cuts += 1
        cutUntil = scheduler.now + length
        context.trace.record(scheduler.now, "lock client \(index) loses its network for \(length) holding \(lease)")
      }
      guard lease.isValid else {
        leasesLost += 1
        context.trace.record(scheduler.now, "lock client \(index) finds \(lease) lost")
        if random({ Bool.random(using: &$0) }) { context.checker.staleWrite(client: index, lease: lease) }
        return
      }
      uses += 1
      context.checker.used(client: index, lease: lease, at: scheduler.now)
    }
  }
}

/// A client's request channel that delivers nothing while the client's network is cut: a request then gets no
/// answer, and the caller learns it at its timeout.
struct CuttableChannel: RequestChannel {
  let inner: SimulatedRequestChannel
  let scheduler: SimulationScheduler
  let isCut: @Sendable () -> Bool

  func send(_ request: [UInt8], to member: NodeID, timeout: Duration) async throws -> [UInt8] {
    if isCut() {
      try await scheduler.sleep(for: VirtualDuration(nanoseconds: timeout.nanoseconds))
      throw RequestChannelError.timeout(member)
    }
    let reply = try await inner.send(request, to: member, timeout: timeout)
    if isCut() { throw RequestChannelError.timeout(member) }  // The reply did not arrive either.
    return reply
  }
}
