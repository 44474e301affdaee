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
/// While the link is idle — connected, nothing queued, nothing left in the loop's write buffer — a sender
/// writes its frame to the socket itself, under the queue's lock, instead of queueing it and waking the loop:
/// one thread hand-off less per message, which is most of a message's latency on a busy machine. Whatever the
/// socket does not take (a full send buffer) is kept, already sealed, and written first by the loop. The loop
/// detaches the socket before it closes it (``detach()``), so no sender writes to a closed descriptor.
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
  }

  /// What became of a sent frame.
  enum Outcome {
    /// Queued; the loop is already due to write it.
    case queued
    /// Queued; the caller must wake the loop for this link.
    case queuedWake
    /// Written to the socket by the caller (`bytes` with the code, if any).
    case written(bytes: Int)
    /// Partly written by the caller (the socket's buffer filled); the loop writes the rest. With `wake`, the
    /// caller must wake the loop for this link.
    case cutShort(wake: Bool)

    /// Whether the caller must wake the loop for this link.
    var needsWake: Bool {
      switch self {
      case .queuedWake, .cutShort(wake: true): return true
      case .queued, .written, .cutShort(wake: false): return false
      }
    }

    /// Whether the caller wrote the frame (or its start) itself.
    var writtenBySender: Bool {
      switch self {
      case .written, .cutShort: return true
      case .queued, .queuedWake: return false
      }
    }
  }

  private let state = Mutex(State())
  let maxFrames: Int
  let maxBytes: Int

  init(maxFrames: Int, maxBytes: Int) {
    self.maxFrames = maxFrames
    self.maxBytes = maxBytes
  }

  /// Writes `frame` to the socket at once if the link is idle (see the type's notes) and `writeIfIdle`;
  /// otherwise queues it.
  func send(_ frame: [UInt8], peer: NodeID, writeIfIdle: Bool) throws(TransportError) -> Outcome {
    try state.withLock { (s: inout State) throws(TransportError) -> Outcome in
      if s.closed { throw .closed }
      if writeIfIdle, var socket = s.socket, !s.loopWriting, !s.held, s.frames.isEmpty, s.remainder.isEmpty {
        var sealed: [UInt8] = []
        if socket.sealer != nil {
          sealed.reserveCapacity(frame.count + TCPFrame.tagBytes)
          socket.sealer?.append(frame, to: &sealed)
          s.socket = socket
        }
        let bytes = sealed.isEmpty ? frame : sealed
        let written = Self.write(bytes, to: socket.fd)
        if written == bytes.count { return .written(bytes: bytes.count) }
        // The socket's buffer is full (or the connection failed, which the loop will find): the loop writes the
        // rest, then everything queued after it.
        s.remainder = Array(bytes[written...])
        s.loopWriting = true
        if s.scheduled { return .cutShort(wake: false) }
        s.scheduled = true
        return .cutShort(wake: true)
      }
      if s.frames.count >= maxFrames || (s.bytes + frame.count > maxBytes && !s.frames.isEmpty) {
        throw .queueFull(peer: peer, capacity: maxFrames)
      }
      s.frames.append(frame)
      s.bytes += frame.count
      if s.scheduled { return .queued }
      s.scheduled = true
      return .queuedWake
    }
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

  /// While `held`, senders queue every frame for the loop, even when the link is idle. Loop thread.
  func hold(_ held: Bool) {
    state.withLock { $0.held = held }
  }

  /// The connection is closing: no sender may touch its socket from now on. Bytes left over from a sender's
  /// partial write are dropped with it (the frames still queued go out on the next connection). Loop thread.
  func detach() {
    state.withLock { s in
      s.socket = nil
      s.remainder = []
      s.loopWriting = false
    }
  }

  /// Appends to `buffer` the rest of a sender's partial write, then queued frames (sealed on an authenticated
  /// link) until about `budget` bytes, and clears the wake-up flag; returns the frames and bytes taken. The loop
  /// calls it when its write buffer is empty: when nothing is left to take, senders may write to the socket
  /// themselves again.
  func take(into buffer: inout [UInt8], budget: Int) -> (frames: Int, bytes: Int) {
    state.withLock { s in
      s.scheduled = false
      let start = buffer.count
      buffer.append(contentsOf: s.remainder)
      s.remainder = []
      var frames = 0
      while let first = s.frames.first, frames == 0 || buffer.count - start + first.count <= budget {
        _ = s.frames.popFirst()
        s.bytes -= first.count
        if s.socket?.sealer != nil {
          s.socket?.sealer?.append(first, to: &buffer)
        } else {
          buffer.append(contentsOf: first)
        }
        frames += 1
      }
      let bytes = buffer.count - start
      s.loopWriting = bytes > 0
      return (frames, bytes)
    }
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
        + "attached=\(s.socket != nil) loop-writing=\(s.loopWriting) remainder=\(s.remainder.count)B"
    }
  }

  /// Refuses further frames and drops the queued ones.
  func close() {
    state.withLock { s in
      s.closed = true
      s.frames.removeAll()
      s.bytes = 0
      s.socket = nil
      s.remainder = []
    }
  }
}
