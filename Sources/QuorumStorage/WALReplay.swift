import QuorumCore

/// Replays write-ahead-log segments in order, rebuilding the log, the hard state and the compaction point,
/// and deciding what is a torn tail (repaired) and what is corruption (thrown).
struct WALReplay<Entry: StorableEntry>: ~Copyable {
  /// What replay learned about one segment.
  struct SegmentSummary {
    var sequence: UInt64
    var maxEntryIndex: UInt64
  }

  /// Damage at the end of the last segment, with nothing valid after it.
  struct Damage {
    /// One past the last non-zero byte of the file.
    var end: Int
    /// The damaged bytes, from the end of the last valid record to ``end``.
    var bytes: Int
    /// Why the first damaged record was rejected.
    var reason: String
  }

  /// The last segment: where its valid records end, and any damage after them.
  struct Tail {
    var sequence: UInt64
    var path: String
    var validEnd: Int
    var headerEnd: Int
    var fileSize: Int
    var damage: Damage?
  }

  let mode: LogWriteMode
  let maxRecordBytes: Int
  /// Entries in segments numbered below this were discarded by the newest snapshot (0: none).
  let discardBeforeSegment: UInt64
  let limits: WireLimits
  let logger: QuorumLogger

  var log: EntryLog<Entry>
  var hardState: [UInt8]?
  var floor: UInt64 = 0
  var report = RecoveryReport()
  var segments: [SegmentSummary] = []
  var tail: Tail?
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
    let lastNonZero = WALFormat.lastNonZeroOffset(raw)
    let discarded = sequence < discardBeforeSegment
    var summary = SegmentSummary(sequence: sequence, maxEntryIndex: 0)
    var offset = 0
    var headerEnd = 0
    var damage: Damage?
    scan: while true {
      switch WALFormat.step(raw, at: offset, lastNonZero: lastNonZero, maxRecordBytes: maxRecordBytes) {
      case .end:
        break scan
      case .bad(let reason):
        guard isLast else {
          throw .corruptRecord(file: path, offset: offset, reason: reason + " (not the last segment)")
        }
        if let next = WALFormat.nextValidRecord(
          raw, after: offset, lastNonZero: lastNonZero, maxRecordBytes: maxRecordBytes)
        {
          throw .corruptRecord(file: path, offset: offset, reason: reason + "; a valid record follows at byte \(next)")
        }
        damage = Damage(end: lastNonZero + 1, bytes: lastNonZero + 1 - offset, reason: reason)
        break scan
      case .record(let type, let payload):
        if offset == 0 {
          try checkHeader(type: type, payload: payload, bytes: bytes, sequence: sequence, path: path)
          headerEnd = payload.upperBound
        } else {
          switch WALRecordType(rawValue: type) {
          case .entry:
            let entry = try Self.decode(bytes, payload, limits: limits, path: path, offset: offset)
            let index = entry.index
            summary.maxEntryIndex = max(summary.maxEntryIndex, index)
            if !discarded {
              if log.count == 0 { firstEntryLocation = (path, offset) }
              if !log.append(entry, at: index) {
                throw .corruptRecord(
                  file: path, offset: offset, reason: "entry \(index) leaves a gap after entry \(log.end)")
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
            }
          case .segmentHeader:
            throw .corruptRecord(file: path, offset: offset, reason: "a second segment header")
          case nil:
            throw .incompatible(file: path, reason: "unknown record type \(type) at byte \(offset)")
          }
        }
        report.recordsRead += 1
        offset = payload.upperBound
      }
    }
    segments.append(summary)
    if isLast {
      tail = Tail(
        sequence: sequence, path: path, validEnd: offset, headerEnd: headerEnd, fileSize: raw.count, damage: damage)
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

  private func checkHeader(
    type: UInt8, payload: Range<Int>, bytes: [UInt8], sequence: UInt64, path: String
  ) throws(StorageError) {
    guard type == WALRecordType.segmentHeader.rawValue, payload.count == WALFormat.segmentHeaderPayloadBytes else {
      throw .corruptRecord(file: path, offset: 0, reason: "the segment does not start with a segment header")
    }
    var reader = WireReader(bytes, range: payload)
    do {
      let magic = try reader.readFixed32()
      let version = try reader.readByte()
      let modeByte = try reader.readByte()
      let found = try reader.readFixed64()
      if magic != WALFormat.segmentMagic {
        throw StorageError.corruptRecord(file: path, offset: 0, reason: "bad segment magic")
      }
      if version != WALFormat.version {
        throw StorageError.incompatible(file: path, reason: "log format version \(version)")
      }
      if modeByte != WALFormat.modeByte(mode) {
        throw StorageError.incompatible(
          file: path, reason: "written in the other log write mode (byte \(modeByte)); opened in \(mode) mode")
      }
      if found != sequence {
        throw StorageError.corruptRecord(file: path, offset: 0, reason: "header says segment \(found)")
      }
    } catch let error as StorageError {
      throw error
    } catch {
      throw .corruptRecord(file: path, offset: 0, reason: "unreadable segment header: \(error)")
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
