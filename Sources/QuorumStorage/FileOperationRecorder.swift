import Glibc
import Synchronization

/// One file-system operation of the storage, as ``FileOperationRecorder`` records it for a crash-consistency
/// test. Files are named by inode, so writes to a file opened under a temporary name and renamed into place (a
/// new log segment) stay with the file; names and directories by path.
enum FileOperation: Sendable, Equatable {
  /// `open` with `O_CREAT` made a new, empty file `path`.
  case create(path: String, inode: UInt64)
  /// `pwrite` of `bytes` at `offset`.
  case write(inode: UInt64, offset: Int, bytes: [UInt8])
  /// `ftruncate` (or `open` with `O_TRUNC` on an existing file) to `size` bytes.
  case truncate(inode: UInt64, size: Int)
  /// `posix_fallocate` of the first `size` bytes: the file is at least that long afterwards.
  case allocate(inode: UInt64, size: Int)
  /// `fsync` or `fdatasync` of a file: its data and size are durable.
  case sync(inode: UInt64)
  /// `fsync` of directory `path`: the names created, renamed and removed in it are durable.
  case syncDirectory(path: String)
  /// `mkdir`.
  case makeDirectory(path: String)
  /// `rmdir`.
  case removeDirectory(path: String)
  /// `rename`, replacing `to`.
  case rename(from: String, to: String)
  /// `unlink`.
  case remove(path: String)
  /// A point a test marks between operations (a storage call began or returned).
  case mark(Int)
}

/// Records, in order, every file-system operation the storage makes under one directory: the input of a
/// crash-consistency test, which builds from it the states a power loss could leave (tests only).
///
/// A recorder watches the directory it is created for until ``stop()``. ``PosixFile`` and ``FileSystem`` ask
/// ``watching(_:)`` whether a path is watched: while no recorder exists that costs one relaxed atomic load per
/// open, rename or removal, and writes and syncs only check their file's optional ``PosixFile/recording``. The
/// directories of concurrent tests are distinct, so each test's recorder sees only its own storage's operations.
/// Operations are recorded after the system call returned, under a lock: operations of one thread stay in order,
/// and operations of two threads are ordered as they finished. A watched file's syncs are recorded and not made
/// (the images are built from the record, not from the disk).
final class FileOperationRecorder: Sendable {
  /// The watched directory (operations on paths under it are recorded).
  let root: String
  private let operations = Mutex<[FileOperation]>([])

  private static let recorders = Mutex<[String: FileOperationRecorder]>([:])
  private static let recorderCount = Atomic<Int>(0)

  /// Starts recording the operations under `root` (an absolute path without a trailing slash).
  init(watching root: String) {
    self.root = root
    let recorder = self
    Self.recorders.withLock { $0[root] = recorder }
    Self.recorderCount.add(1, ordering: .releasing)
  }

  /// Stops recording.
  func stop() {
    let removed = Self.recorders.withLock { $0.removeValue(forKey: root) != nil }
    if removed { Self.recorderCount.subtract(1, ordering: .releasing) }
  }

  /// The operations recorded so far, in order.
  var recorded: [FileOperation] { operations.withLock { $0 } }

  /// Appends `operation`.
  func record(_ operation: FileOperation) {
    operations.withLock { $0.append(operation) }
  }

  /// The recorder watching `path`, if any.
  static func watching(_ path: String) -> FileOperationRecorder? {
    guard recorderCount.load(ordering: .acquiring) > 0 else { return nil }
    return recorders.withLock { recorders in
      recorders.first { path == $0.key || path.hasPrefix($0.key + "/") }?.value
    }
  }

  /// Records the opening of `file` with `flags` (a creation, or an `O_TRUNC` truncation) and returns the handle
  /// that records its later operations.
  func opened(_ file: PosixFile, flags: Int32, existed: Bool) -> Handle {
    var info = stat()
    let inode = fstat(file.fd, &info) == 0 ? UInt64(info.st_ino) : 0
    if flags & O_CREAT != 0 && !existed {
      record(.create(path: file.path, inode: inode))
    } else if flags & O_TRUNC != 0 {
      record(.truncate(inode: inode, size: 0))
    }
    return Handle(recorder: self, inode: inode, path: file.path, isDirectory: flags & O_DIRECTORY != 0)
  }

  /// What a watched ``PosixFile`` carries to record its operations (a class: an unwatched file's `nil` is one
  /// word).
  final class Handle: Sendable {
    let recorder: FileOperationRecorder
    let inode: UInt64
    let path: String
    let isDirectory: Bool

    init(recorder: FileOperationRecorder, inode: UInt64, path: String, isDirectory: Bool) {
      self.recorder = recorder
      self.inode = inode
      self.path = path
      self.isDirectory = isDirectory
    }

    func wrote(_ bytes: UnsafeRawBufferPointer, at offset: Int) {
      recorder.record(.write(inode: inode, offset: offset, bytes: [UInt8](bytes)))
    }

    func truncated(to size: Int) { recorder.record(.truncate(inode: inode, size: size)) }

    func allocated(_ size: Int) { recorder.record(.allocate(inode: inode, size: size)) }

    func synced() { recorder.record(isDirectory ? .syncDirectory(path: path) : .sync(inode: inode)) }
  }
}
