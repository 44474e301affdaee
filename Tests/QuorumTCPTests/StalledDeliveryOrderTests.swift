import QuorumCore
import QuorumSimulation
import Testing

@testable import QuorumTCP

/// A peer's messages arrive in the order sent, even across a reconnection while the receiver's mailbox is full.
///
/// A receiver that stops consuming pauses reading; the dialler, hearing no acknowledgement of its pings, gives
/// the link up as stalled and dials again. The old connection's frames that were waiting for room in the
/// mailbox must not be admitted after the new connection's (found under load by the transport conformance
/// check: "received #8193 following #109568").
@Suite("Stalled deliveries across a reconnection", .timeLimit(.minutes(3)))
struct StalledDeliveryOrderTests {
  @Test("frames a closed connection left waiting for room never arrive after the next connection's")
  func noOvertakingAfterReconnect() async throws {
    var options = SecurePair.options()
    options.inboxCapacity = 8
    let pair = try await SecurePair(options: options)
    try await pair.healthyLinkDelivers(0)
    // The sender sends on, through the stalls and reconnections, until it is told to stop.
    let stop = OnceSignal()
    let sender = Task {
      var sequence: UInt64 = 1
      while !stop.hasFinished {
        do {
          try pair.n2.send(ConformanceMessage(sender: 2, sequence: sequence), to: 1)
          sequence += 1
        } catch {
          try? await Task.sleep(for: .milliseconds(1))  // the link's queue is full: back off
        }
      }
    }
    // Nothing is consumed meanwhile. Twice, once frames wait for room in the full mailbox, the dialler gives
    // its connection up (as its liveness check does when acknowledgements stop, on a machine loaded enough to
    // starve the loops) and dials again, and the new connection's frames stall behind the old one's.
    for round in 1...2 {
      try await waitUntil("frames waiting for room before drop \(round)") {
        pair.n1.incoming.count == options.inboxCapacity && pair.b.metrics.connectionsEstablished >= round
      }
      let handle = try pair.n2.core.link(to: 1)
      _ = pair.n2.core.loop.execute { handle.link.connection?.close(.linkStalled(silentMilliseconds: 0)) }
      try await waitUntil("the dialler to connect again after drop \(round)") {
        pair.b.metrics.connectionsEstablished >= round + 1
      }
    }
    // The new connection's frames reach the receiver too.
    let sentBefore = pair.b.metrics.framesSent
    try await waitUntil("frames sent on the last connection") { pair.b.metrics.framesSent > sentBefore + 64 }
    stop.finish()
    await sender.value
    var previous: UInt64 = 0
    var received = 0
    while let envelope = pair.n1.incoming.drainOne() {
      let sequence = envelope.payload.sequence
      #expect(sequence > previous, "#\(sequence) arrived after #\(previous)")
      if sequence <= previous { break }
      previous = sequence
      received += 1
      if pair.n1.incoming.count == 0 {
        // Frames still on their way from the socket or waiting for room: the order holds for whatever comes.
        try? await waitUntil("more frames", timeout: .milliseconds(500)) { pair.n1.incoming.count > 0 }
      }
    }
    #expect(received > 0)
    await pair.close()
  }
}

extension Mailbox {
  /// The next element if one is buffered, without waiting.
  fileprivate func drainOne() -> Element? {
    var one: [Element] = []
    return drainAvailable(into: &one, limit: 1) == 1 ? one[0] : nil
  }
}
