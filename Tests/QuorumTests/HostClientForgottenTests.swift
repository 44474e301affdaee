import Quorum
import Synchronization
import Testing

/// A one-member group whose member opens session 7 and answers every command "applied before, response no
/// longer kept".
final class ForgettingChannel: RequestChannel {
  let commands = Mutex(0)

  func send(_ request: [UInt8], to member: NodeID, timeout: Duration) async throws -> [UInt8] {
    switch try HostRequest(wireBytes: request) {
    case .registerSession: return HostReply.session(7).wireBytes()
    case .command(_, _, let id?, _):
      commands.withLock { $0 += 1 }
      return HostReply.failure(HostFailure(.consensus(.responseForgotten(id)))).wireBytes()
    default: return HostReply.failure(HostFailure(.consensus(.timeout))).wireBytes()
    }
  }
}

@Suite("A write whose response the group has forgotten")
struct HostClientForgottenTests {
  @Test("fails at once as outcomeUnknown: a retry under the session could only hear the same answer")
  func forgottenResponseIsTerminal() async throws {
    let channel = ForgettingChannel()
    let map = ClusterMap(
      cluster: "forgetful", members: [1: ""],
      groups: [GroupSpec(id: .default, name: "main", members: [1], services: ["kv"])])
    var options = HostClientOptions()
    options.deadline = .seconds(30)
    let client = HostClient(channel: channel, members: [1], map: map, options: options)
    await #expect(throws: QuorumClientError.outcomeUnknown) { try await KeyValueClient(client).put("k", "v") }
    #expect(channel.commands.withLock { $0 } == 1, "the client retried a request whose answer is gone")
  }

  @Test("the error travels the wire with the request it names")
  func wireRoundTrip() throws {
    let error = HostError.consensus(.responseForgotten(RequestID(session: 12, sequence: 345)))
    let reply = HostReply.failure(HostFailure(error))
    #expect(try HostReply(wireBytes: reply.wireBytes()) == reply)
    #expect("\(ConsensusError.responseForgotten(RequestID(session: 12, sequence: 345)))".contains("12#345"))
  }
}
