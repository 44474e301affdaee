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

/// A Quorum cluster described as a validated value: its id, its members (in-process or at TCP addresses),
/// storage, Raft settings and transport limits. The result-builder DSL is sugar over it:
///
/// ```swift
/// let cluster = try Cluster(id: "orders") {
///   Member("n1", at: "127.0.0.1:7001")
///   Member("n2", at: "127.0.0.1:7002")
///   Member("n3", at: "127.0.0.1:7003")
///   DataDirectory("/var/lib/orders", fsync: .always)
///   RaftSettings {
///     ElectionTimeout(Duration.milliseconds(150)...Duration.milliseconds(300))
///     HeartbeatInterval(.milliseconds(50))
///   }
/// }
/// let server = try await cluster.start("n1")   // this process runs member n1 over TCP
/// try await server.run()                       // until server.shutdown()
/// ```
///
/// Members without addresses make an in-process cluster, run whole with ``withLocalMembers(_:)``.
/// Validation runs when the DSL finishes and names the offending line: an unparsable or duplicated member,
/// a bad address, a mix of in-process and TCP members, invalid Raft settings.
public struct Cluster: Sendable {
  /// The cluster id every connection is checked against.
  public var id: ClusterID
  /// The members, ordered by id.
  public var members: [ClusterMember]
  /// Where members keep durable state.
  public var storage: ClusterStorage
  /// Raft settings (its `members` are the cluster's members).
  public var raft: RaftConfiguration
  /// TCP limits and timeouts.
  public var tcp: TCPTransportOptions
  /// Where members log.
  public var logSink: any LogSink

  /// Builds a cluster from DSL lines and validates it.
  public init(id: ClusterID, @ClusterBuilder _ settings: () -> [any ClusterSetting])
    throws(ClusterConfigurationError)
  {
    self.id = id
    self.members = []
    self.storage = .memory
    self.raft = RaftConfiguration()
    self.tcp = TCPTransportOptions()
    self.logSink = StderrLogSink(minimumLevel: .warning)
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
  }

  /// Whether the members run in one process on the in-process transport.
  public var isInProcess: Bool { members.allSatisfy { $0.address == nil } }

  /// Member addresses by id (empty for an in-process cluster).
  public var addressBook: [NodeID: TCPAddress] {
    var book: [NodeID: TCPAddress] = [:]
    for member in members { book[member.id] = member.address }
    return book
  }

  /// The storage for `member`.
  func makeStorage(for member: NodeID, override directory: String? = nil) -> any ConsensusStorage<LogEntry> {
    if let directory { return FileStorage<LogEntry>(directory: directory, fsync: fsyncPolicy) }
    switch storage {
    case .memory: return MemoryStorage<LogEntry>()
    case .directory(let path, let fsync): return FileStorage<LogEntry>(directory: "\(path)/\(member)", fsync: fsync)
    }
  }

  private var fsyncPolicy: FsyncPolicy {
    if case .directory(_, let fsync) = storage { return fsync }
    return .always
  }

  // MARK: Running

  /// Starts member `member` of this TCP cluster in this process: listens on its address (or `listen`),
  /// opens its storage (in `dataDirectory` if given), and returns the server to ``ClusterMemberServer/run()``.
  /// - Throws: ``ClusterConfigurationError`` for an unknown member or an in-process cluster,
  ///   ``QuorumTCP/TCPTransportError`` (for example a busy port).
  ///
  /// With `joining: true` the member does not found the group with the others: it starts empty and waits to
  /// be added (`quorum members add`), learning the membership from the leader.
  public func start(_ member: NodeID, listen: TCPAddress? = nil, dataDirectory: String? = nil, joining: Bool = false)
    async throws -> ClusterMemberServer
  {
    guard members.contains(where: { $0.id == member }) else {
      throw ClusterConfigurationError(setting: "start(\(member))", reason: "\(member) is not a member")
    }
    guard !isInProcess else {
      throw ClusterConfigurationError(setting: "start(\(member))", reason: "the members have no TCP addresses")
    }
    var book = addressBook
    if let listen { book[member] = listen }
    var options = tcp
    options.serveClients = true
    let logger = QuorumLogger(label: "quorum", sink: logSink)
    let transport = TCPTransport<RaftMessage>(
      cluster: id, protocolNumber: WireProtocol.raft, addresses: book, options: options, logger: logger.child("tcp"))
    let endpoint = try await transport.bind(member)
    let storage = makeStorage(for: member, override: dataDirectory)
    let view = NodeEndpoint(endpoint)
    var configuration = raft
    if joining { configuration.members = [] }
    let node = RaftNode(
      id: member, configuration: configuration, endpoint: view, storage: storage, machine: KVStore(), logger: logger)
    return ClusterMemberServer(
      node: node, transport: transport, endpoint: endpoint, view: view, storage: storage, logger: logger)
  }

  /// Starts every member in this process, runs `body` with their nodes, then stops them.
  ///
  /// In-process members use an ``QuorumCore/InProcessTransport``; members with addresses use TCP (on those
  /// addresses), which is how to try a TCP cluster on one machine.
  public func withLocalMembers<T: Sendable>(_ body: @Sendable (LocalMembers) async throws -> T) async throws -> T {
    if isInProcess {
      let transport = InProcessTransport<RaftMessage>()
      var nodes: [NodeID: RaftNode<KVStore>] = [:]
      var storages: [any ConsensusStorage<LogEntry>] = []
      let logger = QuorumLogger(label: "quorum", sink: logSink)
      for member in members {
        let storage = makeStorage(for: member.id)
        storages.append(storage)
        nodes[member.id] = RaftNode(
          id: member.id, configuration: raft, endpoint: try transport.bind(member.id), storage: storage,
          machine: KVStore(), logger: logger)
      }
      let running = nodes
      let opened = storages
      return try await runAll(
        running.values.map { node in { try await node.run() } }, stop: { for node in running.values { node.stop() } },
        body: { try await body(LocalMembers(nodes: running, addresses: [:])) },
        cleanup: { for storage in opened { try? await storage.close() } })
    }
    var servers: [ClusterMemberServer] = []
    do {
      for member in members { servers.append(try await start(member.id)) }
    } catch {
      for server in servers { await server.discard() }
      throw error
    }
    // Members listening on port 0 learned their real ports only now: tell every member.
    for server in servers {
      for other in servers { server.transport.setAddress(other.address, for: other.id) }
    }
    var nodes: [NodeID: RaftNode<KVStore>] = [:]
    var addresses: [NodeID: TCPAddress] = [:]
    for server in servers {
      nodes[server.id] = server.node
      addresses[server.id] = server.address
    }
    let members = LocalMembers(nodes: nodes, addresses: addresses)
    let all = servers
    return try await runAll(
      all.map { server in { try await server.run() } },
      stop: {
        for server in all { await server.shutdown() }
      }, body: { try await body(members) }, cleanup: {})
  }

  private func runAll<T: Sendable>(
    _ runs: [@Sendable () async throws -> Void], stop: @Sendable () async -> Void,
    body: @Sendable () async throws -> T, cleanup: @Sendable () async -> Void
  ) async throws -> T {
    let result: Result<T, any Error> = await withTaskGroup(of: Void.self) { group in
      for run in runs { group.addTask { try? await run() } }
      let outcome: Result<T, any Error>
      do { outcome = .success(try await body()) } catch { outcome = .failure(error) }
      await stop()
      await group.waitForAll()
      return outcome
    }
    await cleanup()
    return try result.get()
  }
}

/// The members of a cluster running in this process, handed to ``Cluster/withLocalMembers(_:)``'s body.
public struct LocalMembers: Sendable {
  /// The Raft node of each member.
  public let nodes: [NodeID: RaftNode<KVStore>]
  /// Where each member listens (empty for an in-process cluster).
  public let addresses: [NodeID: TCPAddress]

  /// Waits (at most `timeout`) for a member that is leader and has committed an entry of its term.
  public func leader(timeout: Duration = .seconds(10)) async throws -> NodeID {
    let deadline = ContinuousClock.now.advanced(by: timeout)
    while ContinuousClock.now < deadline {
      for (id, node) in nodes {
        let status = await node.status
        if status.role == .leader && status.commitIndex >= status.lastIndex && status.commitIndex > 0 { return id }
      }
      try await Task.sleep(for: .milliseconds(5))
    }
    throw ConsensusError.timeout
  }

  /// A key-value client over the in-process nodes (for an in-process cluster).
  public func kvClient(seed: UInt64 = 1) -> KVClient<RaftNode<KVStore>> { KVClient(members: nodes, seed: seed) }
}

/// The Raft node's view of its TCP endpoint. Closing it (which `RaftNode.run()` does when it stops) only
/// stops the node's sends: the TCP endpoint stays open until the member server has answered its clients,
/// so a graceful shutdown can still reply to requests in flight.
final class NodeEndpoint: TransportEndpoint, Sendable {
  let inner: TCPEndpoint<RaftMessage>
  private let closed = Atomic<Bool>(false)

  init(_ inner: TCPEndpoint<RaftMessage>) { self.inner = inner }

  var id: NodeID { inner.id }
  var incoming: Mailbox<Envelope<RaftMessage>> { inner.incoming }

  func send(_ message: RaftMessage, to peer: NodeID, group: GroupID) throws(TransportError) {
    if closed.load(ordering: .relaxed) { throw .closed }
    try inner.send(message, to: peer, group: group)
  }

  func close() async { closed.store(true, ordering: .relaxed) }
}

/// One member of a TCP cluster running in this process: its Raft node, its client service and its
/// transport. Made by ``Cluster/start(_:listen:dataDirectory:joining:)``.
public final class ClusterMemberServer: Sendable {
  /// The member.
  public var id: NodeID { node.id }
  /// Its Raft node.
  public let node: RaftNode<KVStore>
  /// Its transport (address book, metrics).
  public let transport: TCPTransport<RaftMessage>
  /// Its endpoint.
  public let endpoint: TCPEndpoint<RaftMessage>
  /// The address it listens on (peers and clients).
  public var address: TCPAddress { endpoint.address }
  private let view: NodeEndpoint
  private let storage: any ConsensusStorage<LogEntry>
  private let logger: QuorumLogger

  init(
    node: RaftNode<KVStore>, transport: TCPTransport<RaftMessage>, endpoint: TCPEndpoint<RaftMessage>,
    view: NodeEndpoint, storage: any ConsensusStorage<LogEntry>, logger: QuorumLogger
  ) {
    self.node = node
    self.transport = transport
    self.endpoint = endpoint
    self.view = view
    self.storage = storage
    self.logger = logger
  }

  /// Runs the member until ``shutdown()`` (or until the node fails): the Raft node and the client service
  /// run concurrently. On the way out, requests already taken are answered (a stopped node answers
  /// `stopped`, and clients retry elsewhere), the sockets are closed, and storage is synced and closed.
  public func run() async throws {
    let service = KVService(node: node, transport: transport, logger: logger.child("clients"))
    let requests = endpoint.requests
    let node = self.node
    let outcome: Result<Void, any Error> = await withTaskGroup(of: Void.self) { group in
      group.addTask { await service.serve(requests) }
      let outcome: Result<Void, any Error>
      do {
        try await node.run()
        outcome = .success(())
      } catch {
        outcome = .failure(error)
      }
      requests.close()  // The service answers what it took, then returns.
      await group.waitForAll()
      return outcome
    }
    await endpoint.close()
    do {
      try await storage.close()
    } catch {
      logger.error("closing storage failed: \(error)")
      if case .success = outcome { throw error }
    }
    await transport.shutdown()
    try outcome.get()
  }

  /// Begins a graceful shutdown: stop accepting connections, let the node finish the write in progress and
  /// stop; ``run()`` then answers what is in flight, syncs and closes storage, and returns.
  public func shutdown() async {
    await endpoint.stopAccepting()
    node.stop()
  }

  /// Releases the resources of a server that was never run.
  func discard() async {
    await endpoint.close()
    try? await storage.close()
    await transport.shutdown()
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

  /// Keeps each member's log and snapshots under `path/<member>`.
  public init(_ path: String, fsync: FsyncPolicy = .always) {
    self.path = path
    self.fsync = fsync
  }

  public func apply(to cluster: inout Cluster) throws(ClusterConfigurationError) {
    guard !path.isEmpty else { throw ClusterConfigurationError(setting: "DataDirectory", reason: "empty path") }
    cluster.storage = .directory(path, fsync: fsync)
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

/// Where members log.
public struct Logging: ClusterSetting {
  private let sink: any LogSink

  /// Sends members' logs to `sink`.
  public init(_ sink: any LogSink) { self.sink = sink }

  public func apply(to cluster: inout Cluster) throws(ClusterConfigurationError) { cluster.logSink = sink }
}
