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

  /// The bound on rounds (2^63 − 1). A peer's ballot must lie below it: a message with a
  /// ballot at or above it is refused, so no peer can push a node to a ballot that leaves no higher one for the
  /// others. Were a ballot at the bound accepted, a faulty peer sending one (with the highest node identifier)
  /// would leave every honest next ballot above the bound, refused by everyone, and the group could never elect
  /// again. A stored ballot may reach the bound (one written before 2026-12-07, when the bound itself was
  /// accepted from peers); above it, it is refused as damaged. Rounds grow by one per election attempt, so an
  /// honest group needs centuries at a million attempts a second to come near it; a faulty peer can still send
  /// a ballot just below it, as it can disturb the group in many other ways: Paxos tolerates crashes, not lies.
  public static let maxRound: UInt64 = .max / 2

  /// Why this ballot cannot be stored (its round is above ``maxRound``), or `nil`.
  var malformation: String? { round > Self.maxRound ? "ballot round \(round) above \(Self.maxRound)" : nil }

  /// Why this ballot cannot come from an honest peer (its round is at or above ``maxRound``), or `nil`.
  var peerMalformation: String? {
    round >= Self.maxRound ? "ballot round \(round) at or above the bound \(Self.maxRound)" : nil
  }

  /// The smallest ballot owned by `node` that is higher than `other`, whose round must be below `UInt64.max`
  /// (every ballot a node stores has a round of at most ``maxRound``).
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
