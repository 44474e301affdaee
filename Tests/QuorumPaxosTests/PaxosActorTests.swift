import Foundation
import QuorumCore
import QuorumKV
import QuorumPaxos
import QuorumStorage
import Testing

/// Real `MultiPaxosNode` actors on the in-process transport, with real (short) timeouts.
actor PaxosLiveCluster {
  let transport = InProcessTransport<PaxosMessage>()
  let configuration: PaxosConfiguration
  private(set) var nodes: [NodeID: MultiPaxosNode<KVStore>] = [:]
  private var tasks: [NodeID: Task<Void, any Error>] = [:]
  private var storages: [NodeID: any ConsensusStorage<PaxosEntry>] = [:]

  init(configuration: PaxosConfiguration) {
    self.configuration = configuration
  }

  static func fast(members: [NodeID], _ extra: (inout PaxosConfiguration) -> Void = { _ in }) throws
    -> PaxosConfiguration
  {
    var c = try PaxosConfiguration {
      Members(members)
      TickInterval(.milliseconds(5))
      ElectionTimeout(Duration.milliseconds(60)...Duration.milliseconds(120))
      HeartbeatInterval(.milliseconds(15))
      Retransmit(after: .milliseconds(20))
      LeaseReads(clockDriftBound: .milliseconds(10))
      RequestLimits(timeout: .seconds(5))
    }
    extra(&c)
    try c.validate()
    return c
  }

  func start(_ id: NodeID, storage: (any ConsensusStorage<PaxosEntry>)? = nil) throws {
    let storage = storage ?? storages[id] ?? MemoryStorage<PaxosEntry>(mode: .replace)
    storages[id] = storage
    let node = MultiPaxosNode(
      id: id, configuration: configuration, endpoint: try transport.bind(id), storage: storage, machine: KVStore(),
      seed: id.rawValue &* 7919, logger: QuorumLogger(label: "paxos", sink: NullLogSink()))
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

  func node(_ id: NodeID) -> MultiPaxosNode<KVStore>? { nodes[id] }

  /// Waits (at most `timeout`) until one running node leads, has chosen everything it holds, and a majority
  /// follows it.
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
        let s = await nodes[l]?.status, s.chosenThrough >= s.lastSlot
      {
        return l
      }
      try await Task.sleep(for: .milliseconds(5))
    }
    throw ConsensusError.timeout
  }
}

/// Retries a request on whichever node leads, as a client would, for at most `timeout`.
func withPaxosLeader<T: Sendable>(
  _ cluster: PaxosLiveCluster, timeout: Duration = .seconds(10),
  _ body: @Sendable (MultiPaxosNode<KVStore>) async throws -> T
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

@Suite("Single-decree Paxos actors", .timeLimit(.minutes(2)))
struct SynodActorTests {
  @Test("three proposers race for one value: every proposer and learner gets the same one")
  func race() async throws {
    let configuration = try PaxosConfiguration {
      Members(1, 2, 3)
      TickInterval(.milliseconds(2))
      Retransmit(after: .milliseconds(10))
      ProposerBackoff(initial: .milliseconds(4), maximum: .milliseconds(40))
    }
    let (results, learned) = try await Synod<String>.withInProcess(
      configuration: configuration, proposers: [11, 12, 13], learners: [21, 22]
    ) { synod in
      let results = try await withThrowingTaskGroup(of: String.self) { group in
        for (proposer, value) in [(NodeID(11), "red"), (12, "green"), (13, "blue")] {
          group.addTask { try await synod.propose(value, via: proposer) }
        }
        var results: [String] = []
        for try await result in group { results.append(result) }
        return results
      }
      var learned: [String] = []
      for learner: NodeID in [21, 22] { learned.append(try await synod.learnedValue(at: learner)) }
      return (results, learned)
    }
    #expect(Set(results).count == 1, "one value is chosen: \(results)")
    #expect(["red", "green", "blue"].contains(results[0]))
    #expect(learned == [results[0], results[0]])
  }

  @Test("a learner cut off while the value was chosen asks and learns it afterwards")
  func lateLearner() async throws {
    let configuration = try PaxosConfiguration {
      Members(1, 2, 3)
      TickInterval(.milliseconds(2))
      Retransmit(after: .milliseconds(10))
    }
    let learned = try await Synod<String>.withInProcess(
      configuration: configuration, proposers: [11], learners: [21, 22]
    ) { synod in
      synod.transport.isolate(22)
      let chosen = try await synod.propose("v", via: 11)
      #expect(await synod.learners[22]?.learned == nil)
      synod.transport.heal()
      #expect(try await synod.learnedValue(at: 22) == chosen)
      return chosen
    }
    #expect(learned == "v")
  }

  @Test("acceptor state survives a restart from file storage: a value once chosen stays chosen")
  func acceptorRestart() async throws {
    let root = tempDirectory("synod")
    defer { try? FileManager.default.removeItem(atPath: root) }
    let configuration = try PaxosConfiguration {
      Members(1, 2, 3)
      TickInterval(.milliseconds(2))
      Retransmit(after: .milliseconds(10))
    }
    let storage: @Sendable (NodeID) -> any ConsensusStorage<PaxosEntry> = { id in
      FileStorage<PaxosEntry>(directory: "\(root)/\(id)", mode: .replace)
    }
    let first = try await Synod<String>.withInProcess(
      configuration: configuration, proposers: [11], learners: [], storage: storage
    ) { try await $0.propose("first", via: 11) }
    // New proposers and learners, the same acceptors' files: the value proposed now is not chosen.
    let second = try await Synod<String>.withInProcess(
      configuration: configuration, proposers: [12], learners: [], storage: storage
    ) { try await $0.propose("second", via: 12) }
    #expect(first == "first")
    #expect(second == "first")
  }

  @Test("overlapping role identifiers are refused, naming the setting")
  func overlappingIDs() async throws {
    let configuration = try PaxosConfiguration { Members(1, 2, 3) }
    await #expect(throws: ConfigurationError.self) {
      try await Synod<String>.withInProcess(configuration: configuration, proposers: [3], learners: []) { _ in 0 }
    }
  }
}

@Suite("MultiPaxosNode actors on the in-process transport", .timeLimit(.minutes(2)))
struct MultiPaxosNodeTests {
  @Test("a 3-node group elects a leader, applies writes everywhere and serves all three read levels")
  func basicCluster() async throws {
    let cluster = PaxosLiveCluster(configuration: try PaxosLiveCluster.fast(members: [1, 2, 3]))
    for id: NodeID in [1, 2, 3] { try await cluster.start(id) }
    let leaderID = try await cluster.leader()
    let leader = try #require(await cluster.node(leaderID))
    for i in 0..<20 { _ = try await leader.propose(.put(key: "k\(i)", value: bytes("v\(i)"))) }
    for level in ReadConsistency.allCases where level != .stale {
      #expect(try await leader.read(.get(key: "k7"), consistency: level) == .value(bytes("v7")))
    }
    let followerID: NodeID = leaderID == 1 ? 2 : 1
    let follower = try #require(await cluster.node(followerID))
    await #expect(throws: ConsensusError.notLeader(hint: leaderID)) {
      _ = try await follower.propose(.put(key: "x", value: [1]))
    }
    await #expect(throws: ConsensusError.notLeader(hint: leaderID)) {
      _ = try await follower.read(.get(key: "k1"), consistency: .linearizable)
    }
    let deadline = ContinuousClock.now.advanced(by: .seconds(5))
    while await follower.status.appliedThrough < leader.status.chosenThrough, ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(5))
    }
    #expect(try await follower.read(.get(key: "k19"), consistency: .stale) == .value(bytes("v19")))
    await cluster.stopAll()
  }

  @Test("the unchanged KVClient runs on Multi-Paxos: exactly-once writes that follow the leader across a failover")
  func kvClientFailover() async throws {
    let cluster = PaxosLiveCluster(configuration: try PaxosLiveCluster.fast(members: [1, 2, 3]))
    for id: NodeID in [1, 2, 3] { try await cluster.start(id) }
    let first = try await cluster.leader()
    let client = KVClient(members: await cluster.nodes, retry: RetryPolicy(maxAttempts: 200), seed: 3)
    for i in 0..<10 { try await client.put("a\(i)", "\(i)") }
    #expect(try await client.compareAndSwap("a1", expected: bytes("1"), new: bytes("one")))
    await cluster.stop(first)
    let survivors = KVClient(members: await cluster.nodes, retry: RetryPolicy(maxAttempts: 200), seed: 4)
    for i in 0..<10 where i != 1 { #expect(try await survivors.get("a\(i)") == bytes("\(i)")) }
    #expect(try await survivors.get("a1") == bytes("one"))
    try await survivors.put("after", "failover")
    #expect(try await survivors.get("after", consistency: .lease) == bytes("failover"))
    // The old leader rejoins as a follower and catches up.
    try await cluster.start(first)
    let rejoined = try #require(await cluster.node(first))
    let deadline = ContinuousClock.now.advanced(by: .seconds(5))
    while await rejoined.localQuery(.get(key: "after")) != .value(bytes("failover")), ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(5))
    }
    #expect(await rejoined.localQuery(.get(key: "after")) == .value(bytes("failover")))
    await cluster.stopAll()
  }

  @Test("a whole group restarted from file storage keeps every acknowledged write")
  func restartFromFiles() async throws {
    let dirs = [NodeID(1), 2, 3].map { ($0, tempDirectory("paxos-restart-\($0)")) }
    defer { for (_, d) in dirs { try? FileManager.default.removeItem(atPath: d) } }
    let configuration = try PaxosLiveCluster.fast(members: [1, 2, 3]) {
      $0.snapshotEvery = 15
      $0.snapshotRetainEntries = 3
    }
    var acknowledged: [String: [UInt8]] = [:]
    do {
      let cluster = PaxosLiveCluster(configuration: configuration)
      var storages: [FileStorage<PaxosEntry>] = []
      for (id, dir) in dirs {
        let storage = FileStorage<PaxosEntry>(directory: dir, mode: .replace)
        storages.append(storage)
        try await cluster.start(id, storage: storage)
      }
      for i in 0..<40 {
        let key = "k\(i % 13)"
        let value = bytes("v\(i)")
        _ = try await withPaxosLeader(cluster) { try await $0.propose(.put(key: key, value: value)) }
        acknowledged[key] = value
      }
      await cluster.stopAll()
      for storage in storages { try await storage.close() }
    }
    let cluster = PaxosLiveCluster(configuration: configuration)
    var storages: [FileStorage<PaxosEntry>] = []
    for (id, dir) in dirs {
      let storage = FileStorage<PaxosEntry>(directory: dir, mode: .replace)
      storages.append(storage)
      try await cluster.start(id, storage: storage)
    }
    for (key, value) in acknowledged {
      let read = try await withPaxosLeader(cluster) { try await $0.read(.get(key: key), consistency: .linearizable) }
      #expect(read == .value(value), "\(key)")
    }
    let leaderNode = try #require(await cluster.node(try await cluster.leader()))
    #expect(await leaderNode.status.snapshotIndex > 0, "snapshots were taken and reloaded")
    await cluster.stopAll()
    for storage in storages { try await storage.close() }
  }

  @Test("a replica that missed many slots catches up from a snapshot")
  func snapshotCatchUp() async throws {
    let configuration = try PaxosLiveCluster.fast(members: [1, 2, 3]) {
      $0.snapshotEvery = 20
      $0.snapshotRetainEntries = 2
      $0.snapshotChunkBytes = 64
    }
    let cluster = PaxosLiveCluster(configuration: configuration)
    for id: NodeID in [1, 2, 3] { try await cluster.start(id) }
    let leaderID = try await cluster.leader()
    let lagging: NodeID = leaderID == 3 ? 2 : 3
    await cluster.stop(lagging)
    for i in 0..<100 {
      _ = try await withPaxosLeader(cluster) { try await $0.propose(.put(key: "k\(i)", value: bytes("value-\(i)"))) }
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

  @Test("flexible quorums: with N=4, Q1=3, Q2=2 writes go on with two nodes down")
  func flexibleQuorums() async throws {
    let configuration = try PaxosLiveCluster.fast(members: [1, 2, 3, 4]) {
      $0.phase1Quorum = 3
      $0.phase2Quorum = 2
    }
    let cluster = PaxosLiveCluster(configuration: configuration)
    for id: NodeID in [1, 2, 3, 4] { try await cluster.start(id) }
    let leaderID = try await cluster.leader()
    let others = [NodeID(1), 2, 3, 4].filter { $0 != leaderID }
    await cluster.stop(others[0])
    await cluster.stop(others[1])
    let leader = try #require(await cluster.node(leaderID))
    _ = try await leader.propose(.put(key: "two", value: [2]))
    #expect(await leader.localQuery(.get(key: "two")) == .value([2]))
    await cluster.stopAll()
  }

  @Test("requests to a stopped node fail with stopped")
  func stoppedNode() async throws {
    let cluster = PaxosLiveCluster(configuration: try PaxosLiveCluster.fast(members: [1]))
    try await cluster.start(1)
    let node = try #require(await cluster.node(1))
    _ = try await cluster.leader()
    await cluster.stop(1)
    await #expect(throws: ConsensusError.stopped) { _ = try await node.propose(.delete(key: "x")) }
  }
}
