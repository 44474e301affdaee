import Testing

@testable import QuorumTCP

/// A read's bytes: each body after its 4-byte little-endian length.
private func framed(_ bodies: [[UInt8]]) -> [UInt8] {
  var bytes: [UInt8] = []
  for body in bodies {
    withUnsafeBytes(of: UInt32(body.count).littleEndian) { bytes.append(contentsOf: $0) }
    bytes.append(contentsOf: body)
  }
  return bytes
}

@Suite("The frames of a read are taken whole, in order, and a bad length stops them")
struct FrameCursorTests {
  @Test("whole frames come out in order; a partial one at the end is left where it starts")
  func wholeFramesThenPartial() {
    let bodies: [[UInt8]] = [[1], [2, 2], Array(repeating: 3, count: 300)]
    var bytes = framed(bodies)
    let whole = bytes.count
    bytes += framed([[4, 4, 4, 4]]).dropLast(2)  // the next frame, cut short
    var frames = FrameCursor(bytes: bytes, end: bytes.count)
    var taken: [[UInt8]] = []
    while let range = frames.next(limit: 1024) { taken.append(Array(bytes[range])) }
    #expect(taken == bodies)
    #expect(frames.taken == 3)
    #expect(frames.offset == whole)
    #expect(frames.failure == nil)
    // A prefix alone, or part of one, is not a frame either.
    var prefixOnly = FrameCursor(bytes: [5, 0, 0], end: 3)
    #expect(prefixOnly.next(limit: 1024) == nil && prefixOnly.offset == 0 && prefixOnly.failure == nil)
  }

  @Test("a cursor over one frame in the middle of a read takes that frame and nothing after it")
  func startAndEnd() {
    let bytes = framed([[1, 1], [2, 2, 2], [3]])
    let start = 6
    var frames = FrameCursor(bytes: bytes, start: start, end: start + 4 + 3)
    #expect(frames.next(limit: 16).map { Array(bytes[$0]) } == [2, 2, 2])
    #expect(frames.next(limit: 16) == nil)
    #expect(frames.offset == start + 7 && frames.taken == 1)
  }

  @Test("a zero length or one over the limit fails at that frame, after the good ones")
  func badLengths() {
    var bytes = framed([[7, 7]])
    let good = bytes.count
    bytes += [0, 0, 0, 0, 9]
    var zero = FrameCursor(bytes: bytes, end: bytes.count)
    #expect(zero.next(limit: 64) != nil)
    #expect(zero.next(limit: 64) == nil)
    #expect(zero.offset == good)
    #expect(zero.failure == .malformedFrame("zero-length frame"))

    let large = framed([[1], Array(repeating: 8, count: 65)])
    var tooLarge = FrameCursor(bytes: large, end: large.count)
    #expect(tooLarge.next(limit: 64) != nil)
    #expect(tooLarge.next(limit: 64) == nil)
    #expect(tooLarge.failure == .frameTooLarge(bytes: 65, limit: 64))
    // The limit is the caller's per call: the same frame passes under a larger one.
    var larger = FrameCursor(bytes: large, end: large.count)
    #expect(larger.next(limit: 64) != nil && larger.next(limit: 65) != nil && larger.failure == nil)
  }
}
