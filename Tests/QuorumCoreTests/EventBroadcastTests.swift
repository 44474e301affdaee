import QuorumCore
import Testing

@Suite("EventBroadcast: every subscriber sees every event; streams end when the actor stops")
struct EventBroadcastTests {
  @Test("two subscribers each get every event in order, and both streams finish")
  func everySubscriberGetsEverything() async {
    let broadcast = EventBroadcast<Int>(bufferLimit: 16)
    let first = broadcast.subscribe()
    let second = broadcast.subscribe()
    #expect(broadcast.subscriberCount == 2)
    for n in 1...5 { broadcast.publish(n) }
    broadcast.finish()
    var seen: [[Int]] = [[], []]
    for await n in first { seen[0].append(n) }
    for await n in second { seen[1].append(n) }
    #expect(seen == [[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]])
  }

  @Test("a subscriber that falls behind loses its oldest events, not the newest, and slows no one")
  func slowSubscriberKeepsNewest() async {
    let broadcast = EventBroadcast<Int>(bufferLimit: 3)
    let slow = broadcast.subscribe()
    for n in 1...10 { broadcast.publish(n) }
    broadcast.finish()
    var seen: [Int] = []
    for await n in slow { seen.append(n) }
    #expect(seen == [8, 9, 10])
  }

  @Test("a subscription made after finish ends at once; one made late sees only later events")
  func lateSubscriptions() async {
    let broadcast = EventBroadcast<String>()
    broadcast.publish("before")
    let late = broadcast.subscribe()
    broadcast.publish("after")
    broadcast.finish()
    var seen: [String] = []
    for await event in late { seen.append(event) }
    #expect(seen == ["after"])
    var afterFinish: [String] = []
    for await event in broadcast.subscribe() { afterFinish.append(event) }
    #expect(afterFinish.isEmpty)
    #expect(broadcast.subscriberCount == 0)
  }

  @Test("a transformed subscription gets the mapped events and leaves out those mapped to nil")
  func transformed() async {
    let broadcast = EventBroadcast<Int>()
    let evens = broadcast.subscribe { $0.isMultiple(of: 2) ? "even \($0)" : nil }
    let all = broadcast.subscribe()
    for n in 1...4 { broadcast.publish(n) }
    broadcast.finish()
    var seen: [String] = []
    for await event in evens { seen.append(event) }
    var raw: [Int] = []
    for await n in all { raw.append(n) }
    #expect(seen == ["even 2", "even 4"])
    #expect(raw == [1, 2, 3, 4])
  }
}
