import QuorumCore
import QuorumSimulation
import Testing

@testable import QuorumTCP

/// The shared budget for partly received client frames admits whole frames, so frames in progress finish.
@Suite("The client receive budget", .timeLimit(.minutes(2)))
struct ReceiveBudgetTests {
  @Test("two frames larger than the budget, both begun before either ends, both arrive (they used to wait forever)")
  func framesBegunTogetherFinish() async throws {
    var options = TCPTransportOptions()
    options.serveClients = true
    options.maxClientReceiveBufferBytes = 256 << 10
    options.frameTimeout = .seconds(3)  // A frame stuck midway fails the test soon.
    let cluster = ClusterID(rawValue: "budget-\(UInt64.random(in: 0...UInt64.max))")
    let transport = TCPTransport<ConformanceMessage>(
      cluster: cluster, protocolNumber: WireProtocol.test, options: options, security: .insecure, logger: .disabled)
    let endpoint = try await transport.bind(1)
    let server = serveEcho(endpoint)
    var clients: [HandDriven] = []
    for _ in 0..<2 {
      let client = try await HandDriven(
        to: endpoint.address, cluster: cluster, role: .client, protocolNumber: WireProtocol.client, key: nil)
      try #require(client.failure == nil)
      clients.append(client)
    }
    let frames = (0..<2).map { requestFrame(id: 1, body: [UInt8](repeating: UInt8($0), count: 300 << 10)) }
    let half = 150 << 10

    // The first half of each frame, the second sent once the server holds the first: together they are over
    // the budget, and each frame alone is larger than it.
    try clients[0].socket.send(Array(frames[0][0..<half]))
    try await waitUntil("the first frame's start to be read") {
      transport.metrics.largestClientReceiveBuffer >= half
    }
    try clients[1].socket.send(Array(frames[1][0..<half]))
    try await waitUntil("the budget to be spent") {
      transport.metrics.largestClientReceiveBuffer >= options.maxClientReceiveBufferBytes
    }
    for (client, frame) in zip(clients, frames) { try client.socket.send(Array(frame[half...])) }

    for (index, client) in clients.enumerated() {
      let reply = try #require(try await client.receive(), "connection \(index) closed: \(transport.metrics)")
      let envelope = try WireEnvelope.decode(RPCPayload.self, from: reply, expectedProtocol: WireProtocol.client)
      #expect(envelope.payload.body == [UInt8](repeating: UInt8(index), count: 300 << 10))
    }
    #expect(transport.metrics.closes.isEmpty, "\(transport.metrics)")
    server.cancel()
    await endpoint.close()
  }
}
