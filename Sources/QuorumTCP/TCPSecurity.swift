import Glibc
public import QuorumCore

/// A shared secret: the cluster secret that members prove to each other, or a client's credential secret.
///
/// Its description never shows the bytes, so a secret can sit in options and errors that are logged.
public struct TCPSecret: Sendable, Equatable, CustomStringConvertible {
  /// The fewest bytes a secret may have (32 random bytes are recommended).
  public static let minimumByteCount = 16
  /// The largest secret file read, in bytes.
  public static let maximumFileByteCount = 4096

  let bytes: [UInt8]

  /// A secret from its bytes.
  /// - Throws: ``TCPSecurityError/tooShort(path:bytes:minimum:)`` below ``minimumByteCount`` bytes.
  public init(bytes: [UInt8]) throws(TCPSecurityError) {
    guard bytes.count >= Self.minimumByteCount else {
      throw .tooShort(path: nil, bytes: bytes.count, minimum: Self.minimumByteCount)
    }
    self.bytes = bytes
  }

  /// A secret from hexadecimal text (`openssl rand -hex 32`).
  /// - Throws: ``TCPSecurityError/notHex(_:)`` or ``TCPSecurityError/tooShort(path:bytes:minimum:)``.
  public init(hex text: some StringProtocol) throws(TCPSecurityError) {
    guard let bytes = decodeHex(text) else { throw .notHex("\(text.count) characters") }
    try self.init(bytes: bytes)
  }

  /// Reads a secret file.
  ///
  /// The file must be a regular file that neither group nor others may read or write (mode `0600` or
  /// `0400`), of at least ``minimumByteCount`` bytes. Its bytes are the secret, except that a file holding only
  /// hexadecimal digits (an even number, at least 32, with whitespace around them) is decoded from hex: so
  /// `head -c 32 /dev/urandom > secret` and `openssl rand -hex 32 > secret` both work, and a client's hex
  /// secret file matches the hex written in the server's credentials file.
  /// - Throws: ``TCPSecurityError`` naming the file and what is wrong with it.
  public static func load(file path: String) throws(TCPSecurityError) -> TCPSecret {
    let bytes = try readSecretFile(path)
    if let decoded = decodeHex(String(decoding: bytes, as: UTF8.self)), decoded.count >= minimumByteCount {
      return TCPSecret(checked: decoded)
    }
    guard bytes.count >= minimumByteCount else {
      throw .tooShort(path: path, bytes: bytes.count, minimum: minimumByteCount)
    }
    return TCPSecret(checked: bytes)
  }

  private init(checked bytes: [UInt8]) { self.bytes = bytes }

  public var description: String { "<secret of \(bytes.count) bytes>" }

  public static func == (lhs: TCPSecret, rhs: TCPSecret) -> Bool { constantTimeEquals(lhs.bytes, rhs.bytes) }
}

/// The clients a server admits: each principal's name, secret and ``QuorumCore/ClientRole``.
///
/// The credentials file has one client per line — its name (letters, digits, `.`, `_`, `-`; at most 64),
/// its role (`read`, `write` or `admin`) and its secret in hex (at least 32 digits) — separated by blanks;
/// `#` starts a comment:
///
/// ```
/// # name   role   secret (openssl rand -hex 32)
/// alice    write  9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
/// ops      admin  60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752
/// ```
///
/// Like a secret file it must not be readable by group or others.
public struct TCPCredentials: Sendable, Equatable {
  /// One admitted client.
  public struct Entry: Sendable, Equatable {
    /// Its secret.
    public var secret: TCPSecret
    /// What it may do.
    public var role: ClientRole

    /// Creates an entry.
    public init(secret: TCPSecret, role: ClientRole) {
      self.secret = secret
      self.role = role
    }
  }

  /// The most bytes of a principal's name.
  public static let maximumNameByteCount = 64

  /// Clients by name.
  public private(set) var entries: [String: Entry]

  /// Credentials from entries by name.
  /// - Throws: ``TCPSecurityError/invalidName(_:)`` for a name that is empty, too long or has other characters.
  public init(_ entries: [String: Entry] = [:]) throws(TCPSecurityError) {
    for name in entries.keys where !Self.isValidName(name) { throw .invalidName(logSafe(name)) }
    self.entries = entries
  }

  /// Reads a credentials file.
  /// - Throws: ``TCPSecurityError`` naming the file (and the line) and what is wrong.
  public static func load(file path: String) throws(TCPSecurityError) -> TCPCredentials {
    let text = String(decoding: try readSecretFile(path, maximumBytes: 1 << 20), as: UTF8.self)
    var entries: [String: Entry] = [:]
    for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
      let line = rawLine.prefix { $0 != "#" }
      let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
      if fields.isEmpty { continue }
      func bad(_ reason: String) -> TCPSecurityError { .badCredentials(path: path, line: index + 1, reason: reason) }
      guard fields.count == 3 else { throw bad("expected 'name role secret-hex', found \(fields.count) fields") }
      let name = String(fields[0])
      guard isValidName(name) else {
        throw bad("'\(logSafe(name))' is not a name (letters, digits, '.', '_', '-'; at most 64)")
      }
      guard let role = ClientRole(name: fields[1]) else {
        throw bad("role '\(logSafe(fields[1]))' (expected read, write or admin)")
      }
      guard let secret = decodeHex(fields[2]) else { throw bad("the secret is not hexadecimal (an even count)") }
      guard secret.count >= TCPSecret.minimumByteCount else {
        throw bad("the secret has \(secret.count) bytes; at least \(TCPSecret.minimumByteCount) are needed")
      }
      guard entries[name] == nil else { throw bad("\(name) is listed twice") }
      entries[name] = Entry(secret: TCPSecret(checkedBytes: secret), role: role)
    }
    return TCPCredentials(checked: entries)
  }

  private init(checked entries: [String: Entry]) { self.entries = entries }

  /// No clients: every client connection is refused.
  public static let empty = TCPCredentials(checked: [:])

  /// Whether `name` may name a principal.
  public static func isValidName(_ name: String) -> Bool {
    let bytes = Array(name.utf8)
    guard !bytes.isEmpty, bytes.count <= maximumNameByteCount else { return false }
    return bytes.allSatisfy { byte in
      (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
        || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
        || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || byte == UInt8(ascii: ".")
        || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
    }
  }
}

extension TCPSecret {
  fileprivate init(checkedBytes: [UInt8]) { self.bytes = checkedBytes }
}

/// What a client proves at the handshake: its principal's name and secret.
public struct TCPClientCredential: Sendable, Equatable, CustomStringConvertible {
  /// The principal's name, as in the server's credentials file.
  public var name: String
  /// Its secret.
  public var secret: TCPSecret

  /// A credential from a name and a secret.
  /// - Throws: ``TCPSecurityError/invalidName(_:)`` for a name the credentials file could not hold.
  public init(name: String, secret: TCPSecret) throws(TCPSecurityError) {
    guard TCPCredentials.isValidName(name) else { throw .invalidName(logSafe(name)) }
    self.name = name
    self.secret = secret
  }

  /// A credential whose secret is read from `secretFile` (see ``TCPSecret/load(file:)``).
  /// - Throws: ``TCPSecurityError`` naming the file and what is wrong with it.
  public init(name: String, secretFile: String) throws(TCPSecurityError) {
    try self.init(name: name, secret: TCPSecret.load(file: secretFile))
  }

  public var description: String { "credential \(name)" }
}

/// How a ``TCPTransport`` authenticates its connections: not at all (``insecure``, which must be asked for
/// by name), or with HMAC-SHA-256 challenge-response and per-frame codes (``authenticated(clusterSecret:clients:)``).
///
/// Authentication proves who is on the other end and that frames arrive unaltered, in order and once. It
/// does not hide them: run the cluster on a private network or behind an encrypting tunnel (WireGuard,
/// stunnel, a service mesh) if the traffic itself is confidential.
public struct TCPSecurity: Sendable, Equatable, CustomStringConvertible {
  enum Mode: Sendable, Equatable {
    case insecure
    case authenticated(clusterSecret: TCPSecret, clients: TCPCredentials)
  }

  let mode: Mode

  /// No authentication: anyone who reaches the port and knows the cluster id is a member or an admin client.
  public static let insecure = TCPSecurity(mode: .insecure)

  /// Members prove `clusterSecret` to each other; clients prove the secret of one of `clients`.
  public static func authenticated(clusterSecret: TCPSecret, clients: TCPCredentials = TCPCredentials.empty)
    -> TCPSecurity
  {
    TCPSecurity(mode: .authenticated(clusterSecret: clusterSecret, clients: clients))
  }

  /// Loads the cluster secret and, if given, the clients' credentials from files.
  /// - Throws: ``TCPSecurityError`` naming the file and what is wrong with it.
  public static func authenticated(clusterSecretFile: String, credentialsFile: String?) throws(TCPSecurityError)
    -> TCPSecurity
  {
    let secret = try TCPSecret.load(file: clusterSecretFile)
    let clients = try credentialsFile.map { (path) throws(TCPSecurityError) in try TCPCredentials.load(file: path) }
    return .authenticated(clusterSecret: secret, clients: clients ?? TCPCredentials.empty)
  }

  /// Whether connections are authenticated.
  public var isAuthenticated: Bool { mode != .insecure }

  public var description: String {
    switch mode {
    case .insecure: "insecure (no authentication)"
    case .authenticated(_, let clients): "HMAC-SHA-256 authentication, \(clients.entries.count) client credentials"
    }
  }
}

/// Why a secret or credentials could not be used.
public enum TCPSecurityError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The file could not be opened or read.
  case unreadable(path: String, errno: Int32)
  /// The path is not a regular file.
  case notARegularFile(path: String)
  /// Group or others may read or write the file.
  case tooPermissive(path: String, mode: UInt32)
  /// The secret is shorter than allowed.
  case tooShort(path: String?, bytes: Int, minimum: Int)
  /// The file is larger than a secret or credentials file may be.
  case tooLarge(path: String, bytes: Int, maximum: Int)
  /// A line of a credentials file is wrong.
  case badCredentials(path: String, line: Int, reason: String)
  /// A principal's name is empty, too long, or has characters other than letters, digits, `.`, `_`, `-`.
  case invalidName(String)
  /// Text that should be hexadecimal is not.
  case notHex(String)

  public var description: String {
    switch self {
    case .unreadable(let path, let code): return "cannot read the secret file \(path): \(errnoDescription(code))"
    case .notARegularFile(let path): return "the secret file \(path) is not a regular file"
    case .tooPermissive(let path, let mode):
      return "the secret file \(path) has mode 0\(String(mode & 0o7777, radix: 8)): group and others must have no "
        + "access to it (run chmod 600 \(path))"
    case .tooShort(let path, let bytes, let minimum):
      return "the secret\(path.map { " in \($0)" } ?? "") has \(bytes) bytes; at least \(minimum) are needed "
        + "(head -c 32 /dev/urandom > FILE)"
    case .tooLarge(let path, let bytes, let maximum):
      return "the secret file \(path) has \(bytes) bytes; at most \(maximum) are read"
    case .badCredentials(let path, let line, let reason): return "credentials file \(path), line \(line): \(reason)"
    case .invalidName(let name):
      return "'\(name)' is not a principal name (letters, digits, '.', '_', '-'; at most 64)"
    case .notHex(let what): return "expected hexadecimal digits (an even count), got \(what)"
    }
  }
}

/// Reads a secret or credentials file after checking that it is a regular file private to its owner.
func readSecretFile(_ path: String, maximumBytes: Int = TCPSecret.maximumFileByteCount) throws(TCPSecurityError)
  -> [UInt8]
{
  var fd: Int32
  repeat { fd = open(path, O_RDONLY | O_CLOEXEC) } while fd < 0 && errno == EINTR
  guard fd >= 0 else { throw .unreadable(path: path, errno: errno) }
  defer { Glibc.close(fd) }
  var info = stat()
  guard fstat(fd, &info) == 0 else { throw .unreadable(path: path, errno: errno) }
  guard info.st_mode & S_IFMT == S_IFREG else { throw .notARegularFile(path: path) }
  guard info.st_mode & 0o077 == 0 else { throw .tooPermissive(path: path, mode: UInt32(info.st_mode)) }
  guard Int(info.st_size) <= maximumBytes else {
    throw .tooLarge(path: path, bytes: Int(info.st_size), maximum: maximumBytes)
  }
  var bytes = [UInt8](repeating: 0, count: maximumBytes + 1)
  var filled = 0
  while filled < bytes.count {
    let count = bytes.withUnsafeMutableBytes { raw in
      Glibc.read(fd, raw.baseAddress! + filled, raw.count - filled)  // safe: the buffer is non-empty, so a base exists
    }
    if count > 0 {
      filled += count
    } else if count == 0 {
      break
    } else if errno != EINTR {
      throw .unreadable(path: path, errno: errno)
    }
  }
  guard filled <= maximumBytes else { throw .tooLarge(path: path, bytes: filled, maximum: maximumBytes) }
  return Array(bytes[0..<filled])
}

/// The bytes of hexadecimal text (whitespace around it ignored), or `nil` if it is not an even number of hex
/// digits.
func decodeHex(_ text: some StringProtocol) -> [UInt8]? {
  let digits = Array(text.utf8).drop { isBlank($0) }.reversed().drop { isBlank($0) }.reversed()
  guard !digits.isEmpty, digits.count % 2 == 0 else { return nil }
  var bytes: [UInt8] = []
  bytes.reserveCapacity(digits.count / 2)
  var high: UInt8?
  for digit in digits {
    let value: UInt8
    switch digit {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): value = digit - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): value = digit - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): value = digit - UInt8(ascii: "A") + 10
    default: return nil
    }
    if let first = high {
      bytes.append(first << 4 | value)
      high = nil
    } else {
      high = value
    }
  }
  return bytes
}

private func isBlank(_ byte: UInt8) -> Bool {
  byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\n") || byte == UInt8(ascii: "\r") || byte == UInt8(ascii: "\t")
}
