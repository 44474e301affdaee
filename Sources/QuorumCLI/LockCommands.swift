import Foundation
import Quorum

/// `quorum lock acquire|release|status|list`: the lock service from the command line.
///
/// A lock belongs to an owner session that someone must keep alive. A command that exits cannot, so
/// `acquire` says so: the lease it prints lives until its TTL runs out in log time, unless `--hold` keeps the
/// process renewing it until Ctrl-C (then it releases the lock and closes the session).
enum LockCommands {
  static let usage = """
    usage: quorum lock acquire NAME [--ttl S] [--shared | --permits N] [--wait S] [--hold]
           quorum lock release NAME --session ID [--token T]
           quorum lock status NAME
           quorum lock list [PREFIX]
           (--cluster host:port[,…] [--cluster-id ID] | --cluster-file FILE) [--timeout-ms 5000]
           [--credential NAME:SECRET-FILE]
      acquire  prints "granted NAME MODE token T session ID". --ttl: the session's TTL in seconds (default 10,
               at least 1); --shared: a shared (reader) hold; --permits N: one permit of an N-permit semaphore;
               --wait S: queue for up to S seconds (default 0: only if free now; exit status 3 if not granted).
               Without --hold nothing renews the lease once the command exits: it lasts its TTL (in log time)
               unless released. With --hold the command renews it until Ctrl-C or SIGTERM, then releases it.
      release  releases NAME if session ID holds it (with token T, or whatever token it holds); exit status 3
               if it does not (released already, or the session expired and the lock may have passed on).
      status   holders with their tokens and expiry, waiters in FIFO order, all in log time.
      list     locks with holders or waiters, in every group carrying the lock service.
    """

  /// What `lock acquire` asks for, parsed.
  struct AcquireRequest: Equatable {
    var name: String
    var mode: LockMode = .exclusive
    var ttl: Duration = .seconds(10)
    var wait: Duration = .zero
    var hold = false
  }

  static func run(_ arguments: [String]) async -> Int32 {
    if arguments.contains("--help") || arguments.contains("-h") || arguments.isEmpty {
      print(usage)
      return arguments.isEmpty ? 2 : 0
    }
    var options = Options(arguments)
    do {
      let target = try ClusterTarget.parse(&options)
      let timeout = try options.milliseconds("--timeout-ms", default: 5000)
      switch options.words.first {
      case "acquire":
        let request = try parseAcquire(&options)
        return try await acquire(request, client: ClientCommands.client(target, timeout: timeout))
      case "release":
        let session = try parseSession(try options.value("--session"))
        let token = try options.value("--token").map(parseToken)
        try options.rejectUnknown()
        guard options.words.count == 2 else { throw CLIError.usage(usage) }
        let client = ClientCommands.client(target, timeout: timeout)
        defer { Task { await client.closeConnections() } }
        return try await release(options.words[1], session: session, token: token, host: client.host)
      case "status":
        try options.rejectUnknown()
        guard options.words.count == 2 else { throw CLIError.usage(usage) }
        let client = ClientCommands.client(target, timeout: timeout)
        defer { Task { await client.closeConnections() } }
        return try await status(options.words[1], host: client.host)
      case "list":
        try options.rejectUnknown()
        guard options.words.count <= 2 else { throw CLIError.usage(usage) }
        let client = ClientCommands.client(target, timeout: timeout)
        defer { Task { await client.closeConnections() } }
        return try await list(prefix: options.words.count == 2 ? options.words[1] : "", host: client.host)
      default:
        throw CLIError.usage(usage)
      }
    } catch let error as CLIError {
      printError("quorum lock: \(error)")
      if case .usage = error { return 2 }
      return 1
    } catch {
      printError("quorum lock: \(error)")
      return 1
    }
  }

  // MARK: - Parsing

  static func parseAcquire(_ options: inout Options) throws -> AcquireRequest {
    let ttl = try seconds("--ttl", try options.value("--ttl"))
    let wait = try seconds("--wait", try options.value("--wait"))
    let permitsText = try options.value("--permits")
    let shared = options.flag("--shared")
    let hold = options.flag("--hold")
    try options.rejectUnknown()
    guard options.words.count == 2 else { throw CLIError.usage(usage) }
    var request = AcquireRequest(name: options.words[1])
    if let ttl {
      guard ttl >= .seconds(1) else { throw CLIError.usage("--ttl \(ttl): the shortest lease is 1 second") }
      request.ttl = ttl
    }
    request.wait = wait ?? .zero
    request.hold = hold
    switch (shared, permitsText) {
    case (true, .some): throw CLIError.usage("--shared and --permits exclude each other")
    case (true, nil): request.mode = .shared
    case (false, let text?):
      guard let permits = UInt32(text), permits > 0 else {
        throw CLIError.usage("--permits \(text): expected a whole number of permits, at least 1")
      }
      request.mode = .semaphore(permits: permits)
    case (false, nil): break
    }
    return request
  }

  /// A duration in (possibly fractional) seconds, to the millisecond.
  static func seconds(_ option: String, _ text: String?) throws -> Duration? {
    guard let text else { return nil }
    guard let value = Double(text), value >= 0, value <= 86_400 else {
      throw CLIError.usage("\(option) \(text): expected seconds, 0 to 86400")
    }
    return .milliseconds(Int64((value * 1000).rounded()))
  }

  /// A session id as printed (`s12`) or bare (`12`).
  static func parseSession(_ text: String?) throws -> LockSessionID {
    guard let text else { throw CLIError.usage("release needs --session ID (as printed by acquire)") }
    guard let value = UInt64(text.hasPrefix("s") ? String(text.dropFirst()) : text) else {
      throw CLIError.usage("--session \(text): expected a session id such as s12")
    }
    return LockSessionID(value)
  }

  /// A fencing token as printed (`t57`) or bare (`57`).
  static func parseToken(_ text: String) throws -> FencingToken {
    guard let value = UInt64(text.hasPrefix("t") ? String(text.dropFirst()) : text) else {
      throw CLIError.usage("--token \(text): expected a fencing token such as t57")
    }
    return FencingToken(value)
  }

  // MARK: - Commands

  static func acquire(_ request: AcquireRequest, client: TCPClient) async throws -> Int32 {
    var options = LockClientOptions()
    options.ttl = request.ttl
    let locks = client.makeLockClient(options: options)
    let lease: LockLease
    do {
      guard let granted = try await locks.tryLock(request.name, mode: request.mode, timeout: request.wait) else {
        let holders = (try? await locks.status(of: request.name))?.holders ?? []
        let by = holders.map { "\($0.session) (\($0.mode), \($0.token))" }.joined(separator: ", ")
        printOut("not granted: \(request.name) is held" + (by.isEmpty ? "" : " by \(by)"))
        await locks.close()
        await client.closeConnections()
        return 3
      }
      lease = granted
    } catch LockClientError.refused(let error) {
      await locks.close()
      await client.closeConnections()
      throw CLIError.failed("refused: \(error)")
    }
    printOut("granted \(lease.name) \(lease.mode) token \(lease.token) session \(lease.session)")
    let expiry = try? await sessionExpiry(lease, host: client.host)
    guard request.hold else {
      printOut(
        "the lease is not renewed after this command exits: it expires \(ms(request.ttl)) after its last renewal"
          + (expiry.map { ", at log time \($0) ms" } ?? "") + ", unless released first with\n"
          + "  quorum lock release \(lease.name) --session \(lease.session) --token \(lease.token)")
      // Leave the session open (closing it would release the lock): it expires on its own.
      await client.closeConnections()
      return 0
    }
    printOut("holding \(lease.name) (TTL \(ms(request.ttl)), renewed in the background) until Ctrl-C")
    let signalled = await untilSignalOrLoss(lease)
    if signalled {
      let released = (try? await locks.unlock(lease)) ?? false
      printOut(released ? "released \(lease.name) (\(lease.token))" : "\(lease.name) was no longer held")
      await locks.close()
      await client.closeConnections()
      return 0
    }
    printError(
      "quorum lock: the lease on \(lease.name) (\(lease.token)) was lost: it could not be renewed in time; "
        + "another client may hold the lock now")
    await locks.close()
    await client.closeConnections()
    return 1
  }

  /// Waits for SIGINT or SIGTERM (true) or the loss of `lease` (false).
  static func untilSignalOrLoss(_ lease: LockLease) async -> Bool {
    signal(SIGINT, SIG_IGN)
    signal(SIGTERM, SIG_IGN)
    let (stream, continuation) = AsyncStream.makeStream(of: Bool.self)
    let queue = DispatchQueue(label: "quorum.lock.signals")
    let sources = [SIGINT, SIGTERM].map { number in
      let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
      source.setEventHandler { continuation.yield(true) }
      source.resume()
      return source
    }
    let watcher = Task {
      await lease.lost()
      continuation.yield(false)
    }
    var signalled = false
    for await event in stream {
      signalled = event
      break
    }
    watcher.cancel()
    for source in sources { source.cancel() }
    return signalled
  }

  static func sessionExpiry(_ lease: LockLease, host: HostClient) async throws -> UInt64? {
    let (bytes, _) = try await host.query(
      LockQuery.session(lease.session).wireBytes(), service: LockService.name, group: lease.group)
    guard case .session(let status?) = try LockQueryResult(wireBytes: bytes) else { return nil }
    return status.expiresAtMillis
  }

  static func release(_ name: String, session: LockSessionID, token: FencingToken?, host: HostClient) async throws
    -> Int32
  {
    let group = try await host.group(for: name, service: LockService.name)
    var held = token
    if held == nil {
      let status = try await lockStatus(name, group: group, host: host)
      held = status?.holders.first { $0.session == session }?.token
    }
    guard let held else {
      print("not released: \(session) does not hold \(name)")
      return 3
    }
    let answer = try await host.command(
      LockCommand.release(lock: name, session: session, token: held).wireBytes(), service: LockService.name,
      group: group)
    let response = try LockResponse(wireBytes: answer)
    if case .failed(let error) = response {
      // Another principal's session, say: only the principal that opened it may release with it.
      throw CLIError.failed("not released: \(error)")
    }
    guard case .released(let released) = response else {
      throw CLIError.failed("unexpected answer to a release: \(response)")
    }
    if released {
      print("released \(name) (session \(session), token \(held))")
      return 0
    }
    print(
      "not released: \(session) does not hold \(name) with \(held) (released already, or its session expired "
        + "and the lock may have passed on)")
    return 3
  }

  static func lockStatus(_ name: String, group: GroupID, host: HostClient) async throws -> LockStatus? {
    let (bytes, _) = try await host.query(LockQuery.lock(name).wireBytes(), service: LockService.name, group: group)
    guard case .lock(let status) = try LockQueryResult(wireBytes: bytes) else {
      throw CLIError.failed("unexpected answer to a lock query")
    }
    return status
  }

  static func counts(group: GroupID, host: HostClient) async throws -> LockTableCounts {
    let (bytes, _) = try await host.query(LockQuery.counts.wireBytes(), service: LockService.name, group: group)
    guard case .counts(let counts) = try LockQueryResult(wireBytes: bytes) else {
      throw CLIError.failed("unexpected answer to a counts query")
    }
    return counts
  }

  static func status(_ name: String, host: HostClient) async throws -> Int32 {
    let group = try await host.group(for: name, service: LockService.name)
    let groupName = (try? await host.clusterMap().group(group)?.name) ?? "\(group)"
    // Read the clock after the lock, so "expires in" never counts from a time before the state shown.
    let status = try await lockStatus(name, group: group, host: host)
    let now = try await counts(group: group, host: host).logTimeMillis
    print(render(name, group: groupName, status: status, now: now))
    return 0
  }

  /// The text of `quorum lock status`. Log time moves only with entries, so "now" is the log time of the last
  /// entry applied, and expiries are counted from it.
  static func render(_ name: String, group: String, status: LockStatus?, now: UInt64) -> String {
    guard let status else {
      return "\(name) (group \(group)): free, no holders and no waiters (log time of the last entry: \(now) ms)"
    }
    var lines = [
      "\(name) (group \(group)): \(status.kind) lock, last token \(status.lastToken); "
        + "log time of the last entry: \(now) ms",
      "holders: \(status.holders.count)",
    ]
    for holder in status.holders {
      lines.append(
        "  \(holder.session)  \(holder.mode)  token \(holder.token)  session expires at log time "
          + "\(holder.sessionExpiresAtMillis) ms (\(relative(holder.sessionExpiresAtMillis, now))) unless renewed")
    }
    lines.append("waiters: \(status.waiters.count) (granted first in, first out)")
    for (position, waiter) in status.waiters.enumerated() {
      let until = waiter.timeoutAtMillis.map { "gives up at log time \($0) ms (\(relative($0, now)))" }
      lines.append(
        "  \(position + 1). \(waiter.session)  \(waiter.mode)  queued at index \(waiter.queuedAt)  "
          + (until ?? "waits while its session lives"))
    }
    return lines.joined(separator: "\n")
  }

  static func relative(_ at: UInt64, _ now: UInt64) -> String {
    at >= now
      ? "\(ms(.milliseconds(Int64(at - now)))) after the last entry"
      : "\(ms(.milliseconds(Int64(now - at)))) before the last entry"
  }

  static func ms(_ duration: Duration) -> String {
    let millis = duration.nanoseconds / 1_000_000
    return millis % 1000 == 0 ? "\(millis / 1000) s" : String(format: "%.3f s", Double(millis) / 1000)
  }

  static func list(prefix: String, host: HostClient) async throws -> Int32 {
    let map = try await host.clusterMap()
    var total = 0
    for group in map.groups(carrying: LockService.name) {
      var after: String? = nil
      repeat {
        let (bytes, _) = try await host.query(
          LockQuery.list(prefix: prefix, after: after, limit: 1000).wireBytes(), service: LockService.name,
          group: group.id)
        guard case .locks(let page, let hasMore) = try LockQueryResult(wireBytes: bytes) else {
          throw CLIError.failed("unexpected answer to a list query")
        }
        for lock in page {
          print(
            "\(lock.name)  group \(group.name)  \(lock.kind)  holders \(lock.holders)  waiters \(lock.waiters)  "
              + "last token \(lock.lastToken)")
        }
        total += page.count
        after = hasMore ? page.last?.name : nil
      } while after != nil
    }
    print("\(total) locks held or waited for")
    return 0
  }

  /// The lock line of `quorum status` for `group`.
  static func summary(group: GroupID, host: HostClient) async -> String {
    do {
      let c = try await counts(group: group, host: host)
      return
        "  locks: \(c.locks) held or waited for, \(c.holds) holders, \(c.waiters) waiters, \(c.sessions) sessions; "
        + "log time \(c.logTimeMillis) ms at index \(c.appliedIndex)"
    } catch {
      return "  locks: unavailable (\(error))"
    }
  }
}
