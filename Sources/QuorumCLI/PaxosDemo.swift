import Foundation
import QuorumCore
import QuorumKV
import QuorumPaxos
import QuorumStorage

/// The Paxos part of `quorum demo`: three proposers racing for one value, then the key-value store on
/// Multi-Paxos, narrated.
enum PaxosDemo {
  typealias Node = MultiPaxosNode<KVStore>

  /// The in-process Multi-Paxos group the demo drives.
  actor Cluster {
    let transport = InProcessTransport<PaxosMessage>()
    let configuration: PaxosConfiguration
    var nodes: [NodeID: Node] = [:]
    var tasks: [NodeID: Task<Void, any Error>] = [:]
    var storages: [NodeID: MemoryStorage<PaxosEntry>] = [:]

    init(configuration: PaxosConfiguration) { self.configuration = configuration }

    func start(_ id: NodeID) throws {
      let storage = storages[id] ?? MemoryStorage<PaxosEntry>(mode: .replace)
      storages[id] = storage
      let node = Node(
        id: id, configuration: configuration, endpoint: try transport.bind(id), storage: storage, machine: KVStore(),
        logger: QuorumLogger(label: "paxos", sink: StderrLogSink(minimumLevel: .error)))
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

    /// The running node that leads and has chosen every slot it holds.
    func leader(timeout: Duration = .seconds(10)) async throws -> NodeID {
      let deadline = ContinuousClock.now.advanced(by: timeout)
      while ContinuousClock.now < deadline {
        for (id, node) in running() {
          let s = await node.status
          if s.role == .leader && s.chosenThrough >= s.lastSlot { return id }
        }
        try await Task.sleep(for: .milliseconds(2))
      }
      throw ConsensusError.timeout
    }
  }

  static func run(quick: Bool) async throws {
    try await race()
    try await keyValue(quick: quick)
  }

  /// Three proposers race for one value.
  static func race() async throws {
    print("\n== Paxos, single decree: three proposers race for one value")
    print("   acceptors n1 n2 n3 (majority quorums); proposers n11 n12 n13; learners n21 n22")
    let configuration = try PaxosConfiguration {
      Members(1, 2, 3)
      TickInterval(.milliseconds(2))
      Retransmit(after: .milliseconds(10))
      ProposerBackoff(initial: .milliseconds(4), maximum: .milliseconds(40))
    }
    let proposals: [(NodeID, String)] = [(11, "red"), (12, "green"), (13, "blue")]
    let began = ContinuousClock.now
    try await Synod<String>.withInProcess(
      configuration: configuration, proposers: proposals.map(\.0), learners: [21, 22]
    ) { synod in
      synod.transport.isolate(22)
      let results = try await withThrowingTaskGroup(of: (NodeID, String).self) { group in
        for (proposer, value) in proposals {
          group.addTask { (proposer, try await synod.propose(value, via: proposer)) }
        }
        var results: [NodeID: String] = [:]
        for try await (proposer, chosen) in group { results[proposer] = chosen }
        return results
      }
      let elapsed = ContinuousClock.now - began
      var ballots = 0
      for proposer in proposals.map(\.0) { ballots += await synod.proposers[proposer]?.ballotsStarted ?? 0 }
      for (proposer, value) in proposals {
        print("-> \(proposer) proposed \"\(value)\" and was told: \"\(results[proposer] ?? "?")\" is chosen")
      }
      let distinct = Set(results.values)
      print(
        "-> \(distinct.count == 1 ? "one value chosen" : "!! \(distinct.count) values (this must not happen)") "
          + "after \(ballots) ballots in \(RaftDemo.ms(elapsed)); the losers adopted the winner's value")
      let learned = try await synod.learnedValue(at: 21)
      print("-> learner n21 learned it from the acceptances: \"\(learned)\"")
      synod.transport.heal()
      let late = try await synod.learnedValue(at: 22)
      print("-> learner n22 was cut off during the race; it asks the acceptors and learns \"\(late)\"")
    }
  }

  /// The key-value store, unchanged, on Multi-Paxos.
  static func keyValue(quick: Bool) async throws {
    let ids: [NodeID] = [1, 2, 3]
    let configuration = try PaxosConfiguration {
      Members(ids)
      ElectionTimeout(Duration.milliseconds(150)...Duration.milliseconds(300))
      HeartbeatInterval(.milliseconds(50))
      LeaseReads(clockDriftBound: .milliseconds(15))
      RequestLimits(timeout: .seconds(2))
    }
    print("\n== Multi-Paxos: the same key-value store and client, on another consensus engine")
    print("   3 nodes, phase-1 and phase-2 quorums of 2, election timeout 150–300 ms, heartbeat 50 ms")
    let cluster = Cluster(configuration: configuration)
    let began = ContinuousClock.now
    for id in ids { try await cluster.start(id) }
    let first = try await cluster.leader()
    let ballot = await cluster.nodes[first]?.status.ballot.description ?? "?"
    print(
      "-> \(first) ran phase 1 once for every future slot and leads in \(ballot) after \(RaftDemo.ms(ContinuousClock.now - began))"
    )

    let client = KVClient(members: await cluster.nodes)
    let writes = quick ? 50 : 200
    let writeStart = ContinuousClock.now
    for i in 0..<writes { try await client.put("key-\(i)", "value-\(i)") }
    print(
      "-> \(writes) writes through KVClient in \(RaftDemo.ms(ContinuousClock.now - writeStart)) "
        + "(phase 2 only: one round trip to a quorum per batch of slots)")

    print("\n== Crash the leader")
    let crashAt = ContinuousClock.now
    await cluster.stop(first)
    let failoverClient = KVClient(members: await cluster.running())
    try await failoverClient.put("after-failover", "yes")
    let second = try await cluster.leader()
    let status = await cluster.nodes[second]?.status
    print(
      "-> \(second) ran phase 1 over the unfinished slots (re-proposing what was accepted, no-ops in gaps) and "
        + "leads in \(status?.ballot.description ?? "?"); first write \(RaftDemo.ms(ContinuousClock.now - crashAt)) "
        + "after the crash")
    var missing = 0
    for i in 0..<writes
    where try await failoverClient.get("key-\(i)", consistency: .linearizable) != Array("value-\(i)".utf8) {
      missing += 1
    }
    print("-> re-read all \(writes) writes with linearizable reads (a heartbeat round per read): \(missing) missing")
    let lease = try await failoverClient.get("after-failover", consistency: .lease)
    print("-> a lease read answers without a round trip: after-failover = \(RaftDemo.text(lease))")
    try await cluster.start(first)
    let rejoined = await cluster.nodes[first]
    let deadline = ContinuousClock.now.advanced(by: .seconds(5))
    while ContinuousClock.now < deadline,
      await rejoined?.localQuery(.get(key: "after-failover")) != .value(Array("yes".utf8))
    {
      try await Task.sleep(for: .milliseconds(10))
    }
    let caughtUp = await rejoined?.localQuery(.get(key: "after-failover")) == .value(Array("yes".utf8))
    print("-> \(first) restarts from its storage and \(caughtUp ? "catches up" : "has not caught up yet")")
    await cluster.stopAll()
  }
}
