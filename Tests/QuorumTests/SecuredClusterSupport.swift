import Foundation
import Quorum
import Testing

/// A temporary directory with a cluster secret and a credentials file (by default principals `admin` and
/// `reader`), each private to its owner, and the principals' own secret files.
struct TestSecrets {
  let directory: String
  var secretFile: String { "\(directory)/secret" }
  var credentialsFile: String { "\(directory)/credentials" }

  init(principals: [(name: String, role: String)] = [("admin", "admin"), ("reader", "read")]) throws {
    directory =
      FileManager.default.temporaryDirectory.appendingPathComponent("quorum-secrets-\(UUID().uuidString)")
      .path
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    try Self.write("\(directory)/secret", Data(try SecureRandom.bytes(count: 32)))
    var lines = ""
    for (name, role) in principals {
      let hex = try SecureRandom.bytes(count: 32).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
      try Self.write("\(directory)/\(name).key", Data(hex.utf8))
      lines += "\(name) \(role) \(hex)\n"
    }
    try Self.write("\(directory)/credentials", Data(lines.utf8))
  }

  /// The credential of principal `name`.
  func credential(_ name: String) throws -> TCPClientCredential {
    try TCPClientCredential(name: name, secretFile: "\(directory)/\(name).key")
  }

  static func write(_ path: String, _ data: Data, mode: Int = 0o600) throws {
    guard FileManager.default.createFile(atPath: path, contents: data, attributes: [.posixPermissions: mode]) else {
      throw TimedOut(description: "cannot write \(path)")
    }
  }

  func remove() { try? FileManager.default.removeItem(atPath: directory) }
}

/// The members of a TCP cluster running in this process, each on its own transport, so a test can give each
/// member its own address book (through proxies, say).
final class RunningCluster: Sendable {
  let servers: [NodeID: ClusterMemberServer]
  let addresses: [NodeID: TCPAddress]
  private let runs: Task<Void, Never>

  private init(servers: [NodeID: ClusterMemberServer], addresses: [NodeID: TCPAddress], runs: Task<Void, Never>) {
    self.servers = servers
    self.addresses = addresses
    self.runs = runs
  }

  /// Starts every member of `cluster` (members listen on port 0); the address books are left to the caller
  /// (`wire`), which gets each member's real address.
  static func start(
    _ cluster: Cluster,
    wire: ([NodeID: ClusterMemberServer], [NodeID: TCPAddress]) throws -> Void = { servers, addresses in
      for server in servers.values {
        for (id, address) in addresses { server.transport.setAddress(address, for: id) }
      }
    }
  ) async throws -> RunningCluster {
    var servers: [NodeID: ClusterMemberServer] = [:]
    for member in cluster.members { servers[member.id] = try await cluster.start(member.id) }
    let all = servers
    let runs = Task {
      await withTaskGroup(of: Void.self) { group in
        for server in all.values { group.addTask { try? await server.run() } }
      }
    }
    var addresses: [NodeID: TCPAddress] = [:]
    for (id, server) in servers { addresses[id] = try await server.waitUntilListening() }
    try wire(servers, addresses)
    return RunningCluster(servers: servers, addresses: addresses, runs: runs)
  }

  /// `member`'s view of the default group.
  func status(_ member: NodeID) async -> GroupStatus? {
    await servers[member]?.host.group(.default)?.status()
  }

  /// Waits for a leader that has committed in its term, and returns its id.
  func leader(timeout: Duration = .seconds(60)) async throws -> NodeID {
    var found: NodeID?
    try await pollUntil("a leader", within: timeout) {
      for id in servers.keys.sorted() {
        if let status = await status(id), status.isLeader, status.commitIndex >= status.lastIndex,
          status.commitIndex > 0
        {
          found = id
          return true
        }
      }
      return false
    }
    guard let found else { throw TimedOut(description: "no leader") }
    return found
  }

  func stop() async {
    for server in servers.values { await server.shutdown() }
    await runs.value
  }
}

/// A 3-member TCP cluster description on loopback port 0 with fast timers.
func fastCluster(
  _ id: ClusterID, security: Security, heartbeat: Duration = .milliseconds(50), sink: any LogSink = NullLogSink(),
  tcp: TCPTransportOptions? = nil
) throws -> Cluster {
  try Cluster(id: id) {
    Member("n1", at: "127.0.0.1:0")
    Member("n2", at: "127.0.0.1:0")
    Member("n3", at: "127.0.0.1:0")
    security
    if let tcp { TCPSettings(tcp) }
    Logging(sink)
    RaftSettings {
      TickInterval(.milliseconds(10))
      ElectionTimeout(Duration.milliseconds(200)...Duration.milliseconds(400))
      HeartbeatInterval(heartbeat)
    }
  }
}

/// Polls `condition` every few milliseconds until it holds, failing after `timeout` (a bound on failure only: a
/// loaded machine makes the wait longer, never the test red).
func pollUntil(
  _ what: @autoclosure () -> String, within timeout: Duration = .seconds(60), _ condition: () async throws -> Bool
) async throws {
  let deadline = ContinuousClock.now.advanced(by: timeout)
  while try await !condition() {
    guard ContinuousClock.now < deadline else {
      throw TimedOut(description: "gave up after \(timeout) waiting for \(what())")
    }
    try await Task.sleep(for: .milliseconds(5))
  }
}
