import QuorumCore
import QuorumSimulation
import Testing

@testable import QuorumTransactions

@Suite("Sharded transactions in simulation: lost requests and answers, client crashes, a racing resolver")
struct ShardedSimulationTests {
  @Test("list-append transactions over three shards are strictly serializable", arguments: 1...8 as ClosedRange<UInt64>)
  func listAppend(seed: UInt64) async throws {
    let simulation = ShardedTransactionSimulation(seed: seed, trace: SimulationTrace(enabled: true))
    do {
      let stats = try await SimulationRunner.offPool { try simulation.run() }
      #expect(stats.committed > 20, "seed \(seed): \(stats)")
      #expect(stats.readsChecked > 10, "seed \(seed): \(stats)")
    } catch {
      Issue.record("seed \(seed): \(error)")
    }
  }

  @Test(
    "bank transfers between shards conserve the total in every committed read", arguments: 1...6 as ClosedRange<UInt64>)
  func bank(seed: UInt64) async throws {
    var options = ShardedTransactionSimulationOptions()
    options.workload = .bank
    options.keys = 6
    let simulation = ShardedTransactionSimulation(seed: seed, options: options, trace: SimulationTrace(enabled: true))
    do {
      let stats = try await SimulationRunner.offPool { try simulation.run() }
      #expect(stats.committed > 20 && stats.readsChecked > 3, "seed \(seed): \(stats)")
    } catch {
      Issue.record("seed \(seed): \(error)")
    }
  }

  @Test("recovery racing live commits: a resolver that settles anything prepared at once never breaks atomicity")
  func resolverRacesCommits() async throws {
    var resolved = 0
    for seed in 200...203 as ClosedRange<UInt64> {
      var options = ShardedTransactionSimulationOptions()
      options.resolverMinimumAgeMillis = 0
      options.resolverInterval = .milliseconds(2)
      options.clientCrashProbability = 0
      let stats = try await SimulationRunner.offPool { [options] in
        try ShardedTransactionSimulation(seed: seed, options: options, trace: SimulationTrace(enabled: false)).run()
      }
      #expect(stats.committed > 10, "seed \(seed): \(stats)")
      resolved += stats.resolved
    }
    #expect(resolved > 0, "the resolver raced and settled live transactions")
  }

  @Test("across seeds the faults really happen: crashes, unknown outcomes, resolutions")
  func faultsHappen() async throws {
    var total = ShardedTransactionSimulationStats()
    for seed in 100...105 as ClosedRange<UInt64> {
      let stats = try await SimulationRunner.offPool {
        try ShardedTransactionSimulation(seed: seed, trace: SimulationTrace(enabled: false)).run()
      }
      total.crashes += stats.crashes
      total.unknown += stats.unknown
      total.resolved += stats.resolved
      total.aborted += stats.aborted
    }
    #expect(total.crashes > 0 && total.unknown > 0 && total.resolved > 0 && total.aborted > 0, "\(total)")
  }
}
