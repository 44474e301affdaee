import Foundation
import Quorum
import Synchronization

/// The lock service over TCP: three `quorum serve` processes with fsync always, clients taking and releasing
/// locks through ``QuorumHost/LockClient``, against the loopback round trip, `fdatasync` and a one-client put
/// (one commit through the same stack) measured in the same run.
enum LockBenchmarks {
  static func run(_ report: BenchReport) async throws {
    signal(SIGPIPE, SIG_IGN)
    let rtt = try await TCPBenchmarks.rawRoundTrip(count: 20_000)
    report.add(
      "locks", "baseline: loopback round trip, 64 B, blocking threads", percentile(rtt, 0.5), "µs",
      note: String(format: "p99 %.1f µs", percentile(rtt, 0.99)))
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("quorum-bench-locks-\(getpid())").path
    try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: root) }
    let fsync = try RaftBenchmarks.fsyncBaseline(root: root)
    report.add("locks", "baseline: 4 KiB append + fdatasync p50", fsync, "µs")

    let cluster = try await BenchCluster.start(root: root)
    defer { cluster.stop() }
    let seconds = Double(ProcessInfo.processInfo.environment["QUORUM_LOCK_SECONDS"] ?? "") ?? 3
    let duration = Duration.milliseconds(Int64(seconds * 1000))
    let commit = try await cluster.puts(clients: 1, duration: duration)
    report.add(
      "locks", "baseline: 1 client put (one commit), p50", commit.p50, "µs",
      note: String(format: "%.0f puts/s, p99 %.0f µs", commit.rate, commit.p99))

    let single = try await cycles(cluster, clients: 1, contended: true, duration: duration)
    report.add(
      "locks", "1 client, acquire+release cycles/s", single.rate, "cycles/s",
      note: String(
        format: "goal ≥ 1,600; cycle p50 %.0f µs = %.2f commits; %.2f entries per cycle", single.cycleP50,
        single.cycleP50 / commit.p50, single.entriesPerCycle))

    let puts8 = try await cluster.puts(clients: 8, duration: duration)
    report.add(
      "locks", "baseline: 8 clients put, puts/s", puts8.rate, "puts/s",
      note: String(format: "p50 %.0f µs, p99 %.0f µs", puts8.p50, puts8.p99))
    let parallel = try await cycles(cluster, clients: 8, contended: false, duration: duration)
    report.add(
      "locks", "8 clients, a lock each, acquire+release cycles/s", parallel.rate, "cycles/s",
      note: String(
        format: "cycle p50 %.0f µs = %.2f × the 8-client put p50; %.2f entries per cycle", parallel.cycleP50,
        parallel.cycleP50 / puts8.p50, parallel.entriesPerCycle))

    let contended = try await cycles(cluster, clients: 8, contended: true, duration: duration)
    report.add(
      "locks", "8 clients contending for one lock, cycles/s", contended.rate, "cycles/s",
      note: String(format: "goal ≥ 2,000; %.2f entries per cycle", contended.entriesPerCycle))
    report.add(
      "locks", "8 contending: hand-off (release sent → next granted) p50", contended.handOffP50, "µs",
      note: String(
        format: "p99 %.0f µs; p50 = %.2f × the 1-client put p50; %d hand-offs", contended.handOffP99,
        contended.handOffP50 / commit.p50, contended.handOffs))
  }

  struct CycleResult {
    var rate: Double
    var cycleP50: Double
    var handOffP50: Double
    var handOffP99: Double
    var handOffs: Int
    var entriesPerCycle: Double
  }

  /// When the last release was sent, so the next grant can be measured from it.
  final class HandOffClock: Sendable {
    private let state = Mutex<(releasedAt: UInt64, samples: [Double])>((0, []))

    /// A holder is about to send its release.
    func releasing() { state.withLock { $0.releasedAt = nowNanos() } }

    /// A client asked at `asked` and was granted at `granted`: a hand-off if a release was sent meanwhile (the
    /// lock is exclusive, so the grant that follows a release with waiters is the one that release made).
    func granted(asked: UInt64, at granted: UInt64, measuring: Bool) {
      state.withLock { s in
        if measuring && s.releasedAt > asked && granted >= s.releasedAt {
          s.samples.append(Double(granted - s.releasedAt) / 1000)
        }
      }
    }

    var samples: [Double] { state.withLock { $0.samples } }
  }

  /// `clients` closed-loop clients, each with its own ``QuorumHost/LockClient`` (own owner session and request
  /// session) over one shared connection, taking and releasing one lock (`contended`) or a lock each.
  static func cycles(_ cluster: BenchCluster, clients: Int, contended: Bool, duration: Duration) async throws
    -> CycleResult
  {
    let connection = TCPRequestClient(cluster: cluster.name, credential: cluster.credential, logger: .disabled)
    defer { Task { await connection.close() } }
    let members = cluster.addresses
    let name = cluster.name
    let prefix = "bench-\(clients)-\(contended)-\(nowNanos())"
    let before = try await commitIndex(cluster)
    let clock = HandOffClock()
    let warmUp = nowNanos() + 500_000_000
    let end = warmUp + duration.nanoseconds
    let results = try await withThrowingTaskGroup(of: (measured: Int, all: Int, samples: [Double]).self) { group in
      for index in 0..<clients {
        group.addTask {
          let client = TCPClient(cluster: name, members: members, seed: UInt64(index + 1), connection: connection)
          let lockName = contended ? prefix : "\(prefix)-\(index)"
          var measured = 0
          var all = 0
          var samples: [Double] = []
          while true {
            let t0 = nowNanos()
            if t0 >= end { break }
            let lease = try await client.locks.lock(lockName)
            // Hand-offs only mean something on one lock: with a lock each, releases are unrelated to grants.
            if contended {
              clock.granted(asked: t0, at: nowNanos(), measuring: t0 >= warmUp)
              clock.releasing()
            }
            guard try await client.locks.unlock(lease) else { throw BenchFailure("\(lease) was lost") }
            let t1 = nowNanos()
            all += 1
            if t0 >= warmUp && t1 <= end {
              measured += 1
              samples.append(Double(t1 - t0) / 1000)
            }
          }
          await client.close()
          return (measured, all, samples)
        }
      }
      var measured = 0
      var all = 0
      var samples: [Double] = []
      for try await result in group {
        measured += result.measured
        all += result.all
        samples += result.samples
      }
      return (measured, all, samples)
    }
    let after = try await commitIndex(cluster)
    let handOffs = clock.samples
    return CycleResult(
      rate: Double(results.0) / (Double(duration.nanoseconds) / 1e9), cycleP50: percentile(results.2, 0.5),
      handOffP50: percentile(handOffs, 0.5), handOffP99: percentile(handOffs, 0.99), handOffs: handOffs.count,
      entriesPerCycle: Double(after - before) / Double(max(1, results.1)))
  }

  /// The highest commit index any member reports for the default group.
  static func commitIndex(_ cluster: BenchCluster) async throws -> UInt64 {
    let client = TCPKVClient(cluster: cluster.name, members: cluster.addresses, credential: cluster.credential)
    defer { Task { await client.close() } }
    return try await client.client.host.statuses().map(\.commitIndex).max() ?? 0
  }
}
