public import QuorumCore
public import QuorumPaxos
public import QuorumRaft
public import QuorumReplica
public import QuorumStorage

/// Where a host keeps each group's durable state.
public protocol GroupStorageProvider: Sendable {
  /// The storage for `group`, whose engine writes `Entry`s in `mode`.
  func storage<Entry: StorableEntry>(for group: GroupSpec, mode: LogWriteMode, entry: Entry.Type) throws
    -> any ConsensusStorage<Entry>

  /// The bytes every group's storage occupies now, for the space quota (``HostSettings/spaceQuotaBytes``);
  /// `nil` when the provider cannot tell (then no quota applies). May block briefly (it reads file sizes).
  func usedBytes() -> Int?

  /// The groups whose stored entries keep old log files on disk that the other groups no longer need (a log
  /// shared by several groups is deleted oldest segment first), the bytes those files hold, and how many they
  /// are. Once they are two or more (one, while the space quota is exceeded), the host asks each of the groups
  /// to snapshot and compact (``HostedGroup/releaseStoredEntries(snapshotBudgetBytes:)``).
  func groupsPinningStorage() async -> StoragePins

  /// Whether groups share a log, so that ``groupsPinningStorage()`` is worth asking.
  var sharesLog: Bool { get }

  /// Checks that the stored state of group `identity.id` was made for the group `identity` describes, before
  /// the host opens it: records the identity beside the group's storage the first time (a new group, or data
  /// kept before identities were recorded), and throws if the record describes another group (another name,
  /// number, engine, services or slots).
  func checkIdentity(_ identity: GroupIdentity) throws

  /// ``checkIdentity(_:)`` for every group of a host at once, before any group's storage opens: a provider that
  /// locks its storage checks that it can lock every group's before it reads or writes any group's record. A host
  /// calls it with all its groups before ``storage(for:mode:entry:)``.
  func checkIdentities(_ identities: [GroupIdentity]) throws
}

/// Groups whose stored entries keep old log files on disk (see ``GroupStorageProvider/groupsPinningStorage()``).
public struct StoragePins: Sendable, Equatable {
  /// The groups.
  public var groups: [GroupID]
  /// About the bytes of the old log files (those before the one being written): the most that releasing the
  /// groups' entries could free, which is each group's budget for an early snapshot.
  public var heldBytes: Int
  /// The old log files (those before the one being written).
  public var oldFiles: Int

  /// Creates the report.
  public init(groups: [GroupID], heldBytes: Int, oldFiles: Int) {
    self.groups = groups
    self.heldBytes = heldBytes
    self.oldFiles = oldFiles
  }
}

extension GroupStorageProvider {
  /// Cannot tell.
  public func usedBytes() -> Int? { nil }

  /// None: every group's log is its own.
  public func groupsPinningStorage() async -> StoragePins { StoragePins(groups: [], heldBytes: 0, oldFiles: 0) }

  /// No.
  public var sharesLog: Bool { false }

  /// Nothing to check: the provider keeps nothing across processes.
  public func checkIdentity(_ identity: GroupIdentity) throws {}

  /// ``checkIdentity(_:)`` for each, in order.
  public func checkIdentities(_ identities: [GroupIdentity]) throws {
    for identity in identities { try checkIdentity(identity) }
  }
}

/// Every group in memory: lost when the process ends (tests, demonstrations).
public struct MemoryGroupStorage: GroupStorageProvider {
  /// Creates the provider.
  public init() {}

  public func storage<Entry: StorableEntry>(for group: GroupSpec, mode: LogWriteMode, entry: Entry.Type)
    -> any ConsensusStorage<Entry>
  {
    MemoryStorage<Entry>(mode: mode)
  }
}

/// How a member's data directory lays out its groups' write-ahead logs.
public enum GroupLogLayout: String, Sendable, Equatable, CaseIterable {
  /// One write-ahead log shared by every group, in `<root>/shared-log` (``QuorumStorage/SharedWriteAheadLog``):
  /// the writes of all groups reach the disk with one `fdatasync` per turn of its writer, not one per group.
  case shared
  /// A log per group (``QuorumStorage/FileStorage``): the default group (id 0) in the data directory itself,
  /// where a one-group server kept it before shared logs existed, and every other group in a subdirectory
  /// named after it.
  case perGroup
}

/// Each group's write-ahead log and snapshots under a member's data directory, laid out as ``layout`` says.
public struct FileGroupStorage: GroupStorageProvider {
  /// The member's data directory.
  public let root: String
  /// When writes are synced.
  public let fsync: FsyncPolicy
  /// The log segment size of groups other than the default one in the ``GroupLogLayout/perGroup`` layout
  /// (smaller, so that a process hosting many groups does not preallocate tens of megabytes for each).
  public var segmentBytes: Int
  /// The layout in use.
  public let layout: GroupLogLayout
  /// The shared log, in the ``GroupLogLayout/shared`` layout.
  public let sharedLog: SharedWriteAheadLog?
  /// The layout the directory held when the provider was made (read once: listing the directory for every
  /// group would cost as much as the groups).
  private let foundOnDisk: GroupLogLayout?

  /// Creates the provider.
  ///
  /// - Parameters:
  ///   - root: The member's data directory.
  ///   - fsync: When writes are synced.
  ///   - segmentBytes: The segment size of groups other than the default one in the per-group layout.
  ///   - layout: The layout; `nil` keeps the one the directory already holds, and makes a new directory's log
  ///     ``GroupLogLayout/shared``. A layout that contradicts the directory's makes ``storage(for:mode:entry:)``
  ///     throw ``QuorumStorage/StorageError/incompatible(file:reason:)``.
  ///   - sharedSegmentBytes: The segment size of the shared log.
  public init(
    root: String, fsync: FsyncPolicy, segmentBytes: Int = 8 << 20, layout: GroupLogLayout? = nil,
    sharedSegmentBytes: Int = 64 << 20
  ) {
    self.root = root
    self.fsync = fsync
    self.segmentBytes = segmentBytes
    let found = Self.layoutOnDisk(root: root)
    foundOnDisk = found
    let resolved = layout ?? found ?? .shared
    self.layout = resolved
    sharedLog =
      resolved == .shared
      ? SharedWriteAheadLog(directory: root + "/" + Self.sharedLogName, fsync: fsync, segmentBytes: sharedSegmentBytes)
      : nil
  }

  /// The name of the shared log's directory under the data directory.
  public static let sharedLogName = "shared-log"

  /// The layout the directory `root` already holds, if it holds one: a log of a group's own in `root` or in one
  /// of its subdirectories, or a shared log's directory. A group named like the shared log's directory keeps its
  /// own log there in the per-group layout: the segments in it tell which it is.
  public static func layoutOnDisk(root: String) -> GroupLogLayout? {
    if FileSystemUsage.isDirectory(root + "/wal") { return .perGroup }
    for name in FileSystemUsage.entries(of: root)
    where name != sharedLogName && FileSystemUsage.isDirectory("\(root)/\(name)/wal") {
      return .perGroup
    }
    let shared = root + "/" + sharedLogName
    guard FileSystemUsage.isDirectory(shared) else { return nil }
    return SharedWriteAheadLog.holdsSharedLog(directory: shared) == false ? .perGroup : .shared
  }

  /// The directory of `group` in the ``GroupLogLayout/perGroup`` layout.
  public func directory(of group: GroupSpec) -> String { directory(id: group.id, name: group.name) }

  private func directory(id: GroupID, name: String) -> String { id == .default ? root : "\(root)/\(name)" }

  /// The disk space allocated to every file under ``root`` (log segments, including preallocated ones, and
  /// snapshots): what fills the disk.
  public func usedBytes() -> Int? { FileSystemUsage.allocatedBytes(under: root) }

  public func storage<Entry: StorableEntry>(for group: GroupSpec, mode: LogWriteMode, entry: Entry.Type) throws
    -> any ConsensusStorage<Entry>
  {
    try checkLayout()
    if let sharedLog {
      return sharedLog.storage(for: group.id.rawValue, mode: mode, entry: Entry.self)
    }
    return FileStorage<Entry>(
      directory: directory(of: group), mode: mode, fsync: fsync,
      segmentBytes: group.id == .default ? 64 << 20 : max(4096, segmentBytes))
  }

  /// Whether the layout is ``GroupLogLayout/shared``.
  public var sharesLog: Bool { sharedLog != nil }

  private func checkLayout() throws(StorageError) {
    if let onDisk = foundOnDisk, onDisk != layout {
      throw StorageError.incompatible(
        file: root,
        reason: "the data directory holds a \(onDisk == .shared ? "shared log" : "log per group"), but the "
          + "\(layout == .shared ? "shared" : "per-group") layout was asked for")
    }
  }

  /// The path of the file recording which group the stored state of group `id`, named `name`, was made for:
  /// `GROUP` beside the group's snapshots (in the shared log's directory of the group, deleted with the group by
  /// `quorum forget-group`; or in the group's own directory).
  public func identityPath(of id: GroupID, name: String) -> String {
    let directory =
      sharedLog?.sideFileDirectory(group: id.rawValue)
      ?? SideFile.directory(perGroup: id == .default ? root : "\(root)/\(name)")
    return directory + "/" + GroupIdentityFile.name
  }

  /// Records `identity` in the file ``identityPath(of:name:)`` names if there is none (a new group, or a
  /// directory written before identities were recorded: it adopts the group as configured now), or throws
  /// ``QuorumStorage/StorageError/incompatible(file:reason:)`` naming the group and what differs if the file
  /// records another identity. In the shared layout the group's number finds its records, so a group whose number
  /// now names another group (groups removed or reordered without explicit ids) is refused; in the per-group
  /// layout its name finds its directory, so a group whose number, engine, services or slots changed is refused.
  ///
  /// The file is read and written only under the lock the group's log takes when it opens (the shared log's
  /// directory, or the group's own; ``QuorumStorage/SideFile/withDirectoryLock(_:sync:_:)``): a second process
  /// started on a data directory a member is running in fails here with
  /// ``QuorumStorage/StorageError/directoryLocked(path:)``, before it reads the record or writes one.
  public func checkIdentity(_ identity: GroupIdentity) throws {
    try checkIdentities([identity])
  }

  /// ``checkIdentity(_:)`` for every group of a host, under the locks of all their logs at once (taken in the
  /// order of their paths): if one group's log is locked, the check fails with
  /// ``QuorumStorage/StorageError/directoryLocked(path:)`` before any group's record is read or written (the
  /// log directories locked before it, and their `LOCK` files, may have been created).
  ///
  /// The locks are released when the check ends and taken again by each group's log when it opens: a second
  /// process that checks in between (its groups' logs not open yet) can still record an identity for a group
  /// this process does not have before its own storage finds the directory locked.
  public func checkIdentities(_ identities: [GroupIdentity]) throws {
    try checkLayout()
    let sync = fsync != .never
    let logDirectories = Set(
      identities.map { sharedLog?.directory ?? self.directory(id: $0.id, name: $0.name) }
    ).sorted()
    func underLocks(_ directories: ArraySlice<String>) throws {
      guard let first = directories.first else {
        for identity in identities {
          let path = identityPath(of: identity.id, name: identity.name)
          try GroupIdentityFile.check(identity, in: String(path.dropLast(GroupIdentityFile.name.count + 1)), sync: sync)
        }
        return
      }
      try SideFile.withDirectoryLock(first, sync: sync) { try underLocks(directories.dropFirst()) }
    }
    try underLocks(logDirectories[...])
  }

  /// The groups whose entries keep the shared log's oldest segment, once it holds a segment before the active
  /// one, and the bytes of the segments before the active one.
  public func groupsPinningStorage() async -> StoragePins {
    guard let sharedLog, let sequences = try? await sharedLog.segmentSequences(), sequences.count > 1 else {
      return StoragePins(groups: [], heldBytes: 0, oldFiles: 0)
    }
    let groups = ((try? await sharedLog.pinningGroups()) ?? []).map(GroupID.init(rawValue:))
    let old = sequences.count - 1
    return StoragePins(groups: groups, heldBytes: old * sharedLog.segmentBytes, oldFiles: old)
  }
}

/// The engine settings a host applies to its groups; each group's members come from its ``GroupSpec``.
public struct HostSettings: Sendable {
  /// Raft groups' settings (timeouts, snapshots, limits).
  public var raft: RaftConfiguration
  /// Multi-Paxos groups' settings.
  public var paxos: PaxosConfiguration
  /// The space quota: once the groups' storage occupies more than this many bytes
  /// (``GroupStorageProvider/usedBytes()``), the host refuses writes with
  /// ``HostError/spaceQuotaExceeded(usedBytes:quotaBytes:)`` while reads, deletes and releases go on; the alarm
  /// clears by itself once usage falls back under the quota (after deletes, a snapshot and the compaction behind
  /// it). `nil`: no quota. By default ``defaultSpaceQuotaBytes``, as for a `Cluster` that sets none.
  public var spaceQuotaBytes: Int?
  /// How often the host measures the storage's usage while a quota is set, and, when its groups share a log,
  /// asks the groups whose entries keep the log's oldest segment on disk to release them.
  public var spaceCheckInterval: Duration
  /// How the leaders of groups carrying the `txn` service finish transactions their coordinators left in doubt.
  public var transactionResolver: TransactionResolverOptions
  /// The most watches one authenticated principal may have waiting at once on this host (of the host's 65,536):
  /// an eighth by default, so that one client cannot leave the others' lock waits refused. Raise it when every
  /// client of the cluster shares one principal (see ``NotificationHub/maxWaitsPerPrincipal``).
  public var watchesPerPrincipal: Int

  /// The space quota of settings that set none: 8 GiB, the largest etcd advises for its own (whose default is
  /// 2 GiB). Pass `spaceQuotaBytes: nil` for no quota.
  public static let defaultSpaceQuotaBytes = 8 << 30

  /// Creates settings; both engines must use the same tick interval (one timer ticks every group). The space quota
  /// is ``defaultSpaceQuotaBytes`` unless `spaceQuotaBytes` says otherwise (`nil`: none).
  public init(
    raft: RaftConfiguration = RaftConfiguration(), paxos: PaxosConfiguration = PaxosConfiguration(),
    spaceQuotaBytes: Int? = HostSettings.defaultSpaceQuotaBytes, spaceCheckInterval: Duration = .seconds(1),
    transactionResolver: TransactionResolverOptions = TransactionResolverOptions(), watchesPerPrincipal: Int = 8_192
  ) {
    self.raft = raft
    self.paxos = paxos
    self.spaceQuotaBytes = spaceQuotaBytes
    self.spaceCheckInterval = spaceCheckInterval
    self.transactionResolver = transactionResolver
    self.watchesPerPrincipal = watchesPerPrincipal
  }
}

/// Something that happened to a hosted group's replica, in the same words for every engine: what an application
/// watches to follow leadership (see ``HostedGroup/events``).
public enum GroupEvent: Sendable, Equatable {
  /// The replica learned of a different leader, or lost track of one (`nil`). `epoch` is the leader's term
  /// (Raft) or its ballot's round (Multi-Paxos), as in ``GroupStatus/epoch``.
  case leaderChanged(NodeID?, epoch: UInt64)
  /// The membership in force changed.
  case membershipChanged(Membership)
  /// The replica stopped: the last event of the stream.
  case stopped
}

/// An engine a host can run a group on: how its messages travel in ``HostMessage``, how a group's description
/// becomes its configuration, and how its status reads as a ``GroupStatus``.
public protocol HostedEngine: ReplicaEngine where Entry: StorableEntry {
  /// The engine's kind.
  static var kind: EngineKind { get }
  /// How the engine's storage treats overwrites.
  static var hostLogWriteMode: LogWriteMode { get }
  /// Wraps a message for the shared connection.
  static func wrap(_ message: Message) -> HostMessage
  /// Unwraps a message, `nil` if it is another engine's.
  static func unwrap(_ message: HostMessage) -> Message?
  /// The configuration of `group` (empty members for a member joining an existing group).
  static func configuration(for group: GroupSpec, settings: HostSettings, joining: Bool) -> Configuration
  /// `event` in engine-neutral words, or `nil` for an event with no ``GroupEvent`` counterpart.
  static func groupEvent(_ event: Event) -> GroupEvent?
  /// The status as a ``GroupStatus``.
  static func groupStatus(_ status: Status, group: GroupSpec) -> GroupStatus
  /// Whether the engine supports membership changes and leadership transfer.
  static var supportsMembershipChanges: Bool { get }
}

extension RaftEngine: HostedEngine {
  public static var kind: EngineKind { .raft }
  public static var hostLogWriteMode: LogWriteMode { .truncateSuffix }
  public static var supportsMembershipChanges: Bool { true }
  public static func wrap(_ message: RaftMessage) -> HostMessage { .raft(message) }
  public static func unwrap(_ message: HostMessage) -> RaftMessage? {
    if case .raft(let m) = message { return m }
    return nil
  }

  public static func configuration(for group: GroupSpec, settings: HostSettings, joining: Bool) -> RaftConfiguration {
    var c = settings.raft
    c.members = joining ? [] : group.members
    c.learners = []
    return c
  }

  public static func groupEvent(_ event: RaftEvent) -> GroupEvent? {
    switch event {
    case .leaderChanged(let leader, let term): return .leaderChanged(leader, epoch: term)
    case .membershipChanged(let membership): return .membershipChanged(membership)
    case .stopped: return .stopped
    case .roleChanged, .snapshotInstalled: return nil
    }
  }

  public static func groupStatus(_ s: RaftStatus, group: GroupSpec) -> GroupStatus {
    let peers = s.peers.keys.sorted().compactMap { id -> PeerLag? in
      guard let p = s.peers[id] else { return nil }
      return PeerLag(
        node: id, match: p.match, lag: s.lastIndex > p.match ? s.lastIndex - p.match : 0, isLearner: p.isLearner,
        recentlyActive: p.recentlyActive, note: p.snapshotRefusal)
    }
    return GroupStatus(
      group: group.id, name: group.name, engine: .raft, node: s.id, role: s.role.rawValue, epoch: s.term,
      leader: s.leader, commitIndex: s.commitIndex, appliedIndex: s.appliedIndex, lastIndex: s.lastIndex,
      snapshotIndex: s.snapshotIndex, voters: s.membership.allVoters.sorted(), learners: s.membership.learners.sorted(),
      peers: peers, pendingRequests: s.pendingRequests, refusedMessages: s.refusedMessages)
  }
}

extension MultiPaxosEngine: HostedEngine {
  public static var kind: EngineKind { .multiPaxos }
  public static var hostLogWriteMode: LogWriteMode { .replace }
  public static var supportsMembershipChanges: Bool { true }
  public static func wrap(_ message: PaxosMessage) -> HostMessage { .paxos(message) }
  public static func unwrap(_ message: HostMessage) -> PaxosMessage? {
    if case .paxos(let m) = message { return m }
    return nil
  }

  public static func configuration(for group: GroupSpec, settings: HostSettings, joining: Bool)
    -> PaxosConfiguration
  {
    var c = settings.paxos
    c.members = joining ? [] : group.members
    return c
  }

  public static func groupEvent(_ event: PaxosEvent) -> GroupEvent? {
    switch event {
    case .leaderChanged(let leader, let ballot): return .leaderChanged(leader, epoch: ballot.round)
    case .membershipChanged(let membership): return .membershipChanged(membership)
    case .stopped: return .stopped
    case .roleChanged, .snapshotInstalled: return nil
    }
  }

  public static func groupStatus(_ s: MultiPaxosStatus, group: GroupSpec) -> GroupStatus {
    let peers = s.peers.keys.sorted().compactMap { id -> PeerLag? in
      guard let p = s.peers[id] else { return nil }
      return PeerLag(
        node: id, match: p.chosenThrough, lag: s.lastSlot > p.chosenThrough ? s.lastSlot - p.chosenThrough : 0,
        isLearner: p.isLearner, recentlyActive: p.recentlyActive, note: p.snapshotRefusal)
    }
    return GroupStatus(
      group: group.id, name: group.name, engine: .multiPaxos, node: s.id, role: s.role.rawValue, epoch: s.ballot.round,
      leader: s.leader, commitIndex: s.chosenThrough, appliedIndex: s.appliedThrough, lastIndex: s.lastSlot,
      snapshotIndex: s.snapshotIndex, voters: s.membership.allVoters.sorted(), learners: s.membership.learners.sorted(),
      peers: peers, pendingRequests: s.pendingRequests, refusedMessages: s.refusedMessages)
  }
}

/// One group a host runs, whatever its engine: a replica of the group's log carrying its services.
public protocol HostedGroup: Sendable {
  /// The group's description.
  var spec: GroupSpec { get }
  /// Recovers and runs the replica until it stops; closes its storage before returning.
  func run() async throws
  /// Waits until the replica has recovered its storage.
  func waitUntilRecovered() async throws
  /// Stops the replica and waits for ``run()`` to return.
  func shutdown() async
  /// Applies a service command through the log on behalf of `principal` (`nil`: none authenticated); returns
  /// the answer and the position it was applied at.
  func propose(_ command: ServiceCommand, request: RequestID?, acknowledgedThrough: UInt64, principal: String?)
    async throws -> IndexedRead<ServiceAnswer>
  /// Reads from a service.
  func read(_ query: ServiceQuery, consistency: ReadConsistency, atLeast: UInt64) async throws
    -> IndexedRead<ServiceAnswer>
  /// Like ``propose(_:request:acknowledgedThrough:principal:)`` without suspending: `completion` receives the
  /// outcome on the replica's loop (it must not block).
  func propose(
    _ command: ServiceCommand, request: RequestID?, acknowledgedThrough: UInt64, principal: String?,
    completion: @escaping @Sendable (Result<IndexedRead<ServiceAnswer>, any Error>) -> Void)
  /// Like ``read(_:consistency:atLeast:)`` without suspending: `completion` receives the outcome on the replica's
  /// loop (it must not block).
  func read(
    _ query: ServiceQuery, consistency: ReadConsistency, atLeast: UInt64,
    completion: @escaping @Sendable (Result<IndexedRead<ServiceAnswer>, any Error>) -> Void)
  /// Opens an exactly-once session owned by `principal`.
  func registerSession(principal: String?) async throws -> UInt64
  /// Changes the membership.
  func changeMembership(_ change: MembershipChange) async throws
  /// Transfers leadership.
  func transferLeadership(to target: NodeID) async throws
  /// The replica's status.
  func status() async -> GroupStatus
  /// Leader and membership changes as this replica sees them, then ``GroupEvent/stopped``.
  ///
  /// Each access is a new subscription that sees every event from that moment on (any number of subscribers
  /// each see all of them); the stream finishes when the replica stops. A subscriber more than 256 events
  /// behind loses its oldest undelivered ones: the replica never waits for a subscriber.
  var events: AsyncStream<GroupEvent> { get }
  /// The applied position and the whole encoded state at it (for checking that replicas converge).
  func localState() async -> (applied: UInt64, snapshot: [UInt8])
  /// The applied position and the whole state at it as a value (for comparing replicas structurally, which also
  /// sees what a snapshot's encoding leaves out); `nil` from a group that cannot show it.
  func localMachine() async -> (applied: UInt64, machine: ReplicatedStateMachine<ServiceMachine>)?
  /// Asks the replica to snapshot (if its last snapshot was at most `snapshotBudgetBytes`) and compact its
  /// storage through the snapshot, so that its old entries stop keeping a shared log's oldest segment on disk.
  /// Does not wait.
  func releaseStoredEntries(snapshotBudgetBytes: Int)
}

extension HostedGroup {
  /// Does nothing.
  public func releaseStoredEntries(snapshotBudgetBytes: Int) {}

  /// `nil`: this group cannot show its state.
  public func localMachine() async -> (applied: UInt64, machine: ReplicatedStateMachine<ServiceMachine>)? { nil }
}

/// A hosted group on engine `Engine`.
final class EngineGroup<Engine: HostedEngine>: HostedGroup {
  let spec: GroupSpec
  let node: ReplicaNode<Engine, ServiceMachine>
  private let storage: any ConsensusStorage<Engine.Entry>
  private let logger: QuorumLogger
  /// The node's run loop and its two request entry points, as closures made here. The host calls this group
  /// through ``HostedGroup``, whose witnesses are compiled once for every engine; these closures are compiled for
  /// the engine the group was made with (the host makes each group where its engine type is known), so the node's
  /// loop runs specialised, not looking up its generic types at run time.
  private let runNode: @Sendable () async throws -> Void
  private let proposeNow: @Sendable (ServiceCommand, RequestID?, UInt64, String?, @escaping Completion) -> Void
  private let readNow: @Sendable (ServiceQuery, ReadConsistency, UInt64, @escaping Completion) -> Void

  typealias Completion = @Sendable (Result<IndexedRead<ServiceAnswer>, any Error>) -> Void

  init(
    spec: GroupSpec, node: ReplicaNode<Engine, ServiceMachine>, storage: any ConsensusStorage<Engine.Entry>,
    logger: QuorumLogger
  ) {
    self.spec = spec
    self.node = node
    self.storage = storage
    self.logger = logger
    self.runNode = { try await node.run() }
    self.proposeNow = { command, request, acknowledged, principal, completion in
      node.propose(
        command, request: request, acknowledgedThrough: acknowledged, principal: principal, completion: completion)
    }
    self.readNow = { query, consistency, atLeast, completion in
      node.read(query, consistency: consistency, atLeast: atLeast, completion: completion)
    }
  }

  func run() async throws {
    let outcome: Result<Void, any Error>
    do {
      try await runNode()
      outcome = .success(())
    } catch {
      outcome = .failure(error)
    }
    do {
      try await storage.close()
    } catch {
      logger.error("closing \(spec.name)'s storage failed: \(error)")
    }
    try outcome.get()
  }

  func waitUntilRecovered() async throws { try await node.waitUntilRecovered() }

  func shutdown() async { await node.shutdown() }

  func releaseStoredEntries(snapshotBudgetBytes: Int) {
    node.releaseStoredEntries(snapshotBudgetBytes: snapshotBudgetBytes)
  }

  func propose(_ command: ServiceCommand, request: RequestID?, acknowledgedThrough: UInt64, principal: String?)
    async throws -> IndexedRead<ServiceAnswer>
  {
    try await node.propose(command, request: request, acknowledgedThrough: acknowledgedThrough, principal: principal)
  }

  func read(_ query: ServiceQuery, consistency: ReadConsistency, atLeast: UInt64) async throws
    -> IndexedRead<ServiceAnswer>
  {
    try await node.read(query, consistency: consistency, atLeast: atLeast)
  }

  func propose(
    _ command: ServiceCommand, request: RequestID?, acknowledgedThrough: UInt64, principal: String?,
    completion: @escaping @Sendable (Result<IndexedRead<ServiceAnswer>, any Error>) -> Void
  ) {
    proposeNow(command, request, acknowledgedThrough, principal, completion)
  }

  func read(
    _ query: ServiceQuery, consistency: ReadConsistency, atLeast: UInt64,
    completion: @escaping @Sendable (Result<IndexedRead<ServiceAnswer>, any Error>) -> Void
  ) {
    readNow(query, consistency, atLeast, completion)
  }

  func registerSession(principal: String?) async throws -> UInt64 {
    try await node.registerSession(principal: principal)
  }

  func changeMembership(_ change: MembershipChange) async throws { try await node.changeMembership(change) }

  func transferLeadership(to target: NodeID) async throws { try await node.transferLeadership(to: target) }

  func localState() async -> (applied: UInt64, snapshot: [UInt8]) { await node.localState() }

  func localMachine() async -> (applied: UInt64, machine: ReplicatedStateMachine<ServiceMachine>)? {
    await node.localMachine()
  }

  var events: AsyncStream<GroupEvent> { node.events(Engine.groupEvent) }

  func status() async -> GroupStatus {
    guard let status = await node.currentStatus else {
      return GroupStatus(
        group: spec.id, name: spec.name, engine: Engine.kind, node: node.id, role: "recovering", epoch: 0,
        leader: nil, commitIndex: 0, appliedIndex: 0, lastIndex: 0, snapshotIndex: 0, voters: spec.members,
        learners: [], peers: [], pendingRequests: 0)
    }
    return Engine.groupStatus(status, group: spec)
  }
}
