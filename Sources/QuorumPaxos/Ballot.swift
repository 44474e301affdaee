public import QuorumCore

/// A Paxos proposal number: a round paired with the proposer's node identifier, ordered by round and then by
/// node, so two proposers never use the same ballot.
///
/// "Paxos Made Simple" requires proposal numbers to be totally ordered and never reused; pairing a round
/// with the proposer's (unique, non-zero) identifier gives every proposer its own infinite supply. A
/// proposer that is rejected learns the highest ballot seen and picks a round above it
/// (``next(above:for:)``).
public struct Ballot: Sendable, Hashable, Comparable, WireCodable, CustomStringConvertible {
  /// The round: the major part of the order.
  public var round: UInt64
  /// The proposer that owns this ballot: the tie-breaker.
  public var node: NodeID

  /// Creates a ballot.
  public init(round: UInt64, node: NodeID) {
    self.round = round
    self.node = node
  }

  /// The ballot below every ballot any proposer uses: what an acceptor has promised before its first
  /// promise.
  public static let zero = Ballot(round: 0, node: .none)

  /// Whether this is ``zero``.
  public var isZero: Bool { self == .zero }

  /// The highest round a ballot from a peer may carry (2^63 − 1); a message or stored state with a higher one is
  /// refused. Rounds grow by one per election attempt, so an honest group needs centuries at a million attempts a
  /// second to reach it, while a ballot near `UInt64.max` from a faulty peer would leave no higher ballot for
  /// anyone (``next(above:for:)`` would overflow). The bound leaves 2^63 rounds of head room above any ballot
  /// accepted.
  public static let maxRound: UInt64 = .max / 2

  /// Why this ballot cannot come from an honest peer (its round is above ``maxRound``), or `nil`.
  var malformation: String? { round > Self.maxRound ? "ballot round \(round) above \(Self.maxRound)" : nil }

  /// The smallest ballot owned by `node` that is higher than `other`, whose round must be below `UInt64.max`
  /// (every ballot a node accepts has a round of at most ``maxRound``).
  public static func next(above other: Ballot, for node: NodeID) -> Ballot {
    let candidate = Ballot(round: other.round, node: node)
    return candidate > other ? candidate : Ballot(round: other.round + 1, node: node)
  }

  public static func < (lhs: Ballot, rhs: Ballot) -> Bool {
    lhs.round != rhs.round ? lhs.round < rhs.round : lhs.node < rhs.node
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeVarint(round)
    writer.writeVarint(node.rawValue)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    round = try reader.readVarint()
    node = NodeID(rawValue: try reader.readVarint())
    if let problem = malformation { throw WireError(.invalidValue(problem), at: at) }
  }

  /// `b<round>.<node>`, for example `b3.2`.
  public var description: String { "b\(round).\(node.rawValue)" }
}
