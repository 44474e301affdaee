import QuorumCore
import Testing

@testable import QuorumKV

@Suite("Sessions belong to principals, and are bounded per principal and in bytes")
struct SessionOwnershipTests {
  typealias Machine = ReplicatedStateMachine<KVStore>

  func register(_ m: inout Machine, as principal: String?, at index: UInt64, millis: UInt64 = 0) -> UInt64? {
    let outcome = m.apply(
      ReplicatedCommand(timestampMillis: millis, principal: principal, body: .registerSession), at: index)
    guard case .sessionRegistered(let id) = outcome else { return nil }
    return id
  }

  func command(
    _ c: KVCommand, _ request: RequestID?, by principal: String?, ack: UInt64 = 0, millis: UInt64 = 0
  ) -> ReplicatedCommand<KVCommand> {
    ReplicatedCommand(
      timestampMillis: millis, request: request, acknowledgedThrough: ack, principal: principal, body: .command(c))
  }

  @Test("a forged request on another principal's session is refused and leaves the real request to be applied")
  func forgeryRefused() throws {
    var m = Machine(KVStore())
    let alice = try #require(register(&m, as: "alice", at: 1))
    // Bob guesses Alice's next request number (and acknowledges everything, to make her forget).
    let forged = m.apply(
      command(.put(key: "balance", value: Array("0".utf8)), RequestID(session: alice, sequence: 1), by: "bob", ack: 9),
      at: 2)
    guard case .sessionNotOwned(let refused) = forged else {
      Issue.record("the forged request was not refused: \(forged)")
      return
    }
    #expect(refused == RequestID(session: alice, sequence: 1))
    #expect(m.machine.value("balance") == nil)
    // Alice's real request with that number is applied, not answered as a duplicate of Bob's.
    let real = m.apply(
      command(.put(key: "balance", value: Array("100".utf8)), RequestID(session: alice, sequence: 1), by: "alice"),
      at: 3)
    guard case .applied = real else {
      Issue.record("Alice's write was not applied: \(real)")
      return
    }
    #expect(m.machine.value("balance") == Array("100".utf8))
    // Keep-alives follow the same rule.
    guard
      case .sessionNotOwned = m.apply(
        ReplicatedCommand(
          timestampMillis: 0, request: RequestID(session: alice, sequence: 0), principal: "bob", body: .keepAlive),
        at: 4)
    else {
      Issue.record("a keep-alive of another principal's session was accepted")
      return
    }
  }

  @Test("an unauthenticated request cannot use a principal's session, nor a principal an unauthenticated one")
  func anonymousAndNamedDoNotMix() throws {
    var m = Machine(KVStore())
    let named = try #require(register(&m, as: "alice", at: 1))
    let anonymous = try #require(register(&m, as: nil, at: 2))
    guard
      case .sessionNotOwned = m.apply(
        command(.put(key: "a", value: [1]), RequestID(session: named, sequence: 1), by: nil), at: 3)
    else {
      Issue.record("an unauthenticated request used a principal's session")
      return
    }
    guard
      case .sessionNotOwned = m.apply(
        command(.put(key: "a", value: [2]), RequestID(session: anonymous, sequence: 1), by: "alice"), at: 4)
    else {
      Issue.record("a principal used an unauthenticated session")
      return
    }
    guard
      case .applied = m.apply(
        command(.put(key: "a", value: [3]), RequestID(session: anonymous, sequence: 1), by: nil), at: 5)
    else {
      Issue.record("the owner of an unauthenticated session was refused")
      return
    }
    #expect(m.machine.value("a") == [3])
  }

  @Test("a principal holds at most its quota of sessions; others are unaffected, and expiry frees the quota")
  func quotaPerPrincipal() throws {
    var m = Machine(KVStore(), policy: SessionPolicy(timeoutMillis: 1000, maxSessionsPerPrincipal: 2))
    _ = try #require(register(&m, as: "alice", at: 1))
    _ = try #require(register(&m, as: "alice", at: 2))
    let third = m.apply(ReplicatedCommand(timestampMillis: 0, principal: "alice", body: .registerSession), at: 3)
    guard case .sessionQuotaExceeded(let principal, let limit) = third else {
      Issue.record("a third session was opened past the quota: \(third)")
      return
    }
    #expect(principal == "alice" && limit == 2)
    #expect(m.sessionCount(of: "alice") == 2)
    #expect(register(&m, as: "bob", at: 4) != nil, "another principal's quota is its own")
    // Sessions without a principal count only against the table's bound.
    for index in UInt64(5)...8 { #expect(register(&m, as: nil, at: index) != nil) }
    // Once Alice's sessions expire (log time past the timeout), she may register again.
    #expect(register(&m, as: "alice", at: 9, millis: 5000) != nil)
    #expect(m.sessionCount(of: "alice") == 1)
  }

  @Test("remembered responses are bounded in bytes: the oldest are forgotten, the newest kept, snapshots stay small")
  func responseByteBudget() throws {
    let budget = 4096
    var m = Machine(KVStore(), policy: SessionPolicy(maxResponseBytesPerSession: budget))
    let session = try #require(register(&m, as: "alice", at: 1))
    let value = [UInt8](repeating: 7, count: 1024)
    // Every put returns the previous 1 KiB value, which the session remembers until acknowledged.
    for sequence in UInt64(1)...64 {
      _ = m.apply(
        command(.put(key: "k", value: value), RequestID(session: session, sequence: sequence), by: "alice"),
        at: sequence + 1)
    }
    #expect(m.rememberedResponseBytes(of: session) <= budget)
    #expect(m.rememberedResponseBytes(of: session) > 0, "the newest responses are still remembered")
    // The snapshot holds the one stored value and the bounded responses, not 64 remembered KiB.
    #expect(m.snapshot().count < 2 * budget)
    // The newest request is still answered as a duplicate; the oldest is refused, never applied twice.
    guard
      case .duplicate = m.apply(
        command(.put(key: "k", value: value), RequestID(session: session, sequence: 64), by: "alice"), at: 100)
    else {
      Issue.record("the newest response was forgotten")
      return
    }
    guard
      case .responseForgotten = m.apply(
        command(.put(key: "k", value: [1]), RequestID(session: session, sequence: 1), by: "alice"), at: 101)
    else {
      Issue.record("the oldest request was applied a second time")
      return
    }
    #expect(m.machine.value("k") == value)
  }

  @Test("snapshots keep each session's owner, and a snapshot of format 2 (no owners) is still read")
  func snapshotsKeepOwners() throws {
    var m = Machine(KVStore())
    let alice = try #require(register(&m, as: "alice", at: 1))
    var restored = Machine(KVStore())
    try restored.restore(from: m.snapshot())
    #expect(restored.sessionCount(of: "alice") == 1)
    guard
      case .sessionNotOwned = restored.apply(
        command(.put(key: "a", value: [1]), RequestID(session: alice, sequence: 1), by: "bob"), at: 2)
    else {
      Issue.record("the restored session forgot its owner")
      return
    }

    // Format 2: version, log time, applied index, then per session: id, last active, acknowledged, forgotten,
    // responses (sequence, index, response); then the machine.
    var store = KVStore()
    _ = store.apply(.put(key: "old", value: [5]), context: ApplyContext(index: 2, timestampMillis: 0))
    var writer = WireWriter()
    writer.writeVarint(2)
    writer.writeVarint(0)
    writer.writeVarint(2)
    writer.writeVarint(1)
    writer.writeVarint(1)  // session 1
    writer.writeVarint(0)
    writer.writeVarint(0)
    writer.writeArray([UInt64]())
    writer.writeVarint(1)
    writer.writeVarint(1)  // sequence 1, applied at index 2
    writer.writeVarint(2)
    KVResponse.done(previous: nil).encode(to: &writer)
    writer.writeBytes(store.snapshot())
    var old = Machine(KVStore())
    try old.restore(from: writer.bytes)
    #expect(old.machine.value("old") == [5])
    guard
      case .duplicate(_, let appliedAt) = old.apply(
        command(.put(key: "old", value: [6]), RequestID(session: 1, sequence: 1), by: nil), at: 3)
    else {
      Issue.record("a session from a format-2 snapshot lost its response")
      return
    }
    #expect(appliedAt == 2)
  }

  @Test("an entry without a principal encodes as before principals existed; one with a principal round-trips")
  func entryEncoding() throws {
    let plain = ReplicatedCommand<KVCommand>(
      timestampMillis: 5, request: RequestID(session: 1, sequence: 2), acknowledgedThrough: 1,
      body: .command(.delete(key: "k")))
    var expected = WireWriter()
    expected.writeVarint(5)
    expected.writeOptional(RequestID(session: 1, sequence: 2))
    expected.writeVarint(1)
    expected.writeByte(0)
    KVCommand.delete(key: "k").encode(to: &expected)
    #expect(plain.wireBytes() == expected.bytes)
    let owned = ReplicatedCommand<KVCommand>(timestampMillis: 5, principal: "alice", body: .registerSession)
    let decoded = try ReplicatedCommand<KVCommand>(wireBytes: owned.wireBytes())
    #expect(decoded.principal == "alice")
    guard case .registerSession = decoded.body else {
      Issue.record("the body changed: \(decoded.body)")
      return
    }
    #expect(try ReplicatedCommand<KVCommand>(wireBytes: plain.wireBytes()).principal == nil)
  }
}
