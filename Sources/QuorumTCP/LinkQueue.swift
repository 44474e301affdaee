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
    /// The queued frames, unsealed and back to back (each its length prefix and body), in chunks of about
    /// ``LinkQueue/chunkBytes``: the full chunks, oldest first from `fullHead` on, then `open`, the chunk senders
    /// encode their frames into. A frame costs no allocation of its own, and taking a stream of frames is a
    /// swap of buffers rather than a step per frame; a backlog is a list of chunks, never one buffer regrown.
    var full: [[UInt8]] = []
    /// How many frames each full chunk still holds.
    var fullFrames: [Int] = []
    var fullHead = 0
    var open: [UInt8] = []
    var openFrames = 0
    /// Where the first frame not yet taken starts in the front chunk (an authenticated link seals frames a
    /// budget at a time, so it can take part of a chunk).
    var frontStart = 0
    /// How many frames are queued, and their bytes.
    var frames = 0
    var bytes = 0
    /// An empty buffer with storage, to become the next open chunk.
    var spare: [UInt8] = []
    /// A wake-up for this link is pending on the loop; further sends need not wake it again.
    var scheduled = false
    var closed = false
    /// The established connection's socket; `nil` while there is none.
    var socket: Socket?
    /// The loop holds bytes of this link it has not finished writing; senders must queue behind them.
    var loopWriting = false
    /// Sealed bytes of a sender's write that the socket did not take, from `remainderStart` on: written first
    /// by the loop.
    var remainder: [UInt8] = []
    var remainderStart = 0
    /// With a shared budget: bytes the loop took into its write batch (``LinkQueue/take(into:budget:)``), still
    /// charged to it until written (``LinkQueue/loopBatchHolds(_:)``) or dropped with the connection. They are the
    /// batch's last bytes.
    var lent = 0
    /// The loop wants to see every frame for now (it must act on each one): senders queue.
    var held = false
    /// A sender holds the writer's role: it is writing to the socket outside the lock. Others queue.
    var senderWriting = false
    /// Frames senders wrote (their own and those they took from the queue) since the loop last asked
    /// (``takeWrittenBySenders()``); counted under the lock before the writer's role ends.
    var writtenBySenders = 0
    /// When a write on this link last began (a sender's, or the loop's batch), in monotonic nanoseconds.
    var lastWriteNanos: UInt64 = 0

    /// Appends the frame `encode` writes to the open chunk (closing it first if it is full); returns its size.
    /// The frame is not counted until ``commit(_:)``; ``uncommit(_:)`` takes it back.
    mutating func append(_ encode: (inout [UInt8]) -> Void) -> Int {
      if open.count >= LinkQueue.chunkBytes {
        full.append([])
        swap(&full[full.count - 1], &open)
        fullFrames.append(openFrames)
        openFrames = 0
        swap(&open, &spare)
        // A stream fills chunk after chunk: the next one gets its room at once rather than by regrowing.
        if open.capacity < LinkQueue.chunkBytes {
          open.reserveCapacity(LinkQueue.chunkBytes + LinkQueue.chunkBytes / 4)
        }
      }
      let start = open.count
      encode(&open)
      return open.count - start
    }

    mutating func commit(_ size: Int) {
      frames += 1
      openFrames += 1
      bytes += size
    }

    mutating func uncommit(_ size: Int) {
      open.removeLast(size)
      if frames == 0 { settle() }
    }

    /// Once no frame is queued: empties the chunks, letting go of a buffer grown past
    /// ``LinkQueue/keptBufferBytes``.
    mutating func settle() {
      guard frames == 0 else { return }
      full.removeAll(keepingCapacity: full.capacity <= 64)
      fullFrames.removeAll(keepingCapacity: fullFrames.capacity <= 64)
      fullHead = 0
      if open.capacity > LinkQueue.keptBufferBytes {
        open = []
      } else {
        open.removeAll(keepingCapacity: true)
      }
      openFrames = 0
      frontStart = 0
      bytes = 0
    }

    /// The bytes of a sender's partial write the loop has not taken yet.
    var remainderBytes: Int { remainder.count - remainderStart }

    /// The bytes of this link that a shared budget holds charged (with one, and a sender's write in progress
    /// aside): queued, left over from a sender's partial write, and in the loop's write batch.
    var chargedBytes: Int { bytes + remainderBytes + lent }

    /// Keeps `buffer`'s storage as the spare, if there is none and it is not too large.
    mutating func recycle(_ buffer: inout [UInt8]) {
      guard spare.capacity == 0, buffer.capacity <= LinkQueue.keptBufferBytes else { return }
      buffer.removeAll(keepingCapacity: true)
      swap(&spare, &buffer)
    }

    /// Moves queued frames into `out` (empty) and returns how many: on an unsealed link the front chunk whole,
    /// by swapping buffers; on a sealed link frames sealed one by one, at least one and then as many as fit in
    /// `budget` bytes.
    mutating func take(into out: inout [UInt8], budget: Int) -> Int {
      guard frames > 0 else { return 0 }
      let taken = socket?.sealer == nil ? takeFront(into: &out) : takeSealed(into: &out, budget: budget)
      if frames == 0 { settle() }
      return taken
    }

    private mutating func takeFront(into out: inout [UInt8]) -> Int {
      let count: Int
      if fullHead < full.count {
        swap(&out, &full[fullHead])
        // The storage `out` brought becomes the spare, for the next open chunk.
        var brought: [UInt8] = []
        swap(&brought, &full[fullHead])
        recycle(&brought)
        count = fullFrames[fullHead]
        dropFullFront()
      } else {
        // `open` keeps the storage `out` brought (or the spare's), for the next frames.
        swap(&out, &open)
        if open.capacity < spare.capacity { swap(&open, &spare) }
        count = openFrames
        openFrames = 0
      }
      if frontStart > 0 {
        out.removeFirst(frontStart)
        frontStart = 0
      }
      frames -= count
      bytes -= out.count
      return count
    }

    private mutating func dropFullFront() {
      fullHead += 1
      if fullHead == full.count {
        full.removeAll(keepingCapacity: full.capacity <= 64)
        fullFrames.removeAll(keepingCapacity: fullFrames.capacity <= 64)
        fullHead = 0
      } else if fullHead >= 32 {
        full.removeFirst(fullHead)
        fullFrames.removeFirst(fullHead)
        fullHead = 0
      }
    }

    private mutating func takeSealed(into out: inout [UInt8], budget: Int) -> Int {
      var sealer = socket?.sealer
      var taken = 0
      while frames > 0 {
        let inFull = fullHead < full.count
        let sealed = (inFull ? full[fullHead] : open).withUnsafeBytes { raw -> Int? in
          let length = LinkQueue.length(raw, at: frontStart)
          if taken > 0 && out.count + TCPFrame.prefixBytes + length > budget { return nil }
          let end = frontStart + TCPFrame.prefixBytes + length
          sealer?.append(
            body: UnsafeRawBufferPointer(rebasing: raw[(frontStart + TCPFrame.prefixBytes)..<end]), to: &out)
          return end
        }
        guard let end = sealed else { break }
        bytes -= end - frontStart
        frames -= 1
        taken += 1
        frontStart = end
        if inFull {
          fullFrames[fullHead] -= 1
          if fullFrames[fullHead] == 0 {
            var chunk: [UInt8] = []
            swap(&chunk, &full[fullHead])
            recycle(&chunk)
            dropFullFront()
            frontStart = 0
          }
        } else {
          openFrames -= 1
          if openFrames == 0 {
            open.removeAll(keepingCapacity: true)
            frontStart = 0
          }
        }
      }
      socket?.sealer = sealer
      return taken
    }
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
  /// How many bytes a writing sender seals in one round on an authenticated link.
  static let writerRoundBytes = 256 << 10
  /// The size at which the chunk senders encode into counts as full: the next frame starts a new chunk.
  static let chunkBytes = 256 << 10
  /// The largest buffer a link keeps for reuse once it is empty; a larger one (grown by a large frame) is let go.
  static let keptBufferBytes = 512 << 10

  private let state = Mutex(State())
  let maxFrames: Int
  let maxBytes: Int
  /// How long the link must have been quiet (no write begun) before a sender may write to it itself; 0 lets a
  /// sender write whenever the link is idle.
  let quietNanos: UInt64

  /// The budget this queue's bytes are also charged to, shared with other queues (a client connection's replies:
  /// ``SharedReplyBudget``); `nil` for none.
  let shared: SharedReplyBudget?

  init(maxFrames: Int, maxBytes: Int, quietNanos: UInt64 = 0, shared: SharedReplyBudget? = nil) {
    self.maxFrames = maxFrames
    self.maxBytes = maxBytes
    self.quietNanos = quietNanos
    self.shared = shared
  }

  /// The body length in the prefix of the frame at `offset` of `raw`.
  static func length(_ raw: UnsafeRawBufferPointer, at offset: Int) -> Int {
    Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
  }

  /// Sends an already encoded frame (length prefix and body); see ``send(peer:writeIfIdle:maxBody:encode:)``.
  func send(_ frame: [UInt8], peer: NodeID, writeIfIdle: Bool) throws(TransportError) -> Outcome {
    try send(peer: peer, writeIfIdle: writeIfIdle) { $0.append(contentsOf: frame) }
  }

  /// Sends the frame `encode` appends (its length prefix and body) to the buffer it is given: writes it to the
  /// socket at once if the link is idle and `writeIfIdle`, with whatever other senders queue meanwhile (see the
  /// type's notes); otherwise queues it. `encode` runs under the link's lock, straight into the queue's buffer,
  /// so it must only encode.
  /// - Throws: ``QuorumCore/TransportError/messageTooLarge(bytes:limit:)`` for a body over `maxBody` and
  ///   ``QuorumCore/TransportError/queueFull(peer:capacity:)`` (nothing is queued), or
  ///   ``QuorumCore/TransportError/closed``.
  func send(
    peer: NodeID, writeIfIdle: Bool, maxBody: Int = .max, encode: (inout [UInt8]) -> Void
  ) throws(TransportError) -> Outcome {
    enum First {
      /// Write `out` to `fd`, with `charged` of its bytes charged to the shared budget.
      case write(fd: Int32, charged: Int)
      case queued(Outcome)
    }
    // What a sender writes itself, taken under the lock; held here alone, so its storage can be reused.
    var out: [UInt8] = []
    let first = try state.withLock { (s: inout State) throws(TransportError) -> First in
      if s.closed { throw .closed }
      if s.frames >= maxFrames { throw .queueFull(peer: peer, capacity: maxFrames) }
      let size = s.append(encode)
      // Refused before its prefix is checked: a body of 4 GiB or more, whose prefix (a u32) cannot say its length,
      // is too large for any link, and the sender hears so rather than the process stopping.
      if size - TCPFrame.prefixBytes > maxBody {
        s.uncommit(size)
        throw .messageTooLarge(bytes: size - TCPFrame.prefixBytes, limit: maxBody)
      }
      // Frames are found by their length prefixes (to seal them, and by the reader): one that disagreed with its
      // bytes would corrupt the stream. The encoders are this module's own, so it cannot happen short of a bug.
      let frameStart = s.open.count - size
      precondition(
        size >= TCPFrame.prefixBytes
          && s.open.withUnsafeBytes { LinkQueue.length($0, at: frameStart) } == size - TCPFrame.prefixBytes,
        "a frame's length prefix does not match its bytes")
      // A link written to a moment ago is streaming: a sender writing each frame itself would make one system
      // call (and wake the receiver once) per frame, so it queues and the loop writes the stream in batches.
      if writeIfIdle, s.socket != nil, !s.loopWriting, !s.held, !s.senderWriting, s.frames == 0,
        s.remainder.isEmpty, case let now = quietNanos > 0 ? monotonicNanos() : 0,
        now &- s.lastWriteNanos >= quietNanos, let fd = s.socket?.fd
      {
        // A large reply is charged to the shared budget while it is written, as if queued (and refused as a queued
        // one would be), so that what the socket does not take stays charged (``write(_:to:charged:)``). A small one
        // would be admitted anyway (nothing is queued): it is charged only if the socket does not take it all.
        let charged = shared != nil && size > SharedReplyBudget.alwaysAdmittedBytes
        if charged, let shared, !shared.charge(size, queued: s.chargedBytes, always: false) {
          s.uncommit(size)
          throw .queueFull(peer: peer, capacity: maxFrames)
        }
        // The queue was empty, so the open chunk holds this frame alone: it is taken (sealed on an
        // authenticated link) and written from there.
        s.commit(size)
        swap(&out, &s.spare)
        _ = s.take(into: &out, budget: .max)
        if charged { shared?.recharge(from: size, to: out.count) }
        s.senderWriting = true
        s.lastWriteNanos = now
        return .write(fd: fd, charged: charged ? out.count : 0)
      }
      if s.bytes + size > maxBytes && s.frames > 0 {
        s.uncommit(size)
        throw .queueFull(peer: peer, capacity: maxFrames)
      }
      // Charged under this queue's lock, so that what it gives back (also under it) never passes what it charged.
      if let shared,
        !shared.charge(
          size, queued: s.chargedBytes, always: s.frames == 0 && size <= SharedReplyBudget.alwaysAdmittedBytes)
      {
        s.uncommit(size)
        throw .queueFull(peer: peer, capacity: maxFrames)
      }
      s.commit(size)
      // A writing sender takes it when its write is done, or wakes the loop for it.
      if s.senderWriting || s.scheduled { return .queued(.queued) }
      s.scheduled = true
      return .queued(.queuedWake)
    }
    switch first {
    case .queued(let outcome): return outcome
    case .write(let fd, let charged): return write(&out, to: fd, charged: charged)
    }
  }

  /// The writer's role, held by the caller: writes `bytes` (one frame, `charged` of its bytes charged to the shared
  /// budget), then the frames queued meanwhile. What the socket takes is given back to the budget; what it does not
  /// take stays charged until the loop writes it, or it is dropped with the connection.
  private func write(_ bytes: inout [UInt8], to fd: Int32, charged: Int) -> Outcome {
    var charged = charged
    var outcome = Outcome()
    var frames = 1
    var rounds = 0
    while true {
      let written = Self.write(bytes, to: fd)
      outcome.writeCalls += 1
      outcome.framesWritten += frames
      rounds += 1
      let more = state.withLock { s -> Bool in
        s.writtenBySenders += frames
        if written < bytes.count {
          // The socket's buffer is full (or the connection failed, which the loop will find): the loop writes the
          // rest, then everything queued after it — unless the socket was detached meanwhile.
          outcome.cutShort = true
          outcome.bytesWritten += written
          if s.socket != nil {
            swap(&s.remainder, &bytes)
            s.remainderStart = written
            s.loopWriting = true
            shared?.recharge(from: charged, to: s.remainderBytes)
          } else {
            shared?.credit(charged)
          }
        } else {
          outcome.bytesWritten += bytes.count
          shared?.credit(charged)
          if s.socket != nil, !s.held, s.frames > 0, rounds < Self.maxWriterRounds {
            bytes.removeAll(keepingCapacity: true)
            let queued = s.bytes
            frames = s.take(into: &bytes, budget: Self.writerRoundBytes)
            // The frames taken stay charged while they are written (sealed on an authenticated link: codes too).
            charged = bytes.count
            shared?.recharge(from: queued - s.bytes, to: charged)
            if quietNanos > 0 { s.lastWriteNanos = monotonicNanos() }
            return true
          }
          s.recycle(&bytes)
        }
        s.senderWriting = false
        if (s.loopWriting || s.frames > 0) && s.socket != nil && !s.scheduled {
          s.scheduled = true
          outcome.needsWake = true
        }
        return false
      }
      guard more else { return outcome }
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
      let size = s.append { $0.append(contentsOf: frame) }
      _ = shared?.charge(size, always: true)
      s.commit(size)
    }
  }

  /// The connection is established: senders may write to `fd` while the link is idle, sealing with `sealer`.
  /// Loop thread.
  func attach(fd: Int32, sealer: FrameSealer?) {
    state.withLock { s in
      s.socket = Socket(fd: fd, sealer: sealer)
      shared?.credit(s.remainderBytes + s.lent)
      s.lent = 0
      s.remainder = []
      s.remainderStart = 0
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

  /// The bytes queued and not yet taken.
  var queuedBytes: Int { state.withLock { $0.bytes } }

  /// The bytes charged to the shared budget: queued, left over from a sender's partial write, or in the loop's
  /// write batch and not yet written.
  var chargedBytes: Int { state.withLock { $0.chargedBytes } }

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
      // The loop's write batch is dropped with the connection.
      shared?.credit(s.remainderBytes + s.lent)
      s.lent = 0
      s.remainder = []
      s.remainderStart = 0
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

  /// Appends to `batch` the rest of a sender's partial write, then queued frames — the oldest chunk of them on
  /// an unsealed link (a swap of buffers), on an authenticated one sealed until about `budget` bytes — and clears
  /// the wake-up flag; returns the frames and bytes taken. With a shared budget, the bytes taken stay charged to it
  /// until the loop reports them written (``loopBatchHolds(_:)``) or the connection closes (``detach()``,
  /// ``close()``): so nothing may be appended to `batch` after them that is not charged too. The loop calls it when
  /// its write batch is empty: when nothing is left to take, senders may write to the socket themselves again. The
  /// buffers go into the batch after the lock is released, and come back for reuse once written
  /// (``WriteBatch/takeRecycled()``).
  func take(into batch: inout WriteBatch, budget: Int) -> (frames: Int, bytes: Int) {
    var out = batch.takeRecycled()
    var remainder: [UInt8] = []
    var remainderStart = 0
    let frames = state.withLock { s -> Int in
      s.scheduled = false
      // A writing sender takes what is queued when its write is done, or wakes the loop again.
      if s.senderWriting {
        s.recycle(&out)
        return 0
      }
      swap(&remainder, &s.remainder)
      remainderStart = s.remainderStart
      s.remainderStart = 0
      let queued = s.bytes
      let frames = s.take(into: &out, budget: budget)
      if out.isEmpty { s.recycle(&out) }
      let bytes = remainder.count - remainderStart + out.count
      if let shared {
        // Charged while in the batch: the frames as sealed (codes too), and the remainder (charged already).
        shared.recharge(from: queued - s.bytes, to: out.count)
        s.lent += bytes
      }
      s.loopWriting = bytes > 0
      if bytes > 0 && quietNanos > 0 { s.lastWriteNanos = monotonicNanos() }
      return frames
    }
    let start = batch.count
    if remainder.count > remainderStart { batch.append(owned: &remainder, from: remainderStart) }
    if !out.isEmpty { batch.append(owned: &out, from: 0) }
    return (frames, batch.count - start)
  }

  /// The loop's write batch holds `pending` bytes now: of those it took from here (the batch's last bytes), the
  /// ones written are given back to the shared budget. Loop thread.
  func loopBatchHolds(_ pending: Int) {
    guard let shared else { return }
    state.withLock { s in
      guard s.lent > pending else { return }
      shared.credit(s.lent - pending)
      s.lent = pending
    }
  }

  /// Clears the wake-up flag; returns whether frames are waiting.
  func acknowledgeWakeUp() -> Bool {
    state.withLock { s in
      s.scheduled = false
      return s.frames > 0
    }
  }

  /// Drops every queued frame; returns how many.
  @discardableResult
  func discardAll() -> Int {
    state.withLock { s in
      let count = s.frames
      shared?.credit(s.bytes)
      s.frames = 0
      s.settle()
      return count
    }
  }

  /// The queue's state in one line, for a failure report.
  var stateDescription: String {
    state.withLock { s in
      "queued=\(s.frames) frames/\(s.bytes)B wake-up-pending=\(s.scheduled) closed=\(s.closed) "
        + "attached=\(s.socket != nil) loop-writing=\(s.loopWriting) sender-writing=\(s.senderWriting) "
        + "remainder=\(s.remainder.count - s.remainderStart)B"
    }
  }

  /// Refuses further frames and drops the queued ones.
  func close() {
    let writing = state.withLock { s in
      s.closed = true
      // The frames queued, the rest of a sender's partial write and the loop's write batch are dropped.
      shared?.credit(s.chargedBytes)
      s.lent = 0
      s.frames = 0
      s.settle()
      s.socket = nil
      s.remainder = []
      s.remainderStart = 0
      return s.senderWriting
    }
    if writing { awaitWriter() }
  }
}
