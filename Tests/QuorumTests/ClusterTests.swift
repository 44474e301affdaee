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
      let addresses = members.addresses
      // Give the client only a follower's address: it must follow the redirect to the leader. A leader change
      // during the exchange (a busy machine) makes the leader it learned a stale one: the exchange is then
      // run again, on a fresh key, until it runs through one term.
      try await untilOneTerm(members, "the redirect exchange") { leaderID, attempt in
        let key = "greeting-\(attempt)"
        let followerID = try #require(members.nodes.keys.sorted().first { $0 != leaderID })
        let client = TCPKVClient(
          cluster: "tcp-test", members: [try #require(addresses[followerID])], retry: RetryPolicy(maxAttempts: 200))
        #expect(try await client.put(key, "hello") == nil)
        #expect(try await client.get(key) == Array("hello".utf8))
        #expect(try await client.compareAndSwap(key, expected: Array("hello".utf8), new: [1]))
        #expect(try await client.compareAndSwap(key, expected: Array("hello".utf8), new: [2]) == false)
        #expect(try await client.delete(key) == [1])
        #expect(try await client.get(key, consistency: .lease) == nil)
        let known = await client.knownLeader
        let status = try await client.status(of: try #require(addresses[leaderID]))
        await client.close()
        return {
          #expect(known == addresses[leaderID])
          #expect(status.role == "leader")
          #expect(status.voters == [1, 2, 3])
          #expect(status.peers.count == 2)
        }
      }

      // A write retried with the same request id is applied once: the retry gets the remembered answer. Each
      // request goes to the member that leads; one that lost leadership meanwhile answers with a failure that
      // is retried, as a client would (with the same request id: still exactly once).
      let raw = TCPRequestClient(cluster: "tcp-test")
      func send(_ request: ClientRequest) async throws -> ClientReply {
        var last = "nothing yet"
        return try await awaitValue("a leader to answer \(request) (last: \(last))") {
          let leader = try await members.leader(timeout: .seconds(60))
          let address = try #require(addresses[leader])
          do {
            let reply = try ClientReply(
              wireBytes: try await raw.request(request.wireBytes(), to: address, timeout: .seconds(5)))
            if case .failure(let failure) = reply, failure.error.isLeadershipChurn {
              last = "\(failure)"
              return nil
            }
            return reply
          } catch let error as TCPRequestError {
            last = "\(error)"
            return nil
          }
        }
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

      let leaderID = try await members.leader(timeout: .seconds(60))
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
      _ = try await members.leader(timeout: .seconds(60))
      let kv = KVClient(members: members.nodes, retry: RetryPolicy(maxAttempts: 200))
      try await kv.put("k", "v")
      #expect(try await kv.get("k") == Array("v".utf8))
    }
  }
}

/// A condition a test waited for did not come about before its deadline.
struct TimedOut: Error, CustomStringConvertible {
  var description: String
}

/// Calls `attempt` until it returns a value. The deadline only bounds how long a broken test takes to fail.
func awaitValue<T>(
  _ what: @autoclosure () -> String, within timeout: Duration = .seconds(60),
  isolation: isolated (any Actor)? = #isolation, _ attempt: () async throws -> T?
) async throws -> T {
  let deadline = ContinuousClock.now.advanced(by: timeout)
  while true {
    if let value = try await attempt() { return value }
    guard ContinuousClock.now < deadline else {
      throw TimedOut(description: "gave up after \(timeout) waiting for \(what())")
    }
    try await Task.sleep(for: .milliseconds(5))
  }
}

extension ConsensusError {
  /// The errors a request meets when leadership moves under it: a client retries them elsewhere or later.
  var isLeadershipChurn: Bool {
    switch self {
    case .notLeader, .timeout, .dropped, .outcomeUnknown, .transferInProgress, .leaseExpired: true
    default: false
    }
  }
}

/// Runs `exchange` against the current leader until one run starts and ends in the same term of the same
/// leader, then runs the checks it returned. Checks about who leads are only sound when no election happened
/// in between (on a busy machine one may); everything else the exchange checks as it goes. Each run gets a new
/// attempt number, for fresh keys.
func untilOneTerm(
  _ members: LocalMembers, _ what: String,
  _ exchange: (_ leader: NodeID, _ attempt: Int) async throws -> () -> Void
) async throws {
  var attempt = 0
  let checks = try await awaitValue("\(what) to run within one term (\(attempt) attempts)") { () -> (() -> Void)? in
    attempt += 1
    let leader = try await members.leader(timeout: .seconds(60))
    let node = try #require(members.nodes[leader])
    let before = await node.status
    let checks = try await exchange(leader, attempt)
    let after = await node.status
    guard before.role == .leader, after.role == .leader, after.term == before.term else { return nil }
    return checks
  }
  checks()
}
