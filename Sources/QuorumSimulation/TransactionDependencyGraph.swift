/// One edge of the ``TransactionChecker``'s dependency graph, between graph node indices.
struct DependencyEdge {
  var from: Int32
  var to: Int32
  var kind: TransactionDependencyKind
  /// Index into the checker's key table; -1 for real-time and process edges.
  var key: Int32
  /// See ``TransactionDependency/value`` (0 when there is none).
  var value: Int
  /// See ``TransactionDependency/previousValue``.
  var previous: Int?
}

extension TransactionDependencyKind {
  /// This kind's bit in an edge-kind mask.
  var bit: UInt8 {
    switch self {
    case .writeWrite: return 1
    case .writeRead: return 2
    case .readWrite: return 4
    case .realTime: return 8
    case .process: return 16
    }
  }

  /// Every kind.
  static let allMask: UInt8 = 31
  /// Every kind but rw: the edges a cycle of G0 or G1c may use, and those between two rw edges of a
  /// G-nonadjacent cycle.
  static let nonAntiDependencyMask: UInt8 = 27
  /// ww and the order edges: the edges of a G0 cycle.
  static let writeCycleMask: UInt8 = 25
}

/// A directed graph in compressed sparse row form: the arcs leaving node `v` are `offsets[v]..<offsets[v + 1]`,
/// each with its target node and the index of the ``DependencyEdge`` it stands for.
struct CSRGraph {
  var offsets: [Int]
  var targets: [Int32]
  var edgeIDs: [Int32]

  var nodeCount: Int { offsets.count - 1 }

  /// Builds the graph from arcs in any order (counting sort by source).
  init(nodeCount: Int, sources: [Int32], targets arcTargets: [Int32], edgeIDs arcEdges: [Int32]) {
    var offsets = [Int](repeating: 0, count: nodeCount + 1)
    for source in sources { offsets[Int(source) + 1] += 1 }
    for v in 0..<nodeCount { offsets[v + 1] += offsets[v] }
    var next = offsets
    var targets = [Int32](repeating: 0, count: sources.count)
    var edgeIDs = [Int32](repeating: 0, count: sources.count)
    for arc in sources.indices {
      let source = Int(sources[arc])
      targets[next[source]] = arcTargets[arc]
      edgeIDs[next[source]] = arcEdges[arc]
      next[source] += 1
    }
    self.offsets = offsets
    self.targets = targets
    self.edgeIDs = edgeIDs
  }

  /// The subgraph induced by `nodes` (global indices into `self`) keeping only edges whose kind is in `mask`;
  /// node `i` of the result is `nodes[i]`. `scratch` must hold -1 for every node of `self` and is restored.
  func subgraph(
    nodes: [Int32], edges: [DependencyEdge], mask: UInt8, scratch localOf: inout [Int32]
  ) -> CSRGraph {
    for (local, node) in nodes.enumerated() { localOf[Int(node)] = Int32(local) }
    var sources: [Int32] = []
    var arcTargets: [Int32] = []
    var arcEdges: [Int32] = []
    for (local, node) in nodes.enumerated() {
      for arc in offsets[Int(node)]..<offsets[Int(node) + 1] {
        let target = localOf[Int(targets[arc])]
        guard target >= 0, edges[Int(edgeIDs[arc])].kind.bit & mask != 0 else { continue }
        sources.append(Int32(local))
        arcTargets.append(target)
        arcEdges.append(edgeIDs[arc])
      }
    }
    for node in nodes { localOf[Int(node)] = -1 }
    return CSRGraph(nodeCount: nodes.count, sources: sources, targets: arcTargets, edgeIDs: arcEdges)
  }

  /// Tarjan's strongly connected components, iteratively (no recursion, so any depth is fine): the component
  /// index of every node, and the members of each component with more than one node (the graph has no
  /// self-loops, so exactly those hold cycles).
  func stronglyConnectedComponents() -> (component: [Int32], cyclic: [[Int32]]) {
    let n = nodeCount
    var index = [Int32](repeating: -1, count: n)
    var low = [Int32](repeating: 0, count: n)
    var onStack = [Bool](repeating: false, count: n)
    var component = [Int32](repeating: -1, count: n)
    var stack: [Int32] = []
    var calls: [(node: Int32, arc: Int)] = []
    var counter: Int32 = 0
    var componentCount: Int32 = 0
    var cyclic: [[Int32]] = []
    for root in 0..<n where index[root] < 0 {
      index[root] = counter
      low[root] = counter
      counter += 1
      stack.append(Int32(root))
      onStack[root] = true
      calls.append((Int32(root), offsets[root]))
      while let (v, arc) = calls.last {
        let vi = Int(v)
        if arc < offsets[vi + 1] {
          calls[calls.count - 1].arc = arc + 1
          let w = Int(targets[arc])
          if index[w] < 0 {
            index[w] = counter
            low[w] = counter
            counter += 1
            stack.append(Int32(w))
            onStack[w] = true
            calls.append((Int32(w), offsets[w]))
          } else if onStack[w] {
            low[vi] = min(low[vi], index[w])
          }
          continue
        }
        calls.removeLast()
        if let parent = calls.last { low[Int(parent.node)] = min(low[Int(parent.node)], low[vi]) }
        guard low[vi] == index[vi] else { continue }
        var members: [Int32] = []
        while true {
          let w = stack.removeLast()
          onStack[Int(w)] = false
          component[Int(w)] = componentCount
          members.append(w)
          if w == v { break }
        }
        if members.count > 1 { cyclic.append(members.reversed()) }
        componentCount += 1
      }
    }
    return (component, cyclic)
  }

  /// A shortest path from `source` to `target` through nodes for which `allowed` holds (breadth-first), as the
  /// edge IDs of its arcs in order; `nil` if there is none. With `source == target` it is a shortest cycle
  /// through `source`.
  func shortestPath(from source: Int32, to target: Int32, allowed: (Int32) -> Bool) -> [Int32]? {
    var parentArc = [Int](repeating: -1, count: nodeCount)
    var parentNode = [Int32](repeating: -1, count: nodeCount)
    var visited = [Bool](repeating: false, count: nodeCount)
    var queue: [Int32] = [source]
    visited[Int(source)] = true
    var head = 0
    while head < queue.count {
      let u = queue[head]
      head += 1
      for arc in offsets[Int(u)]..<offsets[Int(u) + 1] {
        let w = targets[arc]
        if w == target {
          var path = [edgeIDs[arc]]
          var node = u
          while node != source {
            path.append(edgeIDs[parentArc[Int(node)]])
            node = parentNode[Int(node)]
          }
          return path.reversed()
        }
        guard !visited[Int(w)], allowed(w) else { continue }
        visited[Int(w)] = true
        parentArc[Int(w)] = arc
        parentNode[Int(w)] = u
        queue.append(w)
      }
    }
    return nil
  }

  /// The same graph with every arc reversed.
  func reversed() -> CSRGraph {
    var sources: [Int32] = []
    sources.reserveCapacity(targets.count)
    for v in 0..<nodeCount {
      for _ in offsets[v]..<offsets[v + 1] { sources.append(Int32(v)) }
    }
    return CSRGraph(nodeCount: nodeCount, sources: targets, targets: sources, edgeIDs: edgeIDs)
  }

  /// The number of arcs on a shortest path from `source` to each node (breadth-first), -1 where there is none.
  func distances(from source: Int32) -> [Int] {
    var distance = [Int](repeating: -1, count: nodeCount)
    distance[Int(source)] = 0
    var queue: [Int32] = [source]
    var head = 0
    while head < queue.count {
      let u = Int(queue[head])
      head += 1
      for arc in offsets[u]..<offsets[u + 1] where distance[Int(targets[arc])] < 0 {
        distance[Int(targets[arc])] = distance[u] + 1
        queue.append(targets[arc])
      }
    }
    return distance
  }

  /// A topological order of the nodes (Kahn), or `nil` if the graph has a cycle.
  func topologicalOrder() -> [Int32]? {
    var inDegree = [Int](repeating: 0, count: nodeCount)
    for target in targets { inDegree[Int(target)] += 1 }
    var order = (0..<nodeCount).filter { inDegree[$0] == 0 }.map { Int32($0) }
    var head = 0
    while head < order.count {
      let u = Int(order[head])
      head += 1
      for arc in offsets[u]..<offsets[u + 1] {
        let w = Int(targets[arc])
        inDegree[w] -= 1
        if inDegree[w] == 0 { order.append(Int32(w)) }
      }
    }
    return order.count == nodeCount ? order : nil
  }
}

/// Finds concrete, short cycles inside one strongly connected component of the dependency graph, of the
/// strongest class present.
///
/// Within a component, cycles are sought in this order, each search over a subgraph of the component:
///
/// 1. G0: the components of the ww (and order-edge) subgraph; in each cyclic one, a shortest cycle through one
///    of its nodes (breadth-first search).
/// 2. G1c: the components of the subgraph without rw edges; in each cyclic one that holds a wr edge a → b, that
///    edge plus a shortest path b → a.
/// 3. Only if neither exists (so the subgraph without rw edges is acyclic), G-single: an rw edge a → b with a
///    path b → a avoiding rw edges. Reachability is computed for 64 rw sources at a time as bitmasks in reverse
///    topological order, so the search costs O((V + E) · S / 64) for S distinct rw sources, not a search per
///    edge; for the first source a found, the cycle is the rw edge a → b with b closest to a plus a shortest
///    path b → a.
/// 4. Else G-nonadjacent: a cycle in the product of the component with a two-state automaton (last edge rw or
///    not) that forbids two rw edges in a row; a shortest closed walk through a state-0 node of a cyclic
///    component of the product, cut down to a simple cycle (where the walk repeats a transaction, one of the two
///    closed walks it splits into still has no adjacent rw edges).
/// 5. Else G2-item: an rw edge a → b plus a shortest path b → a.
///
/// Every level's forbidden cycles are a prefix of this order (read committed G0 and G1c, snapshot isolation
/// also G-single and G-nonadjacent, serializability all), so reporting only the strongest class after step 2
/// decides every level correctly. Each cycle found is classified again from its edges.
struct CycleFinder {
  let graph: CSRGraph
  let edges: [DependencyEdge]
  var scratch: [Int32]

  init(graph: CSRGraph, edges: [DependencyEdge]) {
    self.graph = graph
    self.edges = edges
    scratch = [Int32](repeating: -1, count: graph.nodeCount)
  }

  /// The cycles (as edge IDs) to report for one cyclic component (graph node indices).
  mutating func cycles(in component: [Int32]) -> [[Int32]] {
    var found: [[Int32]] = []
    // 1. G0.
    let writeOnly = graph.subgraph(
      nodes: component, edges: edges, mask: TransactionDependencyKind.writeCycleMask, scratch: &scratch)
    let (writeComponent, writeCyclic) = writeOnly.stronglyConnectedComponents()
    for members in writeCyclic {
      let id = writeComponent[Int(members[0])]
      if let cycle = writeOnly.shortestPath(
        from: members[0], to: members[0], allowed: { writeComponent[Int($0)] == id })
      {
        found.append(cycle)
      }
    }
    // 2. G1c.
    let nonRW = graph.subgraph(
      nodes: component, edges: edges, mask: TransactionDependencyKind.nonAntiDependencyMask, scratch: &scratch)
    let (flowComponent, flowCyclic) = nonRW.stronglyConnectedComponents()
    for members in flowCyclic {
      let id = flowComponent[Int(members[0])]
      guard let (arc, a) = firstArc(in: nonRW, from: members, kind: .writeRead, where: { flowComponent[Int($0)] == id })
      else { continue }
      let b = nonRW.targets[arc]
      if let path = nonRW.shortestPath(from: b, to: a, allowed: { flowComponent[Int($0)] == id }) {
        found.append([nonRW.edgeIDs[arc]] + path)
      }
    }
    if !found.isEmpty || !flowCyclic.isEmpty { return found }
    // The component minus its rw edges is acyclic from here on.
    let antiDependencies = graph.subgraph(
      nodes: component, edges: edges, mask: TransactionDependencyKind.readWrite.bit, scratch: &scratch)
    if let cycle = singleAntiDependencyCycle(nonRW: nonRW, rw: antiDependencies) { return [cycle] }
    if let cycle = nonadjacentCycle(nonRW: nonRW, rw: antiDependencies) { return [cycle] }
    // 5. G2-item: the component is strongly connected, so any rw edge closes a cycle.
    let all = graph.subgraph(nodes: component, edges: edges, mask: TransactionDependencyKind.allMask, scratch: &scratch)
    guard let (arc, a) = firstArc(in: antiDependencies, from: Array(0..<Int32(component.count)), kind: nil),
      let path = all.shortestPath(from: antiDependencies.targets[arc], to: a, allowed: { _ in true })
    else {
      preconditionFailure("a cyclic component of \(component.count) transactions without any cycle")
    }
    return [[antiDependencies.edgeIDs[arc]] + path]
  }

  /// The first arc leaving one of `nodes` whose target satisfies `predicate` and whose edge has `kind` (any kind
  /// if `nil`), with its source.
  private func firstArc(
    in subgraph: CSRGraph, from nodes: [Int32], kind: TransactionDependencyKind?,
    where predicate: (Int32) -> Bool = { _ in true }
  ) -> (arc: Int, source: Int32)? {
    for node in nodes {
      for arc in subgraph.offsets[Int(node)]..<subgraph.offsets[Int(node) + 1] {
        guard kind.map({ edges[Int(subgraph.edgeIDs[arc])].kind == $0 }) ?? true, predicate(subgraph.targets[arc])
        else { continue }
        return (arc, node)
      }
    }
    return nil
  }

  /// 3. An rw edge a → b with a path b → a in `nonRW` (acyclic), plus a shortest such path.
  private func singleAntiDependencyCycle(nonRW: CSRGraph, rw: CSRGraph) -> [Int32]? {
    guard let order = nonRW.topologicalOrder() else {
      preconditionFailure("the component without rw edges should be acyclic after the G0 and G1c searches")
    }
    let sources = (0..<Int32(rw.nodeCount)).filter { rw.offsets[Int($0)] < rw.offsets[Int($0) + 1] }
    var bitOf = [Int](repeating: -1, count: rw.nodeCount)
    var reach = [UInt64](repeating: 0, count: nonRW.nodeCount)
    var start = 0
    while start < sources.count {
      let batch = sources[start..<min(start + 64, sources.count)]
      for (bit, source) in batch.enumerated() { bitOf[Int(source)] = bit }
      // reach[x] has bit i when x reaches batch source i without rw edges (x itself included).
      for x in order.reversed() {
        var bits: UInt64 = bitOf[Int(x)] >= 0 ? 1 << UInt64(bitOf[Int(x)]) : 0
        for arc in nonRW.offsets[Int(x)]..<nonRW.offsets[Int(x) + 1] { bits |= reach[Int(nonRW.targets[arc])] }
        reach[Int(x)] = bits
      }
      for a in batch {
        let arcs = rw.offsets[Int(a)]..<rw.offsets[Int(a) + 1]
        guard arcs.contains(where: { reach[Int(rw.targets[$0])] & (1 << UInt64(bitOf[Int(a)])) != 0 }) else {
          continue
        }
        // Of a's rw edges a → b, the one whose b is closest to a gives the shortest such cycle through a.
        let distance = nonRW.reversed().distances(from: a)
        guard
          let arc = arcs.filter({ distance[Int(rw.targets[$0])] >= 0 }).min(by: {
            distance[Int(rw.targets[$0])] < distance[Int(rw.targets[$1])]
          }),
          let path = nonRW.shortestPath(from: rw.targets[arc], to: a, allowed: { _ in true })
        else { preconditionFailure("transaction \(a) reaches an rw target by bitmask but not by search") }
        return [rw.edgeIDs[arc]] + path
      }
      for source in batch { bitOf[Int(source)] = -1 }
      start += 64
    }
    return nil
  }

  /// 4. A cycle whose rw edges are pairwise non-adjacent, through the product with the automaton "was the last
  /// edge rw": product node `2x` is x reached by a non-rw edge, `2x + 1` x reached by an rw edge; rw edges leave
  /// only even nodes.
  private func nonadjacentCycle(nonRW: CSRGraph, rw: CSRGraph) -> [Int32]? {
    var sources: [Int32] = []
    var targets: [Int32] = []
    var edgeIDs: [Int32] = []
    for x in 0..<Int32(nonRW.nodeCount) {
      for arc in nonRW.offsets[Int(x)]..<nonRW.offsets[Int(x) + 1] {
        for state: Int32 in 0...1 {
          sources.append(2 * x + state)
          targets.append(2 * nonRW.targets[arc])
          edgeIDs.append(nonRW.edgeIDs[arc])
        }
      }
      for arc in rw.offsets[Int(x)]..<rw.offsets[Int(x) + 1] {
        sources.append(2 * x)
        targets.append(2 * rw.targets[arc] + 1)
        edgeIDs.append(rw.edgeIDs[arc])
      }
    }
    let product = CSRGraph(nodeCount: 2 * nonRW.nodeCount, sources: sources, targets: targets, edgeIDs: edgeIDs)
    let (component, cyclic) = product.stronglyConnectedComponents()
    // Every cycle of the product passes through an even node (odd nodes are entered only by rw edges and left
    // only by non-rw ones), so each cyclic component has one.
    guard let members = cyclic.first, let start = members.first(where: { $0 % 2 == 0 }) else { return nil }
    let id = component[Int(start)]
    guard let walk = product.shortestPath(from: start, to: start, allowed: { component[Int($0)] == id }) else {
      preconditionFailure("no closed walk through product node \(start) of its own cyclic component")
    }
    return simpleNonadjacentCycle(walk)
  }

  /// Cuts a closed walk without adjacent rw edges down to a simple cycle without adjacent rw edges.
  ///
  /// Where the walk passes a transaction u twice, it splits into the loop between the two visits and the rest.
  /// If u was first entered by an rw edge, the loop leaves u by a non-rw edge and returns by one, so the loop
  /// qualifies; otherwise the rest enters u by a non-rw edge and leaves it (at the second visit, entered by an
  /// rw edge) by a non-rw edge, so the rest qualifies. Neither piece is a G1c cycle, because the caller only
  /// searches components without one.
  private func simpleNonadjacentCycle(_ walk: [Int32]) -> [Int32] {
    var walk = walk
    while true {
      var firstVisit: [Int32: Int] = [:]
      var split: (Int, Int)?
      for (position, edge) in walk.enumerated() {
        let node = edges[Int(edge)].from
        if let earlier = firstVisit[node] {
          split = (earlier, position)
          break
        }
        firstVisit[node] = position
      }
      guard let (i, j) = split else { return walk }
      let loop = Array(walk[i..<j])
      let rest = Array(walk[..<i] + walk[j...])
      if hasNoAdjacentAntiDependencies(loop) {
        walk = loop
      } else if hasNoAdjacentAntiDependencies(rest) {
        walk = rest
      } else {
        preconditionFailure("neither piece of the closed walk \(walk) split at \(i), \(j) avoids adjacent rw edges")
      }
    }
  }

  private func hasNoAdjacentAntiDependencies(_ cycle: [Int32]) -> Bool {
    for (position, edge) in cycle.enumerated() {
      let next = cycle[(position + 1) % cycle.count]
      if edges[Int(edge)].kind == .readWrite && edges[Int(next)].kind == .readWrite { return false }
    }
    return true
  }
}

/// The class of a cycle, from its edges: no rw edge is G0 (only ww and order edges) or G1c (some wr); one rw edge
/// is G-single; more are G-nonadjacent if no two are adjacent around the cycle, else G2-item.
func classifyCycle(_ kinds: [TransactionDependencyKind]) -> TransactionAnomaly.Kind {
  let antiDependencies = kinds.filter { $0 == .readWrite }.count
  switch antiDependencies {
  case 0: return kinds.contains(.writeRead) ? .g1c : .g0
  case 1: return .gSingle
  default:
    for (position, kind) in kinds.enumerated() where kind == .readWrite {
      if kinds[(position + 1) % kinds.count] == .readWrite { return .g2Item }
    }
    return .gNonadjacent
  }
}
