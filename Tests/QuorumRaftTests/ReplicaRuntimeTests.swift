import QuorumCore
import QuorumRaft
import Synchronization
import Testing

@testable import QuorumReplica

/// The replica runtime (`ReplicaNode`) on a scripted engine: paths a real engine reaches only in rare schedules.
@Suite("Replica runtime on a scripted engine", .timeLimit(.minutes(2)))
struct ReplicaRuntimeTests {
  @Test("a waiting proposal displaced at its index by a newer one ends outcomeUnknown, never dropped")
  func displacedProposalIsOfUnknownOutcome() async throws {
    // Raft: a leader's entry, replicated to one follower, is truncated by the next leader; the first leader wins
    // again and appends a new proposal at that index. The follower holding the old entry may still win later and
    // commit it, so the old proposal's caller may not be told it was certainly not committed.
    let node = try scriptedNode(EngineScript(sameIndex: true))
    try await whileRunning(node) {
      let first = Task { try await node.propose(1) }
      try await eventually("the first proposal to wait") { await node.currentStatus?.pendingRequests == 1 }
      let second = Task { try await node.propose(2) }
      switch await first.result {
      case .failure(let error as ConsensusError):
        #expect(error == .outcomeUnknown)
      case let other:
        Issue.record("expected outcomeUnknown, got \(other)")
      }
      try await eventually("the second proposal to wait") { await node.currentStatus?.pendingRequests == 1 }
      second.cancel()
      _ = await second.result
    }
  }

  @Test("a lease read waits until the replica has applied the lease's read index")
  func leaseReadWaitsForItsReadIndex() async throws {
    // A lease may cover entries committed but not yet applied here: a new leader's commit of entries its
    // predecessor applied and acknowledged, read in the same turn. An answer from the applied state would miss
    // them. The scripted lease reads at index 1, which nothing has written yet.
    // A long request timeout: the read must still be waiting when the proposal is applied, however loaded the machine.
    let node = try scriptedNode(EngineScript(commitOnPropose: true, leaseIndex: 1)) { $0.requestTimeout = .seconds(60) }
    try await whileRunning(node) {
      let read = Task { try await node.read(.untold, consistency: .lease, atLeast: 0) }
      try await eventually("the lease read to wait for index 1", within: .seconds(10)) {
        await node.currentStatus?.pendingRequests == 1
      }
      #expect(try await node.propose(7) == 7)
      let answer = try await read.value
      #expect(answer.index == 1, "answered from the state at \(answer.index), before the lease's read index")
    }
  }

  @Test("a node without a notification callback does not keep its machine's notifications")
  func notificationsWithoutCallbackAreDropped() async throws {
    let node = try scriptedNode(EngineScript(commitOnPropose: true))
    try await whileRunning(node) {
      for command in UInt64(1)...5 {
        let response = try await node.propose(command)
        #expect(response == command)
      }
      #expect(await node.localQuery(.untold) == 0, "every notification is taken, and dropped, as it is made")
    }
  }

  @Test("a node with a notification callback hands it every notification")
  func notificationsReachTheCallback() async throws {
    let told = Mutex<[UInt64]>([])
    let node = try scriptedNode(
      EngineScript(commitOnPropose: true),
      onNotifications: { _, n in
        told.withLock { $0 += n }
      })
    try await whileRunning(node) {
      for command in UInt64(1)...3 { _ = try await node.propose(command) }
      #expect(await node.localQuery(.untold) == 0)
    }
    #expect(told.withLock { $0 } == [1, 2, 3])
  }

  @Test("stop with a full input mailbox stops at the next turn: a request still queued ends stopped, unproposed")
  func stopWithFullMailbox() async throws {
    let storage = GatedStorage()
    storage.closeGate()
    let node = try scriptedNode(EngineScript(commitOnPropose: true), storage: storage) { $0.inputCapacity = 1 }
    let running = Task { try await node.run() }
    let first = Task { try await node.propose(1) }
    // The loop is held in the write of the first proposal's entry, its inputs empty.
    try await eventually("the first write to wait") { storage.waitingWrites == 1 }
    let (queued, answer) = AsyncStream.makeStream(of: Result<UInt64, any Error>.self)
    node.propose(2, request: nil, acknowledgedThrough: 0, principal: nil) {
      (result: Result<ScriptedNode.IndexedResponse, any Error>) in _ = answer.yield(result.map { $0.value })
    }
    node.stop()  // the inputs are full: the stop does not fit
    storage.openGate()
    try await running.value
    #expect(try await first.value == 1, "the write in progress was finished and applied")
    var answers = queued.makeAsyncIterator()
    switch await answers.next() {
    case .failure(let error as ConsensusError)?:
      #expect(error == .stopped)
    case let other:
      Issue.record("expected the queued proposal to end stopped, got \(String(describing: other))")
    }
    #expect(try await storage.inner.recover().entries.count == 1, "nothing queued after the stop was proposed")
  }

  @Test("leadership-transfer waiters count as pending requests and are refused beyond the limit")
  func transferWaitersAreBounded() async throws {
    let script = EngineScript()
    let node = try scriptedNode(script) {
      $0.maxPendingRequests = 2
      // The transfers wait twice the election timeout: longer than the test.
      $0.electionTimeout = Duration.seconds(300)...Duration.seconds(600)
    }
    let refused = try await whileRunning(node) {
      let waiting = (0..<2).map { _ in Task { try await node.transferLeadership(to: 2) } }
      try await eventually("two transfers to wait") { script.transferCalls.load(ordering: .relaxed) == 2 }
      #expect(await node.currentStatus?.pendingRequests == 2)
      let done = Counter()
      let third = Task {
        defer { done.increment() }
        try await node.transferLeadership(to: 2)
      }
      try await eventually("the third transfer to be answered or started") {
        done.value == 1 || script.transferCalls.load(ordering: .relaxed) > 2
      }
      third.cancel()  // a no-op once it was refused
      for task in waiting { task.cancel() }
      for task in waiting { _ = await task.result }
      return await third.result
    }
    switch refused {
    case .failure(let error as ConsensusError):
      #expect(error == .overloaded(limit: 2))
    case let other:
      Issue.record("expected overloaded, got \(other)")
    }
    #expect(script.transferCalls.load(ordering: .relaxed) == 2, "the refused transfer never reached the engine")
  }

  /// Expects the proposal `waiting` (which never commits) to end cancelled.
  static func expectCancelled(_ waiting: Task<UInt64, any Error>) async {
    switch await waiting.result {
    case .failure(let error): #expect(error is CancellationError, "\(error)")
    case .success: Issue.record("a proposal that never commits succeeded")
    }
  }

  @Test("a request cancelled while the node's inputs are full ends at once, not at its timeout")
  func cancelWithFullMailbox() async throws {
    let storage = GatedStorage()
    storage.closeGate()
    let node = try scriptedNode(EngineScript(), storage: storage) {
      $0.inputCapacity = 1
      $0.requestTimeout = .seconds(60)
    }
    try await whileRunning(node) {
      let waiting = Task { try await node.propose(1) }
      // The loop is held in the write of the proposal's entry (which never commits), its inputs empty.
      try await eventually("the write to wait") { storage.waitingWrites == 1 }
      let (queued, answer) = AsyncStream.makeStream(of: Result<UInt64, any Error>.self)
      node.propose(2, request: nil, acknowledgedThrough: 0, principal: nil) {
        (result: Result<ScriptedNode.IndexedResponse, any Error>) in _ = answer.yield(result.map { $0.value })
      }
      waiting.cancel()  // the inputs are full: a cancel queued there would be refused
      storage.openGate()
      // Not timeout, which a cancel lost to the full inputs would end it with, 60 s later.
      await Self.expectCancelled(waiting)
      _ = queued
    }
  }

  @Test("a request cancelled behind more queued inputs than one turn takes ends at once, not at its timeout")
  func cancelDeepInTheQueue() async throws {
    let storage = GatedStorage()
    storage.closeGate()
    let node = try scriptedNode(EngineScript(), storage: storage) { $0.requestTimeout = .seconds(60) }
    try await whileRunning(node) {
      let first = Task { try await node.propose(1) }
      // The loop is held in the write of the first proposal's entry (which never commits).
      try await eventually("the write to wait") { storage.waitingWrites == 1 }
      // More than one turn's worth of inputs queued ahead of the request to cancel.
      for command in UInt64(2)...5_000 {
        node.propose(command, request: nil, acknowledgedThrough: 0, principal: nil) {
          (_: Result<ScriptedNode.IndexedResponse, any Error>) in
        }
      }
      let waiting = Task { try await node.propose(5_001) }
      try await eventually("the last proposal to be queued") { await node.inputs.count >= 5_000 }
      waiting.cancel()
      storage.openGate()
      // Not timeout, which a cancel tried before its request was taken from the queue would end it with.
      await Self.expectCancelled(waiting)
      first.cancel()
      _ = await first.result
    }
  }
}
