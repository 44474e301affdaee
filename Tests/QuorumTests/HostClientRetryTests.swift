import Quorum
import Synchronization
import Testing

/// A one-member group whose commands wait until the test answers them; registrations open sessions 1, 2, ….
final class HeldCommandsChannel: RequestChannel {
  private struct Held {
    var request: RequestID
    var acknowledged: UInt64
    var answer: CheckedContinuation<[UInt8], Never>
  }
  private let state = Mutex<(sessions: UInt64, held: [Held])>((0, []))
  /// Each command as it arrives.
  let arrivals: AsyncStream<RequestID>
  private let arrived: AsyncStream<RequestID>.Continuation

  init() { (arrivals, arrived) = AsyncStream.makeStream() }

  func send(_ request: [UInt8], to member: NodeID, timeout: Duration) async throws -> [UInt8] {
    switch try HostRequest(wireBytes: request) {
    case .registerSession:
      return HostReply.session(
        state.withLock {
          $0.sessions += 1
          return $0.sessions
        }
      ).wireBytes()
    case .command(_, _, let id?, let acknowledged):
      return await withCheckedContinuation { continuation in
        state.withLock { $0.held.append(Held(request: id, acknowledged: acknowledged, answer: continuation)) }
        arrived.yield(id)
      }
    default: return HostReply.failure(HostFailure(.consensus(.stopped))).wireBytes()
    }
  }

  /// Sessions registered so far.
  var registrations: UInt64 { state.withLock { $0.sessions } }

  /// The acknowledged mark `request` carried.
  func acknowledged(by request: RequestID) -> UInt64? {
    state.withLock { $0.held.first { $0.request == request }?.acknowledged }
  }

  /// Answers the waiting `request` with `reply`.
  func answer(_ request: RequestID, with reply: HostReply) {
    let held = state.withLock { state -> Held? in
      guard let index = state.held.firstIndex(where: { $0.request == request }) else { return nil }
      return state.held.remove(at: index)
    }
    held?.answer.resume(returning: reply.wireBytes())
  }
}

/// A group of members 1, 2, 3 whose answers to membership changes (and commands) follow a script, one step per
/// attempt; sessions are always granted.
final class ScriptedMembershipChannel: RequestChannel {
  enum Step: Sendable, CustomStringConvertible {
    case reply(HostReply)
    case fail(RequestChannelError)

    var description: String {
      switch self {
      case .reply(let reply): return "\(reply)"
      case .fail(let error): return "\(error)"
      }
    }
  }
  private let script: Mutex<[Step]>
  let attempts = Mutex(0)

  init(_ script: [Step]) { self.script = Mutex(script) }

  func send(_ request: [UInt8], to member: NodeID, timeout: Duration) async throws -> [UInt8] {
    if case .registerSession = try HostRequest(wireBytes: request) { return HostReply.session(1).wireBytes() }
    attempts.withLock { $0 += 1 }
    switch script.withLock({ $0.isEmpty ? Step.reply(.done) : $0.removeFirst() }) {
    case .reply(let reply): return reply.wireBytes()
    case .fail(let error): throw error
    }
  }
}

@Suite("Host client retries and sessions", .timeLimit(.minutes(1)))
struct HostClientRetryTests {
  static let map = ClusterMap(
    cluster: "scripted", members: [1: "", 2: "", 3: ""],
    groups: [GroupSpec(id: .default, name: "main", members: [1, 2, 3], services: ["kv"])])

  /// A scripted channel answers at once, so the only waits are back-offs: the deadlines are generous because the
  /// whole suite starts at once on a loaded machine, where a client's task may not run for many seconds.
  static var patient: HostClientOptions {
    var options = HostClientOptions()
    options.deadline = .seconds(120)
    options.attemptTimeout = .seconds(60)
    return options
  }

  /// The one-member group that ``HeldCommandsChannel`` plays.
  static let oneMember = ClusterMap(
    cluster: "held", members: [1: ""], groups: [GroupSpec(id: .default, name: "main", members: [1], services: ["kv"])])

  static func failure(_ error: ConsensusError) -> ScriptedMembershipChannel.Step {
    .reply(.failure(HostFailure(.consensus(error))))
  }

  @Test("an expired session's command goes again under a new one, leaving alone a session another call made")
  func expiredSessionKeepsItsSuccessor() async throws {
    let channel = HeldCommandsChannel()
    var options = HostClientOptions()
    options.deadline = .seconds(30)
    options.attemptTimeout = .seconds(30)
    let client = HostClient(channel: channel, members: [1], map: Self.oneMember, options: options)
    func command(_ byte: UInt8) -> Task<[UInt8], any Error> {
      Task { try await client.command([byte], service: "kv", group: .default) }
    }
    var arrivals = channel.arrivals.makeAsyncIterator()
    let expired = HostReply.failure(HostFailure(.consensus(.sessionExpired(1))))

    // X and Y in flight under session 1, which expires.
    let x = command(1)
    #expect(await arrivals.next() == RequestID(session: 1, sequence: 1))
    let y = command(2)
    #expect(await arrivals.next() == RequestID(session: 1, sequence: 2))
    // X was refused before it was applied: it registers session 2 and goes again under it.
    channel.answer(RequestID(session: 1, sequence: 1), with: expired)
    #expect(await arrivals.next() == RequestID(session: 2, sequence: 1))
    let w = command(4)
    #expect(await arrivals.next() == RequestID(session: 2, sequence: 2))
    // Y learns that session 1 expired: session 2, and W's place in it, stand, and Y goes again under it.
    channel.answer(RequestID(session: 1, sequence: 2), with: expired)
    #expect(await arrivals.next() == RequestID(session: 2, sequence: 3))
    channel.answer(RequestID(session: 2, sequence: 1), with: .answer([10], index: 5))
    #expect(try await x.value == [10])
    channel.answer(RequestID(session: 2, sequence: 3), with: .answer([20], index: 6))
    #expect(try await y.value == [20])

    let v = command(5)
    let next = await arrivals.next()
    #expect(next == RequestID(session: 2, sequence: 4), "a new session was registered, or the sequence reused")
    #expect(
      channel.acknowledged(by: RequestID(session: 2, sequence: 4)) == 1,
      "acknowledged request 2#2, whose answer has not come")
    channel.answer(RequestID(session: 2, sequence: 2), with: .answer([40], index: 7))
    if let next { channel.answer(next, with: .answer([50], index: 8)) }
    #expect(try await w.value == [40])
    #expect(try await v.value == [50])
  }

  /// A clock whose monotonic time the test moves.
  final class SteppedClock: NodeClock {
    private let nanos = Mutex<UInt64>(1)
    func advance(by duration: Duration) { nanos.withLock { $0 += UInt64(duration.components.seconds) * 1_000_000_000 } }
    func monotonicNanos() -> UInt64 { nanos.withLock { $0 } }
    func wallClockMillis() -> UInt64 { 1_796_000_000_000 + monotonicNanos() / 1_000_000 }
    func sleep(untilNanos deadline: UInt64) async throws { try await Task.sleep(for: .milliseconds(1)) }
  }

  @Test("a command whose session expired after its deadline passed ends, certainly not applied, instead of renewing")
  func renewalKeepsTheDeadline() async throws {
    let channel = HeldCommandsChannel()
    let clock = SteppedClock()
    var options = HostClientOptions()
    options.deadline = .seconds(30)
    options.attemptTimeout = .seconds(30)
    let client = HostClient(channel: channel, members: [1], map: Self.oneMember, options: options, clock: clock)
    var arrivals = channel.arrivals.makeAsyncIterator()
    let x = Task { try await client.command([1], service: "kv", group: .default) }
    #expect(await arrivals.next() == RequestID(session: 1, sequence: 1))
    // The whole deadline passes while the command waits; then it is refused, not carried out, under an expired
    // session. Registering a new session then would get the whole deadline again: against a slow or leaderless
    // group, the call would run to about twice its deadline.
    clock.advance(by: .seconds(40))
    channel.answer(RequestID(session: 1, sequence: 1), with: .failure(HostFailure(.consensus(.sessionExpired(1)))))
    await #expect {
      try await x.value
    } throws: { error in
      guard case QuorumClientError.timeout(outcomeUnknown: false, _) = error else { return false }
      return true
    }
    #expect(channel.registrations == 1, "a session was registered after the deadline had passed")
  }

  @Test("a session idle for longer than the renewal interval is replaced before the next command")
  func idleSessionIsRenewed() async throws {
    let channel = HeldCommandsChannel()
    let clock = SteppedClock()
    let client = HostClient(channel: channel, members: [1], map: Self.oneMember, clock: clock)
    var arrivals = channel.arrivals.makeAsyncIterator()
    func command(expecting id: RequestID) async throws {
      let call = Task { try await client.command([1], service: "kv", group: .default) }
      let arrived = await arrivals.next()
      #expect(arrived == id)
      if let arrived { channel.answer(arrived, with: .answer([1], index: 1)) }
      _ = try await call.value
    }
    try await command(expecting: RequestID(session: 1, sequence: 1))
    clock.advance(by: .seconds(30))
    try await command(expecting: RequestID(session: 1, sequence: 2))
    // Idle past the renewal: the server may have expired session 1, which would leave the command's outcome unknown.
    clock.advance(by: .seconds(61))
    try await command(expecting: RequestID(session: 2, sequence: 1))
  }

  @Test(
    "a membership change that may have been carried out is not retried: its outcome is unknown",
    arguments: [
      ScriptedMembershipChannel.Step.fail(.timeout(1)), .fail(.connectionLost(1, "reset by peer")), failure(.timeout),
      failure(.stopped), failure(.outcomeUnknown),
    ])
  func membershipChangeNotRetriedBlindly(_ first: ScriptedMembershipChannel.Step) async throws {
    let channel = ScriptedMembershipChannel([first])
    let client = HostClient(channel: channel, members: [1, 2, 3], map: Self.map, options: Self.patient)
    await #expect(throws: QuorumClientError.outcomeUnknown) {
      try await client.changeMembership(.addVoter(4), group: .default)
    }
    #expect(channel.attempts.withLock { $0 } == 1)
  }

  @Test(
    "a membership change certainly not carried out is retried",
    arguments: [
      failure(.notLeader(hint: 2)), failure(.notLeader(hint: nil)), failure(.dropped), failure(.overloaded(limit: 1)),
      failure(.transferInProgress), ScriptedMembershipChannel.Step.fail(.unreachable(1, "connection refused")),
    ])
  func membershipChangeRetriedWhenNotApplied(_ first: ScriptedMembershipChannel.Step) async throws {
    let channel = ScriptedMembershipChannel([first])
    let client = HostClient(channel: channel, members: [1, 2, 3], map: Self.map, options: Self.patient)
    try await client.changeMembership(.addVoter(4), group: .default)
    #expect(channel.attempts.withLock { $0 } == 2)
  }

  @Test(
    "a command under a session is retried after the same failures",
    arguments: [
      ScriptedMembershipChannel.Step.fail(.timeout(1)), .fail(.connectionLost(1, "reset by peer")), failure(.timeout),
    ])
  func sessionCommandRetried(_ first: ScriptedMembershipChannel.Step) async throws {
    let channel = ScriptedMembershipChannel([first, .reply(.answer([1], index: 3))])
    let client = HostClient(channel: channel, members: [1, 2, 3], map: Self.map, options: Self.patient)
    #expect(try await client.command([9], service: "kv", group: .default) == [1])
    #expect(channel.attempts.withLock { $0 } == 2)
  }
}

extension HostClientRetryTests {
  @Test(
    "a command refused before the log after an attempt that may have been applied has an unknown outcome",
    arguments: [
      ScriptedMembershipChannel.Step.fail(.timeout(1)), .fail(.connectionLost(1, "reset by peer")), failure(.timeout),
      failure(.outcomeUnknown),
    ])
  func refusalAfterUncertainAttempt(_ first: ScriptedMembershipChannel.Step) async throws {
    let quota = ScriptedMembershipChannel.Step.reply(
      .failure(HostFailure(.spaceQuotaExceeded(usedBytes: 2, quotaBytes: 1))))
    let channel = ScriptedMembershipChannel([first, quota])
    let client = HostClient(channel: channel, members: [1, 2, 3], map: Self.map, options: Self.patient)
    await #expect(throws: QuorumClientError.outcomeUnknown) {
      try await client.command([9], service: "kv", group: .default)
    }
    #expect(channel.attempts.withLock { $0 } == 2)
  }

  @Test("a command whose session expired after an attempt that may have been applied has an unknown outcome")
  func expiredAfterUncertainAttempt() async throws {
    let channel = ScriptedMembershipChannel([.fail(.timeout(1)), Self.failure(.sessionExpired(1))])
    let client = HostClient(channel: channel, members: [1, 2, 3], map: Self.map, options: Self.patient)
    await #expect(throws: QuorumClientError.outcomeUnknown) {
      try await client.command([9], service: "kv", group: .default)
    }
    #expect(channel.attempts.withLock { $0 } == 2)
  }

  @Test("a write that may have been applied and is then turned away by every member has an unknown outcome")
  func refusedByAllAfterUncertainAttempt() async throws {
    let channel = ScriptedMembershipChannel([
      .fail(.timeout(1)), .fail(.refused(1, "bad credential")), .fail(.refused(2, "bad credential")),
      .fail(.refused(3, "bad credential")),
    ])
    let client = HostClient(channel: channel, members: [1, 2, 3], map: Self.map, options: Self.patient)
    await #expect(throws: QuorumClientError.outcomeUnknown) {
      try await client.command([9], service: "kv", group: .default)
    }
  }

  @Test("a command refused for what it is, after an attempt that may have been applied, is still rejected")
  func requestRefusalAfterUncertainAttempt() async throws {
    let unknown = HostError.unknownService("kv", group: .default)
    let channel = ScriptedMembershipChannel([.fail(.timeout(1)), .reply(.failure(HostFailure(unknown)))])
    let client = HostClient(channel: channel, members: [1, 2, 3], map: Self.map, options: Self.patient)
    await #expect(throws: QuorumClientError.rejected(unknown)) {
      try await client.command([9], service: "kv", group: .default)
    }
  }

  @Test("a command refused before the log with no uncertain attempt before is rejected")
  func refusalFirst() async throws {
    let quota = HostError.spaceQuotaExceeded(usedBytes: 2, quotaBytes: 1)
    let channel = ScriptedMembershipChannel([Self.failure(.notLeader(hint: 2)), .reply(.failure(HostFailure(quota)))])
    let client = HostClient(channel: channel, members: [1, 2, 3], map: Self.map, options: Self.patient)
    await #expect(throws: QuorumClientError.rejected(quota)) {
      try await client.command([9], service: "kv", group: .default)
    }
  }
}
