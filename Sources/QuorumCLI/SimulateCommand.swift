import Dispatch
import Foundation
import QuorumHost
import QuorumPaxos
import QuorumRaft
import QuorumSimulation
import Synchronization

/// `quorum simulate`: runs seeded whole-cluster simulations and reports the first failing seed.
enum SimulateCommand {
  static let usage = """
    usage: quorum simulate [--protocol raft|paxos|mixed|synod|txn] [--level node|core] [--groups G] [--seeds N]
                           [--start S] [--seed S] [--nodes N] [--variant default|paper] [--quorums Q1,Q2]
                           [--chaos-ms MS] [--trace N] [--jobs J] [--digest [--print-trace]]
                           [--workload kv|locks|both|list-append|bank] [--sessions default|churn]
      --protocol    raft (default): Raft groups with KV clients; paxos: Multi-Paxos groups; mixed: groups of
                    both engines on the same nodes; synod: single-decree Paxos with three dueling proposers;
                    txn: sharded transactions (the unmodified client coordinator over shard machines) with lost
                    requests and answers, clients dying mid-transaction and a resolver racing them; histories
                    checked for serializability (list-append) or conservation (bank)
      --workload    raft, paxos, mixed (node level): kv (default) key-value clients, checked for
                    linearizability; locks: lock clients that contend, pause past their TTL and are fenced,
                    checked for two owners, token order and permits; both: the two side by side.
                    txn: list-append, bank, or both (default: alternating by seed)
      --groups G    node level: G groups sharing the nodes (default 1; mixed: 2)
      --sessions    node level: default, or churn: sessions that expire after 400 ms idle, fewer of them than
                    clients, 2 answers remembered each, two operations in flight per client
      --level       node (default): the production server hosts and clients on the seeded scheduler, with
                    drifting clocks, pauses, torn writes, disk faults and clients over the network; core: the
                    protocol cores in a simulated shell (faster, fewer faults)
      --seeds N     how many seeds to run (default 500), starting at --start (default 0)
      --digest      with --seed: also print a digest of the whole trace (to compare runs across processes)
      --print-trace with --seed --digest: print the trace's last events even when the seed passes
      --seed S      run exactly one seed, with its trace
      --nodes       founding voters / acceptors (default 3)
      --variant     raft only. default: pre-vote, check-quorum, lease reads; paper: neither, linearizable reads
      --quorums     paxos and synod: phase-1 and phase-2 quorum sizes, e.g. 4,2 (default: majorities)
      --chaos-ms    length of the fault phase in virtual milliseconds (default 3000)
      --trace N     events of trace to print for a failing seed (default 200)
      --jobs J      parallel workers (default: the number of cores)
    """

  static func run(_ args: [String]) throws -> Int32 {
    var seeds: UInt64 = 500
    var start: UInt64 = 0
    var single: UInt64?
    var options = RaftSimulationOptions()
    var kind = "raft"
    var level = "node"
    var groupCount: Int?
    var printDigest = false
    var printTrace = false
    var quorums: (Int, Int)?
    var variantArgument = ""
    var chaos: UInt64?
    var traceCapacity = 200
    var jobs = ProcessInfo.processInfo.activeProcessorCount
    var workloadArgument: String?
    var sessionsArgument: String?
    var i = 0
    func value() throws -> String {
      i += 1
      guard i < args.count else { throw CLIError.usage("\(args[i - 1]) needs a value\n\(usage)") }
      return args[i]
    }
    func number(_ text: String) throws -> UInt64 {
      guard let n = UInt64(text) else { throw CLIError.usage("not a number: \(text)") }
      return n
    }
    while i < args.count {
      switch args[i] {
      case "--seeds": seeds = try number(try value())
      case "--start": start = try number(try value())
      case "--seed": single = try number(try value())
      case "--nodes": options.voters = Int(try number(try value()))
      case "--chaos-ms": chaos = try number(try value())
      case "--protocol":
        kind = try value()
        guard ["raft", "paxos", "mixed", "synod", "txn"].contains(kind) else {
          throw CLIError.usage("unknown protocol \(kind)")
        }
      case "--digest": printDigest = true
      case "--print-trace": printTrace = true
      case "--workload": workloadArgument = try value()
      case "--sessions":
        let sessions = try value()
        guard ["default", "churn"].contains(sessions) else { throw CLIError.usage("unknown sessions \(sessions)") }
        sessionsArgument = sessions
      case "--groups": groupCount = Int(try number(try value()))
      case "--level":
        level = try value()
        guard ["node", "core"].contains(level) else { throw CLIError.usage("unknown level \(level)") }
      case "--quorums":
        let parts = try value().split(separator: ",").map { try number(String($0)) }
        guard parts.count == 2 else { throw CLIError.usage("--quorums needs two sizes, e.g. 2,2") }
        quorums = (Int(parts[0]), Int(parts[1]))
      case "--trace": traceCapacity = Int(try number(try value()))
      case "--jobs": jobs = max(1, Int(try number(try value())))
      case "--variant":
        variantArgument = try value()
        switch variantArgument {
        case "default": break
        case "paper":
          options.core.preVote = false
          options.core.checkQuorum = false
          options.core.leaseDurationNanos = 0
          options.readConsistencies = [.linearizable]
        case let other: throw CLIError.usage("unknown variant \(other)")
        }
      case "--help", "-h":
        print(usage)
        return 0
      default: throw CLIError.usage("unknown option \(args[i])\n\(usage)")
      }
      i += 1
    }
    guard (1...9).contains(options.voters) else { throw CLIError.usage("--nodes must be 1...9") }
    if let chaos { options.chaosDuration = .milliseconds(chaos) }
    var paxos = PaxosSimulationOptions()
    paxos.nodes = options.voters
    if let chaos { paxos.chaosDuration = .milliseconds(chaos) }
    var synod = SynodSimulationOptions()
    synod.acceptors = options.voters
    if let (q1, q2) = quorums {
      guard q1 >= 1, q2 >= 1, q1 <= options.voters, q2 <= options.voters, q1 + q2 > options.voters else {
        throw CLIError.usage(
          "--quorums \(q1),\(q2) must be within 1...\(options.voters) with Q1 + Q2 > \(options.voters)")
      }
      (paxos.phase1Quorum, paxos.phase2Quorum) = (q1, q2)
      (synod.phase1Quorum, synod.phase2Quorum) = (q1, q2)
    }
    let raftOptions = options
    var reproduceGroups = ""
    var nodeOptions = ClusterSimulationOptions()
    nodeOptions.nodes = options.voters
    let groups = max(1, groupCount ?? (kind == "mixed" ? 2 : 1))
    nodeOptions.groups = (0..<groups).map { g in
      let engine: EngineKind = kind == "paxos" || (kind == "mixed" && g % 2 == 1) ? .multiPaxos : .raft
      return SimulatedGroup(engine: engine, members: min(options.voters, groups > 1 ? 3 : options.voters))
    }
    if let chaos { nodeOptions.chaosDuration = .milliseconds(chaos) }
    nodeOptions.variant.raftPaper = variantArgument == "paper"
    if variantArgument == "paper" { nodeOptions.readConsistencies = [.linearizable, .stale] }
    nodeOptions.variant.paxosQuorums = quorums.map { (phase1: $0.0, phase2: $0.1) }
    let workload = workloadArgument ?? (kind == "txn" ? "both" : "kv")
    let workloads = kind == "txn" ? ["list-append", "bank", "both"] : ["kv", "locks", "both"]
    guard workloads.contains(workload) else {
      throw CLIError.usage("unknown workload \(workload) for \(kind) (\(workloads.joined(separator: ", ")))")
    }
    if workload != "kv" && kind != "txn" && (kind == "synod" || level != "node") {
      throw CLIError.usage("--workload \(workload) needs the node level of raft, paxos or mixed")
    }
    if workload != "kv" && kind != "txn" { nodeOptions.lockWorkload.clients = 4 }
    if workload == "locks" && kind != "txn" { nodeOptions.clients = 0 }
    if let sessionsArgument, sessionsArgument != "default" {
      guard kind != "txn" && kind != "synod" && level == "node" else {
        throw CLIError.usage("--sessions \(sessionsArgument) needs the node level of raft, paxos or mixed")
      }
      nodeOptions.churnSessions()
    }
    if groupCount != nil { reproduceGroups = " --groups \(groups)" }
    let nodeLevel = level == "node"
    let simulationOptions = nodeOptions
    var reproduceOptions = (kind == "raft" ? "" : " --protocol \(kind)") + reproduceGroups
    if level != "node" { reproduceOptions += " --level \(level)" }
    if options.voters != 3 { reproduceOptions += " --nodes \(options.voters)" }
    if let (q1, q2) = quorums { reproduceOptions += " --quorums \(q1),\(q2)" }
    if let chaos { reproduceOptions += " --chaos-ms \(chaos)" }
    if !variantArgument.isEmpty { reproduceOptions += " --variant \(variantArgument)" }
    if let workloadArgument { reproduceOptions += " --workload \(workloadArgument)" }
    if let sessionsArgument { reproduceOptions += " --sessions \(sessionsArgument)" }
    var txnOptions = ShardedTransactionSimulationOptions()
    if let groupCount { txnOptions.groups = max(1, groupCount) }
    let txnWorkload = workload
    let (chosenKind, paxosOptions, synodOptions) = (kind, paxos, synod)
    let chosenTxnOptions = txnOptions
    let runOne: @Sendable (UInt64, SimulationTrace) throws -> String = { seed, trace in
      if chosenKind == "txn" {
        var options = chosenTxnOptions
        switch txnWorkload {
        case "bank": options.workload = .bank
        case "list-append": options.workload = .listAppend
        default: options.workload = seed % 2 == 0 ? .listAppend : .bank
        }
        let sim = ShardedTransactionSimulation(seed: seed, options: options, trace: trace)
        return "\(options.workload): \(try sim.run())"
      }
      if nodeLevel {
        if chosenKind == "synod" {
          let sim = SynodNodeSimulation(seed: seed, options: synodOptions, trace: trace)
          try sim.run()
          return sim.stats.description
        }
        let sim = ClusterSimulation(seed: seed, options: simulationOptions, trace: trace)
        try sim.run()
        return sim.stats.description
      }
      switch chosenKind {
      case "paxos":
        let sim = PaxosSimulation(seed: seed, options: paxosOptions, trace: trace)
        try sim.run()
        return sim.stats.description
      case "synod":
        let sim = SynodSimulation(seed: seed, options: synodOptions, trace: trace)
        try sim.run()
        return sim.stats.description
      default:
        let sim = RaftSimulation(seed: seed, options: raftOptions, trace: trace)
        try sim.run()
        return sim.stats.description
      }
    }
    if let single {
      let trace = SimulationTrace(enabled: true, capacity: traceCapacity)
      do {
        let stats = try runOne(single, trace)
        print("seed \(single) passed: \(stats)")
        if printDigest {
          print("trace digest \(String(trace.digest, radix: 16)) of \(trace.recorded) events")
          if printTrace {
            print("last \(trace.events.count) events:")
            for line in trace.events { print("  \(line)") }
          }
        }
        return 0
      } catch {
        print("seed \(single) FAILED: \(error)\nlast \(trace.events.count) events:")
        for line in trace.events { print("  \(line)") }
        return 1
      }
    }
    let began = DispatchTime.now().uptimeNanoseconds
    let firstFailure = Mutex<SimulationReport.FailedSeed?>(nil)
    let done = Atomic<Int>(0)
    let capacity = traceCapacity
    let first = start
    let count = seeds
    let workers = max(1, min(jobs, Int(seeds)))
    CrashReporter.install(workers: workers, reproduce: "swift package simulate" + reproduceOptions)
    DispatchQueue.concurrentPerform(iterations: workers) { worker in
      var seed = first + UInt64(worker)
      defer { CrashReporter.running(nil, worker: worker) }
      while seed < first + count {
        if firstFailure.withLock({ $0 != nil }) { return }
        CrashReporter.running(seed, worker: worker)
        let report = SimulationRunner.run(seeds: seed..<(seed + 1), traceCapacity: capacity) { s, trace in
          _ = try runOne(s, trace)
        }
        if let failure = report.failure {
          firstFailure.withLock { current in
            if current == nil || failure.seed < (current?.seed ?? .max) { current = failure }
          }
          return
        }
        done.add(1, ordering: .relaxed)
        seed += UInt64(workers)
      }
    }
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - began) / 1e9
    if let failure = firstFailure.withLock({ $0 }) {
      let report = SimulationReport(seedsRun: done.load(ordering: .relaxed) + 1, failure: failure).description
      print(
        report.replacingOccurrences(
          of: "swift package simulate --seed", with: "swift package simulate\(reproduceOptions) --seed"))
      return 1
    }
    let shape = kind == "txn" ? "\(txnOptions.groups) groups" : "\(options.voters) nodes"
    print(
      "\(seeds) \(kind) seeds passed (\(shape), seeds \(start)..<\(start + seeds)) in "
        + String(format: "%.1f s", seconds))
    return 0
  }
}

/// A command-line error with a message for the user.
enum CLIError: Error, CustomStringConvertible {
  case usage(String)
  case failed(String)

  var description: String {
    switch self {
    case .usage(let text), .failed(let text): return text
    }
  }
}
