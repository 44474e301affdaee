import Foundation
import Quorum
import Testing

@Suite("Replies within the frame limit", .timeLimit(.minutes(2)))
struct BoundedRepliesTests {
  @Test("a reply longer than the member's limit is refused with a typed error instead of being sent")
  func replyChecked() async throws {
    let cluster = try Cluster(id: "replies") { Member("n1") }
    try await withSingleMember(cluster, settings: cluster.hostSettings, maxReplyBytes: 4096) { host, kv in
      try await kv.put("big", [UInt8](repeating: 1, count: 10_000))
      try await kv.put("small", "ok")
      #expect(try await kv.getString("small") == "ok")
      do {
        _ = try await kv.get("big")
        Issue.record("a 10 kB reply went out under a 4 kB limit")
      } catch let error as QuorumClientError {
        guard case .rejected(.replyTooLarge(let bytes, 4096)) = error else {
          Issue.record("unexpected \(error)")
          return
        }
        #expect(bytes > 10_000)
      }
      // The raw handler never answers more than the limit, whoever asks.
      let request = HostRequest.query(
        group: .default, service: "kv", payload: KVQuery.get(key: "big").wireBytes(), consistency: .stale, atLeast: 0)
      let reply = await host.handle(bytes: request.wireBytes(), principal: "reader", role: .read)
      #expect(reply.count <= 4096)
      // A scan pages under the limit (the client halves its pages until they fit), so it still sees every key.
      for n in 0..<20 { try await kv.put("page/\(n)", [UInt8](repeating: 2, count: 1000)) }
      let pairs = try await kv.scan(prefix: "page/")
      #expect(pairs.count == 20 && pairs.allSatisfy { $0.value.count == 1000 })
    }
  }

  /// The member replaces a reply too long for it after applying the command: a transaction read so answered took
  /// its lock, and a commit so answered committed. The `txn` channel must not report it as a rejection (a command
  /// certainly not applied), which the client would take for a final no.
  @Test("a txn command whose reply is too large is not reported as turned away: it was applied")
  func txnReplyTooLargeIsNoRejection() async throws {
    let cluster = try Cluster(id: "replies-txn") {
      Member("n1")
      Group("g") { Transactions() }
    }
    try await withSingleMember(cluster, settings: cluster.hostSettings, maxReplyBytes: 4096) { _, kv in
      let channel = HostTxnChannel(kv.client)
      let db = ShardedTransactions(channel: channel, options: ShardedTransactionOptions(coordinator: 5))
      try await db.transaction { tx in tx.put("big", [UInt8](repeating: 1, count: 10_000)) }
      let id = try await db.nextID()
      let group = try await channel.group(for: "big")
      do {
        _ = try await channel.command(.read(id, key: "big"), group: group)
        Issue.record("a 10 kB value came back under a 4 kB limit")
      } catch let rejection as TxnShardRejection {
        Issue.record("an applied read reported as turned away: \(rejection)")
      } catch let error as QuorumClientError {
        guard case .rejected(.replyTooLarge) = error else {
          Issue.record("unexpected \(error)")
          return
        }
      }
      guard case .status(.active, _) = try await channel.query(.status(id), group: group) else {
        Issue.record("the read applied: its lock is held")
        return
      }
    }
  }

  @Test("over TCP with 1 MiB frames, a scan of 2.4 MB of values arrives whole, page by page")
  func scanLargerThanAFrame() async throws {
    var options = TCPTransportOptions()
    options.maxFrameBytes = 1 << 20
    let frames = options
    let cluster = try Cluster(id: "pages") {
      Member("n1", at: "127.0.0.1:0")
      Member("n2", at: "127.0.0.1:0")
      Member("n3", at: "127.0.0.1:0")
      Security.insecure
      TCPSettings(frames)
      Logging(NullLogSink())
      RaftSettings {
        TickInterval(.milliseconds(10))
        ElectionTimeout(Duration.milliseconds(200)...Duration.milliseconds(400))
        HeartbeatInterval(.milliseconds(50))
      }
    }
    let running = try await RunningCluster.start(cluster)
    _ = try await running.leader()
    var patient = HostClientOptions()
    patient.deadline = .seconds(60)
    let connection = TCPRequestClient(cluster: "pages", options: frames, logger: .disabled)
    let client = TCPKVClient(
      cluster: "pages", members: Array(running.addresses.values), options: patient, connection: connection)
    let value = [UInt8](repeating: 0x33, count: 60_000)
    for n in 0..<40 { try await client.put("v/\(String(format: "%02d", n))", value) }
    let pairs = try await client.scan(prefix: "v/")
    #expect(pairs.map(\.key) == (0..<40).map { "v/\(String(format: "%02d", $0))" })
    #expect(pairs.allSatisfy { $0.value == value })
    await connection.close()
    await running.stop()
  }
}
