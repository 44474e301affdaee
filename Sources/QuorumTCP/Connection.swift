import CQuorumSystem
import Glibc
import QuorumCore

/// What a connection's owner decided about one received frame.
enum FrameVerdict {
  /// Consumed; go on with the next frame.
  case proceed
  /// Consumed, but stop reading until ``Connection/resumeReading()`` (the receiver is full).
  case pause
  /// Close the connection with this reason.
  case close(TCPCloseReason)
}

/// The owner of a ``Connection``: told about connects, frames, drained writes and the close. Loop thread only.
protocol ConnectionDelegate: AnyObject {
  /// An outbound connection finished connecting.
  func connectionDidConnect(_ connection: Connection)
  /// A complete frame arrived: its body is `bytes[range]` (without the length prefix).
  func connection(_ connection: Connection, didReceive bytes: [UInt8], range: Range<Int>) -> FrameVerdict
  /// A read brought `frames`: take whole frames from its front (``FrameCursor/next(limit:)``) and say what to do
  /// after the last one taken. `.proceed` means every frame that could be taken was, unless the connection was
  /// paused or closed meanwhile. The default takes them one at a time through
  /// ``connection(_:didReceive:range:)``; a delegate with a cheaper loop of its own may replace it.
  func connection(_ connection: Connection, didReceive frames: inout FrameCursor) -> FrameVerdict
  /// Everything queued was written; the owner may queue more (and call ``Connection/flush()``).
  func connectionDidDrain(_ connection: Connection)
  /// The frames received so far have all been handed over (a batch boundary: deliver what was collected).
  func connectionDidParse(_ connection: Connection)
  /// The connection closed; it is unregistered and its descriptor closed.
  func connection(_ connection: Connection, didCloseWith reason: TCPCloseReason)
}

extension ConnectionDelegate {
  func connection(_ connection: Connection, didReceive frames: inout FrameCursor) -> FrameVerdict {
    receiveEach(connection, &frames)
  }

  /// Hands `frames` to ``connection(_:didReceive:range:)`` one at a time, until one is not `.proceed` or the
  /// connection pauses or closes.
  func receiveEach(_ connection: Connection, _ frames: inout FrameCursor) -> FrameVerdict {
    // The limit is read per frame: a handshake completed by one frame raises it for the next.
    while !connection.isClosed && !connection.isPaused, let range = frames.next(limit: connection.maxFrameBytes) {
      let verdict = self.connection(connection, didReceive: frames.bytes, range: range)
      guard case .proceed = verdict else { return verdict }
    }
    return .proceed
  }
}

/// The frames of one read, taken from the front: each ``next(limit:)`` gives the body of the next whole frame.
struct FrameCursor {
  /// The bytes read: frames back to back, each after its 4-byte length prefix, and maybe the start of one more.
  let bytes: [UInt8]
  /// Where the bytes read end.
  let end: Int
  /// Where the first frame not taken starts.
  private(set) var offset: Int
  /// Why the frame at ``offset`` cannot be taken (its length is zero or over the limit), once found.
  private(set) var failure: TCPCloseReason?
  /// How many frames were taken.
  private(set) var taken = 0

  /// The frames of `bytes[start..<end]`.
  init(bytes: [UInt8], start: Int = 0, end: Int) {
    self.bytes = bytes
    self.end = end
    self.offset = start
  }

  /// The body of the next frame (without its prefix), or `nil` when no whole frame is left or its length is bad
  /// (then ``failure`` says why).
  mutating func next(limit maxFrameBytes: Int) -> Range<Int>? {
    let available = end - offset
    guard available >= TCPFrame.prefixBytes else { return nil }
    let length = Int(Connection.readLength(bytes, at: offset))
    guard length > 0 else {
      failure = .malformedFrame("zero-length frame")
      return nil
    }
    guard length <= maxFrameBytes else {
      failure = .frameTooLarge(bytes: length, limit: maxFrameBytes)
      return nil
    }
    guard available >= TCPFrame.prefixBytes + length else { return nil }
    let start = offset + TCPFrame.prefixBytes
    offset = start + length
    taken += 1
    return start..<offset
  }
}

/// One non-blocking TCP socket on an ``EventLoop``: frame parsing on the way in, a coalescing write
/// buffer on the way out. Used only on its loop's thread.
final class Connection: LoopHandler {
  /// Why reading is paused (several may hold at once; reading resumes when none does).
  struct PauseReasons: OptionSet {
    let rawValue: UInt8
    /// The receiver behind the connection is full (back-pressure).
    static let receiver = PauseReasons(rawValue: 1)
    /// The shared budget for partly received frames is spent.
    static let budget = PauseReasons(rawValue: 2)
    /// Too many replies wait to be written (the remote side is not reading).
    static let replies = PauseReasons(rawValue: 4)
    /// The endpoint's replies to all its clients fill half their budget, and this one holds at least its share.
    static let sharedReplies = PauseReasons(rawValue: 8)
    /// The pauses that make a partly received frame wait for the endpoint, not for its peer: the frame's timeout
    /// stops while one holds, and the time waited is bounded on its own (``Connection/budgetWaitTimeoutNanos``).
    static let waitingForTheEndpoint: PauseReasons = [.budget, .sharedReplies]
  }

  let loop: EventLoop
  let fd: Int32
  /// The largest frame body (code included) accepted; raised by the owner once the handshake completes.
  var maxFrameBytes: Int
  /// Whether to reserve room for a whole announced frame at once (only for authenticated peers: others get
  /// memory as their bytes arrive).
  var reservesAnnouncedFrames = false
  /// The remote address, for logs.
  let remote: String
  weak var delegate: (any ConnectionDelegate)?
  /// When the handshake must have completed (monotonic nanoseconds), or `nil` once it has.
  var handshakeDeadline: UInt64?
  /// How long a partially received frame may take, from its first byte (time paused for back-pressure from
  /// the receiver, or waiting in line for the shared receive budget, does not count).
  let frameTimeoutNanos: UInt64
  /// If set, how long in all a frame may wait in line for ``receiveBudget`` before the connection is closed
  /// (``TCPCloseReason/truncatedFrame(received:expected:)``): the frame timeout does not run while it waits, and
  /// this bounds the wait.
  var budgetWaitTimeoutNanos: UInt64?
  /// If set, replies waiting this long without any of them being written close the connection
  /// (``TCPCloseReason/slowReader(pendingBytes:)``).
  var writeStallTimeoutNanos: UInt64?
  /// The shared budget that bytes of partly received frames are charged to (client connections).
  var receiveBudget: ReceiveBudget<Connection>? {
    didSet { oldValue?.release(self) }
  }
  /// Runs once when the connection closes, before its descriptor is closed (so that other threads that write
  /// to it can be stopped first).
  var willClose: (() -> Void)?
  /// Runs after a ``flush()`` wrote bytes (before the delegate is asked for more), with the bytes the write batch
  /// still holds: a client connection gives back what was written to the endpoint's reply budget.
  var didWrite: ((_ pending: Int) -> Void)?
  /// The monotonic clock (nanoseconds) that the connection stamps its own times with (a frame's start, a pause,
  /// write progress). For tests only, which set a fake one: deadlines are checked against the `now` passed to
  /// ``checkDeadlines(now:)`` (and to the owner's `tick(now:)`), which must come from the same clock.
  var clock: () -> UInt64 = monotonicNanos

  private var token: UInt64 = 0
  private(set) var isConnecting = false
  private(set) var isClosed = false
  private var registered = false
  private var interest: UInt32 = 0
  private var pauseReasons: PauseReasons = []
  private var wantsWrite = false
  private var readBuffer: [UInt8] = []
  private var writeBatch = WriteBatch()
  private var frameStarted: UInt64 = 0
  /// When reading last paused for the endpoint (``PauseReasons/waitingForTheEndpoint``), and how long the current
  /// frame waited for it before that.
  private var budgetPausedAt: UInt64 = 0
  private var budgetWaited: UInt64 = 0
  private var connectDeadline: UInt64?
  private var flushScheduled = false
  private var lastWriteProgress: UInt64 = 0
  /// Bytes of `readBuffer` charged to `receiveBudget` (kept by the budget).
  var charged = 0
  /// When bytes last arrived (monotonic nanoseconds).
  private(set) var lastReceived: UInt64 = 0
  /// Bytes received and written, for metrics.
  private(set) var bytesReceived = 0
  private(set) var bytesWritten = 0
  /// Write system calls made, for metrics (coalescing shows as bytes per call).
  private(set) var writeCalls = 0

  init(loop: EventLoop, fd: Int32, remote: String, maxFrameBytes: Int, frameTimeout: Duration) {
    self.loop = loop
    self.fd = fd
    self.remote = remote
    self.maxFrameBytes = maxFrameBytes
    self.frameTimeoutNanos = frameTimeout.nanoseconds
  }

  /// Registers an accepted (already connected) socket for reading.
  func start() -> Bool {
    lastReceived = clock()
    return updateInterest()
  }

  /// Registers an outbound socket whose `connect` is in progress (or finished at once).
  func startConnecting(inProgress: Bool, timeout: Duration) -> Bool {
    if inProgress {
      isConnecting = true
      connectDeadline = clock() &+ timeout.nanoseconds
      wantsWrite = true
      return updateInterest()
    }
    guard start() else { return false }
    delegate?.connectionDidConnect(self)
    return true
  }

  // MARK: Events

  func handle(events: UInt32) {
    if isConnecting {
      finishConnecting()
      return
    }
    if events & (CQ_EPOLLIN | CQ_EPOLLHUP | CQ_EPOLLERR) != 0 && pauseReasons.isEmpty {
      readAvailable()
    }
    if !isClosed && events & CQ_EPOLLOUT != 0 {
      flush()
    }
    if !isClosed && events & CQ_EPOLLERR != 0 {
      var code: Int32 = 0
      _ = cq_getsockopt_int(fd, SOL_SOCKET, SO_ERROR, &code)
      close(.ioError(operation: "socket", errno: code == 0 ? EIO : code))
    }
  }

  func loopDidShutDown() {
    close(.localShutdown, notify: true, unregister: false)
  }

  /// Checks the connect, handshake, partial-frame and write-stall deadlines; called periodically by the owner.
  func checkDeadlines(now: UInt64) {
    guard !isClosed else { return }
    if let deadline = connectDeadline, isConnecting, now >= deadline {
      close(.connectTimeout)
    } else if let deadline = handshakeDeadline, now >= deadline {
      let detail =
        readBuffer.isEmpty
        ? "no handshake within the timeout" : "incomplete handshake (\(readBuffer.count) bytes) within the timeout"
      close(.badHandshake(detail))
    } else if !readBuffer.isEmpty, pauseReasons.isDisjoint(with: PauseReasons.waitingForTheEndpoint.union(.receiver)),
      now >= frameStarted &+ frameTimeoutNanos
    {
      // The frame's time runs only while its bytes are up to the peer: not while this side stopped reading for a
      // full receiver, nor while the frame waits in line for the receive budget (behind other clients' frames) or
      // for the endpoint's replies to drain.
      close(.truncatedFrame(received: max(0, readBuffer.count - TCPFrame.prefixBytes), expected: pendingFrameLength))
    } else if !readBuffer.isEmpty, !pauseReasons.isDisjoint(with: .waitingForTheEndpoint),
      let bound = budgetWaitTimeoutNanos,
      budgetWaited &+ (now > budgetPausedAt ? now &- budgetPausedAt : 0) >= bound
    {
      // The wait for the budget is bounded on its own, so that no frame waits forever.
      close(.truncatedFrame(received: max(0, readBuffer.count - TCPFrame.prefixBytes), expected: pendingFrameLength))
    } else if let stall = writeStallTimeoutNanos, pendingWriteBytes > 0, now >= lastWriteProgress &+ stall {
      close(.slowReader(pendingBytes: pendingWriteBytes))
    }
  }

  private var pendingFrameLength: Int {
    guard readBuffer.count >= TCPFrame.prefixBytes else { return TCPFrame.prefixBytes }
    return Int(readLength(at: 0))
  }

  private func finishConnecting() {
    var code: Int32 = 0
    if cq_getsockopt_int(fd, SOL_SOCKET, SO_ERROR, &code) != 0 { code = errno }
    guard code == 0 else {
      close(.ioError(operation: "connect", errno: code))
      return
    }
    isConnecting = false
    connectDeadline = nil
    wantsWrite = false
    lastReceived = clock()
    guard updateInterest() else { return }
    delegate?.connectionDidConnect(self)
  }

  // MARK: Reading

  private func readAvailable() {
    // The loop's scratch buffer, taken for this read: frames are parsed from it where they arrived, and only a
    // partial frame left at its end is copied into the connection's own buffer (no copy of every byte read).
    var scratch = loop.takeReadScratch()
    defer { loop.returnReadScratch(&scratch) }
    var budget = 4 << 20  // bytes per wake-up, so one busy connection cannot starve the others
    while !isClosed && pauseReasons.isEmpty && budget > 0 {
      var chunk = scratch.count
      if let receiveBudget {
        let room = receiveBudget.limit - receiveBudget.used
        if room > 0 {
          // A read crosses the shared budget's limit by 64 KiB at most.
          chunk = min(chunk, max(room, 64 << 10))
        } else if readBuffer.isEmpty {
          // Over the budget, a connection between frames may read a little, so small requests still pass.
          chunk = min(chunk, 64 << 10)
        } else if receiveBudget.mayOverdraw(self) {
          // In the middle of a frame, with the budget's overdraft: read to the frame's end and no further, so that
          // it completes, frees what it holds, and the overdraft passes on with nothing held past the limit.
          chunk = min(chunk, bytesToFrameEnd)
        } else {
          // In the middle of a frame: wait in the budget's queue for room or the overdraft.
          pause(.budget)
          return
        }
      }
      // A partial frame held from the last read (most reads end inside a frame) moves to the scratch's start and
      // the read lands after it, unless it is too large: then the read is appended to it, a copy of every byte.
      let held = readBuffer.count
      let inScratch = held <= scratch.count / 2
      if inScratch && held > 0 {
        scratch.withUnsafeMutableBytes { target in
          readBuffer.withUnsafeBytes { target.copyMemory(from: $0) }
        }
      }
      let base = inScratch ? held : 0
      let count = scratch.withUnsafeMutableBytes {
        Glibc.read(fd, $0.baseAddress.map { $0 + base }, min(chunk, $0.count - base))
      }
      if count > 0 {
        let now = clock()
        bytesReceived += count
        budget -= count
        lastReceived = now
        if inScratch {
          let end = held + count
          let parsed = parseFrames(in: scratch, count: end)
          if !isClosed {
            // Kept while a frame is unfinished (as the room reserved for an announced frame must be), freed if
            // large once none is.
            readBuffer.removeAll(
              keepingCapacity: parsed < end || readBuffer.capacity <= (receiveBudget == nil ? 1 << 20 : 64 << 10))
            if parsed < end {
              // A frame begun in this read, or the one held still unfinished (its start time stands).
              if parsed > 0 || held == 0 { beginFrame(at: now) }
              scratch.withUnsafeBytes {
                readBuffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: $0[parsed..<end]))
              }
              reserveAnnouncedFrame()
            }
            recharge(frameEnded: parsed > 0)
          }
        } else {
          scratch.withUnsafeBytes { readBuffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
          parseFrames()
        }
        continue
      }
      if count == 0 {
        if readBuffer.isEmpty {
          close(.peerClosed)
        } else if handshakeDeadline != nil {
          close(.badHandshake("the connection ended inside the handshake (\(readBuffer.count) bytes)"))
        } else {
          close(
            .truncatedFrame(received: max(0, readBuffer.count - TCPFrame.prefixBytes), expected: pendingFrameLength))
        }
        return
      }
      let code = errno
      if code == EAGAIN || code == EWOULDBLOCK { return }
      if code == EINTR { continue }
      close(code == ECONNRESET ? .peerClosed : .ioError(operation: "read", errno: code))
      return
    }
  }

  /// A frame begins in the read buffer at `now`: its timeout starts, and it has not waited for the budget.
  private func beginFrame(at now: UInt64) {
    frameStarted = now
    budgetWaited = 0
  }

  private func readLength(at offset: Int) -> UInt32 { Self.readLength(readBuffer, at: offset) }

  /// The bytes still to come of the frame begun in the read buffer: to the end of its length prefix while that
  /// is incomplete, then to the end of its body (the length was checked against ``maxFrameBytes`` when the prefix
  /// was parsed; clamped here all the same). At least one, as a read of none would look like the end of stream.
  private var bytesToFrameEnd: Int {
    guard readBuffer.count >= TCPFrame.prefixBytes else { return TCPFrame.prefixBytes - readBuffer.count }
    let length = min(Int(readLength(at: 0)), maxFrameBytes)
    return max(1, TCPFrame.prefixBytes + length - readBuffer.count)
  }

  static func readLength(_ bytes: [UInt8], at offset: Int) -> UInt32 {
    UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16
      | UInt32(bytes[offset + 3]) << 24
  }

  /// Makes room at once for the whole of a large frame whose start is buffered, when the delegate asks for it.
  private func reserveAnnouncedFrame() {
    guard reservesAnnouncedFrames, readBuffer.count >= TCPFrame.prefixBytes else { return }
    readBuffer.reserveCapacity(TCPFrame.prefixBytes + Int(readLength(at: 0)))
  }

  /// Delivers the whole frames buffered in the connection's own buffer, then keeps what is left (a partial frame,
  /// or frames not yet delivered while reading is paused).
  private func parseFrames() {
    let offset = parseFrames(in: readBuffer, count: readBuffer.count)
    if offset > 0 && !isClosed {
      if offset == readBuffer.count {
        readBuffer.removeAll(keepingCapacity: readBuffer.capacity <= (receiveBudget == nil ? 1 << 20 : 64 << 10))
      } else {
        readBuffer.removeFirst(offset)
        beginFrame(at: clock())
        reserveAnnouncedFrame()
      }
    }
    recharge(frameEnded: offset > 0)
  }

  /// Delivers the whole frames of `bytes[0..<count]` to the delegate, until reading is paused or the connection
  /// closes; returns where the first frame not delivered starts.
  private func parseFrames(in bytes: [UInt8], count: Int) -> Int {
    // Loaded once per read, not per frame: a weak load is a call into the runtime, and the delegate's
    // reference count is kept out of line (it is weakly referenced), so each copy of it costs a slow retain.
    guard let delegate = self.delegate else {
      // Nobody takes frames any more (the owner let go of this connection while it closes).
      if !isClosed && pauseReasons.isEmpty && count >= TCPFrame.prefixBytes { close(.localShutdown) }
      return 0
    }
    var frames = FrameCursor(bytes: bytes, end: count)
    if !isClosed && pauseReasons.isEmpty {
      switch delegate.connection(self, didReceive: &frames) {
      case .proceed:
        if let failure = frames.failure, !isClosed {
          close(failure)
          return frames.offset
        }
      case .pause:
        pause(.receiver)
        if !isClosed { delegate.connectionDidParse(self) }
        return frames.offset
      case .close(let reason):
        close(reason)
        return frames.offset
      }
    }
    if !isClosed { delegate.connectionDidParse(self) }
    return frames.offset
  }

  /// Charges the bytes held to the shared budget; `frameEnded` says that a frame was completed (delivered) since
  /// the last charge.
  private func recharge(frameEnded: Bool) {
    guard let receiveBudget, !isClosed else { return }
    receiveBudget.charge(self, bytes: readBuffer.count, frameEnded: frameEnded)
  }

  /// Reads whatever is waiting on the socket now (unless reading is paused): used before concluding that the
  /// other side has gone quiet, since this loop may itself have been too busy to look.
  func readPending() {
    guard !isClosed, !isConnecting, pauseReasons.isEmpty else { return }
    readAvailable()
  }

  /// Stops reading for `reason` until ``resume(_:)`` lifts it.
  func pause(_ reason: PauseReasons) {
    guard !isClosed, !pauseReasons.contains(reason) else { return }
    let wasWaiting = !pauseReasons.isDisjoint(with: .waitingForTheEndpoint)
    pauseReasons.insert(reason)
    if !wasWaiting && PauseReasons.waitingForTheEndpoint.contains(reason) { budgetPausedAt = clock() }
    _ = updateInterest()
  }

  /// Lifts `reason`; when nothing else holds reading, frames already buffered are delivered first, then
  /// reading resumes.
  func resume(_ reason: PauseReasons) {
    guard !isClosed, pauseReasons.contains(reason) else { return }
    pauseReasons.remove(reason)
    if PauseReasons.waitingForTheEndpoint.contains(reason) && pauseReasons.isDisjoint(with: .waitingForTheEndpoint) {
      // The wait for the endpoint is not the peer's slowness: the frame's timeout resumes where it stopped.
      let now = clock()
      let waited = now > budgetPausedAt ? now &- budgetPausedAt : 0
      frameStarted &+= waited
      budgetWaited &+= waited
    }
    guard pauseReasons.isEmpty else { return }
    if reason == .receiver && !readBuffer.isEmpty { frameStarted = clock() }
    parseFrames()
    guard !isClosed, pauseReasons.isEmpty else { return }
    guard updateInterest() else { return }
    // Data (or an end of stream) may have arrived while paused; level-triggered epoll reports it again.
  }

  /// Stops reading until ``resumeReading()`` (the receiver behind this connection is full).
  func pauseReading() { pause(.receiver) }

  /// Resumes reading after a ``FrameVerdict/pause``: frames already buffered are delivered first.
  func resumeReading() { resume(.receiver) }

  /// Whether reading is paused for back-pressure from the receiver.
  var isReadingPaused: Bool { pauseReasons.contains(.receiver) }

  /// Whether reading is paused for `reason` (among others, perhaps).
  func isReadingPaused(for reason: PauseReasons) -> Bool { pauseReasons.contains(reason) }

  /// Whether reading is paused for any reason.
  var isPaused: Bool { !pauseReasons.isEmpty }

  // MARK: Writing

  /// Bytes queued but not yet written.
  var pendingWriteBytes: Int { writeBatch.count }

  /// Appends one encoded frame (length prefix included) to the write batch; call ``flush()`` after.
  func enqueue(_ frame: [UInt8]) {
    guard !isClosed else { return }
    if writeBatch.isEmpty { lastWriteProgress = clock() }
    writeBatch.append(frame: frame)
  }

  /// Appends frames with a closure that adds them to the batch directly (used to take queued frames).
  func enqueue(with fill: (inout WriteBatch) -> Void) {
    guard !isClosed else { return }
    if writeBatch.isEmpty { lastWriteProgress = clock() }
    fill(&writeBatch)
  }

  /// Flushes once the current batch of events is handled, so frames queued by several events go out in one
  /// system call.
  func flushSoon() {
    guard !flushScheduled, !isClosed else { return }
    flushScheduled = true
    loop.afterCurrentEvents { [self] in
      flushScheduled = false
      flush()
    }
  }

  /// Writes as much as the socket takes (reporting it to ``didWrite``); asks the delegate for more whenever the
  /// buffer empties.
  func flush() {
    guard !isClosed, !isConnecting else { return }
    while true {
      var wrote = false
      while !writeBatch.isEmpty {
        let written = writeBatch.write(to: fd)
        writeCalls += 1
        if written > 0 {
          bytesWritten += written
          lastWriteProgress = clock()
          wrote = true
          continue
        }
        let code = errno
        if written < 0 && (code == EAGAIN || code == EWOULDBLOCK) {
          if wrote, let didWrite { didWrite(writeBatch.count) }
          if !wantsWrite {
            wantsWrite = true
            _ = updateInterest()
          }
          return
        }
        if written < 0 && code == EINTR { continue }
        close(code == EPIPE || code == ECONNRESET ? .peerClosed : .ioError(operation: "send", errno: code))
        return
      }
      if wrote, let didWrite { didWrite(writeBatch.count) }
      guard let delegate else { break }
      delegate.connectionDidDrain(self)
      if isClosed || writeBatch.isEmpty { break }
    }
    if wantsWrite && !isClosed {
      wantsWrite = false
      _ = updateInterest()
    }
  }

  /// The connection's state in one line, for a failure report (loop thread).
  var stateDescription: String {
    if isClosed { return "closed" }
    var reasons: [String] = []
    if pauseReasons.contains(.receiver) { reasons.append("receiver") }
    if pauseReasons.contains(.budget) { reasons.append("budget") }
    if pauseReasons.contains(.replies) { reasons.append("replies") }
    if pauseReasons.contains(.sharedReplies) { reasons.append("shared-replies") }
    var events: [String] = []
    if interest & CQ_EPOLLIN != 0 { events.append("in") }
    if interest & CQ_EPOLLOUT != 0 { events.append("out") }
    let silentMilliseconds = (clock() &- lastReceived) / 1_000_000
    return "paused=[\(reasons.joined(separator: ","))] registered=\(registered) "
      + "interest=[\(events.joined(separator: ","))] connecting=\(isConnecting) read-buffer=\(readBuffer.count)B "
      + "pending-write=\(pendingWriteBytes)B wants-write=\(wantsWrite) flush-scheduled=\(flushScheduled) "
      + "received=\(bytesReceived)B written=\(bytesWritten)B writes=\(writeCalls) "
      + "last-received-ms-ago=\(silentMilliseconds)"
  }

  // MARK: Registration and close

  @discardableResult
  private func updateInterest() -> Bool {
    guard !isClosed else { return false }
    var wanted: UInt32 = 0
    if pauseReasons.isEmpty && !isConnecting { wanted |= CQ_EPOLLIN }
    if wantsWrite { wanted |= CQ_EPOLLOUT }
    if wanted == 0 {
      // Unregister entirely: a closed peer reports EPOLLHUP even with no interest, which would spin.
      if registered {
        loop.unregister(fd, token: token, keepHandler: true)
        registered = false
      }
      interest = 0
      return true
    }
    if !registered {
      if token == 0 {
        guard let assigned = loop.register(fd, self, events: wanted) else {
          close(.ioError(operation: "epoll_ctl", errno: errno))
          return false
        }
        token = assigned
      } else if !loop.reregister(fd, token: token, events: wanted) {
        close(.ioError(operation: "epoll_ctl", errno: errno))
        return false
      }
      registered = true
      interest = wanted
      return true
    }
    if wanted != interest {
      guard loop.modify(fd, token: token, events: wanted) else {
        close(.ioError(operation: "epoll_ctl", errno: errno))
        return false
      }
      interest = wanted
    }
    return true
  }

  /// Writes what is buffered without waiting, then closes (used to send a refusal before hanging up).
  func flushAndClose(_ reason: TCPCloseReason) {
    guard !isClosed else { return }
    while !writeBatch.isEmpty {
      if writeBatch.write(to: fd) <= 0 { break }
    }
    _ = Glibc.shutdown(fd, Int32(SHUT_WR))
    close(reason)
  }

  /// Closes the socket and tells the delegate once.
  func close(_ reason: TCPCloseReason) {
    close(reason, notify: true, unregister: true)
  }

  private func close(_ reason: TCPCloseReason, notify: Bool, unregister: Bool) {
    guard !isClosed else { return }
    isClosed = true
    if token != 0 {
      if unregister && registered {
        loop.unregister(fd, token: token)
      } else {
        loop.forget(token: token)
      }
    }
    registered = false
    didWrite = nil
    if let willClose {
      self.willClose = nil
      willClose()
    }
    Glibc.close(fd)
    receiveBudget?.release(self)
    readBuffer = []
    writeBatch = WriteBatch()
    if notify { delegate?.connection(self, didCloseWith: reason) }
  }
}

/// Creates a tuned non-blocking socket and starts connecting it to `address`.
/// Returns the descriptor and whether the connect is still in progress.
func startConnect(to address: TCPAddress, options: TCPTransportOptions) -> Result<(Int32, Bool), TCPCloseReason> {
  let family = cq_address_family(address.host)
  let fd = cq_tcp_socket(family)
  guard fd >= 0 else { return .failure(.ioError(operation: "socket", errno: errno)) }
  tune(fd, options: options)
  let result = cq_connect(fd, address.host, Int32(address.port))
  if result == 0 { return .success((fd, false)) }
  let code = errno
  if code == EINPROGRESS { return .success((fd, true)) }
  Glibc.close(fd)
  return .failure(.ioError(operation: "connect", errno: code))
}

/// The remote address of a connected socket, as text.
func peerName(_ fd: Int32) -> String {
  var buffer = [CChar](repeating: 0, count: 64)
  guard cq_peer_name(fd, &buffer, 64) == 0 else { return "?" }
  return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Sets `TCP_NODELAY`, keep-alive and `TCP_USER_TIMEOUT` on a connected or connecting socket.
func tune(_ fd: Int32, options: TCPTransportOptions) {
  _ = cq_tune_tcp(
    fd, Int32(options.keepaliveIdle.nanoseconds / 1_000_000_000),
    Int32(options.keepaliveInterval.nanoseconds / 1_000_000_000), Int32(options.keepaliveProbes))
  if options.tcpUserTimeout > .zero {
    _ = cq_set_user_timeout(fd, Int32(clamping: options.tcpUserTimeout.nanoseconds / 1_000_000))
  }
}

/// The host part of a "host:port" or "[v6]:port" address (the key of per-address limits).
func hostPart(_ remote: String) -> String {
  if remote.hasPrefix("["), let close = remote.firstIndex(of: "]") {
    return String(remote[remote.index(after: remote.startIndex)..<close])
  }
  guard let colon = remote.lastIndex(of: ":") else { return remote }
  return String(remote[..<colon])
}

extension Connection: ReceiveBudgetMember {
  func budgetAdmits() { resume(.budget) }
}
