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

  @Test("DataDirectory carries the log layout asked for; without one the data directory's own is kept")
  func dataDirectoryLayout() throws {
    for layout in GroupLogLayout.allCases {
      let cluster = try Cluster(id: "layout") {
        Member("n1")
        DataDirectory("/tmp/layout", layout: layout)
      }
      #expect(cluster.logLayout == layout)
    }
    let unset = try Cluster(id: "layout") {
      Member("n1")
      DataDirectory("/tmp/layout")
    }
    #expect(unset.logLayout == nil)
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

  @Test("a frame limit whose sealed length would not fit 32 bits is refused, naming the setting")
  func frameLimitTooLarge() {
    var options = TCPTransportOptions()
    options.maxFrameBytes = Int(UInt32.max)
    let tcp = options
    let error = #expect(throws: ClusterConfigurationError.self) {
      _ = try Cluster(id: "x") {
        Member("n1", at: "127.0.0.1:0")
        TCPSettings(tcp)
      }
    }
    #expect(error?.setting == "TCPSettings { maxFrameBytes }", "\(String(describing: error))")
  }

  @Test("client requests and replies round-trip through the wire format")
  func clientProtocolCodec() throws {
    let kv = KVCommand.put(key: "k", value: [1, 2]).wireBytes()
    let requests: [HostRequest] = [
      .registerSession(group: 2),
      .command(
        group: 1, ServiceCommand(service: "kv", payload: kv), request: RequestID(session: 3, sequence: 4),
        acknowledgedThrough: 3),
      .command(group: 0, ServiceCommand(service: "locks", payload: [9]), request: nil, acknowledgedThrough: 0),
      .query(group: 1, service: "kv", payload: KVQuery.get(key: "k").wireBytes(), consistency: .lease, atLeast: 7),
      .query(group: 2, service: "kv", payload: KVQuery.get(key: "k").wireBytes(), consistency: .session, atLeast: 9),
      .status(group: nil), .status(group: 3), .membership(group: 1, .addLearner(4)),
      .transferLeadership(group: 1, to: 2), .clusterMap,
      .watch(group: 2, service: "locks", key: "grant/orders/5", after: 41, timeoutMillis: 5_000),
    ]
    for request in requests { #expect(try HostRequest(wireBytes: request.wireBytes()) == request) }
    let status = GroupStatus(
      group: 1, name: "accounts", engine: .multiPaxos, node: 1, role: "leader", epoch: 3, leader: 1, commitIndex: 10,
      appliedIndex: 10, lastIndex: 11, snapshotIndex: 4, voters: [1, 2], learners: [3],
      peers: [PeerLag(node: 2, match: 9, lag: 2, isLearner: false, recentlyActive: true, note: "refused")],
      pendingRequests: 2, refusedMessages: 5)
    let map = ClusterMap(
      cluster: "orders", members: [1: "127.0.0.1:1", 2: "[::1]:2"],
      groups: [GroupSpec(id: 1, name: "a", members: [1, 2], services: ["kv"], slots: [SlotRange(0, 9)])])
    let replies: [HostReply] = [
      .session(7), .answer([1, 2], index: 9), .statuses([status]), .done, .clusterMap(map),
      .notifications([[1], [], [2, 3]], index: 12), .notifications([], index: 0),
      .failure(HostFailure(.consensus(.notLeader(hint: 2)), leaderAddress: "127.0.0.1:9")),
      .failure(HostFailure(.wrongGroup(key: "k", service: "kv", owner: 2))),
      .failure(HostFailure(.notHosted(3, members: [1, 2]))), .failure(HostFailure(.unknownService("x", group: 1))),
      .failure(HostFailure(.unknownGroup(9))), .failure(HostFailure(.malformed("why"))),
    ]
    for reply in replies { #expect(try HostReply(wireBytes: reply.wireBytes()) == reply) }
  }

  @Test("a member's group status carries the peer messages it refused, over the status protocol, for either engine")
  func refusedMessagesInGroupStatus() throws {
    var raftConfiguration = RaftConfiguration()
    raftConfiguration.members = [1, 2, 3]
    var raft = try RaftEngine.recover(
      id: 1, configuration: raftConfiguration, state: RecoveredState<LogEntry>(), random: SeededRandom(seed: 1)
    ).engine
    // A term no honest peer reaches.
    raft.step(.heartbeat(Heartbeat(term: .max, commit: 0, round: 1)), from: 2)
    var paxosConfiguration = PaxosConfiguration()
    paxosConfiguration.members = [1, 2, 3]
    var paxos = try MultiPaxosEngine.recover(
      id: 1, configuration: paxosConfiguration, state: RecoveredState<PaxosEntry>(), random: SeededRandom(seed: 1)
    ).engine
    // A ballot round above any a node reaches, twice.
    for _ in 0..<2 { paxos.step(.prepare(Prepare(ballot: Ballot(round: .max, node: 2), fromSlot: 1)), from: 2) }
    let group = GroupSpec(id: 1, name: "accounts", members: [1, 2, 3], services: ["kv"])
    let statuses = [
      RaftEngine.groupStatus(raft.status(applied: 0, pendingRequests: 0), group: group),
      MultiPaxosEngine.groupStatus(paxos.status(applied: 0, pendingRequests: 0), group: group),
    ]
    #expect(statuses.map(\.refusedMessages) == [1, 2])
    let reply = try HostReply(wireBytes: HostReply.statuses(statuses).wireBytes())
    guard case .statuses(let decoded) = reply else {
      Issue.record("decoded \(reply)")
      return
    }
    #expect(decoded.map(\.refusedMessages) == [1, 2])
    #expect(decoded == statuses)
  }

  @Test("a 3-member TCP cluster on loopback serves a client that follows redirects, exactly once")
  func tcpClusterServesClients() async throws {
    let cluster = try Cluster(id: "tcp-test") {
      Member("n1", at: "127.0.0.1:0")
      Member("n2", at: "127.0.0.1:0")
      Member("n3", at: "127.0.0.1:0")
      Security.insecure
      Logging(NullLogSink())
      RaftSettings {
        TickInterval(.milliseconds(5))
        ElectionTimeout(Duration.milliseconds(60)...Duration.milliseconds(120))
        HeartbeatInterval(.milliseconds(15))
      }
    }
    try await cluster.withLocalMembers { members in
      // Give the client only a follower's address: it must learn the map and follow the redirect to the leader.
      let leaderID = try await members.leader(timeout: .seconds(20))
      let followerID = try #require(members.hosts.keys.sorted().first { $0 != leaderID })
      let addresses = members.addresses
      let client = TCPKVClient(cluster: "tcp-test", members: [try #require(addresses[followerID])])
      #expect(try await client.put("greeting", "hello") == nil)
      #expect(try await client.get("greeting") == Array("hello".utf8))
      #expect(try await client.compareAndSwap("greeting", expected: Array("hello".utf8), new: [1]).swapped)
      #expect(try await client.compareAndSwap("greeting", expected: Array("hello".utf8), new: [2]).swapped == false)
      #expect(try await client.delete("greeting") == [1])
      #expect(try await client.get("greeting", consistency: .lease) == nil)
      // The newest leader's view (leadership may have moved on a busy machine: whoever leads now answers).
      let statuses = try await client.client.host.statuses()
      let leaderStatus = try #require(statuses.filter(\.isLeader).max { $0.epoch < $1.epoch })
      #expect(leaderStatus.voters == [1, 2, 3])
      #expect(leaderStatus.peers.count == 2)
      #expect(statuses.count == 3, "every member reports the default group")
      await client.close()

      // A write retried with the same request id is applied once: the retry gets the remembered answer. Each
      // request goes to the member that leads; one that lost leadership meanwhile answers with a failure that
      // is retried, as a client would (with the same request id: still exactly once).
      let raw = TCPRequestClient(cluster: "tcp-test")
      func send(_ request: HostRequest) async throws -> HostReply {
        var last = "nothing yet"
        return try await awaitValue("a leader to answer \(request) (last: \(last))") {
          let leader = try await members.leader(timeout: .seconds(60))
          let address = try #require(addresses[leader])
          do {
            let reply = try HostReply(
              wireBytes: try await raw.request(request.wireBytes(), to: address, timeout: .seconds(5)))
            if case .failure(let failure) = reply, case .consensus(let error) = failure.error, error.isLeadershipChurn {
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
      let reply = try await send(.registerSession(group: .default))
      guard case .session(let session) = reply else {
        Issue.record("no session: \(reply)")
        return
      }
      func cas(_ new: UInt8, sequence: UInt64) -> HostRequest {
        .command(
          group: .default,
          ServiceCommand(
            service: "kv", payload: KVCommand.compareAndSwap(key: "once", expected: nil, new: [new]).wireBytes()),
          request: RequestID(session: session, sequence: sequence), acknowledgedThrough: sequence - 1)
      }
      func answer(_ request: HostRequest) async throws -> (KVResponse, index: UInt64)? {
        let reply = try await send(request)
        guard case .answer(let bytes, let index) = reply else {
          Issue.record("not an answer: \(reply)")
          return nil
        }
        return (try KVResponse(wireBytes: bytes), index)
      }
      let first = try #require(try await answer(cas(1, sequence: 1)))
      #expect(first.0 == .swapped(true, current: [1]))
      #expect(first.index > 0, "a command's answer carries the index of the entry that applied it")
      let retried = try #require(try await answer(cas(1, sequence: 1)))
      #expect(retried.0 == first.0 && retried.index == first.index, "the retry gets the remembered answer")
      let second = try #require(try await answer(cas(2, sequence: 2)))
      #expect(second.0 == .swapped(false, current: [1]))
      #expect(second.index > first.index)
      // Request 2 acknowledged request 1, so its answer is gone: a retry hears so, and is not applied again.
      let gone = try await send(cas(3, sequence: 1))
      #expect(gone == .failure(HostFailure(.consensus(.responseForgotten(RequestID(session: session, sequence: 1))))))
      await raw.close()

      // A client of another cluster is refused at the handshake; its call fails by its deadline.
      var once = HostClientOptions()
      once.deadline = .seconds(1)
      let anyMember = try #require(addresses.values.first)
      let stranger = TCPKVClient(cluster: "someone-else", members: [anyMember], options: once)
      await #expect(throws: QuorumClientError.self) {
        _ = try await stranger.get("greeting")
      }
      await stranger.close()
    }
  }

  /// Three in-process members on fast timers.
  static func localCluster(_ id: ClusterID) throws -> Cluster {
    try Cluster(id: id) {
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
  }

  @Test("an in-process cluster from the same DSL serves the in-process client")
  func inProcessCluster() async throws {
    let cluster = try Self.localCluster("local")
    #expect(cluster.isInProcess)
    try await cluster.withLocalMembers { members in
      _ = try await members.leader(timeout: .seconds(60))
      var options = HostClientOptions()
      options.deadline = .seconds(60)
      let kv = members.kvClient(options: options)
      try await kv.put("k", "v")
      #expect(try await kv.get("k") == Array("v".utf8))
    }
  }

  @Test("a session read answers from any replica with the client's own latest write, and never goes back")
  func sessionReads() async throws {
    let cluster = try Self.localCluster("session")
    try await cluster.withLocalMembers { members in
      _ = try await members.leader(timeout: .seconds(60))
      var options = HostClientOptions()
      options.deadline = .seconds(60)
      let kv = members.kvClient(options: options)
      let group = try await kv.client.group(for: "k", service: "kv")
      #expect(await kv.client.lastSeenIndex(in: group) == 0)
      for round in 1...20 {
        try await kv.put("k", "v\(round)")
        let written = await kv.client.lastSeenIndex(in: group)
        #expect(written > 0)
        // Every replica, followers included, answers with this write: one that has not applied it yet waits.
        for member in [NodeID("n1"), "n2", "n3"] {
          let (value, index) = try await kv.getIndexed("k", consistency: .session, at: member)
          #expect(value == Array("v\(round)".utf8), "round \(round) at \(member)")
          #expect(index >= written)
          #expect(await kv.client.lastSeenIndex(in: group) >= index)
        }
      }
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
