import CQuorumSystem
import Glibc
import QuorumCore
import Testing

@testable import QuorumTCP

/// ``LinkQueue`` keeps its frames back to back in chunks: a backlog spanning many chunks goes out whole and in
/// order, sealed or not, whatever the budget of each take; a refused frame leaves the queue as it was.
@Suite("Link queue chunks", .timeLimit(.minutes(1)))
struct LinkQueueChunkTests {
  /// A frame (length prefix and body) whose body of `size` bytes starts with its index.
  static func frame(_ index: Int, size: Int) -> [UInt8] {
    var body = [UInt8](repeating: UInt8(truncatingIfNeeded: index &* 31), count: max(size, 4))
    withUnsafeBytes(of: UInt32(index).littleEndian) { body.replaceSubrange(0..<4, with: $0) }
    return TCPFrame.frame(body)
  }

  /// Frame sizes from a seeded generator: mostly small, some large, a few over a chunk's size.
  static func sizes(seed: UInt64, count: Int) -> [Int] {
    var random = SeededRandom(seed: seed)
    let menu = [4, 60, 1_000, 5_000, 20_000, 70_000, LinkQueue.chunkBytes + 10]
    return (0..<count).map { _ in
      let pick = Int.random(in: 0..<100, using: &random)
      return menu[pick < 50 ? 0 : pick < 70 ? 1 : pick < 85 ? 2 : pick < 93 ? 3 : pick < 97 ? 4 : pick < 99 ? 5 : 6]
    }
  }

  /// A connected pair of non-blocking Unix stream sockets.
  static func socketPair() throws -> (writer: Int32, reader: Int32) {
    var fds: [Int32] = [0, 0]
    try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
    for fd in fds { try #require(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == 0) }
    return (fds[0], fds[1])
  }

  /// Takes everything queued as the loop does, with `budget` per take, writing each batch and reading the other
  /// end as it fills; returns the bytes that arrived and how many frames the takes reported.
  static func drain(_ queue: LinkQueue, budget: Int, writer: Int32, reader: Int32) -> (bytes: [UInt8], frames: Int) {
    var received: [UInt8] = []
    var frames = 0
    var batch = WriteBatch()
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    var idle = 0
    // Bounded: a queue that never empties fails the expectations rather than hanging the test.
    while idle < 1_000 {
      if batch.isEmpty {
        let taken = queue.take(into: &batch, budget: budget)
        frames += taken.frames
        if taken.bytes == 0 { idle += 1 }
      }
      if !batch.isEmpty { _ = batch.write(to: writer) }
      while true {
        let n = chunk.withUnsafeMutableBytes { recv(reader, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        received.append(contentsOf: chunk[0..<n])
      }
    }
    return (received, frames)
  }

  @Test("a backlog of many chunks goes out whole and in order, and the queue's bounds count it", arguments: [1, 2])
  func unsealedBacklog(seed: UInt64) throws {
    let queue = LinkQueue(maxFrames: 100_000, maxBytes: 8 << 20)
    var expected: [UInt8] = []
    var queued = 0
    for (index, size) in Self.sizes(seed: seed, count: 2_000).enumerated() {
      let frame = Self.frame(index, size: size)
      do {
        _ = try queue.send(frame, peer: NodeID(rawValue: 1), writeIfIdle: true)
        expected += frame
        queued += 1
      } catch .queueFull {
        // Refused whole: nothing of it is queued, and what was queued stays.
        continue
      }
    }
    #expect(expected.count > 4 * LinkQueue.chunkBytes, "the backlog spans several chunks")
    #expect(expected.count <= (8 << 20) + LinkQueue.chunkBytes + 10, "the byte bound holds")
    let (writer, reader) = try Self.socketPair()
    defer { _ = (close(writer), close(reader)) }
    queue.attach(fd: writer, sealer: nil)
    let (bytes, frames) = Self.drain(queue, budget: 256 << 10, writer: writer, reader: reader)
    #expect(frames == queued)
    #expect(bytes.count == expected.count)
    #expect(bytes == expected)
  }

  @Test(
    "a sealed link takes parts of chunks a budget at a time; every frame opens, in sequence", arguments: [300, 70_000])
  func sealedBudgets(budget: Int) throws {
    let key = [UInt8](repeating: 9, count: 32)
    let queue = LinkQueue(maxFrames: 100_000, maxBytes: 64 << 20)
    var bodies: [[UInt8]] = []
    for (index, size) in Self.sizes(seed: 7, count: 600).enumerated() {
      let frame = Self.frame(index, size: size)
      _ = try queue.send(frame, peer: NodeID(rawValue: 1), writeIfIdle: true)
      bodies.append(Array(frame[TCPFrame.prefixBytes...]))
    }
    let (writer, reader) = try Self.socketPair()
    defer { _ = (close(writer), close(reader)) }
    queue.attach(fd: writer, sealer: FrameSealer(key: key))
    let (bytes, frames) = Self.drain(queue, budget: budget, writer: writer, reader: reader)
    #expect(frames == bodies.count)
    var opener = FrameOpener(key: key)
    var offset = 0
    var opened = 0
    while offset + TCPFrame.prefixBytes <= bytes.count, opened < bodies.count {
      let length = bytes.withUnsafeBytes { LinkQueue.length($0, at: offset) }
      let range = (offset + TCPFrame.prefixBytes)..<(offset + TCPFrame.prefixBytes + length)
      guard range.upperBound <= bytes.count, let body = opener.open(bytes, range: range) else { break }
      guard Array(bytes[body]) == bodies[opened] else { break }
      opened += 1
      offset = range.upperBound
    }
    #expect(opened == bodies.count)
    #expect(offset == bytes.count)
  }

  @Test("a frame over the limit is refused and leaves the queued frames as they were; later frames follow them")
  func oversizedFrame() throws {
    let queue = LinkQueue(maxFrames: 1_000, maxBytes: 1 << 20)
    var expected: [UInt8] = []
    for index in 0..<10 {
      let frame = Self.frame(index, size: 100)
      _ = try queue.send(frame, peer: NodeID(rawValue: 1), writeIfIdle: true)
      expected += frame
    }
    let tooLarge = Self.frame(99, size: 5_000)
    #expect(throws: TransportError.messageTooLarge(bytes: tooLarge.count - TCPFrame.prefixBytes, limit: 4_096)) {
      _ = try queue.send(peer: NodeID(rawValue: 1), writeIfIdle: true, maxBody: 4_096) {
        $0.append(contentsOf: tooLarge)
      }
    }
    let last = Self.frame(10, size: 100)
    _ = try queue.send(last, peer: NodeID(rawValue: 1), writeIfIdle: true)
    expected += last
    let (writer, reader) = try Self.socketPair()
    defer { _ = (close(writer), close(reader)) }
    queue.attach(fd: writer, sealer: nil)
    let (bytes, frames) = Self.drain(queue, budget: 256 << 10, writer: writer, reader: reader)
    #expect(frames == 11)
    #expect(bytes == expected)
  }

  @Test("a frame over the limit whose length prefix cannot say its size (4 GiB or more) is refused, not a trap")
  func oversizedFrameWithTruncatedPrefix() throws {
    let queue = LinkQueue(maxFrames: 1_000, maxBytes: 1 << 20)
    // TCPFrame truncates a length to its u32 prefix: a body of 4 GiB + 100 bytes would say 100. The same
    // mismatch, in small.
    var frame = Self.frame(7, size: 5_000)
    withUnsafeBytes(of: UInt32(100).littleEndian) { frame.replaceSubrange(0..<4, with: $0) }
    #expect(throws: TransportError.messageTooLarge(bytes: 5_000, limit: 4_096)) {
      _ = try queue.send(peer: NodeID(rawValue: 1), writeIfIdle: true, maxBody: 4_096) {
        $0.append(contentsOf: frame)
      }
    }
    #expect(queue.stateDescription.hasPrefix("queued=0 frames/0B"))
  }

  @Test("an idle link's sender writes its frame itself, one after another")
  func idleSenderWrites() throws {
    let queue = LinkQueue(maxFrames: 1_000, maxBytes: 1 << 20)
    let (writer, reader) = try Self.socketPair()
    defer { _ = (close(writer), close(reader)) }
    queue.attach(fd: writer, sealer: nil)
    var batch = WriteBatch()
    // Attached, the loop drains first (nothing queued), then senders may write.
    _ = queue.take(into: &batch, budget: 256 << 10)
    var expected: [UInt8] = []
    for index in 0..<50 {
      let frame = Self.frame(index, size: 200)
      let outcome = try queue.send(frame, peer: NodeID(rawValue: 1), writeIfIdle: true)
      #expect(outcome.framesWritten == 1 && !outcome.needsWake, "frame \(index): \(outcome)")
      expected += frame
    }
    let (bytes, frames) = Self.drain(queue, budget: 256 << 10, writer: writer, reader: reader)
    #expect(frames == 0)
    #expect(bytes == expected)
  }
}
