import CQuorumSystem
import Glibc
import QuorumCore
import QuorumTestSupport
import Testing

@testable import QuorumTCP

/// ``LinkQueue`` against a model (a list of the queued bodies): seeded random sends (idle or not, some over the
/// size limit, some refused as full), takes with budgets from 1 byte to 256 KiB, and six connections, each sealed
/// or not at random, with frames left queued across them. After every step the queue's counts match the model's;
/// at the end every body arrived once, in order (sealed ones opened in sequence), and the frames reported match.
@Suite("Link queue against a model", .timeLimit(.minutes(5)))
struct LinkQueueModelTests {
  @Test("sends, refusals and takes of every budget keep the queue equal to its model", .heavy, arguments: Array(0..<8))
  func model(seed: Int) throws {
    var random = SeededRandom(seed: UInt64(seed) &+ 1000)
    let maxFrames = [5, 50, 10_000][seed % 3]
    let maxBytes = [3_000, 300_000, 2 << 20][(seed / 3) % 3]
    let queue = LinkQueue(maxFrames: maxFrames, maxBytes: maxBytes)
    let key = [UInt8](repeating: 3, count: 32)
    var pending: [[UInt8]] = []  // bodies queued (model)
    var pendingBytes = 0
    var expected: [[UInt8]] = []  // bodies in the order they must arrive
    var next = 0
    var failures: [String] = []
    var phases: [(sealed: Bool, bytes: [UInt8])] = []
    var counted = 0
    var phaseSealed = false
    var (writer, reader): (Int32, Int32) = (-1, -1)
    var batch = WriteBatch()
    var received: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 1 << 16)
    func readAll() {
      while true {
        let n = buf.withUnsafeMutableBytes { recv(reader, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        received.append(contentsOf: buf[0..<n])
      }
    }
    func desc() -> String { queue.stateDescription }
    for phase in 0..<6 {
      var fds: [Int32] = [0, 0]
      try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
      for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
      (writer, reader) = (fds[0], fds[1])
      phaseSealed = Bool.random(using: &random)
      queue.attach(fd: writer, sealer: phaseSealed ? FrameSealer(key: key) : nil)
      received = []
      for _ in 0..<400 {
        let op = Int.random(in: 0..<10, using: &random)
        if op < 6 {
          let menu = [1, 10, 100, 3_000, 5_000, 70_000, 300_000]
          let size = menu[Int.random(in: 0..<menu.count, using: &random)]
          var body = [UInt8](repeating: UInt8(truncatingIfNeeded: next), count: max(size, 8))
          withUnsafeBytes(of: UInt64(next).littleEndian) { body.replaceSubrange(0..<8, with: $0) }
          next += 1
          let frame = TCPFrame.frame(body)
          let maxBody = Int.random(in: 0..<5, using: &random) == 0 ? 4_000 : Int.max
          let idle = Bool.random(using: &random)
          do {
            let outcome = try queue.send(peer: NodeID(rawValue: 1), writeIfIdle: idle, maxBody: maxBody) {
              $0.append(contentsOf: frame)
            }
            if body.count > maxBody { failures.append("accepted oversized") }
            if outcome.framesWritten > 0 {
              counted += outcome.framesWritten
              // sender wrote pending + its own
              expected += pending
              pending = []
              pendingBytes = 0
              expected.append(body)
              if outcome.framesWritten != 1 { failures.append("framesWritten \(outcome.framesWritten)") }
            } else {
              if pending.count >= maxFrames { failures.append("over maxFrames") }
              pending.append(body)
              pendingBytes += frame.count
            }
          } catch .messageTooLarge {
            if body.count <= maxBody { failures.append("wrong messageTooLarge") }
          } catch .queueFull {
            if !(pending.count >= maxFrames || (pendingBytes + frame.count > maxBytes && !pending.isEmpty)) {
              failures.append("wrong queueFull")
            }
          } catch {
            failures.append("error \(error)")
          }
        } else if op < 9 {
          if batch.isEmpty {
            let budget = [1, 300, 70_000, 256 << 10][Int.random(in: 0..<4, using: &random)]
            let taken = queue.take(into: &batch, budget: budget)
            counted += taken.frames
            // model: frames taken are the first `taken.frames` of pending
            if taken.frames > pending.count {
              failures.append("took too many")
            } else {
              for body in pending[0..<taken.frames] {
                pendingBytes -= body.count + 4
                expected.append(body)
              }
              pending.removeFirst(taken.frames)
            }
          }
          _ = batch.write(to: writer)
          readAll()
        } else {
          readAll()
        }
        let d = desc()
        if !d.hasPrefix("queued=\(pending.count) frames/\(pendingBytes)B") {
          failures.append("state \(d) vs \(pending.count)/\(pendingBytes)")
          break
        }
        if !failures.isEmpty { break }
      }
      // end of phase: finish batch and remainder; maybe drain all
      let drainAll = phase == 5 || Bool.random(using: &random)
      var spins = 0
      while spins < 10_000 {
        spins += 1
        _ = batch.write(to: writer)
        readAll()
        if batch.isEmpty {
          let d = desc()
          if !drainAll && d.contains("remainder=0B") { break }
          if drainAll && pending.isEmpty && d.contains("remainder=0B") { break }
          let taken = queue.take(into: &batch, budget: 256 << 10)
          counted += taken.frames
          if taken.frames <= pending.count {
            for body in pending[0..<taken.frames] {
              pendingBytes -= body.count + 4
              expected.append(body)
            }
            pending.removeFirst(taken.frames)
          }
        }
      }
      readAll()
      queue.detach()
      batch = WriteBatch()
      phases.append((phaseSealed, received))
      close(writer)
      close(reader)
      if !failures.isEmpty { break }
    }
    // parse
    var got: [[UInt8]] = []
    for (sealed, bytes) in phases {
      var opener = FrameOpener(key: key)
      var offset = 0
      while offset + 4 <= bytes.count {
        let length = bytes.withUnsafeBytes { LinkQueue.length($0, at: offset) }
        let range = (offset + 4)..<(offset + 4 + length)
        guard range.upperBound <= bytes.count else {
          failures.append("truncated")
          break
        }
        if sealed {
          guard let body = opener.open(bytes, range: range) else {
            failures.append("bad seal")
            break
          }
          got.append(Array(bytes[body]))
        } else {
          got.append(Array(bytes[range]))
        }
        offset = range.upperBound
      }
      if offset != bytes.count { failures.append("trailing \(bytes.count - offset)") }
    }
    #expect(failures == [])
    #expect(got.count == expected.count)
    let firstDiff = (0..<min(got.count, expected.count)).first { got[$0] != expected[$0] } ?? -1
    #expect(firstDiff == -1)
    #expect(counted == expected.count)
  }
}
