import QuorumCore
import Testing

@testable import QuorumKV

@Suite("KVStore state machine")
struct KVStoreTests {
  func ctx(_ i: UInt64) -> ApplyContext { ApplyContext(index: i, timestampMillis: 0) }

  @Test("put, get, delete and compare-and-swap follow their definitions")
  func basics() {
    var kv = KVStore()
    #expect(kv.apply(.put(key: "a", value: [1]), context: ctx(1)) == .done(previous: nil))
    #expect(kv.apply(.put(key: "a", value: [2]), context: ctx(2)) == .done(previous: [1]))
    #expect(kv.query(.get(key: "a")) == .value([2]))
    #expect(
      kv.apply(.compareAndSwap(key: "a", expected: [1], new: [3]), context: ctx(3)) == .swapped(false, current: [2]))
    #expect(
      kv.apply(.compareAndSwap(key: "a", expected: [2], new: [3]), context: ctx(4)) == .swapped(true, current: [3]))
    #expect(
      kv.apply(.compareAndSwap(key: "b", expected: nil, new: [9]), context: ctx(5)) == .swapped(true, current: [9]))
    #expect(
      kv.apply(.compareAndSwap(key: "b", expected: [9], new: nil), context: ctx(6)) == .swapped(true, current: nil))
    #expect(kv.query(.get(key: "b")) == .value(nil))
    #expect(kv.apply(.delete(key: "a"), context: ctx(7)) == .done(previous: [3]))
    #expect(kv.query(.count) == .count(0))
  }

  @Test("a prefix scan returns matching keys in order, up to the limit, with their modification index")
  func scan() {
    var kv = KVStore()
    for (i, key) in ["user/b", "user/a", "other", "user/c"].enumerated() {
      _ = kv.apply(.put(key: key, value: [UInt8(i)]), context: ctx(UInt64(i + 1)))
    }
    guard case .entries(let pairs) = kv.query(.scan(prefix: "user/", limit: 2)) else {
      Issue.record("expected entries")
      return
    }
    #expect(pairs.map(\.key) == ["user/a", "user/b"])
    #expect(pairs.map(\.modifiedAt) == [2, 1])
  }

  @Test("snapshot and restore reproduce the store exactly; a corrupt snapshot is a typed error")
  func snapshotRoundTrip() throws {
    var kv = KVStore()
    for i in 0..<100 { _ = kv.apply(.put(key: "k\(i)", value: Array("v\(i)".utf8)), context: ctx(UInt64(i + 1))) }
    var copy = KVStore()
    try copy.restore(from: kv.snapshot())
    #expect(copy == kv)
    var broken = kv.snapshot()
    broken.removeLast(3)
    #expect(throws: WireError.self) { try copy.restore(from: broken) }
    #expect(copy == kv, "a failed restore leaves the store unchanged")
  }

  @Test("a snapshot's size is known before it is written, whichever spelling of a key a command uses")
  func snapshotSizeAcrossKeySpellings() throws {
    // "é" as one scalar (2 bytes) and as "e" and a combining accent (3 bytes): one key to the store.
    let composed = "\u{E9}"
    let decomposed = "e\u{301}"
    var kv = KVStore()
    var index: UInt64 = 0
    func apply(_ command: KVCommand) {
      index += 1
      _ = kv.apply(command, context: ctx(index))
      #expect(kv.snapshotBytes == kv.snapshot().count, "after \(command)")
    }
    apply(.put(key: decomposed, value: [1, 2, 3]))
    apply(.put(key: composed, value: [4]))
    apply(.delete(key: composed))
    apply(.put(key: composed, value: Array(repeating: 7, count: 300)))
    apply(.compareAndSwap(key: decomposed, expected: Array(repeating: 7, count: 300), new: nil))
    for round in 0..<50 {
      apply(.put(key: round.isMultiple(of: 2) ? decomposed : composed, value: [UInt8(round)]))
      apply(.delete(key: round.isMultiple(of: 2) ? composed : decomposed))
    }
    #expect(kv.count == 0 && kv.snapshotBytes == 2)
    // A snapshot that holds both spellings (written by hand: a store never does) restores as one key.
    var w = WireWriter()
    w.writeVarint(1)
    w.writeVarint(2)
    for (key, value) in [(decomposed, [UInt8](repeating: 1, count: 10)), (composed, [2])] {
      w.writeString(key)
      w.writeBytes(value)
      w.writeVarint(9)
    }
    var restored = KVStore()
    try restored.restore(from: w.bytes)
    #expect(restored.count == 1)
    #expect(restored.snapshotBytes == restored.snapshot().count)
  }

  @Test("commands and responses round-trip through the codec")
  func codec() throws {
    let commands: [KVCommand] = [
      .put(key: "k", value: [1, 2]), .delete(key: "é"), .compareAndSwap(key: "x", expected: nil, new: [0]),
      .compareAndSwap(key: "x", expected: [1], new: nil),
    ]
    for c in commands { #expect(try KVCommand(wireBytes: c.wireBytes()) == c) }
    let responses: [KVResponse] = [.done(previous: nil), .done(previous: [1]), .swapped(true, current: [2])]
    for r in responses { #expect(try KVResponse(wireBytes: r.wireBytes()) == r) }
  }
}

@Suite("Exactly-once sessions (thesis §6.3)")
struct SessionTests {
  typealias Machine = ReplicatedStateMachine<KVStore>

  func command(_ c: KVCommand, _ request: RequestID?, at millis: UInt64 = 0, ack: UInt64 = 0) -> ReplicatedCommand<
    KVCommand
  > {
    ReplicatedCommand(timestampMillis: millis, request: request, acknowledgedThrough: ack, body: .command(c))
  }

  @Test("a retried request is applied once and answered with the remembered response")
  func duplicateSuppressed() {
    var m = Machine(KVStore())
    guard case .sessionRegistered(let s) = m.apply(ReplicatedCommand(timestampMillis: 0, body: .registerSession), at: 1)
    else {
      Issue.record("no session")
      return
    }
    let req = RequestID(session: s, sequence: 1)
    guard case .applied(let first) = m.apply(command(.put(key: "a", value: [1]), req), at: 2) else {
      Issue.record("not applied")
      return
    }
    guard case .duplicate(let again, let appliedAt) = m.apply(command(.put(key: "a", value: [1]), req), at: 3) else {
      Issue.record("applied twice")
      return
    }
    #expect(first == again)
    #expect(appliedAt == 2, "a duplicate names the entry that applied the request")
    // A different command under the same request id is still the same request: not applied.
    guard case .duplicate = m.apply(command(.put(key: "a", value: [9]), req), at: 4) else {
      Issue.record("applied a duplicate request id")
      return
    }
    #expect(m.machine.value("a") == [1])
  }

  @Test("acknowledged responses are forgotten, and a very late retry of one is refused rather than re-applied")
  func acknowledgedForgotten() {
    var m = Machine(KVStore())
    _ = m.apply(ReplicatedCommand(timestampMillis: 0, body: .registerSession), at: 1)
    _ = m.apply(command(.put(key: "a", value: [1]), RequestID(session: 1, sequence: 1)), at: 2)
    _ = m.apply(command(.put(key: "a", value: [2]), RequestID(session: 1, sequence: 2), ack: 1), at: 3)
    guard
      case .responseForgotten = m.apply(command(.put(key: "a", value: [1]), RequestID(session: 1, sequence: 1)), at: 4)
    else {
      Issue.record("expected the forgotten response to be refused")
      return
    }
    #expect(m.machine.value("a") == [2])
  }

  @Test("sessions expire by log time, identically on every replica, and an expired session is refused")
  func expiry() {
    var m = Machine(KVStore(), policy: SessionPolicy(timeoutMillis: 1000))
    _ = m.apply(ReplicatedCommand(timestampMillis: 0, body: .registerSession), at: 1)
    _ = m.apply(ReplicatedCommand(timestampMillis: 5000, body: .keepAlive), at: 2)
    guard
      case .sessionExpired(1) = m.apply(
        command(.put(key: "a", value: [1]), RequestID(session: 1, sequence: 1), at: 5000), at: 3)
    else {
      Issue.record("expected expiry")
      return
    }
    #expect(m.machine.value("a") == nil)
  }

  @Test("the session table is bounded: the least recently active session is evicted")
  func bounded() {
    var m = Machine(KVStore(), policy: SessionPolicy(maxSessions: 2))
    for i in 1...3 { _ = m.apply(ReplicatedCommand(timestampMillis: UInt64(i), body: .registerSession), at: UInt64(i)) }
    #expect(m.sessionCount == 2)
    guard case .sessionExpired(1) = m.apply(command(.delete(key: "x"), RequestID(session: 1, sequence: 1)), at: 4)
    else {
      Issue.record("the oldest session should have been evicted")
      return
    }
  }

  @Test("snapshots carry sessions, so duplicates are still detected after a restore")
  func snapshotCarriesSessions() throws {
    var m = Machine(KVStore())
    _ = m.apply(ReplicatedCommand(timestampMillis: 0, body: .registerSession), at: 1)
    _ = m.apply(command(.put(key: "a", value: [1]), RequestID(session: 1, sequence: 1)), at: 2)
    var restored = Machine(KVStore())
    try restored.restore(from: m.snapshot())
    guard
      case .duplicate = restored.apply(command(.put(key: "a", value: [1]), RequestID(session: 1, sequence: 1)), at: 3)
    else {
      Issue.record("session lost in the snapshot")
      return
    }
  }

  @Test("an undecodable entry is reported, not applied")
  func undecodable() {
    var m = Machine(KVStore())
    guard case .undecodable = m.apply(entry: [0xff, 0xff], at: 1) else {
      Issue.record("garbage applied")
      return
    }
  }

  @Test("a replica restored from a snapshot expires sessions at the same entries as one that applied the log")
  func expiryIsDeterministicAcrossSnapshots() throws {
    // Expiry scans run every tenth of the timeout (100 ms of log time here).
    var applied = Machine(KVStore(), policy: SessionPolicy(timeoutMillis: 1000))
    _ = applied.apply(ReplicatedCommand(timestampMillis: 500, body: .registerSession), at: 1)
    _ = applied.apply(command(.put(key: "x", value: [1]), nil, at: 1450), at: 2)  // scans
    _ = applied.apply(command(.put(key: "x", value: [2]), nil, at: 1520), at: 3)  // no scan yet
    var restored = Machine(KVStore(), policy: SessionPolicy(timeoutMillis: 1000))
    try restored.restore(from: applied.snapshot())
    let later: [(ReplicatedCommand<KVCommand>, UInt64)] = [
      (command(.put(key: "x", value: [3]), nil, at: 1555), 4),
      (command(.put(key: "a", value: [1]), RequestID(session: 1, sequence: 1), at: 1556), 5),
    ]
    for (entry, index) in later {
      let a = applied.apply(entry, at: index)
      let b = restored.apply(entry, at: index)
      #expect("\(a)" == "\(b)", "entry \(index): \(a) on the replica that applied the log, \(b) on the restored one")
    }
    #expect(applied.machine.value("a") == restored.machine.value("a"))
  }
}

extension SessionTests {
  @Test("a request pipelined out of order is applied once even after the bound evicted later responses")
  func pipelinedOutOfOrderAfterEviction() {
    var m = Machine(KVStore(), policy: SessionPolicy(maxResponsesPerSession: 2))
    _ = m.apply(ReplicatedCommand(timestampMillis: 0, body: .registerSession), at: 1)
    for (i, seq) in [UInt64(2), 3, 4].enumerated() {
      _ = m.apply(command(.put(key: "k\(seq)", value: [1]), RequestID(session: 1, sequence: seq)), at: UInt64(2 + i))
    }
    // Request 2's response was evicted; request 1 was never applied and must be now.
    guard case .applied = m.apply(command(.put(key: "k1", value: [1]), RequestID(session: 1, sequence: 1)), at: 5)
    else {
      Issue.record("request 1 was refused although it was never applied")
      return
    }
    guard
      case .responseForgotten = m.apply(command(.put(key: "k2", value: [9]), RequestID(session: 1, sequence: 2)), at: 6)
    else {
      Issue.record("request 2 must not be applied twice")
      return
    }
    #expect(m.machine.value("k2") == [1])
  }

  @Test(
    "acknowledging part of a pipeline forgets exactly those responses, out-of-order ones included, and a snapshot keeps the rest"
  )
  func partialAcknowledgement() throws {
    var m = Machine(KVStore())
    _ = m.apply(ReplicatedCommand(timestampMillis: 0, body: .registerSession), at: 1)
    // Requests 1–5 commit in the order 3, 1, 5, 2, 4.
    for (i, seq) in [UInt64(3), 1, 5, 2, 4].enumerated() {
      let outcome = m.apply(
        command(.put(key: "k\(seq)", value: [UInt8(seq)]), RequestID(session: 1, sequence: seq)), at: UInt64(2 + i))
      guard case .applied = outcome else {
        Issue.record("request \(seq) was not applied: \(outcome)")
        return
      }
    }
    let before = m.rememberedResponseBytes(of: 1)
    // Request 6 acknowledges 1–3: their responses go; 4 and 5 are remembered still.
    _ = m.apply(command(.delete(key: "k1"), RequestID(session: 1, sequence: 6), ack: 3), at: 7)
    var restored = Machine(KVStore())
    try restored.restore(from: m.snapshot())
    #expect(restored.snapshot() == m.snapshot())
    for machine in [m, restored] {
      var machine = machine
      #expect(machine.rememberedResponseBytes(of: 1) < before)
      for seq in [UInt64(1), 2, 3] {
        guard
          case .responseForgotten = machine.apply(
            command(.put(key: "x", value: []), RequestID(session: 1, sequence: seq)), at: 8)
        else {
          Issue.record("acknowledged request \(seq) was not refused")
          return
        }
      }
      for seq in [UInt64(4), 5, 6] {
        guard
          case .duplicate(_, let appliedAt) = machine.apply(
            command(.put(key: "x", value: []), RequestID(session: 1, sequence: seq)), at: 9)
        else {
          Issue.record("unacknowledged request \(seq) was not answered from memory")
          return
        }
        #expect(appliedAt == [UInt64(4): 6, 5: 4, 6: 7][seq])
      }
      #expect(machine.machine.value("x") == nil)
    }
  }
}

extension SessionTests {
  /// The bound on remembered responses forgets the oldest ones without their being acknowledged; the session
  /// table keeps their sequence numbers so that a late retry is refused. A replica restored from a snapshot must
  /// know them too: otherwise it applies the retry a second time, and diverges from the replicas that applied the
  /// log. (Every replica encodes its snapshots the same way, so comparing snapshot bytes cannot see the loss.)
  @Test("a snapshot keeps the requests whose responses the bound forgot: a restored replica refuses their retries")
  func snapshotKeepsForgottenRequests() throws {
    let policy = SessionPolicy(maxResponsesPerSession: 2)
    var m = Machine(KVStore(), policy: policy)
    _ = m.apply(ReplicatedCommand(timestampMillis: 0, body: .registerSession), at: 1)
    for seq in UInt64(1)...3 {
      _ = m.apply(command(.put(key: "k", value: [UInt8(seq)]), RequestID(session: 1, sequence: seq)), at: 1 + seq)
    }
    // Request 1's response was pushed out by 2 and 3, unacknowledged.
    var restored = Machine(KVStore(), policy: policy)
    try restored.restore(from: m.snapshot())
    let lateRetry = command(.put(key: "k", value: [1]), RequestID(session: 1, sequence: 1))
    for (name, machine) in [("the replica that applied the log", m), ("the restored replica", restored)] {
      var machine = machine
      let outcome = machine.apply(lateRetry, at: 5)
      guard case .responseForgotten = outcome else {
        Issue.record("\(name) answered a late retry of request 1 with \(outcome)")
        continue
      }
      #expect(machine.machine.value("k") == [3], "\(name)")
    }
  }
}
