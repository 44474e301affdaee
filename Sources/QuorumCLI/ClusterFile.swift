import Foundation
import Quorum

/// A cluster file: the cluster id and every member's address, as JSON.
///
/// ```json
/// { "cluster": "orders",
///   "members": { "n1": "127.0.0.1:7001", "n2": "127.0.0.1:7002", "n3": "127.0.0.1:7003" } }
/// ```
struct ClusterFile: Equatable {
  var cluster: ClusterID
  var members: [NodeID: TCPAddress]

  private struct Raw: Decodable {
    var cluster: String
    var members: [String: String]
  }

  /// Reads and validates `path`; every problem is a `CLIError.failed` naming the file.
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
    return ClusterFile(cluster: ClusterID(rawValue: raw.cluster), members: members)
  }

  /// Writes the file atomically (for tests and tools).
  func write(to path: String) throws {
    var members: [String: String] = [:]
    for (id, address) in self.members { members[id.description] = address.description }
    let object: [String: Any] = ["cluster": cluster.rawValue, "members": members]
    let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
    try data.write(to: URL(fileURLWithPath: path), options: .atomic)
  }
}

/// Where a client command finds the cluster: `--cluster host:port,…` or `--cluster-file FILE`, plus
/// `--cluster-id ID` (taken from the file when there is one).
struct ClusterTarget {
  var cluster: ClusterID
  var addresses: [TCPAddress]
  var members: [NodeID: TCPAddress]

  static func parse(_ options: inout Options) throws -> ClusterTarget {
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

/// Writes a line to standard output at once (unbuffered), so a parent process sees it immediately.
func printOut(_ text: String) {
  FileHandle.standardOutput.write(Data((text + "\n").utf8))
}
