import CQuorumSystem
import Dispatch
import Glibc
import QuorumCore
import Synchronization
import Testing

@testable import QuorumTCP

/// Several senders (writing to the idle socket themselves) and a loop that takes frames, sealed or not, into a
/// write batch, over a socket pair with a small send buffer (partial writes everywhere). The reader checks that every
/// sender's frames arrive whole and in order. Frame sizes come from seeded generators; the threads' interleaving
/// is the machine's.
@Suite("Link queues under concurrent senders", .timeLimit(.minutes(3)))
struct LinkQueueStressTests {
  /// A frame whose body is the sender, its sequence number, then `size` bytes derived from both.
  static func frame(sender: UInt8, sequence: UInt64, size: Int) -> [UInt8] {
    var body: [UInt8] = [sender]
    withUnsafeBytes(of: sequence.littleEndian) { body.append(contentsOf: $0) }
    for i in 0..<size { body.append(UInt8(truncatingIfNeeded: Int(sequence) &+ i &* 7 &+ Int(sender))) }
    return TCPFrame.frame(body)
  }

  /// What one run saw.
  struct Outcome: Sendable {
    var failures: [String] = []
    var next: [UInt64] = []
    var done = 0
    var bySenders = 0
    var byLoop = 0
    var cutShort = 0
  }

  @Test(
    "frames from 4 senders, written by them and by the loop, keep each sender's order, sealed or not",
    arguments: zip([0, 1, 2, 2], [false, true, false, true]))
  func ordering(round: Int, sealed: Bool) async throws {
    // Every thread of the run spins while it waits, so none of them is one of the pool's: the test only awaits.
    let outcome = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Outcome, any Error>) in
      DispatchQueue(label: "link-queue-stress-reader").async {
        continuation.resume(with: Result { try Self.run(round: round, sealed: sealed) })
      }
    }
    let senders = outcome.next.count
    #expect(outcome.failures == [], "next=\(outcome.next) done=\(outcome.done)")
    #expect(outcome.done == senders, "next=\(outcome.next)")
    // Every frame was written once, by its sender or by the loop (which of them varies with the scheduling; a
    // frame cut short counts as its sender's, and the loop writes the rest of it as bytes, not as a frame).
    #expect(
      outcome.bySenders + outcome.byLoop == senders * Int(Self.perSender),
      "senders \(outcome.bySenders), loop \(outcome.byLoop), cut short \(outcome.cutShort)")
  }

  static let perSender: UInt64 = 2000

  /// Runs senders, a loop and a reader (this thread) over one link queue; returns what the reader saw.
  static func run(round: Int, sealed: Bool) throws -> Outcome {
    var fds: [Int32] = [0, 0]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else {
      throw TCPTransportError.system(operation: "socketpair", address: nil, errno: errno)
    }
    for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
    var small: Int32 = Int32(16384 << round)
    _ = setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &small, socklen_t(MemoryLayout<Int32>.size))
    _ = setsockopt(fds[1], SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
    let queue = LinkQueue(maxFrames: 256, maxBytes: 1 << 20)
    let key = [UInt8](repeating: 5, count: 32)
    queue.attach(fd: fds[0], sealer: sealed ? FrameSealer(key: key) : nil)
    var opener = FrameOpener(key: key)
    let tagBytes = sealed ? TCPFrame.tagBytes : 0
    let writeFD = fds[0]
    let senders = 4
    let stop = Atomic<Bool>(false)
    let failures = Mutex<[String]>([])
    let direct = Atomic<Int>(0)
    let cut = Atomic<Int>(0)
    let byLoop = Atomic<Int>(0)
    let group = DispatchGroup()
    // Senders.
    for s in 0..<senders {
      DispatchQueue(label: "sender\(s)").async(group: group) {
        var rng = SeededRandom(seed: UInt64(round * 16 + s + 1))
        let sizes = [0, 10, 100, 3000, 5000, 20000]
        for seq in 1...perSender {
          let size = sizes[Int.random(in: 0..<sizes.count, using: &rng)]
          // Pauses now and then, so that links go quiet and senders write to the socket themselves.
          if Int.random(in: 0..<(1 + round), using: &rng) == 0 { usleep(UInt32.random(in: 0...100, using: &rng)) }
          let f = Self.frame(sender: UInt8(s), sequence: seq, size: size)
          while true {
            do {
              let outcome = try queue.send(f, peer: NodeID(rawValue: 1), writeIfIdle: true)
              _ = direct.add(outcome.framesWritten, ordering: .relaxed)
              if outcome.cutShort { _ = cut.add(1, ordering: .relaxed) }
              break
            } catch {
              if stop.load(ordering: .relaxed) { return }
              sched_yield()
            }
          }
        }
      }
    }
    // Loop.
    let loopDone = DispatchGroup()
    DispatchQueue(label: "loop").async(group: loopDone) {
      var batch = WriteBatch()
      while !stop.load(ordering: .relaxed) {
        if batch.isEmpty {
          let taken = queue.take(into: &batch, budget: 256 << 10)
          _ = byLoop.add(taken.frames, ordering: .relaxed)
          if taken.bytes == 0 {
            sched_yield()
            continue
          }
        }
        let written = batch.write(to: writeFD)
        if written <= 0 { sched_yield() }
      }
    }
    // Reader.
    var buffer: [UInt8] = []
    var next = [UInt64](repeating: 1, count: senders)
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    var done = 0
    var idle = 0
    while done < senders && idle < 2_000_000 {
      let n = chunk.withUnsafeMutableBytes { recv(fds[1], $0.baseAddress, $0.count, 0) }
      if n <= 0 {
        idle += 1
        sched_yield()
        continue
      }
      idle = 0
      buffer.append(contentsOf: chunk[0..<n])
      var offset = 0
      while buffer.count - offset >= 4 {
        let length =
          Int(buffer[offset]) | Int(buffer[offset + 1]) << 8 | Int(buffer[offset + 2]) << 16
          | Int(buffer[offset + 3]) << 24
        guard buffer.count - offset >= 4 + length else { break }
        // Mixed-up bytes: not one of our frames (each has a sender and a sequence).
        guard length >= 9 + tagBytes else {
          failures.withLock { $0.append("a frame of \(length) bytes") }
          stop.store(true, ordering: .relaxed)
          break
        }
        let frame = (offset + 4)..<(offset + 4 + length)
        guard let opened = sealed ? opener.open(buffer, range: frame) : frame else {
          failures.withLock { $0.append("frame \(opener.sequence) fails its code") }
          stop.store(true, ordering: .relaxed)
          break
        }
        let body = Array(buffer[opened])
        offset += 4 + length
        let sender = Int(body[0])
        var seq: UInt64 = 0
        for i in 0..<8 { seq |= UInt64(body[1 + i]) << (8 * UInt64(i)) }
        let size = body.count - 9
        let lastOK =
          size == 0 || body[body.count - 1] == UInt8(truncatingIfNeeded: Int(seq) &+ (size - 1) &* 7 &+ sender)
        let firstOK = size == 0 || body[9] == UInt8(truncatingIfNeeded: Int(seq) &+ sender)
        if sender >= senders || !lastOK || !firstOK || seq != next[sender] {
          failures.withLock {
            $0.append("sender \(sender) seq \(seq) expected \(next[min(sender, senders - 1)]) len \(length)")
          }
          stop.store(true, ordering: .relaxed)
          break
        }
        next[sender] += 1
        if next[sender] > perSender { done += 1 }
      }
      if !failures.withLock({ $0.isEmpty }) { break }
      buffer.removeFirst(offset)
    }
    stop.store(true, ordering: .relaxed)
    queue.close()
    group.wait()
    loopDone.wait()
    close(fds[0])
    close(fds[1])
    return Outcome(
      failures: failures.withLock { $0 }, next: next, done: done, bySenders: direct.load(ordering: .relaxed),
      byLoop: byLoop.load(ordering: .relaxed), cutShort: cut.load(ordering: .relaxed))
  }
}
