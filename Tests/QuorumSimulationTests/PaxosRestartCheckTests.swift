import QuorumCore
import QuorumPaxos
import Testing

@testable import QuorumSimulation

@Suite("Multi-Paxos core simulation: restarts are checked as the engine checks them")
struct PaxosRestartCheckTests {
  @Test("a durable log holding a slot past the largest reach fails the run instead of restarting")
  func restartRefusesFarSlot() throws {
    let driver = PaxosDriver(options: PaxosSimulationOptions(), seed: 1)
    let shell = CoreSimulationShell(
      driver: driver, seed: 1, trace: SimulationTrace(enabled: false, capacity: 10))
    let ballot = Ballot(round: 1, node: 1)
    var durable = PaxosDriver.Durable()
    durable.hardState = PaxosHardState(promised: ballot)
    let far = 2 + MultiPaxosCore.maxAcceptReach + 1
    for slot in [1, 2, far] { durable.entries[slot] = PaxosEntry(index: slot, ballot: ballot, data: [1]) }
    #expect(throws: SimulationFailure.self) {
      _ = try driver.restartedCore(1, from: durable, random: SeededRandom(seed: 1), in: shell)
    }
    // The same log without the far slot restarts.
    durable.entries[far] = nil
    let core = try driver.restartedCore(1, from: durable, random: SeededRandom(seed: 1), in: shell)
    #expect(core.lastSlot == 2)
  }
}
