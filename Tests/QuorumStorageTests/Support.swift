import Foundation
import QuorumCore
import QuorumStorage
import Testing

/// A log entry for tests: position, term and payload bytes.
struct TestEntry: StorableEntry, Equatable, CustomStringConvertible {
  var index: UInt64
  var term: UInt64
  var payload: [UInt8]

  init(_ index: UInt64, term: UInt64 = 1, payload: [UInt8]? = nil) {
    self.index = index
    self.term = term
    self.payload = payload ?? Array("entry \(index) term \(term)".utf8)
  }

  func encode(to writer: inout WireWriter) {
    writer.writeVarint(index)
    writer.writeVarint(term)
    writer.writeBytes(payload)
  }

  init(from reader: inout WireReader) throws(WireError) {
    index = try reader.readVarint()
    term = try reader.readVarint()
    payload = try reader.readBytes()
  }

  var description: String { "\(index)@\(term)" }
}

/// Entries at `positions`, all of `term`.
func entries(_ positions: ClosedRange<UInt64>, term: UInt64 = 1) -> [TestEntry] {
  positions.map { TestEntry($0, term: term) }
}

/// Hard-state bytes for tests.
func hardState(_ text: String) -> [UInt8] { Array(text.utf8) }

/// A fresh directory path under the system temporary directory, removed after `body`.
func withTemporaryDirectory(_ body: (String) async throws -> Void) async throws {
  let path = FileManager.default.temporaryDirectory.path + "/quorum-storage-tests/" + UUID().uuidString
  defer { try? FileManager.default.removeItem(atPath: path) }
  try await body(path)
}

/// The storage implementations the shared behavioural tests run against.
enum Backend: String, CaseIterable, Sendable, CustomTestStringConvertible {
  case memory
  case file
  /// File storage with zero-filled preallocated segments (small ones, so rotation happens).
  case preallocatedFile
  /// One group's storage in a shared log (small segments, so rotation happens). Groups interleaving in one log
  /// are SharedLogTests' and SharedLogRandomTests' subject.
  case sharedLog

  var testDescription: String { rawValue }
}

/// Opens storage of one backend and "restarts" it: a file backend gets a new instance on the same
/// directory; the memory backend keeps its instance (nothing survives a real restart there).
struct Harness {
  let backend: Backend
  let mode: LogWriteMode
  let directory: String
  private let memory: MemoryStorage<TestEntry>

  init(_ backend: Backend, mode: LogWriteMode = .truncateSuffix, directory: String) {
    self.backend = backend
    self.mode = mode
    self.directory = directory
    memory = MemoryStorage(mode: mode)
  }

  /// A storage instance, not yet recovered.
  func make() -> any ConsensusStorage<TestEntry> {
    switch backend {
    case .memory:
      return memory
    case .file:
      return FileStorage<TestEntry>(
        directory: directory, mode: mode, segmentBytes: 4096, preallocation: .none, logger: .disabled)
    case .preallocatedFile:
      return FileStorage<TestEntry>(
        directory: directory, mode: mode, segmentBytes: 8192, preallocation: .zeroFilled, logger: .disabled)
    case .sharedLog:
      return SharedWriteAheadLog(directory: directory, segmentBytes: 4096, preallocation: .none, logger: .disabled)
        .storage(for: 7, mode: mode)
    }
  }

  /// A recovered storage instance.
  func open() async throws -> (any ConsensusStorage<TestEntry>, RecoveredState<TestEntry>) {
    let storage = make()
    return (storage, try await storage.recover())
  }

  /// Closes `storage` (file backends) and opens it again.
  func restart(_ storage: any ConsensusStorage<TestEntry>) async throws -> (
    any ConsensusStorage<TestEntry>, RecoveredState<TestEntry>
  ) {
    if backend != .memory { try await storage.close() }
    return try await open()
  }

  /// Closes `storage` for good.
  func finish(_ storage: any ConsensusStorage<TestEntry>) async throws {
    try await storage.close()
  }
}

/// Runs `body` with a harness over a fresh directory.
func withHarness(
  _ backend: Backend, mode: LogWriteMode = .truncateSuffix, _ body: (Harness) async throws -> Void
) async throws {
  try await withTemporaryDirectory { directory in
    try await body(Harness(backend, mode: mode, directory: directory))
  }
}

/// The segment files of a storage directory, oldest first.
func segmentFiles(_ directory: String) throws -> [String] {
  try FileManager.default.contentsOfDirectory(atPath: directory + "/wal").filter { $0.hasSuffix(".wal") }.sorted()
    .map { directory + "/wal/" + $0 }
}

/// The snapshot files of a storage directory.
func snapshotFiles(_ directory: String) throws -> [String] {
  try FileManager.default.contentsOfDirectory(atPath: directory + "/snapshots").sorted()
}

/// Reads a whole file.
func readFile(_ path: String) throws -> [UInt8] {
  Array(try Data(contentsOf: URL(fileURLWithPath: path)))
}

/// Replaces a file's contents.
func writeFile(_ path: String, _ bytes: [UInt8]) throws {
  try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// The type byte of a sync marker record, which a log writes at the start of an append after a sync.
let syncMarkerType: UInt8 = 8

/// The type byte of a filler record, which ends an append that would otherwise end in a sector's last bytes.
let fillerType: UInt8 = 9

/// The start offsets of the records in a segment file's bytes, and the end of the last one (walking the
/// `[u32 CRC][u32 length][u8 type]` headers; stops at zeros). Sync markers and fillers are left out of `starts`
/// unless `markers` is true.
func recordOffsets(_ bytes: [UInt8], markers: Bool = false) -> (starts: [Int], end: Int) {
  var starts: [Int] = []
  var offset = 0
  while offset + 9 <= bytes.count, bytes[offset + 8] != 0 {
    if markers || (bytes[offset + 8] != syncMarkerType && bytes[offset + 8] != fillerType) { starts.append(offset) }
    let length =
      Int(bytes[offset + 4]) | Int(bytes[offset + 5]) << 8 | Int(bytes[offset + 6]) << 16 | Int(bytes[offset + 7]) << 24
    offset += 9 + length
  }
  return (starts, offset)
}

/// Entries of about 1 KiB of non-zero bytes each: a write of a dozen spans several pages.
func pageEntries(_ positions: ClosedRange<UInt64>, term: UInt64 = 1) -> [TestEntry] {
  positions.map { index in
    TestEntry(index, term: term, payload: (0..<1000).map { UInt8(truncatingIfNeeded: $0 &+ Int(index)) | 1 })
  }
}

/// Zeroes the first whole page (4 KiB) that starts after `offset` in a segment's bytes, as a crash leaves an
/// append of several pages when a later page reached the disk and this one did not; returns its offset.
func losePage(after offset: Int, in bytes: inout [UInt8]) -> Int {
  let page = (offset / 4096 + 1) * 4096
  for at in page..<(page + 4096) { bytes[at] = 0 }
  return page
}

/// The start of the record a lost page at `page` damages: the last record starting at or before it.
func damagedRecord(_ starts: [Int], page: Int) -> Int {
  starts.last { $0 <= page } ?? 0
}

/// A cleanly closed segment's bytes as a crash would have left them: without the sync marker a clean close
/// appends last, nor any filler record at the end (zeroed where the file goes on past them, as a preallocated
/// segment does; cut off otherwise). The last record is then the last write's own.
func withoutCloseMarker(_ bytes: [UInt8]) -> [UInt8] {
  let (starts, end) = recordOffsets(bytes, markers: true)
  guard
    let last = starts.last(where: { bytes[$0 + 8] != syncMarkerType && bytes[$0 + 8] != fillerType })
      .flatMap({ keep in starts.first { $0 > keep } })
  else { return bytes }
  var result = bytes
  if end < bytes.count {
    for at in last..<end { result[at] = 0 }
  } else {
    result.removeSubrange(last...)
  }
  return result
}
