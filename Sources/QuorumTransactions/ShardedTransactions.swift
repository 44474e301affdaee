public import QuorumCore
import Synchronization

/// How a ``ShardedTransactions`` client reaches the `txn` service of the groups of a cluster.
///
/// A server host's client conforms in a few lines: `group(for:)` is its placement of keys for the `txn`
/// service, `command` an exactly-once command to that service in a group, `query` a linearizable read.
public protocol TxnShardChannel: Sendable {
  /// The group owning `key` for the `txn` service.
  func group(for key: String) async throws -> GroupID

  /// Applies `command` to the ``TxnShard`` of `group`, exactly once, and returns its answer.
  /// - Throws: ``TxnShardRejection`` when the group certainly did not apply it and would refuse it again (too
  ///   large, malformed, forbidden, over a quota); anything else when no answer comes: the command may or may not
  ///   have been applied.
  func command(_ command: TxnShardCommand, group: GroupID) async throws -> TxnShardResponse

  /// Answers `query` from the ``TxnShard`` of `group`, linearizably.
  func query(_ query: TxnShardQuery, group: GroupID) async throws -> TxnShardQueryResult
}

/// What a ``TxnShardChannel`` throws for a command the group certainly did not apply and would refuse again if
/// asked the same (too large for its log, malformed, forbidden, over a quota): unlike a lost answer, nothing of
/// it can be applied later, so the client need neither retry it nor report the outcome unknown.
public struct TxnShardRejection: Error, Sendable, Equatable, CustomStringConvertible {
  /// Why, as the group said it.
  public var reason: String

  /// A rejection for `reason`.
  public init(_ reason: String) { self.reason = reason }

  public var description: String { reason }
}

/// Why a sharded transaction failed.
public enum ShardedTransactionError: Error, Sendable, Equatable, CustomStringConvertible {
  /// Every attempt ran into a lock held by another transaction (or expired); nothing was committed.
  case conflict(attempts: Int, last: String)
  /// The commit's outcome is unknown (an answer was lost): it may have committed. Look it up with
  /// ``ShardedTransactions/outcome(of:groups:)``.
  case outcomeUnknown(TxnID, groups: [GroupID])
  /// A shard refused a command (a bound was exceeded); nothing was committed.
  case refused(TxnShardError)
  /// A group turned a command away before its log (``TxnShardRejection``: too large, malformed, forbidden, over a
  /// quota), as it would again; nothing was committed.
  case rejected(String)
  /// The record group refused to record the commit, for a reason retrying soon does not fix: its table is full
  /// (``TransactionRecordError/tooManyRecords(limit:)``: too many transactions decided there within the records'
  /// retention — an overload), the transaction has too many groups, or the group's time stayed behind the
  /// transaction's start through every retry (``TransactionRecordError/clockAhead(startedAtMillis:logTimeMillis:)``,
  /// see ``ShardedTransactionOptions/clockRetries``: this client's clock runs ahead, or the group's leader has not
  /// written its clock). Nothing was committed.
  case recordRefused(TransactionRecordError)
  /// A group answered something this build does not expect.
  case badAnswer(String)
  /// The command for `group` would exceed ``ShardedTransactionOptions/maxCommandBytes``: found before sending it,
  /// so nothing was sent or committed. Split the transaction.
  case commandTooLarge(group: GroupID, bytes: Int, limit: Int)

  public var description: String {
    switch self {
    case .conflict(let attempts, let last): return "gave up after \(attempts) attempts; last: \(last)"
    case .outcomeUnknown(let id, let groups): return "the outcome of \(id) (groups \(groups)) is unknown"
    case .refused(let error): return "refused: \(error)"
    case .rejected(let why): return "rejected by the group: \(why)"
    case .recordRefused(let why): return "the record group refused the commit: \(why)"
    case .badAnswer(let what): return "unexpected answer: \(what)"
    case .commandTooLarge(let group, let bytes, let limit):
      return "the command for \(group) would take \(bytes) bytes, over the limit of \(limit)"
    }
  }
}

/// The settings of a ``ShardedTransactions`` client.
public struct ShardedTransactionOptions: Sendable, Equatable {
  /// This client's identity as a coordinator: the ``TxnID/coordinator`` of its transactions. Must be unique
  /// among the clients of a cluster.
  public var coordinator: NodeID
  /// How many times a transaction that conflicts is run again (as a new transaction) before giving up.
  public var maxAttempts: Int = 10
  /// How many times a read that conflicts with a prepared writer is retried, after ``readRetryPause``, before
  /// the attempt is abandoned.
  public var readRetries: Int = 3
  /// The pause before a conflicting read is retried.
  public var readRetryPause: Duration = .milliseconds(2)
  /// The first pause before a conflicting transaction runs again; it doubles up to ``maxBackoff``, with
  /// seeded jitter.
  public var minBackoff: Duration = .milliseconds(2)
  /// The longest pause between attempts.
  public var maxBackoff: Duration = .milliseconds(200)
  /// How many times a decision or phase-2 command whose answer was lost is sent again.
  public var commandRetries: Int = 5
  /// How many transaction numbers are reserved at a time.
  public var numbersPerReservation: UInt64 = 1_024
  /// How many times a commit the record group refuses as starting ahead of its time
  /// (``TransactionRecordError/clockAhead(startedAtMillis:logTimeMillis:)``) is sent again, after
  /// ``clockRetryPause``, before the transaction ends with ``ShardedTransactionError/recordRefused(_:)``. A new
  /// group's time is its bare log time until its first leader writes its wall clock into the log (within a fraction
  /// of a second of taking over): meanwhile it refuses every decision so, and waiting for it costs less than running
  /// the body again. Default 50, with the pause about 5 s.
  public var clockRetries: Int = 50
  /// The pause before a commit refused as starting ahead of the record group's time is sent again.
  public var clockRetryPause: Duration = .milliseconds(100)

  /// The limits the groups' shards enforce (keys per transaction, key and value sizes), checked here before a
  /// commit is sent so that a transaction they would refuse fails at once, with the same typed
  /// ``ShardedTransactionError/refused(_:)``. Set it to the servers' limits (the defaults are the servers').
  public var shardLimits = TxnShardLimits()
  /// The largest command the groups accept (their consensus engines' `maxCommandBytes`, 4 MiB by default): a
  /// prepare or a one-group commit that would need more, with ``TxnShardLimits/commandFramingBytes`` to spare,
  /// fails before it is sent with ``ShardedTransactionError/commandTooLarge(group:bytes:limit:)``.
  public var maxCommandBytes = 4 << 20

  /// Defaults for a client acting as coordinator `coordinator`.
  public init(coordinator: NodeID) { self.coordinator = coordinator }

  /// The most ``clockRetries`` accepted: 10,000 (over 15 minutes at the default pause, far past any new group's
  /// first leader).
  public static let maxClockRetries = 10_000
  /// The longest ``clockRetryPause`` accepted: one minute (prepared locks are held across the pause).
  public static let maxClockRetryPause: Duration = .seconds(60)

  /// Checks that the settings are usable: ``shardLimits`` must be valid and admit no write that a command of
  /// ``maxCommandBytes`` cannot carry (``TxnShardLimits/validate(maxCommandBytes:)``); ``clockRetries`` must be
  /// between 0 and ``maxClockRetries``, and ``clockRetryPause`` positive and at most ``maxClockRetryPause``.
  /// - Throws: ``QuorumCore/ConfigurationError`` naming the first unusable setting.
  public func validate() throws(ConfigurationError) {
    try shardLimits.validate(maxCommandBytes: maxCommandBytes)
    guard (0...Self.maxClockRetries).contains(clockRetries) else {
      throw ConfigurationError(
        setting: "ShardedTransactionOptions.clockRetries",
        reason: "must be between 0 and \(Self.maxClockRetries), not \(clockRetries)")
    }
    guard clockRetryPause > .zero, clockRetryPause <= Self.maxClockRetryPause else {
      throw ConfigurationError(
        setting: "ShardedTransactionOptions.clockRetryPause",
        reason: "must be positive and at most \(Self.maxClockRetryPause), not \(clockRetryPause)")
    }
  }
}

/// One attempt of a transaction, as the body sees it: reads go to the shards (taking shared locks), writes are
/// buffered here until the commit, and reads of keys written in the attempt see those writes.
public final class ShardTransaction: Sendable {
  private struct State {
    var writes: [String: [UInt8]?] = [:]
    var order: [String] = []
    var reads: [String: [UInt8]?] = [:]
    var readGroups: Set<GroupID> = []
    /// The keys read, by group: they count towards the group's keys per transaction.
    var keysRead: [GroupID: Set<String>] = [:]
    /// Every group a read was sent to (answered or not): a lost or late read may still take a shared lock there,
    /// so an abandoned attempt aborts there too.
    var unansweredGroups: Set<GroupID> = []
    /// The first read that failed: the attempt cannot commit, even if the body carried on past the error.
    var failedRead: (any Error)?
  }

  /// The attempt's transaction identifier.
  public let id: TxnID
  private let client: ShardedTransactions
  private let state = Mutex(State())

  init(id: TxnID, client: ShardedTransactions) {
    self.id = id
    self.client = client
  }

  /// The value of `key` as this transaction sees it: its own write if it wrote the key, otherwise the committed
  /// value, read under a shared lock held until the transaction ends.
  /// - Throws: a conflict or an abort ends the attempt (``ShardedTransactions/transaction(_:)`` runs the body again).
  ///   The attempt ends even if the body catches the error: it cannot commit on a value read under no lock.
  public func get(_ key: String) async throws -> [UInt8]? {
    let known = state.withLock { s -> [UInt8]?? in
      if let written = s.writes[key] { return .some(written) }
      if let read = s.reads[key] { return .some(read) }
      return .none
    }
    if let known { return known }
    do {
      let (value, group) = try await client.read(key, in: id) { group in
        state.withLock { _ = $0.unansweredGroups.insert(group) }
      }
      state.withLock { s in
        s.reads[key] = value
        s.readGroups.insert(group)
        s.keysRead[group, default: []].insert(key)
      }
      return value
    } catch {
      // A body that swallows the error (`try?`) and writes on what it assumed must not commit: the read took no
      // lock, so a writer may have changed the key since.
      state.withLock { s in if s.failedRead == nil { s.failedRead = error } }
      throw error
    }
  }

  /// The value of `key` as a UTF-8 string.
  public func getString(_ key: String) async throws -> String? {
    try await get(key).map { String(decoding: $0, as: UTF8.self) }
  }

  /// Sets `key` to `value` when the transaction commits.
  public func put(_ key: String, _ value: [UInt8]) { write(key, value) }

  /// Sets `key` to the UTF-8 bytes of `value` when the transaction commits.
  public func put(_ key: String, _ value: String) { write(key, Array(value.utf8)) }

  /// Deletes `key` when the transaction commits.
  public func delete(_ key: String) { write(key, nil) }

  private func write(_ key: String, _ value: [UInt8]?) {
    state.withLock { s in
      if s.writes.updateValue(value, forKey: key) == nil { s.order.append(key) }
    }
  }

  /// The buffered writes in the order first written, the groups read, and the keys read in each.
  var footprint: (writes: [TxnWrite], readGroups: Set<GroupID>, keysRead: [GroupID: Set<String>]) {
    state.withLock { s in
      (s.order.map { TxnWrite(key: $0, value: s.writes[$0] ?? nil) }, s.readGroups, s.keysRead)
    }
  }

  /// The error of the first read that failed, if one did.
  var failedRead: (any Error)? { state.withLock { $0.failedRead } }

  /// Every group a read was sent to: those that answered with a value and those that did not.
  var groupsReadOrTried: Set<GroupID> { state.withLock { $0.readGroups.union($0.unansweredGroups) } }
}

/// Serializable transactions over the `txn` service of a cluster's groups, this client acting as the
/// coordinator of two-phase commit with decision records in the groups (non-blocking).
///
/// ```swift
/// let db = ShardedTransactions(channel: channel, options: ShardedTransactionOptions(coordinator: 1001))
/// try await db.transaction { tx in
///   let a = try await tx.getString("a") ?? "0"
///   tx.put("b", a)
/// }
/// ```
///
/// **The protocol.** The body's reads lock keys in the groups that own them; its writes wait here. At the end:
/// no group touched — nothing to do; one group — ``TxnShardCommand/commitLocal(_:reads:writes:)``, one entry in
/// that group; several — every group is prepared (writes and locks durable in its log), the commit is recorded
/// by a compare-and-set in the transaction's record group (the owner of ``TxnShardService/recordKey(for:)``),
/// and then applied in every group, and the record finished. A conflict anywhere aborts the attempt everywhere
/// and the body runs again as a new transaction after a back-off.
///
/// **No single crash blocks it.** Prepared writes live in the groups' logs and the decision in the record
/// group's, so a client that dies leaves nothing only it could finish: ``resolveInDoubt(minimumAgeMillis:groups:limit:)``
/// — run by any client or by the servers — aborts what was never decided (the compare-and-set loses to a
/// commit recorded first) and applies whatever was.
///
/// **Answers lost.** A one-group commit whose answers are lost is settled by an abort in its group, which its log
/// orders after the commit: committed, or aborted for good — the group remembers the abort, as a status query then
/// confirms — and the body runs again. A commit whose outcome still cannot be known (the abort unanswered, or not
/// remembered: the group may have forgotten a commit past the horizon) throws ``ShardedTransactionError/outcomeUnknown(_:groups:)``; ``outcome(of:groups:)`` tells
/// later — for a one-group transaction, which leaves no record, only while its group remembers it (until
/// ``TxnShardLimits/transactionHorizonMillis`` after its start).
public actor ShardedTransactions {
  private let channel: any TxnShardChannel
  /// The settings.
  public let options: ShardedTransactionOptions
  private let clock: any NodeClock
  private var random: SeededRandom
  private var numbers: Range<UInt64> = 0..<0

  /// Creates a client.
  /// - Parameters:
  ///   - channel: how to reach the groups.
  ///   - options: its coordinator identity, retries and back-off.
  ///   - clock: where transaction start times and pauses come from (the system's unless simulated).
  ///   - seed: seeds the back-off jitter.
  public init(
    channel: any TxnShardChannel, options: ShardedTransactionOptions, clock: any NodeClock = SystemClock(),
    seed: UInt64 = 1
  ) {
    self.channel = channel
    self.options = options
    self.clock = clock
    self.random = SeededRandom(seed: seed ^ options.coordinator.rawValue)
  }

  private struct Retry: Error {
    var why: String
    /// Set when a shard refused the transaction as starting ahead of its time: retried (a hosted shard's time
    /// lags until a new leader writes its clock), and reported as that refusal if every attempt gets it.
    var startsAhead: TxnShardError?
  }

  /// The error for a shard's refusal `error`: a ``TxnShardError/startsAhead(_:shardMillis:)`` is retried.
  private nonisolated func shardRefusal(_ error: TxnShardError) -> any Error {
    if case .startsAhead = error { return Retry(why: error.description, startsAhead: error) }
    return ShardedTransactionError.refused(error)
  }

  /// Runs `body` as a serializable transaction and commits it, running it again (as a new transaction) after a
  /// conflict; returns what the committed attempt's body returned. The body may run several times: it must do
  /// nothing outside the transaction that cannot be repeated.
  /// - Throws: ``ShardedTransactionError``, or what the body throws (the attempt is then aborted);
  ///   ``QuorumCore/ConfigurationError`` if the options are unusable (``ShardedTransactionOptions/validate()``).
  public func transaction<T: Sendable>(_ body: (ShardTransaction) async throws -> T) async throws -> T {
    try options.validate()
    var backoff = options.minBackoff
    var last = ""
    var startsAhead: TxnShardError?
    for attempt in 1...max(1, options.maxAttempts) {
      let tx = ShardTransaction(id: try await nextID(), client: self)
      do {
        let value = try await body(tx)
        try await commit(tx)
        return value
      } catch let retry as Retry {
        last = retry.why
        startsAhead = retry.startsAhead
        await abandon(tx)
      } catch ShardedTransactionError.outcomeUnknown(let id, let groups) where groups.count > 1 {
        // The commit may be recorded: the groups' prepared state is all that carries it to them, so it must not be
        // aborted here (a resolver applies whatever the record holds). A one-group commit needs no such care: an
        // abort after it applied changes nothing there (and its group was sent one already, see `settleLocal`).
        throw ShardedTransactionError.outcomeUnknown(id, groups: groups)
      } catch {
        await abandon(tx)
        throw error
      }
      guard attempt < options.maxAttempts else { break }
      let jitter = Double.random(in: 0.5...1.0, using: &random)
      try await clock.sleep(for: backoff * jitter)
      backoff = min(options.maxBackoff, backoff * 2)
    }
    if let startsAhead { throw ShardedTransactionError.refused(startsAhead) }
    throw ShardedTransactionError.conflict(attempts: options.maxAttempts, last: last)
  }

  /// A fresh transaction identifier of this client, started now.
  /// - Throws: ``ShardedTransactionError/rejected(_:)`` if the group keeping this client's numbers turns the
  ///   reservation away, ``ShardedTransactionError/badAnswer(_:)`` for an unexpected answer, and the channel's
  ///   errors when no answer comes.
  public func nextID() async throws -> TxnID {
    if numbers.isEmpty {
      let coordinator = options.coordinator
      let group = try await channel.group(for: TxnShardService.numbersKey(for: coordinator))
      let answer: TxnShardResponse
      do {
        answer = try await channel.command(
          .records(.reserve(coordinator: coordinator, count: options.numbersPerReservation)), group: group)
      } catch let rejection as TxnShardRejection {
        throw ShardedTransactionError.rejected("\(group): \(rejection)")
      }
      guard case .record(.reserved(let first, let count)) = answer else {
        throw ShardedTransactionError.badAnswer("\(answer) to a reservation")
      }
      numbers = first..<first.addingSaturated(count)
    }
    let sequence = numbers.lowerBound
    numbers = (sequence + 1)..<numbers.upperBound
    return TxnID(coordinator: options.coordinator, sequence: sequence, startedAtMillis: clock.wallClockMillis())
  }

  // MARK: - Reads

  /// Reads `key` for `id` in the group that owns it, retrying a conflict with a prepared writer a few times.
  nonisolated func read(
    _ key: String, in id: TxnID, sending: @Sendable (GroupID) -> Void
  ) async throws -> ([UInt8]?, GroupID) {
    if let error = options.shardLimits.check(key: key) { throw ShardedTransactionError.refused(error) }
    let group = try await channel.group(for: key)
    sending(group)
    var conflict = ""
    for attempt in 0...max(0, options.readRetries) {
      if attempt > 0 { try await clock.sleep(for: options.readRetryPause) }
      // A read applied twice takes the same lock twice: retrying one whose answer was lost is safe.
      let reply: TxnShardResponse?
      do {
        reply = try await retrying({ try await channel.command(.read(id, key: key), group: group) })
      } catch ShardedTransactionError.rejected(let why) {
        throw ShardedTransactionError.rejected("\(group): \(why)")
      }
      guard let answer = reply else { throw Retry(why: "no answer to a read of \(key) from \(group)") }
      switch answer {
      case .value(let value): return (value, group)
      case .conflict(let held): conflict = "\(held)"
      case .aborted: throw Retry(why: "\(id) expired in \(group)")
      case .failed(let error): throw shardRefusal(error)
      case let other: throw ShardedTransactionError.badAnswer("\(other) to a read")
      }
    }
    throw Retry(why: conflict)
  }

  // MARK: - Commit

  private func groups(of writes: [TxnWrite]) async throws -> [GroupID: [TxnWrite]] {
    var byGroup: [GroupID: [TxnWrite]] = [:]
    for write in writes { byGroup[try await channel.group(for: write.key), default: []].append(write) }
    return byGroup
  }

  private func commit(_ tx: ShardTransaction) async throws {
    if let failure = tx.failedRead { throw failure }
    let (writes, readGroups, keysRead) = tx.footprint
    let byGroup = try await groups(of: writes)
    let groups = readGroups.union(byGroup.keys).sorted()
    // What a shard would refuse after a round trip is refused here, before anything is sent.
    for group in groups {
      if let error = options.shardLimits.check(byGroup[group] ?? [], reading: keysRead[group] ?? []) {
        throw ShardedTransactionError.refused(error)
      }
    }
    switch groups.count {
    case 0: return
    case 1: try await commitLocal(tx.id, group: groups[0], writes: byGroup[groups[0]] ?? [])
    default: try await commitDistributed(tx.id, groups: groups, writes: byGroup)
    }
  }

  private func commitLocal(_ id: TxnID, group: GroupID, writes: [TxnWrite]) async throws {
    // Applied twice, a one-shot commit answers the second time from the shard's memory of it, while the shard
    // remembers it; once forgotten, the repeat is refused, and `settleLocal` tells whether it committed.
    let command = TxnShardCommand.commitLocal(id, reads: [], writes: writes)
    try checkSize(of: command, group: group)
    let attempt: (answer: TxnShardResponse, afterLoss: Bool)?
    do {
      attempt = try await retryingNotingLoss({ try await channel.command(command, group: group) })
    } catch let rejection as Rejected {
      // After an unanswered attempt, which may still commit, a rejection of the next says nothing of it.
      guard !rejection.afterLoss else { return try await settleLocal(id, group: group) }
      throw ShardedTransactionError.rejected("\(group): \(rejection.rejection)")
    }
    guard let (answer, afterLoss) = attempt else { return try await settleLocal(id, group: group) }
    switch answer {
    case .committedLocal, .committed: return
    case _ where afterLoss:
      // An unanswered attempt may still commit after this refusal: running the transaction again could apply
      // it twice, unless the group settles it first.
      try await settleLocal(id, group: group)
    case .conflict(let held): throw Retry(why: "\(held)")
    case .aborted: throw Retry(why: "\(id) aborted in \(group)")
    case .failed(let error): throw shardRefusal(error)
    case let other: throw ShardedTransactionError.badAnswer("\(other) to a one-shot commit")
    }
  }

  /// Settles a one-shot commit of `id` whose outcome its answers did not tell (an attempt went unanswered): an
  /// abort in its group, ordered by the group's log after every attempt that reached it. If one committed and the
  /// group still remembers it, the abort answers so. An abort answered `aborted` proves nothing by itself: the
  /// group answers so also when it records nothing — the transaction is past its horizon or its watermark (a
  /// commit applied there may have been forgotten since), or starts too far ahead of the group's time (an attempt
  /// still on its way may commit once that time catches up). So a linearizable status query, after the abort,
  /// must find the abort remembered: then no attempt committed before it, and none can after (the group forgets it
  /// only past the horizon or below its watermark, where it admits nothing of the transaction). A one-shot commit
  /// leaves no record: without this, nothing would fence a late attempt.
  /// - Throws: ``Retry`` if it will never commit (the body runs again); ``ShardedTransactionError/outcomeUnknown(_:groups:)``
  ///   if the group cannot tell (no answer, or the abort not remembered): running the body again could apply the
  ///   transaction twice.
  private func settleLocal(_ id: TxnID, group: GroupID) async throws {
    let answer = try? await retrying({ try await self.channel.command(.abort(id), group: group) })
    switch answer {
    case .committed?: return
    case .aborted?:
      switch try? await channel.query(.status(id), group: group) {
      case .status(.committed, _)?: return
      case .status(.aborted, _)?: throw Retry(why: "\(id): answers lost in \(group), settled as aborted there")
      default: throw ShardedTransactionError.outcomeUnknown(id, groups: [group])
      }
    default: throw ShardedTransactionError.outcomeUnknown(id, groups: [group])
    }
  }

  private func commitDistributed(_ id: TxnID, groups: [GroupID], writes: [GroupID: [TxnWrite]]) async throws {
    let recordGroup = try await channel.group(for: TxnShardService.recordKey(for: id))
    for group in groups {
      try checkSize(
        of: .prepare(id, writes: writes[group] ?? [], participants: groups, recordGroup: recordGroup), group: group)
    }
    let channel = self.channel
    // Phase 1, all groups at once. An answer lost is a vote lost: abort (nothing is recorded yet).
    // A rejected prepare (turned away before the group's log: too large, say) is a certain no, reported as such.
    let (votes, rejection) = await withTaskGroup(of: (GroupID, TxnShardResponse?, TxnShardRejection?).self) {
      tasks in
      for group in groups {
        let command = TxnShardCommand.prepare(
          id, writes: writes[group] ?? [], participants: groups, recordGroup: recordGroup)
        tasks.addTask {
          do {
            return (group, try await channel.command(command, group: group), nil)
          } catch let rejection as TxnShardRejection {
            return (group, nil, rejection)
          } catch {
            return (group, nil, nil)
          }
        }
      }
      var votes: [GroupID: TxnShardResponse?] = [:]
      var rejection: (GroupID, TxnShardRejection)?
      for await (group, vote, rejected) in tasks {
        votes[group] = vote
        if let rejected, rejection.map({ group < $0.0 }) ?? true { rejection = (group, rejected) }
      }
      return (votes, rejection)
    }
    if let (group, rejected) = rejection {
      await abort(id, in: groups)
      throw ShardedTransactionError.rejected("\(group): \(rejected)")
    }
    var refusal: String?
    for group in groups {
      switch votes[group] ?? nil {
      case .prepared?, .readOnly?: continue
      case .failed(let error)?:
        await abort(id, in: groups)
        throw shardRefusal(error)
      case let other: refusal = refusal ?? "\(group): \(other.map(\.description) ?? "no answer")"
      }
    }
    if let refusal {
      await abort(id, in: groups)
      throw Retry(why: refusal)
    }
    // Nothing written anywhere: the reads are consistent now that every group holds its locks, and no group waits
    // on a decision. Release the locks; a record would only fill the record table (a lost release is settled by a
    // resolver, as an abort, which for a read-only transaction is the same).
    if writes.values.allSatisfy(\.isEmpty) {
      let prepared = groups.filter { if case .prepared? = votes[$0] ?? nil { true } else { false } }
      _ = await send(.commit(id), to: prepared)
      return
    }
    // The decision: a compare-and-set in the record group, which a resolver may have won with an abort.
    let parties = groups.map(TxnShard.party)
    let decide = TxnShardCommand.records(
      .decide(id, .commit, participants: parties, finisher: options.coordinator, kind: .groups))
    var decided: (answer: TxnShardResponse, afterLoss: Bool)?
    var lost = false
    for retry in 0...max(0, options.clockRetries) {
      do {
        decided = try await retryingNotingLoss({ try await channel.command(decide, group: recordGroup) })
      } catch let rejection as Rejected {
        // Turned away before the record group's log: nothing recorded, unless an unanswered attempt lands later.
        guard !rejection.afterLoss && !lost else { throw ShardedTransactionError.outcomeUnknown(id, groups: groups) }
        await abort(id, in: groups)
        throw ShardedTransactionError.rejected("\(recordGroup): \(rejection.rejection)")
      }
      lost = lost || (decided?.afterLoss ?? true)
      // A group whose time lags this transaction's start (a new group before its leader's first clock entry) refuses
      // the decision, certainly without recording it: send it again after a pause, the groups' locks still held.
      guard case .record(.refused(.clockAhead))? = decided?.answer, !lost, retry < options.clockRetries else { break }
      do {
        try await clock.sleep(for: options.clockRetryPause)
      } catch {
        await abort(id, in: groups)  // nothing was recorded: every attempt was refused
        throw error
      }
    }
    guard let (decision, _) = decided else {
      throw ShardedTransactionError.outcomeUnknown(id, groups: groups)
    }
    let afterLoss = lost
    guard case .record(.decided(let holding)) = decision else {
      // A refusal is final only if no unanswered attempt could still record the commit after it; otherwise the
      // prepared groups are left to the resolver, whose abort and that attempt are ordered by the record group.
      if case .record(.refused(let why)) = decision, !afterLoss {
        // A full table or too many groups would refuse the next attempt too; a clock ahead was retried above.
        await abort(id, in: groups)
        throw ShardedTransactionError.recordRefused(why)
      }
      // The record group applied something, and what it holds now cannot be read from this answer: the commit
      // may be recorded, so the prepared groups are left to the resolver, as for a lost answer.
      throw ShardedTransactionError.outcomeUnknown(id, groups: groups)
    }
    guard holding == .commit else {
      await abort(id, in: groups)
      throw Retry(why: "\(id) was resolved as aborted before its commit was recorded")
    }
    // Phase 2: the transaction is committed whatever happens now; a group this client cannot reach is finished
    // by a resolver.
    let prepared = groups.filter { if case .prepared? = votes[$0] ?? nil { true } else { false } }
    let applied = await send(.commit(id), to: prepared)
    if applied {
      _ = try? await retrying({
        try await channel.command(.records(.finished(id, node: self.options.coordinator)), group: recordGroup)
      })
    }
  }

  /// Throws ``ShardedTransactionError/commandTooLarge(group:bytes:limit:)`` if `command`, with the group's framing,
  /// would exceed ``ShardedTransactionOptions/maxCommandBytes``.
  private func checkSize(of command: TxnShardCommand, group: GroupID) throws {
    let bytes = command.wireBytes().count + TxnShardLimits.commandFramingBytes
    guard bytes <= options.maxCommandBytes else {
      throw ShardedTransactionError.commandTooLarge(group: group, bytes: bytes, limit: options.maxCommandBytes)
    }
  }

  /// Sends `command` to every group (retrying lost answers); whether every group answered.
  private func send(_ command: TxnShardCommand, to groups: [GroupID]) async -> Bool {
    await silentGroups(sending: command, to: groups).isEmpty
  }

  /// Sends `command` to every group (retrying lost answers); the groups that never answered.
  private func silentGroups(sending command: TxnShardCommand, to groups: [GroupID]) async -> Set<GroupID> {
    let channel = self.channel
    let retries = options.commandRetries
    return await withTaskGroup(of: GroupID?.self) { tasks in
      for group in groups {
        tasks.addTask {
          for _ in 0...max(0, retries) {
            if (try? await channel.command(command, group: group)) != nil { return nil }
          }
          return group
        }
      }
      var silent: Set<GroupID> = []
      for await group in tasks { if let group { silent.insert(group) } }
      return silent
    }
  }

  private func abort(_ id: TxnID, in groups: [GroupID]) async { _ = await send(.abort(id), to: groups) }

  /// Releases what an attempt that will not commit holds: its read locks (its writes were never sent, or were
  /// aborted already).
  private func abandon(_ tx: ShardTransaction) async {
    await abort(tx.id, in: tx.groupsReadOrTried.sorted())
  }

  /// A command turned away by its group (``TxnShardRejection``), and whether an earlier attempt went unanswered.
  private struct Rejected: Error {
    var rejection: TxnShardRejection
    var afterLoss: Bool
  }

  /// The first answer `operation` gets within the retries, or `nil`.
  /// - Throws: ``ShardedTransactionError/rejected(_:)`` if the group turned it away (retrying would not help).
  private nonisolated func retrying(_ operation: @Sendable () async throws -> TxnShardResponse) async throws
    -> TxnShardResponse?
  {
    do {
      return try await retryingNotingLoss(operation)?.answer
    } catch let rejected as Rejected {
      throw ShardedTransactionError.rejected(rejected.rejection.reason)
    }
  }

  /// The first answer `operation` gets within the retries, and whether an earlier attempt went unanswered. Such
  /// an attempt is a request of its own that may still be applied later, after the one answered: a refusal
  /// answered then does not mean that nothing will be applied.
  /// - Throws: ``Rejected`` at once if the group turned the command away: it would again, and nothing of that
  ///   attempt will be applied (an earlier unanswered one still may: `afterLoss`).
  private nonisolated func retryingNotingLoss(_ operation: @Sendable () async throws -> TxnShardResponse) async throws
    -> (answer: TxnShardResponse, afterLoss: Bool)?
  {
    for attempt in 0...max(0, options.commandRetries) {
      do {
        return (try await operation(), attempt > 0)
      } catch let rejection as TxnShardRejection {
        throw Rejected(rejection: rejection, afterLoss: attempt > 0)
      } catch {
        continue
      }
    }
    return nil
  }

  // MARK: - Lookups and resolution

  /// What became of `id`: its decision record if one exists, otherwise what the `groups` it touched (if given)
  /// know of it (a one-shot commit leaves no record, only the group's memory of it).
  public func outcome(of id: TxnID, groups: [GroupID] = []) async throws -> TransactionStatus {
    let recordGroup = try await channel.group(for: TxnShardService.recordKey(for: id))
    let answer = try await channel.query(.records(.record(id)), group: recordGroup)
    guard case .records(.record(let record)) = answer else {
      throw ShardedTransactionError.badAnswer("\(answer) to a record query")
    }
    if let decision = record?.decision { return TransactionStatus(decision) }
    var status = TransactionStatus.unknown
    for group in groups {
      guard case .status(let state, _) = try await channel.query(.status(id), group: group) else { continue }
      switch state {
      case .committed: return .committed
      case .prepared, .active: status = .inProgress
      case .aborted: if status == .unknown { status = .aborted }
      case .unknown: continue
      }
    }
    return record == nil ? status : .inProgress
  }

  /// Finishes the transactions prepared in `groups` and undecided for at least `minimumAgeMillis` (log time):
  /// their decision is settled in their record group — abort, unless a commit is recorded first — and applied in
  /// every group of the transaction. Any client, or the servers, may run it: the compare-and-set makes racing
  /// resolvers and a live coordinator agree. Returns how many transactions it settled.
  ///
  /// It also ends the commit records of `groups` that their coordinator left unfinished for at least
  /// `minimumAgeMillis` (it died, or lost the answers of phase 2, after the commit was applied): once no group of
  /// the transaction still holds it prepared, the record is finished, so that it is forgotten in time.
  ///
  /// One transaction that cannot be settled now (its record group does not answer) does not hold up the others: it
  /// is left to a later call, and so are the others of that record group in this call (one that just failed to
  /// answer would most likely keep each waiting for its deadline). Likewise a participant group that does not
  /// answer the decision is not sent any other in this call: the decision is recorded, and that group's own
  /// resolver applies it when it returns (its prepared transactions are in doubt there).
  /// - Throws: only if a group in `groups` cannot be asked what it holds in doubt.
  public func resolveInDoubt(minimumAgeMillis: UInt64, groups: [GroupID], limit: Int = 256) async throws -> Int {
    var settled = 0
    // Record groups that did not answer a decision, and groups that did not answer a decision sent to them or a
    // question (the latter are not asked to record one either).
    var unreachable: Set<GroupID> = []
    var silent: Set<GroupID> = []
    for group in groups {
      let answer = try await channel.query(.inDoubt(minimumAgeMillis: minimumAgeMillis, limit: limit), group: group)
      guard case .inDoubt(let doubtful, _) = answer else {
        throw ShardedTransactionError.badAnswer("\(answer) to an in-doubt query")
      }
      for entry in doubtful where !unreachable.contains(entry.recordGroup) && !silent.contains(entry.recordGroup) {
        do {
          if try await resolve(entry, skipping: &silent) { settled += 1 }
        } catch is CancellationError {
          throw CancellationError()
        } catch {
          unreachable.insert(entry.recordGroup)
        }
      }
      await finishUnfinished(in: group, minimumAgeMillis: minimumAgeMillis, limit: limit, skipping: &silent)
    }
    return settled
  }

  /// Finishes the commit records kept in `group` whose transaction is no longer prepared in any of its groups.
  /// A record it cannot finish now (a group that does not answer, or still holds the transaction prepared) is
  /// left to a later call: a failure here must not hide what the in-doubt pass settled.
  /// A group in `silent` is not asked (the record waits for a later call), and one that does not answer joins it.
  private func finishUnfinished(
    in group: GroupID, minimumAgeMillis: UInt64, limit: Int, skipping silent: inout Set<GroupID>
  ) async {
    let answer = try? await channel.query(
      .records(.unfinished(minimumAgeMillis: minimumAgeMillis, limit: limit)), group: group)
    guard case .records(.records(let unfinished, _))? = answer else { return }
    // The query lists sharded transactions' records only (two-phase commit's have nodes for participants, and a
    // coordinator that finishes them itself when it recovers); their groups never record themselves, so the
    // coordinator is the one pending.
    records: for record in unfinished where record.decision == .commit && record.pending == [record.id.coordinator] {
      // A commit is recorded only once every group prepared it, and a group forgets a prepared transaction only
      // by applying its decision: none prepared means every group applied the commit.
      for party in record.participants {
        let participant = GroupID(rawValue: party.rawValue)
        guard !silent.contains(participant) else { continue records }
        let state = try? await channel.query(.status(record.id), group: participant)
        guard case .status(let held, _)? = state else {
          silent.insert(participant)
          continue records  // cannot tell: later
        }
        if case .prepared = held { continue records }  // the in-doubt pass of that group applies it
      }
      _ = try? await channel.command(.records(.finished(record.id, node: record.id.coordinator)), group: group)
    }
  }

  /// Settles `entry` in its record group and sends the decision to its groups but those in `silent`, adding those
  /// that do not answer; whether every group of the transaction applied it.
  private func resolve(_ entry: TxnInDoubt, skipping silent: inout Set<GroupID>) async throws -> Bool {
    let settle = TxnShardCommand.records(.decide(entry.id, .abort, participants: [], finisher: nil))
    guard case .record(.decided(let decision)) = try await channel.command(settle, group: entry.recordGroup) else {
      return false
    }
    let reachable = entry.participants.filter { !silent.contains($0) }
    let unanswered = await silentGroups(
      sending: decision == .commit ? .commit(entry.id) : .abort(entry.id), to: reachable)
    silent.formUnion(unanswered)
    let applied = unanswered.isEmpty && reachable.count == entry.participants.count
    if applied && decision == .commit {
      _ = try? await channel.command(
        .records(.finished(entry.id, node: entry.id.coordinator)), group: entry.recordGroup)
    }
    return applied
  }
}
