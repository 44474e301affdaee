import CQuorumSystem
import QuorumCore
import QuorumTestSupport
import Testing

@testable import QuorumTCP

@Suite("Frame codes in C equal QuorumCore's HMAC-SHA-256")
struct FrameCodeTests {
  @Test("a frame's code is HMAC-SHA-256 of its sequence number and body, with and without the SHA extensions", .heavy)
  func codesMatchTheSwiftImplementation() {
    defer { _ = cq_sha256_use_accelerated(1) }
    var generator = SeededRandom(seed: 4231)
    func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) } }
    var compared = 0
    for accelerated: Int32 in [1, 0] {
      _ = cq_sha256_use_accelerated(accelerated)
      for keyLength in [1, 16, 32, 63, 64, 65, 200] {
        let key = bytes(keyLength)
        let frameKey = FrameKey(key)
        let reference = HMACSHA256(key: key)
        for length in Array(0...300) + [1000, 4096, 65_543] {
          let body = bytes(length)
          let sequence = UInt64.random(in: 0...UInt64.max, using: &generator)
          var message = withUnsafeBytes(of: sequence.littleEndian) { Array($0) }
          message += body
          let expected = Array(reference.authenticationCode(for: message))
          var code = [UInt8](repeating: 0, count: 32)
          body.withUnsafeBytes { body in
            code.withUnsafeMutableBytes { frameKey.code(sequence: sequence, body: body, into: $0) }
          }
          #expect(code == expected, "key \(keyLength) B, body \(length) B, accelerated \(accelerated)")
          compared += 1
        }
      }
    }
    #expect(compared == 2 * 7 * 304)
  }

  @Test("the SHA extensions compress exactly as the portable C does (when the processor has them)")
  func acceleratedCompressionMatchesPortable() {
    defer { _ = cq_sha256_use_accelerated(1) }
    guard cq_sha256_use_accelerated(1) != 0 else {
      // Nothing to compare on this processor: the portable path is the only one, checked above.
      #expect(cq_sha256_accelerated() == 0)
      return
    }
    var generator = SeededRandom(seed: 180_4)
    for round in 0..<2000 {
      let blocks = 1 + round % 4
      let data = (0..<(64 * blocks)).map { _ in UInt8.random(in: 0...255, using: &generator) }
      let state = (0..<8).map { _ in UInt32.random(in: 0...UInt32.max, using: &generator) }
      var fast = state
      var portable = state
      cq_sha256_compress(&fast, data, blocks)
      cq_sha256_compress_portable(&portable, data, blocks)
      #expect(fast == portable, "round \(round)")
    }
  }
}
