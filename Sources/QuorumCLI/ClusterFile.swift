import Foundation
import Quorum

/// A cluster file: the cluster id, every member's address and, optionally, the groups, as JSON.
///
/// ```json
/// { "cluster": "orders",
///   "members": { "n1": "127.0.0.1:7001", "n2": "127.0.0.1:7002", "n3": "127.0.0.1:7003" },
///   "groups": [
///     { "name": "accounts", "engine": "raft", "services": ["kv", "locks", "txn"], "slots": "0-2047" },
///     { "name": "audit", "engine": "multi-paxos", "members": ["n1", "n2", "n3"], "services": ["kv"] } ] }
/// ```
///
/// Without `groups` the cluster has one Raft group on every member carrying `kv`, `locks` and `txn` (the
/// transactional store), and so does a group that names no `services`. A group's `members` default to every
/// member, its `id` to its position (1, 2, …), its `slots` to an even share.
struct ClusterFile: Equatable {
  var cluster: ClusterID
  var members: [NodeID: TCPAddress]
  var groups: [GroupSpec] = []

  private struct RawGroup: Decodable {
    var name: String
    var id: UInt64?
    var engine: String?
    var members: [String]?
    var services: [String]?
    var slots: String?
  }

  private struct Raw: Decodable {
    var cluster: String
    var members: [String: String]
    var groups: [RawGroup]?
  }

  /// Reads and validates `path`; every problem is a `CLIError.failed` naming the file (and the line of a bad
  /// group).
  static func load(_ path: String) throws -> ClusterFile {
    let data: Data
    do {
      data = try Data(contentsOf: URL(fileURLWithPath: path))
    } catch {
      throw CLIError.failed("cannot read the cluster file \(path): \(error.localizedDescription)")
    }
    let raw: Raw
    do {
      raw = try JSONDecoder().decode(Raw.self, from: data)
    } catch {
      throw CLIError.failed(
        "bad cluster file \(path): expected {\"cluster\": \"name\", \"members\": {\"n1\": \"host:port\", …}} (\(error))"
      )
    }
    guard !raw.cluster.isEmpty else { throw CLIError.failed("bad cluster file \(path): empty cluster id") }
    guard !raw.members.isEmpty else { throw CLIError.failed("bad cluster file \(path): no members") }
    var members: [NodeID: TCPAddress] = [:]
    for (name, text) in raw.members {
      guard let id = NodeID(name) else {
        throw CLIError.failed("bad cluster file \(path): '\(name)' is not a node id (n1, n2, …)")
      }
      do {
        members[id] = try TCPAddress.parse(text)
      } catch {
        throw CLIError.failed("bad cluster file \(path): member \(name): \(error)")
      }
    }
    let lines = text(of: data)
    var groups: [GroupSpec] = []
    var searchFrom = lines.firstIndex { $0.contains("\"groups\"") } ?? 0
    for (position, group) in (raw.groups ?? []).enumerated() {
      // The group's line: where its name is given, after the previous group's.
      let groupLine = groupLineIndex(named: group.name, in: lines, from: searchFrom)
      if let groupLine { searchFrom = groupLine + 1 }
      /// The error for this group, naming the line of `field` (the first line from the group's own that holds
      /// it, else the group's line).
      func bad(_ reason: String, at field: String? = nil) -> CLIError {
        let line = field.flatMap { lineIndex(of: $0, in: lines, from: groupLine ?? 0) } ?? groupLine
        return CLIError.failed(
          "bad cluster file \(path): \(line.map { "line \($0 + 1), " } ?? "")group \"\(group.name)\": \(reason)")
      }
      let engineText = group.engine ?? "raft"
      guard let engine = EngineKind(rawValue: engineText) else {
        throw bad("engine \"\(engineText)\" (expected raft or multi-paxos)", at: "\"\(engineText)\"")
      }
      var groupMembers: [NodeID] = []
      for name in group.members ?? members.keys.sorted().map(\.description) {
        guard let id = NodeID(name) else { throw bad("'\(name)' is not a node id", at: "\"\(name)\"") }
        guard members[id] != nil else {
          throw bad(
            "member \(name) is not in \"members\" (members: \(members.keys.sorted().map(\.description).joined(separator: ", ")))",
            at: "\"\(name)\"")
        }
        groupMembers.append(id)
      }
      var slots: [SlotRange] = []
      for part in (group.slots ?? "").split(separator: ",") {
        // Empty bounds kept, so that "2048-" or "-5" is refused rather than read as one slot.
        let texts = part.split(separator: "-", omittingEmptySubsequences: false)
        let bounds = texts.compactMap { UInt16($0.trimmingCharacters(in: .whitespaces)) }
        guard (1...2).contains(bounds.count), texts.count == bounds.count,
          bounds[0] <= bounds[bounds.count - 1]
        else {
          throw bad("slots \"\(part)\" (expected ranges like 0-2047,3000-3100)", at: "\"slots\"")
        }
        slots.append(SlotRange(bounds[0], bounds[bounds.count - 1]))
      }
      groups.append(
        GroupSpec(
          id: GroupID(rawValue: group.id ?? UInt64(position + 1)), name: group.name, engine: engine,
          members: groupMembers, services: group.services ?? Cluster.defaultServices, slots: slots))
    }
    var addresses: [NodeID: String] = [:]
    for (id, address) in members { addresses[id] = address.description }
    if !groups.isEmpty {
      do {
        try ClusterMap(cluster: ClusterID(rawValue: raw.cluster), members: addresses, groups: groups)
          .validate(knownServices: ServiceCatalog.standard.names)
      } catch {
        let name = error.subject.hasPrefix("group ") ? String(error.subject.dropFirst(6)) : ""
        let line = groupLineIndex(named: name, in: lines, from: 0).map { "line \($0 + 1): " } ?? ""
        throw CLIError.failed("bad cluster file \(path): \(line)\(error)")
      }
    }
    return ClusterFile(cluster: ClusterID(rawValue: raw.cluster), members: members, groups: groups)
  }

  private static func text(of data: Data) -> [Substring] {
    String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
  }

  /// The index of the line from `start` on that holds `needle`, if one does.
  private static func lineIndex(of needle: String, in lines: [Substring], from start: Int) -> Int? {
    guard start < lines.count else { return nil }
    return lines[start...].firstIndex { $0.contains(needle) }
  }

  /// The index of the line, from `start` on, where a group's `"name"` is `name`: a line holding both `"name"`
  /// and `"<name>"` (so that a group named like a member or a service is not found in their lines), else the
  /// first line holding `"<name>"`.
  private static func groupLineIndex(named name: String, in lines: [Substring], from start: Int) -> Int? {
    guard !name.isEmpty, start < lines.count else { return nil }
    let quoted = "\"\(name)\""
    return lines[start...].firstIndex { $0.contains("\"name\"") && $0.contains(quoted) }
      ?? lineIndex(of: quoted, in: lines, from: start)
  }

  /// Writes the file atomically (for tests and tools).
  func write(to path: String) throws {
    var members: [String: String] = [:]
    for (id, address) in self.members { members[id.description] = address.description }
    var object: [String: Any] = ["cluster": cluster.rawValue, "members": members]
    if !groups.isEmpty {
      object["groups"] = groups.map { group -> [String: Any] in
        var entry: [String: Any] = [
          "name": group.name, "id": group.id.rawValue, "engine": group.engine.rawValue,
          "members": group.members.map(\.description), "services": group.services,
        ]
        if !group.slots.isEmpty { entry["slots"] = group.slots.map(\.description).joined(separator: ",") }
        return entry
      }
    }
    let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
    try data.write(to: URL(fileURLWithPath: path), options: .atomic)
  }
}

/// Where a client command finds the cluster: `--cluster host:port,…` or `--cluster-file FILE`, plus
/// `--cluster-id ID` (taken from the file when there is one), and `--credential NAME:FILE` for a cluster that
/// authenticates its clients.
struct ClusterTarget {
  var cluster: ClusterID
  var addresses: [TCPAddress]
  var members: [NodeID: TCPAddress]
  var credential: TCPClientCredential? = nil

  static func parse(_ options: inout Options) throws -> ClusterTarget {
    var target = try parseAddresses(&options)
    if let text = try options.value("--credential") {
      guard let colon = text.firstIndex(of: ":"), colon != text.startIndex, text.index(after: colon) != text.endIndex
      else {
        throw CLIError.usage("--credential \(text): expected NAME:SECRET-FILE")
      }
      do {
        target.credential = try TCPClientCredential(
          name: String(text[..<colon]), secretFile: String(text[text.index(after: colon)...]))
      } catch {
        throw CLIError.failed("--credential: \(error)")
      }
    }
    return target
  }

  private static func parseAddresses(_ options: inout Options) throws -> ClusterTarget {
    let explicitID = try options.value("--cluster-id")
    if let path = try options.value("--cluster-file") {
      let file = try ClusterFile.load(path)
      if let explicitID, explicitID != file.cluster.rawValue {
        throw CLIError.usage("--cluster-id \(explicitID) contradicts the cluster file's '\(file.cluster)'")
      }
      return ClusterTarget(
        cluster: file.cluster, addresses: file.members.keys.sorted().compactMap { file.members[$0] },
        members: file.members)
    }
    guard let list = try options.value("--cluster") else {
      throw CLIError.usage("give the cluster with --cluster host:port[,host:port…] or --cluster-file FILE")
    }
    var addresses: [TCPAddress] = []
    for item in list.split(separator: ",") {
      do {
        addresses.append(try TCPAddress.parse(String(item)))
      } catch {
        throw CLIError.usage("--cluster: \(error)")
      }
    }
    return ClusterTarget(cluster: ClusterID(rawValue: explicitID ?? "quorum"), addresses: addresses, members: [:])
  }
}

/// A minimal option scanner: `--name value` pairs and positional words.
struct Options {
  private(set) var words: [String]

  init(_ arguments: [String]) { words = arguments }

  /// Removes `--name value` and returns the value (`nil` if absent).
  mutating func value(_ name: String) throws -> String? {
    guard let index = words.firstIndex(of: name) else { return nil }
    guard index + 1 < words.count else { throw CLIError.usage("\(name) needs a value") }
    let value = words[index + 1]
    words.removeSubrange(index...(index + 1))
    return value
  }

  /// Removes `--name MS` and returns it as a duration (`defaultMillis` if absent); a value that is not a positive
  /// number of milliseconds is a usage error.
  mutating func milliseconds(_ name: String, default defaultMillis: Int) throws -> Duration {
    guard let text = try value(name) else { return .milliseconds(defaultMillis) }
    guard let millis = Int(text), millis > 0 else {
      throw CLIError.usage("\(name) \(text): expected a positive number of milliseconds")
    }
    return .milliseconds(millis)
  }

  /// Removes a flag and returns whether it was present.
  mutating func flag(_ name: String) -> Bool {
    guard let index = words.firstIndex(of: name) else { return false }
    words.remove(at: index)
    return true
  }

  /// Fails if any `--option` is left over.
  func rejectUnknown() throws {
    if let unknown = words.first(where: { $0.hasPrefix("--") }) { throw CLIError.usage("unknown option \(unknown)") }
  }
}

/// Writes a line to standard error.
func printError(_ text: String) {
  FileHandle.standardError.write(Data((text + "\n").utf8))
}

/// `count` and `noun`, the noun in the plural unless the count is one ("1 group", "3 groups").
func counted(_ count: Int, _ noun: String) -> String { "\(count) \(noun)\(count == 1 ? "" : "s")" }

/// Writes a line to standard output at once (unbuffered), so a parent process sees it immediately.
func printOut(_ text: String) {
  FileHandle.standardOutput.write(Data((text + "\n").utf8))
}
