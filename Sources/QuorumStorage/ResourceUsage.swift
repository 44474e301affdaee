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

  /// Whether `path` is a directory (following symbolic links).
  public static func isDirectory(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR
  }

  /// The names in the directory `path` (without `.` and `..`); empty if it cannot be read.
  public static func entries(of path: String) -> [String] {
    (try? FileSystem.list(path)) ?? []
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

/// The process's limit on open file descriptors: every connection, log segment and snapshot takes one.
public enum OpenFileLimit {
  /// The soft limit (what the process may open now) and the hard limit (how far it may raise it itself).
  public static func current() -> (soft: UInt64, hard: UInt64)? {
    var limit = rlimit()
    guard getrlimit(resource, &limit) == 0 else { return nil }
    return (UInt64(limit.rlim_cur), UInt64(limit.rlim_max))
  }

  /// Raises the soft limit to the hard limit (a server needs descriptors for its peers, clients and storage;
  /// distributions often start processes with a soft limit of 1024). Returns the soft limit before and after;
  /// `nil` if the limits cannot be read or changed.
  @discardableResult
  public static func raiseSoftLimitToHard() -> (before: UInt64, after: UInt64)? {
    var limit = rlimit()
    guard getrlimit(resource, &limit) == 0 else { return nil }
    let before = UInt64(limit.rlim_cur)
    guard limit.rlim_cur < limit.rlim_max else { return (before, before) }
    limit.rlim_cur = limit.rlim_max
    guard setrlimit(resource, &limit) == 0 else { return nil }
    return (before, UInt64(limit.rlim_cur))
  }

  private static var resource: __rlimit_resource_t { __rlimit_resource_t(RLIMIT_NOFILE.rawValue) }
}
