import Quorum
import QuorumTestSupport
import Testing

/// A group's composed machine, wrapped in its sessions: a replica restored from a snapshot must be structurally equal
/// to one that applied every entry, in every service.
@Suite("A group's restored machine equals one that applied every entry, service by service")
struct ServiceMachineEqualityTests {
  static let keys = ["a", "b", "c"]

  static func transaction(_ random: inout SeededRandom, millis: UInt64) -> TxnID {
    let newest = millis / 50
    let sequence = newest - min(newest, random.next() % 12)
    return TxnID(coordinator: NodeID(rawValue: 1), sequence: sequence, startedAtMillis: sequence * 50)
  }

  static func txnCommand(_ random: inout SeededRandom, millis: UInt64) -> HostedTxnCommand {
    let id = transaction(&random, millis: millis)
    let key = keys[Int(random.next() % UInt64(keys.count))]
    let write = TxnWrite(key: key, value: [UInt8(truncatingIfNeeded: random.next())])
    switch random.next() % 7 {
    case 0: return .shard(.read(id, key: key))
    case 1: return .shard(.prepare(id, writes: [write], participants: [1, 2], recordGroup: 1))
    case 2: return .shard(.commit(id))
    case 3: return .shard(.abort(id))
    case 4: return .shard(.commitLocal(id, reads: [key], writes: [write]))
    case 5: return .shard(.records(.decide(id, .commit, participants: [1, 2], finisher: nil, kind: .groups)))
    default: return .clock(wallMillis: millis + random.next() % 20)
    }
  }

  static func lockCommand(_ random: inout SeededRandom, index: UInt64) -> LockCommand {
    let session = LockSessionID(rawValue: max(1, index - min(index - 1, 1 + random.next() % 30)))
    let name = keys[Int(random.next() % UInt64(keys.count))]
    switch random.next() % 5 {
    case 0: return .openSession(ttlMillis: 1_000 + random.next() % 2_000)
    case 1: return .keepAlive(session: session)
    case 2, 3:
      return .acquire(
        lock: name, session: session, mode: random.chance(0.5) ? .exclusive : .shared, wait: random.chance(0.6),
        waitTimeoutMillis: random.chance(0.5) ? 100 + random.next() % 500 : nil)
    default:
      return .release(
        lock: name, session: session, token: FencingToken(rawValue: index - min(index, random.next() % 40)))
    }
  }

  static func command(_ random: inout SeededRandom, index: UInt64, millis: UInt64) -> ServiceCommand {
    let key = keys[Int(random.next() % UInt64(keys.count))]
    switch random.next() % 3 {
    case 0:
      let kv: KVCommand =
        random.chance(0.7) ? .put(key: key, value: [UInt8(truncatingIfNeeded: random.next())]) : .delete(key: key)
      return ServiceCommand(service: KeyValueService.name, payload: kv.wireBytes())
    case 1: return ServiceCommand(service: LockService.name, payload: lockCommand(&random, index: index).wireBytes())
    default:
      return ServiceCommand(service: HostedTxnService.name, payload: txnCommand(&random, millis: millis).wireBytes())
    }
  }

  @Test(
    "random commands for every standard service under sessions: restore(snapshot(m)) == m after every entry",
    arguments: [65_000_031, 65_000_032] as [UInt64])
  func everyService(seed: UInt64) throws {
    let services = try #require(
      ServiceCatalog.standard.services(named: [KeyValueService.name, LockService.name, HostedTxnService.name]))
    let policy = SessionPolicy(
      timeoutMillis: 3_000, maxSessions: 8, maxResponsesPerSession: 2, maxSessionsPerPrincipal: 4,
      maxResponseBytesPerSession: 256)
    let workload = SessionWorkload(
      policy: policy, makeMachine: { ServiceMachine(services) },
      command: { random, index, millis in
        Self.command(&random, index: index, millis: millis)
      })
    let tally = try workload.run(seed: seed, steps: 1_500)
    #expect(tally.restores > 30, "seed \(seed): \(tally)")
    #expect(tally.forgottenUnacknowledged > 5, "seed \(seed): \(tally)")
  }

  @Test("a service that differs is named, and a machine equals itself")
  func differingServiceNamed() {
    let services = ServiceCatalog.standard.services(named: [KeyValueService.name, LockService.name]) ?? []
    let empty = ServiceMachine(services)
    var written = empty
    _ = written.apply(
      ServiceCommand(service: KeyValueService.name, payload: KVCommand.put(key: "a", value: [1]).wireBytes()),
      context: ApplyContext(index: 1, timestampMillis: 0))
    #expect(empty == empty)
    #expect(written != empty)
    #expect(written.differingServices(from: empty) == [KeyValueService.name])
  }

  @Test(
    "a hosted shard restored from a snapshot equals one that applied every entry, offset included",
    arguments: [65_000_033] as [UInt64])
  func hostedShard(seed: UInt64) throws {
    var random = SeededRandom(seed: seed)
    var shard = HostedTxnService().makeMachine()
    var twin = shard
    var millis: UInt64 = 1_000
    for index in 1...1_000 as ClosedRange<UInt64> {
      millis += random.next() % 40
      let command = Self.txnCommand(&random, millis: millis)
      let context = ApplyContext(index: index, timestampMillis: millis)
      let response = shard.apply(command, context: context)
      #expect(twin.apply(command, context: context) == response, "seed \(seed) entry \(index)")
      if random.chance(0.05) {
        twin = HostedTxnService().makeMachine()
        try twin.restore(from: shard.snapshot())
      }
      #expect(twin == shard, "seed \(seed) entry \(index): a restored copy differs from the shard")
    }
  }
}
