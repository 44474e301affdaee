import QuorumCore
import Synchronization
import Testing

@testable import QuorumTransactions

/// A clock that stands still and never waits: the client's transaction starts and pauses in these tests.
struct FrozenClock: NodeClock {
  var wallMillis: UInt64 = 1_000_000

  func monotonicNanos() -> UInt64 { 0 }
  func wallClockMillis() -> UInt64 { wallMillis }
  func sleep(untilNanos deadline: UInt64) async throws {}
}

/// A clock that never waits and moves only when told: the client's transaction starts in these tests.
final class MovableClock: NodeClock {
  private let millis = Atomic<UInt64>(1_000_000)

  func advance(byMillis delta: UInt64) { millis.add(delta, ordering: .relaxed) }
  func monotonicNanos() -> UInt64 { 0 }
  func wallClockMillis() -> UInt64 { millis.load(ordering: .relaxed) }
  func sleep(untilNanos deadline: UInt64) async throws {}
}

/// Shards in memory behind a ``TxnShardChannel``: `a…` keys live in group 1, `b…` keys in group 2, records and
/// numbers in group 1. `losesRequest` decides which commands are lost before they are applied, `losesAnswer` which
/// are applied but answered with an error, `rejects` which are turned away before the log (``TxnShardRejection``).
final class InMemoryShards: TxnShardChannel {
  struct Lost: Error {}

  private struct State {
    var shards: [GroupID: TxnShard]
    var index: UInt64 = 0
    var millis: UInt64
  }

  private let state: Mutex<State>
  private let losesRequest: @Sendable (TxnShardCommand, GroupID) -> Bool
  private let losesAnswer: @Sendable (TxnShardCommand, GroupID) -> Bool
  private let garblesAnswer: @Sendable (TxnShardCommand, GroupID) -> Bool
  private let rejects: @Sendable (TxnShardCommand, GroupID) -> Bool
  private let places: @Sendable (String) -> GroupID?
  /// How many commands reached the channel, rejected or not.
  let commandsSent = Atomic<Int>(0)

  init(
    startMillis: UInt64 = 1_000_000,
    losesRequest: @escaping @Sendable (TxnShardCommand, GroupID) -> Bool = { _, _ in false },
    losesAnswer: @escaping @Sendable (TxnShardCommand, GroupID) -> Bool = { _, _ in false },
    garblesAnswer: @escaping @Sendable (TxnShardCommand, GroupID) -> Bool = { _, _ in false },
    rejects: @escaping @Sendable (TxnShardCommand, GroupID) -> Bool = { _, _ in false },
    places: @escaping @Sendable (String) -> GroupID? = { _ in nil }
  ) {
    // The shards' time is a wall clock here (the client's frozen one, and onwards).
    var shard = TxnShard()
    shard.refusesStartsAhead = true
    state = Mutex(State(shards: [1: shard, 2: shard], millis: startMillis))
    self.losesRequest = losesRequest
    self.losesAnswer = losesAnswer
    self.garblesAnswer = garblesAnswer
    self.rejects = rejects
    self.places = places
  }

  func group(for key: String) async throws -> GroupID { places(key) ?? (key.hasPrefix("b") ? 2 : 1) }

  func command(_ command: TxnShardCommand, group: GroupID) async throws -> TxnShardResponse {
    commandsSent.add(1, ordering: .relaxed)
    guard !rejects(command, group) else { throw TxnShardRejection("command too large") }
    guard !losesRequest(command, group) else { throw Lost() }
    let answer = state.withLock { s -> TxnShardResponse? in
      s.index += 1
      s.millis += 1
      return s.shards[group]?.apply(command, context: ApplyContext(index: s.index, timestampMillis: s.millis))
    }
    guard let answer, !losesAnswer(command, group) else { throw Lost() }
    // An answer of the wrong kind for the command (as a confused server might give).
    if garblesAnswer(command, group) { return .value(nil) }
    return answer
  }

  func query(_ query: TxnShardQuery, group: GroupID) async throws -> TxnShardQueryResult {
    guard let result = state.withLock({ $0.shards[group]?.query(query) }) else { throw Lost() }
    return result
  }

  /// Moves every shard's log time forward by `millis` with a time-only entry.
  func advance(byMillis millis: UInt64) {
    state.withLock { s in
      s.millis += millis
      for group in s.shards.keys.sorted() {
        s.index += 1
        s.shards[group]?.advanceTime(context: ApplyContext(index: s.index, timestampMillis: s.millis))
      }
    }
  }

  func records(in group: GroupID) -> Int { state.withLock { $0.shards[group]?.records.count ?? 0 } }

  /// Ended transactions the shards remember, in all.
  var endedCount: Int { state.withLock { $0.shards.values.reduce(0) { $0 + $1.ended.count } } }

  func value(of key: String) -> String? {
    state.withLock { s in s.shards[key.hasPrefix("b") ? 2 : 1]?.value(of: key) }.map {
      String(decoding: $0, as: UTF8.self)
    }
  }
}

@Suite("ShardedTransactions: the client coordinator over shards in memory")
struct ShardedTransactionsTests {
  func client(_ channel: InMemoryShards, coordinator: NodeID = 7) -> ShardedTransactions {
    var options = ShardedTransactionOptions(coordinator: coordinator)
    options.commandRetries = 1
    options.maxAttempts = 1
    return ShardedTransactions(channel: channel, options: options, clock: FrozenClock())
  }

  /// A read of coordinator 7's transaction, in any group.
  static func isReadOfCoordinator7(_ command: TxnShardCommand, _ group: GroupID) -> Bool {
    if case .read(let id, _) = command, id.coordinator == 7 { return true }
    return false
  }

  @Test("an attempt whose read failed does not commit, even when the body swallowed the error and wrote on")
  func aSwallowedReadFailureEndsTheAttempt() async throws {
    let channel = InMemoryShards(losesRequest: Self.isReadOfCoordinator7)
    try await client(channel, coordinator: 6).transaction { tx in tx.put("a1", "x") }
    let db = client(channel)
    await #expect(throws: ShardedTransactionError.self) {
      try await db.transaction { tx in
        // No lock was taken on a1: a writer may change it before this commits.
        let seen = (try? await tx.getString("a1")) ?? "nothing"
        tx.put("a1", seen + "+1")
      }
    }
    #expect(channel.value(of: "a1") == "x", "the write made on a failed read was not committed")
  }

  /// A command turned away before the log (too large for it, say) is certainly not applied and would be turned
  /// away again: neither an unknown outcome nor a conflict to run again.
  @Test("a command a group rejects ends the transaction at once with a typed error, not as an answer lost")
  func rejectedCommandsAreNotLosses() async throws {
    var options = ShardedTransactionOptions(coordinator: 7)
    options.commandRetries = 5
    options.maxAttempts = 10
    let isCommit: @Sendable (TxnShardCommand, GroupID) -> Bool = { command, _ in
      switch command {
      case .commitLocal: true
      case .prepare(_, let writes, _, _): !writes.isEmpty
      default: false
      }
    }
    let channel = InMemoryShards(rejects: isCommit)
    let db = ShardedTransactions(channel: channel, options: options, clock: FrozenClock())
    let runs = Atomic<Int>(0)
    await #expect(throws: ShardedTransactionError.rejected("g1: command too large")) {
      try await db.transaction { tx in
        runs.add(1, ordering: .relaxed)
        tx.put("a1", "big")
      }
    }
    #expect(runs.load(ordering: .relaxed) == 1, "not run again")
    #expect(channel.commandsSent.load(ordering: .relaxed) == 2, "a reservation, one commit: not retried")
    await #expect(throws: ShardedTransactionError.rejected("g2: command too large")) {
      try await db.transaction { tx in
        runs.add(1, ordering: .relaxed)
        tx.put("b1", "big")
        _ = try await tx.get("a1")
      }
    }
    #expect(runs.load(ordering: .relaxed) == 2, "a rejected prepare is no conflict: not run again")
    #expect(channel.value(of: "a1") == nil && channel.value(of: "b1") == nil)
    try await db.transaction { tx in
      _ = try await tx.get("a1")
      _ = try await tx.get("b1")
    }  // the rejected transaction's read lock on a1 was released
  }

  /// A one-group commit leaves no record: with its answers lost, only an abort in its group (which the group's log
  /// orders after every attempt) makes the outcome final, and fences an attempt still on its way.
  @Test("a one-group commit whose answers are all lost is settled in its group: committed if an attempt applied")
  func lostOneGroupCommitIsSettled() async throws {
    let applied = InMemoryShards(losesAnswer: { command, _ in
      if case .commitLocal = command { true } else { false }
    })
    try await client(applied).transaction { tx in tx.put("a1", "x") }
    #expect(applied.value(of: "a1") == "x")

    let first = Mutex<TxnID?>(nil)
    let lost = InMemoryShards(losesRequest: { command, _ in
      if case .commitLocal(let id, _, _) = command { return first.withLock { $0 == id } }
      return false
    })
    var options = ShardedTransactionOptions(coordinator: 7)
    options.commandRetries = 1
    options.maxAttempts = 2
    let db = ShardedTransactions(channel: lost, options: options, clock: FrozenClock())
    let runs = Atomic<Int>(0)
    try await db.transaction { tx in
      let run = runs.add(1, ordering: .relaxed).newValue
      if run == 1 { first.withLock { $0 = tx.id } }
      tx.put("a1", "run \(run)")
    }
    #expect(runs.load(ordering: .relaxed) == 2, "the first attempt, settled as aborted, ran again")
    let id = try #require(first.withLock { $0 })
    #expect(try await db.outcome(of: id, groups: [1]) == .aborted)
    first.withLock { $0 = nil }
    let late = TxnShardCommand.commitLocal(id, reads: [], writes: [TxnWrite(key: "a1", value: Array("run 1".utf8))])
    #expect(try await lost.command(late, group: 1) == .aborted, "a late copy of the first attempt cannot commit")
    #expect(lost.value(of: "a1") == "run 2")
  }

  /// The group answers an abort `aborted` even when it records nothing, as for a transaction past its horizon: a
  /// commit it applied and forgot since cannot be told from one that never came. Settling must then not run the
  /// body again.
  @Test("a one-group commit whose group forgot it before the settling abort is reported unknown, not run again")
  func forgottenOneGroupCommitIsNotRunAgain() async throws {
    let clock = MovableClock()
    let shards = Mutex<InMemoryShards?>(nil)
    let moved = Atomic<Bool>(false)
    let channel = InMemoryShards(
      losesRequest: { command, _ in
        // The client is cut off past the horizon before its abort lands: the group forgets the commit meanwhile.
        if case .abort = command, !moved.exchange(true, ordering: .relaxed) {
          clock.advance(byMillis: 31_000)
          shards.withLock { $0 }?.advance(byMillis: 31_000)
        }
        return false
      },
      losesAnswer: { command, _ in
        if case .commitLocal = command { true } else { false }
      })
    shards.withLock { $0 = channel }
    var options = ShardedTransactionOptions(coordinator: 7)
    options.commandRetries = 1
    options.maxAttempts = 2
    let db = ShardedTransactions(channel: channel, options: options, clock: clock)
    let runs = Atomic<Int>(0)
    await #expect(throws: ShardedTransactionError.self) {
      try await db.transaction { tx in
        let count = Int(try await tx.getString("a1") ?? "0") ?? 0
        runs.add(1, ordering: .relaxed)
        tx.put("a1", String(count + 1))
      }
    }
    #expect(channel.value(of: "a1") == "1", "applied once")
    #expect(runs.load(ordering: .relaxed) == 1, "the body did not run again")
    shards.withLock { $0 = nil }
  }

  /// The resolver settles the oldest first: one whose record group is down must not keep the others' locks held.
  @Test("a transaction whose record group does not answer does not hold up the settling of the others")
  func resolverGoesOnPastAnUnreachableRecordGroup() async throws {
    let first = Mutex<TxnID?>(nil)
    let clientAlive = Mutex(true)
    // The first transaction's record lives in group 1, the others' in group 2.
    let channel = InMemoryShards(
      losesRequest: { command, group in
        // The client dies before deciding; then group 1 stops answering record commands.
        guard case .records(.decide) = command else { return false }
        return clientAlive.withLock { $0 } || group == 1
      },
      places: { key in
        guard key.hasPrefix("txn-record/") else { return nil }
        return first.withLock { $0.map { TxnShardService.recordKey(for: $0) == key } ?? true } ? 1 : 2
      })
    let db = client(channel)
    for n in 1...2 {
      await #expect(throws: ShardedTransactionError.self) {
        try await db.transaction { tx in
          if n == 1 { first.withLock { $0 = tx.id } }
          tx.put("a\(n)", "x")
          tx.put("b\(n)", "x")
        }
      }
    }
    clientAlive.withLock { $0 = false }
    let resolver = client(channel, coordinator: 8)
    #expect(try await resolver.resolveInDoubt(minimumAgeMillis: 0, groups: [1, 2]) == 1, "the second is settled")
    try await client(channel, coordinator: 9).transaction { tx in
      tx.put("a2", "y")
      tx.put("b2", "y")
    }  // its locks are free
    #expect(channel.value(of: "a2") == "y")
  }

  /// Each decision sent to a group that does not answer waits out every retry (seconds each, over hosts): a pass
  /// over many transactions prepared with a dead group would take minutes, holding the others' locks meanwhile.
  @Test("a resolver pass sends no more decisions to a participant group that did not answer one")
  func resolverSkipsASilentParticipant() async throws {
    let clientAlive = Mutex(true)
    let groupTwoDown = Mutex(false)
    let sentToDownGroup = Atomic<Int>(0)
    let channel = InMemoryShards(losesRequest: { command, group in
      if case .records(.decide) = command, clientAlive.withLock({ $0 }) { return true }  // the client dies
      guard group == 2, groupTwoDown.withLock({ $0 }) else { return false }
      sentToDownGroup.add(1, ordering: .relaxed)
      return true
    })
    let db = client(channel)
    for n in 1...3 {
      await #expect(throws: ShardedTransactionError.self) {
        try await db.transaction { tx in
          tx.put("a\(n)", "x")
          tx.put("b\(n)", "x")
        }
      }
    }
    clientAlive.withLock { $0 = false }
    groupTwoDown.withLock { $0 = true }
    let resolver = client(channel, coordinator: 8)  // one retry: two sends per decision
    #expect(try await resolver.resolveInDoubt(minimumAgeMillis: 0, groups: [1]) == 0, "none applied everywhere")
    #expect(sentToDownGroup.load(ordering: .relaxed) == 2, "only the first decision went to the silent group")
    // Every abort is recorded, and group 1's locks are free.
    try await client(channel, coordinator: 9).transaction { tx in
      for n in 1...3 { tx.put("a\(n)", "y") }
    }
    // Back, group 2's own resolver applies the recorded decisions.
    groupTwoDown.withLock { $0 = false }
    #expect(try await resolver.resolveInDoubt(minimumAgeMillis: 0, groups: [2]) == 3)
  }

  /// A record per read-only transaction would fill the record table for nothing: it decides nothing any group waits on.
  @Test("a read-only transaction across groups commits without a decision record, and releases its locks")
  func readOnlyAcrossGroupsRecordsNothing() async throws {
    let channel = InMemoryShards()
    let db = client(channel)
    try await db.transaction { tx in
      tx.put("a1", "x")
      tx.put("b1", "y")
    }
    #expect(channel.records(in: 1) == 1)
    let seen = try await db.transaction { tx in
      [try await tx.getString("a1"), try await tx.getString("b1")]
    }
    #expect(seen == ["x", "y"])
    #expect(channel.records(in: 1) == 1, "no record for the read-only one")
    try await client(channel, coordinator: 9).transaction { tx in
      tx.put("a1", "x2")
      tx.put("b1", "y2")
    }  // the reader's locks are free
    #expect(channel.value(of: "b1") == "y2")
  }

  /// A full record table refuses at once; running the body ten more times only loads it further.
  @Test("a decision the record table refuses for good (full) ends the transaction with a typed error, not a conflict")
  func fullRecordTableIsTyped() async throws {
    let channel = RefusingRecords(refusal: .tooManyRecords(limit: 100_000))
    var options = ShardedTransactionOptions(coordinator: 7)
    options.maxAttempts = 10
    let db = ShardedTransactions(channel: channel, options: options, clock: FrozenClock())
    let runs = Atomic<Int>(0)
    await #expect(throws: ShardedTransactionError.recordRefused(.tooManyRecords(limit: 100_000))) {
      try await db.transaction { tx in
        runs.add(1, ordering: .relaxed)
        tx.put("a1", "x")
        tx.put("b1", "y")
      }
    }
    #expect(runs.load(ordering: .relaxed) == 1)
    #expect(channel.shards.value(of: "a1") == nil && channel.shards.value(of: "b1") == nil)
    let unused = try await channel.query(.inDoubt(minimumAgeMillis: 0, limit: 4), group: 2)
    #expect(unused == .inDoubt([], hasMore: false), "aborted in the groups it prepared")
  }

  @Test("an abandoned attempt aborts where its read went unanswered: the lock the read took there is released")
  func anUnansweredReadsLockIsReleased() async throws {
    let channel = InMemoryShards(losesAnswer: Self.isReadOfCoordinator7)
    try await client(channel, coordinator: 6).transaction { tx in tx.put("a1", "x") }
    await #expect(throws: ShardedTransactionError.self) {
      try await client(channel).transaction { tx in _ = try await tx.get("a1") }
    }
    // The read was applied and took a shared lock; without the abort a writer would conflict until the idle
    // timeout.
    try await client(channel, coordinator: 8).transaction { tx in tx.put("a1", "y") }
    #expect(channel.value(of: "a1") == "y")
  }

  @Test("a client whose clock runs far ahead is refused with a typed error, and the shards remember nothing of it")
  func aClientClockFarAheadIsRefused() async throws {
    let channel = InMemoryShards()
    var options = ShardedTransactionOptions(coordinator: 7)
    options.maxAttempts = 3
    let hoursAhead = ShardedTransactions(
      channel: channel, options: options, clock: FrozenClock(wallMillis: 1_000_000 + 10 * 3_600_000))
    let error = await #expect(throws: ShardedTransactionError.self) {
      try await hoursAhead.transaction { tx in
        _ = try await tx.get("a1")
        tx.put("b1", "x")
      }
    }
    guard case .refused(.startsAhead) = error else {
      Issue.record("expected a refusal naming the clock, got \(String(describing: error))")
      return
    }
    #expect(channel.endedCount == 0, "nothing future-dated is remembered to crowd out others")
  }

  @Test("a commit recorded but unanswered is not aborted in the groups it read: every group commits")
  func unknownOutcomeKeepsPreparedGroups() async throws {
    try await recordedCommitReachesEveryGroup(
      InMemoryShards(losesAnswer: { command, _ in Self.isTransfersDecision(command) }))
  }

  @Test("a commit recorded but answered with something unexpected is not aborted either: every group commits")
  func unexpectedDecisionAnswerKeepsPreparedGroups() async throws {
    try await recordedCommitReachesEveryGroup(
      InMemoryShards(garblesAnswer: { command, _ in Self.isTransfersDecision(command) }))
  }

  /// The commit decision of coordinator 7's transaction.
  static func isTransfersDecision(_ command: TxnShardCommand) -> Bool {
    if case .records(.decide(let id, .commit, _, _, _)) = command, id.coordinator == 7 { return true }
    return false
  }

  /// Coordinator 7 moves alice's 10 to bob across the two groups, through `channel`, which spoils the answer to
  /// its commit decision: the call fails, the record holds the commit, and once a resolver has run both groups
  /// hold it (aborting the groups that read would have lost the update or half the transfer).
  func recordedCommitReachesEveryGroup(_ channel: InMemoryShards) async throws {
    let setup = client(channel, coordinator: 6)
    try await setup.transaction { tx in
      tx.put("alice", "10")
      tx.put("bob", "0")
    }
    let db = client(channel)
    let moved = Mutex<TxnID?>(nil)
    await #expect(throws: ShardedTransactionError.self) {
      try await db.transaction { tx in
        moved.withLock { $0 = tx.id }
        let alice = try await tx.getString("alice") ?? "?"
        let bob = try await tx.getString("bob") ?? "?"
        tx.put("alice", "0")
        tx.put("bob", String((Int(bob) ?? 0) + (Int(alice) ?? 0)))
      }
    }
    let id = try #require(moved.withLock { $0 })
    // The commit is recorded: whoever asks is told committed, so every group must end up committing it.
    #expect(try await db.outcome(of: id, groups: [1, 2]) == .committed)
    let resolver = client(channel, coordinator: 8)
    _ = try await resolver.resolveInDoubt(minimumAgeMillis: 0, groups: [1, 2])
    #expect(channel.value(of: "alice") == "0")
    #expect(channel.value(of: "bob") == "10")
  }

  @Test("a commit whose phase-2 answer was lost still has its record finished, and forgotten in time")
  func lostPhase2AnswerLeavesNoRecordForever() async throws {
    let channel = InMemoryShards(losesAnswer: { command, group in
      if case .commit(let id) = command, id.coordinator == 7, group == 2 { return true }
      return false
    })
    let db = client(channel)
    let id = try await db.transaction { tx in
      tx.put("alice", "1")
      tx.put("bob", "1")
      return tx.id
    }
    #expect(channel.value(of: "alice") == "1" && channel.value(of: "bob") == "1")
    #expect(try await db.outcome(of: id) == .committed)
    // Nothing is prepared anywhere: the servers' resolver runs all the same, once the record is old enough (in the
    // shard's time: the record table's own moves only with record commands).
    let resolver = client(channel, coordinator: 8)
    _ = try await resolver.resolveInDoubt(minimumAgeMillis: 5_000, groups: [1, 2])
    #expect(channel.records(in: 1) == 1, "too young: its coordinator may still be finishing it")
    channel.advance(byMillis: 10_000)
    _ = try await resolver.resolveInDoubt(minimumAgeMillis: 5_000, groups: [1, 2])
    channel.advance(byMillis: 3_600_000)
    #expect(channel.records(in: 1) == 0, "a commit record pending on its coordinator is never forgotten")
  }

  @Test("a commit record is not finished while a group still holds the transaction prepared")
  func unfinishedRecordKeptWhilePrepared() async throws {
    let cut = Mutex(true)
    let channel = InMemoryShards(losesRequest: { command, group in
      if case .commit = command, group == 2 { return cut.withLock { $0 } }
      return false
    })
    let db = client(channel)
    _ = try await db.transaction { tx in
      tx.put("alice", "1")
      tx.put("bob", "1")
    }
    #expect(channel.value(of: "bob") == nil, "group 2 is still prepared")
    let resolver = client(channel, coordinator: 8)
    _ = try await resolver.resolveInDoubt(minimumAgeMillis: 0, groups: [1])
    channel.advance(byMillis: 3_600_000)
    #expect(channel.records(in: 1) == 1, "forgotten, the commit record could no longer win over a late abort")
    cut.withLock { $0 = false }
    _ = try await resolver.resolveInDoubt(minimumAgeMillis: 0, groups: [2])
    #expect(channel.value(of: "bob") == "1")
    channel.advance(byMillis: 3_600_000)
    #expect(channel.records(in: 1) == 0)
  }
}

/// Shards in memory whose first one-shot commit (or commit decision) is lost before it is applied and whose
/// second is answered with a refusal, as a copy overtaken by its retry would leave it: the first may still land.
final class OvertakenShards: TxnShardChannel {
  let shards = InMemoryShards()
  let calls = Mutex(0)
  let refusal: TxnShardResponse
  let isTarget: @Sendable (TxnShardCommand) -> Bool

  init(refusal: TxnShardResponse, isTarget: @escaping @Sendable (TxnShardCommand) -> Bool) {
    self.refusal = refusal
    self.isTarget = isTarget
  }

  func group(for key: String) async throws -> GroupID { try await shards.group(for: key) }

  func command(_ command: TxnShardCommand, group: GroupID) async throws -> TxnShardResponse {
    if isTarget(command) {
      let call = calls.withLock { n -> Int in
        n += 1
        return n
      }
      if call == 1 { throw InMemoryShards.Lost() }
      if call == 2 { return refusal }
    }
    return try await shards.command(command, group: group)
  }

  func query(_ query: TxnShardQuery, group: GroupID) async throws -> TxnShardQueryResult {
    try await shards.query(query, group: group)
  }
}

/// Shards in memory whose record table refuses every commit decision with `refusal`.
final class RefusingRecords: TxnShardChannel {
  let shards = InMemoryShards()
  let refusal: TransactionRecordError

  init(refusal: TransactionRecordError) { self.refusal = refusal }

  func group(for key: String) async throws -> GroupID { try await shards.group(for: key) }

  func command(_ command: TxnShardCommand, group: GroupID) async throws -> TxnShardResponse {
    if case .records(.decide(_, .commit, _, _, _)) = command { return .record(.refused(refusal)) }
    return try await shards.command(command, group: group)
  }

  func query(_ query: TxnShardQuery, group: GroupID) async throws -> TxnShardQueryResult {
    try await shards.query(query, group: group)
  }
}

@Suite("ShardedTransactions: a refusal that follows an unanswered attempt")
struct OvertakenAttemptTests {
  func client(_ channel: OvertakenShards) -> ShardedTransactions {
    var options = ShardedTransactionOptions(coordinator: 7)
    options.commandRetries = 1
    options.maxAttempts = 1
    return ShardedTransactions(channel: channel, options: options, clock: FrozenClock())
  }

  @Test("a one-shot commit refused after a lost attempt is settled by an abort in its group, which fences the lost one")
  func oneShotCommit() async throws {
    let channel = OvertakenShards(refusal: .aborted) { if case .commitLocal = $0 { true } else { false } }
    let attempt = Mutex<TxnID?>(nil)
    await #expect(throws: ShardedTransactionError.self) {
      try await client(channel).transaction { tx in
        attempt.withLock { $0 = tx.id }
        tx.put("a", "1")
      }
    }
    let id = try #require(attempt.withLock { $0 })
    // The lost attempt arrives late: the group's log has the abort first.
    #expect(
      try await channel.shards.command(.commitLocal(id, reads: [], writes: [TxnWrite(key: "a", value: [1])]), group: 1)
        == .aborted)
    #expect(channel.shards.value(of: "a") == nil)
    #expect(try await client(channel).outcome(of: id, groups: [1]) == .aborted)
  }

  @Test("a commit decision refused after a lost attempt leaves the prepared groups to the resolver")
  func decision() async throws {
    let channel = OvertakenShards(refusal: .record(.refused(.tooManyRecords(limit: 1)))) {
      if case .records(.decide(_, .commit, _, _, _)) = $0 { true } else { false }
    }
    do {
      try await client(channel).transaction { tx in
        tx.put("a", "1")
        tx.put("b", "1")
      }
      Issue.record("the transaction succeeded")
    } catch ShardedTransactionError.outcomeUnknown {
    } catch {
      Issue.record("expected outcomeUnknown, got \(error)")
    }
    // Both groups still hold it prepared: not aborted by the client.
    for group: GroupID in [1, 2] {
      guard
        case .inDoubt(let doubtful, _) = try await channel.query(.inDoubt(minimumAgeMillis: 0, limit: 4), group: group)
      else {
        Issue.record("no in-doubt page")
        continue
      }
      #expect(doubtful.count == 1, "group \(group)")
    }
  }
}

/// Shards whose record group refuses the first `lagging` decisions as starting ahead of its time, as a new group does
/// until its leader's first clock entry.
final class LaggingRecords: TxnShardChannel {
  let shards = InMemoryShards()
  let lagging: Int
  let decisions = Atomic<Int>(0)

  init(lagging: Int) { self.lagging = lagging }

  func group(for key: String) async throws -> GroupID { try await shards.group(for: key) }

  func command(_ command: TxnShardCommand, group: GroupID) async throws -> TxnShardResponse {
    if case .records(.decide(let id, .commit, _, _, _)) = command,
      decisions.add(1, ordering: .relaxed).newValue <= lagging
    {
      return .record(.refused(.clockAhead(startedAtMillis: id.startedAtMillis, logTimeMillis: 500)))
    }
    return try await shards.command(command, group: group)
  }

  func query(_ query: TxnShardQuery, group: GroupID) async throws -> TxnShardQueryResult {
    try await shards.query(query, group: group)
  }
}

@Suite("ShardedTransactions: a record group whose time lags (before its leader's first clock entry)")
struct LaggingRecordGroupTests {
  func client(_ channel: LaggingRecords, clockRetries: Int = 50) -> ShardedTransactions {
    var options = ShardedTransactionOptions(coordinator: 7)
    options.clockRetries = clockRetries
    return ShardedTransactions(channel: channel, options: options, clock: FrozenClock())
  }

  @Test("the decision is sent again until the group's time catches up; the body runs once")
  func decisionWaitsForTheClock() async throws {
    let channel = LaggingRecords(lagging: 5)
    let runs = Atomic<Int>(0)
    try await client(channel).transaction { tx in
      runs.add(1, ordering: .relaxed)
      tx.put("a1", "x")
      tx.put("b1", "y")
    }
    #expect(runs.load(ordering: .relaxed) == 1, "not run again for a clock that lags")
    #expect(channel.decisions.load(ordering: .relaxed) == 6)
    #expect(channel.shards.value(of: "a1") == "x" && channel.shards.value(of: "b1") == "y")
  }

  @Test("a group whose time stays behind through every retry ends the transaction with a typed refusal")
  func boundedRetries() async throws {
    let channel = LaggingRecords(lagging: .max)
    let runs = Atomic<Int>(0)
    let error = await #expect(throws: ShardedTransactionError.self) {
      try await client(channel, clockRetries: 3).transaction { tx in
        runs.add(1, ordering: .relaxed)
        tx.put("a1", "x")
        tx.put("b1", "y")
      }
    }
    guard case .recordRefused(.clockAhead)? = error else {
      Issue.record("expected recordRefused(clockAhead), got \(String(describing: error))")
      return
    }
    #expect(runs.load(ordering: .relaxed) == 1)
    #expect(channel.decisions.load(ordering: .relaxed) == 4)
    let left = try await channel.query(.inDoubt(minimumAgeMillis: 0, limit: 4), group: 2)
    #expect(left == .inDoubt([], hasMore: false), "aborted in the groups it prepared")
  }
}

@Suite("ShardedTransactions: the shards' limits are checked before sending")
struct ShardLimitsOnTheClientTests {
  /// A value a shard refuses (over 1 MiB) fails at once with the shard's own typed refusal, nothing sent for it.
  @Test("a write the shard would refuse fails before it is sent, with the shard's typed refusal")
  func refusedWriteIsNotSent() async throws {
    let channel = InMemoryShards()
    let db = ShardedTransactions(
      channel: channel, options: ShardedTransactionOptions(coordinator: 7), clock: FrozenClock())
    let big = [UInt8](repeating: 1, count: (1 << 20) + 1)
    await #expect(throws: ShardedTransactionError.refused(.valueTooLarge(bytes: big.count, limit: 1 << 20))) {
      try await db.transaction { tx in tx.put("a1", big) }
    }
    #expect(channel.commandsSent.load(ordering: .relaxed) == 1, "only the reservation of numbers")
    let long = String(repeating: "k", count: 1_025)
    await #expect(throws: ShardedTransactionError.refused(.invalidKey(bytes: 1_025, limit: 1_024))) {
      try await db.transaction { tx in _ = try await tx.get(long) }
    }
    #expect(channel.commandsSent.load(ordering: .relaxed) == 1)
  }

  @Test("a commit over the groups' command size fails before it is sent, one group or several")
  func commandOverTheLimitIsNotSent() async throws {
    let channel = InMemoryShards()
    var options = ShardedTransactionOptions(coordinator: 7)
    options.maxCommandBytes = 64 << 10
    options.shardLimits.maxValueBytes = 32 << 10
    let db = ShardedTransactions(channel: channel, options: options, clock: FrozenClock())
    let value = [UInt8](repeating: 2, count: 30 << 10)
    let error = await #expect(throws: ShardedTransactionError.self) {
      try await db.transaction { tx in for i in 0..<4 { tx.put("a\(i)", value) } }
    }
    guard case .commandTooLarge(group: 1, let bytes, limit: 64 << 10)? = error else {
      Issue.record("expected commandTooLarge for group 1, got \(String(describing: error))")
      return
    }
    #expect(bytes > 120 << 10)
    await #expect(throws: ShardedTransactionError.self) {
      try await db.transaction { tx in
        tx.put("b1", "x")
        for i in 0..<4 { tx.put("a\(i)", value) }
      }
    }
    #expect(channel.commandsSent.load(ordering: .relaxed) == 1, "only the reservation of numbers")
    #expect(channel.value(of: "b1") == nil)
    try await db.transaction { tx in tx.put("a1", value) }
    #expect(channel.value(of: "a1") != nil, "one value fits")
  }

  @Test("limits a command cannot carry are a configuration error, not a refusal after a round trip")
  func inconsistentLimitsAreAConfigurationError() async throws {
    var options = ShardedTransactionOptions(coordinator: 7)
    options.maxCommandBytes = 1 << 20  // the shards' default values are up to 1 MiB
    #expect(throws: ConfigurationError.self) { try options.validate() }
    let channel = InMemoryShards()
    let db = ShardedTransactions(channel: channel, options: options, clock: FrozenClock())
    await #expect(throws: ConfigurationError.self) { try await db.transaction { tx in tx.put("a1", "x") } }
    #expect(channel.commandsSent.load(ordering: .relaxed) == 0)
    #expect(throws: ConfigurationError.self) { try TxnShardLimits().validate(maxCommandBytes: 1 << 20) }
    #expect(throws: Never.self) { try TxnShardLimits().validate(maxCommandBytes: 4 << 20) }
  }

  @Test("clock retries and their pause are validated: negative, zero or absurd values are a configuration error")
  func clockRetrySettingsAreValidated() async throws {
    let base = ShardedTransactionOptions(coordinator: 7)
    #expect(throws: Never.self) { try base.validate() }
    var zeroRetries = base
    zeroRetries.clockRetries = 0
    #expect(throws: Never.self) { try zeroRetries.validate() }
    var bad: [ShardedTransactionOptions] = []
    for retries in [-1, ShardedTransactionOptions.maxClockRetries + 1] {
      var options = base
      options.clockRetries = retries
      bad.append(options)
    }
    for pause: Duration in [.zero, .milliseconds(-5), .seconds(3_600)] {
      var options = base
      options.clockRetryPause = pause
      bad.append(options)
    }
    for options in bad {
      let error = #expect(throws: ConfigurationError.self) { try options.validate() }
      #expect(error?.setting.hasPrefix("ShardedTransactionOptions.clockRetr") == true)
      let channel = InMemoryShards()
      let db = ShardedTransactions(channel: channel, options: options, clock: FrozenClock())
      await #expect(throws: ConfigurationError.self) { try await db.transaction { tx in tx.put("a1", "x") } }
      #expect(channel.commandsSent.load(ordering: .relaxed) == 0)
    }
  }
}
