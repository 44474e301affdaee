/// Checks a list-append ``TransactionHistory`` against an isolation level by inferring the dependencies between
/// transactions from what they read, in the manner of Elle (Kingsbury & Alvaro, "Elle: Inferring Isolation
/// Anomalies from Experimental Observations", VLDB 2020), and looking for the anomalies of Adya's theory (1999).
///
/// ```swift
/// let result = history.checkSerializable()   // or TransactionChecker(isolation: .snapshotIsolation).check(history)
/// if !result.isValid { print(result) }         // each violation names its transactions and its evidence
/// ```
///
/// ## What it infers
///
/// Only committed transactions' reads count (an aborted or unknown transaction may have read anything). The graph's
/// nodes are the committed transactions and those with unknown outcome; aborted ones are left out (reading
/// their values is G1a).
///
/// - **Version order.** Each key's list only grows, so each read of it is a prefix of every later version. The
///   longest committed read of a key is taken as its version order; every other committed read must be a prefix
///   of it, or the two are reported as ``TransactionAnomaly/Kind/incompatibleOrder``. Appends no read observed
///   have no known place in it.
/// - **ww**: for each two adjacent elements of the version order, the writer of the first precedes the writer of
///   the second (adjacent pairs suffice: the rest follows by transitivity).
/// - **wr**: a read whose list ends in `v` depends on the writer of `v`. Only the last element gives an edge:
///   the writers of the earlier elements precede `v`'s writer through the ww chain, so they precede the reader
///   transitively.
/// - **rw**: a read of a list of length `n` (a prefix of the version order) precedes the writer of element `n`
///   of the version order, the version installed right after the one it read (an empty read precedes the
///   writer of the first element). A committed append that no read observed has no known place, but it must
///   follow every read that lacks it (an append of a transaction with unknown outcome counts as committed once a
///   read saw another of its appends): the reads of the longest version (all reads, if that is empty) get an rw
///   edge to its writer, and the other reads precede those through ww and wr edges. This goes beyond Elle's
///   rules, which give such appends no edges; it stays sound (in any serial order the append comes after a read
///   that misses it).
/// - Edges from a transaction to itself are dropped (a read of one's own append).
/// - Optionally, **real-time** edges (``realTimeOrder``: T1 committed before T2 was invoked; equal timestamps
///   count as concurrent; a transitive reduction with at most one edge per client and transaction) and
///   **process** edges (``processOrder``: a client's committed transaction precedes that client's later ones).
///   Transactions with unknown outcome have no completion time, so nothing is ordered after them.
///
/// ## What it reports
///
/// Besides the history's own errors (duplicate appends, reads of values never appended, reads with a value twice,
/// incompatible orders, a transaction that misses its own appends or sees them early), G1a, G1b and lost updates
/// are found by looking at each read. Cycles are found with Tarjan's strongly connected components over the whole graph,
/// then, inside each cyclic component, a breadth-first search for a short cycle of the strongest class present
/// (G0 and G1c, else G-single, else G-nonadjacent, else G2-item); see ``TransactionAnomaly/Kind`` for the
/// classes and ``TransactionIsolationLevel`` for which levels forbid them.
///
/// ## Limits
///
/// - Only the list-append model: reads return whole lists, appended values are unique per key. Registers,
///   counters and sets infer less (see ``BankHistoryChecker`` for the conserved-total check of a bank workload).
/// - Predicates (range reads) are not modelled, so G2 with predicate anti-dependencies (phantoms) is out of
///   reach: G2-item is what is checked.
/// - Cycles need observations: an append no committed read saw, or a transaction that read nothing, may hide a
///   cycle. Long histories with final reads of every key observe the most.
/// - At most one cycle per class is reported per strongly connected component (one per sub-component for G0 and
///   G1c), so a component with many anomalies reports a few representatives.
/// - The G-single search costs O((V + E) · S / 64) for a cyclic component with V transactions, E edges and S
///   transactions with rw edges; G-nonadjacent builds a product graph twice the component's size. Components of
///   acyclic histories are single transactions, so a valid history costs O(size of the history).
public struct TransactionChecker: Sendable {
  /// The level whose anomalies count as violations.
  public var isolation: TransactionIsolationLevel
  /// Whether the graph includes real-time edges (strict serializability, strong snapshot isolation).
  public var realTimeOrder: Bool
  /// Whether the graph includes process-order edges (strong session variants).
  public var processOrder: Bool

  /// Creates a checker for `isolation`, optionally with real-time and process-order edges.
  public init(
    isolation: TransactionIsolationLevel = .serializable, realTimeOrder: Bool = false, processOrder: Bool = false
  ) {
    self.isolation = isolation
    self.realTimeOrder = realTimeOrder
    self.processOrder = processOrder
  }

  /// Checks `history`: infers the dependency graph and reports every anomaly found, and which of them
  /// ``isolation`` forbids.
  public func check(_ history: TransactionHistory) -> TransactionCheckResult {
    var analysis = ListAppendAnalysis(history: history)
    analysis.scanTransactions()
    analysis.inferFromReads()
    analysis.findLostUpdates()
    if realTimeOrder { analysis.addRealTimeEdges() }
    if processOrder { analysis.addProcessEdges() }
    analysis.findCycles()
    return TransactionCheckResult(
      isolation: isolation, realTimeOrder: realTimeOrder, processOrder: processOrder, anomalies: analysis.anomalies,
      stats: analysis.stats)
  }
}

extension TransactionHistory {
  /// Checks the history for serializability: no anomaly of any kind, real-time order ignored.
  public func checkSerializable() -> TransactionCheckResult {
    TransactionChecker(isolation: .serializable).check(self)
  }

  /// Checks the history for strict serializability: serializable with real-time edges in the graph, so the
  /// serial order must also respect the order in which transactions completed and began.
  public func checkStrictSerializable() -> TransactionCheckResult {
    TransactionChecker(isolation: .serializable, realTimeOrder: true).check(self)
  }

  /// Checks the history for snapshot isolation: G0, G1, lost updates, G-single and G-nonadjacent are violations;
  /// write skew (G2-item) is allowed.
  public func checkSnapshotIsolation() -> TransactionCheckResult {
    TransactionChecker(isolation: .snapshotIsolation).check(self)
  }

  /// Checks the history for read committed: G0, G1a, G1b and G1c are violations.
  public func checkReadCommitted() -> TransactionCheckResult {
    TransactionChecker(isolation: .readCommitted).check(self)
  }
}

/// The work of one check: indexes, inferred edges and anomalies.
struct ListAppendAnalysis {
  /// Who appended a value to a key.
  struct Writer {
    var transaction: Int
    /// Whether this is the writer's last append to the key (reading anything else is G1b).
    var isFinal = false
  }

  /// A committed read with a known result.
  struct Read {
    var transaction: Int
    var values: [Int]
  }

  let history: TransactionHistory
  var keys: [String] = []
  var keyIndex: [String: Int] = [:]
  /// Per key: value → its (first) writer.
  var writers: [[Int: Writer]] = []
  /// Per key: the committed reads with known results.
  var reads: [[Read]] = []
  /// Graph node of each transaction (-1 for aborted ones), and the transaction of each node.
  var nodeOf: [Int32] = []
  var transactionOf: [Int] = []
  var edges: [DependencyEdge] = []
  var anomalies: [TransactionAnomaly] = []
  var stats = TransactionCheckStats()

  init(history: TransactionHistory) {
    self.history = history
    stats.transactions = history.count
    nodeOf.reserveCapacity(history.count)
    for record in history.transactions {
      if record.outcome == .aborted {
        nodeOf.append(-1)
      } else {
        nodeOf.append(Int32(transactionOf.count))
        transactionOf.append(record.id.rawValue)
      }
    }
    stats.graphNodes = transactionOf.count
  }

  private func id(_ transaction: Int) -> TransactionID { TransactionID(rawValue: transaction) }

  private mutating func index(of key: String) -> Int {
    if let index = keyIndex[key] { return index }
    keyIndex[key] = keys.count
    keys.append(key)
    writers.append([:])
    reads.append([])
    return keys.count - 1
  }

  // MARK: Per transaction

  /// Indexes every append (finding duplicates and each writer's final append per key), collects committed
  /// reads, and checks that each committed read of a key ends with the transaction's own earlier appends to it
  /// and holds none of its later ones.
  mutating func scanTransactions() {
    for record in history.transactions {
      let t = record.id.rawValue
      var lastAppend: [Int: Int] = [:]
      var ownAppends: [Int: [Int]] = [:]
      for (position, operation) in record.operations.enumerated() {
        switch operation {
        case .append(let key, let value):
          let k = index(of: key)
          if let first = writers[k][value] {
            anomalies.append(
              TransactionAnomaly(
                kind: .duplicateAppend, transactions: [id(first.transaction), id(t)], key: key,
                explanation: "\(value) appended to \(key) by \(id(first.transaction)) and again by \(id(t))"))
          } else {
            writers[k][value] = Writer(transaction: t)
          }
          lastAppend[k] = value
          ownAppends[k, default: []].append(value)
        case .read(let key, let values?) where record.outcome == .committed:
          let k = index(of: key)
          reads[k].append(Read(transaction: t, values: values))
          let own = ownAppends[k, default: []]
          if !values.reversed().starts(with: own.reversed()) {
            anomalies.append(
              TransactionAnomaly(
                kind: .internalInconsistency, transactions: [id(t)], key: key,
                explanation: "\(id(t)) appended \(own) to \(key), then read \(values), which does not end with them"))
          } else if let future = laterAppends(of: record, after: position, to: key).first(where: { values.contains($0) }
          ) {
            anomalies.append(
              TransactionAnomaly(
                kind: .internalInconsistency, transactions: [id(t)], key: key,
                explanation: "\(id(t)) read \(key) with \(future) in it before appending \(future) itself"))
          }
        case .read(let key, _):
          _ = index(of: key)
        }
      }
      for (k, value) in lastAppend where writers[k][value]?.transaction == t { writers[k][value]?.isFinal = true }
    }
  }

  /// The values `record` appends to `key` after its micro-operation at `position`.
  private func laterAppends(of record: TransactionRecord, after position: Int, to key: String) -> [Int] {
    record.operations[(position + 1)...].compactMap { operation in
      guard case .append(key, let value) = operation else { return nil }
      return value
    }
  }

  // MARK: Per key

  /// Per key: the version order, incompatible reads, garbage, duplicate and aborted values, intermediate reads,
  /// and the ww, wr and rw edges.
  mutating func inferFromReads() {
    var orders: [[Int]?] = Array(repeating: nil, count: keys.count)
    for k in keys.indices {
      let keyReads = reads[k]
      guard let longest = keyReads.max(by: { $0.values.count < $1.values.count }) else { continue }
      let order = longest.values
      orders[k] = order
      let orderFacts = facts(of: order, key: k)
      var reportedVersions: Set<[Int]> = []
      for read in keyReads {
        let isPrefix = order.starts(with: read.values)
        if !isPrefix, reportedVersions.insert(read.values).inserted {
          reportIncompatible(read, longest, key: k)
        }
        checkElements(of: read, key: k, facts: isPrefix ? orderFacts : facts(of: read.values, key: k))
        checkIntermediate(read, key: k)
        addReadEdges(read, key: k, order: isPrefix ? order : nil)
      }
      addWriteEdges(order, key: k)
    }
    // A transaction with unknown outcome committed if a committed read saw one of its appends.
    var committed = history.transactions.map { $0.outcome == .committed }
    for (k, order) in orders.enumerated() {
      for value in order ?? [] {
        if let writer = writers[k][value], history.transactions[writer.transaction].outcome == .unknown {
          committed[writer.transaction] = true
        }
      }
    }
    for (k, order) in orders.enumerated() {
      if let order { addUnobservedAppendEdges(order, key: k, committed: committed) }
    }
  }

  /// Where a list holds garbage, aborted and repeated values: a prefix of the list holds those at positions
  /// below its length.
  struct ListFacts {
    var garbage: [Int] = []
    var aborted: [Int] = []
    var firstRepeat: Int?
  }

  private func facts(of list: [Int], key k: Int) -> ListFacts {
    var facts = ListFacts()
    var seen = Set<Int>(minimumCapacity: list.count)
    for (position, value) in list.enumerated() {
      if let writer = writers[k][value] {
        if history.transactions[writer.transaction].outcome == .aborted { facts.aborted.append(position) }
      } else {
        facts.garbage.append(position)
      }
      if facts.firstRepeat == nil, !seen.insert(value).inserted { facts.firstRepeat = position }
    }
    return facts
  }

  private mutating func reportIncompatible(_ read: Read, _ longest: Read, key k: Int) {
    let common = min(read.values.count, longest.values.count)
    let split = (0..<common).first { read.values[$0] != longest.values[$0] } ?? common
    let theirs = split < read.values.count ? "\(read.values[split])" : "nothing"
    let ours = split < longest.values.count ? "\(longest.values[split])" : "nothing"
    anomalies.append(
      TransactionAnomaly(
        kind: .incompatibleOrder, transactions: [id(read.transaction), id(longest.transaction)], key: keys[k],
        explanation: "\(id(read.transaction)) read \(keys[k]) with \(read.values.count) elements and "
          + "\(id(longest.transaction)) with \(longest.values.count); neither is a prefix of the other: at index "
          + "\(split) the first has \(theirs), the second \(ours)"))
  }

  private mutating func checkElements(of read: Read, key k: Int, facts: ListFacts) {
    let key = keys[k]
    let reader = id(read.transaction)
    let count = read.values.count
    let garbage = facts.garbage.prefix { $0 < count }.map { read.values[$0] }
    if !garbage.isEmpty {
      anomalies.append(
        TransactionAnomaly(
          kind: .garbageRead, transactions: [reader], key: key,
          explanation: "\(reader) read \(key) with \(garbage), which no transaction appended to \(key)"))
    }
    if let position = facts.firstRepeat, position < count {
      anomalies.append(
        TransactionAnomaly(
          kind: .duplicateElements, transactions: [reader], key: key,
          explanation: "\(reader) read \(key) with \(read.values[position]) twice (again at index \(position))"))
    }
    var reportedWriters: Set<Int> = []
    for position in facts.aborted.prefix(while: { $0 < count }) {
      let value = read.values[position]
      guard let writer = writers[k][value]?.transaction, reportedWriters.insert(writer).inserted else { continue }
      anomalies.append(
        TransactionAnomaly(
          kind: .g1a, transactions: [reader, id(writer)], key: key,
          explanation: "\(reader) committed after reading \(value) in \(key), appended by \(id(writer)), which aborted")
      )
    }
  }

  /// G1b: the read's last value is its writer's append, but not the writer's final append to the key.
  private mutating func checkIntermediate(_ read: Read, key k: Int) {
    guard let last = read.values.last, let writer = writers[k][last], writer.transaction != read.transaction,
      !writer.isFinal, history.transactions[writer.transaction].outcome != .aborted
    else { return }
    let reader = id(read.transaction)
    anomalies.append(
      TransactionAnomaly(
        kind: .g1b, transactions: [reader, id(writer.transaction)], key: keys[k],
        explanation: "\(reader) read \(keys[k]) ending in \(last), but \(id(writer.transaction)) appended more to "
          + "\(keys[k]) after \(last): \(reader) saw an intermediate state"))
  }

  /// wr from the writer of the read's last element; rw to the writer of the next element of the version order
  /// (only when the read is a prefix of it, `order` non-nil).
  private mutating func addReadEdges(_ read: Read, key k: Int, order: [Int]?) {
    let reader = nodeOf[read.transaction]
    if let last = read.values.last, let writer = writers[k][last], writer.transaction != read.transaction {
      addEdge(from: nodeOf[writer.transaction], to: reader, .writeRead, key: k, value: last)
    }
    if let order, read.values.count < order.count {
      let next = order[read.values.count]
      if let writer = writers[k][next], writer.transaction != read.transaction {
        addEdge(
          from: reader, to: nodeOf[writer.transaction], .readWrite, key: k, value: next, previous: read.values.last)
      }
    }
  }

  /// ww between the writers of each two adjacent elements of the version order.
  private mutating func addWriteEdges(_ order: [Int], key k: Int) {
    for position in order.indices.dropLast() {
      guard let first = writers[k][order[position]], let second = writers[k][order[position + 1]],
        first.transaction != second.transaction
      else { continue }
      addEdge(
        from: nodeOf[first.transaction], to: nodeOf[second.transaction], .writeWrite, key: k,
        value: order[position + 1], previous: order[position])
    }
  }

  /// rw from the reads of the longest version (every read, when it is empty) to each committed transaction whose
  /// append to the key no read saw: that append must come after all of them, wherever it is in the version order.
  /// A transaction counts as committed if it did, or if its outcome is unknown but a read saw another of its
  /// appends.
  private mutating func addUnobservedAppendEdges(_ order: [Int], key k: Int, committed: [Bool]) {
    let observed = Set(order)
    let unobserved = writers[k].filter { !observed.contains($0.key) && committed[$0.value.transaction] }
      .sorted { $0.key < $1.key }
    guard !unobserved.isEmpty else { return }
    for read in reads[k] where read.values == order {
      for (value, writer) in unobserved where writer.transaction != read.transaction {
        addEdge(
          from: nodeOf[read.transaction], to: nodeOf[writer.transaction], .readWrite, key: k, value: value,
          previous: order.last)
      }
    }
  }

  /// Adds an edge unless an end is not in the graph (an aborted transaction) or both ends are the same.
  private mutating func addEdge(
    from: Int32, to: Int32, _ kind: TransactionDependencyKind, key: Int = -1, value: Int = 0, previous: Int? = nil
  ) {
    guard from >= 0, to >= 0, from != to else { return }
    edges.append(DependencyEdge(from: from, to: to, kind: kind, key: Int32(key), value: value, previous: previous))
    stats.edges[kind, default: 0] += 1
  }

  // MARK: Lost updates

  /// Committed transactions that read a key before appending to it, grouped by the version they read: two or
  /// more in one group lost an update.
  mutating func findLostUpdates() {
    struct Version: Hashable {
      var key: Int
      var length: Int
      var last: Int?
    }
    var groups: [Version: [Int]] = [:]
    var versions: [Version] = []
    for record in history.transactions where record.outcome == .committed {
      var firstRead: [Int: [Int]] = [:]
      var touched: Set<Int> = []
      var readThenAppended: Set<Int> = []
      for operation in record.operations {
        guard let k = keyIndex[operation.key] else { continue }
        switch operation {
        case .read(_, let values?):
          if touched.insert(k).inserted { firstRead[k] = values }
        case .read: touched.insert(k)
        case .append:
          if touched.insert(k).inserted { continue }
          if firstRead[k] != nil { readThenAppended.insert(k) }
        }
      }
      for k in readThenAppended.sorted() {
        guard let values = firstRead[k] else { continue }
        let version = Version(key: k, length: values.count, last: values.last)
        if groups[version] == nil { versions.append(version) }
        groups[version, default: []].append(record.id.rawValue)
      }
    }
    for version in versions {
      guard let group = groups[version], group.count > 1 else { continue }
      let ids = group.map { id($0) }
      let what = version.last.map { "ending in \($0)" } ?? "empty"
      anomalies.append(
        TransactionAnomaly(
          kind: .lostUpdate, transactions: ids, key: keys[version.key],
          explanation: "\(ids.map(\.description).joined(separator: ", ")) all read \(keys[version.key]) \(what) "
            + "(\(version.length) elements) and appended to it: each append ignores the others"))
    }
  }

  // MARK: Order edges

  /// Real-time edges, transitively reduced: sweeping invocations and completions in time order, each
  /// invocation gets an edge from every transaction of the frontier (completed, with no completed successor
  /// yet), and each completion replaces its own predecessors in the frontier. Frontier members overlap in time
  /// pairwise, so there are at most as many as transactions run at once.
  mutating func addRealTimeEdges() {
    var events: [(time: UInt64, isCompletion: Bool, node: Int32)] = []
    for (node, t) in transactionOf.enumerated() {
      let record = history.transactions[t]
      events.append((record.invokedAt, false, Int32(node)))
      if record.outcome == .committed, let completedAt = record.completedAt {
        events.append((completedAt, true, Int32(node)))
      }
    }
    // Invocations before completions at the same instant: equal timestamps are concurrent.
    events.sort { ($0.time, $0.isCompletion ? 1 : 0, $0.node) < ($1.time, $1.isCompletion ? 1 : 0, $1.node) }
    var frontier: [Int32] = []
    var predecessors: [Int32: [Int32]] = [:]
    var covered = [Bool](repeating: false, count: transactionOf.count)
    for event in events {
      if !event.isCompletion {
        predecessors[event.node] = frontier
        for p in frontier { addEdge(from: p, to: event.node, .realTime) }
        continue
      }
      for p in predecessors.removeValue(forKey: event.node) ?? [] { covered[Int(p)] = true }
      frontier.removeAll { covered[Int($0)] }
      frontier.append(event.node)
    }
  }

  /// Process edges: each transaction of a client follows the client's last committed transaction before it (in
  /// invocation order).
  mutating func addProcessEdges() {
    var lastCommitted: [Int: Int32] = [:]
    let byClient = transactionOf.indices.sorted {
      let a = history.transactions[transactionOf[$0]]
      let b = history.transactions[transactionOf[$1]]
      return (a.client, a.invokedAt, a.id) < (b.client, b.invokedAt, b.id)
    }
    for node in byClient {
      let record = history.transactions[transactionOf[node]]
      if let previous = lastCommitted[record.client] { addEdge(from: previous, to: Int32(node), .process) }
      if record.outcome == .committed { lastCommitted[record.client] = Int32(node) }
    }
  }

  // MARK: Cycles

  /// Strongly connected components of the whole graph, then a short cycle of the strongest class in each.
  mutating func findCycles() {
    let graph = CSRGraph(
      nodeCount: transactionOf.count, sources: edges.map(\.from), targets: edges.map(\.to),
      edgeIDs: edges.indices.map { Int32($0) })
    let (_, cyclic) = graph.stronglyConnectedComponents()
    stats.cyclicComponents = cyclic.count
    stats.largestComponent = cyclic.map(\.count).max() ?? 0
    var finder = CycleFinder(graph: graph, edges: edges)
    for members in cyclic {
      for cycle in finder.cycles(in: members) { anomalies.append(report(cycle)) }
    }
  }

  private func report(_ cycle: [Int32]) -> TransactionAnomaly {
    let dependencies = cycle.map { edgeID -> TransactionDependency in
      let edge = edges[Int(edgeID)]
      let isItem = edge.kind == .writeWrite || edge.kind == .writeRead || edge.kind == .readWrite
      return TransactionDependency(
        from: id(transactionOf[Int(edge.from)]), to: id(transactionOf[Int(edge.to)]), kind: edge.kind,
        key: edge.key >= 0 ? keys[Int(edge.key)] : nil, value: isItem ? edge.value : nil, previousValue: edge.previous)
    }
    let kind = classifyCycle(dependencies.map(\.kind))
    let lines = dependencies.map { "  \($0)" }.joined(separator: "\n")
    return TransactionAnomaly(
      kind: kind, transactions: dependencies.map(\.from), cycle: dependencies,
      explanation: "a cycle of \(dependencies.count) transactions:\n\(lines)")
  }
}
