import CQuorumChecksum

/// CRC-32C (Castagnoli), the checksum guarding every write-ahead-log record and snapshot.
///
/// On the processor's CRC-32C instruction where it has one (SSE 4.2 on x86-64: 2.5–3 × the table's speed).
/// Elsewhere, slice-by-8 over one flat table reached through a raw pointer: no per-call retains and no bounds
/// checks in the inner loop, which matters when recovery checksums a million small records.
public enum CRC32C {
  /// Whether this processor has the instruction (asked once).
  private static let hardware = cq_crc32c_available() != 0

  /// 8 tables of 256 entries, table `k` at offset `256 * k`. Allocated once and never written afterwards.
  // nonisolated(unsafe): the pointer is written only by this initializer (run once, thread-safely, by the
  // runtime's lazy global initialization) and only read afterwards.
  private nonisolated(unsafe) static let table: UnsafePointer<UInt32> = {
    let table = UnsafeMutablePointer<UInt32>.allocate(capacity: 8 * 256)
    for byte in 0..<256 {
      var crc = UInt32(byte)
      for _ in 0..<8 { crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
      table[byte] = crc
    }
    for byte in 0..<256 {
      for slice in 1..<8 {
        let previous = table[256 * (slice - 1) + byte]
        table[256 * slice + byte] = (previous >> 8) ^ table[Int(previous & 0xff)]
      }
    }
    return UnsafePointer(table)
  }()

  /// The checksum of `bytes`, continuing from `crc` (pass the result of an earlier call to checksum data
  /// in pieces; start from 0).
  public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
    guard let base = bytes.baseAddress else { return crc }
    return hardware ? cq_crc32c(crc, base, bytes.count) : tableChecksum(bytes, continuing: crc)
  }

  /// The checksum computed from the table, whatever the processor has (the fallback, and the tests' witness).
  package static func tableChecksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
    guard var pointer = bytes.baseAddress else { return crc }
    let t = table
    var remaining = bytes.count
    var c = ~crc
    while remaining >= 8 {
      let word = UInt64(littleEndian: pointer.loadUnaligned(as: UInt64.self)) ^ UInt64(c)
      c =
        t[1792 + Int(word & 0xff)] ^ t[1536 + Int((word >> 8) & 0xff)] ^ t[1280 + Int((word >> 16) & 0xff)]
        ^ t[1024 + Int((word >> 24) & 0xff)] ^ t[768 + Int((word >> 32) & 0xff)] ^ t[512 + Int((word >> 40) & 0xff)]
        ^ t[256 + Int((word >> 48) & 0xff)] ^ t[Int(word >> 56)]
      pointer += 8
      remaining -= 8
    }
    while remaining > 0 {
      c = t[Int((c ^ UInt32(pointer.load(as: UInt8.self))) & 0xff)] ^ (c >> 8)
      pointer += 1
      remaining -= 1
    }
    return ~c
  }

  /// The checksum of `bytes`, continuing from `crc`.
  public static func checksum(_ bytes: [UInt8], continuing crc: UInt32 = 0) -> UInt32 {
    bytes.withUnsafeBytes { checksum($0, continuing: crc) }
  }

  /// The checksum of `bytes`, continuing from `crc`.
  public static func checksum(_ bytes: ArraySlice<UInt8>, continuing crc: UInt32 = 0) -> UInt32 {
    bytes.withUnsafeBytes { checksum($0, continuing: crc) }
  }

  /// The checksum of any byte collection, continuing from `crc`.
  public static func checksum(_ bytes: some Collection<UInt8>, continuing crc: UInt32 = 0) -> UInt32 {
    if let result = bytes.withContiguousStorageIfAvailable({ checksum(UnsafeRawBufferPointer($0), continuing: crc) }) {
      return result
    }
    return Array(bytes).withUnsafeBytes { checksum($0, continuing: crc) }
  }
}
