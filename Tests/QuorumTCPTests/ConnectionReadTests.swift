import CQuorumSystem
import Glibc
import QuorumCore
import Synchronization
import Testing

@testable import QuorumTCP

/// Records every frame a ``Connection`` delivers; pauses now and then and resumes from a timer.
private final class RecordingDelegate: ConnectionDelegate, @unchecked Sendable {
  // Safety of @unchecked Sendable: loop thread only, except `frames`/`closed`, which are behind a mutex.
  let state = Mutex<(frames: [[UInt8]], closed: TCPCloseReason?)>(([], nil))
  var random: SeededRandom
  let pauseOneIn: UInt64

  init(seed: UInt64, pauseOneIn: UInt64) {
    random = SeededRandom(seed: seed)
    self.pauseOneIn = pauseOneIn
  }

  func connectionDidConnect(_ connection: Connection) {}
  func connectionDidDrain(_ connection: Connection) {}
  func connectionDidParse(_ connection: Connection) {}
  func connection(_ connection: Connection, didCloseWith reason: TCPCloseReason) {
    state.withLock { $0.closed = reason }
  }

  func connection(_ connection: Connection, didReceive bytes: [UInt8], range: Range<Int>) -> FrameVerdict {
    let frame = Array(bytes[range])
    state.withLock { $0.frames.append(frame) }
    guard pauseOneIn > 0, random.next() % pauseOneIn == 0 else { return .proceed }
    connection.loop.schedule(after: .microseconds(Int64(random.next() % 500))) { connection.resumeReading() }
    return .pause
  }
}

/// ``Connection``'s read path: frames of every size (around the scratch buffer's half and whole) arriving in
/// reads of every size, with pauses mid-read, are delivered whole, once each, in order.
@Suite("Connection reads")
struct ConnectionReadTests {
  @Test(
    "frames of mixed sizes, split anywhere, with pauses: all delivered in order",
    arguments: [(UInt64(1), UInt64(0), false), (2, 7, false), (3, 3, true)])
  func mixedFrames(seed: UInt64, pauseOneIn: UInt64, reserves: Bool) async throws {
    var fds: [Int32] = [0, 0]
    try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
    try #require(fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK) == 0)
    let loop = try EventLoop(logger: .disabled)
    try loop.start()
    defer { loop.stop() }
    let delegate = RecordingDelegate(seed: seed, pauseOneIn: pauseOneIn)
    let readerFD = fds[1]
    let started = await loop.submit {
      let connection = Connection(
        loop: loop, fd: readerFD, remote: "pair", maxFrameBytes: 1 << 20, frameTimeout: .seconds(30))
      connection.delegate = delegate
      connection.reservesAnnouncedFrames = reserves
      // Kept alive by the loop's handler table.
      return connection.start()
    }
    try #require(started == true)
    // The frames: sizes around 128 KiB and 256 KiB, small ones, and large ones.
    var random = SeededRandom(seed: seed &* 31)
    let sizes: [Int] = (0..<120).map { _ in
      switch random.next() % 6 {
      case 0: return 1 + Int(random.next() % 64)
      case 1: return (128 << 10) - 64 + Int(random.next() % 128)
      case 2: return (256 << 10) - 64 + Int(random.next() % 128)
      case 3: return 1 + Int(random.next() % (400 << 10))
      case 4: return 1 + Int(random.next() % 4096)
      default: return 1 + Int(random.next() % (64 << 10))
      }
    }
    var stream: [UInt8] = []
    var expected: [[UInt8]] = []
    for (index, size) in sizes.enumerated() {
      var body = [UInt8](repeating: 0, count: size)
      for i in stride(from: 0, to: size, by: 997) { body[i] = UInt8(truncatingIfNeeded: index &+ i) }
      body[size - 1] = UInt8(truncatingIfNeeded: index)
      withUnsafeBytes(of: UInt32(size).littleEndian) { stream.append(contentsOf: $0) }
      stream.append(contentsOf: body)
      expected.append(body)
    }
    // Written in pieces of random size, from 1 byte to 300 KiB.
    let writerFD = fds[0]
    try #require(fcntl(writerFD, F_SETFL, fcntl(writerFD, F_GETFL) | O_NONBLOCK) == 0)
    let deadline = ContinuousClock.now + .seconds(120)
    var offset = 0
    while offset < stream.count && ContinuousClock.now < deadline {
      let piece = min(stream.count - offset, 1 + Int(random.next() % (random.next() % 2 == 0 ? 16 : 300 << 10)))
      let written = stream.withUnsafeBytes { send(writerFD, $0.baseAddress! + offset, piece, Int32(MSG_NOSIGNAL)) }
      if written > 0 {
        offset += written
      } else {
        try #require(errno == EAGAIN || errno == EWOULDBLOCK)
        try await Task.sleep(for: .milliseconds(1))
      }
    }
    let total = expected.count
    while delegate.state.withLock({ $0.frames.count }) < total && ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(5))
    }
    let (frames, closed) = delegate.state.withLock { ($0.frames, $0.closed) }
    #expect(closed == nil)
    #expect(frames.count == total)
    let mismatch = (0..<min(frames.count, total)).first { frames[$0] != expected[$0] }
    #expect(mismatch == nil, "frame \(mismatch ?? -1) differs")
    close(writerFD)
  }
}
