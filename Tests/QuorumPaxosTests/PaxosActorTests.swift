import Foundation
import QuorumCore
import QuorumKV
import QuorumPaxos
import QuorumStorage
import Testing

@Suite("Single-decree Paxos actors", .timeLimit(.minutes(2)))
struct SynodActorTests {
  @Test("three proposers race for one value: every proposer and learner gets the same one")
  func race() async throws {
    let configuration = try PaxosConfiguration {
      Members(1, 2, 3)
      TickInterval(.milliseconds(2))
      Retransmit(after: .milliseconds(10))
      RequestLimits(timeout: .seconds(100))  // a bound on failure only: a loaded machine decides slowly
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
      RequestLimits(timeout: .seconds(100))  // a bound on failure only: a loaded machine decides slowly
    }
    let learned = try await Synod<String>.withInProcess(
      configuration: configuration, proposers: [11], learners: [21, 22]
    ) { synod in
      synod.transport.isolate(22)
      let chosen = try await synod.propose("v", via: 11)
      #expect(await (try #require(synod.learners[22])).learned == nil)
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
      RequestLimits(timeout: .seconds(100))  // a bound on failure only: a loaded machine decides slowly
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

/// Asks a node that follows the leader to do what only a leader may, and expects `notLeader` naming that leader.
/// Leadership may move under the question on a busy machine (the follower then names another node, or none):
/// it is asked again, and a node that never names its leader fails the test when the wait ends.
private func expectFollowerRefuses(
  _ cluster: PaxosLiveCluster, _ what: String, _ request: (MultiPaxosNode<KVStore>) async throws -> Void
) async throws {
  var outcome = "nothing yet"
  try await eventually("a follower to refuse \(what) naming its leader (last outcome: \(outcome))") {
    let leader = try await cluster.leader()
    guard let follower = await cluster.follower(of: leader) else { return false }
    do {
      try await request(follower)
      outcome = "node \(follower.id) accepted it"
    } catch let error as ConsensusError {
      if error == .notLeader(hint: leader.id) { return true }
      outcome = "node \(follower.id) answered \(error) while \(leader.id) led ballot \(leader.ballot)"
    }
    return false
  }
}

@Suite("MultiPaxosNode actors on the in-process transport", .timeLimit(.minutes(2)))
struct MultiPaxosNodeTests {
  @Test("a 3-node group elects a leader, applies writes everywhere and serves all three read levels")
  func basicCluster() async throws {
    try await withPaxosCluster(try PaxosLiveCluster.fast(members: [1, 2, 3]), start: [1, 2, 3]) { cluster in
      for i in 0..<20 {
        _ = try await withPaxosLeader(cluster) { try await $0.propose(.put(key: "k\(i)", value: bytes("v\(i)"))) }
      }
      for level in ReadConsistency.allCases where level != .stale {
        let value = try await withPaxosLeader(cluster) { try await $0.read(.get(key: "k7"), consistency: level) }
        #expect(value == .value(bytes("v7")), "\(level)")
      }
      try await expectFollowerRefuses(cluster, "a proposal") { _ = try await $0.propose(.put(key: "x", value: [1])) }
      try await expectFollowerRefuses(cluster, "a linearizable read") {
        _ = try await $0.read(.get(key: "k1"), consistency: .linearizable)
      }
      let latest = try await linearizableRead(cluster, "k19")
      #expect(latest.value == .value(bytes("v19")))
      let follower = try await cluster.node(otherThan: try await cluster.leader().id)
      #expect(try await staleRead(follower, "k19", atLeast: latest.index) == .value(bytes("v19")))
    }
  }

  @Test("the unchanged KVClient runs on Multi-Paxos: exactly-once writes that follow the leader across a failover")
  func kvClientFailover() async throws {
    try await withPaxosCluster(try PaxosLiveCluster.fast(members: [1, 2, 3]), start: [1, 2, 3]) { cluster in
      _ = try await cluster.leader()
      let client = KVClient(members: await cluster.nodes, retry: RetryPolicy(maxAttempts: 200), seed: 3)
      for i in 0..<10 { try await client.put("a\(i)", "\(i)") }
      #expect(try await client.compareAndSwap("a1", expected: bytes("1"), new: bytes("one")).swapped)
      let first = try await cluster.leader()
      await cluster.stop(first.id)
      let survivors = KVClient(members: await cluster.nodes, retry: RetryPolicy(maxAttempts: 200), seed: 4)
      for i in 0..<10 where i != 1 { #expect(try await survivors.get("a\(i)") == bytes("\(i)")) }
      #expect(try await survivors.get("a1") == bytes("one"))
      try await survivors.put("after", "failover")
      #expect(try await survivors.get("after", consistency: .lease) == bytes("failover"))
      let written = try await linearizableRead(cluster, "after")
      // The old leader rejoins as a follower and catches up.
      try await cluster.start(first.id)
      let rejoined = try #require(await cluster.node(first.id))
      #expect(try await staleRead(rejoined, "after", atLeast: written.index) == .value(bytes("failover")))
    }
  }

  @Test("a whole group restarted from file storage keeps every acknowledged write")
  func restartFromFiles() async throws {
    let dirs = [NodeID(1), 2, 3].map { ($0, tempDirectory("paxos-restart-\($0)")) }
    defer { for (_, d) in dirs { try? FileManager.default.removeItem(atPath: d) } }
    let configuration = try PaxosLiveCluster.fast(members: [1, 2, 3]) {
      $0.snapshotEvery = 15
      $0.snapshotRetainEntries = 3
    }
    var storages = dirs.map { FileStorage<PaxosEntry>(directory: $0.1, mode: .replace) }
    let acknowledged = try await withPaxosCluster(configuration, start: []) { cluster in
      for ((id, _), storage) in zip(dirs, storages) { try await cluster.start(id, storage: storage) }
      var acknowledged: [String: [UInt8]] = [:]
      for i in 0..<40 {
        let key = "k\(i % 13)"
        let value = bytes("v\(i)")
        _ = try await withPaxosLeader(cluster) { try await $0.propose(.put(key: key, value: value)) }
        acknowledged[key] = value
      }
      return acknowledged
    }
    for storage in storages { try await storage.close() }
    #expect(acknowledged.count == 13)
    storages = dirs.map { FileStorage<PaxosEntry>(directory: $0.1, mode: .replace) }
    try await withPaxosCluster(configuration, start: []) { cluster in
      for ((id, _), storage) in zip(dirs, storages) { try await cluster.start(id, storage: storage) }
      for (key, value) in acknowledged.sorted(by: { $0.key < $1.key }) {
        let read = try await withPaxosLeader(cluster) {
          try await $0.read(.get(key: key), consistency: .linearizable)
        }
        #expect(read == .value(value), "\(key)")
      }
      let leader = try await cluster.leader()
      #expect(await leader.node.status.snapshotIndex > 0, "snapshots were taken and reloaded")
    }
    for storage in storages { try await storage.close() }
  }

  @Test("a replica that missed many slots catches up from a snapshot")
  func snapshotCatchUp() async throws {
    let configuration = try PaxosLiveCluster.fast(members: [1, 2, 3]) {
      $0.snapshotEvery = 20
      $0.snapshotRetainEntries = 2
      $0.snapshotChunkBytes = 64
    }
    try await withPaxosCluster(configuration, start: [1, 2, 3]) { cluster in
      let leader = try await cluster.leader()
      let lagging: NodeID = leader.id == 3 ? 2 : 3
      await cluster.stop(lagging)
      for i in 0..<100 {
        _ = try await withPaxosLeader(cluster) {
          try await $0.propose(.put(key: "k\(i)", value: bytes("value-\(i)")))
        }
      }
      let last = try await linearizableRead(cluster, "k99")
      let events = try await cluster.start(lagging)
      let node = try #require(await cluster.node(lagging))
      #expect(try await staleRead(node, "k99", atLeast: last.index) == .value(bytes("value-99")))
      #expect(await node.localQuery(.count) == .count(100))
      // The others compacted their logs past everything it holds: only a snapshot could bring it this far.
      let installed = try await firstEvent(events, "a snapshot installed on \(lagging)") {
        if case .snapshotInstalled = $0 { true } else { false }
      }
      guard case .snapshotInstalled(let slot) = installed else {
        Issue.record("expected a snapshot, got \(installed)")
        return
      }
      #expect(slot > 2)
    }
  }

  @Test("flexible quorums: with N=4, Q1=3, Q2=2 writes go on with two nodes down")
  func flexibleQuorums() async throws {
    let configuration = try PaxosLiveCluster.fast(members: [1, 2, 3, 4]) {
      $0.phase1Quorum = 3
      $0.phase2Quorum = 2
    }
    try await withPaxosCluster(configuration, start: [1, 2, 3, 4]) { cluster in
      // Two nodes down leave no phase-1 quorum: the leader that runs then is the one that stays. Down go two
      // nodes other than the current leader; should it have lost leadership meanwhile, all four run again
      // and it is tried anew.
      try await eventually("a write chosen by two of four nodes") {
        let leader = try await cluster.leader()
        let others = [NodeID(1), 2, 3, 4].filter { $0 != leader.id }
        await cluster.stop(others[0])
        await cluster.stop(others[1])
        do {
          _ = try await leader.node.propose(.put(key: "two", value: [2]))
        } catch let error as ConsensusError where error.isLeadershipChurn {
          try await cluster.start(others[0])
          try await cluster.start(others[1])
          return false
        }
        #expect(await leader.node.localQuery(.get(key: "two")) == .value([2]))
        return true
      }
    }
  }

  @Test("requests to a stopped node fail with stopped")
  func stoppedNode() async throws {
    try await withPaxosCluster(try PaxosLiveCluster.fast(members: [1]), start: [1]) { cluster in
      let node = try await cluster.leader().node
      await cluster.stop(1)
      await #expect(throws: ConsensusError.stopped) { _ = try await node.propose(.delete(key: "x")) }
    }
  }
}
