import Foundation

// The benchmark executable. Build in release mode: `swift run -c release quorum-bench [suite ...]`,
// or `swift package benchmark`. Every figure is printed with the baseline measured in the same run.

let suites: [(name: String, run: (BenchReport) async throws -> Void)] = [
  ("mailbox", MailboxBenchmarks.run),
  ("checker", CheckerBenchmarks.run),
  ("storage", StorageBenchmarks.run),
  ("raft", RaftBenchmarks.run),
  ("tcp", TCPBenchmarks.run),
  ("paxos", PaxosBenchmarks.run),
  ("host", HostBenchmarks.run),
  ("locks", LockBenchmarks.run),
]

// `host-member` is not a suite: the host suite runs this executable in that mode as the members of its
// idle-groups cluster.
if CommandLine.arguments.dropFirst().first == "host-member" {
  do {
    try await HostBenchmarks.member(Array(CommandLine.arguments.dropFirst(2)))
    exit(0)
  } catch {
    FileHandle.standardError.write(Data("host-member: \(error)\n".utf8))
    exit(1)
  }
}

let requested = Set(CommandLine.arguments.dropFirst())
let unknown = requested.subtracting(suites.map(\.name))
if !unknown.isEmpty {
  let known = suites.map(\.name).joined(separator: ", ")
  print("unknown suite(s): \(unknown.sorted().joined(separator: ", ")); known: \(known)")
  exit(2)
}
#if DEBUG
  print("warning: this is a debug build; figures are meaningless. Use `swift run -c release quorum-bench`.")
#endif
let report = BenchReport()
for suite in suites where requested.isEmpty || requested.contains(suite.name) {
  print("== \(suite.name)")
  try await suite.run(report)
}
