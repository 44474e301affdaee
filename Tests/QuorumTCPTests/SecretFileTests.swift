import Glibc
import QuorumCore
import QuorumTCP
import Testing

/// A temporary directory, removed with its files by ``remove()``.
struct TemporaryDirectory {
  let path: String

  init() throws {
    var template = Array("/tmp/quorum-secrets-XXXXXX".utf8CString)
    guard let created = mkdtemp(&template) else { throw TimedOut(description: "mkdtemp: errno \(errno)") }
    path = String(cString: created)
  }

  /// Writes `bytes` to `name` with `mode` and returns the path.
  @discardableResult
  func write(_ name: String, _ bytes: [UInt8], mode: mode_t = 0o600) throws -> String {
    let file = "\(path)/\(name)"
    let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
    guard fd >= 0 else { throw TimedOut(description: "open \(file): errno \(errno)") }
    defer { close(fd) }
    guard fchmod(fd, mode) == 0, bytes.isEmpty || Glibc.write(fd, bytes, bytes.count) == bytes.count else {
      throw TimedOut(description: "write \(file): errno \(errno)")
    }
    return file
  }

  func remove() {
    if let directory = opendir(path) {
      while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name != "." && name != ".." { unlink("\(path)/\(name)") }
      }
      closedir(directory)
    }
    rmdir(path)
  }
}

@Suite("Secret and credentials files")
struct SecretFileTests {
  static let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

  @Test("a secret file readable or writable by group or others is refused, naming the file and its mode")
  func permissions() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    for mode: mode_t in [0o644, 0o640, 0o604, 0o620, 0o660] {
      let path = try directory.write("secret-\(String(mode, radix: 8))", [UInt8](repeating: 9, count: 32), mode: mode)
      do {
        _ = try TCPSecret.load(file: path)
        Issue.record("mode 0\(String(mode, radix: 8)) was accepted")
      } catch {
        #expect(error == .tooPermissive(path: path, mode: UInt32(mode) | UInt32(S_IFREG)))
        #expect("\(error)".contains(path) && "\(error)".contains("mode 0\(String(mode, radix: 8))"), "\(error)")
        #expect("\(error)".contains("chmod 600"))
      }
    }
    for mode: mode_t in [0o600, 0o400] {
      let path = try directory.write("ok-\(String(mode, radix: 8))", [UInt8](repeating: 9, count: 32), mode: mode)
      #expect(try TCPSecret.load(file: path) == TCPSecret(bytes: [UInt8](repeating: 9, count: 32)))
    }
  }

  @Test("a secret file holds raw bytes or hex; short, missing and non-regular files are refused with the path")
  func contents() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let raw = try directory.write("raw", Array(0..<32))
    #expect(try TCPSecret.load(file: raw) == TCPSecret(bytes: Array(0..<32)))
    let hex = try directory.write("hex", Array((Self.hex + "\n").utf8))
    #expect(try TCPSecret.load(file: hex) == TCPSecret(hex: Self.hex))
    let short = try directory.write("short", Array("tiny".utf8))
    #expect(throws: TCPSecurityError.tooShort(path: short, bytes: 4, minimum: 16)) { try TCPSecret.load(file: short) }
    #expect(throws: TCPSecurityError.unreadable(path: "\(directory.path)/none", errno: ENOENT)) {
      try TCPSecret.load(file: "\(directory.path)/none")
    }
    #expect(throws: TCPSecurityError.notARegularFile(path: "/dev/null")) { try TCPSecret.load(file: "/dev/null") }
    #expect("\(try TCPSecret(hex: Self.hex))" == "<secret of 32 bytes>", "a secret never prints its bytes")
  }

  @Test("a credentials file names each principal's role and secret; a bad line is refused with its number")
  func credentials() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let good = try directory.write(
      "credentials",
      Array("# name role secret\nalice write \(Self.hex)\n\n  ops\tadmin \(Self.hex.uppercased())  # ops\n".utf8))
    let loaded = try TCPCredentials.load(file: good)
    #expect(loaded.entries.keys.sorted() == ["alice", "ops"])
    #expect(loaded.entries["alice"]?.role == .write && loaded.entries["ops"]?.role == .admin)
    #expect(loaded.entries["ops"]?.secret == (try TCPSecret(hex: Self.hex)))
    let cases: [(String, Int, String)] = [
      ("alice write \(Self.hex)\nbob superuser \(Self.hex)\n", 2, "role 'superuser'"),
      ("alice write \(Self.hex)\nalice read \(Self.hex)\n", 2, "alice is listed twice"),
      ("alice write 1234\n", 1, "has 2 bytes"),
      ("alice write zz\(Self.hex)\n", 1, "not hexadecimal"),
      ("al ice write \(Self.hex)\n", 1, "expected 'name role secret-hex'"),
      ("al/ice write \(Self.hex)\n", 1, "is not a name"),
    ]
    for (index, (text, line, reason)) in cases.enumerated() {
      let path = try directory.write("bad-\(index)", Array(text.utf8))
      do {
        _ = try TCPCredentials.load(file: path)
        Issue.record("case \(index) was accepted")
      } catch {
        guard case .badCredentials(path, line, let detail) = error else {
          Issue.record("case \(index): \(error)")
          continue
        }
        #expect(detail.contains(reason), "case \(index): \(detail)")
      }
    }
    let open = try directory.write("open", Array("alice write \(Self.hex)\n".utf8), mode: 0o644)
    #expect(throws: TCPSecurityError.tooPermissive(path: open, mode: 0o644 | UInt32(S_IFREG))) {
      try TCPCredentials.load(file: open)
    }
  }
}
