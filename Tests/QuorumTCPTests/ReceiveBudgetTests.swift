import QuorumCore
import QuorumSimulation
import Testing

@testable import QuorumTCP

/// The shared budget for partly received client frames: frames in progress always finish (one waiting connection
/// at a time may read past the limit to the end of its frame, in the order they began to wait), memory stays
/// bounded by the limit plus one largest frame, and frame headers alone hold nothing.
@Suite("The client receive budget", .timeLimit(.minutes(3)))
struct ReceiveBudgetTests {
  @Test("eight 512 KiB frames against a 1 MiB budget, all begun before any ends, all arrive (they used to stall)")
  func concurrentLargeFramesFinish() async throws {
    let server = try await BudgetServer(budget: 1 << 20, maxFrameBytes: 600 << 10)
    let clients = try await server.clients(8)
    let frames = (0..<8).map { requestFrame(id: UInt64($0), body: [UInt8](repeating: UInt8($0), count: 512 << 10)) }

    // The first half of every frame, then the rest once the budget is spent: every connection is then in the
    // middle of its frame (holding at most half of it), and no frame can end without reading past the limit.
    try await sendInterleaved(frames.map { $0[0..<($0.count / 2)] }, to: clients)
    try await waitUntil("the budget to be spent (\(server.transport.metrics))") {
      server.transport.metrics.largestClientReceiveBuffer >= server.budget
    }
    try await sendInterleaved(frames.map { $0[($0.count / 2)...] }, to: clients)

    try await server.expectEchoes(of: frames, on: clients)
    let peak = server.transport.metrics.largestClientReceiveBuffer
    #expect(peak <= server.bound(connections: clients.count), "peak \(peak): \(server.transport.metrics)")
    await server.close()
  }

  @Test("twelve frames of the largest size against a 256 KiB budget: the overdraft never stacks (the peak is bounded)")
  func overdraftStaysBounded() async throws {
    let server = try await BudgetServer(budget: 256 << 10, maxFrameBytes: 1 << 20)
    let clients = try await server.clients(12)
    // The envelope's bytes around a body of about this size (its length is encoded in as many bytes).
    let overhead =
      requestFrame(id: 11, body: [UInt8](repeating: 0, count: 1 << 20)).count - TCPFrame.prefixBytes - (1 << 20)
    let frames = (0..<12).map {
      requestFrame(id: UInt64($0), body: [UInt8](repeating: UInt8($0), count: (1 << 20) - overhead))
    }
    #expect(frames[0].count == TCPFrame.prefixBytes + (1 << 20))
    // All at once, interleaved: many connections wait in the middle of a frame while the overdraft passes on.
    try await sendInterleaved(frames.map { $0[...] }, to: clients)

    try await server.expectEchoes(of: frames, on: clients)
    let peak = server.transport.metrics.largestClientReceiveBuffer
    #expect(peak > server.budget, "the overdraft was used: \(server.transport.metrics)")
    #expect(peak <= server.bound(connections: clients.count), "peak \(peak): \(server.transport.metrics)")
    await server.close()
  }

  @Test("connections sending only headers announcing the largest frame hold nothing: other clients' frames pass")
  func announcedLengthsHoldNothing() async throws {
    // The frame timeout outlasts the test, so the attackers are never closed to make room.
    let server = try await BudgetServer(budget: 1 << 20, maxFrameBytes: 16 << 20, frameTimeout: .seconds(600))
    let attackers = try await server.clients(8)
    let header = withUnsafeBytes(of: UInt32(16 << 20).littleEndian) { Array($0) }
    for attacker in attackers { try attacker.socket.send(header) }
    try await waitUntil("the attackers' headers to be read (\(server.transport.metrics))") {
      server.transport.metrics.largestClientReceiveBuffer >= 8 * TCPFrame.prefixBytes
    }
    // Honest clients with frames whose first halves together are over the budget, all begun before any ends.
    let clients = try await server.clients(6)
    let frames = (0..<6).map { requestFrame(id: UInt64($0), body: [UInt8](repeating: UInt8($0), count: 512 << 10)) }
    try await sendInterleaved(frames.map { $0[0..<($0.count / 2)] }, to: clients)
    try await waitUntil("the budget to be spent (\(server.transport.metrics))") {
      server.transport.metrics.largestClientReceiveBuffer >= server.budget
    }
    try await sendInterleaved(frames.map { $0[($0.count / 2)...] }, to: clients)

    try await server.expectEchoes(of: frames, on: clients)
    for attacker in attackers { #expect(!attacker.socket.isClosedByPeer) }
    await server.close()
  }

  @Test("the wait in line for the budget is bounded on its own: a frame behind a stalled one is closed in time")
  func waitingInLineIsBounded() async throws {
    // The frame timeout outlasts the test: only the bound on the wait can close anything.
    let server = try await BudgetServer(
      budget: 256 << 10, maxFrameBytes: 1 << 20, frameTimeout: .seconds(600), maxWait: .seconds(1))
    let clients = try await server.clients(2)
    let (a, b) = (clients[0], clients[1])
    // a takes the overdraft in the middle of its frame and stops sending; b begins a frame behind it.
    try await sendInterleaved(
      [requestFrame(id: 0, body: [UInt8](repeating: 1, count: 768 << 10))[0..<(512 << 10)]], to: [a])
    try await waitUntil("a's first part to be read (\(server.transport.metrics))") {
      server.transport.metrics.largestClientReceiveBuffer >= 512 << 10
    }
    try await sendInterleaved(
      [requestFrame(id: 1, body: [UInt8](repeating: 2, count: 128 << 10))[0..<(32 << 10)]], to: [b])
    try await waitUntil("b to be closed for waiting too long (\(server.transport.metrics))") {
      server.transport.metrics.closes("truncated-frame") == 1
    }
    #expect(!a.socket.isClosedByPeer, "a, not waiting in line, was closed: \(server.transport.metrics)")
    await server.close()
  }

  @Test("the overdraft goes to the connection waiting longest; a woken one keeps its place ahead of newcomers")
  func overdraftOrder() {
    let budget = ReceiveBudget<FakeMember>(limit: 100)
    let (a, b, c, d) = (FakeMember("a"), FakeMember("b"), FakeMember("c"), FakeMember("d"))
    budget.charge(a, bytes: 50, frameEnded: false)
    budget.charge(b, bytes: 40, frameEnded: false)
    budget.charge(c, bytes: 10, frameEnded: false)
    #expect(budget.isSpent)
    // The first to wait gets the overdraft at once; the others queue, in order, once each.
    #expect(budget.mayOverdraw(b))
    #expect(budget.mayOverdraw(b))
    #expect(!budget.mayOverdraw(a))
    #expect(!budget.mayOverdraw(c))
    #expect(budget.waiting.map(\.name) == ["a", "c"])
    #expect(a.admissions == 0 && c.admissions == 0)

    // b's frame ends: room again, so the sleepers are woken, keeping their places.
    budget.charge(b, bytes: 0, frameEnded: true)
    #expect(budget.overdraft == nil && !budget.isSpent)
    #expect(a.admissions == 1 && c.admissions == 1)
    #expect(budget.waiting.map(\.name) == ["a", "c"])
    // A newcomer spends the budget: the overdraft goes at once to a, who waited longest, before the newcomer
    // asks; c asking again keeps its place, ahead of the newcomer.
    budget.charge(d, bytes: 45, frameEnded: false)
    #expect(budget.overdraft === a && a.admissions == 2)
    #expect(!budget.mayOverdraw(d))
    #expect(!budget.mayOverdraw(c))
    #expect(budget.waiting.map(\.name) == ["c", "d"])
    // a closes: room, so c and d are woken; when the budget is spent again, c is next, then d.
    budget.release(a)
    #expect(budget.used == 55 && !budget.isSpent && budget.overdraft == nil)
    #expect(c.admissions == 2 && d.admissions == 1)
    budget.charge(d, bytes: 90, frameEnded: false)
    #expect(budget.overdraft === c && c.admissions == 3)
    budget.charge(c, bytes: 15, frameEnded: true)  // Its frame ended; the bytes held begin the next.
    #expect(budget.overdraft === d && d.admissions == 2)
    #expect(budget.waiting.isEmpty)
    budget.charge(d, bytes: 0, frameEnded: true)
    #expect(budget.overdraft == nil && budget.used == 15)
  }
}

/// A stand-in for a connection, counting the budget's wake-ups.
private final class FakeMember: ReceiveBudgetMember {
  let name: String
  var charged = 0
  var admissions = 0

  init(_ name: String) { self.name = name }

  func budgetAdmits() { admissions += 1 }
}

/// An endpoint serving clients (echoing requests) with a small receive budget.
private struct BudgetServer {
  let transport: TCPTransport<ConformanceMessage>
  let endpoint: TCPEndpoint<ConformanceMessage>
  let options: TCPTransportOptions
  let cluster: ClusterID
  let server: Task<Void, Never>

  init(
    budget: Int, maxFrameBytes: Int, frameTimeout: Duration = .seconds(30), maxWait: Duration? = nil
  ) async throws {
    var options = TCPTransportOptions()
    options.maxReceiveBudgetWait = maxWait
    options.serveClients = true
    options.maxClientReceiveBufferBytes = budget
    options.maxFrameBytes = maxFrameBytes
    // A frame stuck in the middle fails the test when this runs out (frames only wait on one another here).
    options.frameTimeout = frameTimeout
    self.options = options
    cluster = ClusterID(rawValue: "budget-\(UInt64.random(in: 0...UInt64.max))")
    transport = TCPTransport<ConformanceMessage>(
      cluster: cluster, protocolNumber: WireProtocol.test, options: options, security: .insecure, logger: .disabled)
    endpoint = try await transport.bind(1)
    server = serveEcho(endpoint)
  }

  var budget: Int { options.maxClientReceiveBufferBytes }

  /// The most the budget may hold: the limit, one largest frame (the overdraft), and 64 KiB per connection and
  /// one more (the small reads between frames, and the read that crosses the limit).
  func bound(connections: Int) -> Int {
    budget + TCPFrame.prefixBytes + options.maxFrameBytes + (connections + 1) * (64 << 10)
  }

  func clients(_ count: Int) async throws -> [HandDriven] {
    var clients: [HandDriven] = []
    for _ in 0..<count {
      let client = try await HandDriven(
        to: endpoint.address, cluster: cluster, role: .client, protocolNumber: WireProtocol.client, key: nil)
      try #require(client.failure == nil)
      clients.append(client)
    }
    return clients
  }

  /// Each client gets its request echoed, and no connection was closed.
  func expectEchoes(of frames: [[UInt8]], on clients: [HandDriven]) async throws {
    for (index, client) in clients.enumerated() {
      let reply = try #require(
        try await client.receive(timeout: .seconds(60)), "connection \(index) closed: \(transport.metrics)")
      let envelope = try WireEnvelope.decode(RPCPayload.self, from: reply, expectedProtocol: WireProtocol.client)
      let request = try WireEnvelope.decode(
        RPCPayload.self, from: Array(frames[index][TCPFrame.prefixBytes...]), expectedProtocol: WireProtocol.client)
      #expect(envelope.payload.body == request.payload.body, "reply \(index)")
    }
    #expect(transport.metrics.closes.isEmpty, "\(transport.metrics)")
  }

  func close() async {
    server.cancel()
    await endpoint.close()
  }
}

/// Sends `parts[i]` on `clients[i]`, a little to each in turn as their sockets take it (the server reads the
/// connections in whatever order it chooses: sending one whole part before the next could wait forever).
private func sendInterleaved(_ parts: [ArraySlice<UInt8>], to clients: [HandDriven]) async throws {
  var offsets = parts.map(\.startIndex)
  let deadline = ContinuousClock.now.advanced(by: .seconds(60))
  while zip(offsets, parts).contains(where: { $0 < $1.endIndex }) {
    var progress = 0
    for (index, part) in parts.enumerated() where offsets[index] < part.endIndex {
      let end = min(part.endIndex, offsets[index] + (64 << 10))
      let taken = try clients[index].socket.sendSome(part[offsets[index]..<end])
      offsets[index] += taken
      progress += taken
    }
    if progress == 0 {
      if ContinuousClock.now > deadline { throw TimedOut(description: "the server stopped reading: \(offsets)") }
      try await Task.sleep(for: .milliseconds(1))
    }
  }
}
