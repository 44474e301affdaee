import Foundation
import Quorum
import Synchronization
import Testing

/// The lock service through failures the in-process cluster of ``Cluster/withLocalMembers(_:)`` cannot stage: a
/// partition of the members' transport, and every member restarting from its data directory.
@Suite("Lock service across partitions and restarts", .serialized, .timeLimit(.minutes(5)))
struct LockFailureTests {
  @Test(
    "the minority side of a partition grants nothing while the majority side grants the lock",
    arguments: LockClientTests.engines)
  func minorityGrantsNothing(_ engine: EngineKind) async throws {
    try await LockHostHarness.with(try LockClientTests.cluster(engine, "partition")) { harness in
      _ = try await harness.awaitLeader()
      // Each client reaches every member until the partition puts it on one side: on a loaded machine leadership
      // can move between reading the leader and the warm-up, and a client confined to a former leader from the
      // start could not even open its session.
      let minoritySide = HarnessReach()
      let majoritySide = HarnessReach()
      // Calls of 5 s: long enough for the warm-up on a loaded machine, short enough to wait out on the isolated side.
      let minority = harness.lockClient(reaching: minoritySide, seed: 1, deadline: .seconds(5))
      // The majority's client is never cut off: its calls may wait out an election on a loaded machine.
      let majority = harness.lockClient(reaching: majoritySide, seed: 2, deadline: .seconds(10))
      try await closing([minority, majority]) {
        // The minority's client has a session before the partition.
        let warm = try await minority.lock("warm-up")
        #expect(try await minority.unlock(warm))
        // The partition isolates whoever leads now, with the minority's client on its side.
        let leader = try await harness.awaitLeader()
        let others = Set(harness.members).subtracting([leader])
        minoritySide.confine(to: [leader])
        majoritySide.confine(to: others)
        harness.transport.partition([leader], from: others)
        let attempt = try? await minority.tryLock("contended", timeout: .seconds(1))
        #expect(attempt == nil, "the isolated leader granted \(String(describing: attempt))")
        let granted = try await majority.lock("contended")
        let again = try? await minority.tryLock("contended", timeout: .seconds(1))
        #expect(again == nil, "the isolated side granted \(String(describing: again))")
        harness.transport.heal()
        let status = try #require(try await majority.status(of: "contended"))
        #expect(status.holders.map(\.session) == [granted.session])
        #expect(status.lastToken == granted.token, "no other grant of the lock was ever made")
        #expect(granted.isValid)
        #expect(try await majority.unlock(granted))
      }
    }
  }

  @Test(
    "a waiter whose session could not be kept alive hears that it was lost, not that its wait timed out",
    arguments: LockClientTests.engines)
  func waiterSessionLost(_ engine: EngineKind) async throws {
    try await LockHostHarness.with(try LockClientTests.cluster(engine, "lost-waiter")) { harness in
      _ = try await harness.awaitLeader()
      let holder = harness.lockClient(reaching: nil, seed: 1, deadline: .seconds(10))
      let reach = HarnessReach()
      // Patient calls: the waiter's cancel, sent once it gives its session up, must outlast the members'
      // expiry of that session.
      let waiter = harness.lockClient(reaching: reach, seed: 2, deadline: .seconds(30))
      try await closing([holder, waiter]) {
        let held = try await holder.lock("contended")
        let waiting = Task { try await waiter.lock("contended", ttl: .seconds(1)) }
        _ = try await awaitValue("the waiter queued") {
          try await holder.status(of: "contended").flatMap { $0.waiters.isEmpty ? nil : true }
        }
        // The waiter's keep-alives stop arriving (a pause or a partition): the members expire its session.
        reach.confine(to: [])
        _ = try await awaitValue("the waiter's session expired") {
          try await holder.status(of: "contended").flatMap { $0.waiters.isEmpty ? true : nil }
        }
        reach.confine(to: Set(harness.members))
        await #expect(throws: LockClientError.sessionLost(lock: "contended")) { try await waiting.value }
        #expect(held.isValid)
        #expect(try await holder.unlock(held))
      }
    }
  }

  @Test(
    "tokens keep increasing after snapshots and a restart of every member; a held lock survives it",
    arguments: LockClientTests.engines)
  func tokensAcrossRestart(_ engine: EngineKind) async throws {
    try await LockHostHarness.with(try LockClientTests.cluster(engine, "restart", snapshotEvery: 5)) { harness in
      _ = try await harness.awaitLeader()
      let locks = harness.lockClient(reaching: nil, seed: 1)
      try await closing([locks]) {
        var tokens: [FencingToken] = []
        for _ in 0..<12 {
          let lease = try await locks.lock("cycle")
          tokens.append(lease.token)
          #expect(try await locks.unlock(lease))
        }
        #expect(zip(tokens, tokens.dropFirst()).allSatisfy { $0 < $1 }, "\(tokens)")
        let held = try await locks.lock("held")
        for member in harness.members { await harness.stop(member) }
        for member in harness.members { try await harness.start(member) }
        _ = try await harness.awaitLeader()
        let snapshots = await harness.snapshotIndexes()
        #expect(snapshots.allSatisfy { $0 > 0 }, "every member restarted from a snapshot: \(snapshots)")
        let status = try #require(try await locks.status(of: "held"))
        #expect(status.holders.map(\.session) == [held.session] && status.holders.first?.token == held.token)
        let after = try await locks.lock("cycle")
        #expect(after.token > max(held.token, tokens.max() ?? .zero))
        #expect(held.isValid, "the session was renewed across the restart")
        #expect(try await locks.unlock(after))
        #expect(try await locks.unlock(held))
      }
    }
  }

  @Test(
    "a member whose clocks read an hour ahead takes the lead without shortening anyone's lease",
    arguments: LockClientTests.engines)
  func leaderClockAhead(_ engine: EngineKind) async throws {
    let ahead: NodeID = 3
    try await LockHostHarness.with(try LockClientTests.cluster(engine, "ahead"), clocks: [ahead: AheadClock()]) {
      harness in
      var leader = try await harness.awaitLeader()
      let locks = harness.lockClient(reaching: nil, seed: 1, deadline: .seconds(10))
      let follower = harness.lockClient(reaching: [ahead], seed: 2, deadline: .milliseconds(300))
      try await closing([locks, follower]) {
        if leader == ahead {
          try await locks.host.transferLeadership(of: LockClientTests.group, to: 1)
          leader = try await awaitValue("n1 to lead") {
            let current = try await harness.awaitLeader()
            return current == ahead ? nil : current
          }
        }
        let held = try await locks.lock("held")
        let before = try await Self.logTime(locks)
        // A client that reaches only the member ahead: its proposals there are refused (not the leader).
        _ = try? await follower.tryLock("poke")
        try await locks.host.transferLeadership(of: LockClientTests.group, to: ahead)
        _ = try await awaitValue("\(ahead) to lead") { try await harness.awaitLeader() == ahead ? true : nil }
        let probe = try await locks.lock("probe")
        #expect(try await locks.unlock(probe))
        let after = try await Self.logTime(locks)
        #expect(after >= before && after - before < 60_000, "log time went from \(before) to \(after) ms")
        let status = try #require(try await locks.status(of: "held"))
        #expect(status.holders.map(\.session) == [held.session], "the lease outlived the change of leader")
        #expect(held.isValid)
        #expect(try await locks.unlock(held))
      }
    }
  }

  /// The lock group's log time, read linearizably.
  static func logTime(_ locks: LockClient) async throws -> UInt64 {
    let (bytes, _) = try await locks.host.query(
      LockQuery.counts.wireBytes(), service: LockService.name, group: LockClientTests.group)
    guard case .counts(let counts) = try LockQueryResult(wireBytes: bytes) else {
      throw LockClientError.unexpected("not counts")
    }
    return counts.logTimeMillis
  }
}

/// The system's clocks, read an hour ahead: a machine whose monotonic clock started long before the others' (its
/// origin is arbitrary) and whose wall clock was stepped.
struct AheadClock: NodeClock {
  let system = SystemClock()
  let aheadNanos: UInt64 = 3_600_000_000_000

  func monotonicNanos() -> UInt64 { system.monotonicNanos() + aheadNanos }
  func wallClockMillis() -> UInt64 { system.wallClockMillis() + aheadNanos / 1_000_000 }
  func sleep(untilNanos deadline: UInt64) async throws {
    try await system.sleep(untilNanos: deadline > aheadNanos ? deadline - aheadNanos : 0)
  }
}

/// The members of a cluster run one by one on an in-process transport the test holds, each with its data
/// directory, so a test can partition them and restart them.
final class LockHostHarness: Sendable {
  let cluster: Cluster
  let transport = InProcessTransport<HostMessage>()
  let directory: String
  /// Each member's clock, if not the system's.
  let clocks: [NodeID: any NodeClock]
  private let running = Mutex<[NodeID: (host: GroupHost, task: Task<Void, Never>)]>([:])

  private init(cluster: Cluster, directory: String, clocks: [NodeID: any NodeClock]) {
    self.cluster = cluster
    self.directory = directory
    self.clocks = clocks
  }

  /// Starts every member of `cluster` (on `clocks` where given) in a fresh directory, runs `body`, then stops them
  /// and removes it.
  static func with<T: Sendable>(
    _ cluster: Cluster, clocks: [NodeID: any NodeClock] = [:], _ body: (LockHostHarness) async throws -> T
  ) async throws -> T {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("quorum-locks-\(UUID())").path
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    let harness = LockHostHarness(cluster: cluster, directory: directory, clocks: clocks)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let outcome: Result<T, any Error>
    do {
      for member in harness.members { try await harness.start(member) }
      outcome = .success(try await body(harness))
    } catch {
      outcome = .failure(error)
    }
    for member in harness.members { await harness.stop(member) }
    return try outcome.get()
  }

  var members: [NodeID] { cluster.members.map(\.id) }

  /// Starts `member` from its directory and waits until it serves.
  func start(_ member: NodeID) async throws {
    let host = try GroupHost(
      node: member, map: cluster.map, settings: cluster.hostSettings,
      storage: FileGroupStorage(root: "\(directory)/\(member)", fsync: .never),
      runtime: NodeRuntime(clock: clocks[member] ?? SystemClock()), logger: .disabled)
    let endpoint = try transport.bind(member)
    let task = Task { _ = try? await host.run(attach: { endpoint }) }
    running.withLock { $0[member] = (host, task) }
    await host.waitUntilServing()
  }

  /// Stops `member` and waits until its storage is closed.
  func stop(_ member: NodeID) async {
    guard let entry = running.withLock({ $0.removeValue(forKey: member) }) else { return }
    await entry.host.shutdown()
    await entry.task.value
  }

  func host(_ member: NodeID) -> GroupHost? { running.withLock { $0[member]?.host } }

  /// Waits for a member to lead the lock group; returns the newest leader.
  func awaitLeader() async throws -> NodeID {
    try await awaitValue("a leader of the lock group") {
      var best: GroupStatus?
      for member in members {
        guard let status = await host(member)?.group(LockClientTests.group)?.status(), status.isLeader else {
          continue
        }
        if status.epoch >= best?.epoch ?? 0 { best = status }
      }
      return best?.node
    }
  }

  /// Each running member's snapshot index in the lock group.
  func snapshotIndexes() async -> [UInt64] {
    var indexes: [UInt64] = []
    for member in members {
      if let status = await host(member)?.group(LockClientTests.group)?.status() {
        indexes.append(status.snapshotIndex)
      }
    }
    return indexes
  }

  /// A lock client that reaches only `reaching` (every member if `nil`), whichever host runs each now, and
  /// gives a call up after `deadline`.
  func lockClient(reaching: Set<NodeID>?, seed: UInt64, deadline: Duration = .seconds(3)) -> LockClient {
    lockClient(reaching: HarnessReach(reaching), seed: seed, deadline: deadline)
  }

  /// A lock client that reaches the members `reaching` allows at each call.
  func lockClient(reaching: HarnessReach, seed: UInt64, deadline: Duration = .seconds(3)) -> LockClient {
    let channel = HarnessChannel(harness: self, reachable: reaching)
    var options = LockClientTests.quickCalls
    options.deadline = deadline
    let host = HostClient(
      channel: channel, members: reaching.members.map { $0.sorted() } ?? members, map: cluster.map,
      options: options, seed: seed)
    return LockClient(host, options: LockClientTests.steadyLeases)
  }
}

/// The members a harness client reaches (every member if `nil`); a test confines it as a partition would.
final class HarnessReach: Sendable {
  private let reachable: Mutex<Set<NodeID>?>

  init(_ members: Set<NodeID>? = nil) { reachable = Mutex(members) }

  var members: Set<NodeID>? { reachable.withLock { $0 } }

  /// From now on the client reaches only `members`.
  func confine(to members: Set<NodeID>) { reachable.withLock { $0 = members } }
}

/// Hands each request to the host running the member now, if the client can reach it.
struct HarnessChannel: RequestChannel {
  let harness: LockHostHarness
  let reachable: HarnessReach

  func send(_ request: [UInt8], to member: NodeID, timeout: Duration) async throws -> [UInt8] {
    guard reachable.members?.contains(member) ?? true, let host = harness.host(member) else {
      throw RequestChannelError.unreachable(member, "not reachable from this client")
    }
    return await host.handle(bytes: request)
  }
}
