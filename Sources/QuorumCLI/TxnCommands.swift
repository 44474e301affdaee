import Foundation
import Quorum

/// `quorum txn`: serializable transactions across the groups of a running TCP cluster, and the operator's view
/// of them (a transaction's outcome, transactions in doubt, the counts in `quorum status`).
enum TxnCommands {
  static let usage = """
    usage: quorum txn put KEY=VALUE [KEY=VALUE…]   atomic put of every key, across groups
                      get KEY [KEY…]                read keys in one transaction (a consistent snapshot)
                      transfer FROM TO AMOUNT       move AMOUNT between two integer balances (absent = 0)
                      status ID                     a transaction's outcome and where it stands in each group
                      in-doubt [--min-age-ms MS]    transactions prepared and not yet decided, oldest first
                      resolve [--min-age-ms MS]     settle those (abort unless a commit was recorded first)
           (--cluster host:port[,…] [--cluster-id ID] | --cluster-file FILE) [--credential NAME:SECRET-FILE]
           [--timeout-ms 10000] [--coordinator N]
      Keys of the txn service are their own key space (`quorum kv` does not see them). Group leaders settle
      transactions their client left in doubt on their own after a few seconds; `resolve` does it now.
      --coordinator: this client's coordinator id (default: one derived from the credential's name).
    """

  /// A stable coordinator identity for command-line clients of `principal`: transaction numbers are reserved
  /// durably per coordinator in the cluster, so concurrent invocations sharing it still get distinct
  /// identifiers, and the record table's list of coordinators does not grow with every invocation.
  static func coordinator(for principal: String?) -> NodeID {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in "quorum-cli/\(principal ?? "")".utf8 {
      hash ^= UInt64(byte)
      hash = hash &* 0x100_0000_01b3
    }
    return NodeID(rawValue: 1 << 48 | hash & 0xFFFF_FFFF)
  }

  static func run(_ arguments: [String]) async -> Int32 {
    if arguments.contains("--help") || arguments.contains("-h") || arguments.isEmpty {
      print(usage)
      return arguments.isEmpty ? 2 : 0
    }
    var options = Options(arguments)
    do {
      let target = try ClusterTarget.parse(&options)
      let timeout = try options.milliseconds("--timeout-ms", default: 10_000)
      let minimumAge = try options.value("--min-age-ms").map { text -> UInt64 in
        guard let value = UInt64(text) else { throw CLIError.usage("--min-age-ms \(text): expected milliseconds") }
        return value
      }
      let coordinatorText = try options.value("--coordinator")
      var coordinator = coordinator(for: target.credential?.name)
      if let coordinatorText {
        guard let parsed = NodeID(coordinatorText) else { throw CLIError.usage("--coordinator \(coordinatorText)") }
        coordinator = parsed
      }
      try options.rejectUnknown()
      let words = options.words
      let connection = ClientCommands.client(target, timeout: timeout)
      defer { Task { await connection.close() } }
      let channel = HostTxnChannel(connection.host)
      let db = connection.transactions(coordinator: coordinator, seed: UInt64(truncatingIfNeeded: getpid()))
      let code: Int32
      switch (words.first, words.count) {
      case ("put", 2...): code = try await put(Array(words.dropFirst()), db: db, channel: channel)
      case ("get", 2...): code = try await get(Array(words.dropFirst()), db: db)
      case ("transfer", 4): code = try await transfer(words[1], words[2], words[3], db: db, channel: channel)
      case ("status", 2): code = try await status(words[1], db: db, channel: channel)
      case ("in-doubt", 1): code = try await inDoubt(minimumAgeMillis: minimumAge ?? 0, channel: channel)
      case ("resolve", 1): code = try await resolve(minimumAgeMillis: minimumAge ?? 5_000, db: db, channel: channel)
      default: throw CLIError.usage(usage)
      }
      await connection.close()
      return code
    } catch let error as CLIError {
      printError("quorum txn: \(error)")
      if case .usage = error { return 2 }
      return 1
    } catch let error as ShardedTransactionError {
      printError("quorum txn: \(error)")
      if case .outcomeUnknown(let id, _) = error { printError("look it up with: quorum txn status \(id) …") }
      return 1
    } catch {
      printError("quorum txn: \(error)")
      return 1
    }
  }

  // MARK: - Transactions

  static func put(_ pairs: [String], db: ShardedTransactions, channel: HostTxnChannel) async throws -> Int32 {
    var writes: [(String, String)] = []
    for pair in pairs {
      guard let equals = pair.firstIndex(of: "="), equals != pair.startIndex else {
        throw CLIError.usage("\(pair): expected KEY=VALUE")
      }
      writes.append((String(pair[..<equals]), String(pair[pair.index(after: equals)...])))
    }
    guard Set(writes.map(\.0)).count == writes.count else { throw CLIError.usage("a key is given twice") }
    let committed = try await db.transaction { tx in
      for (key, value) in writes { tx.put(key, value) }
      return tx.id
    }
    print("committed \(committed) (\(try await placement(of: writes.map(\.0), channel: channel)))")
    return 0
  }

  static func get(_ keys: [String], db: ShardedTransactions) async throws -> Int32 {
    let values = try await db.transaction { tx in
      var values: [String?] = []
      for key in keys { values.append(try await tx.getString(key)) }
      return values
    }
    for (key, value) in zip(keys, values) { print("\(key) = \(value ?? "(absent)")") }
    return 0
  }

  static func transfer(
    _ from: String, _ to: String, _ amountText: String, db: ShardedTransactions, channel: HostTxnChannel
  )
    async throws -> Int32
  {
    guard let amount = Int(amountText), amount > 0 else {
      throw CLIError.usage("AMOUNT \(amountText): expected a positive integer")
    }
    guard from != to else { throw CLIError.usage("FROM and TO are the same account") }
    struct Balances: Sendable {
      var id: TxnID
      var from: Int
      var to: Int
      var moved: Bool
    }
    let result = try await db.transaction { tx -> Balances in
      guard let a = Int(try await tx.getString(from) ?? "0"), let b = Int(try await tx.getString(to) ?? "0") else {
        throw CLIError.failed("\(from) or \(to) does not hold an integer")
      }
      guard a >= amount else { return Balances(id: tx.id, from: a, to: b, moved: false) }
      tx.put(from, String(a - amount))
      tx.put(to, String(b + amount))
      return Balances(id: tx.id, from: a - amount, to: b + amount, moved: true)
    }
    guard result.moved else {
      print("refused: \(from) holds \(result.from), less than \(amount) (nothing written)")
      return 3
    }
    print(
      "committed \(result.id): \(from) = \(result.from), \(to) = \(result.to) "
        + "(\(try await placement(of: [from, to], channel: channel)))")
    return 0
  }

  /// `2 groups: a, b in group 1; c in group 2`.
  static func placement(of keys: [String], channel: HostTxnChannel) async throws -> String {
    var byGroup: [GroupID: [String]] = [:]
    for key in keys { byGroup[try await channel.group(for: key), default: []].append(key) }
    let parts = byGroup.keys.sorted().map { "\(byGroup[$0]?.joined(separator: ", ") ?? "") in group \($0.rawValue)" }
    return "\(byGroup.count) group\(byGroup.count == 1 ? "" : "s"): " + parts.joined(separator: "; ")
  }

  // MARK: - Operating

  static func groupNames(_ channel: HostTxnChannel) async throws -> [GroupID: String] {
    var names: [GroupID: String] = [:]
    for group in try await channel.client.clusterMap().groups { names[group.id] = group.name }
    return names
  }

  static func status(_ text: String, db: ShardedTransactions, channel: HostTxnChannel) async throws -> Int32 {
    guard let id = TxnID(text) else {
      throw CLIError.usage("\(text): expected a transaction id like 281474976710656.17@1767225600000")
    }
    let names = try await groupNames(channel)
    let groups = try await channel.groups()
    let started = Date(timeIntervalSince1970: Double(id.startedAtMillis) / 1000)
    print("transaction \(id): coordinator \(id.coordinator.rawValue), number \(id.sequence), started \(started)")
    let recordGroup = try await channel.group(for: TxnShardService.recordKey(for: id))
    if case .records(.record(let record)) = try await channel.query(.records(.record(id)), group: recordGroup) {
      let name = names[recordGroup] ?? "\(recordGroup)"
      if let record {
        print(
          "  record in \(name): decision \(record.decision.map { "\($0)" } ?? "none yet"), "
            + "groups \(record.participants.map { "\($0.rawValue)" }.joined(separator: ",")), "
            + "still to finish: \(record.pending.isEmpty ? "none" : record.pending.map { "\($0.rawValue)" }.joined(separator: ","))"
        )
      } else {
        print("  no record in \(name) (a one-group transaction, aborted before a decision, or forgotten)")
      }
    }
    for group in groups {
      guard case .status(let state, _) = try await channel.query(.status(id), group: group) else { continue }
      print("  group \(names[group] ?? "?") (\(group.rawValue)): \(state)")
    }
    let outcome = try await db.outcome(of: id, groups: groups)
    print("outcome: \(outcome)")
    return 0
  }

  static func inDoubt(minimumAgeMillis: UInt64, channel: HostTxnChannel) async throws -> Int32 {
    let names = try await groupNames(channel)
    var total = 0
    for group in try await channel.groups() {
      guard
        case .inDoubt(let entries, let more) = try await channel.query(
          .inDoubt(minimumAgeMillis: minimumAgeMillis, limit: 100), group: group)
      else { continue }
      total += entries.count
      for entry in entries {
        print(
          "\(entry.id)  in \(names[group] ?? "\(group)") prepared \(entry.ageMillis) ms ago, "
            + "record in \(names[entry.recordGroup] ?? "\(entry.recordGroup)"), "
            + "groups \(entry.participants.map { "\($0.rawValue)" }.joined(separator: ",")), "
            + "keys \(entry.keys.joined(separator: ", "))")
      }
      if more { print("… and more in \(names[group] ?? "\(group)")") }
    }
    print("\(total) prepared and undecided\(minimumAgeMillis > 0 ? " for at least \(minimumAgeMillis) ms" : "")")
    return 0
  }

  static func resolve(minimumAgeMillis: UInt64, db: ShardedTransactions, channel: HostTxnChannel) async throws
    -> Int32
  {
    let settled = try await db.resolveInDoubt(minimumAgeMillis: minimumAgeMillis, groups: try await channel.groups())
    print("settled \(settled) transactions prepared at least \(minimumAgeMillis) ms ago")
    return 0
  }

  /// The transactions section of `quorum status`: each `txn` group's counts, from its leader.
  static func printStatusSection(_ client: HostClient, map: ClusterMap) async {
    let groups = map.groups.filter { $0.services.contains(TxnShardService.name) }
    guard !groups.isEmpty else { return }
    let channel = HostTxnChannel(client)
    print("\ntransactions (txn service):")
    print(row(["group", "keys", "active", "prepared", "in doubt ≥5 s", "locked keys", "records"]))
    for group in groups {
      do {
        guard case .counts(let c) = try await channel.query(.counts, group: group.id) else { continue }
        var old = "0"
        if c.prepared > 0,
          case .inDoubt(let entries, let more) = try await channel.query(
            .inDoubt(minimumAgeMillis: 5_000, limit: 100), group: group.id)
        {
          old = "\(entries.count)\(more ? "+" : "")"
        }
        print(row([group.name, "\(c.keys)", "\(c.active)", "\(c.prepared)", old, "\(c.lockedKeys)", "\(c.records)"]))
      } catch {
        print(row([group.name, "unavailable: \(error)"]))
      }
    }
  }

  static func row(_ cells: [String]) -> String {
    let widths = [12, 8, 8, 10, 15, 13, 8]
    return cells.enumerated().map { index, cell in
      index < widths.count - 1 && cell.count < widths[index]
        ? cell + String(repeating: " ", count: widths[index] - cell.count) : cell + " "
    }.joined()
  }
}
