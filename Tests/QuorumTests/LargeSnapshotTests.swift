import Quorum
import QuorumTestSupport
import Testing

/// A group's state may outgrow what one message may carry: its snapshots must still restore, or a restart (or a
/// follower catching up) fails for good once the log behind the snapshot is compacted.
@Suite("Snapshots larger than one message's limits restore")
struct LargeSnapshotTests {
  @Test("a group holding 70 values of 1 MiB (over the 64 MiB a message may carry) restores its snapshot", .heavy)
  func moreBytesThanAMessage() throws {
    var machine = ServiceMachine([KeyValueService(), LockService()])
    let value = [UInt8](repeating: 7, count: 1 << 20)
    for i in 0..<70 {
      let command = ServiceCommand(service: "kv", payload: KVCommand.put(key: "k\(i)", value: value).wireBytes())
      _ = machine.apply(command, context: ApplyContext(index: UInt64(i + 1), timestampMillis: 0))
    }
    let leader = ReplicatedStateMachine(machine)
    let snapshot = leader.snapshot()
    #expect(snapshot.count > WireLimits.default.maxBytesLength)
    var replica = ReplicatedStateMachine(ServiceMachine([KeyValueService(), LockService()]))
    try replica.restore(from: snapshot)
    let query = ServiceQuery(service: "kv", payload: KVQuery.get(key: "k69").wireBytes())
    guard case .ok(let bytes) = replica.machine.query(query) else {
      Issue.record("the restored group does not answer")
      return
    }
    #expect(try KVQueryResult(wireBytes: bytes) == .value(value))
  }

  @Test("a snapshot's limits still refuse a length or count the snapshot cannot hold")
  func limitsFollowTheSnapshot() {
    // A count of 2^40 elements in a 5-byte input, and a byte string claiming 1 MiB in 4 bytes.
    var count = WireWriter()
    count.writeVarint(1)
    count.writeVarint(1 << 40)
    #expect(throws: WireError.self) {
      var store = KVStore()
      try store.restore(from: count.bytes)
    }
    let limits = WireLimits.snapshot([1, 2, 3, 4])
    #expect(limits.maxBytesLength == 4 && limits.maxCollectionCount == 4)
  }
}
