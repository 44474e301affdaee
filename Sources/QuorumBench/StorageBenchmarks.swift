import Foundation
import Glibc
import QuorumCore
import QuorumStorage

/// A log entry shaped like a small replicated command: position, term and a payload.
private struct BenchEntry: StorableEntry {
  var index: UInt64
  var term: UInt64
  var payload: [UInt8]

  func encode(to writer: inout WireWriter) {
    writer.writeVarint(index)
    writer.writeVarint(term)
    writer.writeBytes(payload)
  }

  init(index: UInt64, term: UInt64 = 1, payload: [UInt8]) {
    self.index = index
    self.term = term
    self.payload = payload
  }

  init(from reader: inout WireReader) throws(WireError) {
    index = try reader.readVarint()
    term = try reader.readVarint()
    payload = try reader.readBytes()
  }
}

/// Write-ahead-log figures against the disk's own `fdatasync` latency, measured in the same run.
///
/// `swift run -c release quorum-bench storage`. Latency figures interleave the baselines and the storage
/// operation by operation, because this disk has slow periods lasting seconds.
enum StorageBenchmarks {
  private static let payload = [UInt8](repeating: 0xAB, count: 100)
  private static let operations = 400

  static func run(_ report: BenchReport) async throws {
    let root = FileManager.default.temporaryDirectory.path + "/quorum-bench-storage-\(getpid())"
    try? FileManager.default.removeItem(atPath: root)
    try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: root) }

    try await latency(report, root: root)
    try await throughput(report, root: root)
    try await recovery(report, root: root)
    try await memory(report)
  }

  // MARK: Latency

  private static func latency(_ report: BenchReport, root: String) async throws {
    let storage = FileStorage<BenchEntry>(directory: root + "/latency", logger: .disabled)
    _ = try await storage.recover()
    var next: UInt64 = 1
    for _ in 0..<50 {  // warm up; let the spare segment be prepared in the background
      try await storage.write(StorageWrite(entries: [BenchEntry(index: next, payload: payload)]))
      next += 1
    }
    try await Task.sleep(for: .seconds(1))

    // Each operation of every kind runs in turn, so slow periods of the disk hit all kinds alike.
    let growing = try RawSyncFile(root + "/raw-grow", preallocatedBytes: 0)
    let preallocated = try RawSyncFile(root + "/raw-prealloc", preallocatedBytes: 4 << 20)
    defer {
      growing.close()
      preallocated.close()
    }
    let page = [UInt8](repeating: 0x5A, count: 4096)
    let small = [UInt8](repeating: 0x5A, count: 128)
    var growingTimes: [Double] = []
    var preallocatedTimes: [Double] = []
    var single: [Double] = []
    var withHardState: [Double] = []
    for _ in 0..<operations {
      growingTimes.append(try growing.appendAndSync(page))
      preallocatedTimes.append(try preallocated.appendAndSync(small))
      var start = nowNanos()
      try await storage.write(StorageWrite(entries: [BenchEntry(index: next, payload: payload)]))
      single.append(Double(nowNanos() - start) / 1000)
      next += 1
      let write = StorageWrite(
        hardState: [UInt8](repeating: 1, count: 24), entries: [BenchEntry(index: next, payload: payload)])
      start = nowNanos()
      try await storage.write(write)
      withHardState.append(Double(nowNanos() - start) / 1000)
      next += 1
    }
    try await storage.close()

    let baseP50 = percentile(growingTimes, 0.5)
    let baseP99 = percentile(growingTimes, 0.99)
    let preP50 = percentile(preallocatedTimes, 0.5)
    let preP99 = percentile(preallocatedTimes, 0.99)
    report.add("storage", "baseline: 4 KiB append + fdatasync p50", baseP50, "µs", note: "growing file")
    report.add("storage", "baseline: 4 KiB append + fdatasync p99", baseP99, "µs")
    report.add("storage", "baseline: 128 B pwrite + fdatasync p50", preP50, "µs", note: "zero-filled file")
    report.add("storage", "baseline: 128 B pwrite + fdatasync p99", preP99, "µs")
    let p50 = percentile(single, 0.5)
    let p99 = percentile(single, 0.99)
    report.add("storage", "FileStorage write 1×100 B entry .always p50", p50, "µs")
    report.add("storage", "FileStorage write 1×100 B entry .always p99", p99, "µs")
    report.add("storage", "  ratio p50 / 4 KiB baseline p50", p50 / baseP50, "×")
    report.add("storage", "  ratio p99 / 4 KiB baseline p99", p99 / baseP99, "×")
    report.add("storage", "  ratio p50 / 128 B zero-filled baseline p50", p50 / preP50, "×")
    report.add("storage", "  ratio p99 / 128 B zero-filled baseline p99", p99 / preP99, "×")
    let hardP50 = percentile(withHardState, 0.5)
    report.add("storage", "FileStorage write hard state + 1 entry p50", hardP50, "µs", note: "one fdatasync")
    report.add("storage", "FileStorage write hard state + 1 entry p99", percentile(withHardState, 0.99), "µs")
  }

  /// A file for measuring the raw cost of a small append followed by `fdatasync`.
  final class RawSyncFile {
    let path: String
    let fd: Int32
    var offset = 0

    /// Creates the file; with `preallocatedBytes` > 0 it is first written with that many zeros and synced.
    init(_ path: String, preallocatedBytes: Int) throws {
      self.path = path
      fd = open(path, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0o644)
      guard fd >= 0 else { throw StorageError.io(operation: "open", path: path, errno: errno) }
      let zeros = [UInt8](repeating: 0, count: 1 << 20)
      for chunk in 0..<(preallocatedBytes >> 20) { _ = pwrite(fd, zeros, zeros.count, off_t(chunk << 20)) }
      fsync(fd)
    }

    /// Appends `bytes` and syncs; returns the latency in microseconds.
    func appendAndSync(_ bytes: [UInt8]) throws -> Double {
      let start = nowNanos()
      guard pwrite(fd, bytes, bytes.count, off_t(offset)) == bytes.count, fdatasync(fd) == 0 else {
        throw StorageError.io(operation: "pwrite+fdatasync", path: path, errno: errno)
      }
      offset += bytes.count
      return Double(nowNanos() - start) / 1000
    }

    func close() {
      _ = Glibc.close(fd)
      unlink(path)
    }
  }

  // MARK: Throughput

  private static func throughput(_ report: BenchReport, root: String) async throws {
    for (name, policy, batches) in [("always", FsyncPolicy.always, 400), ("never", FsyncPolicy.never, 2000)] {
      let storage = FileStorage<BenchEntry>(directory: root + "/throughput-\(name)", fsync: policy, logger: .disabled)
      _ = try await storage.recover()
      var next: UInt64 = 1
      let start = nowNanos()
      for _ in 0..<batches {
        let batch = (0..<256).map { BenchEntry(index: next + UInt64($0), payload: payload) }
        try await storage.write(StorageWrite(entries: batch))
        next += 256
      }
      let seconds = Double(nowNanos() - start) / 1e9
      try await storage.close()
      report.add(
        "storage", "FileStorage batches of 256 × 100 B, .\(name)", Double(batches * 256) / seconds, "entries/s",
        note: String(format: "%.0f batches/s", Double(batches) / seconds))
    }

    // Group commit: concurrent single-entry writers share one fdatasync.
    let storage = FileStorage<BenchEntry>(directory: root + "/group", mode: .replace, logger: .disabled)
    _ = try await storage.recover()
    let writers = 16
    let perWriter = 100
    let syncsBefore = try await storage.syncCount()
    let start = nowNanos()
    try await withThrowingTaskGroup(of: Void.self) { group in
      for writer in 0..<writers {
        group.addTask {
          for op in 0..<perWriter {
            let index = UInt64(op * writers + writer + 1)
            try await storage.write(StorageWrite(entries: [BenchEntry(index: index, payload: payload)]))
          }
        }
      }
      try await group.waitForAll()
    }
    let seconds = Double(nowNanos() - start) / 1e9
    let syncs = try await storage.syncCount() - syncsBefore
    try await storage.close()
    report.add(
      "storage", "FileStorage \(writers) concurrent 1-entry writers, .always", Double(writers * perWriter) / seconds,
      "writes/s", note: String(format: "%.1f writes per fdatasync", Double(writers * perWriter) / Double(syncs)))
  }

  // MARK: Recovery

  private static func recovery(_ report: BenchReport, root: String) async throws {
    let directory = root + "/recovery"
    let count: UInt64 = 1_000_000
    let writer = FileStorage<BenchEntry>(directory: directory, fsync: .never, logger: .disabled)
    _ = try await writer.recover()
    var next: UInt64 = 1
    while next <= count {
      let last = min(count, next + 4095)
      try await writer.write(StorageWrite(entries: (next...last).map { BenchEntry(index: $0, payload: payload) }))
      next = last + 1
    }
    try await writer.close()
    let walBytes = try FileManager.default.contentsOfDirectory(atPath: directory + "/wal").filter {
      $0.hasSuffix(".wal")
    }.reduce(0) {
      $0 + ((try? FileManager.default.attributesOfItem(atPath: directory + "/wal/" + $1)[.size]) as? Int ?? 0)
    }

    var times: [Double] = []
    var cpuTimes: [Double] = []
    for _ in 0..<3 {
      let reader = FileStorage<BenchEntry>(directory: directory, logger: .disabled)
      let start = nowNanos()
      let cpuStart = processCPUSeconds()
      let state = try await reader.recover()
      cpuTimes.append(processCPUSeconds() - cpuStart)
      times.append(Double(nowNanos() - start) / 1e9)
      precondition(state.entries.count == Int(count), "recovered \(state.entries.count) of \(count) entries")
      try await reader.close()
    }
    let seconds = median(times)
    report.add(
      "storage", "FileStorage recover 1,000,000 × 100 B entries", seconds, "s",
      note: String(format: "goal ≤ 1 s; %.0f MB of segments, page cache warm", Double(walBytes) / 1e6))
    report.add(
      "storage", "  recovery CPU time (all threads)", median(cpuTimes), "s", note: "insensitive to other load")
    report.add("storage", "  recovery rate", Double(count) / seconds, "entries/s")
  }

  /// CPU time used by the whole process so far, in seconds.
  private static func processCPUSeconds() -> Double {
    var time = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
  }

  // MARK: Memory

  private static func memory(_ report: BenchReport) async throws {
    let storage = MemoryStorage<BenchEntry>()
    var next: UInt64 = 1
    let batches = 4000
    let start = nowNanos()
    for _ in 0..<batches {
      let batch = (0..<256).map { BenchEntry(index: next + UInt64($0), payload: payload) }
      try await storage.write(StorageWrite(entries: batch))
      next += 256
    }
    let seconds = Double(nowNanos() - start) / 1e9
    report.add("storage", "MemoryStorage batches of 256 entries", Double(batches * 256) / seconds, "entries/s")
  }
}
