import QuorumCore
import QuorumSimulation
import QuorumTCP
import Testing

/// Many threads sending to one peer at once: one of them holds the writer's role and writes outside the lock,
/// the others queue behind it and it writes their frames too (``LinkQueue``). Whatever the interleaving, every
/// message arrives once, each sender's in its order, and on an authenticated link every frame's code checks.
@Suite("Concurrent senders on one link", .timeLimit(.minutes(3)))
struct ConcurrentSendersTests {
  @Test("senders racing on one link: every message arrives once, each sender's in order", arguments: [false, true])
  func racingSenders(secure: Bool) async throws {
    let cluster = ClusterID(rawValue: "senders-\(UInt64.random(in: 0...UInt64.max))")
    let security: TCPSecurity = secure ? SecurePair.security : .insecure
    let a = TCPTransport<ConformanceMessage>(
      cluster: cluster, protocolNumber: WireProtocol.test, security: security, logger: .disabled)
    let n1 = try await a.bind(1)
    let b = TCPTransport<ConformanceMessage>(
      cluster: cluster, protocolNumber: WireProtocol.test, addresses: [1: n1.address], security: security,
      logger: .disabled)
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
    #expect(b.metrics.framesWrittenBySenders > 0, "\(b.metrics)")
    #expect(a.metrics.closes.isEmpty && b.metrics.closes.isEmpty, "\(a.metrics.closes) \(b.metrics.closes)")
    await n2.close()
    await n1.close()
  }

  /// A payload whose size and content follow from the sequence number (0 to 600 bytes).
  static func payload(_ sequence: UInt64) -> [UInt8] {
    (0..<Int(sequence % 601)).map { UInt8(truncatingIfNeeded: Int(sequence) &+ $0) }
  }
}
