import Foundation
import Glibc
import Quorum
import Testing

@Suite("An authenticated cluster", .timeLimit(.minutes(3)))
struct ClusterSecurityTests {
  @Test("a TCP member without a Security line, or with an empty path, refuses to start and says what to add")
  func securityMustBeExplicit() async throws {
    let cluster = try Cluster(id: "open") {
      Member("n1", at: "127.0.0.1:0")
      Logging(NullLogSink())
    }
    do {
      _ = try await cluster.start(1)
      Issue.record("a member started without saying how it authenticates")
    } catch let error as ClusterConfigurationError {
      #expect(error.setting == "Security")
      #expect(error.reason.contains("Security.insecure"), "\(error)")
    }
    #expect(throws: ClusterConfigurationError.self) {
      _ = try Cluster(id: "x") {
        Member("n1")
        Security(clusterSecretFile: "")
      }
    }
  }

  @Test("a secret file that group or others may read refuses to start, naming the file and its mode")
  func permissiveSecret() async throws {
    let secrets = try TestSecrets()
    defer { secrets.remove() }
    let open = "\(secrets.directory)/open-secret"
    try TestSecrets.write(open, Data(repeating: 1, count: 32), mode: 0o644)
    let cluster = try Cluster(id: "perm") {
      Member("n1", at: "127.0.0.1:0")
      Security(clusterSecretFile: open, credentialsFile: secrets.credentialsFile)
      Logging(NullLogSink())
    }
    do {
      _ = try await cluster.start(1)
      Issue.record("a member started with a secret file others can read")
    } catch let error as ClusterConfigurationError {
      #expect(error.reason.contains(open) && error.reason.contains("mode 0644"), "\(error)")
      #expect(error.setting.hasPrefix("Security(clusterSecretFile:"), "\(error)")
    }
  }

  @Test("under attack — a stranger member, a wrong credential, a socket flood, a 4 GiB prefix — the cluster commits")
  func keepsCommittingUnderAttack() async throws {
    let secrets = try TestSecrets()
    defer { secrets.remove() }
    // The members' own links must survive the attack. Their liveness timeout is seconds, not the 500 ms a 50 ms
    // heartbeat gives: on a loaded machine running every suite, an event loop can be held that long by the
    // scheduler alone, and this check is about what the attack does.
    var tcp = TCPTransportOptions()
    tcp.liveness = LinkLiveness(pingInterval: .milliseconds(50), timeout: .seconds(5))
    let cluster = try fastCluster(
      "guarded", security: Security(clusterSecretFile: secrets.secretFile, credentialsFile: secrets.credentialsFile),
      tcp: tcp)
    let running = try await RunningCluster.start(cluster)
    let leader = try await running.leader()
    let target = try #require(running.addresses[leader])
    var patient = HostClientOptions()
    patient.deadline = .seconds(60)  // long enough to ride out an election on a machine running every suite
    let admin = TCPKVClient(
      cluster: "guarded", members: Array(running.addresses.values), options: patient,
      credential: try secrets.credential("admin"))
    try await admin.put("before", "ok")
    let leaderTransport = try #require(running.servers[leader]?.transport)

    // A stranger with another secret, claiming to be another member.
    let impostorID = try #require(running.servers.keys.first { $0 != leader })
    let stranger = TCPTransport<Numbered>(
      cluster: "guarded", protocolNumber: WireProtocol.host, addresses: [leader: target],
      security: .authenticated(clusterSecret: try TCPSecret(bytes: Array(100..<132))), logger: .disabled)
    let impostor = try await stranger.bind(impostorID)
    try impostor.send(Numbered(1), to: leader)
    // Each refusal is awaited before the next attack: a handshake still in progress when the flood below comes
    // is the oldest unauthenticated connection, and the flood evicts it before its proof is checked.
    try await pollUntil("the leader to refuse the stranger") {
      leaderTransport.metrics.closes("authentication-failed") >= 1
    }
    // A client with a wrong secret for a real principal.
    let wrongFile = "\(secrets.directory)/wrong.key"
    try TestSecrets.write(wrongFile, Data(repeating: 7, count: 32))
    var once = HostClientOptions()
    once.deadline = .seconds(2)
    let forger = TCPKVClient(
      cluster: "guarded", members: [target], options: once,
      credential: try TCPClientCredential(name: "admin", secretFile: wrongFile))
    await #expect(throws: QuorumClientError.self) { try await forger.put("forged", "no") }
    try await pollUntil("the leader to refuse the forged credential") {
      leaderTransport.metrics.closes("authentication-failed") >= 2
    }
    // 500 silent sockets from 50 addresses, and a 4 GiB length prefix.
    var sockets: [Int32] = []
    defer { for fd in sockets { close(fd) } }
    for index in 0..<500 { sockets.append(try rawConnect(to: target, from: "127.0.0.\(10 + index / 10)")) }
    let giant = try rawConnect(to: target, from: "127.0.0.9")
    sockets.append(giant)
    var prefix: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF]
    _ = send(giant, &prefix, 4, Int32(MSG_NOSIGNAL))
    try await pollUntil("the leader to refuse the giant frame") {
      leaderTransport.metrics.closes("frame-too-large") >= 1
    }

    // The cluster still commits, on every member, and its own links never dropped.
    let before = try #require(await running.status(leader)?.commitIndex)
    for n in 0..<20 { try await admin.put("after-\(n)", "ok") }
    #expect(try await admin.get("after-19") == Array("ok".utf8))
    for id in running.servers.keys {
      try await pollUntil("\(id) to apply the writes made under attack") {
        (await running.status(id)?.appliedIndex ?? 0) >= before + 20
      }
      #expect(running.servers[id]?.transport.metrics.closes("link-stalled") == 0)
    }
    #expect(try await admin.get("forged") == nil)
    await forger.close()
    await admin.close()
    await impostor.close()
    await running.stop()
  }
}

extension ClusterSecurityTests {
  @Test(
    "a client the cluster turns away (no credential, a wrong secret, another cluster) fails with .refused, not at its deadline"
  )
  func refusedClientsFailAtOnce() async throws {
    let secrets = try TestSecrets()
    defer { secrets.remove() }
    let cluster = try fastCluster(
      "guarded", security: Security(clusterSecretFile: secrets.secretFile, credentialsFile: secrets.credentialsFile))
    let running = try await RunningCluster.start(cluster)
    _ = try await running.leader()
    let members = Array(running.addresses.values)
    let wrongFile = "\(secrets.directory)/wrong.key"
    try TestSecrets.write(wrongFile, Data(repeating: 7, count: 32))
    // A deadline no run reaches: a client that retried until it would fail with .timeout instead.
    var patient = HostClientOptions()
    patient.deadline = .seconds(120)
    let clients = [
      ("no credential", TCPKVClient(cluster: "guarded", members: members, options: patient)),
      (
        "a wrong secret",
        TCPKVClient(
          cluster: "guarded", members: members, options: patient,
          credential: try TCPClientCredential(name: "admin", secretFile: wrongFile))
      ),
      (
        "another cluster",
        TCPKVClient(
          cluster: "elsewhere", members: members, options: patient, credential: try secrets.credential("admin"))
      ),
    ]
    for (what, client) in clients {
      do {
        try await client.put("k", "v")
        Issue.record("\(what): the write was accepted")
      } catch QuorumClientError.refused(let why) {
        #expect(why.contains("the seed at 127.0.0.1:"), "\(what): \(why)")
        #expect(why.contains("authentication failed") || why.contains("cluster id mismatch"), "\(what): \(why)")
      } catch {
        Issue.record("\(what): \(error)")
      }
      await client.close()
    }
    let admin = TCPKVClient(
      cluster: "guarded", members: members, options: patient, credential: try secrets.credential("admin"))
    try await admin.put("k", "v")
    #expect(try await admin.get("k") == Array("v".utf8))
    await admin.close()
    await running.stop()
  }
}

/// A non-blocking TCP connection to `address` from the loopback address `source` (the connect may still be in
/// progress when this returns).
func rawConnect(to address: TCPAddress, from source: String) throws -> Int32 {
  let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  guard fd >= 0 else { throw TimedOut(description: "socket: errno \(errno)") }
  _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
  var local = sockaddr_in()
  local.sin_family = sa_family_t(AF_INET)
  local.sin_addr.s_addr = inet_addr(source)
  var remote = sockaddr_in()
  remote.sin_family = sa_family_t(AF_INET)
  remote.sin_port = address.port.bigEndian
  remote.sin_addr.s_addr = inet_addr(address.host)
  let size = socklen_t(MemoryLayout<sockaddr_in>.size)
  let bound = withUnsafePointer(to: &local) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, size) }
  }
  guard bound == 0 else { throw TimedOut(description: "bind \(source): errno \(errno)") }
  let connected = withUnsafePointer(to: &remote) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, size) }
  }
  guard connected == 0 || errno == EINPROGRESS else { throw TimedOut(description: "connect: errno \(errno)") }
  return fd
}
