import Glibc

/// Small files a storage's user keeps beside a group's snapshots (such as the host's record of which group a
/// directory was made for), read whole and replaced atomically.
///
/// Such a file lives in the group's snapshot directory: ``directory(perGroup:)`` for a ``FileStorage``,
/// ``SharedWriteAheadLog/sideFileDirectory(group:)`` for a group of a shared log (deleted with the group by
/// ``SharedWriteAheadLog/forget(group:)``). Its name must not end in `.tmp` (recovery deletes such leftovers) nor
/// look like a snapshot file's.
public enum SideFile {
  /// The snapshot directory of the ``FileStorage`` kept in `directory`, where its side files go.
  public static func directory(perGroup directory: String) -> String { directory + "/snapshots" }

  /// The bytes of the file at `path` (at most `maxBytes` of them), or `nil` if there is no file.
  ///
  /// - Throws: ``StorageError/io(operation:path:errno:)`` if the file exists but cannot be read, and
  ///   ``StorageError/incompatible(file:reason:)`` if it holds more than `maxBytes` bytes.
  public static func read(_ path: String, maxBytes: Int) throws(StorageError) -> [UInt8]? {
    guard let size = FileSystem.size(of: path) else { return nil }
    guard size <= maxBytes else {
      throw .incompatible(file: path, reason: "\(size) bytes, more than the \(maxBytes) such a file may hold")
    }
    let file = try PosixFile.open(path, flags: O_RDONLY)
    defer { file.close() }
    var bytes = [UInt8](repeating: 0, count: size)
    let read = bytes.withUnsafeMutableBytes { raw in
      Result { () throws(StorageError) in try file.read(into: raw, at: 0) }
    }
    bytes.removeLast(size - (try read.get()))
    return bytes
  }

  /// Runs `body` holding the lock of the data directory `directory`: the `LOCK` file a ``FileStorage`` or a
  /// ``SharedWriteAheadLog`` kept in `directory` holds while it is open, so that a side file is read and written
  /// only by the process the directory belongs to. The directory and its missing parents are created first (each
  /// made durable with `sync`); the lock is released when `body` returns. It blocks the calling thread: for a
  /// moment when the lock is free, up to 100 ms while a process that just closed the directory lets it go.
  ///
  /// - Throws: ``StorageError/directoryLocked(path:)`` if another holder has the lock (another process running on
  ///   the directory, or a storage of this process open in it), before `body` runs; or what `body` throws.
  public static func withDirectoryLock<T>(_ directory: String, sync: Bool, _ body: () throws -> T) throws -> T {
    _ = try FileSystem.makeDirectories(directory, syncParents: sync)
    let lock = try WALFiles.lockDirectory(directory)
    defer { lock.close() }
    return try body()
  }

  /// Replaces the file at `path` with `bytes` atomically: written under a temporary name, synced, renamed into
  /// place and the directory synced (the syncs only with `sync`), creating the directory and its missing
  /// parents (each made durable with `sync`). A crash leaves the old file or the new one, never a mix.
  public static func write(_ bytes: [UInt8], to path: String, sync: Bool) throws(StorageError) {
    let directory = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
    let parent = directory.isEmpty ? (path.hasPrefix("/") ? "/" : ".") : directory
    try FileSystem.makeDirectories(parent, syncParents: sync)
    // Named for this process: two processes started on one directory by mistake never write into one temporary
    // file, even where a side file is written without the directory's lock (see withDirectoryLock).
    let temporary = path + ".\(getpid()).tmp"
    let file = try PosixFile.open(temporary, flags: O_RDWR | O_CREAT | O_TRUNC)
    do throws(StorageError) {
      try file.write(bytes, at: 0)
      if sync { try file.dataSync() }
      file.close()
    } catch {
      file.close()
      try? FileSystem.remove(temporary)
      throw error
    }
    try FileSystem.rename(temporary, path)
    if sync { try FileSystem.syncDirectory(parent) }
  }
}

extension SharedWriteAheadLog {
  /// The directory holding `group`'s snapshots and recorded write mode, where side files about the group go
  /// (see ``SideFile``); ``forget(group:)`` deletes it with everything in it.
  public func sideFileDirectory(group: UInt64) -> String { core.snapshotDirectory(group) }
}
