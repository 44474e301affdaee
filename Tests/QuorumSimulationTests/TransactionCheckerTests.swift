import QuorumCore
import QuorumTestSupport
import Testing

@testable import QuorumSimulation

private func append(_ key: String, _ value: Int) -> ListAppendOperation { .append(key: key, value: value) }
private func read(_ key: String, _ values: [Int]?) -> ListAppendOperation { .read(key: key, values: values) }

/// Shorthands so hand-made histories read like a table. Unless times are given, every transaction runs over
/// [0, 100] on a client of its own, so real time and process order add nothing.
extension TransactionHistory {
  @discardableResult
  fileprivate mutating func committed(
    _ operations: ListAppendOperation..., client: Int? = nil, at times: (UInt64, UInt64) = (0, 100)
  ) -> TransactionID {
    append(
      client: client ?? 100 + count, invokedAt: times.0, completedAt: times.1, outcome: .committed,
      operations: operations)
  }

  @discardableResult
  fileprivate mutating func aborted(_ operations: ListAppendOperation...) -> TransactionID {
    append(client: 100 + count, invokedAt: 0, completedAt: 100, outcome: .aborted, operations: operations)
  }

  @discardableResult
  fileprivate mutating func unknown(_ operations: ListAppendOperation..., at invokedAt: UInt64 = 0) -> TransactionID {
    append(client: 100 + count, invokedAt: invokedAt, completedAt: nil, outcome: .unknown, operations: operations)
  }
}

private func makeHistory(_ build: (inout TransactionHistory) -> Void) -> TransactionHistory {
  var history = TransactionHistory()
  build(&history)
  return history
}

/// Checks, independently of the checker, that `anomaly` names a real cycle of `history`: the edges chain and
/// close, visit each transaction once, each is justified by what the transactions appended, read and when they
/// ran, and the class matches the edges.
private func expectRealCycle(
  _ anomaly: TransactionAnomaly, in history: TransactionHistory, sourceLocation: SourceLocation = #_sourceLocation
) {
  let cycle = anomaly.cycle
  #expect(cycle.count >= 2, "a cycle needs two transactions: \(anomaly)", sourceLocation: sourceLocation)
  for (position, edge) in cycle.enumerated() {
    let next = cycle[(position + 1) % cycle.count]
    #expect(edge.to == next.from, "edges do not chain at \(edge)", sourceLocation: sourceLocation)
    #expect(justified(edge, in: history), "edge not justified by the history: \(edge)", sourceLocation: sourceLocation)
  }
  #expect(anomaly.transactions == cycle.map(\.from), sourceLocation: sourceLocation)
  #expect(
    Set(anomaly.transactions).count == cycle.count, "not a simple cycle: \(anomaly)", sourceLocation: sourceLocation)
  let antiDependencies = cycle.filter { $0.kind == .readWrite }.count
  switch anomaly.kind {
  case .g0: #expect(cycle.allSatisfy { $0.kind != .writeRead && $0.kind != .readWrite }, sourceLocation: sourceLocation)
  case .g1c:
    #expect(antiDependencies == 0 && cycle.contains { $0.kind == .writeRead }, sourceLocation: sourceLocation)
  case .gSingle: #expect(antiDependencies == 1, sourceLocation: sourceLocation)
  case .gNonadjacent, .g2Item:
    #expect(antiDependencies >= 2, sourceLocation: sourceLocation)
    let adjacent = cycle.indices.contains {
      cycle[$0].kind == .readWrite && cycle[($0 + 1) % cycle.count].kind == .readWrite
    }
    #expect(adjacent == (anomaly.kind == .g2Item), sourceLocation: sourceLocation)
  default: Issue.record("\(anomaly.kind) is not a cycle kind", sourceLocation: sourceLocation)
  }
}

/// Whether the history proves `edge`, by the rules the checker documents, checked naively.
private func justified(_ edge: TransactionDependency, in history: TransactionHistory) -> Bool {
  let from = history[edge.from]
  let to = history[edge.to]
  func appended(_ record: TransactionRecord, _ value: Int?) -> Bool {
    guard let key = edge.key, let value else { return false }
    return record.operations.contains(.append(key: key, value: value))
  }
  func committedReads(_ record: TransactionRecord?) -> [[Int]] {
    let records = record.map { [$0] } ?? history.transactions
    return records.filter { $0.outcome == .committed }.flatMap { record in
      record.operations.compactMap { operation -> [Int]? in
        guard case .read(let key, let values?) = operation, key == edge.key else { return nil }
        return values
      }
    }
  }
  switch edge.kind {
  case .writeWrite:
    guard appended(from, edge.previousValue), appended(to, edge.value), let previous = edge.previousValue,
      let value = edge.value
    else { return false }
    return committedReads(nil).contains { list in
      list.indices.dropLast().contains { list[$0] == previous && list[$0 + 1] == value }
    }
  case .writeRead:
    return appended(from, edge.value) && committedReads(to).contains { $0.last == edge.value }
  case .readWrite:
    guard appended(to, edge.value), let value = edge.value else { return false }
    return committedReads(from).contains { $0.last == edge.previousValue && !$0.contains(value) }
  case .realTime:
    guard from.outcome == .committed, let completedAt = from.completedAt else { return false }
    return completedAt < to.invokedAt
  case .process:
    return from.outcome == .committed && from.client == to.client && from.invokedAt <= to.invokedAt
      && from.id != to.id
  }
}

/// The one anomaly of `kind` a history must report (and checks its cycle when it is one).
private func expectOne(
  _ kind: TransactionAnomaly.Kind, in result: TransactionCheckResult, of history: TransactionHistory,
  sourceLocation: SourceLocation = #_sourceLocation
) throws -> TransactionAnomaly {
  let found = result.anomalies(ofKind: kind)
  #expect(found.count == 1, "expected one \(kind) in:\n\(result)", sourceLocation: sourceLocation)
  let anomaly = try #require(found.first, sourceLocation: sourceLocation)
  if kind.isCycle { expectRealCycle(anomaly, in: history, sourceLocation: sourceLocation) }
  return anomaly
}

@Suite("Transaction checker: recording")
struct TransactionRecordingTests {
  @Test("invoke, commit, abort and mark unknown record outcomes, times and read results")
  func invokeCommitAbortUnknown() {
    var history = TransactionHistory()
    let a = history.invoke(client: 1, operations: [append("x", 1), read("x", nil)], at: 10)
    let b = history.invoke(client: 2, operations: [append("x", 2)], at: VirtualTime(nanoseconds: 12))
    let c = history.invoke(client: 3, operations: [append("y", 3)], at: 14)
    let d = history.invoke(client: 4, operations: [read("y", nil)], at: 16)
    history.commit(a, operations: [append("x", 1), read("x", [1])], at: 20)
    history.abort(b, at: VirtualTime(nanoseconds: 22))
    history.markUnknown(c)
    #expect(history[a].outcome == .committed && history[a].completedAt == 20)
    #expect(history[a].operations == [append("x", 1), read("x", [1])])
    #expect(history[b].outcome == .aborted && history[b].completedAt == 22)
    #expect(history[c].outcome == .unknown && history[c].completedAt == nil)
    #expect(history[d].outcome == .unknown, "a transaction never completed counts as unknown")
    history.commit(c, at: 30)
    #expect(history[c].outcome == .committed, "a late reply may still commit an unknown transaction")
    #expect(history.count == 4)
    #expect(history.checkStrictSerializable().isValid)
  }

  @Test("the concurrent recorder records every transaction of many tasks once")
  func concurrentRecorder() async {
    let recorder = ConcurrentTransactionRecorder()
    await withTaskGroup(of: Void.self) { group in
      for client in 0..<8 {
        group.addTask {
          for n in 0..<25 {
            let value = client * 100 + n
            let t = recorder.invoke(client: client, operations: [append("k\(client)", value)])
            if n % 5 == 4 { recorder.abort(t) } else { recorder.commit(t) }
          }
        }
      }
    }
    let history = recorder.history
    #expect(history.count == 200)
    #expect(Set(history.transactions.map(\.id)).count == 200)
    #expect(history.transactions.filter { $0.outcome == .aborted }.count == 40)
    #expect(history.transactions.allSatisfy { t in t.completedAt.map { $0 >= t.invokedAt } ?? false })
    #expect(history.checkSerializable().isValid)
  }
}

@Suite("Transaction checker: one history per anomaly")
struct TransactionAnomalyTests {
  @Test("G0: two transactions append to x and y in opposite orders")
  func writeCycle() throws {
    let history = makeHistory {
      $0.committed(append("x", 1), append("y", 1))
      $0.committed(append("x", 2), append("y", 2))
      $0.committed(read("x", [1, 2]), read("y", [2, 1]))
    }
    let result = history.checkReadCommitted()
    let anomaly = try expectOne(.g0, in: result, of: history)
    #expect(Set(anomaly.transactions) == [TransactionID(rawValue: 0), TransactionID(rawValue: 1)])
    #expect(!result.isValid, "read committed forbids G0")
  }

  @Test("G1a: a committed transaction reads a value of an aborted one")
  func abortedRead() throws {
    let history = makeHistory {
      $0.aborted(append("x", 1))
      $0.committed(read("x", [1]))
    }
    let result = history.checkReadCommitted()
    let anomaly = try expectOne(.g1a, in: result, of: history)
    #expect(anomaly.transactions == [TransactionID(rawValue: 1), TransactionID(rawValue: 0)])
    #expect(anomaly.key == "x")
    #expect(!result.isValid)
  }

  @Test("G1b: a committed transaction reads a state between two appends of another")
  func intermediateRead() throws {
    let history = makeHistory {
      $0.committed(append("x", 1), append("x", 2))
      $0.committed(read("x", [1]))
    }
    let result = history.checkReadCommitted()
    let anomaly = try expectOne(.g1b, in: result, of: history)
    #expect(anomaly.transactions == [TransactionID(rawValue: 1), TransactionID(rawValue: 0)])
    #expect(!result.isValid)
  }

  @Test("G1c: each transaction reads the other's append")
  func circularInformationFlow() throws {
    let history = makeHistory {
      $0.committed(append("x", 1), read("y", [1]))
      $0.committed(append("y", 1), read("x", [1]))
    }
    let result = history.checkReadCommitted()
    let anomaly = try expectOne(.g1c, in: result, of: history)
    #expect(anomaly.cycle.allSatisfy { $0.kind == .writeRead })
    #expect(!result.isValid)
  }

  @Test("G-single (read skew): T1 sees y after T0's append but x before it")
  func readSkew() throws {
    let history = makeHistory {
      $0.committed(append("x", 1), append("y", 1))
      $0.committed(read("x", []), read("y", [1]))
      $0.committed(read("x", [1]), read("y", [1]))
    }
    let result = history.checkSerializable()
    let anomaly = try expectOne(.gSingle, in: result, of: history)
    #expect(Set(anomaly.cycle.map(\.kind)) == [.readWrite, .writeRead])
    #expect(!result.isValid)
    #expect(!history.checkSnapshotIsolation().isValid, "snapshot isolation forbids read skew")
    #expect(history.checkReadCommitted().isValid, "read committed allows read skew")
  }

  @Test("G-nonadjacent: a cycle of two rw edges separated by ww edges")
  func nonadjacentAntiDependencies() throws {
    // T0 -rw(a)-> T1 -ww(b)-> T2 -rw(c)-> T3 -ww(d)-> T0.
    let history = makeHistory {
      $0.committed(read("a", []), append("d", 2))
      $0.committed(append("a", 1), append("b", 1))
      $0.committed(append("b", 2), read("c", []))
      $0.committed(append("c", 1), append("d", 1))
      $0.committed(read("a", [1]), read("b", [1, 2]), read("c", [1]), read("d", [1, 2]))
    }
    let result = history.checkSerializable()
    let anomaly = try expectOne(.gNonadjacent, in: result, of: history)
    #expect(anomaly.cycle.count == 4)
    #expect(!result.isValid)
    #expect(!history.checkSnapshotIsolation().isValid, "snapshot isolation forbids non-adjacent rw edges")
    #expect(history.checkReadCommitted().isValid)
  }

  @Test("G2-item (write skew): each transaction reads both keys empty and appends to one")
  func writeSkew() throws {
    let history = makeHistory {
      $0.committed(read("x", []), read("y", []), append("x", 1))
      $0.committed(read("x", []), read("y", []), append("y", 1))
      $0.committed(read("x", [1]), read("y", [1]))
    }
    let result = history.checkSerializable()
    let anomaly = try expectOne(.g2Item, in: result, of: history)
    #expect(anomaly.cycle.map(\.kind) == [.readWrite, .readWrite])
    #expect(!result.isValid, "serializability forbids write skew")
    let snapshot = history.checkSnapshotIsolation()
    #expect(snapshot.isValid, "snapshot isolation allows write skew:\n\(snapshot)")
    #expect(snapshot.anomalies.map(\.kind) == [.g2Item], "still reported, as allowed")
  }

  @Test("lost update: two transactions read the same version of x and both append to it")
  func lostUpdate() throws {
    let history = makeHistory {
      $0.committed(read("x", []), append("x", 1))
      $0.committed(read("x", []), append("x", 2))
      $0.committed(read("x", [1, 2]))
    }
    let result = history.checkSnapshotIsolation()
    let anomaly = try expectOne(.lostUpdate, in: result, of: history)
    #expect(anomaly.transactions == [TransactionID(rawValue: 0), TransactionID(rawValue: 1)])
    #expect(anomaly.key == "x")
    _ = try expectOne(.gSingle, in: result, of: history)
    #expect(!result.isValid)
    #expect(history.checkReadCommitted().isValid, "read committed allows lost updates")
  }

  @Test("incompatible order: two reads of x that are not prefixes of each other")
  func incompatibleOrder() throws {
    let history = makeHistory {
      $0.committed(append("x", 1))
      $0.committed(append("x", 2))
      $0.committed(read("x", [1]))
      $0.committed(read("x", [2]))
    }
    let result = history.checkReadCommitted()
    let anomaly = try expectOne(.incompatibleOrder, in: result, of: history)
    #expect(Set(anomaly.transactions) == [TransactionID(rawValue: 2), TransactionID(rawValue: 3)])
    #expect(!result.isValid)
  }

  @Test("duplicate append: the same value appended to x twice")
  func duplicateAppend() throws {
    let history = makeHistory {
      $0.committed(append("x", 1))
      $0.aborted(append("x", 1))
      $0.committed(append("y", 1))
    }
    let anomaly = try expectOne(.duplicateAppend, in: history.checkReadCommitted(), of: history)
    #expect(anomaly.transactions == [TransactionID(rawValue: 0), TransactionID(rawValue: 1)])
    #expect(anomaly.key == "x")
  }

  @Test("duplicate elements: a read returns the same value twice")
  func duplicateElements() throws {
    let history = makeHistory {
      $0.committed(append("x", 1))
      $0.committed(read("x", [1, 1]))
    }
    let anomaly = try expectOne(.duplicateElements, in: history.checkReadCommitted(), of: history)
    #expect(anomaly.transactions == [TransactionID(rawValue: 1)])
  }

  @Test("garbage read: a value no transaction appended")
  func garbageRead() throws {
    let history = makeHistory {
      $0.committed(append("x", 1))
      $0.committed(read("x", [1, 7]))
    }
    let result = history.checkReadCommitted()
    let anomaly = try expectOne(.garbageRead, in: result, of: history)
    #expect(anomaly.transactions == [TransactionID(rawValue: 1)])
    #expect(anomaly.explanation.contains("[7]"))
    #expect(!result.isValid)
  }

  @Test("internal: a transaction misses its own append, or sees it before making it")
  func internalInconsistency() throws {
    let missed = makeHistory {
      $0.committed(append("x", 1), read("x", []))
    }
    let anomaly = try expectOne(.internalInconsistency, in: missed.checkReadCommitted(), of: missed)
    #expect(anomaly.transactions == [TransactionID(rawValue: 0)])
    let early = makeHistory {
      $0.committed(append("x", 1))
      $0.committed(read("x", [1, 2]), append("x", 2), read("x", [1, 2]))
    }
    let future = try expectOne(.internalInconsistency, in: early.checkReadCommitted(), of: early)
    #expect(future.transactions == [TransactionID(rawValue: 1)])
  }
}

@Suite("Transaction checker: valid histories and isolation levels")
struct TransactionIsolationTests {
  @Test("a serial history with aborted and unknown transactions has no anomaly at any level")
  func validWithAbortedAndUnknown() {
    let history = makeHistory {
      $0.committed(append("x", 1), read("y", []), client: 1, at: (0, 10))
      $0.aborted(append("x", 2), append("y", 2))
      $0.unknown(append("x", 3), at: 20)  // took effect: a later read saw it
      $0.unknown(append("y", 9), read("x", nil), at: 30)  // never took effect
      $0.committed(read("x", [1, 3]), append("y", 4), client: 1, at: (40, 50))
      $0.committed(read("x", [1, 3]), read("y", [4]), client: 2, at: (60, 70))
    }
    for checker in allCheckers {
      let result = checker.check(history)
      #expect(result.anomalies.isEmpty, "\(result)")
      #expect(result.stats.graphNodes == 5, "the aborted transaction is not in the graph")
    }
  }

  @Test("concurrent transactions that serialize in an order other than their start order are valid")
  func validConcurrent() {
    let history = makeHistory {
      $0.committed(read("x", [1]), append("y", 1), at: (0, 50))
      $0.committed(read("x", []), append("x", 1), at: (10, 40))
      $0.committed(read("y", [1]), read("x", [1]), at: (60, 70))
    }
    for checker in allCheckers { #expect(checker.check(history).isValid, "\(checker.check(history))") }
  }

  @Test("serializable but not strictly: a read that began after an append completed misses it")
  func serializableButNotStrict() throws {
    let history = makeHistory {
      $0.committed(append("x", 1), client: 1, at: (0, 10))
      $0.committed(read("x", []), client: 1, at: (20, 30))
      $0.committed(read("x", [1]), client: 2, at: (40, 50))
    }
    #expect(history.checkSerializable().isValid)
    let strict = history.checkStrictSerializable()
    let anomaly = try expectOne(.gSingle, in: strict, of: history)
    #expect(anomaly.usesRealTimeOrder && !anomaly.usesProcessOrder)
    #expect(!strict.isValid)
    let session = TransactionChecker(isolation: .serializable, processOrder: true).check(history)
    let sessionAnomaly = try expectOne(.gSingle, in: session, of: history)
    #expect(sessionAnomaly.usesProcessOrder)
    #expect(!session.isValid, "the same client saw x lose an element")
  }

  @Test("equal timestamps are concurrent: a transaction invoked when another completes needs not follow it")
  func equalTimestampsAreConcurrent() {
    let history = makeHistory {
      $0.committed(append("x", 1), at: (0, 10))
      $0.committed(read("x", []), at: (10, 30))
      $0.committed(read("x", [1]), at: (40, 50))
    }
    #expect(history.checkStrictSerializable().isValid)
  }

  @Test("each level forbids exactly its anomalies")
  func levelsForbid() {
    let always: Set<TransactionAnomaly.Kind> = [
      .incompatibleOrder, .duplicateAppend, .duplicateElements, .garbageRead, .internalInconsistency, .g0, .g1a, .g1b,
      .g1c,
    ]
    let forbidden: [TransactionIsolationLevel: Set<TransactionAnomaly.Kind>] = [
      .readCommitted: always,
      .snapshotIsolation: always.union([.gSingle, .gNonadjacent, .lostUpdate]),
      .serializable: Set(TransactionAnomaly.Kind.allCases),
    ]
    for level in TransactionIsolationLevel.allCases {
      #expect(Set(TransactionAnomaly.Kind.allCases.filter(level.forbids)) == forbidden[level], "\(level)")
    }
  }

  private var allCheckers: [TransactionChecker] {
    TransactionIsolationLevel.allCases.flatMap { level in
      [(false, false), (true, false), (false, true), (true, true)].map {
        TransactionChecker(isolation: level, realTimeOrder: $0.0, processOrder: $0.1)
      }
    }
  }
}

@Suite("Transaction checker: generated histories")
struct TransactionGeneratedHistoryTests {
  @Test("histories of a correct store pass the strictest check", .heavy, arguments: 0..<12)
  func correctStorePasses(seed: UInt64) {
    let generator = ListAppendHistoryGenerator(
      seed: seed, transactionCount: 400, keyCount: 6, clientCount: 6, abortProbability: 0.1,
      unknownOutcomeProbability: 0.1, finalReads: seed % 2 == 0)
    let history = generator.generate().history
    let result = TransactionChecker(isolation: .serializable, realTimeOrder: true, processOrder: true).check(history)
    #expect(result.anomalies.isEmpty, "seed \(seed):\n\(result)")
    let outcomes = Set(history.transactions.map(\.outcome))
    #expect(outcomes == [.committed, .aborted, .unknown], "seed \(seed) covers every outcome")
    for kind in TransactionDependencyKind.allCases {
      #expect(result.stats.edges[kind, default: 0] > 0, "seed \(seed) has \(kind) edges: \(result.stats)")
    }
  }

  @Test("a dropped append is always detected, as an incompatible order of its key", .heavy)
  func droppedAppendDetected() {
    var injected = 0
    var detected = 0
    for seed: UInt64 in 0..<40 {
      let output = ListAppendHistoryGenerator(
        seed: seed, transactionCount: 200, keyCount: 4, clientCount: 5, fault: .droppedAppend
      ).generate()
      guard let fault = output.injectedFault else { continue }
      injected += 1
      let result = output.history.checkReadCommitted()
      if !result.isValid && result.anomalies(ofKind: .incompatibleOrder).contains(where: { $0.key == fault.key }) {
        detected += 1
      } else {
        Issue.record("seed \(seed): \(fault) not detected:\n\(result)")
      }
    }
    #expect(injected >= 36, "the fault could be injected in \(injected) of 40 runs")
    #expect(detected == injected)
  }

  @Test("a stale read is always detected with real-time or process order, as a cycle through the reader", .heavy)
  func staleReadDetected() {
    var injected = 0
    var detected = 0
    for seed: UInt64 in 0..<40 {
      let output = ListAppendHistoryGenerator(
        seed: seed, transactionCount: 200, keyCount: 4, clientCount: 5, fault: .staleRead
      ).generate()
      guard let fault = output.injectedFault else { continue }
      injected += 1
      let strict = output.history.checkStrictSerializable()
      let session = TransactionChecker(processOrder: true).check(output.history)
      let through = { (result: TransactionCheckResult) in
        result.violations.contains { $0.kind.isCycle && $0.transactions.contains(fault.transaction) }
      }
      if through(strict) && through(session) {
        detected += 1
        for anomaly in strict.violations where anomaly.kind.isCycle { expectRealCycle(anomaly, in: output.history) }
      } else {
        Issue.record("seed \(seed): \(fault) not detected:\n\(strict)\n\(session)")
      }
    }
    #expect(injected >= 36, "the fault could be injected in \(injected) of 40 runs")
    #expect(detected == injected)
  }
}

@Suite("Transaction checker: soundness against brute force")
struct TransactionBruteForceTests {
  /// Whether some serial order of the committed transactions, plus any subset of the unknown ones, reproduces
  /// every committed read (reads of a transaction see its own earlier appends); with `strict`, the order must
  /// also put a committed transaction before every transaction invoked after it completed.
  static func isSerializable(_ history: TransactionHistory, strict: Bool) -> Bool {
    let committed = history.transactions.filter { $0.outcome == .committed }
    let unknown = history.transactions.filter { $0.outcome == .unknown }
    for mask in 0..<(1 << unknown.count) {
      let chosen = committed + unknown.indices.filter { mask & (1 << $0) != 0 }.map { unknown[$0] }
      if somePermutationWorks(chosen, store: [:], strict: strict) { return true }
    }
    return false
  }

  private static func somePermutationWorks(_ remaining: [TransactionRecord], store: [String: [Int]], strict: Bool)
    -> Bool
  {
    if remaining.isEmpty { return true }
    for (index, transaction) in remaining.enumerated() {
      // Another transaction still to place that completed before this one began must go first.
      if strict && remaining.contains(where: { ($0.completedAt ?? .max) < transaction.invokedAt }) { continue }
      var state = store
      var consistent = true
      for operation in transaction.operations {
        switch operation {
        case .append(let key, let value): state[key, default: []].append(value)
        case .read(let key, let values?) where transaction.outcome == .committed:
          consistent = consistent && state[key, default: []] == values
        case .read: break
        }
      }
      guard consistent else { continue }
      var rest = remaining
      rest.remove(at: index)
      if somePermutationWorks(rest, store: state, strict: strict) { return true }
    }
    return false
  }

  /// A small history of a correct store with one change at random: a committed read's result truncated,
  /// extended with a value appended somewhere, or replaced by another read's result of the key; or a committed
  /// transaction turned aborted.
  static func mutated(seed: UInt64) -> TransactionHistory {
    let generated = ListAppendHistoryGenerator(
      seed: seed, transactionCount: 6, keyCount: 2, clientCount: 3, maxOperationsPerTransaction: 3,
      abortProbability: 0.1, unknownOutcomeProbability: 0.15, finalReads: seed % 3 == 0
    ).generate().history
    var rng = SeededRandom(seed: seed &* 7919)
    var transactions = generated.transactions
    let reads = transactions.indices.flatMap { t in
      transactions[t].operations.indices.compactMap { o -> (Int, Int, String, [Int])? in
        guard transactions[t].outcome == .committed, case .read(let key, let values?) = transactions[t].operations[o]
        else { return nil }
        return (t, o, key, values)
      }
    }
    let mutation = Int.random(in: 0..<4, using: &rng)
    if mutation == 3, let t = transactions.indices.filter({ transactions[$0].outcome == .committed }).first {
      transactions[t].outcome = .aborted
    } else if let (t, o, key, values) = reads.randomElement(using: &rng) {
      let others = reads.filter { $0.2 == key }.map(\.3)
      let appended = transactions.flatMap(\.operations).compactMap { operation -> Int? in
        if case .append(key, let value) = operation { return value }
        return nil
      }
      var replacement = values
      switch mutation {
      case 0: replacement = Array(values.dropLast())
      case 1: replacement.append(appended.randomElement(using: &rng) ?? 1)
      default: replacement = others.randomElement(using: &rng) ?? []
      }
      transactions[t].operations[o] = .read(key: key, values: replacement)
    }
    var history = TransactionHistory()
    for record in transactions {
      history.append(
        client: record.client, invokedAt: record.invokedAt, completedAt: record.completedAt, outcome: record.outcome,
        operations: record.operations)
    }
    return history
  }

  @Test(
    "the checker rejects exactly the small mutated histories that have no (strictly) serial order", .heavy,
    arguments: [false, true])
  func soundAgainstBruteForce(strict: Bool) {
    var notSerializable = 0
    var rejected = 0
    for seed: UInt64 in 0..<300 {
      let history = Self.mutated(seed: seed)
      let result = strict ? history.checkStrictSerializable() : history.checkSerializable()
      let serializable = Self.isSerializable(history, strict: strict)
      if !serializable { notSerializable += 1 }
      if !result.isValid {
        rejected += 1
        #expect(!serializable, "seed \(seed): rejected a serializable history:\n\(history)\n\(result)")
      }
    }
    #expect(notSerializable >= 100, "the mutations break serializability often: \(notSerializable) of 300")
    #expect(rejected == notSerializable, "caught \(rejected) of \(notSerializable) non-serializable")
  }
}

@Suite("Transaction checker: cycle search against enumeration")
struct TransactionCycleSearchTests {
  /// Every simple cycle of a small graph, as edge indices (each cycle once, starting at its smallest node).
  static func simpleCycles(nodeCount: Int, edges: [DependencyEdge]) -> [[Int]] {
    var cycles: [[Int]] = []
    func extend(_ start: Int32, _ node: Int32, _ path: [Int], _ visited: Set<Int32>) {
      for (index, edge) in edges.enumerated() where edge.from == node {
        if edge.to == start {
          cycles.append(path + [index])
        } else if edge.to > start && !visited.contains(edge.to) {
          extend(start, edge.to, path + [index], visited.union([edge.to]))
        }
      }
    }
    for start in 0..<Int32(nodeCount) { extend(start, start, [], [start]) }
    return cycles
  }

  @Test(
    "in each component the search finds G0 and G1c exactly when they exist, else the strongest class present", .heavy)
  func againstEnumeration() {
    var rng = SeededRandom(seed: 42)
    var componentsChecked: [TransactionAnomaly.Kind: Int] = [:]
    let itemKinds: [TransactionDependencyKind] = [.writeWrite, .writeRead, .readWrite]
    for trial in 0..<3000 {
      let nodeCount = Int.random(in: 2...8, using: &rng)
      // A third of the graphs have ww and wr edges only from lower to higher nodes, so they hold no G0 or G1c
      // cycle; another third only from 2i to 2i + 1, so that rw edges separated by them are common (G-nonadjacent).
      let shape = trial % 3
      func allowed(_ kind: TransactionDependencyKind, _ a: Int32, _ b: Int32) -> Bool {
        kind == .readWrite || shape == 0 || (shape == 1 && a < b) || (shape == 2 && a % 2 == 0 && b == a + 1)
      }
      var edges: [DependencyEdge] = []
      for a in 0..<Int32(nodeCount) {
        for b in 0..<Int32(nodeCount) where a != b {
          for kind in itemKinds where rng.chance(shape == 2 ? 0.3 : 0.1) && allowed(kind, a, b) {
            edges.append(DependencyEdge(from: a, to: b, kind: kind, key: -1, value: 0, previous: nil))
          }
        }
      }
      let graph = CSRGraph(
        nodeCount: nodeCount, sources: edges.map(\.from), targets: edges.map(\.to),
        edgeIDs: edges.indices.map { Int32($0) })
      let (component, cyclic) = graph.stronglyConnectedComponents()
      let all = Self.simpleCycles(nodeCount: nodeCount, edges: edges)
      #expect(cyclic.isEmpty == all.isEmpty, "components with cycles iff cycles: \(edges)")
      var finder = CycleFinder(graph: graph, edges: edges)
      for members in cyclic {
        let id = component[Int(members[0])]
        let present = Set(
          all.filter { component[Int(edges[$0[0]].from)] == id }.map { classifyCycle($0.map { edges[$0].kind }) })
        let found = finder.cycles(in: members)
        for cycle in found {
          let hops = cycle.map { edges[Int($0)] }
          #expect(hops.indices.allSatisfy { hops[$0].to == hops[($0 + 1) % hops.count].from }, "not closed: \(hops)")
          #expect(Set(hops.map(\.from)).count == hops.count, "not simple: \(hops)")
          #expect(hops.allSatisfy { component[Int($0.from)] == id }, "leaves its component: \(hops)")
        }
        let foundKinds = found.map { classifyCycle($0.map { edges[Int($0)].kind }) }
        #expect(foundKinds.contains(.g0) == present.contains(.g0), "\(present) vs \(foundKinds): \(edges)")
        #expect(foundKinds.contains(.g1c) == present.contains(.g1c), "\(present) vs \(foundKinds): \(edges)")
        if present.isDisjoint(with: [.g0, .g1c]) {
          let strongest = [TransactionAnomaly.Kind.gSingle, .gNonadjacent, .g2Item].first(where: present.contains)
          #expect(foundKinds == strongest.map { [$0] }, "\(present) vs \(foundKinds): \(edges)")
        }
        for kind in Set(foundKinds) { componentsChecked[kind, default: 0] += 1 }
      }
    }
    for kind in TransactionAnomaly.Kind.allCases where kind.isCycle {
      #expect(
        componentsChecked[kind, default: 0] >= 20, "\(kind) found in \(componentsChecked[kind, default: 0]) components")
    }
  }
}

@Suite("Bank history checker")
struct BankHistoryCheckerTests {
  @Test("reads that add up pass; a wrong total, a missing account and a negative balance are each reported")
  func totals() {
    let t = (0..<5).map { TransactionID(rawValue: $0) }
    let checker = BankHistoryChecker(expectedTotal: 100, accounts: ["a", "b", "c"], allowsNegativeBalances: false)
    let good = checker.check([(t[0], ["a": 50, "b": 30, "c": 20]), (t[1], ["a": 0, "b": 0, "c": 100])])
    #expect(good.isValid && good.observationsChecked == 2)
    let bad = checker.check([
      (t[2], ["a": 50, "b": 30, "c": 30]),
      (t[3], ["a": 50, "b": 50]),
      (t[4], ["a": -10, "b": 60, "c": 50]),
    ])
    #expect(
      bad.violations == [
        BankViolation(transaction: t[2], kind: .wrongTotal(110)),
        BankViolation(transaction: t[3], kind: .missingAccounts(["c"])),
        BankViolation(transaction: t[4], kind: .negativeBalance(account: "a", balance: -10)),
      ])
    let open = BankHistoryChecker(expectedTotal: 100).check([BankObservation(transaction: t[0], balances: ["z": 99])])
    #expect(open.violations == [BankViolation(transaction: t[0], kind: .wrongTotal(99))])
  }
}
