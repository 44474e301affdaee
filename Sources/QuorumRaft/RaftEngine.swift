public import QuorumCore
@_exported public import QuorumReplica
public import QuorumStorage

/// Something that happened to a node, for applications that watch leadership.
public enum RaftEvent: Sendable, Equatable {
  /// The node's role or term changed.
  case roleChanged(RaftRole, term: Term)
  /// The node learned of a different leader (or lost track of one).
  case leaderChanged(NodeID?, term: Term)
  /// The membership in the node's log changed.
  case membershipChanged(Membership)
  /// The node installed a snapshot from the leader.
  case snapshotInstalled(index: LogIndex)
  /// The node stopped.
  case stopped
}

/// A node's view of itself and (when leader) of its peers.
public struct RaftStatus: Sendable, Equatable {
  /// This node.
  public var id: NodeID
  /// Its role.
  public var role: RaftRole
  /// The current term.
  public var term: Term
  /// The leader it knows of.
  public var leader: NodeID?
  /// The commit index.
  public var commitIndex: LogIndex
  /// The index applied to the state machine.
  public var appliedIndex: LogIndex
  /// The first index held in the log (entries before it are in the snapshot).
  public var firstIndex: LogIndex
  /// The last index in the log.
  public var lastIndex: LogIndex
  /// The index of the newest snapshot.
  public var snapshotIndex: LogIndex
  /// The membership in force.
  public var membership: Membership
  /// Per-peer replication, when leader.
  public var peers: [NodeID: PeerProgress]
  /// Requests waiting for an answer.
  public var pendingRequests: Int
  /// Whether this node leads and heartbeats less often, nothing having been asked of it
  /// (``RaftConfiguration/idleHeartbeatFactor``).
  public var isIdle = false
  /// As a follower, how many times longer it waits for its leader than for an active one: the factor of the
  /// leader's last heartbeat, or 1 once its transport reported the leader lost.
  public var leaderIdleFactor = 1
  /// Messages from peers dropped as impossible from an honest peer (``RaftCore/refusedMessages``): a count that
  /// grows points at a faulty or incompatible member.
  public var refusedMessages: UInt64 = 0
}

/// A Raft node: the replica runtime (`ReplicaNode` in QuorumReplica) driving ``RaftCore`` through
/// ``RaftEngine``.
///
/// Start it with `run()` and talk to it with `propose(_:request:)`, `read(_:consistency:)`,
/// `registerSession()`, the membership methods, `transferLeadership(to:)` and `status`;
/// watch it with `events`. See `ReplicaNode` (QuorumReplica) for the durability order and the time rules.
public typealias RaftNode<Machine: StateMachine> = ReplicaNode<RaftEngine, Machine>

extension ReplicaNode where Engine == RaftEngine {
  /// The node's current view.
  public var status: RaftStatus {
    currentStatus
      ?? RaftStatus(
        id: id, role: .follower, term: 0, leader: nil, commitIndex: 0, appliedIndex: 0, firstIndex: 1, lastIndex: 0,
        snapshotIndex: 0, membership: .empty, peers: [:], pendingRequests: 0)
  }
}

extension RaftConfiguration: ReplicaConfiguration {}

extension LogEntry: ReplicaEntry {
  /// Whether the entry carries a client command.
  public var isCommand: Bool { kind == .command }
}

/// ``RaftCore`` adapted to the replica runtime: recovery from storage, the ready in the runtime's shape,
/// and the events and status applications see.
public struct RaftEngine: ReplicaEngine {
  public typealias Message = RaftMessage
  public typealias Entry = LogEntry
  public typealias Configuration = RaftConfiguration
  public typealias Raw = RaftReady
  public typealias Event = RaftEvent
  public typealias Status = RaftStatus

  /// `raft`.
  public static var name: String { "raft" }

  /// A pending proposal: its index and the term it was proposed in (the entry at that index committed with
  /// another term is another leader's).
  public struct Ticket: ProposalTicket {
    public var index: UInt64
    /// The term the proposal was appended in.
    public var term: Term
  }

  /// The protocol core.
  public private(set) var core: RaftCore
  private var lastSoft: SoftState
  private var lastMembership: Membership

  init(core: RaftCore) {
    self.core = core
    self.lastSoft = SoftState(role: .follower, leader: nil, term: 0)
    self.lastMembership = core.membership
  }

  public static func recover(
    id: NodeID, configuration: RaftConfiguration, state: RecoveredState<LogEntry>, random: SeededRandom
  ) throws -> (engine: RaftEngine, snapshot: StoredSnapshot?) {
    var random = random
    let options = configuration.coreOptions
    let fresh = state.hardState == nil && state.snapshot == nil && state.entries.isEmpty
    if fresh {
      let core =
        configuration.members.isEmpty
        ? RaftCore(id: id, options: options, membership: .empty, random: random.fork())
        : RaftCore.bootstrap(
          id: id, options: options, membership: configuration.foundingMembership, random: random.fork())
      return (RaftEngine(core: core), nil)
    }
    let hardState = try state.hardState.map { try HardState(wireBytes: $0) } ?? HardState()
    var snapshot: RaftSnapshot?
    if let stored = state.snapshot {
      let membership = try Membership(wireBytes: stored.metadata)
      snapshot = RaftSnapshot(index: stored.index, term: stored.term, membership: membership, data: stored.data)
    }
    // A commit index the log does not reach would apply entries that were never committed: refuse to start.
    try RaftCore.validateRecovered(hardState: hardState, snapshot: snapshot, entries: state.entries)
    let core = RaftCore(
      id: id, options: options, membership: .empty, hardState: hardState, snapshot: snapshot, entries: state.entries,
      random: random.fork())
    return (RaftEngine(core: core), state.snapshot)
  }

  public mutating func advanceClock(to nanos: UInt64) { core.advanceClock(to: nanos) }

  public mutating func tick(now nanos: UInt64) { core.tick(now: nanos) }

  public mutating func step(_ message: RaftMessage, from: NodeID) { core.step(message, from: from) }

  public mutating func propose(_ command: [UInt8]) throws(ConsensusError) -> Ticket {
    do {
      let (index, term) = try core.propose(command)
      return Ticket(index: index, term: term)
    } catch {
      throw Self.translate(error, options: core.options)
    }
  }

  public mutating func changeMembership(_ change: MembershipChange) throws(ConsensusError) -> Ticket {
    do {
      let index = try core.proposeMembership(change)
      return Ticket(index: index, term: core.term)
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

  public mutating func reportUnreachable(_ peer: NodeID) { core.reportUnreachable(peer) }

  public mutating func peerLost(_ peer: NodeID) { core.peerLost(peer) }

  public var hasReady: Bool { core.hasReady }

  public var quietTicks: Int { core.quietTicks }
  /// Sets ``RaftCore/idleAllowed``.
  public mutating func allowIdling(_ allowed: Bool) {
    if core.idleAllowed != allowed { core.idleAllowed = allowed }
  }

  /// The storage write of `rd`: synced before its messages leave whatever the fsync policy when it changes the
  /// term or the vote.
  static func outgoingWrite(_ rd: RaftReady) -> StorageWrite<LogEntry> {
    StorageWrite(hardState: rd.hardState?.wireBytes(), entries: rd.entries, mustSync: rd.hardStateMustSync)
  }

  public mutating func ready() -> ReplicaReady<RaftEngine> {
    let rd = core.ready()
    var out = ReplicaReady<RaftEngine>(raw: rd)
    out.eagerMessages = rd.eagerMessages.map { ReplicaOutgoing(to: $0.to, message: $0.message) }
    out.write = Self.outgoingWrite(rd)
    if let snapshot = rd.snapshot {
      out.snapshot = ReplicaSnapshotInstall(
        stored: StoredSnapshot(
          index: snapshot.index, term: snapshot.term, metadata: snapshot.membership.wireBytes(), data: snapshot.data),
        discardingLog: rd.snapshotDiscardsLog, compactThrough: nil)
    }
    out.messages = rd.messages.map { ReplicaOutgoing(to: $0.to, message: $0.message) }
    out.committed = rd.committedEntries
    out.readStates = rd.readStates.map { ReplicaReadState(id: $0.id, index: $0.index) }
    out.failedReads = rd.failedReads
    out.peerFailures = rd.snapshotRefusals.map { ($0.peer, $0.description) }
    if let soft = rd.softState {
      if soft.role != lastSoft.role || soft.term != lastSoft.term {
        out.events.append(.roleChanged(soft.role, term: soft.term))
      }
      if soft.leader != lastSoft.leader { out.events.append(.leaderChanged(soft.leader, term: soft.term)) }
      out.leadershipChanged = (soft.role == .leader) != (lastSoft.role == .leader)
      lastSoft = soft
    }
    if core.membership != lastMembership {
      lastMembership = core.membership
      out.events.append(.membershipChanged(core.membership))
    }
    return out
  }

  public mutating func advance(_ ready: ReplicaReady<RaftEngine>) { core.advance(ready.raw) }

  public func snapshotMetadata(at index: UInt64) -> (term: UInt64, metadata: [UInt8])? {
    guard index <= core.persistedIndex, let term = core.term(at: index) else { return nil }
    return (term, (core.membership(at: index) ?? core.membership).wireBytes())
  }

  public mutating func recordSnapshot(_ snapshot: StoredSnapshot, lastRecorded: UInt64, retainEntries: Int) -> UInt64? {
    guard snapshot.index > lastRecorded, snapshot.index >= core.firstIndex - 1,
      core.term(at: snapshot.index) == snapshot.term
    else { return nil }
    core.takeSnapshot(at: snapshot.index, data: snapshot.data, retainEntries: retainEntries)
    return core.firstIndex - 1
  }

  public func match(_ ticket: Ticket, committedAs entry: LogEntry) -> ProposalMatch {
    // One leader per term, which appends one entry per index.
    ticket.term == entry.term ? .proposal : .another
  }

  public var leader: NodeID? { core.leader }

  public var isLeader: Bool { core.role == .leader }

  public func status(applied: UInt64, pendingRequests: Int) -> RaftStatus {
    RaftStatus(
      id: core.id, role: core.role, term: core.term, leader: core.leader, commitIndex: core.commitIndex,
      appliedIndex: applied, firstIndex: core.firstIndex, lastIndex: core.lastIndex,
      snapshotIndex: core.snapshot?.index ?? 0, membership: core.membership, peers: core.peerProgress,
      pendingRequests: pendingRequests, isIdle: core.isIdle, leaderIdleFactor: core.leaderIdleFactor,
      refusedMessages: core.refusedMessages)
  }

  public static func snapshotInstalledEvent(at index: UInt64) -> RaftEvent { .snapshotInstalled(index: index) }

  public static var stoppedEvent: RaftEvent { .stopped }

  static func translate(_ error: RaftRequestError, options: RaftCoreOptions) -> ConsensusError {
    switch error {
    case .notLeader(let hint): return .notLeader(hint: hint)
    case .transferInProgress: return .transferInProgress
    case .overloaded: return .overloaded(limit: options.maxUncommittedBytes)
    case .membershipChangeRejected(let why): return .membershipChangeRejected(why)
    }
  }
}
