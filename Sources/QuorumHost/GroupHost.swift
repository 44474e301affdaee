public import QuorumCore
import QuorumKV
import QuorumLocks
public import QuorumPaxos
public import QuorumRaft
public import QuorumReplica
import QuorumStorage
import QuorumTransactions
import Synchronization

/// A service a host can run, with its type erased: what the host needs to build a group's state machine and to
/// route a request before it reaches the log.
public struct ServiceDefinition: Sendable {
  /// The key a request is about, as far as placement is concerned.
  public enum RoutingKey: Sendable, Equatable {
    /// About these keys (one or more): each must belong to the group.
    case keys([String])
    /// Not about one key (sessions, scans).
    case unkeyed
    /// The payload is not the service's.
    case undecodable(String)
    /// A command the service takes only from the host itself, never from a client.
    case notFromClients(String)
  }

  /// The service's name.
  public let name: String
  let service: any ReplicatedService
  let commandKey: @Sendable ([UInt8]) -> RoutingKey
  let queryKey: @Sendable ([UInt8]) -> RoutingKey
  /// Whether a command (encoded) only frees space, so a member past its space quota still accepts it.
  let commandReclaimsSpace: @Sendable ([UInt8]) -> Bool

  /// Wraps `service`.
  public init<Service: ReplicatedService>(_ service: Service) {
    name = Service.name
    self.service = service
    commandKey = { bytes in
      do {
        let command = try Service.Machine.Command(wireBytes: bytes)
        guard Service.acceptsFromClients(command) else { return .notFromClients("\(command)") }
        let keys = Service.routingKeys(of: command)
        return keys.isEmpty ? .unkeyed : .keys(keys)
      } catch {
        return .undecodable("\(error)")
      }
    }
    queryKey = { bytes in
      do {
        return Service.routingKey(of: try Service.Machine.Query(wireBytes: bytes)).map { .keys([$0]) } ?? .unkeyed
      } catch {
        return .undecodable("\(error)")
      }
    }
    commandReclaimsSpace = { bytes in
      (try? Service.Machine.Command(wireBytes: bytes)).map(Service.reclaimsSpace) ?? false
    }
  }
}

/// The services a host knows by name. A new service is one more definition here; nothing else changes.
public struct ServiceCatalog: Sendable {
  /// The definitions, by name.
  public private(set) var definitions: [String: ServiceDefinition] = [:]

  /// A catalog of `services`.
  public init(_ services: [ServiceDefinition]) {
    for service in services { definitions[service.name] = service }
  }

  /// The services Quorum ships: the key-value store (`kv`), the lock table (`locks`) and the sharded
  /// transactional key-value store (`txn`).
  public static var standard: ServiceCatalog {
    ServiceCatalog([
      ServiceDefinition(KeyValueService()), ServiceDefinition(LockService()), ServiceDefinition(HostedTxnService()),
    ])
  }

  /// The names known.
  public var names: Set<String> { Set(definitions.keys) }

  /// The services named, in order; `nil` if one is unknown.
  public func services(named names: [String]) -> [any ReplicatedService]? {
    var services: [any ReplicatedService] = []
    for name in names {
      guard let definition = definitions[name] else { return nil }
      services.append(definition.service)
    }
    return services
  }
}

/// Checkers the simulator attaches to a host's replicas (none in production).
public struct HostObservers: Sendable {
  /// Sees every Raft group's replica.
  public var raft: (@Sendable (GroupSpec) -> (any ReplicaObserver<RaftEngine>)?)?
  /// Sees every Multi-Paxos group's replica.
  public var paxos: (@Sendable (GroupSpec) -> (any ReplicaObserver<MultiPaxosEngine>)?)?

  /// No observers.
  public init(
    raft: (@Sendable (GroupSpec) -> (any ReplicaObserver<RaftEngine>)?)? = nil,
    paxos: (@Sendable (GroupSpec) -> (any ReplicaObserver<MultiPaxosEngine>)?)? = nil
  ) {
    self.raft = raft
    self.paxos = paxos
  }
}

/// One server process's share of a cluster: a replica of every group the cluster map places on this node, each
/// with its own engine, storage and services, all sharing one transport endpoint (through a ``GroupRouter``) and
/// one timer — and the request handler clients talk to.
///
/// ``run(attach:)`` recovers every group's storage first and only then attaches the transport, so a server opens
/// its listener once its logs are known good. ``handle(_:)`` answers the client protocol (``HostRequest``):
/// it finds the group, checks that the group carries the service and owns the key, and hands the request to
/// the group's replica.
public final class GroupHost: Sendable {
  /// This process's node.
  public let node: NodeID
  /// The cluster map in force.
  public let map: ClusterMap
  /// The router sharing the process's endpoint among the groups.
  public let router: GroupRouter
  private let placement: Placement
  private let catalog: ServiceCatalog
  private let groups: [GroupID: any HostedGroup]
  private let order: [GroupID]
  private let ticker = SharedTicker()
  private let tickInterval: Duration
  private let runtime: NodeRuntime
  private let logger: QuorumLogger
  private let addressOf: @Sendable (NodeID) -> String?
  private let addressBook: (@Sendable () -> [NodeID: String])?
  private let stopRequested = OnceSignal()
  private let recovered = OnceSignal()
  private let storage: any GroupStorageProvider
  private let spaceQuotaBytes: Int?
  private let spaceCheckInterval: Duration
  /// The storage's usage at the last measurement (-1: not measured yet, or the provider cannot tell).
  private let usedBytes = Atomic<Int>(-1)
  /// The longest encoded reply ``handle(bytes:principal:role:)`` sends; a longer one is replaced by
  /// ``HostError/replyTooLarge(bytes:limit:)``.
  public let maxReplyBytes: Int
  private let resolverOptions: TransactionResolverOptions
  private let settled = SettledCount()
  /// What the groups told waiting clients lately (lock grants, expiries), for ``HostRequest/watch(group:service:key:after:timeoutMillis:)``.
  public let notifications: NotificationHub

  /// Builds this node's replicas; nothing runs until ``run(attach:)``.
  ///
  /// With a ``FileGroupStorage`` this blocks while it checks the groups' identities, waiting up to 100 ms for a
  /// directory lock another holder is just releasing: from async code, call it off the cooperative pool.
  ///
  /// - Parameters:
  ///   - node: this process's node.
  ///   - map: the cluster map (validated against `catalog`).
  ///   - catalog: the services the host can run.
  ///   - settings: engine settings for every group (members come from each group's description).
  ///   - storage: where each group keeps its log and snapshots.
  ///   - joining: groups this node joins as a new member (it starts empty and learns the membership), rather
  ///     than founds.
  ///   - runtime: clock and executor (``QuorumCore/NodeRuntime/system`` unless simulated).
  ///   - seed: seeds the replicas' randomness (`nil`: from the clock).
  ///   - logger: where the host and its replicas log.
  ///   - addressOf: a member's client address, for redirects.
  ///   - addressBook: every member the transport knows, with its address (members added since the map was
  ///     written appear in the map clients are sent).
  ///   - observers: the simulator's checkers.
  ///   - maxReplyBytes: the longest encoded reply sent (a transport passes its frame limit, less its framing).
  /// - Throws: ``ClusterMapError`` for an invalid map, ``QuorumCore/ConfigurationError`` for invalid settings,
  ///   or a storage error opening a group's storage: ``QuorumStorage/StorageError/incompatible(file:reason:)``
  ///   when the storage recorded another identity for a group (see ``GroupStorageProvider/checkIdentity(_:)``), and
  ///   ``QuorumStorage/StorageError/directoryLocked(path:)`` when another process runs on a ``FileGroupStorage``'s
  ///   data directory (checked for every group before any group's identity record is read or written; see
  ///   ``FileGroupStorage/checkIdentities(_:)`` for the moment it does not cover).
  public init(
    node: NodeID, map: ClusterMap, catalog: ServiceCatalog = .standard, settings: HostSettings,
    storage: any GroupStorageProvider, joining: Set<GroupID> = [], runtime: NodeRuntime = .system,
    seed: UInt64? = nil, logger: QuorumLogger = QuorumLogger(label: "quorum"),
    addressOf: @escaping @Sendable (NodeID) -> String? = { _ in nil },
    addressBook: (@Sendable () -> [NodeID: String])? = nil, observers: HostObservers = HostObservers(),
    maxReplyBytes: Int = GroupHost.defaultMaxReplyBytes
  ) throws {
    try map.validate(knownServices: catalog.names)
    let hosted = map.groups.filter { $0.members.contains(node) || joining.contains($0.id) }
    let usesRaft = hosted.contains { $0.engine == .raft }
    let usesPaxos = hosted.contains { $0.engine == .multiPaxos }
    guard !(usesRaft && usesPaxos) || settings.raft.tickInterval == settings.paxos.tickInterval else {
      throw ConfigurationError(
        setting: "TickInterval",
        reason:
          "Raft and Multi-Paxos groups share one timer: \(settings.raft.tickInterval) ≠ \(settings.paxos.tickInterval)")
    }
    self.node = node
    self.map = map
    self.placement = Placement(map)
    self.catalog = catalog
    self.router = GroupRouter(node: node)
    self.tickInterval = usesRaft || !usesPaxos ? settings.raft.tickInterval : settings.paxos.tickInterval
    self.runtime = runtime
    self.logger = logger
    self.addressOf = addressOf
    self.addressBook = addressBook
    self.storage = storage
    self.spaceQuotaBytes = settings.spaceQuotaBytes
    self.spaceCheckInterval = settings.spaceCheckInterval
    self.notifications = NotificationHub(maxWaitsPerPrincipal: settings.watchesPerPrincipal)
    self.maxReplyBytes = max(64, maxReplyBytes)
    try settings.transactionResolver.validate()
    self.resolverOptions = settings.transactionResolver
    try storage.checkIdentities(hosted.map { GroupIdentity($0, in: map) })
    var groups: [GroupID: any HostedGroup] = [:]
    for spec in hosted {
      guard let services = catalog.services(named: spec.services) else {
        throw ClusterMapError("group \(spec.name)", "unknown service")
      }
      let groupSeed = seed.map { $0 ^ spec.id.rawValue &* 0x9E37_79B9_7F4A_7C15 }
      let isJoining = joining.contains(spec.id)
      switch spec.engine {
      case .raft:
        groups[spec.id] = try Self.makeGroup(
          RaftEngine.self, spec: spec, services: services, settings: settings,
          storage: storage, joining: isJoining,
          router: router, ticker: ticker, runtime: runtime, seed: groupSeed, logger: logger,
          observer: observers.raft?(spec), hub: notifications)
      case .multiPaxos:
        groups[spec.id] = try Self.makeGroup(
          MultiPaxosEngine.self, spec: spec, services: services,
          settings: settings, storage: storage,
          joining: isJoining, router: router, ticker: ticker, runtime: runtime, seed: groupSeed, logger: logger,
          observer: observers.paxos?(spec), hub: notifications)
      }
    }
    self.groups = groups
    self.order = groups.keys.sorted()
  }

  private static func makeGroup<Engine: HostedEngine>(
    _ engine: Engine.Type, spec: GroupSpec, services: [any ReplicatedService],
    settings: HostSettings, storage: any GroupStorageProvider, joining: Bool, router: GroupRouter, ticker: SharedTicker,
    runtime: NodeRuntime,
    seed: UInt64?, logger: QuorumLogger, observer: (any ReplicaObserver<Engine>)?, hub: NotificationHub
  ) throws -> EngineGroup<Engine> {
    let configuration = Engine.configuration(for: spec, settings: settings, joining: joining)
    try configuration.validate()
    let groupStorage = try storage.storage(for: spec, mode: Engine.hostLogWriteMode, entry: Engine.Entry.self)
    let endpoint = router.endpoint(
      for: spec.id, capacity: configuration.inputCapacity, wrap: Engine.wrap, unwrap: Engine.unwrap)
    let id = spec.id
    let groupLogger = logger.child(spec.name)
    let onNotifications: @Sendable (UInt64, [ServiceNotification]) -> Void = { index, notifications in
      hub.publish(group: id, index: index, notifications)
    }
    let node = makeNode(
      Engine.self, id: router.node, group: spec.id, configuration: configuration, endpoint: endpoint,
      storage: groupStorage, machine: ServiceMachine(services), runtime: runtime, seed: seed, logger: groupLogger,
      observer: observer, ticker: ticker, onNotifications: onNotifications,
      onStateReplaced: { index in hub.reset(group: id, through: index) })
    return EngineGroup(spec: spec, node: node, storage: groupStorage, logger: groupLogger)
  }

  private static func makeNode<Engine: HostedEngine, Storage: ConsensusStorage<Engine.Entry>>(
    _ engine: Engine.Type, id: NodeID, group: GroupID, configuration: Engine.Configuration,
    endpoint: GroupEndpoint<Engine.Message>, storage: Storage, machine: ServiceMachine, runtime: NodeRuntime,
    seed: UInt64?, logger: QuorumLogger, observer: (any ReplicaObserver<Engine>)?, ticker: SharedTicker,
    onNotifications: (@Sendable (UInt64, [ServiceNotification]) -> Void)?,
    onStateReplaced: (@Sendable (UInt64) -> Void)?
  ) -> ReplicaNode<Engine, ServiceMachine> {
    ReplicaNode<Engine, ServiceMachine>(
      id: id, group: group, configuration: configuration, endpoint: endpoint, storage: storage, machine: machine,
      runtime: runtime, seed: seed, logger: logger, observer: observer, ticker: ticker,
      onNotifications: onNotifications, onStateReplaced: onStateReplaced)
  }

  /// The longest a watch is held (a client asking for more is answered at this point and watches again).
  static let maxWatchMillis: UInt64 = 30_000
  /// The longest key a client may watch: a wait holds its key for up to ``maxWatchMillis``.
  static let maxWatchKeyBytes = 4096

  /// The default reply limit: the TCP transport's default frame limit less room for its framing.
  public static let defaultMaxReplyBytes = (16 << 20) - 1024

  /// The groups this process hosts, by id.
  public var hostedGroups: [GroupID] { order }

  /// The replica of `group` hosted here, if any.
  public func group(_ group: GroupID) -> (any HostedGroup)? { groups[group] }

  /// How many transactions left in doubt by their coordinators this host's resolver has settled (see
  /// ``TransactionResolverOptions``).
  public var transactionsResolved: Int { settled.value }

  /// The duties towards `txn` groups (their clock, their transactions in doubt), if this host has any.
  private func makeHousekeeping() -> TransactionHousekeeping? {
    let carrying = order.compactMap { groups[$0] }.filter { $0.spec.services.contains(HostedTxnService.name) }
    guard !carrying.isEmpty else { return nil }
    let channel = PeerRequestChannel(router: router, clock: runtime.clock) { [self] bytes in await handle(bytes: bytes)
    }
    var options = HostClientOptions()
    options.deadline = .seconds(5)
    options.attemptTimeout = .seconds(1)
    let client = HostClient(
      channel: channel, members: map.members.keys.sorted(), map: map, options: options, clock: runtime.clock,
      seed: node.rawValue)
    return TransactionHousekeeping(
      node: node, groups: carrying, options: resolverOptions, client: client, clock: runtime.clock,
      logger: logger.child("resolver"), settled: settled)
  }

  // MARK: - Running

  /// Recovers every group, then calls `attach` for the transport endpoint (a TCP server opens its listener
  /// there), then runs until ``shutdown()`` or until a group fails (a storage failure: the host then stops every
  /// group and rethrows it).
  public func run(attach: @escaping @Sendable () async throws -> any TransportEndpoint<HostMessage>) async throws {
    let groups = order.compactMap { self.groups[$0] }
    let ticker = self.ticker
    let runtime = self.runtime
    let interval = tickInterval
    let router = self.router
    let stop = stopRequested
    try await withThrowingTaskGroup(of: Void.self) { tasks in
      for group in groups { tasks.addTask { try await group.run() } }
      tasks.addTask {
        await ticker.run(every: interval, on: runtime)
      }
      if spaceQuotaBytes != nil {
        measureUsage()  // Before the first request: a member that restarts past its quota refuses writes at once.
      }
      if spaceQuotaBytes != nil || storage.sharesLog { tasks.addTask { await self.watchSpace() } }
      do {
        for group in groups { try await group.waitUntilRecovered() }
        router.attach(try await attach())
      } catch {
        logger.error("stopping: a group did not recover, or the transport did not open: \(error)")
        for group in groups { await group.shutdown() }
        tasks.cancelAll()
        try await tasks.waitForAll()
        throw error
      }
      recovered.finish()
      logger.notice("serving \(groups.count) groups", ["node": "\(node)"])
      tasks.addTask { await router.run() }
      // Requests from other hosts (their resolvers); each task below runs until the host stops.
      tasks.addTask { await router.peers.serve(router: router) { [self] bytes in await handle(bytes: bytes) } }
      if let housekeeping = makeHousekeeping() { tasks.addTask { await housekeeping.run() } }
      tasks.addTask { await stop.wait() }
      var failure: (any Error)?
      do {
        try await tasks.next()
      } catch {
        failure = error
        logger.error("stopping every group after a failure: \(error)")
      }
      stop.finish()  // Ends the task waiting for a shutdown, if a failure came first.
      for group in groups { await group.shutdown() }
      await router.close()
      tasks.cancelAll()
      while true {
        do {
          guard try await tasks.next() != nil else { break }
        } catch {
          if failure == nil { failure = error }
        }
      }
      if let failure { throw failure }
    }
  }

  /// Waits until every group has recovered and the transport is attached.
  public func waitUntilServing() async { await recovered.wait() }

  /// Stops every group (answering requests in flight) and makes ``run(attach:)`` return.
  public func shutdown() async {
    stopRequested.finish()
  }

  // MARK: - Space quota

  /// Every ``HostSettings/spaceCheckInterval`` until cancelled: measures the storage's usage (while a quota is
  /// set), and asks the groups whose old entries keep a shared log's oldest segment on disk to release them.
  private func watchSpace() async {
    var warnedPins: Set<GroupID> = []
    while !Task.isCancelled {
      do {
        try await runtime.clock.sleep(for: spaceCheckInterval)
      } catch {
        return
      }
      let pins = await storage.groupsPinningStorage()
      // At two old segments or more, or one while over the quota: with writes refused, the groups' own snapshot
      // schedule (counted in applied entries) might never free the space.
      let ask = pins.oldFiles >= 2 || (pins.oldFiles >= 1 && quotaExceeded)
      for id in pins.groups where ask {
        guard let group = groups[id] else {
          // Removed from this member: nothing here will ever compact its entries.
          if warnedPins.insert(id).inserted {
            logger.warning(
              "a group this member no longer runs keeps the shared log's oldest segment on disk; once the member is "
                + "out of the group's configuration, stop it and run quorum forget-group", ["group": "\(id)"])
          }
          continue
        }
        logger.debug("asking a group to release the shared log's oldest segment", ["group": group.spec.name])
        // The budget is shared: together the groups asked write at most the log they would free.
        group.releaseStoredEntries(snapshotBudgetBytes: pins.heldBytes / max(1, pins.groups.count))
      }
      // A walk of every group's files: off the caller's executor, which may be the network thread.
      if spaceQuotaBytes != nil { await runtime.detached { [self] in measureUsage() }.value }
    }
  }

  private func measureUsage() {
    guard let quota = spaceQuotaBytes else { return }
    let used = storage.usedBytes() ?? -1
    let before = usedBytes.exchange(used, ordering: .relaxed)
    if used > quota && before <= quota {
      logger.warning(
        "space quota exceeded: refusing writes until space returns", ["used": "\(used)", "quota": "\(quota)"])
    } else if used <= quota && before > quota {
      logger.notice("space back under the quota: accepting writes", ["used": "\(used)", "quota": "\(quota)"])
    }
  }

  /// Whether the last measurement found the storage past its quota.
  private var quotaExceeded: Bool {
    guard let quota = spaceQuotaBytes else { return false }
    return usedBytes.load(ordering: .relaxed) > quota
  }

  /// The refusal of a command of `service` while the storage is past its quota, unless the command frees space.
  private func spaceRefusal(service: String, payload: [UInt8]) -> HostError? {
    guard let quota = spaceQuotaBytes else { return nil }
    let used = usedBytes.load(ordering: .relaxed)
    guard used > quota, catalog.definitions[service]?.commandReclaimsSpace(payload) != true else { return nil }
    return .spaceQuotaExceeded(usedBytes: used, quotaBytes: quota)
  }

  // MARK: - Requests

  /// Answers one client request as an administrator with no authenticated principal (a client in this process).
  public func handle(_ request: HostRequest) async -> HostReply {
    await handle(request, principal: nil, role: .admin)
  }

  /// Answers one client request from `principal` (`nil`: not authenticated) holding `role`: a request the role
  /// does not allow (``HostRequest/neededRole``) is refused with ``HostError/forbidden(role:needed:)``, and
  /// sessions are registered for, and commands proposed on behalf of, `principal`.
  public func handle(_ request: HostRequest, principal: String?, role: ClientRole) async -> HostReply {
    let needed = request.neededRole
    guard role >= needed else {
      logger.debug(
        "refused a request: the role does not allow it",
        [
          "principal": logSafe(principal ?? "-", limit: 64), "role": "\(role)",
          "request": logSafe(request.description, limit: 160),
        ])
      return .failure(HostFailure(.forbidden(role: role, needed: needed)))
    }
    switch request {
    case .clusterMap:
      return .clusterMap(currentMap)
    case .status(nil):
      var statuses: [GroupStatus] = []
      for id in order {
        if let group = groups[id] { statuses.append(await group.status()) }
      }
      return .statuses(statuses)
    default:
      break
    }
    guard let id = request.group, let spec = map.group(id) else {
      return .failure(HostFailure(.unknownGroup(request.group ?? .default)))
    }
    guard let group = groups[id] else { return .failure(HostFailure(.notHosted(id, members: spec.members))) }
    do {
      switch request {
      case .registerSession:
        return .session(try await group.registerSession(principal: principal))
      case .command(_, let command, let request, let acknowledged):
        if let refusal = refusal(of: command, in: spec) { return .failure(HostFailure(refusal)) }
        let answer = try await group.propose(
          command, request: request, acknowledgedThrough: acknowledged, principal: principal)
        return reply(answer.value, index: answer.index, group: id)
      case .query(_, let service, let payload, let consistency, let atLeast):
        if let refusal = refusal(ofQuery: payload, service: service, in: spec) {
          return .failure(HostFailure(refusal))
        }
        let answer = try await group.read(
          ServiceQuery(service: service, payload: payload), consistency: consistency, atLeast: atLeast)
        return reply(answer.value, index: answer.index, group: id)
      case .status:
        return .statuses([await group.status()])
      case .membership(_, let operation):
        try await group.changeMembership(.change([operation]))
        return .done
      case .transferLeadership(_, let target):
        try await group.transferLeadership(to: target)
        return .done
      case .clusterMap:
        return .clusterMap(currentMap)
      case .watch(_, let service, let key, let after, let timeout):
        guard spec.services.contains(service) else {
          return .failure(HostFailure(.unknownService(service, group: id)))
        }
        guard key.utf8.count <= Self.maxWatchKeyBytes else {
          return .failure(
            HostFailure(.malformed("a watched key of \(key.utf8.count) bytes (at most \(Self.maxWatchKeyBytes))")))
        }
        let answer = try await notifications.wait(
          group: id, service: service, key: key, after: after,
          timeout: .milliseconds(Int64(clamping: min(timeout, Self.maxWatchMillis))), clock: runtime.clock,
          principal: principal)
        // Truncated: no notifications, and the position through which some may be missing (past `after`, which
        // no other answer without notifications carries; see `HostReply.notifications`).
        if let floor = answer.truncatedThrough { return .notifications([], index: floor) }
        return .notifications(answer.records.map(\.payload), index: answer.records.last?.index ?? after)
      }
    } catch {
      return await redirectingIfRemoved(failure(error), group: group, id: id)
    }
  }

  /// `reply`, unless it says that `group`'s leader is unknown here and this member is no longer in the group's
  /// configuration: then the members that are (``HostError/notHosted(_:members:)``). A removed member hears
  /// nothing more from its group, and a client's map may list only the members the group started with: once
  /// every one of them has been replaced, this is how clients find the group.
  private func redirectingIfRemoved(_ reply: HostReply, group: any HostedGroup, id: GroupID) async -> HostReply {
    guard Self.knowsNoLeader(reply) else { return reply }
    let status = await group.status()
    let configured = status.voters + status.learners
    guard !configured.isEmpty, !configured.contains(node) else { return reply }
    return .failure(HostFailure(.notHosted(id, members: configured)))
  }

  /// Whether `reply` says that the member knows no leader of the group.
  private static func knowsNoLeader(_ reply: HostReply) -> Bool {
    guard case .failure(let failure) = reply, case .consensus(.notLeader(nil)) = failure.error else { return false }
    return true
  }

  /// The reply for a request that failed with `error`.
  private func failure(_ error: any Error) -> HostReply {
    guard let error = error as? ConsensusError else { return .failure(HostFailure(.consensus(.stopped))) }
    if case .notLeader(let hint?) = error {
      return .failure(HostFailure(.consensus(error), leaderAddress: addressOf(hint)))
    }
    return .failure(HostFailure(.consensus(error)))
  }

  /// Answers a command or a query without suspending: checks it as ``handle(_:principal:role:)`` does and hands
  /// it to its group's replica, whose loop calls `respond` with the reply once it is applied or read. `false`
  /// for every other request, which needs ``handle(_:principal:role:)``.
  public func handleWithoutSuspending(
    _ request: HostRequest, principal: String?, role: ClientRole, respond: @escaping @Sendable (HostReply) -> Void
  ) -> Bool {
    switch request {
    case .command, .query: break
    default: return false
    }
    guard role >= request.neededRole else { return false }  // Refused (and logged) by the general path.
    guard let id = request.group, let spec = map.group(id) else {
      respond(.failure(HostFailure(.unknownGroup(request.group ?? .default))))
      return true
    }
    guard let group = groups[id] else {
      respond(.failure(HostFailure(.notHosted(id, members: spec.members))))
      return true
    }
    let answered: @Sendable (Result<IndexedRead<ServiceAnswer>, any Error>) -> Void = { [self] result in
      switch result {
      case .success(let answer): respond(reply(answer.value, index: answer.index, group: id))
      case .failure(let error):
        let answer = failure(error)
        guard Self.knowsNoLeader(answer) else {
          respond(answer)
          return
        }
        // Rare (no leader known here): the configuration is asked for off the replica's loop.
        runtime.detached { respond(await self.redirectingIfRemoved(answer, group: group, id: id)) }
      }
    }
    switch request {
    case .command(_, let command, let request, let acknowledged):
      if let refusal = refusal(of: command, in: spec) {
        respond(.failure(HostFailure(refusal)))
        return true
      }
      group.propose(
        command, request: request, acknowledgedThrough: acknowledged, principal: principal, completion: answered)
    case .query(_, let service, let payload, let consistency, let atLeast):
      if let refusal = refusal(ofQuery: payload, service: service, in: spec) {
        respond(.failure(HostFailure(refusal)))
        return true
      }
      group.read(
        ServiceQuery(service: service, payload: payload), consistency: consistency, atLeast: atLeast,
        completion: answered)
    default:
      return false
    }
    return true
  }

  /// The cluster map with every member's address as the transport knows it now (a member listening on port 0, a
  /// cluster file that changed).
  private var currentMap: ClusterMap {
    var current = map
    for id in map.members.keys { if let address = addressOf(id) { current.members[id] = address } }
    for (id, address) in addressBook?() ?? [:] { current.members[id] = address }
    return current
  }

  /// Why `command` must not go to `group`: an unknown service, a key of another group, a payload that does not
  /// decode, or a full disk (unless the command frees space).
  private func refusal(of command: ServiceCommand, in group: GroupSpec) -> HostError? {
    check(service: command.service, in: group, key: catalog.definitions[command.service]?.commandKey(command.payload))
      ?? spaceRefusal(service: command.service, payload: command.payload)
  }

  /// Why the query `payload` of `service` must not go to `group`.
  private func refusal(ofQuery payload: [UInt8], service: String, in group: GroupSpec) -> HostError? {
    check(service: service, in: group, key: catalog.definitions[service]?.queryKey(payload))
  }

  /// Why a request for `service` about `key` must not go to `group`, if it must not.
  private func check(service: String, in group: GroupSpec, key: ServiceDefinition.RoutingKey?) -> HostError? {
    guard group.services.contains(service), let key else { return .unknownService(service, group: group.id) }
    switch key {
    case .unkeyed:
      return nil
    case .undecodable(let why):
      return .malformed("\(service) payload: \(why)")
    case .notFromClients(let command):
      return .malformed("\(service): '\(command)' is proposed by the group's leader, never by a client")
    case .keys(let keys):
      for key in keys {
        if let owner = placement.owner(of: key, service: service), owner != group.id {
          return .wrongGroup(key: key, service: service, owner: owner)
        }
      }
      return nil
    }
  }

  private func reply(_ answer: ServiceAnswer, index: UInt64, group: GroupID) -> HostReply {
    switch answer {
    case .ok(let bytes): return .answer(bytes, index: index)
    case .unknownService(let name): return .failure(HostFailure(.unknownService(name, group: group)))
    case .malformed(let why): return .failure(HostFailure(.malformed(why)))
    }
  }

  /// Decodes a request, answers it as an administrator with no principal (a client in this process), and encodes
  /// the reply.
  public func handle(bytes: [UInt8]) async -> [UInt8] {
    await handle(bytes: bytes, principal: nil, role: .admin)
  }

  /// Decodes a request from `principal` holding `role`, answers it (see ``handle(_:principal:role:)``), and
  /// encodes the reply — what a transport's request handler calls with what the handshake authenticated. A reply
  /// longer than ``maxReplyBytes`` is replaced by ``HostError/replyTooLarge(bytes:limit:)``.
  ///
  /// Commands and queries take the path of ``handleWithoutSuspending(bytes:principal:role:respond:)`` (the one
  /// a TCP server takes from its network thread), so every caller — in-process clients, the simulator — runs it.
  public func handle(bytes: [UInt8], principal: String?, role: ClientRole) async -> [UInt8] {
    let direct: [UInt8]? = await withUnsafeContinuation { continuation in
      // The replica calls `respond` exactly once for a request it took (its answer, or the error that ended it).
      let taken = handleWithoutSuspending(bytes: bytes, principal: principal, role: role) {
        continuation.resume(returning: $0)
      }
      if !taken { continuation.resume(returning: nil) }
    }
    if let direct { return direct }
    let reply: HostReply
    do {
      reply = await handle(try HostRequest(wireBytes: bytes), principal: principal, role: role)
    } catch {
      reply = .failure(HostFailure(.malformed("\(error)")))
    }
    return encode(reply)
  }

  /// Like ``handle(bytes:principal:role:)`` for the requests ``handleWithoutSuspending(_:principal:role:respond:)``
  /// answers (commands and queries): decodes the request, hands it on and returns `true`; `respond` is called
  /// with the encoded reply later, on the group's loop. `false` (nothing done) for any other request, and for
  /// bytes that do not decode: ``handle(bytes:principal:role:)`` answers those.
  public func handleWithoutSuspending(
    bytes: [UInt8], principal: String?, role: ClientRole, respond: @escaping @Sendable ([UInt8]) -> Void
  ) -> Bool {
    guard let request = try? HostRequest(wireBytes: bytes) else { return false }
    return handleWithoutSuspending(request, principal: principal, role: role) { [self] reply in
      respond(encode(reply))
    }
  }

  /// `reply` encoded, or ``HostError/replyTooLarge(bytes:limit:)`` if it is longer than ``maxReplyBytes``.
  private func encode(_ reply: HostReply) -> [UInt8] {
    let encoded = reply.wireBytes(reservingCapacity: 64)
    guard encoded.count > maxReplyBytes else { return encoded }
    return HostReply.failure(HostFailure(.replyTooLarge(bytes: encoded.count, limit: maxReplyBytes))).wireBytes()
  }
}
