import QuorumCore
import QuorumTestSupport
import Testing

@testable import QuorumKV

@Suite("A key-value replica restored from a snapshot equals one that applied every entry")
struct KVRestoreEqualityTests {
  static let keys = ["a", "b", "c", "d"]

  static func randomCommand(_ random: inout SeededRandom) -> KVCommand {
    let key = keys[Int(random.next() % UInt64(keys.count))]
    let value: [UInt8] = [UInt8(truncatingIfNeeded: random.next() % 4)]
    switch random.next() % 3 {
    case 0: return .put(key: key, value: value)
    case 1: return .delete(key: key)
    default: return .compareAndSwap(key: key, expected: random.chance(0.5) ? nil : value, new: value)
    }
  }

  /// Small bounds, so that many sessions hold forgotten responses when a snapshot is taken.
  static let policy = SessionPolicy(
    timeoutMillis: 2_000, maxSessions: 8, maxResponsesPerSession: 2, maxSessionsPerPrincipal: 4,
    maxResponseBytesPerSession: 64)

  @Test(
    "random commands under sessions: restore(snapshot(m)) == m after every entry, forgotten responses included",
    arguments: [65_000_001, 65_000_002, 65_000_003] as [UInt64])
  func sessionsAndStore(seed: UInt64) throws {
    let workload = SessionWorkload(
      policy: Self.policy, makeMachine: { KVStore() },
      command: { random, _, _ in
        Self.randomCommand(&random)
      })
    let tally = try workload.run(seed: seed, steps: 1_500)
    #expect(tally.restores > 30, "seed \(seed): \(tally)")
    #expect(tally.forgottenUnacknowledged > 5, "seed \(seed): \(tally)")
    #expect(tally.duplicates > 20, "seed \(seed): \(tally)")
    #expect(tally.expired > 5, "seed \(seed): \(tally)")
  }
}
