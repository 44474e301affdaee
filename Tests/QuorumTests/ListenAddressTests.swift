import Quorum
import Testing

@Suite("A member listening on every interface", .timeLimit(.minutes(2)))
struct ListenAddressTests {
  @Test("0.0.0.0 and :: are unspecified; a real address is not")
  func unspecified() throws {
    #expect(try TCPAddress.parse("0.0.0.0:7001").isUnspecified)
    #expect(try TCPAddress.parse("[::]:7001").isUnspecified)
    #expect(try !TCPAddress.parse("127.0.0.1:7001").isUnspecified)
    #expect(try !TCPAddress.parse("[::1]:7001").isUnspecified)
    #expect(try !TCPAddress.parse("node-0.example:7001").isUnspecified)
  }

  @Test("tells clients its address in the cluster, and a client keeps the address it can reach")
  func advertisesItsClusterAddress() async throws {
    let cluster = try Cluster(id: "wildcard") {
      Member("n1", at: "127.0.0.1:0")
      Security.insecure
      Logging(NullLogSink())
    }
    let server = try await cluster.start(1, listen: try TCPAddress.parse("0.0.0.0:0"))
    let run = Task { try? await server.run() }
    let channel = TCPRequestChannel(cluster: "wildcard", seeds: [])
    do {
      let listening = try await server.waitUntilListening()
      #expect(listening.isUnspecified)
      guard case .clusterMap(let map) = await server.host.handle(.clusterMap) else {
        throw TestFailure("no cluster map")
      }
      #expect(map.members[1] == "127.0.0.1:\(listening.port)")

      // A client told 0.0.0.0 (by an older member, say) keeps the address it reached the member at.
      channel.learn(map)
      var told = map
      told.members[1] = "0.0.0.0:1"
      channel.learn(told)
      let reply = try HostReply(
        wireBytes: try await channel.send(HostRequest.clusterMap.wireBytes(), to: 1, timeout: .seconds(60)))
      guard case .clusterMap = reply else { throw TestFailure("answered \(reply)") }
    } catch {
      Issue.record(error)
    }
    await channel.close()
    await server.shutdown()
    await run.value
  }
}

private struct TestFailure: Error, CustomStringConvertible {
  let description: String
  init(_ description: String) { self.description = description }
}
