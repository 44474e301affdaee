import QuorumCore
import QuorumStorage
import Testing

@testable import QuorumTransactions

/// A coordinator (node 1) and participants (2, 3) with bank accounts, on the in-process transport.
final class LiveBank: @unchecked Sendable {
  // @unchecked: used from the one test task that created it; the actors it holds are Sendable.
  let transport = InProcessTransport<TransactionMessage>()
  let accounts: [NodeID: TestAccounts]
  var participantStores: [NodeID: any TransactionRecordStore]
  var coordinatorStore: any TransactionRecordStore
  private(set) var coordinator: TransactionCoordinator?
  private(set) var coordinatorTask: Task<Void, any Error>?
  private(set) var participants: [NodeID: TransactionParticipantNode] = [:]
  private(set) var participantTasks: [NodeID: Task<Void, any Error>] = [:]
  /// The coordinator's settings (a test about the vote timeout shortens it).
  var coordinatorOptions = liveCoordinatorOptions()

  init(coordinatorStore: any TransactionRecordStore, participantStores: [NodeID: any TransactionRecordStore]) {
    self.coordinatorStore = coordinatorStore
    self.participantStores = participantStores
    var accounts: [NodeID: TestAccounts] = [:]
    for id in participantStores.keys { accounts[id] = TestAccounts(["acct-\(id.rawValue)": 100]) }
    self.accounts = accounts
  }

  /// Classic: every node its own local store over memory.
  static func classic(participants: [NodeID] = [2, 3]) async throws -> LiveBank {
    func local() async throws -> LocalTransactionRecordStore {
      let store = try LocalTransactionRecordStore(storage: MemoryStorage<TransactionLogEntry>())
      try await store.open()
      return store
    }
    var stores: [NodeID: any TransactionRecordStore] = [:]
    for id in participants { stores[id] = try await local() }
    return LiveBank(coordinatorStore: try await local(), participantStores: stores)
  }

  /// Non-blocking: every node a handle on one replicated table.
  static func nonBlocking(log: InMemoryRecordLog, participants: [NodeID] = [2, 3]) -> LiveBank {
    func shared() -> ReplicatedTransactionRecordStore { ReplicatedTransactionRecordStore(log: log, identity: 42) }
    var stores: [NodeID: any TransactionRecordStore] = [:]
    for id in participants { stores[id] = shared() }
    return LiveBank(coordinatorStore: shared(), participantStores: stores)
  }

  func startCoordinator() throws {
    let coordinator = TransactionCoordinator(
      id: 1, endpoint: try transport.bind(1), store: coordinatorStore, options: coordinatorOptions,
      logger: .disabled)
    self.coordinator = coordinator
    coordinatorTask = Task { try await coordinator.run() }
  }

  func startParticipant(_ id: NodeID) throws {
    guard let accounts = accounts[id], let store = participantStores[id] else { return }
    let node = TransactionParticipantNode(
      id: id, resource: accounts, endpoint: try transport.bind(id), store: store, options: liveParticipantOptions(),
      logger: .disabled)
    participants[id] = node
    participantTasks[id] = Task { try await node.run() }
  }

  func start() throws {
    try startCoordinator()
    for id in participantStores.keys.sorted() { try startParticipant(id) }
  }

  func stopCoordinator() async {
    coordinator?.shutdown()
    _ = await coordinatorTask?.result
    coordinator = nil
  }

  func stopParticipant(_ id: NodeID) async -> Result<Void, any Error>? {
    participants[id]?.shutdown()
    let result = await participantTasks[id]?.result
    participants[id] = nil
    await accounts[id]?.crash()
    return result
  }

  func stopAll() async {
    await stopCoordinator()
    for id in participants.keys.sorted() { _ = await stopParticipant(id) }
  }

  func balance(_ id: NodeID) async -> Int { await accounts[id]?.balances["acct-\(id.rawValue)"] ?? -1 }

  /// Stages a transfer of `amount` from participant 2's account to 3's.
  func stageTransfer(_ txn: TxnID, amount: Int) async {
    await accounts[2]?.stage(txn, ["acct-2": -amount])
    await accounts[3]?.stage(txn, ["acct-3": amount])
  }

  /// Participant 2's and 3's balances.
  func balances() async -> [Int] { [await balance(2), await balance(3)] }

  /// Whether participant 2 has prepared `id` and participant 3's resource is preparing it.
  func bothPreparing(_ id: TxnID) async -> Bool {
    let two = await accounts[2]?.prepared[id] != nil
    let three = await accounts[3]?.preparing.contains(id) == true
    return two && three
  }

  /// Whether no participant has anything prepared or in doubt.
  func settled() async -> Bool {
    for resource in accounts.values where await !resource.prepared.isEmpty { return false }
    return await inDoubt() == 0
  }

  func inDoubt() async -> Int {
    var total = 0
    for node in participants.values { total += await node.inDoubt.count }
    return total
  }
}

@Suite("Coordinator and participant actors on the in-process transport")
struct ActorTests {
  @Test("a transfer between two participants commits on both, and every record ends")
  func transferCommits() async throws {
    let bank = try await LiveBank.classic()
    try bank.start()
    let coordinator = try #require(bank.coordinator)
    let id = try await coordinator.makeTransactionID()
    let result = try await explained(coordinator) {
      try await Transaction(id: id, participants: [2, 3], via: coordinator) {
        await bank.stageTransfer(id, amount: 30)
      }.execute()
    }
    #expect(result == .committed)
    try await waitUntil("both accounts updated") { await bank.balances() == [70, 130] }
    try await waitUntil("the coordinator finished") { await coordinator.activeCount == 0 }
    #expect(try await coordinator.outcome(of: id) == .committed)
    await bank.stopAll()
  }

  @Test("a participant that votes no aborts the transfer on both sides")
  func voteNo() async throws {
    let bank = try await LiveBank.classic()
    try bank.start()
    let coordinator = try #require(bank.coordinator)
    let id = try await coordinator.makeTransactionID()
    await bank.accounts[3]?.refuse(id)
    let result = try await explained(coordinator) {
      try await Transaction(id: id, participants: [2, 3], via: coordinator) {
        await bank.stageTransfer(id, amount: 30)
      }.execute()
    }
    #expect(result == .aborted(.votedNo(3)))
    try await waitUntil("participant 2 rolled back") { await bank.accounts[2]?.prepared.isEmpty == true }
    #expect(await bank.balances() == [100, 100])
    await bank.stopAll()
  }

  @Test("one participant commits in one phase (non-blocking); a failing body rolls the work back")
  func onePhaseAndBodyFailure() async throws {
    let bank = LiveBank.nonBlocking(log: try InMemoryRecordLog())
    try bank.start()
    let coordinator = try #require(bank.coordinator)
    let one = try await coordinator.makeTransactionID()
    let committed = try await Transaction(id: one, participants: [2], via: coordinator) {
      await bank.accounts[2]?.stage(one, ["acct-2": 5])
    }.execute()
    #expect(committed == .committed)
    #expect(await bank.balance(2) == 105, "a one-phase commit is applied before the answer")
    struct Broken: Error {}
    let two = try await coordinator.makeTransactionID()
    let failed = try await Transaction(id: two, participants: [2, 3], via: coordinator) {
      await bank.stageTransfer(two, amount: 10)
      throw Broken()
    }.execute()
    #expect(failed == .aborted(.bodyFailed("Broken()")))
    try await waitUntil("the staged work is rolled back") { await bank.accounts[2]?.staged.isEmpty == true }
    await bank.stopAll()
  }

  @Test("classic: a coordinator that crashes after recording the commit finishes it when it is back")
  func coordinatorRestartFinishesCommit() async throws {
    let bank = try await LiveBank.classic()
    try bank.start()
    let coordinator = try #require(bank.coordinator)
    let id = try await coordinator.makeTransactionID()
    await bank.stageTransfer(id, amount: 25)
    await bank.accounts[3]?.hold(id)
    let commit = Task { try await coordinator.commit(id, participants: [2, 3]) }
    try await waitUntil("both prepares reached the resources") { await bank.bothPreparing(id) }
    // Phase 2 is lost: the coordinator's messages to the participants are cut from now on.
    bank.transport.block(from: 1, to: 2)
    bank.transport.block(from: 1, to: 3)
    await bank.accounts[3]?.release(id)
    #expect(try await commit.value == .committed)
    await bank.stopCoordinator()
    #expect(await bank.balances() == [100, 100], "nobody has heard the decision")
    #expect(await bank.inDoubt() == 2)
    bank.transport.heal()
    try bank.startCoordinator()
    try await waitUntil("the restarted coordinator delivered the commit") { await bank.balances() == [75, 125] }
    let restarted = try #require(bank.coordinator)
    try await waitUntil("phase 2 finished") { await restarted.activeCount == 0 }
    #expect(try await restarted.outcome(of: id) == .committed)
    await bank.stopAll()
  }

  @Test("non-blocking: participants in doubt resolve through the shared record while the coordinator stays down")
  func nonBlockingResolvesWithoutCoordinator() async throws {
    let log = try InMemoryRecordLog()
    let bank = LiveBank.nonBlocking(log: log)
    try bank.start()
    let coordinator = try #require(bank.coordinator)
    let id = try await coordinator.makeTransactionID()
    await bank.stageTransfer(id, amount: 25)
    await bank.accounts[3]?.hold(id)
    let commit = Task { try await coordinator.commit(id, participants: [2, 3]) }
    try await waitUntil("both prepares reached the resources") { await bank.bothPreparing(id) }
    await bank.stopCoordinator()
    #expect(await bank.inDoubt() >= 1)
    await bank.accounts[3]?.release(id)
    _ = await commit.result
    try await waitUntil("both participants resolved and rolled back") { await bank.settled() }
    #expect(await bank.balances() == [100, 100])
    let store = ReplicatedTransactionRecordStore(log: log, identity: 42)
    #expect(try await store.outcome(of: id)?.decision == .abort)
    await bank.stopAll()
  }

  @Test("an outcome that comes after the deadline is reported unknown, then found by its identifier")
  func outcomeUnknownThenLookedUp() async throws {
    let bank = try await LiveBank.classic()
    try bank.start()
    let coordinator = try #require(bank.coordinator)
    let id = try await coordinator.makeTransactionID()
    await bank.stageTransfer(id, amount: 1)
    await bank.accounts[3]?.hold(id)
    await #expect(throws: TransactionError.outcomeUnknown(id)) {
      _ = try await coordinator.commit(id, participants: [2, 3], deadline: .milliseconds(50))
    }
    #expect(try await coordinator.outcome(of: id) == .inProgress)
    await bank.accounts[3]?.release(id)
    try await waitUntil("the commit lands") { try await coordinator.outcome(of: id) == .committed }
    await bank.stopAll()
  }

  @Test("classic: a transaction looked up as aborted before its commit is refused, not committed")
  func presumedAbortIsFinal() async throws {
    let bank = try await LiveBank.classic()
    try bank.start()
    let coordinator = try #require(bank.coordinator)
    let id = try await coordinator.makeTransactionID()
    await bank.stageTransfer(id, amount: 10)
    // No record and nothing in progress: presumed abort. Whoever asked (a participant's application, say) may
    // already have rolled back on that answer.
    #expect(try await coordinator.outcome(of: id) == .aborted)
    await #expect(throws: TransactionError.rejected(id, .duplicateID)) {
      _ = try await coordinator.commit(id, participants: [2, 3])
    }
    try await waitUntil("nothing in progress") {
      guard await coordinator.activeCount == 0 else { return false }
      return await bank.settled()
    }
    #expect(try await coordinator.outcome(of: id) == .aborted)
    #expect(await bank.balances() == [100, 100], "a transaction answered as aborted must not commit")
    await bank.stopAll()
  }

  @Test("a participant whose prepare fails on disk stops; the transfer aborts, and after a restart nothing remains")
  func prepareFailsOnDisk() async throws {
    let failing = FailingStorage()
    let store = try LocalTransactionRecordStore(storage: failing)
    try await store.open()
    let bank = try await LiveBank.classic()
    bank.participantStores[3] = store
    // Participant 3 stops without voting: the vote timeout is what aborts the transfer (1 s here).
    bank.coordinatorOptions.voteTimeoutTicks = 500
    try bank.start()
    let coordinator = try #require(bank.coordinator)
    let id = try await coordinator.makeTransactionID()
    failing.failWrites(true)
    let result = try await explained(coordinator) {
      try await Transaction(id: id, participants: [2, 3], via: coordinator) {
        await bank.stageTransfer(id, amount: 10)
      }.execute()
    }
    #expect(result.decision == .abort, "\(result)")
    let stopped = try #require(await bank.participantTasks[3]?.result)
    #expect(throws: TransactionStoreError.self) { try stopped.get() }
    failing.failWrites(false)
    let reopened = try LocalTransactionRecordStore(storage: failing)
    try await reopened.open()
    bank.participantStores[3] = reopened
    _ = await bank.stopParticipant(3)
    try bank.startParticipant(3)
    try await waitUntil("every prepared intent is gone") { await bank.settled() }
    #expect(await bank.balances() == [100, 100])
    await bank.stopAll()
  }

  @Test("non-blocking: a prepared record that lands after it was withdrawn leaves nothing pending or prepared")
  func latePreparedRecord() async throws {
    let log = try InMemoryRecordLog()
    let bank = LiveBank.nonBlocking(log: log)
    let channel = DelayingRecordChannel(log: log)
    bank.participantStores[2] = ReplicatedTransactionRecordStore(channel: channel, identity: 42)
    try bank.start()
    let coordinator = try #require(bank.coordinator)
    let id = try await coordinator.makeTransactionID()
    await channel.holdPrepared()
    let result = try await explained(coordinator) {
      try await Transaction(id: id, participants: [2, 3], via: coordinator) {
        await bank.stageTransfer(id, amount: 10)
      }.execute()
    }
    #expect(result.decision == .abort, "\(result)")
    try await waitUntil("participant 2 withdrew its yes and rolled back") {
      await bank.accounts[2]?.rolledBack.contains(id) == true
    }
    try await waitUntil("nothing prepared or in doubt") { await bank.settled() }
    // The write that seemed lost lands now, after participant 2 ended its record and rolled back.
    #expect(await channel.held.count == 1)
    try await channel.land()
    let record = await log.machine.summary(of: id)
    #expect(
      record?.pending.contains(2) != true,
      "pending on a participant that is done with it: kept, and in doubt, until that participant restarts: \(String(describing: record))"
    )
    _ = await bank.stopParticipant(2)
    try bank.startParticipant(2)
    try await waitUntil("participant 2 recovered") { await bank.accounts[2]?.recoveredWith.isEmpty == false }
    #expect(
      await bank.accounts[2]?.recoveredWith == [[]], "a restart must not restore as prepared what was rolled back")
    try await waitUntil("nothing prepared or in doubt") { await bank.settled() }
    #expect(await bank.balances() == [100, 100])
    await bank.stopAll()
  }
}
