import QuorumCore
import QuorumTestSupport
import Testing

@testable import QuorumLocks

@Suite("A lock replica restored from a snapshot equals one that applied every entry")
struct LockRestoreEqualityTests {
  static let names = ["a", "b", "s"]

  /// A random lock command; sessions are named by recent entry indexes, where the workload's sessions were opened.
  static func randomCommand(_ random: inout SeededRandom, index: UInt64) -> LockCommand {
    let session = LockSessionID(rawValue: max(1, index - min(index - 1, 1 + random.next() % 30)))
    let name = names[Int(random.next() % UInt64(names.count))]
    let mode: LockMode = name == "s" ? .semaphore(permits: 2) : random.chance(0.5) ? .exclusive : .shared
    switch random.next() % 10 {
    case 0, 1: return .openSession(ttlMillis: 1_000 + random.next() % 2_000)
    case 2: return .keepAlive(session: session)
    case 3: return .closeSession(session: session)
    case 4, 5, 6:
      return .acquire(
        lock: name, session: session, mode: mode, wait: random.chance(0.6),
        waitTimeoutMillis: random.chance(0.5) ? 50 + random.next() % 500 : nil)
    case 7, 8:
      return .release(
        lock: name, session: session, token: FencingToken(rawValue: index - min(index, random.next() % 40)))
    default: return .cancelWait(lock: name, session: session)
    }
  }

  @Test(
    "random lock commands under sessions: restore(snapshot(m)) == m after every entry",
    arguments: [65_000_011, 65_000_012, 65_000_013] as [UInt64])
  func sessionsAndLocks(seed: UInt64) throws {
    let policy = SessionPolicy(
      timeoutMillis: 3_000, maxSessions: 8, maxResponsesPerSession: 2, maxSessionsPerPrincipal: 4,
      maxResponseBytesPerSession: 64)
    let workload = SessionWorkload(
      policy: policy, makeMachine: { LockTable() },
      command: { random, index, _ in
        Self.randomCommand(&random, index: index)
      })
    let tally = try workload.run(seed: seed, steps: 1_500)
    #expect(tally.restores > 30, "seed \(seed): \(tally)")
    #expect(tally.forgottenUnacknowledged > 5, "seed \(seed): \(tally)")
  }
}
