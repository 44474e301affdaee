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
  /// What to do.
  public var body: Body

  /// Creates a replicated command.
  public init(timestampMillis: UInt64, request: RequestID? = nil, acknowledgedThrough: UInt64 = 0, body: Body) {
    self.timestampMillis = timestampMillis
    self.request = request
    self.acknowledgedThrough = acknowledgedThrough
    self.body = body
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeVarint(timestampMillis)
    writer.writeOptional(request)
    writer.writeVarint(acknowledgedThrough)
    switch body {
    case .command(let command):
      writer.writeByte(0)
      command.encode(to: &writer)
    case .registerSession:
      writer.writeByte(1)
    case .keepAlive:
      writer.writeByte(2)
    case .advanceTime:
      writer.writeByte(3)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    timestampMillis = try reader.readVarint()
    request = try reader.readOptional(RequestID.self)
    acknowledgedThrough = try reader.readVarint()
    let at = reader.position
    switch try reader.readByte() {
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

  /// Creates a policy.
  public init(timeoutMillis: UInt64 = 300_000, maxSessions: Int = 100_000, maxResponsesPerSession: Int = 256) {
    self.timeoutMillis = timeoutMillis
    self.maxSessions = maxSessions
    self.maxResponsesPerSession = maxResponsesPerSession
  }
}

/// A ``StateMachine`` plus the exactly-once session table of Raft thesis §6.3, applied from log entries.
///
/// Every consensus engine applies committed entries through this type, so sessions, duplicate detection and
/// deterministic expiry behave the same on Raft and Multi-Paxos. A session is numbered by the log index of
/// its registration; a request is `(session, sequence)`. Expiry uses the leader timestamps carried in the
/// entries, never a replica's own clock, so every replica expires the same sessions at the same entry.
public struct ReplicatedStateMachine<Machine: StateMachine>: Sendable {
  private struct Session: Sendable {
    var lastActiveMillis: UInt64
    var acknowledgedThrough: UInt64
    /// Requests above ``acknowledgedThrough`` that were applied but whose responses the per-session bound
    /// evicted. Kept so that an earlier request pipelined out of order is still applied exactly once.
    var forgotten: Set<UInt64> = []
    /// The remembered responses by sequence, each with the index of the entry that applied the request.
    var responses: [UInt64: (index: UInt64, response: Machine.Response)]
  }

  /// The application's state machine.
  public private(set) var machine: Machine
  /// The session limits.
  public let policy: SessionPolicy
  private var sessions: [UInt64: Session] = [:]
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
      if sessions.count >= policy.maxSessions, let oldest = sessions.min(by: { lessActive($0, $1) })?.key {
        sessions[oldest] = nil
      }
      sessions[index] = Session(lastActiveMillis: logTimeMillis, acknowledgedThrough: 0, responses: [:])
      return .sessionRegistered(index)
    case .advanceTime:
      machine.advanceTime(context: context)
      return .timeAdvanced
    case .keepAlive:
      guard let id = command.request?.session else { return .keptAlive }
      guard sessions[id] != nil else { return .sessionExpired(id) }
      sessions[id]?.lastActiveMillis = logTimeMillis
      return .keptAlive
    case .command(let body):
      guard let request = command.request else {
        return .applied(machine.apply(body, context: context))
      }
      guard var session = sessions[request.session] else { return .sessionExpired(request.session) }
      session.lastActiveMillis = logTimeMillis
      if command.acknowledgedThrough > session.acknowledgedThrough {
        session.acknowledgedThrough = command.acknowledgedThrough
        session.responses = session.responses.filter { $0.key > command.acknowledgedThrough }
        session.forgotten = session.forgotten.filter { $0 > command.acknowledgedThrough }
      }
      if let remembered = session.responses[request.sequence] {
        sessions[request.session] = session
        return .duplicate(remembered.response, appliedAt: remembered.index)
      }
      // Applied requests are exactly those with a remembered response, those whose response the bound
      // evicted (`forgotten`), and those at or below the acknowledged mark. A request pipelined out of order
      // is still applied once, in the order it commits.
      if request.sequence <= session.acknowledgedThrough || session.forgotten.contains(request.sequence) {
        sessions[request.session] = session
        return .responseForgotten(request)
      }
      let response = machine.apply(body, context: context)
      session.responses[request.sequence] = (index, response)
      if session.responses.count > policy.maxResponsesPerSession, let lowest = session.responses.keys.min() {
        session.responses[lowest] = nil
        session.forgotten.insert(lowest)
        if session.forgotten.count > policy.maxResponsesPerSession, let oldest = session.forgotten.min() {
          // Bounded memory for a client that never acknowledges: treat everything up to the oldest forgotten
          // request as acknowledged. A never-applied request below it would then be refused (never applied
          // twice), which only a client with that many requests outstanding can meet.
          session.acknowledgedThrough = max(session.acknowledgedThrough, oldest)
          session.forgotten = session.forgotten.filter { $0 > oldest }
          session.responses = session.responses.filter { $0.key > oldest }
        }
      }
      sessions[request.session] = session
      return .applied(response)
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
    sessions = sessions.filter { $0.value.lastActiveMillis >= cutoff }
  }

  /// Answers a query from the machine's current state.
  public func query(_ query: Machine.Query) -> Machine.QueryResult { machine.query(query) }

  /// The notifications the machine produced since the last call.
  public mutating func takeNotifications() -> [Machine.Notification] { machine.takeNotifications() }

  /// The machine's next deadline in log time, if any.
  public var nextDeadlineMillis: UInt64? { machine.nextDeadlineMillis }

  /// Serialises the sessions and the machine.
  public func snapshot() -> [UInt8] {
    var w = WireWriter(reservingCapacity: 256)
    w.writeVarint(2)  // format version (1 had no apply indexes for remembered responses)
    w.writeVarint(logTimeMillis)
    w.writeVarint(appliedIndex)
    w.writeVarint(UInt64(sessions.count))
    for id in sessions.keys.sorted() {
      guard let s = sessions[id] else { continue }
      w.writeVarint(id)
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

  /// Replaces sessions and machine state with a snapshot made by ``snapshot()``.
  public mutating func restore(from bytes: [UInt8]) throws {
    var r = WireReader(bytes)
    let version = try r.readVarint()
    guard version == 1 || version == 2 else {
      throw WireError(.unsupportedVersion(UInt8(truncatingIfNeeded: version)), at: 0)
    }
    logTimeMillis = try r.readVarint()
    appliedIndex = try r.readVarint()
    let count = try r.readCount()
    var restored: [UInt64: Session] = [:]
    for _ in 0..<count {
      let id = try r.readVarint()
      var s = Session(
        lastActiveMillis: try r.readVarint(), acknowledgedThrough: try r.readVarint(), responses: [:])
      s.forgotten = Set(try r.readArray(UInt64.self))
      let n = try r.readCount()
      for _ in 0..<n {
        let seq = try r.readVarint()
        let index = version >= 2 ? try r.readVarint() : 0
        s.responses[seq] = (index, try Machine.Response(from: &r))
      }
      restored[id] = s
    }
    let machineBytes = try r.readBytes()
    try r.expectEnd()
    try machine.restore(from: machineBytes)
    sessions = restored
    lastExpiryScanMillis = logTimeMillis
  }
}
