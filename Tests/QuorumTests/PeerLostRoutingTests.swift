import QuorumCore
import QuorumHost
import QuorumPaxos
import QuorumRaft
import Testing

@testable import Quorum

/// A process's transport tells its groups when it loses a peer process, so the followers of an idle leader on it
/// stop waiting out the leader's stretched timeout (the engines' side is tested with their idle-heartbeat tests).
@Suite("Lost peers reach every hosted group")
struct PeerLostRoutingTests {
  @Test("a peer process lost by the transport is reported to each group that asked, and to no closed group")
  func routedToEveryGroup() async throws {
    let transport = InProcessTransport<HostMessage>()
    let process1 = try transport.bind(1)
    let process2 = try transport.bind(2)
    let process3 = try transport.bind(3)
    let router = GroupRouter(node: 1)
    let heard = Mailbox<String>(capacity: 16)
    var endpoints: [GroupEndpoint<RaftMessage>] = []
    for group in [GroupID(5), GroupID(6), GroupID(7)] {
      let endpoint = router.endpoint(
        for: group, capacity: 8, wrap: { HostMessage.raft($0) },
        unwrap: { if case .raft(let m) = $0 { m } else { nil } })
      if group != 7 { endpoint.onPeerLost { peer in try? heard.trySend("\(group) lost \(peer)") } }
      endpoints.append(endpoint)
    }
    router.attach(process1)
    await endpoints[1].close()  // group 6 left this process
    await process2.close()
    await process3.close()
    var reports: [String] = []
    heard.drainAvailable(into: &reports)
    #expect(reports == ["g5 lost n2", "g5 lost n3"], "group 6 closed, group 7 did not ask")
    await router.close()
  }

  @Test("members served over TCP idle with the detected factor unless the cluster sets one; in process keeps 5")
  func idleFactorFollowsTheTransport() throws {
    let open = try Cluster(id: "factors") {
      Member("n1", at: "127.0.0.1:0")
      Security.insecure
    }
    #expect(open.servedSettings.raft.coreOptions.idleHeartbeatFactor == RaftConfiguration.detectedIdleHeartbeatFactor)
    #expect(
      open.servedSettings.paxos.coreOptions.idleHeartbeatFactor == PaxosConfiguration.detectedIdleHeartbeatFactor)
    #expect(open.hostSettings.raft.coreOptions.idleHeartbeatFactor == RaftConfiguration.defaultIdleHeartbeatFactor)
    #expect(open.hostSettings.paxos.coreOptions.idleHeartbeatFactor == PaxosConfiguration.defaultIdleHeartbeatFactor)
    let set = try Cluster(id: "factors") {
      Member("n1", at: "127.0.0.1:0")
      Security.insecure
      RaftSettings { IdleHeartbeatFactor(3) }
      PaxosSettings { IdleHeartbeatFactor(1) }
    }
    #expect(set.servedSettings.raft.coreOptions.idleHeartbeatFactor == 3, "kept as set")
    #expect(set.servedSettings.paxos.coreOptions.idleHeartbeatFactor == 1, "kept as set: idling off")
    let inProcess = try Cluster(id: "factors") { Member("n1") }
    #expect(inProcess.hostSettings.raft.coreOptions.idleHeartbeatFactor == RaftConfiguration.defaultIdleHeartbeatFactor)
  }
}
