import Quorum
import Synchronization
import Testing

/// A channel whose members answer as scripted: `refusing` members turn the client away for good, the others
/// answer every request with "not the leader, ask `hint`".
final class ScriptedChannel: RequestChannel {
  let refusing: Set<NodeID>
  let hint: NodeID?
  let attempts = Mutex<[NodeID]>([])

  init(refusing: Set<NodeID>, hint: NodeID?) {
    self.refusing = refusing
    self.hint = hint
  }

  func send(_ request: [UInt8], to member: NodeID, timeout: Duration) async throws -> [UInt8] {
    attempts.withLock { $0.append(member) }
    if refusing.contains(member) { throw RequestChannelError.refused(member, "authentication failed") }
    return HostReply.failure(HostFailure(.consensus(.notLeader(hint: hint)))).wireBytes()
  }
}

/// A clock whose time moves only when the client sleeps: a sleep returns at once, having moved the time to its end.
/// A deadline then passes only if the client waits (backs off, or retries) that long, never because a loaded machine
/// was slow to run it.
final class SteppingClock: NodeClock {
  private let now = Mutex<UInt64>(0)
  /// The sleeps asked for, in nanoseconds.
  let sleeps = Mutex<[UInt64]>([])

  func monotonicNanos() -> UInt64 { now.withLock { $0 } }
  func wallClockMillis() -> UInt64 { monotonicNanos() / 1_000_000 }
  func sleep(untilNanos deadline: UInt64) async throws {
    try Task.checkCancellation()
    now.withLock { now in
      sleeps.withLock { $0.append(deadline &- min(deadline, now)) }
      now = max(now, deadline)
    }
  }
}

@Suite("A client some members refuse")
struct HostClientRefusalTests {
  static let map = ClusterMap(
    cluster: "refusals", members: [1: "", 2: "", 3: ""],
    groups: [GroupSpec(id: .default, name: "main", members: [1, 2, 3], services: ["kv"])])

  @Test("a redirect to a member that refused the client is not followed: the client backs off instead of spinning")
  func redirectsToARefusingLeaderBackOff() async throws {
    // Members 2 and 3 accept the client and point at 1, the leader, which refuses it (say, it has not yet read
    // the new credentials file).
    let channel = ScriptedChannel(refusing: [1], hint: 1)
    var options = HostClientOptions()
    options.deadline = .seconds(1)
    let client = HostClient(channel: channel, members: [1, 2, 3], map: Self.map, options: options)
    let kv = KeyValueClient(client)
    await #expect(throws: QuorumClientError.self) { try await kv.put("k", "v") }
    let attempts = channel.attempts.withLock { $0 }
    #expect(attempts.filter { $0 == 1 }.count <= 1, "the refusing member was asked again: \(attempts)")
    // Backing off from 5 ms, doubling to 200 ms, leaves room for a few dozen attempts in a second; following the
    // redirect without a pause made thousands.
    #expect(attempts.count < 100, "\(attempts.count) attempts in one second")
  }

  @Test("when every member refuses, the call fails at once with .refused")
  func everyMemberRefuses() async throws {
    let channel = ScriptedChannel(refusing: [1, 2, 3], hint: nil)
    var options = HostClientOptions()
    options.deadline = .seconds(120)
    // On the stepping clock the deadline cannot pass while the call waits for a thread (under load the call once
    // took its whole 120 s, backing off between refusals on the system clock): only the client's own waiting
    // counts.
    let clock = SteppingClock()
    let client = HostClient(channel: channel, members: [1, 2, 3], map: Self.map, options: options, clock: clock)
    do {
      _ = try await KeyValueClient(client).get("k")
      Issue.record("the read succeeded")
    } catch QuorumClientError.refused(let why) {
      #expect(why.contains("authentication failed"), "\(why)")
    }
    #expect(Set(channel.attempts.withLock { $0 }) == [1, 2, 3])
    // Refusals are not back-pressure: the next member is asked at once, with no back-off in between.
    #expect(clock.sleeps.withLock { $0 } == [])
  }
}
