import Quorum
import Testing

@Suite("A group's composed machine restores from a snapshot")
struct ServiceMachineSnapshotTests {
  private func put(_ key: String, in machine: inout ServiceMachine, at index: UInt64) {
    let command = ServiceCommand(service: "kv", payload: KVCommand.put(key: key, value: [1]).wireBytes())
    _ = machine.apply(command, context: ApplyContext(index: index, timestampMillis: 0))
  }

  private func get(_ key: String, from machine: ServiceMachine) throws -> [UInt8]? {
    guard case .ok(let bytes) = machine.query(ServiceQuery(service: "kv", payload: KVQuery.get(key: key).wireBytes()))
    else { return nil }
    guard case .value(let value) = try KVQueryResult(wireBytes: bytes) else { return nil }
    return value
  }

  @Test("a service the snapshot does not hold starts afresh, not with what this replica had applied")
  func missingServiceStartsAfresh() throws {
    var replica = ServiceMachine([KeyValueService(), LockService()])
    put("mine", in: &replica, at: 1)
    #expect(try get("mine", from: replica) == [1])
    // A snapshot taken where only locks ran (before the key-value service joined the group).
    try replica.restore(from: ServiceMachine([LockService()]).snapshot())
    #expect(try get("mine", from: replica) == nil)
  }

  @Test("a service the snapshot holds takes the snapshot's state")
  func heldServiceRestored() throws {
    var leader = ServiceMachine([KeyValueService(), LockService()])
    put("theirs", in: &leader, at: 1)
    var replica = ServiceMachine([KeyValueService(), LockService()])
    put("mine", in: &replica, at: 1)
    try replica.restore(from: leader.snapshot())
    #expect(try get("theirs", from: replica) == [1])
    #expect(try get("mine", from: replica) == nil)
  }
}
