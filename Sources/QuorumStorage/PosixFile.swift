import Glibc
import Synchronization

/// A ``StorageError/io(operation:path:errno:)`` for a failed system call on `path`.
func ioError(_ operation: String, _ path: String, _ code: Int32 = errno) -> StorageError {
  .io(operation: operation, path: path, errno: code)
}

/// An open file descriptor with the few blocking operations the storage needs.
///
/// Not thread-safe: each is owned by one serial queue. Closing is explicit (``close()``).
struct PosixFile {
  /// The descriptor.
  let fd: Int32
  /// The path it was opened with, for error messages.
  let path: String
  /// Where this file's writes, truncations and syncs are recorded, when a crash-consistency test watches its
  /// directory (see ``FileOperationRecorder``); `nil` otherwise, which costs each operation one check.
  var recording: FileOperationRecorder.Handle? = nil

  /// How long ``open(_:flags:permissions:faults:)`` waits in all for a descriptor before giving up: the
  /// pauses double from 1 ms (1 + 2 + … + 256 ms).
  static let descriptorWaits = 9

  /// Opens `path` with `flags` (`O_CLOEXEC` is always added). When the process or the system is out of file
  /// descriptors (`EMFILE`, `ENFILE`: connections come and go) it waits a little and tries again, then throws
  /// ``StorageError/descriptorsExhausted(operation:path:errno:)``, which callers treat as retryable rather than
  /// as a failed disk. Blocks the calling thread while it waits: call it on a storage queue only.
  static func open(
    _ path: String, flags: Int32, permissions: mode_t = 0o644, faults: OpenFaults? = nil
  ) throws(StorageError) -> PosixFile {
    var waits = 0
    while true {
      let recorder = FileOperationRecorder.watching(path)
      let existed = recorder != nil && FileSystem.size(of: path) != nil
      let fd = faults?.injected() ?? Glibc.open(path, flags | O_CLOEXEC, permissions)
      if fd >= 0 {
        var file = PosixFile(fd: fd, path: path)
        if let recorder { file.recording = recorder.opened(file, flags: flags, existed: existed) }
        return file
      }
      let code = errno
      if code == EINTR { continue }
      guard code == EMFILE || code == ENFILE else { throw ioError("open", path, code) }
      guard waits < descriptorWaits else { throw .descriptorsExhausted(operation: "open", path: path, errno: code) }
      usleep(1000 << UInt32(waits))
      waits += 1
    }
  }

  /// Writes all of `buffer` at `offset`.
  func write(_ buffer: UnsafeRawBufferPointer, at offset: Int) throws(StorageError) {
    guard let base = buffer.baseAddress else { return }
    var done = 0
    while done < buffer.count {
      let written = pwrite(fd, base + done, buffer.count - done, off_t(offset + done))
      if written < 0 {
        if errno == EINTR { continue }
        throw ioError("pwrite", path)
      }
      done += written
    }
    recording?.wrote(UnsafeRawBufferPointer(start: base, count: buffer.count), at: offset)
  }

  /// Writes all of `bytes` at `offset`.
  func write(_ bytes: [UInt8], at offset: Int) throws(StorageError) {
    let result: Result<Void, StorageError> = bytes.withUnsafeBytes { buffer in
      do throws(StorageError) {
        try write(buffer, at: offset)
        return .success(())
      } catch {
        return .failure(error)
      }
    }
    try result.get()
  }

  /// Reads into `buffer` from `offset` until it is full or the file ends; returns the bytes read.
  func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(StorageError) -> Int {
    guard let base = buffer.baseAddress else { return 0 }
    var done = 0
    while done < buffer.count {
      let count = pread(fd, base + done, buffer.count - done, off_t(offset + done))
      if count < 0 {
        if errno == EINTR { continue }
        throw ioError("pread", path)
      }
      if count == 0 { break }
      done += count
    }
    return done
  }

  /// Reads `count` bytes from `offset` into a fresh array (shorter if the file ends first).
  func read(count: Int, at offset: Int) throws(StorageError) -> [UInt8] {
    var failure: StorageError?
    let bytes = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
      do throws(StorageError) {
        initialized = try read(into: UnsafeMutableRawBufferPointer(buffer), at: offset)
      } catch {
        failure = error
        initialized = 0
      }
    }
    if let failure { throw failure }
    return bytes
  }

  /// Reads the whole file into one array.
  func readAll() throws(StorageError) -> [UInt8] {
    try read(count: try size(), at: 0)
  }

  /// The file's size in bytes.
  func size() throws(StorageError) -> Int {
    var info = stat()
    if fstat(fd, &info) != 0 { throw ioError("fstat", path) }
    return Int(info.st_size)
  }

  /// `fdatasync`: makes the data (and the size) durable.
  func dataSync() throws(StorageError) {
    // A recorded test builds its crash images from the operations, not from the disk: the sync is recorded,
    // and skipped, so that the test does not wait on a shared disk for durability it never reads.
    if let recording { return recording.synced() }
    while fdatasync(fd) != 0 {
      if errno != EINTR { throw ioError("fdatasync", path) }
    }
  }

  /// `fsync`: makes data and all metadata durable.
  func fullSync() throws(StorageError) {
    if let recording { return recording.synced() }  // As in ``dataSync()``.
    while fsync(fd) != 0 {
      if errno != EINTR { throw ioError("fsync", path) }
    }
  }

  /// Sets the file's size.
  func truncate(to size: Int) throws(StorageError) {
    while ftruncate(fd, off_t(size)) != 0 {
      if errno != EINTR { throw ioError("ftruncate", path) }
    }
    recording?.truncated(to: size)
  }

  /// Reserves `size` bytes of disk (`posix_fallocate`); does nothing where the file system cannot.
  func allocate(_ size: Int) throws(StorageError) {
    let code = posix_fallocate(fd, 0, off_t(size))
    if code != 0 && code != EOPNOTSUPP && code != EINVAL { throw ioError("posix_fallocate", path, code) }
    if code == 0 { recording?.allocated(size) }
  }

  /// Writes zeros over `range`.
  func writeZeros(_ range: Range<Int>, shouldStop: () -> Bool = { false }) throws(StorageError) {
    let chunk = 1 << 20
    let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: min(chunk, max(range.count, 1)), alignment: 4096)
    defer { zeros.deallocate() }
    zeros.initializeMemory(as: UInt8.self, repeating: 0)
    var offset = range.lowerBound
    while offset < range.upperBound && !shouldStop() {
      let count = min(zeros.count, range.upperBound - offset)
      try write(UnsafeRawBufferPointer(rebasing: zeros[0..<count]), at: offset)
      offset += count
    }
  }

  /// Closes the descriptor, ignoring errors (there is nothing left to do about them: data that mattered
  /// was synced before).
  func close() {
    _ = Glibc.close(fd)
  }
}

/// Failures a test injects into a storage's opens: after `skipping` more, the next `count` opens fail with `code`.
final class OpenFaults: Sendable {
  private let pending = Atomic<Int>(0)
  private let skipping = Atomic<Int>(0)
  private let code = Atomic<Int32>(EMFILE)

  /// Makes the next `count` opens fail with `code`, once `skipping` more have gone through.
  func failNext(_ count: Int, with code: Int32 = EMFILE, skipping: Int = 0) {
    self.code.store(code, ordering: .relaxed)
    self.skipping.store(skipping, ordering: .relaxed)
    pending.store(count, ordering: .releasing)
  }

  /// `-1` with `errno` set while failures are pending; `nil` otherwise (open for real).
  func injected() -> Int32? {
    while pending.load(ordering: .acquiring) > 0 {
      let skip = skipping.load(ordering: .relaxed)
      guard skip > 0 else { break }
      if skipping.compareExchange(expected: skip, desired: skip - 1, ordering: .relaxed).exchanged { return nil }
    }
    while true {
      let left = pending.load(ordering: .acquiring)
      guard left > 0 else { return nil }
      if pending.compareExchange(expected: left, desired: left - 1, ordering: .acquiringAndReleasing).exchanged {
        errno = code.load(ordering: .relaxed)
        return -1
      }
    }
  }
}

/// Directory-level operations.
enum FileSystem {
  /// Creates `path` and its missing parents, and returns the directories it created. With `syncParents`, each
  /// one created is made durable by syncing (`sync`) the directory that holds it, once, as it is created: a
  /// directory that a crash forgets would take every file written in it along.
  @discardableResult
  static func makeDirectories(
    _ path: String, syncParents: Bool,
    sync: (String) throws(StorageError) -> Void = { path throws(StorageError) in
      try FileSystem.syncDirectory(path)
    }
  ) throws(StorageError) -> [String] {
    var prefix = path.hasPrefix("/") ? "" : "."
    var created: [String] = []
    for component in path.split(separator: "/") {
      let parent = prefix.isEmpty ? "/" : prefix
      prefix += "/" + component
      if mkdir(prefix, 0o755) == 0 {
        FileOperationRecorder.watching(prefix)?.record(.makeDirectory(path: prefix))
        created.append(prefix)
        if syncParents { try sync(parent) }
      } else if errno != EEXIST {
        throw ioError("mkdir", prefix)
      }
    }
    var info = stat()
    if stat(path, &info) != 0 { throw ioError("stat", path) }
    if info.st_mode & S_IFMT != S_IFDIR { throw ioError("mkdir", path, ENOTDIR) }
    return created
  }

  /// The names in directory `path` (without `.` and `..`).
  static func list(_ path: String) throws(StorageError) -> [String] {
    guard let directory = opendir(path) else { throw ioError("opendir", path) }
    defer { closedir(directory) }
    var names: [String] = []
    while true {
      errno = 0
      guard let entry = readdir(directory) else {
        if errno != 0 { throw ioError("readdir", path) }
        return names
      }
      let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
        String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
      }
      if name != "." && name != ".." { names.append(name) }
    }
  }

  /// `fsync` on a directory, making created, renamed and removed names durable.
  static func syncDirectory(_ path: String) throws(StorageError) {
    let directory = try PosixFile.open(path, flags: O_RDONLY | O_DIRECTORY)
    defer { directory.close() }
    try directory.fullSync()
  }

  /// Renames `source` to `destination`, replacing it.
  static func rename(_ source: String, _ destination: String) throws(StorageError) {
    if Glibc.rename(source, destination) != 0 { throw ioError("rename to \(destination)", source) }
    FileOperationRecorder.watching(source)?.record(.rename(from: source, to: destination))
  }

  /// Removes the file at `path`; a missing file is not an error.
  static func remove(_ path: String) throws(StorageError) {
    if unlink(path) == 0 {
      FileOperationRecorder.watching(path)?.record(.remove(path: path))
    } else if errno != ENOENT {
      throw ioError("unlink", path)
    }
  }

  /// Removes the empty directory at `path`; a missing one is not an error.
  static func removeDirectory(_ path: String) throws(StorageError) {
    if rmdir(path) == 0 {
      FileOperationRecorder.watching(path)?.record(.removeDirectory(path: path))
    } else if errno != ENOENT {
      throw ioError("rmdir", path)
    }
  }

  /// Whether `path` names a directory.
  static func isDirectory(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR
  }

  /// The size of the file at `path`, or `nil` if there is none.
  static func size(of path: String) -> Int? {
    var info = stat()
    return stat(path, &info) == 0 ? Int(info.st_size) : nil
  }
}
