import Dispatch
import Foundation
import QuorumSimulation
import Synchronization

/// `quorum simulate`: runs seeded whole-cluster simulations and reports the first failing seed.
enum SimulateCommand {
  static let usage = """
    usage: quorum simulate [--seeds N] [--start S] [--seed S] [--nodes 3|5] [--variant default|paper]
                           [--chaos-ms MS] [--trace N] [--jobs J]
      --seeds N     how many seeds to run (default 500), starting at --start (default 0)
      --seed S      run exactly one seed, with its trace
      --nodes       founding voters (default 3)
      --variant     default: pre-vote, check-quorum, lease reads; paper: neither, linearizable reads only
      --chaos-ms    length of the fault phase in virtual milliseconds (default 3000)
      --trace N     events of trace to print for a failing seed (default 200)
      --jobs J      parallel workers (default: the number of cores)
    """

  static func run(_ args: [String]) throws -> Int32 {
    var seeds: UInt64 = 500
    var start: UInt64 = 0
    var single: UInt64?
    var options = RaftSimulationOptions()
    var traceCapacity = 200
    var jobs = ProcessInfo.processInfo.activeProcessorCount
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
      case "--chaos-ms": options.chaosDuration = .milliseconds(try number(try value()))
      case "--trace": traceCapacity = Int(try number(try value()))
      case "--jobs": jobs = max(1, Int(try number(try value())))
      case "--variant":
        switch try value() {
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
    if let single {
      let trace = SimulationTrace(enabled: true, capacity: traceCapacity)
      let sim = RaftSimulation(seed: single, options: options, trace: trace)
      do {
        try sim.run()
        print("seed \(single) passed: \(sim.stats)")
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
    let opts = options
    let capacity = traceCapacity
    let first = start
    let count = seeds
    let workers = max(1, min(jobs, Int(seeds)))
    DispatchQueue.concurrentPerform(iterations: workers) { worker in
      var seed = first + UInt64(worker)
      while seed < first + count {
        if firstFailure.withLock({ $0 != nil }) { return }
        let report = SimulationRunner.run(seeds: seed..<(seed + 1), traceCapacity: capacity) { s, trace in
          try RaftSimulation(seed: s, options: opts, trace: trace).run()
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
      print(SimulationReport(seedsRun: done.load(ordering: .relaxed) + 1, failure: failure).description)
      return 1
    }
    print(
      "\(seeds) seeds passed (\(opts.voters) voters, seeds \(start)..<\(start + seeds)) in "
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
