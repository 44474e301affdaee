import Quorum
import Testing

@testable import QuorumHost

@Suite("NotificationHub keeps the newest notifications of each group")
struct NotificationHubTests {
  static func note(_ key: String, _ byte: UInt8) -> ServiceNotification {
    ServiceNotification(service: "locks", payload: [byte], keys: [key, "all"])
  }

  @Test("past its capacity the hub keeps the newest notifications, oldest first, across the wrap-around")
  func wrapAround() async throws {
    let hub = NotificationHub(capacity: 4)
    for index in UInt64(1)...10 {
      hub.publish(group: .default, index: index, [Self.note(index.isMultiple(of: 2) ? "even" : "odd", UInt8(index))])
    }
    let all = try await hub.wait(
      group: .default, service: "locks", key: "all", after: 0, timeout: .seconds(60), clock: SystemClock())
    #expect(all.map(\.index) == [7, 8, 9, 10])
    #expect(all.map(\.payload) == [[7], [8], [9], [10]])
    let even = try await hub.wait(
      group: .default, service: "locks", key: "even", after: 8, timeout: .seconds(60), clock: SystemClock())
    #expect(even.map(\.index) == [10])
    // An entry with two notifications wraps the buffer in the middle; another group's ring is separate.
    hub.publish(group: .default, index: 11, [Self.note("odd", 11), Self.note("odd", 12)])
    hub.publish(group: GroupID(rawValue: 1), index: 1, [Self.note("odd", 99)])
    let latest = try await hub.wait(
      group: .default, service: "locks", key: "all", after: 0, timeout: .seconds(60), clock: SystemClock())
    #expect(latest.map(\.payload) == [[9], [10], [11], [12]])
  }
}

@Suite("NotificationHub bounds its waits")
struct NotificationHubBoundTests {
  @Test("past maxWaits a wait is refused as overloaded; a notification wakes only the waits on its keys")
  func boundedAndIndexed() async throws {
    let hub = NotificationHub(maxWaits: 3)
    let clock = SystemClock()
    let waits = (0..<3).map { n in
      Task {
        try await hub.wait(
          group: .default, service: "locks", key: "k\(n)", after: 0, timeout: .seconds(60), clock: clock)
      }
    }
    _ = try await awaitValue("three waits under way") { hub.waitsUnderWay == 3 ? true : nil }
    await #expect(throws: ConsensusError.overloaded(limit: 3)) {
      try await hub.wait(group: .default, service: "locks", key: "other", after: 0, timeout: .zero, clock: clock)
    }
    hub.publish(
      group: .default, index: 1, [ServiceNotification(service: "locks", payload: [1], keys: ["k1", "elsewhere"])])
    #expect(try await waits[1].value.map(\.payload) == [[1]])
    // The others still wait; ended, each makes room again.
    hub.publish(group: .default, index: 2, [ServiceNotification(service: "locks", payload: [2], keys: ["k0", "k2"])])
    #expect(try await waits[0].value.map(\.index) == [2])
    #expect(try await waits[2].value.map(\.index) == [2])
    let next = try await hub.wait(
      group: .default, service: "locks", key: "k0", after: 0, timeout: .seconds(60), clock: clock)
    #expect(next.map(\.index) == [2])
  }
}

@Suite("NotificationHub shares its waits among principals")
struct NotificationHubShareTests {
  @Test("one principal's waits stop at its share; another's and unauthenticated ones still begin")
  func perPrincipalShare() async throws {
    let hub = NotificationHub(maxWaits: 6, maxWaitsPerPrincipal: 2)
    let clock = SystemClock()
    func wait(_ key: String, as principal: String?) -> Task<[NotificationHub.Record], any Error> {
      Task {
        try await hub.wait(
          group: .default, service: "locks", key: key, after: 0, timeout: .seconds(60), clock: clock,
          principal: principal)
      }
    }
    let mallory = [wait("m0", as: "mallory"), wait("m1", as: "mallory")]
    _ = try await awaitValue("mallory's two waits under way") { hub.waitsUnderWay == 2 ? true : nil }
    await #expect(throws: ConsensusError.overloaded(limit: 2)) {
      try await hub.wait(
        group: .default, service: "locks", key: "m2", after: 0, timeout: .zero, clock: clock, principal: "mallory")
    }
    let others = [wait("a", as: "alice"), wait("x", as: nil)]
    _ = try await awaitValue("alice's and an unauthenticated wait under way") { hub.waitsUnderWay == 4 ? true : nil }
    // An ended wait gives its principal's slot back.
    hub.publish(
      group: .default, index: 1, [ServiceNotification(service: "locks", payload: [1], keys: ["m0", "a", "x"])])
    #expect(try await mallory[0].value.map(\.index) == [1])
    for wait in others { #expect(try await wait.value.map(\.index) == [1]) }
    let again = wait("m0", as: "mallory")
    #expect(try await again.value.map(\.index) == [1], "its first wait ended: mallory may wait again")
    hub.publish(group: .default, index: 2, [ServiceNotification(service: "locks", payload: [2], keys: ["m1"])])
    #expect(try await mallory[1].value.map(\.index) == [2])
  }
}

/// A clock whose timers have always already fired: a wait's timeout can come before the wait has registered.
struct ExpiredClock: NodeClock {
  func monotonicNanos() -> UInt64 { 0 }
  func wallClockMillis() -> UInt64 { 0 }
  func sleep(untilNanos deadline: UInt64) async throws {}
}

// Three minutes, not one: alone the test takes a hundredth of a second, but in a full parallel run on two cores
// its waits queue behind the other suites' work for the pool's threads, and it finished after 45–50 s.
@Suite("NotificationHub waits end on time", .timeLimit(.minutes(3)))
struct NotificationHubTimeoutTests {
  @Test("a timeout that fires before the wait has registered still ends the wait, empty (2,000 waits)")
  func timeoutBeforeRegistration() async throws {
    let hub = NotificationHub()
    for _ in 0..<2_000 {
      let records = try await hub.wait(
        group: .default, service: "locks", key: "k", after: 0, timeout: .zero, clock: ExpiredClock())
      #expect(records.isEmpty)
    }
    // And a notification published later is not handed to a wait that already ended.
    hub.publish(group: .default, index: 1, [ServiceNotification(service: "locks", payload: [1], keys: ["k"])])
    let later = try await hub.wait(
      group: .default, service: "locks", key: "k", after: 0, timeout: .seconds(30), clock: SystemClock())
    #expect(later.map(\.index) == [1])
  }
}
