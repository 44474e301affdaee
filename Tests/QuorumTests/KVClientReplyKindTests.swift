import QuorumCore
import QuorumKV
import Testing

/// The in-process ``KVClient`` given an answer of the wrong kind (a replica of a mismatched build, or a bug): it
/// throws ``KVClientError/badReply(_:)`` rather than reading the answer as an absent key or an empty page.
@Suite("KVClient refuses answers of the wrong kind")
struct KVClientReplyKindTests {
  /// A one-member "log" that answers every read with `read` and every write with `write`.
  struct WrongKindLog: ReplicatedLog {
    typealias Machine = KVStore
    let read: KVQueryResult
    let write: KVResponse

    func propose(_ command: KVCommand, request: RequestID?) async throws -> KVResponse { write }
    func read(_ query: KVQuery, consistency: ReadConsistency) async throws -> KVQueryResult { read }
    func registerSession() async throws -> UInt64 { 1 }
  }

  private func client(read: KVQueryResult, write: KVResponse) -> KVClient<WrongKindLog> {
    KVClient(members: [1: WrongKindLog(read: read, write: write)], retry: RetryPolicy(maxAttempts: 1))
  }

  /// Expects `call` to throw ``KVClientError/badReply(_:)``.
  private func expectBadReply<T>(
    _ call: () async throws -> T, sourceLocation: SourceLocation = #_sourceLocation
  ) async {
    let error = await #expect(throws: KVClientError.self, sourceLocation: sourceLocation) { _ = try await call() }
    guard case .badReply? = error else {
      Issue.record("expected badReply, got \(String(describing: error))", sourceLocation: sourceLocation)
      return
    }
  }

  @Test("a get answered with a page, or a count, throws badReply instead of returning nil")
  func getAnsweredWithAnotherKind() async {
    for answer in [KVQueryResult.page([KVPair("a", [1], modifiedAt: 1)], next: nil), .count(3), .entries([])] {
      let kv = client(read: answer, write: .done(previous: nil))
      await expectBadReply { try await kv.get("a") }
      await expectBadReply { try await kv.get("a", as: String.self) }
    }
  }

  @Test("a scan's page answered with a value throws badReply instead of ending the scan empty")
  func scanAnsweredWithAValue() async {
    let kv = client(read: .value([1, 2]), write: .done(previous: nil))
    await expectBadReply { try await kv.scan(prefix: "") }
  }

  @Test("a put or delete answered with a swap result, and a swap answered with a put's, throw badReply")
  func writesAnsweredWithAnotherKind() async {
    let swapAnswer = client(read: .value(nil), write: .swapped(true, current: [1]))
    await expectBadReply { try await swapAnswer.put("a", "x") }
    await expectBadReply { try await swapAnswer.delete("a") }
    let putAnswer = client(read: .value(nil), write: .done(previous: [1]))
    await expectBadReply { try await putAnswer.compareAndSwap("a", expected: "x", new: "y") }
  }

  @Test("answers of the right kind still come back as they are")
  func rightKinds() async throws {
    let kv = client(read: .value([7]), write: .swapped(false, current: [9]))
    #expect(try await kv.get("a") == [7])
    let swap = try await kv.compareAndSwap("a", expected: [1] as [UInt8], new: [2])
    #expect(swap.swapped == false && swap.current == [9])
    let pages = client(read: .page([KVPair("a", [1], modifiedAt: 1)], next: nil), write: .done(previous: [3]))
    #expect(try await pages.scan(prefix: "").map(\.key) == ["a"])
    #expect(try await pages.put("a", [4] as [UInt8]) == [3])
  }
}
