import CQuorumSystem
import Glibc

/// The bytes a connection has yet to write, in order.
///
/// Small frames are copied into shared buffers, so that many of them go out in one system call. The body of a
/// frame of at least ``ownPieceBytes`` stays in the frame's own array and is written from there by a gathering
/// write (`sendmsg` with an I/O vector): a large frame is not copied on its way to the socket.
struct WriteBatch {
  /// The size from which a frame is written from its own array rather than copied.
  static let ownPieceBytes = 4096
  /// The most buffers one write gathers.
  static let maxVectors = 64

  private struct Piece {
    var bytes: [UInt8]
    var start: Int
    /// The end of the piece's range, or `nil` for a shared buffer (which ends where its bytes end, and grows).
    var fixedEnd: Int?
    /// The batch was given the buffer (``WriteBatch/append(owned:from:)``): once written it is kept for reuse.
    var owned = false

    var end: Int { fixedEnd ?? bytes.count }
  }

  private var pieces: [Piece] = []
  /// The first piece not yet written in full.
  private var first = 0
  /// A shared buffer kept from the last batch, for the next one's small frames.
  private var spare: [UInt8] = []
  /// A buffer the batch was given and has written, emptied and kept for its giver's reuse
  /// (``takeRecycled()``).
  private var recycled: [UInt8] = []
  /// The bytes not yet written.
  private(set) var count = 0

  var isEmpty: Bool { count == 0 }

  /// Appends `frame`: its bytes are copied if it is small, kept if not.
  mutating func append(frame: [UInt8]) {
    guard frame.count < Self.ownPieceBytes else {
      append(frame, range: 0..<frame.count)
      return
    }
    openSharedBuffer()
    pieces[pieces.count - 1].bytes.append(contentsOf: frame)
    count += frame.count
  }

  /// Appends `bytes[range]`: copied if the range is small, written from `bytes` if not.
  mutating func append(_ bytes: [UInt8], range: Range<Int>) {
    if range.count >= Self.ownPieceBytes {
      pieces.append(Piece(bytes: bytes, start: range.lowerBound, fixedEnd: range.upperBound))
      count += range.count
    } else if !range.isEmpty {
      appendBytes { buffer in
        bytes.withUnsafeBytes { buffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: $0[range])) }
      }
    }
  }

  /// Appends `buffer[start...]`, taking the buffer (`buffer` is left empty): a large range is written from it,
  /// and then the buffer is kept for ``takeRecycled()``; a small one is copied and the buffer kept at once.
  mutating func append(owned buffer: inout [UInt8], from start: Int) {
    var bytes: [UInt8] = []
    swap(&bytes, &buffer)
    if bytes.count - start < Self.ownPieceBytes {
      append(bytes, range: start..<bytes.count)
      recycle(&bytes)
    } else {
      pieces.append(Piece(bytes: bytes, start: start, fixedEnd: bytes.count, owned: true))
      count += bytes.count - start
    }
  }

  /// An empty buffer with storage, from a buffer given to the batch and written, or an empty array.
  mutating func takeRecycled() -> [UInt8] {
    var buffer: [UInt8] = []
    swap(&buffer, &recycled)
    return buffer
  }

  /// Keeps `bytes`' storage for ``takeRecycled()`` if it is larger than the one kept, up to 1 MiB.
  private mutating func recycle(_ bytes: inout [UInt8]) {
    guard bytes.capacity > recycled.capacity, bytes.capacity <= 1 << 20 else { return }
    bytes.removeAll(keepingCapacity: true)
    swap(&recycled, &bytes)
  }

  /// Appends what `fill` writes at the end of a shared buffer.
  mutating func appendBytes(_ fill: (inout [UInt8]) -> Void) {
    openSharedBuffer()
    let last = pieces.count - 1
    let before = pieces[last].bytes.count
    fill(&pieces[last].bytes)
    count += pieces[last].bytes.count - before
  }

  /// Makes the last piece a shared buffer that small frames can be appended to.
  private mutating func openSharedBuffer() {
    guard pieces.count == first || pieces[pieces.count - 1].fixedEnd != nil else { return }
    var buffer: [UInt8] = []
    swap(&buffer, &spare)
    pieces.append(Piece(bytes: buffer, start: 0, fixedEnd: nil))
  }

  /// Writes as much as the non-blocking socket `fd` takes in one gathering write. Returns the bytes written, or
  /// the call's result (0 or negative) if it wrote nothing; `errno` then says why.
  mutating func write(to fd: Int32) -> Int {
    let end = min(pieces.count, first + Self.maxVectors)
    // The I/O vector lives on the stack: no allocation per write.
    let written = withUnsafeTemporaryAllocation(of: iovec.self, capacity: max(1, end - first)) { vectors in
      gather(from: first, to: end, into: vectors, filled: 0, fd: fd)
    }
    if written > 0 { consume(written) }
    return written
  }

  /// Fills `vectors` from `filled` on with the buffers `from..<to` (each pointer valid only inside its own
  /// closure, hence the recursion: the system call is made innermost, while all of them are), then sends them.
  private func gather(
    from index: Int, to end: Int, into vectors: UnsafeMutableBufferPointer<iovec>, filled: Int, fd: Int32
  ) -> Int {
    guard index < end else { return cq_sendv(fd, vectors.baseAddress, Int32(filled)) }
    let piece = pieces[index]
    return piece.bytes.withUnsafeBytes { raw in
      var filled = filled
      if let base = raw.baseAddress, piece.end > piece.start {
        vectors[filled] = iovec(
          iov_base: UnsafeMutableRawPointer(mutating: base + piece.start), iov_len: piece.end - piece.start)
        filled += 1
      }
      return gather(from: index + 1, to: end, into: vectors, filled: filled, fd: fd)
    }
  }

  /// Drops `written` bytes from the front.
  private mutating func consume(_ written: Int) {
    var left = written
    count -= written
    while left > 0 {
      let remaining = pieces[first].end - pieces[first].start
      if left < remaining {
        pieces[first].start += left
        return
      }
      left -= remaining
      // A written frame's array is let go now, not when the batch next empties or compacts.
      if pieces[first].fixedEnd != nil {
        var bytes: [UInt8] = []
        swap(&bytes, &pieces[first].bytes)
        if pieces[first].owned { recycle(&bytes) }
      }
      first += 1
    }
    if first == pieces.count {
      removeAll()
    } else if first >= 32 {
      pieces.removeFirst(first)
      first = 0
    }
  }

  /// Drops everything; keeps one shared buffer's storage (up to 1 MiB) for the next batch.
  mutating func removeAll() {
    var kept: [UInt8] = []
    if let last = pieces.last, last.fixedEnd == nil, last.bytes.capacity <= 1 << 20 { kept = last.bytes }
    pieces.removeAll(keepingCapacity: true)
    // Cleared once the pieces let go of it, so that it keeps its storage rather than being copied.
    kept.removeAll(keepingCapacity: true)
    if kept.capacity > spare.capacity { spare = kept }
    first = 0
    count = 0
  }
}
