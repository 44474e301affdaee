import QuorumCore
import Testing

@testable import QuorumKV

/// A replicated log that answers proposals from a script and records what it was sent: the in-process client's
/// session handling, without a cluster.
private actor ScriptedLog: ReplicatedLog {
  typealias Machine = KVStore

  struct Sent: Equatable {
    var request: RequestID?
    var acknowledgedThrough: UInt64
  }

  private var script: [Result<KVResponse, ConsensusError>]
  private(set) var sent: [Sent] = []
  private(set) var registrations: UInt64 = 0
  /// Sequence numbers whose proposal waits until ``release(_:)``.
  private var held: Set<UInt64>
  private var parked: [UInt64: CheckedContinuation<Void, Never>] = [:]
  /// Registrations wait until ``release(_:)`` of sequence 0 while this is set.
  private var holdsRegistrations = false
  private var heldRegistrations: [CheckedContinuation<Void, Never>] = []
  private let arrivals: AsyncStream<UInt64>.Continuation

  init(
    _ script: [Result<KVResponse, ConsensusError>], holding held: Set<UInt64> = [],
    arrivals: AsyncStream<UInt64>.Continuation
  ) {
    self.script = script
    self.held = held
    self.arrivals = arrivals
  }

  func propose(_ command: KVCommand, request: RequestID?) async throws -> KVResponse {
    try await propose(command, request: request, acknowledgedThrough: 0)
  }

  func propose(_ command: KVCommand, request: RequestID?, acknowledgedThrough: UInt64) async throws -> KVResponse {
    sent.append(Sent(request: request, acknowledgedThrough: acknowledgedThrough))
    let sequence = request?.sequence ?? 0
    arrivals.yield(sequence)
    if held.contains(sequence) {
      await withCheckedContinuation { parked[sequence] = $0 }
    }
    guard !script.isEmpty else { return .done(previous: nil) }
    return try script.removeFirst().get()
  }

  func release(_ sequence: UInt64) {
    held.remove(sequence)
    parked.removeValue(forKey: sequence)?.resume()
    if sequence == 0 {
      holdsRegistrations = false
      for registration in heldRegistrations { registration.resume() }
      heldRegistrations = []
    }
  }

  func read(_ query: KVQuery, consistency: ReadConsistency) async throws -> KVQueryResult {
    throw ConsensusError.stopped
  }

  func registerSession() async throws -> UInt64 {
    registrations += 1
    let number = registrations
    if holdsRegistrations {
      arrivals.yield(0)
      await withCheckedContinuation { heldRegistrations.append($0) }
    }
    return number * 100
  }

  func holdRegistrations() { holdsRegistrations = true }
}

@Suite("KVClient sessions", .timeLimit(.minutes(1)))
struct KVClientSessionTests {
  private let quick = RetryPolicy(maxAttempts: 5, initialBackoff: .microseconds(10), maxBackoff: .microseconds(10))

  private func client(_ log: ScriptedLog) -> KVClient<ScriptedLog> {
    KVClient(members: [1: log], retry: quick)
  }

  @Test("a write refused for an expired session before any uncertain attempt goes again once under a new session")
  func expiredSessionIsRenewed() async throws {
    let (_, arrivals) = AsyncStream<UInt64>.makeStream()
    let log = ScriptedLog([.failure(.sessionExpired(100)), .success(.done(previous: [7]))], arrivals: arrivals)
    let kv = client(log)
    let previous = try await kv.put("k", [UInt8]([1]))
    #expect(previous == [7])
    #expect(await log.registrations == 2)
    let sent = await log.sent
    #expect(sent.map { $0.request?.session } == [100, 200])
  }

  @Test("a write whose session expired after an attempt of unknown outcome reports outcomeUnknown, not a retry")
  func expiredAfterUncertainAttempt() async throws {
    let (_, arrivals) = AsyncStream<UInt64>.makeStream()
    let log = ScriptedLog([.failure(.timeout), .failure(.sessionExpired(100))], arrivals: arrivals)
    let kv = client(log)
    await #expect(throws: ConsensusError.outcomeUnknown) { try await kv.put("k", [UInt8]([1])) }
    #expect(await log.registrations == 1)
    #expect(await log.sent.count == 2)
  }

  @Test("a second expiry in a row is reported, not retried for ever")
  func expiredTwice() async throws {
    let (_, arrivals) = AsyncStream<UInt64>.makeStream()
    let log = ScriptedLog([.failure(.sessionExpired(100)), .failure(.sessionExpired(200))], arrivals: arrivals)
    let kv = client(log)
    await #expect(throws: ConsensusError.sessionExpired(200)) { try await kv.put("k", [UInt8]([1])) }
    #expect(await log.registrations == 2)
  }

  @Test("overlapping writes that find no session open one between them")
  func overlappingWritesShareARegistration() async throws {
    let (stream, arrivals) = AsyncStream<UInt64>.makeStream()
    let log = ScriptedLog([], arrivals: arrivals)
    await log.holdRegistrations()
    let kv = client(log)
    var seen = stream.makeAsyncIterator()
    let first = Task { try await kv.put("a", [UInt8]([1])) }
    #expect(await seen.next() == 0)  // its registration, held
    let second = Task { try await kv.put("b", [UInt8]([2])) }
    // The registration is held until the second write waits for it (or, were it to register its own, until that
    // one arrives too).
    while await kv.waitingForRegistration == 0, await log.registrations < 2 { await Task.yield() }
    await log.release(0)
    _ = try await first.value
    _ = try await second.value
    #expect(await log.registrations == 1)
    #expect(Set(await log.sent.compactMap { $0.request?.session }) == [100])
  }

  @Test("writes acknowledge the answers received, never a write still in flight")
  func acknowledgements() async throws {
    let (stream, arrivals) = AsyncStream<UInt64>.makeStream()
    let log = ScriptedLog([], holding: [2], arrivals: arrivals)
    let kv = client(log)
    var seen = stream.makeAsyncIterator()
    try await kv.put("a", [UInt8]([1]))  // sequence 1
    #expect(await seen.next() == 1)
    let slow = Task { try await kv.put("b", [UInt8]([2])) }  // sequence 2, held by the log
    #expect(await seen.next() == 2)
    try await kv.put("c", [UInt8]([3]))  // sequence 3, while 2 is in flight
    #expect(await seen.next() == 3)
    try await kv.put("d", [UInt8]([4]))  // sequence 4: 3 was answered, 2 still is not
    #expect(await seen.next() == 4)
    await log.release(2)
    _ = try await slow.value
    try await kv.put("e", [UInt8]([5]))  // sequence 5, all answered
    #expect(await seen.next() == 5)
    let marks = await log.sent.map(\.acknowledgedThrough)
    #expect(marks == [0, 1, 1, 1, 4])
  }
}
