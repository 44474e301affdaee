import Foundation
import Quorum
import Synchronization

/// The service host: what idle groups cost a process, how puts/s scale with the number of groups over TCP, and
/// Raft against Multi-Paxos serving the same workload over TCP. Every figure comes with the baseline measured in
/// the same run (a process hosting one group; one group; Raft).
///
/// `QUORUM_HOST_PARTS=idle`, `=groups`, `=engines` or `=workloads` (or a comma-separated mix) runs only those parts;
/// `QUORUM_HOST_IDLE_SECONDS` sets the idle measurement window (default 10), `QUORUM_HOST_GROUP_COUNTS` the group
/// counts compared (default `1,4,16`; the first is the baseline) and `QUORUM_HOST_FSYNC` the servers' fsync policy
/// (default `always`; `never` separates the disk's share from the CPU's).
enum HostBenchmarks {
  static func run(_ report: BenchReport) async throws {
    signal(SIGPIPE, SIG_IGN)
    let parts = ProcessInfo.processInfo.environment["QUORUM_HOST_PARTS"] ?? "idle,groups,engines,workloads"
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("quorum-bench-host-\(getpid())").path
    try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: root) }
    if parts.contains("idle") { try await idle(report) }
    if parts.contains("groups") { try await groupScaling(report, root: root) }
    if parts.contains("engines") { try await engines(report, root: root) }
    if parts.contains("workloads") { try await workloads(report, root: root) }
  }

  // MARK: - Idle groups

  /// The idle factor the members run with: `QUORUM_HOST_IDLE_FACTOR`, or the TCP default.
  static var idleFactorDescription: String {
    ProcessInfo.processInfo.environment["QUORUM_HOST_IDLE_FACTOR"] ?? "20 (the TCP default)"
  }

  static var idleSeconds: Int {
    Int(ProcessInfo.processInfo.environment["QUORUM_HOST_IDLE_SECONDS"] ?? "") ?? 10
  }

  /// CPU of idle groups: one process hosting single-member groups (the timer and the groups' loops only), then
  /// three processes each hosting a replica of every group (with heartbeats), each process measuring its own
  /// CPU time with `getrusage` over the same window.
  static func idle(_ report: BenchReport) async throws {
    let seconds = idleSeconds
    let empty = try await cpuOfThisProcess(over: seconds)
    report.add(
      "host", "baseline: this process idle, CPU", empty * 100, "% core", note: "over \(seconds) s, getrusage")
    for count in [100, 1000] {
      let cpu = try await singleMemberGroups(count, over: seconds)
      report.add(
        "host", "\(count) idle single-member Raft groups, 1 process, CPU", cpu * 100, "% core",
        note: "timer + loops only (no peers)")
    }
    for engine in [EngineKind.raft, .multiPaxos] {
      var baseline: Double?
      for count in [1, 100, 1000] {
        let result = try await idleProcesses(groups: count, engine: engine, over: seconds, killing: count == 100)
        let mean = result.cpu.reduce(0, +) / Double(result.cpu.count)
        let name = count == 1 ? "baseline: 1 \(engine) group" : "\(count) idle \(engine) groups"
        report.add(
          "host", "\(name), 3 processes: CPU per process", mean * 100, "% core",
          note: String(
            format: "per process %@; %@leader changes in the window: %d",
            result.cpu.map { String(format: "%.2f%%", $0 * 100) }
              .joined(separator: ", "),
            baseline.map { String(format: "%.1f × the 1-group figure; ", mean / max($0, 1e-9)) } ?? "",
            result.leaderChanges))
        if count == 1 { baseline = mean }
        if let failover = result.failover {
          report.add(
            "host", "\(count) idle \(engine) groups: kill -9 of a member, p50 until a group it led has a new leader",
            failover.p50, "ms",
            note: String(
              format: "max %.0f ms over the %d groups it led, %d of them within 50 ms (the others had heard it "
                + "less than an election timeout before); idle factor %@ (a silent failure waits 3–6 s at 20)",
              failover.max, failover.led, failover.quick, idleFactorDescription))
        }
      }
    }
  }

  /// CPU time (user + system) of this process, in seconds.
  static func processCPU() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
    return seconds(usage.ru_utime) + seconds(usage.ru_stime)
  }

  /// The fraction of one core this process used over `seconds`.
  static func cpuOfThisProcess(over seconds: Int) async throws -> Double {
    let start = processCPU()
    let wall = nowNanos()
    try await Task.sleep(for: .seconds(seconds))
    return (processCPU() - start) / (Double(nowNanos() - wall) / 1e9)
  }

  /// `count` single-member Raft groups in this process (in-process transport, memory storage): once each leads,
  /// the fraction of a core the process uses over `seconds`.
  static func singleMemberGroups(_ count: Int, over seconds: Int) async throws -> Double {
    let cluster = try Cluster(id: "idle") {
      Member("n1")
      Logging(NullLogSink())
      for index in 1...count { Group("g\(index)", id: UInt64(index)) { KeyValue() } }
    }
    return try await cluster.withLocalMembers { members in
      for group in members.map.groups { _ = try await members.leader(of: group.id, timeout: .seconds(60)) }
      try await Task.sleep(for: .seconds(1))
      return try await cpuOfThisProcess(over: seconds)
    }
  }

  /// Three member processes (this executable in `host-member` mode) hosting `groups` groups of `engine`, each
  /// on all three; once every group has a leader, each process measures its own CPU over `seconds`.
  static func idleProcesses(groups: Int, engine: EngineKind, over seconds: Int, killing: Bool = false) async throws
    -> (cpu: [Double], leaderChanges: Int, failover: (led: Int, quick: Int, p50: Double, max: Double)?)
  {
    let me = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
    var children: [ChildProcess] = []
    defer { for child in children { child.stop() } }
    for id in 1...3 {
      children.append(try ChildProcess(me, ["host-member", "n\(id)", "\(groups)", engine.rawValue]))
    }
    var peers: [String] = []
    for (index, child) in children.enumerated() {
      let line = try await child.expect("listening ")
      peers.append("n\(index + 1)=\(line.dropFirst("listening ".count))")
    }
    for child in children { try child.send("peers \(peers.joined(separator: ","))") }
    for child in children { _ = try await child.expect("settled", timeout: .seconds(120)) }
    for child in children { try child.send("measure \(seconds)") }
    var cpu: [Double] = []
    var changes = 0
    for child in children {
      let words = try await child.expect("cpu ", timeout: .seconds(seconds + 30)).split(separator: " ")
      guard words.count == 3, let fraction = Double(words[1]), let changed = Int(words[2]) else {
        throw BenchFailure("bad measurement line: \(words)")
      }
      cpu.append(fraction)
      changes += changed
    }
    guard killing else { return (cpu, changes, nil) }
    // Member n1 dies as a process does (SIGKILL: its sockets are closed by the kernel); the others time the
    // groups it led, from the moment before the kill (the monotonic clock is the machine's, shared by the
    // processes), until they see another leader. A group has one once either survivor sees it: the winner
    // knows at once, the other at the winner's first message.
    let killed = nowNanos()
    kill(children[0].process.processIdentifier, SIGKILL)
    children[0].process.waitUntilExit()
    for child in children.dropFirst() { try child.send("lost n1 \(killed)") }
    var led = 0
    var firstSeen: [Int: Double] = [:]
    for child in children.dropFirst() {
      let words = try await child.expect("elected ", timeout: .seconds(90)).split(separator: " ")
      guard words.count >= 2, let count = Int(words[1]) else { throw BenchFailure("bad failover line: \(words)") }
      led = max(led, count)
      for item in words.dropFirst(2).joined().split(separator: ",") {
        let parts = item.split(separator: ":")
        guard parts.count == 2, let group = Int(parts[0]), let millis = Double(parts[1]) else {
          throw BenchFailure("bad failover time: \(item)")
        }
        firstSeen[group] = min(firstSeen[group] ?? .infinity, millis)
      }
    }
    guard firstSeen.count == led else {
      throw BenchFailure("\(led - firstSeen.count) of \(led) groups elected no new leader")
    }
    let times = Array(firstSeen.values)
    let p50 = percentile(times, 0.5)
    let slowest = times.max() ?? 0
    let quick = times.filter { $0 < 50 }.count
    return (cpu, changes, (led, quick, p50, slowest))
  }

  /// `quorum-bench host-member nK GROUPS ENGINE`: runs member nK of a 3-member TCP cluster (port 0, memory
  /// storage, the `quorum serve` defaults) hosting GROUPS groups of ENGINE, and follows its parent's commands
  /// on standard input: `peers n1=addr,…`, then `measure SECONDS` (answered `cpu FRACTION LEADER-CHANGES`).
  static func member(_ arguments: [String]) async throws {
    guard arguments.count == 3, let id = NodeID(arguments[0]), let count = Int(arguments[1]),
      let engine = EngineKind(rawValue: arguments[2])
    else {
      throw BenchFailure("usage: quorum-bench host-member nK GROUPS raft|multi-paxos")
    }
    let idleFactor = ProcessInfo.processInfo.environment["QUORUM_HOST_IDLE_FACTOR"].flatMap { Int($0) }
    let cluster = try Cluster(id: "idle") {
      Member("n1", at: "127.0.0.1:0")
      Member("n2", at: "127.0.0.1:0")
      Member("n3", at: "127.0.0.1:0")
      Security.insecure
      Logging(StderrLogSink(minimumLevel: .error))
      RaftSettings {
        TickInterval(.milliseconds(10))
        ElectionTimeout(Duration.milliseconds(150)...Duration.milliseconds(300))
        HeartbeatInterval(.milliseconds(50))
        LeaseReads(clockDriftBound: .milliseconds(10))
        if let factor = idleFactor { IdleHeartbeatFactor(factor) }
      }
      PaxosSettings {
        TickInterval(.milliseconds(10))
        ElectionTimeout(Duration.milliseconds(150)...Duration.milliseconds(300))
        HeartbeatInterval(.milliseconds(50))
        LeaseReads(clockDriftBound: .milliseconds(10))
        if let factor = idleFactor { IdleHeartbeatFactor(factor) }
      }
      for index in 1...count { Group("g\(index)", id: UInt64(index), engine: engine) { KeyValue() } }
    }
    let server = try await cluster.start(id, listen: TCPAddress("127.0.0.1:0"))
    let running = Task { try await server.run() }
    say("listening \(try await server.waitUntilListening())")
    let peers = try await readCommand("peers ")
    for item in peers.split(separator: ",") {
      let parts = item.split(separator: "=", maxSplits: 1)
      guard parts.count == 2, let peer = NodeID(String(parts[0])), let address = TCPAddress(String(parts[1])) else {
        throw BenchFailure("bad peer \(item)")
      }
      if peer != id { server.transport.setAddress(address, for: peer) }
    }
    let groups = server.host.hostedGroups.compactMap { server.host.group($0) }
    func leaders() async -> [NodeID?] {
      var all: [NodeID?] = []
      for group in groups { all.append(await group.status().leader) }
      return all
    }
    while await leaders().contains(nil) { try await Task.sleep(for: .milliseconds(100)) }
    try await Task.sleep(for: .seconds(2))  // Let the last elections' traffic die down.
    say("settled")
    let window = try await readCommand("measure ")
    guard let seconds = Int(window) else { throw BenchFailure("bad window \(window)") }
    let before = await leaders()
    let cpu = try await cpuOfThisProcess(over: seconds)
    let after = await leaders()
    say("cpu \(cpu) \(zip(before, after).filter { $0 != $1 }.count)")
    let next = try? await readCommand("")
    let words = next?.split(separator: " ") ?? []
    if words.count == 3, words[0] == "lost", let lost = NodeID(String(words[1])), let start = UInt64(words[2]) {
      // The parent killed member `lost` at `start` (its monotonic clock, the machine's): time each group it led
      // until this member sees another leader.
      var waiting = Set(zip(groups.indices, after).filter { $0.1 == lost }.map(\.0))
      let led = waiting.count
      var times: [String] = []
      while !waiting.isEmpty, nowNanos() - start < 60_000_000_000 {
        for index in waiting.sorted() {
          if let leader = await groups[index].status().leader, leader != lost {
            times.append(String(format: "%d:%.2f", index, Double(nowNanos() - start) / 1e6))
            waiting.remove(index)
          }
        }
        try await Task.sleep(for: .milliseconds(2))
      }
      say("elected \(led) \(times.joined(separator: ","))")
      _ = try? await readCommand("quit")
    }
    await server.shutdown()
    try await running.value
  }

  /// Prints a line to the parent at once.
  static func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
  }

  /// Reads standard input until a line starting with `prefix`; returns the rest of it.
  static func readCommand(_ prefix: String) async throws -> String {
    while true {
      guard let line = try await TCPBenchmarks.onThread({ readLine() }) else {
        throw BenchFailure("standard input closed while waiting for '\(prefix)'")
      }
      if line.hasPrefix(prefix) { return String(line.dropFirst(prefix.count)) }
    }
  }

  // MARK: - Throughput over groups

  /// Puts/s at 256 clients on 3 processes hosting 1, 4 and 16 groups (each on all three, leaders spread
  /// evenly), run twice in the order 1, 4, 16, 16, 4, 1 so both halves see the same machine.
  static func groupScaling(_ report: BenchReport, root: String) async throws {
    var results: [Int: [LoadResult]] = [:]
    let counts = (ProcessInfo.processInfo.environment["QUORUM_HOST_GROUP_COUNTS"] ?? "1,4,16").split(separator: ",")
      .compactMap { Int($0) }
    guard let first = counts.first else { throw BenchFailure("QUORUM_HOST_GROUP_COUNTS names no count") }
    for (round, count) in (counts + counts.reversed()).enumerated() {
      let groups = (1...count).map { GroupLine(name: "g\($0)", id: UInt64($0), engine: .raft) }
      let cluster = try await GroupCluster.start(root: "\(root)/groups-\(round)", groups: groups)
      defer { cluster.stop() }
      let spread = try await cluster.spreadLeaders()
      var result = try await cluster.puts(clients: 256, duration: .seconds(3))
      result.note = spread
      results[count, default: []].append(result)
      cluster.stop()
    }
    // What the syncs of `count` logs on this one disk cost against one log that carries all their writes: each
    // group of a process writes and syncs a log of its own today.
    for count in counts where count > 1 {
      let share = 4096
      let separate = try RaftBenchmarks.contendedFsyncBaseline(
        root: root, writers: count, durableOf: count, blockBytes: share, preallocated: true)
      let shared = try RaftBenchmarks.preallocatedFsync(root: root, blockBytes: count * share)
      report.add(
        "host", "baseline: \(count) logs, 4 KiB + fdatasync each at once, all durable p50", separate, "µs",
        note: String(
          format: "one log with the %d writes in one, synced once: %.0f µs (%.1f× less)", count, shared,
          separate / shared))
    }
    let base = mean(results[first] ?? [], \.rate)
    for count in counts {
      let runs = results[count] ?? []
      let rate = mean(runs, \.rate)
      report.add(
        "host", "\(count == first ? "baseline: " : "")\(count) Raft group\(count == 1 ? "" : "s"), 256 clients, puts/s",
        rate, "puts/s",
        note: String(
          format:
            "%.2f × \(first) group\(first == 1 ? "" : "s"), fsync \(GroupCluster.fsync); p50 %.0f µs; "
            + "CPU per put: servers %.0f µs, client %.0f µs; runs %@; leaders %@",
          rate / base, mean(runs, \.p50), mean(runs, \.serverMicrosPerPut), mean(runs, \.clientMicrosPerPut),
          runs.map { String(format: "%.0f", $0.rate) }.joined(separator: ", "), runs.first?.note ?? ""))
    }
  }

  // MARK: - Raft against Multi-Paxos

  /// One group on Raft and on Multi-Paxos over TCP, the same workloads, alternating A-B-B-A.
  static func engines(_ report: BenchReport, root: String) async throws {
    var results: [String: [LoadResult]] = [:]
    let clientCounts = [1, 16, 256]
    for (round, engine) in [EngineKind.raft, .multiPaxos, .multiPaxos, .raft].enumerated() {
      let cluster = try await GroupCluster.start(
        root: "\(root)/engines-\(round)", groups: [GroupLine(name: "g1", id: 1, engine: engine)])
      defer { cluster.stop() }
      for clients in clientCounts {
        results["\(engine)-\(clients)", default: []].append(
          try await cluster.puts(clients: clients, duration: .seconds(3)))
      }
      cluster.stop()
    }
    for clients in clientCounts {
      let raft = results["raft-\(clients)"] ?? []
      let paxos = results["multi-paxos-\(clients)"] ?? []
      report.add(
        "host", "baseline: Raft, 1 group, \(clients) clients, puts/s", mean(raft, \.rate), "puts/s",
        note: String(
          format: "p50 %.0f µs; CPU per put: servers %.0f µs, client %.0f µs; runs %@", mean(raft, \.p50),
          mean(raft, \.serverMicrosPerPut), mean(raft, \.clientMicrosPerPut),
          raft.map { String(format: "%.0f", $0.rate) }.joined(separator: ", ")))
      report.add(
        "host", "Multi-Paxos, 1 group, \(clients) clients, puts/s", mean(paxos, \.rate), "puts/s",
        note: String(
          format: "%.2f × Raft; p50 %.0f µs; CPU per put: servers %.0f µs, client %.0f µs; runs %@",
          mean(paxos, \.rate) / max(mean(raft, \.rate), 1e-9), mean(paxos, \.p50), mean(paxos, \.serverMicrosPerPut),
          mean(paxos, \.clientMicrosPerPut), paxos.map { String(format: "%.0f", $0.rate) }.joined(separator: ", ")))
    }
  }

  // MARK: - Reads, mixed workloads and value sizes

  /// One group of each engine, 256 clients: gets at every consistency level, 90 % reads, and puts of 100 B,
  /// 1 KiB and 16 KiB values, each next to the 100-byte put figure of the same cluster (the baseline).
  static func workloads(_ report: BenchReport, root: String) async throws {
    let seconds = Int(ProcessInfo.processInfo.environment["QUORUM_HOST_SECONDS"] ?? "") ?? 3
    // QUORUM_HOST_WORKLOAD=16384 (say) runs only the workloads whose name contains it (for a profile of one).
    let only = ProcessInfo.processInfo.environment["QUORUM_HOST_WORKLOAD"]
    let workloads: [GroupCluster.Workload] = [
      .gets(.linearizable), .gets(.lease), .gets(.session), .gets(.stale), .mixed(readPercent: 90, .linearizable),
      .mixed(readPercent: 90, .session), .puts(valueBytes: 1024), .puts(valueBytes: 16 << 10),
    ].filter { only == nil || "\($0)".contains(only ?? "") }
    for engine in [EngineKind.raft, .multiPaxos] {
      let cluster = try await GroupCluster.start(
        root: "\(root)/workloads-\(engine)", groups: [GroupLine(name: "g1", id: 1, engine: engine)])
      defer { cluster.stop() }
      let base = try await cluster.load(clients: 256, duration: .seconds(seconds), workload: .puts(valueBytes: 100))
      report.add(
        "host", "baseline: \(engine), 256 clients, puts of 100 B", base.rate, "ops/s",
        note: String(format: "p50 %.0f µs; servers' CPU per op %.0f µs", base.p50, base.serverMicrosPerPut))
      for workload in workloads {
        let result = try await cluster.load(clients: 256, duration: .seconds(seconds), workload: workload)
        report.add(
          "host", "\(engine), 256 clients, \(workload)", result.rate, "ops/s",
          note: String(
            format: "%.2f × puts; p50 %.0f µs, p99 %.0f µs; servers' CPU per op %.0f µs", result.rate / base.rate,
            result.p50, result.p99, result.serverMicrosPerPut))
      }
      cluster.stop()
    }
  }

  static func mean(_ results: [LoadResult], _ field: KeyPath<LoadResult, Double>) -> Double {
    results.isEmpty ? 0 : results.map { $0[keyPath: field] }.reduce(0, +) / Double(results.count)
  }
}

/// A measured load: puts/s and latency percentiles (µs).
struct LoadResult {
  var rate: Double
  var p50: Double
  var p99: Double
  /// CPU time of the three servers together, and of the clients' process, per put (µs).
  var serverMicrosPerPut: Double = 0
  var clientMicrosPerPut: Double = 0
  var note = ""
}

/// One group of a ``GroupCluster``'s cluster file.
struct GroupLine {
  var name: String
  var id: UInt64
  var engine: EngineKind
}

/// Three `quorum serve` processes (the release executable next to this one, fsync always unless
/// `QUORUM_HOST_FSYNC` says otherwise, no authentication)
/// hosting the given groups, each on all three members.
final class GroupCluster: @unchecked Sendable {
  // Safety of @unchecked Sendable: the processes are only started, queried and stopped; the rest is immutable.
  let processes: [Process]
  let addresses: [TCPAddress]
  let groups: [GroupLine]

  init(processes: [Process], addresses: [TCPAddress], groups: [GroupLine]) {
    self.processes = processes
    self.addresses = addresses
    self.groups = groups
  }

  /// The servers' fsync policy (`QUORUM_HOST_FSYNC`, default `always`).
  static var fsync: String { ProcessInfo.processInfo.environment["QUORUM_HOST_FSYNC"] ?? "always" }

  static func start(root: String, groups: [GroupLine]) async throws -> GroupCluster {
    let (processes, addresses) = try BenchCluster.launch(
      root: root,
      fields: [
        "groups": groups.map { ["name": $0.name, "id": $0.id, "engine": $0.engine.rawValue, "services": ["kv"]] }
      ],
      fsync: fsync, security: ["--insecure"])
    let cluster = GroupCluster(processes: processes, addresses: addresses, groups: groups)
    try await cluster.waitForLeaders()
    return cluster
  }

  func client(deadline: Duration = .seconds(10)) -> TCPClient {
    var options = HostClientOptions()
    options.deadline = deadline
    return TCPClient(cluster: "bench", members: addresses, options: options)
  }

  /// The leader of every group, once each has one that has committed its log (waits at most 60 s).
  @discardableResult
  func waitForLeaders() async throws -> [GroupID: NodeID] {
    let probe = client(deadline: .seconds(2))
    defer { Task { await probe.close() } }
    let deadline = ContinuousClock.now.advanced(by: .seconds(60))
    while ContinuousClock.now < deadline {
      var leaders: [GroupID: NodeID] = [:]
      for status in (try? await probe.host.statuses()) ?? []
      where status.isLeader && status.commitIndex >= status.lastIndex {
        leaders[status.group] = status.node
      }
      if groups.allSatisfy({ leaders[GroupID(rawValue: $0.id)] != nil }) { return leaders }
      try await Task.sleep(for: .milliseconds(50))
    }
    throw BenchFailure("not every group elected a leader within 60 s")
  }

  /// Hands group k's leadership to member (k mod 3) + 1; returns how many groups each member leads.
  func spreadLeaders() async throws -> String {
    let admin = client()
    defer { Task { await admin.close() } }
    for group in groups {
      let target = NodeID(rawValue: (group.id - 1) % 3 + 1)
      try? await admin.host.transferLeadership(of: GroupID(rawValue: group.id), to: target)
    }
    let leaders = try await waitForLeaders()
    let counts = Dictionary(grouping: leaders.values, by: { $0 }).mapValues(\.count)
    return counts.keys.sorted().map { "\($0):\(counts[$0] ?? 0)" }.joined(separator: " ")
  }

  func stop() {
    for process in processes where process.isRunning { kill(process.processIdentifier, SIGTERM) }
    for process in processes { process.waitUntilExit() }
  }

  /// `clients` closed-loop clients putting 100-byte values on keys spread over every group. Each client first
  /// writes once to every group (opening its sessions) and only then does the measured window start.
  func puts(clients: Int, duration: Duration) async throws -> LoadResult {
    try await load(clients: clients, duration: duration, workload: .puts(valueBytes: 100))
  }

  /// What each closed-loop client of ``load(clients:duration:workload:)`` does.
  enum Workload: CustomStringConvertible {
    /// Puts of values this long.
    case puts(valueBytes: Int)
    /// Gets at this consistency (of keys written before the window).
    case gets(ReadConsistency)
    /// `readPercent` % gets at this consistency, the rest 100-byte puts.
    case mixed(readPercent: Int, ReadConsistency)

    var description: String {
      switch self {
      case .puts(let bytes): return "puts of \(bytes) B"
      case .gets(let consistency): return "\(consistency) gets"
      case .mixed(let percent, let consistency): return "\(percent) % \(consistency) gets, the rest puts"
      }
    }
  }

  /// `clients` closed-loop clients running `workload` on keys spread over every group (64 keys per client for
  /// reads, written before the window; 1,024 for puts). Each client first writes once to every group (opening its
  /// sessions) and only then does the measured window start. The rate counts operations.
  func load(clients: Int, duration: Duration, workload: Workload) async throws -> LoadResult {
    let connection = TCPRequestClient(cluster: "bench", logger: .disabled)
    defer { Task { await connection.close() } }
    let valueBytes: Int
    let readPercent: Int
    let consistency: ReadConsistency
    switch workload {
    case .puts(let bytes): (valueBytes, readPercent, consistency) = (bytes, 0, .linearizable)
    case .gets(let level): (valueBytes, readPercent, consistency) = (100, 100, level)
    case .mixed(let percent, let level): (valueBytes, readPercent, consistency) = (100, percent, level)
    }
    let value = [UInt8](repeating: 42, count: valueBytes)
    let keys = readPercent > 0 ? 64 : 1024
    let members = addresses
    let groupCount = groups.count
    let ready = ReadyCount()
    let pids = processes.map(\.processIdentifier)
    // CPU time of the servers and of this process (the clients) over the measured window.
    async let cpu: (servers: Double, clients: Double) = {
      while ready.value.load(ordering: .relaxed) < clients { try await Task.sleep(for: .milliseconds(1)) }
      try await Task.sleep(for: .milliseconds(500))
      let servers = pids.map(Self.cpuSeconds(of:)).reduce(0, +)
      let own = HostBenchmarks.processCPU()
      try await Task.sleep(for: duration)
      return (pids.map(Self.cpuSeconds(of:)).reduce(0, +) - servers, HostBenchmarks.processCPU() - own)
    }()
    let results = try await withThrowingTaskGroup(of: (Int, [Double]).self) { tasks in
      for index in 0..<clients {
        tasks.addTask {
          let client = TCPKVClient(cluster: "bench", members: members, seed: UInt64(index + 1), connection: connection)
          // Open a session in every group before the clock starts.
          var touched = Set<GroupID>()
          var n = 0
          while touched.count < groupCount && n < 1024 {
            let key = "c\(index)-\(n)"
            let group = try await client.kv.client.group(for: key, service: "kv")
            if touched.insert(group).inserted { try await client.put(key, value) }
            n += 1
          }
          if readPercent > 0 { for k in 0..<keys { try await client.put("c\(index)-\(k)", value) } }
          ready.value.add(1, ordering: .relaxed)
          while ready.value.load(ordering: .relaxed) < clients { try await Task.sleep(for: .milliseconds(1)) }
          let start = nowNanos()
          let warmUp = start + 500_000_000
          let end = warmUp + duration.nanoseconds
          var count = 0
          var samples: [Double] = []
          n = 0
          while true {
            let t0 = nowNanos()
            if t0 >= end { break }
            let key = "c\(index)-\(n % keys)"
            if readPercent > 0 && (readPercent == 100 || (n &* 7 &+ index) % 100 < readPercent) {
              _ = try await client.get(key, consistency: consistency)
            } else {
              try await client.put(key, value)
            }
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
      for try await (count, samples) in tasks {
        total += count
        all.append(contentsOf: samples)
      }
      return (total, all)
    }
    let seconds = Double(duration.nanoseconds) / 1e9
    let used = try await cpu
    let puts = Double(max(1, results.0))
    return LoadResult(
      rate: Double(results.0) / seconds, p50: percentile(results.1, 0.5), p99: percentile(results.1, 0.99),
      serverMicrosPerPut: used.servers * 1e6 / puts, clientMicrosPerPut: used.clients * 1e6 / puts)
  }

  /// The CPU time (user + system, seconds) process `pid` has used, from `/proc/<pid>/stat`.
  static func cpuSeconds(of pid: Int32) -> Double {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
      let close = text.lastIndex(of: ")")
    else { return 0 }
    // After the command name: state, ppid, …; utime and stime are the 12th and 13th fields from there.
    let fields = text[text.index(after: close)...].split(separator: " ")
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
  }
}

/// Clients ready to start the measured window.
final class ReadyCount: Sendable {
  let value = Atomic<Int>(0)
}

/// A child process spoken to in lines over its standard input and output.
final class ChildProcess: @unchecked Sendable {
  // Safety of @unchecked Sendable: `buffer` is guarded by its mutex; the process and pipes are set up in init and
  // then only written to, read from (one reader at a time: the parent awaits each line) and stopped.
  let process = Process()
  private let input = Pipe()
  private let output = Pipe()
  private let buffer = Mutex<[UInt8]>([])

  init(_ executable: String, _ arguments: [String]) throws {
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.standardInput = input
    process.standardOutput = output
    try process.run()
  }

  func send(_ line: String) throws {
    try input.fileHandleForWriting.write(contentsOf: Data((line + "\n").utf8))
  }

  /// The next line starting with `prefix` (earlier lines are skipped), waiting at most `timeout`.
  func expect(_ prefix: String, timeout: Duration = .seconds(60)) async throws -> String {
    let deadline = ContinuousClock.now.advanced(by: timeout)
    while ContinuousClock.now < deadline {
      while let line = takeLine() {
        if line.hasPrefix(prefix) { return line }
      }
      guard process.isRunning else { throw BenchFailure("a member exited (status \(process.terminationStatus))") }
      let handle = output.fileHandleForReading
      let data = try await TCPBenchmarks.onThread { handle.availableData }
      if data.isEmpty { try await Task.sleep(for: .milliseconds(10)) }
      buffer.withLock { $0 += data }
    }
    throw BenchFailure("no '\(prefix)' line from a member within \(timeout)")
  }

  private func takeLine() -> String? {
    buffer.withLock { bytes in
      guard let newline = bytes.firstIndex(of: 10) else { return nil }
      let line = String(decoding: bytes[..<newline], as: UTF8.self)
      bytes.removeSubrange(...newline)
      return line
    }
  }

  func stop() {
    try? send("quit")
    try? input.fileHandleForWriting.close()
    if process.isRunning { kill(process.processIdentifier, SIGTERM) }
    process.waitUntilExit()
  }
}
