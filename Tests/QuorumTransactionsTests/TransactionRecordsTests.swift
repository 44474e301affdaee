import QuorumCore
import Testing

@testable import QuorumTransactions

@Suite("Transaction records: compare-and-set decisions, prepared participants, the horizon")
struct TransactionRecordsTests {
  func limits() -> TransactionRecordLimits {
    var limits = TransactionRecordLimits()
    limits.transactionHorizonMillis = 1_000
    limits.retainDecisionsMillis = 5_000
    limits.maxClockAheadMillis = 10_000
    limits.maxRecords = 4
    return limits
  }

  @Test("whoever decides first wins; the loser learns the decision that holds")
  func compareAndSet() throws {
    var r = try TransactionRecords(limits: limits())
    let t = txn(1)
    #expect(r.apply(1, at: 1_000, .prepared(t, participant: 2, participants: [2, 3])) == .undecided)
    #expect(r.apply(2, at: 1_010, .decide(t, .abort, participants: [], finisher: nil)) == .decided(.abort))
    #expect(r.apply(3, at: 1_020, .decide(t, .commit, participants: [2, 3], finisher: 1)) == .decided(.abort))
    #expect(r.apply(4, at: 1_030, .prepared(t, participant: 3, participants: [2, 3])) == .decided(.abort))
    #expect(r.summary(of: t)?.pending == [2], "3 was told the decision instead of being recorded prepared")
  }

  @Test("a commit stays until its finisher and every prepared participant finish, and until its retention")
  func commitRetention() throws {
    var r = try TransactionRecords(limits: limits())
    let t = txn(1)
    _ = r.apply(1, at: 1_000, .prepared(t, participant: 2, participants: [2, 3]))
    _ = r.apply(2, at: 1_000, .decide(t, .commit, participants: [2, 3], finisher: 1))
    #expect(r.summary(of: t)?.pending == [1, 2])
    _ = r.apply(3, at: 1_100, .finished(t, node: 2))
    _ = r.apply(4, at: 1_200, .finished(t, node: 1))
    #expect(r.nextDeadlineMillis == 6_000, "started at 1000 + retention 5000")
    _ = r.apply(5, at: 5_999, .advanceTime)
    #expect(r.summary(of: t)?.decision == .commit)
    _ = r.apply(6, at: 6_000, .advanceTime)
    #expect(r.summary(of: t) == nil)
    #expect(r.nextDeadlineMillis == nil)
  }

  @Test("an undecided record nobody is pending on is dropped at once")
  func undecidedDropped() throws {
    var r = try TransactionRecords(limits: limits())
    _ = r.apply(1, at: 1_000, .prepared(txn(1), participant: 2, participants: [2, 3]))
    _ = r.apply(2, at: 1_000, .finished(txn(1), node: 2))
    #expect(r.count == 0)
  }

  @Test("past the horizon without a record: abort, and nothing is recorded (a late commit cannot win)")
  func horizon() throws {
    var r = try TransactionRecords(limits: limits())
    let t = txn(1, started: 1_000)
    #expect(r.apply(1, at: 2_001, .decide(t, .commit, participants: [2, 3], finisher: 1)) == .decided(.abort))
    #expect(r.apply(2, at: 2_002, .prepared(t, participant: 2, participants: [2, 3])) == .decided(.abort))
    #expect(r.count == 0)
    // An abort recorded in time, then forgotten after its retention: a commit arriving later still loses.
    let u = txn(2, started: 10_000)
    _ = r.apply(3, at: 10_100, .decide(u, .abort, participants: [], finisher: nil))
    _ = r.apply(4, at: 15_000, .advanceTime)
    #expect(r.summary(of: u) == nil)
    #expect(r.apply(5, at: 15_001, .decide(u, .commit, participants: [2, 3], finisher: 1)) == .decided(.abort))
  }

  @Test("decisions kept for exactly the horizon: an abort is forgotten only once a commit can no longer win")
  func retentionEqualToHorizon() throws {
    var limits = limits()
    limits.retainDecisionsMillis = limits.transactionHorizonMillis
    var r = try TransactionRecords(limits: limits)
    let t = txn(1, started: 10_000)
    _ = r.apply(1, at: 10_100, .decide(t, .abort, participants: [], finisher: nil))
    // Log time 11,000 is the transaction's start plus the horizon: not past it, so a command without a record
    // could still record a commit, and the abort must still be there to win.
    #expect(r.apply(2, at: 11_000, .decide(t, .commit, participants: [2, 3], finisher: 1)) == .decided(.abort))
    _ = r.apply(3, at: 11_001, .advanceTime)
    #expect(r.summary(of: t) == nil, "forgotten once past the horizon")
    #expect(r.apply(4, at: 11_002, .decide(t, .commit, participants: [2, 3], finisher: 1)) == .decided(.abort))
  }

  @Test("a present undecided record may still be decided after the horizon (the compare-and-set holds)")
  func presentPastHorizon() throws {
    var r = try TransactionRecords(limits: limits())
    let t = txn(1, started: 1_000)
    _ = r.apply(1, at: 1_500, .prepared(t, participant: 2, participants: [2, 3]))
    #expect(r.apply(2, at: 9_000, .decide(t, .commit, participants: [2, 3], finisher: 1)) == .decided(.commit))
  }

  @Test("refusals change nothing: clock too far ahead, too many records, too many participants")
  func refusals() throws {
    var r = try TransactionRecords(limits: limits())
    #expect(
      r.apply(1, at: 1_000, .decide(txn(1, started: 20_000), .commit, participants: [2], finisher: 1))
        == .refused(.clockAhead(startedAtMillis: 20_000, logTimeMillis: 1_000)))
    for n in 1...4 as ClosedRange<UInt64> {
      _ = r.apply(1 + n, at: 1_000, .prepared(txn(n), participant: 2, participants: [2]))
    }
    #expect(
      r.apply(9, at: 1_000, .prepared(txn(5), participant: 2, participants: [2])) == .refused(.tooManyRecords(limit: 4))
    )
    var small = limits()
    small.maxParticipants = 1
    var s = try TransactionRecords(limits: small)
    #expect(
      s.apply(1, at: 1_000, .prepared(txn(1), participant: 2, participants: [2, 3]))
        == .refused(.tooManyParticipants(count: 2, limit: 1)))
  }

  @Test("reservations hand out disjoint blocks per coordinator")
  func reservations() throws {
    var r = try TransactionRecords(limits: limits())
    #expect(r.apply(1, at: 1_000, .reserve(coordinator: 1, count: 100)) == .reserved(first: 1, count: 100))
    #expect(r.apply(2, at: 1_000, .reserve(coordinator: 1, count: 100)) == .reserved(first: 101, count: 100))
    #expect(r.apply(3, at: 1_000, .reserve(coordinator: 2, count: 5)) == .reserved(first: 1, count: 5))
    #expect(
      r.apply(4, at: 1_000, .reserve(coordinator: 2, count: 0)) == .refused(.invalidReservation(count: 0, max: 1 << 20))
    )
  }

  @Test("an endless stream of new coordinators is served, and no coordinator is handed a number twice")
  func coordinatorChurn() throws {
    var limits = limits()
    limits.maxCoordinators = 32
    var r = try TransactionRecords(limits: limits)
    var handedOut: [NodeID: [ClosedRange<UInt64>]] = [:]
    var index: UInt64 = 0
    func reserve(_ coordinator: NodeID, _ count: UInt64) -> Bool {
      index += 1
      guard
        case .reserved(let first, let n) = r.apply(index, at: 1_000, .reserve(coordinator: coordinator, count: count))
      else { return false }
      let block = first...(first + n - 1)
      let overlapping = handedOut[coordinator, default: []].filter { $0.overlaps(block) }
      #expect(overlapping.isEmpty, "\(coordinator) was handed \(block) after \(overlapping)")
      handedOut[coordinator, default: []].append(block)
      return true
    }
    // A thousand short-lived clients reserve once each; three long-lived ones reserve now and then, and a few of
    // the short-lived ones come back after the table has forgotten them.
    for client in 1...1_000 {
      #expect(reserve(NodeID(UInt64(10_000 + client)), UInt64(1 + client % 7)), "client \(client) was refused")
      if client % 50 == 0 {
        for steady in 1...3 { #expect(reserve(NodeID(UInt64(steady)), 100)) }
      }
      if client % 97 == 0 { #expect(reserve(NodeID(UInt64(10_001)), 3), "the first client came back") }
    }
    #expect(r.floors.count <= 32, "\(r.floors.count) coordinators remembered")
    // The forgotten coordinators' high mark survives a snapshot.
    var b = try TransactionRecords(limits: limits)
    try b.restore(from: r.snapshot())
    #expect(b.snapshot() == r.snapshot())
    #expect(b.retiredFloor == r.retiredFloor && r.retiredFloor > 1)
  }

  @Test("queries: a node's records, transactions in doubt oldest first, counts")
  func queries() throws {
    var r = try TransactionRecords(limits: limits())
    _ = r.apply(1, at: 1_000, .prepared(txn(2), participant: 3, participants: [2, 3]))
    _ = r.apply(2, at: 1_100, .prepared(txn(1), participant: 2, participants: [2, 3]))
    _ = r.apply(3, at: 1_200, .decide(txn(3), .commit, participants: [4], finisher: 1, kind: .groups))
    guard case .records(let mine, false) = r.query(.involving(2, after: nil, limit: 10)) else {
      Issue.record("expected a page")
      return
    }
    #expect(mine.map(\.id) == [txn(1), txn(2)])
    guard case .records(let doubt, let more) = r.query(.inDoubt(minimumAgeMillis: 150, limit: 1)) else {
      Issue.record("expected a page")
      return
    }
    #expect(doubt.map(\.id) == [txn(2)] && more == false, "txn 1 is only 100 ms old")
    _ = r.apply(4, at: 1_300, .decide(txn(4), .commit, participants: [4], finisher: 1, kind: .groups))
    guard case .records(let unfinished, false) = r.query(.unfinished(minimumAgeMillis: 100, limit: 10)) else {
      Issue.record("expected a page")
      return
    }
    #expect(unfinished.map(\.id) == [txn(3)], "txn 4 was decided too recently")
    let query = TransactionRecordQuery.unfinished(minimumAgeMillis: 100, limit: 10)
    #expect(try TransactionRecordQuery(wireBytes: query.wireBytes()) == query)
    _ = r.apply(5, at: 1_300, .finished(txn(3), node: 1))
    #expect(
      r.query(.counts)
        == .counts(TransactionRecordCounts(records: 4, undecided: 2, coordinators: 0, logTimeMillis: 1_300)))
  }

  @Test("two-phase commit's records are never listed as unfinished: only a sharded transaction's are")
  func unfinishedListsOnlyGroupRecords() throws {
    var r = try TransactionRecords(limits: limits())
    // A classic coordinator's commit, its participants done, pending on the coordinator alone: it finishes the
    // record itself when it recovers, and its participants are nodes, not groups to ask.
    _ = r.apply(1, at: 1_000, .prepared(txn(1), participant: 2, participants: [2]))
    _ = r.apply(2, at: 1_000, .decide(txn(1), .commit, participants: [2], finisher: 1))
    _ = r.apply(3, at: 1_000, .finished(txn(1), node: 2))
    _ = r.apply(4, at: 1_000, .decide(txn(2), .commit, participants: [7, 8], finisher: 1, kind: .groups))
    #expect(r.summary(of: txn(1))?.pending == [1])
    guard case .records(let unfinished, false) = r.query(.unfinished(minimumAgeMillis: 0, limit: 10)) else {
      Issue.record("expected a page")
      return
    }
    #expect(unfinished.map(\.id) == [txn(2)])
    // The kind survives a snapshot, and the command's encoding.
    var b = try TransactionRecords(limits: limits())
    try b.restore(from: r.snapshot())
    #expect(
      b.query(.unfinished(minimumAgeMillis: 0, limit: 10)) == r.query(.unfinished(minimumAgeMillis: 0, limit: 10)))
    for command: TransactionRecordCommand in [
      .decide(txn(2), .commit, participants: [7, 8], finisher: 1, kind: .groups),
      .decide(txn(2), .commit, participants: [7, 8], finisher: 1),
    ] {
      #expect(try TransactionRecordCommand(wireBytes: command.wireBytes()) == command)
    }
  }

  @Test("a snapshot of the first format (no record kinds) restores, every record a two-phase commit's")
  func versionOneSnapshot() throws {
    var w = WireWriter()
    w.writeVarint(1)  // version
    w.writeVarint(1_000)  // log time
    w.writeVarint(3)  // applied index
    w.writeVarint(1)  // one record
    w.write(txn(1))
    w.writeOptional(TransactionDecision.commit)
    w.writeArray([NodeID(2)])
    w.writeArray([NodeID(1)])
    w.writeVarint(1_000)
    w.writeOptional(UInt64?.some(1_000))
    w.writeVarint(0)  // no reservations
    var r = try TransactionRecords(limits: limits())
    try r.restore(from: w.bytes)
    #expect(r.summary(of: txn(1))?.pending == [1])
    #expect(r.query(.unfinished(minimumAgeMillis: 0, limit: 10)) == .records([], hasMore: false))
    var again = try TransactionRecords(limits: limits())
    try again.restore(from: r.snapshot())
    #expect(again.snapshot() == r.snapshot(), "rewritten in the current format")
  }

  @Test("snapshots are deterministic and restore to the same table, expiries included")
  func snapshot() throws {
    var a = try TransactionRecords(limits: limits())
    _ = a.apply(1, at: 1_000, .prepared(txn(2), participant: 3, participants: [2, 3]))
    _ = a.apply(2, at: 1_000, .decide(txn(1), .abort, participants: [], finisher: nil))
    _ = a.apply(3, at: 1_000, .reserve(coordinator: 1, count: 10))
    var b = try TransactionRecords(limits: limits())
    try b.restore(from: a.snapshot())
    #expect(b.snapshot() == a.snapshot())
    #expect(b.nextDeadlineMillis == a.nextDeadlineMillis)
    _ = a.apply(4, at: 7_000, .advanceTime)
    _ = b.apply(4, at: 7_000, .advanceTime)
    #expect(b.snapshot() == a.snapshot())
    #expect(throws: WireError.self) { try b.restore(from: Array(a.snapshot().dropLast())) }
  }

  @Test("clock entries move the table's time forward to a wall clock, never back; deadlines stay in log time")
  func clockEntries() throws {
    var r = try TransactionRecords(limits: limits())
    // Log time starts at zero (a node's group), transactions at the wall clock.
    let wall: UInt64 = 1_000_000
    let t = TxnID(coordinator: 1, sequence: 1, startedAtMillis: wall)
    guard case .refused(.clockAhead) = r.apply(1, at: 10, .prepared(t, participant: 2, participants: [2])) else {
      Issue.record("a transaction started far ahead of log time must be refused")
      return
    }
    #expect(r.apply(2, at: 20, .clock(wallMillis: wall)) == .timeAdvanced)
    #expect(r.logTimeMillis == wall)
    #expect(r.apply(3, at: 30, .decide(t, .abort, participants: [], finisher: nil)) == .decided(.abort))
    #expect(r.logTimeMillis == wall + 10, "log time goes on from the offset")
    #expect(r.apply(4, at: 40, .clock(wallMillis: 5)) == .timeAdvanced)
    #expect(r.logTimeMillis == wall + 20, "a clock behind moves nothing back")
    // The abort is forgotten once the table's time passes its start plus the retention, 5 s: at log time 5 s
    // after the offset.
    #expect(r.nextDeadlineMillis == wall + 5_000 - (wall - 20))
    var restored = try TransactionRecords(limits: limits())
    try restored.restore(from: r.snapshot())
    #expect(restored.clockOffsetMillis == r.clockOffsetMillis)
    #expect(restored.snapshot() == r.snapshot())
  }

  @Test("a sharded transaction's shard ignores a clock entry for its table: a client cannot move its time")
  func shardsIgnoreClockEntries() {
    var shard = TxnShard()
    _ = shard.apply(.records(.clock(wallMillis: 1 << 50)), context: ApplyContext(index: 1, timestampMillis: 1_000))
    #expect(shard.records.clockOffsetMillis == 0)
    #expect(shard.records.logTimeMillis == 1_000)
  }
}
