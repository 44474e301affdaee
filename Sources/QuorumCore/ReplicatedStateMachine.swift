/// What a consensus engine writes into its log for one client request: the leader's timestamp, the
/// exactly-once session information, and the body.
public struct ReplicatedCommand<Command: WireCodable & Sendable>: Sendable, WireCodable {
  /// The body of a replicated command.
  public enum Body: Sendable {
    /// A state-machine command.
    case command(Command)
    /// Open an exactly-once session; its number is the index of this entry.
    case registerSession
    /// Keep a session alive without doing anything else.
    case keepAlive
    /// Move log time forward and let the state machine expire what is due (proposed by the leader when a
    /// deadline passes and no other entry carries the time).
    case advanceTime
  }

  /// The leader's log time in milliseconds when it proposed the command — not a wall-clock date: the log time
  /// the leader had applied when it took over (0 in a new group), advanced by its monotonic clock since. Replicas
  /// apply the largest stamp seen so far as the group's log time (``ApplyContext/timestampMillis``) and use it
  /// for every time-based decision, so that applying stays deterministic.
  public var timestampMillis: UInt64
  /// The client's session and sequence number, for exactly-once execution.
  public var request: RequestID?
  /// The client has received every response up to this sequence number; the session may forget them.
  public var acknowledgedThrough: UInt64
  /// The authenticated principal that sent the request, or `nil` (a client in the same process, or a node that
  /// runs without authentication). A session belongs to the principal that registered it: a command naming
  /// another principal's session is refused, deterministically, on every replica.
  public var principal: String?
  /// What to do.
  public var body: Body

  /// Creates a replicated command.
  @inlinable
  public init(
    timestampMillis: UInt64, request: RequestID? = nil, acknowledgedThrough: UInt64 = 0, principal: String? = nil,
    body: Body
  ) {
    self.timestampMillis = timestampMillis
    self.request = request
    self.acknowledgedThrough = acknowledgedThrough
    self.principal = principal
    self.body = body
  }

  /// Set in the body's tag when a principal follows it. Entries without a principal encode exactly as before
  /// principals existed, so logs written then still decode, and decode the same.
  @usableFromInline static var principalFlag: UInt8 { 0x80 }

  @inlinable
  public func encode(to writer: inout WireWriter) {
    writer.writeVarint(timestampMillis)
    writer.writeOptional(request)
    writer.writeVarint(acknowledgedThrough)
    let tag: UInt8
    switch body {
    case .command: tag = 0
    case .registerSession: tag = 1
    case .keepAlive: tag = 2
    case .advanceTime: tag = 3
    }
    if let principal {
      writer.writeByte(tag | Self.principalFlag)
      writer.writeString(principal)
    } else {
      writer.writeByte(tag)
    }
    if case .command(let command) = body { command.encode(to: &writer) }
  }

  /// Inlinable so that the apply path specialised for a machine decodes its commands specialised too.
  @inlinable
  public init(from reader: inout WireReader) throws(WireError) {
    timestampMillis = try reader.readVarint()
    request = try reader.readOptional(RequestID.self)
    acknowledgedThrough = try reader.readVarint()
    let at = reader.position
    let raw = try reader.readByte()
    principal = raw & Self.principalFlag != 0 ? try reader.readString() : nil
    switch raw & ~Self.principalFlag {
    case 0: body = .command(try reader.read(Command.self, field: "command"))
    case 1: body = .registerSession
    case 2: body = .keepAlive
    case 3: body = .advanceTime
    case let tag: throw WireError(.unknownTag(type: "ReplicatedCommand.Body", tag: UInt64(tag)), at: at)
    }
  }
}

/// The result of applying one log entry through a ``ReplicatedStateMachine``.
public enum ApplyOutcome<Response: Sendable>: Sendable {
  /// The command was applied; this is its response.
  case applied(Response)
  /// The request was applied before, by the entry at `appliedAt`; this is the remembered response (it was not
  /// applied again).
  case duplicate(Response, appliedAt: UInt64)
  /// A session was opened; its number.
  case sessionRegistered(UInt64)
  /// The session was kept alive.
  case keptAlive
  /// Log time moved forward (a time-only entry).
  case timeAdvanced
  /// The session is unknown or has expired; the command was not applied.
  case sessionExpired(UInt64)
  /// The request was applied earlier but its response was already forgotten (the client acknowledged it or
  /// too many were outstanding); it was not applied again.
  case responseForgotten(RequestID)
  /// The request names a session another principal registered; nothing was applied and the session is
  /// untouched.
  case sessionNotOwned(RequestID)
  /// The principal already holds ``SessionPolicy/maxSessionsPerPrincipal`` sessions; none was opened.
  case sessionQuotaExceeded(principal: String, limit: Int)
  /// The entry could not be decoded (written by an incompatible version); nothing was applied.
  case undecodable(WireError)
}

/// Limits of the exactly-once session table.
///
/// Every replica of a group must use the same policy: which sessions expire, which registration is refused and
/// which answers are forgotten all depend on it, so replicas with different policies would apply the same log
/// differently. A policy is changed by stopping every replica of the group, not one at a time.
public struct SessionPolicy: Sendable, Equatable {
  /// A session with no request for this long (in log time) expires.
  public var timeoutMillis: UInt64
  /// The most sessions kept; registering beyond it expires the least recently active one.
  public var maxSessions: Int
  /// The most unacknowledged responses remembered per session.
  public var maxResponsesPerSession: Int
  /// The most sessions one authenticated principal may hold; registering beyond it is refused
  /// (``ApplyOutcome/sessionQuotaExceeded(principal:limit:)``) until one of them expires. Sessions registered
  /// without a principal (in-process clients, nodes without authentication) count only against
  /// ``maxSessions``: nothing tells their owners apart.
  public var maxSessionsPerPrincipal: Int
  /// The most bytes of encoded responses one session remembers: past it the oldest are forgotten (as past
  /// ``maxResponsesPerSession``), the newest always kept. With ``maxSessions`` it bounds what the session
  /// table makes every replica, and every snapshot, hold.
  public var maxResponseBytesPerSession: Int

  /// Creates a policy.
  public init(
    timeoutMillis: UInt64 = 300_000, maxSessions: Int = 100_000, maxResponsesPerSession: Int = 256,
    maxSessionsPerPrincipal: Int = 4096, maxResponseBytesPerSession: Int = 1 << 20
  ) {
    self.timeoutMillis = timeoutMillis
    self.maxSessions = maxSessions
    self.maxResponsesPerSession = maxResponsesPerSession
    self.maxSessionsPerPrincipal = maxSessionsPerPrincipal
    self.maxResponseBytesPerSession = maxResponseBytesPerSession
  }
}

/// A ``StateMachine`` plus the exactly-once session table of Raft thesis §6.3, applied from log entries.
///
/// Every consensus engine applies committed entries through this type, so sessions, duplicate detection and
/// deterministic expiry behave the same on Raft and Multi-Paxos. A session is numbered by the log index of
/// its registration; a request is `(session, sequence)`. Expiry uses the leader timestamps carried in the
/// entries, never a replica's own clock, so every replica expires the same sessions at the same entry.
///
/// A session belongs to the principal that registered it (``ReplicatedCommand/principal``): a command that
/// names another principal's session is refused before it touches the session, so a client cannot guess
/// another client's next request number and turn that client's real write into an acknowledged duplicate.
/// The table is bounded by ``SessionPolicy``: sessions in all and per principal, responses per session in
/// number and in bytes.
public struct ReplicatedStateMachine<Machine: StateMachine>: Sendable {
  /// The application's state machine.
  @inlinable public var machine: Machine { _machine }
  /// The session limits.
  public let policy: SessionPolicy
  // Internal rather than private, with public getters beside them, so that the inlinable apply path (specialised
  // for each machine type, see `StateMachine.applyEntry(_:at:to:)`) can change them.
  @usableFromInline var _machine: Machine
  @usableFromInline var sessions = SessionTable()
  @usableFromInline var _logTimeMillis: UInt64 = 0
  @usableFromInline var _appliedIndex: UInt64 = 0
  /// The newest leader timestamp applied (log time).
  public var logTimeMillis: UInt64 { _logTimeMillis }
  /// The index of the last applied entry.
  public var appliedIndex: UInt64 { _appliedIndex }

  /// Wraps `machine`.
  public init(_ machine: Machine, policy: SessionPolicy = SessionPolicy()) {
    self._machine = machine
    self.policy = policy
  }

  /// The number of live sessions.
  public var sessionCount: Int { sessions.count }

  /// The number of live sessions `principal` registered.
  public func sessionCount(of principal: String) -> Int { sessions.count(of: principal) }

  /// The bytes of responses `session` remembers (0 for an unknown session).
  public func rememberedResponseBytes(of session: UInt64) -> Int { sessions.responseBytes(of: session) }

  /// Applies the entry at `index` whose payload is an encoded ``ReplicatedCommand``.
  ///
  /// Inlinable, as is ``apply(_:at:)``: a replica generic over its machine applies through
  /// ``StateMachine/applyEntry(_:at:to:)``, whose witness is this code compiled for the concrete machine.
  @inlinable
  public mutating func apply(entry bytes: [UInt8], at index: UInt64) -> ApplyOutcome<Machine.Response> {
    _appliedIndex = index
    let command: ReplicatedCommand<Machine.Command>
    do {
      // Decoded here rather than through `init(wireBytes:)`, which would reach the decoder through the generic
      // witness: specialised, this calls the decoder compiled for the machine's command type.
      var reader = WireReader(bytes)
      command = try ReplicatedCommand<Machine.Command>(from: &reader)
      try reader.expectEnd()
    } catch {
      return .undecodable(error)
    }
    return apply(command, at: index)
  }

  /// Applies a decoded command at `index`.
  @inlinable
  public mutating func apply(_ command: ReplicatedCommand<Machine.Command>, at index: UInt64) -> ApplyOutcome<
    Machine.Response
  > {
    _appliedIndex = index
    _logTimeMillis = max(_logTimeMillis, command.timestampMillis)
    let logTimeMillis = _logTimeMillis
    sessions.expireIdle(now: logTimeMillis, policy: policy)
    let context = ApplyContext(index: index, timestampMillis: logTimeMillis, principal: command.principal)
    switch command.body {
    case .registerSession:
      guard sessions.register(index, owner: command.principal, now: logTimeMillis, policy: policy) else {
        return .sessionQuotaExceeded(principal: command.principal ?? "", limit: policy.maxSessionsPerPrincipal)
      }
      return .sessionRegistered(index)
    case .advanceTime:
      _machine.advanceTime(context: context)
      return .timeAdvanced
    case .keepAlive:
      guard let request = command.request else { return .keptAlive }
      switch sessions.keepAlive(request.session, principal: command.principal, now: logTimeMillis) {
      case .expired?: return .sessionExpired(request.session)
      case .notOwned?: return .sessionNotOwned(request)
      default: return .keptAlive
      }
    case .command(let body):
      guard let request = command.request else {
        return .applied(_machine.apply(body, context: context))
      }
      switch sessions.admit(
        request, principal: command.principal, acknowledgedThrough: command.acknowledgedThrough, now: logTimeMillis)
      {
      case .apply(let position):
        let response = _machine.apply(body, context: context)
        // Remembered until acknowledged, so sized to the response (most are a few bytes), not a round 64.
        var writer = WireWriter(reservingCapacity: 16)
        response.encode(to: &writer)
        sessions.remember(writer.bytes, of: request, at: index, in: position, policy: policy)
        return .applied(response)
      case .duplicate(let encoded, let appliedAt):
        // Our own encoding of a response of this type; were it ever unreadable, the request still must not
        // apply twice, and its answer is as good as forgotten.
        guard let response = try? Machine.Response(wireBytes: encoded) else { return .responseForgotten(request) }
        return .duplicate(response, appliedAt: appliedAt)
      case .forgotten:
        return .responseForgotten(request)
      case .notOwned:
        return .sessionNotOwned(request)
      case .expired:
        return .sessionExpired(request.session)
      }
    }
  }

  /// Answers a query from the machine's current state.
  @inlinable public func query(_ query: Machine.Query) -> Machine.QueryResult { machine.query(query) }

  /// The notifications the machine produced since the last call.
  @inlinable public mutating func takeNotifications() -> [Machine.Notification] { _machine.takeNotifications() }

  /// The machine's next deadline in log time, if any.
  @inlinable public var nextDeadlineMillis: UInt64? { machine.nextDeadlineMillis }

  /// The snapshot format written: 3 records each session's owner (2 added the apply indexes of remembered
  /// responses; 1 had neither). Every older format is still read.
  static var snapshotVersion: UInt64 { 3 }

  /// Serialises the sessions and the machine.
  public func snapshot() -> [UInt8] {
    var w = WireWriter(reservingCapacity: 256)
    w.writeVarint(Self.snapshotVersion)
    w.writeVarint(logTimeMillis)
    w.writeVarint(appliedIndex)
    sessions.write(to: &w)
    w.writeLengthPrefixed { machine.writeSnapshot(to: &$0) }
    return w.bytes
  }

  /// Replaces sessions and machine state with a snapshot made by ``snapshot()`` (of this format or an older
  /// one: sessions from a snapshot without owners belong to no principal).
  public mutating func restore(from bytes: [UInt8]) throws {
    var r = WireReader(bytes, limits: .snapshot(bytes))
    let version = try r.readVarint()
    guard (1...Self.snapshotVersion).contains(version) else {
      throw WireError(.unsupportedVersion(UInt8(truncatingIfNeeded: version)), at: 0)
    }
    _logTimeMillis = try r.readVarint()
    _appliedIndex = try r.readVarint()
    let restored = try SessionTable.read(from: &r, version: version, lastExpiryScan: _logTimeMillis) {
      (reader: inout WireReader) throws(WireError) in _ = try Machine.Response(from: &reader)
    }
    let machineBytes = try r.readBytes()
    try r.expectEnd()
    try _machine.restore(from: machineBytes)
    sessions = restored
  }
}

/// Structural equality, for checking that a replica restored from a snapshot holds what one that applied every
/// entry holds — also what the snapshot encoding might leave out, which a comparison of snapshot bytes cannot see.
extension ReplicatedStateMachine: Equatable where Machine: Equatable {
  /// Whether `a` and `b` hold the same machine, sessions, log time, applied index and policy.
  ///
  /// The session table's last expiry scan is compared by scan period, not by value: a restored table takes the log
  /// time for it, which lies in the same period as the scan it replaces, so it scans at the same entries.
  public static func == (a: Self, b: Self) -> Bool { a.differences(from: b).isEmpty }

  /// The parts in which `self` differs from `other`, in words (empty: equal, as for `==`). `"machine"` names a
  /// difference in the wrapped machine; the caller may ask the machine for more.
  package func differences(from other: Self) -> [String] {
    var parts: [String] = []
    if policy != other.policy { parts.append("session policy") }
    if _logTimeMillis != other._logTimeMillis {
      parts.append("log time \(_logTimeMillis) vs \(other._logTimeMillis)")
    }
    if _appliedIndex != other._appliedIndex {
      parts.append("applied index \(_appliedIndex) vs \(other._appliedIndex)")
    }
    if let difference = sessions.difference(from: other.sessions) { parts.append("sessions: \(difference)") }
    if !sessions.scansWithTable(other.sessions, policy: policy) {
      parts.append(
        "session expiry scan \(sessions.lastExpiryScanMillis) vs \(other.sessions.lastExpiryScanMillis) ms")
    }
    if _machine != other._machine { parts.append("machine") }
    return parts
  }
}
