import QuorumCore
import QuorumSimulation
import QuorumTestSupport
import Testing

// MARK: - Virtual time and the event queue

@Suite("Virtual time and the event queue")
struct EventQueueTests {
  @Test("virtual time adds, compares and prints in milliseconds")
  func virtualTimeArithmetic() {
    let t = VirtualTime.zero + .milliseconds(3) + .microseconds(42)
    #expect(t.nanoseconds == 3_042_000)
    #expect(t.description == "3.042ms")
    #expect((VirtualTime.zero + .microseconds(5)).description == "0.005ms")
    #expect(t.since(.zero) == .microseconds(3_042))
    #expect(VirtualTime.zero.since(t) == .zero)
    #expect(VirtualDuration.seconds(2) == .milliseconds(1_000) * 2)
    #expect(VirtualDuration.milliseconds(1).duration == .milliseconds(1))
  }

  @Test(
    "pops in time order, ties in insertion order, against a naive sort", .heavy, arguments: [1, 2, 3, 4, 5] as [UInt64])
  func ordersLikeANaiveSort(seed: UInt64) {
    var rng = SeededRandom(seed: seed)
    var queue = EventQueue<Int>()
    // The model: every scheduled (time, insertion number), popped as the minimum of the pair.
    var model: [(time: UInt64, sequence: Int)] = []
    var nextEvent = 0
    for _ in 0..<3_000 {
      if rng.chance(0.6) || model.isEmpty {
        // A narrow time range makes ties common.
        let time = UInt64.random(in: 0..<50, using: &rng)
        queue.schedule(nextEvent, at: VirtualTime(nanoseconds: time))
        model.append((time, nextEvent))
        nextEvent += 1
      } else {
        let index = model.indices.min { (model[$0].time, model[$0].sequence) < (model[$1].time, model[$1].sequence) }!
        let expected = model.remove(at: index)
        let nextTime = queue.nextTime
        let popped = queue.pop()
        // (Plain checks rather than #expect: this loop runs thousands of times.)
        let time = VirtualTime(nanoseconds: expected.time)
        if nextTime != time || popped?.time != time || popped?.event != expected.sequence {
          Issue.record("expected event \(expected.sequence) at \(time), got \(String(describing: popped))")
          return
        }
      }
      if queue.count != model.count { Issue.record("count \(queue.count), model \(model.count)") }
    }
    let rest = model.sorted { ($0.time, $0.sequence) < ($1.time, $1.sequence) }.map(\.sequence)
    var drained: [Int] = []
    while let (_, event) = queue.pop() { drained.append(event) }
    #expect(drained == rest)
    #expect(queue.isEmpty && queue.nextTime == nil)
  }

  @Test("removeAll(where:) keeps the order of what is left, and later ties still follow insertion order")
  func removeAllKeepsOrder() {
    var rng = SeededRandom(seed: 99)
    var queue = EventQueue<Int>()
    var model: [(time: UInt64, event: Int)] = []
    for event in 0..<500 {
      let time = UInt64.random(in: 0..<20, using: &rng)
      queue.schedule(event, at: VirtualTime(nanoseconds: time))
      model.append((time, event))
    }
    queue.removeAll { $0 % 3 == 0 }
    model.removeAll { $0.event % 3 == 0 }
    queue.schedule(1_000, at: VirtualTime(nanoseconds: 5))
    model.append((5, 1_000))
    let expected = model.enumerated().sorted { ($0.element.time, $0.offset) < ($1.element.time, $1.offset) }
      .map(\.element.event)
    var drained: [Int] = []
    while let (_, event) = queue.pop() { drained.append(event) }
    #expect(drained == expected)
  }
}

// MARK: - The network model

@Suite("Simulated network")
struct SimulatedNetworkTests {
  let a: NodeID = 1
  let b: NodeID = 2
  let c: NodeID = 3

  /// Routes `samples` messages on one link and returns how many were lost and how many duplicated.
  func sample(_ faults: LinkFaults, seed: UInt64, samples: Int = 100_000) -> (lost: Int, duplicated: Int) {
    let network = SimulatedNetwork(defaultFaults: faults)
    var rng = SeededRandom(seed: seed)
    var lost = 0
    var duplicated = 0
    for _ in 0..<samples {
      switch network.route(Link(from: a, to: b), at: .zero, using: &rng).count {
      case 0: lost += 1
      case 2: duplicated += 1
      default: break
      }
    }
    return (lost, duplicated)
  }

  @Test("drop and duplicate probabilities are honoured over 100,000 messages", arguments: [11, 12] as [UInt64])
  func probabilitiesAreHonoured(seed: UInt64) {
    let (lost, duplicated) = sample(LinkFaults(dropProbability: 0.2, duplicateProbability: 0.1), seed: seed)
    // Binomial standard deviations are about 126 and 95; allow well over five of them.
    #expect(abs(lost - 20_000) < 1_000, "lost \(lost) of 100000 at p = 0.2")
    #expect(abs(duplicated - 8_000) < 800, "duplicated \(duplicated) of the ~80000 delivered at p = 0.1")
    #expect(sample(LinkFaults(dropProbability: 1), seed: seed, samples: 1_000).lost == 1_000)
    #expect(sample(LinkFaults.none, seed: seed, samples: 1_000) == (0, 0))
  }

  @Test("the same seed routes the same way")
  func routingIsDeterministic() {
    let faults = LinkFaults(
      dropProbability: 0.3, duplicateProbability: 0.3, delay: .uniform(.microseconds(10), .milliseconds(10)),
      reorderProbability: 0.2)
    func run() -> [[VirtualTime]] {
      var rng = SeededRandom(seed: 5)
      let network = SimulatedNetwork(defaultFaults: faults)
      return (0..<1_000).map { i in
        network.route(Link(from: a, to: b), at: VirtualTime(nanoseconds: UInt64(i)), using: &rng)
      }
    }
    #expect(run() == run())
  }

  @Test("delays follow their distribution")
  func delays() {
    var rng = SeededRandom(seed: 3)
    let fixed = DelayDistribution.fixed(.microseconds(250))
    #expect(fixed.sample(&rng) == .microseconds(250))
    let uniform = DelayDistribution.uniform(.microseconds(100), .microseconds(200))
    let samples = (0..<10_000).map { _ in uniform.sample(&rng) }
    #expect(samples.allSatisfy { $0 >= .microseconds(100) && $0 <= .microseconds(200) })
    #expect(Set(samples).count > 5_000)
    #expect(DelayDistribution.uniform(.microseconds(9), .microseconds(1)).sample(&rng) == .microseconds(9))
    let tail = DelayDistribution.longTail(typical: .microseconds(100), tail: .milliseconds(50), tailProbability: 0.1)
    let tailSamples = (0..<10_000).map { _ in tail.sample(&rng) }
    let slow = tailSamples.filter { $0 > .microseconds(100) }.count
    #expect(tailSamples.allSatisfy { $0 >= .microseconds(100) && $0 <= .milliseconds(50) })
    #expect(abs(slow - 1_000) < 200, "\(slow) of 10000 in the tail at p = 0.1")
  }

  @Test("reordering adds up to the window to some messages' delay")
  func reorderWindow() {
    let faults = LinkFaults(delay: .fixed(.microseconds(100)), reorderProbability: 0.5, reorderWindow: .milliseconds(1))
    let network = SimulatedNetwork(defaultFaults: faults)
    var rng = SeededRandom(seed: 8)
    let delays = (0..<10_000).map { _ in network.route(Link(from: a, to: b), at: .zero, using: &rng)[0] }
    let held = delays.filter { $0 > .zero + .microseconds(100) }.count
    #expect(delays.allSatisfy { $0 >= .zero + .microseconds(100) && $0 <= .zero + .microseconds(1_100) })
    #expect(abs(held - 5_000) < 400)
    #expect(!faults.preservesOrder)
    #expect(LinkFaults.none.preservesOrder)
    #expect(LinkFaults(dropProbability: 0.5).preservesOrder)
    #expect(!LinkFaults(duplicateProbability: 0.1).preservesOrder)
    #expect(!LinkFaults(delay: .uniform(.zero, .microseconds(1))).preservesOrder)
  }

  @Test("a partition cuts both directions between the groups and nothing inside them")
  func partition() {
    var network = SimulatedNetwork()
    network.partition([a, b], [c])
    #expect(!network.isConnected(Link(from: a, to: c)) && !network.isConnected(Link(from: c, to: a)))
    #expect(!network.isConnected(Link(from: b, to: c)) && !network.isConnected(Link(from: c, to: b)))
    #expect(network.isConnected(Link(from: a, to: b)) && network.isConnected(Link(from: b, to: a)))
    var rng = SeededRandom(seed: 1)
    #expect(network.route(Link(from: a, to: c), at: .zero, using: &rng).isEmpty)
    #expect(network.route(Link(from: a, to: b), at: .zero, using: &rng) == [.zero + .microseconds(100)])
    network.heal()
    #expect(network.cut.isEmpty && network.isConnected(Link(from: c, to: a)))
  }

  @Test("a one-way cut blocks one direction only")
  func oneWayCut() {
    var network = SimulatedNetwork()
    network.cutOneWay(from: a, to: b)
    #expect(!network.isConnected(Link(from: a, to: b)))
    #expect(network.isConnected(Link(from: b, to: a)))
    #expect(network.cut == [Link(from: a, to: b)])
  }

  @Test("split cuts every link across groups")
  func split() {
    var network = SimulatedNetwork()
    let groups: [[NodeID]] = [[1, 2], [3, 4], [5]]
    network.split(groups)
    for x in 1...5 as ClosedRange<UInt64> {
      for y in 1...5 as ClosedRange<UInt64> where x != y {
        let sameGroup = groups.contains { $0.contains(NodeID(x)) && $0.contains(NodeID(y)) }
        #expect(network.isConnected(Link(from: NodeID(x), to: NodeID(y))) == sameGroup, "n\(x)->n\(y)")
      }
    }
  }

  @Test("a down node neither sends nor receives until it is up again")
  func downNodes() {
    var network = SimulatedNetwork()
    network.setDown(b, true)
    #expect(network.down == [b])
    #expect(!network.isConnected(Link(from: a, to: b)) && !network.isConnected(Link(from: b, to: a)))
    #expect(network.isConnected(Link(from: a, to: c)))
    network.setDown(b, false)
    #expect(network.down.isEmpty && network.isConnected(Link(from: a, to: b)))
  }

  @Test("a link's own fault profile overrides the default")
  func linkFaults() {
    var network = SimulatedNetwork()
    network.linkFaults[Link(from: a, to: b)] = LinkFaults(dropProbability: 1)
    var rng = SeededRandom(seed: 2)
    #expect(network.route(Link(from: a, to: b), at: .zero, using: &rng).isEmpty)
    #expect(network.route(Link(from: b, to: a), at: .zero, using: &rng).count == 1)
    #expect(network.faults(of: Link(from: b, to: a)) == .none)
    #expect(Link(from: a, to: b).description == "n1->n2")
  }
}

// MARK: - Crashable storage

@Suite("Crashable store")
struct CrashableStoreTests {
  @Test("sync makes every update survive a crash")
  func syncKeepsEverything() {
    var store = CrashableStore<[Int]>([])
    for i in 0..<10 { store.update { $0.append(i) } }
    #expect(store.current == Array(0..<10) && store.durable.isEmpty && store.hasUnsyncedUpdates)
    store.sync()
    #expect(store.durable == Array(0..<10) && !store.hasUnsyncedUpdates)
    var rng = SeededRandom(seed: 1)
    #expect(store.crash(using: &rng) == Array(0..<10))
    #expect(store.current == Array(0..<10))
  }

  @Test("a crash keeps the durable value plus a prefix of the unsynced updates, never anything else")
  func crashKeepsAPrefix() {
    var survivorCounts: Set<Int> = []
    for seed in 0..<300 as Range<UInt64> {
      var rng = SeededRandom(seed: seed)
      var store = CrashableStore<[Int]>([-1])
      store.update { $0.append(0) }
      store.sync()
      let unsynced = Int.random(in: 0...8, using: &rng)
      for i in 1...8 where i <= unsynced { store.update { $0.append(i) } }
      let survived = store.crash(using: &rng)
      #expect(store.current == survived && store.durable == survived && !store.hasUnsyncedUpdates)
      #expect(Array(survived.prefix(2)) == [-1, 0], "seed \(seed): the durable value was lost: \(survived)")
      let kept = survived.count - 2
      #expect(survived == [-1, 0] + Array(0...8).dropFirst().prefix(kept), "seed \(seed): not a prefix: \(survived)")
      #expect(kept <= unsynced)
      if unsynced == 8 { survivorCounts.insert(kept) }
    }
    // Every prefix length occurs, the empty one and the full one included.
    #expect(survivorCounts.contains(0) && survivorCounts.contains(8) && survivorCounts.count >= 7)
  }

  @Test("updates after a crash start from what survived")
  func updatesAfterCrash() {
    var rng = SeededRandom(seed: 4)
    var store = CrashableStore(0)
    store.update { $0 += 1 }
    store.sync()
    store.update { $0 += 10 }
    let survived = store.crash(using: &rng)
    #expect(survived == 1 || survived == 11)
    store.update { $0 += 100 }
    store.sync()
    #expect(store.durable == survived + 100)
  }
}

// MARK: - The seed runner

@Suite("Simulation runner")
struct SimulationRunnerTests {
  @Test("a body failing on one seed is reported with that seed, its message and a non-empty trace")
  func reportsTheFailingSeed() {
    let tracedSeeds = SeedLog()
    let report = SimulationRunner.run(seeds: 0..<20, traceCapacity: 5) { seed, trace in
      if trace.isEnabled { tracedSeeds.append(seed) }
      for step in 0..<10 {
        trace.record(VirtualTime(nanoseconds: UInt64(step) * 1_000), "step \(step) of seed \(seed)")
      }
      if seed == 7 { throw SimulationFailure("invariant broken at seed \(seed)") }
    }
    #expect(!report.passed)
    #expect(report.seedsRun == 8)
    #expect(report.failure?.seed == 7)
    #expect(report.failure?.message == "invariant broken at seed 7")
    #expect(report.failure?.trace == (5..<10).map { "[0.00\($0)ms] step \($0) of seed 7" })
    #expect(tracedSeeds.seeds == [7], "only the replay of the failing seed records a trace")
    let text = report.description
    #expect(text.contains("seed 7 FAILED after 8 seeds: invariant broken at seed 7"))
    #expect(text.contains("last 5 events of seed 7"))
    #expect(text.contains("reproduce with: swift package simulate --seed 7"))
  }

  @Test("a failure that does not replay is reported as a non-deterministic run")
  func replayRule() {
    let calls = SeedLog()
    let report = SimulationRunner.run(seeds: [42]) { seed, _ in
      calls.append(seed)
      if calls.seeds.count == 1 { throw SimulationFailure("flaky") }
    }
    #expect(calls.seeds == [42, 42])
    #expect(report.failure?.seed == 42)
    #expect(report.failure?.message.hasPrefix("flaky (the replay with tracing on passed") == true)
    #expect(report.failure?.message.contains("not a pure function of its seed") == true)
  }

  @Test("when every seed passes the report says how many ran")
  func passingRun() {
    let report = SimulationRunner.run(seeds: 1...25) { _, trace in #expect(!trace.isEnabled) }
    #expect(report.passed && report.seedsRun == 25 && report.failure == nil)
    #expect(report.description == "25 seeds passed")
  }

  @Test("a trace keeps the last events in order and builds nothing when disabled")
  func traceRing() {
    let trace = SimulationTrace(enabled: true, capacity: 3)
    for i in 0..<10 { trace.record(.zero, "e\(i)") }
    #expect(trace.events == ["[0.000ms] e7", "[0.000ms] e8", "[0.000ms] e9"])
    #expect(trace.recorded == 10)
    let disabled = SimulationTrace(enabled: false)
    disabled.record(
      .zero,
      {
        Issue.record("a disabled trace built its text")
        return "built"
      }())
    #expect(disabled.events.isEmpty && disabled.recorded == 0)
  }
}

/// Seeds seen by a runner body (the body is synchronous and runs on the test's task).
final class SeedLog {
  private(set) var seeds: [UInt64] = []
  func append(_ seed: UInt64) { seeds.append(seed) }
}

// MARK: - The simulated transport

@Suite("Simulated transport")
struct SimulatedTransportTests {
  func drain<M>(_ endpoint: SimulatedEndpoint<M>) -> [M] {
    var envelopes: [Envelope<M>] = []
    endpoint.incoming.drainAvailable(into: &envelopes)
    return envelopes.map(\.payload)
  }

  @Test("in manual mode messages wait in flight until the clock passes their delivery time")
  func manualModeHoldsMessages() throws {
    let transport = SimulatedTransport<Int>(seed: 1, faults: .none, mode: .manual)
    let a = try transport.bind(1)
    let b = try transport.bind(2)
    try a.send(10, to: b.id)
    try a.send(11, to: b.id)
    #expect(transport.inFlightCount == 2 && b.incoming.count == 0)
    transport.advance(by: .microseconds(99))
    #expect(transport.now == .zero + .microseconds(99))
    #expect(drain(b).isEmpty)
    transport.advance(by: .microseconds(1))
    #expect(drain(b) == [10, 11])
    #expect(transport.inFlightCount == 0)
    try b.send(12, to: a.id)
    transport.deliverAll()
    #expect(drain(a) == [12])
    #expect(transport.now == .zero + .microseconds(200))
  }

  @Test("random delays reorder messages, deterministically for a seed")
  func randomDelaysReorder() throws {
    func run(seed: UInt64) throws -> [Int] {
      let faults = LinkFaults(delay: .uniform(.microseconds(10), .milliseconds(10)))
      let transport = SimulatedTransport<Int>(seed: seed, faults: faults, mode: .manual)
      let a = try transport.bind(1)
      let b = try transport.bind(2)
      for i in 0..<200 { try a.send(i, to: b.id) }
      transport.deliverAll()
      return drain(b)
    }
    let received = try run(seed: 3)
    #expect(received.sorted() == Array(0..<200), "nothing lost or duplicated")
    #expect(received != Array(0..<200), "some messages overtook others")
    #expect(try run(seed: 3) == received)
    #expect(try run(seed: 4) != received)
  }

  @Test("duplicated messages are delivered twice; dropped ones never")
  func duplicatesAndDrops() throws {
    let duplicating = SimulatedTransport<Int>(seed: 1, faults: LinkFaults(duplicateProbability: 1), mode: .manual)
    let a = try duplicating.bind(1)
    let b = try duplicating.bind(2)
    for i in 0..<50 { try a.send(i, to: b.id) }
    duplicating.deliverAll()
    let received = drain(b)
    #expect(received.count == 100)
    #expect(Set(received) == Set(0..<50))

    let dropping = SimulatedTransport<Int>(seed: 1, faults: LinkFaults(dropProbability: 1), mode: .manual)
    let c = try dropping.bind(1)
    let d = try dropping.bind(2)
    for i in 0..<50 { try c.send(i, to: d.id) }
    #expect(dropping.inFlightCount == 0)
    dropping.deliverAll()
    #expect(drain(d).isEmpty)
  }

  @Test("partitions and down nodes lose messages; healing restores delivery")
  func partitionsAndDownNodes() throws {
    let transport = SimulatedTransport<Int>(seed: 1, mode: .manual)
    let a = try transport.bind(1)
    let b = try transport.bind(2)
    transport.withNetwork { $0.cutOneWay(from: a.id, to: b.id) }
    try a.send(1, to: b.id)
    try b.send(2, to: a.id)
    transport.deliverAll()
    #expect(drain(b).isEmpty && drain(a) == [2])
    transport.withNetwork { $0.heal() }
    try a.send(3, to: b.id)
    // A node that goes down before delivery loses what was in flight to it.
    transport.withNetwork { $0.setDown(b.id, true) }
    transport.deliverAll()
    #expect(drain(b).isEmpty)
    transport.withNetwork { $0.setDown(b.id, false) }
    try a.send(4, to: b.id)
    transport.deliverAll()
    #expect(drain(b) == [4])
  }

  @Test("a full inbox drops on delivery and counts it; in immediate mode the sender sees queueFull")
  func overflow() async throws {
    let manual = SimulatedTransport<Int>(seed: 1, mode: .manual, inboxCapacity: 4)
    let a = try manual.bind(1)
    let b = try manual.bind(2)
    for i in 0..<10 { try a.send(i, to: b.id) }
    manual.deliverAll()
    #expect(drain(b) == [0, 1, 2, 3])
    #expect(manual.overflowDrops == 6)

    let immediate = SimulatedTransport<Int>(seed: 1, mode: .immediate, inboxCapacity: 2)
    let c = try immediate.bind(1)
    let d = try immediate.bind(2)
    try c.send(0, to: d.id)
    try c.send(1, to: d.id)
    #expect(throws: TransportError.queueFull(peer: d.id, capacity: 2)) { try c.send(2, to: d.id) }
    #expect(await d.incoming.receive()?.payload == 0)
    try c.send(3, to: d.id)
    #expect(drain(d) == [1, 3])
  }

  @Test("binding twice, unknown peers and closed endpoints are typed errors")
  func errors() async throws {
    let transport = SimulatedTransport<Int>(seed: 1, mode: .manual)
    let a = try transport.bind(1)
    #expect(throws: TransportError.alreadyBound(1)) { try transport.bind(1) }
    #expect(throws: TransportError.unknownPeer(9)) { try a.send(0, to: 9) }
    let b = try transport.bind(2)
    try a.send(1, to: b.id)
    #expect(transport.inFlightCount == 1)
    await b.close()
    #expect(transport.inFlightCount == 0, "closing a node drops what was in flight to it")
    #expect(await b.incoming.receive() == nil)
    #expect(throws: TransportError.closed) { try b.send(0, to: a.id) }
    #expect(throws: TransportError.unknownPeer(2)) { try a.send(0, to: b.id) }
    let again = try transport.bind(2)
    try a.send(5, to: again.id)
    transport.deliverAll()
    #expect(drain(again) == [5])
  }
}
