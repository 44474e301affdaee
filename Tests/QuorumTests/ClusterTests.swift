import Quorum
import Testing

@Suite("Cluster DSL and the client protocol over TCP", .timeLimit(.minutes(2)))
struct ClusterTests {
  @Test("the DSL builds a validated description")
  func dsl() throws {
    let cluster = try Cluster(id: "orders") {
      Member("n1", at: "127.0.0.1:7001")
      Member("n2", at: "127.0.0.1:7002")
      Member(3, at: "127.0.0.1:7003")
      DataDirectory("/tmp/orders", fsync: .never)
      RaftSettings {
        HeartbeatInterval(.milliseconds(40))
      }
    }
    #expect(cluster.members.map(\.id) == [1, 2, 3])
    #expect(cluster.raft.members == [1, 2, 3])
    #expect(cluster.raft.heartbeatInterval == .milliseconds(40))
    #expect(cluster.addressBook[2] == TCPAddress("127.0.0.1:7002"))
    #expect(cluster.storage == .directory("/tmp/orders", fsync: .never))
    #expect(!cluster.isInProcess)
  }

  @Test(
    "invalid descriptions name the offending line",
    arguments: [
      ("Member(\"n0\")", "is not a node id"),
      ("Member(\"n1\", at: \"some_where:1\")", "nor a valid host name"),
      ("Member(\"n1\")", "listed twice"),
      ("Member", "either every member has an address"),
      ("RaftSettings { HeartbeatInterval }", "HeartbeatInterval"),
    ])
  func invalid(_ expectedSetting: String, _ reason: String) {
    let error = #expect(throws: ClusterConfigurationError.self) {
      switch expectedSetting {
      case "Member(\"n0\")": _ = try Cluster(id: "x") { Member("n0") }
      case "Member(\"n1\", at: \"some_where:1\")": _ = try Cluster(id: "x") { Member("n1", at: "some_where:1") }
      case "Member(\"n1\")":
        _ = try Cluster(id: "x") {
          Member("n1")
          Member("1")
        }
      case "Member":
        _ = try Cluster(id: "x") {
          Member("n1")
          Member("n2", at: "127.0.0.1:1")
        }
      default:
        _ = try Cluster(id: "x") {
          Member("n1")
          RaftSettings { HeartbeatInterval(.seconds(10)) }
        }
      }
    }
    #expect(error?.setting.hasPrefix(expectedSetting) == true, "\(String(describing: error))")
    #expect(error?.description.contains(reason) == true, "\(String(describing: error))")
  }

  @Test("client requests and replies round-trip through the wire format")
  func clientProtocolCodec() throws {
    let requests: [ClientRequest] = [
      .registerSession,
      .command(.put(key: "k", value: [1, 2]), request: RequestID(session: 3, sequence: 4), acknowledgedThrough: 3),
      .command(.compareAndSwap(key: "k", expected: nil, new: [9]), request: nil, acknowledgedThrough: 0),
      .query(.get(key: "k"), consistency: .lease), .query(.scan(prefix: "a", limit: 10), consistency: .stale),
      .query(.count, consistency: .linearizable), .status, .membership(.addLearner(4)), .transferLeadership(2),
    ]
    for request in requests { #expect(try ClientRequest(wireBytes: request.wireBytes()) == request) }
    let status = MemberStatus(
      node: 1, role: "leader", term: 3, leader: 1, commitIndex: 10, appliedIndex: 10, lastIndex: 11, voters: [1, 2],
      learners: [3], peers: [PeerLag(node: 2, match: 9, lag: 2, isLearner: false, recentlyActive: true)],
      addresses: [1: try TCPAddress.parse("127.0.0.1:1"), 2: try TCPAddress.parse("[::1]:2")])
    let replies: [ClientReply] = [
      .session(7), .response(.done(previous: nil)), .response(.swapped(true, current: [1])),
      .queryResult(.value([1])), .queryResult(.entries([KVPair("a", [2], modifiedAt: 5)])), .queryResult(.count(3)),
      .status(status), .done,
      .failure(ClientFailure(.notLeader(hint: 2), leaderAddress: TCPAddress("127.0.0.1:9"))),
      .failure(ClientFailure(.commandTooLarge(bytes: 10, limit: 5), detail: "why")),
    ]
    for reply in replies { #expect(try ClientReply(wireBytes: reply.wireBytes()) == reply) }
  }

  @Test("a 3-member TCP cluster on loopback serves a client that follows redirects, exactly once")
  func tcpClusterServesClients() async throws {
    let cluster = try Cluster(id: "tcp-test") {
      Member("n1", at: "127.0.0.1:0")
      Member("n2", at: "127.0.0.1:0")
      Member("n3", at: "127.0.0.1:0")
      Logging(NullLogSink())
      RaftSettings {
        TickInterval(.milliseconds(5))
        ElectionTimeout(Duration.milliseconds(60)...Duration.milliseconds(120))
        HeartbeatInterval(.milliseconds(15))
      }
    }
    try await cluster.withLocalMembers { members in
      // Give the client only a follower's address: it must follow the redirect to the leader.
      let leaderID = try await members.leader(timeout: .seconds(20))
      let followerID = try #require(members.nodes.keys.first { $0 != leaderID })
      let addresses = members.addresses
      let client = TCPKVClient(cluster: "tcp-test", members: [try #require(addresses[followerID])])
      #expect(try await client.put("greeting", "hello") == nil)
      #expect(try await client.get("greeting") == Array("hello".utf8))
      #expect(await client.knownLeader == addresses[leaderID])
      #expect(try await client.compareAndSwap("greeting", expected: Array("hello".utf8), new: [1]))
      #expect(try await client.compareAndSwap("greeting", expected: Array("hello".utf8), new: [2]) == false)
      #expect(try await client.delete("greeting") == [1])
      #expect(try await client.get("greeting", consistency: .lease) == nil)
      let status = try await client.status(of: try #require(addresses[leaderID]))
      #expect(status.role == "leader")
      #expect(status.voters == [1, 2, 3])
      #expect(status.peers.count == 2)
      await client.close()

      // A write retried with the same request id is applied once: the retry gets the remembered answer.
      let raw = TCPRequestClient(cluster: "tcp-test")
      let leaderAddress = try #require(addresses[leaderID])
      func send(_ request: ClientRequest) async throws -> ClientReply {
        try ClientReply(wireBytes: try await raw.request(request.wireBytes(), to: leaderAddress, timeout: .seconds(5)))
      }
      guard case .session(let session) = try await send(.registerSession) else {
        Issue.record("no session")
        return
      }
      let cas = ClientRequest.command(
        .compareAndSwap(key: "once", expected: nil, new: [1]), request: RequestID(session: session, sequence: 1),
        acknowledgedThrough: 0)
      #expect(try await send(cas) == .response(.swapped(true, current: [1])))
      #expect(try await send(cas) == .response(.swapped(true, current: [1])))
      let fresh = ClientRequest.command(
        .compareAndSwap(key: "once", expected: nil, new: [2]), request: RequestID(session: session, sequence: 2),
        acknowledgedThrough: 1)
      #expect(try await send(fresh) == .response(.swapped(false, current: [1])))
      await raw.close()

      // A client of another cluster is refused at the handshake, with a clear error.
      let stranger = TCPKVClient(
        cluster: "someone-else", members: [try #require(addresses[leaderID])], retry: RetryPolicy(maxAttempts: 1))
      await #expect {
        _ = try await stranger.get("greeting")
      } throws: { error in
        "\(error)".contains("cluster id mismatch")
      }
      await stranger.close()
    }
  }

  @Test("an in-process cluster from the same DSL serves the in-process client")
  func inProcessCluster() async throws {
    let cluster = try Cluster(id: "local") {
      Member("n1")
      Member("n2")
      Member("n3")
      Logging(NullLogSink())
      RaftSettings {
        TickInterval(.milliseconds(5))
        ElectionTimeout(Duration.milliseconds(60)...Duration.milliseconds(120))
        HeartbeatInterval(.milliseconds(15))
      }
    }
    #expect(cluster.isInProcess)
    try await cluster.withLocalMembers { members in
      _ = try await members.leader(timeout: .seconds(20))
      let kv = members.kvClient()
      try await kv.put("k", "v")
      #expect(try await kv.get("k") == Array("v".utf8))
    }
  }
}
