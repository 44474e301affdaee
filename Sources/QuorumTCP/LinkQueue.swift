import QuorumCore
import Synchronization

/// The bounded queue of encoded frames from one local node to one peer, shared by the senders (any thread)
/// and the event loop (which takes frames in batches and writes them with one system call).
///
/// Policy when full: the send is refused with ``QuorumCore/TransportError/queueFull(peer:capacity:)`` and
/// nothing already queued is dropped, so frames on one link stay in order. The sender decides: Raft treats
/// a refusal as a lost message and retransmits later.
final class LinkQueue: Sendable {
  private struct State {
    var frames = FIFOQueue<[UInt8]>()
    var bytes = 0
    /// A wake-up for this link is pending on the loop; further sends need not wake it again.
    var scheduled = false
    var closed = false
  }

  private let state = Mutex(State())
  let maxFrames: Int
  let maxBytes: Int

  init(maxFrames: Int, maxBytes: Int) {
    self.maxFrames = maxFrames
    self.maxBytes = maxBytes
  }

  /// Queues `frame`; returns whether the caller must wake the loop for this link.
  func enqueue(_ frame: [UInt8], peer: NodeID) throws(TransportError) -> Bool {
    try state.withLock { (s: inout State) throws(TransportError) -> Bool in
      if s.closed { throw .closed }
      if s.frames.count >= maxFrames || (s.bytes + frame.count > maxBytes && !s.frames.isEmpty) {
        throw .queueFull(peer: peer, capacity: maxFrames)
      }
      s.frames.append(frame)
      s.bytes += frame.count
      if s.scheduled { return false }
      s.scheduled = true
      return true
    }
  }

  /// Appends queued frames to `buffer` until about `budget` bytes (at least one frame) and clears the
  /// wake-up flag; returns the number of frames and bytes taken.
  func take(into buffer: inout [UInt8], budget: Int) -> (frames: Int, bytes: Int) {
    state.withLock { s in
      s.scheduled = false
      var frames = 0
      var bytes = 0
      while let first = s.frames.first, frames == 0 || bytes + first.count <= budget {
        _ = s.frames.popFirst()
        buffer.append(contentsOf: first)
        frames += 1
        bytes += first.count
      }
      s.bytes -= bytes
      return (frames, bytes)
    }
  }

  /// Takes queued frames until about `budget` bytes (at least one frame) and clears the wake-up flag (for a
  /// connection that must add a code to each frame outside the lock).
  func take(budget: Int) -> [[UInt8]] {
    state.withLock { s in
      s.scheduled = false
      var taken: [[UInt8]] = []
      var bytes = 0
      while let first = s.frames.first, taken.isEmpty || bytes + first.count <= budget {
        _ = s.frames.popFirst()
        taken.append(first)
        bytes += first.count
      }
      s.bytes -= bytes
      return taken
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
      "queued=\(s.frames.count) frames/\(s.bytes)B wake-up-pending=\(s.scheduled) closed=\(s.closed)"
    }
  }

  /// Refuses further frames and drops the queued ones.
  func close() {
    state.withLock { s in
      s.closed = true
      s.frames.removeAll()
      s.bytes = 0
    }
  }
}
