import Dispatch
import Glibc
import QuorumCore
import Synchronization

/// Who waits for a write: the writer's continuation, and what runs on the log's I/O queue once the write is
/// durable (before the writer resumes).
struct WALWaiter: Sendable {
  let continuation: CheckedContinuation<Void, any Error>
  let then: (@Sendable () -> Void)?

  func succeed() {
    then?()
    continuation.resume()
  }

  func fail(_ error: any Error) { continuation.resume(throwing: error) }
}

/// The requests of a write-ahead log (``FileStorage``'s and the shared log's alike), queued by any thread and
/// drained in order by one block at a time on the log's serial I/O queue. Consecutive writes are handed over
/// together, to be appended with one `pwrite` and made durable with one sync (group commit).
final class WALInbox<Write: Sendable>: Sendable {
  enum Request: Sendable {
    case write(Write, WALWaiter)
    case task(@Sendable () -> Void)
  }

  private struct State: Sendable {
    var requests: [Request] = []
    var draining = false
  }

  private let state = Mutex(State())

  /// Requests queued and not yet taken by the drain.
  var count: Int { state.withLock { $0.requests.count } }

  /// Whether a drain runs (or is due to): a request queued now is taken by it, without starting another.
  var isDraining: Bool { state.withLock { $0.draining } }

  /// Queues `request`; returns whether the caller must start a drain on the I/O queue (none is running).
  func enqueue(_ request: Request) -> Bool {
    state.withLock { state in
      state.requests.append(request)
      if state.draining { return false }
      state.draining = true
      return true
    }
  }

  /// Runs on the I/O queue until nothing is queued: tasks in order, and each run of consecutive writes handed to
  /// `appendWrites` at once.
  func drain(_ appendWrites: ([(Write, WALWaiter)]) -> Void) {
    while true {
      let requests: [Request] = state.withLock { state in
        if state.requests.isEmpty {
          state.draining = false
          return []
        }
        defer { state.requests = [] }
        return state.requests
      }
      if requests.isEmpty { return }
      var next = 0
      while next < requests.count {
        if case .task(let body) = requests[next] {
          body()
          next += 1
          continue
        }
        var batch: [(Write, WALWaiter)] = []
        while next < requests.count, case .write(let write, let waiter) = requests[next] {
          batch.append((write, waiter))
          next += 1
        }
        appendWrites(batch)
      }
    }
  }

  /// A task that runs `body` and resumes `continuation` with its result.
  static func task<T: Sendable>(
    _ body: @escaping @Sendable () throws(StorageError) -> T, resuming continuation: CheckedContinuation<T, any Error>
  ) -> Request {
    .task {
      do throws(StorageError) {
        continuation.resume(returning: try body())
      } catch {
        continuation.resume(throwing: error)
      }
    }
  }
}

/// The segment a log appends to.
struct WALActiveSegment {
  var file: PosixFile
  /// Where the next record goes.
  var offset: Int
  /// The end of the segment's header (or checkpoint): a segment holding nothing past it is never rotated away.
  var headerEnd: Int
  /// Whether appends carry sync markers (``WALRecordType/syncMarker``): a segment of format version 2 or later.
  /// A version 1 segment from an older build goes on without them until it is rotated away.
  let marksSyncs: Bool
  /// Whether appends that would end in the last bytes of a sector get a filler record
  /// (``WALFormat/needsFiller(endingAt:)``): a segment of format version 3 or later. An older build's segment
  /// goes on without them until it is rotated away.
  let padsSectors: Bool
  /// Every byte before this offset is durable: where the segment ended at its last `fdatasync`.
  private(set) var syncedEnd: Int
  /// The synced end the last sync marker recorded (or, before the first, what needs no marker).
  private var markedEnd: Int
  /// The most bytes a sync marker takes: its header and a varint of up to ten bytes.
  static let maxMarkerBytes = WALFormat.headerBytes + 10

  /// A segment to append to at `offset`, whose bytes before it are durable if `synced` (a new segment's
  /// checkpoint, synced as it was created, or a reopened segment's records, synced as it was opened): the first
  /// append then starts with a marker saying so. Otherwise (a policy that never syncs) the first marker follows
  /// the first sync.
  init(file: PosixFile, offset: Int, headerEnd: Int, version: UInt8, synced: Bool) {
    self.file = file
    self.offset = offset
    self.headerEnd = headerEnd
    marksSyncs = version >= 2
    padsSectors = version >= 3
    syncedEnd = offset
    markedEnd = synced ? 0 : offset
  }

  /// Whether the next append starts with a sync marker.
  private var marksNextAppend: Bool { marksSyncs && syncedEnd > markedEnd }

  /// Records that every byte appended so far is durable (after an `fdatasync` of ``file``).
  mutating func didSync() { syncedEnd = offset }

  /// Whether `bytes` more do not fit in a segment of `segmentBytes`, which holds more than its header.
  func needsRotation(adding bytes: Int, pendingBytes: Int, segmentBytes: Int) -> Bool {
    // A segment whose header fills more than half of it (a shared log's checkpoint, with many groups) still
    // takes half a segment of records; a group's own log has a header of a few bytes, so this is its size.
    let limit = max(segmentBytes, headerEnd + segmentBytes / 2)
    let marker = marksNextAppend ? Self.maxMarkerBytes : 0
    return offset + marker + bytes > limit && offset + pendingBytes > headerEnd
  }

  /// Appends a sync marker saying every byte before it is durable, if one is due (call it right after a sync):
  /// the last record of a clean close. Without it the last append is the only one no marker follows, and damage
  /// found in it later would be taken for a torn write and cut, though it was synced. Returns whether it wrote
  /// one, for the caller to sync.
  mutating func appendSyncMarker() throws(StorageError) -> Bool {
    guard marksNextAppend, syncedEnd == offset else { return false }
    var writer = WireWriter(reservingCapacity: Self.maxMarkerBytes + WALFormat.headerBytes)
    WALFormat.appendIndexRecord(.syncMarker, UInt64(syncedEnd), to: &writer)
    if padsSectors && WALFormat.needsFiller(endingAt: offset + writer.count) {
      writer.writeRaw(WALFormat.fillerRecord)
    }
    try file.write(writer.bytes, at: offset)
    offset += writer.count
    markedEnd = syncedEnd
    return true
  }

  /// Appends the pending chunks with one `pwrite` and empties them; a sync marker goes first when a sync moved
  /// the synced point since the last one.
  ///
  /// Recovery relies on this rule: a valid marker after damage means the damaged bytes were synced. A marker
  /// is written only when a sync came after the last marker; if that sync came before the damaged bytes were
  /// written, the append that wrote them carried a marker recording it, and no later one would.
  mutating func flush(_ pending: inout [[UInt8]], _ pendingBytes: inout Int) throws(StorageError) {
    guard !pending.isEmpty else { return }
    var bytes: [UInt8]
    if marksNextAppend {
      var writer = WireWriter(reservingCapacity: pendingBytes + 24 + WALFormat.headerBytes)
      WALFormat.appendIndexRecord(.syncMarker, UInt64(syncedEnd), to: &writer)
      for chunk in pending { writer.writeRaw(chunk) }
      bytes = writer.bytes
    } else {
      bytes = pending[0]
      if pending.count > 1 {
        bytes.reserveCapacity(pendingBytes + WALFormat.headerBytes)
        for chunk in pending.dropFirst() { bytes.append(contentsOf: chunk) }
      }
    }
    // The next append starts where this one ends: never in the last bytes of a sector.
    if padsSectors && WALFormat.needsFiller(endingAt: offset + bytes.count) {
      bytes.append(contentsOf: WALFormat.fillerRecord)
    }
    try file.write(bytes, at: offset)
    offset += bytes.count
    markedEnd = syncedEnd
    pending.removeAll(keepingCapacity: true)
    pendingBytes = 0
  }
}

/// A new segment written (and synced) under its temporary name, with the directory open for the sync that follows
/// its rename: everything a rotation needs a file descriptor for, done before anything changed on disk. Running
/// out of descriptors while preparing one is retryable; once ``commit(onDirectorySync:)`` has renamed it into
/// place, a failure is not (see there).
struct WALPreparedSegment {
  let file: PosixFile
  let temporary: String
  let path: String
  /// The directory, open for its sync after the rename (`nil` when the policy never syncs).
  let directory: PosixFile?
  let offset: Int
  let headerEnd: Int
  let spare: SpareSegment?

  /// Renames the segment into place and syncs the directory; returns it open for appending. Once the segment is
  /// in place it holds a checkpoint of the current state, whether or not the directory sync after it succeeds:
  /// were writes to go on in the old segment, a recovery would replay this older checkpoint last. So a failure
  /// here is never retryable (the directory is open already: no descriptor can run out) and the caller poisons
  /// the log.
  func commit(onDirectorySync: () -> Void) throws(StorageError) -> WALActiveSegment {
    defer { directory?.close() }
    do throws(StorageError) {
      try FileSystem.rename(temporary, path)
      if let directory {
        try directory.fullSync()
        onDirectorySync()
      }
    } catch {
      file.close()
      throw error
    }
    spare?.prepare()
    return WALActiveSegment(
      file: file, offset: offset, headerEnd: headerEnd, version: WALFormat.version, synced: directory != nil)
  }

  /// Closes the files and removes the temporary segment: the rotation is not carried out.
  func abandon() {
    directory?.close()
    file.close()
    try? FileSystem.remove(temporary)
    spare?.prepare()
  }
}

extension WALFiles {
  /// Prepares segment file `path` (see ``WALPreparedSegment``): a temporary file (the spare segment when one is
  /// ready, otherwise a new one reserved as `preallocation` says), `checkpoint` written at its start and synced
  /// (`onDataSync` counts it), and (with `sync`) the directory opened for the sync after the rename. The first
  /// `headerEnd` bytes of the checkpoint count as the segment's header. `faults` fails the opens, for tests. On
  /// failure nothing is left open and the temporary file is removed: nothing changed on disk, so running out of
  /// descriptors is retryable.
  static func prepareSegment(
    _ path: String, checkpoint: [UInt8], headerEnd: Int, spare: SpareSegment?, preallocation: WALPreallocation,
    segmentBytes: Int, faults: OpenFaults, sync: Bool, onDataSync: () -> Void
  ) throws(StorageError) -> WALPreparedSegment {
    let temporary = path + ".tmp"
    let file: PosixFile
    let fromSpare = spare?.take(to: temporary) ?? false
    do throws(StorageError) {
      file = try PosixFile.open(temporary, flags: fromSpare ? O_RDWR : O_RDWR | O_CREAT | O_TRUNC, faults: faults)
    } catch {
      // A spare taken is still all zeros: it goes back, for the next try.
      if fromSpare, let spare {
        try? FileSystem.rename(temporary, spare.readyPath)
      } else {
        try? FileSystem.remove(temporary)
      }
      throw error
    }
    // The first append starts where the checkpoint ends: never in the last bytes of a sector.
    let padded =
      WALFormat.needsFiller(endingAt: checkpoint.count) ? checkpoint + WALFormat.fillerRecord : checkpoint
    // A header that is the whole checkpoint (a shared log's) takes in its filler: a segment that holds nothing
    // else holds no more than its header (see WALActiveSegment.needsRotation).
    let headerEnd = headerEnd >= checkpoint.count ? padded.count : headerEnd
    do throws(StorageError) {
      if !fromSpare {
        switch preallocation {
        case .zeroFilled: try file.writeZeros(0..<segmentBytes)
        case .allocated: try file.allocate(segmentBytes)
        case .none: break
        }
      }
      try file.write(padded, at: 0)
      if sync {
        try file.dataSync()
        onDataSync()
      }
      // Opened before the rename: a directory that cannot be opened for want of a descriptor fails the rotation
      // while nothing has changed.
      let parent = String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])
      let directory = sync ? try PosixFile.open(parent, flags: O_RDONLY | O_DIRECTORY, faults: faults) : nil
      return WALPreparedSegment(
        file: file, temporary: temporary, path: path, directory: directory, offset: padded.count,
        headerEnd: headerEnd, spare: spare)
    } catch {
      file.close()
      try? FileSystem.remove(temporary)
      if fromSpare { spare?.prepare() }
      throw error
    }
  }

  /// Creates segment file `path` atomically: ``prepareSegment(_:checkpoint:headerEnd:spare:preallocation:segmentBytes:faults:sync:onDataSync:)``,
  /// then ``WALPreparedSegment/commit(onDirectorySync:)``. Returns it open for appending after the checkpoint.
  static func createSegment(
    _ path: String, checkpoint: [UInt8], headerEnd: Int, spare: SpareSegment?, preallocation: WALPreallocation,
    segmentBytes: Int, faults: OpenFaults, sync: Bool, onDataSync: () -> Void, onDirectorySync: () -> Void
  ) throws(StorageError) -> WALActiveSegment {
    let prepared = try prepareSegment(
      path, checkpoint: checkpoint, headerEnd: headerEnd, spare: spare, preallocation: preallocation,
      segmentBytes: segmentBytes, faults: faults, sync: sync, onDataSync: onDataSync)
    return try prepared.commit(onDirectorySync: onDirectorySync)
  }

  /// A timer on `queue` that calls `handler` every `interval` (at least 1 ms): the batch policy's sync.
  static func batchTimer(
    every interval: Duration, on queue: DispatchQueue, _ handler: @escaping @Sendable () -> Void
  ) -> any DispatchSourceTimer {
    let (seconds, attoseconds) = interval.components
    let nanoseconds = max(1_000_000, Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000))
    let source = DispatchSource.makeTimerSource(queue: queue)
    source.schedule(deadline: .now() + .nanoseconds(nanoseconds), repeating: .nanoseconds(nanoseconds))
    source.setEventHandler(handler: handler)
    source.resume()
    return source
  }
}
