/// HMAC-SHA-256 (RFC 2104), the message authentication code of Quorum's authenticated connections.
///
/// A code proves that the message came from a holder of the key and was not altered; it does not hide the
/// message. Creating the value with ``init(key:)-(UnsafeRawBufferPointer)`` hashes the padded key into an
/// inner and an outer ``SHA256`` state once. Each message then costs only its own blocks plus at most two
/// more compressions, provided the keyed value is copied for each message rather than rebuilt:
///
/// ```swift
/// let keyed = HMACSHA256(key: sessionKey)  // once per connection
/// let code = keyed.authenticationCode(for: frame)  // per frame: copies the keyed state
/// ```
///
/// Check a received code with ``constantTimeEquals(_:_:)-(UnsafeRawBufferPointer,UnsafeRawBufferPointer)``
/// or `==` on ``SHA256/Digest``, never with a comparison that stops at the first difference.
public struct HMACSHA256: Sendable {
  /// An HMAC-SHA-256 code: 32 bytes. Send a prefix of at least 16 bytes if a shorter code is wanted
  /// (RFC 2104 §5).
  public typealias AuthenticationCode = SHA256.Digest

  /// SHA-256 after absorbing the key XOR ipad, then the message so far.
  private var inner: SHA256
  /// SHA-256 after absorbing the key XOR opad.
  private let outer: SHA256

  /// Prepares to authenticate messages under `key` (any length; keys longer than 64 bytes are hashed
  /// first, as RFC 2104 specifies, and keys of at least 32 random bytes are recommended).
  public init(key: UnsafeRawBufferPointer) {
    var padded = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
    withUnsafeMutableBytes(of: &padded) { block in
      if key.count > SHA256.blockByteCount {
        SHA256.hash(key).withUnsafeBytes { block.copyMemory(from: $0) }
      } else {
        block.copyMemory(from: key)
      }
    }
    var inner = SHA256()
    var outer = SHA256()
    withUnsafeMutableBytes(of: &padded) { block in
      for index in 0..<block.count { block[index] ^= 0x36 }
      inner.update(UnsafeRawBufferPointer(block))
      for index in 0..<block.count { block[index] ^= 0x36 ^ 0x5c }
      outer.update(UnsafeRawBufferPointer(block))
    }
    self.inner = inner
    self.outer = outer
  }

  /// Prepares to authenticate messages under `key`.
  public init(key: [UInt8]) {
    self = key.withUnsafeBytes { HMACSHA256(key: $0) }
  }

  /// Prepares to authenticate messages under `key`, given as any sequence of bytes.
  public init(key: some Sequence<UInt8>) {
    self.init(key: Array(key))
  }

  /// Appends `bytes` to the message.
  public mutating func update(_ bytes: UnsafeRawBufferPointer) {
    inner.update(bytes)
  }

  /// Appends `bytes` to the message.
  public mutating func update(_ bytes: [UInt8]) {
    inner.update(bytes)
  }

  /// Appends any sequence of bytes to the message.
  public mutating func update(_ bytes: some Sequence<UInt8>) {
    inner.update(bytes)
  }

  /// The code of the message so far. The value is unchanged, so more bytes may still be appended.
  public func finalize() -> AuthenticationCode {
    let innerDigest = inner.finalize()
    var outer = self.outer
    innerDigest.withUnsafeBytes { outer.update($0) }
    return outer.finalize()
  }

  /// The code of `message` alone, computed from a copy of this keyed state (the usual per-frame call: the
  /// value must hold no message bytes yet).
  public func authenticationCode(for message: UnsafeRawBufferPointer) -> AuthenticationCode {
    var copy = self
    copy.update(message)
    return copy.finalize()
  }

  /// The code of `message` alone, computed from a copy of this keyed state.
  public func authenticationCode(for message: [UInt8]) -> AuthenticationCode {
    message.withUnsafeBytes { authenticationCode(for: $0) }
  }

  /// The code of `message` alone, computed from a copy of this keyed state.
  public func authenticationCode(for message: some Sequence<UInt8>) -> AuthenticationCode {
    var copy = self
    copy.update(message)
    return copy.finalize()
  }

  /// The HMAC-SHA-256 code of `message` under `key`.
  public static func authenticationCode(for message: [UInt8], key: [UInt8]) -> AuthenticationCode {
    HMACSHA256(key: key).authenticationCode(for: message)
  }

  /// The HMAC-SHA-256 code of `message` under `key`, both given as any sequences of bytes.
  public static func authenticationCode(
    for message: some Sequence<UInt8>, key: some Sequence<UInt8>
  ) -> AuthenticationCode {
    HMACSHA256(key: key).authenticationCode(for: message)
  }
}
