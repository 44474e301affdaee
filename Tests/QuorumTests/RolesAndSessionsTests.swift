import Foundation
import Quorum
import Synchronization
import Testing

@Suite("Roles and session ownership over authenticated TCP", .timeLimit(.minutes(3)))
struct RolesAndSessionsTests {
  @Test(
    "a read-role client reads and asks for status, but cannot write, open sessions or change membership",
    arguments: [true, false])
  func readRoleIsEnforced(groupsOnNetworkThread: Bool) async throws {
    let secrets = try TestSecrets(principals: [("admin", "admin"), ("reader", "read"), ("writer", "write")])
    defer { secrets.remove() }
    // The members run their groups on their network threads (the default) or on the shared pool.
    var tcp = TCPTransportOptions()
    tcp.groupsOnNetworkThread = groupsOnNetworkThread
    let id = ClusterID(rawValue: "roles-\(groupsOnNetworkThread ? "loop" : "pool")")
    let cluster = try fastCluster(
      id, security: Security(clusterSecretFile: secrets.secretFile, credentialsFile: secrets.credentialsFile),
      tcp: tcp)
    let running = try await RunningCluster.start(cluster)
    let leader = try await running.leader()
    let members = Array(running.addresses.values)
    func client(_ name: String) throws -> TCPKVClient {
      var options = HostClientOptions()
      options.deadline = .seconds(60)
      // One attempt may take seconds while the whole suite runs on 2 cores; a membership change that timed out
      // ends outcomeUnknown (it is never retried), where the test expects the member's refusal.
      options.attemptTimeout = .seconds(30)
      return TCPKVClient(cluster: id, members: members, options: options, credential: try secrets.credential(name))
    }
    let admin = try client("admin")
    let reader = try client("reader")
    let writer = try client("writer")
    try await admin.put("k", "v")

    // Reads and status are allowed to every role.
    #expect(try await reader.get("k") == Array("v".utf8))
    #expect(try await reader.get("k", consistency: .stale, at: leader) == Array("v".utf8))
    #expect(try await !reader.status(of: leader).isEmpty)
    #expect(try await reader.scan(prefix: "").map(\.key) == ["k"])
    // Writes (which start by opening a session), deletes and membership changes are not.
    await expectForbidden(.read, needs: .write) { _ = try await reader.put("k", "overwritten") }
    await expectForbidden(.read, needs: .write) { _ = try await reader.delete("k") }
    await expectForbidden(.read, needs: .admin) { try await reader.changeMembership(.addLearner(NodeID(9))) }
    await expectForbidden(.read, needs: .admin) {
      try await reader.client.host.transferLeadership(of: .default, to: leader)
    }
    // A writer writes, but changes neither the membership nor the leader.
    try await writer.put("w", "ok")
    await expectForbidden(.write, needs: .admin) { try await writer.changeMembership(.remove(leader)) }
    await expectForbidden(.write, needs: .admin) {
      try await writer.client.host.transferLeadership(of: .default, to: leader)
    }
    #expect(try await admin.get("k") == Array("v".utf8))
    #expect(try await admin.get("w") == Array("ok".utf8))
    #expect(await running.status(leader)?.voters.count == 3)
    for client in [admin, reader, writer] { await client.close() }
    await running.stop()
  }

  @Test("a client that forges another principal's next request is refused, and the real request is applied")
  func forgedSessionRequestIsRefused() async throws {
    let secrets = try TestSecrets(principals: [("alice", "write"), ("mallory", "write")])
    defer { secrets.remove() }
    let cluster = try fastCluster(
      "owned", security: Security(clusterSecretFile: secrets.secretFile, credentialsFile: secrets.credentialsFile))
    let running = try await RunningCluster.start(cluster)
    let leader = try await running.leader()
    let alice = TCPRequestClient(cluster: "owned", credential: try secrets.credential("alice"), logger: .disabled)
    let mallory = TCPRequestClient(cluster: "owned", credential: try secrets.credential("mallory"), logger: .disabled)
    let at = try #require(running.addresses[leader])

    guard case .session(let session) = try await ask(alice, at, .registerSession(group: .default)) else {
      Issue.record("Alice got no session")
      return
    }
    func put(_ value: String) -> HostRequest {
      .command(
        group: .default,
        ServiceCommand(service: "kv", payload: KVCommand.put(key: "balance", value: Array(value.utf8)).wireBytes()),
        request: RequestID(session: session, sequence: 1), acknowledgedThrough: 0)
    }
    // Mallory guesses Alice's session (a log index) and her next request number.
    let forged = try await ask(mallory, at, put("0"))
    #expect(forged == .failure(HostFailure(.consensus(.sessionNotOwned(session)))), "\(forged)")
    // Alice's real request with that number is applied, not answered as a duplicate of Mallory's.
    guard case .answer = try await ask(alice, at, put("100")) else {
      Issue.record("Alice's write failed")
      return
    }
    let read = HostRequest.query(
      group: .default, service: "kv", payload: KVQuery.get(key: "balance").wireBytes(), consistency: .linearizable,
      atLeast: 0)
    guard case .answer(let bytes, _) = try await ask(mallory, at, read) else {
      Issue.record("the read failed")
      return
    }
    #expect(try KVQueryResult(wireBytes: bytes) == .value(Array("100".utf8)))
    await alice.close()
    await mallory.close()
    await running.stop()
  }

  /// Sends `request` to `address` and decodes the reply, following redirects to a new leader (an election on a
  /// loaded machine) for a while.
  private func ask(_ client: TCPRequestClient, _ address: TCPAddress, _ request: HostRequest) async throws
    -> HostReply
  {
    var target = address
    for _ in 0..<100 {
      let reply = try HostReply(
        wireBytes: try await client.request(request.wireBytes(), to: target, timeout: .seconds(30)))
      guard case .failure(let failure) = reply, case .consensus(.notLeader) = failure.error else { return reply }
      if let hint = failure.leaderAddress.flatMap(TCPAddress.init) { target = hint }
      try await Task.sleep(for: .milliseconds(20))
    }
    throw TimedOut(description: "no leader answered \(request)")
  }
}

/// Runs `body` and expects it to be refused for the client's role.
func expectForbidden(
  _ role: ClientRole, needs needed: ClientRole, sourceLocation: SourceLocation = #_sourceLocation,
  _ body: () async throws -> Void
) async {
  do {
    try await body()
    Issue.record("a \(role) client was allowed what needs \(needed)", sourceLocation: sourceLocation)
  } catch let error as QuorumClientError {
    #expect(error == .rejected(.forbidden(role: role, needed: needed)), sourceLocation: sourceLocation)
  } catch {
    Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
  }
}

/// Keeps every record.
final class RecordingSink: LogSink {
  private let records = Mutex<[LogRecord]>([])
  var minimumLevel: LogLevel { .debug }
  func write(_ record: LogRecord) { records.withLock { $0.append(record) } }
  var all: [LogRecord] { records.withLock { $0 } }
}

@Suite("Refused requests in the log")
struct RefusalLogTests {
  @Test("a refused request is logged with the client's bytes escaped and bounded")
  func refusalIsLoggedSafely() async throws {
    let sink = RecordingSink()
    let cluster = try Cluster(id: "log") { Member("n1") }
    let hostile = "kv\n\u{1b}[2Jerror quorum: FORGED" + String(repeating: "s", count: 5000)
    try await withSingleMember(
      cluster, settings: cluster.hostSettings, logger: QuorumLogger(label: "quorum", sink: sink)
    ) { host, _ in
      let request = HostRequest.command(
        group: .default, ServiceCommand(service: hostile, payload: [1, 2]), request: nil, acknowledgedThrough: 0)
      let reply = await host.handle(request, principal: "reader", role: .read)
      #expect(reply == .failure(HostFailure(.forbidden(role: .read, needed: .write))))
    }
    let record = try #require(sink.all.first { $0.message.contains("refused a request") })
    let logged = record.message + record.metadata.values.joined()
    #expect(!logged.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }, "\(logged)")
    #expect(record.metadata["request"]?.contains("kv\\u{a}\\u{1b}[2Jerror quorum: FORGED") == true)
    #expect(logged.count < 600, "\(logged.count) characters")
  }
}
