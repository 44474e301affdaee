// swift-tools-version: 6.1
import PackageDescription

// Quorum has no package dependencies: only the toolchain's own modules (Foundation, Dispatch,
// Synchronization, Glibc, Testing). Swift 6 language mode gives complete strict concurrency checking.
let settings: [SwiftSetting] = [
  .swiftLanguageMode(.v6),
  .enableUpcomingFeature("ExistentialAny"),
  .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
  name: "Quorum",
  products: [
    .library(name: "QuorumCore", targets: ["QuorumCore"]),
    .library(name: "QuorumStorage", targets: ["QuorumStorage"]),
    .library(name: "QuorumSimulation", targets: ["QuorumSimulation"]),
    .library(name: "QuorumRaft", targets: ["QuorumRaft"]),
    .library(name: "QuorumKV", targets: ["QuorumKV"]),
    .library(name: "QuorumPaxos", targets: ["QuorumPaxos"]),
    .executable(name: "quorum", targets: ["QuorumCLI"]),
    .executable(name: "quorum-bench", targets: ["QuorumBench"]),
  ],
  targets: [
    .target(name: "QuorumCore", swiftSettings: settings),
    .target(name: "QuorumStorage", dependencies: ["QuorumCore"], swiftSettings: settings),
    .target(name: "QuorumRaft", dependencies: ["QuorumCore", "QuorumStorage"], swiftSettings: settings),
    .target(name: "QuorumPaxos", dependencies: ["QuorumCore", "QuorumStorage"], swiftSettings: settings),
    .target(name: "QuorumKV", dependencies: ["QuorumCore"], swiftSettings: settings),
    .target(
      name: "QuorumSimulation", dependencies: ["QuorumCore", "QuorumRaft", "QuorumPaxos", "QuorumKV"],
      swiftSettings: settings),
    .executableTarget(
      name: "QuorumCLI",
      dependencies: ["QuorumCore", "QuorumSimulation", "QuorumRaft", "QuorumPaxos", "QuorumKV", "QuorumStorage"],
      swiftSettings: settings),
    .executableTarget(
      name: "QuorumBench",
      dependencies: ["QuorumCore", "QuorumSimulation", "QuorumStorage", "QuorumRaft", "QuorumPaxos", "QuorumKV"],
      swiftSettings: settings),
    .plugin(
      name: "SimulatePlugin",
      capability: .command(
        intent: .custom(verb: "simulate", description: "Run seeded whole-cluster simulations (release build)"))),
    .plugin(
      name: "BenchmarkPlugin",
      capability: .command(
        intent: .custom(verb: "benchmark", description: "Run the benchmark suites in release mode"))),
    .testTarget(name: "QuorumCoreTests", dependencies: ["QuorumCore", "QuorumSimulation"], swiftSettings: settings),
    .testTarget(
      name: "QuorumRaftTests", dependencies: ["QuorumRaft", "QuorumCore", "QuorumSimulation"], swiftSettings: settings),
    .testTarget(
      name: "QuorumPaxosTests",
      dependencies: ["QuorumPaxos", "QuorumCore", "QuorumStorage", "QuorumKV", "QuorumSimulation"],
      swiftSettings: settings),
    .testTarget(name: "QuorumKVTests", dependencies: ["QuorumKV", "QuorumCore"], swiftSettings: settings),
    .testTarget(name: "QuorumStorageTests", dependencies: ["QuorumStorage", "QuorumCore"], swiftSettings: settings),
    .testTarget(
      name: "QuorumSimulationTests", dependencies: ["QuorumSimulation", "QuorumCore"], swiftSettings: settings),
  ]
)
