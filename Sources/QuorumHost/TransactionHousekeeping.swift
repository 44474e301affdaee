public import QuorumCore
import QuorumTransactions
import Synchronization

/// How the leaders of groups carrying the `txn` service finish the transactions their coordinators left in doubt.
///
/// A sharded transaction's coordinator is its client. A client that dies after preparing leaves its writes and
/// locks held in every group it prepared, until someone settles the decision in the transaction's record group.
/// Each group's leader does, every ``interval``: it looks for transactions prepared at least ``minimumAge`` ago
/// (log time) and still undecided, records an abort for each unless a commit was recorded first (a
/// compare-and-set, so a live coordinator that is merely slow and the resolver agree), and applies the decision
/// in every group of the transaction (``QuorumTransactions/ShardedTransactions/resolveInDoubt(minimumAgeMillis:groups:limit:)``).
public struct TransactionResolverOptions: Sendable, Equatable {
  /// Whether leaders resolve at all (off: transactions in doubt wait for a client to resolve them).
  public var enabled = true
  /// How often a leader looks for transactions in doubt.
  public var interval: Duration = .seconds(1)
  /// How long a transaction must have been prepared before a leader settles it: longer than a live client takes
  /// between its prepares and its decision, or live transactions are aborted for nothing.
  public var minimumAge: Duration = .seconds(5)
  /// The most transactions one group's leader settles per look.
  public var batchLimit = 64

  /// The defaults: every second, transactions prepared at least 5 s ago, 64 at a time.
  public init() {}

  /// Settings with the given period and age.
  public init(interval: Duration, minimumAge: Duration, batchLimit: Int = 64) {
    self.interval = interval
    self.minimumAge = minimumAge
    self.batchLimit = batchLimit
  }

  /// Checks that the settings are usable.
  /// - Throws: ``QuorumCore/ConfigurationError`` naming the first unusable setting.
  public func validate() throws(ConfigurationError) {
    guard interval >= .milliseconds(1) else {
      throw ConfigurationError(setting: "TransactionResolver interval", reason: "must be at least 1 ms (\(interval))")
    }
    guard minimumAge >= .zero else {
      throw ConfigurationError(setting: "TransactionResolver minimumAge", reason: "must not be negative")
    }
    guard batchLimit >= 1 else {
      throw ConfigurationError(setting: "TransactionResolver batchLimit", reason: "must be at least 1 (\(batchLimit))")
    }
  }

  var minimumAgeMillis: UInt64 { UInt64(clamping: minimumAge.nanoseconds / 1_000_000) }
}

/// A host's duties towards the `txn` groups it hosts, for each group while this host leads it:
///
/// - **clock**: write the leader's wall clock into the log (``HostedTxnCommand/clock(wallMillis:)``) when it
///   takes over and every ``clockInterval`` after, so that transaction time follows the wall clock (see
///   ``HostedTxnService``);
/// - **resolution** (unless disabled): every ``TransactionResolverOptions/interval``, settle what is in doubt
///   there. The other groups (record groups, other participants) are reached through the host's own transport
///   (``PeerRequestChannel``), as a ``HostClient`` with a session per group.
final class TransactionHousekeeping: Sendable {
  /// How often leadership is checked (a new leader writes its clock within this).
  static let leadershipCheck: Duration = .milliseconds(100)
  /// How often a leader writes its clock while it stays leader (log time advances with its monotonic clock in
  /// between, which NTP does not adjust).
  static let clockInterval: Duration = .seconds(60)

  private let groups: [any HostedGroup]
  private let options: TransactionResolverOptions
  private let transactions: ShardedTransactions
  private let clock: any NodeClock
  private let logger: QuorumLogger
  private let settled: SettledCount

  init(
    node: NodeID, groups: [any HostedGroup], options: TransactionResolverOptions, client: HostClient,
    clock: any NodeClock, logger: QuorumLogger, settled: SettledCount
  ) {
    self.groups = groups
    self.options = options
    // The resolver never starts a transaction: its coordinator identity is only written in logs.
    self.transactions = ShardedTransactions(
      channel: HostTxnChannel(client), options: ShardedTransactionOptions(coordinator: node), clock: clock,
      seed: node.rawValue)
    self.clock = clock
    self.logger = logger
    self.settled = settled
  }

  /// Runs until the task is cancelled: each group's clock entries and each group's resolution in loops of their
  /// own, so that a group that waits (a pass on an unreachable record group, or a clock entry in a group this host
  /// leads without a majority, for minutes) holds up neither the other groups' resolution nor the clock entry of
  /// another group this host has just come to lead (its record table refuses decisions until then).
  func run() async {
    await withDiscardingTaskGroup { tasks in
      for group in groups { tasks.addTask { await self.keepClock(group) } }
      guard options.enabled else { return }
      for group in groups { tasks.addTask { await self.keepResolving(group) } }
    }
  }

  /// Writes a clock entry in `group` when this host takes over its leadership and every ``clockInterval`` after.
  private func keepClock(_ group: any HostedGroup) async {
    var clockWritten: UInt64?
    while !Task.isCancelled {
      do {
        try await clock.sleep(for: Self.leadershipCheck)
      } catch {
        return
      }
      guard await group.status().isLeader else {
        clockWritten = nil
        continue
      }
      let now = clock.monotonicNanos()
      if clockWritten.map({ now &- $0 >= Self.clockInterval.nanoseconds }) ?? true {
        if await writeClock(in: group) { clockWritten = now }
      }
    }
  }

  /// Settles what is in doubt in `group` every ``TransactionResolverOptions/interval`` while this host leads it.
  private func keepResolving(_ group: any HostedGroup) async {
    var lastLogTime: [GroupID: UInt64] = [:]
    while !Task.isCancelled {
      do {
        try await clock.sleep(for: options.interval)
      } catch {
        return
      }
      guard await group.status().isLeader else {
        lastLogTime = [:]
        continue
      }
      await resolve(in: group, lastLogTime: &lastLogTime)
    }
  }

  private func writeClock(in group: any HostedGroup) async -> Bool {
    let command = HostedTxnCommand.clock(wallMillis: clock.wallClockMillis())
    do {
      _ = try await group.propose(
        ServiceCommand(service: HostedTxnService.name, payload: command.wireBytes()), request: nil,
        acknowledgedThrough: 0, principal: nil)
      return true
    } catch {
      return false
    }
  }

  /// Settles what is in doubt in `group`, if anything is prepared there.
  private func resolve(in group: any HostedGroup, lastLogTime: inout [GroupID: UInt64]) async {
    let id = group.spec.id
    do {
      // Prepared transactions to settle, or commit records whose coordinator may have left them unfinished.
      guard case .counts(let counts) = try await localQuery(.counts, in: group),
        counts.prepared > 0 || counts.records > 0
      else { return }
      // The shard's time moves only with its own entries: in a quiet group, write one, so that the age of what is
      // prepared there grows (unfinished records need no such haste: they age with the leader's clock entries).
      if counts.prepared > 0, lastLogTime[id] == counts.logTimeMillis {
        _ = try await group.propose(
          ServiceCommand(service: HostedTxnService.name, payload: TxnShardCommand.advanceTime.wireBytes()),
          request: nil, acknowledgedThrough: 0, principal: nil)
      }
      lastLogTime[id] = counts.logTimeMillis
      let count = try await transactions.resolveInDoubt(
        minimumAgeMillis: options.minimumAgeMillis, groups: [id], limit: options.batchLimit)
      if count > 0 {
        settled.add(count)
        logger.notice("settled \(count) transactions left in doubt by their coordinators", ["group": group.spec.name])
      }
    } catch is CancellationError {
      return
    } catch {
      logger.info("could not settle transactions in doubt yet: \(error)", ["group": group.spec.name])
    }
  }

  private func localQuery(_ query: TxnShardQuery, in group: any HostedGroup) async throws -> TxnShardQueryResult? {
    let answer = try await group.read(
      ServiceQuery(service: HostedTxnService.name, payload: query.wireBytes()), consistency: .stale, atLeast: 0)
    guard case .ok(let bytes) = answer.value else { return nil }
    return try TxnShardQueryResult(wireBytes: bytes)
  }
}

/// How many transactions a host's resolver settled.
final class SettledCount: Sendable {
  private let count = Atomic<Int>(0)

  func add(_ n: Int) { count.add(n, ordering: .relaxed) }

  var value: Int { count.load(ordering: .relaxed) }
}
