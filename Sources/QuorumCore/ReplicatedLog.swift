/// How fresh a read must be: the consistency models of the CAP trade-off, chosen per request.
public enum ReadConsistency: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
  /// Linearizable. The leader confirms with a quorum that it is still leader (ReadIndex) and waits until its
  /// state machine has applied everything committed at that moment. Costs one round trip; unavailable in
  /// a minority partition.
  case linearizable
  /// Served by the leader while its lease holds, with no round trip. Linearizable as long as clocks drift
  /// less than the configured bound; unavailable in a minority partition.
  case lease
  /// Served from the local replica's applied state, leader or not. Always available, possibly stale: it
  /// reflects some earlier committed prefix of the log.
  case stale
  /// Session consistency: read-your-writes and monotonic reads for one client. Served by any replica, leader or
  /// not, once it has applied everything the client has already seen in the group (the log position of its
  /// last write or read there, which the client sends along); no round trip to the leader, so reads spread
  /// over every replica. It may miss other clients' most recent writes. Available wherever a replica has
  /// caught up with the client.
  case session

  public var description: String { rawValue }
}

/// Facts about the log position a command is applied at, identical on every replica.
public struct ApplyContext: Sendable, Hashable {
  /// The log position (Raft index or Paxos slot).
  public var index: UInt64
  /// The log time at this position, in milliseconds. Replicas use it (never their own clocks) for anything
  /// time-based, such as lock TTLs and session expiry, so apply stays deterministic.
  ///
  /// Log time measures elapsed time, not a date. In a consensus group it is the largest leader's stamp
  /// (``ReplicatedCommand/timestampMillis``) applied so far: it starts at 0 with the group, and each leader
  /// stamps from the log time it had applied when it took over, advanced by its monotonic clock, so no
  /// wall-clock step moves it and a change of leader only slows it (by at most the time the change took). A log
  /// that is not replicated may define its own (the local transaction record store uses the node's wall clock).
  public var timestampMillis: UInt64
  /// The authenticated principal whose request the entry carries, or `nil` (a client in the same process, a
  /// node without authentication, or an entry the host or the engine wrote itself). It is in the log entry, so
  /// every replica sees the same: a machine may check that a resource it keeps belongs to the principal naming
  /// it (as the lock table does for its sessions).
  public var principal: String?

  /// Creates an apply context.
  public init(index: UInt64, timestampMillis: UInt64, principal: String? = nil) {
    self.index = index
    self.timestampMillis = timestampMillis
    self.principal = principal
  }
}

/// A deterministic state machine replicated by a consensus engine.
///
/// Every replica applies the same commands in the same order, so `apply` must depend only on the current
/// state, the command and the ``ApplyContext``: no clocks, no randomness, no I/O.
///
/// A conforming type must have value semantics (a struct of values, or copy-on-write storage): to take a
/// snapshot, a node copies its machine and calls ``snapshot()`` on the copy in a background task while it
/// goes on applying commands to its own. A class shared between the two copies would put later commands into
/// a snapshot labelled with an earlier index, and a restart would apply them twice.
public protocol StateMachine: Sendable {
  /// A state-changing request, written to the log.
  associatedtype Command: WireCodable & Sendable
  /// The result of applying a command. Encodable so that exactly-once sessions can remember it and so it
  /// can cross the network to a client.
  associatedtype Response: WireCodable & Sendable
  /// A read-only request, answered from applied state (never written to the log).
  associatedtype Query: Sendable
  /// The answer to a query.
  associatedtype QueryResult: Sendable

  /// Applies a committed command.
  mutating func apply(_ command: Command, context: ApplyContext) -> Response

  /// Answers a query from the current state.
  func query(_ query: Query) -> QueryResult

  /// Serialises the whole state, for log compaction and for replicas that fell too far behind.
  func snapshot() -> [UInt8]

  /// Writes the bytes of ``snapshot()`` to the end of `writer`. An enclosing snapshot (the sessions around the
  /// machine, the services of a group) embeds the state this way, without a copy of it in an array of its own.
  /// The default writes `snapshot()`; a machine with a large state writes itself.
  func writeSnapshot(to writer: inout WireWriter)

  /// Replaces the state with a snapshot made by ``snapshot()``.
  mutating func restore(from snapshot: [UInt8]) throws

  /// Something the machine wants told to waiting clients, produced while applying (a lock granted to a waiter
  /// in a later entry, a lease lost). Machines without any leave it `Never`.
  associatedtype Notification: Sendable = Never

  /// The notifications produced by the entries applied since the last call. The node calls it after applying
  /// and hands them to the server that waits for them.
  mutating func takeNotifications() -> [Notification]

  /// The earliest log time (milliseconds) at which the state changes by itself — a lease or a session expiring —
  /// or `nil` if nothing is due. The leader proposes a time-only entry once its log clock passes it, so expiry
  /// happens even when no client writes.
  var nextDeadlineMillis: UInt64? { get }

  /// Applies a time-only entry: log time moved to `context.timestampMillis`; expire what is due.
  mutating func advanceTime(context: ApplyContext)

  /// Applies the log entry `bytes` at `index` through `replicated` (its sessions, then this machine), as
  /// ``ReplicatedStateMachine/apply(entry:at:)`` does.
  ///
  /// A replica generic over its machine calls this for every committed entry. Machines do not implement it: the
  /// default is inlinable, so each machine type's witness is the apply path compiled for that type, and the
  /// replica's generic code pays no generic type lookups (`swift_getGenericMetadata`) inside it.
  static func applyEntry(
    _ bytes: [UInt8], at index: UInt64, to replicated: inout ReplicatedStateMachine<Self>
  ) -> ApplyOutcome<Response>

  /// The log entry for a client's `command`: the encoded ``ReplicatedCommand`` carrying it with the leader's
  /// timestamp and the request's session information.
  ///
  /// As ``applyEntry(_:at:to:)``, a requirement only so that its witness is compiled for the conforming type:
  /// machines do not implement it.
  static func encodeEntry(
    _ command: Command, timestampMillis: UInt64, request: RequestID?, acknowledgedThrough: UInt64,
    principal: String?
  ) -> [UInt8]
}

extension StateMachine {
  @inlinable
  public static func applyEntry(
    _ bytes: [UInt8], at index: UInt64, to replicated: inout ReplicatedStateMachine<Self>
  ) -> ApplyOutcome<Response> {
    replicated.apply(entry: bytes, at: index)
  }

  @inlinable
  public static func encodeEntry(
    _ command: Command, timestampMillis: UInt64, request: RequestID?, acknowledgedThrough: UInt64,
    principal: String?
  ) -> [UInt8] {
    let replicated = ReplicatedCommand(
      timestampMillis: timestampMillis, request: request, acknowledgedThrough: acknowledgedThrough,
      principal: principal, body: .command(command))
    var writer = WireWriter(reservingCapacity: 128)
    replicated.encode(to: &writer)
    return writer.bytes
  }
}

extension StateMachine {
  /// Writes `snapshot()`.
  public func writeSnapshot(to writer: inout WireWriter) { writer.writeRaw(snapshot()) }
}

extension StateMachine where Notification == Never {
  /// No notifications.
  public mutating func takeNotifications() -> [Never] { [] }
}

extension StateMachine {
  /// Nothing expires by itself.
  public var nextDeadlineMillis: UInt64? { nil }

  /// Nothing to expire.
  public mutating func advanceTime(context: ApplyContext) {}
}

/// Identifies one request of one client, for exactly-once execution.
///
/// A client registers a session, then numbers its requests 1, 2, 3…; a retried request carries the same
/// number, and a replica that already applied it returns the remembered response instead of applying it
/// again (Raft thesis §6.3).
public struct RequestID: Sendable, Hashable, WireCodable, CustomStringConvertible {
  /// The client's session number, assigned when the session was registered.
  public var session: UInt64
  /// The request's sequence number within the session, starting at 1.
  public var sequence: UInt64

  /// Creates a request identifier.
  public init(session: UInt64, sequence: UInt64) {
    self.session = session
    self.sequence = sequence
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeVarint(session)
    writer.writeVarint(sequence)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    session = try reader.readVarint()
    sequence = try reader.readVarint()
  }

  public var description: String { "\(session)#\(sequence)" }
}

/// Why a consensus engine could not carry out a request.
public enum ConsensusError: Error, Sendable, Equatable, CustomStringConvertible {
  /// This node is not the leader. `hint` is the leader it knows of, if any: retry there.
  case notLeader(hint: NodeID?)
  /// The request was not completed in time; it may or may not take effect later.
  case timeout
  /// Leadership changed while the command was in flight and the command was definitely not committed.
  case dropped
  /// Leadership changed while the command was in flight; it may or may not have been committed. A client
  /// with a session can retry safely.
  case outcomeUnknown
  /// The node is shutting down or stopped.
  case stopped
  /// Too many requests are waiting; retry later.
  case overloaded(limit: Int)
  /// A leadership transfer is in progress; proposals are refused until it completes.
  case transferInProgress
  /// The session is unknown or expired; register a new one.
  case sessionExpired(UInt64)
  /// A lease read was asked for but the leader's lease is not currently valid.
  case leaseExpired
  /// A membership change was refused (for example, one is already in progress).
  case membershipChangeRejected(String)
  /// The command's size exceeds the engine's limit.
  case commandTooLarge(bytes: Int, limit: Int)
  /// The request names a session that another principal registered; nothing was applied. Register a session
  /// of your own.
  case sessionNotOwned(UInt64)
  /// The principal already holds as many sessions as ``SessionPolicy/maxSessionsPerPrincipal`` allows; close
  /// or stop using some (idle ones expire after the session timeout) before registering more.
  case sessionQuotaExceeded(limit: Int)
  /// The request was applied before (or refused as if it had been, being below the session's acknowledged
  /// mark), and its response is no longer remembered: the client acknowledged it, or the session's bounds
  /// evicted it. It was not applied again, and a retry under the same identifier gets this same answer: the
  /// outcome is unknown to the client, for good.
  case responseForgotten(RequestID)

  public var description: String {
    switch self {
    case .notLeader(let hint): return "not the leader" + (hint.map { " (leader is \($0))" } ?? " (leader unknown)")
    case .timeout: return "request timed out"
    case .dropped: return "proposal dropped by a leadership change"
    case .outcomeUnknown: return "leadership changed; the outcome is unknown"
    case .stopped: return "node stopped"
    case .overloaded(let limit): return "overloaded (\(limit) requests pending)"
    case .transferInProgress: return "leadership transfer in progress"
    case .sessionExpired(let id): return "session \(id) expired or unknown"
    case .leaseExpired: return "leader lease not valid"
    case .membershipChangeRejected(let why): return "membership change rejected: \(why)"
    case .commandTooLarge(let bytes, let limit): return "command of \(bytes) bytes exceeds the limit of \(limit)"
    case .sessionNotOwned(let id): return "session \(id) belongs to another principal"
    case .sessionQuotaExceeded(let limit): return "this principal already holds \(limit) sessions (its quota)"
    case .responseForgotten(let request):
      return "request \(request) was applied before and its response is no longer kept; its outcome is unknown"
    }
  }
}

/// A consensus engine seen from the services built on it: a replicated, totally ordered log of commands
/// applied to a ``StateMachine``, plus reads at a chosen consistency.
///
/// Raft's `RaftNode` and Multi-Paxos's log both conform, so the key-value store, the lock service and the
/// transaction participants run on either without change.
public protocol ReplicatedLog<Machine>: Sendable {
  /// The replicated state machine.
  associatedtype Machine: StateMachine

  /// Appends `command` to the log and returns the state machine's response once it is applied here.
  ///
  /// With a `request` identifier the command is applied at most once even if proposed again (exactly-once
  /// sessions); without one a retry after ``ConsensusError/outcomeUnknown`` may apply it twice.
  /// - Throws: ``ConsensusError``.
  func propose(_ command: Machine.Command, request: RequestID?) async throws -> Machine.Response

  /// Like ``propose(_:request:)``, also telling the request's session that the client has received every response
  /// through sequence number `acknowledgedThrough`, so the session may forget them (a retry of one of them then
  /// gets ``ConsensusError/responseForgotten(_:)``).
  ///
  /// A log that keeps no session bounds may ignore the mark: the default does, calling ``propose(_:request:)``.
  func propose(_ command: Machine.Command, request: RequestID?, acknowledgedThrough: UInt64) async throws
    -> Machine.Response

  /// Answers `query` from replicated state at the given consistency.
  ///
  /// This call carries no client position, so a log serves ``ReadConsistency/session`` as
  /// ``ReadConsistency/linearizable``: answering from whatever a replica has applied would break the session's
  /// read-your-writes promise.
  /// - Throws: ``ConsensusError``.
  func read(_ query: Machine.Query, consistency: ReadConsistency) async throws -> Machine.QueryResult

  /// Opens an exactly-once session and returns its number.
  func registerSession() async throws -> UInt64
}

extension ReplicatedLog {
  /// Appends `command` with no session.
  public func propose(_ command: Machine.Command) async throws -> Machine.Response {
    try await propose(command, request: nil)
  }

  /// Calls ``propose(_:request:)``, ignoring the acknowledgement mark.
  public func propose(_ command: Machine.Command, request: RequestID?, acknowledgedThrough: UInt64) async throws
    -> Machine.Response
  {
    try await propose(command, request: request)
  }
}
