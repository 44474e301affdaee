import Foundation
import Quorum

/// The transactions part of `quorum demo`: bank accounts on two shards (a Raft group and a Multi-Paxos group),
/// concurrent serializable transfers between them, and a client that dies in the middle of a commit — twice:
/// once after its commit was recorded (the groups' leaders apply it) and once before (they abort it).
enum TxnDemo {
  static let names = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj", "olivia",
    "peggy", "rupert", "sybil", "trent", "victor", "walter", "yolanda",
  ]

  static func run(quick: Bool) async throws {
    print("\n== Transactions: bank accounts on two shards, serializable transfers between them")
    print("   3 in-process members; group east (Raft) and group west (Multi-Paxos) each carry the txn service")
    let cluster = try Cluster(id: "bank") {
      Member("n1")
      Member("n2")
      Member("n3")
      Logging(StderrLogSink(minimumLevel: .error))
      // The defaults are every second for transactions 5 s in doubt; the demo has less patience.
      TransactionResolver(interval: .milliseconds(100), minimumAge: .milliseconds(500))
      Group("east", engine: .raft) { Transactions() }
      Group("west", engine: .multiPaxos) { Transactions() }
    }
    try await cluster.withLocalMembers { members in
      // No wait for leaders: the client follows redirects and retries until its deadline while groups elect.
      let client = members.client()
      try await demonstrate(quick: quick, members: members, client: client)
    }
  }

  static func demonstrate(quick: Bool, members: LocalMembers, client: HostClient) async throws {
    let channel = HostTxnChannel(client)
    let groups = members.map.groups
    func name(_ group: GroupID) -> String { groups.first { $0.id == group }?.name ?? "\(group)" }
    var byGroup: [GroupID: [String]] = [:]
    for account in names { byGroup[try await channel.group(for: account), default: []].append(account) }
    let shards = byGroup.keys.sorted()
    guard shards.count == 2, let east = byGroup[shards[0]], let west = byGroup[shards[1]], east.count >= 2,
      west.count >= 2
    else { throw CLIError.failed("the demo's account names did not spread over both groups") }
    let accounts = [east[0], east[1], west[0], west[1]]
    let opening = 100
    let bank = ShardedTransactions(client: client, coordinator: 9_001)
    try await bank.transaction { tx in
      for account in accounts { tx.put(account, String(opening)) }
    }
    print(
      "-> opened \(east[0]) and \(east[1]) in \(name(shards[0])), \(west[0]) and \(west[1]) in \(name(shards[1])), "
        + "\(opening) each, in one transaction: prepared in both groups, commit recorded, applied in both")

    let clients = 4
    let transfersEach = quick ? 10 : 40
    let started = ContinuousClock.now
    let moved = try await withThrowingTaskGroup(of: Int.self) { tasks in
      for c in 0..<clients {
        tasks.addTask {
          var patient = ShardedTransactionOptions(coordinator: NodeID(rawValue: 9_100 + UInt64(c)))
          patient.maxAttempts = 50
          let teller = ShardedTransactions(channel: HostTxnChannel(client), options: patient)
          var random = SeededRandom(seed: UInt64(c) + 1)
          var done = 0
          for _ in 0..<transfersEach {
            let from = accounts[Int(random.next() % 4)]
            let to = accounts.filter { $0 != from }[Int(random.next() % 3)]
            let amount = Int(random.next() % 20) + 1
            if try await transfer(amount, from: from, to: to, with: teller) { done += 1 }
          }
          return done
        }
      }
      return try await tasks.reduce(0, +)
    }
    let elapsed = RaftDemo.ms(ContinuousClock.now - started)
    let refused = clients * transfersEach - moved
    print(
      "-> \(clients) clients ran \(clients * transfersEach) transfers at once in \(elapsed), each reading both "
        + "balances under locks (no-wait: a conflict reruns the transaction after a pause): \(moved) moved money"
        + (refused > 0 ? ", \(refused) found too little to move (or gave up after 50 conflicts)" : ""))
    try await printBalances(accounts, bank: bank, expected: opening * accounts.count)

    print("\n== A client dies in the middle of a commit")
    let (from, to) = (east[0], west[0])
    let first = try await dieMidCommit(
      moving: 30, from: from, to: to, recordCommit: true, channel: channel, coordinator: 9_200, client: client)
    print(
      "-> \(first.id): 30 from \(from) to \(to), prepared in \(name(shards[0])) and \(name(shards[1])), commit recorded in "
        + "\(name(first.recordGroup)); then the client died before telling the groups")
    try await printInDoubt(channel: channel, groups: shards, name: name)
    try await awaitSettled(first.id, in: shards, channel: channel, expected: .committed)
    print("-> the leaders' resolvers found it in doubt, lost the race to the recorded commit, and applied it")
    try await printBalances(accounts, bank: bank, expected: opening * accounts.count)

    let second = try await dieMidCommit(
      moving: 50, from: to, to: from, recordCommit: false, channel: channel, coordinator: 9_201, client: client)
    print("\n-> \(second.id): 50 from \(to) to \(from), prepared in both groups; the client died before deciding")
    try await awaitSettled(second.id, in: shards, channel: channel, expected: .aborted)
    print("-> the resolvers recorded an abort (nothing was decided) and released its locks in both groups")
    try await printBalances(accounts, bank: bank, expected: opening * accounts.count)
    let outcomes = [try await bank.outcome(of: first.id), try await bank.outcome(of: second.id)]
    print("-> quorum txn status would say: \(first.id) \(outcomes[0]), \(second.id) \(outcomes[1])")
  }

  /// Moves `amount` if `from` holds that much; whether it did. A transfer that keeps conflicting gives up,
  /// having committed nothing.
  static func transfer(_ amount: Int, from: String, to: String, with db: ShardedTransactions) async throws -> Bool {
    do {
      return try await attempt(amount, from: from, to: to, with: db)
    } catch ShardedTransactionError.conflict {
      return false
    }
  }

  static func attempt(_ amount: Int, from: String, to: String, with db: ShardedTransactions) async throws -> Bool {
    try await db.transaction { tx in
      let a = Int(try await tx.getString(from) ?? "0") ?? 0
      let b = Int(try await tx.getString(to) ?? "0") ?? 0
      guard a >= amount else { return false }
      tx.put(from, String(a - amount))
      tx.put(to, String(b + amount))
      return true
    }
  }

  static func printBalances(_ accounts: [String], bank: ShardedTransactions, expected: Int) async throws {
    let balances = try await bank.transaction { tx in
      var balances: [Int] = []
      for account in accounts { balances.append(Int(try await tx.getString(account) ?? "0") ?? 0) }
      return balances
    }
    let total = balances.reduce(0, +)
    let listed = zip(accounts, balances).map { "\($0) \($1)" }.joined(separator: ", ")
    print(
      "-> balances read in one transaction: \(listed); total \(total) (\(total == expected ? "conserved" : "WRONG"))")
    guard total == expected else { throw CLIError.failed("the bank's total is \(total), not \(expected)") }
  }

  /// Does what a coordinator does up to (and, with `recordCommit`, including) its decision, then stops, as a
  /// client that crashed would.
  static func dieMidCommit(
    moving amount: Int, from: String, to: String, recordCommit: Bool, channel: HostTxnChannel, coordinator: NodeID,
    client: HostClient
  ) async throws -> (id: TxnID, recordGroup: GroupID) {
    let id = try await ShardedTransactions(client: client, coordinator: coordinator).nextID()
    let recordGroup = try await channel.group(for: TxnShardService.recordKey(for: id))
    var balances: [String: Int] = [:]
    var owners: [String: GroupID] = [:]
    for key in [from, to] {
      let group = try await channel.group(for: key)
      owners[key] = group
      guard case .value(let value) = try await channel.command(.read(id, key: key), group: group) else {
        throw CLIError.failed("the read of \(key) by \(id) was refused")
      }
      balances[key] = Int(value.map { String(decoding: $0, as: UTF8.self) } ?? "0") ?? 0
    }
    let writes = [
      TxnWrite(key: from, value: Array(String((balances[from] ?? 0) - amount).utf8)),
      TxnWrite(key: to, value: Array(String((balances[to] ?? 0) + amount).utf8)),
    ]
    let groups = Set(owners.values).sorted()
    for group in groups {
      let answer = try await channel.command(
        .prepare(id, writes: writes.filter { owners[$0.key] == group }, participants: groups, recordGroup: recordGroup),
        group: group)
      guard answer == .prepared else { throw CLIError.failed("the prepare of \(id) in \(group) answered \(answer)") }
    }
    if recordCommit {
      let decide = TxnShardCommand.records(
        .decide(id, .commit, participants: groups.map(TxnShard.party), finisher: coordinator, kind: .groups))
      let answer = try await channel.command(decide, group: recordGroup)
      guard answer == .record(.decided(.commit)) else {
        throw CLIError.failed("recording the commit of \(id) answered \(answer)")
      }
    }
    return (id, recordGroup)
  }

  static func printInDoubt(channel: HostTxnChannel, groups: [GroupID], name: (GroupID) -> String) async throws {
    for group in groups {
      guard
        case .inDoubt(let entries, _) = try await channel.query(.inDoubt(minimumAgeMillis: 0, limit: 10), group: group)
      else { continue }
      for entry in entries {
        print("   quorum txn in-doubt: \(name(group)) holds \(entry.id) prepared, keys \(entry.keys) locked")
      }
    }
  }

  /// Waits until every group reports `expected` for `id`, printing how long that took.
  static func awaitSettled(_ id: TxnID, in groups: [GroupID], channel: HostTxnChannel, expected: TxnShardState)
    async throws
  {
    let started = ContinuousClock.now
    let deadline = started.advanced(by: .seconds(30))
    while ContinuousClock.now < deadline {
      var settled = true
      for group in groups {
        guard case .status(let state, _) = try await channel.query(.status(id), group: group), state == expected
        else {
          settled = false
          break
        }
      }
      if settled {
        print("   (\(expected) in every group \(RaftDemo.ms(ContinuousClock.now - started)) after the client died)")
        return
      }
      try await Task.sleep(for: .milliseconds(20))
    }
    throw CLIError.failed("\(id) was not settled as \(expected) in 30 s")
  }
}
