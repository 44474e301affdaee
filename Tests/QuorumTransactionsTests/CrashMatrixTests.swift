import QuorumCore
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

  /// The number of steps (events other than ticks) of an undisturbed run.
  static func steps(_ mode: CoreWorld.Mode, seed: UInt64) throws -> Int {
    let world = try world(mode, seed: seed)
    #expect(world.runUntilSettled(coordinatorToo: true), "undisturbed run did not settle: \(world.description)")
    #expect(world.finalViolations(initialTotal: initialTotal).isEmpty, "\(world.description)")
    #expect(world.results.count == 3, "every transaction reported an outcome: \(world.results)")
    return world.steps
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

  @Test(
    "classic and non-blocking: any node crashed at any step and restarted — atomic, and every transaction ends",
    arguments: CoreWorld.Mode.allCases, [UInt64(11), 12])
  func crashEverywhere(mode: CoreWorld.Mode, seed: UInt64) throws {
    let total = try Self.steps(mode, seed: seed)
    #expect(total > 20, "the workload has steps to crash at: \(total)")
    var runs = 0
    for k in 0...total {
      for node in [NodeID(1)] + Self.participants {
        let problems = try Self.crashAndRestart(mode, seed: seed, node: node, at: k)
        runs += 1
        #expect(problems.isEmpty, "mode \(mode) seed \(seed): crash \(node) at step \(k): \(problems)")
      }
    }
    #expect(runs == (total + 1) * 4)
  }

  @Test("the same under a faulty network (drops and duplicates), at every step", arguments: CoreWorld.Mode.allCases)
  func crashEverywhereFaulty(mode: CoreWorld.Mode) throws {
    let faults = CoreWorld.Faults(dropProbability: 0.1, duplicateProbability: 0.2)
    for seed in 21...23 as ClosedRange<UInt64> {
      let world = try Self.world(mode, seed: seed, faults: faults)
      #expect(world.runUntilSettled(coordinatorToo: true), "seed \(seed) \(mode): did not settle")
      let total = world.steps
      for k in stride(from: 0, through: total, by: 2) {
        for node in [NodeID(1)] + Self.participants {
          let problems = try Self.crashAndRestart(mode, seed: seed, node: node, at: k, faults: faults)
          #expect(problems.isEmpty, "mode \(mode) seed \(seed) faulty: crash \(node) at step \(k): \(problems)")
        }
      }
    }
  }

  @Test("non-blocking: the coordinator crashed at any step and never back — every participant still ends, atomically")
  func nonBlockingWithoutCoordinator() throws {
    for seed in [UInt64(31), 32, 33] {
      let total = try Self.steps(.nonBlocking, seed: seed)
      for k in 0...total {
        let world = try Self.world(.nonBlocking, seed: seed)
        Self.advance(world, toStep: k)
        world.crash(1)
        let settled = world.runUntilSettled(coordinatorToo: false)
        world.check()
        #expect(settled, "seed \(seed): coordinator crashed at step \(k), participants did not all end")
        #expect(world.violations.isEmpty, "seed \(seed): coordinator crashed at step \(k): \(world.violations)")
      }
    }
  }

  @Test("classic: with the coordinator gone for good, some crash points leave participants blocked in doubt")
  func classicBlocksWithoutCoordinator() throws {
    let seed: UInt64 = 31
    let total = try Self.steps(.classic, seed: seed)
    var blocked = 0
    for k in 0...total {
      let world = try Self.world(.classic, seed: seed)
      Self.advance(world, toStep: k)
      world.crash(1)
      if !world.runUntilSettled(coordinatorToo: false, maxEvents: 3_000) { blocked += 1 }
      world.check()
      #expect(world.violations.isEmpty, "seed \(seed): coordinator crashed at step \(k): \(world.violations)")
    }
    #expect(blocked > 0, "classic two-phase commit blocks when the coordinator dies after everyone prepared")
  }
}
