import QuorumCore

/// Replays write-ahead-log segments in order, rebuilding the log, the hard state and the compaction point,
/// and deciding what is a torn tail (repaired) and what is corruption (thrown).
struct WALReplay<Entry: StorableEntry>: ~Copyable {
  /// What replay learned about one segment.
  struct SegmentSummary {
    var sequence: UInt64
    var maxEntryIndex: UInt64
  }

  typealias Damage = WALDamage

  typealias Tail = WALTail

  let mode: LogWriteMode
  let maxRecordBytes: Int
  /// Entries in segments numbered below this were discarded by the newest snapshot (0: none).
  let discardBeforeSegment: UInt64
  let limits: WireLimits
  let logger: QuorumLogger

  var log: EntryLog<Entry>
  var hardState: [UInt8]?
  var floor: UInt64 = 0
  /// Reset records applied (not in discarded segments): each drops every entry read before it.
  var resets = 0
  var report = RecoveryReport()
  var segments: [SegmentSummary] = []
  var tail: Tail?
  /// The lowest position a truncating entry replayed by the last ``replayChunk(_:sequence:path:fileOffset:)``
  /// call wrote at (the entries read before from there on are superseded), or `nil`.
  var supersededFrom: UInt64?
  /// Where the first entry now held was read, for error messages.
  var firstEntryLocation: (file: String, offset: Int)?

  init(mode: LogWriteMode, maxRecordBytes: Int, discardBeforeSegment: UInt64, logger: QuorumLogger) {
    self.mode = mode
    self.maxRecordBytes = maxRecordBytes
    self.discardBeforeSegment = discardBeforeSegment
    self.limits = WireLimits(maxBytesLength: maxRecordBytes)
    self.logger = logger
    log = EntryLog(mode: mode)
  }

  /// Replays one segment file, whose contents are the first `length` bytes of `bytes`.
  mutating func replay(
    segment sequence: UInt64, path: String, bytes: [UInt8], length: Int, isLast: Bool
  ) throws(StorageError) {
    report.segmentsRead += 1
    let result = bytes.withUnsafeBytes { raw in
      Result { () throws(StorageError) in
        try replay(
          UnsafeRawBufferPointer(rebasing: raw[0..<length]), bytes: bytes, sequence: sequence, path: path,
          isLast: isLast)
      }
    }
    try result.get()
  }

  private mutating func replay(
    _ raw: UnsafeRawBufferPointer, bytes: [UInt8], sequence: UInt64, path: String, isLast: Bool
  ) throws(StorageError) {
    let discarded = sequence < discardBeforeSegment
    var summary = SegmentSummary(sequence: sequence, maxEntryIndex: 0)
    var cursor = WALCursor(raw, path: path, isLast: isLast, maxRecordBytes: maxRecordBytes)
    var headerEnd = 0
    var version: UInt8 = 0
    while let (type, payload, offset) = try cursor.next() {
      if offset == 0 {
        version = try WALFormat.checkSegmentHeader(
          type: type, payload: payload, bytes: bytes, sequence: sequence, path: path, shared: false,
          mode: mode)
        headerEnd = payload.upperBound
        cursor.marksSyncs = version >= 2
      } else {
        try apply(
          type: type, payload: payload, raw: raw, bytes: bytes, path: path, offset: offset, discarded: discarded,
          maxEntryIndex: &summary.maxEntryIndex)
      }
      report.recordsRead += 1
    }
    // The last segment's missing header is judged by WALFiles.repair, which knows the policy.
    if headerEnd == 0 && !isLast { throw WALFiles.missingHeader(path, lastSegment: false) }
    segments.append(summary)
    if isLast {
      tail = Tail(
        sequence: sequence, path: path, validEnd: cursor.offset, headerEnd: headerEnd, fileSize: raw.count,
        damage: cursor.damage, version: version)
    }
  }

  /// Replays one record that is not a segment header. `offset` is where it starts in `path`, for errors.
  private mutating func apply(
    type: UInt8, payload: Range<Int>, raw: UnsafeRawBufferPointer, bytes: [UInt8], path: String, offset: Int,
    discarded: Bool, inGroupRecord: Bool = false, maxEntryIndex: inout UInt64
  ) throws(StorageError) {
    switch WALRecordType(rawValue: type) {
    case .entry:
      let entry = try Self.decode(bytes, payload, limits: limits, path: path, offset: offset)
      let index = entry.index
      if !discarded && mode == .truncateSuffix && log.count > 0 && index > 0 && index <= log.end {
        // A truncating write: the entries read before from `index` on are superseded and keep no segment.
        supersededFrom = min(supersededFrom ?? index, index)
        maxEntryIndex = min(maxEntryIndex, index - 1)
        for slot in segments.indices where segments[slot].maxEntryIndex >= index {
          segments[slot].maxEntryIndex = index - 1
        }
      }
      maxEntryIndex = max(maxEntryIndex, index)
      if !discarded {
        if log.count == 0 { firstEntryLocation = (path, offset) }
        if !log.append(entry, at: index) {
          throw .corruptRecord(file: path, offset: offset, reason: "entry \(index) leaves a gap after entry \(log.end)")
        }
      }
    case .hardState:
      hardState = Array(raw[payload])
    case .floor:
      floor = max(floor, try index(payload, bytes: bytes, path: path, offset: offset))
    case .reset:
      let point = try index(payload, bytes: bytes, path: path, offset: offset)
      if !discarded {
        log.reset(to: point)
        floor = max(floor, point)
        resets += 1
      }
    case .segmentHeader:
      throw .corruptRecord(file: path, offset: offset, reason: "a second segment header")
    case .groupChunk:
      throw .corruptRecord(file: path, offset: offset, reason: "a shared log's group record inside a group's records")
    case .forget:
      // The scan of a shared log takes a group record holding a forget record alone; anywhere else it is damage.
      throw .corruptRecord(file: path, offset: offset, reason: "a forget record among a group's records")
    case .syncMarker:
      // Read by the cursor when it meets damage; a shared log writes them between group records, never in one.
      if inGroupRecord {
        throw .corruptRecord(file: path, offset: offset, reason: "a sync marker inside a group record")
      }
    case .filler:
      // Nothing to replay; a shared log writes them between group records, never in one.
      if inGroupRecord {
        throw .corruptRecord(file: path, offset: offset, reason: "a filler record inside a group record")
      }
    case nil:
      throw .incompatible(file: path, reason: "unknown record type \(type) at byte \(offset)")
    }
  }

  /// Replays the records of one group carried by a shared log's group record (see ``SharedWriteAheadLog``):
  /// `bytes` are the records, which start at byte `fileOffset` of segment `sequence` (file `path`). Their
  /// container's checksum was verified, so any damage among them is corruption. Returns the highest live entry
  /// position among them (or 0), and the lowest position a truncating entry among them wrote at: entries read
  /// before from there on are superseded.
  mutating func replayChunk(
    _ bytes: [UInt8], sequence: UInt64, path: String, fileOffset: Int
  ) throws(StorageError) -> (highest: UInt64, supersededFrom: UInt64?) {
    let discarded = sequence < discardBeforeSegment
    var maxEntryIndex: UInt64 = 0
    supersededFrom = nil
    let result = bytes.withUnsafeBytes { raw in
      Result { () throws(StorageError) in
        var cursor = WALCursor(raw, path: path, isLast: false, maxRecordBytes: maxRecordBytes, baseOffset: fileOffset)
        while let (type, payload, offset) = try cursor.next() {
          try apply(
            type: type, payload: payload, raw: raw, bytes: bytes, path: path, offset: offset, discarded: discarded,
            inGroupRecord: true, maxEntryIndex: &maxEntryIndex)
          report.recordsRead += 1
        }
      }
    }
    try result.get()
    return (maxEntryIndex, supersededFrom)
  }

  /// Checks what replay rebuilt against the snapshot recovery chose and drops the entries it covers: the
  /// rules of ``FileStorage``'s recovery that come after the segments are read. `rejected` are the newer
  /// snapshots found damaged ("path: reason"), newest first.
  mutating func settle(
    snapshotIndex: UInt64, loaded: StoredSnapshot?, rejected: [(path: String, reason: String)],
    snapshotDirectory: String, logDirectory: String
  ) throws(StorageError) {
    // Entries are only ever discarded once a snapshot covers them, so the compaction point never passes
    // the snapshot. If it does, the snapshot that covered them is damaged or missing; falling back to an
    // older one is only sound when the log still holds everything after it.
    let base = max(snapshotIndex, floor)
    if floor > snapshotIndex {
      let newest = rejected.first
      throw .corruptSnapshot(
        file: newest?.path ?? snapshotDirectory,
        reason: (newest.map { "\($0.reason); " } ?? "snapshot missing; ")
          + "the log was compacted or reset through \(floor) but the newest valid snapshot is "
          + (loaded.map { "at \($0.index)" } ?? "none"))
    }
    log.removeThrough(base)
    if mode == .truncateSuffix, let first = log.firstPosition, first != base + 1 {
      if let newest = rejected.first {
        throw .corruptSnapshot(
          file: newest.path,
          reason: "\(newest.reason); the log resumes at \(first), so the entries after \(base) are lost")
      }
      let (file, offset) = firstEntryLocation ?? (logDirectory, 0)
      throw .corruptRecord(
        file: file, offset: offset,
        reason: "the log starts at entry \(first) but the snapshot/compaction point is \(base)")
    }
  }

  @inline(__always)
  private static func decode(
    _ bytes: [UInt8], _ payload: Range<Int>, limits: WireLimits, path: String, offset: Int
  ) throws(StorageError) -> Entry {
    var reader = WireReader(bytes, range: payload, limits: limits)
    do throws(WireError) {
      let entry = try Entry(from: &reader)
      try reader.expectEnd()
      return entry
    } catch {
      throw .corruptRecord(file: path, offset: offset, reason: "entry does not decode: \(error)")
    }
  }

  private func index(_ payload: Range<Int>, bytes: [UInt8], path: String, offset: Int) throws(StorageError) -> UInt64 {
    var reader = WireReader(bytes, range: payload)
    do throws(WireError) {
      let value = try reader.readVarint()
      try reader.expectEnd()
      return value
    } catch {
      throw .corruptRecord(file: path, offset: offset, reason: "bad position record: \(error)")
    }
  }
}

/// Walks the records of a segment (or of a shared log's group record) in order, telling a torn tail from
/// corruption. Damage in the last segment is a torn tail (``damage``), cut with everything after it, when
///
/// - no valid record follows it: what a crash leaves mid-append; or
/// - (segments with sync markers, ``marksSyncs``) valid records follow, but the damage shows a lost sector
///   (``WALFormat/showsALostSector(_:in:)``) and no sync marker follows it: what a crash leaves when an append
///   of several pages reached the disk out of order. A torn write only damages bytes not yet synced; a marker
///   after the damage says the bytes were synced (see ``WALActiveSegment/flush(_:_:)``), so the damage is then
///   corruption. Without one, it may be a torn write, and is taken for one (``FileStorage`` says what that
///   cannot tell apart).
///
/// Any other damage throws ``StorageError/corruptRecord(file:offset:reason:)``. A valid record larger than
/// `maxRecordBytes` throws ``StorageError/incompatible(file:reason:)``.
struct WALCursor {
  let raw: UnsafeRawBufferPointer
  let path: String
  let isLast: Bool
  let maxRecordBytes: Int
  let lastNonZero: Int
  /// Added to offsets in `raw` to give offsets in the file, for errors.
  let baseOffset: Int
  /// The only record type that, found valid after damage, makes the damage corruption rather than a torn tail
  /// (`nil`: any type). A shared log's records are group records, each holding whole records of a group: a torn
  /// group record's own records inside it are not records written after it.
  let laterRecordType: UInt8?
  /// Whether the segment carries sync markers (format version 2 or later), read from its header once the
  /// walk has passed it.
  var marksSyncs = false
  /// Where the next record starts in `raw`: after the walk, the end of the last valid record.
  private(set) var offset = 0
  /// The torn tail found, if the walk stopped at one.
  private(set) var damage: WALDamage?

  init(
    _ raw: UnsafeRawBufferPointer, path: String, isLast: Bool, maxRecordBytes: Int, baseOffset: Int = 0,
    laterRecordType: UInt8? = nil
  ) {
    self.raw = raw
    self.path = path
    self.isLast = isLast
    self.maxRecordBytes = maxRecordBytes
    self.baseOffset = baseOffset
    self.laterRecordType = laterRecordType
    lastNonZero = WALFormat.lastNonZeroOffset(raw)
  }

  /// The next valid record: its type, its payload's range in `raw` and its file offset. `nil` at the clean
  /// end or at a torn tail (then ``damage`` says where).
  mutating func next() throws(StorageError) -> (type: UInt8, payload: Range<Int>, offset: Int)? {
    switch WALFormat.step(raw, at: offset, lastNonZero: lastNonZero) {
    case .end:
      return nil
    case .bad(let reason):
      guard isLast else {
        throw .corruptRecord(
          file: path, offset: baseOffset + offset,
          reason: reason + (baseOffset > 0 ? " (inside a group record)" : " (not the last segment)"))
      }
      var work = 0
      let (file, fileOffset) = (path, baseOffset + offset)
      let fail = { (clause: String) -> StorageError in
        .corruptRecord(file: file, offset: fileOffset, reason: reason + clause)
      }
      switch WALFormat.nextValidRecord(raw, after: offset, lastNonZero: lastNonZero, type: laterRecordType, work: &work)
      {
      case .undecided:
        throw fail("; whether a valid record follows could not be settled within \(work) bytes of checksums")
      case .none:
        // A shared log's search looked for group records only: a sync marker after the damage still says the
        // damaged bytes had been synced.
        if marksSyncs && laterRecordType != nil, let notTorn = syncMarkerAfterDamage(work: &work) {
          throw fail(notTorn)
        }
        damage = WALDamage(
          end: lastNonZero + 1, bytes: lastNonZero + 1 - offset, reason: reason, scannedBytes: work)
        return nil
      case .at(let next):
        guard marksSyncs else { throw fail("; a valid record follows at byte \(next)") }
        // The lost sector lies before the first valid record after it. When the damaged record's header
        // survived (its bytes are there, since a record follows), the valid record found may lie inside the
        // record's span (an entry's bytes that form a valid record), before the lost page: the first valid
        // record after that span bounds it then.
        var lostSectorEnd = next
        let declaredEnd =
          offset + WALFormat.headerBytes
          + Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self)))
        if declaredEnd > next {
          if declaredEnd > lastNonZero {
            lostSectorEnd = lastNonZero + 1
          } else {
            switch WALFormat.nextValidRecord(
              raw, after: declaredEnd - 1, lastNonZero: lastNonZero, type: laterRecordType, work: &work)
            {
            case .at(let later): lostSectorEnd = later
            case .none: lostSectorEnd = lastNonZero + 1
            case .undecided:
              throw fail("; whether a valid record follows could not be settled within \(work) bytes of checksums")
            }
          }
        }
        guard WALFormat.showsALostSector(raw, in: offset..<lostSectorEnd) else {
          throw fail(
            "; a valid record follows at byte \(next), and the damage shows no sector of zeros, as a page a torn "
              + "write lost would")
        }
        if let notTorn = syncMarkerAfterDamage(work: &work) {
          throw fail("; a valid record follows at byte \(next)" + notTorn)
        }
        damage = WALDamage(
          end: lastNonZero + 1, bytes: lastNonZero + 1 - offset,
          reason: reason + "; a torn write: the valid records from byte \(next) on were never synced",
          scannedBytes: work)
        return nil
      }
    case .record(let type, let payload):
      // A valid record over the limit was written under a larger one (the limit was lowered between runs): it
      // may hold an acknowledged entry, so it is neither damage to cut nor a record to believe silently.
      if payload.count > maxRecordBytes {
        throw .incompatible(
          file: path,
          reason:
            "the record at byte \(baseOffset + offset) holds \(payload.count) bytes, over maxRecordBytes "
            + "(\(maxRecordBytes)); it was written under a larger limit: reopen with maxRecordBytes of at least "
            + "\(payload.count)")
      }
      let start = offset
      offset = payload.upperBound
      return (type, payload, baseOffset + start)
    }
  }

  /// Why the damage at ``offset`` is not a torn write, as a clause for the error, if a valid sync marker follows
  /// it (the damaged bytes had been synced: see ``WALActiveSegment/flush(_:_:)``); `nil` if none does.
  private func syncMarkerAfterDamage(work: inout Int) -> String? {
    var searchFrom = offset
    while true {
      let found = WALFormat.nextValidRecord(
        raw, after: searchFrom, lastNonZero: lastNonZero, type: WALRecordType.syncMarker.rawValue, work: &work)
      switch found {
      case .none:
        return nil
      case .undecided:
        return ", and whether a sync marker follows could not be settled within \(work) bytes of checksums"
      case .at(let at):
        // A marker records its own offset: bytes inside an entry that happen to form a valid marker record (a
        // copy of a log segment stored as a value) do not.
        if WALFormat.syncMarkerValue(raw, at: at) == UInt64(baseOffset + at) {
          return ", and a sync marker at byte \(baseOffset + at) says the damaged bytes had been synced"
        }
        searchFrom = at
      }
    }
  }
}

/// Damage at the end of the last segment that recovery cuts: what a crash mid-write leaves.
struct WALDamage {
  /// One past the last non-zero byte of the file.
  var end: Int
  /// The damaged bytes, from the end of the last valid record to ``end``.
  var bytes: Int
  /// Why the first damaged record was rejected.
  var reason: String
  /// Bytes checksummed to make sure no valid record follows the damage.
  var scannedBytes = 0
}

/// The last segment of a log: where its valid records end, and any damage after them.
struct WALTail {
  var sequence: UInt64
  var path: String
  var validEnd: Int
  var headerEnd: Int
  var fileSize: Int
  var damage: WALDamage?
  /// The segment's format version (0 if its header did not survive).
  var version: UInt8
}
