import QuorumCore
import QuorumSimulation
import Testing

@testable import QuorumTransactions

/// Crashes every node at every step of a small workload (before and after each durable write, each message,
/// each application call), over the pure cores in a deterministic world, and checks atomicity and termination.
@Suite("Crash matrix: the coordinator and each participant crashed at every step")
struct CrashMatrixTests {
  static let participants: [NodeID] = [2, 3, 4]
  static let initialTotal = 300

  /// Two transfers (one with a read-only participant) and a one-phase deposit, all begun at once.
  static func world(_ mode: CoreWorld.Mode, seed: UInt64, faults: CoreWorld.Faults = .init()) throws -> CoreWorld {
    let world = try CoreWorld(mode: mode, seed: seed, participants: participants, faults: faults)
    world.transfer(1, from: 2, to: 3, amount: 10)
    world.transfer(2, from: 3, to: 4, amount: 7, readers: [2])
    world.deposit(3, at: 4, amount: 5)
    return world
  }

  /// The number of steps (events other than ticks) of an undisturbed run, and what is wrong with that run.
  /// Under `faults` (lost and repeated messages) only settling is checked.
  static func steps(
    _ mode: CoreWorld.Mode, seed: UInt64, faults: CoreWorld.Faults? = nil
  ) throws -> (steps: Int, problems: [String]) {
    let world = try world(mode, seed: seed, faults: faults ?? .init())
    var problems: [String] = []
    if !world.runUntilSettled(coordinatorToo: true) { problems.append("undisturbed run did not settle: \(world)") }
    guard faults == nil else { return (world.steps, problems) }
    problems += world.finalViolations(initialTotal: initialTotal).map { "undisturbed run: \($0)" }
    if world.results.count != 3 { problems.append("not every transaction reported an outcome: \(world.results)") }
    return (world.steps, problems)
  }

  /// Runs until `steps` steps were taken (or the world settles first).
  static func advance(_ world: CoreWorld, toStep step: Int) {
    var guardrail = 0
    while world.steps < step && guardrail < 100_000 {
      if world.settled(coordinatorToo: true) && world.queue.isEmpty { return }
      world.step()
      guardrail += 1
    }
  }

  /// Crashes `node` at step `k`, keeps it down for a seeded number of events, restarts it, and returns what is
  /// wrong with the end state (empty when nothing is).
  static func crashAndRestart(
    _ mode: CoreWorld.Mode, seed: UInt64, node: NodeID, at k: Int, faults: CoreWorld.Faults = .init()
  ) throws -> [String] {
    let world = try world(mode, seed: seed, faults: faults)
    advance(world, toStep: k)
    world.crash(node)
    let down = Int.random(in: 0...60, using: &world.rng)
    for _ in 0..<down { world.step() }
    world.start(node)
    guard world.runUntilSettled(coordinatorToo: true) else {
      return ["did not settle after the restart: \(world.description)"]
    }
    return world.finalViolations(initialTotal: initialTotal)
  }

  // MARK: - Off the cooperative pool

  /// Runs a matrix on a thread of its own (``QuorumSimulation/SimulationRunner/offPool(_:)``). A matrix runs for
  /// seconds; on one of the cooperative pool's few threads (one per core), several of them at once starve every
  /// task beside them. In a full parallel run they did: the live actor tests' 2 ms ticks came up to 11 s late,
  /// so a coordinator's vote timeout of 250 ticks outlasted the 60 s commit deadline.
  static func offPool(_ matrix: @escaping @Sendable () throws -> [String]) async throws -> [String] {
    try await SimulationRunner.offPool(matrix)
  }

  /// What is wrong with running a matrix here: nothing outside any task (off the pool); inside one, it holds a
  /// thread of the cooperative pool. Every matrix starts with this check.
  static func poolThreadProblems() -> [String] {
    let inTask = withUnsafeCurrentTask { $0 != nil }
    return inTask ? ["the matrix ran inside a task, holding a thread of the cooperative pool for its whole run"] : []
  }

  /// Every node crashed at every step of a seeded run (every other step under `faults`), for each seed.
  static func crashEverywhere(
    _ mode: CoreWorld.Mode, seeds: [UInt64], every stride: Int = 1, faults: CoreWorld.Faults? = nil
  ) throws -> [String] {
    var problems = poolThreadProblems()
    for seed in seeds {
      let (total, undisturbed) = try steps(mode, seed: seed, faults: faults)
      problems += undisturbed.map { "seed \(seed): \($0)" }
      guard total > 20 else {
        problems.append("seed \(seed): the workload has too few steps to crash at: \(total)")
        continue
      }
      var runs = 0
      for k in Swift.stride(from: 0, through: total, by: stride) {
        for node in [NodeID(1)] + participants {
          let found = try crashAndRestart(mode, seed: seed, node: node, at: k, faults: faults ?? .init())
          problems += found.map { "seed \(seed): crash \(node) at step \(k): \($0)" }
          runs += 1
        }
      }
      let expected = (total / stride + 1) * (participants.count + 1)
      if runs != expected { problems.append("seed \(seed): \(runs) crash runs, expected \(expected)") }
    }
    return problems
  }

  /// Non-blocking mode with the coordinator crashed at every step and never restarted.
  static func nonBlockingWithoutCoordinator(seeds: [UInt64]) throws -> [String] {
    var problems = poolThreadProblems()
    for seed in seeds {
      let (total, undisturbed) = try steps(.nonBlocking, seed: seed)
      problems += undisturbed.map { "seed \(seed): \($0)" }
      for k in 0...total {
        let world = try world(.nonBlocking, seed: seed)
        advance(world, toStep: k)
        world.crash(1)
        let settled = world.runUntilSettled(coordinatorToo: false)
        world.check()
        if !settled { problems.append("seed \(seed): coordinator crashed at step \(k), participants did not all end") }
        problems += world.violations.map { "seed \(seed): coordinator crashed at step \(k): \($0)" }
      }
    }
    return problems
  }

  /// Classic mode with the coordinator crashed at every step and never restarted: what went wrong, and at how
  /// many steps participants stayed blocked.
  static func classicWithoutCoordinator(seed: UInt64) throws -> (problems: [String], blocked: Int) {
    var problems = poolThreadProblems()
    let (total, undisturbed) = try steps(.classic, seed: seed)
    problems += undisturbed
    var blocked = 0
    for k in 0...total {
      let world = try world(.classic, seed: seed)
      advance(world, toStep: k)
      world.crash(1)
      if !world.runUntilSettled(coordinatorToo: false, maxEvents: 3_000) { blocked += 1 }
      world.check()
      problems += world.violations.map { "coordinator crashed at step \(k): \($0)" }
    }
    return (problems, blocked)
  }

  // MARK: - Tests

  @Test(
    "classic and non-blocking: any node crashed at any step and restarted — atomic, and every transaction ends",
    arguments: CoreWorld.Mode.allCases, [UInt64(11), 12])
  func crashEverywhere(mode: CoreWorld.Mode, seed: UInt64) async throws {
    let problems = try await Self.offPool { try Self.crashEverywhere(mode, seeds: [seed]) }
    #expect(problems.isEmpty, "mode \(mode) seed \(seed): \(problems.count) problems: \(problems.prefix(5))")
  }

  @Test("the same under a faulty network (drops and duplicates), at every step", arguments: CoreWorld.Mode.allCases)
  func crashEverywhereFaulty(mode: CoreWorld.Mode) async throws {
    let faults = CoreWorld.Faults(dropProbability: 0.1, duplicateProbability: 0.2)
    let problems = try await Self.offPool {
      try Self.crashEverywhere(mode, seeds: [21, 22, 23], every: 2, faults: faults)
    }
    #expect(problems.isEmpty, "mode \(mode) faulty: \(problems.count) problems: \(problems.prefix(5))")
  }

  @Test("non-blocking: the coordinator crashed at any step and never back — every participant still ends, atomically")
  func nonBlockingWithoutCoordinator() async throws {
    let problems = try await Self.offPool { try Self.nonBlockingWithoutCoordinator(seeds: [31, 32, 33]) }
    #expect(problems.isEmpty, "\(problems.count) problems: \(problems.prefix(5))")
  }

  @Test("classic: with the coordinator gone for good, some crash points leave participants blocked in doubt")
  func classicBlocksWithoutCoordinator() async throws {
    let (problems, blocked) = try await SimulationRunner.offPool { try Self.classicWithoutCoordinator(seed: 31) }
    #expect(problems.isEmpty, "seed 31: \(problems.count) problems: \(problems.prefix(5))")
    #expect(blocked > 0, "classic two-phase commit blocks when the coordinator dies after everyone prepared")
  }

  @Test("a crash matrix run inside a task is reported: it would hold a cooperative-pool thread for seconds")
  func matrixRefusesThePool() async throws {
    #expect(!Self.poolThreadProblems().isEmpty, "the check sees the test's own task")
    #expect(try await Self.offPool { Self.poolThreadProblems() }.isEmpty, "off the pool, no task")
  }
}
