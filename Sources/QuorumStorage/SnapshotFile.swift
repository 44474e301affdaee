import Glibc
import QuorumCore

/// Reading and writing snapshot files (see ``FileStorage`` for the format).
enum SnapshotFile {
  /// "QSNP", little-endian.
  static let magic: UInt32 = 0x504E_5351
  /// The snapshot format version this build writes and reads.
  static let version: UInt16 = 1
  /// The fixed header's size.
  static let headerBytes = 52
  /// File name prefix and suffix.
  static let prefix = "snapshot-"
  static let suffix = ".snap"

  /// A snapshot as read from disk.
  struct Loaded {
    var snapshot: StoredSnapshot
    /// Entries in WAL segments numbered below this were discarded by the snapshot (0: none).
    var discardBeforeSegment: UInt64
  }

  /// The file name for a snapshot at `index`: zero-padded so names sort by index.
  static func fileName(index: UInt64) -> String {
    let digits = String(index)
    return prefix + String(repeating: "0", count: max(0, 20 - digits.count)) + digits + suffix
  }

  /// The index in a snapshot file name, or `nil` for other names.
  static func index(inFileName name: String) -> UInt64? {
    guard name.hasPrefix(prefix), name.hasSuffix(suffix) else { return nil }
    let digits = name.dropFirst(prefix.count).dropLast(suffix.count)
    guard !digits.isEmpty, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber) else { return nil }
    return UInt64(digits)
  }

  /// Writes `snapshot` into `directory` atomically: a temporary file, synced (unless `sync` is false),
  /// renamed into place, then the directory synced. Returns the final path. A failure after the rename goes
  /// through `afterRename` (see ``publish(_:index:directory:sync:faults:afterRename:)``).
  @discardableResult
  static func write(
    _ snapshot: StoredSnapshot, discardBeforeSegment: UInt64, directory: String, sync: Bool,
    faults: OpenFaults? = nil, afterRename: (StorageError) -> StorageError
  ) throws(StorageError) -> String {
    let temporary = try writeTemporary(
      snapshot, discardBeforeSegment: discardBeforeSegment, directory: directory, sync: sync, suffix: ".tmp")
    return try publish(
      temporary, index: snapshot.index, directory: directory, sync: sync, faults: faults, afterRename: afterRename)
  }

  /// The first half of ``write(_:discardBeforeSegment:directory:sync:)``: writes and (with `sync`) syncs
  /// the snapshot's temporary file, named after it with `suffix` (which must end in `.tmp`, so recovery
  /// deletes a leftover). Returns the temporary file's path; on failure nothing is left behind, and the error is
  /// ``StorageError/snapshotNotStored(underlying:)`` (or one already retryable, or ``StorageError/closed``):
  /// only the temporary file was touched, so whoever stores the snapshot may refuse it for now and go on.
  static func writeTemporary(
    _ snapshot: StoredSnapshot, discardBeforeSegment: UInt64, directory: String, sync: Bool, suffix: String
  ) throws(StorageError) -> String {
    // The body unsynced, then the header on the same descriptor: its sync makes the whole file durable (one
    // sync, as for one write), and reports a writeback error of the body too.
    let body = try writeBody(snapshot, directory: directory, sync: false, suffix: suffix)
    try finish(body, discardBeforeSegment: discardBeforeSegment, sync: sync)
    return body.temporary
  }

  /// A snapshot's temporary file holding its body (metadata and data) but not yet its header: what
  /// ``writeBody(_:directory:sync:suffix:)`` writes off the shared log's writer thread, so that a large snapshot
  /// never holds up the other groups' writes. ``finish(_:discardBeforeSegment:sync:)`` adds the header, which
  /// holds the one field known only on the writer (the segment the group's log continues in).
  struct PreparedBody {
    /// The temporary file, still open: ``finish(_:discardBeforeSegment:sync:)`` writes the header and syncs on this
    /// same descriptor (so a writeback error of the body is reported to the sync, which a kernel before 4.16 reports
    /// only on the descriptor open when it happened), then closes it; ``discard()`` when it is not finished.
    let file: PosixFile
    let temporary: String
    let index: UInt64
    let term: UInt64
    let metadataBytes: Int
    let dataBytes: Int
    /// The checksum of the metadata followed by the data, alone.
    let bodyChecksum: UInt32

    /// Closes and removes the file, for a body that is not to be finished.
    func discard() {
      file.close()
      try? FileSystem.remove(temporary)
    }
  }

  /// Writes `snapshot`'s metadata and data at their places in a new temporary file (named as in
  /// ``writeTemporary(_:discardBeforeSegment:directory:sync:suffix:)``), leaving the header zero, and (with
  /// `sync`) syncs it. Returns it open: the caller must ``finish(_:discardBeforeSegment:sync:)`` or
  /// ``PreparedBody/discard()`` it. On failure nothing is left behind, and the error says so (as for
  /// ``writeTemporary(_:discardBeforeSegment:directory:sync:suffix:)``).
  static func writeBody(_ snapshot: StoredSnapshot, directory: String, sync: Bool, suffix: String)
    throws(StorageError) -> PreparedBody
  {
    let temporary = directory + "/" + fileName(index: snapshot.index) + suffix
    let checksum = CRC32C.checksum(snapshot.data, continuing: CRC32C.checksum(snapshot.metadata))
    let file: PosixFile
    do {
      file = try PosixFile.open(temporary, flags: O_WRONLY | O_CREAT | O_TRUNC)
    } catch {
      throw error.asSnapshotNotStored
    }
    do {
      try file.write([UInt8](repeating: 0, count: headerBytes), at: 0)
      try file.write(snapshot.metadata, at: headerBytes)
      try file.write(snapshot.data, at: headerBytes + snapshot.metadata.count)
      if sync { try file.fullSync() }
    } catch {
      file.close()
      try? FileSystem.remove(temporary)
      throw error.asSnapshotNotStored
    }
    return PreparedBody(
      file: file, temporary: temporary, index: snapshot.index, term: snapshot.term,
      metadataBytes: snapshot.metadata.count,
      dataBytes: snapshot.data.count, bodyChecksum: checksum)
  }

  /// Writes the header of a body from ``writeBody(_:directory:sync:suffix:)`` and (with `sync`) syncs it: one
  /// small write, whose checksum over the whole file comes from the body's own checksum without reading the body
  /// again (crc(A + B) = x^(8|B|) · crc(A) ⊕ crc(B)); its sync also makes an unsynced body durable (`fdatasync`
  /// writes the file's data and the size needed to read it). The file is then a complete temporary snapshot, for
  /// ``publish(_:index:directory:sync:)``. Writes and syncs on the body's own descriptor, and closes it; on failure
  /// the file is removed and the error says nothing durable changed (as for ``writeBody(_:directory:sync:suffix:)``).
  static func finish(_ body: PreparedBody, discardBeforeSegment: UInt64, sync: Bool) throws(StorageError) {
    var header = WireWriter(reservingCapacity: headerBytes)
    header.writeFixed32(magic)
    header.writeFixed32(UInt32(version))
    header.writeFixed32(0)  // CRC, patched below
    header.writeFixed64(body.index)
    header.writeFixed64(body.term)
    header.writeFixed64(discardBeforeSegment)
    header.writeFixed64(UInt64(body.metadataBytes))
    header.writeFixed64(UInt64(body.dataBytes))
    let shift = CRC32CShift.factor(bytes: body.metadataBytes + body.dataBytes).factor
    let crc = CRC32CShift.multiply(shift, CRC32C.checksum(header.bytes[12...])) ^ body.bodyChecksum
    header.patchFixed32(crc, at: 8)
    defer { body.file.close() }
    do {
      try body.file.write(header.bytes, at: 0)
      if sync { try body.file.dataSync() }
    } catch {
      try? FileSystem.remove(body.temporary)
      throw error.asSnapshotNotStored
    }
  }

  /// The second half: renames the temporary file into place as the snapshot at `index`, then (with
  /// `sync`) syncs the directory so the new name survives a crash. Returns the final path.
  ///
  /// The directory is opened before the rename, so that running out of file descriptors for its sync fails while
  /// nothing has changed. A failure before the rename is thrown as it is. Once the rename is done the
  /// snapshot is the group's newest on disk (and a leader's names the segment its log continues in), whether or
  /// not the directory sync after it succeeds: a failure there is passed through `afterRename` (the storage
  /// poisons itself, so that nothing goes on in memory as if the snapshot were not there) and its result thrown.
  /// `faults` makes the directory sync fail with the injected error, for tests.
  @discardableResult
  static func publish(
    _ temporary: String, index: UInt64, directory: String, sync: Bool, faults: OpenFaults? = nil,
    afterRename: (StorageError) -> StorageError
  ) throws(StorageError) -> String {
    let path = directory + "/" + fileName(index: index)
    let handle = sync ? try PosixFile.open(directory, flags: O_RDONLY | O_DIRECTORY) : nil
    defer { handle?.close() }
    try FileSystem.rename(temporary, path)
    do throws(StorageError) {
      if let handle {
        if faults?.injected() != nil { throw ioError("fsync", directory) }
        try handle.fullSync()
      }
    } catch {
      throw afterRename(error)
    }
    return path
  }

  /// Reads and verifies the snapshot at `path`, whose name says it is at `expectedIndex`.
  ///
  /// Throws ``StorageError/corruptSnapshot(file:reason:)`` for damage, ``StorageError/incompatible(file:reason:)``
  /// for an unknown version, ``StorageError/io(operation:path:errno:)`` when it cannot be read. The version field
  /// is not covered by the checksum: an unknown version that differs from this one by a single flipped bit, in a
  /// file that is otherwise a valid snapshot of this version (sizes and checksum agree), is a damaged version
  /// field, so corruption, which lets recovery fall back to an older snapshot; any other unknown version is
  /// incompatible.
  static func read(_ path: String, expectedIndex: UInt64) throws(StorageError) -> Loaded {
    let file = try PosixFile.open(path, flags: O_RDONLY)
    defer { file.close() }
    let size = try file.size()
    let header = try file.read(count: headerBytes, at: 0)
    if header.count < headerBytes {
      throw .corruptSnapshot(file: path, reason: "\(size) bytes, shorter than the \(headerBytes)-byte header")
    }
    var reader = WireReader(header)
    do {
      let foundMagic = try reader.readFixed32()
      if foundMagic != magic {
        throw StorageError.corruptSnapshot(file: path, reason: "bad magic 0x\(String(foundMagic, radix: 16))")
      }
      // The version field is outside the checksum: an unknown version is judged after the rest is read as this
      // version's layout (below), so that a damaged version field is not taken for a newer format.
      let foundVersion = try reader.readFixed32()
      let knownVersion = foundVersion == UInt32(version)
      let incompatible = StorageError.incompatible(file: path, reason: "snapshot format version \(foundVersion)")
      // Only a version a single flipped bit away from this one can be a damaged version field; any other is a
      // format this build does not know, whatever the rest of the file holds.
      if !knownVersion && (foundVersion ^ UInt32(version)).nonzeroBitCount != 1 { throw incompatible }
      let storedCRC = try reader.readFixed32()
      let index = try reader.readFixed64()
      let term = try reader.readFixed64()
      let discardBefore = try reader.readFixed64()
      let metadataLength = try reader.readFixed64()
      let dataLength = try reader.readFixed64()
      let expectedSize = UInt64(headerBytes).addingReportingOverflow(metadataLength)
      let total = expectedSize.partialValue.addingReportingOverflow(dataLength)
      if expectedSize.overflow || total.overflow || total.partialValue != UInt64(size) {
        if !knownVersion { throw incompatible }
        throw StorageError.corruptSnapshot(
          file: path,
          reason: "header declares \(metadataLength) + \(dataLength) bytes but the file holds \(size - headerBytes)")
      }
      let metadata = try file.read(count: Int(metadataLength), at: headerBytes)
      let data = try file.read(count: Int(dataLength), at: headerBytes + Int(metadataLength))
      if metadata.count != Int(metadataLength) || data.count != Int(dataLength) {
        throw StorageError.corruptSnapshot(file: path, reason: "file shrank while being read")
      }
      var crc = CRC32C.checksum(header[12...])
      crc = CRC32C.checksum(metadata, continuing: crc)
      crc = CRC32C.checksum(data, continuing: crc)
      if crc != storedCRC {
        if !knownVersion { throw incompatible }
        throw StorageError.corruptSnapshot(file: path, reason: "CRC mismatch (stored \(storedCRC), computed \(crc))")
      }
      if !knownVersion {
        // Everything else checks out as this version's snapshot: the version field itself is damaged.
        throw StorageError.corruptSnapshot(
          file: path,
          reason: "damaged version field (\(foundVersion)); the rest is a valid version \(version) snapshot")
      }
      if index != expectedIndex {
        throw StorageError.corruptSnapshot(file: path, reason: "holds index \(index), its name says \(expectedIndex)")
      }
      return Loaded(
        snapshot: StoredSnapshot(index: index, term: term, metadata: metadata, data: data),
        discardBeforeSegment: discardBefore)
    } catch let error as StorageError {
      throw error
    } catch {
      throw .corruptSnapshot(file: path, reason: "unreadable header: \(error)")
    }
  }
}
