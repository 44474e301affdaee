import QuorumCore
import QuorumKV
import QuorumLocks
import QuorumSimulation
import QuorumTestSupport
import QuorumTransactions
import Testing

/// Hostile input for the snapshot formats a replica restores from (a leader's InstallSnapshot, a snapshot
/// file): damaged in seeded ways, each must be refused with an error or restore to a machine whose own
/// snapshot restores the same, never stop the process.
@Suite("Snapshot formats under hostile input")
struct SnapshotFuzzTests {
  static func context(_ index: UInt64) -> ApplyContext {
    ApplyContext(index: index, timestampMillis: 1_700_000_000_000 + index * 10)
  }

  @Test("a key-value store's snapshot, and the session table around it", .heavy)
  func keyValue() {
    var store = KVStore()
    var index: UInt64 = 0
    for (key, value) in [("a", "1"), ("k/ü/é", "2"), ("b", ""), ("zz", String(repeating: "v", count: 40))] {
      index += 1
      _ = store.apply(.put(key: key, value: Array(value.utf8)), context: Self.context(index))
    }
    index += 1
    _ = store.apply(.delete(key: "b"), context: Self.context(index))
    let stores = WireFuzzer.checkSnapshots(samples: [KVStore().snapshot(), store.snapshot()], inputs: 10_000, seed: 1) {
      var restored = KVStore()
      try restored.restore(from: $0)
      return restored.snapshot()
    }
    #expect(stores.problems.isEmpty, "\(stores)")
    #expect(stores.decoded > 0 && stores.refusals.values.reduce(0, +) > 0, "\(stores)")

    var replicated = ReplicatedStateMachine(KVStore())
    _ = replicated.apply(ReplicatedCommand(timestampMillis: 1_000, body: .registerSession), at: 1)
    _ = replicated.apply(ReplicatedCommand(timestampMillis: 1_010, principal: "alice", body: .registerSession), at: 2)
    for sequence: UInt64 in 1...5 {
      _ = replicated.apply(
        ReplicatedCommand(
          timestampMillis: 1_020 + sequence, request: RequestID(session: 1, sequence: sequence),
          acknowledgedThrough: sequence - 1, body: .command(.put(key: "s\(sequence)", value: [UInt8(sequence)]))),
        at: 2 + sequence)
    }
    let sessions = WireFuzzer.checkSnapshots(samples: [replicated.snapshot()], inputs: 10_000, seed: 2) {
      var restored = ReplicatedStateMachine(KVStore())
      try restored.restore(from: $0)
      return restored.snapshot()
    }
    #expect(sessions.problems.isEmpty, "\(sessions)")
  }

  @Test("a lock table's snapshot: sessions, holders, waiters and semaphores", .heavy)
  func locks() {
    var table = LockTable()
    var index: UInt64 = 0
    func apply(_ command: LockCommand) -> LockResponse {
      index += 1
      return table.apply(command, context: Self.context(index))
    }
    let first = apply(.openSession(ttlMillis: 10_000))
    let second = apply(.openSession(ttlMillis: 5_000))
    var sessions: [LockSessionID] = []
    for response in [first, second] {
      if case .sessionOpened(let id, _) = response { sessions.append(id) }
    }
    #expect(sessions.count == 2, "sessions opened: \(first), \(second)")
    if sessions.count == 2 {
      _ = apply(.acquire(lock: "orders", session: sessions[0], mode: .exclusive, wait: true, waitTimeoutMillis: nil))
      _ = apply(.acquire(lock: "orders", session: sessions[1], mode: .exclusive, wait: true, waitTimeoutMillis: 900))
      _ = apply(.acquire(lock: "doc", session: sessions[1], mode: .shared, wait: false, waitTimeoutMillis: nil))
      _ = apply(
        .acquire(lock: "pool", session: sessions[0], mode: .semaphore(permits: 3), wait: false, waitTimeoutMillis: nil))
    }
    let report = WireFuzzer.checkSnapshots(
      samples: [LockTable().snapshot(), table.snapshot()], inputs: 10_000, seed: 3
    ) {
      var restored = LockTable()
      try restored.restore(from: $0)
      return restored.snapshot()
    }
    #expect(report.problems.isEmpty, "\(report)")
  }

  @Test("a transaction shard's snapshot, and the decision records'", .heavy)
  func transactions() {
    var shard = TxnShard()
    let id = TxnID(coordinator: 2, sequence: 9, startedAtMillis: 1_700_000_000_000)
    let other = TxnID(coordinator: 3, sequence: 1, startedAtMillis: 1_700_000_000_100)
    let third = TxnID(coordinator: 9, sequence: 1, startedAtMillis: 1_700_000_000_200)
    var index: UInt64 = 0
    for command: TxnShardCommand in [
      .commitLocal(other, reads: [], writes: [TxnWrite(key: "carol", value: [5])]),
      .read(id, key: "alice"),
      .prepare(
        id, writes: [TxnWrite(key: "alice", value: [1]), TxnWrite(key: "bob", value: nil)],
        participants: [.default, GroupID(rawValue: 3)], recordGroup: GroupID(rawValue: 3)),
      .records(.reserve(coordinator: 2, count: 16)),
      .records(.decide(id, .commit, participants: [1, 2], finisher: nil)),
    ] {
      index += 1
      _ = shard.apply(command, context: Self.context(index))
    }
    let shards = WireFuzzer.checkSnapshots(samples: [TxnShard().snapshot(), shard.snapshot()], inputs: 10_000, seed: 4)
    {
      var restored = TxnShard()
      try restored.restore(from: $0)
      return restored.snapshot()
    }
    #expect(shards.problems.isEmpty, "\(shards)")

    var records = TransactionRecords()
    index = 0
    for command: TransactionRecordCommand in [
      .reserve(coordinator: 2, count: 16), .prepared(id, participant: 1, participants: [1, 2]),
      .decide(id, .commit, participants: [1, 2], finisher: 2), .decide(other, .abort, participants: [3], finisher: nil),
      .finished(id, node: 1), .decide(third, .commit, participants: [5, 6], finisher: 9, kind: .groups),
    ] {
      index += 1
      _ = records.apply(command, context: Self.context(index))
    }
    let decisions = WireFuzzer.checkSnapshots(
      samples: [TransactionRecords().snapshot(), records.snapshot()], inputs: 10_000, seed: 5
    ) {
      var restored = TransactionRecords()
      try restored.restore(from: $0)
      return restored.snapshot()
    }
    #expect(decisions.problems.isEmpty, "\(decisions)")
  }
}
