/// What an authenticated client may do, from least to most: each role includes the ones below it.
///
/// The transport learns a client's role at the handshake (from the credentials file, next to the client's
/// secret) and hands it to the request handler with every request; deciding what a role allows is the
/// handler's business. A connection to a node that runs without authentication carries ``admin``: nothing was
/// checked, so nothing can be refused on the grounds of who the client is.
public enum ClientRole: UInt8, Sendable, Hashable, Comparable, CaseIterable, CustomStringConvertible {
  /// Reads and status.
  case read = 1
  /// Reads plus writes: puts, deletes, locks, transactions.
  case write = 2
  /// Everything, including membership changes and leadership transfer.
  case admin = 3

  /// Parses `read`, `write` or `admin`.
  public init?(name: some StringProtocol) {
    switch name {
    case "read": self = .read
    case "write": self = .write
    case "admin": self = .admin
    default: return nil
    }
  }

  /// `read`, `write` or `admin`.
  public var description: String {
    switch self {
    case .read: "read"
    case .write: "write"
    case .admin: "admin"
    }
  }

  public static func < (lhs: ClientRole, rhs: ClientRole) -> Bool { lhs.rawValue < rhs.rawValue }
}
