import Glibc
import QuorumCore
import QuorumSimulation

// `quorum` — the command-line front end. Subcommands grow with the modules; see `quorum help`.

let arguments = Array(CommandLine.arguments.dropFirst())
switch arguments.first {
case "demo":
  try await RaftDemo.run(quick: arguments.contains("--quick"))
  try await PaxosDemo.run(quick: arguments.contains("--quick"))
case "simulate":
  do {
    exit(try SimulateCommand.run(Array(arguments.dropFirst())))
  } catch {
    print("quorum simulate: \(error)")
    exit(2)
  }
case nil, "help", "--help", "-h":
  print(
    """
    usage: quorum <command>
      demo      a narrated tour on an in-process cluster
      simulate  run seeded whole-cluster simulations of Raft, Multi-Paxos or single-decree Paxos
                (quorum simulate --help)
    """)
default:
  print("quorum: unknown command '\(arguments[0])'; try `quorum help`")
  exit(2)
}
