import Quorum
import Synchronization
import Testing

/// The application developer's API, as the README and "Building an application with Quorum" use it.
@Suite("The application developer's API", .timeLimit(.minutes(2)))
struct ApplicationAPITests {
  /// An in-process cluster with settings that keep elections rare on a busy machine.
  static func localCluster(
    _ id: ClusterID, logging sink: any LogSink = NullLogSink(),
    @ClusterBuilder extra: () -> [any ClusterSetting] = { [] }
  ) throws -> Cluster {
    let more = extra()
    return try Cluster(id: id) {
      Member("n1")
      Member("n2")
      Member(3)
      Logging(sink)
      RaftSettings {
        TickInterval(.milliseconds(5))
        ElectionTimeout(Duration.milliseconds(300)...Duration.milliseconds(600))
        HeartbeatInterval(.milliseconds(30))
      }
      PaxosSettings {
        TickInterval(.milliseconds(5))
        ElectionTimeout(Duration.milliseconds(300)...Duration.milliseconds(600))
        HeartbeatInterval(.milliseconds(30))
      }
      for setting in more { setting }
    }
  }

  static var patient: HostClientOptions {
    var options = HostClientOptions()
    options.deadline = .seconds(60)
    return options
  }

  @Test("node ids are written as integer or string literals, and both name the same nodes")
  func nodeIDLiterals() async throws {
    let two: NodeID = 2
    #expect(two == "n2" && two == "2")
    #expect(["n1", 2, "3"] as [NodeID] == [1, 2, 3])
    let raft = try RaftConfiguration { Members("n1", "n2", "n3") }
    #expect(raft.members == (try RaftConfiguration { Members(1, 2, 3) }).members)
    let paxos = try PaxosConfiguration { Members("n1", 2, "n3") }
    #expect(paxos.members == [1, 2, 3])
    let cluster = try Cluster(id: "literals") {
      Member("n1")
      Member(2)
      Member("3")
      Group("strings", members: ["n1", "n2"]) { KeyValue() }
      Group("integers", members: [2, 3]) { Locks() }
    }
    #expect(cluster.members.map(\.id) == [1, 2, 3])
    #expect(cluster.groups.map(\.members) == [[1, 2], [2, 3]])
    // `start` takes a node id as a string literal (it refuses here: the members have no addresses).
    let error = await #expect(throws: ClusterConfigurationError.self) { _ = try await cluster.start("n1") }
    #expect(error?.setting == "start(n1)", "\(String(describing: error))")
    let stranger = await #expect(throws: ClusterConfigurationError.self) { _ = try await cluster.start("n9") }
    #expect(stranger?.reason == "n9 is not a member", "\(String(describing: stranger))")
  }

  @Test("values are bytes, strings or the application's own type on every key-value operation, both ways")
  func valuesBothWays() async throws {
    try await Self.localCluster("values").withLocalMembers { members in
      let kv = members.kvClient(options: Self.patient)
      // Strings in, strings out.
      #expect(try await kv.put("name", "ada") == nil)
      #expect(try await kv.put("name", "grace") == "ada")
      #expect(try await kv.get("name", as: String.self) == "grace")
      #expect(try await kv.getString("name") == "grace")
      let swapped = try await kv.compareAndSwap("name", expected: "grace", new: "hedy")
      #expect(swapped.swapped && swapped.current == "hedy")
      let refused = try await kv.compareAndSwap("name", expected: "grace", new: "ada")
      #expect(!refused.swapped && refused.current == "hedy")
      #expect(try await kv.delete("name", as: String.self) == "hedy")
      #expect(try await kv.get("name", as: String.self) == nil)
      // Bytes in, bytes out; a string's bytes read as bytes.
      #expect(try await kv.put("raw", [0, 255]) == nil)
      #expect(try await kv.get("raw") == [0, 255])
      let created = try await kv.compareAndSwap("fresh", expected: nil, new: nil)
      #expect(created.swapped && created.current == nil)
      try await kv.put("text", "hello")
      #expect(try await kv.get("text") == Array("hello".utf8))
      #expect(try await kv.delete("raw") == [0, 255])
      // A type of the application's own.
      #expect(try await kv.put("point", Point(x: 3, y: 4)) == nil)
      #expect(try await kv.get("point", as: Point.self) == Point(x: 3, y: 4))
      let moved = try await kv.compareAndSwap("point", expected: Point(x: 3, y: 4), new: Point(x: 5, y: 6))
      #expect(moved.swapped && moved.current == Point(x: 5, y: 6))
      #expect(try await kv.scan(prefix: "point").first?.value(as: Point.self) == Point(x: 5, y: 6))
      // A stored value that is not a Point: the read says so; a write that replaced it says it was applied.
      let unreadable = await #expect(throws: KVValueError.self) { _ = try await kv.get("text", as: Point.self) }
      #expect(unreadable?.key == "text" && unreadable?.writeApplied == false, "\(String(describing: unreadable))")
      let applied = await #expect(throws: KVValueError.self) { try await kv.put("text", Point(x: 1, y: 1)) }
      #expect(applied?.writeApplied == true, "\(String(describing: applied))")
      #expect(try await kv.get("text", as: Point.self) == Point(x: 1, y: 1))
    }
  }

  @Test("the in-process KVClient takes and gives back the same value types")
  func kvClientValues() async throws {
    try await withOneRaftNode(KVStore()) { node in
      let kv = KVClient(members: [1: node], retry: RetryPolicy(maxAttempts: 2_000))
      #expect(try await kv.put("name", "ada") == nil)
      #expect(try await kv.put("name", "grace") == "ada")
      #expect(try await kv.get("name", as: String.self) == "grace")
      let swapped = try await kv.compareAndSwap("name", expected: "grace", new: "hedy")
      #expect(swapped.swapped && swapped.current == "hedy")
      #expect(try await kv.compareAndSwap("name", expected: "grace", new: "x").current == "hedy")
      #expect(try await kv.delete("name", as: String.self) == "hedy")
      #expect(try await kv.put("raw", [7]) == nil)
      #expect(try await kv.get("raw") == [7])
      #expect(try await kv.compareAndSwap("raw", expected: [7], new: nil).swapped)
      #expect(try await kv.put("point", Point(x: 1, y: 2)) == nil)
      #expect(try await kv.get("point", as: Point.self) == Point(x: 1, y: 2))
    }
  }

  @Test("TCPClient and TCPKVClient take and give back strings, bytes and the application's own values")
  func tcpValues() async throws {
    let cluster = try Cluster(id: "tcp-values") {
      Member("n1", at: "127.0.0.1:0")
      Member("n2", at: "127.0.0.1:0")
      Member("n3", at: "127.0.0.1:0")
      Security.insecure
      Logging(NullLogSink())
      RaftSettings {
        TickInterval(.milliseconds(5))
        ElectionTimeout(Duration.milliseconds(300)...Duration.milliseconds(600))
        HeartbeatInterval(.milliseconds(30))
      }
    }
    try await cluster.withLocalMembers { members in
      let addresses = members.addresses.keys.sorted().compactMap { members.addresses[$0] }
      let client = TCPKVClient(cluster: "tcp-values", members: addresses, options: Self.patient)
      #expect(try await client.put("name", "ada") == nil)
      #expect(try await client.put("name", "grace") == "ada")
      #expect(try await client.get("name", as: String.self) == "grace")
      let swapped = try await client.compareAndSwap("name", expected: "grace", new: "hedy")
      #expect(swapped.swapped && swapped.current == "hedy")
      #expect(try await client.delete("name", as: String.self) == "hedy")
      #expect(try await client.put("point", Point(x: 1, y: 2)) == nil)
      #expect(try await client.get("point", as: Point.self) == Point(x: 1, y: 2))
      #expect(try await client.get("point") == [1, 2])
      #expect(try await client.kv.getString("point") == "\u{1}\u{2}")
      await client.close()
    }
  }

  @Test("LocalMembers: wait for a leader, reach each member's groups, and watch leader changes as every subscriber")
  func localMembersAndEvents() async throws {
    let (first, second, before) = try await Self.localCluster("events").withLocalMembers { members in
      let before = try await members.leader(timeout: .seconds(60))
      #expect(members.hosts.keys.sorted() == ["n1", "n2", "n3"])
      let watcher = try #require(members.hosts.keys.sorted().first { $0 != before })
      let replica = try #require(members.hosts[watcher]?.group(.default))
      let first = replica.events
      let second = replica.events
      let target = try #require(members.hosts.keys.sorted().first { $0 != before && $0 != watcher })
      let client = members.client(options: Self.patient)
      // Move leadership away (a transfer may be overtaken by an election on a busy machine: try again).
      _ = try await awaitValue("leadership to move from \(before)") { () -> NodeID? in
        try? await client.transferLeadership(of: .default, to: target, deadline: .seconds(5))
        let now = try await members.leader(timeout: .seconds(60))
        return now == before ? nil : now
      }
      return (first, second, before)
    }
    // The members stopped when the body returned: both streams end, with the same events.
    var seen: [[GroupEvent]] = [[], []]
    for await event in first { seen[0].append(event) }
    for await event in second { seen[1].append(event) }
    #expect(seen[0] == seen[1])
    #expect(seen[0].last == .stopped, "\(seen[0])")
    #expect(
      seen[0].contains { if case .leaderChanged(let leader?, _) = $0 { leader != before } else { false } },
      "\(seen[0])")
  }

  @Test("a call fails by its deadline with a typed timeout, saying whether a write's outcome is unknown")
  func deadlines() async throws {
    try await Self.localCluster("deadline").withLocalMembers { members in
      let kv = members.kvClient(options: Self.patient)
      try await kv.put("k", "v")
      // Two of three replicas stopped (the call returns once each has): no quorum.
      let leader = try await members.leader(timeout: .seconds(60))
      for id in members.hosts.keys where id != leader { await members.hosts[id]?.group(.default)?.shutdown() }
      let write = await #expect(throws: QuorumClientError.self) {
        try await kv.put("k", "w", deadline: .milliseconds(300))
      }
      guard case .timeout(outcomeUnknown: true, _)? = write else {
        Issue.record("expected a timeout with an unknown outcome, got \(String(describing: write))")
        return
      }
      let read = await #expect(throws: QuorumClientError.self) {
        _ = try await kv.get("k", deadline: .milliseconds(300))
      }
      guard case .timeout(outcomeUnknown: false, _)? = read else {
        Issue.record("expected a read timeout, got \(String(describing: read))")
        return
      }
    }
  }

  @Test("members started through Cluster log to the Logging sink")
  func loggingSink() async throws {
    let sink = CapturingSink()
    try await Self.localCluster("logs", logging: sink).withLocalMembers { members in
      _ = try await members.leader(timeout: .seconds(60))
    }
    let records = sink.records
    let serving = records.filter { $0.message.hasPrefix("serving") }.compactMap { $0.metadata["node"] }
    #expect(Set(serving) == ["n1", "n2", "n3"], "\(records.map(\.message))")
    #expect(records.filter { $0.message == "started" }.count >= 3, "\(records.map(\.message))")
  }

  @Test("an in-process cluster runs Multi-Paxos and Raft groups described in the DSL")
  func enginesInProcess() async throws {
    let cluster = try Self.localCluster("engines") {
      Group("paxos", engine: .multiPaxos) { KeyValue() }
      Group("raft", engine: .raft) { KeyValue() }
    }
    try await cluster.withLocalMembers { members in
      let kv = members.kvClient(options: Self.patient)
      for n in 0..<16 { try await kv.put("key\(n)", "value\(n)") }
      for n in 0..<16 { #expect(try await kv.get("key\(n)", as: String.self) == "value\(n)") }
      let statuses = try await members.client(options: Self.patient).statuses()
      let used = Set(statuses.filter { $0.appliedIndex > 1 }.map(\.engine))
      #expect(used == [.raft, .multiPaxos], "\(statuses)")
    }
  }
}

/// A value type of the application's own, stored as two bytes.
struct Point: KVValue, Equatable {
  var x: UInt8
  var y: UInt8

  init(x: UInt8, y: UInt8) {
    self.x = x
    self.y = y
  }

  struct NotAPoint: Error {}

  func kvBytes() -> [UInt8] { [x, y] }
  init(kvBytes: [UInt8]) throws {
    guard kvBytes.count == 2 else { throw NotAPoint() }
    (x, y) = (kvBytes[0], kvBytes[1])
  }
}

/// Keeps every record.
final class CapturingSink: LogSink {
  private let stored = Mutex<[LogRecord]>([])
  var minimumLevel: LogLevel { .info }
  func write(_ record: LogRecord) { stored.withLock { $0.append(record) } }
  var records: [LogRecord] { stored.withLock { $0 } }
}
