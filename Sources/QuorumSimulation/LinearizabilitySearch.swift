/// A set of operations of one partition, as a bitset over slot numbers.
struct LinearizedSet: Hashable {
  var words: [UInt64]

  init(count: Int) { words = Array(repeating: 0, count: (count + 63) / 64) }

  mutating func insert(_ slot: Int) { words[slot >> 6] |= 1 << UInt64(slot & 63) }
  mutating func remove(_ slot: Int) { words[slot >> 6] &= ~(1 << UInt64(slot & 63)) }

  func contains(_ slot: Int) -> Bool { words[slot >> 6] & (1 << UInt64(slot & 63)) != 0 }

  func union(_ other: LinearizedSet) -> LinearizedSet {
    var result = self
    for index in words.indices { result.words[index] |= other.words[index] }
    return result
  }

  func isSubset(of other: LinearizedSet) -> Bool {
    for index in words.indices where words[index] & ~other.words[index] != 0 { return false }
    return true
  }
}

/// The part of a search state that must match exactly for one state to subsume another: which operations with
/// a known output are linearized, and the model state.
///
/// `fingerprint` is a Zobrist hash of the set, maintained incrementally, so hashing a key costs the same for a
/// partition of 10 operations or 10,000; equality still compares the whole set.
struct SearchStateKey<State: Hashable>: Hashable {
  var fingerprint: UInt64
  var known: LinearizedSet
  var state: State

  func hash(into hasher: inout Hasher) {
    hasher.combine(fingerprint)
    hasher.combine(state)
  }

  static func == (lhs: SearchStateKey, rhs: SearchStateKey) -> Bool {
    lhs.fingerprint == rhs.fingerprint && lhs.state == rhs.state && lhs.known == rhs.known
  }
}

/// The search over one partition: Wing & Gong's depth-first search with Lowe's just-in-time linearization and
/// memoization. See ``LinearizabilityChecker`` for the algorithm.
///
/// Invocation and return events live in a doubly linked list stored in arrays, in time order: node 0 is the
/// head, `-1` the end. Operations with unknown outcome have an invocation node only: nothing forces them to be
/// linearized. Linearizing an operation unlinks its nodes; backtracking links them back (dancing links). The
/// invocations before the first remaining return are the operations real-time order allows to go next.
///
/// Operations with unknown outcome stay pending to the end of the history, so the plain search is exponential
/// in how many of them a partition has. Two refinements keep that in check:
/// - Subsumption. A search node is (K, U, state), with K the linearized known-output operations and U the
///   linearized unknown-outcome ones; it is pruned when some (K, U′, state) with U′ ⊆ U was already reached.
///   Whatever completes the former completes the latter, because an unknown-outcome operation never has to be
///   linearized and constrains nothing; by induction on the number of known outputs left, a search that prunes
///   only subsumed nodes still finds a linearization whenever one exists. Exact-match memoization is the
///   special case U′ = U.
/// - Two move orders (``LinearizabilitySearchStrategy``), which the checker runs in turn with growing budgets,
///   since each is fast where the other is slow. In the targeted one a move is "some unknown-outcome operations,
///   then one known-output operation": at a node it tries each known-output candidate first directly, then
///   after each state that unknown-outcome operations alone reach, computed breadth-first keeping for each state
///   only the minimal sets of operations that reach it.
struct LinearizabilitySearch<Model: LinearizabilityModel> {
  enum Outcome {
    case linearizable
    /// Indices into the partition's operations of the longest partial linearization found.
    case notLinearizable(longestPrefix: [Int])
    case outOfBudget
  }

  /// A state reachable from a search node through unknown-outcome operations alone.
  private struct UnknownPrefix {
    var state: Model.State
    /// The unknown-outcome operations used, by slot.
    var used: LinearizedSet
    /// Their invocation nodes, in the order applied.
    var nodes: [Int]
  }

  /// What the unknown-outcome prefixes of a node depend on, so that nodes reached by different paths share them.
  private struct PrefixCacheKey: Hashable {
    var state: Model.State
    var pending: [Int]
  }

  /// One node of the depth-first search and the moves left to try from it.
  private struct Frame {
    var state: Model.State
    var unknown: LinearizedSet
    var fingerprint: UInt64
    /// Invocation nodes of the known-output operations that may go next.
    var candidates: [Int]
    /// Invocation nodes of the unknown-outcome operations that may go next.
    var pending: [Int]
    /// What those can lead to; index 0 is "none". Computed when first needed: most nodes never need it.
    var prefixes: [UnknownPrefix]
    var hasAllPrefixes: Bool
    var candidateIndex = 0
    var prefixIndex = 0
    /// The invocation nodes unlinked by the move made from this node, the known-output one last; empty when no
    /// move is in progress.
    var moved: [Int] = []
  }

  private let model: Model
  /// The partition's operations by invocation time.
  private let operations: [HistoryOperation<Model.Input, Model.Output>]
  private let outputs: [Model.Output?]
  /// For each operation, whether its output is known.
  private let isKnown: [Bool]
  /// For each operation, its number among the known-output or among the unknown-outcome operations.
  private let slot: [Int]
  private let knownCount: Int
  private let noUnknown: LinearizedSet
  /// For each node, the index of its operation, or its bitwise complement for a return node.
  private let nodeOperation: [Int]
  /// For each operation, its return node, or -1 when its outcome is unknown.
  private let returnNode: [Int]
  private var next: [Int]
  private var previous: [Int]

  /// Search nodes and unknown-outcome prefixes newly reached.
  private(set) var statesExplored = 0
  /// Moves undone.
  private(set) var backtracks = 0
  /// The most states ``run(budget:strategy:recordingLongestPrefix:)`` may explore.
  private var budget = Int.max

  init(model: Model, operations: [HistoryOperation<Model.Input, Model.Output>]) {
    self.model = model
    let sorted = operations.enumerated().sorted {
      ($0.element.invokedAt, $0.offset) < ($1.element.invokedAt, $1.offset)
    }.map(\.element)
    self.operations = sorted
    outputs = sorted.map(\.output)
    isKnown = sorted.map { $0.returnedAt != nil }
    var slot: [Int] = []
    var knownCount = 0
    var unknownCount = 0
    for known in isKnown {
      slot.append(known ? knownCount : unknownCount)
      if known { knownCount += 1 } else { unknownCount += 1 }
    }
    self.slot = slot
    self.knownCount = knownCount
    noUnknown = LinearizedSet(count: unknownCount)

    // Events in time order; at equal times invocations come first, so that operations whose return and
    // invocation coincide count as concurrent.
    var events: [(time: UInt64, isReturn: Bool, operation: Int)] = []
    events.reserveCapacity(2 * sorted.count)
    for (index, op) in sorted.enumerated() {
      events.append((op.invokedAt, false, index))
      if let returnedAt = op.returnedAt { events.append((returnedAt, true, index)) }
    }
    events.sort { a, b in
      if a.time != b.time { return a.time < b.time }
      if a.isReturn != b.isReturn { return !a.isReturn }
      return a.operation < b.operation
    }

    var nodeOperation = [0]
    var returnNode = Array(repeating: -1, count: sorted.count)
    nodeOperation.reserveCapacity(events.count + 1)
    for event in events {
      if event.isReturn { returnNode[event.operation] = nodeOperation.count }
      nodeOperation.append(event.isReturn ? ~event.operation : event.operation)
    }
    let nodeCount = nodeOperation.count
    self.nodeOperation = nodeOperation
    self.returnNode = returnNode
    next = (0..<nodeCount).map { $0 + 1 < nodeCount ? $0 + 1 : -1 }
    previous = (0..<nodeCount).map { $0 - 1 }
  }

  /// Searches for a linearization, exploring at most `budget` new states. Run it once per instance.
  ///
  /// With `recordingLongestPrefix` off, a failed search reports an empty prefix: keeping the longest one costs a
  /// copy of the path at every new maximum, so the checker runs the search again with it on only to explain a
  /// failure (the search is deterministic, so the second run takes the same path).
  mutating func run(
    budget: Int, strategy: LinearizabilitySearchStrategy, recordingLongestPrefix: Bool = false
  ) -> Outcome {
    self.budget = budget
    switch strategy {
    case .eager: return runEager(recordingLongestPrefix: recordingLongestPrefix)
    case .targeted: return runTargeted(recordingLongestPrefix: recordingLongestPrefix)
    }
  }

  /// The search in Porcupine's order: at each node, the invocations in list order, whatever their outcome.
  private mutating func runEager(recordingLongestPrefix: Bool) -> Outcome {
    var remaining = knownCount
    if remaining == 0 { return .linearizable }
    var state = model.initialState
    var known = LinearizedSet(count: knownCount)
    var unknown = noUnknown
    var fingerprint: UInt64 = 0
    var choices: [(node: Int, stateBefore: Model.State)] = []
    var explored: [SearchStateKey<Model.State>: [LinearizedSet]] = [:]
    explored.reserveCapacity(2 * operations.count)
    var longestPrefix: [Int] = []
    var entry = next[0]
    while true {
      precondition(entry >= 0, "linearizability search ran past the last event with \(remaining) operations left")
      if nodeOperation[entry] < 0 {
        // The return of an operation not yet linearized: nothing else can go next, so the latest tentative
        // choice must be undone.
        guard let choice = choices.popLast() else { return .notLinearizable(longestPrefix: longestPrefix) }
        if recordingLongestPrefix && choices.count + 1 > longestPrefix.count {
          longestPrefix = choices.map { nodeOperation[$0.node] } + [nodeOperation[choice.node]]
        }
        backtracks += 1
        let op = nodeOperation[choice.node]
        state = choice.stateBefore
        if isKnown[op] {
          relink(returnNode[op])
          known.remove(slot[op])
          fingerprint ^= Self.zobrist(slot[op])
          remaining += 1
        } else {
          unknown.remove(slot[op])
        }
        relink(choice.node)
        entry = next[choice.node]
        continue
      }

      // `entry` is the invocation of an operation that real-time order allows to take effect now.
      let op = nodeOperation[entry]
      if let newState = model.step(state, operations[op].input, outputs[op]) {
        let isNew: Bool
        if isKnown[op] {
          known.insert(slot[op])
          let key = SearchStateKey(fingerprint: fingerprint ^ Self.zobrist(slot[op]), known: known, state: newState)
          isNew = Self.record(unknown, in: &explored[key, default: []])
          if !isNew { known.remove(slot[op]) }
        } else {
          unknown.insert(slot[op])
          let key = SearchStateKey(fingerprint: fingerprint, known: known, state: newState)
          isNew = Self.record(unknown, in: &explored[key, default: []])
          if !isNew { unknown.remove(slot[op]) }
        }
        if isNew {
          if statesExplored == budget { return .outOfBudget }
          statesExplored += 1
          choices.append((entry, state))
          state = newState
          unlink(entry)
          if isKnown[op] {
            unlink(returnNode[op])
            fingerprint ^= Self.zobrist(slot[op])
            remaining -= 1
            if remaining == 0 { return .linearizable }
          }
          entry = next[0]
          continue
        }
      }
      entry = next[entry]
    }
  }

  /// The search whose moves are "unknown-outcome operations, then one known-output operation".
  private mutating func runTargeted(recordingLongestPrefix: Bool) -> Outcome {
    var remaining = knownCount
    if remaining == 0 { return .linearizable }
    var known = LinearizedSet(count: knownCount)
    var explored: [SearchStateKey<Model.State>: [LinearizedSet]] = [:]
    explored.reserveCapacity(2 * operations.count)
    var longestPrefix: [Int] = []
    var pathLength = 0
    var prefixCache: [PrefixCacheKey: [UnknownPrefix]] = [:]
    var frames = [expand(model.initialState, noUnknown, 0)]
    while let top = frames.indices.last {
      // Try the next move from the deepest node: a known-output candidate, after an unknown-outcome prefix.
      var moved = false
      while !moved && frames[top].candidateIndex < frames[top].candidates.count {
        let call = frames[top].candidates[frames[top].candidateIndex]
        let prefixIndex = frames[top].prefixIndex
        if prefixIndex == 1 && !frames[top].hasAllPrefixes {
          let cacheKey = PrefixCacheKey(state: frames[top].state, pending: frames[top].pending)
          if let cached = prefixCache[cacheKey] {
            frames[top].prefixes = cached
          } else {
            guard let prefixes = unknownPrefixes(from: frames[top].prefixes[0], frames[top].pending) else {
              return .outOfBudget
            }
            if prefixCache.count >= 4096 { prefixCache.removeAll(keepingCapacity: true) }
            prefixCache[cacheKey] = prefixes
            frames[top].prefixes = prefixes
          }
          frames[top].hasAllPrefixes = true
        }
        if prefixIndex == frames[top].prefixes.count {
          frames[top].candidateIndex += 1
          frames[top].prefixIndex = 0
          continue
        }
        frames[top].prefixIndex += 1
        let prefix = frames[top].prefixes[prefixIndex]
        let op = nodeOperation[call]
        guard let newState = model.step(prefix.state, operations[op].input, outputs[op]) else { continue }
        known.insert(slot[op])
        let fingerprint = frames[top].fingerprint ^ Self.zobrist(slot[op])
        let unknown = prefix.nodes.isEmpty ? frames[top].unknown : frames[top].unknown.union(prefix.used)
        let key = SearchStateKey(fingerprint: fingerprint, known: known, state: newState)
        guard Self.record(unknown, in: &explored[key, default: []]) else {
          known.remove(slot[op])
          continue
        }
        if statesExplored == budget { return .outOfBudget }
        statesExplored += 1
        for node in prefix.nodes { unlink(node) }
        unlink(call)
        unlink(returnNode[op])
        remaining -= 1
        if remaining == 0 { return .linearizable }
        frames[top].moved = prefix.nodes + [call]
        pathLength += frames[top].moved.count
        frames.append(expand(newState, unknown, fingerprint))
        moved = true
      }
      if moved { continue }

      // Every move from this node fails: undo the move that led to it.
      frames.removeLast()
      guard let parent = frames.indices.last else { return .notLinearizable(longestPrefix: longestPrefix) }
      if recordingLongestPrefix && pathLength > longestPrefix.count {
        longestPrefix = frames.flatMap { $0.moved.map { nodeOperation[$0] } }
      }
      backtracks += 1
      let moves = frames[parent].moved
      pathLength -= moves.count
      frames[parent].moved = []
      for node in moves.reversed() {
        let op = nodeOperation[node]
        if isKnown[op] {
          relink(returnNode[op])
          known.remove(slot[op])
          remaining += 1
        }
        relink(node)
      }
    }
    preconditionFailure("targeted linearizability search left its loop without a verdict")
  }

  /// A new search node: the operations that may go next.
  private func expand(_ state: Model.State, _ unknown: LinearizedSet, _ fingerprint: UInt64) -> Frame {
    var candidates: [Int] = []
    var pending: [Int] = []
    var entry = next[0]
    while entry >= 0 && nodeOperation[entry] >= 0 {
      if isKnown[nodeOperation[entry]] { candidates.append(entry) } else { pending.append(entry) }
      entry = next[entry]
    }
    return Frame(
      state: state, unknown: unknown, fingerprint: fingerprint, candidates: candidates, pending: pending,
      prefixes: [UnknownPrefix(state: state, used: noUnknown, nodes: [])], hasAllPrefixes: pending.isEmpty)
  }

  /// The states reachable from `start` by applying some of the `pending` unknown-outcome operations (invocation
  /// nodes) in some order, breadth-first, each with only its minimal sets of operations; `start` first. `nil` if
  /// the budget runs out.
  private mutating func unknownPrefixes(from start: UnknownPrefix, _ pending: [Int]) -> [UnknownPrefix]? {
    var prefixes = [start]
    guard !pending.isEmpty else { return prefixes }
    var minimalSets: [Model.State: [LinearizedSet]] = [start.state: [start.used]]
    var levelStart = 0
    while levelStart < prefixes.count {
      let levelEnd = prefixes.count
      for index in levelStart..<levelEnd {
        for node in pending {
          let op = nodeOperation[node]
          let prefix = prefixes[index]
          if prefix.used.contains(slot[op]) { continue }
          guard let state = model.step(prefix.state, operations[op].input, nil) else { continue }
          var used = prefix.used
          used.insert(slot[op])
          if minimalSets[state]?.contains(where: { $0.isSubset(of: used) }) == true { continue }
          if statesExplored == budget { return nil }
          statesExplored += 1
          minimalSets[state, default: []].append(used)
          prefixes.append(UnknownPrefix(state: state, used: used, nodes: prefix.nodes + [node]))
        }
      }
      levelStart = levelEnd
    }
    return prefixes
  }

  /// Records that the unknown-outcome set `unknown` was reached with a given (known set, state); returns
  /// `false` if a subset of it already was, so the new node is subsumed.
  private static func record(_ unknown: LinearizedSet, in explored: inout [LinearizedSet]) -> Bool {
    if explored.contains(where: { $0.isSubset(of: unknown) }) { return false }
    if !explored.isEmpty { explored.removeAll { unknown.isSubset(of: $0) } }
    explored.append(unknown)
    return true
  }

  /// A fixed pseudo-random 64-bit value per slot (SplitMix64 of the slot).
  private static func zobrist(_ slot: Int) -> UInt64 {
    var z = UInt64(truncatingIfNeeded: slot) &+ 0x9E37_79B9_7F4A_7C15
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }

  private mutating func unlink(_ node: Int) {
    next[previous[node]] = next[node]
    if next[node] >= 0 { previous[next[node]] = previous[node] }
  }

  /// Relinks a node whose own `next`/`previous` were left untouched when it was unlinked.
  private mutating func relink(_ node: Int) {
    next[previous[node]] = node
    if next[node] >= 0 { previous[next[node]] = node }
  }

  /// Builds the report for a partition without linearization, from the longest partial linearization found.
  func violation<Key: Hashable & Sendable>(partition: Key, longestPrefix: [Int]) -> LinearizabilityViolation<Key> {
    var state = model.initialState
    var isLinearized = Array(repeating: false, count: operations.count)
    for index in longestPrefix {
      // The prefix was built from successful steps, so replaying it cannot fail.
      guard let after = model.step(state, operations[index].input, outputs[index]) else {
        preconditionFailure("replaying the longest linearizable prefix failed at \(operations[index].id)")
      }
      state = after
      isLinearized[index] = true
    }
    let left = operations.indices.filter { !isLinearized[$0] }
    let deadline = left.compactMap { operations[$0].returnedAt }.min() ?? UInt64.max
    let candidates = left.filter { operations[$0].invokedAt <= deadline }

    var text = "partition \(partition) has no linearization (\(operations.count) operations; times in ns, "
    text += "return ∞ = unknown outcome)\n"
    text += operationLines(around: candidates.first ?? 0)
    let shown = 24
    var prefixText = longestPrefix.suffix(shown).map { "\(operations[$0].id)" }.joined(separator: " ")
    if longestPrefix.count > shown { prefixText = "… \(longestPrefix.count - shown) earlier, then " + prefixText }
    text += "longest linearizable prefix (\(longestPrefix.count) of \(operations.count)): "
    text += (prefixText.isEmpty ? "(none)" : prefixText) + "\n"
    text += "state after it: \(model.describe(state: state))\n"
    if let blocking = left.first(where: { operations[$0].returnedAt == deadline }) {
      text += "\(operations[blocking].id) returned at \(deadline), so it or an operation invoked by then must come "
      text += "next, and none can:\n"
    }
    for index in candidates {
      let op = operations[index]
      let reason =
        model.step(state, op.input, outputs[index]) == nil
        ? "impossible from this state" : "possible, but every continuation fails"
      text += "  \(op.id) \(model.describe(input: op.input, output: outputs[index])): \(reason)\n"
    }
    return LinearizabilityViolation(
      partition: partition, operations: operations.map(\.id),
      longestLinearizablePrefix: longestPrefix.map { operations[$0].id }, explanation: text)
  }

  /// One line per operation, at most 60, centred on local index `focus`.
  private func operationLines(around focus: Int) -> String {
    let window = 60
    let start = max(0, min(focus - window / 3, operations.count - window))
    let end = min(operations.count, start + window)
    var text = start > 0 ? "  … \(start) earlier operations\n" : ""
    for index in start..<end {
      let op = operations[index]
      let returned = op.returnedAt.map { "\($0)" } ?? "∞"
      text += "  \(op.id) client \(op.client) [\(op.invokedAt), \(returned)] "
      text += model.describe(input: op.input, output: outputs[index]) + "\n"
    }
    if end < operations.count { text += "  … \(operations.count - end) later operations\n" }
    return text
  }
}
