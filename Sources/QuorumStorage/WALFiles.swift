import Glibc
import QuorumCore

/// File-level pieces every write-ahead log in this module shares: segment names, the segment listing and the
/// directory lock.
enum WALFiles {
  /// The path of segment `sequence` in `directory`: zero-padded so names sort by number.
  static func segmentPath(_ directory: String, _ sequence: UInt64) -> String {
    let digits = String(sequence)
    return directory + "/" + String(repeating: "0", count: max(0, 20 - digits.count)) + digits + ".wal"
  }

  /// The sequence numbers of the segment files in `directory`, ascending; a missing number in between is
  /// corruption.
  static func listSegments(_ directory: String) throws(StorageError) -> [UInt64] {
    var sequences: [UInt64] = []
    for name in try FileSystem.list(directory) where name.hasSuffix(".wal") {
      let digits = name.dropLast(4)
      if !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let sequence = UInt64(digits) {
        sequences.append(sequence)
      }
    }
    sequences.sort()
    for (previous, next) in zip(sequences, sequences.dropFirst()) where next != previous + 1 {
      throw .corruptRecord(
        file: segmentPath(directory, previous + 1), offset: 0,
        reason:
          "segment file missing: found \(segmentPath(directory, previous)) and \(segmentPath(directory, next))")
    }
    return sequences
  }

  /// Locks `directory` (its `LOCK` file, `flock`ed) for this process; throws
  /// ``StorageError/directoryLocked(path:)`` if another holder has it.
  static func lockDirectory(_ directory: String) throws(StorageError) -> PosixFile {
    let path = directory + "/LOCK"
    let file = try PosixFile.open(path, flags: O_RDWR | O_CREAT)
    // A flock belongs to the open file description, which a child process shares from the moment it is forked
    // until it execs (O_CLOEXEC closes it only then). So a process that spawns a child just as a previous
    // instance closes the directory can hold the lock for a moment after the close: try again for a little
    // while before calling the directory locked.
    var attempts = 0
    while flock(file.fd, LOCK_EX | LOCK_NB) != 0 {
      let code = errno
      if code == EINTR { continue }
      if code == EWOULDBLOCK && attempts < 20 {
        attempts += 1
        // At most 100 ms in all: on the storage's own queue, or making a GroupHost (its identity check), which the
        // Quorum module does off the cooperative pool.
        usleep(5_000)
        continue
      }
      file.close()
      if code == EWOULDBLOCK { throw .directoryLocked(path: directory) }
      throw ioError("flock", path, code)
    }
    return file
  }

  /// The error for segment `path`, which holds no valid segment header (it is empty, all zeros, or its header
  /// is damaged with nothing valid after it). Every segment is created with its header synced before it is
  /// renamed into place (under a policy that syncs), so a segment without one lost synced data: a disk or file
  /// system fault, or a file truncated by hand.
  static func missingHeader(_ path: String, lastSegment: Bool) -> StorageError {
    .corruptRecord(
      file: path, offset: 0,
      reason:
        "no valid segment header (the file is empty, all zeros, or its header is damaged); segments are created "
        + "with their header synced, so data the log had synced was lost (disk or file-system fault): rebuild this "
        + "node's storage from its replicas"
        + (lastSegment
          ? ". If the log was last written under the fsync policy never, a crash can leave its newest segment "
            + "unfinished: open it once under that policy, which removes the segment" : ""))
  }

  /// Cuts a torn tail off the last segment (zeros over it where the file is preallocated past it, otherwise a
  /// truncation), records it in `report`, and returns the segment open for appending, synced if `sync`, with
  /// where the next append goes (after a filler record when the valid records end in the last bytes of a sector:
  /// ``WALFormat/needsFiller(endingAt:)``).
  /// A segment without a valid header is corruption if `sync` (see ``missingHeader(_:lastSegment:)``); otherwise
  /// (a policy that never syncs, whose crash can leave a segment's creation unfinished) it is removed, recorded
  /// in `report` and logged, and the result is `nil`.
  ///
  /// The records recovery read may have been only in the page cache, after a process crash: syncing them before
  /// anything is appended after them makes the sync marker that starts the first append (``WALActiveSegment``)
  /// true. (After a failed sync, Linux may have marked pages clean that never reached the disk, and no later
  /// sync writes them; the marker then overstates, which can only make a recovery refuse the damage, never
  /// cut it.) `onDataSync` counts the sync.
  static func repair(
    _ tail: WALTail, sync: Bool, report: inout RecoveryReport, logger: QuorumLogger, onDataSync: () -> Void
  ) throws(StorageError) -> (file: PosixFile, end: Int)? {
    if let damage = tail.damage {
      report.truncatedTailBytes = damage.bytes
      report.damageScanBytes = damage.scannedBytes
      report.truncatedFile = tail.path
      report.truncatedOffset = tail.validEnd
      report.truncatedAt = "\(tail.path) at byte \(tail.validEnd)"
      logger.warning(
        "truncated a torn write-ahead-log tail",
        ["file": tail.path, "offset": "\(tail.validEnd)", "bytes": "\(damage.bytes)", "reason": damage.reason])
    }
    if tail.validEnd == 0 {
      // No valid segment header. A segment is renamed into place only after its header was written, and synced
      // unless the policy never syncs: only then can a crash leave it without one (the rename reached the disk,
      // the header did not). Under a syncing policy synced data was lost.
      if sync { throw missingHeader(tail.path, lastSegment: true) }
      report.removedUnfinishedSegment = tail.path
      logger.warning(
        "removed a last segment without a valid header: its creation was unfinished when the process stopped",
        ["file": tail.path, "bytes": "\(tail.damage?.bytes ?? 0)"])
      try FileSystem.remove(tail.path)
      return nil
    }
    let file = try PosixFile.open(tail.path, flags: O_RDWR)
    var end = tail.validEnd
    do throws(StorageError) {
      if let damage = tail.damage {
        if tail.fileSize > damage.end {
          try file.writeZeros(tail.validEnd..<damage.end)  // keep the preallocated zeros after it
        } else {
          try file.truncate(to: tail.validEnd)
        }
      }
      // The next append starts here: never in the last bytes of a sector (a segment that pads them).
      if tail.version >= 3 && WALFormat.needsFiller(endingAt: end) {
        try file.write(WALFormat.fillerRecord, at: end)
        end += WALFormat.fillerRecord.count
      }
      if sync {
        try file.dataSync()
        onDataSync()
      }
    } catch {
      file.close()
      throw error
    }
    return (file, end)
  }
}

extension SnapshotFile {
  /// The newest valid snapshot in `directory`, and the damaged newer ones passed over ("path: reason"),
  /// newest first.
  static func loadNewest(
    in directory: String, logger: QuorumLogger
  ) throws(StorageError) -> (Loaded?, [(path: String, reason: String)]) {
    let indexes = try FileSystem.list(directory).compactMap { index(inFileName: $0) }
    var rejected: [(path: String, reason: String)] = []
    for index in indexes.sorted(by: >) {
      let path = directory + "/" + fileName(index: index)
      do throws(StorageError) {
        return (try read(path, expectedIndex: index), rejected)
      } catch {
        guard case .corruptSnapshot(_, let reason) = error else { throw error }
        logger.error("damaged snapshot file", ["file": path, "reason": reason])
        rejected.append((path, reason))
      }
    }
    return (nil, rejected)
  }

  /// Keeps the newest two snapshot files in `directory`, and prunes the damaged ones set aside
  /// (``pruneSetAside(_:logger:)``). A failure only leaves an extra file behind, so it is logged.
  static func prune(_ directory: String, logger: QuorumLogger) {
    do throws(StorageError) {
      let indexes = try FileSystem.list(directory).compactMap { index(inFileName: $0) }
      for index in indexes.sorted(by: >).dropFirst(2) {
        try FileSystem.remove(directory + "/" + fileName(index: index))
      }
    } catch {
      logger.warning("could not delete an old snapshot", ["error": "\(error)"])
    }
    pruneSetAside(directory, logger: logger)
  }

  /// What a damaged snapshot set aside by recovery is renamed with (after its `.snap`).
  static let setAsideSuffix = ".corrupt"

  /// Sets the damaged snapshots `rejected` aside (renamed with ``setAsideSuffix``, for an operator to inspect),
  /// records them in `report` and logs them, then prunes the set-aside files (``pruneSetAside(_:logger:)``).
  static func setAside(
    _ rejected: [(path: String, reason: String)], in directory: String, recoveredAt snapshotIndex: UInt64,
    report: inout RecoveryReport, logger: QuorumLogger
  ) throws(StorageError) {
    for (path, reason) in rejected {
      try FileSystem.rename(path, path + setAsideSuffix)
      report.rejectedSnapshots.append("\(path): \(reason)")
      logger.warning(
        "set aside a damaged snapshot; recovering from an older one and the log",
        ["file": path, "reason": reason, "snapshot": "\(snapshotIndex)"])
    }
    if !rejected.isEmpty { pruneSetAside(directory, logger: logger) }
  }

  /// Deletes the damaged snapshots set aside in `directory` that no longer need keeping: each is a whole copy of
  /// the state, and counts against a space quota. Only the newest is kept, and only until a snapshot at or past
  /// its index is stored. A failure only leaves an extra file behind, so it is logged.
  static func pruneSetAside(_ directory: String, logger: QuorumLogger) {
    do throws(StorageError) {
      let names = try FileSystem.list(directory)
      let newestStored = names.compactMap { index(inFileName: $0) }.max() ?? 0
      let setAside = names.compactMap { name -> (name: String, index: UInt64)? in
        guard name.hasSuffix(setAsideSuffix) else { return nil }
        return index(inFileName: String(name.dropLast(setAsideSuffix.count))).map { (name, $0) }
      }.sorted { $0.index > $1.index }
      for (slot, file) in setAside.enumerated() where slot > 0 || file.index <= newestStored {
        try FileSystem.remove(directory + "/" + file.name)
        logger.info(
          "deleted a damaged snapshot set aside earlier",
          ["file": directory + "/" + file.name, "newest snapshot": "\(newestStored)"])
      }
    } catch {
      logger.warning("could not delete a damaged snapshot set aside", ["error": "\(error)"])
    }
  }
}
