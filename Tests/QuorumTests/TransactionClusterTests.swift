import Foundation
import Quorum
import Testing

/// The transactional store served by a cluster: two groups carrying `txn`, clients as coordinators, the
/// leaders finishing what dead clients leave in doubt.
@Suite("Transactions on a served cluster")
struct TransactionClusterTests {
  static let engines: [EngineKind] = [.raft, .multiPaxos]

  @Test("a client cannot write the leader's clock entry: transaction time stays where the leaders put it")
  func clockEntriesAreRefusedFromClients() async throws {
    try await TxnTestCluster.run(engine: .raft) { cluster in
      let group = try #require(cluster.groups.first)
      // A clock entry a decade ahead would make every later transaction look started in the past.
      let ahead = HostedTxnCommand.clock(wallMillis: UInt64(Date().timeIntervalSince1970 * 1000) + 315_360_000_000)
      let request = HostRequest.command(
        group: group, ServiceCommand(service: HostedTxnService.name, payload: ahead.wireBytes()), request: nil,
        acknowledgedThrough: 0)
      for host in cluster.hosts.values {
        let reply = try HostReply(wireBytes: await host.handle(bytes: request.wireBytes()))
        guard case .failure(let failure) = reply, case .malformed(let why) = failure.error else {
          Issue.record("a client's clock entry was not refused: \(reply)")
          continue
        }
        #expect(why.contains("proposed by the group's leader"), "\(why)")
      }
      // Transactions still commit.
      let key = try await cluster.keys(in: 0, count: 1, prefix: "k")
      try await cluster.db(coordinator: 100).transaction { tx in tx.put(key[0], "v") }
    }
  }

  @Test("serializable transfers across two groups conserve the total and lose no update", arguments: engines)
  func transfersConserveTheTotal(engine: EngineKind) async throws {
    try await TxnTestCluster.run(engine: engine) { cluster in
      let east = try await cluster.keys(in: 0, count: 2, prefix: "acct")
      let west = try await cluster.keys(in: 1, count: 2, prefix: "acct")
      let accounts = east + west
      try await cluster.db(coordinator: 100).transaction { tx in
        for account in accounts { tx.put(account, "100") }
      }
      // Every transfer crosses the groups: two prepares, a recorded decision, two commits.
      let clients = 4
      let transfersEach = 12
      let moved = try await withThrowingTaskGroup(of: [String: Int].self) { tasks in
        for c in 0..<clients {
          tasks.addTask {
            // Patient under contention: a transfer that still gives up committed nothing, and is not counted.
            var patient = ShardedTransactionOptions(coordinator: NodeID(rawValue: 200 + UInt64(c)))
            patient.maxAttempts = 50
            let db = ShardedTransactions(channel: cluster.channel, options: patient)
            var random = SeededRandom(seed: UInt64(c) + 7)
            var deltas: [String: Int] = [:]
            for _ in 0..<transfersEach {
              let (from, to) =
                random.next() % 2 == 0
                ? (east[Int(random.next() % 2)], west[Int(random.next() % 2)])
                : (west[Int(random.next() % 2)], east[Int(random.next() % 2)])
              let amount = Int(random.next() % 30) + 1
              let done: Bool
              do {
                done = try await db.transaction { tx -> Bool in
                  let a = Int(try await tx.getString(from) ?? "") ?? -1_000_000
                  let b = Int(try await tx.getString(to) ?? "") ?? -1_000_000
                  guard a >= amount else { return false }
                  tx.put(from, String(a - amount))
                  tx.put(to, String(b + amount))
                  return true
                }
              } catch ShardedTransactionError.conflict {
                done = false
              }
              if done {
                deltas[from, default: 0] -= amount
                deltas[to, default: 0] += amount
              }
            }
            return deltas
          }
        }
        var all: [String: Int] = [:]
        for try await deltas in tasks { all.merge(deltas, uniquingKeysWith: +) }
        return all
      }
      #expect(!moved.isEmpty, "some transfers moved money")
      let balances = try await cluster.db(coordinator: 100).transaction { tx in
        var balances: [String: Int] = [:]
        for account in accounts { balances[account] = Int(try await tx.getString(account) ?? "") }
        return balances
      }
      #expect(balances.values.reduce(0, +) == 400, "\(balances)")
      for account in accounts {
        #expect(balances[account] == 100 + (moved[account] ?? 0), "\(account): every committed transfer, once")
      }
    }
  }

  @Test("a transaction reads its own writes and deletes, across groups, before it commits", arguments: engines)
  func readsItsOwnWrites(engine: EngineKind) async throws {
    try await TxnTestCluster.run(engine: engine) { cluster in
      let east = try await cluster.keys(in: 0, count: 2, prefix: "ryw")
      let west = try await cluster.keys(in: 1, count: 1, prefix: "ryw")
      let db = cluster.db(coordinator: 100)
      try await db.transaction { tx in
        tx.put(east[1], "old")
        tx.put(west[0], "old")
      }
      let seen = try await db.transaction { tx -> [String?] in
        tx.put(east[0], "new")
        tx.delete(west[0])
        let own = try await tx.getString(east[0])
        let deleted = try await tx.getString(west[0])
        let committed = try await tx.getString(east[1])
        tx.put(east[1], (committed ?? "") + "+1")
        let rewritten = try await tx.getString(east[1])
        return [own, deleted, committed, rewritten]
      }
      #expect(seen == ["new", nil, "old", "old+1"])
      let after = try await db.transaction { tx in
        [try await tx.getString(east[0]), try await tx.getString(west[0]), try await tx.getString(east[1])]
      }
      #expect(after == ["new", nil, "old+1"])
    }
  }

  @Test("a transaction within one group commits in one entry there, with no decision record", arguments: engines)
  func oneGroupTakesTheFastPath(engine: EngineKind) async throws {
    try await TxnTestCluster.run(engine: engine) { cluster in
      let east = try await cluster.keys(in: 0, count: 3, prefix: "fast")
      let west = try await cluster.keys(in: 1, count: 1, prefix: "fast")
      let db = cluster.db(coordinator: 100)
      let local = try await db.transaction { tx -> TxnID in
        _ = try await tx.get(east[2])
        tx.put(east[0], "a")
        tx.put(east[1], "b")
        return tx.id
      }
      #expect(try await cluster.decisionRecords() == 0, "the one-group commit wrote no decision record")
      #expect(try await db.outcome(of: local, groups: [cluster.groups[0]]) == .committed)
      let distributed = try await db.transaction { tx -> TxnID in
        tx.put(east[0], "c")
        tx.put(west[0], "d")
        return tx.id
      }
      #expect(try await cluster.decisionRecords() == 1, "a two-group commit records its decision")
      #expect(try await db.outcome(of: distributed) == .committed)
    }
  }

  @Test(
    "a client that dies after preparing is finished by the leaders: committed if it recorded its commit, else aborted",
    arguments: engines)
  func deadCoordinatorIsResolved(engine: EngineKind) async throws {
    try await TxnTestCluster.run(engine: engine) { cluster in
      // Different leaders for the two groups, so settling needs requests between hosts.
      try await cluster.splitLeaders()
      let east = try await cluster.keys(in: 0, count: 1, prefix: "dead")[0]
      let west = try await cluster.keys(in: 1, count: 1, prefix: "dead")[0]
      let db = cluster.db(coordinator: 100)
      try await db.transaction { tx in
        tx.put(east, "100")
        tx.put(west, "100")
      }
      let committed = try await cluster.dieMidCommit(
        writes: [east: "70", west: "130"], recordCommit: true, coordinator: 300)
      try await cluster.awaitStatus(of: committed, .committed)
      #expect(try await db.outcome(of: committed) == .committed)
      let undecided = try await cluster.dieMidCommit(
        writes: [east: "0", west: "200"], recordCommit: false, coordinator: 301)
      try await cluster.awaitStatus(of: undecided, .aborted)
      #expect(try await db.outcome(of: undecided) == .aborted)
      // A leader counts what it settled once its pass is over, which can be after the groups show the outcome.
      _ = try await awaitValue("the leaders to count both settled") { () -> Bool? in
        cluster.hosts.values.map(\.transactionsResolved).reduce(0, +) >= 2 ? true : nil
      }
      // The locks are released: the same keys commit again at once.
      let values = try await db.transaction { tx -> [String?] in
        let values = [try await tx.getString(east), try await tx.getString(west)]
        tx.put(east, "1")
        tx.put(west, "2")
        return values
      }
      #expect(values == ["70", "130"])
    }
  }

  @Test("a prepare or a one-group commit carrying a key of another group is refused as wrongGroup, naming it")
  func everyKeyIsRouted() async throws {
    try await TxnTestCluster.run(engine: .raft) { cluster in
      let east = try await cluster.keys(in: 0, count: 1, prefix: "route")[0]
      let west = try await cluster.keys(in: 1, count: 1, prefix: "route")[0]
      let (eastGroup, westGroup) = (cluster.groups[0], cluster.groups[1])
      let host = try #require(cluster.hosts[1])
      let id = TxnID(coordinator: 500, sequence: 1, startedAtMillis: 1)
      let commands: [TxnShardCommand] = [
        .prepare(
          id, writes: [TxnWrite(key: east, value: [1]), TxnWrite(key: west, value: [2])],
          participants: [eastGroup], recordGroup: eastGroup),
        .commitLocal(id, reads: [west], writes: [TxnWrite(key: east, value: [1])]),
      ]
      for command in commands {
        let reply = await host.handle(
          .command(
            group: eastGroup, ServiceCommand(service: "txn", payload: command.wireBytes()), request: nil,
            acknowledgedThrough: 0))
        guard case .failure(let failure) = reply else {
          Issue.record("\(command) was taken: \(reply)")
          continue
        }
        #expect(failure.error == .wrongGroup(key: west, service: "txn", owner: westGroup), "\(command)")
      }
    }
  }

  @Test("a transaction's outcome is looked up by its identifier alone", arguments: engines)
  func outcomeByIdentifier(engine: EngineKind) async throws {
    try await TxnTestCluster.run(engine: engine) { cluster in
      let east = try await cluster.keys(in: 0, count: 1, prefix: "look")[0]
      let west = try await cluster.keys(in: 1, count: 1, prefix: "look")[0]
      let db = cluster.db(coordinator: 100)
      let id = try await db.transaction { tx -> TxnID in
        tx.put(east, "x")
        tx.put(west, "y")
        return tx.id
      }
      // Another client, knowing only the identifier.
      let other = cluster.db(coordinator: 101)
      #expect(try await other.outcome(of: id) == .committed)
      let started = try await other.nextID()
      #expect(try await other.outcome(of: started) == .unknown, "a transaction that never ran")
      let parsed = try #require(TxnID(id.description))
      #expect(try await other.outcome(of: parsed) == .committed, "the printed identifier works as well")
    }
  }

  @Test("over authenticated TCP: transfers across groups conserve the total and a dead client's commit completes")
  func overTCP() async throws {
    let secrets = try TestSecrets()
    defer { secrets.remove() }
    let cluster = try Cluster(id: "txn-tcp") {
      Member("n1", at: "127.0.0.1:0")
      Member("n2", at: "127.0.0.1:0")
      Member("n3", at: "127.0.0.1:0")
      Security(clusterSecretFile: secrets.secretFile, credentialsFile: secrets.credentialsFile)
      Logging(NullLogSink())
      RaftSettings {
        TickInterval(.milliseconds(10))
        ElectionTimeout(Duration.milliseconds(200)...Duration.milliseconds(400))
        HeartbeatInterval(.milliseconds(50))
      }
      TransactionResolver(interval: .milliseconds(50), minimumAge: .seconds(2))
      Group("east") { Transactions() }
      Group("west") {
        KeyValue()
        Transactions()
      }
    }
    let running = try await RunningCluster.start(cluster)
    do {
      var options = HostClientOptions()
      options.deadline = .seconds(60)
      let client = TCPClient(
        cluster: "txn-tcp", members: Array(running.addresses.values), options: options,
        credential: try secrets.credential("admin"))
      let helper = TxnTestCluster(hosts: running.servers.mapValues(\.host), map: cluster.map, client: client.host)
      try await helper.splitLeaders()
      let east = try await helper.keys(in: 0, count: 1, prefix: "tcp")[0]
      let west = try await helper.keys(in: 1, count: 1, prefix: "tcp")[0]
      let db = client.transactions(coordinator: 100)
      try await db.transaction { tx in
        tx.put(east, "100")
        tx.put(west, "100")
      }
      for round in 0..<6 {
        let (from, to) = round % 2 == 0 ? (east, west) : (west, east)
        try await db.transaction { tx in
          let a = Int(try await tx.getString(from) ?? "") ?? 0
          let b = Int(try await tx.getString(to) ?? "") ?? 0
          tx.put(from, String(a - 10 * (round + 1)))
          tx.put(to, String(b + 10 * (round + 1)))
        }
      }
      let dead = try await helper.dieMidCommit(writes: [east: "0", west: "200"], recordCommit: true, coordinator: 300)
      try await helper.awaitStatus(of: dead, .committed)
      let balances = try await db.transaction { tx in
        [Int(try await tx.getString(east) ?? "") ?? -1, Int(try await tx.getString(west) ?? "") ?? -1]
      }
      #expect(balances == [0, 200])
      #expect(balances.reduce(0, +) == 200)
      await client.close()
    } catch {
      await running.stop()
      throw error
    }
    await running.stop()
  }
}

/// A running cluster with two `txn` groups, and what the tests do with it.
struct TxnTestCluster: Sendable {
  let hosts: [NodeID: GroupHost]
  let map: ClusterMap
  let client: HostClient
  var channel: HostTxnChannel { HostTxnChannel(client) }
  var groups: [GroupID] { map.groups.filter { $0.services.contains("txn") }.map(\.id).sorted() }

  /// Runs `body` on 3 in-process members with groups east and west on `engine`, leaders resolving transactions
  /// prepared 2 s ago (long enough that a loaded machine never sees a live coordinator as dead).
  static func run(engine: EngineKind, _ body: @Sendable (TxnTestCluster) async throws -> Void) async throws {
    let cluster = try Cluster(id: "txn-test") {
      Member("n1")
      Member("n2")
      Member("n3")
      Logging(NullLogSink())
      TransactionResolver(interval: .milliseconds(50), minimumAge: .seconds(2))
      Group("east", engine: engine) { Transactions() }
      Group("west", engine: engine) {
        KeyValue()
        Transactions()
      }
    }
    try await cluster.withLocalMembers { members in
      var options = HostClientOptions()
      options.deadline = .seconds(60)
      try await body(TxnTestCluster(hosts: members.hosts, map: members.map, client: members.client(options: options)))
    }
  }

  func db(coordinator: NodeID) -> ShardedTransactions { ShardedTransactions(client: client, coordinator: coordinator) }

  /// `count` keys starting with `prefix` that the `index`-th `txn` group owns.
  func keys(in index: Int, count: Int, prefix: String) async throws -> [String] {
    let group = groups[index]
    var found: [String] = []
    for n in 0..<10_000 where found.count < count {
      if try await channel.group(for: "\(prefix)-\(n)") == group { found.append("\(prefix)-\(n)") }
    }
    try #require(found.count == count, "keys of \(group)")
    return found
  }

  /// The member leading `group`, once one does.
  func leader(of group: GroupID) async throws -> NodeID {
    try await awaitValue("a leader of \(group)") {
      for id in hosts.keys.sorted() {
        if let status = await hosts[id]?.group(group)?.status(), status.isLeader { return id }
      }
      return nil
    }
  }

  /// Moves the second group's leadership away from the first group's leader.
  func splitLeaders() async throws {
    let first = try await leader(of: groups[0])
    _ = try await awaitValue("different leaders for \(groups)") { () -> Bool? in
      let second = try await leader(of: groups[1])
      guard second == first else { return true }
      let target = try #require(hosts.keys.sorted().first { $0 != first })
      try? await client.transferLeadership(of: groups[1], to: target)
      return nil
    }
    // Whoever leads the first group now (it may have moved too) must differ from the second's leader.
    _ = try await awaitValue("leaders to settle apart") { () -> Bool? in
      let a = try await leader(of: groups[0])
      let b = try await leader(of: groups[1])
      return a != b ? true : nil
    }
  }

  /// Decision records held across the `txn` groups.
  func decisionRecords() async throws -> Int {
    var total = 0
    for group in groups {
      guard case .counts(let counts) = try await channel.query(.counts, group: group) else {
        Issue.record("no counts from \(group)")
        return -1
      }
      total += counts.records
    }
    return total
  }

  /// Does what a coordinator does for `writes` up to (with `recordCommit`, including) its decision, then stops,
  /// as a client that died would.
  func dieMidCommit(writes: [String: String], recordCommit: Bool, coordinator: NodeID) async throws -> TxnID {
    let id = try await ShardedTransactions(client: client, coordinator: coordinator).nextID()
    let recordGroup = try await channel.group(for: TxnShardService.recordKey(for: id))
    var byGroup: [GroupID: [TxnWrite]] = [:]
    for key in writes.keys.sorted() {
      byGroup[try await channel.group(for: key), default: []].append(
        TxnWrite(key: key, value: writes[key].map { Array($0.utf8) }))
    }
    let participants = byGroup.keys.sorted()
    for group in participants {
      let answer = try await channel.command(
        .prepare(id, writes: byGroup[group] ?? [], participants: participants, recordGroup: recordGroup),
        group: group)
      try #require(answer == .prepared, "prepare in \(group): \(answer)")
    }
    if recordCommit {
      // A record group refuses a decision whose start time is ahead of its log clock, which a new leader sets
      // from its wall clock within its resolver's first turn; a coordinator retries then, and so does this one.
      let answer = try await awaitValue("the record group's log clock to pass the transaction's start") {
        () -> TxnShardResponse? in
        let answer = try await channel.command(
          .records(.decide(id, .commit, participants: participants.map(TxnShard.party), finisher: coordinator)),
          group: recordGroup)
        if case .record(.refused(.clockAhead)) = answer { return nil }
        return answer
      }
      try #require(answer == .record(.decided(.commit)), "decision: \(answer)")
    }
    return id
  }

  /// What each `txn` group knows of `id`, in group order.
  func status(of id: TxnID) async throws -> [TxnShardState] {
    var states: [TxnShardState] = []
    for group in groups {
      guard case .status(let state, _) = try await channel.query(.status(id), group: group) else {
        Issue.record("no status from \(group)")
        return []
      }
      if case .prepared = state { states.append(.prepared(ageMillis: 0)) } else { states.append(state) }
    }
    return states
  }

  /// Waits until every `txn` group reports `state` for `id`.
  func awaitStatus(of id: TxnID, _ state: TxnShardState) async throws {
    _ = try await awaitValue("\(id) \(state) in every group") { () -> Bool? in
      try await status(of: id) == Array(repeating: state, count: groups.count) ? true : nil
    }
  }
}
