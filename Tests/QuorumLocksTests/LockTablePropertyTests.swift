import QuorumCore
import QuorumTestSupport
import Testing

@testable import QuorumLocks

@Suite("LockTable: randomized workloads")
struct LockTablePropertyTests {
  static let limits = LockTableLimits(
    maxSessions: 10, maxLocks: 5, maxWaitersPerLock: 5, maxNameBytes: 8, maxHoldsPerSession: 4, minTTLMillis: 100,
    maxTTLMillis: 2_000, maxSemaphorePermits: 3, maxListCount: 10)
  static let names = ["a", "b", "c", "s", "t"]

  @Test(
    "random commands at random log times keep every safety invariant, and a restored copy answers identically", .heavy,
    arguments: [1, 2, 3, 4, 5] as [UInt64])
  func randomWorkload(seed: UInt64) throws {
    try Self.randomWorkload(seed: seed, limits: Self.limits)
  }

  @Test(
    "the same with one expiry per entry: due sessions wait to be ended, safely and identically after a restore", .heavy,
    arguments: [6, 7, 8] as [UInt64])
  func randomWorkloadWithDeferredExpiries(seed: UInt64) throws {
    var limits = Self.limits
    limits.maxExpiriesPerEntry = 1
    try Self.randomWorkload(seed: seed, limits: limits)
  }

  @Test(
    "the same with one wait timeout per entry: due waits are never granted, identically after a restore", .heavy,
    arguments: [9, 10, 11] as [UInt64])
  func randomWorkloadWithDeferredWaitTimeouts(seed: UInt64) throws {
    var limits = Self.limits
    limits.maxWaitTimeoutsPerEntry = 1
    try Self.randomWorkload(seed: seed, limits: limits)
  }

  static func randomWorkload(seed: UInt64, limits: LockTableLimits) throws {
    var random = SeededRandom(seed: seed)
    var table = try LockTable(limits: limits)
    // Follows the same commands, but is replaced now and then by a table restored from `table`'s snapshot.
    var twin = table
    var opened: [LockSessionID] = []
    var live: [LockSessionID] = []
    var now: UInt64 = 0
    var lastGrant: [String: LockGrant] = [:]
    var tally = Tally()
    for step in 1...2_500 {
      let index = UInt64(step)
      if random.chance(0.7) { now += 1 + random.next() % 100 }
      let command = Self.randomCommand(&random, table: table, opened: opened, live: live)
      let response = table.apply(index, at: now, command)
      #expect(twin.apply(index, at: now, command) == response, "seed \(seed) entry \(index): \(command)")
      let events = table.takeEvents()
      #expect(twin.takeEvents() == events, "seed \(seed) entry \(index)")
      tally.count(command, response, events)

      switch response {
      case .sessionOpened(let id, _):
        opened.append(id)
        live.append(id)
      case .sessionExpired(let id): live.removeAll { $0 == id }
      case .sessionClosed: live.removeAll { command == .closeSession(session: $0) }
      default: break
      }
      for case .expired(let id, _) in events { live.removeAll { $0 == id } }

      // Fencing: each grant carries this entry's index and exceeds every earlier token of its lock; only
      // compatible holders granted in the same entry share one.
      for case .granted(let grant) in events {
        #expect(grant.token == FencingToken(index), "seed \(seed) entry \(index): \(grant)")
        if let last = lastGrant[grant.lock] {
          #expect(
            grant.token > last.token
              || (grant.token == last.token && grant.mode != .exclusive && last.mode != .exclusive),
            "seed \(seed) entry \(index): \(grant) after \(last)")
        }
        lastGrant[grant.lock] = grant
      }
      switch response {
      case .granted(let grant):
        // A new grant (this entry's token) is always an event; a re-entry returns an older token and is not.
        #expect(
          events.contains(.granted(grant)) == (grant.token == FencingToken(index)),
          "seed \(seed) entry \(index): \(grant)")
      default: break
      }
      for name in Self.names { Self.checkSafety(of: name, in: table, now: now, context: "seed \(seed) entry \(index)") }

      if random.chance(0.02) {
        var restored = try LockTable(limits: limits)
        try restored.restore(from: table.snapshot())
        twin = restored
      }
      #expect(twin.snapshot() == table.snapshot(), "seed \(seed) entry \(index)")
      #expect(twin == table, "seed \(seed) entry \(index): a restored copy differs from the table")
      #expect(twin.nextDeadlineMillis == table.nextDeadlineMillis, "seed \(seed) entry \(index)")
    }
    // The workload reached every interesting case.
    #expect(tally.directGrants > 50, "seed \(seed): \(tally)")
    #expect(tally.queuedGrants > 20, "seed \(seed): \(tally)")
    #expect(tally.lostOnExpiry > 5, "seed \(seed): \(tally)")
    #expect(tally.waitTimeouts > 5, "seed \(seed): \(tally)")
    #expect(tally.refusedReleases > 20, "seed \(seed): \(tally)")
    #expect(tally.busy > 5, "seed \(seed): \(tally)")
    #expect(tally.failures > 5, "seed \(seed): \(tally)")
  }

  /// At most one exclusive holder and then no other; no more semaphore holders than permits; every holder's
  /// session is open and not yet due, or due and over (no query finds it) with its end still to come.
  static func checkSafety(of name: String, in table: LockTable, now: UInt64, context: String) {
    guard case .lock(let status?) = table.query(.lock(name)) else { return }
    switch status.kind {
    case .readWrite:
      let exclusive = status.holders.filter { $0.mode == .exclusive }.count
      #expect(exclusive == 0 || status.holders.count == 1, "\(context): \(status)")
    case .semaphore(let permits):
      #expect(status.holders.count <= Int(permits), "\(context): \(status)")
    }
    for holder in status.holders {
      #expect(status.kind.accepts(holder.mode), "\(context): \(status)")
      if holder.sessionExpiresAtMillis > now {
        #expect(table.isOpen(holder.session), "\(context): \(status)")
      } else {
        #expect(
          !table.isOpen(holder.session) && (table.nextDeadlineMillis ?? .max) <= now
            && table.limits.maxExpiriesPerEntry < table.limits.maxSessions,
          "\(context): \(status)")
      }
    }
  }

  static func randomCommand(
    _ random: inout SeededRandom, table: LockTable, opened: [LockSessionID], live: [LockSessionID]
  ) -> LockCommand {
    func pick<T>(_ choices: [T]) -> T { choices[Int(random.next() % UInt64(choices.count))] }
    let session: LockSessionID
    if !live.isEmpty && random.chance(0.85) {
      session = pick(live)
    } else if !opened.isEmpty && random.chance(0.7) {
      session = pick(opened)
    } else {
      session = LockSessionID(1 + random.next() % 3_000)
    }
    switch random.next() % 100 {
    case 0..<8:
      return .openSession(ttlMillis: random.chance(0.05) ? 50 : 100 + random.next() % 1_901)
    case 8..<33:
      return .keepAlive(session: session)
    case 33..<36:
      return .closeSession(session: session)
    case 36..<70:
      let name = pick(names)
      let mode: LockMode
      switch name {
      case "s": mode = random.chance(0.9) ? .semaphore(permits: 2) : .semaphore(permits: 3)
      case "t": mode = random.chance(0.9) ? .semaphore(permits: 3) : .shared
      default: mode = random.chance(0.5) ? .shared : .exclusive
      }
      return .acquire(
        lock: name, session: session, mode: mode, wait: random.chance(0.75),
        waitTimeoutMillis: random.chance(0.5) ? nil : random.next() % 1_500)
    case 70..<92:
      let holds: [LockGrant] = {
        guard case .session(let status?) = table.query(.session(session)) else { return [] }
        return status.holds
      }()
      if !holds.isEmpty && random.chance(0.85) {
        let hold = pick(holds)
        return .release(
          lock: hold.lock, session: session,
          token: random.chance(0.9) ? hold.token : FencingToken(hold.token.rawValue - 1))
      }
      return .release(lock: pick(names), session: session, token: FencingToken(random.next() % 3_000))
    case 92..<96:
      return .cancelWait(lock: pick(names), session: session)
    default:
      return .advanceTime
    }
  }
}

/// How often each interesting case happened in a run.
struct Tally: CustomStringConvertible {
  var directGrants = 0
  var queuedGrants = 0
  var lostOnExpiry = 0
  var waitTimeouts = 0
  var refusedReleases = 0
  var busy = 0
  var failures = 0

  mutating func count(_ command: LockCommand, _ response: LockResponse, _ events: [LockEvent]) {
    switch response {
    case .granted: directGrants += 1
    case .released(false): refusedReleases += 1
    case .busy: busy += 1
    case .failed: failures += 1
    default: break
    }
    for event in events {
      switch event {
      case .granted(let grant):
        if case .granted(grant) = response { continue }
        queuedGrants += 1
      case .expired(_, let lost): lostOnExpiry += lost.count
      case .waitTimedOut: waitTimeouts += 1
      case .released: break
      }
    }
  }

  var description: String {
    "direct \(directGrants), queued \(queuedGrants), lost \(lostOnExpiry), timed out \(waitTimeouts), "
      + "refused releases \(refusedReleases), busy \(busy), failed \(failures)"
  }
}
