import QuorumCore

extension NemesisAction {
  /// Carries out this action on `network` if it is one of the network's own faults — a random partition, a
  /// one-way cut, the leader cut off, healing, a lossy or a perfect network — and records it in `trace`. The
  /// core simulations share it (Synod its partitions, cuts, heals and perfect network); it draws from `rng` in
  /// a fixed order, so a seed replays.
  /// - Returns: `nil` for an action that is not the network's (a crash, a restart, a membership change…);
  ///   otherwise whether links were cut (a partition to count).
  func applyToNetwork(
    _ network: inout SimulatedNetwork, members ids: [NodeID], leader: () -> NodeID?, rng: inout SeededRandom,
    trace: SimulationTrace, now: VirtualTime
  ) -> Bool? {
    switch self {
    case .partition:
      var a: [NodeID] = []
      var b: [NodeID] = []
      for id in ids { if Bool.random(using: &rng) { a.append(id) } else { b.append(id) } }
      network.heal()
      network.partition(a, b)
      trace.record(now, "nemesis: partition \(a) | \(b)")
      return true
    case .oneWayCut:
      guard ids.count >= 2 else { return false }
      let from = ids[Int.random(in: 0..<ids.count, using: &rng)]
      let to = ids.filter { $0 != from }[Int.random(in: 0..<(ids.count - 1), using: &rng)]
      network.cutOneWay(from: from, to: to)
      trace.record(now, "nemesis: cut \(from)->\(to)")
      return true
    case .isolateLeader:
      guard let leader = leader() else { return false }
      network.partition([leader], ids.filter { $0 != leader })
      trace.record(now, "nemesis: isolate leader \(leader)")
      return true
    case .heal:
      network.heal()
      trace.record(now, "nemesis: heal network")
      return false
    case .lossyNetwork:
      network.defaultFaults = LinkFaults(
        dropProbability: Double.random(in: 0.01...0.2, using: &rng),
        duplicateProbability: Double.random(in: 0...0.1, using: &rng),
        delay: .uniform(.microseconds(100), .milliseconds(UInt64.random(in: 2...30, using: &rng))),
        reorderProbability: Double.random(in: 0...0.3, using: &rng), reorderWindow: .milliseconds(20))
      trace.record(now, "nemesis: lossy network \(network.defaultFaults)")
      return false
    case .perfectNetwork:
      network.defaultFaults = LinkFaults(delay: .uniform(.microseconds(100), .milliseconds(2)))
      trace.record(now, "nemesis: perfect network")
      return false
    case .crash, .restart, .membershipChange, .transferLeadership, .lostPeerReport:
      return nil
    }
  }
}
