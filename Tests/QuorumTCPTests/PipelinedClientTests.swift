import QuorumCore
import QuorumSimulation
import QuorumTCP
import Testing

/// Many requests in flight on one pipelined client connection: replies match their requests, authenticated
/// frames stay in sequence, and a connection that ends fails each waiting request once, with a typed error.
@Suite("Pipelined client requests", .timeLimit(.minutes(3)))
struct PipelinedClientTests {
  /// An echo server on a fresh endpoint; `secure` makes it authenticate (the client then proves `alice`).
  static func echoServer(secure: Bool) async throws -> (
    TCPTransport<ConformanceMessage>, TCPEndpoint<ConformanceMessage>, Task<Void, Never>, TCPRequestClient
  ) {
    var options = SecurePair.options()
    options.serveClients = true
    let cluster = ClusterID(rawValue: "sender-writes-\(UInt64.random(in: 0...UInt64.max))")
    let transport = TCPTransport<ConformanceMessage>(
      cluster: cluster, protocolNumber: WireProtocol.test, options: options,
      security: secure ? SecurePair.security : .insecure, logger: .disabled)
    let endpoint = try await transport.bind(1)
    let credential = secure ? try TCPClientCredential(name: "alice", secret: SecurePair.alice) : nil
    let client = TCPRequestClient(cluster: cluster, credential: credential, logger: .disabled)
    return (transport, endpoint, serveEcho(endpoint), client)
  }

  @Test(
    "sequential and concurrent requests get their own replies, with and without authentication",
    arguments: [false, true])
  func repliesMatch(secure: Bool) async throws {
    let (transport, endpoint, server, client) = try await Self.echoServer(secure: secure)
    let address = endpoint.address
    for index in 0..<50 {
      let body = Array("request \(index)".utf8)
      #expect(try await client.request(body, to: address, timeout: .seconds(60)) == body)
    }
    // Concurrent ones, of many sizes, coalesced into shared writes.
    try await withThrowingTaskGroup(of: Void.self) { group in
      for index in 0..<400 {
        group.addTask {
          let body = Array("concurrent \(index) ".utf8) + [UInt8](repeating: UInt8(index % 251), count: index * 37)
          let reply = try await client.request(body, to: address, timeout: .seconds(60))
          #expect(reply == body, "request \(index)")
        }
      }
      try await group.waitForAll()
    }
    #expect(client.metrics.framesSent == 450)
    #expect(client.metrics.framesReceived == 450)
    #expect(transport.metrics.closes.isEmpty, "no frame out of sequence or malformed: \(transport.metrics.closes)")
    await client.close()
    server.cancel()
    await endpoint.close()
  }

  @Test("requests sent once the server went away fail with a typed error, none hangs")
  func connectionEnds() async throws {
    let (_, endpoint, server, client) = try await Self.echoServer(secure: false)
    let address = endpoint.address
    #expect(try await client.request([1], to: address, timeout: .seconds(60)) == [1])
    server.cancel()
    await endpoint.close()
    try await withThrowingTaskGroup(of: Void.self) { group in
      for index in 0..<50 {
        group.addTask {
          do {
            _ = try await client.request([UInt8(index)], to: address, timeout: .seconds(60))
            Issue.record("request \(index) answered by a closed server")
          } catch let error as TCPRequestError {
            switch error {
            case .connectionLost, .unreachable: break
            default: Issue.record("request \(index): \(error)")
            }
          } catch {
            Issue.record("request \(index): \(error)")
          }
        }
      }
      try await group.waitForAll()
    }
    await client.close()
  }

  @Test("a reply made on the loop's own thread is queued for the loop, even on an idle connection; elsewhere it is not")
  func loopThreadRepliesQueue() async throws {
    // Any idle connection: a responder elsewhere writes itself. Requests whose body starts with "loop" are
    // answered at once, on the loop's thread (the handler runs there); the others from a task of their own.
    let (transport, endpoint, client) = try await Self.echoServer("loop-replies", quietPeriod: .zero) { body in
      body.starts(with: Array("loop".utf8))
    }
    let address = endpoint.address
    // One at a time, so that each reply finds its connection idle.
    func ask(_ text: String) async throws {
      let body = Array(text.utf8)
      #expect(try await client.request(body, to: address, timeout: .seconds(30)) == body)
    }
    try await ask("warm-up")
    var fromTask = false
    for round in 0..<20 where !fromTask {
      try await Task.sleep(for: .milliseconds(10))
      let before = transport.metrics.framesWrittenBySenders
      try await ask("task \(round)")
      fromTask = transport.metrics.framesWrittenBySenders > before
    }
    #expect(fromTask, "a reply from a task found its connection idle and was written by its responder")
    let before = transport.metrics.framesWrittenBySenders
    for round in 0..<5 {
      try await Task.sleep(for: .milliseconds(10))
      try await ask("loop \(round)")
    }
    #expect(transport.metrics.framesWrittenBySenders == before, "\(transport.metrics)")
    await client.close()
    await endpoint.close()
  }

  @Test("at an in-flight limit of 1, replies written by responders on other threads never leave the connection paused")
  func limitOfOne() async throws {
    // Each request is answered at once from a task of its own: the reply races the loop's pause at the limit.
    let (_, endpoint, client) = try await Self.echoServer("limit-one", inflightLimit: 1) { _ in false }
    try await Self.askFromEightTasks(client, endpoint.address, rounds: 100) { index, round in
      Array("\(index)/\(round)".utf8)
    }
    #expect(client.metrics.framesReceived == 800)
    await client.close()
    await endpoint.close()
  }

  @Test(
    "at an in-flight limit of 1 or 2, replies made on the loop's thread inside the handler (mixed with replies from tasks) never leave the connection paused",
    arguments: [1, 2])
  func loopRepliesAtLimit(limit: Int) async throws {
    // Even first bytes are answered at once, inside the handler on the loop's thread, while the loop parses the
    // connection's frames; odd ones from a task of their own.
    let (_, endpoint, client) = try await Self.echoServer(
      "limit-loop", quietPeriod: .zero, inflightLimit: limit
    ) { body in body.first.map { $0 % 2 == 0 } ?? true }
    try await Self.askFromEightTasks(client, endpoint.address, rounds: 200) { index, round in
      [UInt8((index + round) % 256)] + Array("\(index)/\(round)".utf8)
    }
    #expect(client.metrics.framesReceived == 1600)
    await client.close()
    await endpoint.close()
  }

  /// A client-serving endpoint that echoes each request: on the loop's thread, inside the handler, when
  /// `onLoop` says so for its body, otherwise from a task of its own; and a client for it.
  static func echoServer(
    _ name: String, quietPeriod: Duration? = nil, inflightLimit: Int? = nil,
    onLoop: @escaping @Sendable ([UInt8]) -> Bool
  ) async throws -> (TCPTransport<ConformanceMessage>, TCPEndpoint<ConformanceMessage>, TCPRequestClient) {
    var options = SecurePair.options()
    options.serveClients = true
    if let quietPeriod { options.senderWriteQuietPeriod = quietPeriod }
    if let inflightLimit { options.maxInflightRequestsPerConnection = inflightLimit }
    let cluster = ClusterID(rawValue: "\(name)-\(UInt64.random(in: 0...UInt64.max))")
    let transport = TCPTransport<ConformanceMessage>(
      cluster: cluster, protocolNumber: WireProtocol.test, options: options, security: .insecure, logger: .disabled)
    let endpoint = try await transport.bind(1)
    endpoint.handleRequestsDirectly { request in
      if onLoop(request.body) {
        request.respond(request.body)
      } else {
        Task { request.respond(request.body) }
      }
      return true
    }
    return (transport, endpoint, TCPRequestClient(cluster: cluster, logger: .disabled))
  }

  /// Eight tasks each send `rounds` requests in turn on the one connection and check each echo. A connection left
  /// paused would answer nothing more: the timeout says so.
  static func askFromEightTasks(
    _ client: TCPRequestClient, _ address: TCPAddress, rounds: Int,
    body: @escaping @Sendable (_ task: Int, _ round: Int) -> [UInt8]
  ) async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
      for index in 0..<8 {
        group.addTask {
          for round in 0..<rounds {
            let request = body(index, round)
            let reply = try await client.request(request, to: address, timeout: .seconds(30))
            #expect(reply == request)
          }
        }
      }
      try await group.waitForAll()
    }
  }
}
