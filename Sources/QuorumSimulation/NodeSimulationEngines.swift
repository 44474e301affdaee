import QuorumCore
import QuorumHost
import QuorumKV
import QuorumLocks
import QuorumPaxos
import QuorumRaft
import QuorumReplica
import QuorumStorage

/// What a simulation asks of each group's checker, whatever the group's engine.
protocol GroupChecker: AnyObject, Sendable {
  var failure: SimulationFailure? { get }
  var leaderships: Int { get }
  var referenceApplied: UInt64 { get }
  var referenceSnapshot: [UInt8] { get }
  /// The reference replica's whole state, for comparing replicas with it structurally.
  var referenceMachine: ReplicatedStateMachine<ServiceMachine> { get }
  func fail(_ message: String)
  func becameDurable(_ node: NodeID, entries: [any StorableEntry], hardState: [UInt8]?)
  func kvValue(of key: String, at index: UInt64) -> [UInt8]?
  /// Told what the reference replica's services notified at each committed entry (the lock checker's input).
  var onCommittedNotifications: ((_ index: UInt64, _ notifications: [ServiceNotification]) -> Void)? { get set }
  /// What the exactly-once session table did, as the reference replica applied the committed log.
  var sessionEvents: SessionEvents { get }
  /// Readies held back because a replica could not store the leader's snapshot they carry (each try counted).
  var heldInstalls: Int { get }
}

/// What a group's exactly-once session table did over a run (every replica does the same, at the same entries).
struct SessionEvents: Sendable {
  /// Sessions that expired, idle for longer than the policy's timeout in log time.
  var expired = 0
  /// Sessions evicted to make room for a registration (``QuorumCore/SessionPolicy/maxSessions``).
  var evicted = 0
  /// Commands (and keep-alives) that reached the log under a session that had expired or been evicted.
  var refusedExpired = 0
  /// Requests applied before whose answer the session no longer remembered when the request came again.
  var answersForgotten = 0
}

/// Checks one group of a simulated cluster while it runs: sees every ready and every apply of every replica
/// (through ``QuorumReplica/ReplicaObserver``) and keeps a reference replica fed the committed log.
///
/// The base class checks State Machine Safety (every replica applies the same entry at each position), replays the
/// committed log into a reference `ServiceMachine` (with exactly-once sessions, as the replicas do) — whose
/// encoded state every replica must reach — and remembers each key-value key's values by position, so the
/// simulation can check stale reads. Engine checkers add their own invariants.
///
/// Safety of `@unchecked Sendable`: a simulation runs every job on one thread, and the observer is only called from jobs.
class ReplicaChecker<Engine: ReplicaEngine>: ReplicaObserver, GroupChecker, @unchecked Sendable {
  /// The group checked.
  let group: GroupSpec
  /// The first violation found, if any.
  private(set) var failure: SimulationFailure?
  /// Distinct leaderships seen.
  var leaderships = 0
  /// The run's trace.
  let trace: SimulationTrace
  /// The current virtual time.
  let now: () -> VirtualTime

  private var appliedDigest: [UInt64: UInt64] = [:]
  private var reference: ReplicatedStateMachine<ServiceMachine>
  /// The last position the reference replica applied.
  private(set) var referenceApplied: UInt64 = 0
  private var waiting: [UInt64: (isCommand: Bool, data: [UInt8])] = [:]
  private var valuesByKey: [String: [(index: UInt64, value: [UInt8]?)]] = [:]
  /// Told what the reference replica's services notified at each committed entry.
  var onCommittedNotifications: ((_ index: UInt64, _ notifications: [ServiceNotification]) -> Void)?
  /// What the reference replica's session table did.
  private(set) var sessionEvents = SessionEvents()
  /// Readies held back because a replica could not store the leader's snapshot they carry (each try counted).
  private(set) var heldInstalls = 0

  init(group: GroupSpec, sessions: SessionPolicy, trace: SimulationTrace, now: @escaping () -> VirtualTime) {
    self.group = group
    self.reference = ReplicatedStateMachine(
      ServiceMachine(ServiceCatalog.standard.services(named: group.services) ?? []), policy: sessions)
    self.trace = trace
    self.now = now
  }

  /// Records a violation (the first one wins).
  func fail(_ message: String) {
    if failure == nil { failure = SimulationFailure(message) }
  }

  /// A digest of an entry's kind and payload.
  static func fingerprint(isCommand: Bool, data: [UInt8]) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325 ^ (isCommand ? 1 : 0)
    for b in data { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    return h
  }

  /// Engine invariants before a ready is carried out.
  func willCarryOut(_ node: NodeID, ready: ReplicaReady<Engine>, engine: Engine) {}
  /// Engine invariants when a node applies an entry.
  func didApply(_ node: NodeID, entry: Engine.Entry) {}
  /// Engine invariants when entries or a hard state of `node` become durable on its disk (by a completed write, or
  /// by surviving a crash in the middle of one).
  func becameDurable(_ node: NodeID, entries: [any StorableEntry], hardState: [UInt8]?) {}

  func node(_ node: NodeID, group: GroupID, willCarryOut ready: ReplicaReady<Engine>, engine: Engine) {
    willCarryOut(node, ready: ready, engine: engine)
  }

  func node(_ node: NodeID, group: GroupID, didPersist ready: ReplicaReady<Engine>) {}

  func node(_ node: NodeID, group: GroupID, heldInstallAt index: UInt64, failures: Int) {
    heldInstalls += 1
    trace.record(now(), "\(self.group.name): \(node) holds the leader's snapshot at \(index) (\(failures) failed)")
  }

  func node(_ node: NodeID, group: GroupID, applied entry: Engine.Entry) {
    let digest = Self.fingerprint(isCommand: entry.isCommand, data: entry.data)
    if let seen = appliedDigest[entry.index], seen != digest {
      fail("\(self.group.name): State Machine Safety: \(node) applied a different entry at \(entry.index)")
    }
    appliedDigest[entry.index] = digest
    didApply(node, entry: entry)
    if entry.index > referenceApplied { waiting[entry.index] = (entry.isCommand, entry.data) }
    while let next = waiting.removeValue(forKey: referenceApplied + 1) {
      referenceApplied += 1
      guard next.isCommand else { continue }
      let sessionsBefore = reference.sessionCount
      let afterExpiry = sessionsAfterExpiry(before: next.data, sessions: sessionsBefore)
      let outcome = reference.apply(entry: next.data, at: referenceApplied)
      countSessionEvents(outcome, before: sessionsBefore, afterExpiry: afterExpiry)
      trace.record(
        now(),
        "\(self.group.name) committed \(referenceApplied) at log time \(reference.logTimeMillis): \(Self.describe(next.data)) -> \(outcome)"
      )
      let notifications = reference.takeNotifications()  // Drained at every entry, as a host does.
      if !notifications.isEmpty { onCommittedNotifications?(referenceApplied, notifications) }
      guard let command = try? ReplicatedCommand<ServiceCommand>(wireBytes: next.data),
        case .command(let body) = command.body, body.service == KeyValueService.name,
        let kv = try? KVCommand(wireBytes: body.payload)
      else { continue }
      let value = kvValue(kv.key)
      if valuesByKey[kv.key]?.last.map({ $0.value != value }) ?? true {
        valuesByKey[kv.key, default: []].append((referenceApplied, value))
      }
    }
  }

  func node(_ node: NodeID, group: GroupID, recordedSnapshotAt index: UInt64, compactedThrough: UInt64) {}

  /// For a registration into a full session table: how many sessions are left once the entry's expiry has run,
  /// before the registration evicts one. Applying the entry expires idle sessions first, then evicts one if the
  /// table is still full; the counts alone cannot tell the two apart when one session went, so a copy of the
  /// reference applies an entry that only expires (a keep-alive of no session), at the same log time.
  private func sessionsAfterExpiry(before data: [UInt8], sessions: Int) -> Int? {
    guard sessions >= reference.policy.maxSessions,
      let command = try? ReplicatedCommand<ServiceCommand>(wireBytes: data), case .registerSession = command.body
    else { return nil }
    var probe = reference
    _ = probe.apply(ReplicatedCommand(timestampMillis: command.timestampMillis, body: .keepAlive), at: referenceApplied)
    return probe.sessionCount
  }

  private func countSessionEvents(_ outcome: ApplyOutcome<ServiceAnswer>, before: Int, afterExpiry: Int?) {
    let after = reference.sessionCount
    switch outcome {
    case .sessionRegistered:
      // The table had room (no `afterExpiry`): nothing was evicted.
      let left = afterExpiry ?? after - 1
      sessionEvents.expired += before - left
      sessionEvents.evicted += left + 1 - after
    case .sessionExpired:
      sessionEvents.refusedExpired += 1
      sessionEvents.expired += before - after
    case .responseForgotten:
      sessionEvents.answersForgotten += 1
      sessionEvents.expired += before - after
    default:
      sessionEvents.expired += before - after
    }
  }

  private func kvValue(_ key: String) -> [UInt8]? {
    let query = ServiceQuery(service: KeyValueService.name, payload: KVQuery.get(key: key).wireBytes())
    guard case .ok(let bytes) = reference.query(query), case .value(let value)? = try? KVQueryResult(wireBytes: bytes)
    else { return nil }
    return value
  }

  /// The value of key-value `key` after the committed prefix ending at `index`.
  func kvValue(of key: String, at index: UInt64) -> [UInt8]? {
    valuesByKey[key]?.last(where: { $0.index <= index })?.value ?? nil
  }

  /// A committed entry's command, for the trace.
  static func describe(_ data: [UInt8]) -> String {
    guard let command = try? ReplicatedCommand<ServiceCommand>(wireBytes: data) else { return "?" }
    guard case .command(let body) = command.body else { return "\(command.body) @\(command.timestampMillis)" }
    if body.service == "locks", let lock = try? LockCommand(wireBytes: body.payload) {
      return "\(lock) @\(command.timestampMillis)"
    }
    return "\(body.service) @\(command.timestampMillis)"
  }

  /// The reference replica's whole encoded state.
  var referenceSnapshot: [UInt8] { reference.snapshot() }

  /// The reference replica's whole state (it never restores a snapshot: it applied every committed entry).
  var referenceMachine: ReplicatedStateMachine<ServiceMachine> { reference }
}

/// Raft's invariants (§5.2–§5.4), checked at every ready of every node: Election Safety (one leader per term),
/// Leader Completeness (a new leader holds every committed entry), Log Matching (an index and term identify one
/// entry and its predecessor's term) and that committed entries never change.
///
/// And "acknowledged ⇒ durable" (``RaftDurability``), against each node's disk: every message a node sends
/// promises only what its disk holds (``sent(_:from:to:)``, fed by the network), only a leader's replication
/// leaves before a ready's write, and every entry a leader commits is durable on a quorum of its voters.
final class RaftChecker: ReplicaChecker<RaftEngine>, @unchecked Sendable {
  // Safety of @unchecked Sendable: as for ``ReplicaChecker``, only the simulation's jobs call it, one at a time.
  private var leaderOfTerm: [Term: NodeID] = [:]
  private var entryAt: [LogIndex: [Term: (data: UInt64, prevTerm: Term)]] = [:]
  private var committedTerm: [LogIndex: Term] = [:]
  private var maxCommitted: LogIndex = 0
  /// Each node's membership at its previous ready: a leader's commit was counted in it or in the current one.
  private var membershipBefore: [NodeID: Membership] = [:]
  /// Each node's commit index at its previous ready: a leader whose commit index moved past it counted a quorum.
  private var commitBefore: [NodeID: LogIndex] = [:]
  /// The term of the entry at each index as each term's leader sent it (in its appends and snapshots): an
  /// acknowledgement in term `t` through index `i` promises that entry, not any entry at `i`, such as one of a
  /// deposed leader's that the append overwrites.
  private var sentTerm: [Term: [LogIndex: Term]] = [:]
  /// What each node's disk for this group holds durably now (set by the simulation once its machines exist);
  /// nil for a node without a disk for the group.
  var durableImage: (NodeID) -> SimulatedDisk<LogEntry>.Image? = { _ in nil }
  /// Messages checked against their sender's disk, and commits against the voters' disks.
  private(set) var durabilityChecks = 0

  private func durable(_ node: NodeID) -> RaftDurability.Durable? {
    durableImage(node).flatMap(RaftDurability.Durable.init)
  }

  /// Checks a message `sender` sends now against what its disk holds.
  func sent(_ message: RaftMessage, from sender: NodeID, to receiver: NodeID) {
    guard let image = durableImage(sender) else {
      fail("\(group.name): \(sender) sent \(message) with no disk for the group")
      return
    }
    guard let durable = RaftDurability.Durable(image) else {
      fail("\(group.name): \(sender) has an undecodable durable hard state")
      return
    }
    switch message {
    case .appendEntries(let m):
      if m.prevLogIndex > 0 { sentTerm[m.term, default: [:]][m.prevLogIndex] = m.prevLogTerm }
      for entry in m.entries { sentTerm[m.term, default: [:]][entry.index] = entry.term }
    case .installSnapshot(let m):
      sentTerm[m.term, default: [:]][m.index] = m.snapshotTerm
    default:
      break
    }
    durabilityChecks += 1
    let promised = { (term: Term, index: LogIndex) in self.sentTerm[term]?[index] ?? self.committedTerm[index] }
    if let violation = RaftDurability.violation(
      of: message, from: sender, to: receiver, durable: durable, promisedTerm: promised)
    {
      fail("\(group.name): acknowledged before durable: \(violation)")
    }
  }

  override func willCarryOut(_ node: NodeID, ready: ReplicaReady<RaftEngine>, engine: RaftEngine) {
    let core = engine.core
    let rd = ready.raw
    defer {
      // After the leadership checks below, so a leader elected in this ready may replicate at once.
      if let violation = RaftDurability.eagerViolation(
        rd.eagerMessages, term: core.term, ledTerm: leaderOfTerm[core.term] == node)
      {
        fail("\(group.name): \(node) \(violation)")
      }
      membershipBefore[node] = core.membership
      commitBefore[node] = core.commitIndex
    }
    // Checked when the commit index moves, not when the entries are handed out to apply, which may be readies
    // later (a bounded batch per ready), after the membership changed again.
    let commit = core.commitIndex
    if core.role == .leader, commit > commitBefore[node] ?? 0, let term = core.term(at: commit) {
      durabilityChecks += 1
      let memberships = [core.membership] + (membershipBefore[node].map { [$0] } ?? [])
      if !memberships.contains(where: {
        RaftDurability.durableQuorum(commit, term: term, membership: $0, durable: durable)
      }) {
        fail(
          "\(group.name): \(node), leader of term \(core.term), committed \(commit)@\(term), which no quorum of \(core.membership) holds durably"
        )
      }
    }
    if let soft = rd.softState, soft.role == .leader {
      if let other = leaderOfTerm[soft.term], other != node {
        fail("\(group.name): Election Safety: \(other) and \(node) both leaders of term \(soft.term)")
      }
      if leaderOfTerm[soft.term] == nil { leaderships += 1 }
      leaderOfTerm[soft.term] = node
      trace.record(now(), "\(node) became leader of term \(soft.term)")
      if core.lastIndex < maxCommitted {
        fail(
          "\(group.name): Leader Completeness: \(node) leads term \(soft.term) with last index \(core.lastIndex) < \(maxCommitted)"
        )
      }
      var index = max(core.firstIndex, 1)
      while index <= maxCommitted {
        if let t = committedTerm[index], let held = core.term(at: index), held != t {
          fail(
            "\(group.name): Leader Completeness: \(node) (term \(soft.term)) has term \(held) at committed \(index) of term \(t)"
          )
        }
        index += 1
      }
    }
    for entry in rd.entries {
      let prevTerm = core.term(at: entry.index - 1) ?? (rd.entries.first { $0.index == entry.index - 1 }?.term ?? 0)
      let record = (data: Self.fingerprint(isCommand: entry.isCommand, data: entry.data), prevTerm: prevTerm)
      if let seen = entryAt[entry.index]?[entry.term] {
        if seen.data != record.data || (seen.prevTerm != record.prevTerm && entry.index > core.firstIndex) {
          fail(
            "\(group.name): Log Matching: \(node) holds a different entry \(entry.index)@\(entry.term) than another node"
          )
        }
      } else {
        entryAt[entry.index, default: [:]][entry.term] = record
      }
    }
    for entry in rd.committedEntries {
      if let t = committedTerm[entry.index], t != entry.term {
        fail(
          "\(group.name): Commitment: \(node) committed \(entry.index)@\(entry.term) but \(entry.index)@\(t) was committed before"
        )
      }
      committedTerm[entry.index] = entry.term
      maxCommitted = max(maxCommitted, entry.index)
    }
  }
}

/// Multi-Paxos's invariants, from an oracle that watches every acceptance as it becomes durable on an
/// acceptor's disk (a completed write, or records that survived a crash): one value per ballot and slot, at most
/// one value chosen per slot, every value a node learns is the value chosen there, a durable promise never goes
/// back, and a leader leads only in ballots it owns.
///
/// A value is chosen at a slot when, in one ballot, the voters that accepted it make a phase-2 quorum of the
/// slot's configuration — the newest configuration entry learnt before the slot, else the founding members —
/// or of the configuration before that one (a value chosen under the old configuration before a configuration
/// entry that a later leader resurrected and got chosen; both quorums meet every later phase-1 quorum).
/// Learners' acceptances count in no quorum. A slot's configuration is known once every slot before it has been
/// learnt somewhere, which is so when a node first learns the slot: the check runs then, and for every later
/// acceptance.
final class PaxosChecker: ReplicaChecker<MultiPaxosEngine>, @unchecked Sendable {
  // Safety of @unchecked Sendable: as for its superclass, a checker belongs to one simulated run, whose
  // scheduler runs every job on the one thread that drives it; nothing touches it concurrently.
  private struct Tally {
    var fingerprint: UInt64
    var acceptors: Set<NodeID>
  }

  private let options: MultiPaxosOptions
  private var acceptances: [Slot: [Ballot: Tally]] = [:]
  private var chosen: [Slot: UInt64] = [:]
  /// The configurations learnt, by the slot of their entry (slot 0: the founding members), ascending.
  private var configurations: [(slot: Slot, membership: Membership)]
  private var durablePromise: [NodeID: Ballot] = [:]
  private var leaderBallots: Set<Ballot> = []

  init(
    group: GroupSpec, sessions: SessionPolicy, options: MultiPaxosOptions, founders: Membership,
    trace: SimulationTrace, now: @escaping () -> VirtualTime
  ) {
    self.options = options
    self.configurations = [(0, founders)]
    super.init(group: group, sessions: sessions, trace: trace, now: now)
  }

  override func willCarryOut(_ node: NodeID, ready: ReplicaReady<MultiPaxosEngine>, engine: MultiPaxosEngine) {
    guard let soft = ready.raw.softState, soft.role == .leader else { return }
    if soft.ballot.node != node { fail("\(group.name): \(node) leads in ballot \(soft.ballot), which it does not own") }
    if leaderBallots.insert(soft.ballot).inserted {
      leaderships += 1
      trace.record(now(), "\(node) leads in \(soft.ballot)")
    }
  }

  override func becameDurable(_ node: NodeID, entries anyEntries: [any StorableEntry], hardState: [UInt8]?) {
    let entries = anyEntries.compactMap { $0 as? PaxosEntry }
    if let bytes = hardState {
      guard let hs = try? PaxosHardState(wireBytes: bytes) else {
        fail("\(group.name): \(node) made an undecodable hard state durable")
        return
      }
      if let before = durablePromise[node], hs.promised < before {
        fail("\(group.name): \(node) made durable promise \(hs.promised) below \(before)")
      }
      durablePromise[node] = hs.promised
    }
    for entry in entries {
      let digest = Self.fingerprint(isCommand: entry.isCommand, data: entry.data)
      var tally = acceptances[entry.index]?[entry.ballot] ?? Tally(fingerprint: digest, acceptors: [])
      if tally.fingerprint != digest {
        fail("\(group.name): Ballot uniqueness: ballot \(entry.ballot) proposed two values for slot \(entry.index)")
      }
      tally.acceptors.insert(node)
      acceptances[entry.index, default: [:]][entry.ballot] = tally
      if let value = chosen[entry.index], value != digest, isChosen(tally, at: entry.index) {
        fail("\(group.name): Safety: two values chosen for slot \(entry.index) (ballot \(entry.ballot))")
      }
    }
  }

  /// Whether the tally's acceptors make a phase-2 quorum of the slot's configuration or of the one before it.
  private func isChosen(_ tally: Tally, at slot: Slot) -> Bool {
    guard let current = configurations.lastIndex(where: { $0.slot < slot }) else { return false }
    for i in [current, current - 1] where i >= 0 {
      let voters = configurations[i].membership.allVoters
      let needed = options.quorums(voters: voters.count).phase2
      if tally.acceptors.intersection(voters).count >= needed { return true }
    }
    return false
  }

  override func didApply(_ node: NodeID, entry: PaxosEntry) {
    let digest = Self.fingerprint(isCommand: entry.isCommand, data: entry.data)
    if let value = chosen[entry.index] {
      if value != digest {
        fail(
          "\(group.name): Learning: \(node) learned slot \(entry.index) with a value that is not the one chosen there")
      }
      return
    }
    var values: Set<UInt64> = []
    // In ballot order: a dictionary's order differs between processes, and the trace must not.
    for (ballot, tally) in (acceptances[entry.index] ?? [:]).sorted(by: { $0.key < $1.key })
    where isChosen(tally, at: entry.index) {
      values.insert(tally.fingerprint)
      trace.record(now(), "oracle: slot \(entry.index) chosen in \(ballot)")
    }
    if values.count > 1 { fail("\(group.name): Safety: two values chosen for slot \(entry.index)") }
    guard values.contains(digest) else {
      fail("\(group.name): Learning: \(node) learned slot \(entry.index), but that value is not chosen there")
      return
    }
    chosen[entry.index] = digest
    if let membership = entry.membership {
      let i = configurations.firstIndex { $0.slot > entry.index } ?? configurations.count
      configurations.insert((entry.index, membership), at: i)
    }
  }
}
