import Foundation
import QuorumCore
import QuorumKV
import QuorumPaxos
import QuorumStorage
import Synchronization
import Testing

// Support for tests of real `MultiPaxosNode` actors on real time. A loaded machine (two suites on two cores) misses
// heartbeats, so leaders change under a test at any moment: every helper here waits for a state or retries a
// request a client would retry, and no deadline is ever an assertion. Deadlines only bound how long a broken
// test takes to fail.

/// A condition a test waited for did not come about before its deadline.
struct TimedOut: Error, CustomStringConvertible {
  var description: String
}

/// Calls `attempt` until it returns a value, and returns that value. `what` (evaluated on failure only) says what
/// was awaited. An error thrown by `attempt` ends the wait at once.
func awaitValue<T>(
  _ what: @autoclosure () -> String, within timeout: Duration = .seconds(60),
  isolation: isolated (any Actor)? = #isolation, _ attempt: () async throws -> T?
) async throws -> T {
  let deadline = ContinuousClock.now.advanced(by: timeout)
  while true {
    if let value = try await attempt() { return value }
    guard ContinuousClock.now < deadline else {
      throw TimedOut(description: "gave up after \(timeout) waiting for \(what())")
    }
    try await Task.sleep(for: .milliseconds(5))
  }
}

/// Polls `condition` until it holds (see ``awaitValue(_:within:_:)``).
func eventually(
  _ what: @autoclosure () -> String, within timeout: Duration = .seconds(60),
  isolation: isolated (any Actor)? = #isolation, _ condition: () async throws -> Bool
) async throws {
  try await awaitValue(what(), within: timeout) { try await condition() ? () : nil }
}

extension ConsensusError {
  /// The errors a request meets when leadership moves under it: a client retries them elsewhere or later.
  var isLeadershipChurn: Bool {
    switch self {
    case .notLeader, .timeout, .dropped, .outcomeUnknown, .transferInProgress, .leaseExpired: true
    default: false
    }
  }
}

/// A count shared between tasks.
final class Counter: Sendable {
  private let count = Atomic<Int>(0)
  func increment() { count.add(1, ordering: .relaxed) }
  var value: Int { count.load(ordering: .relaxed) }
}

/// Real `MultiPaxosNode` actors on the in-process transport, with real (short) timeouts.
actor PaxosLiveCluster {
  /// A node that leads, and the ballot it was seen leading in.
  struct Leader {
    var id: NodeID
    var ballot: Ballot
    var node: MultiPaxosNode<KVStore>
  }

  let transport = InProcessTransport<PaxosMessage>()
  let configuration: PaxosConfiguration
  private(set) var nodes: [NodeID: MultiPaxosNode<KVStore>] = [:]
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
      ElectionTimeout(Duration.milliseconds(80)...Duration.milliseconds(160))
      HeartbeatInterval(.milliseconds(15))
      Retransmit(after: .milliseconds(20))
      LeaseReads(clockDriftBound: .milliseconds(10))
      RequestLimits(timeout: .seconds(5))
    }
    extra(&c)
    try c.validate()
    return c
  }

  /// Starts node `id` and returns a subscription to its events made before it runs, so none is missed.
  @discardableResult
  func start(_ id: NodeID, storage: (any ConsensusStorage<PaxosEntry>)? = nil) throws -> AsyncStream<PaxosEvent> {
    let storage = storage ?? storages[id] ?? MemoryStorage<PaxosEntry>(mode: .replace)
    storages[id] = storage
    let node = MultiPaxosNode(
      id: id, configuration: configuration, endpoint: try transport.bind(id), storage: storage, machine: KVStore(),
      seed: id.rawValue &* 7919, logger: QuorumLogger(label: "paxos", sink: NullLogSink()))
    nodes[id] = node
    let events = node.events
    Task { try await node.run() }
    return events
  }

  /// Stops a node as a crash would, from the others' point of view: it stops answering at once. Returns once
  /// its `run()` has returned.
  func stop(_ id: NodeID) async {
    guard let node = nodes.removeValue(forKey: id) else { return }
    await node.shutdown()
  }

  func stopAll() async {
    for id in nodes.keys.sorted() { await stop(id) }
  }

  func node(_ id: NodeID) -> MultiPaxosNode<KVStore>? { nodes[id] }

  /// A running node other than `id`.
  func node(otherThan id: NodeID) throws -> MultiPaxosNode<KVStore> {
    try #require(nodes.keys.sorted().first { $0 != id }.flatMap { nodes[$0] })
  }

  /// The running node that leads, once exactly one does, a majority of the running nodes follow it, and it has
  /// chosen everything it proposed.
  func leader(within timeout: Duration = .seconds(60)) async throws -> Leader {
    try await awaitValue("one leader followed by a majority", within: timeout) { try await currentLeader() }
  }

  private func currentLeader() async throws -> Leader? {
    var leaders: [MultiPaxosStatus] = []
    var following: [NodeID: Int] = [:]
    for node in nodes.values {
      let s = await node.status
      if s.role == .leader { leaders.append(s) }
      if let l = s.leader { following[l, default: 0] += 1 }
    }
    guard leaders.count == 1, let s = leaders.first, following[s.id, default: 0] * 2 > nodes.count,
      s.chosenThrough >= s.lastSlot, let node = nodes[s.id]
    else { return nil }
    return Leader(id: s.id, ballot: s.ballot, node: node)
  }

  /// A running node that follows `leader` in the ballot it was seen leading in, if one does now.
  func follower(of leader: Leader) async -> MultiPaxosNode<KVStore>? {
    for id in nodes.keys.sorted() where id != leader.id {
      guard let node = nodes[id] else { continue }
      let s = await node.status
      if s.role == .follower && s.leader == leader.id && s.ballot == leader.ballot { return node }
    }
    return nil
  }
}

/// Runs `body` on a group of `ids` started with `configuration`, and stops every node afterwards, also when
/// `body` throws, so a failing test leaves no node ticking behind it.
func withPaxosCluster<T: Sendable>(
  _ configuration: PaxosConfiguration, start ids: [NodeID], _ body: (PaxosLiveCluster) async throws -> T
) async throws -> T {
  let cluster = PaxosLiveCluster(configuration: configuration)
  do {
    for id in ids { try await cluster.start(id) }
    let result = try await body(cluster)
    await cluster.stopAll()
    return result
  } catch {
    await cluster.stopAll()
    throw error
  }
}

/// Runs `body` on whichever node leads, as a client would: an error that means leadership moved under the
/// request (`notLeader`, `timeout`, `dropped`, `outcomeUnknown`, …) is retried on the next leader until
/// `timeout`; any other error is the test's failure and is rethrown at once. `body` must be safe to repeat.
func withPaxosLeader<T: Sendable>(
  _ cluster: PaxosLiveCluster, within timeout: Duration = .seconds(60),
  _ body: (MultiPaxosNode<KVStore>) async throws -> T
) async throws -> T {
  let deadline = ContinuousClock.now.advanced(by: timeout)
  while true {
    let leader = try await cluster.leader(within: timeout)
    do {
      return try await body(leader.node)
    } catch let error as ConsensusError where error.isLeadershipChurn {
      guard ContinuousClock.now < deadline else {
        throw TimedOut(description: "no leader answered within \(timeout); the last error was \(error)")
      }
    }
  }
}

/// Reads `key` on `node` at `stale` consistency from a state that includes slot `index`: the node answers
/// once it has applied that far (a request that times out first, on a slow machine, is asked again).
func staleRead(_ node: MultiPaxosNode<KVStore>, _ key: String, atLeast index: UInt64) async throws -> KVQueryResult {
  try await awaitValue("node \(node.id) to apply slot \(index)") {
    do {
      return try await node.read(.get(key: key), consistency: .stale, atLeast: index).value
    } catch ConsensusError.timeout {
      return nil
    }
  }
}

/// A linearizable read through whichever node leads, with the slot it reflects.
func linearizableRead(_ cluster: PaxosLiveCluster, _ key: String) async throws -> IndexedRead<KVQueryResult> {
  try await withPaxosLeader(cluster) { try await $0.read(.get(key: key), consistency: .linearizable, atLeast: 0) }
}

/// The first element of `events` that `match` accepts. The subscription must be made before the event can
/// happen; the wait ends with an error after `timeout` (a bound on failure, not a measurement) or if the
/// stream finishes first.
func firstEvent<Event: Sendable>(
  _ events: AsyncStream<Event>, _ what: String, within timeout: Duration = .seconds(60),
  where match: @escaping @Sendable (Event) -> Bool
) async throws -> Event {
  try await withThrowingTaskGroup(of: Event?.self) { group in
    group.addTask {
      for await event in events where match(event) { return event }
      throw TimedOut(description: "the event stream finished without \(what)")
    }
    group.addTask {
      try await Task.sleep(for: timeout)
      return nil
    }
    defer { group.cancelAll() }
    guard let first = try await group.next(), let event = first else {
      throw TimedOut(description: "gave up after \(timeout) waiting for \(what)")
    }
    return event
  }
}
