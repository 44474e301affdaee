/// SHA-256 (FIPS 180-4), the hash under Quorum's message authentication codes and key derivation.
///
/// Feed bytes with ``update(_:)-(UnsafeRawBufferPointer)`` as they arrive and read the ``Digest`` with
/// ``finalize()``, or hash a whole message with ``hash(_:)-(UnsafeRawBufferPointer)``. Whole 64-byte blocks
/// are compressed straight from the caller's buffer; only a trailing partial block is copied, into storage
/// inside the value, so hashing never allocates. The value is a plain struct of 112 bytes: copying
/// it forks the computation, which is how ``HMACSHA256`` reuses a keyed state for every message.
public struct SHA256: Sendable {
  /// The number of bytes SHA-256 compresses at a time.
  public static let blockByteCount = 64

  /// The chaining value H(0)...H(7) of FIPS 180-4.
  private var state = State.initial
  /// A partial block waiting for more input: its first `bufferedByteCount` bytes are meaningful.
  private var buffer = Block()
  private var bufferedByteCount = 0
  /// The number of message bytes hashed so far, for the length field of the padding.
  private var totalByteCount: UInt64 = 0

  /// Starts hashing an empty message.
  public init() {}

  /// Appends `bytes` to the message.
  public mutating func update(_ bytes: UnsafeRawBufferPointer) {
    guard var input = bytes.baseAddress, bytes.count > 0 else { return }
    var remaining = bytes.count
    // Work on locals so that the closures below never overlap an access to `self`.
    var state = self.state
    var buffer = self.buffer
    var buffered = bufferedByteCount
    totalByteCount &+= UInt64(remaining)
    if buffered > 0 {
      let taken = min(Self.blockByteCount - buffered, remaining)
      withUnsafeMutableBytes(of: &buffer) { block in
        UnsafeMutableRawBufferPointer(rebasing: block[buffered..<(buffered + taken)])
          .copyMemory(from: UnsafeRawBufferPointer(start: input, count: taken))
      }
      buffered += taken
      input += taken
      remaining -= taken
      if buffered == Self.blockByteCount {
        withUnsafeBytes(of: &buffer) { Self.compress(&state, blocks: $0, blockCount: 1) }
        buffered = 0
      }
    }
    let wholeBlocks = remaining / Self.blockByteCount
    if wholeBlocks > 0 {
      let byteCount = wholeBlocks * Self.blockByteCount
      Self.compress(&state, blocks: UnsafeRawBufferPointer(start: input, count: byteCount), blockCount: wholeBlocks)
      input += byteCount
      remaining -= byteCount
    }
    if remaining > 0 {
      // Here `buffered` is 0: a partial buffer was either completed above or absorbed all the input.
      withUnsafeMutableBytes(of: &buffer) { block in
        UnsafeMutableRawBufferPointer(rebasing: block[0..<remaining])
          .copyMemory(from: UnsafeRawBufferPointer(start: input, count: remaining))
      }
      buffered = remaining
    }
    self.state = state
    self.buffer = buffer
    bufferedByteCount = buffered
  }

  /// Appends `bytes` to the message.
  public mutating func update(_ bytes: [UInt8]) {
    bytes.withUnsafeBytes { update($0) }
  }

  /// Appends any sequence of bytes to the message (contiguous collections are read in place).
  public mutating func update(_ bytes: some Sequence<UInt8>) {
    if bytes.withContiguousStorageIfAvailable({ update(UnsafeRawBufferPointer($0)) }) != nil { return }
    var chunk = Block()
    var count = 0
    for byte in bytes {
      withUnsafeMutableBytes(of: &chunk) { $0[count] = byte }
      count += 1
      if count == Self.blockByteCount {
        withUnsafeBytes(of: &chunk) { update($0) }
        count = 0
      }
    }
    withUnsafeBytes(of: &chunk) { update(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
  }

  /// The digest of the message so far.
  ///
  /// This does not change the value: more bytes may be appended afterwards and a later call gives the
  /// digest of the longer message.
  public func finalize() -> Digest {
    var state = self.state
    var block = buffer
    let used = bufferedByteCount
    let bitLength = totalByteCount &* 8
    // Padding (FIPS 180-4 §5.1.1): a 1 bit, zeros up to 56 mod 64 bytes, then the bit length big-endian.
    withUnsafeMutableBytes(of: &block) { bytes in
      bytes[used] = 0x80
      for index in (used + 1)..<Self.blockByteCount { bytes[index] = 0 }
      if used >= Self.blockByteCount - 8 {
        Self.compress(&state, blocks: UnsafeRawBufferPointer(bytes), blockCount: 1)
        for index in 0..<used + 1 { bytes[index] = 0 }
      }
      bytes.storeBytes(of: bitLength.bigEndian, toByteOffset: Self.blockByteCount - 8, as: UInt64.self)
      Self.compress(&state, blocks: UnsafeRawBufferPointer(bytes), blockCount: 1)
    }
    return Digest(state)
  }

  /// The digest of `bytes`.
  public static func hash(_ bytes: UnsafeRawBufferPointer) -> Digest {
    var hasher = SHA256()
    hasher.update(bytes)
    return hasher.finalize()
  }

  /// The digest of `bytes`.
  public static func hash(_ bytes: [UInt8]) -> Digest {
    bytes.withUnsafeBytes { hash($0) }
  }

  /// The digest of any sequence of bytes.
  public static func hash(_ bytes: some Sequence<UInt8>) -> Digest {
    var hasher = SHA256()
    hasher.update(bytes)
    return hasher.finalize()
  }
}

extension SHA256 {
  /// A SHA-256 digest: 32 bytes, readable as a collection of bytes.
  ///
  /// Equality takes the same time wherever the digests differ (see
  /// ``constantTimeEquals(_:_:)-(Collection<UInt8>,_)``), so a digest used as a message authentication code
  /// may be compared with `==`.
  public struct Digest: Sendable, Hashable, RandomAccessCollection, CustomStringConvertible {
    /// The length of a digest in bytes.
    public static let byteCount = 32

    /// The eight words, each stored big-endian so that the tuple's memory is the digest's bytes.
    @usableFromInline internal var words: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32)

    fileprivate init(_ state: State) {
      words = (
        state.h0.bigEndian, state.h1.bigEndian, state.h2.bigEndian, state.h3.bigEndian,
        state.h4.bigEndian, state.h5.bigEndian, state.h6.bigEndian, state.h7.bigEndian
      )
    }

    /// Always 0.
    public var startIndex: Int { 0 }
    /// Always 32.
    public var endIndex: Int { Self.byteCount }

    /// The byte at `position` (0..<32).
    public subscript(position: Int) -> UInt8 {
      precondition((0..<Self.byteCount).contains(position), "digest byte index \(position) is outside 0..<32")
      return withUnsafeBytes { $0[position] }
    }

    /// Calls `body` with the digest's 32 bytes.
    @inlinable
    public func withUnsafeBytes<Result, Failure: Error>(
      _ body: (UnsafeRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
      var copy = words
      return try Swift.withUnsafeBytes(of: &copy) { (bytes) throws(Failure) -> Result in try body(bytes) }
    }

    /// Lets byte-collection algorithms (and ``constantTimeEquals(_:_:)-(Collection<UInt8>,_)``) read the
    /// digest in place.
    // Inlinable, like `withUnsafeBytes`: checking a frame's code compares a digest on every frame, and the
    // unspecialized generic call from another module costs ~100 ns more than the comparison itself.
    @inlinable
    public func withContiguousStorageIfAvailable<Result>(
      _ body: (UnsafeBufferPointer<UInt8>) throws -> Result
    ) rethrows -> Result? {
      var copy = words
      return try Swift.withUnsafeBytes(of: &copy) { bytes in
        try bytes.withMemoryRebound(to: UInt8.self) { try body($0) }
      }
    }

    /// The digest in lowercase hexadecimal, as printed by `sha256sum`.
    public var description: String {
      let digits = Array("0123456789abcdef".utf8)
      var text: [UInt8] = []
      text.reserveCapacity(2 * Self.byteCount)
      for byte in self {
        text.append(digits[Int(byte >> 4)])
        text.append(digits[Int(byte & 0x0f)])
      }
      return String(decoding: text, as: UTF8.self)
    }

    /// Compares all 32 bytes whatever the first difference, so timing reveals nothing about a secret code.
    public static func == (lhs: Digest, rhs: Digest) -> Bool {
      lhs.withUnsafeBytes { left in rhs.withUnsafeBytes { right in constantTimeEquals(left, right) } }
    }

    public func hash(into hasher: inout Hasher) {
      withUnsafeBytes { hasher.combine(bytes: $0) }
    }
  }
}

extension SHA256 {
  /// The eight 32-bit working words carried from block to block.
  fileprivate struct State {
    var h0, h1, h2, h3, h4, h5, h6, h7: UInt32

    /// H(0) of FIPS 180-4 §5.3.3: the first 32 bits of the fractional parts of the square roots of the
    /// first eight primes.
    static let initial = State(
      h0: 0x6A09_E667, h1: 0xBB67_AE85, h2: 0x3C6E_F372, h3: 0xA54F_F53A,
      h4: 0x510E_527F, h5: 0x9B05_688C, h6: 0x1F83_D9AB, h7: 0x5BE0_CD19)
  }

  /// 64 bytes of storage for a partial block, kept inline in the value (no allocation).
  fileprivate struct Block {
    var words: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
  }

  /// K of FIPS 180-4 §4.2.2: the first 32 bits of the fractional parts of the cube roots of the first 64
  /// primes.
  private static let roundConstants: [UInt32] = [
    0x428A_2F98, 0x7137_4491, 0xB5C0_FBCF, 0xE9B5_DBA5, 0x3956_C25B, 0x59F1_11F1, 0x923F_82A4, 0xAB1C_5ED5,
    0xD807_AA98, 0x1283_5B01, 0x2431_85BE, 0x550C_7DC3, 0x72BE_5D74, 0x80DE_B1FE, 0x9BDC_06A7, 0xC19B_F174,
    0xE49B_69C1, 0xEFBE_4786, 0x0FC1_9DC6, 0x240C_A1CC, 0x2DE9_2C6F, 0x4A74_84AA, 0x5CB0_A9DC, 0x76F9_88DA,
    0x983E_5152, 0xA831_C66D, 0xB003_27C8, 0xBF59_7FC7, 0xC6E0_0BF3, 0xD5A7_9147, 0x06CA_6351, 0x1429_2967,
    0x27B7_0A85, 0x2E1B_2138, 0x4D2C_6DFC, 0x5338_0D13, 0x650A_7354, 0x766A_0ABB, 0x81C2_C92E, 0x9272_2C85,
    0xA2BF_E8A1, 0xA81A_664B, 0xC24B_8B70, 0xC76C_51A3, 0xD192_E819, 0xD699_0624, 0xF40E_3585, 0x106A_A070,
    0x19A4_C116, 0x1E37_6C08, 0x2748_774C, 0x34B0_BCB5, 0x391C_0CB3, 0x4ED8_AA4A, 0x5B9C_CA4F, 0x682E_6FF3,
    0x748F_82EE, 0x78A5_636F, 0x84C8_7814, 0x8CC7_0208, 0x90BE_FFFA, 0xA450_6CEB, 0xBEF9_A3F7, 0xC671_78F2,
  ]

  @inline(__always)
  private static func rotateRight(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }

  /// One round of FIPS 180-4 §6.2.2 step 3, with the working variables passed in their current roles.
  ///
  /// Instead of shifting all eight variables every round, the caller rotates which variable plays which
  /// role: the round writes the new `e` into `d`'s variable and the new `a` into `h`'s, and eight rounds
  /// bring the roles back to where they started.
  @inline(__always)
  private static func round(
    _ a: UInt32, _ b: UInt32, _ c: UInt32, _ d: inout UInt32, _ e: UInt32, _ f: UInt32, _ g: UInt32,
    _ h: inout UInt32, _ constantPlusWord: UInt32
  ) {
    // Sigma1(e) = ROTR6(e) ^ ROTR11(e) ^ ROTR25(e), with the rotations nested to save register copies.
    let bigSigma1 = rotateRight(e ^ rotateRight(e ^ rotateRight(e, 14), 5), 6)
    let choose = g ^ (e & (f ^ g))  // (e AND f) XOR (NOT e AND g)
    let t1 = h &+ bigSigma1 &+ choose &+ constantPlusWord
    // Sigma0(a) = ROTR2(a) ^ ROTR13(a) ^ ROTR22(a), nested likewise.
    let bigSigma0 = rotateRight(a ^ rotateRight(a ^ rotateRight(a, 9), 11), 2)
    let majority = (a & b) | (c & (a | b))  // each bit is the majority of a, b, c
    d &+= t1
    h = t1 &+ bigSigma0 &+ majority
  }

  /// Runs the compression function (FIPS 180-4 §6.2.2) over `blockCount` consecutive blocks of `blocks`.
  private static func compress(_ state: inout State, blocks: UnsafeRawBufferPointer, blockCount: Int) {
    precondition(
      blocks.count >= blockCount * blockByteCount, "\(blockCount) blocks need more than \(blocks.count) bytes")
    guard let base = blocks.baseAddress else { return }
    var (h0, h1, h2, h3) = (state.h0, state.h1, state.h2, state.h3)
    var (h4, h5, h6, h7) = (state.h4, state.h5, state.h6, state.h7)
    roundConstants.withUnsafeBufferPointer { k in
      withUnsafeTemporaryAllocation(of: UInt32.self, capacity: 64) { w in
        for blockIndex in 0..<blockCount {
          let block = base + blockIndex * blockByteCount
          for t in 0..<16 {
            w[t] = UInt32(bigEndian: block.loadUnaligned(fromByteOffset: 4 * t, as: UInt32.self))
          }
          for t in 16..<64 {
            let x = w[t - 15]
            let y = w[t - 2]
            let sigma0 = rotateRight(x, 7) ^ rotateRight(x, 18) ^ (x >> 3)
            let sigma1 = rotateRight(y, 17) ^ rotateRight(y, 19) ^ (y >> 10)
            w[t] = sigma1 &+ w[t - 7] &+ sigma0 &+ w[t - 16]
          }
          var (a, b, c, d, e, f, g, h) = (h0, h1, h2, h3, h4, h5, h6, h7)
          for t in stride(from: 0, to: 64, by: 8) {
            round(a, b, c, &d, e, f, g, &h, k[t] &+ w[t])
            round(h, a, b, &c, d, e, f, &g, k[t + 1] &+ w[t + 1])
            round(g, h, a, &b, c, d, e, &f, k[t + 2] &+ w[t + 2])
            round(f, g, h, &a, b, c, d, &e, k[t + 3] &+ w[t + 3])
            round(e, f, g, &h, a, b, c, &d, k[t + 4] &+ w[t + 4])
            round(d, e, f, &g, h, a, b, &c, k[t + 5] &+ w[t + 5])
            round(c, d, e, &f, g, h, a, &b, k[t + 6] &+ w[t + 6])
            round(b, c, d, &e, f, g, h, &a, k[t + 7] &+ w[t + 7])
          }
          h0 &+= a
          h1 &+= b
          h2 &+= c
          h3 &+= d
          h4 &+= e
          h5 &+= f
          h6 &+= g
          h7 &+= h
        }
      }
    }
    state = State(h0: h0, h1: h1, h2: h2, h3: h3, h4: h4, h5: h5, h6: h6, h7: h7)
  }
}
