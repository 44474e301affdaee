import QuorumCore
import QuorumTestSupport
import Testing

@testable import QuorumTransactions

@Suite("A transaction shard restored from a snapshot equals one that applied every entry")
struct TxnRestoreEqualityTests {
  static let keys = ["a", "b", "c"]

  /// A transaction of a coordinator, started recently: its start time follows from its number, so that every
  /// command naming it names the same transaction.
  static func transaction(_ random: inout SeededRandom, millis: UInt64) -> TxnID {
    let newest = millis / 50
    let sequence = newest - min(newest, random.next() % 12)
    return TxnID(
      coordinator: NodeID(rawValue: 1 + random.next() % 2), sequence: sequence, startedAtMillis: sequence * 50)
  }

  static func writes(_ random: inout SeededRandom) -> [TxnWrite] {
    var keys = Self.keys.filter { _ in random.chance(0.5) }
    if keys.isEmpty { keys = ["a"] }
    return keys.map { TxnWrite(key: $0, value: random.chance(0.2) ? nil : [UInt8(truncatingIfNeeded: random.next())]) }
  }

  static func randomCommand(_ random: inout SeededRandom, millis: UInt64) -> TxnShardCommand {
    let id = transaction(&random, millis: millis)
    let key = keys[Int(random.next() % UInt64(keys.count))]
    switch random.next() % 10 {
    case 0, 1: return .read(id, key: key)
    case 2, 3: return .prepare(id, writes: writes(&random), participants: [1, 2], recordGroup: 1)
    case 4: return .commit(id)
    case 5: return .abort(id)
    case 6: return .commitLocal(id, reads: [key], writes: writes(&random))
    case 7:
      let decision: TransactionDecision = random.chance(0.5) ? .commit : .abort
      return .records(
        .decide(id, decision, participants: [1, 2], finisher: random.chance(0.5) ? 1 : nil, kind: .groups))
    case 8: return .records(.finished(id, node: NodeID(rawValue: 1 + random.next() % 2)))
    default: return random.chance(0.5) ? .advanceTime : .records(.reserve(coordinator: 3, count: 1 + random.next() % 4))
    }
  }

  static func limits() throws -> TxnShardLimits {
    var limits = TxnShardLimits()
    limits.idleTimeoutMillis = 300
    limits.transactionHorizonMillis = 1_000
    limits.maxRemembered = 16
    limits.records.transactionHorizonMillis = 1_000
    limits.records.retainDecisionsMillis = 2_000
    return limits
  }

  @Test(
    "random shard and record commands under sessions: restore(snapshot(m)) == m after every entry",
    arguments: [65_000_021, 65_000_022, 65_000_023] as [UInt64])
  func sessionsAndShard(seed: UInt64) throws {
    let limits = try Self.limits()
    let policy = SessionPolicy(
      timeoutMillis: 2_000, maxSessions: 8, maxResponsesPerSession: 2, maxSessionsPerPrincipal: 4,
      maxResponseBytesPerSession: 256)
    let shard = try TxnShard(limits: limits)
    let workload = SessionWorkload(
      policy: policy, makeMachine: { shard },
      command: { random, _, millis in
        Self.randomCommand(&random, millis: millis)
      })
    let tally = try workload.run(seed: seed, steps: 1_500)
    #expect(tally.restores > 30, "seed \(seed): \(tally)")
    #expect(tally.forgottenUnacknowledged > 5, "seed \(seed): \(tally)")
  }

  @Test(
    "random record commands: a restored record table equals one that applied every entry",
    arguments: [65_000_024, 65_000_025] as [UInt64])
  func records(seed: UInt64) throws {
    var random = SeededRandom(seed: seed)
    var limits = TransactionRecordLimits()
    limits.transactionHorizonMillis = 1_000
    limits.retainDecisionsMillis = 2_000
    var table = try TransactionRecords(limits: limits)
    var twin = table
    var millis: UInt64 = 1_000
    var restores = 0
    for index in 1...1_500 as ClosedRange<UInt64> {
      millis += random.next() % 40
      let command: TransactionRecordCommand
      if case .records(let c) = Self.randomCommand(&random, millis: millis) {
        command = c
      } else {
        let id = Self.transaction(&random, millis: millis)
        let commands: [TransactionRecordCommand] = [
          .prepared(id, participant: NodeID(rawValue: 1 + random.next() % 2), participants: [1, 2]),
          .clock(wallMillis: millis + random.next() % 100), .advanceTime,
        ]
        command = commands[Int(random.next() % 3)]
      }
      let context = ApplyContext(index: index, timestampMillis: millis)
      let response = table.apply(command, context: context)
      #expect("\(twin.apply(command, context: context))" == "\(response)", "seed \(seed) entry \(index)")
      if random.chance(0.05) {
        twin = try TransactionRecords(limits: limits)
        try twin.restore(from: table.snapshot())
        restores += 1
      }
      #expect(twin == table, "seed \(seed) entry \(index): a restored copy differs from the table")
    }
    #expect(restores > 20)
    #expect(table.records.count > 0)
  }
}
