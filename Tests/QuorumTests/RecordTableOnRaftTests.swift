import Quorum
import Testing

/// A single-member Raft group of `machine` over the in-process transport, quick to elect itself, and run while
/// `body` uses it.
func withOneRaftNode<Machine: StateMachine>(
  _ machine: Machine, _ body: (RaftNode<Machine>) async throws -> Void
) async throws {
  let transport = InProcessTransport<RaftMessage>()
  let configuration = try RaftConfiguration {
    Members(1)
    TickInterval(.milliseconds(5))
    ElectionTimeout(Duration.milliseconds(30)...Duration.milliseconds(60))
    HeartbeatInterval(.milliseconds(10))
  }
  let node = RaftNode(
    id: 1, configuration: configuration, endpoint: try transport.bind(1), storage: MemoryStorage<LogEntry>(),
    machine: machine, logger: .disabled)
  try await withThrowingTaskGroup(of: Void.self) { group in
    group.addTask { try await node.run() }
    try await body(node)
    await node.shutdown()
    try await group.waitForAll()
  }
}

/// Non-blocking two-phase commit's record table in a real Raft group (``ReplicatedTransactionRecordStore`` over
/// a ``RaftNode``), whose log time starts at zero while transactions start on the wall clock.
@Suite("Transaction records in a Raft group")
struct RecordTableOnRaftTests {
  @Test("records of transactions started now are created, decided and read back: the table follows the wall clock")
  func recordsOnARaftNode() async throws {
    try await withOneRaftNode(TransactionRecords()) { node in
      let clock = SystemClock()
      let coordinator = ReplicatedTransactionRecordStore(log: node, identity: 9, clock: clock)
      let participant = ReplicatedTransactionRecordStore(log: node, identity: 9, clock: clock)
      var committed: TxnID?
      for attempt in 0..<400 where committed == nil {
        if attempt > 0 { try await clock.sleep(for: .milliseconds(10)) }  // until the node has elected itself
        let numbers = try? await coordinator.reserveSequenceNumbers(for: 1, count: 2)
        guard let numbers else { continue }
        let id = TxnID(coordinator: 1, sequence: numbers.lowerBound, startedAtMillis: clock.wallClockMillis())
        #expect(try await participant.recordPrepared(id, participant: 2, participants: [2]) == nil)
        #expect(try await coordinator.recordDecision(id, participants: [2]) == .commit)
        committed = id
      }
      let id = try #require(committed)
      #expect(try await coordinator.outcome(of: id)?.status == .committed)
    }
  }
}
