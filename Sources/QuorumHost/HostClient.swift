public import QuorumCore
import Synchronization

/// How a client reaches the members of a cluster: TCP connections in production (`TCPRequestChannel` in the
/// Quorum module), the simulated network in tests.
public protocol RequestChannel: Sendable {
  /// Sends an encoded ``HostRequest`` to `member` and returns the encoded ``HostReply``.
  /// - Throws: ``RequestChannelError`` when the member cannot be reached or does not answer within `timeout`.
  func send(_ request: [UInt8], to member: NodeID, timeout: Duration) async throws -> [UInt8]

  /// Learns the members' addresses from a cluster map (a channel that needs none ignores it).
  func learn(_ map: ClusterMap)

  /// How `member` is named in errors (a channel that stands in for members it knows only by address says so).
  func describe(_ member: NodeID) -> String
}

extension RequestChannel {
  /// Ignores the map.
  public func learn(_ map: ClusterMap) {}

  /// The member's id.
  public func describe(_ member: NodeID) -> String { "\(member)" }
}

/// Why a request did not reach a member or get an answer.
public enum RequestChannelError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The member could not be reached (no address, connection refused): the request was not delivered.
  case unreachable(NodeID, String)
  /// The connection was lost after the request may have been delivered: it may or may not have been carried out.
  case connectionLost(NodeID, String)
  /// No answer in time; the request may or may not have been carried out.
  case timeout(NodeID)
  /// The member turned the client away for a reason that retrying does not fix: its credential (none, an
  /// unknown one, or a wrong secret), another cluster, or a member that serves no clients.
  case refused(NodeID, String)

  public var description: String {
    switch self {
    case .unreachable(let node, let why): return "\(node) unreachable: \(why)"
    case .connectionLost(let node, let why): return "\(node): connection lost: \(why)"
    case .timeout(let node): return "\(node) did not answer in time"
    case .refused(let node, let why): return "\(node) refused the client: \(why)"
    }
  }
}

/// Why a client call failed.
public enum QuorumClientError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The deadline passed. `outcomeUnknown` is true for a write that was sent at least once: it may or may not
  /// take effect (a retry with the same session is safe; look the value up to know). `lastFailure` says why the
  /// last attempt failed, if one did.
  case timeout(outcomeUnknown: Bool, lastFailure: String?)
  /// A write whose outcome cannot be known: an attempt may have been carried out (it timed out, was cut off, or
  /// reached a member) and a later one was refused before it could find out: its session had expired, every
  /// member turned the client away (see ``refused(_:)``), or the group refused it before its log (a space quota,
  /// a slot that moved); or the group no longer remembers its answer
  /// (``QuorumCore/ConsensusError/responseForgotten(_:)``); or a write without a session (a membership change)
  /// got no answer that says whether it was carried out, and a retry could apply it twice.
  case outcomeUnknown
  /// The server refused the request (unknown group or service, a key of another group, a malformed request, or
  /// an engine error that retrying does not fix).
  case rejected(HostError)
  /// The answer did not decode.
  case badReply(String)
  /// Every member the call could ask turned the client away for a reason that retrying does not fix (see
  /// ``RequestChannelError/refused(_:_:)``): the call failed at once rather than at its deadline.
  case refused(String)

  public var description: String {
    switch self {
    case .refused(let why): return "refused by the cluster: \(why)"
    case .timeout(let unknown, let last):
      return "deadline passed" + (unknown ? " (the write may or may not have happened)" : "")
        + (last.map { "; last attempt: \($0)" } ?? "")
    case .outcomeUnknown: return "the write may or may not have happened"
    case .rejected(let error): return "refused: \(error)"
    case .badReply(let why): return "undecodable reply: \(why)"
    }
  }
}

/// A client's settings.
public struct HostClientOptions: Sendable {
  /// The default deadline of a call (a call may pass its own).
  public var deadline: Duration = .seconds(10)
  /// How long one attempt at one member may take before the client tries again (elsewhere).
  public var attemptTimeout: Duration = .seconds(2)
  /// The first retry back-off; it doubles up to ``maxBackoff`` (with seeded jitter).
  public var minBackoff: Duration = .milliseconds(5)
  /// The largest retry back-off.
  public var maxBackoff: Duration = .milliseconds(200)
  /// A group's exactly-once session left unused this long is replaced by a fresh one before the next command.
  /// Servers expire idle sessions (after 5 minutes of log time by default), and a command under an expired
  /// session is refused with an outcome the client cannot tell (an earlier attempt of it may have been applied
  /// first): keep this well below the servers' session timeout.
  public var sessionIdleRenewal: Duration = .seconds(60)

  /// The defaults: 10 s deadline, 2 s per attempt, back-off 5–200 ms, sessions renewed after a minute idle.
  public init() {}
}

/// A client of a cluster of group hosts: sends requests to the right member of the right group, follows
/// redirects to leaders, retries through failures until a deadline, and makes writes exactly-once with one
/// session per group.
///
/// Service clients (``KeyValueClient``, the lock client) sit on top of it. A `HostClient` is an actor: calls
/// from many tasks run concurrently, and share its leader cache and sessions.
public actor HostClient {
  private struct Session {
    var id: UInt64
    var next: UInt64 = 0
    /// When (monotonic) a command last went out under it.
    var lastUsedNanos: UInt64
    /// Sequence numbers sent and not yet answered (or abandoned).
    var outstanding: Set<UInt64> = []

    /// Every response up to here has been received: the server may forget them.
    var acknowledged: UInt64 { (outstanding.min() ?? next + 1) - 1 }
  }

  /// The cluster map the client routes by.
  public private(set) var map: ClusterMap?
  private var placement: Placement?
  private let channel: any RequestChannel
  private let seeds: [NodeID]
  private let options: HostClientOptions
  private let clock: any NodeClock
  private var leaders: [GroupID: NodeID] = [:]
  /// Set when a member's address was missing: the map is fetched again at the next call (members that were still
  /// starting have addresses by now).
  private var mapStale = false
  private var sessions: [GroupID: Session] = [:]
  /// The newest log position of each group this client has had an answer from (its writes and its reads).
  private var seen: [GroupID: UInt64] = [:]
  private var random: SeededRandom

  /// Creates a client.
  /// - Parameters:
  ///   - channel: how to reach members.
  ///   - members: members to ask for the cluster map (and the default group's members when no map is given).
  ///   - map: the cluster map, if known (otherwise fetched from `members` at the first call).
  ///   - options: deadlines and back-off.
  ///   - clock: the clock deadlines are measured on (the system's unless simulated).
  ///   - seed: seeds the choice of members and the back-off jitter.
  public init(
    channel: any RequestChannel, members: [NodeID], map: ClusterMap? = nil, options: HostClientOptions = .init(),
    clock: any NodeClock = SystemClock(), seed: UInt64 = 1
  ) {
    self.channel = channel
    self.seeds = members
    self.map = map
    if let map { channel.learn(map) }
    self.placement = map.map(Placement.init)
    self.options = options
    self.clock = clock
    self.random = SeededRandom(seed: seed)
  }

  // MARK: - Routing

  /// The cluster map, fetched from a member if the client has none yet.
  public func clusterMap(deadline: Duration? = nil) async throws -> ClusterMap {
    if let map, !mapStale { return map }
    mapStale = false
    let candidates = seeds + (map?.members.keys.sorted() ?? [])
    let reply = try await send(.clusterMap, to: candidates, deadline: deadline ?? options.deadline, isWrite: false)
    guard case .clusterMap(let fetched) = reply else { throw QuorumClientError.badReply("expected a cluster map") }
    // Checked before it routes anything: a member's map is taken on trust no more than any other reply.
    do {
      try fetched.validate(knownServices: Set(fetched.groups.flatMap(\.services)))
    } catch {
      throw QuorumClientError.badReply("an invalid cluster map: \(error)")
    }
    map = fetched
    placement = Placement(fetched)
    channel.learn(fetched)
    return fetched
  }

  /// The group owning `key` for `service`.
  public func group(for key: String, service: String) async throws -> GroupID {
    let map = try await clusterMap()
    guard let owner = placement?.owner(of: key, service: service) else {
      throw QuorumClientError.rejected(.serviceNotCarried(service, known: Set(map.groups.flatMap(\.services)).sorted()))
    }
    return owner
  }

  /// The groups carrying `service`.
  public func groups(carrying service: String) async throws -> [GroupID] {
    try await clusterMap().groups(carrying: service).map(\.id)
  }

  private func members(of group: GroupID?) -> [NodeID] {
    guard let group, let spec = map?.group(group) else { return seeds }
    return spec.members
  }

  // MARK: - Calls

  /// Applies `payload` as a command of `service` in `group`, exactly once.
  /// - Throws: ``QuorumClientError``.
  public func command(_ payload: [UInt8], service: String, group: GroupID, deadline: Duration? = nil) async throws
    -> [UInt8]
  {
    try await commandIndexed(payload, service: service, group: group, deadline: deadline).answer
  }

  /// Like ``command(_:service:group:deadline:)``, also returning the log position the command was applied at.
  public func commandIndexed(_ payload: [UInt8], service: String, group: GroupID, deadline: Duration? = nil)
    async throws -> (answer: [UInt8], index: UInt64)
  {
    let limit = deadline ?? options.deadline
    let started = clock.monotonicNanos()
    var renewed = false
    // What is left of the deadline; at or past it, the command is not sent (again): the only attempts before were
    // refused under an expired session without being carried out, so its outcome is certain.
    func timeLeft() throws -> Duration {
      let left = limit - .nanoseconds(Int64(clamping: clock.monotonicNanos() &- started))
      guard left > .zero else {
        throw QuorumClientError.timeout(outcomeUnknown: false, lastFailure: renewed ? "session expired" : nil)
      }
      return left
    }
    while true {
      // The registration of a new session, after an expiry, takes its time from the same deadline.
      var session = try await session(for: group, deadline: try timeLeft())
      let remaining = try timeLeft()
      session.next += 1
      session.lastUsedNanos = clock.monotonicNanos()
      let sequence = session.next
      session.outstanding.insert(sequence)
      sessions[group] = session
      // Only while the group's session is still this one: after it expired, another call may have registered a
      // new session, whose own requests use the same sequence numbers.
      defer { if sessions[group]?.id == session.id { sessions[group]?.outstanding.remove(sequence) } }
      let request = HostRequest.command(
        group: group, ServiceCommand(service: service, payload: payload),
        request: RequestID(session: session.id, sequence: sequence), acknowledgedThrough: session.acknowledged)
      let reply: HostReply
      do {
        reply = try await send(request, to: members(of: group), group: group, deadline: remaining, isWrite: true)
      } catch QuorumClientError.rejected(.consensus(.sessionExpired)) {
        // Another call that used the same session may have dropped it and registered a new one already: keep that.
        if sessions[group]?.id == session.id { sessions[group] = nil }
        // `send` reports the expiry as a refusal only when no attempt may have been carried out (else the outcome
        // is unknown): the command goes again, once, under a new session.
        if renewed { throw QuorumClientError.outcomeUnknown }
        renewed = true
        continue
      }
      guard case .answer(let bytes, let index) = reply else { throw QuorumClientError.badReply("expected an answer") }
      noteSeen(index, in: group)
      return (bytes, index)
    }
  }

  /// The newest log position of `group` this client has had an answer from: its last write's, or a later read's.
  /// A ``QuorumCore/ReadConsistency/session`` read is answered from a state at least this far along.
  public func lastSeenIndex(in group: GroupID) -> UInt64 { seen[group] ?? 0 }

  private func noteSeen(_ index: UInt64, in group: GroupID) {
    if index > seen[group] ?? 0 { seen[group] = index }
  }

  /// Waits at `member` (at most `timeout`) for notifications of `service` in `group` watched by `key`, produced
  /// after position `after`; returns them (encoded) and the newest one's position, or none at the timeout.
  ///
  /// `truncated` says that the member cannot hand out every notification after `after`: some produced up to and
  /// including `index` may be missing (it dropped the oldest to keep its bound, or installed or restarted from a
  /// snapshot). Read the watched state again, then watch after `index`.
  public func watch(
    _ key: String, service: String, group: GroupID, after: UInt64, at member: NodeID? = nil, timeout: Duration
  ) async throws -> (notifications: [[UInt8]], index: UInt64, truncated: Bool) {
    let target = member ?? leaders[group] ?? members(of: group).first
    let request = HostRequest.watch(
      group: group, service: service, key: key, after: after,
      timeoutMillis: UInt64(clamping: timeout.nanoseconds / 1_000_000))
    let reply = try await send(
      request, to: target.map { [$0] } ?? members(of: group), group: group,
      deadline: timeout + options.attemptTimeout, isWrite: false, anyMember: true,
      attemptTimeout: timeout + options.attemptTimeout)
    guard case .notifications(let payloads, let index) = reply else {
      throw QuorumClientError.badReply("expected notifications")
    }
    // See `HostReply.notifications`: no other answer without notifications moves past `after`.
    return (payloads, index, payloads.isEmpty && index > after)
  }

  /// Reads `payload` as a query of `service` in `group`, at `consistency`, from a state including position
  /// `atLeast`; returns the answer and the position it reflects.
  ///
  /// A ``QuorumCore/ReadConsistency/session`` read goes to any member of the group (chosen at random, so reads
  /// spread over the replicas) with this client's newest position in the group (``lastSeenIndex(in:)``) as its
  /// floor: the client reads its own writes and never goes back in time, without asking the leader.
  /// - Throws: ``QuorumClientError``.
  public func query(
    _ payload: [UInt8], service: String, group: GroupID, consistency: ReadConsistency = .linearizable,
    atLeast: UInt64 = 0, at member: NodeID? = nil, deadline: Duration? = nil
  ) async throws -> (answer: [UInt8], index: UInt64) {
    let floor = consistency == .session ? max(atLeast, seen[group] ?? 0) : atLeast
    let request = HostRequest.query(
      group: group, service: service, payload: payload, consistency: consistency, atLeast: floor)
    // A session read goes to any of the group's members, which only the cluster map names.
    if consistency == .session, member == nil { _ = try await clusterMap(deadline: deadline) }
    let reply = try await send(
      request, to: member.map { [$0] } ?? members(of: group), group: group, deadline: deadline ?? options.deadline,
      isWrite: false, anyMember: consistency == .stale || consistency == .session || member != nil)
    guard case .answer(let bytes, let index) = reply else { throw QuorumClientError.badReply("expected an answer") }
    noteSeen(index, in: group)
    return (bytes, index)
  }

  /// The status of every group as each of its members reports it (members that do not answer are left out).
  /// - Throws: ``QuorumClientError/badReply(_:)`` if a member answers with a reply this build cannot read (say, a
  ///   member of an incompatible build): it is not left out as if it had not answered.
  public func statuses(deadline: Duration? = nil) async throws -> [GroupStatus] {
    let map = try await clusterMap(deadline: deadline)
    var all: [GroupStatus] = []
    for member in map.members.keys.sorted() {
      let reply: HostReply
      do {
        reply = try await send(
          .status(group: nil), to: [member], deadline: min(deadline ?? options.deadline, options.attemptTimeout),
          isWrite: false, anyMember: true)
      } catch QuorumClientError.badReply(let why) {
        throw QuorumClientError.badReply("unreadable status reply from \(member): \(why)")
      } catch {
        continue
      }
      guard case .statuses(let statuses) = reply else {
        throw QuorumClientError.badReply("unreadable status reply from \(member): expected statuses")
      }
      all += statuses
    }
    return all
  }

  /// The status of every group `member` hosts, as it reports it.
  public func statuses(of member: NodeID, deadline: Duration? = nil) async throws -> [GroupStatus] {
    _ = try? await clusterMap(deadline: deadline)
    let reply = try await send(
      .status(group: nil), to: [member], deadline: deadline ?? options.attemptTimeout, isWrite: false,
      anyMember: true)
    guard case .statuses(let statuses) = reply else { throw QuorumClientError.badReply("expected statuses") }
    return statuses
  }

  /// Changes `group`'s membership by one operation (through its leader).
  public func changeMembership(_ operation: MembershipOperation, group: GroupID, deadline: Duration? = nil)
    async throws
  {
    _ = try await clusterMap()
    _ = try await send(
      .membership(group: group, operation), to: members(of: group), group: group,
      deadline: deadline ?? options.deadline, isWrite: true)
  }

  /// Hands `group`'s leadership to `target`.
  public func transferLeadership(of group: GroupID, to target: NodeID, deadline: Duration? = nil) async throws {
    _ = try await clusterMap()
    _ = try await send(
      .transferLeadership(group: group, to: target), to: members(of: group), group: group,
      deadline: deadline ?? options.deadline, isWrite: false)
  }

  private func session(for group: GroupID, deadline: Duration) async throws -> Session {
    if let session = sessions[group] {
      let idle = clock.monotonicNanos() &- session.lastUsedNanos
      // Idle too long, the server may have expired it: a fresh one costs a round trip, a command refused under an
      // expired one an unknown outcome. (One in use is kept: its commands' answers are still to come.)
      guard session.outstanding.isEmpty, idle >= options.sessionIdleRenewal.nanoseconds else { return session }
      sessions[group] = nil
    }
    _ = try await clusterMap(deadline: deadline)
    let reply = try await send(
      .registerSession(group: group), to: members(of: group), group: group, deadline: deadline, isWrite: false)
    guard case .session(let id) = reply else { throw QuorumClientError.badReply("expected a session") }
    if let existing = sessions[group] { return existing }  // Another call registered one meanwhile.
    let session = Session(id: id, lastUsedNanos: clock.monotonicNanos())
    sessions[group] = session
    return session
  }

  // MARK: - Sending with retries

  /// Sends `request` until a member answers it or the deadline passes: to the group's known leader first,
  /// following `notLeader` redirects, moving on from members that fail, backing off between rounds.
  private func send(
    _ request: HostRequest, to candidates: [NodeID], group: GroupID? = nil, deadline: Duration, isWrite: Bool,
    anyMember: Bool = false, attemptTimeout: Duration? = nil
  ) async throws -> HostReply {
    let start = clock.monotonicNanos()
    let end = start &+ deadline.nanoseconds
    let bytes = request.wireBytes(reservingCapacity: 64)
    var backoff = options.minBackoff
    var sent = false
    /// A write without a session (a membership change): applied twice, or applied and then refused by a retry
    /// ("already a member"), it must not be retried once an attempt may have been carried out.
    let retryMayApplyTwice: Bool
    switch request {
    case .command(_, _, let id?, _) where id.session != 0: retryMayApplyTwice = false
    default: retryMayApplyTwice = isWrite
    }
    var target = (anyMember ? nil : group.flatMap { leaders[$0] }) ?? pick(from: candidates)
    var lastFailure: String?
    /// Members that turned the client away for good: not asked again in this call (no pick, no redirect).
    var refusedBy: Set<NodeID> = []
    /// Whether an attempt reached a member that did not refuse: a write may then have been applied.
    var reached = false
    /// Whether an attempt ended without saying if it was carried out (silent, cut off, timed out, or its outcome
    /// unknown): a later definite refusal then says nothing about that attempt.
    var uncertain = false
    while true {
      let now = clock.monotonicNanos()
      guard now < end, let member = target else {
        throw QuorumClientError.timeout(outcomeUnknown: isWrite && sent, lastFailure: lastFailure)
      }
      let attempt = min((attemptTimeout ?? options.attemptTimeout).nanoseconds, end - now)
      var redirected = false
      /// The member turned the client away: the next one is asked at once. (No spin: each member refuses a call
      /// once at most, and is not asked again in it.)
      var refused = false
      do {
        sent = true
        let replyBytes = try await channel.send(bytes, to: member, timeout: .nanoseconds(Int64(attempt)))
        reached = true
        let reply: HostReply
        do {
          reply = try HostReply(wireBytes: replyBytes)
        } catch {
          throw QuorumClientError.badReply("\(error)")
        }
        guard case .failure(let failure) = reply else {
          if let group, !anyMember { leaders[group] = member }
          return reply
        }
        lastFailure = "\(member): \(failure)"
        switch failure.error {
        case .consensus(.notLeader(let hint)):
          if let group { leaders[group] = hint }
          if let hint, hint != member, !refusedBy.contains(hint) {
            target = hint
            redirected = true
          } else {
            // No hint, or one to a member that refused this client: another member, after the back-off.
            target = pick(from: candidates, avoiding: member, refused: refusedBy)
          }
        case .consensus(.timeout), .consensus(.stopped):
          // Perhaps proposed, and committed later (or before the node stopped). Under a session a retry applies
          // once; a registration's possible session goes unused and expires.
          if retryMayApplyTwice { throw QuorumClientError.outcomeUnknown }
          uncertain = true
          target = pick(from: candidates, avoiding: member, refused: refusedBy)
        case .consensus(.overloaded), .consensus(.dropped), .consensus(.transferInProgress), .consensus(.leaseExpired):
          // Refused before it was proposed, or its entry was replaced: certainly not applied.
          target = pick(from: candidates, avoiding: member, refused: refusedBy)
        case .consensus(.outcomeUnknown):
          // Under a session a retry applies once; a session a registration may have opened goes unused and expires.
          if retryMayApplyTwice { throw QuorumClientError.outcomeUnknown }
          uncertain = true
          target = pick(from: candidates, avoiding: member, refused: refusedBy)
        case .notHosted(_, let members):
          target = pick(from: members.isEmpty ? candidates : members, avoiding: member, refused: refusedBy)
        case .consensus(.responseForgotten):
          // An earlier attempt was applied (or the request fell below the session's acknowledged mark) and its
          // answer is gone: every retry would hear the same.
          throw QuorumClientError.outcomeUnknown
        case .consensus(.commandTooLarge), .consensus(.sessionNotOwned), .malformed, .unknownService,
          .serviceNotCarried:
          // The request itself (or whose session it names) is refused: every attempt was, the first too.
          throw QuorumClientError.rejected(failure.error)
        default:
          // A refusal before the log (a space quota, a slot that moved, an expired session) hides the answer the
          // session remembers for an earlier attempt that was applied: after an uncertain attempt, a write's
          // outcome is unknown.
          if isWrite && uncertain { throw QuorumClientError.outcomeUnknown }
          throw QuorumClientError.rejected(failure.error)
        }
      } catch let error as QuorumClientError {
        throw error
      } catch RequestChannelError.refused(_, let why) {
        // Nothing reached this member. Ask the members that have not refused, at once (a refusal is not a busy
        // member, and waiting out back-offs is what a loaded machine stretches towards the deadline); once all have,
        // stop. If an earlier attempt of a write reached a member, the write may have been applied: its outcome
        // is unknown.
        refusedBy.insert(member)
        refused = true
        lastFailure = "\(channel.describe(member)): \(why)"
        if let group, leaders[group] == member { leaders[group] = nil }
        target = pick(from: candidates, refused: refusedBy)
        if target == nil {
          if isWrite && (reached || uncertain) { throw QuorumClientError.outcomeUnknown }
          throw QuorumClientError.refused(lastFailure ?? why)
        }
      } catch {
        // Silent or cut off: the request may have been applied; the session makes a retry safe, and nothing else
        // does. Only a member that could not be reached certainly did not get it.
        switch error as? RequestChannelError {
        case .unreachable(let node, let why)?: lastFailure = "\(channel.describe(node)) unreachable: \(why)"
        case .connectionLost(let node, let why)?: lastFailure = "\(channel.describe(node)): connection lost: \(why)"
        case .timeout(let node)?: lastFailure = "\(channel.describe(node)) did not answer in time"
        default: lastFailure = "\(error)"
        }
        var unreachable = false
        if case .unreachable? = error as? RequestChannelError { unreachable = true }
        if !unreachable {
          if retryMayApplyTwice { throw QuorumClientError.outcomeUnknown }
          uncertain = true
        }
        if case RequestChannelError.unreachable(_, "no address")? = error as? RequestChannelError,
          request != .clusterMap
        {
          // A member the map has no address for (it was still starting when the map was fetched): fetch it again.
          mapStale = true
          _ = try? await clusterMap(deadline: options.attemptTimeout)
        }
        if let group, leaders[group] == member { leaders[group] = nil }
        target = pick(from: candidates, avoiding: member, refused: refusedBy)
      }
      if !redirected && !refused {
        let jitter = Double(random.next() % 1000) / 1000 + 0.5
        let pause = min(backoff * jitter, .nanoseconds(Int64(end &- min(end, clock.monotonicNanos()))))
        if pause > .zero { try await clock.sleep(for: pause) }
        backoff = min(backoff * 2, options.maxBackoff)
      }
    }
  }

  /// A random member of `candidates` that has not `refused` the client, other than `avoiding` when there is
  /// another; `nil` when every candidate refused.
  private func pick(from candidates: [NodeID], avoiding: NodeID? = nil, refused: Set<NodeID> = []) -> NodeID? {
    let open = refused.isEmpty ? candidates : candidates.filter { !refused.contains($0) }
    let choices = open.count > 1 ? open.filter { $0 != avoiding } : open
    guard !choices.isEmpty else { return nil }
    return choices[Int(random.next() % UInt64(choices.count))]
  }
}
