/// Whether `lhs` and `rhs` hold the same bytes, taking the same time wherever they first differ.
///
/// Use it to check a message authentication code received from a peer: a comparison that stops at the
/// first differing byte tells an attacker, through its timing, how many leading bytes of a forged code
/// are right, and so lets them guess it byte by byte. This one reads every byte of both inputs and folds
/// the differences together with XOR and OR, with no branch on their contents. Inputs of different
/// lengths are unequal at once: lengths are not secret.
public func constantTimeEquals(_ lhs: UnsafeRawBufferPointer, _ rhs: UnsafeRawBufferPointer) -> Bool {
  guard lhs.count == rhs.count else { return false }
  var difference: UInt8 = 0
  for index in 0..<lhs.count { difference |= lhs[index] ^ rhs[index] }
  return difference == 0
}

/// Whether two byte collections are equal, in time independent of where they first differ.
///
/// Collections with contiguous storage (arrays, slices, ``SHA256/Digest``) are compared in place by
/// ``constantTimeEquals(_:_:)-(UnsafeRawBufferPointer,UnsafeRawBufferPointer)``; others byte by byte, also
/// without an early exit.
// Inlinable: a code is checked on every frame, and from another module the unspecialized generic call cost
// 130-230 ns against 15-30 ns specialized (release build, 32-byte digests).
@inlinable
public func constantTimeEquals(_ lhs: some Collection<UInt8>, _ rhs: some Collection<UInt8>) -> Bool {
  let contiguous = lhs.withContiguousStorageIfAvailable { left in
    rhs.withContiguousStorageIfAvailable { right in
      constantTimeEquals(UnsafeRawBufferPointer(left), UnsafeRawBufferPointer(right))
    }
  }
  if let contiguous, let result = contiguous { return result }
  guard lhs.count == rhs.count else { return false }
  var difference: UInt8 = 0
  for (left, right) in zip(lhs, rhs) { difference |= left ^ right }
  return difference == 0
}
