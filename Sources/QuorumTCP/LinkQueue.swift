import CQuorumSystem
import Glibc
import QuorumCore
import Synchronization

/// The bounded queue of encoded frames from one local node to one peer, shared by the senders (any thread)
/// and the event loop (which takes frames in batches and writes them with one system call).
///
/// Policy when full: the send is refused with ``QuorumCore/TransportError/queueFull(peer:capacity:)`` and
/// nothing already queued is dropped, so frames on one link stay in order. The sender decides: Raft treats
/// a refusal as a lost message and retransmits later.
///
/// ## Writing from the sender
/// While the link is idle — connected, nothing queued, nothing left in the loop's write batch, no other
/// sender writing, and no write begun on it for the quiet period (``TCPTransportOptions/senderWriteQuietPeriod``;
/// a link written to a moment ago is streaming, and its frames are better batched by the loop than written one
/// system call each) — a sender takes the writer's role and writes its frame to the socket itself instead of
/// queueing it and waking the loop: one thread hand-off less per message, which is most of a message's latency
/// on a busy machine. It writes outside the lock, so senders on other threads (other groups' replicas, other
/// responders) do not spin while it is in the system call: they queue their frames behind it, and the writer,
/// once done, takes what they queued and writes it too, in one call (a few rounds at most; then the loop takes
/// over). Frames are sealed under the lock in queue order and only one writer — a sender or the loop — writes
/// at a time, so the byte stream keeps that order. Whatever the socket does not take (a full send buffer) is
/// kept, already sealed, and written first by the loop. The loop detaches the socket before it closes it
/// (``detach()``, ``close()``), and waits for a writing sender to finish first, so no sender writes to a
/// closed descriptor.
final class LinkQueue: Sendable {
  /// The connected socket senders may write to, and the code added to each frame on it.
  private struct Socket {
    let fd: Int32
    var sealer: FrameSealer?
  }

  private struct State {
    var frames = FIFOQueue<[UInt8]>()
    var bytes = 0
    /// A wake-up for this link is pending on the loop; further sends need not wake it again.
    var scheduled = false
    var closed = false
    /// The established connection's socket; `nil` while there is none.
    var socket: Socket?
    /// The loop holds bytes of this link it has not finished writing; senders must queue behind them.
    var loopWriting = false
    /// Sealed bytes of a sender's frame that the socket did not take: written first by the loop.
    var remainder: [UInt8] = []
    /// The loop wants to see every frame for now (it must act on each one): senders queue.
    var held = false
    /// A sender holds the writer's role: it is writing to the socket outside the lock. Others queue.
    var senderWriting = false
    /// Frames senders wrote (their own and those they took from the queue) since the loop last asked
    /// (``takeWrittenBySenders()``); counted under the lock before the writer's role ends.
    var writtenBySenders = 0
    /// When a write on this link last began (a sender's, or the loop's batch), in monotonic nanoseconds.
    var lastWriteNanos: UInt64 = 0
  }

  /// What became of a sent frame.
  struct Outcome: Equatable {
    /// Frames the caller wrote to the socket, its own and those other senders queued behind it (one cut short
    /// included: the loop writes the rest of it).
    var framesWritten = 0
    /// Bytes the caller wrote (of a write cut short, the part the socket took).
    var bytesWritten = 0
    /// Write system calls made.
    var writeCalls = 0
    /// The socket did not take the last write whole (its send buffer filled): the loop writes the rest.
    var cutShort = false
    /// The caller must wake the loop for this link.
    var needsWake = false

    /// Queued; the loop is already due to write it (or a writing sender will).
    static let queued = Outcome()
    /// Queued; the caller must wake the loop for this link.
    static let queuedWake = Outcome(needsWake: true)

    /// Whether the caller wrote the frame (or its start) itself.
    var writtenBySender: Bool { framesWritten > 0 }
  }

  /// How many times a writing sender takes the frames queued behind it before it leaves them to the loop.
  static let maxWriterRounds = 8
  /// How many bytes a writing sender takes in one round.
  static let writerRoundBytes = 256 << 10

  private let state = Mutex(State())
  let maxFrames: Int
  let maxBytes: Int
  /// How long the link must have been quiet (no write begun) before a sender may write to it itself; 0 lets a
  /// sender write whenever the link is idle.
  let quietNanos: UInt64

  init(maxFrames: Int, maxBytes: Int, quietNanos: UInt64 = 0) {
    self.maxFrames = maxFrames
    self.maxBytes = maxBytes
    self.quietNanos = quietNanos
  }

  /// Writes `frame` to the socket at once if the link is idle and `writeIfIdle`, with whatever other senders
  /// queue meanwhile (see the type's notes); otherwise queues it.
  func send(_ frame: [UInt8], peer: NodeID, writeIfIdle: Bool) throws(TransportError) -> Outcome {
    enum First {
      case write(fd: Int32, bytes: [UInt8])
      case queued(Outcome)
    }
    let first = try state.withLock { (s: inout State) throws(TransportError) -> First in
      if s.closed { throw .closed }
      // A link written to a moment ago is streaming: a sender writing each frame itself would make one system
      // call (and wake the receiver once) per frame, so it queues and the loop writes the stream in batches.
      if writeIfIdle, var socket = s.socket, !s.loopWriting, !s.held, !s.senderWriting, s.frames.isEmpty,
        s.remainder.isEmpty, case let now = quietNanos > 0 ? monotonicNanos() : 0,
        now &- s.lastWriteNanos >= quietNanos
      {
        var sealed: [UInt8] = []
        if socket.sealer != nil {
          sealed.reserveCapacity(frame.count + TCPFrame.tagBytes)
          socket.sealer?.append(frame, to: &sealed)
          s.socket = socket
        }
        s.senderWriting = true
        s.lastWriteNanos = now
        return .write(fd: socket.fd, bytes: sealed.isEmpty ? frame : sealed)
      }
      if s.frames.count >= maxFrames || (s.bytes + frame.count > maxBytes && !s.frames.isEmpty) {
        throw .queueFull(peer: peer, capacity: maxFrames)
      }
      s.frames.append(frame)
      s.bytes += frame.count
      // A writing sender takes it when its write is done, or wakes the loop for it.
      if s.senderWriting || s.scheduled { return .queued(.queued) }
      s.scheduled = true
      return .queued(.queuedWake)
    }
    switch first {
    case .queued(let outcome): return outcome
    case .write(let fd, let bytes): return write(bytes, to: fd)
    }
  }

  /// The writer's role, held by the caller: writes `bytes` (one frame), then the frames queued meanwhile.
  private func write(_ firstBytes: [UInt8], to fd: Int32) -> Outcome {
    var outcome = Outcome()
    var bytes = firstBytes
    var frames = 1
    var rounds = 0
    while true {
      let written = Self.write(bytes, to: fd)
      outcome.writeCalls += 1
      outcome.framesWritten += frames
      rounds += 1
      let next = state.withLock { s -> [UInt8]? in
        s.writtenBySenders += frames
        if written < bytes.count {
          // The socket's buffer is full (or the connection failed, which the loop will find): the loop writes the
          // rest, then everything queued after it — unless the socket was detached meanwhile.
          outcome.cutShort = true
          outcome.bytesWritten += written
          if s.socket != nil {
            s.remainder = Array(bytes[written...])
            s.loopWriting = true
          }
        } else {
          outcome.bytesWritten += bytes.count
          if s.socket != nil, !s.held, !s.frames.isEmpty, rounds < Self.maxWriterRounds {
            var buffer: [UInt8] = []
            frames = Self.take(from: &s, into: &buffer, budget: Self.writerRoundBytes)
            if quietNanos > 0 { s.lastWriteNanos = monotonicNanos() }
            return buffer
          }
        }
        s.senderWriting = false
        if (s.loopWriting || !s.frames.isEmpty) && s.socket != nil && !s.scheduled {
          s.scheduled = true
          outcome.needsWake = true
        }
        return nil
      }
      guard let next else { return outcome }
      bytes = next
    }
  }

  /// Moves queued frames into `sink` (sealed on an authenticated link), at least one and then as many as fit
  /// in `budget` bytes; returns how many.
  private static func take(from s: inout State, into sink: inout some FrameSink, budget: Int) -> Int {
    let start = sink.count
    var frames = 0
    while let first = s.frames.first, frames == 0 || sink.count - start + first.count <= budget {
      _ = s.frames.popFirst()
      s.bytes -= first.count
      if s.socket?.sealer != nil {
        sink.add(first, sealer: &s.socket!.sealer)  // safe: checked just above, under the same lock
      } else {
        sink.add(first)
      }
      frames += 1
    }
    return frames
  }

  /// Writes as much of `bytes` as the non-blocking socket takes now; returns the count written.
  private static func write(_ bytes: [UInt8], to fd: Int32) -> Int {
    var offset = 0
    while offset < bytes.count {
      let written = bytes.withUnsafeBytes { raw in
        cq_send(fd, raw.baseAddress! + offset, raw.count - offset)  // safe: offset < count, so non-empty
      }
      if written > 0 {
        offset += written
      } else if written < 0 && errno == EINTR {
        continue
      } else {
        break
      }
    }
    return offset
  }

  /// Queues a link-control frame (a ping) ahead of nothing and outside the bounds; the loop writes it with
  /// the next batch.
  func enqueueControl(_ frame: [UInt8]) {
    state.withLock { s in
      guard !s.closed else { return }
      s.frames.append(frame)
      s.bytes += frame.count
    }
  }

  /// The connection is established: senders may write to `fd` while the link is idle, sealing with `sealer`.
  /// Loop thread.
  func attach(fd: Int32, sealer: FrameSealer?) {
    state.withLock { s in
      s.socket = Socket(fd: fd, sealer: sealer)
      s.remainder = []
      // Until the loop has drained what is queued.
      s.loopWriting = true
    }
  }

  /// While `held`, senders queue every frame for the loop, even when the link is idle. Holding waits for a
  /// writing sender to finish, so that afterwards ``takeWrittenBySenders()`` counts every frame a sender wrote
  /// and the loop sees every other one. Loop thread.
  func hold(_ held: Bool) {
    let writing = state.withLock { s in
      s.held = held
      return held && s.senderWriting
    }
    if writing { awaitWriter() }
  }

  /// How many frames senders wrote since the last call (each reply so written ends its request). Loop thread.
  func takeWrittenBySenders() -> Int {
    state.withLock { s in
      defer { s.writtenBySenders = 0 }
      return s.writtenBySenders
    }
  }

  /// The connection is closing: no sender may touch its socket from now on. Bytes left over from a sender's
  /// partial write are dropped with it (the frames still queued go out on the next connection). Loop thread.
  func detach() {
    let writing = state.withLock { s in
      s.socket = nil
      s.remainder = []
      s.loopWriting = false
      return s.senderWriting
    }
    if writing { awaitWriter() }
  }

  /// Waits until no sender writes to the socket (detached or held first, so none starts and the writer takes
  /// no more). A sender's write is one non-blocking system call and a short locked step, so this is brief; it
  /// happens only when a connection closes, or a reply route is held, just as a sender writes. Loop thread.
  private func awaitWriter() {
    while state.withLock({ $0.senderWriting }) { sched_yield() }
  }

  /// Appends to `buffer` the rest of a sender's partial write, then queued frames (sealed on an authenticated
  /// link) until about `budget` bytes, and clears the wake-up flag; returns the frames and bytes taken. The loop
  /// calls it when its write batch is empty: when nothing is left to take, senders may write to the socket
  /// themselves again.
  ///
  /// On a link without a sealer the frames are only moved out under the lock and copied into `batch` after it,
  /// so that senders queueing meanwhile do not wait for the copy (the loop holds the writer's role by then, so
  /// no sender writes to the socket before these bytes).
  func take(into batch: inout WriteBatch, budget: Int) -> (frames: Int, bytes: Int) {
    var moved: [[UInt8]] = []
    let start = batch.count
    let frames = state.withLock { s -> Int in
      s.scheduled = false
      // A writing sender takes what is queued when its write is done, or wakes the loop again.
      if s.senderWriting { return 0 }
      batch.append(s.remainder, range: 0..<s.remainder.count)
      s.remainder = []
      var frames = 0
      var bytes = batch.count - start
      if s.socket?.sealer == nil {
        // The budget counts the frames alone, as `take(from:into:budget:)` does on a sealed link.
        var taken = 0
        moved.reserveCapacity(min(s.frames.count, 4096))
        while let first = s.frames.first, frames == 0 || taken + first.count <= budget {
          _ = s.frames.popFirst()
          s.bytes -= first.count
          taken += first.count
          frames += 1
          moved.append(first)
        }
        bytes += taken
      } else {
        frames = Self.take(from: &s, into: &batch, budget: budget)
        bytes = batch.count - start
      }
      s.loopWriting = bytes > 0
      if bytes > 0 && quietNanos > 0 { s.lastWriteNanos = monotonicNanos() }
      return frames
    }
    for frame in moved { batch.append(frame: frame) }
    return (frames, batch.count - start)
  }

  /// Clears the wake-up flag; returns whether frames are waiting.
  func acknowledgeWakeUp() -> Bool {
    state.withLock { s in
      s.scheduled = false
      return !s.frames.isEmpty
    }
  }

  /// Drops every queued frame; returns how many.
  @discardableResult
  func discardAll() -> Int {
    state.withLock { s in
      let count = s.frames.count
      s.frames.removeAll()
      s.bytes = 0
      return count
    }
  }

  /// The queue's state in one line, for a failure report.
  var stateDescription: String {
    state.withLock { s in
      "queued=\(s.frames.count) frames/\(s.bytes)B wake-up-pending=\(s.scheduled) closed=\(s.closed) "
        + "attached=\(s.socket != nil) loop-writing=\(s.loopWriting) sender-writing=\(s.senderWriting) "
        + "remainder=\(s.remainder.count)B"
    }
  }

  /// Refuses further frames and drops the queued ones.
  func close() {
    let writing = state.withLock { s in
      s.closed = true
      s.frames.removeAll()
      s.bytes = 0
      s.socket = nil
      s.remainder = []
      return s.senderWriting
    }
    if writing { awaitWriter() }
  }
}

/// Where taken frames go: a buffer they are copied into (a sender's write), or a connection's batch.
protocol FrameSink {
  /// The bytes added so far.
  var count: Int { get }
  /// Adds `frame` as it is.
  mutating func add(_ frame: [UInt8])
  /// Adds `frame` sealed by `sealer`.
  mutating func add(_ frame: [UInt8], sealer: inout FrameSealer?)
}

extension [UInt8]: FrameSink {
  mutating func add(_ frame: [UInt8]) { append(contentsOf: frame) }
  mutating func add(_ frame: [UInt8], sealer: inout FrameSealer?) { sealer?.append(frame, to: &self) }
}

extension WriteBatch: FrameSink {
  mutating func add(_ frame: [UInt8]) { append(frame: frame) }
  mutating func add(_ frame: [UInt8], sealer: inout FrameSealer?) { sealer?.append(frame, to: &self) }
}
