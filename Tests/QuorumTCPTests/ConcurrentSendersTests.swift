import QuorumCore
import QuorumSimulation
import QuorumTCP
import Testing

/// Many threads sending to one peer at once: one of them holds the writer's role and writes outside the lock,
/// the others queue behind it and it writes their frames too (``LinkQueue``). Whatever the interleaving, every
/// message arrives once, each sender's in its order, and on an authenticated link every frame's code checks.
@Suite("Concurrent senders on one link", .timeLimit(.minutes(3)))
struct ConcurrentSendersTests {
  @Test(
    "senders racing on one link: every message arrives once, each sender's in order",
    arguments: [false, true], [Duration.zero, TCPTransportOptions.default.senderWriteQuietPeriod])
  func racingSenders(secure: Bool, quiet: Duration) async throws {
    let cluster = ClusterID(rawValue: "senders-\(UInt64.random(in: 0...UInt64.max))")
    let security: TCPSecurity = secure ? SecurePair.security : .insecure
    // With no quiet period senders write whenever the link is idle, however recently it was written to: the
    // most racing; with the default, fewer direct writes, racing the loop's batches.
    var options = TCPTransportOptions.default
    options.senderWriteQuietPeriod = quiet
    let a = TCPTransport<ConformanceMessage>(
      cluster: cluster, protocolNumber: WireProtocol.test, options: options, security: security, logger: .disabled)
    let n1 = try await a.bind(1)
    let b = TCPTransport<ConformanceMessage>(
      cluster: cluster, protocolNumber: WireProtocol.test, addresses: [1: n1.address], options: options,
      security: security, logger: .disabled)
    let n2 = try await b.bind(2)
    a.setAddress(n2.address, for: 2)
    let senders = 8
    let perSender = 2_000
    let receiver = Task { () -> [String] in
      var next = [UInt64](repeating: 0, count: senders)
      var problems: [String] = []
      for _ in 0..<(senders * perSender) {
        guard let envelope = try? await receive(n1.incoming) else {
          problems.append("a message did not arrive; next expected \(next)")
          break
        }
        let k = Int(envelope.payload.sender.rawValue) - 1
        guard next.indices.contains(k) else {
          problems.append("unknown sender \(envelope.payload.sender)")
          continue
        }
        if envelope.payload.sequence != next[k] {
          problems.append("sender \(k): got \(envelope.payload.sequence), expected \(next[k])")
        }
        if envelope.payload.payload != Self.payload(envelope.payload.sequence) {
          problems.append("sender \(k): payload of \(envelope.payload.sequence) damaged")
        }
        next[k] = envelope.payload.sequence + 1
      }
      return problems
    }
    await withTaskGroup(of: Void.self) { group in
      for k in 0..<senders {
        group.addTask {
          for sequence in 0..<UInt64(perSender) {
            let message = ConformanceMessage(
              sender: NodeID(UInt64(k + 1)), sequence: sequence, payload: Self.payload(sequence))
            while true {
              do {
                try n2.send(message, to: 1)
                break
              } catch {
                await Task.yield()  // queueFull: the receiver is behind; try again
              }
            }
          }
        }
      }
    }
    let problems = await receiver.value
    #expect(problems.isEmpty, "\(problems.prefix(5))")
    #expect(b.metrics.framesSent >= senders * perSender, "pings count too: \(b.metrics)")
    if quiet == .zero { #expect(b.metrics.framesWrittenBySenders > 0, "\(b.metrics)") }
    #expect(a.metrics.closes.isEmpty && b.metrics.closes.isEmpty, "\(a.metrics.closes) \(b.metrics.closes)")
    await n2.close()
    await n1.close()
  }

  @Test("a lone message on a quiet link goes out from its sender; a burst queues and the loop batches it")
  func quietPeriod() async throws {
    let (b, n1, n2) = try await Self.connectedPair("quiet", quietPeriod: .milliseconds(20))
    // After more than the quiet period the next message finds the link idle and quiet.
    let (fromSender, sequence) = try await Self.sendUntilASenderWrites(b, n1, n2, pause: .milliseconds(50))
    #expect(fromSender, "a lone message on a quiet link went out from its sender")
    // A burst right after it: the link was just written to, so the frames queue and the loop writes them in
    // batches. Only a sender descheduled for a whole quiet period could write one itself.
    let burst = 2_000
    let directBefore = b.metrics.framesWrittenBySenders
    let first = sequence
    for sequence in first..<first + UInt64(burst) {
      while true {
        do {
          try n2.send(Self.message(sequence), to: 1)
          break
        } catch {
          await Task.yield()  // queueFull: the loop is behind; try again
        }
      }
    }
    for sequence in first..<first + UInt64(burst) {
      #expect(try await receive(n1.incoming).payload.sequence == sequence)
    }
    let direct = b.metrics.framesWrittenBySenders - directBefore
    #expect(direct < burst / 20, "\(direct) of \(burst) burst frames written by their sender")
    await n2.close()
    await n1.close()
  }

  @Test("a sender on the loop's own thread queues, even on an idle link: the loop writes the pass's frames at once")
  func loopThreadSendersQueue() async throws {
    // Any idle link: a sender elsewhere writes itself (checked first).
    let (b, n1, n2) = try await Self.connectedPair("loop", quietPeriod: .zero)
    var (fromSender, sequence) = try await Self.sendUntilASenderWrites(b, n1, n2, pause: .milliseconds(20))
    #expect(fromSender)
    // From the loop's thread, never: each message is queued and written by the loop.
    let executor = try b.makeLoopExecutor()
    let before = b.metrics.framesWrittenBySenders
    for _ in 0..<5 {
      try await Task.sleep(for: .milliseconds(20))
      let next = sequence
      try await Task(executorPreference: executor) { try n2.send(Self.message(next), to: 1) }.value
      #expect(try await receive(n1.incoming).payload.sequence == next)
      sequence += 1
    }
    #expect(b.metrics.framesWrittenBySenders == before, "\(b.metrics)")
    await n2.close()
    await n1.close()
  }

  /// Node 2 (on transport `b`) connected to node 1, with `quietPeriod` and no pings (a ping the loop writes
  /// counts as a write on the link); the first message, which waited for the connection, is delivered.
  static func connectedPair(_ name: String, quietPeriod: Duration) async throws
    -> (TCPTransport<ConformanceMessage>, TCPEndpoint<ConformanceMessage>, TCPEndpoint<ConformanceMessage>)
  {
    let cluster = ClusterID(rawValue: "\(name)-\(UInt64.random(in: 0...UInt64.max))")
    var options = TCPTransportOptions.default
    options.senderWriteQuietPeriod = quietPeriod
    options.liveness = LinkLiveness(pingInterval: .seconds(30), timeout: .seconds(60))
    let a = TCPTransport<ConformanceMessage>(
      cluster: cluster, protocolNumber: WireProtocol.test, options: options, security: .insecure, logger: .disabled)
    let n1 = try await a.bind(1)
    let b = TCPTransport<ConformanceMessage>(
      cluster: cluster, protocolNumber: WireProtocol.test, addresses: [1: n1.address], options: options,
      security: .insecure, logger: .disabled)
    let n2 = try await b.bind(2)
    a.setAddress(n2.address, for: 2)
    try n2.send(message(0), to: 1)
    #expect(try await receive(n1.incoming).payload.sequence == 0)
    return (b, n1, n2)
  }

  /// Message `sequence` from node 2.
  static func message(_ sequence: UInt64) -> ConformanceMessage {
    ConformanceMessage(sender: 2, sequence: sequence, payload: payload(sequence))
  }

  /// Sends messages 1, 2, … from node 2 after a `pause` each, until one is written by its sender (a loaded
  /// machine may hold the loop from finishing its last write for that long: then the message queues, and the
  /// next one is the test); at most 20. Returns whether one was, and the next sequence number.
  static func sendUntilASenderWrites(
    _ b: TCPTransport<ConformanceMessage>, _ n1: TCPEndpoint<ConformanceMessage>,
    _ n2: TCPEndpoint<ConformanceMessage>, pause: Duration
  ) async throws -> (Bool, UInt64) {
    var fromSender = false
    var sequence: UInt64 = 1
    while !fromSender && sequence <= 20 {
      try await Task.sleep(for: pause)
      let before = b.metrics.framesWrittenBySenders
      try n2.send(message(sequence), to: 1)
      fromSender = b.metrics.framesWrittenBySenders == before + 1
      #expect(try await receive(n1.incoming).payload.sequence == sequence)
      sequence += 1
    }
    return (fromSender, sequence)
  }

  /// A payload whose size and content follow from the sequence number (0 to 600 bytes).
  static func payload(_ sequence: UInt64) -> [UInt8] {
    (0..<Int(sequence % 601)).map { UInt8(truncatingIfNeeded: Int(sequence) &+ $0) }
  }
}
