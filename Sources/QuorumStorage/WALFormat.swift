import QuorumCore

/// The kinds of write-ahead-log record. The raw value is the record's type byte; 0 is never valid, so a
/// zero-filled (preallocated) region never parses as a record.
enum WALRecordType: UInt8 {
  /// First record of every segment: magic, format version, log write mode, segment sequence number.
  case segmentHeader = 1
  /// One log entry: its `WireCodable` encoding.
  case entry = 2
  /// The protocol's hard state, opaque bytes. The last one replayed wins.
  case hardState = 3
  /// Compaction point (varint): entries at or below it are gone.
  case floor = 4
  /// Reset point (varint): every entry held so far is dropped; the log continues after this position.
  case reset = 5
  /// Only in a shared log (``SharedWriteAheadLog``): one group's records, as a group's own log holds them
  /// (varint group number, then the records).
  case groupChunk = 6
  /// Only in a shared log, alone in a group record (empty payload): every earlier record of the group is void,
  /// as if the group had never written (``SharedWriteAheadLog/forget(group:)``).
  case forget = 7
  /// Sync marker (format version 2; varint file offset, its own): every byte of the segment before it was made
  /// durable (`fdatasync`) before it was written. It starts the first append after each sync, and the first
  /// after the segment was created or reopened synced; replay skips it. Recovery reads it to tell a torn write,
  /// whose surviving pages may follow the damage, from damage to bytes already synced (``WALCursor``).
  case syncMarker = 8
  /// Filler (format version 3; empty payload, so always the same 9 bytes): ends an append that would otherwise
  /// end in the last ``WALFormat/headerBytes`` − 1 bytes of a sector (``WALFormat/needsFiller(endingAt:)``);
  /// replay skips it. It is never a sync marker and says nothing about what was synced.
  case filler = 9
}

/// Encoding and decoding of write-ahead-log records (see ``FileStorage`` for the format).
enum WALFormat {
  /// Bytes before a record's payload: CRC (4), length (4), type (1).
  static let headerBytes = 9
  /// "QWAL", little-endian.
  static let segmentMagic: UInt32 = 0x4C41_5751
  /// The segment format version this build writes. Version 2 added sync markers (``WALRecordType/syncMarker``),
  /// version 3 filler records (``WALRecordType/filler``).
  static let version: UInt8 = 3
  /// The oldest segment format version this build reads: a version 1 segment has no sync markers, and recovery
  /// holds it to the stricter rule that any valid record after damage makes the damage corruption.
  static let oldestReadableVersion: UInt8 = 1
  /// The segment header record's payload size.
  static let segmentHeaderPayloadBytes = 14

  /// Starts a record of `type` in `writer`; returns its start offset for ``endRecord(at:in:limit:)``.
  @inline(__always)
  static func beginRecord(_ type: WALRecordType, in writer: inout WireWriter) -> Int {
    let start = writer.count
    writer.writeFixed64(0)
    writer.writeByte(type.rawValue)
    return start
  }

  /// Finishes the record started at `start`: fills in its length and CRC. Throws
  /// ``StorageError/recordTooLarge(bytes:limit:)`` if the payload exceeds `limit`.
  @inline(__always)
  static func endRecord(at start: Int, in writer: inout WireWriter, limit: Int) throws(StorageError) {
    let length = writer.count - start - headerBytes
    if length > limit { throw .recordTooLarge(bytes: length, limit: limit) }
    writer.patchFixed32(UInt32(length), at: start + 4)
    let crc = writer.bytes.withUnsafeBytes { raw in
      CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[(start + 4)...]))
    }
    writer.patchFixed32(crc, at: start)
  }

  /// Appends a record of `type` whose payload is `payload`.
  static func appendRecord(_ type: WALRecordType, payload: [UInt8], to writer: inout WireWriter) {
    let start = beginRecord(type, in: &writer)
    writer.writeRaw(payload)
    finish(start, &writer)
  }

  /// Appends a record of `type` whose payload is the varint `index` (``WALRecordType/floor`` and
  /// ``WALRecordType/reset``).
  static func appendIndexRecord(_ type: WALRecordType, _ index: UInt64, to writer: inout WireWriter) {
    let start = beginRecord(type, in: &writer)
    writer.writeVarint(index)
    finish(start, &writer)
  }

  /// Appends a segment header record.
  static func appendSegmentHeader(sequence: UInt64, mode: LogWriteMode, to writer: inout WireWriter) {
    appendSegmentHeader(sequence: sequence, magic: segmentMagic, modeByte: modeByte(mode), to: &writer)
  }

  /// Appends a segment header record with the given magic and mode byte (a shared log writes its own).
  static func appendSegmentHeader(sequence: UInt64, magic: UInt32, modeByte: UInt8, to writer: inout WireWriter) {
    let start = beginRecord(.segmentHeader, in: &writer)
    writer.writeFixed32(magic)
    writer.writeByte(version)
    writer.writeByte(modeByte)
    writer.writeFixed64(sequence)
    finish(start, &writer)
  }

  /// The filler record (``WALRecordType/filler``): 9 bytes, the same every time.
  static let fillerRecord: [UInt8] = {
    var writer = WireWriter(reservingCapacity: headerBytes)
    appendRecord(.filler, payload: [], to: &writer)
    return writer.bytes
  }()

  /// Whether an append (or a segment's checkpoint) ending at `end` must be followed by a filler record before
  /// the next append may start there. Recovery takes damage for a torn write's lost first sector only when
  /// zeros run from the damaged record to the end of its sector for at least a record header
  /// (``showsALostSector(_:in:)``); an append starting in the last 8 bytes of a sector could never show that,
  /// and its first sector lost (a power failure, the later sectors written) would be refused as corruption.
  /// The filler, written with the append before it (and synced with it), moves the next start into the next
  /// sector.
  static func needsFiller(endingAt end: Int) -> Bool {
    end % sectorBytes > sectorBytes - headerBytes
  }

  /// A reset record on its own.
  static func resetRecord(_ index: UInt64) -> [UInt8] {
    var writer = WireWriter(reservingCapacity: 20)
    appendIndexRecord(.reset, index, to: &writer)
    return writer.bytes
  }

  /// Checks that the record at the start of segment `sequence` (file `path`) is its header: a group's own log
  /// segment (`shared` false) written in `mode`, or a shared log's segment (``SharedWriteAheadLog``), in
  /// this build's format. The other kind of segment, another version or mode throw
  /// ``StorageError/incompatible(file:reason:)``; anything else is ``StorageError/corruptRecord(file:offset:reason:)``.
  /// Returns the segment's format version.
  static func checkSegmentHeader(
    type: UInt8, payload: Range<Int>, bytes: [UInt8], sequence: UInt64, path: String, shared: Bool,
    mode expected: LogWriteMode?
  ) throws(StorageError) -> UInt8 {
    guard type == WALRecordType.segmentHeader.rawValue, payload.count == segmentHeaderPayloadBytes else {
      throw .corruptRecord(file: path, offset: 0, reason: "the segment does not start with a segment header")
    }
    var reader = WireReader(bytes, range: payload)
    let magic: UInt32
    let version: UInt8
    let mode: UInt8
    let found: UInt64
    do throws(WireError) {
      magic = try reader.readFixed32()
      version = try reader.readByte()
      mode = try reader.readByte()
      found = try reader.readFixed64()
    } catch {
      throw .corruptRecord(file: path, offset: 0, reason: "unreadable segment header: \(error)")
    }
    let (own, other) = shared ? (SharedLogCore.segmentMagic, segmentMagic) : (segmentMagic, SharedLogCore.segmentMagic)
    if magic == other {
      throw .incompatible(
        file: path,
        reason: shared
          ? "a group's own log segment, not a shared log segment"
          : "a shared log's segment (SharedWriteAheadLog), not a group's own log segment")
    }
    if magic != own { throw .corruptRecord(file: path, offset: 0, reason: "bad segment magic") }
    if !(oldestReadableVersion...self.version).contains(version) {
      throw .incompatible(file: path, reason: "log format version \(version)")
    }
    if let expected, mode != modeByte(expected) {
      throw .incompatible(
        file: path, reason: "written in the other log write mode (byte \(mode)); opened in \(expected) mode")
    }
    if found != sequence { throw .corruptRecord(file: path, offset: 0, reason: "header says segment \(found)") }
    return version
  }

  /// The byte recorded for `mode` in segment headers.
  static func modeByte(_ mode: LogWriteMode) -> UInt8 {
    switch mode {
    case .truncateSuffix: return 0
    case .replace: return 1
    }
  }

  private static func finish(_ start: Int, _ writer: inout WireWriter) {
    do throws(StorageError) {
      try endRecord(at: start, in: &writer, limit: .max)
    } catch {
      preconditionFailure("no record exceeds Int.max bytes: \(error)")
    }
  }

  /// A write encoded into records, ready to append to the log.
  ///
  /// The records go in the order that keeps every prefix of them consistent, since a crash may leave any
  /// prefix on the disk (a torn write): first the reset record when one is needed (inserted at the start of
  /// ``bytes`` by the writer, which alone knows), then the entries, and the hard state last. A torn write then
  /// loses the new hard state, never keeps it without its entries: a Raft commit index in it may cover the
  /// entries of this very write, and with the old entries still in their place it would point at entries that
  /// were never committed.
  struct EncodedWrite: Sendable {
    /// The records: the entries, then the hard state.
    var bytes: [UInt8]
    /// The first and last entry positions, if the write holds entries.
    var entryRange: ClosedRange<UInt64>?
    /// The hard state written, if any.
    var hardState: [UInt8]?
    /// Whether it must be synced before it is acknowledged whatever the policy (``StorageWrite/mustSync``).
    var mustSync = false
  }

  /// Encodes `write` into records (entries first, hard state last; see ``EncodedWrite``), checking its shape
  /// and every record against `maxRecordBytes`.
  static func encode<Entry: StorableEntry>(
    _ write: StorageWrite<Entry>, mode: LogWriteMode, maxRecordBytes: Int
  ) throws(StorageError) -> EncodedWrite {
    try LogPosition.checkShape(write.entries, mode: mode)
    if let hardState = write.hardState, hardState.count > maxRecordBytes {
      throw .recordTooLarge(bytes: hardState.count, limit: maxRecordBytes)
    }
    var writer = WireWriter(reservingCapacity: (write.hardState?.count ?? 0) + write.entries.count * 128 + 16)
    if !StorageWrite<Entry>.hardStateRecordGoesLast, let hardState = write.hardState {
      appendRecord(.hardState, payload: hardState, to: &writer)
    }
    let entries = write.entries
    let count = entries.count
    var slot = 0
    while slot < count {
      let start = beginRecord(.entry, in: &writer)
      entries[slot].encode(to: &writer)
      try endRecord(at: start, in: &writer, limit: maxRecordBytes)
      // The room reserved above guessed small entries; the first one says how large they are.
      if slot == 0 && count > 1 { writer.reserveForMore(count - 1, like: writer.count - start) }
      slot += 1
    }
    if StorageWrite<Entry>.hardStateRecordGoesLast, let hardState = write.hardState {
      appendRecord(.hardState, payload: hardState, to: &writer)
    }
    let range = count > 0 ? entries[0].index...entries[count - 1].index : nil
    return EncodedWrite(bytes: writer.bytes, entryRange: range, hardState: write.hardState, mustSync: write.mustSync)
  }

  // MARK: Reading

  /// What the bytes at an offset hold.
  enum Step {
    /// A record with a valid CRC: its type byte and payload range.
    case record(type: UInt8, payload: Range<Int>)
    /// Only zero bytes remain: the clean end of the written data.
    case end
    /// The bytes at this offset are not a valid record.
    case bad(String)
  }

  /// Reads the record at `offset` of `raw`. `lastNonZero` is the offset of the last non-zero byte of `raw`
  /// (-1 if none).
  ///
  /// A record's length is bounded only by the bytes present, not by the configured `maxRecordBytes`: a record
  /// written under a larger limit is still a valid record (its CRC says so), and the reader refuses it as such
  /// (``WALCursor``) rather than take it for damage and cut it off as a torn tail.
  @inline(__always)
  static func step(_ raw: UnsafeRawBufferPointer, at offset: Int, lastNonZero: Int) -> Step {
    if offset > lastNonZero { return .end }
    let available = raw.count - offset
    if available < headerBytes { return .bad("partial record header (\(available) of \(headerBytes) bytes)") }
    let crc = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    let length = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self)))
    let type = raw[offset + 8]
    if type == 0 { return .bad("record type 0 (zeros followed by non-zero bytes)") }
    if length > available - headerBytes {
      return .bad("partial record: \(length) payload bytes declared, \(available - headerBytes) present")
    }
    let end = offset + headerBytes + length
    let actual = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[(offset + 4)..<end]))
    if actual != crc { return .bad("CRC mismatch (stored \(crc), computed \(actual))") }
    return .record(type: type, payload: (offset + headerBytes)..<end)
  }

  /// The offset of the last non-zero byte in `raw`, or -1.
  static func lastNonZeroOffset(_ raw: UnsafeRawBufferPointer) -> Int {
    var end = raw.count
    while end >= 8 {
      if raw.loadUnaligned(fromByteOffset: end - 8, as: UInt64.self) != 0 { break }
      end -= 8
    }
    while end > 0 && raw[end - 1] == 0 { end -= 1 }
    return end - 1
  }

  /// The offset a sync marker record at `offset` of `raw` (with a valid checksum) records, or `nil` if its
  /// payload is not exactly one varint.
  static func syncMarkerValue(_ raw: UnsafeRawBufferPointer, at offset: Int) -> UInt64? {
    let length = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self)))
    var value: UInt64 = 0
    var shift: UInt64 = 0
    var at = offset + headerBytes
    let end = at + length
    while at < end && shift < 64 {
      let byte = raw[at]
      value |= UInt64(byte & 0x7F) << shift
      at += 1
      if byte & 0x80 == 0 { return at == end ? value : nil }
      shift += 7
    }
    return nil
  }

  /// The smallest unit a torn write loses whole. A page the crash kept from the disk reads back as zeros (the
  /// file's unwritten extent, or the preallocated zeros), and a page holds whole sectors of at least this size.
  static let sectorBytes = 512

  /// Whether damage spanning `raw[range]` (offsets in `raw` are file offsets) shows what a sector lost by a torn
  /// write leaves: a ``sectorBytes``-aligned sector of zeros within it, or zeros from its start to the end of
  /// the sector it starts in, at least a record header's worth. The second is the first page of an append whose
  /// start shared that page with records synced before: lost, the page reads back as those records and then
  /// zeros.
  static func showsALostSector(_ raw: UnsafeRawBufferPointer, in range: Range<Int>) -> Bool {
    // A written record's header is never all zeros (its type byte is not 0), so zeros through a whole header
    // are evidence; fewer could be a checksum's zero bytes.
    let firstBoundary = (range.lowerBound / sectorBytes + 1) * sectorBytes
    if range.lowerBound % sectorBytes != 0 && firstBoundary - range.lowerBound >= headerBytes
      && firstBoundary <= range.upperBound && allZero(raw, range.lowerBound..<firstBoundary)
    {
      return true
    }
    var sector = (range.lowerBound + sectorBytes - 1) / sectorBytes * sectorBytes
    while sector + sectorBytes <= range.upperBound {
      if allZero(raw, sector..<(sector + sectorBytes)) { return true }
      sector += sectorBytes
    }
    return false
  }

  private static func allZero(_ raw: UnsafeRawBufferPointer, _ range: Range<Int>) -> Bool {
    var at = range.lowerBound
    while at + 8 <= range.upperBound {
      if raw.loadUnaligned(fromByteOffset: at, as: UInt64.self) != 0 { return false }
      at += 8
    }
    while at < range.upperBound {
      if raw[at] != 0 { return false }
      at += 1
    }
    return true
  }

  /// What a search for a valid record after damage found (``nextValidRecord(_:after:lastNonZero:type:budget:work:)``).
  enum LaterRecord: Equatable {
    /// A valid record starts at this offset.
    case at(Int)
    /// No valid record starts after the damage.
    case none
    /// The search ran out of its budget before it could tell.
    case undecided
  }

  /// The checksum work a search after damage may do in a file of `size` bytes before it gives up: one pass over
  /// the file, and for each candidate at most 2 × ``RecordSpans/stride`` bytes plus the multiplications of its
  /// shift (counted as ``RecordSpans/multiplyWork`` bytes each; a shift's factor is reused for spans of the same
  /// length). Short candidates every four bytes (dense little integers in a torn record) fit within it; only
  /// megabytes of long candidates of ever different lengths exhaust it, and the damage is then refused, never
  /// cut. About a second of work for a 64 MiB segment.
  static func scanBudget(forFileOf size: Int) -> Int { 40 * size + (64 << 20) }

  /// Looks for the first valid record that starts after `offset` (of type `type` only, when given; otherwise of
  /// any known type). Used to tell a torn tail (nothing valid follows the damage) from damage in the middle of
  /// the log. Adds the bytes checksummed to `work`.
  ///
  /// Damage may be megabytes of high-entropy bytes (a torn record of incompressible data), and every offset
  /// there holding a known type byte and a length that fits is a candidate. Checksumming each candidate's
  /// span would cost the number of candidates times their length (hundreds of GiB for a few MiB of damage in
  /// a 64 MiB segment), so the search checksums the rest of the file once, keeping the running checksum at
  /// every ``RecordSpans/stride`` bytes, and derives each candidate's checksum from those in a few hundred
  /// bytes of work (``RecordSpans``). Past `budget` bytes of checksum work it answers
  /// ``LaterRecord/undecided``, which the caller must treat as corruption: keeping damage is recoverable,
  /// cutting a valid record is not.
  static func nextValidRecord(
    _ raw: UnsafeRawBufferPointer, after offset: Int, lastNonZero: Int, type: UInt8? = nil, budget: Int? = nil,
    work: inout Int
  ) -> LaterRecord {
    let budget = budget ?? scanBudget(forFileOf: raw.count)
    var spans: RecordSpans?
    // A record's type byte is non-zero, so a record can only start at or before lastNonZero - 8.
    var candidate = offset + 1
    while candidate + 8 <= lastNonZero {
      let candidateType = raw[candidate + 8]
      if let type, candidateType != type {
        candidate += 1
        continue
      }
      if type == nil && WALRecordType(rawValue: candidateType) == nil {
        candidate += 1
        continue
      }
      let length = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: candidate + 4, as: UInt32.self)))
      if length <= raw.count - candidate - headerBytes {
        if spans == nil { spans = RecordSpans(raw, from: offset + 1, work: &work) }
        if work > budget { return .undecided }
        let stored = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: candidate, as: UInt32.self))
        let span = (candidate + 4)..<(candidate + headerBytes + length)
        let crc: UInt32?
        if span.count <= 2 * RecordSpans.stride {
          // Short: checksummed directly, cheaper than from the kept checksums.
          work += span.count
          crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[span]))
        } else {
          crc = spans?.checksum(of: span, work: &work)  // `spans` was set just above.
        }
        if crc == stored { return .at(candidate) }
      }
      candidate += 1
    }
    return .none
  }
}

/// The CRC-32C of any span of a buffer's tail in bounded work: the running checksum is kept every ``stride``
/// bytes from a base, so the checksum of the bytes before any offset costs at most ``stride`` bytes, and that
/// of a span follows from the two at its ends (CRC-32C is linear: crc(A + B) = crc(A) · x^(8|B|) + crc(B)).
struct RecordSpans {
  /// Bytes between kept checksums.
  static let stride = 64
  private let raw: UnsafeRawBufferPointer
  private let base: Int
  /// `prefixes[k]` is the checksum of `raw[base ..< base + k * stride]`.
  private var prefixes: [UInt32] = []
  /// The shift factor of each span length met (at most ``maxFactors``): records after damage in data with a
  /// repeating pattern tend to share lengths.
  private var factors: [Int: UInt32] = [:]
  static let maxFactors = 4096
  /// The checksum work a multiplication modulo the polynomial is counted as (32 steps of a few instructions each,
  /// as many cycles as checksumming a few hundred bytes takes).
  static let multiplyWork = 256

  /// Checksums `raw[base...]` once (adding its length to `work`).
  init(_ raw: UnsafeRawBufferPointer, from base: Int, work: inout Int) {
    self.raw = raw
    self.base = base
    prefixes.reserveCapacity((raw.count - base) / Self.stride + 1)
    var crc: UInt32 = 0
    var start = base
    prefixes.append(crc)
    while start + Self.stride <= raw.count {
      crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[start..<(start + Self.stride)]), continuing: crc)
      prefixes.append(crc)
      start += Self.stride
    }
    work += start - base
  }

  /// The checksum of `raw[base ..< end]`.
  private func prefix(_ end: Int, work: inout Int) -> UInt32 {
    let slot = (end - base) / Self.stride
    let start = base + slot * Self.stride
    work += end - start
    return CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[start..<end]), continuing: prefixes[slot])
  }

  /// The checksum of `raw[span]`; `span` lies within `raw[base...]`. The shift is counted in `work` too, unless
  /// its factor is known from a span of the same length.
  mutating func checksum(of span: Range<Int>, work: inout Int) -> UInt32 {
    let before = prefix(span.lowerBound, work: &work)
    let through = prefix(span.upperBound, work: &work)
    let factor: UInt32
    if let known = factors[span.count] {
      factor = known
    } else {
      let (computed, multiplications) = CRC32CShift.factor(bytes: span.count)
      work += multiplications * Self.multiplyWork
      factor = computed
      if factors.count < Self.maxFactors { factors[span.count] = computed }
    }
    work += Self.multiplyWork
    return through ^ CRC32CShift.multiply(factor, before)
  }
}

/// CRC-32C arithmetic modulo its polynomial (bit-reflected, as the checksum is), after zlib's `crc32_combine`.
enum CRC32CShift {
  private static let polynomial: UInt32 = 0x82F6_3B78

  /// x^(2^k) modulo the polynomial, k in 0..<64.
  private static let powers: [UInt32] = {
    var table: [UInt32] = []
    var power: UInt32 = 1 << 30  // x^1
    for _ in 0..<64 {
      table.append(power)
      power = multiply(power, power)
    }
    return table
  }()

  /// `a · b` modulo the polynomial.
  static func multiply(_ a: UInt32, _ b: UInt32) -> UInt32 {
    var product: UInt32 = 0
    var b = b
    var bit: UInt32 = 1 << 31  // x^0
    while bit != 0 {
      if a & bit != 0 { product ^= b }
      b = b & 1 != 0 ? (b >> 1) ^ polynomial : b >> 1
      bit >>= 1
    }
    return product
  }

  /// x^(8 · bytes) modulo the polynomial, and the multiplications it took. The checksum `crc` of some bytes
  /// contributes `multiply(factor, crc)` to the checksum of those bytes followed by `bytes` more:
  /// crc(A + B) = multiply(x^(8|B|), crc(A)) ^ crc(B).
  static func factor(bytes: Int) -> (factor: UInt32, multiplications: Int) {
    var factor: UInt32 = 1 << 31  // x^0
    var multiplications = 0
    var remaining = UInt64(bytes) * 8
    var k = 0
    while remaining != 0 {
      if remaining & 1 != 0 {
        factor = multiply(powers[k], factor)
        multiplications += 1
      }
      remaining >>= 1
      k += 1
    }
    return (factor, multiplications)
  }

}
