import QuorumSimulation

/// The linearizability checker on histories of linearizable executions made by ``KVHistoryGenerator``.
///
/// The headline figures are for the 10,000-operation, 100-key history with 20 clients and 1% unknown outcomes
/// (the generator's defaults, seed 42): time to accept it, states explored, and time to reject it once one read is
/// corrupted. Two harder shapes follow, with more operations of one key overlapping in time: the search cost grows
/// with that overlap and with unknown outcomes per key, not with the history's length.
enum CheckerBenchmarks {
  static func run(_ report: BenchReport) async throws {
    let headline = KVHistoryGenerator(seed: 42)
    let history = headline.generate()
    let (milliseconds, result) = medianOf3 { history.checkLinearizability() }
    let shape = "\(history.count) ops, \(headline.keyCount) keys, \(headline.clientCount) clients, 1% unknown"
    guard result.isLinearizable else {
      report.add("checker", "10k-op history NOT ACCEPTED (bug)", 0, "", note: "\(result)")
      return
    }
    report.add("checker", "accept 10k ops / 100 keys", milliseconds, "ms", note: "median of 3; \(shape)")
    report.add(
      "checker", "  states explored", Double(result.stats.statesExplored), "states",
      note: "\(result.stats.backtracks) backtracks, \(result.stats.partitionsChecked) partitions")

    var corrupted = history
    if let read = history.operations.last(where: { $0.input.isReadOnly && $0.returnedAt != nil }),
      let returnedAt = read.returnedAt
    {
      corrupted.overrideOutcome(read.id, .returned(.value("never written"), at: returnedAt))
      let (rejectMilliseconds, rejected) = medianOf3 { corrupted.checkLinearizability() }
      report.add(
        "checker", "reject it with one read corrupted", rejectMilliseconds, "ms",
        note: rejected.isViolation ? "median of 3; includes the explanation" : "NOT REJECTED (bug): \(rejected)")
    }

    let harder: [(name: String, generator: KVHistoryGenerator)] = [
      ("accept 10k ops / 10 keys, 20 clients", KVHistoryGenerator(seed: 42, keyCount: 10)),
      (
        "accept 2k ops / 1 key, 8 clients, 5% unknown",
        KVHistoryGenerator(
          seed: 42, operationCount: 2_000, keyCount: 1, clientCount: 8, unknownOutcomeProbability: 0.05)
      ),
    ]
    for (name, generator) in harder {
      let history = generator.generate()
      let (milliseconds, result) = medianOf3 { history.checkLinearizability() }
      report.add(
        "checker", name, milliseconds, "ms",
        note: result.isLinearizable
          ? "median of 3; \(result.stats.statesExplored) states explored" : "NOT ACCEPTED (bug): \(result)")
    }
  }

  /// Runs `body` three times; returns the median time in milliseconds and the last result.
  private static func medianOf3<R>(_ body: () -> R) -> (Double, R) {
    var milliseconds: [Double] = []
    var result = body()
    for _ in 0..<3 {
      let start = nowNanos()
      result = body()
      milliseconds.append(Double(nowNanos() - start) / 1e6)
    }
    return (median(milliseconds), result)
  }
}
