/// The order in which replicated state keeps string keys: by the UTF-8 bytes of their canonical composition (NFC).
///
/// Swift's `==` on strings is canonical equivalence, and this order agrees with it: two keys are equal exactly when
/// neither precedes the other. It is also a strict total order, which Swift's own `<` on strings is not on this
/// toolchain (6.3): when one string's NFC is a proper prefix of the other's and the two are spelled in different
/// forms, `<` answers `false` both ways although `==` is `false` — `"\u{E9}e" < "e\u{301}"` and
/// `"e\u{301}" < "\u{E9}e"` are both `false`. Sorted structures built on `<` then lose or repeat keys, and sorting
/// the keys of a set or dictionary (whose iteration order differs from process to process) can give replicas
/// different orders. Every order that replicated state depends on, or that a snapshot records, uses this one.
///
/// Keys of ASCII characters alone (the common case) compare as their bytes, with no normalisation.
public enum KeyOrder {
  /// Whether `a` comes before `b`.
  @inlinable public static func precedes(_ a: String, _ b: String) -> Bool {
    if let ascii = asciiPrecedes(a, b) { return ascii }
    // `_nfcCodeUnits` is the standard library's own normalisation, the one `==` and hashing use: public
    // (underscored) API, as Foundation uses it.
    return a._nfcCodeUnits.lexicographicallyPrecedes(b._nfcCodeUnits)
  }

  /// `a` sorted in key order.
  @inlinable public static func sorted(_ keys: some Sequence<String>) -> [String] {
    keys.sorted(by: precedes)
  }

  /// The later of `a` and `b` in key order.
  @inlinable public static func max(_ a: String, _ b: String) -> String { precedes(a, b) ? b : a }

  /// The byte order of `a` and `b` when both are ASCII (already NFC, so their bytes are their NFC), else `nil`.
  @usableFromInline static func asciiPrecedes(_ a: String, _ b: String) -> Bool? {
    // `nil` from either call: a string without contiguous UTF-8 (not native), which the general path handles.
    let answer = a.utf8.withContiguousStorageIfAvailable { x -> Bool? in
      let inner = b.utf8.withContiguousStorageIfAvailable { y -> Bool? in
        var high: UInt8 = 0
        for byte in x { high |= byte }
        for byte in y { high |= byte }
        guard high < 0x80 else { return nil }
        return x.lexicographicallyPrecedes(y)
      }
      return inner ?? nil
    }
    return answer ?? nil
  }
}
