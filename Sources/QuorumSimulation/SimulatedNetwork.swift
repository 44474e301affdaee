public import QuorumCore

/// How long a message spends in flight.
public enum DelayDistribution: Sendable, Equatable {
  /// Always the same delay.
  case fixed(VirtualDuration)
  /// Uniform between the bounds (inclusive).
  case uniform(VirtualDuration, VirtualDuration)
  /// Mostly `typical`, but with probability `tailProbability` anywhere up to `tail` (a long-tailed network).
  case longTail(typical: VirtualDuration, tail: VirtualDuration, tailProbability: Double)

  /// Draws one delay.
  public func sample(_ rng: inout SeededRandom) -> VirtualDuration {
    switch self {
    case .fixed(let d): return d
    case .uniform(let lo, let hi):
      guard hi > lo else { return lo }
      return VirtualDuration(nanoseconds: UInt64.random(in: lo.nanoseconds...hi.nanoseconds, using: &rng))
    case .longTail(let typical, let tail, let p):
      if rng.chance(p), tail > typical {
        return VirtualDuration(nanoseconds: UInt64.random(in: typical.nanoseconds...tail.nanoseconds, using: &rng))
      }
      return typical
    }
  }
}

/// The faults a link applies to each message.
public struct LinkFaults: Sendable, Equatable {
  /// Probability that a message is lost.
  public var dropProbability: Double
  /// Probability that a message is delivered twice (the copy with its own delay).
  public var duplicateProbability: Double
  /// Delay of each message. Independent delays reorder messages; ``reorderProbability`` adds more.
  public var delay: DelayDistribution
  /// Probability that a message is held back by up to ``reorderWindow`` extra, overtaking its successors.
  public var reorderProbability: Double
  /// The most extra delay a reordered message gets.
  public var reorderWindow: VirtualDuration

  /// Creates a fault profile.
  public init(
    dropProbability: Double = 0, duplicateProbability: Double = 0,
    delay: DelayDistribution = .fixed(.microseconds(100)), reorderProbability: Double = 0,
    reorderWindow: VirtualDuration = .milliseconds(5)
  ) {
    self.dropProbability = dropProbability
    self.duplicateProbability = duplicateProbability
    self.delay = delay
    self.reorderProbability = reorderProbability
    self.reorderWindow = reorderWindow
  }

  /// A perfect link: fixed 100 µs, nothing lost, duplicated or reordered.
  public static let none = LinkFaults()

  /// Whether the link never reorders: fixed delay and no reordering.
  public var preservesOrder: Bool {
    if case .fixed = delay { return reorderProbability == 0 && duplicateProbability == 0 }
    return false
  }
}

/// A directed link between two nodes.
public struct Link: Hashable, Sendable, CustomStringConvertible {
  /// The sender.
  public var from: NodeID
  /// The receiver.
  public var to: NodeID
  /// Creates a link.
  public init(from: NodeID, to: NodeID) {
    self.from = from
    self.to = to
  }
  public var description: String { "\(from)->\(to)" }
}

/// A model of an unreliable network: decides, for each message sent, whether and when it arrives.
///
/// It holds no messages itself; the simulator (or ``SimulatedTransport``) schedules the deliveries it
/// returns. Faults are per link with a default; partitions are sets of cut directed links, so any split,
/// including an asymmetric one-way cut, can be expressed.
public struct SimulatedNetwork: Sendable {
  /// The faults of every link without its own profile.
  public var defaultFaults: LinkFaults
  /// Links with their own fault profile.
  public var linkFaults: [Link: LinkFaults] = [:]
  /// Links that currently deliver nothing.
  public private(set) var cut: Set<Link> = []
  /// Nodes that are down: messages to or from them are lost.
  public private(set) var down: Set<NodeID> = []

  /// Creates a network.
  public init(defaultFaults: LinkFaults = .none) { self.defaultFaults = defaultFaults }

  /// The faults of `link`.
  public func faults(of link: Link) -> LinkFaults { linkFaults[link] ?? defaultFaults }

  /// Cuts every link between the groups, both ways.
  public mutating func partition(_ a: some Sequence<NodeID>, _ b: some Sequence<NodeID>) {
    let b = Array(b)
    for x in a {
      for y in b where x != y {
        cut.insert(Link(from: x, to: y))
        cut.insert(Link(from: y, to: x))
      }
    }
  }

  /// Splits `nodes` into the given groups: links inside a group work, links across groups are cut.
  public mutating func split(_ groups: [[NodeID]]) {
    for (i, a) in groups.enumerated() {
      for b in groups[(i + 1)...] { partition(a, b) }
    }
  }

  /// Cuts one direction only.
  public mutating func cutOneWay(from: NodeID, to: NodeID) { cut.insert(Link(from: from, to: to)) }

  /// Restores every cut link.
  public mutating func heal() { cut.removeAll() }

  /// Marks a node down (crashed) or up again.
  public mutating func setDown(_ node: NodeID, _ isDown: Bool) {
    if isDown { down.insert(node) } else { down.remove(node) }
  }

  /// Whether a message on `link` would currently be delivered at all.
  public func isConnected(_ link: Link) -> Bool {
    !cut.contains(link) && !down.contains(link.from) && !down.contains(link.to)
  }

  /// Decides the fate of one message sent at `now` on `link`: the delivery times (none if lost, two if
  /// duplicated).
  public func route(_ link: Link, at now: VirtualTime, using rng: inout SeededRandom) -> [VirtualTime] {
    guard isConnected(link) else { return [] }
    let f = faults(of: link)
    if rng.chance(f.dropProbability) { return [] }
    var times = [now + deliveryDelay(f, &rng)]
    if rng.chance(f.duplicateProbability) { times.append(now + deliveryDelay(f, &rng)) }
    return times
  }

  private func deliveryDelay(_ f: LinkFaults, _ rng: inout SeededRandom) -> VirtualDuration {
    var d = f.delay.sample(&rng)
    if f.reorderProbability > 0, rng.chance(f.reorderProbability) {
      d = d + VirtualDuration(nanoseconds: UInt64.random(in: 0...f.reorderWindow.nanoseconds, using: &rng))
    }
    return d
  }
}
