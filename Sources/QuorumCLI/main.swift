import Glibc
import QuorumCore
import QuorumSimulation

// `quorum` — the command-line front end. Subcommands grow with the modules; see `quorum help`.

let arguments = Array(CommandLine.arguments.dropFirst())
switch arguments.first {
case "demo":
  let options = Array(arguments.dropFirst())
  if options.contains(where: { $0 == "--help" || $0 == "-h" }) {
    print("usage: quorum demo [--quick]\n  a narrated tour of Raft, Multi-Paxos, locks and transactions, in process")
    exit(0)
  }
  if let unknown = options.first(where: { $0 != "--quick" }) {
    print("quorum demo: unknown option \(unknown) (usage: quorum demo [--quick])")
    exit(2)
  }
  let quick = options.contains("--quick")
  do {
    try await RaftDemo.run(quick: quick)
    try await PaxosDemo.run(quick: quick)
    try await LockDemo.run(quick: quick)
    try await TxnDemo.run(quick: quick)
  } catch {
    // An error (a timeout on a heavily loaded machine, say) is reported, not a trap at top level.
    print("quorum demo: \(error)")
    exit(1)
  }
case "simulate":
  do {
    exit(try SimulateCommand.run(Array(arguments.dropFirst())))
  } catch {
    print("quorum simulate: \(error)")
    exit(2)
  }
case "serve":
  exit(await ServeCommand.run(Array(arguments.dropFirst())))
case "kv":
  exit(await ClientCommands.kv(Array(arguments.dropFirst())))
case "lock":
  exit(await LockCommands.run(Array(arguments.dropFirst())))
case "txn":
  exit(await TxnCommands.run(Array(arguments.dropFirst())))
case "status":
  exit(await ClientCommands.status(Array(arguments.dropFirst())))
case "members":
  exit(await ClientCommands.members(Array(arguments.dropFirst())))
case "forget-group":
  exit(await ForgetGroupCommand.run(Array(arguments.dropFirst())))
case nil, "help", "--help", "-h":
  print(
    """
    usage: quorum <command>
      demo      a narrated tour on an in-process cluster
      simulate  run seeded whole-cluster simulations of Raft, Multi-Paxos or single-decree Paxos
                (quorum simulate --help)
      serve     run one member of a TCP cluster (quorum serve --help)
      kv        put, get, delete, cas against a running cluster
      lock      acquire, release, status, list of the lock service (quorum lock --help)
      txn       transactions across groups: put, get, transfer, status, in-doubt (quorum txn --help)
      status    members, leader, term, commit index, per-peer lag, lock and transaction counts
      members   add, promote, remove members
      forget-group  erase a group this member no longer runs from its shared log, offline
                (quorum forget-group --help)
    """)
default:
  print("quorum: unknown command '\(arguments[0])'; try `quorum help`")
  exit(2)
}
