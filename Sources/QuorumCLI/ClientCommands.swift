import Foundation
import Quorum

/// `quorum kv`, `quorum status` and `quorum members`: client commands against a running TCP cluster.
enum ClientCommands {
  static let kvUsage = """
    usage: quorum kv put KEY VALUE | get KEY [--consistency linearizable|lease|stale] | delete KEY
                   | cas KEY EXPECTED NEW      (write - for "absent")
           (--cluster host:port[,host:port…] [--cluster-id ID] | --cluster-file FILE) [--timeout-ms 5000]
    """

  static let statusUsage = """
    usage: quorum status (--cluster host:port[,…] [--cluster-id ID] | --cluster-file FILE)
      Shows every member's role, term, commit and applied index, and the leader's per-peer lag.
    """

  static let membersUsage = """
    usage: quorum members add NODE | promote NODE | remove NODE
           (--cluster host:port[,…] [--cluster-id ID] | --cluster-file FILE)
      add: join as a learner (receives the log, does not vote); promote: make a voter; remove: leave.
      A new member's address must be in every member's cluster file first (members re-read it).
    """

  static func client(_ target: ClusterTarget, timeout: Duration) -> TCPKVClient {
    TCPKVClient(
      cluster: target.cluster, members: target.addresses,
      retry: RetryPolicy(maxAttempts: 12, initialBackoff: .milliseconds(20), maxBackoff: .milliseconds(500)),
      requestTimeout: timeout, seed: UInt64(truncatingIfNeeded: getpid()))
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
      let timeout = Duration.milliseconds(Int(try options.value("--timeout-ms") ?? "5000") ?? 5000)
      let consistencyText = try options.value("--consistency") ?? "linearizable"
      guard let consistency = ReadConsistency(rawValue: consistencyText) else {
        throw CLIError.usage("--consistency \(consistencyText): expected linearizable, lease or stale")
      }
      try options.rejectUnknown()
      let words = options.words
      let client = client(target, timeout: timeout)
      defer { Task { await client.close() } }
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
        let swapped = try await client.compareAndSwap(words[1], expected: value(words[2]), new: value(words[3]))
        print(swapped ? "swapped" : "not swapped")
        await client.close()
        return swapped ? 0 : 3
      default:
        throw CLIError.usage(kvUsage)
      }
      await client.close()
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
      let client = client(target, timeout: .seconds(2))
      var statuses: [(TCPAddress, Result<MemberStatus, any Error>)] = []
      var queue = target.addresses
      var seen = Set<TCPAddress>()
      while let address = queue.first {
        queue.removeFirst()
        guard seen.insert(address).inserted else { continue }
        do {
          let status = try await client.status(of: address)
          statuses.append((address, .success(status)))
          // Members a reachable member knows of are shown too.
          for (_, other) in status.addresses.sorted(by: { $0.key < $1.key }) where !seen.contains(other) {
            queue.append(other)
          }
        } catch {
          statuses.append((address, .failure(error)))
        }
      }
      await client.close()
      let reachable = statuses.compactMap { try? $0.1.get() }
      guard !reachable.isEmpty else {
        printError(
          "quorum status: no member reachable at \(target.addresses.map(\.description).joined(separator: ", "))")
        for (address, result) in statuses {
          if case .failure(let error) = result { printError("  \(address): \(error)") }
        }
        return 1
      }
      let leader = reachable.first { $0.role == "leader" }
      let term = reachable.map(\.term).max() ?? 0
      print(
        "cluster \(target.cluster): leader \(leader.map { "\($0.node)" } ?? "unknown"), term \(term), "
          + "voters \(leader?.voters.map(\.description).joined(separator: ",") ?? "?")"
          + ((leader?.learners.isEmpty ?? true)
            ? "" : ", learners \(leader?.learners.map(\.description).joined(separator: ",") ?? "")"))
      print(row(["member", "address", "role", "term", "commit", "applied", "last", "lag"]))
      for (address, result) in statuses {
        switch result {
        case .success(let s):
          let lag = leader?.peers.first { $0.node == s.node }.map { "\($0.lag)" } ?? (s.role == "leader" ? "-" : "?")
          print(
            row([
              "\(s.node)", "\(address)", s.role, "\(s.term)", "\(s.commitIndex)", "\(s.appliedIndex)", "\(s.lastIndex)",
              lag,
            ]))
        case .failure(let error):
          print(row(["?", "\(address)", "unreachable: \(error)"]))
        }
      }
      if let leader {
        for peer in leader.peers where !reachable.contains(where: { $0.node == peer.node }) {
          print(row(["\(peer.node)", "?", "(per leader)", "", "\(peer.match)", "", "", "\(peer.lag)"]))
        }
      }
      return 0
    } catch let error as CLIError {
      printError("quorum status: \(error)")
      return 2
    } catch {
      printError("quorum status: \(error)")
      return 1
    }
  }

  static func row(_ cells: [String]) -> String {
    let widths = [7, 22, 10, 6, 9, 9, 9, 6]
    return cells.enumerated().map { index, cell in
      index < widths.count - 1 && cell.count < widths[index]
        ? cell + String(repeating: " ", count: widths[index] - cell.count) : cell + " "
    }.joined()
  }

  static func members(_ arguments: [String]) async -> Int32 {
    if arguments.contains("--help") || arguments.contains("-h") {
      print(membersUsage)
      return 0
    }
    var options = Options(arguments)
    do {
      let target = try ClusterTarget.parse(&options)
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
      let client = client(target, timeout: .seconds(10))
      try await client.changeMembership(operation)
      await client.close()
      print("ok: \(operation)")
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
