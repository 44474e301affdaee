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
      group: .default, service: "locks", key: "all", after: 6, timeout: .seconds(60), clock: SystemClock()
    ).records
    #expect(all.map(\.index) == [7, 8, 9, 10])
    #expect(all.map(\.payload) == [[7], [8], [9], [10]])
    let even = try await hub.wait(
      group: .default, service: "locks", key: "even", after: 8, timeout: .seconds(60), clock: SystemClock()
    ).records
    #expect(even.map(\.index) == [10])
    // An entry with two notifications wraps the buffer in the middle; another group's ring is separate.
    hub.publish(group: .default, index: 11, [Self.note("odd", 11), Self.note("odd", 12)])
    hub.publish(group: GroupID(rawValue: 1), index: 1, [Self.note("odd", 99)])
    let latest = try await hub.wait(
      group: .default, service: "locks", key: "all", after: 8, timeout: .seconds(60), clock: SystemClock()
    ).records
    #expect(latest.map(\.payload) == [[9], [10], [11], [12]])
  }
}

/// What a watch may have missed is said, never passed over (review 102 F5).
@Suite("NotificationHub says when notifications may be missing", .timeLimit(.minutes(3)))
struct NotificationHubGapTests {
  static func note(_ key: String, _ byte: UInt8) -> ServiceNotification {
    ServiceNotification(service: "locks", payload: [byte], keys: [key])
  }

  @Test("a member behind the watch's position does not answer with its older notifications")
  func laggingMemberWaitsPastAfter() async throws {
    let hub = NotificationHub()
    // A client saw position 100 elsewhere and watches a member that has applied 90.
    hub.publish(group: .default, index: 90, [Self.note("k", 90)])
    let watch = Task {
      try await hub.wait(
        group: .default, service: "locks", key: "k", after: 100, timeout: .seconds(60), clock: SystemClock())
    }
    _ = try await awaitValue("the watch to wait") { hub.waitsUnderWay == 1 ? true : nil }
    hub.publish(group: .default, index: 95, [Self.note("k", 95)])
    hub.publish(group: .default, index: 100, [Self.note("k", 100)])
    hub.publish(group: .default, index: 101, [Self.note("k", 101)])
    let answer = try await watch.value
    #expect(answer.records.map(\.index) == [101], "entries at or before the watch's position do not wake it")
    #expect(answer.truncatedThrough == nil)
  }

  @Test("a watch from before what the ring dropped is told so at once; one from its floor gets the rest")
  func droppedRecordsAreSaid() async throws {
    let hub = NotificationHub(capacity: 2)
    for index in UInt64(1)...3 { hub.publish(group: .default, index: index, [Self.note("k", UInt8(index))]) }
    let clock = SystemClock()
    let early = try await hub.wait(
      group: .default, service: "locks", key: "k", after: 0, timeout: .seconds(60), clock: clock)
    #expect(early == NotificationHub.Answer(records: [], truncatedThrough: 1), "index 1 was dropped")
    let rest = try await hub.wait(
      group: .default, service: "locks", key: "k", after: 1, timeout: .seconds(60), clock: clock)
    #expect(rest.records.map(\.index) == [2, 3] && rest.truncatedThrough == nil)
    // Two records of one entry, one of them dropped: that entry may be missing in part.
    hub.publish(group: .default, index: 4, [Self.note("k", 4), Self.note("k", 5)])
    hub.publish(group: .default, index: 5, [Self.note("k", 6)])
    #expect(hub.floor(of: .default) == 4)
    let partial = try await hub.wait(
      group: .default, service: "locks", key: "k", after: 3, timeout: .seconds(60), clock: clock)
    #expect(partial.truncatedThrough == 4)
    #expect(hub.floor(of: GroupID(rawValue: 7)) == 0, "another group's ring dropped nothing")
  }

  @Test("a snapshot that replaces the state answers the waits from before it at once, and the later ones")
  func snapshotAnswersWaits() async throws {
    let hub = NotificationHub()
    let clock = SystemClock()
    let before = Task {
      try await hub.wait(group: .default, service: "locks", key: "k", after: 5, timeout: .seconds(60), clock: clock)
    }
    let beyond = Task {
      try await hub.wait(group: .default, service: "locks", key: "k", after: 20, timeout: .seconds(60), clock: clock)
    }
    _ = try await awaitValue("both watches to wait") { hub.waitsUnderWay == 2 ? true : nil }
    hub.reset(group: .default, through: 10)
    #expect(try await before.value == NotificationHub.Answer(records: [], truncatedThrough: 10))
    let again = try await hub.wait(
      group: .default, service: "locks", key: "k", after: 9, timeout: .seconds(60), clock: clock)
    #expect(again.truncatedThrough == 10)
    // A watch from the snapshot's position or later waits as before.
    hub.publish(group: .default, index: 21, [Self.note("k", 21)])
    #expect(try await beyond.value.records.map(\.index) == [21])
    let after = try await hub.wait(
      group: .default, service: "locks", key: "k", after: 10, timeout: .seconds(60), clock: clock)
    #expect(after.records.map(\.index) == [21])
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
          group: .default, service: "locks", key: "k\(n)", after: 0, timeout: .seconds(60), clock: clock
        ).records
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
      group: .default, service: "locks", key: "k0", after: 0, timeout: .seconds(60), clock: clock
    ).records
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
          principal: principal
        ).records
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
      let answer = try await hub.wait(
        group: .default, service: "locks", key: "k", after: 0, timeout: .zero, clock: ExpiredClock())
      #expect(answer == NotificationHub.Answer(records: []))
    }
    // And a notification published later is not handed to a wait that already ended.
    hub.publish(group: .default, index: 1, [ServiceNotification(service: "locks", payload: [1], keys: ["k"])])
    let later = try await hub.wait(
      group: .default, service: "locks", key: "k", after: 0, timeout: .seconds(30), clock: SystemClock()
    ).records
    #expect(later.map(\.index) == [1])
  }
}
