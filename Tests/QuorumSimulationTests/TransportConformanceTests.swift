import QuorumCore
import QuorumSimulation
import Testing

extension TransportConformance.Configuration {
  /// The defaults with a 120 s delivery timeout, a bound on failure only: a full parallel test run on two cores
  /// can hold the receiving tasks off the pool for seconds at a time.
  static var patient: Self { Self(deliveryTimeout: .seconds(120)) }
}

/// The transports shipped with Quorum that run in one process.
enum ShippedTransport: String, CaseIterable, Sendable, CustomTestStringConvertible {
  case inProcess = "InProcessTransport"
  case simulated = "SimulatedTransport (immediate)"

  var testDescription: String { rawValue }

  func run(
    _ check: TransportConformance.Check, configuration: TransportConformance.Configuration = .patient
  ) async throws(ConformanceFailure) {
    switch self {
    case .inProcess:
      try await TransportConformance.run(check, configuration: configuration) {
        InProcessTransport<ConformanceMessage>()
      }
    case .simulated:
      try await TransportConformance.run(check, configuration: configuration) {
        SimulatedTransport<ConformanceMessage>(seed: 1, mode: .immediate)
      }
    }
  }
}

@Suite("Transport conformance")
struct TransportConformanceTests {
  @Test(
    "every shipped transport passes every check",
    arguments: ShippedTransport.allCases, TransportConformance.Check.allCases)
  func shippedTransportPasses(_ transport: ShippedTransport, _ check: TransportConformance.Check) async throws {
    try await transport.run(check)
  }

  @Test("runAll runs every check against a small in-process transport")
  func runAllPasses() async throws {
    // 64-slot inboxes hand over about one message per task switch: in a full parallel run on two cores that can
    // be a few hundred a second, so the delivery timeout (a bound on failure only) is 120 s.
    let configuration = TransportConformance.Configuration(
      messagesPerLink: 2_000, messagesPerSender: 500, deliveryTimeout: .seconds(120))
    try await TransportConformance.runAll(configuration: configuration) {
      InProcessTransport<ConformanceMessage>(inboxCapacity: 64)
    }
  }

  @Test("ConformanceMessage round-trips through the wire format, inside an envelope")
  func messageIsWireCodable() throws {
    let message = ConformanceMessage(sender: 7, sequence: 1 << 40, payload: [0, 1, 2, 255])
    #expect(try ConformanceMessage(wireBytes: message.wireBytes()) == message)
    let envelope = Envelope(from: 7, to: 1, group: 3, payload: message)
    let bytes = WireEnvelope.encode(envelope, protocolNumber: WireProtocol.test)
    let decoded = try WireEnvelope.decode(ConformanceMessage.self, from: bytes, expectedProtocol: WireProtocol.test)
    #expect(decoded == envelope)
  }

  // MARK: The suite catches broken transports

  @Test("a transport that loses a message fails ordering per link, naming the gap")
  func detectsLoss() async throws {
    let failure = await #expect(throws: ConformanceFailure.self) {
      try await TransportConformance.checkOrderingPerLink {
        FaultyTransport(fault: .dropEvery(100))
      }
    }
    #expect(failure?.check == TransportConformance.Check.orderingPerLink.rawValue)
    #expect(failure?.detail.contains("expected n2#99 at n1, got #100 (lost or reordered)") == true)
  }

  @Test("a transport that corrupts payloads fails large payloads")
  func detectsCorruption() async throws {
    let failure = await #expect(throws: ConformanceFailure.self) {
      try await TransportConformance.checkLargePayloads {
        FaultyTransport(fault: .corruptLargePayloads)
      }
    }
    #expect(failure?.detail.contains("corrupt") == true)
  }

  @Test("a transport whose queues are unbounded fails back-pressure")
  func detectsUnboundedQueues() async throws {
    let configuration = TransportConformance.Configuration(backPressureBound: 5_000)
    let failure = await #expect(throws: ConformanceFailure.self) {
      try await TransportConformance.checkBackPressure(configuration: configuration) {
        InProcessTransport<ConformanceMessage>(inboxCapacity: 1_000_000)
      }
    }
    #expect(failure?.detail.contains("not bounded") == true)
  }

  @Test("a transport whose closed endpoint keeps its incoming open fails with a timeout, not a hang")
  func detectsIncomingThatNeverEnds() async throws {
    let configuration = TransportConformance.Configuration(deliveryTimeout: .milliseconds(200))
    let failure = await #expect(throws: ConformanceFailure.self) {
      try await TransportConformance.checkNoDeliveryAfterClose(configuration: configuration) {
        FaultyTransport(fault: .incomingNeverEnds)
      }
    }
    #expect(failure?.detail.contains("timed out after") == true)
    #expect(failure?.detail.contains("n1.incoming to end after n1 closed") == true)
  }

  @Test("a transport that still accepts sends from a closed endpoint fails no delivery after close")
  func detectsSendAfterClose() async throws {
    let failure = await #expect(throws: ConformanceFailure.self) {
      try await TransportConformance.checkNoDeliveryAfterClose {
        FaultyTransport(fault: .acceptsSendsAfterClose)
      }
    }
    #expect(failure?.detail.contains("closed endpoint n2 was accepted") == true)
  }

  @Test("a factory that throws is reported as a failure of the check")
  func factoryErrorsBecomeFailures() async throws {
    struct NoTransport: Error {}
    let failure = await #expect(throws: ConformanceFailure.self) {
      try await TransportConformance.run(.manySenders) { () throws -> InProcessTransport<ConformanceMessage> in
        throw NoTransport()
      }
    }
    #expect(failure?.check == "many senders")
    #expect(failure?.description.hasPrefix("transport conformance check 'many senders' failed:") == true)
  }
}

/// An in-process transport with one deliberate contract violation, to show the suite catches it.
final class FaultyTransport: Transport, Sendable {
  enum Fault: Sendable {
    case dropEvery(Int)
    case corruptLargePayloads
    case incomingNeverEnds
    case acceptsSendsAfterClose
  }

  let fault: Fault
  let inner = InProcessTransport<ConformanceMessage>()

  init(fault: Fault) { self.fault = fault }

  func bind(_ node: NodeID) throws(TransportError) -> FaultyEndpoint {
    FaultyEndpoint(inner: try inner.bind(node), fault: fault)
  }
}

final class FaultyEndpoint: TransportEndpoint, Sendable {
  let inner: InProcessEndpoint<ConformanceMessage>
  let fault: FaultyTransport.Fault
  /// A mailbox that is never closed, for `.incomingNeverEnds`.
  let stuck = Mailbox<Envelope<ConformanceMessage>>(capacity: 1)

  init(inner: InProcessEndpoint<ConformanceMessage>, fault: FaultyTransport.Fault) {
    self.inner = inner
    self.fault = fault
  }

  var id: NodeID { inner.id }

  var incoming: Mailbox<Envelope<ConformanceMessage>> {
    if case .incomingNeverEnds = fault, inner.incoming.isClosed { return stuck }
    return inner.incoming
  }

  func send(_ message: ConformanceMessage, to peer: NodeID, group: GroupID) throws(TransportError) {
    var message = message
    switch fault {
    case .dropEvery(let n) where message.sequence % UInt64(n) == UInt64(n - 1):
      return
    case .corruptLargePayloads where message.payload.count > 1000:
      message.payload[message.payload.count / 2] ^= 1
    case .acceptsSendsAfterClose where inner.incoming.isClosed:
      return
    default:
      break
    }
    try inner.send(message, to: peer, group: group)
  }

  func close() async { await inner.close() }
}
