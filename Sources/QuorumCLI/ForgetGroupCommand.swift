import Foundation
import QuorumCore
import QuorumHost
import QuorumStorage

/// `quorum forget-group`: erases a group this member no longer runs from its shared write-ahead log, offline.
enum ForgetGroupCommand {
  static let usage = """
    usage: quorum forget-group --data DIR --group ID [--fsync always|batch|never]
      --data    the member's data directory (quorum serve's --data)
      --group   the group's number: the "id" of its entry in the cluster file, or its position from 1 (0 for
                the one group of a cluster file without groups); the warning "a group this member no longer
                runs keeps the shared log's oldest segment" names it
      --fsync   as the member was served with (default always)
    Erases the group's records from the shared log and deletes its snapshots and its recorded identity (GROUP),
    so that the log segments it kept on disk can go. Run it with the member stopped (the data directory is
    locked while it serves), and only for a group this member has been removed from (quorum members remove):
    the member's replica of the group is gone afterwards, and a replica that lost its log and its vote must
    not take part in the group again as the same node. A directory with a log per group (--log-layout per-group) keeps each
    group in a directory of its own, to be deleted instead.
    """

  static func run(_ arguments: [String]) async -> Int32 {
    if arguments.contains("--help") || arguments.contains("-h") {
      print(usage)
      return 0
    }
    let data: String
    let group: UInt64
    let fsync: FsyncPolicy
    do {
      var options = Options(arguments)
      guard let dataValue = try options.value("--data") else { throw CLIError.usage("--data is required") }
      guard let groupText = try options.value("--group") else { throw CLIError.usage("--group is required") }
      guard let number = UInt64(groupText) else {
        throw CLIError.usage("--group \(groupText): expected a group number")
      }
      fsync = try ServeCommand.fsyncPolicy(try options.value("--fsync") ?? "always")
      try options.rejectUnknown()
      if let extra = options.words.first { throw CLIError.usage("unexpected argument \(extra)") }
      data = dataValue
      group = number
    } catch {
      printError("quorum forget-group: \(error)\n\(usage)")
      return 2
    }
    switch FileGroupStorage.layoutOnDisk(root: data) {
    case .shared?:
      break
    case .perGroup?:
      printError(
        "quorum forget-group: \(data) keeps a log per group; delete the group's directory instead (named after it)")
      return 1
    case nil:
      printError("quorum forget-group: \(data) holds no write-ahead log")
      return 1
    }
    let log = SharedWriteAheadLog(
      directory: data + "/" + FileGroupStorage.sharedLogName, fsync: fsync, preallocation: .none,
      logger: QuorumLogger(label: "quorum.forget-group"))
    do {
      if try await log.forget(group: group) {
        print("forgot group \(group) in \(data)")
      } else {
        print("group \(group) has nothing in \(data)")
      }
      return 0
    } catch {
      printError("quorum forget-group: \(error)")
      return 1
    }
  }
}
