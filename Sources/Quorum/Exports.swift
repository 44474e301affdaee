// The umbrella module: `import Quorum` brings in every runtime module, plus the `Cluster { … }` DSL, the TCP
// server and the TCP clients defined here. (The simulation test kit, QuorumSimulation, stays a separate import.)
@_exported public import QuorumCore
@_exported public import QuorumHost
@_exported public import QuorumKV
@_exported public import QuorumLocks
@_exported public import QuorumPaxos
@_exported public import QuorumRaft
@_exported public import QuorumReplica
@_exported public import QuorumStorage
@_exported public import QuorumTCP
@_exported public import QuorumTransactions
