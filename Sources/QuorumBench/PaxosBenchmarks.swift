import Foundation
import QuorumCore
import QuorumKV
import QuorumPaxos
import QuorumRaft
import QuorumStorage

/// Multi-Paxos next to Raft on the same workloads, in the same run (in-process, 3 nodes, 1/16/256
/// closed-loop clients, memory and fsync storage), reported as ratios; and single-decree choose latency
/// with one proposer, in mailbox round trips measured in the same run.
enum PaxosBenchmarks {
  typealias Node = MultiPaxosNode<KVStore>

  static func run(_ report: BenchReport) async throws {
    let roundTrip = Double(try await MailboxBenchmarks.mailboxPingPong()) / Double(MailboxBenchmarks.roundTrips) / 1000
    report.add("paxos", "baseline: mailbox ping-pong round trip", roundTrip, "µs")
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("quorum-bench-paxos-\(getpid())").path
    try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: root) }
    let fsync = try RaftBenchmarks.fsyncBaseline(root: root)
    report.add("paxos", "baseline: 4 KiB append + fdatasync p50", fsync, "µs")

    // Raft and Multi-Paxos alternate on each workload so that a slow period of the shared machine hits both;
    // with QUORUM_BENCH_ROUNDS > 1 each figure is the median of that many alternations.
    let rounds = ProcessInfo.processInfo.environment["QUORUM_BENCH_ROUNDS"].flatMap(Int.init) ?? 1
    // QUORUM_BENCH_ONLY=file:16,memory:1,synod runs only the named workloads.
    let only = ProcessInfo.processInfo.environment["QUORUM_BENCH_ONLY"].map {
      Set($0.split(separator: ",").map(String.init))
    }
    for kind in [RaftBenchmarks.StorageKind.memory, .file] {
      let label = kind == .memory ? "memory" : "file+fsync"
      for clients in [1, 16, 256] {
        if let only, !only.contains("\(kind == .memory ? "memory" : "file"):\(clients)") { continue }
        var raft: [RaftBenchmarks.PutResult] = []
        var paxos: [RaftBenchmarks.PutResult] = []
        var raftRetries = 0
        var paxosRetries = 0
        for _ in 0..<max(1, rounds) {
          raft.append(
            try await retrying(&raftRetries) { try await raftPuts(clients: clients, storage: kind, root: root) })
          paxos.append(
            try await retrying(&paxosRetries) { try await puts(clients: clients, storage: kind, root: root) })
        }
        let r = middle(raft)
        let p = middle(paxos)
        func disturbed(_ n: Int) -> String { n == 0 ? "" : "; \(n) run(s) repeated after a leadership change" }
        report.add(
          "paxos", "\(label): \(clients) clients, Raft puts/s", r.rate, "puts/s", note: disturbed(raftRetries))
        report.add(
          "paxos", "\(label): \(clients) clients, Multi-Paxos puts/s", p.rate, "puts/s",
          note: String(format: "%.2f × Raft", p.rate / r.rate) + disturbed(paxosRetries))
        let unit = kind == .memory ? roundTrip : fsync
        let unitName = kind == .memory ? "mailbox round trips" : "× fsync"
        report.add(
          "paxos", "\(label): \(clients) clients, Multi-Paxos p50 latency", p.p50, "µs",
          note: String(
            format: "Raft %.0f µs (%.2f ×); p99 %.0f µs vs %.0f; p50 = %.1f %@", r.p50, p.p50 / r.p50, p.p99, r.p99,
            p.p50 / unit, unitName))
      }
    }

    let trials = ProcessInfo.processInfo.environment["QUORUM_SYNOD_TRIALS"].flatMap(Int.init) ?? 400
    for distinguished in [false, true] where only?.contains("synod") ?? true {
      let samples = try await chooseLatency(trials: trials, distinguished: distinguished)
      let p50 = percentile(samples, 0.5)
      let name =
        distinguished
        ? "single-decree choose, 1 proposer owning ballot 0 (phase 2 only), p50"
        : "single-decree choose, 1 proposer (phases 1 and 2), p50"
      report.add(
        "paxos", name, p50, "µs",
        note: String(
          format: "= %.1f mailbox round trips; p99 %.0f µs; %d message delays", p50 / roundTrip,
          percentile(samples, 0.99), distinguished ? 2 : 4))
    }
  }

  /// Runs `measure` again (at most 3 times) if a leadership change interrupted it: the closed-loop clients
  /// talk to one leader, and on this shared machine a long stall can cost a leader its quorum. Each repeat is
  /// counted and reported.
  private static func retrying(
    _ retries: inout Int, _ measure: () async throws -> RaftBenchmarks.PutResult
  ) async throws -> RaftBenchmarks.PutResult {
    for attempt in 1...3 {
      do {
        return try await measure()
      } catch let error as ConsensusError where attempt < 3 {
        retries += 1
        print("  (a run was interrupted: \(error); repeating it)")
      }
    }
    return try await measure()
  }

  /// The run with the median throughput.
  private static func middle(_ results: [RaftBenchmarks.PutResult]) -> RaftBenchmarks.PutResult {
    let sorted = results.sorted { $0.rate < $1.rate }
    return sorted[sorted.count / 2]
  }

  // MARK: Multi-Paxos throughput

  final class Running: Sendable {
    let nodes: [NodeID: Node]
    let tasks: [Task<Void, any Error>]
    let storages: [any ConsensusStorage<PaxosEntry>]
    init(nodes: [NodeID: Node], tasks: [Task<Void, any Error>], storages: [any ConsensusStorage<PaxosEntry>]) {
      self.nodes = nodes
      self.tasks = tasks
      self.storages = storages
    }

    func leader() async throws -> Node {
      let deadline = ContinuousClock.now.advanced(by: .seconds(20))
      while ContinuousClock.now < deadline {
        for node in nodes.values {
          let s = await node.status
          if s.role == .leader && s.chosenThrough >= s.lastSlot { return node }
        }
        try await Task.sleep(for: .milliseconds(1))
      }
      throw BenchFailure("no Multi-Paxos leader elected")
    }

    func stop() async throws {
      for node in nodes.values { node.stop() }
      for task in tasks { _ = await task.result }
      for storage in storages { try await storage.close() }
    }
  }

  static func start(
    _ configuration: PaxosConfiguration, storage kind: RaftBenchmarks.StorageKind, root: String,
    transport: InProcessTransport<PaxosMessage>
  ) throws -> Running {
    var nodes: [NodeID: Node] = [:]
    var tasks: [Task<Void, any Error>] = []
    var storages: [any ConsensusStorage<PaxosEntry>] = []
    for id in configuration.members {
      let storage: any ConsensusStorage<PaxosEntry> =
        switch kind {
        case .memory: MemoryStorage<PaxosEntry>(mode: .replace)
        case .file: FileStorage<PaxosEntry>(directory: "\(root)/\(UUID().uuidString)", mode: .replace, fsync: .always)
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

  /// The Raft benchmark's workload (``RaftBenchmarks/puts(clients:storage:root:)``) on Raft, stopping the
  /// cluster even when a leadership change interrupts the run.
  static func raftPuts(clients: Int, storage kind: RaftBenchmarks.StorageKind, root: String) async throws
    -> RaftBenchmarks.PutResult
  {
    let configuration = try RaftConfiguration {
      Members(1, 2, 3)
      Snapshots(every: 200_000, retain: 10_000)
      RequestLimits(timeout: .seconds(30), maxPending: 1 << 20)
    }
    let cluster = try RaftBenchmarks.start(
      configuration, storage: kind, root: root, transport: InProcessTransport(inboxCapacity: 1 << 16))
    do {
      let result = try await RaftBenchmarks.measurePuts(on: try await cluster.leader(), clients: clients)
      try await cluster.stop()
      return result
    } catch {
      try await cluster.stop()
      throw error
    }
  }

  /// The same workload on Multi-Paxos: the same configuration values, the same clients.
  static func puts(clients: Int, storage kind: RaftBenchmarks.StorageKind, root: String) async throws
    -> RaftBenchmarks.PutResult
  {
    let configuration = try PaxosConfiguration {
      Members(1, 2, 3)
      Snapshots(every: 200_000, retain: 10_000)
      RequestLimits(timeout: .seconds(30), maxPending: 1 << 20)
    }
    let cluster = try start(
      configuration, storage: kind, root: root, transport: InProcessTransport(inboxCapacity: 1 << 16))
    do {
      let result = try await RaftBenchmarks.measurePuts(on: try await cluster.leader(), clients: clients)
      try await cluster.stop()
      return result
    } catch {
      try await cluster.stop()
      throw error
    }
  }

  // MARK: Single-decree latency

  /// Fresh 3-acceptor instances with one proposer and one learner; the latency of `propose` alone, in
  /// microseconds, once every role runs.
  static func chooseLatency(trials: Int, distinguished: Bool) async throws -> [Double] {
    let configuration = try PaxosConfiguration {
      Members(1, 2, 3)
      TickInterval(.milliseconds(5))
      Retransmit(after: .milliseconds(50))
      if distinguished { DistinguishedProposer(11) }
    }
    var samples: [Double] = []
    samples.reserveCapacity(trials)
    for trial in 0..<trials {
      let micros = try await Synod<Int>.withInProcess(
        configuration: configuration, proposers: [11], learners: [21]
      ) { synod in
        // Let every role start its loop before timing.
        for _ in 0..<3 { await Task.yield() }
        let t0 = nowNanos()
        let chosen = try await synod.propose(trial, via: 11)
        let elapsed = Double(nowNanos() - t0) / 1000
        guard chosen == trial else { throw BenchFailure("chose \(chosen), proposed \(trial)") }
        return elapsed
      }
      samples.append(micros)
    }
    return samples
  }
}
