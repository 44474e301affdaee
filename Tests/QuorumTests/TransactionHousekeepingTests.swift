import Quorum
import Synchronization
import Testing

@testable import QuorumHost

/// A `txn` group this host leads, as the housekeeping sees it: a proposal either completes at once (counted) or,
/// in a group without a majority, never completes.
final class LedTxnGroup: HostedGroup {
  struct Unused: Error {}

  let spec: GroupSpec
  private let stalls: Bool
  /// Proposals that completed (clock entries).
  let proposals = Atomic<Int>(0)

  init(id: GroupID, stalls: Bool) {
    spec = GroupSpec(id: id, name: "g\(id.rawValue)", members: [1], services: [HostedTxnService.name])
    self.stalls = stalls
  }

  func run() async throws {}
  func waitUntilRecovered() async throws {}
  func shutdown() async {}

  func propose(_ command: ServiceCommand, request: RequestID?, acknowledgedThrough: UInt64, principal: String?)
    async throws -> IndexedRead<ServiceAnswer>
  {
    if stalls {
      // No majority: the entry is never committed (until the test ends the housekeeping).
      try await Task.sleep(for: .seconds(3_600))
      throw CancellationError()
    }
    proposals.add(1, ordering: .relaxed)
    return IndexedRead(value: .ok([]), index: 1)
  }

  func read(_ query: ServiceQuery, consistency: ReadConsistency, atLeast: UInt64) async throws
    -> IndexedRead<ServiceAnswer>
  { throw Unused() }

  func propose(
    _ command: ServiceCommand, request: RequestID?, acknowledgedThrough: UInt64, principal: String?,
    completion: @escaping @Sendable (Result<IndexedRead<ServiceAnswer>, any Error>) -> Void
  ) { completion(.failure(Unused())) }

  func read(
    _ query: ServiceQuery, consistency: ReadConsistency, atLeast: UInt64,
    completion: @escaping @Sendable (Result<IndexedRead<ServiceAnswer>, any Error>) -> Void
  ) { completion(.failure(Unused())) }

  func registerSession(principal: String?) async throws -> UInt64 { throw Unused() }
  func changeMembership(_ change: MembershipChange) async throws { throw Unused() }
  func transferLeadership(to target: NodeID) async throws { throw Unused() }

  func status() async -> GroupStatus {
    GroupStatus(
      group: spec.id, name: spec.name, engine: .raft, node: 1, role: "leader", epoch: 1, leader: 1, commitIndex: 0,
      appliedIndex: 0, lastIndex: 0, snapshotIndex: 0, voters: [1], learners: [], peers: [], pendingRequests: 0)
  }

  var events: AsyncStream<GroupEvent> { AsyncStream { $0.finish() } }
  func localState() async -> (applied: UInt64, snapshot: [UInt8]) { (0, []) }
  func releaseStoredEntries(snapshotBudgetBytes: Int) {}
}

@Suite("Transaction housekeeping on a host", .timeLimit(.minutes(2)))
struct TransactionHousekeepingTests {
  /// A `txn` group's record table refuses decisions until its leader's first clock entry: a group led without a
  /// majority, whose entry never commits, must not hold up that entry in the other groups this host leads.
  @Test("a led group whose clock entry never commits does not hold up the other groups' clock entries")
  func clockEntriesAreIndependent() async throws {
    let stalled = LedTxnGroup(id: GroupID(rawValue: 1), stalls: true)
    let healthy = LedTxnGroup(id: GroupID(rawValue: 2), stalls: false)
    let cluster = try Cluster(id: "housekeeping") { Member("n1") }
    var options = TransactionResolverOptions()
    options.enabled = false
    let housekeeping = TransactionHousekeeping(
      node: 1, groups: [stalled, healthy], options: options,
      client: HostClient(channel: InProcessRequestChannel(hosts: [:]), members: [1], map: cluster.map),
      clock: SystemClock(), logger: QuorumLogger(label: "quorum", sink: NullLogSink()), settled: SettledCount())
    let run = Task { await housekeeping.run() }
    let deadline = ContinuousClock.now + .seconds(60)
    while healthy.proposals.load(ordering: .relaxed) == 0, ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(20))
    }
    run.cancel()
    await run.value
    #expect(healthy.proposals.load(ordering: .relaxed) >= 1, "the healthy group got its clock entry")
  }
}
