import QuorumCore
import QuorumStorage
import Synchronization
import Testing

@testable import QuorumTransactions

@Suite("Record stores: the local log (group commit, snapshots, presumed abort) and the replicated table")
struct RecordStoreTests {
  @Test("the local store survives a reopen, across snapshots and compaction, and hands out numbers once")
  func localReopen() async throws {
    let storage = MemoryStorage<TransactionLogEntry>()
    let store = try LocalTransactionRecordStore(storage: storage, snapshotEveryEntries: 8)
    try await store.open()
    let started = SystemClock().wallClockMillis()
    var committed: [TxnID] = []
    for n in 1...40 as ClosedRange<UInt64> {
      let id = TxnID(coordinator: 1, sequence: n, startedAtMillis: started)
      #expect(try await store.recordDecision(id, participants: [2, 3]) == .commit)
      if n % 2 == 0 { try await store.recordFinished(id, by: 1) } else { committed.append(id) }
    }
    let first = try await store.reserveSequenceNumbers(for: 1, count: 10)
    let recovered = await storage.snapshotIndexForTests()
    #expect(recovered > 0, "a snapshot was taken")
    let reopened = try LocalTransactionRecordStore(storage: storage, snapshotEveryEntries: 8)
    try await reopened.open()
    let pending = try await reopened.pendingRecords(of: 1).filter { $0.pending.contains(1) }.map(\.id)
    #expect(pending == committed, "every unfinished commit, and only those")
    let next = try await reopened.reserveSequenceNumbers(for: 1, count: 10)
    #expect(next.lowerBound >= first.upperBound)
  }

  @Test("writes arriving together are made durable in one storage write, each answered after it")
  func groupCommit() async throws {
    let storage = CountingStorage()
    let store = try LocalTransactionRecordStore(storage: storage)
    try await store.open()
    let started = SystemClock().wallClockMillis()
    try await withThrowingTaskGroup(of: Void.self) { group in
      for n in 1...50 as ClosedRange<UInt64> {
        group.addTask {
          let id = TxnID(coordinator: 1, sequence: n, startedAtMillis: started)
          _ = try await store.recordPrepared(id, participant: 2, participants: [2, 3])
        }
      }
      try await group.waitForAll()
    }
    let writes = storage.writes
    #expect(writes >= 1 && writes < 50, "\(writes) writes for 50 records")
    #expect(try await store.pendingRecords(of: 2).count == 50)
  }

  @Test("presumed abort: an abort asked for a transaction with no record writes nothing")
  func presumedAbort() async throws {
    let storage = CountingStorage()
    let store = try LocalTransactionRecordStore(storage: storage)
    try await store.open()
    let id = TxnID(coordinator: 1, sequence: 1, startedAtMillis: SystemClock().wallClockMillis())
    #expect(try await store.decideIfUndecided(id, .abort, participants: [], finisher: nil) == .abort)
    #expect(storage.writes == 0)
    #expect(try await store.outcome(of: id) == nil)
  }

  @Test("the replicated store is a compare-and-set shared by every handle; its errors say unavailable")
  func replicated() async throws {
    let log = try InMemoryRecordLog()
    let coordinator = ReplicatedTransactionRecordStore(log: log, identity: 7)
    let participant = ReplicatedTransactionRecordStore(log: log, identity: 7)
    let id = TxnID(coordinator: 1, sequence: 1, startedAtMillis: SystemClock().wallClockMillis())
    #expect(try await participant.recordPrepared(id, participant: 2, participants: [2, 3]) == nil)
    #expect(try await participant.decideIfUndecided(id, .abort, participants: [], finisher: nil) == .abort)
    #expect(try await coordinator.recordDecision(id, participants: [2, 3]) == .abort, "the participant won")
    #expect(try await coordinator.pendingRecords(of: 2).map(\.id) == [id])
    await log.setAvailable(false)
    await #expect(throws: TransactionStoreError.self) { _ = try await coordinator.outcome(of: id) }
  }
}

/// Memory storage that counts its writes.
final class CountingStorage: ConsensusStorage {
  typealias Entry = TransactionLogEntry
  private let inner = MemoryStorage<TransactionLogEntry>()
  private let count = Mutex(0)

  var writes: Int { count.withLock { $0 } }

  func recover() async throws -> RecoveredState<TransactionLogEntry> { try await inner.recover() }

  func write(_ write: StorageWrite<TransactionLogEntry>) async throws {
    count.withLock { $0 += 1 }
    await Task.yield()
    try await inner.write(write)
  }

  func saveSnapshot(_ snapshot: StoredSnapshot, discardingLog: Bool) async throws {
    try await inner.saveSnapshot(snapshot, discardingLog: discardingLog)
  }

  func compact(through index: UInt64) async throws { try await inner.compact(through: index) }

  func close() async throws {}
}

extension MemoryStorage {
  /// The stored snapshot's index (0 if none).
  func snapshotIndexForTests() async -> UInt64 { (try? await recover().snapshot?.index) ?? 0 }
}

@Suite("ReplicatedTransactionRecordStore: which group failures are refusals for good")
struct RecordStoreRejectionTests {
  /// A channel whose every submit throws `error`.
  struct FailingChannel: TransactionRecordChannel {
    let error: ConsensusError
    func submit(_ command: TransactionRecordCommand) async throws -> TransactionRecordResponse { throw error }
    func read(_ query: TransactionRecordQuery) async throws -> TransactionRecordQueryResult { throw error }
  }

  @Test("a full session quota is temporary: unavailable, not rejected; a command too large is rejected")
  func sessionQuotaIsNotARejection() async {
    let quota = ReplicatedTransactionRecordStore(
      channel: FailingChannel(error: .sessionQuotaExceeded(limit: 1)), identity: 1)
    let quotaError = await #expect(throws: TransactionStoreError.self) {
      _ = try await quota.reserveSequenceNumbers(for: 1, count: 1)
    }
    guard case .unavailable? = quotaError else {
      Issue.record("expected unavailable, got \(String(describing: quotaError))")
      return
    }
    let large = ReplicatedTransactionRecordStore(
      channel: FailingChannel(error: .commandTooLarge(bytes: 900, limit: 512)), identity: 1)
    let largeError = await #expect(throws: TransactionStoreError.self) {
      _ = try await large.reserveSequenceNumbers(for: 1, count: 1)
    }
    guard case .rejected? = largeError else {
      Issue.record("expected rejected, got \(String(describing: largeError))")
      return
    }
  }
}
