import QuorumCore
import QuorumStorage
import QuorumTransactions

/// Settings of a ``TransactionNodeSimulation``.
public struct TransactionNodeSimulationOptions: Sendable {
  /// Where the records live.
  public enum Mode: String, Sendable, CaseIterable {
    /// Each node's own log on its simulated disk: classic two-phase commit.
    case classic
    /// One replicated table shared by every node (a simulated consensus group that can be unavailable for a
    /// while and lose answers): non-blocking two-phase commit.
    case nonBlocking
  }

  /// Where the records live.
  public var mode: Mode = .classic
  /// Participant nodes (bank branches); the coordinator is node 1.
  public var participants = 3
  /// Accounts per branch.
  public var accountsPerBranch = 2
  /// Each account's opening balance.
  public var initialBalance = 100
  /// Concurrent clients of the coordinator.
  public var clients = 3
  /// How long the nemesis runs.
  public var chaosDuration: VirtualDuration = .seconds(4)
  /// How long after healing everything must have ended.
  public var healDeadline: VirtualDuration = .seconds(30)
  /// Whether the coordinator stays down after healing (non-blocking mode: the participants must end anyway).
  public var coordinatorStaysDown = false

  /// The defaults: classic, three branches of two accounts, three clients, 4 s of chaos.
  public init() {}
}

/// What a ``TransactionNodeSimulation`` run did.
public struct TransactionNodeSimulationStats: Sendable, CustomStringConvertible {
  /// Transactions reported committed.
  public var committed = 0
  /// Transactions reported aborted (or abandoned).
  public var aborted = 0
  /// Transactions whose outcome the client did not learn.
  public var unknown = 0
  /// Whole-bank reads that committed and were checked.
  public var readsChecked = 0
  /// Crashes injected by the nemesis.
  public var crashes = 0
  /// Nodes stopped by their own errors (a failed disk write, a record group unavailable at recovery) and
  /// restarted by the supervisor.
  public var stops = 0
  /// Scheduler jobs run.
  public var jobs: UInt64 = 0
  /// Virtual time at the end.
  public var endTime = VirtualTime.zero

  /// Empty counters.
  public init() {}

  public var description: String {
    "committed=\(committed) aborted=\(aborted) unknown=\(unknown) reads=\(readsChecked) crashes=\(crashes) "
      + "stops=\(stops) "
      + "jobs=\(jobs) end=\(endTime)"
  }
}

/// A bank branch: a participant's resource with per-account locks (no-wait), whose balances, prepared intents
/// and ledger of applied decisions are durable (they outlive a crash of the node) while staged work and the
/// locks of unprepared work are not.
///
/// Safety of `@unchecked Sendable`: touched only by the scheduler's jobs, one at a time.
final class SimulatedBranch: TransactionParticipant, @unchecked Sendable {
  struct Busy: Error {}

  private(set) var balances: [String: Int]
  /// Staged deltas (volatile).
  private var staged: [TxnID: [String: Int]] = [:]
  /// Prepared deltas (durable).
  private(set) var prepared: [TxnID: [String: Int]] = [:]
  /// Locks: exclusive holders and shared readers (volatile; restored for prepared transactions on recovery).
  private var writers: [String: TxnID] = [:]
  private var readers: [String: Set<TxnID>] = [:]
  /// What was done with each prepared transaction (durable): the atomicity oracle reads it.
  private(set) var ledger: [TxnID: TransactionDecision] = [:]
  private(set) var violations: [String] = []

  init(accounts: [String], balance: Int) {
    balances = Dictionary(uniqueKeysWithValues: accounts.map { ($0, balance) })
  }

  /// Stages `delta` on `account` for `id`, locking it exclusively (no-wait).
  func stage(_ id: TxnID, _ account: String, _ delta: Int) throws {
    guard writers[account].map({ $0 == id }) ?? true, (readers[account] ?? []).subtracting([id]).isEmpty else {
      throw Busy()
    }
    writers[account] = id
    staged[id, default: [:]][account, default: 0] += delta
  }

  /// Reads `account` for `id` under a shared lock (no-wait).
  func read(_ id: TxnID, _ account: String) throws -> Int {
    guard writers[account].map({ $0 == id }) ?? true else { throw Busy() }
    readers[account, default: []].insert(id)
    staged[id, default: [:]][account, default: 0] += 0
    return balances[account] ?? 0
  }

  /// The node crashed: staged work and its locks are lost.
  func crash() {
    staged = [:]
    writers = [:]
    readers = [:]
  }

  private func unlock(_ id: TxnID) {
    for (account, writer) in writers where writer == id { writers[account] = nil }
    for account in readers.keys { readers[account]?.remove(id) }
    readers = readers.filter { !$0.value.isEmpty }
  }

  private func note(_ id: TxnID, _ decision: TransactionDecision) {
    if let earlier = ledger[id], earlier != decision { violations.append("\(id) applied \(earlier) then \(decision)") }
    ledger[id] = decision
  }

  func prepare(_ id: TxnID) async throws -> TransactionVote {
    if prepared[id] != nil { return .yes }
    guard let changes = staged.removeValue(forKey: id) else { return .no }
    let writes = changes.filter { $0.value != 0 || writers[$0.key] == id }
    if writes.isEmpty {
      unlock(id)  // read-only: every lock of the transaction was taken before any prepare (its lock point)
      return .readOnly
    }
    prepared[id] = writes
    return .yes
  }

  func commit(_ id: TxnID) async {
    if let changes = prepared.removeValue(forKey: id) {
      for (account, delta) in changes { balances[account, default: 0] += delta }
      note(id, .commit)
    }
    unlock(id)
  }

  func rollback(_ id: TxnID) async {
    staged[id] = nil
    if prepared.removeValue(forKey: id) != nil { note(id, .abort) }
    unlock(id)
  }

  func recover(prepared ids: [TxnID]) async {
    crash()
    for id in prepared.keys.sorted() {
      guard ids.contains(id), let changes = prepared[id] else {
        prepared[id] = nil
        note(id, .abort)
        continue
      }
      for account in changes.keys { writers[account] = id }
    }
  }

  var isIdle: Bool { prepared.isEmpty && staged.isEmpty && writers.isEmpty && readers.isEmpty }
}

/// A replicated table of transaction records as a simulated consensus group: applied in arrival order after a
/// delay, unavailable during outages, and sometimes losing the answer to a command it applied.
///
/// Safety of `@unchecked Sendable`: touched only by the scheduler's jobs, one at a time.
final class SimulatedRecordLog: ReplicatedLog, @unchecked Sendable {
  typealias Machine = TransactionRecords

  private var machine: TransactionRecords
  private var index: UInt64 = 0
  private var answers: [RequestID: TransactionRecordResponse] = [:]
  private let scheduler: SimulationScheduler
  private let clock: SimulatedClock
  var available = true
  var loseAnswers = false

  init(scheduler: SimulationScheduler) {
    self.scheduler = scheduler
    self.clock = SimulatedClock(scheduler: scheduler)
    machine = TransactionRecords()
  }

  var table: TransactionRecords { machine }

  private func delay() async throws {
    try await scheduler.sleep(
      for: .microseconds(UInt64(scheduler.random { Int.random(in: 200...3_000, using: &$0) })))
  }

  func propose(_ command: TransactionRecordCommand, request: RequestID?) async throws -> TransactionRecordResponse {
    try await delay()
    guard available else { throw ConsensusError.timeout }
    let answer: TransactionRecordResponse
    if let request, let remembered = answers[request] {
      answer = remembered
    } else {
      index += 1
      answer = machine.apply(command, context: ApplyContext(index: index, timestampMillis: clock.wallClockMillis()))
      if let request { answers[request] = answer }
    }
    try await delay()
    if loseAnswers && scheduler.random({ $0.chance(0.2) }) { throw ConsensusError.outcomeUnknown }
    return answer
  }

  func read(_ query: TransactionRecordQuery, consistency: ReadConsistency) async throws -> TransactionRecordQueryResult
  {
    try await delay()
    guard available else { throw ConsensusError.timeout }
    return machine.query(query)
  }

  func registerSession() async throws -> UInt64 {
    try await delay()
    guard available else { throw ConsensusError.timeout }
    index += 1
    return index
  }
}

/// The production two-phase-commit actors — ``QuorumTransactions/TransactionCoordinator`` and
/// ``QuorumTransactions/TransactionParticipantNode``, unmodified — running a bank on a ``SimulationScheduler``:
/// clients transfer money between accounts of different branches and read the whole bank while the nemesis
/// partitions, drops, duplicates and delays messages, crashes and restarts the coordinator and the branches
/// (keeping only what their disks made durable, torn at the record level), fails disk writes, and takes the
/// shared record table offline.
///
/// The checks, after every job: no branch applies two decisions to one transaction. At the end, after healing
/// (every node back, or in non-blocking mode optionally the coordinator left down): every transaction has ended
/// at every branch — nothing prepared, staged or locked; every transaction either committed at all of its
/// writers or at none, and a result the coordinator reported matches; the money adds up; and every committed
/// whole-bank read, plus a final one, adds up to the opening total (``BankHistoryChecker``).
///
/// Safety of `@unchecked Sendable`: touched only by the scheduler's jobs, one at a time, on the thread running ``run()``.
public final class TransactionNodeSimulation: @unchecked Sendable {
  private final class Node {
    let id: NodeID
    let disk: SimulatedDisk<TransactionLogEntry>
    let clock: SimulatedClock
    var incarnation: UInt32 = 0
    var up = false
    var coordinator: TransactionCoordinator?
    var participant: TransactionParticipantNode?

    init(id: NodeID, disk: SimulatedDisk<TransactionLogEntry>, clock: SimulatedClock) {
      self.id = id
      self.disk = disk
      self.clock = clock
    }

    var process: UInt32 { UInt32(truncatingIfNeeded: id.rawValue) << 16 | incarnation }
  }

  /// The run's seed.
  public let seed: UInt64
  /// The run's options.
  public let options: TransactionNodeSimulationOptions
  /// What the run did.
  public private(set) var stats = TransactionNodeSimulationStats()

  private let trace: SimulationTrace
  private let scheduler: SimulationScheduler
  private let network: VirtualNetwork<TransactionMessage>
  private let recordLog: SimulatedRecordLog
  private let coordinatorID: NodeID = 1
  private let participantIDs: [NodeID]
  private var nodes: [NodeID: Node] = [:]
  private var branches: [NodeID: SimulatedBranch] = [:]
  private var results: [TxnID: TransactionResult] = [:]
  private var writers: [TxnID: Set<NodeID>] = [:]
  private var bankReads: [BankObservation] = []
  private var healed = false
  private var finished = false
  private var failure: SimulationFailure?

  /// Prepares a run; nothing happens until ``run()``.
  public init(seed: UInt64, options: TransactionNodeSimulationOptions = .init(), trace: SimulationTrace) {
    self.seed = seed
    self.options = options
    self.trace = trace
    scheduler = SimulationScheduler(seed: seed)
    network = VirtualNetwork(
      scheduler: scheduler, faults: LinkFaults(delay: .uniform(.microseconds(100), .milliseconds(2))))
    recordLog = SimulatedRecordLog(scheduler: scheduler)
    participantIDs = (0..<max(2, options.participants)).map { NodeID(rawValue: UInt64(2 + $0)) }
  }

  private var accounts: [NodeID: [String]] {
    Dictionary(
      uniqueKeysWithValues: participantIDs.map { id in
        (id, (0..<max(1, options.accountsPerBranch)).map { "b\(id.rawValue)-\($0)" })
      })
  }

  private var expectedTotal: Int { participantIDs.count * max(1, options.accountsPerBranch) * options.initialBalance }

  /// Runs the chaos phase, heals, waits for every transaction to end, and checks.
  /// - Throws: ``SimulationFailure`` naming the seed's problem.
  public func run() throws -> TransactionNodeSimulationStats {
    let accounts = self.accounts
    for id in [coordinatorID] + participantIDs {
      let disk = SimulatedDisk<TransactionLogEntry>(mode: .truncateSuffix, scheduler: scheduler)
      let drift = scheduler.random { Int64.random(in: -20_000...20_000, using: &$0) }
      nodes[id] = Node(id: id, disk: disk, clock: SimulatedClock(scheduler: scheduler, driftPPM: drift))
      if let mine = accounts[id] { branches[id] = SimulatedBranch(accounts: mine, balance: options.initialBalance) }
      start(id)
    }
    for client in 1...max(1, options.clients) {
      scheduler.spawn(on: 0xFF00 + UInt32(client)) { [self] in await runClient(client) }
    }
    scheduler.spawn(on: 0xFFF0) { [self] in await runNemesis() }
    scheduler.schedule(at: VirtualTime.zero + options.chaosDuration) { [self] in heal() }
    let deadline = VirtualTime.zero + options.chaosDuration + options.healDeadline + .seconds(5)
    _ = try scheduler.run(
      until: deadline, stopWhen: { [self] in finished || failure != nil },
      afterEachJob: { [self] in
        checkLedgers()
        if let failure { throw failure }
      })
    stats.jobs = scheduler.jobsRun
    stats.endTime = scheduler.now
    if let failure { throw failure }
    guard finished else { throw SimulationFailure("seed \(seed): not settled by \(deadline): \(leftovers())") }
    return stats
  }

  private func fail(_ message: String) {
    if failure == nil { failure = SimulationFailure("seed \(seed) (\(options.mode.rawValue)): \(message)") }
  }

  // MARK: - Nodes

  private func store(for node: Node) async throws -> any TransactionRecordStore {
    switch options.mode {
    case .classic:
      let store = try LocalTransactionRecordStore(
        storage: node.disk.open(), clock: node.clock, snapshotEveryEntries: 64)
      try await store.open()
      return store
    case .nonBlocking:
      return ReplicatedTransactionRecordStore(log: recordLog, identity: 42, clock: node.clock)
    }
  }

  private func coordinatorOptions() -> CoordinatorOptions {
    var o = CoordinatorOptions()
    o.tickInterval = .milliseconds(5)
    o.voteTimeoutTicks = 60
    o.retry = RetrySchedule(initialTicks: 4, maxTicks: 40)
    o.commitDeadline = .milliseconds(800)
    return o
  }

  private func participantOptions() -> ParticipantOptions {
    var o = ParticipantOptions()
    o.tickInterval = .milliseconds(5)
    o.unpreparedTimeoutTicks = 100
    o.inquiry = RetrySchedule(initialTicks: 10, maxTicks: 80)
    return o
  }

  private func start(_ id: NodeID) {
    guard let node = nodes[id], !node.up else { return }
    node.incarnation += 1
    node.up = true
    let endpoint = network.bind(id)
    network.withNetwork { $0.setDown(id, false) }
    let runtime = NodeRuntime(clock: node.clock, executor: scheduler.executor(for: node.process))
    let incarnation = node.incarnation
    trace.record(scheduler.now, "start \(id) incarnation \(incarnation)")
    let branch = branches[id]
    scheduler.spawn(on: node.process) { [self] in
      do {
        let store = try await store(for: node)
        guard node.incarnation == incarnation, node.up else { return }
        if id == coordinatorID {
          let coordinator = TransactionCoordinator(
            id: id, endpoint: endpoint, store: store, options: coordinatorOptions(), runtime: runtime, logger: .disabled
          )
          node.coordinator = coordinator
          try await coordinator.run()
        } else if let branch {
          let participant = TransactionParticipantNode(
            id: id, resource: branch, endpoint: endpoint, store: store, options: participantOptions(),
            runtime: runtime, logger: .disabled)
          node.participant = participant
          try await participant.run()
        }
      } catch {
        stopped(id, incarnation: incarnation, error: error)
      }
    }
  }

  private func stopped(_ id: NodeID, incarnation: UInt32, error: any Error) {
    guard let node = nodes[id], node.incarnation == incarnation, node.up else { return }
    switch error {
    case TransactionStoreError.unusable, is StorageError, TransactionStoreError.unavailable:
      trace.record(scheduler.now, "\(id) stopped: \(error)")
      crash(id)
      stats.crashes -= 1
      stats.stops += 1
      // A process supervisor restarts it.
      scheduler.schedule(at: scheduler.now + .milliseconds(30)) { [self] in
        if !(healed && id == coordinatorID && options.coordinatorStaysDown) { start(id) }
      }
    default:
      fail("\(id) stopped with an unexpected error: \(error)")
    }
  }

  private func crash(_ id: NodeID) {
    guard let node = nodes[id], node.up else { return }
    node.up = false
    scheduler.pause(node.process, until: VirtualTime(nanoseconds: .max))
    network.withNetwork { $0.setDown(id, true) }
    node.disk.crash()
    node.coordinator = nil
    node.participant = nil
    branches[id]?.crash()
    stats.crashes += 1
    trace.record(scheduler.now, "crash \(id)")
  }

  // MARK: - Clients

  private struct Unavailable: Error {}

  private func runClient(_ number: Int) async {
    let accounts = self.accounts
    while !healed {
      try? await scheduler.sleep(
        for: .microseconds(UInt64(scheduler.random { Int.random(in: 500...20_000, using: &$0) })))
      guard !healed, let coordinator = nodes[coordinatorID]?.coordinator else { continue }
      let wholeBank = scheduler.random { $0.chance(0.25) }
      if wholeBank {
        await readBank(coordinator, accounts: accounts, final: false)
      } else {
        await transfer(coordinator, accounts: accounts)
      }
    }
  }

  private func transfer(_ coordinator: TransactionCoordinator, accounts: [NodeID: [String]]) async {
    let (from, to, amount) = scheduler.random { rng -> ((NodeID, String), (NodeID, String), Int) in
      let first = Int.random(in: 0..<participantIDs.count, using: &rng)
      let second = (first + Int.random(in: 1..<participantIDs.count, using: &rng)) % participantIDs.count
      let (a, b) = (participantIDs[first], participantIDs[second])
      let accountA = accounts[a]?.randomElement(using: &rng) ?? ""
      let accountB = accounts[b]?.randomElement(using: &rng) ?? ""
      return ((a, accountA), (b, accountB), Int.random(in: 1...20, using: &rng))
    }
    guard let id = try? await coordinator.makeTransactionID() else { return }
    writers[id] = [from.0, to.0]
    let result = await execute(
      Transaction(id: id, participants: [from.0, to.0], via: coordinator) { [self] in
        try stage(id, at: from.0, from.1, -amount)
        try stage(id, at: to.0, to.1, amount)
      })
    _ = result
  }

  private func stage(_ id: TxnID, at branchID: NodeID, _ account: String, _ delta: Int) throws {
    guard let node = nodes[branchID], node.up, let participant = node.participant, let branch = branches[branchID]
    else {
      throw Unavailable()
    }
    participant.begin(id)
    try branch.stage(id, account, delta)
  }

  private func readBank(_ coordinator: TransactionCoordinator, accounts: [NodeID: [String]], final: Bool) async {
    guard let id = try? await coordinator.makeTransactionID() else { return }
    let observed = Observed()
    let result = await execute(
      Transaction(id: id, participants: participantIDs, via: coordinator) { [self] in
        for branchID in participantIDs {
          guard let node = nodes[branchID], node.up, let participant = node.participant, let branch = branches[branchID]
          else { throw Unavailable() }
          participant.begin(id)
          for account in accounts[branchID] ?? [] { observed.balances[account] = try branch.read(id, account) }
        }
      })
    if result == .committed {
      bankReads.append(
        BankObservation(transaction: TransactionID(rawValue: bankReads.count), balances: observed.balances))
      stats.readsChecked += 1
    } else if final {
      fail("the final read of the bank did not commit: \(result.map(\.description) ?? "unknown")")
    }
  }

  /// Balances seen by a whole-bank read's body.
  private final class Observed: @unchecked Sendable {
    // Safety of @unchecked Sendable: only the scheduler's jobs touch it, one at a time.
    var balances: [String: Int] = [:]
  }

  /// A call's answer, filled in by the task that made it.
  private final class Answer: @unchecked Sendable {
    // Safety of @unchecked Sendable: only the scheduler's jobs touch it, one at a time.
    var done = false
    var result: TransactionResult?
  }

  /// Executes `transaction`, giving up (outcome unknown) if the coordinator crashes meanwhile: a crashed
  /// coordinator never answers, as a dead process's caller would find.
  private func execute(_ transaction: Transaction) async -> TransactionResult? {
    let answer = Answer()
    let incarnation = nodes[coordinatorID]?.incarnation
    scheduler.spawn(on: 0xFE00) { [self] in
      do {
        let result = try await transaction.execute()
        if let earlier = results[transaction.id], earlier.decision != result.decision {
          fail("\(transaction.id) reported \(earlier), then \(result)")
        }
        results[transaction.id] = result
        answer.result = result
      } catch {
        answer.result = nil
      }
      answer.done = true
    }
    while !answer.done {
      try? await scheduler.sleep(for: .milliseconds(10))
      if nodes[coordinatorID]?.incarnation != incarnation || nodes[coordinatorID]?.up != true { break }
    }
    switch answer.result {
    case _ where !answer.done: stats.unknown += 1
    case .committed?: stats.committed += 1
    case .aborted?: stats.aborted += 1
    case nil: stats.unknown += 1
    }
    return answer.done ? answer.result : nil
  }

  // MARK: - Nemesis

  private func runNemesis() async {
    let all = [coordinatorID] + participantIDs
    while !healed {
      try? await scheduler.sleep(
        for: .milliseconds(UInt64(scheduler.random { Int.random(in: 20...150, using: &$0) })))
      guard !healed else { return }
      let roll = scheduler.random { Int.random(in: 0..<10, using: &$0) }
      func pick(_ from: [NodeID]) -> NodeID? {
        from.isEmpty ? nil : from[scheduler.random { Int.random(in: 0..<from.count, using: &$0) }]
      }
      switch roll {
      case 0, 1:
        if let victim = pick(all.filter { nodes[$0]?.up == true }) { crash(victim) }
      case 2, 3:
        if let down = pick(all.filter { nodes[$0]?.up == false }) { start(down) }
      case 4:
        var a: [NodeID] = []
        var b: [NodeID] = []
        for id in all { if scheduler.random({ Bool.random(using: &$0) }) { a.append(id) } else { b.append(id) } }
        network.withNetwork {
          $0.heal()
          $0.partition(a, b)
        }
        trace.record(scheduler.now, "partition \(a) | \(b)")
      case 5:
        network.withNetwork { $0.heal() }
      case 6:
        let faults = scheduler.random { rng in
          LinkFaults(
            dropProbability: Double.random(in: 0.01...0.2, using: &rng),
            duplicateProbability: Double.random(in: 0...0.1, using: &rng),
            delay: .longTail(typical: .milliseconds(1), tail: .milliseconds(100), tailProbability: 0.05),
            reorderProbability: Double.random(in: 0...0.3, using: &rng), reorderWindow: .milliseconds(10))
        }
        network.withNetwork { $0.defaultFaults = faults }
      case 7:
        if options.mode == .classic {
          if let victim = pick(all) { nodes[victim]?.disk.failWrites(probability: 0.2) }
        } else {
          recordLog.available.toggle()
          trace.record(scheduler.now, "record group \(recordLog.available ? "back" : "unavailable")")
        }
      case 8:
        if options.mode == .nonBlocking { recordLog.loseAnswers.toggle() }
        for id in all { nodes[id]?.disk.failWrites(probability: 0) }
      default:
        network.withNetwork { $0.defaultFaults = LinkFaults(delay: .uniform(.microseconds(100), .milliseconds(2))) }
      }
    }
  }

  private func heal() {
    healed = true
    recordLog.available = true
    recordLog.loseAnswers = false
    network.withNetwork {
      $0.heal()
      $0.defaultFaults = LinkFaults(delay: .uniform(.microseconds(100), .milliseconds(2)))
    }
    for id in ([coordinatorID] + participantIDs) {
      nodes[id]?.disk.failWrites(probability: 0)
      if id == coordinatorID && options.coordinatorStaysDown {
        crash(id)
        continue
      }
      start(id)
    }
    trace.record(scheduler.now, "healed")
    scheduler.spawn(on: 0xFFF2) { [self] in await settle() }
  }

  // MARK: - Checks

  private func checkLedgers() {
    for (id, branch) in branches where !branch.violations.isEmpty { fail("\(id): \(branch.violations)") }
  }

  private func isSettled() async -> Bool {
    for id in participantIDs {
      guard let node = nodes[id], node.up, let participant = node.participant else { return false }
      guard await participant.isRunning, await participant.trackedCount == 0 else { return false }
      guard branches[id]?.isIdle == true else { return false }
    }
    if !options.coordinatorStaysDown {
      guard let coordinator = nodes[coordinatorID]?.coordinator, await coordinator.isRunning,
        await coordinator.activeCount == 0
      else { return false }
    }
    return true
  }

  private func leftovers() -> String {
    participantIDs.map { id in
      "\(id): up=\(nodes[id]?.up ?? false) idle=\(branches[id]?.isIdle ?? false) prepared=\(branches[id]?.prepared.keys.map(\.description) ?? [])"
    }.joined(separator: "; ")
  }

  private func settle() async {
    let by = scheduler.now + options.healDeadline
    while scheduler.now < by {
      if await isSettled() { break }
      try? await scheduler.sleep(for: .milliseconds(20))
    }
    guard await isSettled() else {
      fail("not settled \(options.healDeadline) after healing: \(leftovers())")
      return
    }
    if !options.coordinatorStaysDown, let coordinator = nodes[coordinatorID]?.coordinator {
      await readBank(coordinator, accounts: accounts, final: true)
    }
    checkOutcomes()
    finished = true
  }

  private func checkOutcomes() {
    for (id, members) in writers.sorted(by: { $0.key < $1.key }) {
      let applied = members.sorted().map { branches[$0]?.ledger[id] }
      let committed = applied.contains(.commit)
      if committed && applied.contains(where: { $0 != .commit }) { fail("\(id): branches applied \(applied)") }
      if let result = results[id], (result == .committed) != committed {
        fail("\(id): the coordinator reported \(result) but the branches applied \(applied)")
      }
    }
    let total = branches.values.flatMap(\.balances.values).reduce(0, +)
    if total != expectedTotal { fail("the bank holds \(total), not \(expectedTotal)") }
    let allAccounts = Set(accounts.values.flatMap { $0 })
    let result = BankHistoryChecker(expectedTotal: expectedTotal, accounts: allAccounts).check(bankReads)
    if !result.isValid { fail("bank reads: \(result)") }
  }
}
