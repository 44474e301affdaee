import CQuorumSystem
import Glibc
import QuorumCore
import QuorumSimulation
import Testing

@testable import QuorumTCP

/// Resource attacks on a listener: each must close only the offending connections, with a typed reason, keep
/// the server's memory bounded, and leave the healthy peer link and new clients served.
///
/// Memory is checked two ways: exactly, by the transport's high-water marks of what it held (connections
/// waiting to authenticate, partly received frames, reply backlog), and loosely, by this process's resident
/// set — loosely (1 GiB) because other suites run in the same process at the same time: their allocations
/// showed as up to 400 MB of noise, as much as some attacks' volume.
@Suite("A hostile network cannot exhaust a listener", .serialized, .timeLimit(.minutes(5)))
struct HostileNetworkTests {
  @Test("2,000 connections opened and held: the oldest unauthenticated ones give way, real peers and clients get in")
  func connectionFlood() async throws {
    var options = SecurePair.options()
    options.handshakeTimeout = .seconds(120)  // held for the whole test
    let pair = try await SecurePair(options: options)
    try await pair.healthyLinkDelivers(0)
    let before = try residentBytes()
    // 2,000 silent sockets from 100 loopback addresses, 20 from each: "100 hosts".
    var sockets: [Int32] = []
    defer { for fd in sockets { close(fd) } }
    for index in 0..<2000 {
      let fd = cq_tcp_socket(AF_INET)
      try #require(fd >= 0, "socket: errno \(errno)")
      sockets.append(fd)
      try #require(cq_bind_source(fd, "127.0.0.\(2 + index / 20)") == 0, "bind: errno \(errno)")
      let result = cq_connect(fd, pair.n1.address.host, Int32(pair.n1.address.port))
      try #require(result == 0 || errno == EINPROGRESS, "connect: errno \(errno)")
    }
    let metrics = { pair.a.metrics }
    try await waitUntil("the listener to take or turn away all 2,000 (\(metrics()))") {
      metrics().connectionsAccepted + metrics().closes("connection-budget") >= 2000
    }
    let core = pair.n1.core
    let held = try #require(await core.loop.submit { core.unauthenticatedCount })
    #expect(held <= options.maxUnauthenticatedConnections, "\(held) unauthenticated connections held")
    // Every socket beyond those held was refused (over 16 from one address) or evicted (the oldest, to make
    // room); how many of each depends on timing (an eviction frees a slot of its address).
    let turnedAway = metrics().closes("connection-budget") + metrics().closes("evicted")
    #expect(turnedAway >= 2000 - options.maxUnauthenticatedConnections, "\(metrics())")
    #expect(metrics().closes("connection-budget") >= 1 && metrics().closes("evicted") >= 1, "\(metrics())")

    // A member that dials in now still gets through, and so does a new client.
    let third = TCPTransport<ConformanceMessage>(
      cluster: pair.cluster, protocolNumber: WireProtocol.test, addresses: [1: pair.n1.address],
      security: SecurePair.security, logger: .disabled)
    let n3 = try await third.bind(3)
    pair.a.setAddress(n3.address, for: 3)
    try n3.send(ConformanceMessage(sender: 3, sequence: 42), to: 1)
    let envelope = try await receive(pair.n1.incoming)
    #expect(envelope.from == 3 && envelope.payload.sequence == 42)
    let alice = try pair.client("alice", SecurePair.alice)
    #expect(try await alice.request([7], to: pair.n1.address, timeout: .seconds(60)) == [7])
    try await pair.healthyLinkDelivers(1)
    #expect(pair.b.metrics.closes.isEmpty, "the healthy link never dropped: \(pair.b.metrics)")
    #expect(pair.sink.all.count < 150, "the flood is summarised in the log: \(pair.sink.all.count) lines")
    #expect(metrics().largestUnauthenticatedCount <= options.maxUnauthenticatedConnections, "\(metrics())")
    let grown = try residentBytes() - before
    #expect(grown < 1 << 30, "the resident set grew by \(grown >> 20) MiB")
    await alice.close()
    await n3.close()
    await pair.close()
  }

  @Test("two dozen 16 MiB frames, pushed then trickled a byte at a time after the handshake: memory stays bounded")
  func slowGiantFrames() async throws {
    var options = SecurePair.options()
    options.frameTimeout = .seconds(3)
    options.maxClientReceiveBufferBytes = 16 << 20
    let pair = try await SecurePair(options: options)
    let before = try residentBytes()
    var attackers: [HandDriven] = []
    for _ in 0..<24 {
      let attacker = try await HandDriven(
        to: pair.n1.address, cluster: pair.cluster, role: .client, protocolNumber: WireProtocol.client,
        principal: "alice", key: SecurePair.alice.bytes)
      try #require(attacker.failure == nil)
      let length = UInt32(options.maxFrameBytes + TCPFrame.tagBytes)
      try attacker.socket.send(withUnsafeBytes(of: length.littleEndian) { Array($0) })
      attackers.append(attacker)
    }
    // Push up to 16 MiB - 1 into each, as fast as the server (or the kernel's buffers) takes it.
    let filler = [UInt8](repeating: 0xEE, count: 1 << 20)
    var sent = [Int](repeating: 0, count: attackers.count)
    let target = options.maxFrameBytes + TCPFrame.tagBytes - 1
    var peak = 0
    var idleRounds = 0
    while idleRounds < 50 && sent.contains(where: { $0 < target }) {
      var progress = 0
      for (index, attacker) in attackers.enumerated() where sent[index] < target {
        let count = min(filler.count, target - sent[index])
        let taken = try attacker.socket.sendSome(filler[0..<count])
        sent[index] += taken
        progress += taken
      }
      peak = max(peak, try residentBytes() - before)
      idleRounds = progress == 0 ? idleRounds + 1 : 0
      try await Task.sleep(for: .milliseconds(progress == 0 ? 10 : 0))
    }
    // The budget, one largest frame (read past it by the connection waiting longest), and a small read per
    // connection and one more.
    let frame = TCPFrame.prefixBytes + options.maxFrameBytes + TCPFrame.tagBytes
    let bound = options.maxClientReceiveBufferBytes + frame + 25 * (64 << 10)
    #expect(pair.a.metrics.largestClientReceiveBuffer <= bound, "the server held \(pair.a.metrics) bytes")
    // A healthy client is still served while the budget is spent: it is between frames.
    let alice = try pair.client("alice", SecurePair.alice)
    #expect(try await alice.request([1], to: pair.n1.address, timeout: .seconds(60)) == [1])
    // Then a byte at a time: progress does not keep a frame alive past the frame timeout. One connection at a
    // time reads past the spent budget to the end of its frame: if its frame has not timed out yet, its last byte
    // completes it, and its code fails.
    try await waitUntil("every giant frame to end (\(pair.a.metrics))") {
      for attacker in attackers where !attacker.socket.isClosedByPeer { _ = try? attacker.socket.sendSome([0xEE][...]) }
      peak = max(peak, try residentBytes() - before)
      let metrics = pair.a.metrics
      return metrics.closes("truncated-frame") + metrics.closes("frame-authentication-failed") == attackers.count
    }
    #expect(pair.a.metrics.closes("truncated-frame") >= attackers.count - 1, "\(pair.a.metrics)")
    #expect(pair.a.metrics.largestClientReceiveBuffer <= bound, "\(pair.a.metrics.largestClientReceiveBuffer) bytes")
    #expect(peak < 1 << 30, "the resident set grew by up to \(peak >> 20) MiB")
    #expect(pair.sink.contains("truncated frame"), "\(pair.sink.lines)")
    #expect(try await alice.request([2], to: pair.n1.address, timeout: .seconds(60)) == [2])
    try await pair.healthyLinkDelivers(0)
    await alice.close()
    await pair.close()
  }

  @Test("a client pipelining large reads without reading the replies is paused, then closed; memory stays bounded")
  func clientThatStopsReading() async throws {
    var options = Self.replyLimitedOptions()
    options.maxInflightRequestsPerConnection = 64
    let pair = try await SecurePair(options: options)
    // 2,000 requests for 256 KiB each: 500 MiB of replies if they were all buffered.
    let peak = try await pipelineWithoutReading(pair, count: 2000, body: "big 262144")
    // The backlog counts the replies queued behind the write batch too, bounded at four times the close limit.
    let limit = options.replyQueueBytes + options.maxFrameBytes
    #expect(pair.a.metrics.largestReplyBacklog <= limit, "backlog \(pair.a.metrics.largestReplyBacklog)")
    #expect(peak < 1 << 30, "the resident set grew by up to \(peak >> 20) MiB")
    try await waitUntil("the close to be logged") {
      pair.sink.contains("the client stopped reading its replies", atLeast: .info)
    }
    let alice = try pair.client("alice", SecurePair.alice)
    #expect(
      try await alice.request(Array("big 300000".utf8), to: pair.n1.address, timeout: .seconds(60)).count == 300_000)
    try await pair.healthyLinkDelivers(0)
    await alice.close()
    await pair.close()
  }

  @Test("a client pipelining a thousand large reads at once, reading nothing: its queued replies stay bounded")
  func clientThatPipelinesMoreThanItReads() async throws {
    // The default in-flight limit (1,024) times 1 MiB replies: a gigabyte if queued replies were bounded only by
    // the number of requests in flight. They are bounded at four times the close limit (9 MiB here).
    let options = Self.replyLimitedOptions()
    let pair = try await SecurePair(options: options)
    let peak = try await pipelineWithoutReading(pair, count: 1024, body: "big 1000000")
    let limit = options.replyQueueBytes + options.maxFrameBytes
    #expect(pair.a.metrics.largestReplyBacklog <= limit, "backlog \(pair.a.metrics.largestReplyBacklog)")
    // Unbounded, the queue held most of the gigabyte until the write-stall timeout closed the connection.
    #expect(peak < 256 << 20, "the resident set grew by up to \(peak >> 20) MiB")
    let alice = try pair.client("alice", SecurePair.alice)
    #expect(try await alice.request([3], to: pair.n1.address, timeout: .seconds(60)) == [3])
    await alice.close()
    await pair.close()
  }

  /// Options with 1 MiB frames, pausing a client's reading at 1 MiB of replies and closing it at 8 MiB.
  static func replyLimitedOptions() -> TCPTransportOptions {
    var options = SecurePair.options()
    options.maxFrameBytes = 1 << 20
    options.replyPauseBytes = 1 << 20
    options.maxReplyBytesPerConnection = 8 << 20
    return options
  }

  /// Connects to `pair`'s n1 as `reader`, pipelines `count` requests with `body` and reads no reply, until n1
  /// closes the connection as a slow reader; returns how far this process's resident set grew meanwhile, at most.
  func pipelineWithoutReading(_ pair: SecurePair, count: Int, body: String) async throws -> Int {
    let before = try residentBytes()
    var peak = 0
    let greedy = try await HandDriven(
      to: pair.n1.address, cluster: pair.cluster, role: .client, protocolNumber: WireProtocol.client,
      principal: "reader", key: SecurePair.reader.bytes)
    try #require(greedy.failure == nil)
    var requests: [UInt8] = []
    for id in 1...count { requests += greedy.seal(requestFrame(id: UInt64(id), body: Array(body.utf8))) }
    var offset = 0
    try await waitUntil("the greedy client to be closed (\(pair.a.metrics))") {
      if offset < requests.count {
        offset += (try? greedy.socket.sendSome(requests[offset...])) ?? 0
      }
      peak = max(peak, try residentBytes() - before)
      return pair.a.metrics.closes("slow-reader") == 1
    }
    return peak
  }

  @Test("clients that stop reading cannot make the endpoint queue more replies than its budget; others are served")
  func repliesBoundedPerEndpoint() async throws {
    var options = Self.replyLimitedOptions()
    // Each connection's own bounds allow 128 MiB of queued replies, and the write-stall timeout outlasts the test:
    // only the endpoint's budget bounds what the clients below make it hold.
    options.maxReplyBytesPerConnection = 32 << 20
    options.frameTimeout = .seconds(120)
    options.maxClientReplyBytes = 8 << 20
    let pair = try await SecurePair(options: options)
    // Four clients pipeline 40 reads of 1 MB each and read nothing: 160 MB of replies if their sum were unbounded.
    var greedy: [HandDriven] = []
    for _ in 0..<4 {
      let client = try await HandDriven(
        to: pair.n1.address, cluster: pair.cluster, role: .client, protocolNumber: WireProtocol.client,
        principal: "reader", key: SecurePair.reader.bytes)
      try #require(client.failure == nil)
      var requests: [UInt8] = []
      for id in 1...40 { requests += client.seal(requestFrame(id: UInt64(id), body: Array("big 1000000".utf8))) }
      try client.socket.send(requests)
      greedy.append(client)
    }
    let alice = try pair.client("alice", SecurePair.alice)
    #expect(try await alice.request([1], to: pair.n1.address, timeout: .seconds(60)) == [1])
    // A reply that does not fit is not dropped on its own: its connection is closed, so the client sees the loss.
    try await waitUntil("the clients that stopped reading to be closed (\(pair.a.metrics))") {
      pair.a.metrics.closes("slow-reader") == greedy.count
    }
    let queued = pair.a.metrics.largestQueuedClientReplies
    // Past the budget, each connection may still be admitted up to its fair share of it: twice the budget in all,
    // replies in the loop's write buffers included, plus two small replies per connection (and a few codes).
    let bound = 2 * options.maxClientReplyBytes + 5 * 2 * SharedReplyBudget.alwaysAdmittedBytes + 4_096
    #expect(queued > 0 && queued <= bound, "\(queued)")
    #expect(try await alice.request([2], to: pair.n1.address, timeout: .seconds(60)) == [2])
    // The closed connections gave back what they held, queued or in their write buffers; alice's replies were
    // written: nothing stays charged.
    let budget = pair.n1.core.clientReplyBudget
    try await waitUntil("the reply budget to be given back (\(budget.bytes) bytes charged)") { budget.bytes == 0 }
    await alice.close()
    await pair.close()
  }

  @Test("the endpoint's reply budget holds back the clients with the most queued replies, and lets them go on")
  func sharedReplyBudgetHoldsBackTheLargest() {
    let budget = SharedReplyBudget(limit: 1000)
    _ = budget.members.add(4, ordering: .relaxed)
    #expect(budget.charge(300, always: false))
    // Under half the limit in all: nobody is held back.
    #expect(!budget.holdsBack(queued: 300))
    #expect(budget.charge(300, always: false))
    // 600 of 1000 queued, 150 on average over four clients: one holding 300 is held back, one holding 100 is not.
    #expect(budget.holdsBack(queued: 300))
    #expect(!budget.holdsBack(queued: 100))
    #expect(!budget.holdsBack(queued: 0))
    // Past the limit nothing is charged, except a small reply into an empty queue.
    #expect(!budget.charge(401, always: false))
    #expect(budget.charge(400, always: false))
    #expect(budget.charge(64, always: true) && budget.bytes == 1064)
    budget.credit(1064)
    #expect(budget.bytes == 0 && !budget.holdsBack(queued: 300))
  }

  @Test("when the reply budget is full, a connection within its fair share is admitted and the largest holders refused")
  func fullReplyBudgetRefusesTheLargest() {
    let budget = SharedReplyBudget(limit: 1000)
    _ = budget.members.add(10, ordering: .relaxed)
    // Two clients that stopped reading hold 990 of 1000 (495 each; the fair share is 100).
    #expect(budget.charge(495, always: false) && budget.charge(495, queued: 0, always: false))
    // An honest client pipelining replies of 30 bytes: the second, third and fourth are admitted past the limit
    // (its queue stays within 100), the fifth would take it past its share and is refused.
    #expect(budget.charge(30, queued: 0, always: false))
    #expect(budget.charge(30, queued: 30, always: false))
    #expect(budget.charge(30, queued: 60, always: false))
    #expect(!budget.charge(30, queued: 90, always: false))
    // A hog's next reply is refused (its connection is the one closed).
    #expect(!budget.charge(10, queued: 495, always: false))
    #expect(budget.bytes == 1080)
  }

  @Test("a client connection idle past the idle timeout is closed; new clients are served")
  func idleClients() async throws {
    var options = SecurePair.options()
    options.clientIdleTimeout = .milliseconds(300)
    let pair = try await SecurePair(options: options)
    let idle = try await HandDriven(
      to: pair.n1.address, cluster: pair.cluster, role: .client, protocolNumber: WireProtocol.client,
      principal: "alice", key: SecurePair.alice.bytes)
    try #require(idle.failure == nil)
    _ = try await idle.socket.readUntilClosed()
    #expect(pair.a.metrics.closes("idle-timeout") == 1)
    let alice = try pair.client("alice", SecurePair.alice)
    #expect(try await alice.request([3], to: pair.n1.address, timeout: .seconds(60)) == [3])
    await alice.close()
    await pair.close()
  }
}
