import Dispatch
import Foundation
import Glibc
import Quorum
import Synchronization

/// `quorum serve`: runs one member of a TCP cluster until SIGINT or SIGTERM.
enum ServeCommand {
  static let usage = """
    usage: quorum serve --id n1 [--listen host:port] (--peers n2=host:port,… | --cluster-file FILE)
                        (--secret-file FILE [--credentials-file FILE] | --insecure)
                        [--cluster-id ID] [--data DIR] [--fsync always|batch|never] [--log-level LEVEL]
                        [--tick-ms 10] [--election-ms 150-300] [--heartbeat-ms 50] [--join [--groups a,b]]
                        [--quota-bytes SIZE] [--log-layout shared|per-group]
      --id            this member's node id
      --secret-file   the cluster secret every member proves to the others (HMAC-SHA-256 challenge-response,
                      then a code on every frame); the same file on every member, private to its owner:
                        head -c 32 /dev/urandom > secret && chmod 600 secret
      --credentials-file  the clients admitted: one "name role secret-hex" line each (role read, write or
                      admin; openssl rand -hex 32 makes a secret); private to its owner. Without it no
                      client is admitted. Clients give --credential name:file.
      --insecure      run without authentication: anyone who reaches the port and knows the cluster id can
                      join or act as an admin client (a warning is logged at start). Authentication is not
                      encryption: put the cluster on a private network or behind WireGuard, stunnel or a
                      service mesh if its traffic is confidential.
      --listen        where to listen (default: this member's address in the cluster file); port 0 picks a
                      free port, printed on standard output
      --peers         the other members (with --listen), or
      --cluster-file  JSON {"cluster": "orders", "members": {"n1": "127.0.0.1:7001", …}, "groups": […]}
                      (groups optional; see the README); re-read when it changes, so members'
                      addresses can be updated without a restart
      --cluster-id    the cluster id (default "quorum"; the cluster file's otherwise)
      --data          data directory (default ./data/<id>)
      --join          start empty and wait to be added (quorum members add) instead of founding the
                      groups with the members of the file; --groups names the groups joined (default:
                      every group that lists this member, or the default group)
      --fsync         always (default): every acknowledged write is on disk; batch: synced every 10 ms
                      (a vote or a change of term is still synced before it is answered); never: for
                      throw-away clusters
      --log-layout    shared: one write-ahead log for every group this member hosts, synced once for all of
                      them; per-group: a log per group. Default: what the data directory holds, shared if new
      --quota-bytes   the space quota (bytes, or with a suffix K, M, G; default 8G; none: no quota): past
                      it, writes are refused while reads, deletes and lock releases go on, until space
                      returns (after the next snapshot)
    Raises the soft open-file limit to the hard limit, recovers every group's storage, then prints
    "listening on host:port" once it accepts connections. SIGINT/SIGTERM shut down gracefully: stop
    accepting, answer requests in flight, sync and close storage; a second signal exits at once.
    """

  struct Settings {
    var id: NodeID
    var listen: TCPAddress?
    var clusterFile: String?
    var file: ClusterFile
    var data: String
    var fsync: FsyncPolicy
    var logLevel: LogLevel
    var tick: Duration
    var election: ClosedRange<Duration>
    var heartbeat: Duration
    var join: Set<String>
    var security: ClusterSecurity
    /// The `--quota-bytes` given: `nil` when not said, `.some(nil)` for `none`.
    var quotaBytes: Int??
    var logLayout: GroupLogLayout?
  }

  static func parse(_ arguments: [String]) throws -> Settings {
    var options = Options(arguments)
    guard let idText = try options.value("--id") else { throw CLIError.usage("--id is required\n\(usage)") }
    guard let id = NodeID(idText) else { throw CLIError.usage("--id \(idText) is not a node id (n1, n2, …)") }
    let listen = try options.value("--listen").map { text -> TCPAddress in
      do { return try TCPAddress.parse(text) } catch { throw CLIError.usage("--listen: \(error)") }
    }
    let clusterID = try options.value("--cluster-id")
    let clusterFile = try options.value("--cluster-file")
    let peers = try options.value("--peers")
    var file: ClusterFile
    if let clusterFile {
      guard peers == nil else { throw CLIError.usage("give either --peers or --cluster-file, not both") }
      file = try ClusterFile.load(clusterFile)
      if let clusterID, clusterID != file.cluster.rawValue {
        throw CLIError.usage("--cluster-id \(clusterID) contradicts the cluster file's '\(file.cluster)'")
      }
    } else {
      guard let listen else { throw CLIError.usage("--listen is required with --peers\n\(usage)") }
      file = ClusterFile(cluster: ClusterID(rawValue: clusterID ?? "quorum"), members: [id: listen])
      for item in (peers ?? "").split(separator: ",") {
        let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2, let peer = NodeID(parts[0]) else {
          throw CLIError.usage("--peers: expected n2=host:port, got '\(item)'")
        }
        do {
          file.members[peer] = try TCPAddress.parse(parts[1])
        } catch {
          throw CLIError.usage("--peers: \(error)")
        }
      }
    }
    guard file.members[id] != nil || listen != nil else {
      throw CLIError.usage("\(id) is not in the cluster file; add it or give --listen")
    }
    // A listener on every interface (0.0.0.0) keeps the file's address as the one clients are told.
    if let listen, file.members[id] == nil || !listen.isUnspecified { file.members[id] = listen }
    let fsync = try fsyncPolicy(try options.value("--fsync") ?? "always")
    let levelText = try options.value("--log-level") ?? "notice"
    guard let logLevel = LogLevel.allCases.first(where: { $0.description == levelText }) else {
      throw CLIError.usage("--log-level \(levelText): expected trace, debug, info, notice, warning or error")
    }
    func milliseconds(_ name: String, _ fallback: Int) throws -> Duration {
      guard let text = try options.value(name) else { return .milliseconds(fallback) }
      guard let value = Int(text), value > 0 else { throw CLIError.usage("\(name) \(text): expected milliseconds") }
      return .milliseconds(value)
    }
    let tick = try milliseconds("--tick-ms", 10)
    let heartbeat = try milliseconds("--heartbeat-ms", 50)
    var election = Duration.milliseconds(150)...Duration.milliseconds(300)
    if let text = try options.value("--election-ms") {
      let bounds = text.split(separator: "-").compactMap { Int($0) }
      guard bounds.count == 2, bounds[0] > 0, bounds[0] <= bounds[1] else {
        throw CLIError.usage("--election-ms \(text): expected MIN-MAX in milliseconds")
      }
      election = Duration.milliseconds(bounds[0])...Duration.milliseconds(bounds[1])
    }
    let data = try options.value("--data") ?? "data/\(id)"
    let joinGroups = try options.value("--groups")
    var join: Set<String> = []
    if options.flag("--join") {
      if let joinGroups {
        join = Set(joinGroups.split(separator: ",").map(String.init))
      } else if file.groups.isEmpty {
        join = ["default"]
      } else {
        join = Set(file.groups.filter { $0.members.contains(id) }.map(\.name))
      }
    } else if joinGroups != nil {
      throw CLIError.usage("--groups goes with --join")
    }
    let security = try parseSecurity(&options)
    let quotaBytes = try options.value("--quota-bytes").map { text -> Int? in
      if text == "none" { return nil }
      guard let bytes = parseSize(text), bytes >= 1 << 20 else {
        throw CLIError.usage(
          "--quota-bytes \(text): expected a size of at least 1M (bytes, or with K, M or G), or none")
      }
      return bytes
    }
    let logLayout = try options.value("--log-layout").map { text -> GroupLogLayout in
      switch text {
      case "shared": return .shared
      case "per-group": return .perGroup
      default: throw CLIError.usage("--log-layout \(text): expected shared or per-group")
      }
    }
    try options.rejectUnknown()
    if let stray = options.words.first { throw CLIError.usage("unexpected argument '\(stray)'\n\(usage)") }
    return Settings(
      id: id, listen: listen, clusterFile: clusterFile, file: file, data: data,
      fsync: fsync, logLevel: logLevel, tick: tick, election: election, heartbeat: heartbeat, join: join,
      security: security, quotaBytes: quotaBytes, logLayout: logLayout)
  }

  /// `123`, `64K`, `512M`, `8G` (powers of 1024; `KiB`, `MiB`, `GiB` too).
  static func parseSize(_ text: String) -> Int? {
    let units: [(String, Int)] = [
      ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30),
    ]
    for (suffix, scale) in units where text.hasSuffix(suffix) {
      guard let number = Int(text.dropLast(suffix.count)), number >= 0 else { return nil }
      let (bytes, overflow) = number.multipliedReportingOverflow(by: scale)
      return overflow ? nil : bytes
    }
    return Int(text)
  }

  /// `--secret-file FILE [--credentials-file FILE]` or `--insecure`: one of the two must be given.
  static func parseSecurity(_ options: inout Options) throws -> ClusterSecurity {
    let secretFile = try options.value("--secret-file")
    let credentialsFile = try options.value("--credentials-file")
    if options.flag("--insecure") {
      guard secretFile == nil && credentialsFile == nil else {
        throw CLIError.usage("--insecure contradicts --secret-file and --credentials-file")
      }
      return .insecure
    }
    guard let secretFile else {
      throw CLIError.usage(
        "give --secret-file FILE (and --credentials-file FILE to admit clients), or --insecure to run without "
          + "authentication")
    }
    return .authenticated(clusterSecretFile: secretFile, credentialsFile: credentialsFile)
  }

  static func cluster(_ s: Settings) throws -> Cluster {
    let members = s.file.members.keys.sorted().compactMap { id in s.file.members[id].map { (id, $0) } }
    do {
      return try Cluster(id: s.file.cluster) {
        for (id, address) in members { Member(id, at: address.description) }
        Groups(s.file.groups)
        DataDirectory(s.data, fsync: s.fsync, layout: s.logLayout)
        switch s.security {
        case .insecure: Security.insecure
        case .authenticated(let secret, let credentials):
          Security(clusterSecretFile: secret, credentialsFile: credentials)
        }
        Logging(StderrLogSink(minimumLevel: s.logLevel))
        // Not said: the cluster's default quota.
        if let quota = s.quotaBytes { quota.map { SpaceQuota(bytes: $0) } ?? SpaceQuota.unlimited }
        RaftSettings {
          TickInterval(s.tick)
          ElectionTimeout(s.election)
          HeartbeatInterval(s.heartbeat)
          LeaseReads(clockDriftBound: s.tick)
        }
        PaxosSettings {
          TickInterval(s.tick)
          ElectionTimeout(s.election)
          HeartbeatInterval(s.heartbeat)
          LeaseReads(clockDriftBound: s.tick)
        }
      }
    } catch {
      throw CLIError.failed("invalid cluster: \(error)")
    }
  }

  /// For harnesses that start members as child processes (`QUORUM_EXIT_WITH_PARENT=1`): the member exits once
  /// its parent has gone, so that a test process that crashed does not leave it running and serving. Checked
  /// every 500 ms; `prctl(PR_SET_PDEATHSIG)` would follow the thread that spawned the member, not the process,
  /// and a pool thread may end long before the test does.
  static func exitWithParent() {
    let parent = getppid()
    Thread.detachNewThread {
      while getppid() == parent { usleep(500_000) }
      printError("quorum serve: the process that started this member is gone; exiting")
      exit(1)
    }
  }

  /// The policy `--fsync` names.
  static func fsyncPolicy(_ text: String) throws -> FsyncPolicy {
    switch text {
    case "always": return .always
    case "batch": return .batch(interval: .milliseconds(10))
    case "never": return .never
    case let other: throw CLIError.usage("--fsync \(other): expected always, batch or never")
    }
  }

  static func run(_ arguments: [String]) async -> Int32 {
    if arguments.contains("--help") || arguments.contains("-h") {
      print(usage)
      return 0
    }
    signal(SIGPIPE, SIG_IGN)
    if ProcessInfo.processInfo.environment["QUORUM_EXIT_WITH_PARENT"] == "1" { exitWithParent() }
    // Peers, clients and storage all take descriptors; many systems start processes with a soft limit of 1024.
    if let (before, after) = OpenFileLimit.raiseSoftLimitToHard(), after > before {
      printError("quorum serve: raised the open-file limit from \(before) to \(after)")
    }
    let settings: Settings
    let cluster: Cluster
    do {
      settings = try parse(arguments)
      cluster = try self.cluster(settings)
    } catch {
      printError("quorum serve: \(error)")
      return 2
    }
    let server: ClusterMemberServer
    do {
      // The data directory is the member's own; the cluster's DataDirectory is only a default.
      server = try await cluster.start(
        settings.id, listen: settings.listen, dataDirectory: settings.data, joining: settings.join)
    } catch {
      printError("quorum serve: cannot start \(settings.id): \(error)")
      return 1
    }
    let announce = Task {
      guard let address = try? await server.waitUntilListening() else { return }
      printOut(
        "quorum serve: \(settings.id) listening on \(address) (cluster \(cluster.id), "
          + "\(counted(server.host.hostedGroups.count, "group")))")
    }

    signal(SIGINT, SIG_IGN)
    signal(SIGTERM, SIG_IGN)
    let signalQueue = DispatchQueue(label: "quorum.signals")
    let received = Atomic<Int>(0)
    let sources = [SIGINT, SIGTERM].map { number in
      let source = DispatchSource.makeSignalSource(signal: number, queue: signalQueue)
      source.setEventHandler {
        // Signals that arrive together are delivered as one event with their count.
        let count = max(1, Int(clamping: source.data))
        let total = received.add(count, ordering: .relaxed).newValue
        if total - count == 0 {
          printError("quorum serve: \(settings.id) received signal \(number), shutting down (again to exit at once)")
          Task { await server.shutdown() }
        }
        if total >= 2 {
          // A graceful shutdown can wait for requests in flight (a long watch, a slow disk): a second signal
          // means now. Written data is safe (the log recovers), only replies in flight are lost.
          printError("quorum serve: \(settings.id) received a second signal, exiting at once")
          _exit(128 + number)
        }
      }
      source.resume()
      return source
    }
    let reload = settings.clusterFile.map { path in
      Task { await followClusterFile(path, server: server, own: settings.id, initial: settings.file) }
    }
    var status: Int32 = 0
    do {
      try await server.run()
    } catch {
      printError("quorum serve: \(settings.id) stopped with an error: \(error)")
      status = 1
    }
    announce.cancel()
    reload?.cancel()
    for source in sources { source.cancel() }
    printOut("quorum serve: \(settings.id) stopped")
    return status
  }

  /// Re-reads the cluster file when it changes and applies the members' new addresses (a bad file is
  /// reported and ignored: the member keeps its current addresses).
  static func followClusterFile(_ path: String, server: ClusterMemberServer, own: NodeID, initial: ClusterFile) async {
    var current = initial
    var lastModified = modificationTime(path)
    while !Task.isCancelled {
      try? await Task.sleep(for: .milliseconds(200))
      let modified = modificationTime(path)
      guard modified != lastModified else { continue }
      lastModified = modified
      do {
        let file = try ClusterFile.load(path)
        guard file.cluster == current.cluster else {
          printError("quorum serve: ignoring \(path): its cluster id changed to '\(file.cluster)'")
          continue
        }
        for (id, address) in file.members where id != own && current.members[id] != address {
          server.transport.setAddress(address, for: id)
          printError("quorum serve: \(id) is now at \(address)")
        }
        current = file
      } catch {
        printError("quorum serve: ignoring the changed cluster file: \(error)")
      }
    }
  }

  struct FileStamp: Equatable {
    var seconds: Int
    var nanoseconds: Int
    var size: Int
  }

  static func modificationTime(_ path: String) -> FileStamp? {
    var info = stat()
    guard stat(path, &info) == 0 else { return nil }
    return FileStamp(seconds: info.st_mtim.tv_sec, nanoseconds: info.st_mtim.tv_nsec, size: Int(info.st_size))
  }
}
