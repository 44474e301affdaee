import Quorum
import Testing

/// The `txn` service as hosts serve it: a shard on transaction time (log time plus an offset that leaders' clock
/// entries move forward).
@Suite("The hosted txn service's transaction time")
struct HostedTxnShardTests {
  /// A wall clock in December 2026; log time starts at zero with the group.
  let wall: UInt64 = 1_796_000_000_000

  func at(_ index: UInt64, log: UInt64) -> ApplyContext { ApplyContext(index: index, timestampMillis: log) }

  func counts(_ shard: HostedTxnShard) throws -> TxnShardCounts {
    guard case .counts(let counts) = shard.query(.counts) else { throw TimedOut(description: "no counts") }
    return counts
  }

  @Test("a leader's clock entry brings transaction time to its wall clock, and never takes it back")
  func clockEntries() throws {
    var shard = HostedTxnService().makeMachine()
    let id = TxnID(coordinator: 1, sequence: 1, startedAtMillis: wall)
    let decide = HostedTxnCommand.shard(.records(.decide(id, .commit, participants: [1, 2], finisher: 1)))
    // On bare log time, a client's wall-clock start looks decades ahead: refused.
    let early = shard.apply(decide, context: at(1, log: 500))
    #expect(early == .record(.refused(.clockAhead(startedAtMillis: wall, logTimeMillis: 500))))
    _ = shard.apply(.clock(wallMillis: wall + 100), context: at(2, log: 600))
    #expect(shard.offsetMillis == wall + 100 - 600)
    #expect(try counts(shard).logTimeMillis == wall + 100)
    #expect(shard.apply(decide, context: at(3, log: 700)) == .record(.decided(.commit)))
    // A leader whose clock is behind moves nothing back.
    _ = shard.apply(.clock(wallMillis: wall - 60_000), context: at(4, log: 800))
    #expect(shard.offsetMillis == wall + 100 - 600)
    #expect(try counts(shard).logTimeMillis == wall + 300)
  }

  @Test("once a clock entry set transaction time, a transaction starting far ahead of it is refused, snapshots too")
  func startsAheadAreRefusedOnceTimeIsSet() throws {
    var shard = HostedTxnService().makeMachine()
    let ahead = TxnID(coordinator: 1, sequence: 1, startedAtMillis: wall + 3_600_000)
    // Before the first clock entry the shard's time is the log's: it cannot tell a start ahead.
    #expect(shard.apply(.shard(.read(ahead, key: "r")), context: at(1, log: 500)) == .value(nil))
    _ = shard.apply(.clock(wallMillis: wall), context: at(2, log: 600))
    let later = TxnID(coordinator: 1, sequence: 2, startedAtMillis: wall + 3_600_000)
    let refused = TxnShardResponse.failed(.startsAhead(later, shardMillis: wall + 100))
    #expect(shard.apply(.shard(.read(later, key: "r")), context: at(3, log: 700)) == refused)
    var restored = HostedTxnService().makeMachine()
    try restored.restore(from: shard.snapshot())
    #expect(restored.apply(.shard(.read(later, key: "r")), context: at(3, log: 700)) == refused)
  }

  @Test("a clock entry's jump is not time waited: idle transactions do not expire and prepared ones do not age")
  func jumpIsNotWaiting() throws {
    var shard = HostedTxnService().makeMachine()
    // A new group: bare log time, until its first leader's clock entry. Clients on wall clocks start a
    // transaction there and prepare another (a shard admits starts ahead of its time; only decisions wait).
    let reader = TxnID(coordinator: 1, sequence: 1, startedAtMillis: wall - 50)
    let writer = TxnID(coordinator: 1, sequence: 2, startedAtMillis: wall - 50)
    #expect(shard.apply(.shard(.read(reader, key: "r")), context: at(1, log: 1_000)) == .value(nil))
    let prepare = TxnShardCommand.prepare(
      writer, writes: [TxnWrite(key: "w", value: [1])], participants: [1, 2], recordGroup: 1)
    #expect(shard.apply(.shard(prepare), context: at(2, log: 1_000)) == .prepared)
    // The leader's clock entry moves transaction time decades ahead, 100 ms of log time later.
    _ = shard.apply(.clock(wallMillis: wall), context: at(3, log: 1_100))
    #expect(try counts(shard).logTimeMillis == wall)
    guard case .status(.active(let idle), _) = shard.query(.status(reader)),
      case .status(.prepared(let age), _) = shard.query(.status(writer))
    else {
      Issue.record("the reader expired or the writer is not prepared: \(shard.query(.status(reader)))")
      return
    }
    #expect(idle == 100 && age == 100, "only the 100 ms of log time count")
    guard case .inDoubt(let doubtful, _) = shard.query(.inDoubt(minimumAgeMillis: 5_000, limit: 10)) else {
      Issue.record("no in-doubt page")
      return
    }
    #expect(doubtful.isEmpty, "a resolver would abort a live transaction")
    // Later log time counts as before.
    let idleTimeout = TxnShardLimits().idleTimeoutMillis
    shard.advanceTime(context: at(4, log: 1_000 + idleTimeout))
    guard case .status(let state, _) = shard.query(.status(reader)) else {
      Issue.record("no status")
      return
    }
    #expect(state == .aborted, "idle \(idleTimeout) ms of log time: expired")
  }

  @Test("the shard's deadlines reach the log in log time, and a snapshot keeps the offset")
  func deadlinesAndSnapshots() throws {
    var shard = HostedTxnService().makeMachine()
    _ = shard.apply(.clock(wallMillis: wall), context: at(1, log: 1_000))
    let id = TxnID(coordinator: 1, sequence: 1, startedAtMillis: wall + 500)
    #expect(shard.apply(.shard(.read(id, key: "k")), context: at(2, log: 1_500)) == .value(nil))
    let idle = TxnShardLimits().idleTimeoutMillis
    #expect(shard.nextDeadlineMillis == 1_500 + idle, "the idle reader expires \(idle) ms later in log time")

    var restored = HostedTxnService().makeMachine()
    try restored.restore(from: shard.snapshot())
    #expect(restored.offsetMillis == shard.offsetMillis)
    #expect(restored.snapshot() == shard.snapshot())
    #expect(restored.nextDeadlineMillis == shard.nextDeadlineMillis)

    restored.advanceTime(context: at(3, log: 1_500 + idle))
    guard case .status(let state, _) = restored.query(.status(id)) else {
      Issue.record("no status")
      return
    }
    #expect(state == .aborted, "expired at its deadline")
  }

  @Test("a client's shard command decodes unchanged as a hosted command; a clock entry round-trips")
  func wireCompatibility() throws {
    let id = TxnID(coordinator: 7, sequence: 3, startedAtMillis: wall)
    let commands: [TxnShardCommand] = [
      .read(id, key: "a"),
      .prepare(id, writes: [TxnWrite(key: "a", value: [1])], participants: [1, 2], recordGroup: 1),
      .commit(id), .abort(id), .commitLocal(id, reads: ["b"], writes: []), .records(.finished(id, node: 7)),
      .advanceTime,
    ]
    for command in commands {
      #expect(try HostedTxnCommand(wireBytes: command.wireBytes()) == .shard(command))
      #expect(HostedTxnCommand.shard(command).wireBytes() == command.wireBytes())
    }
    let clock = HostedTxnCommand.clock(wallMillis: wall)
    #expect(try HostedTxnCommand(wireBytes: clock.wireBytes()) == clock)
    #expect(HostedTxnService.routingKey(of: clock) == nil)
    #expect(HostedTxnService.routingKey(of: .shard(.read(id, key: "a"))) == "a")
  }
}
