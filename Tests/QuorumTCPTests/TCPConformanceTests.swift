import QuorumCore
import QuorumSimulation
import QuorumTCP
import Testing

/// A loopback transport for the conformance suite: every node listens on 127.0.0.1 port 0.
func loopbackTransport(
  cluster: ClusterID = "conformance", options: TCPTransportOptions = TCPTransportOptions(),
  logger: QuorumLogger = .disabled
) -> TCPTransport<ConformanceMessage> {
  TCPTransport<ConformanceMessage>(
    cluster: cluster, protocolNumber: WireProtocol.test, options: options, logger: logger)
}

@Suite("TCPTransport passes the transport conformance suite over loopback", .timeLimit(.minutes(3)))
struct TCPConformanceTests {
  @Test("every check", arguments: TransportConformance.Check.allCases)
  func conformance(_ check: TransportConformance.Check) async throws {
    try await TransportConformance.run(check) { loopbackTransport() }
  }

  @Test("every check with tiny queues and mailboxes (back-pressure and stalls on every path)")
  func conformanceWithTinyQueues() async throws {
    let options = TCPTransportOptions(maxQueuedFramesPerPeer: 8, maxQueuedBytesPerPeer: 4096, inboxCapacity: 4)
    let configuration = TransportConformance.Configuration(messagesPerLink: 3_000, messagesPerSender: 500)
    try await TransportConformance.runAll(configuration: configuration) { loopbackTransport(options: options) }
  }
}
