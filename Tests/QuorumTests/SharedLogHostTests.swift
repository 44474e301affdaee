import Foundation
import Quorum
import Testing

@Suite("Groups sharing one write-ahead log", .timeLimit(.minutes(2)))
struct SharedLogHostTests {
  /// A key of `service` that `group` owns.
  private func key(ownedBy group: GroupID, in map: ClusterMap, prefix: String) throws -> String {
    let found = (0..<10_000).lazy.map { "\(prefix)-\($0)" }.first { map.owner(of: $0, service: "kv") == group }
    return try #require(found, "a key of \(group)")
  }

  @Test("an idle group's few entries do not keep the shared log's old segments: the host has it snapshot and compact")
  func anIdleGroupIsAskedToReleaseTheOldestSegment() async throws {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("quorum-shared-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: root) }
    let cluster = try Cluster(id: "shared") {
      Member("n1")
      Group("idle") { KeyValue() }
      Group("busy") { KeyValue() }
      // The idle group never reaches a snapshot of its own.
      RaftSettings { Snapshots(every: 200, retain: 0) }
    }
    var settings = cluster.hostSettings
    settings.spaceCheckInterval = .milliseconds(20)
    let storage = FileGroupStorage(root: root, fsync: .never, sharedSegmentBytes: 8192)
    #expect(storage.layout == .shared, "a new data directory gets a shared log")
    let log = try #require(storage.sharedLog)
    let map = cluster.map
    let idle = try #require(map.groups.first { $0.name == "idle" }?.id)
    let busy = try #require(map.groups.first { $0.name == "busy" }?.id)
    let idleKey = try key(ownedBy: idle, in: map, prefix: "idle")
    let busyKey = try key(ownedBy: busy, in: map, prefix: "busy")
    let value = [UInt8](repeating: 0x42, count: 500)
    try await withSingleMember(cluster, storage: storage, settings: settings) { _, kv in
      for round in 0..<3 { try await kv.put(idleKey, "idle \(round)") }
      let first = try #require(try await log.segmentSequences().first)
      // Enough for the busy group to fill many segments and snapshot several times.
      for round in 0..<600 { try await kv.put("\(busyKey)", value + Array("\(round)".utf8)) }
      // The idle group's entries are in the first segment; once asked, it snapshots and compacts them away.
      try await pollUntil("the idle group to release the oldest segments") {
        let sequences = try await log.segmentSequences()
        return sequences.first.map { $0 > first } == true && sequences.count <= 3
      }
      #expect(try await kv.getString(idleKey) == "idle 2")
    }
    // Everything survives a restart on the compacted log.
    let reopened = FileGroupStorage(root: root, fsync: .never, sharedSegmentBytes: 8192)
    #expect(reopened.layout == .shared, "the layout on disk is kept")
    try await withSingleMember(cluster, storage: reopened, settings: settings) {
      (_: GroupHost, kv: KeyValueClient) async throws in
      #expect(try await kv.getString(idleKey) == "idle 2")
      #expect(try await kv.get(busyKey) == value + Array("599".utf8))
    }
  }

  @Test("over the quota, one old segment is enough for the host to ask its groups to release it: writes resume")
  func overTheQuotaOneOldSegmentIsReleased() async throws {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("quorum-shared-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: root) }
    let cluster = try Cluster(id: "shared") {
      Member("n1")
      Group("g") { KeyValue() }
      RaftSettings { Snapshots(every: 10_000, retain: 0) }  // No snapshot of the group's own.
    }
    var settings = cluster.hostSettings
    settings.spaceCheckInterval = .milliseconds(20)
    let segmentBytes = 64 << 10
    let value = [UInt8](repeating: 0x42, count: 500)
    // First run: the log grows to exactly two segments (one old, one being written).
    let storage = FileGroupStorage(root: root, fsync: .never, sharedSegmentBytes: segmentBytes)
    let log = try #require(storage.sharedLog)
    try await withSingleMember(cluster, storage: storage, settings: settings) { _, kv in
      var round = 0
      while try await log.segmentSequences().count < 2 {
        try await kv.put("k\(round % 8)", value)
        round += 1
      }
      // The spare segment made after the rotation, counted in the usage below: one still being zeroed at the
      // shutdown is deleted, and the second run's, made again, would take the space the release frees.
      try await pollUntil("the spare segment to be ready") {
        FileManager.default.fileExists(atPath: root + "/shared-log/wal/spare.ready")
      }
    }
    // Second run with a quota the directory already exceeds by half a segment: below the old rule's two old
    // segments, nothing would ever free the space.
    let used = try #require(FileSystemUsage.allocatedBytes(under: root))
    settings.spaceQuotaBytes = used - segmentBytes / 2
    let reopened = FileGroupStorage(root: root, fsync: .never, sharedSegmentBytes: segmentBytes)
    let reopenedLog = try #require(reopened.sharedLog)
    try await withSingleMember(cluster, storage: reopened, settings: settings) { _, kv in
      let first = try #require(try await reopenedLog.segmentSequences().first)
      try await pollUntil("the old segment to be released and writes accepted again") {
        guard try await reopenedLog.segmentSequences().first.map({ $0 > first }) == true else { return false }
        do {
          try await kv.put("after", "quota")
          return true
        } catch  where isSpaceRefusal(error) {
          return false
        }
      }
      #expect(try await kv.get("k0") == value)
    }
  }

  @Test("a data directory with a log per group refuses the shared layout, with a typed error naming it")
  func aLayoutThatContradictsTheDirectoryIsRefused() async throws {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("quorum-layout-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: root) }
    let cluster = try Cluster(id: "layout") {
      Member("n1")
      Group("g") { KeyValue() }
    }
    let perGroup = FileGroupStorage(root: root, fsync: .never, layout: .perGroup)
    _ = try await withSingleMember(cluster, storage: perGroup, settings: cluster.hostSettings) { _, kv in
      try await kv.put("a", "1")
    }
    #expect(FileGroupStorage(root: root, fsync: .never).layout == .perGroup, "the layout on disk is kept")
    let shared = FileGroupStorage(root: root, fsync: .never, layout: .shared)
    let spec = try #require(cluster.map.groups.first)
    do {
      _ = try shared.storage(for: spec, mode: .truncateSuffix, entry: LogEntry.self)
      Issue.record("a shared log was opened over a data directory with a log per group")
    } catch StorageError.incompatible(let file, let reason) {
      #expect(file == root)
      #expect(reason.contains("log per group"), "\(reason)")
    }
  }

  @Test("a log per group in which a group is named like the shared log's directory is still a log per group")
  func aGroupNamedLikeTheSharedLogKeepsItsLayout() async throws {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("quorum-layout-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: root) }
    // A valid group name, and a per-group data directory keeps that group's log in `<root>/shared-log`.
    let spec = GroupSpec(
      id: GroupID(rawValue: 3), name: FileGroupStorage.sharedLogName, members: ["n1"], services: ["kv"])
    let first = try FileGroupStorage(root: root, fsync: .never, layout: .perGroup)
      .storage(for: spec, mode: .truncateSuffix, entry: LogEntry.self)
    _ = try await first.recover()
    try await first.write(StorageWrite(hardState: [7]))
    try await first.close()

    #expect(FileGroupStorage.layoutOnDisk(root: root) == .perGroup)
    #expect(FileGroupStorage(root: root, fsync: .never).layout == .perGroup, "the layout on disk is kept")
    let again = try FileGroupStorage(root: root, fsync: .never, layout: .perGroup)
      .storage(for: spec, mode: .truncateSuffix, entry: LogEntry.self)
    #expect(try await again.recover().hardState == [7])
    try await again.close()
  }
}
