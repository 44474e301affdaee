import Foundation
import Quorum
import Synchronization
import Testing

/// Memory storage whose usage the test sets.
final class MeteredStorage: GroupStorageProvider {
  let used = Mutex(0)
  private let inner = MemoryGroupStorage()

  func storage<Entry: StorableEntry>(for group: GroupSpec, mode: LogWriteMode, entry: Entry.Type)
    -> any ConsensusStorage<Entry>
  {
    inner.storage(for: group, mode: mode, entry: entry)
  }

  func usedBytes() -> Int? { used.withLock { $0 } }
}

/// One in-process member `n1` on `storage`, running until `body` returns.
func withSingleMember<T: Sendable>(
  _ cluster: Cluster, storage: any GroupStorageProvider = MemoryGroupStorage(), settings: HostSettings,
  maxReplyBytes: Int = GroupHost.defaultMaxReplyBytes,
  logger: QuorumLogger = QuorumLogger(label: "quorum", sink: NullLogSink()),
  _ body: @Sendable (GroupHost, KeyValueClient) async throws -> T
) async throws -> T {
  let host = try GroupHost(
    node: 1, map: cluster.map, catalog: cluster.catalog, settings: settings, storage: storage, logger: logger,
    maxReplyBytes: maxReplyBytes)
  let endpoint = try InProcessTransport<HostMessage>().bind(1)
  let run = Task { try await host.run(attach: { endpoint }) }
  await host.waitUntilServing()
  var options = HostClientOptions()
  options.deadline = .seconds(30)
  let client = HostClient(
    channel: InProcessRequestChannel(hosts: [1: host]), members: [1], map: cluster.map, options: options)
  let outcome: Result<T, any Error>
  do { outcome = .success(try await body(host, KeyValueClient(client))) } catch { outcome = .failure(error) }
  await host.shutdown()
  try await run.value
  return try outcome.get()
}

/// Whether `error` is the space-quota refusal.
func isSpaceRefusal(_ error: any Error) -> Bool {
  guard case QuorumClientError.rejected(.spaceQuotaExceeded)? = error as? QuorumClientError else { return false }
  return true
}

@Suite("The space quota", .timeLimit(.minutes(2)))
struct SpaceQuotaTests {
  @Test("a cluster that says nothing has the default quota; SpaceQuota.unlimited turns it off; a tiny one is refused")
  func defaultQuota() throws {
    let quiet = try Cluster(id: "space") { Member("n1") }
    #expect(quiet.hostSettings.spaceQuotaBytes == SpaceQuota.defaultBytes)
    #expect(SpaceQuota.defaultBytes == 8 << 30)
    let unlimited = try Cluster(id: "space") {
      Member("n1")
      SpaceQuota.unlimited
    }
    #expect(unlimited.hostSettings.spaceQuotaBytes == nil)
    let tiny = #expect(throws: ClusterConfigurationError.self) {
      try Cluster(id: "space") {
        Member("n1")
        SpaceQuota(bytes: 4096)
      }
    }
    #expect(tiny?.description.contains("less than 1 MiB") == true, "\(String(describing: tiny))")
  }

  @Test("host settings that say nothing have the cluster's default quota; nil turns it off")
  func hostSettingsDefaultQuota() {
    #expect(HostSettings().spaceQuotaBytes == SpaceQuota.defaultBytes)
    #expect(HostSettings(raft: RaftConfiguration()).spaceQuotaBytes == SpaceQuota.defaultBytes)
    #expect(HostSettings.defaultSpaceQuotaBytes == SpaceQuota.defaultBytes)
    #expect(HostSettings(spaceQuotaBytes: nil).spaceQuotaBytes == nil)
    #expect(HostSettings(spaceQuotaBytes: 1 << 30).spaceQuotaBytes == 1 << 30)
  }

  @Test("past the quota writes are refused with a typed error, reads and deletes go on, and the alarm clears")
  func alarmRaisesAndClears() async throws {
    let cluster = try Cluster(id: "space") {
      Member("n1")
      SpaceQuota(bytes: 1 << 20)
    }
    #expect(cluster.hostSettings.spaceQuotaBytes == 1 << 20)
    var settings = cluster.hostSettings
    settings.spaceCheckInterval = .milliseconds(5)
    let storage = MeteredStorage()
    try await withSingleMember(cluster, storage: storage, settings: settings) { _, kv in
      try await kv.put("a", "1")
      try await kv.put("b", "2")
      storage.used.withLock { $0 = (1 << 20) + 1 }
      var refusal: (any Error)?
      var attempt = 0
      try await pollUntil("writes to be refused") {
        attempt += 1
        do {
          try await kv.put("c-\(attempt)", "3")
          return false
        } catch {
          refusal = error
          return true
        }
      }
      let error = try #require(refusal as? QuorumClientError)
      #expect(error == .rejected(.spaceQuotaExceeded(usedBytes: (1 << 20) + 1, quotaBytes: 1 << 20)), "\(error)")
      // Reads, deletes and a compare-and-swap that removes still work; a swap that writes does not.
      #expect(try await kv.getString("a") == "1")
      #expect(try await kv.delete("a") == Array("1".utf8))
      #expect(try await kv.compareAndSwap("b", expected: "2", new: nil).swapped)
      await #expect(throws: QuorumClientError.self) {
        _ = try await kv.compareAndSwap("b", expected: nil, new: "again")
      }
      #expect(try await kv.getString("c-\(attempt)") == nil, "the refused write was not applied")
      // Space returns: the alarm clears by itself.
      storage.used.withLock { $0 = 4096 }
      try await pollUntil("writes to be accepted again") {
        do {
          try await kv.put("c", "3")
          return true
        } catch {
          guard isSpaceRefusal(error) else { throw error }
          return false
        }
      }
      #expect(try await kv.getString("c") == "3")
    }
  }

  @Test(
    "on disk: filling past a small quota refuses writes, and deletes plus a snapshot win the space back",
    arguments: GroupLogLayout.allCases)
  func onDisk(layout: GroupLogLayout) async throws {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("quorum-quota-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: root) }
    let cluster = try Cluster(id: "disk") {
      Member("n1")
      Group("g") { KeyValue() }
      RaftSettings { Snapshots(every: 40, retain: 0) }
    }
    let quota = 160 << 10
    var settings = cluster.hostSettings
    settings.spaceQuotaBytes = quota
    settings.spaceCheckInterval = .milliseconds(5)
    // Small log segments (for groups other than the default one, or the shared log): usage follows the log closely.
    let storage = FileGroupStorage(
      root: root, fsync: .never, segmentBytes: 4096, layout: layout, sharedSegmentBytes: 4096)
    #expect(storage.layout == layout)
    let value = [UInt8](repeating: 0x5A, count: 3000)
    try await withSingleMember(cluster, storage: storage, settings: settings) { _, kv in
      var written = 0
      var refusal: HostError?
      while written < 500 {
        do {
          try await kv.put("key-\(written)", value)
          written += 1
        } catch QuorumClientError.rejected(let error) {
          refusal = error
          break
        }
      }
      guard case .spaceQuotaExceeded(let used, quota)? = refusal else {
        Issue.record(
          "\(written) values of 3000 bytes did not meet the \(quota)-byte quota: \(String(describing: refusal))")
        return
      }
      #expect(used > quota)
      #expect(try await kv.get("key-0") == value, "reads go on past the quota")
      // Delete everything, then keep deleting (each delete is a log entry) until a snapshot compacts the log.
      for index in 0..<written { try await kv.delete("key-\(index)") }
      var padding = 0
      try await pollUntil("the space to come back") {
        do {
          try await kv.put("after", "ok")
          return true
        } catch {
          guard isSpaceRefusal(error) else { throw error }
          try await kv.delete("padding-\(padding)")
          padding += 1
          return false
        }
      }
      #expect(try await kv.getString("after") == "ok")
    }
  }

  @Test("the usage of a directory tree counts the disk allocated to every file under it")
  func usageOfATree() throws {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("quorum-du-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: root) }
    try FileManager.default.createDirectory(atPath: "\(root)/a/b", withIntermediateDirectories: true)
    let empty = try #require(FileSystemUsage.allocatedBytes(under: root))
    try Data(repeating: 1, count: 100_000).write(to: URL(fileURLWithPath: "\(root)/a/b/file"))
    try Data(repeating: 2, count: 50_000).write(to: URL(fileURLWithPath: "\(root)/top"))
    let full = try #require(FileSystemUsage.allocatedBytes(under: root))
    #expect(full - empty >= 150_000, "\(full) - \(empty)")
    #expect(full - empty < 150_000 + 64 << 10, "\(full) - \(empty)")
    #expect(FileSystemUsage.allocatedBytes(under: "\(root)/missing") == nil)
  }
}
