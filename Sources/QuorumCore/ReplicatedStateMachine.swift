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

  /// The leader's wall clock in milliseconds when it proposed the command; replicas use it for every
  /// time-based decision so that applying stays deterministic.
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
  private static var principalFlag: UInt8 { 0x80 }

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
  private struct Remembered: Sendable {
    /// The index of the entry that applied the request.
    var index: UInt64
    var response: Machine.Response
    /// The response's encoded size, counted against ``SessionPolicy/maxResponseBytesPerSession``.
    var bytes: Int
  }

  private struct Session: Sendable {
    /// The principal that registered the session (`nil`: none was authenticated).
    var owner: String?
    var lastActiveMillis: UInt64
    var acknowledgedThrough: UInt64
    /// Requests above ``acknowledgedThrough`` that were applied but whose responses the per-session bounds
    /// evicted. Kept so that an earlier request pipelined out of order is still applied exactly once.
    var forgotten: Set<UInt64> = []
    /// The remembered responses by sequence.
    var responses: [UInt64: Remembered] = [:]
    /// The sum of the remembered responses' sizes.
    var responseBytes = 0

    /// Keeps only the responses above `sequence`.
    mutating func dropResponses(through sequence: UInt64) {
      responses = responses.filter { $0.key > sequence }
      responseBytes = responses.values.reduce(0) { $0 + $1.bytes }
    }

    /// Forgets the response of the lowest sequence, remembering that it was applied.
    mutating func forgetLowest() {
      guard let lowest = responses.keys.min(), let removed = responses.removeValue(forKey: lowest) else { return }
      responseBytes -= removed.bytes
      forgotten.insert(lowest)
    }
  }

  /// The application's state machine.
  public private(set) var machine: Machine
  /// The session limits.
  public let policy: SessionPolicy
  private var sessions: [UInt64: Session] = [:]
  /// How many sessions each principal holds (derived from ``sessions``; never serialised).
  private var sessionsByOwner: [String: Int] = [:]
  /// The newest leader timestamp applied (log time).
  public private(set) var logTimeMillis: UInt64 = 0
  /// The index of the last applied entry.
  public private(set) var appliedIndex: UInt64 = 0
  private var lastExpiryScanMillis: UInt64 = 0

  /// Wraps `machine`.
  public init(_ machine: Machine, policy: SessionPolicy = SessionPolicy()) {
    self.machine = machine
    self.policy = policy
  }

  /// The number of live sessions.
  public var sessionCount: Int { sessions.count }

  /// The number of live sessions `principal` registered.
  public func sessionCount(of principal: String) -> Int { sessionsByOwner[principal] ?? 0 }

  /// The bytes of responses `session` remembers (0 for an unknown session).
  public func rememberedResponseBytes(of session: UInt64) -> Int { sessions[session]?.responseBytes ?? 0 }

  /// Applies the entry at `index` whose payload is an encoded ``ReplicatedCommand``.
  public mutating func apply(entry bytes: [UInt8], at index: UInt64) -> ApplyOutcome<Machine.Response> {
    appliedIndex = index
    let command: ReplicatedCommand<Machine.Command>
    do {
      command = try ReplicatedCommand<Machine.Command>(wireBytes: bytes)
    } catch {
      return .undecodable(error)
    }
    return apply(command, at: index)
  }

  /// Applies a decoded command at `index`.
  public mutating func apply(_ command: ReplicatedCommand<Machine.Command>, at index: UInt64) -> ApplyOutcome<
    Machine.Response
  > {
    appliedIndex = index
    logTimeMillis = max(logTimeMillis, command.timestampMillis)
    expireIdleSessions()
    let context = ApplyContext(index: index, timestampMillis: logTimeMillis)
    switch command.body {
    case .registerSession:
      return register(at: index, owner: command.principal)
    case .advanceTime:
      machine.advanceTime(context: context)
      return .timeAdvanced
    case .keepAlive:
      guard let request = command.request else { return .keptAlive }
      guard let session = sessions[request.session] else { return .sessionExpired(request.session) }
      guard session.owner == command.principal else { return .sessionNotOwned(request) }
      sessions[request.session]?.lastActiveMillis = logTimeMillis
      return .keptAlive
    case .command(let body):
      guard let request = command.request else {
        return .applied(machine.apply(body, context: context))
      }
      // Taken out of the table while it changes, so that its remembered responses are changed in place rather
      // than copied (a copy left in the table would share them); put back on every path.
      guard var session = sessions.removeValue(forKey: request.session) else {
        return .sessionExpired(request.session)
      }
      defer { sessions[request.session] = session }
      // Before anything about the session changes: a forged request must leave no trace in it.
      guard session.owner == command.principal else { return .sessionNotOwned(request) }
      session.lastActiveMillis = logTimeMillis
      if command.acknowledgedThrough > session.acknowledgedThrough {
        session.acknowledgedThrough = command.acknowledgedThrough
        session.dropResponses(through: command.acknowledgedThrough)
        if !session.forgotten.isEmpty {
          session.forgotten = session.forgotten.filter { $0 > command.acknowledgedThrough }
        }
      }
      if let remembered = session.responses[request.sequence] {
        return .duplicate(remembered.response, appliedAt: remembered.index)
      }
      // Applied requests are exactly those with a remembered response, those whose response the bounds
      // evicted (`forgotten`), and those at or below the acknowledged mark. A request pipelined out of order
      // is still applied once, in the order it commits.
      if request.sequence <= session.acknowledgedThrough || session.forgotten.contains(request.sequence) {
        return .responseForgotten(request)
      }
      let response = machine.apply(body, context: context)
      remember(response, of: request.sequence, at: index, in: &session)
      return .applied(response)
    }
  }

  private mutating func register(at index: UInt64, owner: String?) -> ApplyOutcome<Machine.Response> {
    if let owner, sessionCount(of: owner) >= policy.maxSessionsPerPrincipal {
      return .sessionQuotaExceeded(principal: owner, limit: policy.maxSessionsPerPrincipal)
    }
    if sessions.count >= policy.maxSessions, let oldest = sessions.min(by: { lessActive($0, $1) })?.key {
      removeSession(oldest)
    }
    sessions[index] = Session(owner: owner, lastActiveMillis: logTimeMillis, acknowledgedThrough: 0)
    if let owner { sessionsByOwner[owner, default: 0] += 1 }
    return .sessionRegistered(index)
  }

  private mutating func removeSession(_ id: UInt64) {
    guard let removed = sessions.removeValue(forKey: id), let owner = removed.owner else { return }
    let left = (sessionsByOwner[owner] ?? 1) - 1
    sessionsByOwner[owner] = left > 0 ? left : nil
  }

  /// Remembers `response` and enforces the per-session bounds on remembered responses.
  private func remember(_ response: Machine.Response, of sequence: UInt64, at index: UInt64, in session: inout Session)
  {
    var writer = WireWriter(reservingCapacity: 64)
    response.encode(to: &writer)
    session.responses[sequence] = Remembered(index: index, response: response, bytes: writer.count)
    session.responseBytes += writer.count
    while session.responses.count > policy.maxResponsesPerSession
      || (session.responseBytes > policy.maxResponseBytesPerSession && session.responses.count > 1)
    {
      session.forgetLowest()
    }
    if session.forgotten.count > policy.maxResponsesPerSession, let oldest = session.forgotten.min() {
      // Bounded memory for a client that never acknowledges: treat everything up to the oldest forgotten
      // request as acknowledged. A never-applied request below it would then be refused (never applied
      // twice), which only a client with that many requests outstanding can meet.
      session.acknowledgedThrough = max(session.acknowledgedThrough, oldest)
      session.forgotten = session.forgotten.filter { $0 > oldest }
      session.dropResponses(through: oldest)
    }
  }

  private func lessActive(_ a: (key: UInt64, value: Session), _ b: (key: UInt64, value: Session)) -> Bool {
    a.value.lastActiveMillis != b.value.lastActiveMillis
      ? a.value.lastActiveMillis < b.value.lastActiveMillis : a.key < b.key
  }

  private mutating func expireIdleSessions() {
    // Scan at most every tenth of the timeout: the table can be large and most entries expire nothing. Scans
    // happen at the first entry of each period of log time, so they depend only on the entries' timestamps:
    // a replica restored from a snapshot scans at the same entries as one that applied the whole log.
    let period = max(1, policy.timeoutMillis / 10)
    guard logTimeMillis / period > lastExpiryScanMillis / period else { return }
    lastExpiryScanMillis = logTimeMillis
    guard logTimeMillis > policy.timeoutMillis else { return }
    let cutoff = logTimeMillis - policy.timeoutMillis
    let before = sessions.count
    sessions = sessions.filter { $0.value.lastActiveMillis >= cutoff }
    if sessions.count != before { countOwners() }
  }

  private mutating func countOwners() {
    sessionsByOwner = [:]
    for session in sessions.values {
      if let owner = session.owner { sessionsByOwner[owner, default: 0] += 1 }
    }
  }

  /// Answers a query from the machine's current state.
  public func query(_ query: Machine.Query) -> Machine.QueryResult { machine.query(query) }

  /// The notifications the machine produced since the last call.
  public mutating func takeNotifications() -> [Machine.Notification] { machine.takeNotifications() }

  /// The machine's next deadline in log time, if any.
  public var nextDeadlineMillis: UInt64? { machine.nextDeadlineMillis }

  /// The snapshot format written: 3 records each session's owner (2 added the apply indexes of remembered
  /// responses; 1 had neither). Every older format is still read.
  static var snapshotVersion: UInt64 { 3 }

  /// Serialises the sessions and the machine.
  public func snapshot() -> [UInt8] {
    var w = WireWriter(reservingCapacity: 256)
    w.writeVarint(Self.snapshotVersion)
    w.writeVarint(logTimeMillis)
    w.writeVarint(appliedIndex)
    w.writeVarint(UInt64(sessions.count))
    for id in sessions.keys.sorted() {
      guard let s = sessions[id] else { continue }
      w.writeVarint(id)
      w.writeOptional(s.owner)
      w.writeVarint(s.lastActiveMillis)
      w.writeVarint(s.acknowledgedThrough)
      w.writeArray(s.forgotten.sorted())
      w.writeVarint(UInt64(s.responses.count))
      for seq in s.responses.keys.sorted() {
        guard let remembered = s.responses[seq] else { continue }  // The keys came from this dictionary.
        w.writeVarint(seq)
        w.writeVarint(remembered.index)
        remembered.response.encode(to: &w)
      }
    }
    w.writeBytes(machine.snapshot())
    return w.bytes
  }

  /// Replaces sessions and machine state with a snapshot made by ``snapshot()`` (of this format or an older
  /// one: sessions from a snapshot without owners belong to no principal).
  public mutating func restore(from bytes: [UInt8]) throws {
    var r = WireReader(bytes)
    let version = try r.readVarint()
    guard (1...Self.snapshotVersion).contains(version) else {
      throw WireError(.unsupportedVersion(UInt8(truncatingIfNeeded: version)), at: 0)
    }
    logTimeMillis = try r.readVarint()
    appliedIndex = try r.readVarint()
    let count = try r.readCount()
    var restored: [UInt64: Session] = [:]
    for _ in 0..<count {
      let id = try r.readVarint()
      let owner = version >= 3 ? try r.readOptional(String.self) : nil
      var s = Session(owner: owner, lastActiveMillis: try r.readVarint(), acknowledgedThrough: try r.readVarint())
      s.forgotten = Set(try r.readArray(UInt64.self))
      let n = try r.readCount()
      for _ in 0..<n {
        let seq = try r.readVarint()
        let index = version >= 2 ? try r.readVarint() : 0
        let start = r.position
        let response = try Machine.Response(from: &r)
        let size = r.position - start
        s.responses[seq] = Remembered(index: index, response: response, bytes: size)
        s.responseBytes += size
      }
      restored[id] = s
    }
    let machineBytes = try r.readBytes()
    try r.expectEnd()
    try machine.restore(from: machineBytes)
    sessions = restored
    countOwners()
    lastExpiryScanMillis = logTimeMillis
  }
}
