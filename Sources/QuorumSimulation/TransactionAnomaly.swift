/// The kinds of edge in a transaction dependency graph (Adya's direct serialization graph, plus optional
/// order edges).
public enum TransactionDependencyKind: Hashable, Sendable, CaseIterable, CustomStringConvertible {
  /// Write dependency: the source's append to a key comes directly before the target's in the key's version
  /// order, so the target installed the version after the source's.
  case writeWrite
  /// Read dependency: the target read a version of a key installed by the source (the last element of the list
  /// it read is the source's append).
  case writeRead
  /// Anti-dependency: the source read a version of a key, and the target installed the next version (appended
  /// the element right after the list the source read), or appended a value no read observed, which must come
  /// later still.
  case readWrite
  /// Real-time order: the source completed before the target was invoked. Only with
  /// ``TransactionChecker/realTimeOrder``.
  case realTime
  /// Process order: both ran on the same client, the source committed and the target came later. Only with
  /// ``TransactionChecker/processOrder``.
  case process

  /// `ww`, `wr`, `rw`, `realtime` or `process`.
  public var description: String {
    switch self {
    case .writeWrite: return "ww"
    case .writeRead: return "wr"
    case .readWrite: return "rw"
    case .realTime: return "realtime"
    case .process: return "process"
    }
  }
}

/// One edge of a dependency cycle, with the evidence that proves it.
public struct TransactionDependency: Hashable, Sendable, CustomStringConvertible {
  /// The transaction that must come first.
  public var from: TransactionID
  /// The transaction that must come after it.
  public var to: TransactionID
  /// Why.
  public var kind: TransactionDependencyKind
  /// The key whose version order proves a ww, wr or rw edge; `nil` for real-time and process edges.
  public var key: String?
  /// For a ww edge the value `to` appended; for an rw edge the value `to` appended that `from`'s read did not
  /// include (the element right after it in the version order, or an append no read observed); for a wr edge
  /// the value `from` appended that `to`'s read ended with; `nil` for real-time and process edges.
  public var value: Int?
  /// For a ww edge the value `from` appended just before ``value``; for an rw edge the last element of the list
  /// `from` read (`nil` if it read an empty list); otherwise `nil`.
  public var previousValue: Int?

  /// Creates an edge.
  public init(
    from: TransactionID, to: TransactionID, kind: TransactionDependencyKind, key: String? = nil, value: Int? = nil,
    previousValue: Int? = nil
  ) {
    self.from = from
    self.to = to
    self.kind = kind
    self.key = key
    self.value = value
    self.previousValue = previousValue
  }

  /// For example `T1 -rw-> T2 (T1 read x ending in 3, without T2's append of 4)`.
  public var description: String {
    let key = self.key ?? "?"
    let value = self.value.map(String.init) ?? "?"
    let why: String
    switch kind {
    case .writeWrite:
      why = "\(from) appended \(previousValue.map(String.init) ?? "?") to \(key), \(to) appended \(value) right after"
    case .writeRead: why = "\(to) read \(key) ending in \(value), appended by \(from)"
    case .readWrite:
      let version = previousValue.map { "ending in \($0)" } ?? "empty"
      why = "\(from) read \(key) \(version), without \(to)'s append of \(value)"
    case .realTime: why = "\(from) completed before \(to) began"
    case .process: why = "same client, \(from) committed before \(to)"
    }
    return "\(from) -\(kind)-> \(to) (\(why))"
  }
}

/// One anomaly the ``TransactionChecker`` found, with the transactions involved and the evidence.
public struct TransactionAnomaly: Hashable, Sendable, CustomStringConvertible {
  /// The anomaly classes, named as Adya (1999) and Elle (Kingsbury & Alvaro 2020) name them.
  ///
  /// Which of them a history may show depends on the isolation level: see
  /// ``TransactionIsolationLevel/forbids(_:)``.
  public enum Kind: String, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    /// Write cycle: a cycle of ww edges (and, if enabled, real-time or process edges) only.
    case g0 = "G0"
    /// Aborted read: a committed transaction read a value appended by an aborted transaction.
    case g1a = "G1a"
    /// Intermediate read: a committed transaction read a list ending in a value that another transaction
    /// followed with a later append to the same key, a state that transaction never committed.
    case g1b = "G1b"
    /// Circular information flow: a cycle of ww and wr edges (at least one wr).
    case g1c = "G1c"
    /// Read skew: a cycle with exactly one rw (anti-dependency) edge.
    case gSingle = "G-single"
    /// A cycle with two or more rw edges, no two of them adjacent (counting around the cycle). Snapshot
    /// isolation forbids it although it is a G2-item cycle.
    case gNonadjacent = "G-nonadjacent"
    /// Write skew: a cycle with two or more rw edges, at least two of them adjacent. Only serializability forbids
    /// it.
    case g2Item = "G2-item"
    /// Two committed transactions read the same version of a key and both appended to it: one's append was
    /// computed without the other's.
    case lostUpdate = "lost-update"
    /// Two committed reads of a key where neither list is a prefix of the other: no single order of versions
    /// explains both.
    case incompatibleOrder = "incompatible-order"
    /// A value appended twice to one key (by one transaction or two): the workload promised unique values, so the
    /// history itself is malformed.
    case duplicateAppend = "duplicate-append"
    /// A committed read returned a list with the same value twice.
    case duplicateElements = "duplicate-elements"
    /// A committed read returned a value that no transaction appended to that key.
    case garbageRead = "garbage-read"
    /// A committed transaction read a key after appending to it and the list did not end with its own appends,
    /// or read a value it appends only later.
    case internalInconsistency = "internal"

    /// Whether anomalies of this kind are dependency cycles (and carry ``TransactionAnomaly/cycle``).
    public var isCycle: Bool {
      switch self {
      case .g0, .g1c, .gSingle, .gNonadjacent, .g2Item: return true
      default: return false
      }
    }

    /// The name, for example `G-single`.
    public var description: String { rawValue }
  }

  /// What kind of anomaly.
  public var kind: Kind
  /// The transactions involved: for a cycle, the transactions on it in cycle order.
  public var transactions: [TransactionID]
  /// The key involved, when there is one (not for cycles, whose edges name their keys).
  public var key: String?
  /// For a cycle kind, the edges of the cycle in order (each edge's `to` is the next edge's `from`, and the last
  /// edge's `to` is the first edge's `from`); empty otherwise.
  public var cycle: [TransactionDependency]
  /// A readable account of the evidence.
  public var explanation: String

  /// Creates an anomaly report.
  public init(
    kind: Kind, transactions: [TransactionID], key: String? = nil, cycle: [TransactionDependency] = [],
    explanation: String
  ) {
    self.kind = kind
    self.transactions = transactions
    self.key = key
    self.cycle = cycle
    self.explanation = explanation
  }

  /// Whether the cycle uses a real-time edge (an anomaly only under strict isolation levels).
  public var usesRealTimeOrder: Bool { cycle.contains { $0.kind == .realTime } }

  /// Whether the cycle uses a process-order edge (an anomaly only under session guarantees).
  public var usesProcessOrder: Bool { cycle.contains { $0.kind == .process } }

  /// `G-single: …` followed by the explanation.
  public var description: String { "\(kind): \(explanation)" }
}

/// The isolation levels the ``TransactionChecker`` can check a history against, each defined by the anomalies
/// it forbids (Adya 1999, with Elle's refinements for snapshot isolation).
///
/// Real-time order (strict serializability, strong snapshot isolation) and process order (strong session
/// variants) are not levels of their own: they add edges to the dependency graph, so more cycles appear. Turn
/// them on with ``TransactionChecker/realTimeOrder`` and ``TransactionChecker/processOrder``.
public enum TransactionIsolationLevel: Hashable, Sendable, CaseIterable, CustomStringConvertible {
  /// Adya's PL-2: forbids G0, G1a, G1b and G1c. Allows lost updates, read skew and write skew.
  case readCommitted
  /// Snapshot isolation: also forbids lost updates and every cycle in which no two rw edges are adjacent
  /// (G-single and G-nonadjacent); allows write skew (G2-item with adjacent rw edges).
  ///
  /// Every cycle of a snapshot-isolation history's dependency graph has two consecutive rw edges (Fekete et al.
  /// 2005; Cerone & Gotsman 2016 show the converse, with ww, wr and process edges): two transactions whose
  /// snapshots both miss each other's writes. A cycle with a single rw edge, or whose rw edges are all separated
  /// by ww or wr edges, would need a transaction to see a write committed after its snapshot was taken.
  case snapshotIsolation
  /// Serializability (Adya's PL-3): forbids every dependency cycle as well.
  case serializable

  /// `read committed`, `snapshot isolation` or `serializable`.
  public var description: String {
    switch self {
    case .readCommitted: return "read committed"
    case .snapshotIsolation: return "snapshot isolation"
    case .serializable: return "serializable"
    }
  }

  /// Whether a history at this level may not show anomalies of `kind`.
  ///
  /// Errors in the history itself (``TransactionAnomaly/Kind/incompatibleOrder``,
  /// ``TransactionAnomaly/Kind/duplicateAppend``, ``TransactionAnomaly/Kind/duplicateElements``,
  /// ``TransactionAnomaly/Kind/garbageRead`` and ``TransactionAnomaly/Kind/internalInconsistency``) are
  /// forbidden at every level: no level lets a key's versions fork, values appear from nowhere, or a
  /// transaction miss its own writes.
  public func forbids(_ kind: TransactionAnomaly.Kind) -> Bool {
    switch kind {
    case .incompatibleOrder, .duplicateAppend, .duplicateElements, .garbageRead, .internalInconsistency: return true
    case .g0, .g1a, .g1b, .g1c: return true
    case .gSingle, .gNonadjacent, .lostUpdate: return self != .readCommitted
    case .g2Item: return self == .serializable
    }
  }
}

/// Counters describing the graph one check built.
public struct TransactionCheckStats: Hashable, Sendable, CustomStringConvertible {
  /// Transactions in the history.
  public var transactions = 0
  /// Transactions in the dependency graph: the committed ones and those with unknown outcome.
  public var graphNodes = 0
  /// Edges of the graph by kind (parallel edges between the same two transactions counted each time).
  public var edges: [TransactionDependencyKind: Int] = [:]
  /// Strongly connected components with more than one transaction: each holds at least one cycle.
  public var cyclicComponents = 0
  /// The number of transactions in the largest of them (0 if there is none).
  public var largestComponent = 0

  /// Creates zeroed counters.
  public init() {}

  public var description: String {
    let edgeCounts = TransactionDependencyKind.allCases.map { "\($0) \(edges[$0, default: 0])" }
    return "\(transactions) transactions, \(graphNodes) in the graph, edges: \(edgeCounts.joined(separator: ", ")); "
      + "\(cyclicComponents) cyclic components, largest \(largestComponent)"
  }
}

/// The outcome of a ``TransactionChecker`` run: every anomaly found, and those the chosen level forbids.
public struct TransactionCheckResult: Hashable, Sendable, CustomStringConvertible {
  /// The level the history was checked against.
  public var isolation: TransactionIsolationLevel
  /// Whether real-time edges were in the graph.
  public var realTimeOrder: Bool
  /// Whether process-order edges were in the graph.
  public var processOrder: Bool
  /// Every anomaly found, allowed or not, in a stable order: errors in the history first, then G1a, G1b, lost
  /// updates, then cycles.
  public var anomalies: [TransactionAnomaly]
  /// What the check did.
  public var stats: TransactionCheckStats

  /// Creates a result.
  public init(
    isolation: TransactionIsolationLevel, realTimeOrder: Bool, processOrder: Bool, anomalies: [TransactionAnomaly],
    stats: TransactionCheckStats
  ) {
    self.isolation = isolation
    self.realTimeOrder = realTimeOrder
    self.processOrder = processOrder
    self.anomalies = anomalies
    self.stats = stats
  }

  /// The anomalies ``isolation`` forbids.
  public var violations: [TransactionAnomaly] { violations(at: isolation) }

  /// The anomalies `level` forbids, for the same graph (the same real-time and process-order choice).
  public func violations(at level: TransactionIsolationLevel) -> [TransactionAnomaly] {
    anomalies.filter { level.forbids($0.kind) }
  }

  /// Whether the history satisfies the level: no forbidden anomaly was found.
  public var isValid: Bool { violations.isEmpty }

  /// The anomalies of `kind`.
  public func anomalies(ofKind kind: TransactionAnomaly.Kind) -> [TransactionAnomaly] {
    anomalies.filter { $0.kind == kind }
  }

  public var description: String {
    var level = "\(isolation)"
    if realTimeOrder { level += " + real time" }
    if processOrder { level += " + process order" }
    let found = violations
    let head = found.isEmpty ? "valid (\(level))" : "NOT \(level): \(found.count) violations"
    let lines = anomalies.map { (isolation.forbids($0.kind) ? "✗ " : "  (allowed) ") + $0.description }
    return ([head, "(\(stats))"] + lines).joined(separator: "\n")
  }
}
