import Foundation
import QuorumCore
import QuorumKV
import QuorumRaft
import QuorumStorage
import Testing

/// Real `RaftNode` actors on the in-process transport, with real (short) timeouts.
actor LiveCluster {
  let transport = InProcessTransport<RaftMessage>()
  let configuration: RaftConfiguration
  private(set) var nodes: [NodeID: RaftNode<KVStore>] = [:]
  private var tasks: [NodeID: Task<Void, any Error>] = [:]
  private var storages: [NodeID: any ConsensusStorage<LogEntry>] = [:]

  init(configuration: RaftConfiguration) {
    self.configuration = configuration
  }

  static func fast(members: [NodeID], _ extra: (inout RaftConfiguration) -> Void = { _ in }) throws -> RaftConfiguration
  {
    var c = try RaftConfiguration {
      Members(members)
      TickInterval(.milliseconds(5))
      ElectionTimeout(Duration.milliseconds(60)...Duration.milliseconds(120))
      HeartbeatInterval(.milliseconds(15))
      LeaseReads(clockDriftBound: .milliseconds(10))
      RequestLimits(timeout: .seconds(5))
    }
    extra(&c)
    try c.validate()
    return c
  }

  func start(_ id: NodeID, storage: (any ConsensusStorage<LogEntry>)? = nil, configuration: RaftConfiguration? = nil)
    throws
  {
    let storage = storage ?? storages[id] ?? MemoryStorage<LogEntry>()
    storages[id] = storage
    let endpoint = try transport.bind(id)
    let node = RaftNode(
      id: id, configuration: configuration ?? self.configuration, endpoint: endpoint, storage: storage,
      machine: KVStore(), seed: id.rawValue &* 7919, logger: QuorumLogger(label: "raft", sink: NullLogSink()))
    nodes[id] = node
    tasks[id] = Task { try await node.run() }
  }

  /// Stops a node as a crash would, from the others' point of view: it stops answering at once.
  func stop(_ id: NodeID) async {
    nodes[id]?.stop()
    _ = await tasks[id]?.result
    tasks[id] = nil
    nodes[id] = nil
  }

  func stopAll() async {
    for id in Array(nodes.keys) { await stop(id) }
  }

  func node(_ id: NodeID) -> RaftNode<KVStore>? { nodes[id] }

  /// Waits (at most `timeout`) until exactly one running node is leader and a majority agree on it.
  func leader(timeout: Duration = .seconds(10)) async throws -> NodeID {
    let deadline = ContinuousClock.now.advanced(by: timeout)
    while ContinuousClock.now < deadline {
      var leaders: [NodeID] = []
      var agree: [NodeID: Int] = [:]
      for (_, node) in nodes {
        let s = await node.status
        if s.role == .leader { leaders.append(s.id) }
        if let l = s.leader { agree[l, default: 0] += 1 }
      }
      if leaders.count == 1, let l = leaders.first, agree[l, default: 0] * 2 > nodes.count,
        let s = await nodes[l]?.status, s.commitIndex >= s.lastIndex, s.commitIndex > 0
      {
        return l
      }
      try await Task.sleep(for: .milliseconds(5))
    }
    throw ConsensusError.timeout
  }
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

/// Retries a request on whichever node is leader, as a client would, for at most `timeout`.
func withLeader<T: Sendable>(
  _ cluster: LiveCluster, timeout: Duration = .seconds(10), _ body: @Sendable (RaftNode<KVStore>) async throws -> T
) async throws -> T {
  let deadline = ContinuousClock.now.advanced(by: timeout)
  while true {
    do {
      let id = try await cluster.leader(timeout: timeout)
      guard let node = await cluster.node(id) else { continue }
      return try await body(node)
    } catch let error as ConsensusError {
      if ContinuousClock.now > deadline { throw error }
      try await Task.sleep(for: .milliseconds(10))
    }
  }
}

func tempDirectory(_ name: String) -> String {
  let path = FileManager.default.temporaryDirectory.appendingPathComponent("quorum-\(name)-\(UUID().uuidString)").path
  try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
  return path
}

@Suite("RaftNode actors on the in-process transport", .timeLimit(.minutes(2)))
struct RaftNodeTests {
  @Test("a 3-node cluster elects a leader, applies writes on every node, and serves all three read levels")
  func basicCluster() async throws {
    let cluster = LiveCluster(configuration: try LiveCluster.fast(members: [1, 2, 3]))
    for id: NodeID in [1, 2, 3] { try await cluster.start(id) }
    let leaderID = try await cluster.leader()
    let leader = try #require(await cluster.node(leaderID))
    for i in 0..<20 {
      _ = try await leader.propose(.put(key: "k\(i)", value: bytes("v\(i)")))
    }
    for level in ReadConsistency.allCases where level != .stale {
      #expect(try await leader.read(.get(key: "k7"), consistency: level) == .value(bytes("v7")))
    }
    // Followers: linearizable reads and proposals are refused with a hint; stale reads answer locally.
    let followerID: NodeID = leaderID == 1 ? 2 : 1
    let follower = try #require(await cluster.node(followerID))
    await #expect(throws: ConsensusError.notLeader(hint: leaderID)) {
      _ = try await follower.propose(.put(key: "x", value: [1]))
    }
    await #expect(throws: ConsensusError.notLeader(hint: leaderID)) {
      _ = try await follower.read(.get(key: "k1"), consistency: .linearizable)
    }
    let deadline = ContinuousClock.now.advanced(by: .seconds(5))
    while await follower.status.appliedIndex < leader.status.commitIndex, ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(5))
    }
    #expect(try await follower.read(.get(key: "k19"), consistency: .stale) == .value(bytes("v19")))
    await cluster.stopAll()
  }

  @Test("when the leader fails, another is elected and no acknowledged write is lost")
  func failover() async throws {
    let cluster = LiveCluster(configuration: try LiveCluster.fast(members: [1, 2, 3]))
    for id: NodeID in [1, 2, 3] { try await cluster.start(id) }
    let first = try await cluster.leader()
    let node = try #require(await cluster.node(first))
    for i in 0..<10 { _ = try await node.propose(.put(key: "a\(i)", value: bytes("\(i)"))) }
    await cluster.stop(first)
    let second = try await cluster.leader()
    #expect(second != first)
    for i in 0..<10 {
      let value = try await withLeader(cluster) { try await $0.read(.get(key: "a\(i)"), consistency: .linearizable) }
      #expect(value == .value(bytes("\(i)")))
    }
    _ = try await withLeader(cluster) { try await $0.propose(.put(key: "after", value: [1])) }
    // The old leader rejoins as a follower and catches up.
    try await cluster.start(first)
    let deadline = ContinuousClock.now.advanced(by: .seconds(5))
    while await cluster.node(first)?.localQuery(.get(key: "after")) != .value([1]), ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(5))
    }
    #expect(await cluster.node(first)?.localQuery(.get(key: "after")) == .value([1]))
    await cluster.stopAll()
  }

  @Test("a whole cluster restarted from file storage keeps every acknowledged write")
  func restartFromFiles() async throws {
    let dirs = [NodeID(1), 2, 3].map { ($0, tempDirectory("restart-\($0)")) }
    defer { for (_, d) in dirs { try? FileManager.default.removeItem(atPath: d) } }
    let configuration = try LiveCluster.fast(members: [1, 2, 3]) {
      $0.snapshotEvery = 15
      $0.snapshotRetainEntries = 3
    }
    var acknowledged: [String: [UInt8]] = [:]
    do {
      let cluster = LiveCluster(configuration: configuration)
      var storages: [NodeID: FileStorage<LogEntry>] = [:]
      for (id, dir) in dirs {
        storages[id] = FileStorage<LogEntry>(directory: dir)
        try await cluster.start(id, storage: storages[id])
      }
      for i in 0..<40 {
        let key = "k\(i % 13)"
        let value = bytes("v\(i)")
        _ = try await withLeader(cluster) { try await $0.propose(.put(key: key, value: value)) }
        acknowledged[key] = value
      }
      await cluster.stopAll()
      for storage in storages.values { try await storage.close() }
    }
    let cluster = LiveCluster(configuration: configuration)
    var storages: [FileStorage<LogEntry>] = []
    for (id, dir) in dirs {
      let storage = FileStorage<LogEntry>(directory: dir)
      storages.append(storage)
      try await cluster.start(id, storage: storage)
    }
    for (key, value) in acknowledged {
      let read = try await withLeader(cluster) { try await $0.read(.get(key: key), consistency: .linearizable) }
      #expect(read == .value(value), "\(key)")
    }
    let leaderNode = try #require(await cluster.node(try await cluster.leader()))
    #expect(await leaderNode.status.snapshotIndex > 0, "snapshots were taken and reloaded")
    await cluster.stopAll()
    for storage in storages { try await storage.close() }
  }

  @Test("a follower that missed many entries catches up from a snapshot")
  func snapshotCatchUp() async throws {
    let configuration = try LiveCluster.fast(members: [1, 2, 3]) {
      $0.snapshotEvery = 20
      $0.snapshotRetainEntries = 2
      $0.snapshotChunkBytes = 64
    }
    let cluster = LiveCluster(configuration: configuration)
    for id: NodeID in [1, 2, 3] { try await cluster.start(id) }
    let leaderID = try await cluster.leader()
    let lagging: NodeID = leaderID == 3 ? 2 : 3
    await cluster.stop(lagging)
    for i in 0..<100 {
      _ = try await withLeader(cluster) { try await $0.propose(.put(key: "k\(i)", value: bytes("value-\(i)"))) }
    }
    try await cluster.start(lagging)
    let node = try #require(await cluster.node(lagging))
    let deadline = ContinuousClock.now.advanced(by: .seconds(10))
    while await node.localQuery(.get(key: "k99")) != .value(bytes("value-99")), ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(5))
    }
    #expect(await node.localQuery(.count) == .count(100))
    #expect(await node.status.snapshotIndex > 0)
    await cluster.stopAll()
  }

  @Test("membership: a new node joins as a learner, is promoted, and a voter is removed")
  func membership() async throws {
    let configuration = try LiveCluster.fast(members: [1, 2, 3])
    let cluster = LiveCluster(configuration: configuration)
    for id: NodeID in [1, 2, 3] { try await cluster.start(id) }
    _ = try await withLeader(cluster) { try await $0.propose(.put(key: "before", value: [1])) }
    var joining = configuration
    joining.members = []
    try await cluster.start(4, configuration: joining)
    try await withLeader(cluster) { try await $0.addLearner(4) }
    try await withLeader(cluster) { try await $0.addVoter(4) }
    let status = try await withLeader(cluster) { await $0.status }
    #expect(status.membership == Membership(voters: [1, 2, 3, 4]))
    let removed: NodeID = status.id == 1 ? 2 : 1
    try await withLeader(cluster) { try await $0.removeMember(removed) }
    let after = try await withLeader(cluster) { await $0.status }
    #expect(after.membership.voters == Set([1, 2, 3, 4]).subtracting([removed]))
    let node4 = try #require(await cluster.node(4))
    #expect(await node4.localQuery(.get(key: "before")) == .value([1]))
    await cluster.stopAll()
  }

  @Test("leadership transfer hands over to the chosen voter")
  func transfer() async throws {
    let cluster = LiveCluster(configuration: try LiveCluster.fast(members: [1, 2, 3]))
    for id: NodeID in [1, 2, 3] { try await cluster.start(id) }
    let first = try await cluster.leader()
    let target: NodeID = first == 3 ? 1 : 3
    try await #require(await cluster.node(first)).transferLeadership(to: target)
    #expect(try await cluster.leader() == target)
    await cluster.stopAll()
  }

  @Test("exactly-once: a retried request with the same id is applied once")
  func exactlyOnce() async throws {
    let cluster = LiveCluster(configuration: try LiveCluster.fast(members: [1, 2, 3]))
    for id: NodeID in [1, 2, 3] { try await cluster.start(id) }
    let leader = try #require(await cluster.node(try await cluster.leader()))
    let session = try await leader.registerSession()
    let request = RequestID(session: session, sequence: 1)
    let first = try await leader.propose(.compareAndSwap(key: "c", expected: nil, new: [1]), request: request)
    let retry = try await leader.propose(.compareAndSwap(key: "c", expected: nil, new: [1]), request: request)
    #expect(first == .swapped(true, current: [1]))
    #expect(retry == first, "the retry returns the remembered response instead of failing the comparison")
    await cluster.stopAll()
  }

  @Test("requests to a stopped node fail with stopped")
  func stoppedNode() async throws {
    let cluster = LiveCluster(configuration: try LiveCluster.fast(members: [1]))
    try await cluster.start(1)
    let node = try #require(await cluster.node(1))
    _ = try await cluster.leader()
    await cluster.stop(1)
    await #expect(throws: ConsensusError.stopped) { _ = try await node.propose(.delete(key: "x")) }
  }
}

@Suite("RaftConfiguration validation")
struct RaftConfigurationTests {
  func error(_ build: () throws -> RaftConfiguration) -> ConfigurationError? {
    do {
      _ = try build()
      return nil
    } catch {
      return error as? ConfigurationError
    }
  }

  @Test("the DSL builds a valid configuration and converts durations to ticks")
  func valid() throws {
    let c = try RaftConfiguration {
      Members(1, 2, 3)
      ElectionTimeout(Duration.milliseconds(150)...Duration.milliseconds(300))
      HeartbeatInterval(.milliseconds(50))
      if Bool.random() { PreVote(true) } else { PreVote(true) }
    }
    #expect(c.coreOptions.electionTimeoutMinTicks == 15)
    #expect(c.coreOptions.electionTimeoutMaxTicks == 30)
    #expect(c.coreOptions.heartbeatTicks == 5)
    #expect(c.coreOptions.leaseDurationNanos == 125_000_000)  // 15 ticks - 1, minus the 15 ms drift bound
  }

  @Test("each invalid setting is named in the error")
  func invalid() {
    #expect(error { try RaftConfiguration { Members(1, 2, 2) } }?.setting == "Members")
    #expect(error { try RaftConfiguration { Members(0, 1) } }?.setting == "Members")
    #expect(error { try RaftConfiguration { Learners(4) } }?.setting == "Members")
    #expect(
      error {
        try RaftConfiguration {
          Members(1, 2)
          Learners(2)
        }
      }?.setting == "Learners")
    #expect(error { try RaftConfiguration { HeartbeatInterval(.milliseconds(100)) } }?.setting == "HeartbeatInterval")
    #expect(
      error { try RaftConfiguration { ElectionTimeout(Duration.milliseconds(150)...Duration.milliseconds(150)) } }?
        .setting == "ElectionTimeout")
    #expect(error { try RaftConfiguration { LeaseReads(clockDriftBound: .seconds(1)) } }?.setting == "LeaseReads")
    #expect(error { try RaftConfiguration { CheckQuorum(false) } }?.setting == "LeaseReads")
    #expect(error { try RaftConfiguration { FlowControl(maxInflightMessages: 0) } }?.setting == "MaxInflightMessages")
    #expect(error { try RaftConfiguration { TickInterval(.milliseconds(60)) } }?.setting == "ElectionTimeout")
  }
}
