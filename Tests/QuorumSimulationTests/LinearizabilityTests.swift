import QuorumCore
import QuorumSimulation
import QuorumTestSupport
import Testing

/// Shorthands so hand-written histories read like a table: client, input, invoked, returned, output.
extension History where Input == KVInput, Output == KVOutput {
  fileprivate mutating func done(
    _ client: Int, _ input: KVInput, _ invoked: UInt64, _ returned: UInt64, _ output: KVOutput
  ) {
    append(client: client, input, invokedAt: invoked, outcome: .returned(output, at: returned))
  }

  fileprivate mutating func lost(_ client: Int, _ input: KVInput, _ invoked: UInt64) {
    append(client: client, input, invokedAt: invoked, outcome: .unknown)
  }

  fileprivate mutating func failed(_ client: Int, _ input: KVInput, _ invoked: UInt64) {
    append(client: client, input, invokedAt: invoked, outcome: .failed)
  }
}

private func kv(_ build: (inout KVHistory) -> Void) -> KVHistory {
  var history = KVHistory()
  build(&history)
  return history
}

private func put(_ key: String, _ value: String) -> KVInput { .put(key: key, value: value) }
private func get(_ key: String) -> KVInput { .get(key: key) }
private func del(_ key: String) -> KVInput { .delete(key: key) }
private func cas(_ key: String, _ expected: String?, _ new: String?) -> KVInput {
  .compareAndSwap(key: key, expected: expected, new: new)
}
private func value(_ v: String?) -> KVOutput { .value(v) }

/// A named hand-made history, shown by its name in test results.
struct NamedHistory: Sendable, CustomTestStringConvertible {
  var name: String
  var history: KVHistory
  init(_ name: String, _ history: KVHistory) {
    self.name = name
    self.history = history
  }
  var testDescription: String { name }
}

/// The checkers every verdict is asked of: the default portfolio and each search strategy on its own.
enum KVCheckers {
  static let all: [(name: String, checker: LinearizabilityChecker<KVModel>)] =
    [("portfolio", LinearizabilityChecker(model: KVModel()))]
    + LinearizabilitySearchStrategy.allCases.map {
      ("\($0)", LinearizabilityChecker(model: KVModel(), strategies: [$0]))
    }
}

@Suite("Linearizability: history recording")
struct LinearizabilityHistoryRecordingTests {
  @Test func invokeCompleteAndMark() {
    var history = KVHistory()
    let a = history.invoke(client: 1, put("x", "1"), at: 10)
    let b = history.invoke(client: 2, get("x"), at: VirtualTime(nanoseconds: 20))
    let c = history.invoke(client: 3, del("x"), at: 30)
    let d = history.invoke(client: 4, get("x"), at: 40)
    let e = history.invoke(client: 5, get("x"), at: 50)
    #expect(history.pendingCount == 5)
    history.complete(a, .ok, at: 15)
    history.complete(b, value("1"), at: VirtualTime(nanoseconds: 25))
    history.markUnknown(c)
    history.markFailed(d)
    #expect(history[a].outcome == .returned(.ok, at: 15))
    #expect(history[b].output == value("1"))
    #expect(history[b].returnedAt == 25)
    #expect(history[c].isOutcomeUnknown)
    #expect(history[d].outcome == .failed)
    #expect(history[e].isOutcomeUnknown, "an operation never completed counts as unknown")
    #expect(history.pendingCount == 1)
    #expect(history.count == 5)
    #expect(history.checkLinearizability().isLinearizable)
  }

  @Test func unknownOperationMayStillComplete() {
    var history = KVHistory()
    let a = history.invoke(client: 1, put("x", "1"), at: 10)
    history.markUnknown(a)
    history.complete(a, .ok, at: 40)
    #expect(history[a].outcome == .returned(.ok, at: 40))
  }

  @Test func concurrentRecorderFromTasks() async {
    actor Store {
      var values: [String: String] = [:]
      func apply(_ input: KVInput) -> KVOutput {
        switch input {
        case .get(let key): return .value(values[key])
        case .put(let key, let value):
          values[key] = value
          return .ok
        case .delete(let key):
          values[key] = nil
          return .ok
        case .compareAndSwap(let key, let expected, let new):
          guard values[key] == expected else { return .swapped(false) }
          values[key] = new
          return .swapped(true)
        }
      }
    }
    let store = Store()
    let recorder = KVHistoryRecorder()
    await withTaskGroup(of: Void.self) { group in
      for client in 0..<8 {
        group.addTask {
          var rng = SeededRandom(seed: UInt64(client))
          for step in 0..<50 {
            let key = "k\(Int.random(in: 0..<3, using: &rng))"
            let input: KVInput =
              switch Int.random(in: 0..<4, using: &rng) {
              case 0: .get(key: key)
              case 1: .put(key: key, value: "c\(client)-\(step)")
              case 2: .delete(key: key)
              default: .compareAndSwap(key: key, expected: nil, new: "c\(client)-\(step)")
              }
            let op = recorder.invoke(client: client, input)
            let output = await store.apply(input)
            recorder.complete(op, output)
          }
        }
      }
    }
    let history = recorder.history
    #expect(history.count == 400)
    #expect(history.pendingCount == 0)
    let result = history.checkLinearizability()
    #expect(result.isLinearizable, "\(result)")
  }
}

@Suite("Linearizability: hand-made histories")
struct LinearizabilityHandMadeTests {
  static let linearizable: [NamedHistory] = [
    NamedHistory("empty history", KVHistory()),
    NamedHistory(
      "sequential put then get",
      kv {
        $0.done(1, put("x", "1"), 0, 10, .ok)
        $0.done(2, get("x"), 20, 30, value("1"))
      }
    ),
    NamedHistory("read of an absent key", kv { $0.done(1, get("x"), 0, 10, value(nil)) }),
    NamedHistory(
      "reads overlapping a put may see the old or the new value",
      kv {
        $0.done(1, put("x", "1"), 0, 100, .ok)
        $0.done(2, get("x"), 10, 20, value(nil))
        $0.done(3, get("x"), 30, 40, value("1"))
        $0.done(2, get("x"), 50, 60, value("1"))
      }
    ),
    NamedHistory(
      "a read overlapping two puts sees the later-linearized one",
      kv {
        $0.done(1, put("x", "1"), 0, 50, .ok)
        $0.done(2, put("x", "2"), 10, 40, .ok)
        $0.done(3, get("x"), 45, 60, value("1"))
        $0.done(3, get("x"), 70, 80, value("1"))
      }
    ),
    NamedHistory(
      "reads in overlapping intervals disagree but are each consistent",
      kv {
        $0.done(1, put("x", "1"), 0, 10, .ok)
        $0.done(2, put("x", "2"), 20, 80, .ok)
        $0.done(3, get("x"), 30, 70, value("2"))
        $0.done(4, get("x"), 40, 60, value("1"))
      }
    ),
    NamedHistory(
      "compare-and-swap race: one wins, one loses",
      kv {
        $0.done(1, put("x", "0"), 0, 10, .ok)
        $0.done(2, cas("x", "0", "a"), 20, 50, .swapped(true))
        $0.done(3, cas("x", "0", "b"), 25, 45, .swapped(false))
        $0.done(4, get("x"), 60, 70, value("a"))
      }
    ),
    NamedHistory(
      "compare-and-swap on absent key and to absent",
      kv {
        $0.done(1, cas("x", nil, "a"), 0, 10, .swapped(true))
        $0.done(1, cas("x", nil, "b"), 20, 30, .swapped(false))
        $0.done(2, cas("x", "a", nil), 40, 50, .swapped(true))
        $0.done(2, get("x"), 60, 70, value(nil))
      }
    ),
    NamedHistory(
      "delete concurrent with reads",
      kv {
        $0.done(1, put("x", "1"), 0, 10, .ok)
        $0.done(2, del("x"), 20, 60, .ok)
        $0.done(3, get("x"), 25, 35, value("1"))
        $0.done(4, get("x"), 30, 50, value(nil))
        $0.done(3, get("x"), 70, 80, value(nil))
      }
    ),
    NamedHistory(
      "an unknown-outcome write that later becomes visible",
      kv {
        $0.lost(1, put("x", "1"), 0)
        $0.done(2, get("x"), 10, 20, value(nil))
        $0.done(2, get("x"), 1_000, 1_010, value("1"))
        $0.done(3, get("x"), 2_000, 2_010, value("1"))
      }
    ),
    NamedHistory(
      "an unknown-outcome write that never becomes visible",
      kv {
        $0.done(1, put("x", "0"), 0, 5, .ok)
        $0.lost(1, put("x", "1"), 10)
        $0.done(2, get("x"), 20, 30, value("0"))
        $0.done(2, get("x"), 1_000, 1_010, value("0"))
      }
    ),
    NamedHistory(
      "an unknown-outcome write overwritten before anyone saw it",
      kv {
        $0.lost(1, put("x", "1"), 0)
        $0.done(2, put("x", "2"), 10, 20, .ok)
        $0.done(3, get("x"), 30, 40, value("2"))
      }
    ),
    NamedHistory(
      "an unknown-outcome compare-and-swap takes effect",
      kv {
        $0.done(1, put("x", "0"), 0, 10, .ok)
        $0.lost(2, cas("x", "0", "1"), 20)
        $0.done(3, get("x"), 30, 40, value("1"))
      }
    ),
    NamedHistory(
      "two unknown-outcome writes explain a read, and only one choice leaves the other for a later read",
      kv {
        $0.lost(1, put("x", "b"), 0)
        $0.lost(2, cas("x", nil, "b"), 1)
        $0.done(3, get("x"), 10, 20, value("b"))  // by the compare-and-swap, so that…
        $0.done(3, put("x", "c"), 30, 40, .ok)
        $0.done(3, get("x"), 50, 60, value("b"))  // …the put can take effect here
      }
    ),
    NamedHistory(
      "an operation never completed counts as unknown",
      kv {
        $0.invoke(client: 1, put("x", "1"), at: 0)
        $0.done(2, get("x"), 10, 20, value("1"))
      }
    ),
    NamedHistory(
      "a failed write is ignored",
      kv {
        $0.failed(1, put("x", "1"), 0)
        $0.done(2, get("x"), 10, 20, value(nil))
      }
    ),
    NamedHistory(
      "a return and an invocation at the same instant are concurrent",
      kv {
        $0.done(1, put("x", "1"), 0, 10, .ok)
        $0.done(2, get("x"), 10, 20, value(nil))
      }
    ),
    NamedHistory(
      "zero-length operations",
      kv {
        $0.done(1, put("x", "1"), 5, 5, .ok)
        $0.done(2, get("x"), 5, 5, value("1"))
        $0.done(3, get("x"), 5, 5, value(nil))
      }
    ),
    NamedHistory(
      "keys are independent",
      kv {
        $0.done(1, put("x", "1"), 0, 100, .ok)
        $0.done(2, put("y", "1"), 0, 100, .ok)
        $0.done(3, get("x"), 10, 20, value("1"))
        $0.done(3, get("y"), 30, 40, value(nil))
      }
    ),
  ]

  static let notLinearizable: [NamedHistory] = [
    NamedHistory(
      "stale read after a completed write",
      kv {
        $0.done(1, put("x", "1"), 0, 10, .ok)
        $0.done(1, put("x", "2"), 20, 30, .ok)
        $0.done(2, get("x"), 40, 50, value("1"))
      }
    ),
    NamedHistory(
      "read of the initial value after a completed write",
      kv {
        $0.done(1, put("x", "1"), 0, 10, .ok)
        $0.done(2, get("x"), 11, 20, value(nil))
      }
    ),
    NamedHistory(
      "read of a value never written",
      kv {
        $0.done(1, put("x", "1"), 0, 10, .ok)
        $0.done(2, get("x"), 5, 20, value("7"))
      }
    ),
    NamedHistory(
      "lost update: two compare-and-swaps from the same value both succeed",
      kv {
        $0.done(1, put("x", "0"), 0, 10, .ok)
        $0.done(2, cas("x", "0", "a"), 20, 50, .swapped(true))
        $0.done(3, cas("x", "0", "b"), 25, 45, .swapped(true))
      }
    ),
    NamedHistory(
      "compare-and-swap fails although the value matched",
      kv {
        $0.done(1, put("x", "0"), 0, 10, .ok)
        $0.done(2, cas("x", "0", "a"), 20, 30, .swapped(false))
      }
    ),
    NamedHistory(
      "two readers see two writes in opposite orders",
      kv {
        $0.done(1, put("x", "a"), 0, 100, .ok)
        $0.done(2, put("x", "b"), 0, 100, .ok)
        $0.done(3, get("x"), 10, 20, value("a"))
        $0.done(3, get("x"), 30, 40, value("b"))
        $0.done(4, get("x"), 10, 20, value("b"))
        $0.done(4, get("x"), 30, 40, value("a"))
      }
    ),
    NamedHistory(
      "a read un-sees a value",
      kv {
        $0.done(1, put("x", "1"), 0, 100, .ok)
        $0.done(2, get("x"), 10, 20, value("1"))
        $0.done(3, get("x"), 30, 40, value(nil))
      }
    ),
    NamedHistory(
      "an unknown-outcome write is seen, then un-seen",
      kv {
        $0.lost(1, put("x", "1"), 0)
        $0.done(2, get("x"), 10, 20, value("1"))
        $0.done(2, get("x"), 30, 40, value(nil))
      }
    ),
    NamedHistory(
      "an unknown-outcome write is seen before it was invoked",
      kv {
        $0.done(2, get("x"), 0, 10, value("1"))
        $0.lost(1, put("x", "1"), 20)
      }
    ),
    NamedHistory(
      "a failed write is seen",
      kv {
        $0.failed(1, put("x", "1"), 0)
        $0.done(2, get("x"), 10, 20, value("1"))
      }
    ),
    NamedHistory(
      "read of a deleted value",
      kv {
        $0.done(1, put("x", "1"), 0, 10, .ok)
        $0.done(1, del("x"), 20, 30, .ok)
        $0.done(2, get("x"), 40, 50, value("1"))
      }
    ),
    NamedHistory(
      "a read before the write it sees was invoked",
      kv {
        $0.done(2, get("x"), 0, 10, value("1"))
        $0.done(1, put("x", "1"), 11, 20, .ok)
      }
    ),
    NamedHistory(
      "wrong kind of reply",
      kv { $0.done(1, put("x", "1"), 0, 10, .swapped(true)) }
    ),
    NamedHistory(
      "one bad key among good ones",
      kv {
        $0.done(1, put("x", "1"), 0, 10, .ok)
        $0.done(2, put("y", "1"), 0, 10, .ok)
        $0.done(3, get("x"), 20, 30, value("1"))
        $0.done(3, get("y"), 20, 30, value("2"))
      }
    ),
  ]

  @Test(arguments: linearizable)
  func accepts(_ example: NamedHistory) {
    for (name, checker) in KVCheckers.all {
      let result = checker.check(example.history)
      #expect(result.isLinearizable, "\(example.name), \(name) search: \(result)\n\(example.history)")
    }
  }

  @Test(arguments: notLinearizable)
  func rejects(_ example: NamedHistory) {
    for (name, checker) in KVCheckers.all {
      let result = checker.check(example.history)
      #expect(result.isViolation, "\(example.name), \(name) search: \(result)\n\(example.history)")
      #expect(result.violation?.explanation.contains("longest linearizable prefix") == true, "\(example.name)")
    }
  }

  @Test func violationNamesTheKeyAndExplains() throws {
    let history = kv {
      $0.done(1, put("x", "1"), 0, 10, .ok)
      $0.done(2, put("y", "1"), 0, 10, .ok)
      $0.done(1, put("y", "2"), 20, 30, .ok)
      $0.done(3, get("x"), 40, 50, value("1"))
      $0.done(3, get("y"), 40, 50, value("1"))
    }
    let violation = try #require(history.checkLinearizability().violation)
    #expect(violation.partition == "y")
    #expect(violation.operations.count == 3)
    #expect(violation.longestLinearizablePrefix.map(\.rawValue) == [1, 2])
    #expect(violation.explanation.contains("state after it: \"2\""), "\(violation)")
    #expect(violation.explanation.contains("get(y) -> \"1\": impossible from this state"), "\(violation)")
  }

  /// Twenty writes with unknown outcome stay pending for the whole history; one of them is read only at the end,
  /// after fifty completed writes. The eager order alone would try the pending writes in every combination
  /// before the fifty; the checker must still answer, both ways, well within its budget.
  @Test(.heavy, arguments: [false, true])
  func manyPendingUnknownWritesOneObservedLate(violated: Bool) {
    var history = KVHistory()
    for i in 0..<20 { history.lost(100 + i, put("x", "u\(i)"), UInt64(i)) }
    for j in 0..<50 {
      let t = UInt64(1_000 + 20 * j)
      history.done(1, put("x", "k\(j)"), t, t + 5, .ok)
      history.done(1, get("x"), t + 10, t + 15, value("k\(j)"))
    }
    history.done(1, get("x"), 5_000, 5_010, value("u7"))
    if violated {
      history.done(1, get("x"), 5_020, 5_030, value("u3"))
      history.done(1, get("x"), 5_040, 5_050, value("u7"))  // u7 cannot take effect twice
    }
    let result = history.checkLinearizability(maxStatesExplored: 1_000_000)
    #expect(violated ? result.isViolation : result.isLinearizable, "\(result)")
  }

  @Test func budgetGivesUnknownInsteadOfAnswer() {
    let history = kv {
      $0.done(1, put("x", "1"), 0, 10, .ok)
      $0.done(2, get("x"), 20, 30, value("1"))
    }
    let result = history.checkLinearizability(maxStatesExplored: 1)
    guard case .unknown(let partition) = result.verdict else {
      Issue.record("expected unknown, got \(result)")
      return
    }
    #expect(partition == "x")
    #expect(result.stats.statesExplored == 1)
    #expect(history.checkLinearizability(maxStatesExplored: 2).isLinearizable)
  }
}

/// A model other than the key-value one, to show the core is generic: one counter, one partition.
private struct CounterModel: LinearizabilityModel {
  enum Input { case increment, read }
  var initialState: Int { 0 }
  func step(_ state: Int, _ input: Input, _ output: Int?) -> Int? {
    switch input {
    case .increment: return state + 1
    case .read: return output == nil || output == state ? state : nil
    }
  }
}

@Suite("Linearizability: other models")
struct LinearizabilityOtherModelTests {
  @Test func counterHistories() {
    var good = History<CounterModel.Input, Int>()
    good.append(client: 1, .increment, invokedAt: 0, outcome: .returned(0, at: 50))
    good.append(client: 2, .increment, invokedAt: 10, outcome: .unknown)
    good.append(client: 3, .read, invokedAt: 20, outcome: .returned(2, at: 30))
    let checker = LinearizabilityChecker(model: CounterModel())
    #expect(checker.check(good).isLinearizable)

    var bad = good
    bad.append(client: 3, .read, invokedAt: 60, outcome: .returned(1, at: 70))
    let result = checker.check(bad)
    #expect(result.isViolation, "\(result)")
    #expect(result.violation?.partition == SinglePartition())
  }
}
