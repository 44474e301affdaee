import Foundation
import Glibc
import QuorumCore

@testable import QuorumStorage

/// The states of a directory that a power loss could leave, built from the file-system operations a
/// ``FileOperationRecorder`` recorded (in the spirit of CrashMonkey and ALICE).
///
/// The model, per crash point (after the first `count` operations):
/// - A file's data operations (writes, truncations, preallocations) since its last `fsync`/`fdatasync` reach the
///   disk 512-byte sector by sector: each sector holds its durable contents or its contents after one of those
///   operations (see `Disk.crash(durable:pending:random:)`), so a write is kept, lost, torn at a sector boundary,
///   or kept in some of its sectors only, and a later write may survive an earlier one in other sectors (the
///   reordering of writeback within one sync interval). A sector never holds a later write without the earlier
///   writes to it: the page is written back whole.
/// - Each directory's name operations (creations, renames, removals, `mkdir`, `rmdir`) since its last `fsync`
///   survive as a prefix, in order (a journaling file system commits metadata in order): each directory gets a
///   random prefix length. A file whose name did not survive is gone with its data.
/// - Everything synced before the crash point survives. Nothing else changes: no media errors, no bit flips.
struct CrashImages {
  /// The recorded operations.
  let operations: [FileOperation]
  /// The watched directory the operations' paths are under.
  let root: String

  /// One state a power loss after the first `count` operations could leave, chosen with `random`, written into
  /// the empty directory `destination` (which stands for `root`).
  func materialize(after count: Int, into destination: String, random: inout SeededRandom) throws {
    var disk = Disk(root: root)
    for operation in operations.prefix(count) { disk.apply(operation) }
    let image = disk.crash(random: &random)
    for directory in image.directories.sorted(by: { $0.count < $1.count }) {
      let path = destination + directory.dropFirst(root.count)
      if mkdir(path, 0o755) != 0 { throw CrashImageError.failed("mkdir \(path): errno \(errno)") }
    }
    for (name, bytes) in image.files {
      let path = destination + name.dropFirst(root.count)
      // Written plainly: Foundation's createFile writes a temporary file, syncs it and renames it, a sync per
      // file of every image that nothing here needs.
      let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
      guard fd >= 0 else { throw CrashImageError.failed("create \(path): errno \(errno)") }
      defer { close(fd) }
      let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
      guard written == bytes.count else { throw CrashImageError.failed("write \(path): errno \(errno)") }
    }
  }
}

enum CrashImageError: Error {
  case failed(String)
}

/// The simulated disk behind ``CrashImages``: what is durable, and what is still pending, after each operation.
private struct Disk {
  enum DataOperation {
    case write(offset: Int, bytes: [UInt8])
    case truncate(Int)
    case allocate(Int)
  }

  enum NameOperation {
    case link(String, file: Int)
    case unlink(String)
    case rename(String, String, file: Int)
    case makeDirectory(String)
    case removeDirectory(String)
  }

  struct File {
    var durable: [UInt8] = []
    var pending: [DataOperation] = []
  }

  let root: String
  /// Files by model number (a real inode number may be reused after a removal).
  var files: [File] = []
  var fileOfInode: [UInt64: Int] = [:]
  var names: [String: Int] = [:]
  var durableNames: [String: Int] = [:]
  var durableDirectories: Set<String>
  /// Name operations not yet made durable, with the directory whose sync makes them durable.
  var pendingNames: [(directory: String, operation: NameOperation)] = []

  init(root: String) {
    self.root = root
    durableDirectories = [root]
  }

  static func parent(_ path: String) -> String {
    String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])
  }

  mutating func file(_ inode: UInt64) -> Int {
    if let number = fileOfInode[inode] { return number }
    files.append(File())
    fileOfInode[inode] = files.count - 1
    return files.count - 1
  }

  mutating func apply(_ operation: FileOperation) {
    switch operation {
    case .create(let path, let inode):
      files.append(File())
      fileOfInode[inode] = files.count - 1
      names[path] = files.count - 1
      pendingNames.append((Self.parent(path), .link(path, file: files.count - 1)))
    case .write(let inode, let offset, let bytes):
      files[file(inode)].pending.append(.write(offset: offset, bytes: bytes))
    case .truncate(let inode, let size):
      files[file(inode)].pending.append(.truncate(size))
    case .allocate(let inode, let size):
      files[file(inode)].pending.append(.allocate(size))
    case .sync(let inode):
      let number = file(inode)
      for data in files[number].pending { Self.apply(data, to: &files[number].durable) }
      files[number].pending = []
    case .syncDirectory(let path):
      let (synced, rest) = (pendingNames.filter { $0.directory == path }, pendingNames.filter { $0.directory != path })
      for name in synced { Self.apply(name.operation, names: &durableNames, directories: &durableDirectories) }
      pendingNames = rest
    case .makeDirectory(let path):
      pendingNames.append((Self.parent(path), .makeDirectory(path)))
    case .removeDirectory(let path):
      pendingNames.append((Self.parent(path), .removeDirectory(path)))
    case .rename(let from, let to):
      guard let number = names.removeValue(forKey: from) else { return }
      names[to] = number
      pendingNames.append((Self.parent(to), .rename(from, to, file: number)))
    case .remove(let path):
      names[path] = nil
      pendingNames.append((Self.parent(path), .unlink(path)))
    case .mark:
      break
    }
  }

  static func apply(_ operation: DataOperation, to bytes: inout [UInt8]) {
    switch operation {
    case .write(let offset, let data):
      if bytes.count < offset + data.count { bytes += [UInt8](repeating: 0, count: offset + data.count - bytes.count) }
      bytes.replaceSubrange(offset..<offset + data.count, with: data)
    case .truncate(let size):
      if size < bytes.count {
        bytes.removeLast(bytes.count - size)
      } else {
        bytes += [UInt8](repeating: 0, count: size - bytes.count)
      }
    case .allocate(let size):
      if size > bytes.count { bytes += [UInt8](repeating: 0, count: size - bytes.count) }
    }
  }

  static func apply(_ operation: NameOperation, names: inout [String: Int], directories: inout Set<String>) {
    switch operation {
    case .link(let path, let file): names[path] = file
    case .unlink(let path): names[path] = nil
    case .rename(let from, let to, let file):
      names[from] = nil
      names[to] = file
    case .makeDirectory(let path): directories.insert(path)
    case .removeDirectory(let path): directories.remove(path)
    }
  }

  /// A file as a crash may leave it: `durable`, then the operations in `pending` (none synced), reaching the disk
  /// sector by sector. Each 512-byte sector holds what the page cache held for it at some moment since the last
  /// sync (the page is written back whole, with every write made to it so far): its durable contents, or its
  /// contents after one of the pending operations that touched it. The size, likewise, is the size after some
  /// prefix of them. A third of the time every sector takes the same prefix (writes kept in order, the last one
  /// perhaps torn at a sector boundary); a third of the time each sector chooses on its own (the page cache
  /// writes pages back in any order); and a third of the time everything pending survives.
  static func crash(durable: [UInt8], pending: [DataOperation], random: inout SeededRandom) -> [UInt8] {
    let sector = 512
    var versions = [durable]
    for operation in pending {
      var bytes = versions[versions.count - 1]
      apply(operation, to: &bytes)
      versions.append(bytes)
    }
    let mode = random.next() % 3
    if mode == 2 || pending.isEmpty { return versions[versions.count - 1] }
    let prefix = Int(random.next() % UInt64(versions.count))
    let size = versions[prefix].count
    let longest = versions.map(\.count).max() ?? 0
    // In the same-prefix mode, the next operation (the one in flight) reached the disk below this offset.
    let tornAt = Int(random.next() % UInt64(longest + 1))
    var result = [UInt8](repeating: 0, count: max(size, longest))
    var start = 0
    while start < longest {
      let end = min(start + sector, longest)
      // The versions of this sector: the durable one and each after an operation that touched it.
      var choices = [0]
      for (number, operation) in pending.enumerated() where touches(operation, start..<end) {
        choices.append(number + 1)
      }
      let version: Int
      if mode == 0 {
        // The same prefix everywhere, except that the sector being written when the power failed may be either.
        let inFlight = prefix + 1
        version = start < tornAt && choices.contains(inFlight) ? inFlight : choices.last { $0 <= prefix } ?? 0
      } else {
        version = choices[Int(random.next() % UInt64(choices.count))]
      }
      let bytes = versions[version]
      for offset in start..<end { result[offset] = offset < bytes.count ? bytes[offset] : 0 }
      start = end
    }
    if result.count > size { result.removeLast(result.count - size) }
    return result
  }

  /// Whether `operation` changed bytes in `range`.
  static func touches(_ operation: DataOperation, _ range: Range<Int>) -> Bool {
    switch operation {
    case .write(let offset, let data): return offset < range.upperBound && range.lowerBound < offset + data.count
    case .truncate, .allocate: return true
    }
  }

  /// The directories and files a power loss now could leave.
  func crash(random: inout SeededRandom) -> (directories: Set<String>, files: [String: [UInt8]]) {
    var names = durableNames
    var directories = durableDirectories
    var keep: [String: Int] = [:]
    for directory in Set(pendingNames.map(\.directory)).sorted() {
      let count = pendingNames.count { $0.directory == directory }
      keep[directory] = Int(random.next() % UInt64(count + 1))
    }
    for (directory, operation) in pendingNames where keep[directory, default: 0] > 0 {
      keep[directory, default: 0] -= 1
      Self.apply(operation, names: &names, directories: &directories)
    }
    // A directory whose parent's entry for it did not survive is gone, with everything under it.
    func reachable(_ path: String) -> Bool {
      path == root || (directories.contains(path) && reachable(Self.parent(path)))
    }
    directories = directories.filter { reachable($0) }
    var contents: [String: [UInt8]] = [:]
    for (path, number) in names.sorted(by: { $0.key < $1.key }) where reachable(Self.parent(path)) {
      contents[path] = Self.crash(durable: files[number].durable, pending: files[number].pending, random: &random)
    }
    directories.remove(root)
    return (directories, contents)
  }
}
