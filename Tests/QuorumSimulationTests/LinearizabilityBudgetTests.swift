import QuorumCore
import QuorumSimulation
import Testing

extension History where Input == KVInput, Output == KVOutput {
  fileprivate mutating func returned(
    _ client: Int, _ input: KVInput, _ invoked: UInt64, _ returned: UInt64, _ output: KVOutput
  ) {
    append(client: client, input, invokedAt: invoked, outcome: .returned(output, at: returned))
  }

  /// Key `key`: `writers` concurrent writes of distinct values, then as many concurrent reads that see them
  /// in an order the search has to find. Linearizable, but the search needs many states.
  fileprivate mutating func crowd(_ key: String, writers: Int, from start: UInt64) {
    for i in 0..<writers {
      returned(100 + i, .put(key: key, value: "v\(i)"), start, start + 100, .ok)
    }
    for i in 0..<writers {
      let value = "v\((i * 7 + 3) % writers)"
      returned(200 + i, .get(key: key), start + 1 + UInt64(i), start + 100, .value(value))
    }
  }
}

/// The budget of search states is per partition, and a partition that exhausts it does not hide a violation in
/// another partition.
@Suite("Linearizability: budgets and partitions")
struct LinearizabilityBudgetTests {
  /// Partition "a" (searched first) cannot be decided within the budget; partition "b" is a plain violation:
  /// a read, after a write of 1 returned, sees 2, which nobody wrote.
  private func history(violationInB: Bool) -> KVHistory {
    var history = KVHistory()
    history.crowd("a", writers: 8, from: 0)
    history.returned(1, .put(key: "b", value: "1"), 10, 20, .ok)
    history.returned(2, .get(key: "b"), 30, 40, .value(violationInB ? "2" : "1"))
    return history
  }

  @Test("partition a exhausts its budget first; the violation in partition b is still reported")
  func violationAfterAnExhaustedPartition() throws {
    let budget = 50
    let checker = LinearizabilityChecker(model: KVModel(), maxStatesExplored: budget)
    // The premise: "a" alone runs out of this budget.
    let aOnly = checker.check(history(violationInB: false).operations.filter { $0.input.key == "a" })
    guard case .unknown(let partition) = aOnly.verdict else {
      Issue.record("partition a should exhaust a budget of \(budget) states: \(aOnly)")
      return
    }
    #expect(partition == "a")

    let result = checker.check(history(violationInB: true))
    let violation = try #require(result.violation, "\(result)")
    #expect(violation.partition == "b")
    #expect(result.stats.partitionsChecked == 2)
  }

  @Test("with no violation anywhere, the first partition that ran out is reported as unknown")
  func unknownOnlyWhenNoPartitionViolates() {
    let result = LinearizabilityChecker(model: KVModel(), maxStatesExplored: 50).check(history(violationInB: false))
    guard case .unknown(let partition) = result.verdict else {
      Issue.record("expected unknown, got \(result)")
      return
    }
    #expect(partition == "a")
    #expect(result.stats.partitionsChecked == 2, "partition b was searched too")
    #expect(LinearizabilityChecker(model: KVModel()).check(history(violationInB: false)).isLinearizable)
  }

  @Test("the budget applies to each partition, not to the whole history")
  func budgetIsPerPartition() {
    var history = KVHistory()
    for (slot, key) in ["p", "q", "r"].enumerated() {
      let t = UInt64(slot * 1_000)
      history.returned(1, .put(key: key, value: "1"), t, t + 10, .ok)
      history.returned(2, .get(key: key), t + 20, t + 30, .value("1"))
    }
    let one = LinearizabilityChecker(model: KVModel()).check(history.operations.filter { $0.input.key == "p" })
    let perPartition = one.stats.statesExplored
    #expect(perPartition > 0)
    let result = LinearizabilityChecker(model: KVModel(), maxStatesExplored: perPartition).check(history)
    #expect(result.isLinearizable, "\(result)")
    #expect(result.stats.statesExplored == 3 * perPartition)
  }
}
