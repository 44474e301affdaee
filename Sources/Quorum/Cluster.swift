import Dispatch
import Synchronization

/// Why a ``Cluster`` description was refused: which line, and what is wrong with it.
public struct ClusterConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The setting at fault, as written in the DSL (for example `Member("n0")`).
  public var setting: String
  /// What is wrong.
  public var reason: String

  /// Creates an error.
  public init(setting: String, reason: String) {
    self.setting = setting
    self.reason = reason
  }

  public var description: String { "\(setting): \(reason)" }
}

/// One member of a ``Cluster``: its id and, for a TCP cluster, where it listens.
public struct ClusterMember: Sendable, Equatable {
  /// The member's node id.
  public var id: NodeID
  /// Its address (`nil` for an in-process member).
  public var address: TCPAddress?

  /// Creates a member.
  public init(id: NodeID, address: TCPAddress?) {
    self.id = id
    self.address = address
  }
}

/// Where members keep their durable state.
public enum ClusterStorage: Sendable, Equatable {
  /// In memory: lost when the process ends. For tests and demonstrations.
  case memory
  /// Write-ahead logs and snapshots under `path/<member>` (``QuorumStorage/FileStorage``).
  case directory(String, fsync: FsyncPolicy)
}

/// How the members of a TCP cluster authenticate each other and their clients (see
/// ``QuorumTCP/TCPSecurity``). The files are read when a member starts.
public enum ClusterSecurity: Sendable, Equatable {
  /// No authentication: anyone who reaches a member's port and knows the cluster id can join or act as an
  /// admin client. Must be asked for by name; a member logs a warning when it starts.
  case insecure
  /// Members prove the secret in `clusterSecretFile` to each other; clients prove a secret from
  /// `credentialsFile` (no credentials file: no client is admitted). Both files must be private to their owner.
  case authenticated(clusterSecretFile: String, credentialsFile: String?)
}

/// A Quorum cluster described as a validated value: its id, its members (in-process or at TCP addresses),
/// storage, its consensus groups (each with its members, engine, services and key slots), engine settings and
/// transport limits. The result-builder DSL is sugar over it:
///
/// ```swift
/// let cluster = try Cluster(id: "orders") {
///   Member("n1", at: "127.0.0.1:7001")
///   Member("n2", at: "127.0.0.1:7002")
///   Member("n3", at: "127.0.0.1:7003")
///   DataDirectory("/var/lib/orders", fsync: .always)
///   Security(clusterSecretFile: "/etc/orders/secret", credentialsFile: "/etc/orders/credentials")
///   Group("accounts", engine: .raft) { KeyValue(); Locks(); Transactions() }
///   Group("audit", engine: .multiPaxos, members: ["n1", "n2", "n3"]) { KeyValue() }
/// }
/// let server = try await cluster.start("n1")   // this process runs member n1 over TCP
/// try await server.run()                       // until server.shutdown()
/// ```
///
/// A cluster with no `Group` line has one Raft group — the default group, id 0, on every member — carrying the
/// key-value store, the lock table and the transactional store. Members without addresses make an in-process cluster, run whole with
/// ``withLocalMembers(_:)``. Validation runs when the DSL finishes and names the offending line: an unparsable
/// or duplicated member, a bad address, a mix of in-process and TCP members, a group naming an unknown member
/// or service, slots that overlap or leave a gap, invalid engine settings.
public struct Cluster: Sendable {
  /// The cluster id every connection is checked against.
  public var id: ClusterID
  /// The members, ordered by id.
  public var members: [ClusterMember]
  /// Where members keep durable state.
  public var storage: ClusterStorage
  /// How a member's data directory lays out its groups' logs (`nil`: as the directory already does; a shared
  /// log for a new one). See ``QuorumHost/GroupLogLayout``.
  public var logLayout: GroupLogLayout?
  /// Raft groups' settings (members come from each group).
  public var raft: RaftConfiguration
  /// Multi-Paxos groups' settings (members come from each group).
  public var paxos: PaxosConfiguration
  /// The groups (empty: one default Raft group on every member, carrying `kv`, `locks` and `txn`).
  public var groups: [GroupSpec]
  /// The services members can run.
  public var catalog: ServiceCatalog
  /// TCP limits and timeouts.
  public var tcp: TCPTransportOptions
  /// How TCP members authenticate (`nil`: not said, which a TCP member refuses to start with).
  public var security: ClusterSecurity?
  /// Each member's space quota in bytes (see ``QuorumHost/HostSettings/spaceQuotaBytes``); `nil`: none. By
  /// default ``SpaceQuota/defaultBytes``, as etcd has one by default; ``SpaceQuota/unlimited`` turns it off.
  public var spaceQuotaBytes: Int?
  /// Where members log.
  public var logSink: any LogSink
  /// How group leaders finish transactions their coordinators (clients) left in doubt.
  public var transactionResolver: TransactionResolverOptions

  /// Builds a cluster from DSL lines and validates it.
  public init(id: ClusterID, @ClusterBuilder _ settings: () -> [any ClusterSetting])
    throws(ClusterConfigurationError)
  {
    self.id = id
    self.members = []
    self.storage = .memory
    self.logLayout = nil
    self.raft = RaftConfiguration()
    self.paxos = PaxosConfiguration()
    self.groups = []
    self.catalog = .standard
    self.tcp = TCPTransportOptions()
    self.security = nil
    self.spaceQuotaBytes = SpaceQuota.defaultBytes
    self.logSink = StderrLogSink(minimumLevel: .warning)
    self.transactionResolver = TransactionResolverOptions()
    var errors: [ClusterConfigurationError] = []
    for setting in settings() {
      do throws(ClusterConfigurationError) {
        try setting.apply(to: &self)
      } catch {
        errors.append(error)
      }
    }
    if let first = errors.first { throw first }
    try validate()
  }

  /// The services of the default group of a cluster described without `Group` lines (and of a cluster file's
  /// groups that name none): the key-value store, the lock table and the transactional store.
  public static let defaultServices = [KeyValueService.name, LockService.name, TxnShardService.name]

  /// Checks the whole description.
  public func validate() throws(ClusterConfigurationError) {
    guard !id.rawValue.isEmpty else { throw ClusterConfigurationError(setting: "Cluster(id:)", reason: "empty id") }
    guard !members.isEmpty else { throw ClusterConfigurationError(setting: "Member", reason: "no members") }
    var seen = Set<NodeID>()
    var addresses = Set<TCPAddress>()
    for member in members {
      let line = "Member(\"\(member.id)\"\(member.address.map { ", at: \"\($0)\"" } ?? ""))"
      guard seen.insert(member.id).inserted else {
        throw ClusterConfigurationError(setting: line, reason: "\(member.id) is listed twice")
      }
      if let address = member.address, address.port != 0, !addresses.insert(address).inserted {
        throw ClusterConfigurationError(setting: line, reason: "\(address) is used by another member")
      }
    }
    let withAddress = members.filter { $0.address != nil }.count
    guard withAddress == 0 || withAddress == members.count else {
      throw ClusterConfigurationError(
        setting: "Member", reason: "either every member has an address (TCP) or none does (in-process)")
    }
    do {
      try raft.validate()
    } catch {
      throw ClusterConfigurationError(setting: "RaftSettings { \(error.setting) }", reason: error.reason)
    }
    do {
      try tcp.validate()
    } catch {
      throw ClusterConfigurationError(setting: "TCPSettings { \(error.setting) }", reason: error.reason)
    }
    do {
      try transactionResolver.validate()
    } catch {
      throw ClusterConfigurationError(setting: error.setting, reason: error.reason)
    }
    let engines = Set(map.groups.map(\.engine))
    guard engines.count < 2 || raft.tickInterval == paxos.tickInterval else {
      throw ClusterConfigurationError(
        setting: "PaxosSettings { TickInterval }",
        reason: "every group shares one timer: Raft ticks every \(raft.tickInterval), Multi-Paxos \(paxos.tickInterval)"
      )
    }
    do {
      try map.validate(knownServices: catalog.names)
    } catch {
      let line = groups.first { "group \($0.name)" == error.subject }.map { "Group(\"\($0.name)\")" } ?? error.subject
      throw ClusterConfigurationError(setting: line, reason: error.reason)
    }
    for group in map.groups where group.engine == .multiPaxos {
      var configuration = paxos
      configuration.members = group.members
      do {
        try configuration.validate()
      } catch {
        throw ClusterConfigurationError(
          setting: "Group(\"\(group.name)\") with PaxosSettings { \(error.setting) }", reason: error.reason)
      }
    }
  }

  /// Whether the members run in one process on the in-process transport.
  public var isInProcess: Bool { members.allSatisfy { $0.address == nil } }

  /// Member addresses by id (empty for an in-process cluster).
  public var addressBook: [NodeID: TCPAddress] {
    var book: [NodeID: TCPAddress] = [:]
    for member in members { book[member.id] = member.address }
    return book
  }

  /// The cluster map: members, their addresses, and the groups (the default group if none is described).
  public var map: ClusterMap {
    var addresses: [NodeID: String] = [:]
    for member in members { addresses[member.id] = member.address?.description ?? "" }
    let described =
      groups.isEmpty
      ? [
        GroupSpec(
          id: .default, name: "default", engine: .raft, members: members.map(\.id), services: Self.defaultServices)
      ] : groups
    return ClusterMap(cluster: id, members: addresses, groups: described)
  }

  /// The engine settings every group of this cluster uses.
  public var hostSettings: HostSettings {
    HostSettings(raft: raft, paxos: paxos, spaceQuotaBytes: spaceQuotaBytes, transactionResolver: transactionResolver)
  }

  func storageProvider(for member: NodeID, override directory: String? = nil) -> any GroupStorageProvider {
    if let directory { return FileGroupStorage(root: directory, fsync: fsyncPolicy, layout: logLayout) }
    switch storage {
    case .memory: return MemoryGroupStorage()
    case .directory(let path, let fsync):
      return FileGroupStorage(root: "\(path)/\(member)", fsync: fsync, layout: logLayout)
    }
  }

  private var fsyncPolicy: FsyncPolicy {
    if case .directory(_, let fsync) = storage { return fsync }
    return .always
  }

  // MARK: Running

  /// Prepares member `member` of this TCP cluster to run in this process: its groups (from the cluster map, in
  /// `dataDirectory` if given) and its transport. ``ClusterMemberServer/run()`` then recovers every group and
  /// only then listens on the member's address (or `listen`).
  /// - Parameters:
  ///   - member: the member this process runs.
  ///   - listen: where to listen, if not the member's address (port 0 picks a free port). A member listening on
  ///     every interface (`0.0.0.0:7001`) still tells clients its address in the cluster.
  ///   - dataDirectory: the member's data directory, if not the cluster's `DataDirectory/<member>`.
  ///   - joining: names of groups this member joins as a new member (it starts empty in them and waits to be
  ///     added with `quorum members add`), rather than founds.
  /// - Throws: ``ClusterConfigurationError`` for an unknown member, an unknown group, an in-process cluster, no
  ///   `Security` line, or a secret file that cannot be used (unreadable, readable by others, too short).
  public func start(
    _ member: NodeID, listen: TCPAddress? = nil, dataDirectory: String? = nil, joining: Set<String> = []
  ) async throws -> ClusterMemberServer {
    guard members.contains(where: { $0.id == member }) else {
      throw ClusterConfigurationError(setting: "start(\(member))", reason: "\(member) is not a member")
    }
    guard !isInProcess else {
      throw ClusterConfigurationError(setting: "start(\(member))", reason: "the members have no TCP addresses")
    }
    let map = self.map
    var joiningGroups: Set<GroupID> = []
    for name in joining {
      guard let group = map.groups.first(where: { $0.name == name }) else {
        throw ClusterConfigurationError(setting: "start(\(member), joining: \(name))", reason: "no group named \(name)")
      }
      joiningGroups.insert(group.id)
    }
    var book = addressBook
    if let listen { book[member] = listen }
    // What clients are told: a member listening on every interface (0.0.0.0) is reached at the cluster's address
    // for it (with the port it bound, if that address leaves the port open), not at its listening address.
    let configured = addressBook[member].flatMap { $0.isUnspecified ? nil : $0 }
    let advertise: @Sendable (NodeID, TCPAddress) -> String = { node, address in
      guard node == member, address.isUnspecified, let configured else { return address.description }
      return (configured.port == 0 ? configured.withPort(address.port) : configured).description
    }
    var options = tcp
    options.serveClients = true
    // Members whose group tables or session policies differ refuse each other at the handshake: a peer message
    // names its group by number alone, and replicas must apply its log alike.
    options.groupTableDigest = map.replicationDigest(raftSessions: raft.sessions, paxosSessions: paxos.sessions)
    if options.liveness == .default && options.reconnect.maxBackoff == ReconnectPolicy().maxBackoff {
      // Links ping every heartbeat and redial at most a heartbeat after a failure: a member rejoins about one
      // heartbeat plus one connect after a partition heals.
      options.liveness = .heartbeat(raft.heartbeatInterval)
      options.reconnect.maxBackoff = max(options.reconnect.initialBackoff, raft.heartbeatInterval)
    }
    let logger = QuorumLogger(label: "quorum", sink: logSink)
    let transport = TCPTransport<HostMessage>(
      cluster: id, protocolNumber: WireProtocol.host, addresses: book, options: options,
      security: try transportSecurity(), logger: logger.child("tcp"))
    let (catalog, settings, storage) = (catalog, servedSettings, storageProvider(for: member, override: dataDirectory))
    let maxReplyBytes = options.maxFrameBytes - Self.replyFramingBytes
    let joining = joiningGroups
    let host = try await offCooperativePool {
      try GroupHost(
        node: member, map: map, catalog: catalog, settings: settings, storage: storage, joining: joining,
        logger: logger, addressOf: { node in transport.address(of: node).map { advertise(node, $0) } },
        addressBook: {
          var book: [NodeID: String] = [:]
          for (node, address) in transport.addresses { book[node] = advertise(node, address) }
          return book
        },
        maxReplyBytes: maxReplyBytes)
    }
    return ClusterMemberServer(id: member, host: host, transport: transport, logger: logger)
  }

  /// The settings of a member served over TCP: ``hostSettings``, with the idle heartbeat factor the cluster
  /// leaves open (`nil`) set to the engines' `detectedIdleHeartbeatFactor`, since TCP links tell the groups when
  /// a peer's process is lost and idle leaders may then heartbeat less often. A factor the cluster sets is kept.
  var servedSettings: HostSettings {
    var settings = hostSettings
    settings.raft.idleHeartbeatFactor = raft.idleHeartbeatFactor ?? RaftConfiguration.detectedIdleHeartbeatFactor
    settings.paxos.idleHeartbeatFactor = paxos.idleHeartbeatFactor ?? PaxosConfiguration.detectedIdleHeartbeatFactor
    return settings
  }

  /// Room left in a frame for the envelope around a reply (its header, the request id, the length).
  static let replyFramingBytes = 256

  /// The transport's security, with its files read and checked.
  func transportSecurity() throws(ClusterConfigurationError) -> TCPSecurity {
    switch security {
    case nil:
      throw ClusterConfigurationError(
        setting: "Security",
        reason: "a TCP cluster needs Security(clusterSecretFile:credentialsFile:), or Security.insecure to run "
          + "without authentication")
    case .insecure:
      return .insecure
    case .authenticated(let secretFile, let credentialsFile):
      do {
        return try .authenticated(clusterSecretFile: secretFile, credentialsFile: credentialsFile)
      } catch {
        throw ClusterConfigurationError(
          setting: Security(clusterSecretFile: secretFile, credentialsFile: credentialsFile).line, reason: "\(error)")
      }
    }
  }

  /// Starts every member in this process, runs `body` with them, then stops them.
  ///
  /// In-process members talk over an ``QuorumCore/InProcessTransport``; members with addresses use TCP (on those
  /// addresses), which is how to try a TCP cluster on one machine.
  public func withLocalMembers<T: Sendable>(_ body: @Sendable (LocalMembers) async throws -> T) async throws -> T {
    if isInProcess {
      let transport = InProcessTransport<HostMessage>()
      let logger = QuorumLogger(label: "quorum", sink: logSink)
      var hosts: [NodeID: GroupHost] = [:]
      for member in members {
        let (map, catalog, settings, storage) = (map, catalog, hostSettings, storageProvider(for: member.id))
        hosts[member.id] = try await offCooperativePool {
          try GroupHost(
            node: member.id, map: map, catalog: catalog, settings: settings, storage: storage, logger: logger)
        }
      }
      let running = hosts
      let endpoints = try members.map { ($0.id, try transport.bind($0.id)) }
      var byID: [NodeID: InProcessEndpoint<HostMessage>] = [:]
      for (id, endpoint) in endpoints { byID[id] = endpoint }
      let bound = byID
      let local = LocalMembers(hosts: running, addresses: [:], map: map)
      return try await runAll(
        running.keys.sorted().compactMap { id in
          guard let host = running[id], let endpoint = bound[id] else { return nil }
          return { try await host.run(attach: { endpoint }) }
        },
        stop: { for host in running.values { await host.shutdown() } },
        ready: { for host in running.values { await host.waitUntilServing() } },
        body: { try await body(local) })
    }
    var servers: [ClusterMemberServer] = []
    for member in members { servers.append(try await start(member.id)) }
    let all = servers
    return try await runAll(
      all.map { server in { try await server.run() } },
      stop: { for server in all { await server.shutdown() } },
      ready: {
        // Members listening on port 0 learned their real ports only now: tell every member.
        for server in all { _ = try? await server.waitUntilListening() }
        for server in all {
          for other in all { if let address = other.address { server.transport.setAddress(address, for: other.id) } }
        }
      },
      body: {
        var hosts: [NodeID: GroupHost] = [:]
        var addresses: [NodeID: TCPAddress] = [:]
        for server in all {
          hosts[server.id] = server.host
          addresses[server.id] = server.address
        }
        return try await body(LocalMembers(hosts: hosts, addresses: addresses, map: map))
      })
  }

  private func runAll<T: Sendable>(
    _ runs: [@Sendable () async throws -> Void], stop: @Sendable () async -> Void,
    ready: @Sendable () async -> Void, body: @Sendable () async throws -> T
  ) async throws -> T {
    let result: Result<T, any Error> = await withTaskGroup(of: Void.self) { group in
      for run in runs { group.addTask { try? await run() } }
      await ready()
      let outcome: Result<T, any Error>
      do { outcome = .success(try await body()) } catch { outcome = .failure(error) }
      await stop()
      await group.waitForAll()
      return outcome
    }
    return try result.get()
  }
}

/// The members of a cluster running in this process, handed to ``Cluster/withLocalMembers(_:)``'s body.
///
/// ```swift
/// try await cluster.withLocalMembers { members in
///   let leader = try await members.leader(timeout: .seconds(5))  // the first group has a leader that committed
///   let kv = members.kvClient()                                    // in-process, or over TCP to the addresses
///   try await kv.put("greeting", "hello")
///   let status = await members.hosts[leader]?.group(.default)?.status()
/// }
/// ```
///
/// - ``hosts``: each member's ``QuorumHost/GroupHost``, by node id (`members.hosts["n1"]`), to look at a group's
///   replica (`host.group(id)`: its status and ``QuorumReplica/ReplicaNode/events``) or shut one member down.
/// - ``leader(of:timeout:)``: waits until a group (the first by default) has a leader that committed an entry of
///   its term, and returns it. Clients do not need it (they find the leader themselves), but a test that wants a
///   settled cluster first, or wants to stop the leader, does.
/// - ``kvClient(options:seed:)`` and ``client(options:seed:)``: clients of these members, with the same API as a
///   ``TCPClient``'s (an in-process cluster's clients hand each request to the member's handler, as a network
///   would).
/// - ``addresses`` and ``map``: where each TCP member listens (port 0 resolved), and the cluster map.
///
/// The members stop when the body returns or throws: do not keep the clients or hosts beyond it.
public struct LocalMembers: Sendable {
  /// Each member's host (its groups, its request handler).
  public let hosts: [NodeID: GroupHost]
  /// Where each member listens (empty for an in-process cluster).
  public let addresses: [NodeID: TCPAddress]
  /// The cluster map.
  public let map: ClusterMap

  /// Waits (at most `timeout`) for a member that leads `group` and has committed its whole log (for Raft, that
  /// includes the entry of its term; a new Multi-Paxos leader of an empty log has nothing to commit), and
  /// returns it.
  /// - Throws: ``QuorumCore/ConsensusError/timeout`` if none does in time.
  public func leader(of group: GroupID? = nil, timeout: Duration = .seconds(10)) async throws -> NodeID {
    let target = group ?? map.groups.first?.id ?? .default
    let deadline = ContinuousClock.now.advanced(by: timeout)
    while ContinuousClock.now < deadline {
      for id in hosts.keys.sorted() {
        guard let replica = hosts[id]?.group(target) else { continue }
        let status = await replica.status()
        if status.isLeader && status.commitIndex >= status.lastIndex { return id }
      }
      try await Task.sleep(for: .milliseconds(5))
    }
    throw ConsensusError.timeout
  }

  /// A client of these members (in process, each request handed to the member's handler, as over a network).
  public func client(options: HostClientOptions = HostClientOptions(), seed: UInt64 = 1) -> HostClient {
    HostClient(
      channel: InProcessRequestChannel(hosts: hosts), members: hosts.keys.sorted(), map: map, options: options,
      seed: seed)
  }

  /// A key-value client of these members.
  public func kvClient(options: HostClientOptions = HostClientOptions(), seed: UInt64 = 1) -> KeyValueClient {
    KeyValueClient(client(options: options, seed: seed))
  }

  /// A lock client of these members, with `lockOptions` for its leases.
  public func lockClient(
    lockOptions: LockClientOptions = LockClientOptions(), options: HostClientOptions = HostClientOptions(),
    seed: UInt64 = 1
  ) -> LockClient {
    LockClient(client(options: options, seed: seed), options: lockOptions)
  }

  /// Serializable transactions over these members' `txn` service, this client acting as their coordinator.
  ///
  /// ```swift
  /// let db = members.transactions()
  /// try await db.transaction { tx in
  ///   let a = try await tx.get("a")
  ///   tx.put("b", a ?? [])
  /// }
  /// ```
  ///
  /// Keys of the `txn` service are their own key space: the key-value store (`kv`) does not see them.
  /// - Parameters:
  ///   - coordinator: this client's coordinator identity, distinct from other clients' (`nil`: a random one;
  ///     see ``QuorumTransactions/ShardedTransactions/init(client:coordinator:seed:)`` on why long-lived
  ///     applications should pass a stable one).
  ///   - options: deadlines and back-off of the client underneath.
  ///   - seed: seeds the choice of members and the back-off jitter.
  public func transactions(
    coordinator: NodeID? = nil, options: HostClientOptions = HostClientOptions(), seed: UInt64 = 1
  ) -> ShardedTransactions {
    ShardedTransactions(
      client: client(options: options, seed: seed), coordinator: coordinator ?? .randomCoordinator(), seed: seed)
  }
}

extension NodeID {
  /// A random coordinator identity for a transactions client, far from any member's id.
  static func randomCoordinator() -> NodeID {
    NodeID(rawValue: 1 << 40 | UInt64.random(in: 0..<(1 << 39)))
  }
}

/// One member of a TCP cluster running in this process: its groups, its client service and its transport.
/// Made by ``Cluster/start(_:listen:dataDirectory:joining:)``.
public final class ClusterMemberServer: Sendable {
  /// The member.
  public let id: NodeID
  /// Its groups and request handler.
  public let host: GroupHost
  /// Its transport (address book, metrics).
  public let transport: TCPTransport<HostMessage>
  private let logger: QuorumLogger
  private let listening = OnceSignal()
  private let endpoint = Mutex<TCPEndpoint<HostMessage>?>(nil)

  init(id: NodeID, host: GroupHost, transport: TCPTransport<HostMessage>, logger: QuorumLogger) {
    self.id = id
    self.host = host
    self.transport = transport
    self.logger = logger
  }

  /// The address it listens on (with the real port when bound to port 0), once it listens.
  public var address: TCPAddress? { endpoint.withLock { $0?.address } }

  /// Waits until the member recovered its groups and listens; returns the address.
  /// - Throws: ``QuorumCore/ConsensusError/stopped`` if it stopped first.
  public func waitUntilListening() async throws -> TCPAddress {
    if await listening.wait() { throw ConsensusError.stopped }
    guard let address else { throw ConsensusError.stopped }
    return address
  }

  /// Runs the member until ``shutdown()`` (or until a group fails): recovers every group's storage, then
  /// listens (peers and clients) and serves. On the way out, requests already taken are answered, the sockets
  /// are closed, and storage is synced and closed.
  public func run() async throws {
    let host = self.host
    let transport = self.transport
    let id = self.id
    let listening = self.listening
    let logger = self.logger
    // The groups' tasks run on the transport's network thread (unless the options say otherwise, or the loop
    // cannot start — then the bind below fails and says why); the executor lives until they have all finished.
    let loopExecutor = transport.options.groupsOnNetworkThread ? try? transport.makeLoopExecutor() : nil
    defer { withExtendedLifetime(loopExecutor) {} }
    let outcome: Result<Void, any Error> = await withTaskExecutorPreference(loopExecutor) {
      await withTaskGroup(of: Void.self) { tasks in
        tasks.addTask {
          guard await !listening.wait(), let requests = self.endpoint.withLock({ $0?.requests }) else { return }
          await Self.serve(requests, host: host, logger: logger)
        }
        let outcome: Result<Void, any Error>
        do {
          try await host.run(attach: {
            let bound = try await transport.bind(id)
            // Commands and queries go from the network thread straight to their group's replica, whose loop
            // sends the reply: no task per request. The rest waits in `requests` for `serve`.
            bound.handleRequestsDirectly { request in
              host.handleWithoutSuspending(
                bytes: request.body, principal: request.principal, role: request.role, respond: request.respond)
            }
            self.endpoint.withLock { $0 = bound }
            listening.finish()
            return bound
          })
          outcome = .success(())
        } catch {
          outcome = .failure(error)
        }
        listening.finish(failed: true)
        endpoint.withLock { $0 }?.requests.close()  // The service answers what it took, then returns.
        await tasks.waitForAll()
        return outcome
      }
    }
    await endpoint.withLock { $0 }?.close()
    await transport.shutdown()
    try outcome.get()
  }

  /// Answers requests until the mailbox closes; each request runs in its own child task, so a slow write never
  /// holds up a read.
  static func serve(_ requests: Mailbox<TCPRequest>, host: GroupHost, logger: QuorumLogger) async {
    await withDiscardingTaskGroup { group in
      var batch: [TCPRequest] = []
      while await requests.receive(into: &batch, limit: 256) {
        for request in batch {
          group.addTask {
            request.respond(await host.handle(bytes: request.body, principal: request.principal, role: request.role))
          }
        }
        batch.removeAll(keepingCapacity: true)
      }
    }
  }

  /// Begins a graceful shutdown: stop accepting connections, let every group finish the write in progress and
  /// stop; ``run()`` then answers what is in flight, syncs and closes storage, and returns.
  public func shutdown() async {
    await endpoint.withLock { $0 }?.stopAccepting()
    await host.shutdown()
  }
}

// MARK: - DSL

/// One line of the ``Cluster`` DSL.
public protocol ClusterSetting: Sendable {
  /// Writes the setting into a cluster description.
  func apply(to cluster: inout Cluster) throws(ClusterConfigurationError)
}

/// Collects ``ClusterSetting`` lines into a list.
@resultBuilder
public enum ClusterBuilder {
  public static func buildExpression(_ setting: any ClusterSetting) -> [any ClusterSetting] { [setting] }
  public static func buildBlock(_ parts: [any ClusterSetting]...) -> [any ClusterSetting] { parts.flatMap { $0 } }
  public static func buildOptional(_ part: [any ClusterSetting]?) -> [any ClusterSetting] { part ?? [] }
  public static func buildEither(first: [any ClusterSetting]) -> [any ClusterSetting] { first }
  public static func buildEither(second: [any ClusterSetting]) -> [any ClusterSetting] { second }
  public static func buildArray(_ parts: [[any ClusterSetting]]) -> [any ClusterSetting] { parts.flatMap { $0 } }
}

/// A member: `Member("n1", at: "127.0.0.1:7001")`, or `Member("n1")` for an in-process cluster.
public struct Member: ClusterSetting {
  private let name: String
  private let address: String?

  /// A member by name (`n1` or `1`) and, for TCP, its `host:port`.
  public init(_ name: String, at address: String? = nil) {
    self.name = name
    self.address = address
  }

  /// A member by node id and, for TCP, its `host:port`.
  public init(_ id: NodeID, at address: String? = nil) {
    self.init(id.description, at: address)
  }

  public func apply(to cluster: inout Cluster) throws(ClusterConfigurationError) {
    let line = "Member(\"\(name)\"\(address.map { ", at: \"\($0)\"" } ?? ""))"
    guard let id = NodeID(name) else {
      throw ClusterConfigurationError(setting: line, reason: "'\(name)' is not a node id (n1, n2, … or 1, 2, …)")
    }
    var parsed: TCPAddress?
    if let address {
      do {
        parsed = try TCPAddress.parse(address)
      } catch {
        throw ClusterConfigurationError(setting: line, reason: "\(error)")
      }
    }
    cluster.members.append(ClusterMember(id: id, address: parsed))
    cluster.members.sort { $0.id < $1.id }
    cluster.raft.members = cluster.members.map(\.id)
  }
}

/// Durable storage in a directory (one subdirectory per member).
public struct DataDirectory: ClusterSetting {
  private let path: String
  private let fsync: FsyncPolicy
  private let layout: GroupLogLayout?

  /// Keeps each member's logs and snapshots under `path/<member>`.
  ///
  /// - Parameters:
  ///   - path: The directory holding every member's subdirectory.
  ///   - fsync: When writes are synced.
  ///   - layout: One log shared by the member's groups, or one per group; `nil` (the default) keeps the layout a
  ///     directory already has and gives a new one a shared log (``QuorumHost/GroupLogLayout``).
  public init(_ path: String, fsync: FsyncPolicy = .always, layout: GroupLogLayout? = nil) {
    self.path = path
    self.fsync = fsync
    self.layout = layout
  }

  public func apply(to cluster: inout Cluster) throws(ClusterConfigurationError) {
    guard !path.isEmpty else { throw ClusterConfigurationError(setting: "DataDirectory", reason: "empty path") }
    cluster.storage = .directory(path, fsync: fsync)
    cluster.logLayout = layout
  }
}

/// Storage in memory (the default): lost when the process ends.
public struct InMemoryStorage: ClusterSetting {
  /// Creates the setting.
  public init() {}
  public func apply(to cluster: inout Cluster) throws(ClusterConfigurationError) { cluster.storage = .memory }
}

/// Raft settings, in the ``QuorumRaft/RaftConfiguration`` DSL (members come from the `Member` lines).
public struct RaftSettings: ClusterSetting {
  private let settings: [any RaftSetting]

  /// Collects Raft settings.
  public init(@RaftConfigurationBuilder _ settings: () -> [any RaftSetting]) {
    self.settings = settings()
  }

  public func apply(to cluster: inout Cluster) throws(ClusterConfigurationError) {
    let members = cluster.raft.members
    for setting in settings { setting.apply(to: &cluster.raft) }
    cluster.raft.members = members
  }
}

/// TCP limits and timeouts for a TCP cluster.
public struct TCPSettings: ClusterSetting {
  private let options: TCPTransportOptions

  /// Uses `options` for every member's transport.
  public init(_ options: TCPTransportOptions) { self.options = options }

  public func apply(to cluster: inout Cluster) throws(ClusterConfigurationError) { cluster.tcp = options }
}

/// How TCP members authenticate: `Security(clusterSecretFile: "secret", credentialsFile: "credentials")`, or
/// `Security.insecure` to run without authentication (a member then logs a warning when it starts).
///
/// A TCP cluster must have one of the two. The files are read when a member starts; each must be private to
/// its owner (mode `0600` or `0400`). See ``QuorumTCP/TCPSecret/load(file:)`` and
/// ``QuorumTCP/TCPCredentials`` for their contents.
public struct Security: ClusterSetting {
  private let security: ClusterSecurity

  /// Members prove the secret in `clusterSecretFile`; clients the secrets listed in `credentialsFile`.
  public init(clusterSecretFile: String, credentialsFile: String? = nil) {
    security = .authenticated(clusterSecretFile: clusterSecretFile, credentialsFile: credentialsFile)
  }

  private init(_ security: ClusterSecurity) { self.security = security }

  /// No authentication.
  public static let insecure = Security(.insecure)

  /// The line as written in the DSL, for errors.
  var line: String {
    switch security {
    case .insecure: return "Security.insecure"
    case .authenticated(let secret, let credentials):
      return "Security(clusterSecretFile: \"\(secret)\"\(credentials.map { ", credentialsFile: \"\($0)\"" } ?? ""))"
    }
  }

  public func apply(to cluster: inout Cluster) throws(ClusterConfigurationError) {
    if case .authenticated(let secret, let credentials) = security, secret.isEmpty || credentials?.isEmpty == true {
      throw ClusterConfigurationError(setting: line, reason: "empty path")
    }
    cluster.security = security
  }
}

/// A space quota for each member, as etcd has: `SpaceQuota(bytes: 2 << 30)`. Past it a member refuses writes
/// with ``QuorumHost/HostError/spaceQuotaExceeded(usedBytes:quotaBytes:)`` while reads, deletes and lock releases
/// go on; the alarm clears by itself once the member's storage is back under the quota (after deletes, the next
/// snapshot and the compaction behind it). Usage is the disk allocated under the member's data directory,
/// preallocated log segments included; in-memory storage has none to measure, so no quota applies to it.
///
/// A cluster without this line has a quota of ``defaultBytes`` (8 GiB), so neither a member's disk nor the state
/// its services hold in memory (which its snapshots, counted in the usage, measure) grows without bound unless
/// asked to: ``unlimited`` turns the quota off.
public struct SpaceQuota: ClusterSetting {
  private let bytes: Int?

  /// The quota of a cluster that sets none (``QuorumHost/HostSettings/defaultSpaceQuotaBytes``, as for host
  /// settings that set none): 8 GiB, the largest etcd advises for its own (whose default is 2 GiB).
  public static let defaultBytes = HostSettings.defaultSpaceQuotaBytes

  /// A quota of `bytes` (at least 1 MiB).
  public init(bytes: Int) { self.bytes = bytes }

  private init(unlimited: Void) { self.bytes = nil }

  /// No quota: a member's storage may fill its disk, and its services' state its memory.
  public static var unlimited: SpaceQuota { SpaceQuota(unlimited: ()) }

  public func apply(to cluster: inout Cluster) throws(ClusterConfigurationError) {
    guard let bytes else {
      cluster.spaceQuotaBytes = nil
      return
    }
    guard bytes >= 1 << 20 else {
      throw ClusterConfigurationError(setting: "SpaceQuota(bytes: \(bytes))", reason: "less than 1 MiB")
    }
    cluster.spaceQuotaBytes = bytes
  }
}

/// Where members log.
public struct Logging: ClusterSetting {
  private let sink: any LogSink

  /// Sends members' logs to `sink`.
  public init(_ sink: any LogSink) { self.sink = sink }

  public func apply(to cluster: inout Cluster) throws(ClusterConfigurationError) { cluster.logSink = sink }
}

/// Multi-Paxos settings, in the ``QuorumPaxos/PaxosConfiguration`` DSL (members come from each group).
public struct PaxosSettings: ClusterSetting {
  private let settings: [any PaxosSetting]

  /// Collects Multi-Paxos settings.
  public init(@PaxosConfigurationBuilder _ settings: () -> [any PaxosSetting]) {
    self.settings = settings()
  }

  public func apply(to cluster: inout Cluster) throws(ClusterConfigurationError) {
    let members = cluster.paxos.members
    for setting in settings { setting.apply(to: &cluster.paxos) }
    cluster.paxos.members = members
  }
}

/// Groups given as values (for descriptions read from a file); see ``Group`` for the DSL line.
public struct Groups: ClusterSetting {
  private let specs: [GroupSpec]

  /// Adds `specs`.
  public init(_ specs: [GroupSpec]) { self.specs = specs }

  public func apply(to cluster: inout Cluster) throws(ClusterConfigurationError) { cluster.groups += specs }
}

/// One service a group's log carries, in a ``Group``'s body.
public protocol GroupService: Sendable {
  /// The service's name.
  var serviceName: String { get }
}

/// The key-value store (`kv`).
public struct KeyValue: GroupService {
  /// Creates the line.
  public init() {}
  public var serviceName: String { KeyValueService.name }
}

/// The lock table (`locks`).
public struct Locks: GroupService {
  /// Creates the line.
  public init() {}
  public var serviceName: String { LockService.name }
}

/// The sharded transactional key-value store (`txn`): serializable transactions across every group carrying it
/// (see ``QuorumTransactions/ShardedTransactions``).
public struct Transactions: GroupService {
  /// Creates the line.
  public init() {}
  public var serviceName: String { TxnShardService.name }
}

/// How group leaders finish transactions their coordinators left in doubt:
/// `TransactionResolver(interval: .seconds(1), minimumAge: .seconds(5))` (the defaults), or
/// `TransactionResolver.disabled`.
public struct TransactionResolver: ClusterSetting {
  private let options: TransactionResolverOptions

  /// Leaders look every `interval` for transactions prepared at least `minimumAge` ago and still undecided.
  public init(interval: Duration = .seconds(1), minimumAge: Duration = .seconds(5)) {
    options = TransactionResolverOptions(interval: interval, minimumAge: minimumAge)
  }

  private init(options: TransactionResolverOptions) { self.options = options }

  /// No resolution by the leaders: transactions in doubt wait for a client to resolve them.
  public static var disabled: TransactionResolver {
    var options = TransactionResolverOptions()
    options.enabled = false
    return TransactionResolver(options: options)
  }

  public func apply(to cluster: inout Cluster) throws(ClusterConfigurationError) {
    do {
      try options.validate()
    } catch {
      throw ClusterConfigurationError(setting: "TransactionResolver", reason: error.reason)
    }
    cluster.transactionResolver = options
  }
}

/// Collects a group's services.
@resultBuilder
public enum GroupServicesBuilder {
  public static func buildExpression(_ service: any GroupService) -> [any GroupService] { [service] }
  public static func buildBlock(_ parts: [any GroupService]...) -> [any GroupService] { parts.flatMap { $0 } }
  public static func buildOptional(_ part: [any GroupService]?) -> [any GroupService] { part ?? [] }
}

/// A consensus group: `Group("accounts", engine: .raft, members: ["n1", "n2", "n3"]) { KeyValue(); Locks() }`.
///
/// Members default to every member of the cluster; the id to the next free one (1, 2, …); the slots to an even
/// share of the key space among the groups carrying the same service that name none (see
/// ``QuorumHost/ClusterMap``). A member records each group's id, name, engine, services and slots beside its data
/// and refuses to start a group whose record differs, and members whose group lists differ refuse each other: give
/// the ids explicitly once a group is removed or the groups are reordered (see ``QuorumHost/GroupIdentity``).
public struct Group: ClusterSetting {
  private let name: String
  private let id: UInt64?
  private let engine: EngineKind
  private let memberIDs: [NodeID]?
  private let slots: [ClosedRange<UInt16>]
  private let services: [any GroupService]

  /// A group named `name` (its storage directory under each member's data directory), on `members` (node ids,
  /// written `["n1", "n2"]` or `[1, 2]`; every member of the cluster by default).
  public init(
    _ name: String, id: UInt64? = nil, engine: EngineKind = .raft, members: [NodeID]? = nil,
    slots: [ClosedRange<UInt16>] = [], @GroupServicesBuilder services: () -> [any GroupService]
  ) {
    self.name = name
    self.id = id
    self.engine = engine
    self.memberIDs = members
    self.slots = slots
    self.services = services()
  }

  public func apply(to cluster: inout Cluster) throws(ClusterConfigurationError) {
    let line = "Group(\"\(name)\")"
    let members = memberIDs ?? cluster.members.map(\.id)
    let used = Set(cluster.groups.map(\.id))
    let assigned =
      id.map(GroupID.init(rawValue:)) ?? (1...).lazy.map(GroupID.init(rawValue:)).first { !used.contains($0) }
    guard let groupID = assigned else { throw ClusterConfigurationError(setting: line, reason: "no free group id") }
    guard !services.isEmpty else { throw ClusterConfigurationError(setting: line, reason: "no services") }
    cluster.groups.append(
      GroupSpec(
        id: groupID, name: name, engine: engine, members: members, services: services.map(\.serviceName),
        slots: slots.map { SlotRange($0.lowerBound, $0.upperBound) }))
  }
}

/// Runs `body` on a Dispatch thread and waits for it without holding a thread of the cooperative pool, for work
/// that may block: making a ``QuorumHost/GroupHost`` checks its groups' identities under their logs' directory
/// locks, and waits up to 100 ms for a lock another holder is just releasing.
func offCooperativePool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
  try await withCheckedThrowingContinuation { continuation in
    DispatchQueue.global(qos: .userInitiated).async { continuation.resume(with: Result(catching: body)) }
  }
}
