import CQuorumSystem

/// A TCP address: a numeric IPv4 or IPv6 host, or a host name, and a port.
///
/// Parses `127.0.0.1:7001`, `[::1]:7001`, `localhost:7001` (read as `127.0.0.1`) and
/// `node-1.example.internal:7001`. A host name is resolved off the event loop, on a resolver thread, each time
/// a connection to it is attempted (or a listener bound), so a changed DNS record takes effect at the next
/// reconnect. Of the name's addresses, the first IPv4 one is used, or the first address if it has none. A
/// trailing dot (`node-1.example.internal.`) marks a fully qualified name. Port 0 asks the operating system
/// for a free port when listening.
public struct TCPAddress: Sendable, Hashable, CustomStringConvertible, LosslessStringConvertible {
  /// The host: a numeric address without brackets (`127.0.0.1`, `::1`) or a host name.
  public var host: String
  /// The port.
  public var port: UInt16

  /// Creates an address from a host and a port.
  /// - Throws: ``TCPTransportError/invalidAddress(_:reason:)`` if `host` is neither a numeric IPv4 or IPv6
  ///   address nor a valid host name (letters, digits and hyphens in dot-separated labels of at most 63
  ///   characters, 253 in all).
  public init(host: String, port: UInt16) throws(TCPTransportError) {
    let host = host == "localhost" ? "127.0.0.1" : host
    guard cq_address_family(host) != 0 || Self.isHostName(host) else {
      throw .invalidAddress(host, reason: "neither a numeric IPv4 or IPv6 address nor a valid host name")
    }
    self.host = host
    self.port = port
  }

  /// Whether the host is a numeric address, used without resolving.
  public var isNumeric: Bool { cq_address_family(host) != 0 }

  /// Whether the host is the unspecified address (`0.0.0.0` or `::`): a listener's "every interface", which no
  /// one can connect to from elsewhere.
  public var isUnspecified: Bool { isNumeric && host.allSatisfy { $0 == "0" || $0 == "." || $0 == ":" } }

  /// Whether `text` is a host name in the syntax of RFC 1123.
  static func isHostName(_ text: String) -> Bool {
    var bytes = Array(text.utf8)
    if bytes.count > 1, bytes.last == UInt8(ascii: ".") { bytes.removeLast() }  // fully qualified
    guard !bytes.isEmpty, bytes.count <= 253 else { return false }
    for label in bytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
      guard !label.isEmpty, label.count <= 63, label.first != UInt8(ascii: "-"), label.last != UInt8(ascii: "-")
      else { return false }
      let valid = label.allSatisfy { byte in
        (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
          || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
          || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || byte == UInt8(ascii: "-")
      }
      guard valid else { return false }
    }
    // An all-digit last label is a mistyped numeric address (`10.0.0.300`), not a name.
    let last = bytes.split(separator: UInt8(ascii: ".")).last ?? []
    return !last.allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
  }

  /// This address with its host resolved to a numeric address (itself if it already is one). Blocks on
  /// the system resolver: call it off the event loop.
  func resolved() -> Result<TCPAddress, TCPCloseReason> {
    if isNumeric { return .success(self) }
    var buffer = [CChar](repeating: 0, count: 64)
    let code = cq_resolve(host, &buffer, Int32(buffer.count))
    guard code == 0 else {
      let message = String(cString: cq_resolve_error(code))
      return .failure(.unresolvable(host: host, reason: message))
    }
    let numeric = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    var copy = self
    copy.host = numeric
    return .success(copy)
  }

  /// Parses `host:port` (IPv6 hosts in brackets); `nil` if malformed.
  public init?(_ description: String) {
    guard let parsed = try? Self.parse(description) else { return nil }
    self = parsed
  }

  /// Parses `host:port` (IPv6 hosts in brackets).
  /// - Throws: ``TCPTransportError/invalidAddress(_:reason:)`` saying what is wrong.
  public static func parse(_ text: String) throws(TCPTransportError) -> TCPAddress {
    let host: Substring
    let portText: Substring
    if text.hasPrefix("[") {
      guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
        throw .invalidAddress(text, reason: "expected [ipv6]:port")
      }
      host = text[text.index(after: text.startIndex)..<close]
      portText = text[text.index(close, offsetBy: 2)...]
    } else {
      guard let colon = text.lastIndex(of: ":") else { throw .invalidAddress(text, reason: "expected host:port") }
      host = text[..<colon]
      portText = text[text.index(after: colon)...]
    }
    guard let port = UInt16(portText) else {
      throw .invalidAddress(text, reason: "the port '\(portText)' is not a number from 0 to 65535")
    }
    do {
      return try TCPAddress(host: String(host), port: port)
    } catch {
      throw .invalidAddress(text, reason: "'\(host)' is neither a numeric IPv4 or IPv6 address nor a valid host name")
    }
  }

  /// `host:port`, with IPv6 hosts in brackets.
  public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

  /// The same host with another port.
  public func withPort(_ port: UInt16) -> TCPAddress {
    var copy = self
    copy.port = port
    return copy
  }
}
