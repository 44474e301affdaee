import Foundation
import QuorumCore
import QuorumKV
import QuorumRaft
import QuorumStorage

/// The Raft part of `quorum demo`: a 3-node in-process cluster, narrated.
enum RaftDemo {
  typealias Node = RaftNode<KVStore>

  /// The in-process cluster the demo drives.
  actor Cluster {
    let transport = InProcessTransport<RaftMessage>()
    let configuration: RaftConfiguration
    var nodes: [NodeID: Node] = [:]
    var tasks: [NodeID: Task<Void, any Error>] = [:]
    var storages: [NodeID: MemoryStorage<LogEntry>] = [:]

    init(configuration: RaftConfiguration) { self.configuration = configuration }

    func start(_ id: NodeID) throws {
      let storage = storages[id] ?? MemoryStorage<LogEntry>()
      storages[id] = storage
      let node = Node(
        id: id, configuration: configuration, endpoint: try transport.bind(id), storage: storage, machine: KVStore(),
        logger: QuorumLogger(label: "raft", sink: StderrLogSink(minimumLevel: .error)))
      nodes[id] = node
      tasks[id] = Task { try await node.run() }
    }

    func stop(_ id: NodeID) async {
      nodes[id]?.stop()
      _ = await tasks[id]?.result
      tasks[id] = nil
    }

    func stopAll() async {
      for id in nodes.keys.sorted() { await stop(id) }
    }

    func running() -> [NodeID: Node] { nodes.filter { tasks[$0.key] != nil } }

    /// The node that is leader with a quorum behind it, among `among` (all running nodes by default).
    func leader(among: Set<NodeID>? = nil, timeout: Duration = .seconds(10)) async throws -> NodeID {
      let deadline = ContinuousClock.now.advanced(by: timeout)
      while ContinuousClock.now < deadline {
        for (id, node) in running() where among?.contains(id) ?? true {
          let s = await node.status
          if s.role == .leader && s.commitIndex >= s.lastIndex && s.commitIndex > 0 { return id }
        }
        try await Task.sleep(for: .milliseconds(2))
      }
      throw ConsensusError.timeout
    }
  }

  static func ms(_ d: Duration) -> String {
    String(format: "%.0f ms", Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15)
  }

  static func text(_ bytes: [UInt8]?) -> String {
    bytes.map { "\"\(String(decoding: $0, as: UTF8.self))\"" } ?? "absent"
  }

  static func run(quick: Bool) async throws {
    let ids: [NodeID] = [1, 2, 3]
    let configuration = try RaftConfiguration {
      Members(ids)
      ElectionTimeout(Duration.milliseconds(150)...Duration.milliseconds(300))
      HeartbeatInterval(.milliseconds(50))
      LeaseReads(clockDriftBound: .milliseconds(15))
      RequestLimits(timeout: .seconds(2))
    }
    print("== Raft: three nodes on the in-process transport")
    print("   election timeout 150–300 ms, heartbeat 50 ms, pre-vote and check-quorum on")
    let cluster = Cluster(configuration: configuration)
    let began = ContinuousClock.now
    for id in ids { try await cluster.start(id) }
    let first = try await cluster.leader()
    let firstTerm = await cluster.nodes[first]?.status.term ?? 0
    print("-> \(first) elected leader of term \(firstTerm) after \(ms(ContinuousClock.now - began))")

    let members = await cluster.nodes
    let client = KVClient(members: members)
    let writes = quick ? 50 : 200
    let writeStart = ContinuousClock.now
    for i in 0..<writes { try await client.put("key-\(i)", "value-\(i)") }
    let writeTime = ContinuousClock.now - writeStart
    print(
      "-> \(writes) writes committed one after another in \(ms(writeTime)) (exactly-once, each acknowledged by a majority)"
    )

    print("\n== Crash the leader")
    let crashAt = ContinuousClock.now
    await cluster.stop(first)
    print("-> \(first) stopped; the others stop hearing heartbeats")
    let failoverClient = KVClient(members: await cluster.running())
    try await failoverClient.put("after-failover", "yes")
    let failover = ContinuousClock.now - crashAt
    let second = try await cluster.leader()
    let secondTerm = await cluster.nodes[second]?.status.term ?? 0
    print("-> \(second) leads term \(secondTerm); first write committed \(ms(failover)) after the crash")

    var missing = 0
    for i in 0..<writes
    where try await failoverClient.get("key-\(i)", consistency: .linearizable) != Array("value-\(i)".utf8) {
      missing += 1
    }
    print("-> re-read all \(writes) writes with linearizable reads on the new leader: \(missing) missing")

    try await cluster.start(first)
    print("-> \(first) restarts from its storage and rejoins as a follower")
    try await Task.sleep(for: .milliseconds(300))

    print("\n== Partition: CAP made visible")
    let leader = try await cluster.leader()
    let isolated: NodeID = ids.first { $0 != leader } ?? 1
    let allNodes = await cluster.nodes
    // Written through the leader, remembering the log position: what a client's session carries to later reads.
    let written = try await allNodes[leader]?.propose(
      .put(key: "x", value: Array("before the partition".utf8)), request: nil, acknowledgedThrough: 0, indexed: ())
    try await Task.sleep(for: .milliseconds(100))
    cluster.transport.isolate(isolated)
    print("-> \(isolated) is cut off from the others (a minority of one)")
    let majority = allNodes.filter { $0.key != isolated }
    let majorityClient = KVClient(members: majority)
    try await majorityClient.put("x", "written in the majority")
    print("-> the majority still commits writes: x = \"written in the majority\"")
    let minorityNode = allNodes[isolated]
    do {
      _ = try await minorityNode?.propose(.put(key: "x", value: Array("written in the minority".utf8)))
      print("!! the minority accepted a write (this must not happen)")
    } catch {
      print("-> a write sent to \(isolated) is refused: \(error)")
    }
    do {
      _ = try await minorityNode?.read(.get(key: "x"), consistency: .linearizable)
      print("!! the minority answered a linearizable read (this must not happen)")
    } catch {
      print("-> a linearizable read on \(isolated) is refused: \(error)   (consistency over availability)")
    }
    let session = try await minorityNode?.read(.get(key: "x"), consistency: .session, atLeast: written?.index ?? 0)
    if case .value(let value)? = session?.value {
      print(
        "-> a session read on \(isolated) by the client that wrote x at index \(written?.index ?? 0) answers: "
          + "x = \(text(value))   (its own writes, no leader needed)")
    }
    let stale = try await minorityNode?.read(.get(key: "x"), consistency: .stale)
    if case .value(let value)? = stale {
      print("-> a stale read on \(isolated) still answers: x = \(text(value))   (availability, possibly stale)")
    }
    cluster.transport.heal()
    print("\n== Heal")
    let deadline = ContinuousClock.now.advanced(by: .seconds(5))
    var healedValue: [UInt8]?
    while ContinuousClock.now < deadline {
      if case .value(let v)? = await minorityNode?.localQuery(.get(key: "x")),
        v == Array("written in the majority".utf8)
      {
        healedValue = v
        break
      }
      try await Task.sleep(for: .milliseconds(10))
    }
    print("-> \(isolated) catches up: x = \(text(healedValue))")
    let finalLeader = try await cluster.leader()
    let status = await cluster.nodes[finalLeader]?.status
    print(
      "-> leader \(finalLeader), term \(status?.term ?? 0), commit index \(status?.commitIndex ?? 0), "
        + "members \(status?.membership.description ?? "")")
    await cluster.stopAll()
  }
}
