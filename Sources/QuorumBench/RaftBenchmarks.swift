import Foundation
import QuorumCore
import QuorumKV
import QuorumRaft
import QuorumStorage

/// Raft on the in-process transport: put throughput and latency with memory and file storage, failover
/// time, and recovery time, each next to a baseline measured in the same run (mailbox round trip, fsync).
enum RaftBenchmarks {
  typealias Node = RaftNode<KVStore>

  static func run(_ report: BenchReport) async throws {
    let roundTrip = Double(try await MailboxBenchmarks.mailboxPingPong()) / Double(MailboxBenchmarks.roundTrips) / 1000
    report.add("raft", "baseline: mailbox ping-pong round trip", roundTrip, "µs")
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("quorum-bench-raft-\(getpid())").path
    try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: root) }
    let fsync = try fsyncBaseline(root: root)
    report.add("raft", "baseline: 4 KiB append + fdatasync p50", fsync, "µs")

    let only = ProcessInfo.processInfo.environment["QUORUM_RAFT_ONLY"]
    // Profiling aid: one case only, `QUORUM_RAFT_ONLY=256` (memory storage) or `=file:256` (file storage, fsync).
    if let only, let clients = Int(only.hasPrefix("file:") ? String(only.dropFirst(5)) : only) {
      let file = only.hasPrefix("file:")
      let r = try await puts(clients: clients, storage: file ? .file : .memory, root: root)
      let kind = file ? "file+fsync" : "memory"
      report.add("raft", "\(kind): \(clients) clients, puts/s", r.rate, "puts/s")
      report.add(
        "raft", "\(kind): \(clients) clients, p50 / p99 latency", r.p50, "µs",
        note: String(
          format: "p99 %.0f µs; p50 = %.1f mailbox round trips, %.2f × fsync", r.p99, r.p50 / roundTrip, r.p50 / fsync))
      return
    }
    for clients in [1, 16, 256] {
      let r = try await puts(clients: clients, storage: .memory, root: root)
      report.add("raft", "memory: \(clients) clients, puts/s", r.rate, "puts/s")
      report.add(
        "raft", "memory: \(clients) clients, p50 / p99 latency", r.p50, "µs",
        note: String(format: "p99 %.0f µs; p50 = %.1f mailbox round trips", r.p99, r.p50 / roundTrip))
    }
    for clients in [1, 16, 256] {
      let r = try await puts(clients: clients, storage: .file, root: root)
      report.add("raft", "file+fsync: \(clients) clients, puts/s", r.rate, "puts/s")
      report.add(
        "raft", "file+fsync: \(clients) clients, p50 / p99 latency", r.p50, "µs",
        note: String(format: "p99 %.0f µs; p50 = %.2f × fsync", r.p99, r.p50 / fsync))
    }
    // An active group (leaders never idle), at two timeout settings; then idle ones, whose leader fails once it
    // heartbeats `idleFactor` times less often: crashed (its endpoint closes, which the transport reports to the
    // followers, as TCP reports a dead process), or cut off silently (a partition, which nothing reports).
    for (label, timeout, heartbeat, tick, idleFactor, silent) in [
      (
        "150–300 ms", Duration.milliseconds(150)...Duration.milliseconds(300), Duration.milliseconds(50),
        Duration.milliseconds(10), 1, false
      ),
      (
        "12–24 ms", Duration.milliseconds(12)...Duration.milliseconds(24), Duration.milliseconds(4),
        Duration.milliseconds(1), 1, false
      ),
      (
        "150–300 ms, idle group (factor 5), leader cut off silently",
        Duration.milliseconds(150)...Duration.milliseconds(300),
        Duration.milliseconds(50), Duration.milliseconds(10), 5, true
      ),
      (
        "150–300 ms, idle group (factor 20), leader crashed (reported)",
        Duration.milliseconds(150)...Duration.milliseconds(300), Duration.milliseconds(50), Duration.milliseconds(10),
        20, false
      ),
    ] {
      let trials = ProcessInfo.processInfo.environment["QUORUM_FAILOVER_TRIALS"].flatMap(Int.init) ?? 100
      let times = try await failover(
        trials: trials, timeout: timeout, heartbeat: heartbeat, tick: tick, idleFactor: idleFactor, silent: silent)
      report.add(
        "raft", "failover \(label): p50 until a new leader commits", percentile(times, 0.5), "ms",
        note: String(
          format: "p99 %.0f ms, max %.0f ms over %d trials", percentile(times, 0.99), times.max() ?? 0, times.count))
    }
    let (entries, seconds) = try await recovery(root: root)
    report.add("raft", "restart from a \(entries)-entry WAL (recover + rebuild)", seconds * 1000, "ms")
  }

  // MARK: Baseline

  static func fsyncBaseline(root: String) throws -> Double {
    let file = try StorageBenchmarks.RawSyncFile("\(root)/fsync-baseline", preallocatedBytes: 0)
    defer { file.close() }
    let block = [UInt8](repeating: 7, count: 4096)
    var samples: [Double] = []
    for _ in 0..<200 { samples.append(try file.appendAndSync(block)) }
    return percentile(samples, 0.5)
  }

  /// What a commit's syncs cost when three nodes share one disk, as the 3-process benchmarks do: three threads
  /// append 4 KiB and `fdatasync` their own files at the same moment, round after round; returns the p50 time
  /// until the second of them is durable (a majority of three). On separate disks this would be
  /// ``fsyncBaseline(root:)``; on one disk the syncs queue behind each other's device flushes.
  ///
  /// With `durableOf` it returns the time until that many are durable instead, with `blockBytes` per append, in
  /// files first filled with zeros when `preallocated` (as the log's segments are).
  static func contendedFsyncBaseline(
    root: String, writers: Int = 3, rounds: Int = 200, durableOf: Int = 2, blockBytes: Int = 4096,
    preallocated: Bool = false
  ) throws -> Double {
    final class Writer: @unchecked Sendable {
      // Safety of @unchecked Sendable: `file` is used only by the writer's own thread, between the semaphores
      // that order it with the measuring thread; `finished` is written there and read after `done` is signalled.
      let file: StorageBenchmarks.RawSyncFile
      let go = DispatchSemaphore(value: 0)
      var finished: UInt64 = 0
      init(_ file: StorageBenchmarks.RawSyncFile) { self.file = file }
    }
    let writersList = try (0..<writers).map {
      Writer(
        try StorageBenchmarks.RawSyncFile(
          "\(root)/fsync-contended-\($0)", preallocatedBytes: preallocated ? Self.roundUpToMiB(rounds * blockBytes) : 0)
      )
    }
    defer { for writer in writersList { writer.file.close() } }
    let done = DispatchSemaphore(value: 0)
    let block = [UInt8](repeating: 7, count: blockBytes)
    for writer in writersList {
      Thread {
        for _ in 0..<rounds {
          writer.go.wait()
          _ = try? writer.file.appendAndSync(block)
          writer.finished = nowNanos()
          done.signal()
        }
      }.start()
    }
    var samples: [Double] = []
    for _ in 0..<rounds {
      let start = nowNanos()
      for writer in writersList { writer.go.signal() }
      for _ in writersList { done.wait() }
      let finishes = writersList.map(\.finished).sorted()
      samples.append(Double(finishes[min(max(1, durableOf) - 1, finishes.count - 1)] - start) / 1000)
    }
    return percentile(samples, 0.5)
  }

  /// The p50 time to append `blockBytes` to one zero-filled file and `fdatasync` it, over `rounds` appends: what
  /// one log shared by many writers would pay per turn for their writes together.
  static func preallocatedFsync(root: String, blockBytes: Int, rounds: Int = 200) throws -> Double {
    let file = try StorageBenchmarks.RawSyncFile(
      "\(root)/fsync-shared", preallocatedBytes: roundUpToMiB(rounds * blockBytes))
    defer { file.close() }
    let block = [UInt8](repeating: 7, count: blockBytes)
    var samples: [Double] = []
    for _ in 0..<rounds { samples.append(try file.appendAndSync(block)) }
    return percentile(samples, 0.5)
  }

  /// `bytes` rounded up to whole MiB, plus one (room for the file's zeros to cover every append).
  static func roundUpToMiB(_ bytes: Int) -> Int { ((bytes >> 20) + 2) << 20 }

  // MARK: Throughput

  enum StorageKind { case memory, file }

  struct PutResult {
    var rate: Double
    var p50: Double
    var p99: Double
  }

  final class Running: Sendable {
    let nodes: [NodeID: Node]
    let tasks: [Task<Void, any Error>]
    let storages: [any ConsensusStorage<LogEntry>]
    init(nodes: [NodeID: Node], tasks: [Task<Void, any Error>], storages: [any ConsensusStorage<LogEntry>]) {
      self.nodes = nodes
      self.tasks = tasks
      self.storages = storages
    }

    func leader() async throws -> Node {
      let deadline = ContinuousClock.now.advanced(by: .seconds(20))
      while ContinuousClock.now < deadline {
        for node in nodes.values {
          let s = await node.status
          if s.role == .leader && s.commitIndex >= s.lastIndex && s.commitIndex > 1 { return node }
        }
        try await Task.sleep(for: .milliseconds(1))
      }
      throw BenchFailure("no leader elected")
    }

    func stop() async throws {
      for node in nodes.values { node.stop() }
      for task in tasks { _ = await task.result }
      for storage in storages { try await storage.close() }
    }
  }

  static func start(
    _ configuration: RaftConfiguration, storage kind: StorageKind, root: String,
    transport: InProcessTransport<RaftMessage>
  ) throws -> Running {
    var nodes: [NodeID: Node] = [:]
    var tasks: [Task<Void, any Error>] = []
    var storages: [any ConsensusStorage<LogEntry>] = []
    for id in configuration.members {
      let storage: any ConsensusStorage<LogEntry> =
        switch kind {
        case .memory: MemoryStorage<LogEntry>()
        case .file: FileStorage<LogEntry>(directory: "\(root)/\(UUID().uuidString)", fsync: .always)
        }
      storages.append(storage)
      let node = Node(
        id: id, configuration: configuration, endpoint: try transport.bind(id), storage: storage, machine: KVStore(),
        logger: QuorumLogger(label: "bench", sink: NullLogSink()))
      nodes[id] = node
      tasks.append(Task { try await node.run() })
    }
    return Running(nodes: nodes, tasks: tasks, storages: storages)
  }

  static func puts(clients: Int, storage kind: StorageKind, root: String) async throws -> PutResult {
    let configuration = try RaftConfiguration {
      Members(1, 2, 3)
      Snapshots(every: 200_000, retain: 10_000)
      RequestLimits(timeout: .seconds(30), maxPending: 1 << 20)
    }
    let cluster = try start(
      configuration, storage: kind, root: root, transport: InProcessTransport(inboxCapacity: 1 << 16))
    let result = try await measurePuts(on: try await cluster.leader(), clients: clients)
    try await cluster.stop()
    return result
  }

  /// The put workload on `leader` (a Raft or Multi-Paxos node): `clients` closed-loop clients putting 100-byte
  /// values, warmed up for 300 ms, then measured for about two seconds.
  static func measurePuts<Log: ReplicatedLog>(on leader: Log, clients: Int) async throws -> PutResult
  where Log.Machine == KVStore {
    let value = [UInt8](repeating: 42, count: 100)
    _ = try await drive(leader, clients: clients, duration: .milliseconds(300), value: value)
    let (count, latencies, elapsed) = try await drive(leader, clients: clients, duration: .seconds(2), value: value)
    return PutResult(rate: Double(count) / elapsed, p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99))
  }

  /// Runs `clients` closed-loop clients against `leader` (a Raft or Multi-Paxos node) for `duration`;
  /// returns completed puts, sampled latencies in microseconds and the elapsed seconds.
  static func drive<Log: ReplicatedLog>(_ leader: Log, clients: Int, duration: Duration, value: [UInt8])
    async throws -> (Int, [Double], Double) where Log.Machine == KVStore
  {
    let start = nowNanos()
    let end = start + duration.nanoseconds
    let results = try await withThrowingTaskGroup(of: (Int, [Double]).self) { group in
      for c in 0..<clients {
        group.addTask {
          var count = 0
          var samples: [Double] = []
          samples.reserveCapacity(4096)
          while true {
            let t0 = nowNanos()
            if t0 >= end { break }
            _ = try await leader.propose(.put(key: "c\(c)-\(count & 1023)", value: value))
            count += 1
            if count & 7 == 0 || clients == 1 { samples.append(Double(nowNanos() - t0) / 1000) }
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
    return (results.0, results.1, Double(nowNanos() - start) / 1e9)
  }

  // MARK: Failover

  static func failover(
    trials: Int, timeout: ClosedRange<Duration>, heartbeat: Duration, tick: Duration, idleFactor: Int, silent: Bool
  ) async throws -> [Double] {
    let configuration = try RaftConfiguration {
      Members(1, 2, 3)
      ElectionTimeout(timeout)
      HeartbeatInterval(heartbeat)
      IdleHeartbeatFactor(idleFactor)
      TickInterval(tick)
      LeaseReads(clockDriftBound: tick)
      RequestLimits(timeout: .milliseconds(200))
    }
    var times: [Double] = []
    let transport = InProcessTransport<RaftMessage>()
    var storages: [NodeID: MemoryStorage<LogEntry>] = [:]
    var nodes: [NodeID: Node] = [:]
    var tasks: [NodeID: Task<Void, any Error>] = [:]
    func launch(_ id: NodeID) throws {
      let storage = storages[id] ?? MemoryStorage<LogEntry>()
      storages[id] = storage
      let node = Node(
        id: id, configuration: configuration, endpoint: try transport.bind(id), storage: storage, machine: KVStore(),
        logger: QuorumLogger(label: "bench", sink: NullLogSink()))
      nodes[id] = node
      tasks[id] = Task { try await node.run() }
    }
    for id in configuration.members { try launch(id) }
    for trial in 0..<trials {
      let leader = try await Running(nodes: nodes, tasks: [], storages: []).leader()
      let leaderID = leader.id
      // Let followers settle (heartbeats flowing) before the crash; an idle group, until its leader idles (a
      // minimum election timeout without requests, then a heartbeat round, with margin).
      try await Task.sleep(for: idleFactor == 1 ? heartbeat * 3 : timeout.upperBound + heartbeat * (idleFactor + 2))
      let crash = nowNanos()
      if silent {
        transport.isolate(leaderID)
      } else {
        leader.stop()
        _ = await tasks[leaderID]?.result
        nodes[leaderID] = nil
      }
      var committed = false
      while !committed {
        for (id, node) in nodes where id != leaderID {
          if (try? await node.propose(.put(key: "trial", value: [UInt8(trial & 0xff)]))) != nil {
            committed = true
            break
          }
        }
        if !committed { try await Task.sleep(for: .microseconds(200)) }
      }
      times.append(Double(nowNanos() - crash) / 1e6)
      if silent {
        transport.heal()  // The old leader rejoins as a follower: wait until it knows.
        while await leader.status.role == .leader { try await Task.sleep(for: .milliseconds(1)) }
      } else {
        try launch(leaderID)
      }
    }
    for node in nodes.values { node.stop() }
    for task in tasks.values { _ = await task.result }
    return times
  }

  // MARK: Recovery

  static func recovery(root: String) async throws -> (Int, Double) {
    let count = ProcessInfo.processInfo.environment["QUORUM_RECOVERY_ENTRIES"].flatMap(Int.init) ?? 1_000_000
    let directory = "\(root)/recovery"
    do {
      let storage = FileStorage<LogEntry>(directory: directory, fsync: .never)
      _ = try await storage.recover()
      let payload = [UInt8](repeating: 9, count: 100)
      var index: LogIndex = 1
      try await storage.write(StorageWrite(hardState: HardState(term: 1, vote: 1, commit: 0).wireBytes()))
      while index <= LogIndex(count) {
        var batch: [LogEntry] = []
        batch.reserveCapacity(4096)
        for _ in 0..<4096 where index <= LogIndex(count) {
          batch.append(LogEntry(index: index, term: 1, data: payload))
          index += 1
        }
        try await storage.write(StorageWrite(entries: batch))
      }
      try await storage.close()
    }
    let start = nowNanos()
    let storage = FileStorage<LogEntry>(directory: directory, fsync: .always)
    let recovered = try await storage.recover()
    let hardState = try HardState(wireBytes: recovered.hardState ?? [])
    let core = RaftCore(
      id: 1, membership: Membership(voters: [1, 2, 3]), hardState: hardState, entries: recovered.entries,
      random: SeededRandom(seed: 1))
    let seconds = Double(nowNanos() - start) / 1e9
    guard core.lastIndex == LogIndex(count) else {
      throw BenchFailure("recovered \(core.lastIndex) of \(count) entries")
    }
    try await storage.close()
    return (count, seconds)
  }
}
