/// CRC-32C (Castagnoli), the checksum guarding every write-ahead-log record and snapshot.
///
/// A table-driven software implementation processing eight bytes per step ("slice-by-8").
public enum CRC32C {
  private static let tables: [[UInt32]] = {
    var tables = [[UInt32]](repeating: [UInt32](repeating: 0, count: 256), count: 8)
    for i in 0..<256 {
      var crc = UInt32(i)
      for _ in 0..<8 { crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
      tables[0][i] = crc
    }
    for i in 0..<256 {
      for t in 1..<8 {
        let previous = tables[t - 1][i]
        tables[t][i] = (previous >> 8) ^ tables[0][Int(previous & 0xff)]
      }
    }
    return tables
  }()

  /// The checksum of `bytes`, continuing from `crc` (pass the result of an earlier call to checksum data
  /// in pieces; start from 0).
  public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
    var c = ~crc
    var i = 0
    let n = bytes.count
    Self.tables.withUnsafeBufferPointer { t in
      let t0 = t[0]
      let t1 = t[1]
      let t2 = t[2]
      let t3 = t[3]
      let t4 = t[4]
      let t5 = t[5]
      let t6 = t[6]
      let t7 = t[7]
      while i + 8 <= n {
        let lo =
          c
          ^ (UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16
            | UInt32(bytes[i + 3]) << 24)
        c =
          t7[Int(lo & 0xff)] ^ t6[Int((lo >> 8) & 0xff)] ^ t5[Int((lo >> 16) & 0xff)] ^ t4[Int(lo >> 24)]
          ^ t3[Int(bytes[i + 4])] ^ t2[Int(bytes[i + 5])] ^ t1[Int(bytes[i + 6])] ^ t0[Int(bytes[i + 7])]
        i += 8
      }
      while i < n {
        c = t0[Int((c ^ UInt32(bytes[i])) & 0xff)] ^ (c >> 8)
        i += 1
      }
    }
    return ~c
  }

  /// The checksum of `bytes`, continuing from `crc`.
  public static func checksum(_ bytes: some Collection<UInt8>, continuing crc: UInt32 = 0) -> UInt32 {
    if let result = bytes.withContiguousStorageIfAvailable({ checksum(UnsafeRawBufferPointer($0), continuing: crc) }) {
      return result
    }
    return Array(bytes).withUnsafeBytes { checksum($0, continuing: crc) }
  }
}
