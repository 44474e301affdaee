import QuorumCore
import QuorumSimulation
import Testing

@testable import QuorumTransactions

@Suite("The coordinator and participant actors in simulation: a bank under crashes, partitions and disk faults")
struct TransactionNodeSimulationTests {
  func run(_ seed: UInt64, _ options: TransactionNodeSimulationOptions) async -> TransactionNodeSimulationStats? {
    do {
      return try await SimulationRunner.offPool {
        try TransactionNodeSimulation(seed: seed, options: options, trace: SimulationTrace(enabled: true)).run()
      }
    } catch {
      Issue.record("seed \(seed) \(options.mode): \(error)")
      return nil
    }
  }

  @Test(
    "classic: local logs on simulated disks; atomic, conserved, and everything ends once nodes are back",
    arguments: 1...6 as ClosedRange<UInt64>)
  func classic(seed: UInt64) async {
    let stats = await run(seed, TransactionNodeSimulationOptions())
    #expect(
      (stats?.committed ?? 0) > 5 && (stats?.crashes ?? 0) > 0, "seed \(seed): \(stats.map(\.description) ?? "-")")
  }

  @Test(
    "non-blocking: a shared replicated record table with outages and lost answers",
    arguments: 1...6 as ClosedRange<UInt64>)
  func nonBlocking(seed: UInt64) async {
    var options = TransactionNodeSimulationOptions()
    options.mode = .nonBlocking
    let stats = await run(seed, options)
    #expect(
      (stats?.committed ?? 0) > 5 && (stats?.crashes ?? 0) > 0, "seed \(seed): \(stats.map(\.description) ?? "-")")
  }

  @Test(
    "non-blocking: with the coordinator down for good after the chaos, every branch still ends",
    arguments: 11...14 as ClosedRange<UInt64>)
  func nonBlockingWithoutCoordinator(seed: UInt64) async {
    var options = TransactionNodeSimulationOptions()
    options.mode = .nonBlocking
    options.coordinatorStaysDown = true
    let stats = await run(seed, options)
    #expect((stats?.committed ?? 0) > 0, "seed \(seed): \(stats.map(\.description) ?? "-")")
  }
}
