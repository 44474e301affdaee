import Foundation
import QuorumCore
import QuorumKV
import QuorumRaft
import QuorumStorage
import Testing

/// Asks a node that follows the leader to do what only a leader may, and expects `notLeader` naming that leader.
/// Leadership may move under the question on a busy machine (the follower then names another node, or none):
/// it is asked again, and a node that never names its leader fails the test when the wait ends.
private func expectFollowerRefuses(
  _ cluster: LiveCluster, _ what: String, _ request: (RaftNode<KVStore>) async throws -> Void
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
      outcome = "node \(follower.id) answered \(error) while \(leader.id) led term \(leader.term)"
    }
    return false
  }
}

@Suite("RaftNode actors on the in-process transport", .timeLimit(.minutes(2)))
struct RaftNodeTests {
  @Test("a 3-node cluster elects a leader, applies writes on every node, and serves all three read levels")
  func basicCluster() async throws {
    try await withLiveCluster(try LiveCluster.fast(members: [1, 2, 3]), start: [1, 2, 3]) { cluster in
      for i in 0..<20 {
        _ = try await withLeader(cluster) { try await $0.propose(.put(key: "k\(i)", value: bytes("v\(i)"))) }
      }
      for level in ReadConsistency.allCases where level != .stale {
        let value = try await withLeader(cluster) { try await $0.read(.get(key: "k7"), consistency: level) }
        #expect(value == .value(bytes("v7")), "\(level)")
      }
      // Followers: proposals and linearizable reads are refused with a hint; stale reads answer locally.
      try await expectFollowerRefuses(cluster, "a proposal") { _ = try await $0.propose(.put(key: "x", value: [1])) }
      try await expectFollowerRefuses(cluster, "a linearizable read") {
        _ = try await $0.read(.get(key: "k1"), consistency: .linearizable)
      }
      // A session read through the call that carries no position is served as linearizable, not from what a
      // follower has applied (which may be older than the client's own last write).
      try await expectFollowerRefuses(cluster, "a session read without a position") {
        _ = try await $0.read(.get(key: "k1"), consistency: .session)
      }
      let latest = try await linearizableRead(cluster, "k19")
      #expect(latest.value == .value(bytes("v19")))
      let follower = try await cluster.node(otherThan: try await cluster.leader().id)
      #expect(try await staleRead(follower, "k19", atLeast: latest.index) == .value(bytes("v19")))
    }
  }

  @Test("a session read waiting for a position on a leader that is deposed waits on, and is answered once applied")
  func sessionReadSurvivesDeposition() async throws {
    try await withLiveCluster(try LiveCluster.fast(members: [1, 2, 3]), start: [1, 2, 3]) { cluster in
      let written = try await withLeader(cluster) {
        try await $0.propose(.put(key: "k", value: [1]), request: nil, acknowledgedThrough: 0, indexed: ())
      }
      let old = try await cluster.leader()
      // A client that has seen three entries more than anyone has written yet.
      let waiting = Task { try await old.node.read(.get(key: "k"), consistency: .session, atLeast: written.index + 3) }
      let target = try await cluster.node(otherThan: old.id).id
      try await eventually("leadership to move to \(target)") {
        do {
          try await old.node.transferLeadership(to: target)
        } catch {
          return false
        }
        return try await cluster.leader().id == target
      }
      for i in 2...4 {
        _ = try await withLeader(cluster) { try await $0.propose(.put(key: "k", value: [UInt8(i)])) }
      }
      let answer = try await waiting.value
      #expect(answer.index >= written.index + 3, "answered from position \(answer.index)")
      #expect(answer.value != .value(nil) && answer.value != .value([1]), "answered \(answer.value)")
    }
  }

  @Test("when the leader fails, another is elected and no acknowledged write is lost")
  func failover() async throws {
    try await withLiveCluster(try LiveCluster.fast(members: [1, 2, 3]), start: [1, 2, 3]) { cluster in
      for i in 0..<10 {
        _ = try await withLeader(cluster) { try await $0.propose(.put(key: "a\(i)", value: bytes("\(i)"))) }
      }
      let first = try await cluster.leader()
      await cluster.stop(first.id)
      let second = try await cluster.leader()
      #expect(second.term > first.term, "\(second.id) leads a term after \(first.id)'s")
      for i in 0..<10 {
        let value = try await withLeader(cluster) {
          try await $0.read(.get(key: "a\(i)"), consistency: .linearizable)
        }
        #expect(value == .value(bytes("\(i)")))
      }
      _ = try await withLeader(cluster) { try await $0.propose(.put(key: "after", value: [1])) }
      let written = try await linearizableRead(cluster, "after")
      // The old leader rejoins as a follower and catches up.
      try await cluster.start(first.id)
      let rejoined = try #require(await cluster.node(first.id))
      #expect(try await staleRead(rejoined, "after", atLeast: written.index) == .value([1]))
    }
  }

  @Test("a whole cluster restarted from file storage keeps every acknowledged write")
  func restartFromFiles() async throws {
    let dirs = [NodeID(1), 2, 3].map { ($0, tempDirectory("restart-\($0)")) }
    defer { for (_, d) in dirs { try? FileManager.default.removeItem(atPath: d) } }
    let configuration = try LiveCluster.fast(members: [1, 2, 3]) {
      $0.snapshotEvery = 15
      $0.snapshotRetainEntries = 3
    }
    var storages = dirs.map { FileStorage<LogEntry>(directory: $0.1) }
    let acknowledged = try await withLiveCluster(configuration, start: []) { cluster in
      for ((id, _), storage) in zip(dirs, storages) { try await cluster.start(id, storage: storage) }
      var acknowledged: [String: [UInt8]] = [:]
      for i in 0..<40 {
        let key = "k\(i % 13)"
        let value = bytes("v\(i)")
        _ = try await withLeader(cluster) { try await $0.propose(.put(key: key, value: value)) }
        acknowledged[key] = value
      }
      return acknowledged
    }
    for storage in storages { try await storage.close() }
    #expect(acknowledged.count == 13)
    storages = dirs.map { FileStorage<LogEntry>(directory: $0.1) }
    try await withLiveCluster(configuration, start: []) { cluster in
      for ((id, _), storage) in zip(dirs, storages) { try await cluster.start(id, storage: storage) }
      for (key, value) in acknowledged.sorted(by: { $0.key < $1.key }) {
        let read = try await withLeader(cluster) { try await $0.read(.get(key: key), consistency: .linearizable) }
        #expect(read == .value(value), "\(key)")
      }
      let leader = try await cluster.leader()
      #expect(await leader.node.status.snapshotIndex > 0, "snapshots were taken and reloaded")
    }
    for storage in storages { try await storage.close() }
  }

  @Test("a follower that missed many entries catches up from a snapshot")
  func snapshotCatchUp() async throws {
    let configuration = try LiveCluster.fast(members: [1, 2, 3]) {
      $0.snapshotEvery = 20
      $0.snapshotRetainEntries = 2
      $0.snapshotChunkBytes = 64
    }
    try await withLiveCluster(configuration, start: [1, 2, 3]) { cluster in
      let leader = try await cluster.leader()
      let lagging: NodeID = leader.id == 3 ? 2 : 3
      await cluster.stop(lagging)
      for i in 0..<100 {
        _ = try await withLeader(cluster) { try await $0.propose(.put(key: "k\(i)", value: bytes("value-\(i)"))) }
      }
      let last = try await linearizableRead(cluster, "k99")
      let events = try await cluster.start(lagging)
      let node = try #require(await cluster.node(lagging))
      #expect(try await staleRead(node, "k99", atLeast: last.index) == .value(bytes("value-99")))
      #expect(await node.localQuery(.count) == .count(100))
      // The leaders compacted their logs past everything it holds: only a snapshot could bring it this far.
      let installed = try await firstEvent(events, "a snapshot installed on \(lagging)") {
        if case .snapshotInstalled = $0 { true } else { false }
      }
      guard case .snapshotInstalled(let index) = installed else {
        Issue.record("expected a snapshot, got \(installed)")
        return
      }
      #expect(index > 2)
    }
  }

  @Test("membership: a new node joins as a learner, is promoted, and a voter is removed")
  func membership() async throws {
    let configuration = try LiveCluster.fast(members: [1, 2, 3])
    try await withLiveCluster(configuration, start: [1, 2, 3]) { cluster in
      _ = try await withLeader(cluster) { try await $0.propose(.put(key: "before", value: [1])) }
      let before = try await linearizableRead(cluster, "before")
      var joining = configuration
      joining.members = []
      try await cluster.start(4, configuration: joining)
      try await change(cluster, .change([.addLearner(4)])) { $0.learners.contains(4) }
      try await change(cluster, .change([.addVoter(4)])) { $0.voters.contains(4) && !$0.isJoint }
      let status = try await withLeader(cluster) { await $0.status }
      #expect(status.membership == Membership(voters: [1, 2, 3, 4]))
      let removed: NodeID = status.id == 1 ? 2 : 1
      try await change(cluster, .change([.remove(removed)])) { !$0.allMembers.contains(removed) }
      let after = try await withLeader(cluster) { await $0.status }
      #expect(after.membership.voters == Set([1, 2, 3, 4]).subtracting([removed]))
      let node4 = try #require(await cluster.node(4))
      #expect(try await staleRead(node4, "before", atLeast: before.index) == .value([1]))
    }
  }

  /// Makes a membership change through whichever node leads. A request whose outcome was lost with a leader
  /// is asked again unless the leader's membership shows it already made (`done`); a change refused because
  /// another is still in flight is asked again too.
  private func change(
    _ cluster: LiveCluster, _ change: MembershipChange, done: @escaping (Membership) -> Bool
  ) async throws {
    let retryable: (ConsensusError) -> Bool = {
      if case .membershipChangeRejected = $0 { return true }
      return $0.isLeadershipChurn
    }
    try await withLeader(cluster, retrying: retryable) { leader in
      if done(await leader.status.membership) { return }
      try await leader.changeMembership(change)
    }
  }

  @Test("leadership transfer hands over to the chosen voter")
  func transfer() async throws {
    try await withLiveCluster(try LiveCluster.fast(members: [1, 2, 3]), start: [1, 2, 3]) { cluster in
      var lastError: ConsensusError?
      try await eventually("a transfer to complete (last error: \(lastError.map { "\($0)" } ?? "none"))") {
        let first = try await cluster.leader()
        let target: NodeID = first.id == 3 ? 1 : 3
        let events = try #require(await cluster.node(target)).events
        do {
          try await first.node.transferLeadership(to: target)
        } catch let error as ConsensusError where error.isLeadershipChurn {
          lastError = error  // leadership moved before the transfer began or finished: try again
          return false
        }
        // The transfer returns once the old leader saw the target lead: the target's own events say so too.
        let term = first.term
        _ = try await firstEvent(events, "\(target) leading after term \(term)") {
          if case .roleChanged(.leader, let t) = $0 { t > term } else { false }
        }
        return true
      }
    }
  }

  @Test("exactly-once: a retried request with the same id is applied once")
  func exactlyOnce() async throws {
    try await withLiveCluster(try LiveCluster.fast(members: [1, 2, 3]), start: [1, 2, 3]) { cluster in
      let session = try await withLeader(cluster) { try await $0.registerSession() }
      let request = RequestID(session: session, sequence: 1)
      let swap = KVCommand.compareAndSwap(key: "c", expected: nil, new: [1])
      // Each call is itself retried (same request id) if leadership moves under it.
      let first = try await withLeader(cluster) { try await $0.propose(swap, request: request) }
      let retry = try await withLeader(cluster) { try await $0.propose(swap, request: request) }
      #expect(first == .swapped(true, current: [1]))
      #expect(retry == first, "the retry returns the remembered response instead of failing the comparison")
    }
  }

  @Test("requests to a stopped node fail with stopped")
  func stoppedNode() async throws {
    try await withLiveCluster(try LiveCluster.fast(members: [1]), start: [1]) { cluster in
      let node = try await cluster.leader().node
      await cluster.stop(1)
      await #expect(throws: ConsensusError.stopped) { _ = try await node.propose(.delete(key: "x")) }
    }
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

  @Test("the DSL builds a valid configuration and converts durations to ticks", arguments: [true, false])
  func valid(preVote: Bool) throws {
    let c = try RaftConfiguration {
      Members(1, 2, 3)
      ElectionTimeout(Duration.milliseconds(150)...Duration.milliseconds(300))
      HeartbeatInterval(.milliseconds(50))
      // Both branches of an `if` in the builder are taken below.
      if preVote { PreVote(true) } else { PreVote(false) }
    }
    #expect(c.coreOptions.preVote == preVote)
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
