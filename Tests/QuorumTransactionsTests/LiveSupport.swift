import QuorumCore
import QuorumStorage
import Synchronization
import Testing

@testable import QuorumTransactions

struct TimedOut: Error, CustomStringConvertible {
  var description: String
}

/// Polls `condition` every few milliseconds until it holds, failing after `timeout`. The timeout only bounds how
/// long a broken test takes to fail: a loaded machine makes the wait longer, never the test red.
func waitUntil(
  _ what: @autoclosure () -> String, timeout: Duration = .seconds(60), _ condition: () async throws -> Bool
) async throws {
  let deadline = ContinuousClock.now.advanced(by: timeout)
  while try await !condition() {
    if ContinuousClock.now > deadline {
      throw TimedOut(description: "timed out after \(timeout) waiting for \(what())")
    }
    try await Task.sleep(for: .milliseconds(5))
  }
}

/// Runs `operation` and, if it throws, rethrows with the coordinator's state appended: what its loop and core
/// were doing when the outcome did not come (a loop starved of ticks, or a transaction with no wake-up due).
func explained<T>(
  _ coordinator: TransactionCoordinator, _ operation: () async throws -> T
) async throws -> T {
  do {
    return try await operation()
  } catch {
    throw TimedOut(description: "\(error); coordinator: \(await coordinator.stateSummary)")
  }
}

/// Bank accounts as a transaction participant's resource. Balances and prepared intents stand for durable state
/// (they survive ``crash()``); staged work does not. A prepare can be held at a gate until the test releases it.
actor TestAccounts: TransactionParticipant {
  private(set) var balances: [String: Int]
  private(set) var staged: [TxnID: [String: Int]] = [:]
  private(set) var prepared: [TxnID: [String: Int]] = [:]
  private(set) var preparing: Set<TxnID> = []
  private(set) var committed: [TxnID] = []
  private(set) var rolledBack: [TxnID] = []
  private(set) var recoveredWith: [[TxnID]] = []
  private var held: Set<TxnID> = []
  private var gates: [TxnID: [CheckedContinuation<Void, Never>]] = [:]
  private var refusing: Set<TxnID> = []

  init(_ balances: [String: Int]) { self.balances = balances }

  func stage(_ id: TxnID, _ changes: [String: Int]) { staged[id, default: [:]].merge(changes, uniquingKeysWith: +) }
  func hold(_ id: TxnID) { held.insert(id) }
  func refuse(_ id: TxnID) { refusing.insert(id) }

  func release(_ id: TxnID) {
    held.remove(id)
    for gate in gates.removeValue(forKey: id) ?? [] { gate.resume() }
  }

  /// Loses the work in progress, as a process crash would.
  func crash() { staged = [:] }

  func prepare(_ id: TxnID) async throws -> TransactionVote {
    preparing.insert(id)
    if held.contains(id) { await withCheckedContinuation { gates[id, default: []].append($0) } }
    if refusing.contains(id) { return .no }
    guard let changes = staged.removeValue(forKey: id) else { return prepared[id] != nil ? .yes : .no }
    if changes.isEmpty { return .readOnly }
    prepared[id] = changes
    return .yes
  }

  func commit(_ id: TxnID) async {
    guard let changes = prepared.removeValue(forKey: id) else { return }
    for (account, delta) in changes { balances[account, default: 0] += delta }
    committed.append(id)
  }

  func rollback(_ id: TxnID) async {
    staged[id] = nil
    if prepared.removeValue(forKey: id) != nil { rolledBack.append(id) }
  }

  func recover(prepared ids: [TxnID]) async {
    recoveredWith.append(ids)
    for id in prepared.keys where !ids.contains(id) {
      prepared[id] = nil
      rolledBack.append(id)
    }
  }
}

/// Memory storage whose writes can be made to fail, for disk-failure tests.
final class FailingStorage: ConsensusStorage {
  typealias Entry = TransactionLogEntry
  private let inner = MemoryStorage<TransactionLogEntry>()
  private let failing = Mutex(false)

  func failWrites(_ fail: Bool) { failing.withLock { $0 = fail } }

  func recover() async throws -> RecoveredState<TransactionLogEntry> { try await inner.recover() }

  func write(_ write: StorageWrite<TransactionLogEntry>) async throws {
    if failing.withLock({ $0 }) { throw StorageError.io(operation: "write", path: "test", errno: 5) }
    try await inner.write(write)
  }

  func saveSnapshot(_ snapshot: StoredSnapshot, discardingLog: Bool) async throws {
    try await inner.saveSnapshot(snapshot, discardingLog: discardingLog)
  }

  func compact(through index: UInt64) async throws { try await inner.compact(through: index) }

  func close() async throws {}
}

/// A replicated log of transaction records that lives in one process: one table, applied in call order, with
/// exactly-once requests; it can be made unavailable. Stands in for a consensus group.
actor InMemoryRecordLog: ReplicatedLog {
  typealias Machine = TransactionRecords
  private(set) var machine: TransactionRecords
  private var index: UInt64 = 0
  private var answers: [RequestID: TransactionRecordResponse] = [:]
  private var available = true
  private let clock: any NodeClock

  init(limits: TransactionRecordLimits = TransactionRecordLimits(), clock: any NodeClock = SystemClock()) throws {
    machine = try TransactionRecords(limits: limits)
    self.clock = clock
  }

  func setAvailable(_ up: Bool) { available = up }

  func propose(_ command: TransactionRecordCommand, request: RequestID?) async throws -> TransactionRecordResponse {
    guard available else { throw ConsensusError.timeout }
    if let request, let answer = answers[request] { return answer }
    index += 1
    let answer = machine.apply(command, context: ApplyContext(index: index, timestampMillis: clock.wallClockMillis()))
    if let request { answers[request] = answer }
    return answer
  }

  func read(_ query: TransactionRecordQuery, consistency: ReadConsistency) async throws -> TransactionRecordQueryResult
  {
    guard available else { throw ConsensusError.timeout }
    return machine.query(query)
  }

  func registerSession() async throws -> UInt64 {
    guard available else { throw ConsensusError.timeout }
    index += 1
    return index
  }
}

/// Fast protocol timings for live tests (a tick every 2 ms).
func liveCoordinatorOptions() -> CoordinatorOptions {
  var options = CoordinatorOptions()
  options.tickInterval = .milliseconds(2)
  // Bounds on failure only. Ticks are counted by elapsed time, and a full parallel run on two cores can keep the
  // actors off the cooperative pool for seconds: a 0.5 s vote timeout then aborted transfers that were healthy.
  // None of these tests is about the vote timeout (the core and simulation tests are), so it is 30 s here.
  options.voteTimeoutTicks = 15_000
  options.retry = RetrySchedule(initialTicks: 5, maxTicks: 50)
  // A failure prints the tick count and the longest gap.
  options.commitDeadline = .seconds(150)
  return options
}

func liveParticipantOptions() -> ParticipantOptions {
  var options = ParticipantOptions()
  options.tickInterval = .milliseconds(2)
  // 60 s, a bound on failure only, for the reason given for the coordinator's vote timeout.
  options.unpreparedTimeoutTicks = 30_000
  options.inquiry = RetrySchedule(initialTicks: 5, maxTicks: 50)
  return options
}

/// A channel to an ``InMemoryRecordLog`` that can hold back participants' prepared records: such a write seems to
/// fail (no answer), and lands later, when the test says — after whatever was written in between, as a request
/// delayed in the network lands in a replicated group.
actor DelayingRecordChannel: TransactionRecordChannel {
  private let inner: ReplicatedLogRecordChannel
  private var holding = false
  private(set) var held: [TransactionRecordCommand] = []

  init(log: InMemoryRecordLog) { inner = ReplicatedLogRecordChannel(log: log) }

  /// Holds back every prepared record from now on.
  func holdPrepared() { holding = true }

  /// Applies the held-back writes now, and holds back nothing more.
  func land() async throws {
    let late = held
    held = []
    holding = false
    for command in late { _ = try await inner.submit(command) }
  }

  func submit(_ command: TransactionRecordCommand) async throws -> TransactionRecordResponse {
    if holding, case .prepared = command {
      held.append(command)
      throw ConsensusError.timeout
    }
    return try await inner.submit(command)
  }

  func read(_ query: TransactionRecordQuery) async throws -> TransactionRecordQueryResult {
    try await inner.read(query)
  }
}
