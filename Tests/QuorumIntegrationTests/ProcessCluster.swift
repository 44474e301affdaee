import Foundation
import Quorum
import Synchronization
import Testing

struct HarnessError: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}

/// The `quorum` executable built next to this test bundle.
func quorumExecutable() throws -> String {
  let bundle = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
  let candidate = URL(fileURLWithPath: bundle).deletingLastPathComponent().appendingPathComponent("quorum").path
  guard FileManager.default.isExecutableFile(atPath: candidate) else {
    throw HarnessError(
      "the quorum executable is missing at \(candidate); build it with `swift build --build-tests` "
        + "(or `swift build --product quorum`) before running the multi-process tests")
  }
  return candidate
}

/// Output of a child process, collected as it arrives.
final class OutputBuffer: Sendable {
  private let text = Mutex("")
  func append(_ data: Data) { text.withLock { $0 += String(decoding: data, as: UTF8.self) } }
  var value: String { text.withLock { $0 } }
}

/// One `quorum serve` child process.
final class ServeProcess: @unchecked Sendable {
  // Safety of @unchecked Sendable: `process` is configured before launch and afterwards only asked for
  // its pid and status (Foundation's Process is thread-safe for that); the buffers are Sendable.
  let id: NodeID
  let process = Process()
  let stdout = OutputBuffer()
  let stderrPath: String

  /// Starts `quorum` with `arguments`, through `launcher` if given (a shell that sets limits, say: the quorum
  /// executable and the arguments follow the launcher's own arguments).
  init(id: NodeID, arguments: [String], stderrPath: String, launcher: [String] = []) throws {
    self.id = id
    self.stderrPath = stderrPath
    if let first = launcher.first {
      process.executableURL = URL(fileURLWithPath: first)
      process.arguments = Array(launcher.dropFirst()) + [try quorumExecutable()] + arguments
    } else {
      process.executableURL = URL(fileURLWithPath: try quorumExecutable())
      process.arguments = arguments
    }
    // The member exits if this test process dies (a crash must not leave members running on the machine).
    var environment = ProcessInfo.processInfo.environment
    environment["QUORUM_EXIT_WITH_PARENT"] = "1"
    process.environment = environment
    let pipe = Pipe()
    process.standardOutput = pipe
    _ = FileManager.default.createFile(atPath: stderrPath, contents: nil)
    process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: stderrPath))
    let buffer = stdout
    pipe.fileHandleForReading.readabilityHandler = { handle in
      let data = handle.availableData
      if !data.isEmpty { buffer.append(data) }
    }
    try process.run()
  }

  var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

  /// Waits for the "listening on host:port" line and returns the address.
  func listeningAddress(timeout: Duration = .seconds(30)) async throws -> TCPAddress {
    let deadline = ContinuousClock.now.advanced(by: timeout)
    while ContinuousClock.now < deadline {
      let text = stdout.value
      if let range = text.range(of: "listening on ") {
        let rest = text[range.upperBound...]
        if let end = rest.firstIndex(of: " "), let address = TCPAddress(String(rest[..<end])) { return address }
      }
      if !process.isRunning {
        throw HarnessError("\(id) exited with status \(process.terminationStatus): \(stderr)")
      }
      try await Task.sleep(for: .milliseconds(10))
    }
    throw HarnessError("\(id) did not report its address within \(timeout); stderr:\n\(stderr)")
  }

  func kill(_ signal: Int32) {
    if process.isRunning { Foundation.kill(process.processIdentifier, signal) }
  }

  /// Waits for the process to exit, at most `timeout`; returns whether it did.
  func waitForExit(timeout: Duration) async -> Bool {
    let deadline = ContinuousClock.now.advanced(by: timeout)
    while process.isRunning && ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(10)) }
    return !process.isRunning
  }

  /// Waits until the process is dead, at most `timeout`; returns whether it is. Dead means reaped, or a zombie
  /// waiting to be: Foundation's notice of an exit can lag on a loaded machine, while a zombie already holds no
  /// port, file or lock. Unlike after ``waitForExit(timeout:)``, the exit status may not be readable yet.
  func waitUntilDead(timeout: Duration) async -> Bool {
    let deadline = ContinuousClock.now.advanced(by: timeout)
    while !isDead && ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(10)) }
    return isDead
  }

  /// Whether the process is reaped, or a zombie (Linux's `/proc/<pid>/stat` state `Z` or `X`).
  private var isDead: Bool {
    guard process.isRunning else { return true }
    guard let stat = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/stat", encoding: .utf8) else {
      return true  // Reaped between the two checks.
    }
    // The state follows the command's name, which is in parentheses and may hold spaces or parentheses itself.
    guard let close = stat.lastIndex(of: ")") else { return false }
    let state = stat[stat.index(after: close)...].first { $0 != " " }
    return state == "Z" || state == "X"
  }
}

/// One group of a ``ProcessCluster``'s cluster file (the `groups` array; none: the default group).
struct ProcessGroup: Sendable {
  var name: String
  var id: UInt64
  var engine: EngineKind
  var services: [String] = ["kv"]

  /// The group as a `GroupSpec` on `members`, for computing placement as the members do.
  func spec(members: [NodeID]) -> GroupSpec {
    GroupSpec(id: GroupID(rawValue: id), name: name, engine: engine, members: members, services: services)
  }
}

/// A cluster of `quorum serve` processes on loopback, with a temporary directory for data, logs, the cluster
/// file and the secrets: members authenticate with a cluster secret, and clients (``credential``, and the
/// client commands run by ``runCLI(_:)``) as the principal `admin`. Ports are chosen by the members (port 0)
/// and published through the cluster file, which every member re-reads.
final class ProcessCluster: @unchecked Sendable {
  // Safety of @unchecked Sendable: `members` and `addresses` are guarded by `lock`; the rest is immutable.
  let name: ClusterID
  let directory: String
  let size: Int
  /// The groups written into the cluster file, each on every member (empty: the default group).
  let groups: [ProcessGroup]
  private let lock = Mutex<(members: [NodeID: ServeProcess], addresses: [NodeID: TCPAddress], listed: Set<NodeID>)>(
    ([:], [:], []))

  var clusterFile: String { "\(directory)/cluster.json" }
  var secretFile: String { "\(directory)/secret" }
  var credentialsFile: String { "\(directory)/credentials" }
  var adminKeyFile: String { "\(directory)/admin.key" }
  /// The admin principal's credential.
  let credential: TCPClientCredential

  init(name: ClusterID, size: Int, groups: [ProcessGroup] = []) throws {
    self.name = name
    self.size = size
    self.groups = groups
    let directory =
      FileManager.default.temporaryDirectory
      .appendingPathComponent("quorum-it-\(name)-\(UUID().uuidString)").path
    self.directory = directory
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    let hex = try SecureRandom.bytes(count: 32).map { String($0, radix: 16) }.map { $0.count == 1 ? "0" + $0 : $0 }
      .joined()
    try writePrivateFile("\(directory)/secret", Data(try SecureRandom.bytes(count: 32)))
    try writePrivateFile("\(directory)/admin.key", Data(hex.utf8))
    try writePrivateFile("\(directory)/credentials", Data("admin admin \(hex)\n".utf8))
    credential = try TCPClientCredential(name: "admin", secretFile: "\(directory)/admin.key")
  }

  deinit {
    // A last resort if a test failed before stopping its members: never leave children running.
    for member in lock.withLock({ Array($0.members.values) }) { member.kill(SIGKILL) }
  }

  var ids: [NodeID] { (1...UInt64(size)).map { NodeID($0) } }
  var addresses: [NodeID: TCPAddress] { lock.withLock { $0.addresses } }
  func member(_ id: NodeID) -> ServeProcess? { lock.withLock { $0.members[id] } }

  private func writeClusterFile() throws {
    var members: [String: String] = [:]
    let (known, listed) = lock.withLock { ($0.addresses, $0.listed) }
    for id in listed { members[id.description] = known[id]?.description ?? "127.0.0.1:0" }
    var object: [String: Any] = ["cluster": name.rawValue, "members": members]
    if !groups.isEmpty {
      object["groups"] = groups.map { group -> [String: Any] in
        [
          "name": group.name, "id": group.id, "engine": group.engine.rawValue, "services": group.services,
          "members": ids.map(\.description),
        ]
      }
    }
    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    try data.write(to: URL(fileURLWithPath: clusterFile), options: .atomic)
  }

  /// Starts the first `founders` members (all by default) as the founding voters, then publishes their ports.
  func start(founders: Int? = nil) async throws {
    let founding = Array(ids.prefix(founders ?? size))
    lock.withLock { $0.listed = Set(founding) }
    try writeClusterFile()
    for id in founding { try launch(id, port: 0) }
    for id in founding { try await record(id) }
    try writeClusterFile()
  }

  /// Starts `id` as a joining member (empty, waiting to be added) and publishes its address.
  func join(_ id: NodeID) async throws {
    lock.withLock { _ = $0.listed.insert(id) }
    try launch(id, port: 0, extra: ["--join"])
    try await record(id)
    try writeClusterFile()
  }

  private func launch(_ id: NodeID, port: UInt16, extra: [String] = []) throws {
    let arguments =
      [
        "serve", "--id", id.description, "--listen", "127.0.0.1:\(port)", "--cluster-file", clusterFile, "--data",
        "\(directory)/\(id)", "--fsync", "always", "--tick-ms", "10", "--election-ms", "200-400", "--heartbeat-ms",
        "40", "--log-level", "info", "--secret-file", secretFile, "--credentials-file", credentialsFile,
      ] + extra
    let process = try ServeProcess(id: id, arguments: arguments, stderrPath: "\(directory)/\(id).log")
    lock.withLock { $0.members[id] = process }
  }

  private func record(_ id: NodeID) async throws {
    guard let process = member(id) else { throw HarnessError("\(id) was not launched") }
    let address = try await process.listeningAddress()
    lock.withLock { $0.addresses[id] = address }
  }

  /// Kills `id` with SIGKILL and waits for it to die.
  func crash(_ id: NodeID) async throws {
    guard let process = member(id) else { return }
    process.kill(SIGKILL)
    // Dead, not necessarily reaped: a restart needs only its port and data directory, which a zombie has let go.
    guard await process.waitUntilDead(timeout: .seconds(30)) else { throw HarnessError("\(id) survived SIGKILL") }
  }

  /// Restarts `id` on its old port (or a fresh one if that is taken, publishing it).
  func restart(_ id: NodeID) async throws {
    let old = addresses[id]?.port ?? 0
    try launch(id, port: old)
    do {
      try await record(id)
    } catch {
      try launch(id, port: 0)
      try await record(id)
      try writeClusterFile()
    }
  }

  /// Stops every member with SIGTERM (SIGKILL after a grace period); returns the members that did not stop
  /// gracefully.
  @discardableResult
  func stopAll() async -> [NodeID] {
    let members = lock.withLock { $0.members }
    for member in members.values { member.kill(SIGTERM) }
    var stubborn: [NodeID] = []
    for (id, member) in members.sorted(by: { $0.key < $1.key }) where !(await member.waitForExit(timeout: .seconds(10)))
    {
      stubborn.append(id)
      member.kill(SIGKILL)
      _ = await member.waitForExit(timeout: .seconds(5))
    }
    return stubborn
  }

  func removeFiles() { try? FileManager.default.removeItem(atPath: directory) }

  /// The logs of every member, for failure messages.
  var logs: String {
    ids.map { id in "--- \(id) ---\n" + ((try? String(contentsOfFile: "\(directory)/\(id).log", encoding: .utf8)) ?? "")
    }
    .joined(separator: "\n")
  }

  /// Waits until a member reports itself leader with the others agreeing; returns it.
  func leader(client: TCPKVClient, timeout: Duration = .seconds(90)) async throws -> NodeID {
    let deadline = ContinuousClock.now.advanced(by: timeout)
    while ContinuousClock.now < deadline {
      for id in addresses.keys.sorted() {
        if let status = try? await client.status(of: id).first, status.role == "leader",
          status.commitIndex >= status.lastIndex, status.node == id
        {
          return id
        }
      }
      try await Task.sleep(for: .milliseconds(20))
    }
    throw HarnessError("no leader within \(timeout)")
  }

  /// Runs the `quorum` executable with `arguments` and returns its exit status and output. The client commands
  /// (`kv`, `status`, `members`) get `--credential admin:FILE` unless they name a credential themselves.
  func runCLI(_ arguments: [String]) async throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: try quorumExecutable())
    let client = ["kv", "status", "members"].contains(arguments.first ?? "") && !arguments.contains("--credential")
    process.arguments = arguments + (client ? ["--credential", "admin:\(adminKeyFile)"] : [])
    let outputPath = "\(directory)/cli-\(UUID().uuidString).out"
    _ = FileManager.default.createFile(atPath: outputPath, contents: nil)
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: outputPath))
    process.standardOutput = handle
    process.standardError = handle
    try process.run()
    let deadline = ContinuousClock.now.advanced(by: .seconds(60))
    while process.isRunning {
      if ContinuousClock.now > deadline {
        process.terminate()
        throw HarnessError("quorum \(arguments.joined(separator: " ")) did not finish")
      }
      try await Task.sleep(for: .milliseconds(10))
    }
    try handle.close()
    return (process.terminationStatus, (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "")
  }
}

/// Writes `data` to a new file readable and writable by its owner only (mode 0600), as secrets must be.
func writePrivateFile(_ path: String, _ data: Data, mode: Int = 0o600) throws {
  guard FileManager.default.createFile(atPath: path, contents: data, attributes: [.posixPermissions: mode]) else {
    throw HarnessError("cannot write \(path)")
  }
}
