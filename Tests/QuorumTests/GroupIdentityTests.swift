import Foundation
import Quorum
import Testing

/// A member records each group's identity beside its storage and refuses to start a group configured as another.
@Suite("Group identities recorded beside the groups' storage", .timeLimit(.minutes(2)))
struct GroupIdentityTests {
  private static func temporaryRoot() -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("quorum-identity-\(UUID().uuidString)").path
  }

  /// Makes member n1's host of `cluster` on `root` (nothing runs).
  private static func host(_ cluster: Cluster, root: String, layout: GroupLogLayout) throws -> GroupHost {
    try GroupHost(
      node: 1, map: cluster.map, catalog: cluster.catalog, settings: cluster.hostSettings,
      storage: FileGroupStorage(root: root, fsync: .never, layout: layout),
      logger: QuorumLogger(label: "quorum", sink: NullLogSink()))
  }

  /// The file and reason of the ``StorageError/incompatible(file:reason:)`` that making the host throws.
  private static func refusal(_ cluster: Cluster, root: String, layout: GroupLogLayout) -> (
    file: String, reason: String
  )? {
    do {
      _ = try host(cluster, root: root, layout: layout)
      return nil
    } catch let StorageError.incompatible(file, reason) {
      return (file, reason)
    } catch {
      Issue.record("another error: \(error)")
      return nil
    }
  }

  @Test("shared log: a group taking a removed group's number is refused; with its old id it starts")
  func sharedLayoutRemovedGroupIsRefused() async throws {
    let root = Self.temporaryRoot()
    defer { try? FileManager.default.removeItem(atPath: root) }
    let before = try Cluster(id: "identity") {
      Member("n1")
      Group("accounts") { KeyValue() }
      Group("audit") { Locks() }
    }
    let storage = FileGroupStorage(root: root, fsync: .never, layout: .shared)
    try await withSingleMember(before, storage: storage, settings: before.hostSettings) { _, kv in
      _ = try await kv.put("alice", "100")
    }
    // The operator deletes `accounts`: `audit` takes number 1, accounts' records in the shared log.
    let after = try Cluster(id: "identity") {
      Member("n1")
      Group("audit") { Locks() }
    }
    #expect(after.map.groups.map(\.id) == [1])
    let refusedOutcome = Self.refusal(after, root: root, layout: .shared)
    let refused = try #require(refusedOutcome, "the renumbered group was started")
    #expect(refused.file == root + "/shared-log/snapshots/1/GROUP")
    #expect(
      refused.reason.hasPrefix(
        "group 1 was created as 'accounts' (raft; services kv) and is now configured as 'audit' (raft; services locks)"),
      "\(refused.reason)")
    #expect(refused.reason.contains("the name (was 'accounts', now 'audit')"), "\(refused.reason)")
    #expect(refused.reason.contains("the services (were kv, now locks)"), "\(refused.reason)")
    // The same list again starts, and accounts still has its data.
    let reopened = FileGroupStorage(root: root, fsync: .never, layout: .shared)
    try await withSingleMember(before, storage: reopened, settings: before.hostSettings) {
      (_: GroupHost, kv: KeyValueClient) async throws in
      #expect(try await kv.getString("alice") == "100")
    }
    // `audit` alone, with the id it had, starts too.
    let explicit = try Cluster(id: "identity") {
      Member("n1")
      Group("audit", id: 2) { Locks() }
    }
    _ = try Self.host(explicit, root: root, layout: .shared)
  }

  @Test("per-group logs: reordered groups are refused (their directories record their old numbers)")
  func perGroupLayoutReorderedGroupsAreRefused() throws {
    let root = Self.temporaryRoot()
    defer { try? FileManager.default.removeItem(atPath: root) }
    let before = try Cluster(id: "identity") {
      Member("n1")
      Group("accounts") { KeyValue() }
      Group("audit") { Locks() }
    }
    _ = try Self.host(before, root: root, layout: .perGroup)
    let reordered = try Cluster(id: "identity") {
      Member("n1")
      Group("audit") { Locks() }
      Group("accounts") { KeyValue() }
    }
    let refusedOutcome = Self.refusal(reordered, root: root, layout: .perGroup)
    let refused = try #require(refusedOutcome, "reordered groups started")
    #expect(refused.file.hasPrefix(root + "/"))
    #expect(refused.file.hasSuffix("/snapshots/GROUP"))
    #expect(
      refused.reason.contains("the number (was 1, now 2)") || refused.reason.contains("the number (was 2, now 1)"),
      "\(refused.reason)")
    #expect(refused.reason.contains("was created for group"), "\(refused.reason)")
    // Removing the first group renumbers the second: refused too.
    let removed = try Cluster(id: "identity") {
      Member("n1")
      Group("audit") { Locks() }
    }
    let alsoRefusedOutcome = Self.refusal(removed, root: root, layout: .perGroup)
    let alsoRefused = try #require(alsoRefusedOutcome, "a renumbered group started")
    #expect(alsoRefused.file == root + "/audit/snapshots/GROUP")
    #expect(alsoRefused.reason.contains("the number (was 2, now 1)"), "\(alsoRefused.reason)")
    // With explicit ids as before, the list starts.
    let explicit = try Cluster(id: "identity") {
      Member("n1")
      Group("audit", id: 2) { Locks() }
      Group("accounts", id: 1) { KeyValue() }
    }
    _ = try Self.host(explicit, root: root, layout: .perGroup)
  }

  @Test("a group whose services or slots were edited is refused, in either layout")
  func editedServicesOrSlotsAreRefused() throws {
    for layout in [GroupLogLayout.shared, .perGroup] {
      let root = Self.temporaryRoot()
      defer { try? FileManager.default.removeItem(atPath: root) }
      let before = try Cluster(id: "identity") {
        Member("n1")
        Group("accounts") { KeyValue() }
        Group("orders", slots: [0...1023]) { KeyValue() }
      }
      _ = try Self.host(before, root: root, layout: layout)
      let moreServices = try Cluster(id: "identity") {
        Member("n1")
        Group("accounts") {
          KeyValue()
          Locks()
        }
        Group("orders", slots: [0...1023]) { KeyValue() }
      }
      let refusedOutcome = Self.refusal(moreServices, root: root, layout: layout)
      let refused = try #require(refusedOutcome, "a services edit started")
      #expect(refused.reason.contains("the services (were kv, now kv,locks)"), "\(layout): \(refused.reason)")
      let movedSlots = try Cluster(id: "identity") {
        Member("n1")
        Group("accounts") { KeyValue() }
        Group("orders", slots: [0...2047]) { KeyValue() }
      }
      let movedOutcome = Self.refusal(movedSlots, root: root, layout: layout)
      let moved = try #require(movedOutcome, "a slots edit started")
      #expect(moved.reason.contains("the slots of kv (were "), "\(layout): \(moved.reason)")
    }
  }

  @Test("a data directory written before identities were recorded adopts the configured groups, then holds to them")
  func existingDirectoryWithoutIdentityIsAdopted() async throws {
    for layout in [GroupLogLayout.shared, .perGroup] {
      let root = Self.temporaryRoot()
      defer { try? FileManager.default.removeItem(atPath: root) }
      let cluster = try Cluster(id: "identity") {
        Member("n1")
        Group("accounts") { KeyValue() }
      }
      let storage = FileGroupStorage(root: root, fsync: .never, layout: layout)
      try await withSingleMember(cluster, storage: storage, settings: cluster.hostSettings) { _, kv in
        _ = try await kv.put("alice", "100")
      }
      // As an older build left it: no identity file.
      let path = storage.identityPath(of: 1, name: "accounts")
      #expect(FileManager.default.fileExists(atPath: path), "the first start recorded the identity")
      try FileManager.default.removeItem(atPath: path)
      let reopened = FileGroupStorage(root: root, fsync: .never, layout: layout)
      try await withSingleMember(cluster, storage: reopened, settings: cluster.hostSettings) {
        (_: GroupHost, kv: KeyValueClient) async throws in
        #expect(try await kv.getString("alice") == "100")
      }
      #expect(FileManager.default.fileExists(atPath: path), "the existing group was adopted")
      let renamed = try Cluster(id: "identity") {
        Member("n1")
        Group("ledger", id: 1) { KeyValue() }
      }
      if layout == .shared {
        let refusedOutcome = Self.refusal(renamed, root: root, layout: layout)
        let refused = try #require(refusedOutcome, "a renamed group started")
        #expect(refused.reason.contains("the name (was 'accounts', now 'ledger')"), "\(refused.reason)")
      }
    }
  }

  @Test("a second host on a data directory a running member holds fails with the lock error and leaves the records")
  func lockedDirectoryIsLeftAlone() async throws {
    for layout in [GroupLogLayout.shared, .perGroup] {
      let root = Self.temporaryRoot()
      defer { try? FileManager.default.removeItem(atPath: root) }
      let running = try Cluster(id: "identity") {
        Member("n1")
        Group("accounts") { KeyValue() }
      }
      let storage = FileGroupStorage(root: root, fsync: .never, layout: layout)
      let accounts = storage.identityPath(of: 1, name: "accounts")
      let lockedDirectory = layout == .shared ? root + "/" + FileGroupStorage.sharedLogName : root + "/accounts"
      try await withSingleMember(running, storage: storage, settings: running.hostSettings) { _, kv in
        _ = try await kv.put("alice", "100")
        let recorded = try Data(contentsOf: URL(fileURLWithPath: accounts))
        // Started by mistake on the same directory: one configured with a group the running member does not have
        // (its record would be written while the member runs), and one whose group the record says is another.
        let added = try Cluster(id: "identity") {
          Member("n1")
          Group("accounts") { KeyValue() }
          Group("orders") { Locks() }
        }
        let renamed = try Cluster(id: "identity") {
          Member("n1")
          Group("ledger", id: 1) { KeyValue() }
        }
        // One listing its other group first: in the per-group layout that group's directory is not locked.
        let ordersFirst = try Cluster(id: "identity") {
          Member("n1")
          Group("orders") { Locks() }
          Group("accounts") { KeyValue() }
        }
        // In the per-group layout a renamed group has a directory of its own, which nothing holds.
        for second in layout == .shared ? [added, renamed, ordersFirst] : [added, ordersFirst] {
          do {
            _ = try Self.host(second, root: root, layout: layout)
            Issue.record("\(layout): a second host started on a locked directory")
          } catch let error as StorageError {
            #expect(error == .directoryLocked(path: lockedDirectory), "\(layout): \(error)")
          }
        }
        let orders = FileGroupStorage(root: root, fsync: .never, layout: layout).identityPath(of: 2, name: "orders")
        #expect(!FileManager.default.fileExists(atPath: orders), "\(layout): the second host recorded a group")
        #expect(try Data(contentsOf: URL(fileURLWithPath: accounts)) == recorded, "\(layout): the record changed")
      }
    }
  }

  @Test("a damaged identity file is refused with a typed error, not overwritten")
  func damagedIdentityIsRefused() throws {
    let root = Self.temporaryRoot()
    defer { try? FileManager.default.removeItem(atPath: root) }
    let cluster = try Cluster(id: "identity") {
      Member("n1")
      Group("accounts") { KeyValue() }
    }
    _ = try Self.host(cluster, root: root, layout: .shared)
    let path = FileGroupStorage(root: root, fsync: .never, layout: .shared).identityPath(of: 1, name: "accounts")
    var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
    bytes[bytes.count / 2] ^= 0xFF
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    let refusedOutcome = Self.refusal(cluster, root: root, layout: .shared)
    let refused = try #require(refusedOutcome, "a damaged record was accepted")
    #expect(refused.reason.contains("unreadable (wrong checksum)"), "\(refused.reason)")
  }

  @Test("the replication digest covers the session policy of each engine some group runs, and only those")
  func replicationDigest() {
    let raftOnly = ClusterMap(
      cluster: "c", members: [1: ""], groups: [GroupSpec(id: 1, name: "accounts", members: [1], services: ["kv"])])
    let standard = SessionPolicy()
    let shorter = SessionPolicy(timeoutMillis: 60_000)
    let reference = raftOnly.replicationDigest(raftSessions: standard, paxosSessions: standard)
    #expect(raftOnly.replicationDigest(raftSessions: shorter, paxosSessions: standard) != reference)
    #expect(
      raftOnly.replicationDigest(raftSessions: standard, paxosSessions: shorter) == reference,
      "no group runs Multi-Paxos: its policy does not matter")
    #expect(reference != raftOnly.groupTableDigest)
  }

  @Test("the group table digest covers numbers, names, engines, services and slots, not members")
  func groupTableDigest() throws {
    func digest(_ groups: [GroupSpec]) -> [UInt8] {
      ClusterMap(cluster: "c", members: [1: "", 2: "", 3: ""], groups: groups).groupTableDigest
    }
    let base = [
      GroupSpec(id: 1, name: "accounts", members: [1, 2, 3], services: ["kv"]),
      GroupSpec(id: 2, name: "audit", engine: .multiPaxos, members: [1, 2, 3], services: ["kv", "locks"]),
    ]
    let reference = digest(base)
    #expect(reference.count == 32)
    #expect(digest(base.reversed()) == reference, "the order of declaration does not matter, the numbers do")
    var members = base
    members[0].members = [1, 2]
    #expect(digest(members) == reference, "members change at run time")
    var services = base
    services[1].services = ["locks", "kv"]
    #expect(digest(services) == reference, "services are a set")
    var variants: [[GroupSpec]] = []
    var renumbered = base
    renumbered[1].id = 3
    variants.append(renumbered)
    var renamed = base
    renamed[0].name = "ledger"
    variants.append(renamed)
    var engine = base
    engine[0].engine = .multiPaxos
    variants.append(engine)
    var fewer = base
    fewer[1].services = ["kv"]
    variants.append(fewer)
    var slots = base
    slots[0].slots = [SlotRange(0, 1023)]
    slots[1].slots = [SlotRange(1024, 4095)]
    variants.append(slots)
    variants.append([base[0]])
    for variant in variants { #expect(digest(variant) != reference, "\(variant)") }
  }

  @Test("slots written split, unsorted or overlapping digest as the same slots merged: such members agree")
  func slotRangesAreNormalisedBeforeDigesting() {
    func map(_ first: [SlotRange], _ second: [SlotRange]) -> ClusterMap {
      ClusterMap(
        cluster: "c", members: [1: ""],
        groups: [
          GroupSpec(id: 1, name: "accounts", members: [1], services: ["kv"], slots: first),
          GroupSpec(id: 2, name: "orders", members: [1], services: ["kv"], slots: second),
        ])
    }
    let whole = map([SlotRange(0, 199)], [SlotRange(200, 4095)])
    let spellings = [
      map([SlotRange(0, 99), SlotRange(100, 199)], [SlotRange(200, 4095)]),
      map([SlotRange(100, 199), SlotRange(0, 99)], [SlotRange(200, 2047), SlotRange(2048, 4095)]),
      map([SlotRange(150, 199), SlotRange(0, 149)], [SlotRange(3000, 4095), SlotRange(200, 2999)]),
    ]
    let policy = SessionPolicy()
    for spelling in spellings {
      // Maps a member could run: two groups carrying one service may not share a slot.
      #expect(throws: Never.self, "\(spelling.groups.map(\.slots))") { try spelling.validate(knownServices: ["kv"]) }
      #expect(spelling.groupTableDigest == whole.groupTableDigest, "\(spelling.groups.map(\.slots))")
      #expect(
        spelling.replicationDigest(raftSessions: policy, paxosSessions: policy)
          == whole.replicationDigest(raftSessions: policy, paxosSessions: policy))
      #expect(GroupIdentity(spelling.groups[0], in: spelling) == GroupIdentity(whole.groups[0], in: whole))
    }
    // Overlapping ranges of one group are refused by validation, but a record written before normalisation may
    // hold them: they identify the group as the merged range does.
    let overlapping = map([SlotRange(0, 150), SlotRange(50, 199)], [SlotRange(200, 4095)])
    #expect(throws: ClusterMapError.self) { try overlapping.validate(knownServices: ["kv"]) }
    #expect(GroupIdentity(overlapping.groups[0], in: overlapping) == GroupIdentity(whole.groups[0], in: whole))
    #expect(
      map([SlotRange(0, 99), SlotRange(101, 199)], [SlotRange(100, 100), SlotRange(200, 4095)]).groupTableDigest
        != whole.groupTableDigest, "other slots still digest otherwise")
    #expect(
      SlotRange.normalized([SlotRange(7, 9), SlotRange(0, 3), SlotRange(4, 5), SlotRange(2, 2)])
        == [SlotRange(0, 5), SlotRange(7, 9)])
  }

  /// A two-member TCP cluster whose members run `groups` (members listen on port 0).
  private static func tcpCluster(withAudit: Bool, sessionTimeout: Duration = .seconds(300)) throws -> Cluster {
    try Cluster(id: "tables") {
      Member("n1", at: "127.0.0.1:0")
      Member("n2", at: "127.0.0.1:0")
      Security.insecure
      Logging(NullLogSink())
      RaftSettings {
        TickInterval(.milliseconds(5))
        ElectionTimeout(Duration.milliseconds(300)...Duration.milliseconds(600))
        HeartbeatInterval(.milliseconds(30))
        Sessions(timeout: sessionTimeout)
      }
      Group("accounts") { KeyValue() }
      if withAudit { Group("audit") { Locks() } }
    }
  }

  /// Runs member n1 of `first` and member n2 of `second`, wired to each other, until `body` returns.
  private static func withMembers(
    _ first: Cluster, _ second: Cluster,
    _ body: @Sendable (ClusterMemberServer, ClusterMemberServer) async throws -> Void
  ) async throws {
    let n1 = try await first.start("n1")
    let n2 = try await second.start("n2")
    try await withThrowingTaskGroup(of: Void.self) { group in
      group.addTask { try await n1.run() }
      group.addTask { try await n2.run() }
      let outcome: Result<Void, any Error>
      do {
        let a1 = try await n1.waitUntilListening()
        let a2 = try await n2.waitUntilListening()
        for server in [n1, n2] {
          server.transport.setAddress(a1, for: 1)
          server.transport.setAddress(a2, for: 2)
        }
        try await body(n1, n2)
        outcome = .success(())
      } catch {
        outcome = .failure(error)
      }
      await n1.shutdown()
      await n2.shutdown()
      try await group.waitForAll()
      try outcome.get()
    }
  }

  @Test("TCP members whose session policies differ refuse each other: their replicas would apply a log unalike")
  func tcpMembersWithDifferentSessionPoliciesRefuseEachOther() async throws {
    try await Self.withMembers(
      try Self.tcpCluster(withAudit: false), try Self.tcpCluster(withAudit: false, sessionTimeout: .seconds(60))
    ) { n1, n2 in
      try await pollUntil("both members to refuse the other's session policy", within: .seconds(60)) {
        n1.transport.metrics.closes("group-table-mismatch") >= 1
          && n2.transport.metrics.closes("group-table-mismatch") >= 1
      }
    }
  }

  @Test("TCP members whose group lists differ refuse each other at the handshake; equal lists elect a leader")
  func tcpMembersWithDifferentGroupListsRefuseEachOther() async throws {
    try await Self.withMembers(try Self.tcpCluster(withAudit: true), try Self.tcpCluster(withAudit: false)) {
      n1, n2 in
      try await pollUntil("both members to refuse the other's group table", within: .seconds(60)) {
        n1.transport.metrics.closes("group-table-mismatch") >= 1
          && n2.transport.metrics.closes("group-table-mismatch") >= 1
      }
    }
    try await Self.withMembers(try Self.tcpCluster(withAudit: true), try Self.tcpCluster(withAudit: true)) {
      n1, n2 in
      try await pollUntil("group 1 to commit with both members", within: .seconds(60)) {
        for server in [n1, n2] {
          if let status = await server.host.group(1)?.status(), status.isLeader, status.commitIndex > 0 { return true }
        }
        return false
      }
      #expect(n1.transport.metrics.closes("group-table-mismatch") == 0)
      #expect(n2.transport.metrics.closes("group-table-mismatch") == 0)
    }
  }
}
