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

  /// Reads and validates `path`; every problem is a `CLIError.failed` naming the file and the line.
  ///
  /// The file is read strictly: a field that is not one of the known ones (a misspelling would otherwise fall
  /// back to a default that the group's identity then fixes), a name given twice in one object, two spellings of
  /// one member (`"n1"` and `"n01"`) and two members at one address (other than port 0, "not known yet") are
  /// refused. `null` in an optional field means "absent"; a file over ``maxBytes`` is refused unread.
  /// The largest cluster file read (1 MiB): thousands of members and groups fit many times over.
  static let maxBytes = 1 << 20

  static func load(_ path: String) throws -> ClusterFile {
    let data: Data
    do {
      // At most one byte past the cap, so that /dev/zero or a runaway generator is refused, not read for ever.
      let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
      defer { try? handle.close() }
      data = try handle.read(upToCount: maxBytes + 1) ?? Data()
    } catch {
      throw CLIError.failed("cannot read the cluster file \(path): \(error.localizedDescription)")
    }
    guard data.count <= maxBytes else {
      throw CLIError.failed("bad cluster file \(path): larger than \(maxBytes / 1024 / 1024) MiB")
    }
    let root: PositionedJSON
    do {
      root = try PositionedJSON.parse(data)
    } catch {
      throw CLIError.failed("bad cluster file \(path): \(error)")
    }
    let file = FileReader(path: path)
    let top = try file.fields(of: root, in: nil, known: ["cluster", "members", "groups"], optional: ["groups"])
    guard let clusterField = top["cluster"] else {
      throw file.bad(
        root.line, nil, "no \"cluster\" (expected {\"cluster\": \"name\", \"members\": {\"n1\": \"host:port\", …}})")
    }
    let cluster = try file.string(clusterField, in: nil)
    guard !cluster.isEmpty else { throw file.bad(clusterField.line, nil, "empty cluster id") }
    guard let membersField = top["members"] else {
      throw file.bad(root.line, nil, "no \"members\" (expected \"members\": {\"n1\": \"host:port\", …})")
    }
    guard case .object(let entries) = membersField.value.value else {
      throw file.bad(membersField.value.line, nil, "\"members\" must be an object, not \(membersField.value.kind)")
    }
    guard !entries.isEmpty else { throw file.bad(membersField.line, nil, "no members") }
    var members: [NodeID: TCPAddress] = [:]
    var spellings: [NodeID: PositionedJSON.Field] = [:]
    var holders: [TCPAddress: NodeID] = [:]
    for entry in entries {
      guard let id = NodeID(entry.name) else {
        throw file.bad(entry.line, nil, "'\(entry.name)' is not a node id (n1, n2, …)")
      }
      if let first = spellings[id] {
        throw file.bad(
          entry.line, nil,
          "members \"\(first.name)\" (line \(first.line)) and \"\(entry.name)\" are the same node \(id); list it once")
      }
      spellings[id] = entry
      let address: TCPAddress
      do {
        address = try TCPAddress.parse(try file.string(entry, in: nil))
      } catch let error as CLIError {
        throw error
      } catch {
        throw file.bad(entry.value.line, nil, "member \(entry.name): \(error)")
      }
      if address.port != 0, let holder = holders[address] {
        throw file.bad(
          entry.value.line, nil,
          "members \(holder) and \(id) have the same address \(address) (if \(id) replaces \(holder), remove "
            + "\(holder)'s line first: nothing needs a dead member's address)")
      }
      holders[address] = id
      members[id] = address
    }
    var groupsList: [PositionedJSON] = []
    let groupsLine = top["groups"]?.line
    if let groupsField = top["groups"] {
      guard case .array(let elements) = groupsField.value.value else {
        throw file.bad(
          groupsField.value.line, nil, "\"groups\" must be a list of objects, not \(groupsField.value.kind)")
      }
      groupsList = elements
    }
    var groups: [GroupSpec] = []
    // Each group's lines by name (where its name is given, and each field), for the errors found when validating
    // the whole map.
    var groupLines: [String: (name: Int, fields: [String: Int])] = [:]
    for (position, node) in groupsList.enumerated() {
      let (group, lines) = try file.group(node, position: position, members: members)
      if let first = groupLines[group.name] {
        throw file.bad(lines.name, "group \"\(group.name)\"", "the name is used twice (first on line \(first.name))")
      }
      groupLines[group.name] = lines
      groups.append(group)
    }
    var addresses: [NodeID: String] = [:]
    for (id, address) in members { addresses[id] = address.description }
    if !groups.isEmpty {
      do {
        try ClusterMap(cluster: ClusterID(rawValue: cluster), members: addresses, groups: groups)
          .validate(knownServices: ServiceCatalog.standard.names)
      } catch {
        // The line of the field at fault: of the group's field, else where the group is named. A service's slot
        // gap names the "slots" of the first group carrying it that lists slots, else the "groups" line.
        var line: Int?
        if error.subject.hasPrefix("group "), let lines = groupLines[String(error.subject.dropFirst(6))] {
          line = error.field.flatMap { lines.fields[$0] } ?? lines.name
        } else if error.subject.hasPrefix("service ") {
          let service = String(error.subject.dropFirst(8))
          line =
            groups.lazy.filter { $0.services.contains(service) }.compactMap { groupLines[$0.name]?.fields["slots"] }
            .first ?? groupsLine
        }
        throw CLIError.failed("bad cluster file \(path): \(line.map { "line \($0): " } ?? "")\(error)")
      }
    }
    return ClusterFile(cluster: ClusterID(rawValue: cluster), members: members, groups: groups)
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

/// Turns a cluster file's JSON into typed values, every error naming the file and the line.
private struct FileReader {
  var path: String

  /// A name from the file as an error message shows it: at most 64 characters.
  static func shown(_ name: String) -> String { name.count <= 64 ? name : name.prefix(64) + "…" }

  /// The error `reason` at `line`, about `context` (a group) if given.
  func bad(_ line: Int, _ context: String?, _ reason: String) -> CLIError {
    .failed("bad cluster file \(path): line \(line)\(context.map { ", \($0)" } ?? ""): \(reason)")
  }

  /// The fields of `node`, which must be an object, by name; a field not in `known` is refused, with the closest
  /// known name as a suggestion.
  func fields(of node: PositionedJSON, in context: String?, known: [String], optional: Set<String> = [])
    throws -> [String: PositionedJSON.Field]
  {
    guard case .object(let list) = node.value else {
      throw bad(node.line, context, "expected an object {…}, not \(node.kind)")
    }
    var fields: [String: PositionedJSON.Field] = [:]
    for field in list {
      guard known.contains(field.name) else {
        // A hint only for a name near a known one in length: the distance costs the product of the lengths.
        let near = field.name.count <= 64 ? known.filter { abs($0.count - field.name.count) <= 2 } : []
        let closest = near.map { (name: $0, distance: editDistance(field.name, $0)) }.min { $0.distance < $1.distance }
        let hint =
          closest.flatMap { $0.distance <= 2 ? "did you mean \"\($0.name)\"?" : nil }
          ?? "known fields: \(known.joined(separator: ", "))"
        throw bad(field.line, context, "unknown field \"\(Self.shown(field.name))\" (\(hint))")
      }
      // `null` for an optional field means "absent", as JSON generators write it; `optional` lists them.
      if case .null = field.value.value, optional.contains(field.name) { continue }
      fields[field.name] = field
    }
    return fields
  }

  func string(_ field: PositionedJSON.Field, in context: String?) throws -> String {
    guard case .string(let text) = field.value.value else {
      throw bad(field.value.line, context, "\"\(field.name)\" must be a string, not \(field.value.kind)")
    }
    return text
  }

  /// A list of strings, each with its line.
  func strings(_ field: PositionedJSON.Field, in context: String?) throws -> [(text: String, line: Int)] {
    guard case .array(let elements) = field.value.value else {
      throw bad(field.value.line, context, "\"\(field.name)\" must be a list of strings, not \(field.value.kind)")
    }
    return try elements.map { element in
      guard case .string(let text) = element.value else {
        throw bad(element.line, context, "\"\(field.name)\" must list strings, not \(element.kind)")
      }
      return (text: text, line: element.line)
    }
  }

  /// The group at `position` in `"groups"` and the lines to name for it: where its name is given, and where each
  /// field's value starts (for a list of services, the first service the map refuses is named by the list's
  /// line).
  func group(_ node: PositionedJSON, position: Int, members: [NodeID: TCPAddress]) throws -> (
    GroupSpec, (name: Int, fields: [String: Int])
  ) {
    // The group is named by its name in errors when it has one, else by its position.
    var context = "group \(position + 1)"
    if case .object(let list) = node.value, let field = list.first(where: { $0.name == "name" }),
      case .string(let name) = field.value.value
    {
      context = "group \"\(name)\""
    }
    let fields = try fields(
      of: node, in: context, known: ["name", "id", "engine", "members", "services", "slots"],
      optional: ["id", "engine", "members", "services", "slots"])
    guard let nameField = fields["name"] else { throw bad(node.line, context, "no \"name\"") }
    let name = try string(nameField, in: context)
    var id = GroupID(rawValue: UInt64(position + 1))
    if let field = fields["id"] {
      // Digits only: `UInt64` would also take "-0" and "+2".
      guard case .number(let text) = field.value.value, text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
        let value = UInt64(text)
      else {
        throw bad(field.value.line, context, "\"id\" must be a whole number from 0 to \(UInt64.max)")
      }
      id = GroupID(rawValue: value)
    }
    var engine = EngineKind.raft
    if let field = fields["engine"] {
      let text = try string(field, in: context)
      guard let kind = EngineKind(rawValue: text) else {
        throw bad(field.value.line, context, "engine \"\(text)\" (expected raft or multi-paxos)")
      }
      engine = kind
    }
    var groupMembers = members.keys.sorted()
    if let field = fields["members"] {
      groupMembers = []
      for (text, line) in try strings(field, in: context) {
        guard let id = NodeID(text) else { throw bad(line, context, "'\(text)' is not a node id") }
        guard members[id] != nil else {
          let known = members.keys.sorted().map(\.description).joined(separator: ", ")
          throw bad(line, context, "member \(text) is not in \"members\" (members: \(known))")
        }
        groupMembers.append(id)
      }
    }
    let services = try fields["services"].map { try strings($0, in: context).map(\.text) } ?? Cluster.defaultServices
    var slots: [SlotRange] = []
    if let field = fields["slots"] {
      for part in try string(field, in: context).split(separator: ",") {
        // Empty bounds kept, so that "2048-" or "-5" is refused rather than read as one slot.
        let texts = part.split(separator: "-", omittingEmptySubsequences: false)
        let bounds = texts.compactMap { UInt16($0.trimmingCharacters(in: .whitespaces)) }
        guard (1...2).contains(bounds.count), texts.count == bounds.count, bounds[0] <= bounds[bounds.count - 1]
        else {
          throw bad(field.value.line, context, "slots \"\(part)\" (expected ranges like 0-2047,3000-3100)")
        }
        slots.append(SlotRange(bounds[0], bounds[bounds.count - 1]))
      }
    }
    let spec = GroupSpec(id: id, name: name, engine: engine, members: groupMembers, services: services, slots: slots)
    var lines: [String: Int] = [:]
    for (field, value) in fields { lines[field] = value.value.line }
    return (spec, (nameField.line, lines))
  }
}

/// The Levenshtein distance between two strings, in characters (for "did you mean" hints on short names).
func editDistance(_ a: String, _ b: String) -> Int {
  let a = Array(a)
  let b = Array(b)
  var previous = Array(0...b.count)
  for (i, character) in a.enumerated() {
    var current = [i + 1]
    for (j, other) in b.enumerated() {
      current.append(min(previous[j + 1] + 1, current[j] + 1, previous[j] + (character == other ? 0 : 1)))
    }
    previous = current
  }
  return previous[b.count]
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
