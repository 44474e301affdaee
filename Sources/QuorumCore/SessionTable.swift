/// The exactly-once session table of a ``ReplicatedStateMachine``, apart from the machine it wraps.
///
/// Not generic: responses are remembered encoded, as they go into a snapshot and to a client anyway. So the
/// table's work on every request (finding the session, dropping acknowledged responses, remembering the new
/// one) runs as code compiled for these types, not through the runtime's generic metadata, whatever machine
/// the replica runs; only a duplicate decodes its remembered response.
///
/// Equatable field by field, so that a replica restored from a snapshot can be compared with one that applied every
/// entry (see ``ReplicatedStateMachine``'s `==`), including what the snapshot encoding might leave out.
@usableFromInline
struct SessionTable: Sendable, Equatable {
  /// A response remembered for a request applied but not yet acknowledged.
  struct Remembered: Sendable, Equatable {
    /// The request's sequence number within its session.
    var sequence: UInt64
    /// The index of the entry that applied the request.
    var index: UInt64
    /// The response, encoded (its size counts against ``SessionPolicy/maxResponseBytesPerSession``).
    var encoded: [UInt8]
    /// `encoded.count`, kept beside it: dropping an acknowledged response then reads no more than this entry.
    var size: Int

    init(sequence: UInt64, index: UInt64, encoded: [UInt8]) {
      self.sequence = sequence
      self.index = index
      self.encoded = encoded
      self.size = encoded.count
    }
  }

  /// Equatable on every field: `responseBytes` and each `size` are derived, but kept incrementally, so comparing
  /// them also checks that bookkeeping against a restored (recomputed) copy.
  @usableFromInline
  struct Session: Sendable, Equatable {
    /// The principal that registered the session (`nil`: none was authenticated).
    var owner: String?
    var lastActiveMillis: UInt64
    var acknowledgedThrough: UInt64
    /// Requests above ``acknowledgedThrough`` that were applied but whose responses the per-session bounds
    /// evicted. Kept so that an earlier request pipelined out of order is still applied exactly once.
    var forgotten: Set<UInt64> = []
    /// The remembered responses, in increasing sequence order (usually one or two).
    var responses: [Remembered] = []
    /// The sum of the remembered responses' sizes.
    var responseBytes = 0

    /// The position of the first remembered response whose sequence is not below `sequence`.
    func position(of sequence: UInt64) -> Int {
      var low = 0
      var high = responses.count
      while low < high {
        let middle = (low + high) / 2
        if responses[middle].sequence < sequence { low = middle + 1 } else { high = middle }
      }
      return low
    }

    /// The response remembered for `sequence`.
    func remembered(_ sequence: UInt64) -> Remembered? {
      let at = position(of: sequence)
      return at < responses.count && responses[at].sequence == sequence ? responses[at] : nil
    }

    /// Keeps only the responses above `sequence`, in place.
    mutating func dropResponses(through sequence: UInt64) {
      let end = sequence == .max ? responses.count : position(of: sequence + 1)
      guard end > 0 else { return }
      if end == responses.count {
        // Usually every remembered response is acknowledged at once: the array keeps its storage.
        responses.removeAll(keepingCapacity: true)
        responseBytes = 0
        return
      }
      for r in responses[..<end] { responseBytes -= r.size }
      responses.removeFirst(end)
    }

    /// Remembers a response (requests usually arrive in order, so this appends).
    mutating func insert(_ remembered: Remembered) {
      let at = position(of: remembered.sequence)
      if at < responses.count && responses[at].sequence == remembered.sequence {
        responseBytes -= responses[at].size
        responses[at] = remembered
      } else {
        responses.insert(remembered, at: at)
      }
      responseBytes += remembered.size
    }

    /// The table's decision on request `sequence`, keeping the session alive (see
    /// ``SessionTable/admit(_:principal:acknowledgedThrough:now:)``); `position` is where the session is.
    mutating func admit(
      _ sequence: UInt64, acknowledgedThrough acknowledged: UInt64, now: UInt64,
      at position: Dictionary<UInt64, Session>.Index
    ) -> Admission {
      lastActiveMillis = now
      if acknowledged > acknowledgedThrough {
        acknowledgedThrough = acknowledged
        dropResponses(through: acknowledged)
        if !forgotten.isEmpty { forgotten = forgotten.filter { $0 > acknowledged } }
      }
      // Applied requests are exactly those with a remembered response, those whose response the bounds
      // evicted (`forgotten`), and those at or below the acknowledged mark. A request pipelined out of order
      // is still applied once, in the order it commits.
      if let remembered = remembered(sequence) {
        return .duplicate(encoded: remembered.encoded, appliedAt: remembered.index)
      }
      if sequence <= acknowledgedThrough || forgotten.contains(sequence) { return .forgotten }
      return .apply(position)
    }

    /// Remembers a response within the per-session bounds of `policy`.
    mutating func remember(_ response: Remembered, policy: SessionPolicy) {
      insert(response)
      while responses.count > policy.maxResponsesPerSession
        || (responseBytes > policy.maxResponseBytesPerSession && responses.count > 1)
      {
        forgetLowest()
      }
      if forgotten.count > policy.maxResponsesPerSession, let oldest = forgotten.min() {
        // Bounded memory for a client that never acknowledges: treat everything up to the oldest forgotten
        // request as acknowledged. A never-applied request below it would then be refused (never applied
        // twice), which only a client with that many requests outstanding can meet.
        acknowledgedThrough = max(acknowledgedThrough, oldest)
        forgotten = forgotten.filter { $0 > oldest }
        dropResponses(through: oldest)
      }
    }

    /// Forgets the response of the lowest sequence, remembering that it was applied.
    mutating func forgetLowest() {
      guard !responses.isEmpty else { return }
      let removed = responses.removeFirst()
      responseBytes -= removed.size
      forgotten.insert(removed.sequence)
    }
  }

  /// What the table says about a request before the machine sees it.
  @usableFromInline
  enum Admission {
    /// Apply it, then ``remember(_:of:at:in:policy:)`` its response in the session at this position.
    case apply(Dictionary<UInt64, Session>.Index)
    case expired
    case notOwned
    /// Applied before, by the entry at `appliedAt`; this is its response, encoded.
    case duplicate(encoded: [UInt8], appliedAt: UInt64)
    /// Applied before; its response was forgotten.
    case forgotten
  }

  private(set) var sessions: [UInt64: Session] = [:]
  /// How many sessions each principal holds (derived from ``sessions``; never serialised).
  private var sessionsByOwner: [String: Int] = [:]
  private(set) var lastExpiryScanMillis: UInt64 = 0

  /// The sessions and the per-principal counts (derived, but kept incrementally: comparing them checks that
  /// bookkeeping against a restored copy, which recounts). Not ``lastExpiryScanMillis``: a restored table takes the
  /// log time for it, which lies in the same scan period but is not the same value; ``ReplicatedStateMachine``,
  /// which knows the period, compares the periods.
  @usableFromInline
  static func == (a: SessionTable, b: SessionTable) -> Bool {
    a.sessions == b.sessions && a.sessionsByOwner == b.sessionsByOwner
  }

  /// Where `self` and `other` first differ, in words (`nil`: they are equal, ``lastExpiryScanMillis`` aside).
  func difference(from other: SessionTable) -> String? {
    for id in Set(sessions.keys).union(other.sessions.keys).sorted() where sessions[id] != other.sessions[id] {
      return "session \(id): \(Self.describe(sessions[id])) vs \(Self.describe(other.sessions[id]))"
    }
    return sessionsByOwner == other.sessionsByOwner
      ? nil : "sessions per principal \(sessionsByOwner) vs \(other.sessionsByOwner)"
  }

  private static func describe(_ s: Session?) -> String {
    guard let s else { return "absent" }
    return
      "owner \(s.owner ?? "-") active \(s.lastActiveMillis) acknowledged \(s.acknowledgedThrough) forgotten "
      + "\(s.forgotten.sorted()) remembered \(s.responses.map { "\($0.sequence)@\($0.index)" }) (\(s.responseBytes) B)"
  }

  var count: Int { sessions.count }

  func count(of principal: String) -> Int { sessionsByOwner[principal] ?? 0 }

  func responseBytes(of session: UInt64) -> Int { sessions[session]?.responseBytes ?? 0 }

  /// Opens session `id` for `owner`, or says why not.
  @usableFromInline
  mutating func register(_ id: UInt64, owner: String?, now: UInt64, policy: SessionPolicy) -> Bool {
    if let owner, count(of: owner) >= policy.maxSessionsPerPrincipal { return false }
    if sessions.count >= policy.maxSessions, let oldest = sessions.min(by: Self.lessActive)?.key {
      remove(oldest)
    }
    sessions[id] = Session(owner: owner, lastActiveMillis: now, acknowledgedThrough: 0)
    if let owner { sessionsByOwner[owner, default: 0] += 1 }
    return true
  }

  /// Keeps `request`'s session alive, or says why not.
  @usableFromInline
  mutating func keepAlive(_ session: UInt64, principal: String?, now: UInt64) -> Admission? {
    guard sessions[session] != nil else { return .expired }
    guard sessions[session]?.owner == principal else { return .notOwned }
    sessions[session]?.lastActiveMillis = now
    return nil
  }

  /// Checks `request` against its session, which it keeps alive and whose acknowledged responses it drops
  /// (only when the request is the owner's). The session changes in place, found once by its index: not taken
  /// out of the table and put back, nor copied. With ``Admission/apply(_:)``, pass the index to
  /// ``remember(_:of:at:in:policy:)`` once the machine has applied the request (nothing else may change the
  /// table in between).
  @usableFromInline
  mutating func admit(
    _ request: RequestID, principal: String?, acknowledgedThrough: UInt64, now: UInt64
  ) -> Admission {
    guard let at = sessions.index(forKey: request.session) else { return .expired }
    // Before anything about the session changes: a forged request must leave no trace in it.
    guard sessions.values[at].owner == principal else { return .notOwned }
    return sessions.values[at].admit(request.sequence, acknowledgedThrough: acknowledgedThrough, now: now, at: at)
  }

  /// Remembers `encoded` as the response to `request`, in the session ``admit(_:principal:acknowledgedThrough:now:)``
  /// found at `position`, within the per-session bounds.
  @usableFromInline
  mutating func remember(
    _ encoded: [UInt8], of request: RequestID, at index: UInt64, in position: Dictionary<UInt64, Session>.Index,
    policy: SessionPolicy
  ) {
    sessions.values[position].remember(
      Remembered(sequence: request.sequence, index: index, encoded: encoded), policy: policy)
  }

  private static func lessActive(_ a: (key: UInt64, value: Session), _ b: (key: UInt64, value: Session)) -> Bool {
    a.value.lastActiveMillis != b.value.lastActiveMillis
      ? a.value.lastActiveMillis < b.value.lastActiveMillis : a.key < b.key
  }

  private mutating func remove(_ id: UInt64) {
    guard let removed = sessions.removeValue(forKey: id), let owner = removed.owner else { return }
    let left = (sessionsByOwner[owner] ?? 1) - 1
    sessionsByOwner[owner] = left > 0 ? left : nil
  }

  /// The period of log time in which the table scans for idle sessions at most once: a tenth of the timeout (the
  /// table can be large, and most entries expire nothing).
  static func expiryScanPeriod(_ policy: SessionPolicy) -> UInt64 { max(1, policy.timeoutMillis / 10) }

  /// Whether `self` and `other` last scanned for idle sessions in the same period, and so scan next at the same
  /// entries.
  func scansWithTable(_ other: SessionTable, policy: SessionPolicy) -> Bool {
    let period = Self.expiryScanPeriod(policy)
    return lastExpiryScanMillis / period == other.lastExpiryScanMillis / period
  }

  /// Expires the sessions idle for longer than the policy's timeout at log time `now`.
  @usableFromInline
  mutating func expireIdle(now: UInt64, policy: SessionPolicy) {
    // Scans happen at the first entry of each period of log time, so they depend only on the entries'
    // timestamps: a replica restored from a snapshot scans at the same entries as one that applied the whole log.
    let period = Self.expiryScanPeriod(policy)
    guard now / period > lastExpiryScanMillis / period else { return }
    lastExpiryScanMillis = now
    guard now > policy.timeoutMillis else { return }
    let cutoff = now - policy.timeoutMillis
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

  /// Writes the sessions in the snapshot format of ``ReplicatedStateMachine`` (version 3).
  func write(to w: inout WireWriter) {
    w.writeVarint(UInt64(sessions.count))
    for id in sessions.keys.sorted() {
      guard let s = sessions[id] else { continue }  // The keys came from this dictionary.
      w.writeVarint(id)
      w.writeOptional(s.owner)
      w.writeVarint(s.lastActiveMillis)
      w.writeVarint(s.acknowledgedThrough)
      w.writeArray(s.forgotten.sorted())
      w.writeVarint(UInt64(s.responses.count))
      for remembered in s.responses {
        w.writeVarint(remembered.sequence)
        w.writeVarint(remembered.index)
        w.writeRaw(remembered.encoded)
      }
    }
  }

  /// Reads sessions written by ``write(to:)`` or by an older format `version`; `skipResponse` reads past one
  /// encoded response (the table cannot decode it, only find where it ends).
  static func read(
    from r: inout WireReader, version: UInt64, lastExpiryScan: UInt64,
    skipResponse: (inout WireReader) throws(WireError) -> Void
  ) throws(WireError) -> SessionTable {
    let count = try r.readCount()
    var table = SessionTable()
    for _ in 0..<count {
      let id = try r.readVarint()
      let owner = version >= 3 ? try r.readOptional(String.self) : nil
      var s = Session(owner: owner, lastActiveMillis: try r.readVarint(), acknowledgedThrough: try r.readVarint())
      s.forgotten = Set(try r.readArray(UInt64.self))
      let n = try r.readCount()
      for _ in 0..<n {
        let sequence = try r.readVarint()
        let index = version >= 2 ? try r.readVarint() : 0
        let start = r.position
        try skipResponse(&r)
        s.insert(Remembered(sequence: sequence, index: index, encoded: Array(r.bytes[start..<r.position])))
      }
      table.sessions[id] = s
    }
    table.countOwners()
    table.lastExpiryScanMillis = lastExpiryScan
    return table
  }
}
