import QuorumCore
import QuorumSimulation
import Testing

@testable import QuorumTCP

/// Writes made by the sending thread itself while a link is idle (`TCPTransportOptions.writesFromSenders`):
/// the frames must go out sealed, whole and in order whether the sender, the loop, or both in turn (a write the
/// full socket cuts short) write them.
@Suite("Senders write to idle sockets themselves", .timeLimit(.minutes(3)))
struct SenderWriteTests {
  static let pattern: [UInt8] = (0..<(64 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8) }

  /// 64 KiB: a fixed pattern with `sequence` at both ends, so a frame spliced from two others cannot pass.
  static func payload(_ sequence: UInt64) -> [UInt8] {
    var bytes = pattern
    withUnsafeBytes(of: sequence.littleEndian) { stamp in
      bytes.replaceSubrange(0..<8, with: stamp)
      bytes.replaceSubrange((bytes.count - 8)..<bytes.count, with: stamp)
    }
    return bytes
  }

  @Test("a frame the full socket cuts short is finished by the loop; all 400 arrive sealed, whole and in order")
  func cutShortWrites() async throws {
    // A receiver that takes 4 messages at most and is not read from: its connection stops reading, both socket
    // buffers fill, and a sender's write meets a full socket.
    var options = SecurePair.options()
    options.inboxCapacity = 4
    // No pings: a ping queued on the link would make the sender queue behind it, and the loop (not the sender)
    // would then meet the full socket. Without them the link stays idle until the sender's own write is cut.
    options.liveness = LinkLiveness(pingInterval: .seconds(600), timeout: .seconds(1200))
    // Senders write whenever the link is idle: with a quiet period, a send right after the previous one would
    // queue for the loop, and the loop rather than a sender might meet the full socket.
    options.senderWriteQuietPeriod = .zero
    let pair = try await SecurePair(options: options)
    try await pair.healthyLinkDelivers(0)
    let count: UInt64 = 400
    for sequence in 1...count {
      try pair.n2.send(ConformanceMessage(sender: 2, sequence: sequence, payload: Self.payload(sequence)), to: 1)
    }
    let sent = pair.b.metrics
    #expect(sent.framesWrittenBySenders >= 1, "\(sent)")
    #expect(sent.senderWritesCutShort >= 1, "25 MB cannot fit in two socket buffers: \(sent)")
    for sequence in 1...count {
      let envelope = try await receive(pair.n1.incoming)
      #expect(envelope.payload.sequence == sequence)
      #expect(envelope.payload.payload == Self.payload(sequence), "frame \(sequence) arrived damaged")
      if envelope.payload.sequence != sequence { break }
    }
    #expect(pair.a.metrics.closes.isEmpty, "every frame's code checked out: \(pair.a.metrics)")
    await pair.close()
  }

  @Test("with writes from senders off, every frame is queued for the loop")
  func loopOnly() async throws {
    var options = SecurePair.options()
    options.writesFromSenders = false
    let pair = try await SecurePair(options: options)
    try await pair.healthyLinkDelivers(0)
    for sequence in 1...UInt64(50) {
      try pair.n2.send(ConformanceMessage(sender: 2, sequence: sequence), to: 1)
      #expect(try await receive(pair.n1.incoming).payload.sequence == sequence)
    }
    #expect(pair.b.metrics.framesWrittenBySenders == 0, "\(pair.b.metrics)")
    await pair.close()
  }

  @Test(
    "replies written by responders and by the loop all reach their requests, also at the in-flight limit",
    arguments: [4, 1024])
  func replies(inflightLimit: Int) async throws {
    var options = SecurePair.options()
    options.maxInflightRequestsPerConnection = inflightLimit
    let pair = try await SecurePair(options: options)
    let client = try pair.client("alice", SecurePair.alice)
    // 32 tasks pipeline 40 requests each on one connection; at a limit of 4 the server stops reading most of the
    // time, and only replies written through the loop let it read on.
    try await withThrowingTaskGroup(of: Void.self) { group in
      for task in 0..<32 {
        group.addTask {
          for round in 0..<40 {
            let body = Array("\(task)/\(round)".utf8)
            let reply = try await client.request(body, to: pair.n1.address, timeout: .seconds(60))
            #expect(reply == body)
          }
        }
      }
      try await group.waitForAll()
    }
    // Under load every reply above may have found the connection busy or held. One request at a time, the
    // connection is idle when the reply is ready: the responder writes it (the loop may still be finishing the
    // previous write at that moment, hence up to 100 tries).
    var tries = 0
    while pair.a.metrics.framesWrittenBySenders == 0 && tries < 100 {
      tries += 1
      #expect(try await client.request([7], to: pair.n1.address, timeout: .seconds(60)) == [7])
    }
    #expect(pair.a.metrics.framesWrittenBySenders >= 1, "\(pair.a.metrics)")
    #expect(pair.a.metrics.closes.isEmpty, "\(pair.a.metrics)")
    await client.close()
    await pair.close()
  }
}
