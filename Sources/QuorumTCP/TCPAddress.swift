import CQuorumSystem

/// A TCP address: a numeric IPv4 or IPv6 host and a port.
///
/// Parses `127.0.0.1:7001`, `[::1]:7001` and `localhost:7001` (read as `127.0.0.1`). Host names are not
/// resolved: resolving them would block the event loop or need a resolver thread, and cluster files name
/// members by address anyway. Port 0 asks the operating system for a free port when listening.
public struct TCPAddress: Sendable, Hashable, CustomStringConvertible, LosslessStringConvertible {
  /// The numeric host, without brackets (`127.0.0.1`, `::1`).
  public var host: String
  /// The port.
  public var port: UInt16

  /// Creates an address from a numeric host and a port.
  /// - Throws: ``TCPTransportError/invalidAddress(_:reason:)`` if `host` is not a numeric IPv4 or IPv6 address.
  public init(host: String, port: UInt16) throws(TCPTransportError) {
    let host = host == "localhost" ? "127.0.0.1" : host
    guard cq_address_family(host) != 0 else {
      throw .invalidAddress(host, reason: "not a numeric IPv4 or IPv6 address (host names are not resolved)")
    }
    self.host = host
    self.port = port
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
      throw .invalidAddress(text, reason: "'\(host)' is not a numeric IPv4 or IPv6 address")
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
