import CQuorumSystem
import Glibc
import QuorumCore
import Testing

@testable import QuorumTCP

/// A client's requests made while its connection is still in the handshake wait in the client; those whose
/// caller has given up by the time the handshake completes are not sent.
@Suite("Requests held during a client's handshake", .timeLimit(.minutes(2)))
struct HeldRequestsTests {
  @Test("requests that timed out during the handshake are not sent when it completes")
  func timedOutRequestsAreNotSent() async throws {
    // The test is the server: it accepts, and answers the hello only when it chooses.
    let listener = cq_tcp_socket(cq_address_family("127.0.0.1"))
    try #require(listener >= 0)
    defer { close(listener) }
    try #require(cq_bind_listen(listener, "127.0.0.1", 0, 16) == 0)
    let address = try TCPAddress(host: "127.0.0.1", port: UInt16(cq_local_port(listener)))
    var options = TCPTransportOptions()
    options.handshakeTimeout = .seconds(60)
    options.maxInflightRequestsPerConnection = 4
    let client = TCPRequestClient(cluster: "held", options: options, logger: .disabled)

    // Three rounds of as many requests as may be in flight; each times out while the hello is unanswered.
    for round in 0..<3 {
      try await withThrowingTaskGroup(of: TCPRequestError?.self) { group in
        for index in 0..<4 {
          group.addTask {
            do throws(TCPRequestError) {
              _ = try await client.request([UInt8(round * 4 + index)], to: address, timeout: .milliseconds(20))
              return nil
            } catch {
              return error
            }
          }
        }
        // Never sent: a caller may send them elsewhere (a write without a session, too) without a second execution.
        for try await error in group { #expect(error == .unreachable(address, reason: .connectTimeout)) }
      }
    }

    var accepted: Int32 = -1
    try await waitUntil("the client's connection") {
      accepted = cq_accept(listener)
      return accepted >= 0
    }
    let server = RawSocket(adopting: accepted)
    var reader = FrameReader()
    _ = try #require(try await reader.next(from: server), "the client's hello")
    try server.send(TCPFrame.frame(TCPHandshakeReply(node: 1, refusal: nil).wireBytes()))

    let live = Task { try await client.request([99], to: address, timeout: .seconds(60)) }
    var bodies: [[UInt8]] = []
    while bodies.last != [99] {
      let body = try #require(try await reader.next(from: server))
      let request = try WireEnvelope.decode(RPCPayload.self, from: body, expectedProtocol: WireProtocol.client)
      bodies.append(request.payload.body)
      try server.send(requestFrame(id: request.payload.id, body: [7]))
    }
    #expect(bodies == [[99]], "requests that timed out before the handshake completed were sent")
    #expect(try await live.value == [7])
    #expect(client.metrics.framesSent == 1)
    await client.close()
  }
}
