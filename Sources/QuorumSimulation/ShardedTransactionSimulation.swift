import QuorumCore
import QuorumTransactions

/// Settings of a ``ShardedTransactionSimulation``.
public struct ShardedTransactionSimulationOptions: Sendable {
  /// What the clients run.
  public enum Workload: String, Sendable, CaseIterable {
    /// List-append transactions (reads and appends over a few keys), checked for strict serializability by the
    /// ``TransactionChecker``.
    case listAppend
    /// Transfers between accounts and reads of the whole bank, checked by the ``BankHistoryChecker``.
    case bank
  }

  /// The workload.
  public var workload: Workload = .listAppend
  /// Groups (shards).
  public var groups = 3
  /// Concurrent clients, each its own coordinator.
  public var clients = 4
  /// Transactions each client runs.
  public var transactionsPerClient = 25
  /// Keys (list-append) or accounts (bank).
  public var keys = 8
  /// Each account's opening balance (bank).
  public var initialBalance = 100
  /// Delay of each request and of each answer.
  public var latency: DelayDistribution = .uniform(.microseconds(100), .milliseconds(3))
  /// Probability that a request is lost before it is applied.
  public var lostRequestProbability = 0.03
  /// Probability that an answer is lost after the request was applied.
  public var lostReplyProbability = 0.03
  /// Probability that a client dies partway through a transaction (it never sends another request; a new
  /// incarnation takes its place).
  public var clientCrashProbability = 0.08
  /// How often the resolver looks for transactions in doubt.
  public var resolverInterval: VirtualDuration = .milliseconds(40)
  /// How long (log time) a transaction must have been prepared before the resolver settles it. Small values make
  /// the resolver race live commits.
  public var resolverMinimumAgeMillis: UInt64 = 30
  /// How long after the clients finish everything must be settled.
  public var healDeadline: VirtualDuration = .seconds(60)

  /// The defaults: list-append, 3 groups, 4 clients of 25 transactions over 8 keys, 3% of requests and answers
  /// lost, 8% of transactions interrupted by a client crash.
  public init() {}
}

/// What a ``ShardedTransactionSimulation`` run did.
public struct ShardedTransactionSimulationStats: Sendable, CustomStringConvertible {
  /// Transactions the clients saw commit.
  public var committed = 0
  /// Transactions the clients saw abort (after every retry), or abandoned before committing.
  public var aborted = 0
  /// Transactions whose outcome the clients did not learn.
  public var unknown = 0
  /// Client crashes.
  public var crashes = 0
  /// Transactions the resolver settled.
  public var resolved = 0
  /// Committed reads checked.
  public var readsChecked = 0
  /// Scheduler jobs run.
  public var jobs: UInt64 = 0
  /// Virtual time at the end.
  public var endTime = VirtualTime.zero

  /// Empty counters.
  public init() {}

  public var description: String {
    "committed=\(committed) aborted=\(aborted) unknown=\(unknown) crashes=\(crashes) resolved=\(resolved) "
      + "reads-checked=\(readsChecked) jobs=\(jobs) end=\(endTime)"
  }
}

/// Clients of the sharded transactional store (``QuorumTransactions/ShardedTransactions``, unmodified) over
/// simulated groups of ``QuorumTransactions/TxnShard`` machines, on a ``SimulationScheduler``: requests and
/// answers are delayed, lost before or after being applied, clients die in the middle of their transactions,
/// and a resolver settles what they leave in doubt, racing the clients that are still alive.
///
/// Each group applies its commands one at a time in the order they arrive, as a consensus group's log would,
/// with its own log time; time-only entries are written when a shard's deadline passes. After the clients
/// finish, faults stop, the resolver settles everything left and idle transactions expire; then a final
/// transaction reads every key. The checks: no transaction left prepared, no lock left held, no decision record
/// left undecided; for list-append, the history is strictly serializable (``TransactionChecker``); for the bank,
/// every committed read of the whole bank, the final one included, adds up to the opening total
/// (``BankHistoryChecker``).
///
/// Safety of `@unchecked Sendable`: touched only by the scheduler's jobs, one at a time, on the thread running ``run()``.
public final class ShardedTransactionSimulation: @unchecked Sendable {
  /// The groups' state machines, applied in arrival order (one job at a time).
  final class Groups: @unchecked Sendable {
    // Safety of @unchecked Sendable: only the scheduler's jobs touch it, one at a time.
    var shards: [GroupID: TxnShard] = [:]
    var indexes: [GroupID: UInt64] = [:]
    let baseMillis: UInt64 = 1_767_225_600_000
    let scheduler: SimulationScheduler

    init(count: Int, scheduler: SimulationScheduler, limits: TxnShardLimits) {
      self.scheduler = scheduler
      for n in 1...count {
        let group = GroupID(rawValue: UInt64(n))
        shards[group] = (try? TxnShard(limits: limits)) ?? TxnShard()
        indexes[group] = 0
      }
    }

    var nowMillis: UInt64 { baseMillis + scheduler.now.nanoseconds / 1_000_000 }

    func apply(_ command: TxnShardCommand, to group: GroupID) -> TxnShardResponse? {
      guard var shard = shards[group] else { return nil }
      let index = (indexes[group] ?? 0) + 1
      indexes[group] = index
      let answer = shard.apply(command, context: ApplyContext(index: index, timestampMillis: nowMillis))
      shards[group] = shard
      return answer
    }

    func owner(of key: String) -> GroupID {
      var hash: UInt64 = 0xcbf2_9ce4_8422_2325
      for byte in key.utf8 {
        hash ^= UInt64(byte)
        hash = hash &* 0x100_0000_01b3
      }
      return GroupID(rawValue: hash % UInt64(shards.count) + 1)
    }
  }

  struct Lost: Error, CustomStringConvertible {
    var description: String
  }

  /// One client incarnation's way to the groups: delays, losses, and its death after a number of requests.
  final class Channel: TxnShardChannel, @unchecked Sendable {
    // Safety of @unchecked Sendable: only the scheduler's jobs touch it, one at a time.
    let groups: Groups
    let simulation: ShardedTransactionSimulation
    var remaining: Int?
    var dead = false

    init(groups: Groups, simulation: ShardedTransactionSimulation, crashAfter: Int?) {
      self.groups = groups
      self.simulation = simulation
      self.remaining = crashAfter
    }

    func group(for key: String) async throws -> GroupID { groups.owner(of: key) }

    func command(_ command: TxnShardCommand, group: GroupID) async throws -> TxnShardResponse {
      let scheduler = groups.scheduler
      if let count = remaining {
        guard count > 0 else {
          dead = true
          throw Lost(description: "the client crashed")
        }
        remaining = count - 1
      }
      let faults = simulation.faultsOn
      let options = simulation.options
      let (before, after, loseRequest, loseReply) = scheduler.random { rng in
        (
          options.latency.sample(&rng), options.latency.sample(&rng),
          faults && rng.chance(options.lostRequestProbability), faults && rng.chance(options.lostReplyProbability)
        )
      }
      try await scheduler.sleep(for: before)
      if loseRequest { throw Lost(description: "request lost") }
      guard let answer = groups.apply(command, to: group) else { throw Lost(description: "no group \(group)") }
      simulation.trace.record(scheduler.now, "\(group) \(command) -> \(answer)")
      try await scheduler.sleep(for: after)
      if loseReply { throw Lost(description: "answer lost") }
      return answer
    }

    func query(_ query: TxnShardQuery, group: GroupID) async throws -> TxnShardQueryResult {
      let scheduler = groups.scheduler
      try await scheduler.sleep(for: scheduler.random { simulation.options.latency.sample(&$0) })
      guard let shard = groups.shards[group] else { throw Lost(description: "no group \(group)") }
      return shard.query(query)
    }
  }

  /// The run's seed.
  public let seed: UInt64
  /// The run's options.
  public let options: ShardedTransactionSimulationOptions
  /// What the run did.
  public private(set) var stats = ShardedTransactionSimulationStats()

  let trace: SimulationTrace
  private let scheduler: SimulationScheduler
  private let groups: Groups
  private var history = TransactionHistory()
  private var bankReads: [BankObservation] = []
  private var nextValue: [String: Int] = [:]
  private var faultsOn = true
  private var finished = false
  private var failure: SimulationFailure?
  private var clientsDone = 0

  /// Prepares a run; nothing happens until ``run()``.
  public init(seed: UInt64, options: ShardedTransactionSimulationOptions = .init(), trace: SimulationTrace) {
    self.seed = seed
    self.options = options
    self.trace = trace
    self.scheduler = SimulationScheduler(seed: seed)
    var limits = TxnShardLimits()
    limits.idleTimeoutMillis = 500
    limits.transactionHorizonMillis = 30_000
    self.groups = Groups(count: max(1, options.groups), scheduler: scheduler, limits: limits)
  }

  private var keys: [String] {
    (0..<max(1, options.keys)).map { options.workload == .bank ? "acct-\($0)" : "k\($0)" }
  }

  private func clientOptions(_ coordinator: NodeID) -> ShardedTransactionOptions {
    var client = ShardedTransactionOptions(coordinator: coordinator)
    client.maxAttempts = 20
    client.minBackoff = .milliseconds(1)
    client.maxBackoff = .milliseconds(40)
    return client
  }

  /// Runs the workload, then settles everything and checks.
  /// - Throws: ``SimulationFailure`` naming the seed's problem.
  public func run() throws -> ShardedTransactionSimulationStats {
    if options.workload == .bank { openAccounts() }
    for client in 1...max(1, options.clients) {
      scheduler.spawn(on: UInt32(client)) { [self] in await runClient(client) }
    }
    scheduler.spawn(on: 0xFFF0) { [self] in await runResolver() }
    scheduler.spawn(on: 0xFFF1) { [self] in await runClock() }
    let deadline = VirtualTime.zero + .seconds(600) + options.healDeadline
    _ = try scheduler.run(
      until: deadline, stopWhen: { [self] in finished || failure != nil },
      afterEachJob: { [self] in if let failure { throw failure } })
    stats.jobs = scheduler.jobsRun
    stats.endTime = scheduler.now
    if let failure { throw failure }
    guard finished else {
      throw SimulationFailure("seed \(seed): did not finish by \(deadline) (clients done: \(clientsDone))")
    }
    return stats
  }

  private func fail(_ message: String) {
    if failure == nil { failure = SimulationFailure("seed \(seed): \(message)") }
  }

  private func openAccounts() {
    let opening = TxnID(coordinator: 1, sequence: 0, startedAtMillis: groups.nowMillis)
    var byGroup: [GroupID: [TxnWrite]] = [:]
    for key in keys {
      byGroup[groups.owner(of: key), default: []].append(
        TxnWrite(key: key, value: Array(String(options.initialBalance).utf8)))
    }
    for (group, writes) in byGroup.sorted(by: { $0.key < $1.key }) {
      _ = groups.apply(.commitLocal(opening, reads: [], writes: writes), to: group)
    }
  }

  // MARK: - Clients

  private func runClient(_ number: Int) async {
    let coordinator = NodeID(rawValue: UInt64(100 + number))
    let clock = SimulatedClock(scheduler: scheduler, driftPPM: Int64(number) * 7 - 20)
    var client = makeClient(
      coordinator, clock: clock, channel: Channel(groups: groups, simulation: self, crashAfter: nil))
    for _ in 0..<options.transactionsPerClient {
      let crashes = scheduler.random { $0.chance(options.clientCrashProbability) }
      let crashAfter = crashes ? scheduler.random { Int.random(in: 0...10, using: &$0) } : nil
      let channel = Channel(groups: groups, simulation: self, crashAfter: crashAfter)
      if crashes { client = makeClient(coordinator, clock: clock, channel: channel) }
      switch options.workload {
      case .listAppend: await listAppend(client, number)
      case .bank: await bank(client, number)
      }
      if channel.dead {
        stats.crashes += 1
        trace.record(scheduler.now, "client \(number) crashed")
        client = makeClient(
          coordinator, clock: clock, channel: Channel(groups: groups, simulation: self, crashAfter: nil))
      }
      try? await scheduler.sleep(for: .microseconds(UInt64(scheduler.random { Int.random(in: 0...2_000, using: &$0) })))
    }
    clientsDone += 1
    if clientsDone == options.clients { await settle() }
  }

  private func makeClient(_ coordinator: NodeID, clock: SimulatedClock, channel: Channel) -> ShardedTransactions {
    ShardedTransactions(
      channel: channel, options: clientOptions(coordinator), clock: clock,
      seed: seed ^ coordinator.rawValue << 16 ^ scheduler.jobsRun)
  }

  private enum Planned {
    case read(String)
    case append(String, Int)
  }

  private func listAppend(_ client: ShardedTransactions, _ number: Int) async {
    let keys = self.keys
    let drawn: [Planned] = scheduler.random { rng in
      (0..<Int.random(in: 1...4, using: &rng)).map { _ -> Planned in
        let key = keys[Int.random(in: 0..<keys.count, using: &rng)]
        return rng.chance(0.5) ? Planned.read(key) : Planned.append(key, 0)
      }
    }
    var plan: [Planned] = []
    for step in drawn {
      guard case .append(let key, _) = step else {
        plan.append(step)
        continue
      }
      nextValue[key, default: 0] += 1
      plan.append(.append(key, nextValue[key] ?? 0))
    }
    let planned: [ListAppendOperation] = plan.map { step in
      switch step {
      case .read(let key): return .read(key: key, values: nil)
      case .append(let key, let value): return .append(key: key, value: value)
      }
    }
    let id = history.invoke(client: number, operations: planned, at: scheduler.now)
    do {
      let operations = try await client.transaction { tx -> [ListAppendOperation] in
        var done: [ListAppendOperation] = []
        for step in plan {
          switch step {
          case .read(let key):
            done.append(.read(key: key, values: Self.decode(try await tx.get(key))))
          case .append(let key, let value):
            let list = Self.decode(try await tx.get(key))
            tx.put(key, Self.encode(list + [value]))
            done.append(.append(key: key, value: value))
          }
        }
        return done
      }
      history.commit(id, operations: operations, at: scheduler.now)
      stats.committed += 1
      stats.readsChecked += operations.filter { if case .read = $0 { true } else { false } }.count
    } catch ShardedTransactionError.badAnswer(let what) {
      // A reply the protocol does not give: a bug, not an abort (and the commit may have been applied).
      fail("list-append transaction \(id) got an unexpected answer: \(what)")
    } catch ShardedTransactionError.outcomeUnknown {
      history.markUnknown(id)
      stats.unknown += 1
    } catch {
      // Gave up, refused, or failed before any commit went out: the client's commit path turns every lost answer
      // into `outcomeUnknown`, and what else it throws (a crashed client's lost reservation or read, say) comes
      // first. Aborted, so a later commit of one of its attempts shows as a read of an aborted write.
      history.abort(id, at: scheduler.now)
      stats.aborted += 1
    }
  }

  private func bank(_ client: ShardedTransactions, _ number: Int) async {
    let accounts = keys
    let wholeBank = scheduler.random { $0.chance(0.3) }
    do {
      if wholeBank {
        let balances = try await client.transaction { tx -> [String: Int] in
          var balances: [String: Int] = [:]
          for account in accounts { balances[account] = Self.balance(try await tx.get(account)) }
          return balances
        }
        bankReads.append(
          BankObservation(transaction: TransactionID(rawValue: bankReads.count), balances: balances))
        stats.readsChecked += 1
      } else {
        let (from, to, amount) = scheduler.random { rng in
          let from = Int.random(in: 0..<accounts.count, using: &rng)
          let to = (from + Int.random(in: 1..<max(2, accounts.count), using: &rng)) % accounts.count
          return (accounts[from], accounts[to], Int.random(in: 1...20, using: &rng))
        }
        try await client.transaction { tx in
          let a = Self.balance(try await tx.get(from))
          let b = Self.balance(try await tx.get(to))
          tx.put(from, String(a - amount))
          tx.put(to, String(b + amount))
        }
      }
      stats.committed += 1
    } catch ShardedTransactionError.badAnswer(let what) {
      fail("bank transaction got an unexpected answer: \(what)")
    } catch ShardedTransactionError.outcomeUnknown {
      stats.unknown += 1
    } catch {
      stats.aborted += 1
    }
  }

  /// The list stored under a key; an element that does not parse stays in it as -1, a value no client appends,
  /// so the checker sees a read of garbage rather than a shorter, plausible list.
  static func decode(_ bytes: [UInt8]?) -> [Int] {
    guard let bytes, !bytes.isEmpty else { return [] }
    return String(decoding: bytes, as: UTF8.self).split(separator: ",", omittingEmptySubsequences: false).map {
      Int($0) ?? -1
    }
  }

  static func encode(_ list: [Int]) -> [UInt8] { Array(list.map(String.init).joined(separator: ",").utf8) }

  static func balance(_ bytes: [UInt8]?) -> Int { bytes.flatMap { Int(String(decoding: $0, as: UTF8.self)) } ?? 0 }

  // MARK: - Resolver and time

  private func runResolver() async {
    let clock = SimulatedClock(scheduler: scheduler)
    let resolver = ShardedTransactions(
      channel: Channel(groups: groups, simulation: self, crashAfter: nil), options: clientOptions(9_999),
      clock: clock, seed: seed)
    while !finished {
      try? await scheduler.sleep(for: options.resolverInterval)
      if let settled = try? await resolver.resolveInDoubt(
        minimumAgeMillis: options.resolverMinimumAgeMillis, groups: groups.shards.keys.sorted())
      {
        stats.resolved += settled
      }
    }
  }

  /// Writes a time-only entry in each group whose shard has a deadline due, as a leader would.
  private func runClock() async {
    while !finished {
      try? await scheduler.sleep(for: .milliseconds(5))
      for group in groups.shards.keys.sorted() {
        guard let due = groups.shards[group]?.nextDeadlineMillis, due <= groups.nowMillis else { continue }
        _ = groups.apply(.advanceTime, to: group)
      }
    }
  }

  // MARK: - The end

  private func settle() async {
    faultsOn = false
    trace.record(scheduler.now, "clients done; healing")
    let resolver = ShardedTransactions(
      channel: Channel(groups: groups, simulation: self, crashAfter: nil), options: clientOptions(9_998),
      clock: SimulatedClock(scheduler: scheduler), seed: seed)
    let healBy = scheduler.now + options.healDeadline
    while scheduler.now < healBy {
      stats.resolved +=
        (try? await resolver.resolveInDoubt(minimumAgeMillis: 0, groups: groups.shards.keys.sorted())) ?? 0
      if groups.shards.values.allSatisfy(\.isQuiet) { break }
      try? await scheduler.sleep(for: .milliseconds(50))
    }
    let loud = groups.shards.sorted(by: { $0.key < $1.key }).filter { !$0.value.isQuiet }
    guard loud.isEmpty else {
      fail(
        "still busy \(options.healDeadline) after healing: "
          + "\(loud.map { "\($0.key): \($0.value.query(.counts)), unfinished: \($0.value.unfinishedRecords)" })")
      return
    }
    await finalRead(resolver)
    check()
    finished = true
  }

  private func finalRead(_ client: ShardedTransactions) async {
    let keys = self.keys
    do {
      let values = try await client.transaction { tx -> [String: [UInt8]?] in
        var values: [String: [UInt8]?] = [:]
        for key in keys { values[key] = try await tx.get(key) }
        return values
      }
      switch options.workload {
      case .listAppend:
        let reads = keys.map { ListAppendOperation.read(key: $0, values: Self.decode(values[$0] ?? nil)) }
        history.append(
          client: 0, invokedAt: scheduler.now.nanoseconds, completedAt: scheduler.now.nanoseconds,
          outcome: .committed, operations: reads)
      case .bank:
        var balances: [String: Int] = [:]
        for key in keys { balances[key] = Self.balance(values[key] ?? nil) }
        bankReads.append(BankObservation(transaction: TransactionID(rawValue: bankReads.count), balances: balances))
      }
    } catch {
      fail("the final read failed: \(error)")
    }
  }

  private func check() {
    for (group, shard) in groups.shards.sorted(by: { $0.key < $1.key }) {
      guard case .counts(let counts) = shard.query(.counts) else { continue }
      if counts.prepared > 0 || counts.lockedKeys > 0 || counts.active > 0 {
        fail("\(group) still holds \(counts) after settling")
      }
      guard case .records(.counts(let records)) = shard.query(.records(.counts)) else { continue }
      if records.undecided > 0 { fail("\(group) has \(records.undecided) undecided records") }
    }
    switch options.workload {
    case .listAppend:
      let result = history.checkStrictSerializable()
      if !result.isValid { fail("not strictly serializable: \(result)") }
    case .bank:
      let accounts = Set(keys)
      let result = BankHistoryChecker(expectedTotal: options.initialBalance * accounts.count, accounts: accounts)
        .check(bankReads)
      if !result.isValid { fail("bank: \(result)") }
    }
  }
}

extension TxnShard {
  /// Nothing in progress: no transaction active or prepared, no lock held, no record undecided or left
  /// unfinished by its coordinator.
  var isQuiet: Bool {
    guard case .counts(let counts) = query(.counts), counts.active == 0, counts.prepared == 0,
      counts.lockedKeys == 0
    else { return false }
    guard case .records(.counts(let records)) = query(.records(.counts)), records.undecided == 0 else { return false }
    return unfinishedRecords.isEmpty
  }

  /// The commit records of sharded transactions that their coordinator has not finished (a few of them).
  var unfinishedRecords: [TransactionRecordSummary] {
    guard case .records(.records(let unfinished, _)) = query(.records(.unfinished(minimumAgeMillis: 0, limit: 4)))
    else { return [] }
    return unfinished
  }
}
