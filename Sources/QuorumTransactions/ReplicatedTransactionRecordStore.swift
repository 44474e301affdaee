public import QuorumCore

/// How a ``ReplicatedTransactionRecordStore`` reaches its replicated ``TransactionRecords`` table: submit a
/// command (appended to the group's log and applied) or read a query.
///
/// Implementations: ``ReplicatedLogRecordChannel`` over any ``QuorumCore/ReplicatedLog`` whose machine is the
/// table; a server host's client addressing the `txn` service of a group (whose ``TxnShard`` machine carries
/// the table) conforms in a few lines.
public protocol TransactionRecordChannel: Sendable {
  /// Appends `command` to the group's log and returns the table's answer.
  /// - Throws: when the group does not answer; the command may or may not have been applied. An implementation
  ///   may throw ``TransactionStoreError/rejected(_:)`` (or ``QuorumCore/ConsensusError/commandTooLarge(bytes:limit:)``,
  ///   which the store maps to it) only when no attempt of this submit can have been applied, and none would be:
  ///   the store then takes the command as refused for good.
  func submit(_ command: TransactionRecordCommand) async throws -> TransactionRecordResponse

  /// Answers `query` from the table, linearizably.
  func read(_ query: TransactionRecordQuery) async throws -> TransactionRecordQueryResult
}

/// A ``TransactionRecordChannel`` over a ``QuorumCore/ReplicatedLog`` of ``TransactionRecords``, with an
/// exactly-once session so that a retried command is applied once.
///
/// A node's log time starts at zero with its group, while transactions' starts are wall clock readings: before
/// its first command, and then before a command at least ``clockInterval`` after the last, the channel writes
/// its wall clock less `clockMargin` into the log (``TransactionRecordCommand/clock(wallMillis:)``), which moves
/// the table's time forward to it, never back. The table thus follows the clock furthest ahead among its users,
/// less the margin: a user whose clock runs ahead of the others by more than the margin plus the transaction
/// horizon leaves them no time to finish their transactions, which then abort — keep the clocks synchronized.
/// The margin keeps a user's own transactions within the table's
/// ``TransactionRecordLimits/maxClockAheadMillis`` (keep it below that limit), and one whose clock is further
/// ahead than that is refused (``TransactionRecordError/clockAhead(startedAtMillis:logTimeMillis:)``) rather than
/// allowed to push the table's time ahead for everyone.
public actor ReplicatedLogRecordChannel: TransactionRecordChannel {
  private let log: any ReplicatedLog<TransactionRecords>
  private let clock: any NodeClock
  private let clockMarginMillis: UInt64
  private var session: UInt64?
  private var sequence: UInt64 = 0
  /// When (monotonic) this channel last wrote its wall clock into the log.
  private var lastClockNanos: UInt64?

  /// How often the channel writes its wall clock into the log while it is used.
  public static let clockInterval: Duration = .seconds(60)

  /// Creates a channel over `log`, whose wall clock readings come from `clock` (the clock its transactions'
  /// starts come from) and are written `clockMargin` behind.
  public init(
    log: any ReplicatedLog<TransactionRecords>, clock: any NodeClock = SystemClock(),
    clockMargin: Duration = .seconds(30)
  ) {
    self.log = log
    self.clock = clock
    self.clockMarginMillis = clockMargin.nanoseconds / 1_000_000
  }

  public func submit(_ command: TransactionRecordCommand) async throws -> TransactionRecordResponse {
    let now = clock.monotonicNanos()
    if lastClockNanos.map({ now &- $0 >= Self.clockInterval.nanoseconds }) ?? true { await writeClock() }
    return try await submitOnce(command)
  }

  /// Writes this channel's wall clock, less the margin, into the log. A failure is not the command's to report:
  /// the clock is written again before the next command.
  private func writeClock() async {
    let at = clock.monotonicNanos()
    let wall = clock.wallClockMillis()
    do {
      _ = try await submitOnce(.clock(wallMillis: wall > clockMarginMillis ? wall - clockMarginMillis : 0))
      lastClockNanos = at
    } catch {
      lastClockNanos = nil
    }
  }

  private func submitOnce(_ command: TransactionRecordCommand) async throws -> TransactionRecordResponse {
    for attempt in 0..<2 {
      let id = try await currentSession()
      sequence += 1
      do {
        return try await log.propose(command, request: RequestID(session: id, sequence: sequence))
      } catch ConsensusError.sessionExpired where attempt == 0 {
        session = nil  // not applied: a fresh session may retry it
      }
    }
    throw ConsensusError.sessionExpired(session ?? 0)
  }

  public func read(_ query: TransactionRecordQuery) async throws -> TransactionRecordQueryResult {
    try await log.read(query, consistency: .linearizable)
  }

  private func currentSession() async throws -> UInt64 {
    if let session { return session }
    let fresh = try await log.registerSession()
    session = fresh
    sequence = 0
    return fresh
  }
}

/// Transaction records in a replicated group's ``TransactionRecords`` table, shared by a coordinator and its
/// participants: non-blocking two-phase commit.
///
/// The coordinator records its commit and a participant in doubt records an abort through the same
/// compare-and-set (``TransactionRecordStore/decideIfUndecided(_:_:participants:finisher:)``); the group's log
/// orders them, so whichever comes first holds and the other learns it. The group survives the crash of any
/// minority of its members, and the table outlives every coordinator and participant, so no single crash
/// blocks a transaction.
///
/// Every handle on the same table must be created with the same `identity` (any number naming the table, such
/// as its group's): participants compare it with the one in each prepare before resolving through the record.
/// Failures of the group come back as ``TransactionStoreError/unavailable(_:)``; every operation may be retried. A
/// command the group turns away before its log for good (``QuorumCore/ConsensusError/commandTooLarge(bytes:limit:)``)
/// comes back as ``TransactionStoreError/rejected(_:)``: certainly not applied. A full session quota
/// (``QuorumCore/ConsensusError/sessionQuotaExceeded(limit:)``) is temporary and comes back as
/// ``TransactionStoreError/unavailable(_:)``.
public struct ReplicatedTransactionRecordStore: TransactionRecordStore {
  /// The table's identity.
  public let sharedIdentity: UInt64?
  private let channel: any TransactionRecordChannel

  /// Creates a handle on the table behind `channel`, named `identity`.
  public init(channel: any TransactionRecordChannel, identity: UInt64) {
    self.channel = channel
    self.sharedIdentity = identity
  }

  /// Creates a handle on the table replicated by `log`, named `identity`, whose wall clock readings (written
  /// into the log: see ``ReplicatedLogRecordChannel``) come from `clock`.
  public init(log: any ReplicatedLog<TransactionRecords>, identity: UInt64, clock: any NodeClock = SystemClock()) {
    self.init(channel: ReplicatedLogRecordChannel(log: log, clock: clock), identity: identity)
  }

  private func submit(_ command: TransactionRecordCommand) async throws -> TransactionRecordResponse {
    do {
      return try await channel.submit(command)
    } catch let error as TransactionStoreError {
      throw error
    } catch let error as ConsensusError where error.isRejectionBeforeTheLog {
      throw TransactionStoreError.rejected("\(command): \(error)")
    } catch {
      throw TransactionStoreError.unavailable("\(command): \(error)")
    }
  }

  private func read(_ query: TransactionRecordQuery) async throws -> TransactionRecordQueryResult {
    do {
      return try await channel.read(query)
    } catch let error as TransactionStoreError {
      throw error
    } catch {
      throw TransactionStoreError.unavailable("\(query): \(error)")
    }
  }

  public func recordPrepared(_ id: TxnID, participant: NodeID, participants: [NodeID]) async throws
    -> TransactionDecision?
  {
    let command = TransactionRecordCommand.prepared(id, participant: participant, participants: participants)
    return try await submit(command).decision(for: command)
  }

  public func decideIfUndecided(
    _ id: TxnID, _ decision: TransactionDecision, participants: [NodeID], finisher: NodeID?
  ) async throws -> TransactionDecision {
    let command = TransactionRecordCommand.decide(id, decision, participants: participants, finisher: finisher)
    guard let holding = try await submit(command).decision(for: command) else {
      throw TransactionStoreError.badAnswer("no decision after \(command)")
    }
    return holding
  }

  public func recordFinished(_ id: TxnID, by node: NodeID) async throws {
    let answer = try await submit(.finished(id, node: node))
    guard case .finished = answer else { throw TransactionStoreError.badAnswer("\(answer) to finished \(id)") }
  }

  public func outcome(of id: TxnID) async throws -> TransactionRecordSummary? {
    let answer = try await read(.record(id))
    guard case .record(let summary) = answer else { throw TransactionStoreError.badAnswer("\(answer)") }
    return summary
  }

  public func pendingRecords(of node: NodeID) async throws -> [TransactionRecordSummary] {
    try await collectRecords(of: node) { try await read($0) }
  }

  public func reserveSequenceNumbers(for coordinator: NodeID, count: UInt64) async throws -> Range<UInt64> {
    let command = TransactionRecordCommand.reserve(coordinator: coordinator, count: count)
    switch try await submit(command) {
    case .reserved(let first, let count): return first..<first.addingSaturated(count)
    case .refused(let error): throw TransactionStoreError.refused(error)
    case let other: throw TransactionStoreError.badAnswer("\(other) to \(command)")
    }
  }
}

extension ConsensusError {
  /// Whether the group certainly did not apply the command, and would turn it away again. A session quota is not
  /// such a refusal: it frees up as idle sessions expire, so it is taken as a group that did not answer.
  var isRejectionBeforeTheLog: Bool {
    switch self {
    case .commandTooLarge: return true
    default: return false
    }
  }
}
