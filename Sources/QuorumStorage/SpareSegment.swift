import Dispatch
import Glibc
import QuorumCore
import Synchronization

/// Prepares the next log segment in the background: a file of `bytes` zeros, synced, named `spare.ready`.
///
/// Overwriting blocks that were already written (and synced) lets `fdatasync` flush data without
/// allocating blocks or converting unwritten extents, which is markedly faster than appending to a growing or
/// merely `fallocate`d file. Writing 64 MiB of zeros takes tens of milliseconds, so it happens here, on its
/// own queue, long before the active segment fills up.
///
/// Protocol: zeros go to `spare.zeroing`, which is renamed to `spare.ready` only when complete; a segment
/// takes the spare by renaming `spare.ready` away *before* writing into it. So a file named `spare.ready` is
/// always all zeros, and can be kept across restarts.
final class SpareSegment: Sendable {
  /// The file a rotation takes.
  let readyPath: String
  /// The file being filled.
  let partialPath: String
  /// The spare's size.
  let bytes: Int
  private let sync: Bool
  private let logger: QuorumLogger
  private let queue = DispatchQueue(label: "quorum.storage.spare", qos: .utility)
  private let cancelled = Atomic<Bool>(false)

  init(directory: String, bytes: Int, sync: Bool, logger: QuorumLogger) {
    readyPath = directory + "/spare.ready"
    partialPath = directory + "/spare.zeroing"
    self.bytes = bytes
    self.sync = sync
    self.logger = logger
  }

  /// Starts preparing a spare unless one is ready.
  func prepare() {
    queue.async { self.fill() }
  }

  /// Blocks until no preparation is running.
  func waitUntilIdle() {
    queue.sync {}
  }

  /// Stops a running preparation and waits for it to end.
  func cancel() {
    cancelled.store(true, ordering: .relaxed)
    queue.sync {}
    cancelled.store(false, ordering: .relaxed)
  }

  /// Renames the ready spare to `destination` and returns `true`, or returns `false` if there is none.
  /// Waits for a running preparation first.
  func take(to destination: String) -> Bool {
    waitUntilIdle()
    guard let size = FileSystem.size(of: readyPath), size >= bytes else { return false }
    do throws(StorageError) {
      try FileSystem.rename(readyPath, destination)
      return true
    } catch {
      logger.warning("could not take the spare log segment", ["error": "\(error)"])
      return false
    }
  }

  private func fill() {
    if let size = FileSystem.size(of: readyPath), size >= bytes { return }
    do throws(StorageError) {
      let file = try PosixFile.open(partialPath, flags: O_WRONLY | O_CREAT | O_TRUNC)
      do {
        try file.writeZeros(0..<bytes) { cancelled.load(ordering: .relaxed) }
        if sync { try file.dataSync() }
        file.close()
      } catch {
        file.close()
        throw error
      }
      if cancelled.load(ordering: .relaxed) {
        try FileSystem.remove(partialPath)
      } else {
        try FileSystem.rename(partialPath, readyPath)
      }
    } catch {
      try? FileSystem.remove(partialPath)
      logger.warning("could not prepare a spare log segment", ["error": "\(error)"])
    }
  }
}
