import QuorumCore
import Testing

@testable import QuorumTransactions

/// A shard driven entry by entry, with its invariants checked after each.
struct ShardLog {
  var shard: TxnShard
  var index: UInt64 = 0
  var millis: UInt64 = 1_000

  init(limits: TxnShardLimits = ShardLog.limits()) throws { shard = try TxnShard(limits: limits) }

  static func limits() -> TxnShardLimits {
    var limits = TxnShardLimits()
    limits.idleTimeoutMillis = 100
    limits.transactionHorizonMillis = 1_000
    limits.records.transactionHorizonMillis = 1_000
    limits.records.retainDecisionsMillis = 5_000
    return limits
  }

  @discardableResult
  mutating func apply(
    _ command: TxnShardCommand, after elapsed: UInt64 = 1, sourceLocation: SourceLocation = #_sourceLocation
  )
    -> TxnShardResponse
  {
    index += 1
    millis += elapsed
    let response = shard.apply(command, context: ApplyContext(index: index, timestampMillis: millis))
    let problems = shard.invariantViolations()
    #expect(problems.isEmpty, "after \(command): \(problems)", sourceLocation: sourceLocation)
    return response
  }
}

func put(_ key: String, _ value: String) -> TxnWrite { TxnWrite(key: key, value: Array(value.utf8)) }

func bytes(_ value: String) -> [UInt8] { Array(value.utf8) }

@Suite("TxnShard: strict two-phase locking (no-wait), buffered writes, one-shot commits, records")
struct TxnShardTests {
  let t1 = txn(1)
  let t2 = txn(2)
  let t3 = txn(3)

  @Test("readers share a key; a prepared writer excludes readers, and a reader excludes a writer")
  func sharedAndExclusive() throws {
    var s = try ShardLog()
    #expect(s.apply(.read(t1, key: "a")) == .value(nil))
    #expect(s.apply(.read(t2, key: "a")) == .value(nil), "shared")
    #expect(
      s.apply(.prepare(t3, writes: [put("a", "x")], participants: [1], recordGroup: 1))
        == .conflict(TxnConflict(key: "a", holder: t1, mode: .shared)), "no-wait: the writer is refused at once")
    #expect(s.shard.state(of: t3) == .aborted, "a refused prepare is a no vote: the transaction ends here")
    #expect(s.apply(.prepare(t3, writes: [put("a", "x")], participants: [1], recordGroup: 1)) == .aborted)
    s.apply(.abort(t1))
    s.apply(.abort(t2))
    let t4 = txn(4)
    #expect(s.apply(.prepare(t4, writes: [put("a", "x")], participants: [1], recordGroup: 1)) == .prepared)
    #expect(s.apply(.read(t1, key: "a")) == .aborted, "t1 ended")
    let t5 = txn(5)
    #expect(
      s.apply(.read(t5, key: "a")) == .conflict(TxnConflict(key: "a", holder: t4, mode: .exclusive)),
      "a read conflicting with a prepared writer is answered, and leaves the reader as it was")
    #expect(s.shard.state(of: t5) == .unknown)
    #expect(s.apply(.read(t5, key: "b")) == .value(nil), "t5 goes on elsewhere")
  }

  @Test("commit applies the prepared writes and releases every lock; abort drops them; both idempotent")
  func commitAndAbort() throws {
    var s = try ShardLog()
    #expect(s.apply(.read(t1, key: "a")) == .value(nil))
    #expect(
      s.apply(.prepare(t1, writes: [put("a", "1"), put("b", "2")], participants: [1], recordGroup: 1)) == .prepared)
    #expect(
      s.apply(.prepare(t1, writes: [put("a", "1"), put("b", "2")], participants: [1], recordGroup: 1)) == .prepared)
    #expect(s.shard.value(of: "a") == nil, "not before the commit")
    #expect(s.apply(.commit(t1)) == .committed)
    #expect(s.apply(.commit(t1)) == .committed)
    #expect(s.apply(.abort(t1)) == .committed, "an abort after the commit changes nothing and says so")
    #expect(s.shard.value(of: "a") == bytes("1") && s.shard.value(of: "b") == bytes("2"))
    #expect(
      s.apply(.prepare(t2, writes: [TxnWrite(key: "a", value: nil)], participants: [1], recordGroup: 1)) == .prepared)
    #expect(s.apply(.abort(t2)) == .aborted)
    #expect(s.apply(.commit(t2)) == .aborted, "a commit after the abort changes nothing and says so")
    #expect(s.shard.value(of: "a") == bytes("1"))
    guard case .counts(let counts) = s.shard.query(.counts) else {
      Issue.record("expected counts")
      return
    }
    #expect(counts.lockedKeys == 0 && counts.active == 0 && counts.prepared == 0)
  }

  @Test("a transaction upgrades its own read lock when it writes the key")
  func upgrade() throws {
    var s = try ShardLog()
    _ = s.apply(.read(t1, key: "a"))
    #expect(s.apply(.prepare(t1, writes: [put("a", "1")], participants: [1], recordGroup: 1)) == .prepared)
    #expect(s.apply(.read(t2, key: "a")) == .conflict(TxnConflict(key: "a", holder: t1, mode: .exclusive)))
  }

  @Test("a prepare with nothing held and nothing written is read-only; one that only read keeps its locks")
  func readOnlyShard() throws {
    var s = try ShardLog()
    #expect(s.apply(.prepare(t1, writes: [], participants: [1, 2], recordGroup: 2)) == .readOnly)
    _ = s.apply(.read(t2, key: "a"))
    #expect(s.apply(.prepare(t2, writes: [], participants: [1, 2], recordGroup: 2)) == .prepared)
    #expect(
      s.apply(.prepare(t3, writes: [put("a", "x")], participants: [1], recordGroup: 1))
        == .conflict(TxnConflict(key: "a", holder: t2, mode: .shared)), "the read lock lasts until the decision")
  }

  @Test("commitLocal: locks checked, reads taken before the writes, all in one entry")
  func commitLocal() throws {
    var s = try ShardLog()
    _ = s.apply(.commitLocal(t1, reads: [], writes: [put("a", "1")]))
    #expect(
      s.apply(.commitLocal(t2, reads: ["a", "b"], writes: [put("a", "2")]))
        == .committedLocal([
          TxnRead(key: "a", value: bytes("1")), TxnRead(key: "b", value: nil),
        ]))
    #expect(s.shard.value(of: "a") == bytes("2"))
    #expect(s.apply(.commitLocal(t2, reads: ["a"], writes: [])) == .committed, "a repeat is answered, not redone")
    _ = s.apply(.prepare(t3, writes: [put("b", "3")], participants: [1, 2], recordGroup: 1))
    let t4 = txn(4)
    #expect(
      s.apply(.commitLocal(t4, reads: ["b"], writes: []))
        == .conflict(TxnConflict(key: "b", holder: t3, mode: .exclusive)))
  }

  @Test("an unprepared transaction idle past its timeout is aborted and its locks released; a prepared one stays")
  func idleExpiry() throws {
    var s = try ShardLog()
    _ = s.apply(.read(t1, key: "a"))
    _ = s.apply(.read(t2, key: "b"))
    _ = s.apply(.prepare(t2, writes: [put("b", "1")], participants: [1, 2], recordGroup: 1))
    #expect(s.shard.nextDeadlineMillis == 1_001 + 100)
    _ = s.apply(.advanceTime, after: 200)
    #expect(s.shard.state(of: t1) == .aborted)
    #expect(s.shard.state(of: t2) == .prepared(ageMillis: 200))
    #expect(s.apply(.prepare(t1, writes: [put("a", "x")], participants: [1], recordGroup: 1)) == .aborted)
    guard case .inDoubt(let doubtful, false) = s.shard.query(.inDoubt(minimumAgeMillis: 100, limit: 10)) else {
      Issue.record("expected a page")
      return
    }
    #expect(doubtful == [TxnInDoubt(id: t2, participants: [1, 2], recordGroup: 1, ageMillis: 201, keys: ["b"])])
  }

  @Test("late commands cannot revive an ended transaction: the horizon and the forgetting watermark refuse them")
  func lateCommands() throws {
    var limits = ShardLog.limits()
    limits.maxRemembered = 2
    var s = try ShardLog(limits: limits)
    let old = txn(1, started: 900)
    _ = s.apply(.abort(old))
    _ = s.apply(.abort(txn(2, started: 950)))
    _ = s.apply(.abort(txn(3, started: 990)))
    #expect(s.shard.state(of: old) == .unknown, "forgotten to make room")
    #expect(
      s.apply(.prepare(old, writes: [put("a", "x")], participants: [1], recordGroup: 1)) == .aborted,
      "started before the newest forgotten one: refused")
    #expect(s.apply(.read(txn(4, started: 10), key: "a")) == .aborted, "past its horizon")
    #expect(s.apply(.read(txn(5, started: 1_000), key: "a")) == .value(nil))
  }

  @Test("bounds: keys per transaction, key and value sizes, duplicate writes, transactions")
  func bounds() throws {
    var limits = ShardLog.limits()
    limits.maxKeysPerTransaction = 2
    limits.maxValueBytes = 3
    limits.maxTransactions = 1
    var s = try ShardLog(limits: limits)
    #expect(
      s.apply(.prepare(t1, writes: [put("a", "1"), put("b", "1"), put("c", "1")], participants: [1], recordGroup: 1))
        == .failed(.tooManyKeys(count: 3, limit: 2)))
    #expect(
      s.apply(.prepare(t1, writes: [put("a", "1234")], participants: [1], recordGroup: 1))
        == .failed(.valueTooLarge(bytes: 4, limit: 3)))
    #expect(
      s.apply(.prepare(t1, writes: [put("a", "1"), put("a", "2")], participants: [1], recordGroup: 1))
        == .failed(.duplicateKey("a")))
    #expect(s.apply(.read(t1, key: "")) == .failed(.invalidKey(bytes: 0, limit: 1_024)))
    _ = s.apply(.read(t1, key: "a"))
    #expect(s.apply(.read(t2, key: "b")) == .failed(.tooManyTransactions(limit: 1)))
  }

  @Test("the group's record table: compare-and-set decisions through the shard, and status shows both sides")
  func records() throws {
    var s = try ShardLog()
    let decide = TransactionRecordCommand.decide(t1, .commit, participants: [TxnShard.party(1)], finisher: 9)
    #expect(s.apply(.records(decide)) == .record(.decided(.commit)))
    #expect(
      s.apply(.records(.decide(t1, .abort, participants: [], finisher: nil))) == .record(.decided(.commit)),
      "the resolver's abort loses to the recorded commit")
    guard case .status(.unknown, let record?) = s.shard.query(.status(t1)) else {
      Issue.record("expected the record")
      return
    }
    #expect(record.decision == .commit && record.pending == [9])
  }

  @Test("snapshots are deterministic, restore to an equal shard, and the restored shard answers the same")
  func snapshot() throws {
    var s = try ShardLog()
    _ = s.apply(.commitLocal(t1, reads: [], writes: [put("a", "1")]))
    _ = s.apply(.read(t2, key: "a"))
    _ = s.apply(.read(t3, key: "b"))
    _ = s.apply(.prepare(t3, writes: [put("b", "2")], participants: [1, 2], recordGroup: 2))
    _ = s.apply(.records(.decide(txn(9), .abort, participants: [], finisher: nil)))
    var copy = try ShardLog()
    try copy.shard.restore(from: s.shard.snapshot())
    copy.index = s.index
    copy.millis = s.millis
    #expect(copy.shard.snapshot() == s.shard.snapshot())
    #expect(copy.shard.invariantViolations().isEmpty)
    for command in [
      TxnShardCommand.read(txn(4), key: "b"),
      .prepare(txn(5), writes: [put("a", "x")], participants: [1], recordGroup: 1),
      .commit(t3), .advanceTime,
    ] {
      #expect(copy.apply(command, after: 50) == s.apply(command, after: 50))
    }
    #expect(copy.shard.snapshot() == s.shard.snapshot())
    #expect(throws: WireError.self) { try copy.shard.restore(from: Array(s.shard.snapshot().dropLast())) }
  }

  @Test("keys spelled in different normal forms snapshot and restore (Swift's < orders no such pair)")
  func keysInMixedNormalForms() throws {
    var s = try ShardLog()
    _ = s.apply(.commitLocal(t1, reads: [], writes: [put("\u{E9}e", "1"), put("e\u{301}", "2"), put("x", "3")]))
    _ = s.apply(.read(t2, key: "e\u{301}e"))
    _ = s.apply(.read(t2, key: "\u{E9}"))
    var copy = try ShardLog()
    try copy.shard.restore(from: s.shard.snapshot())
    #expect(copy.shard.snapshot() == s.shard.snapshot())
    #expect(copy.shard.invariantViolations().isEmpty)
  }

  @Test("commands, answers and queries round-trip through the wire format")
  func wire() throws {
    let commands: [TxnShardCommand] = [
      .read(t1, key: "k"),
      .prepare(t1, writes: [put("a", "1"), TxnWrite(key: "b", value: nil)], participants: [1, 2], recordGroup: 2),
      .commit(t1), .abort(t1), .commitLocal(t1, reads: ["x"], writes: [put("y", "z")]),
      .records(.reserve(coordinator: 3, count: 10)), .advanceTime,
    ]
    for command in commands { #expect(try TxnShardCommand(wireBytes: command.wireBytes()) == command) }
    let responses: [TxnShardResponse] = [
      .value(nil), .value([1]), .prepared, .readOnly, .committed, .committedLocal([TxnRead(key: "a", value: nil)]),
      .aborted, .conflict(TxnConflict(key: "a", holder: t2, mode: .shared)), .record(.decided(.abort)), .timeAdvanced,
      .failed(.alreadyEnded(t1)),
    ]
    for response in responses { #expect(try TxnShardResponse(wireBytes: response.wireBytes()) == response) }
    let messages: [TransactionMessage] = [
      .prepare(t1, participants: [2, 3], recordStore: 7), .commitOnePhase(t1, recordStore: 7),
      .commitOnePhase(t1, recordStore: nil), .vote(t1, .readOnly),
      .decision(t1, .abort), .ack(t1), .decisionRequest(t1), .outcome(t1, .commit),
    ]
    for message in messages { #expect(try TransactionMessage(wireBytes: message.wireBytes()) == message) }
    // A one-phase commit from a coordinator that predates its store field (tag 1, the identifier alone) decodes.
    var legacy = WireWriter()
    legacy.writeByte(1)
    legacy.write(t1)
    #expect(try TransactionMessage(wireBytes: legacy.bytes) == .commitOnePhase(t1, recordStore: nil))
    #expect(TxnID(t1.description) == t1)
    #expect(
      TxnShardService.routingKey(of: .records(.decide(t1, .commit, participants: [], finisher: nil)))
        == TxnShardService.recordKey(for: t1))
  }
}
