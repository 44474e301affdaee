import QuorumCore
import QuorumTestSupport
import Testing

/// The bytes written as `hex` (two digits per byte, no separators), or nil if it is not valid hexadecimal.
private func bytes(hex: String) -> [UInt8]? {
  let digits = Array(hex.utf8)
  guard digits.count % 2 == 0 else { return nil }
  var result: [UInt8] = []
  for index in stride(from: 0, to: digits.count, by: 2) {
    guard let byte = UInt8(String(decoding: digits[index..<index + 2], as: UTF8.self), radix: 16) else { return nil }
    result.append(byte)
  }
  return result
}

private func ascii(_ text: String) -> [UInt8] { Array(text.utf8) }

/// FIPS 180-4 written out as plainly as possible, to check the fast implementation against: the constants
/// are computed from their definition (integer square and cube roots of the first primes), the message is
/// padded whole in an array, and every block is expanded to 64 words.
private func referenceSHA256(_ message: [UInt8]) -> [UInt8] {
  let primes = (2...311).filter { n in (2..<n).allSatisfy { n % $0 != 0 } }
  /// The largest x with x^power <= n.
  func integerRoot(_ n: UInt128, power: Int) -> UInt128 {
    var (low, high): (UInt128, UInt128) = (0, 1 << 40)
    while low < high {
      let middle = (low + high + 1) / 2
      if (0..<power).reduce(UInt128(1), { product, _ in product * middle }) <= n {
        low = middle
      } else {
        high = middle - 1
      }
    }
    return low
  }
  // The first 32 bits of the fractional parts of the roots.
  let k = primes.prefix(64).map { UInt32(truncatingIfNeeded: integerRoot(UInt128($0) << 96, power: 3)) }
  var h = primes.prefix(8).map { UInt32(truncatingIfNeeded: integerRoot(UInt128($0) << 64, power: 2)) }
  func rotr(_ x: UInt32, _ n: Int) -> UInt32 { (x >> UInt32(n)) | (x << UInt32(32 - n)) }

  var padded = message + [0x80]
  while padded.count % 64 != 56 { padded.append(0) }
  let bitLength = UInt64(message.count) * 8
  for shift in stride(from: 56, through: 0, by: -8) { padded.append(UInt8(truncatingIfNeeded: bitLength >> shift)) }

  for blockStart in stride(from: 0, to: padded.count, by: 64) {
    var w = (0..<16).map { t in
      padded[(blockStart + 4 * t)..<(blockStart + 4 * t + 4)].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
    }
    for t in 16..<64 {
      let s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3)
      let s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10)
      w.append(w[t - 16] &+ s0 &+ w[t - 7] &+ s1)
    }
    var v = h
    for t in 0..<64 {
      let t1 =
        v[7] &+ (rotr(v[4], 6) ^ rotr(v[4], 11) ^ rotr(v[4], 25)) &+ ((v[4] & v[5]) ^ (~v[4] & v[6])) &+ k[t] &+ w[t]
      let t2 = (rotr(v[0], 2) ^ rotr(v[0], 13) ^ rotr(v[0], 22)) &+ ((v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]))
      v = [t1 &+ t2, v[0], v[1], v[2], v[3] &+ t1, v[4], v[5], v[6]]
    }
    h = zip(h, v).map { $0 &+ $1 }
  }
  return h.flatMap { word in [24, 16, 8, 0].map { UInt8(truncatingIfNeeded: word >> $0) } }
}

@Suite("SHA-256")
struct SHA256Tests {
  @Test(
    "matches the FIPS 180-4 / NIST examples",
    arguments: [
      ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
      ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
      (
        "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
      ),
      (
        "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmn"
          + "hijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
        "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"
      ),
    ])
  func nistExamples(message: String, expected: String) throws {
    #expect(SHA256.hash(ascii(message)).description == expected)
    #expect(SHA256.hash(message.utf8).description == expected)
    let expectedBytes = try #require(bytes(hex: expected))
    #expect(Array(SHA256.hash(ascii(message))) == expectedBytes)
  }

  @Test("one million repetitions of 'a', hashed at once and in 1000 updates of 1000 bytes", .heavy)
  func millionA() {
    let expected = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
    let chunk = [UInt8](repeating: UInt8(ascii: "a"), count: 1_000)
    var hasher = SHA256()
    for _ in 0..<1_000 { hasher.update(chunk) }
    #expect(hasher.finalize().description == expected)
    #expect(SHA256.hash([UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)).description == expected)
  }

  @Test("the naive reference implementation itself gives the FIPS 180-4 examples")
  func referenceIsRight() {
    #expect(
      referenceSHA256(ascii("abc")) == bytes(hex: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"))
    #expect(referenceSHA256([]) == bytes(hex: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"))
  }

  @Test("every message length 0...200 hashes as the naive reference does", .heavy)
  func everyLengthMatchesReference() {
    var rng = SeededRandom(seed: 256)
    let message = (0..<200).map { _ in UInt8.random(in: 0...255, using: &rng) }
    for length in 0...200 {
      let prefix = Array(message[..<length])
      #expect(Array(SHA256.hash(prefix)) == referenceSHA256(prefix), "length \(length)")
    }
  }

  @Test("updates split at every offset 0...130 of a 200-byte message give the one-shot digest")
  func incrementalSplits() {
    var rng = SeededRandom(seed: 180)
    let message = (0..<200).map { _ in UInt8.random(in: 0...255, using: &rng) }
    let whole = SHA256.hash(message)
    for split in 0...130 {
      var hasher = SHA256()
      hasher.update(message[..<split])
      hasher.update(message[split...])
      #expect(hasher.finalize() == whole, "split at \(split)")
      // Three pieces: the split, then the rest cut again 37 bytes later (crossing a block boundary or not).
      let second = min(split + 37, message.count)
      var threePieces = SHA256()
      message.withUnsafeBytes { raw in
        threePieces.update(UnsafeRawBufferPointer(rebasing: raw[..<split]))
        threePieces.update(UnsafeRawBufferPointer(rebasing: raw[split..<second]))
        threePieces.update(UnsafeRawBufferPointer(rebasing: raw[second...]))
      }
      #expect(threePieces.finalize() == whole, "split at \(split) and \(second)")
    }
    var byteByByte = SHA256()
    for byte in message { byteByByte.update([byte]) }
    #expect(byteByByte.finalize() == whole)
    // A sequence without contiguous storage goes through the chunking path.
    #expect(SHA256.hash(message.lazy.map { $0 }) == whole)
  }

  @Test("finalize leaves the hasher usable: the next digest covers the longer message")
  func finalizeDoesNotConsume() {
    var hasher = SHA256()
    hasher.update(ascii("ab"))
    #expect(hasher.finalize() == SHA256.hash(ascii("ab")))
    hasher.update(ascii("c"))
    #expect(hasher.finalize().description == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
  }

  @Test("a digest is 32 bytes, equal digests hash alike, and different ones are unequal")
  func digestValue() {
    let abc = SHA256.hash(ascii("abc"))
    #expect(abc.count == SHA256.Digest.byteCount)
    #expect(abc.first == 0xba && abc.last == 0xad)
    #expect(abc.withUnsafeBytes { Array($0) } == Array(abc))
    #expect(Set([abc, SHA256.hash(ascii("abc")), SHA256.hash(ascii("abd"))]).count == 2)
    #expect(abc != SHA256.hash(ascii("abd")))
  }
}

@Suite("HMAC-SHA-256")
struct HMACSHA256Tests {
  @Test(
    "matches RFC 4231 test cases 1-7",
    arguments: [
      (
        "1", String(repeating: "0b", count: 20), ascii("Hi There"),
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
      ),
      (
        "2", "4a656665", ascii("what do ya want for nothing?"),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
      ),
      (
        "3", String(repeating: "aa", count: 20), [UInt8](repeating: 0xdd, count: 50),
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"
      ),
      (
        "4", "0102030405060708090a0b0c0d0e0f10111213141516171819", [UInt8](repeating: 0xcd, count: 50),
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"
      ),
      // Case 5 publishes only the first 128 bits.
      ("5", String(repeating: "0c", count: 20), ascii("Test With Truncation"), "a3b6167473100ee06e0c796c2955552b"),
      (
        "6", String(repeating: "aa", count: 131), ascii("Test Using Larger Than Block-Size Key - Hash Key First"),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
      ),
      (
        "7", String(repeating: "aa", count: 131),
        ascii(
          "This is a test using a larger than block-size key and a larger than block-size data. The key needs to "
            + "be hashed before being used by the HMAC algorithm."),
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"
      ),
    ] as [(String, String, [UInt8], String)])
  func rfc4231(testCase: String, keyHex: String, data: [UInt8], expected: String) throws {
    let key = try #require(bytes(hex: keyHex))
    let expectedBytes = try #require(bytes(hex: expected))
    let oneShot = HMACSHA256.authenticationCode(for: data, key: key)
    #expect(Array(oneShot.prefix(expectedBytes.count)) == expectedBytes, "test case \(testCase)")
    #expect(constantTimeEquals(oneShot.prefix(expectedBytes.count), expectedBytes), "test case \(testCase)")

    var incremental = HMACSHA256(key: key)
    incremental.update(data[..<(data.count / 2)])
    incremental.update(data[(data.count / 2)...])
    #expect(incremental.finalize() == oneShot, "test case \(testCase)")
    #expect(HMACSHA256(key: key).authenticationCode(for: data) == oneShot, "test case \(testCase)")
    #expect(HMACSHA256.authenticationCode(for: data.lazy.map { $0 }, key: key.lazy.map { $0 }) == oneShot)
  }

  @Test("one keyed state, copied per message, gives the codes that keying afresh gives")
  func keyedStateIsReusable() {
    var rng = SeededRandom(seed: 4231)
    let key = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
    let keyed = HMACSHA256(key: key)
    for length in [0, 1, 55, 56, 63, 64, 65, 200] {
      let message = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
      let code = keyed.authenticationCode(for: message)
      #expect(code == HMACSHA256.authenticationCode(for: message, key: key), "length \(length)")
      message.withUnsafeBytes { #expect(keyed.authenticationCode(for: $0) == code, "length \(length)") }
    }
  }

  @Test("flipping any single bit of a 100-byte message changes the code (300 seeded trials)")
  func singleBitFlipChangesCode() {
    var rng = SeededRandom(seed: 2104)
    for trial in 0..<300 {
      let key = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
      let message = (0..<100).map { _ in UInt8.random(in: 0...255, using: &rng) }
      let bit = Int.random(in: 0..<(message.count * 8), using: &rng)
      var flipped = message
      flipped[bit / 8] ^= 1 << (bit % 8)
      let keyed = HMACSHA256(key: key)
      #expect(
        keyed.authenticationCode(for: flipped) != keyed.authenticationCode(for: message),
        "trial \(trial) (seed \(rng.seed)), bit \(bit)")
    }
  }

  @Test("a different key gives a different code for the same message")
  func keyMatters() {
    let message = ascii("frame")
    let code = HMACSHA256.authenticationCode(for: message, key: [UInt8](repeating: 1, count: 32))
    var otherKey = [UInt8](repeating: 1, count: 32)
    otherKey[31] = 0
    #expect(HMACSHA256.authenticationCode(for: message, key: otherKey) != code)
  }
}

@Suite("HKDF-SHA-256")
struct HKDFSHA256Tests {
  @Test(
    "matches RFC 5869 test cases 1-3 (pseudorandom key and output)",
    arguments: [
      (
        "1", String(repeating: "0b", count: 22), "000102030405060708090a0b0c", "f0f1f2f3f4f5f6f7f8f9", 42,
        "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
      ),
      (
        "2",
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
          + "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
          + "404142434445464748494a4b4c4d4e4f",
        "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
          + "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
          + "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
        "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf"
          + "d0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeef"
          + "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
        82,
        "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
          + "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
          + "cc30c58179ec3e87c14c01d5c1f3434f1d87"
      ),
      (
        "3", String(repeating: "0b", count: 22), "", "", 42,
        "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
      ),
    ] as [(String, String, String, String, Int, String, String)])
  func rfc5869(
    testCase: String, ikmHex: String, saltHex: String, infoHex: String, length: Int, prkHex: String, okmHex: String
  ) throws {
    let ikm = try #require(bytes(hex: ikmHex))
    let salt = try #require(bytes(hex: saltHex))
    let info = try #require(bytes(hex: infoHex))
    let pseudoRandomKey = HKDFSHA256.extract(salt: salt, inputKeyMaterial: ikm)
    #expect(pseudoRandomKey.description == prkHex, "test case \(testCase)")
    let expanded = try HKDFSHA256.expand(pseudoRandomKey: pseudoRandomKey, info: info, outputByteCount: length)
    #expect(expanded == bytes(hex: okmHex), "test case \(testCase)")
    let derived = try HKDFSHA256.deriveKey(inputKeyMaterial: ikm, salt: salt, info: info, outputByteCount: length)
    #expect(derived == expanded, "test case \(testCase)")
  }

  @Test("expansion produces 0...255*32 bytes and refuses other counts and too-short keys")
  func limits() throws {
    let pseudoRandomKey = HKDFSHA256.extract(salt: ascii("salt"), inputKeyMaterial: ascii("secret"))
    let longest = try HKDFSHA256.expand(
      pseudoRandomKey: pseudoRandomKey, info: ascii("info"), outputByteCount: HKDFSHA256.maximumOutputByteCount)
    #expect(longest.count == 8_160)
    // Every output is a prefix of a longer one with the same inputs.
    let short = try HKDFSHA256.expand(pseudoRandomKey: pseudoRandomKey, info: ascii("info"), outputByteCount: 33)
    #expect(short[...] == longest.prefix(33))
    #expect(try HKDFSHA256.expand(pseudoRandomKey: pseudoRandomKey, info: [], outputByteCount: 0).isEmpty)
    for count in [8_161, -1] {
      #expect(throws: HKDFError.outputByteCountOutOfRange(requested: count, maximum: 8_160)) {
        try HKDFSHA256.expand(pseudoRandomKey: pseudoRandomKey, info: [], outputByteCount: count)
      }
    }
    #expect(throws: HKDFError.pseudoRandomKeyTooShort(byteCount: 31, minimum: 32)) {
      try HKDFSHA256.expand(pseudoRandomKey: pseudoRandomKey.prefix(31), info: [], outputByteCount: 16)
    }
  }

  @Test("different info gives unrelated keys from the same secret")
  func infoSeparatesKeys() throws {
    let a = try HKDFSHA256.deriveKey(
      inputKeyMaterial: ascii("secret"), salt: ascii("nonces"), info: ascii("client to server"), outputByteCount: 32)
    let b = try HKDFSHA256.deriveKey(
      inputKeyMaterial: ascii("secret"), salt: ascii("nonces"), info: ascii("server to client"), outputByteCount: 32)
    #expect(a.count == 32 && b.count == 32)
    #expect(zip(a, b).filter { $0 == $1 }.count < 8)
  }
}

@Suite("constantTimeEquals")
struct ConstantTimeEqualsTests {
  @Test("equal inputs are equal; a difference in the first or last byte, or in length, is not")
  func cases() {
    var rng = SeededRandom(seed: 77)
    let original = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
    var firstDiffers = original
    firstDiffers[0] ^= 0x01
    var lastDiffers = original
    lastDiffers[31] ^= 0x80
    #expect(constantTimeEquals(original, original))
    #expect(constantTimeEquals([UInt8](), []))
    #expect(!constantTimeEquals(original, firstDiffers))
    #expect(!constantTimeEquals(original, lastDiffers))
    #expect(!constantTimeEquals(original, original.dropLast()))
    #expect(!constantTimeEquals(original + [0], original))
    // The raw-buffer form and the byte-by-byte path (no contiguous storage) agree.
    for (other, equal) in [
      (original, true), (firstDiffers, false), (lastDiffers, false), (Array(original[1...]), false),
    ] {
      original.withUnsafeBytes { left in
        other.withUnsafeBytes { right in #expect(constantTimeEquals(left, right) == equal) }
      }
      #expect(constantTimeEquals(original.lazy.map { $0 }, other.lazy.map { $0 }) == equal)
    }
  }

  @Test("a digest compares with a byte array holding its bytes")
  func digestAgainstBytes() {
    let digest = SHA256.hash(ascii("abc"))
    #expect(constantTimeEquals(digest, Array(digest)))
    #expect(!constantTimeEquals(digest, Array(SHA256.hash(ascii("abd")))))
  }
}

@Suite("SecureRandom")
struct SecureRandomTests {
  @Test("draws the requested number of bytes, and two 32-byte draws differ")
  func draws() throws {
    #expect(try SecureRandom.bytes(count: 0).isEmpty)
    let first = try SecureRandom.bytes(count: 32)
    let second = try SecureRandom.bytes(count: 32)
    #expect(first.count == 32 && second.count == 32)
    // Equal draws have probability 2^-256: only a broken generator gives them.
    #expect(first != second)
  }

  @Test("a large draw contains every byte value")
  func largeDraw() throws {
    // 100 000 bytes hold about 390 of each value; a value missing by chance has probability below 2^-500.
    let bytes = try SecureRandom.bytes(count: 100_000)
    #expect(bytes.count == 100_000)
    #expect(Set(bytes).count == 256)
  }
}
