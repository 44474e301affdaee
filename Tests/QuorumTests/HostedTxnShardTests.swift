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
