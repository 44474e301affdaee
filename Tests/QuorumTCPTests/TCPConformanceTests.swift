import QuorumCore
import QuorumSimulation
import QuorumTCP
import Synchronization
import Testing

/// A loopback transport for the conformance suite: every node listens on 127.0.0.1 port 0.
func loopbackTransport(
  cluster: ClusterID = "conformance", options: TCPTransportOptions = TCPTransportOptions(),
  security: TCPSecurity = .insecure, logger: QuorumLogger = .disabled
) -> TCPTransport<ConformanceMessage> {
  TCPTransport<ConformanceMessage>(
    cluster: cluster, protocolNumber: WireProtocol.test, options: options, security: security, logger: logger)
}

/// Authentication with a fixed test secret (the conformance suite makes every transport of one run alike).
let conformanceSecurity = TCPSecurity.authenticated(clusterSecret: testSecret(seed: 1))

@Suite("TCPTransport passes the transport conformance suite over loopback", .timeLimit(.minutes(3)))
struct TCPConformanceTests {
  @Test("every check", arguments: TransportConformance.Check.allCases)
  func conformance(_ check: TransportConformance.Check) async throws {
    try await TransportConformance.run(check) { loopbackTransport() }
  }

  @Test("every check with authentication (a code on every frame)", arguments: TransportConformance.Check.allCases)
  func authenticatedConformance(_ check: TransportConformance.Check) async throws {
    // A loaded machine running debug builds can hold an event loop for a long time on a 4 MiB frame: a
    // liveness timeout of seconds keeps this check about delivery (liveness has its own tests).
    let options = TCPTransportOptions(liveness: LinkLiveness(pingInterval: .milliseconds(100), timeout: .seconds(20)))
    try await TransportConformance.run(check) { loopbackTransport(options: options, security: conformanceSecurity) }
  }

  @Test("every check with tiny queues and mailboxes (back-pressure and stalls on every path)")
  func conformanceWithTinyQueues() async throws {
    // Liveness has its own tests; a liveness timeout of seconds keeps this check about back-pressure on a loaded
    // machine running debug builds, where one event loop can be held for longer than the default timeout.
    let options = TCPTransportOptions(
      maxQueuedFramesPerPeer: 8, maxQueuedBytesPerPeer: 4096, inboxCapacity: 4,
      liveness: LinkLiveness(pingInterval: .milliseconds(100), timeout: .seconds(20)))
    let made = Transports()
    // 1,000 messages through a 4-slot mailbox is 250 stalls and resumptions per link. The deadline only bounds
    // how long a broken run takes to fail: every resumption needs a turn of the test's own receiving task on the
    // cooperative pool, which a full parallel run on two cores can delay by 50-200 ms (the report says so).
    let configuration = TransportConformance.Configuration(
      messagesPerLink: 1_000, messagesPerSender: 250, deliveryTimeout: .seconds(120),
      diagnostics: { await made.stateReport() })
    let sink = CapturingLogSink()
    do {
      try await TransportConformance.runAll(configuration: configuration) {
        made.add(loopbackTransport(options: options, logger: QuorumLogger(label: "tiny", sink: sink)))
      }
    } catch {
      Issue.record("\(error)\nmetrics: \(made.metrics)\nlog:\n\(sink.lines.suffix(4000))")
    }
  }
}

/// The transports a conformance run made, for a failure's report.
final class Transports: Sendable {
  private let all = Mutex<[TCPTransport<ConformanceMessage>]>([])
  func add(_ transport: TCPTransport<ConformanceMessage>) -> TCPTransport<ConformanceMessage> {
    all.withLock { $0.append(transport) }
    return transport
  }
  var metrics: String { all.withLock { $0.map { "\($0.metrics)" }.joined(separator: "\n") } }
  /// The state of the latest transport's endpoints (the one a timed-out check is using).
  func stateReport() async -> String {
    guard let latest = all.withLock({ $0.last }) else { return "no transport was made" }
    return await latest.stateReport()
  }
}
