public import QuorumCore
@_exported public import QuorumReplica
public import QuorumStorage

/// Something that happened to a Multi-Paxos node, for applications that watch leadership.
public enum PaxosEvent: Sendable, Equatable {
  /// The node's role or promised ballot changed.
  case roleChanged(PaxosRole, ballot: Ballot)
  /// The node follows a different leader (or lost track of one).
  case leaderChanged(NodeID?, ballot: Ballot)
  /// The membership in force changed (see ``MultiPaxosCore/membership``).
  case membershipChanged(Membership)
  /// The node installed a snapshot from the leader.
  case snapshotInstalled(slot: Slot)
  /// The node stopped.
  case stopped
}

/// A Multi-Paxos node's view of itself and (when leading) of the other members.
public struct MultiPaxosStatus: Sendable, Equatable {
  /// This node.
  public var id: NodeID
  /// Its role.
  public var role: PaxosRole
  /// The ballot it promised.
  public var ballot: Ballot
  /// The leader it follows.
  public var leader: NodeID?
  /// Every slot up to here is known chosen.
  public var chosenThrough: Slot
  /// The slot applied to the state machine.
  public var appliedThrough: Slot
  /// The first slot held (slots before it are in the snapshot).
  public var firstSlot: Slot
  /// The last slot holding a proposal.
  public var lastSlot: Slot
  /// The index of the newest snapshot.
  public var snapshotIndex: Slot
  /// The membership in force: on the leader the newest configuration it proposed, elsewhere the newest known
  /// chosen (see ``MultiPaxosCore/membership``).
  public var membership: Membership
  /// Per-member progress (voters and learners), when leading.
  public var peers: [NodeID: PaxosPeerProgress]
  /// Requests waiting for an answer.
  public var pendingRequests: Int
  /// Whether this node leads and heartbeats less often, nothing having been asked of it
  /// (``PaxosConfiguration/idleHeartbeatFactor``).
  public var isIdle = false
  /// As a follower, how many times longer it waits for its leader than for an active one: the factor of the
  /// leader's last heartbeat, or 1 once its transport reported the leader lost.
  public var leaderIdleFactor = 1
  /// Messages from peers dropped as impossible from an honest peer (``MultiPaxosCore/refusedMessages``): a count
  /// that grows points at a faulty or incompatible member.
  public var refusedMessages: UInt64 = 0
}

/// A Multi-Paxos replica: the replica runtime (``QuorumReplica/ReplicaNode``) driving ``MultiPaxosCore``
/// through ``MultiPaxosEngine``. It implements ``QuorumCore/ReplicatedLog``, so services written for Raft (the
/// key-value store, the lock service) run on it unchanged.
///
/// The storage must use ``QuorumStorage/LogWriteMode/replace``: accepting in a higher ballot replaces one slot
/// and leaves the later ones alone. See ``QuorumReplica/ReplicaNode`` for the durability order (a candidate
/// persists its own promise before it sends a single prepare; acceptances are durable before they are sent).
public typealias MultiPaxosNode<Machine: StateMachine> = ReplicaNode<MultiPaxosEngine, Machine>

extension ReplicaNode where Engine == MultiPaxosEngine {
  /// The node's current view.
  public var status: MultiPaxosStatus {
    currentStatus
      ?? MultiPaxosStatus(
        id: id, role: .follower, ballot: .zero, leader: nil, chosenThrough: 0, appliedThrough: 0, firstSlot: 1,
        lastSlot: 0, snapshotIndex: 0, membership: .empty, peers: [:], pendingRequests: 0)
  }
}

extension PaxosConfiguration: ReplicaConfiguration {}

extension PaxosEntry: ReplicaEntry {
  /// Whether the slot holds a client command (not a no-op or a configuration).
  public var isCommand: Bool { kind == .command }
}

/// ``MultiPaxosCore`` adapted to the replica runtime: recovery from storage, the ready in the runtime's shape,
/// and the events and status applications see.
public struct MultiPaxosEngine: ReplicaEngine {
  public typealias Message = PaxosMessage
  public typealias Entry = PaxosEntry
  public typealias Configuration = PaxosConfiguration
  public typealias Raw = PaxosReady
  public typealias Event = PaxosEvent
  public typealias Status = MultiPaxosStatus

  /// `multi-paxos`.
  public static var name: String { "multi-paxos" }

  /// A pending proposal: its slot, ballot, kind and bytes (the slot chosen with another value is another
  /// leader's).
  public struct Ticket: ProposalTicket {
    public var index: UInt64
    /// The ballot the proposal was made in.
    public var ballot: Ballot
    /// What the proposal carries (a command or a configuration).
    public var kind: PaxosEntryKind
    /// The proposed value.
    public var data: [UInt8]
  }

  /// The protocol core.
  public private(set) var core: MultiPaxosCore
  private var lastSoft = PaxosSoftState(role: .follower, leader: nil, ballot: .zero)
  private var lastMembership: Membership

  init(core: MultiPaxosCore) {
    self.core = core
    self.lastMembership = core.membership
  }

  /// Rebuilds the node from storage. A node with nothing stored starts a new group with
  /// `configuration.members` as its founding voters, or, with no members, waits to be added to an existing
  /// group and learns its configuration from the leader (a configuration entry, or a snapshot). A restarted
  /// node takes its configuration from its snapshot's metadata and its log (the founding members govern the
  /// slots before the first configuration entry, so a node restarted with them, or without, recovers the same).
  /// A stored state that does not decode, or a log with a slot no acceptor would have stored
  /// (``PaxosRecoveryError``), is refused.
  public static func recover(
    id: NodeID, configuration: PaxosConfiguration, state: RecoveredState<PaxosEntry>, random: SeededRandom
  ) throws -> (engine: MultiPaxosEngine, snapshot: StoredSnapshot?) {
    var random = random
    let hardState = try state.hardState.map { try PaxosHardState(wireBytes: $0) } ?? PaxosHardState()
    let snapshot = try state.snapshot.map { try PaxosSnapshot(stored: $0) }
    // A slot far past the rest (a damaged file) would take memory for every slot in between: refuse to start.
    try MultiPaxosCore.validateRecovered(snapshot: snapshot, entries: state.entries)
    let core = MultiPaxosCore(
      id: id, members: configuration.members, options: configuration.coreOptions, hardState: hardState,
      snapshot: snapshot, entries: state.entries, random: random.fork())
    return (MultiPaxosEngine(core: core), state.snapshot)
  }

  public mutating func advanceClock(to nanos: UInt64) { core.advanceClock(to: nanos) }

  public mutating func tick(now nanos: UInt64) { core.tick(now: nanos) }

  public mutating func step(_ message: PaxosMessage, from: NodeID) { core.step(message, from: from) }

  public mutating func propose(_ command: [UInt8]) throws(ConsensusError) -> Ticket {
    do {
      let slot = try core.propose(command)
      return Ticket(index: slot, ballot: core.entry(at: slot)?.ballot ?? core.promised, kind: .command, data: command)
    } catch {
      throw Self.translate(error, options: core.options)
    }
  }

  public mutating func changeMembership(_ change: MembershipChange) throws(ConsensusError) -> Ticket {
    do {
      let slot = try core.proposeMembership(change)
      let entry = core.entry(at: slot)
      return Ticket(index: slot, ballot: entry?.ballot ?? core.promised, kind: .membership, data: entry?.data ?? [])
    } catch {
      throw Self.translate(error, options: core.options)
    }
  }

  public mutating func transferLeadership(to target: NodeID) throws(ConsensusError) -> TransferProgress {
    do {
      try core.transferLeadership(to: target)
    } catch {
      throw Self.translate(error, options: core.options)
    }
    return target == core.id || transferCompleted(to: target) ? .done : .started
  }

  public func transferCompleted(to target: NodeID) -> Bool { core.leader == target && core.role != .leader }

  public mutating func requestRead(id: UInt64) throws(ConsensusError) {
    do {
      try core.requestRead(id: id)
    } catch {
      throw Self.translate(error, options: core.options)
    }
  }

  public func leaseReadIndex(now nanos: UInt64) -> UInt64? { core.leaseReadIndex(now: nanos) }

  public mutating func reportUnreachable(_ peer: NodeID) {}

  public mutating func peerLost(_ peer: NodeID) { core.peerLost(peer) }

  public var hasReady: Bool { core.hasReady }

  public var quietTicks: Int { core.quietTicks }
  /// Sets ``MultiPaxosCore/idleAllowed``.
  public mutating func allowIdling(_ allowed: Bool) {
    if core.idleAllowed != allowed { core.idleAllowed = allowed }
  }

  public mutating func ready() -> ReplicaReady<MultiPaxosEngine> {
    let rd = core.ready()
    var out = ReplicaReady<MultiPaxosEngine>(raw: rd)
    out.eagerMessages = rd.eagerMessages.map { ReplicaOutgoing(to: $0.to, message: $0.message) }
    // The hard state is the promise alone: a promise must be durable before the message that makes it leaves.
    out.write = StorageWrite(
      hardState: rd.hardState?.wireBytes(), entries: rd.entries, mustSync: rd.hardState != nil)
    if let snapshot = rd.snapshot {
      // Entries above the snapshot are accepted proposals the acceptor must not forget: keep them.
      out.snapshot = ReplicaSnapshotInstall(
        stored: snapshot.stored, discardingLog: false, compactThrough: snapshot.index)
    }
    out.messages = rd.messages.map { ReplicaOutgoing(to: $0.to, message: $0.message) }
    out.committed = rd.chosenEntries
    out.readStates = rd.readStates.map { ReplicaReadState(id: $0.id, index: $0.index) }
    out.failedReads = rd.failedReads
    out.peerFailures = rd.snapshotRefusals.map { ($0.peer, $0.description) }
    if let soft = rd.softState {
      if soft.role != lastSoft.role || soft.ballot != lastSoft.ballot {
        out.events.append(.roleChanged(soft.role, ballot: soft.ballot))
      }
      if soft.leader != lastSoft.leader { out.events.append(.leaderChanged(soft.leader, ballot: soft.ballot)) }
      out.leadershipChanged = (soft.role == .leader) != (lastSoft.role == .leader)
      lastSoft = soft
    }
    let membership = core.membership
    if membership != lastMembership {
      lastMembership = membership
      out.events.append(.membershipChanged(membership))
    }
    return out
  }

  public mutating func advance(_ ready: ReplicaReady<MultiPaxosEngine>) { core.advance(ready.raw) }

  public func snapshotMetadata(at index: UInt64) -> (term: UInt64, metadata: [UInt8])? {
    guard index <= core.chosenThrough, index + 1 >= core.firstSlot else { return nil }
    return (0, core.membership(through: index).wireBytes())
  }

  public mutating func recordSnapshot(_ snapshot: StoredSnapshot, lastRecorded: UInt64, retainEntries: Int) -> UInt64? {
    // A leader's snapshot installed in this very batch has moved the log past this one but is not stored yet:
    // compacting behind the log's start now would pass every snapshot in storage.
    guard snapshot.index > lastRecorded, snapshot.index >= core.firstSlot - 1 else { return nil }
    _ = core.takeSnapshot(at: snapshot.index, data: snapshot.data, retainEntries: retainEntries)
    return core.firstSlot - 1
  }

  public func match(_ ticket: Ticket, committedAs entry: PaxosEntry) -> ProposalMatch {
    // The slot may have been chosen with another leader's proposal: then this one was not chosen at all (a
    // proposal only ever competes for its own slot).
    guard entry.kind == ticket.kind && entry.data == ticket.data else { return .another }
    // The same bytes in the ballot it was proposed in are this proposal (a ballot has one leader, which proposes
    // one value per slot). In a later ballot they are this value taken over by a later leader, or another
    // leader's value that happens to be byte for byte the same: a session registration carries nothing of its
    // client, and two leaders stamping theirs in the same millisecond of log time propose identical entries.
    // Taking those for this proposal handed two clients one session (paxos seed 41004590).
    return entry.ballot == ticket.ballot ? .proposal : .sameValue
  }

  public var leader: NodeID? { core.leader }

  public var isLeader: Bool { core.role == .leader }

  public func status(applied: UInt64, pendingRequests: Int) -> MultiPaxosStatus {
    MultiPaxosStatus(
      id: core.id, role: core.role, ballot: core.promised, leader: core.leader, chosenThrough: core.chosenThrough,
      appliedThrough: applied, firstSlot: core.firstSlot, lastSlot: core.lastSlot,
      snapshotIndex: core.snapshot?.index ?? 0, membership: core.membership, peers: core.peerProgress,
      pendingRequests: pendingRequests, isIdle: core.isIdle, leaderIdleFactor: core.leaderIdleFactor,
      refusedMessages: core.refusedMessages)
  }

  public static func snapshotInstalledEvent(at index: UInt64) -> PaxosEvent { .snapshotInstalled(slot: index) }

  public static var stoppedEvent: PaxosEvent { .stopped }

  static func translate(_ error: PaxosRequestError, options: MultiPaxosOptions) -> ConsensusError {
    switch error {
    case .notLeader(let hint): return .notLeader(hint: hint)
    case .overloaded: return .overloaded(limit: options.maxUncommittedBytes)
    case .transferInProgress: return .transferInProgress
    case .membershipChangeRejected(let why): return .membershipChangeRejected(why)
    }
  }
}

extension MultiPaxosOptions {
  init(phase1: Int, phase2: Int) {
    self.init()
    phase1Quorum = phase1
    phase2Quorum = phase2
  }
}
