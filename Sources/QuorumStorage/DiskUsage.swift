import Glibc

/// How much disk a directory tree takes, for a space quota.
public enum FileSystemUsage {
  /// The bytes of disk allocated to every file under `path` (following no symbolic link), as `du` counts them:
  /// preallocated log segments count in full, sparse holes not at all. `nil` if `path` cannot be read.
  public static func allocatedBytes(under path: String) -> Int? {
    var info = stat()
    guard lstat(path, &info) == 0 else { return nil }
    return allocated(path, info, depth: 0)
  }

  /// Directories nested deeper than this are not descended into (a data directory is two levels deep).
  static let maxDepth = 16

  private static func allocated(_ path: String, _ info: stat, depth: Int) -> Int {
    let own = Int(info.st_blocks) * 512
    guard info.st_mode & S_IFMT == S_IFDIR, depth < maxDepth, let names = try? FileSystem.list(path) else {
      return own
    }
    var total = own
    for name in names {
      let child = path + "/" + name
      var childInfo = stat()
      // A file removed since the listing (a compacted segment) takes no space any more.
      guard lstat(child, &childInfo) == 0 else { continue }
      total += allocated(child, childInfo, depth: depth + 1)
    }
    return total
  }
}
