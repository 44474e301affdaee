import Foundation
import Quorum

/// `quorum kv`, `quorum status` and `quorum members`: client commands against a running TCP cluster.
enum ClientCommands {
  static let kvUsage = """
    usage: quorum kv put KEY VALUE | get KEY [--consistency linearizable|lease|session|stale] | delete KEY
                   | cas KEY EXPECTED NEW      (values are UTF-8 text; write - for "absent")
           (--cluster host:port[,host:port…] [--cluster-id ID] | --cluster-file FILE) [--timeout-ms 5000]
           [--credential NAME:SECRET-FILE]   (for a cluster that authenticates its clients)
    """

  static let statusUsage = """
    usage: quorum status (--cluster host:port[,…] [--cluster-id ID] | --cluster-file FILE)
                         [--credential NAME:SECRET-FILE]
      Shows every group: its engine, leader and term, and every member's role, commit and applied index, and
      the leader's per-peer lag; for a group carrying the lock service, how many locks, holders, waiters and
      sessions it has, and its log time.
    """

  static let membersUsage = """
    usage: quorum members add NODE | promote NODE | remove NODE [--group NAME]
           (--cluster host:port[,…] [--cluster-id ID] | --cluster-file FILE) [--credential NAME:SECRET-FILE]
      add: join as a learner (receives the log, does not vote); promote: make a voter; remove: leave.
      --group: the group changed (default: the first group). A new member's address must be in every
      member's cluster file first (members re-read it), and it runs `quorum serve --join`.
    """

  static func client(_ target: ClusterTarget, timeout: Duration) -> TCPClient {
    var options = HostClientOptions()
    options.deadline = timeout
    options.attemptTimeout = min(timeout, .seconds(2))
    options.maxBackoff = .milliseconds(500)
    return TCPClient(
      cluster: target.cluster, members: target.addresses, options: options, seed: UInt64(truncatingIfNeeded: getpid()),
      credential: target.credential)
  }

  static func text(_ bytes: [UInt8]?) -> String {
    guard let bytes else { return "(absent)" }
    return String(decoding: bytes, as: UTF8.self)
  }

  static func kv(_ arguments: [String]) async -> Int32 {
    if arguments.contains("--help") || arguments.contains("-h") {
      print(kvUsage)
      return 0
    }
    var options = Options(arguments)
    do {
      let target = try ClusterTarget.parse(&options)
      let timeout = try options.milliseconds("--timeout-ms", default: 5000)
      let consistencyText = try options.value("--consistency") ?? "linearizable"
      guard let consistency = ReadConsistency(rawValue: consistencyText) else {
        throw CLIError.usage("--consistency \(consistencyText): expected linearizable, lease, session or stale")
      }
      try options.rejectUnknown()
      let words = options.words
      let connection = client(target, timeout: timeout)
      let client = connection.kv
      defer { Task { await connection.close() } }
      func value(_ word: String) -> [UInt8]? { word == "-" ? nil : Array(word.utf8) }
      switch (words.first, words.count) {
      case ("put", 3):
        let previous = try await client.put(words[1], Array(words[2].utf8))
        print("ok (previous: \(text(previous)))")
      case ("get", 2):
        print(text(try await client.get(words[1], consistency: consistency)))
      case ("delete", 2):
        print("ok (previous: \(text(try await client.delete(words[1]))))")
      case ("cas", 4):
        let swapped = try await client.compareAndSwap(words[1], expected: value(words[2]), new: value(words[3])).swapped
        print(swapped ? "swapped" : "not swapped")
        await connection.close()
        return swapped ? 0 : 3
      default:
        throw CLIError.usage(kvUsage)
      }
      await connection.close()
      return 0
    } catch let error as CLIError {
      printError("quorum kv: \(error)")
      if case .usage = error { return 2 }
      return 1
    } catch {
      printError("quorum kv: \(error)")
      return 1
    }
  }

  static func status(_ arguments: [String]) async -> Int32 {
    if arguments.contains("--help") || arguments.contains("-h") {
      print(statusUsage)
      return 0
    }
    var options = Options(arguments)
    do {
      let target = try ClusterTarget.parse(&options)
      try options.rejectUnknown()
      let connection = client(target, timeout: .seconds(5))
      defer { Task { await connection.close() } }
      let map: ClusterMap
      do {
        map = try await connection.host.clusterMap()
      } catch {
        printError(
          "quorum status: no member reachable at \(target.addresses.map(\.description).joined(separator: ", ")): "
            + "\(error)")
        return 1
      }
      let statuses = try await connection.host.statuses()
      print("cluster \(map.cluster): \(counted(map.members.count, "member")), \(counted(map.groups.count, "group"))")
      for group in map.groups {
        let reports = statuses.filter { $0.group == group.id }
        let leader = reports.filter(\.isLeader).max { $0.epoch < $1.epoch }
        print(
          "\ngroup \(group.name) (\(group.id), \(group.engine), services \(group.services.joined(separator: ","))): "
            + "leader \(leader.map { "\($0.node)" } ?? "unknown"), term \(reports.map(\.epoch).max() ?? 0), "
            + "voters \((leader?.voters ?? group.members).map(\.description).joined(separator: ","))"
            + ((leader?.learners.isEmpty ?? true)
              ? "" : ", learners \(leader?.learners.map(\.description).joined(separator: ",") ?? "")"))
        // `refused`: peer messages the member dropped as impossible from an honest peer (a faulty or
        // incompatible member sends them).
        print(row(["member", "address", "role", "term", "commit", "applied", "last", "lag", "refused"]))
        // With a leader, its configuration says who is in the group: a founding member removed since is listed
        // as removed (its replica may still run until the group is forgotten there).
        let configured = leader.map { Set($0.voters + $0.learners) }
        for member in Set(group.members + (leader?.voters ?? []) + (leader?.learners ?? [])).sorted() {
          let address = map.members[member] ?? "?"
          if let configured, !configured.contains(member) {
            print(row(["\(member)", address, "removed", "", "", "", "", "-"]))
            continue
          }
          guard let s = reports.first(where: { $0.node == member }) else {
            let lag = leader?.peers.first { $0.node == member }.map { "\($0.lag)" } ?? "?"
            print(row(["\(member)", address, "unreachable", "", "", "", "", lag]))
            continue
          }
          let lag = leader?.peers.first { $0.node == s.node }.map { "\($0.lag)" } ?? (s.isLeader ? "-" : "?")
          print(
            row([
              "\(s.node)", address, s.role, "\(s.epoch)", "\(s.commitIndex)", "\(s.appliedIndex)", "\(s.lastIndex)",
              lag, "\(s.refusedMessages)",
            ]))
        }
        for peer in leader?.peers ?? [] where peer.note != nil {
          print("  \(peer.node): \(peer.note ?? "")")
        }
        if group.services.contains(LockService.name) {
          print(await LockCommands.summary(group: group.id, host: connection.host))
        }
      }
      await TxnCommands.printStatusSection(connection.host, map: map)
      return 0
    } catch let error as CLIError {
      printError("quorum status: \(error)")
      return 2
    } catch {
      printError("quorum status: \(error)")
      return 1
    }
  }

  /// A table row: each cell padded to its column (one space after a cell as wide or wider), without trailing
  /// spaces (a row with fewer cells, or empty last cells, ends at its last text).
  static func row(_ cells: [String]) -> String {
    let widths = [7, 22, 10, 6, 9, 9, 9, 6, 7]
    var line = cells.enumerated().map { index, cell in
      index < widths.count && cell.count < widths[index]
        ? cell + String(repeating: " ", count: widths[index] - cell.count) : cell + " "
    }.joined()
    while line.hasSuffix(" ") { line.removeLast() }
    return line
  }

  static func members(_ arguments: [String]) async -> Int32 {
    if arguments.contains("--help") || arguments.contains("-h") {
      print(membersUsage)
      return 0
    }
    var options = Options(arguments)
    do {
      let target = try ClusterTarget.parse(&options)
      let groupName = try options.value("--group")
      try options.rejectUnknown()
      let words = options.words
      guard words.count == 2, let node = NodeID(words[1]) else { throw CLIError.usage(membersUsage) }
      let operation: MembershipOperation
      switch words[0] {
      case "add": operation = .addLearner(node)
      case "promote": operation = .addVoter(node)
      case "remove": operation = .remove(node)
      default: throw CLIError.usage(membersUsage)
      }
      let connection = client(target, timeout: .seconds(10))
      defer { Task { await connection.close() } }
      let map = try await connection.host.clusterMap()
      guard let group = groupName.map({ name in map.groups.first { $0.name == name } }) ?? map.groups.first else {
        throw CLIError.usage(
          "no group named \(groupName ?? "?") (groups: \(map.groups.map(\.name).joined(separator: ", ")))")
      }
      try await connection.host.changeMembership(operation, group: group.id)
      print("ok: \(group.name): \(operation)")
      return 0
    } catch let error as CLIError {
      printError("quorum members: \(error)")
      if case .usage = error { return 2 }
      return 1
    } catch {
      printError("quorum members: \(error)")
      return 1
    }
  }
}
