import QuorumCore
import QuorumHost
import QuorumKV
import QuorumLocks
import QuorumSimulation
import QuorumTestSupport
import QuorumTransactions
import Testing

/// Hostile input for what a served member decodes from the network: a client's requests and the service
/// commands and queries they carry, the replies a client decodes, and the frames peers exchange. Damaged in
/// seeded ways, each must decode to a value that survives re-encoding or be refused with a `WireError`, never
/// stop the process.
@Suite("Host and service wire formats under hostile input")
struct HostWireFuzzTests {
  static let group = GroupID(rawValue: 3)

  static var map: ClusterMap {
    ClusterMap(
      cluster: "fuzz", members: [1: "127.0.0.1:7001", 2: "127.0.0.1:7002", 3: ""],
      groups: [
        GroupSpec(id: .default, name: "main", members: [1, 2, 3], services: ["kv", "locks"]),
        GroupSpec(
          id: group, name: "accounts", engine: .multiPaxos, members: [2, 3], services: ["kv", "txn"],
          slots: [SlotRange(0, 2047), SlotRange(3000, 3100)]),
      ])
  }

  static var kvCommands: [KVCommand] {
    [
      .put(key: "greeting", value: Array("hello".utf8)), .delete(key: "k/ü/1"),
      .compareAndSwap(key: "n", expected: nil, new: [1, 2, 3]), .compareAndSwap(key: "n", expected: [7], new: nil),
    ]
  }

  static var lockCommands: [LockCommand] {
    let session = LockSessionID(rawValue: 77)
    return [
      .openSession(ttlMillis: 10_000), .keepAlive(session: session), .closeSession(session: session),
      .acquire(lock: "orders", session: session, mode: .exclusive, wait: true, waitTimeoutMillis: 500),
      .acquire(lock: "pool", session: session, mode: .semaphore(permits: 4), wait: false, waitTimeoutMillis: nil),
      .acquire(lock: "doc", session: session, mode: .shared, wait: true, waitTimeoutMillis: nil),
      .release(lock: "orders", session: session, token: FencingToken(rawValue: 1234)),
      .cancelWait(lock: "orders", session: session), .cancelWait(lock: "orders", session: session, queuedAt: 90),
      .advanceTime,
    ]
  }

  static var txnCommands: [TxnShardCommand] {
    let id = TxnID(coordinator: 2, sequence: 9, startedAtMillis: 1_700_000_000_000)
    return [
      .read(id, key: "alice"),
      .prepare(
        id, writes: [TxnWrite(key: "alice", value: [1]), TxnWrite(key: "bob", value: nil)],
        participants: [.default, group], recordGroup: group),
      .commit(id), .abort(id), .commitLocal(id, reads: ["alice"], writes: [TxnWrite(key: "carol", value: [])]),
      .advanceTime,
    ]
  }

  static var requests: [HostRequest] {
    var requests: [HostRequest] = [
      .registerSession(group: group), .status(group: nil), .status(group: group), .clusterMap,
      .membership(group: group, .addVoter(4)), .membership(group: .default, .remove(2)),
      .transferLeadership(group: .default, to: 3),
      .query(
        group: .default, service: "kv", payload: KVQuery.get(key: "greeting").wireBytes(), consistency: .linearizable,
        atLeast: 0),
      .query(
        group: group, service: "kv", payload: KVQuery.scan(prefix: "k/", limit: 10).wireBytes(), consistency: .stale,
        atLeast: 41),
      .watch(group: .default, service: "locks", key: "orders", after: 12, timeoutMillis: 30_000),
    ]
    for (i, command) in kvCommands.enumerated() {
      requests.append(
        .command(
          group: .default, ServiceCommand(service: "kv", payload: command.wireBytes()),
          request: RequestID(session: 5, sequence: UInt64(i + 1)), acknowledgedThrough: UInt64(i)))
    }
    for command in lockCommands {
      requests.append(
        .command(
          group: .default, ServiceCommand(service: "locks", payload: command.wireBytes()), request: nil,
          acknowledgedThrough: 0))
    }
    for command in txnCommands {
      requests.append(
        .command(
          group: group, ServiceCommand(service: "txn", payload: command.wireBytes()),
          request: RequestID(session: .max, sequence: .max), acknowledgedThrough: .max))
    }
    return requests
  }

  static var replies: [HostReply] {
    [
      .session(88), .answer(Array("value".utf8), index: 17), .notifications([[1, 2], [], [3]], index: 40), .done,
      .clusterMap(map), .failure(HostFailure(.unknownGroup(group))),
      .failure(HostFailure(.wrongGroup(key: "alice", service: "kv", owner: group), leaderAddress: "127.0.0.1:7002")),
      .failure(HostFailure(.consensus(.notLeader(hint: 2)))), .failure(HostFailure(.malformed("bad"))),
      .failure(HostFailure(.serviceNotCarried("txn", known: ["kv", "locks"]))),
    ]
  }

  @Test("client requests and the service commands in them, damaged, decode or are refused with a WireError", .heavy)
  func requestsAndCommands() {
    for (seed, report) in [
      (1, WireFuzzer.check(samples: Self.requests, inputs: 30_000, seed: 1)),
      (2, WireFuzzer.check(samples: Self.kvCommands, inputs: 10_000, seed: 2)),
      (3, WireFuzzer.check(samples: Self.lockCommands, inputs: 10_000, seed: 3)),
      (4, WireFuzzer.check(samples: Self.txnCommands, inputs: 10_000, seed: 4)),
    ] {
      #expect(report.problems.isEmpty, "seed \(seed): \(report)")
      #expect(report.decoded > 0 && report.refusals.values.reduce(0, +) > report.inputs / 4, "seed \(seed): \(report)")
    }
  }

  @Test("replies and cluster maps, damaged, decode or are refused with a WireError", .heavy)
  func replies() {
    let replies = WireFuzzer.check(samples: Self.replies, inputs: 20_000, seed: 5)
    #expect(replies.problems.isEmpty, "\(replies)")
    let maps = WireFuzzer.check(samples: [Self.map], inputs: 10_000, seed: 6)
    #expect(maps.problems.isEmpty, "\(maps)")
  }

  @Test("peer frames carrying requests and replies between members, damaged, decode or are refused", .heavy)
  func peerFrames() {
    var frames: [HostMessage] = []
    for (i, request) in Self.requests.enumerated() { frames.append(.request(id: UInt64(i), body: request.wireBytes())) }
    for (i, reply) in Self.replies.enumerated() { frames.append(.reply(id: UInt64(i), body: reply.wireBytes())) }
    let report = WireFuzzer.check(samples: frames, inputs: 20_000, seed: 7)
    #expect(report.problems.isEmpty, "\(report)")
  }

  @Test("two-phase-commit messages between coordinators and participants, damaged, decode or are refused", .heavy)
  func transactionMessages() {
    let id = TxnID(coordinator: 2, sequence: 9, startedAtMillis: 1_700_000_000_000)
    let messages: [TransactionMessage] = [
      .prepare(id, participants: [1, 2, 3], recordStore: 7), .prepare(id, participants: [], recordStore: nil),
      .commitOnePhase(id, recordStore: nil), .commitOnePhase(id, recordStore: 7), .vote(id, .yes), .vote(id, .no),
      .decision(id, .commit), .decision(id, .abort), .ack(id),
      .decisionRequest(id), .outcome(id, .abort),
    ]
    let report = WireFuzzer.check(samples: messages, inputs: 10_000, seed: 12)
    #expect(report.problems.isEmpty, "\(report)")
  }

  @Test("key-value queries and their results, damaged, decode or are refused with a WireError", .heavy)
  func queries() {
    let queries: [KVQuery] = [
      .get(key: "greeting"), .scan(prefix: "k/", limit: 10),
      .scanPage(prefix: "", after: "k/9", limit: 100, maxBytes: 1 << 20),
    ]
    let results: [KVQueryResult] = [
      .page([KVPair("a", [1], modifiedAt: 4), KVPair("b", [], modifiedAt: .max)], next: "b"), .page([], next: nil),
      .value(nil), .value([9, 9]), .entries([KVPair("k", [0], modifiedAt: 1)]), .count(-3), .count(.max),
    ]
    let reports = [
      WireFuzzer.check(samples: queries, inputs: 10_000, seed: 10),
      WireFuzzer.check(samples: results, inputs: 10_000, seed: 11),
    ]
    for report in reports { #expect(report.problems.isEmpty, "\(report)") }
  }
}
