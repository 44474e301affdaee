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
    .library(name: "QuorumReplica", targets: ["QuorumReplica"]),
    .library(name: "QuorumRaft", targets: ["QuorumRaft"]),
    .library(name: "QuorumKV", targets: ["QuorumKV"]),
    .library(name: "QuorumHost", targets: ["QuorumHost"]),
    .library(name: "QuorumTCP", targets: ["QuorumTCP"]),
    .library(name: "Quorum", targets: ["Quorum"]),
    .library(name: "QuorumPaxos", targets: ["QuorumPaxos"]),
    .library(name: "QuorumLocks", targets: ["QuorumLocks"]),
    .library(name: "QuorumTransactions", targets: ["QuorumTransactions"]),
    .executable(name: "quorum", targets: ["QuorumCLI"]),
    .executable(name: "quorum-bench", targets: ["QuorumBench"]),
  ],
  targets: [
    // CRC-32C on the processor's instruction where there is one (the Swift table is the fallback).
    .target(name: "CQuorumChecksum"),
    .target(name: "QuorumCore", dependencies: ["CQuorumChecksum"], swiftSettings: settings),
    .target(
      name: "QuorumStorage", dependencies: ["QuorumCore"],
      // Storage calls run on the calling actor's executor (no hop): the blocking work is handed to the
      // storage's own queue anyway, and a consensus node awaits storage on every write.
      swiftSettings: settings + [.enableUpcomingFeature("NonisolatedNonsendingByDefault")]),
    // The one replica runtime every consensus engine plugs its pure core into.
    .target(name: "QuorumReplica", dependencies: ["QuorumCore", "QuorumStorage"], swiftSettings: settings),
    .target(
      name: "QuorumRaft", dependencies: ["QuorumCore", "QuorumStorage", "QuorumReplica"], swiftSettings: settings),
    .target(
      name: "QuorumPaxos", dependencies: ["QuorumCore", "QuorumStorage", "QuorumReplica"], swiftSettings: settings),
    .target(name: "QuorumKV", dependencies: ["QuorumCore"], swiftSettings: settings),
    // The server host: many groups per process, either engine, services side by side, placement, the client
    // protocol and the client.
    .target(
      name: "QuorumHost",
      dependencies: [
        "QuorumCore", "QuorumStorage", "QuorumReplica", "QuorumRaft", "QuorumPaxos", "QuorumKV", "QuorumLocks",
        "QuorumTransactions",
      ],
      swiftSettings: settings),
    .target(name: "QuorumLocks", dependencies: ["QuorumCore"], swiftSettings: settings),
    // Two-phase commit (pure cores, actors, decision records local or replicated) and the sharded transactional
    // key-value machine.
    .target(name: "QuorumTransactions", dependencies: ["QuorumCore", "QuorumStorage"], swiftSettings: settings),
    // Exposes epoll, eventfd and accept4, which Glibc does not export, plus small socket wrappers.
    .target(name: "CQuorumSystem"),
    .target(name: "QuorumTCP", dependencies: ["QuorumCore", "CQuorumSystem"], swiftSettings: settings),
    .target(
      name: "Quorum",
      dependencies: [
        "QuorumCore", "QuorumStorage", "QuorumReplica", "QuorumRaft", "QuorumPaxos", "QuorumKV", "QuorumLocks",
        "QuorumTransactions", "QuorumHost", "QuorumTCP",
      ],
      swiftSettings: settings),
    .target(
      name: "QuorumSimulation",
      dependencies: [
        "QuorumCore", "QuorumStorage", "QuorumReplica", "QuorumRaft", "QuorumPaxos", "QuorumKV", "QuorumLocks",
        "QuorumHost", "QuorumTransactions",
      ],
      swiftSettings: settings),
    .executableTarget(
      name: "QuorumCLI",
      dependencies: [
        "QuorumCore", "QuorumHost", "QuorumSimulation", "QuorumRaft", "QuorumPaxos", "QuorumKV", "QuorumStorage",
        "QuorumTCP",
        "Quorum",
      ],
      swiftSettings: settings),
    .executableTarget(
      name: "QuorumBench",
      dependencies: [
        "QuorumCore", "QuorumSimulation", "QuorumStorage", "QuorumRaft", "QuorumPaxos", "QuorumKV", "QuorumTCP",
        "Quorum", "CQuorumSystem",
      ],
      swiftSettings: settings),
    .plugin(
      name: "SimulatePlugin",
      capability: .command(
        intent: .custom(verb: "simulate", description: "Run seeded whole-cluster simulations (release build)"))),
    .plugin(
      name: "BenchmarkPlugin",
      capability: .command(
        intent: .custom(verb: "benchmark", description: "Run the benchmark suites in release mode"))),
    // The traits the test targets share (not a product: only test bundles link it).
    .target(
      name: "QuorumTestSupport", dependencies: ["QuorumSimulation", "QuorumStorage", "CQuorumTestSupport"],
      path: "Tests/QuorumTestSupport", swiftSettings: settings),
    // Caps how many tests run at once in the test bundle (see parallel_width.c).
    .target(name: "CQuorumTestSupport", path: "Tests/CQuorumTestSupport"),
    .testTarget(
      name: "QuorumCoreTests", dependencies: ["QuorumCore", "QuorumSimulation", "QuorumTestSupport"],
      swiftSettings: settings),
    .testTarget(
      name: "QuorumRaftTests", dependencies: ["QuorumTestSupport", "QuorumRaft", "QuorumCore", "QuorumSimulation"],
      swiftSettings: settings),
    .testTarget(
      name: "QuorumPaxosTests",
      dependencies: [
        "QuorumTestSupport", "QuorumPaxos", "QuorumCore", "QuorumStorage", "QuorumKV", "QuorumSimulation",
      ],
      swiftSettings: settings),
    .testTarget(
      name: "QuorumKVTests", dependencies: ["QuorumTestSupport", "QuorumKV", "QuorumCore"], swiftSettings: settings),
    .testTarget(
      name: "QuorumLocksTests", dependencies: ["QuorumTestSupport", "QuorumLocks", "QuorumCore"],
      swiftSettings: settings),
    .testTarget(
      name: "QuorumTransactionsTests",
      dependencies: ["QuorumTestSupport", "QuorumTransactions", "QuorumCore", "QuorumStorage", "QuorumSimulation"],
      swiftSettings: settings),
    .testTarget(
      name: "QuorumStorageTests", dependencies: ["QuorumTestSupport", "QuorumStorage", "QuorumCore"],
      swiftSettings: settings),
    .testTarget(
      name: "QuorumTCPTests",
      dependencies: ["QuorumTestSupport", "QuorumTCP", "QuorumCore", "QuorumSimulation", "CQuorumSystem"],
      swiftSettings: settings),
    .testTarget(name: "QuorumTests", dependencies: ["QuorumTestSupport", "Quorum"], swiftSettings: settings),
    // Spawns the `quorum` executable (built next to the test bundle by `swift build --build-tests`).
    .testTarget(
      name: "QuorumIntegrationTests", dependencies: ["QuorumTestSupport", "Quorum", "QuorumSimulation"],
      swiftSettings: settings),
    .testTarget(
      name: "QuorumSimulationTests",
      dependencies: [
        "QuorumTestSupport",
        "QuorumSimulation", "QuorumCore", "QuorumHost", "QuorumKV", "QuorumLocks", "QuorumPaxos", "QuorumTransactions",
      ],
      swiftSettings: settings),
  ]
)
