import CQuorumSystem
import Glibc
import QuorumCore
import QuorumTestSupport
import Testing

@testable import QuorumTCP

/// ``WriteBatch``: small frames copied together, large ones written from their own arrays, in order, across the
/// partial writes of a socket whose buffer fills.
@Suite("Write batches")
struct WriteBatchTests {
  /// A connected pair of Unix stream sockets; the writing end is non-blocking with a small send buffer.
  func socketPair() throws -> (writer: Int32, reader: Int32) {
    var fds: [Int32] = [0, 0]
    try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
    var size: Int32 = 8192
    setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    try #require(fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK) == 0)
    try #require(fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK) == 0)
    return (fds[0], fds[1])
  }

  /// Closes the descriptors of a pair.
  func closeAll(_ descriptors: Int32...) { for fd in descriptors { close(fd) } }

  /// Writes `batch` to `fd`, reading the other end whenever the socket is full; returns what arrived.
  func drain(_ batch: inout WriteBatch, writer: Int32, reader: Int32) -> (bytes: [UInt8], writes: Int) {
    var received: [UInt8] = []
    var writes = 0
    var chunk = [UInt8](repeating: 0, count: 65_536)
    func readAll() {
      while true {
        let n = chunk.withUnsafeMutableBytes { recv(reader, $0.baseAddress, $0.count, 0) }
        if n <= 0 { return }
        received.append(contentsOf: chunk[0..<n])
      }
    }
    var stalls = 0
    // Bounded: a batch that can never be written fails the test's expectations rather than hanging it.
    while !batch.isEmpty && stalls < 1_000_000 {
      if batch.write(to: writer) > 0 {
        writes += 1
      } else {
        readAll()
        stalls += 1
      }
    }
    readAll()
    return (received, writes)
  }

  @Test(
    "frames of every size arrive whole and in order, large ones written without a copy", .heavy, arguments: [1, 2, 3])
  func mixedSizes(seed: UInt64) throws {
    let (writer, reader) = try socketPair()
    defer { closeAll(writer, reader) }
    var random = SeededRandom(seed: seed)
    var batch = WriteBatch()
    var expected: [UInt8] = []
    for round in 0..<3 {
      for _ in 0..<200 {
        let size = [1, 64, 4_095, 4_096, 20_000][Int.random(in: 0..<5, using: &random)]
        let frame = (0..<size).map { _ in UInt8.random(in: 0...255, using: &random) }
        if Bool.random(using: &random) {
          batch.append(frame: frame)
          expected += frame
        } else {
          // A slice of a larger array, as a sealed frame's body is.
          let padded = [0xEE] + frame + [0xEE]
          batch.append(padded, range: 1..<(1 + size))
          expected += frame
        }
      }
      batch.appendBytes { $0.append(UInt8(round)) }
      expected.append(UInt8(round))
      let (bytes, writes) = drain(&batch, writer: writer, reader: reader)
      #expect(bytes == expected, "round \(round)")
      #expect(writes > 1, "the socket's small buffer cut the batch into several writes")
      #expect(batch.count == 0)
      expected = []
    }
  }

  @Test("a large frame sealed into a batch is byte for byte the frame sealed into a buffer")
  func sealedLargeFrame() throws {
    let (writer, reader) = try socketPair()
    defer { closeAll(writer, reader) }
    let key = (0..<32).map { UInt8($0) }
    var intoBuffer = FrameSealer(key: key)
    var intoBatch = FrameSealer(key: key)
    var expected: [UInt8] = []
    var batch = WriteBatch()
    for size in [10, 5_000, 100, 70_000, 4_096] {
      var frame = TCPFrame.frame([UInt8](repeating: UInt8(size % 251), count: size))
      frame[frame.count - 1] ^= 1
      intoBuffer.append(frame, to: &expected)
      intoBatch.append(frame, to: &batch)
    }
    #expect(drain(&batch, writer: writer, reader: reader).bytes == expected)
    #expect(intoBatch.sequence == intoBuffer.sequence)
  }

  @Test("frames appended between partial writes follow what was already queued", .heavy, arguments: [4, 5, 6])
  func appendsBetweenPartialWrites(seed: UInt64) throws {
    let (writer, reader) = try socketPair()
    defer { closeAll(writer, reader) }
    var random = SeededRandom(seed: seed)
    var batch = WriteBatch()
    var expected: [UInt8] = []
    var received: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 3_000)
    var partial = 0
    for _ in 0..<400 {
      for _ in 0..<Int.random(in: 0...3, using: &random) {
        let size = [3, 700, 4_096, 9_000][Int.random(in: 0..<4, using: &random)]
        let frame = (0..<size).map { _ in UInt8.random(in: 0...255, using: &random) }
        batch.append(frame: frame)
        expected += frame
      }
      let before = batch.count
      let written = batch.write(to: writer)
      if written > 0 && written < before { partial += 1 }
      // Read a little, so the socket takes some of the next write but rarely all of it.
      let n = chunk.withUnsafeMutableBytes { recv(reader, $0.baseAddress, $0.count, 0) }
      if n > 0 { received.append(contentsOf: chunk[0..<n]) }
    }
    received += drain(&batch, writer: writer, reader: reader).bytes
    #expect(received == expected)
    #expect(partial > 10, "writes were cut short while more frames were appended (\(partial))")
  }

  @Test("a buffer given to the batch is written from its start offset and handed back empty, storage kept")
  func ownedBuffersComeBack() throws {
    let (writer, reader) = try socketPair()
    defer { closeAll(writer, reader) }
    var batch = WriteBatch()
    #expect(batch.takeRecycled().capacity == 0, "nothing given yet")
    var large = (0..<50_000).map { UInt8(truncatingIfNeeded: $0) }
    let capacity = large.capacity
    let expectedLarge = Array(large[10...])
    batch.append(owned: &large, from: 10)
    #expect(large.isEmpty, "the batch took the buffer")
    #expect(batch.takeRecycled().capacity == 0, "not written yet, so not handed back")
    #expect(drain(&batch, writer: writer, reader: reader).bytes == expectedLarge)
    let recycled = batch.takeRecycled()
    #expect(recycled.isEmpty && recycled.capacity >= capacity)
    #expect(batch.takeRecycled().capacity == 0, "handed back once")
    // A small one is copied at once, and its buffer handed back at once.
    var small = [UInt8](repeating: 7, count: 100)
    small.reserveCapacity(2_000)
    batch.append(owned: &small, from: 0)
    let back = batch.takeRecycled()
    #expect(back.isEmpty && back.capacity >= 2_000)
    #expect(drain(&batch, writer: writer, reader: reader).bytes == [UInt8](repeating: 7, count: 100))
  }
}
