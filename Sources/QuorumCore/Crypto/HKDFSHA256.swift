/// HKDF with HMAC-SHA-256 (RFC 5869): turns a shared secret into keys for specific purposes.
///
/// ``extract(salt:inputKeyMaterial:)`` concentrates the secret's entropy into a 32-byte pseudorandom key;
/// ``expand(pseudoRandomKey:info:outputByteCount:)`` stretches that into as many key bytes as needed, bound
/// to `info` (for example the connection's nonces and a label naming the key's use), so that keys for
/// different purposes are independent. ``deriveKey(inputKeyMaterial:salt:info:outputByteCount:)`` does both.
public enum HKDFSHA256 {
  /// The most bytes one expansion can produce: 255 HMAC-SHA-256 blocks (RFC 5869 §2.3).
  public static let maximumOutputByteCount = 255 * SHA256.Digest.byteCount

  /// The pseudorandom key (PRK) for `inputKeyMaterial`: HMAC-SHA-256 keyed by `salt` (RFC 5869 §2.2).
  ///
  /// An empty salt stands for the RFC's default of 32 zero bytes (HMAC pads both to the same key).
  public static func extract(
    salt: some Sequence<UInt8>, inputKeyMaterial: some Sequence<UInt8>
  ) -> SHA256.Digest {
    HMACSHA256.authenticationCode(for: inputKeyMaterial, key: salt)
  }

  /// `outputByteCount` bytes of output keying material derived from `pseudoRandomKey` and `info`
  /// (RFC 5869 §2.3).
  ///
  /// - Throws: ``HKDFError/outputByteCountOutOfRange(requested:maximum:)`` unless `outputByteCount` is in
  ///   `0...maximumOutputByteCount`; ``HKDFError/pseudoRandomKeyTooShort(byteCount:minimum:)`` if the key is
  ///   shorter than a SHA-256 digest (pass the result of ``extract(salt:inputKeyMaterial:)``, not a raw
  ///   secret).
  public static func expand(
    pseudoRandomKey: some Sequence<UInt8>, info: some Sequence<UInt8>, outputByteCount: Int
  ) throws(HKDFError) -> [UInt8] {
    guard (0...maximumOutputByteCount).contains(outputByteCount) else {
      throw .outputByteCountOutOfRange(requested: outputByteCount, maximum: maximumOutputByteCount)
    }
    let key = Array(pseudoRandomKey)
    guard key.count >= SHA256.Digest.byteCount else {
      throw .pseudoRandomKeyTooShort(byteCount: key.count, minimum: SHA256.Digest.byteCount)
    }
    let info = Array(info)
    let keyed = HMACSHA256(key: key)
    var output: [UInt8] = []
    output.reserveCapacity(outputByteCount)
    // T(i) = HMAC(PRK, T(i-1) | info | i), with T(0) empty; the output is T(1) | T(2) | ... truncated.
    var previous: SHA256.Digest?
    var counter: UInt8 = 1
    while output.count < outputByteCount {
      var mac = keyed
      if let previous { previous.withUnsafeBytes { mac.update($0) } }
      mac.update(info)
      withUnsafeBytes(of: counter) { mac.update($0) }
      let block = mac.finalize()
      output.append(contentsOf: block.prefix(outputByteCount - output.count))
      previous = block
      counter &+= 1
    }
    return output
  }

  /// Extracts a pseudorandom key from `inputKeyMaterial` and `salt`, then expands it into
  /// `outputByteCount` bytes bound to `info`.
  ///
  /// - Throws: ``HKDFError/outputByteCountOutOfRange(requested:maximum:)`` unless `outputByteCount` is in
  ///   `0...maximumOutputByteCount`.
  public static func deriveKey(
    inputKeyMaterial: some Sequence<UInt8>, salt: some Sequence<UInt8>, info: some Sequence<UInt8>,
    outputByteCount: Int
  ) throws(HKDFError) -> [UInt8] {
    let pseudoRandomKey = extract(salt: salt, inputKeyMaterial: inputKeyMaterial)
    return try expand(pseudoRandomKey: pseudoRandomKey, info: info, outputByteCount: outputByteCount)
  }
}

/// A request HKDF cannot satisfy.
public enum HKDFError: Error, Equatable, CustomStringConvertible {
  /// More output than 255 blocks of HMAC-SHA-256, or a negative count, was requested.
  case outputByteCountOutOfRange(requested: Int, maximum: Int)
  /// The key given to expansion is shorter than a SHA-256 digest, so it cannot be the output of extraction.
  case pseudoRandomKeyTooShort(byteCount: Int, minimum: Int)

  public var description: String {
    switch self {
    case .outputByteCountOutOfRange(let requested, let maximum):
      "HKDF-SHA-256 can produce 0...\(maximum) bytes, not \(requested)"
    case .pseudoRandomKeyTooShort(let byteCount, let minimum):
      "HKDF-SHA-256 expansion needs a pseudorandom key of at least \(minimum) bytes, got \(byteCount)"
    }
  }
}
