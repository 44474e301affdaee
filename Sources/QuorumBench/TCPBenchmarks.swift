import CQuorumSystem
import Foundation
import Quorum
import Synchronization

/// TCP: the transport alone against raw sockets, and a 3-process `quorum serve` cluster against the
/// physical costs it is made of (loopback round trip, fsync), each baseline measured in the same run.
enum TCPBenchmarks {
  static func run(_ report: BenchReport) async throws {
    signal(SIGPIPE, SIG_IGN)
    let rtt = try await rawRoundTrip(count: 20_000)
    let rttP50 = percentile(rtt, 0.5)
    report.add(
      "tcp", "baseline: loopback round trip, 64 B, blocking threads", rttP50, "µs",
      note: String(format: "p99 %.1f µs", percentile(rtt, 0.99)))
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("quorum-bench-tcp-\(getpid())").path
    try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: root) }
    let fsync = try RaftBenchmarks.fsyncBaseline(root: root)
    report.add("tcp", "baseline: 4 KiB append + fdatasync p50", fsync, "µs")

    // QUORUM_TCP_PARTS=stream, =cluster or =auth (or a comma-separated mix) runs only those parts.
    let parts = ProcessInfo.processInfo.environment["QUORUM_TCP_PARTS"] ?? "stream,cluster,auth"
    if parts.contains("auth") { macCosts(report) }
    // QUORUM_TCP_FRAME_SIZES=64,16384 streams only those frame sizes (for a profile of one).
    let sizes = (ProcessInfo.processInfo.environment["QUORUM_TCP_FRAME_SIZES"] ?? "64,1024,16384")
      .split(separator: ",").compactMap { Int($0) }
    for frameBytes in sizes where parts.contains("stream") {
      let frames = frameBytes <= 64 ? 2_000_000 : (frameBytes <= 1024 ? 1_000_000 : 100_000)
      // The raw stream is 10 to 40 times as fast: it streams more frames, so that its window is not a few
      // milliseconds of a noisy machine.
      let raw = try await rawStream(frameBytes: frameBytes, frames: frames * (frameBytes <= 64 ? 10 : 4))
      report.add(
        "tcp", "baseline: raw socket stream, \(frameBytes) B frames", raw, "frames/s",
        note: String(format: "%.0f MB/s, 256 KiB writes", raw * Double(frameBytes) / 1e6))
      // The process's CPU time per frame (both endpoints and the consumer) is steadier than the rate on a shared
      // machine: an A/B of the transport's own cost. Measured twice: the producer and the consumer on Swift's
      // pool, as an application's tasks; and each on its transport's network thread, as a server's groups run
      // (`groupsOnNetworkThread`, the default): a turn's sends are queued and written together after it.
      for onNetworkThreads in [false, true] {
        let cpuBefore = HostBenchmarks.processCPU()
        let transport = try await transportStream(
          frameBytes: frameBytes, frames: frames, onNetworkThreads: onNetworkThreads)
        let cpuPerFrame = (HostBenchmarks.processCPU() - cpuBefore) / Double(frames) * 1e9
        report.add(
          "tcp", "TCPTransport stream, \(frameBytes) B frames\(onNetworkThreads ? ", on the network threads" : "")",
          transport.rate, "frames/s",
          note: String(
            format: "%.0f MB/s = %.0f%% of raw; %.0f frames per write; %.0f ns of CPU per frame",
            transport.rate * Double(frameBytes) / 1e6, transport.rate / raw * 100, transport.framesPerWrite,
            cpuPerFrame))
      }
    }

    if parts.contains("auth") { try await authenticationCost(report, root: root, fsync: fsync, rtt: rttP50) }
    guard parts.contains("cluster") else { return }
    let shared = try RaftBenchmarks.contendedFsyncBaseline(root: root)
    report.add(
      "tcp", "baseline: 3 writers on this one disk, 4 KiB + fdatasync each, 2nd durable p50", shared, "µs",
      note: String(format: "%.2f× the lone fsync", shared / fsync))
    let cluster = try await BenchCluster.start(root: root)
    defer { cluster.stop() }
    // QUORUM_TCP_CLIENTS=1,256 and QUORUM_TCP_SECONDS=10 choose the client counts and each window's length
    // (for profiling one workload with `perf record`).
    let environment = ProcessInfo.processInfo.environment
    let counts = environment["QUORUM_TCP_CLIENTS"].map { $0.split(separator: ",").compactMap { Int($0) } } ?? []
    let seconds = environment["QUORUM_TCP_SECONDS"].flatMap(Int.init) ?? 3
    let policy = environment["QUORUM_TCP_FSYNC"] ?? "always"
    for clients in counts.isEmpty ? [1, 16, 64, 256] : counts {
      let result = try await cluster.puts(clients: clients, duration: .seconds(seconds))
      report.add("tcp", "3 processes, fsync \(policy): \(clients) clients, puts/s", result.rate, "puts/s")
      report.add(
        "tcp", "3 processes, fsync \(policy): \(clients) clients, p50 / p99", result.p50, "µs",
        note: String(
          format: "p99 %.0f µs; p50 = fsync + %.1f round trips = shared-disk majority sync + %.1f round trips",
          result.p99, (result.p50 - fsync) / rttP50, (result.p50 - shared) / rttP50))
    }
  }

  // MARK: Authentication

  /// What a frame's code costs: HMAC-SHA-256 of a 128-byte and a 16 KiB body, as the transport computes it
  /// (C, with the x86 SHA extensions when present, and without them) and in QuorumCore's Swift.
  static func macCosts(_ report: BenchReport) {
    let key = [UInt8](repeating: 7, count: 32)
    var inner = [UInt32](repeating: 0, count: 8)
    var outer = [UInt32](repeating: 0, count: 8)
    cq_hmac_sha256_init(key, key.count, &inner, &outer)
    let swift = HMACSHA256(key: key)
    defer { _ = cq_sha256_use_accelerated(1) }
    for size in [128, 16 << 10] {
      let body = [UInt8](repeating: 0x5A, count: size)
      let rounds = size <= 128 ? 400_000 : 4_000
      var timings: [String] = []
      for variant in ["SHA extensions", "portable C", "Swift"] {
        let available = cq_sha256_use_accelerated(variant == "SHA extensions" ? 1 : 0)
        if variant == "SHA extensions" && available == 0 { continue }
        var code = [UInt8](repeating: 0, count: 32)
        var sink: UInt8 = 0
        let start = nowNanos()
        for round in 0..<rounds {
          if variant == "Swift" {
            var keyed = swift
            withUnsafeBytes(of: UInt64(round)) { keyed.update($0) }
            keyed.update(body)
            sink ^= keyed.finalize()[0]
          } else {
            cq_hmac_sha256_frame(inner, outer, UInt64(round), body, body.count, &code)
            sink ^= code[0]
          }
        }
        let perFrame = Double(nowNanos() - start) / Double(rounds)
        timings.append(
          String(format: "%@ %.2f µs (%.0f MB/s)", variant, perFrame / 1000, Double(size) * 1e3 / perFrame))
        if variant != "Swift" && timings.count == 1 {
          report.add(
            "tcp", "frame code (HMAC-SHA-256) of a \(size) B frame", perFrame / 1000, "µs",
            note: "\(variant) (checksum byte \(sink))")
        }
      }
      report.add(
        "tcp", "frame code of a \(size) B frame, by implementation", 0, "", note: timings.joined(separator: "; "))
    }
  }

  /// Puts/s and latency with and without authentication, on fresh 3-process clusters run alternately (twice
  /// each, in A-B-B-A order), so both see the same machine.
  static func authenticationCost(_ report: BenchReport, root: String, fsync: Double, rtt: Double) async throws {
    let secrets = try BenchSecrets(root: root)
    var results: [String: [BenchCluster.Result]] = [:]
    for round in 0..<2 {
      for authenticated in round == 0 ? [false, true] : [true, false] {
        let cluster = try await BenchCluster.start(
          root: "\(root)/auth-\(round)-\(authenticated)", secrets: authenticated ? secrets : nil)
        for clients in [1, 256] {
          let result = try await cluster.puts(clients: clients, duration: .seconds(3))
          results["\(authenticated)-\(clients)", default: []].append(result)
        }
        cluster.stop()
      }
    }
    for clients in [1, 256] {
      let plain = results["false-\(clients)"] ?? []
      let authenticated = results["true-\(clients)"] ?? []
      let plainRate = plain.map(\.rate).reduce(0, +) / Double(max(1, plain.count))
      let authRate = authenticated.map(\.rate).reduce(0, +) / Double(max(1, authenticated.count))
      let plainP50 = plain.map(\.p50).reduce(0, +) / Double(max(1, plain.count))
      let authP50 = authenticated.map(\.p50).reduce(0, +) / Double(max(1, authenticated.count))
      report.add(
        "tcp", "insecure, \(clients) clients: puts/s (mean of 2 runs)", plainRate, "puts/s",
        note: String(
          format: "p50 %.0f µs; runs %@", plainP50,
          plain.map { String(format: "%.0f", $0.rate) }.joined(separator: ", ")))
      report.add(
        "tcp", "authenticated, \(clients) clients: puts/s (mean of 2 runs)", authRate, "puts/s",
        note: String(
          format: "p50 %.0f µs; %+.1f%% puts/s, %+.1f%% p50 against insecure; runs %@", authP50,
          (authRate / plainRate - 1) * 100, (authP50 / plainP50 - 1) * 100,
          authenticated.map { String(format: "%.0f", $0.rate) }.joined(separator: ", ")))
    }
  }

  // MARK: Raw socket baselines

  /// Runs `body` on a new thread and awaits its result.
  static func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
      let thread = Thread { continuation.resume(with: Result { try body() }) }
      thread.stackSize = 1 << 20
      thread.start()
    }
  }

  static func listener() throws -> (Int32, UInt16) {
    let fd = cq_blocking_tcp_socket(AF_INET)
    guard fd >= 0, cq_bind_listen(fd, "127.0.0.1", 0, 16) == 0 else { throw BenchFailure("listen failed: \(errno)") }
    return (fd, UInt16(cq_local_port(fd)))
  }

  static func dial(_ port: UInt16) throws -> Int32 {
    let fd = cq_blocking_tcp_socket(AF_INET)
    guard fd >= 0, cq_connect(fd, "127.0.0.1", Int32(port)) == 0 else { throw BenchFailure("connect failed: \(errno)") }
    _ = cq_tune_tcp(fd, 0, 0, 0)
    return fd
  }

  static func readExactly(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Bool {
    var done = 0
    while done < count {
      let n = read(fd, buffer + done, count - done)
      if n <= 0 { return false }
      done += n
    }
    return true
  }

  static func writeAll(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Bool {
    var done = 0
    while done < count {
      let n = cq_send(fd, buffer + done, count - done)
      if n <= 0 { return false }
      done += n
    }
    return true
  }

  /// Round trips of 64-byte messages between two blocking threads; microseconds per trip.
  static func rawRoundTrip(count: Int) async throws -> [Double] {
    let (listenFD, port) = try listener()
    defer { close(listenFD) }
    async let echo: Void = onThread {
      let fd = accept(listenFD, nil, nil)
      guard fd >= 0 else { return }
      defer { close(fd) }
      _ = cq_tune_tcp(fd, 0, 0, 0)
      let buffer = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 8)
      defer { buffer.deallocate() }
      while readExactly(fd, buffer, 64) { guard writeAll(fd, buffer, 64) else { return } }
    }
    let samples = try await onThread { () throws -> [Double] in
      let fd = try dial(port)
      defer { close(fd) }
      let buffer = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 8)
      defer { buffer.deallocate() }
      var samples: [Double] = []
      samples.reserveCapacity(count)
      for _ in 0..<count {
        let start = nowNanos()
        guard writeAll(fd, buffer, 64), readExactly(fd, buffer, 64) else { throw BenchFailure("echo failed") }
        samples.append(Double(nowNanos() - start) / 1000)
      }
      return samples
    }
    try await echo
    return samples
  }

  /// Frames per second streamed over one connection by a writer thread coalescing frames into 256 KiB
  /// writes and a reader thread walking their length prefixes: the physical limit the transport is held to.
  static func rawStream(frameBytes: Int, frames: Int) async throws -> Double {
    let (listenFD, port) = try listener()
    defer { close(listenFD) }
    let start = nowNanos()
    async let reader: Int = onThread {
      let fd = accept(listenFD, nil, nil)
      guard fd >= 0 else { return 0 }
      defer { close(fd) }
      let capacity = 256 << 10
      let buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity + frameBytes, alignment: 8)
      defer { buffer.deallocate() }
      var received = 0
      var pending = 0  // bytes of a partial frame carried to the next read
      var filled = 0
      while received < frames {
        let n = read(fd, buffer + filled, capacity - filled)
        if n <= 0 { break }
        filled += n
        var offset = 0
        while filled - offset >= 4 {
          let length = Int(buffer.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
          guard filled - offset >= 4 + length else { break }
          offset += 4 + length
          received += 1
        }
        pending = filled - offset
        if pending > 0 { memmove(buffer, buffer + offset, pending) }
        filled = pending
      }
      return received
    }
    let writer: Void = try await onThread {
      let fd = try dial(port)
      defer { close(fd) }
      let perBuffer = max(1, (256 << 10) / frameBytes)
      var chunk = [UInt8](repeating: 0x5A, count: perBuffer * frameBytes)
      for index in 0..<perBuffer {
        let length = UInt32(frameBytes - 4).littleEndian
        withUnsafeBytes(of: length) { chunk.replaceSubrange((index * frameBytes)..<(index * frameBytes + 4), with: $0) }
      }
      var sent = 0
      while sent < frames {
        let batch = min(perBuffer, frames - sent)
        // `chunk` holds at least one frame, so its base address exists.
        guard chunk.withUnsafeBytes({ writeAll(fd, $0.baseAddress!, batch * frameBytes) }) else {  // safe: non-empty
          throw BenchFailure("stream write failed")
        }
        sent += batch
      }
    }
    _ = writer
    let received = try await reader
    guard received == frames else { throw BenchFailure("raw stream received \(received) of \(frames)") }
    return Double(frames) * 1e9 / Double(nowNanos() - start)
  }

  /// A message of opaque bytes for the transport benchmark.
  struct Blob: WireCodable, Sendable {
    var bytes: [UInt8]
    func encode(to writer: inout WireWriter) { writer.writeBytes(bytes) }
    init(bytes: [UInt8]) { self.bytes = bytes }
    init(from reader: inout WireReader) throws(WireError) { bytes = try reader.readBytes() }
  }

  /// Frames per second from one endpoint to another over loopback, each endpoint on its own transport
  /// (its own event-loop thread, as in two processes). The frame size counts the length prefix and header.
  /// With `onNetworkThreads`, the producer runs on the sending transport's network thread and sends in turns of
  /// 256 frames (yielding to the loop between them, as a group's turn ends), and the consumer runs on the
  /// receiving transport's network thread.
  static func transportStream(
    frameBytes: Int, frames: Int, onNetworkThreads: Bool
  ) async throws -> (rate: Double, framesPerWrite: Double) {
    let overhead = 4 + 4 + 3 + 3  // length prefix, magic/version/protocol, group/from/to varints, bytes length
    let payload = [UInt8](repeating: 0x5A, count: max(0, frameBytes - overhead))
    let receiverSide = TCPTransport<Blob>(
      cluster: "bench", protocolNumber: WireProtocol.test, security: .insecure, logger: .disabled)
    let receiver = try await receiverSide.bind(1)
    let senderSide = TCPTransport<Blob>(
      cluster: "bench", protocolNumber: WireProtocol.test, addresses: [1: receiver.address], security: .insecure,
      logger: .disabled)
    let sender = try await senderSide.bind(2)
    receiverSide.setAddress(sender.address, for: 2)
    let senderLoop = onNetworkThreads ? try senderSide.makeLoopExecutor() : nil
    let receiverLoop = onNetworkThreads ? try receiverSide.makeLoopExecutor() : nil
    let start = nowNanos()
    let producer = Task(executorPreference: senderLoop) {
      let message = Blob(bytes: payload)
      for sent in 0..<frames {
        while true {
          do {
            try sender.send(message, to: 1)
            break
          } catch {
            // The queue is full: back off instead of spinning on a core the loop threads need.
            try? await Task.sleep(for: .microseconds(200))
          }
        }
        if onNetworkThreads && sent % 256 == 255 { await Task.yield() }
      }
    }
    let received = await withTaskExecutorPreference(receiverLoop) {
      var received = 0
      var batch: [Envelope<Blob>] = []
      batch.reserveCapacity(4096)
      while received < frames {
        guard await receiver.incoming.receive(into: &batch, limit: 4096) else { break }
        received += batch.count
        batch.removeAll(keepingCapacity: true)
      }
      return received
    }
    let elapsed = nowNanos() - start
    await producer.value
    let metrics = senderSide.metrics
    await sender.close()
    await receiver.close()
    withExtendedLifetime((senderLoop, receiverLoop)) {}  // they keep the loops running until the end
    guard received == frames else { throw BenchFailure("transport stream received \(received) of \(frames)") }
    return (Double(frames) * 1e9 / Double(elapsed), Double(metrics.framesSent) / Double(max(1, metrics.writeCalls)))
  }
}

/// A cluster secret and an `admin` credential for the benchmark cluster, in files private to their owner.
struct BenchSecrets {
  let secretFile: String
  let credentialsFile: String
  let credential: TCPClientCredential

  init(root: String) throws {
    secretFile = "\(root)/secret"
    credentialsFile = "\(root)/credentials"
    let hex = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    try Self.write(secretFile, Data((0..<32).map { _ in UInt8.random(in: 0...255) }))
    try Self.write("\(root)/admin.key", Data(hex.utf8))
    try Self.write(credentialsFile, Data("admin admin \(hex)\n".utf8))
    credential = try TCPClientCredential(name: "admin", secretFile: "\(root)/admin.key")
  }

  static func write(_ path: String, _ data: Data) throws {
    guard FileManager.default.createFile(atPath: path, contents: data, attributes: [.posixPermissions: 0o600]) else {
      throw BenchFailure("cannot write \(path)")
    }
  }
}

/// Three `quorum serve` processes (the release executable next to this one) with fsync always, with or
/// without authentication.
final class BenchCluster: @unchecked Sendable {
  // Safety of @unchecked Sendable: the processes are only started, queried and killed; the rest is immutable.
  let processes: [Process]
  let addresses: [TCPAddress]
  let credential: TCPClientCredential?
  let name: ClusterID = "bench"

  init(processes: [Process], addresses: [TCPAddress], credential: TCPClientCredential?) {
    self.processes = processes
    self.addresses = addresses
    self.credential = credential
  }

  static func executable() throws -> String {
    // QUORUM_BENCH_SERVER names another `quorum` build to start (an older commit's, for a before/after run).
    if let path = ProcessInfo.processInfo.environment["QUORUM_BENCH_SERVER"] { return path }
    let me = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
    let path = URL(fileURLWithPath: me).deletingLastPathComponent().appendingPathComponent("quorum").path
    guard FileManager.default.isExecutableFile(atPath: path) else {
      throw BenchFailure("no quorum executable at \(path): run `swift build -c release --product quorum` first")
    }
    return path
  }

  /// Starts three `quorum serve` members (`n1`…`n3`) under `root` on loopback ports the system picks, then
  /// rewrites the cluster file (`root/cluster.json`: the cluster `bench`, its members and `fields`) with the
  /// addresses they report. Terminates them all if one does not report its address.
  static func launch(
    root: String, fields: [String: Any] = [:], fsync: String, security: [String]
  ) throws -> (processes: [Process], addresses: [TCPAddress]) {
    try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    let executable = try executable()
    let file = "\(root)/cluster.json"
    func write(_ members: [String: String]) throws {
      var object = fields
      object["cluster"] = "bench"
      object["members"] = members
      try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: file), options: .atomic)
    }
    try write(["n1": "127.0.0.1:0", "n2": "127.0.0.1:0", "n3": "127.0.0.1:0"])
    // QUORUM_LOG_LAYOUT=shared|per-group: the servers' log layout (default: theirs, a shared log).
    let layout = ProcessInfo.processInfo.environment["QUORUM_LOG_LAYOUT"].map { ["--log-layout", $0] } ?? []
    // QUORUM_SERVER_LOG_LEVEL=info (say) shows the servers' own logs: snapshots, releases of the shared log.
    let level = ProcessInfo.processInfo.environment["QUORUM_SERVER_LOG_LEVEL"] ?? "error"
    var processes: [Process] = []
    var outputs: [Pipe] = []
    for id in 1...3 {
      let process = Process()
      process.executableURL = URL(fileURLWithPath: executable)
      process.arguments =
        [
          "serve", "--id", "n\(id)", "--listen", "127.0.0.1:0", "--cluster-file", file, "--data", "\(root)/n\(id)",
          "--fsync", fsync, "--log-level", level,
        ] + security + layout
      let pipe = Pipe()
      process.standardOutput = pipe
      try process.run()
      processes.append(process)
      outputs.append(pipe)
    }
    var addresses: [TCPAddress] = []
    for pipe in outputs {
      let line = String(decoding: pipe.fileHandleForReading.availableData, as: UTF8.self)
      guard let range = line.range(of: "listening on "),
        let address = TCPAddress(String(line[range.upperBound...].prefix { $0 != " " }))
      else {
        for process in processes { process.terminate() }
        throw BenchFailure("a member did not report its address: \(line)")
      }
      addresses.append(address)
    }
    try write(
      Dictionary(uniqueKeysWithValues: addresses.enumerated().map { ("n\($0.offset + 1)", $0.element.description) }))
    return (processes, addresses)
  }

  static func start(root: String, secrets: BenchSecrets? = nil) async throws -> BenchCluster {
    let (processes, addresses) = try launch(
      root: root, fsync: ProcessInfo.processInfo.environment["QUORUM_TCP_FSYNC"] ?? "always",
      security: secrets.map { ["--secret-file", $0.secretFile, "--credentials-file", $0.credentialsFile] }
        ?? ["--insecure"])
    let cluster = BenchCluster(processes: processes, addresses: addresses, credential: secrets?.credential)
    // Wait for a leader that has committed.
    var probeOptions = HostClientOptions()
    probeOptions.deadline = .seconds(1)
    let probe = TCPKVClient(
      cluster: "bench", members: addresses, options: probeOptions, credential: secrets?.credential)
    let deadline = ContinuousClock.now.advanced(by: .seconds(30))
    while ContinuousClock.now < deadline {
      if (try? await probe.put("warm", "up")) != nil { break }
    }
    await probe.close()
    return cluster
  }

  func stop() {
    for process in processes where process.isRunning { kill(process.processIdentifier, SIGTERM) }
    for process in processes { process.waitUntilExit() }
  }

  struct Result {
    var rate: Double
    var p50: Double
    var p99: Double
  }

  /// `clients` closed-loop clients putting 100-byte values; throughput and latency after a warm-up.
  func puts(clients: Int, duration: Duration) async throws -> Result {
    let connection = TCPRequestClient(cluster: name, credential: credential, logger: .disabled)
    defer { Task { await connection.close() } }
    let value = [UInt8](repeating: 42, count: 100)
    let members = addresses
    let warmUp = nowNanos() + 500_000_000
    let end = warmUp + duration.nanoseconds
    let results = try await withThrowingTaskGroup(of: (Int, [Double]).self) { group in
      for index in 0..<clients {
        group.addTask {
          let client = TCPKVClient(
            cluster: "bench", members: members, seed: UInt64(index + 1), connection: connection)
          var count = 0
          var samples: [Double] = []
          var n = 0
          while true {
            let t0 = nowNanos()
            if t0 >= end { break }
            try await client.put("c\(index)-\(n & 1023)", value)
            n += 1
            if t0 >= warmUp {
              count += 1
              if count & 3 == 0 || clients <= 16 { samples.append(Double(nowNanos() - t0) / 1000) }
            }
          }
          return (count, samples)
        }
      }
      var total = 0
      var all: [Double] = []
      for try await (count, samples) in group {
        total += count
        all.append(contentsOf: samples)
      }
      return (total, all)
    }
    let seconds = Double(duration.nanoseconds) / 1e9
    return Result(rate: Double(results.0) / seconds, p50: percentile(results.1, 0.5), p99: percentile(results.1, 0.99))
  }
}
