import Quorum
import Testing

/// Requests a host must refuse, and cluster descriptions it must not start from: each is a typed error whose
/// message says what is wrong and what to do instead.
@Suite("Bad requests and bad group descriptions get typed errors", .timeLimit(.minutes(2)))
struct HostBadInputTests {
  /// Three in-process members hosting `accounts` (Raft, id 1, on every member, kv and locks), `audit`
  /// (Multi-Paxos, id 2, on every member, kv only) and `archive` (Raft, id 3, on n1 and n2 only, kv): the key
  /// space of `kv` is split among the three groups.
  static func cluster() throws -> Cluster {
    try Cluster(id: "bad-input") {
      Member("n1")
      Member("n2")
      Member("n3")
      Logging(NullLogSink())
      Group("accounts", id: 1, engine: .raft) {
        KeyValue()
        Locks()
      }
      Group("audit", id: 2, engine: .multiPaxos) { KeyValue() }
      Group("archive", id: 3, engine: .raft, members: ["n1", "n2"]) { KeyValue() }
    }
  }

  /// A key of `kv` that group `group` owns in `map`.
  static func key(ownedBy group: GroupID, in map: ClusterMap) throws -> String {
    let placement = Placement(map)
    return try #require((0..<10_000).lazy.map { "key-\($0)" }.first { placement.owns(group, key: $0, service: "kv") })
  }

  /// The failure in `reply`, recording an issue if it is not one.
  static func failure(_ reply: HostReply, sourceLocation: SourceLocation = #_sourceLocation) -> HostFailure? {
    guard case .failure(let failure) = reply else {
      Issue.record("expected a failure, got \(reply)", sourceLocation: sourceLocation)
      return nil
    }
    return failure
  }

  @Test("a watch of a key longer than 4 KiB is refused as malformed, before it waits")
  func watchedKeyTooLong() async throws {
    try await Self.cluster().withLocalMembers { members in
      let host = try #require(members.hosts[1])
      let long = String(repeating: "k", count: 4097)
      let failure = Self.failure(
        await host.handle(.watch(group: 1, service: "locks", key: long, after: 0, timeoutMillis: 60_000)))
      #expect(failure?.error == .malformed("a watched key of 4097 bytes (at most 4096)"))
    }
  }

  @Test("a request for a group the cluster does not have is answered unknownGroup, naming the group")
  func unknownGroup() async throws {
    try await Self.cluster().withLocalMembers { members in
      let host = try #require(members.hosts[1])
      let put = ServiceCommand(service: "kv", payload: KVCommand.put(key: "k", value: [1]).wireBytes())
      let requests: [HostRequest] = [
        .command(group: 42, put, request: nil, acknowledgedThrough: 0),
        .query(group: 42, service: "kv", payload: KVQuery.get(key: "k").wireBytes(), consistency: .stale, atLeast: 0),
        .registerSession(group: 42), .status(group: 42), .transferLeadership(group: 42, to: 2),
      ]
      for request in requests {
        let failure = Self.failure(await host.handle(request))
        #expect(failure?.error == .unknownGroup(42), "\(request)")
        #expect(failure?.description == "unknown group g42", "\(request)")
      }
      // Through the client: refused at once (not retried until the deadline), with the same typed error.
      let client = members.client()
      await #expect(throws: QuorumClientError.rejected(.unknownGroup(42))) {
        _ = try await client.command(put.payload, service: "kv", group: 42, deadline: .seconds(30))
      }
    }
  }

  @Test("a request for a service the group does not carry is answered unknownService, naming service and group")
  func unknownService() async throws {
    try await Self.cluster().withLocalMembers { members in
      let host = try #require(members.hosts[1])
      // `queue` is no service at all; `locks` is one, but `audit` does not carry it.
      for (service, group) in [("queue", GroupID(1)), ("locks", GroupID(2))] {
        let command = HostRequest.command(
          group: group, ServiceCommand(service: service, payload: [1, 2, 3]), request: nil, acknowledgedThrough: 0)
        let query = HostRequest.query(
          group: group, service: service, payload: [1], consistency: .linearizable, atLeast: 0)
        let watch = HostRequest.watch(group: group, service: service, key: "k", after: 0, timeoutMillis: 10)
        for request in [command, query, watch] {
          let failure = Self.failure(await host.handle(request))
          #expect(failure?.error == .unknownService(service, group: group), "\(request)")
          #expect(failure?.description == "group \(group) carries no service '\(service)'", "\(request)")
        }
      }
      // A client asked for a service no group carries says so, rather than blaming one group.
      let client = members.client()
      let error = await #expect(throws: QuorumClientError.self) {
        _ = try await client.group(for: "k", service: "queue")
      }
      #expect(error == .rejected(.serviceNotCarried("queue", known: ["kv", "locks"])))
      #expect(error?.description == "refused: no group of the cluster carries service 'queue' (carried: kv, locks)")
      let typed = HostError.serviceNotCarried("queue", known: ["kv", "locks"])
      #expect(try HostError(wireBytes: typed.wireBytes()) == typed)
    }
  }

  @Test("a key sent to a group that does not own it is answered wrongGroup, naming the owner")
  func wrongGroup() async throws {
    try await Self.cluster().withLocalMembers { members in
      let host = try #require(members.hosts[1])
      let key = try Self.key(ownedBy: 2, in: members.map)
      #expect(members.map.owner(of: key, service: "kv") == 2)
      let put = HostRequest.command(
        group: 1, ServiceCommand(service: "kv", payload: KVCommand.put(key: key, value: [1]).wireBytes()),
        request: nil, acknowledgedThrough: 0)
      let get = HostRequest.query(
        group: 3, service: "kv", payload: KVQuery.get(key: key).wireBytes(), consistency: .stale, atLeast: 0)
      for request in [put, get] {
        let failure = Self.failure(await host.handle(request))
        #expect(failure?.error == .wrongGroup(key: key, service: "kv", owner: 2), "\(request)")
        #expect(failure?.description == "kv key '\(key)' belongs to group g2", "\(request)")
      }
      // The same key through the client goes to its owner and is written there (the refusal above was about
      // routing, not about the key).
      _ = try await members.leader(of: 2, timeout: .seconds(60))
      var options = HostClientOptions()
      options.deadline = .seconds(60)
      let kv = members.kvClient(options: options)
      try await kv.put(key, "owned")
      #expect(try await kv.getString(key) == "owned")
      let stored = await members.hosts[1]?.group(2)?.localState().applied ?? 0
      #expect(stored > 0, "group 2 applied the write")
    }
  }

  @Test("a request at a member that does not replicate the group is answered notHosted, naming its members")
  func notHosted() async throws {
    try await Self.cluster().withLocalMembers { members in
      let host = try #require(members.hosts[3])
      #expect(host.group(3) == nil)
      let failure = Self.failure(await host.handle(.registerSession(group: 3)))
      #expect(failure?.error == .notHosted(3, members: [1, 2]))
      #expect(failure?.description == "this member does not replicate g3 (its members: n1, n2)")
    }
  }

  @Test("a payload that is not the service's command is answered malformed, saying which service")
  func malformedPayload() async throws {
    try await Self.cluster().withLocalMembers { members in
      let host = try #require(members.hosts[1])
      let reply = await host.handle(
        .command(group: 1, ServiceCommand(service: "kv", payload: [0xFF]), request: nil, acknowledgedThrough: 0))
      let failure = Self.failure(reply)
      guard case .malformed(let why)? = failure?.error else {
        Issue.record("expected malformed, got \(String(describing: failure))")
        return
      }
      #expect(why.hasPrefix("kv payload: "), "\(why)")
      // Bytes that are no request at all.
      let garbage = try HostReply(wireBytes: await host.handle(bytes: [0xEE, 1, 2]))
      guard case .failure(let undecodable) = garbage, case .malformed = undecodable.error else {
        Issue.record("expected malformed, got \(garbage)")
        return
      }
    }
  }

  @Test("a group assigned to a member the cluster does not have is refused, naming the Group line and member")
  func groupWithUnknownMember() throws {
    let error = #expect(throws: ClusterConfigurationError.self) {
      _ = try Cluster(id: "x") {
        Member("n1")
        Member("n2")
        Member("n3")
        Group("accounts") { KeyValue() }
        Group("audit", engine: .multiPaxos, members: ["n1", "n2", "n9"]) { KeyValue() }
      }
    }
    #expect(error?.setting == "Group(\"audit\")")
    #expect(error?.reason == "member n9 is not a member of the cluster")

    // The map itself, as a host validates it.
    let map = ClusterMap(
      cluster: "x", members: [1: "", 2: ""],
      groups: [GroupSpec(id: 1, name: "audit", members: [1, 9], services: ["kv"])])
    #expect(throws: ClusterMapError("group audit", "member n9 is not a member of the cluster", field: "members")) {
      try map.validate(knownServices: ["kv"])
    }
    #expect(throws: ClusterMapError.self) {
      _ = try GroupHost(
        node: 1, map: map, settings: HostSettings(), storage: MemoryGroupStorage(), logger: .disabled)
    }
  }

  @Test(
    "other bad group lines name the Group and what is wrong",
    arguments: [
      ("member", "Group(\"g\")", "member n9 is not a member of the cluster"),
      ("service", "Group(\"g\")", "a service is listed twice"),
      ("slots", "Group(\"b\")", "slot 100 of service kv is also owned by group g1"),
      ("gap", "service kv", "slot 0 is owned by no group"),
      ("name", "Group(\"a/b\")", "names use letters, digits"),
    ])
  func badGroupLines(_ kind: String, _ setting: String, _ reason: String) {
    let error = #expect(throws: ClusterConfigurationError.self) {
      _ = try Cluster(id: "x") {
        Member("n1")
        switch kind {
        case "member":
          Group("g", members: ["n9"]) { KeyValue() }
        case "service":
          Group("g") {
            KeyValue()
            KeyValue()
          }
        case "slots":
          Group("a", slots: [0...2047]) { KeyValue() }
          Group("b", slots: [100...4095]) { KeyValue() }
        case "gap":
          Group("a", slots: [1...2047]) { KeyValue() }
          Group("b", slots: [2048...4095]) { KeyValue() }
        default:
          Group("a/b") { KeyValue() }
        }
      }
    }
    #expect(error?.setting == setting, "\(String(describing: error))")
    #expect(error?.reason.contains(reason) == true, "\(String(describing: error))")
  }
}
