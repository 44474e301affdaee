/// The identity of one member of a Quorum cluster.
///
/// A node identifier is a non-zero 64-bit number. It prints as `n<number>` (for example `n3`) and parses from
/// either `n3` or `3`, so configuration files and command lines can use the short form. Zero is reserved to
/// mean "no node" on the wire and is rejected by every configuration validator.
///
/// In code a node id is written as an integer or a string literal, whichever reads better: `3`, `"n3"` and
/// `"3"` are the same node, so `Members(1, 2, 3)` and `Member("n2")` name the same nodes, and
/// `cluster.start("n1")` starts node 1. A string literal that is not a node id (`"n0"`, `"node-1"`) stops the
/// program: it is a mistake in the source, not an input. Text read at run time goes through the failable
/// ``init(_:)-(String)`` instead.
public struct NodeID: RawRepresentable, Hashable, Comparable, Sendable, ExpressibleByIntegerLiteral,
  ExpressibleByStringLiteral, LosslessStringConvertible
{
  /// The numeric value of the identifier.
  public var rawValue: UInt64

  /// Creates an identifier from its numeric value.
  public init(rawValue: UInt64) { self.rawValue = rawValue }

  /// Creates an identifier from its numeric value.
  public init(_ rawValue: UInt64) { self.rawValue = rawValue }

  /// Creates an identifier from an integer literal, as in `let leader: NodeID = 1`.
  public init(integerLiteral value: UInt64) { self.rawValue = value }

  /// Creates an identifier from a string literal, as in `cluster.start("n1")`: `n<number>` or `<number>`.
  ///
  /// A literal that does not parse (`"n0"`, `"x"`) is a programming error and stops the program.
  public init(stringLiteral value: String) {
    guard let parsed = NodeID(value) else {
      preconditionFailure("\"\(value)\" is not a node id: write n1, n2, … or 1, 2, … (zero is reserved)")
    }
    self = parsed
  }

  /// Parses `n3` or `3`. Returns `nil` for anything else, including `n0`.
  public init?(_ description: String) {
    let digits = description.hasPrefix("n") ? description.dropFirst() : Substring(description)
    guard let value = UInt64(digits), value != 0 else { return nil }
    self.rawValue = value
  }

  /// The placeholder meaning "no node"; never a valid member.
  public static let none = NodeID(rawValue: 0)

  /// `n<number>`.
  public var description: String { "n\(rawValue)" }

  public static func < (lhs: NodeID, rhs: NodeID) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// Identifies one consensus group, so that one process can host many groups over one transport.
public struct GroupID: RawRepresentable, Hashable, Comparable, Sendable, ExpressibleByIntegerLiteral,
  CustomStringConvertible
{
  /// The numeric value of the identifier.
  public var rawValue: UInt64

  /// Creates a group identifier.
  public init(rawValue: UInt64) { self.rawValue = rawValue }

  /// Creates a group identifier from an integer literal.
  public init(integerLiteral value: UInt64) { self.rawValue = value }

  /// The group used when an application runs a single group.
  public static let `default` = GroupID(rawValue: 0)

  /// `g<number>`.
  public var description: String { "g\(rawValue)" }

  public static func < (lhs: GroupID, rhs: GroupID) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// The name of a cluster. Connections between members of different clusters are refused at the handshake,
/// so two clusters on one network can never exchange protocol messages by mistake.
public struct ClusterID: RawRepresentable, Hashable, Sendable, ExpressibleByStringLiteral, CustomStringConvertible {
  /// The cluster's name.
  public var rawValue: String

  /// Creates a cluster identifier.
  public init(rawValue: String) { self.rawValue = rawValue }

  /// Creates a cluster identifier from a string literal.
  public init(stringLiteral value: String) { self.rawValue = value }

  /// The cluster's name.
  public var description: String { rawValue }
}

/// A message addressed from one node to another within one group: the unit every ``Transport`` carries.
///
/// An envelope is `Sendable` when its payload is; every transport's payload is.
public struct Envelope<Payload> {
  /// The sending node.
  public var from: NodeID
  /// The receiving node.
  public var to: NodeID
  /// The consensus group the message belongs to.
  public var group: GroupID
  /// The protocol message.
  public var payload: Payload

  /// Creates an envelope.
  ///
  /// Inlinable so that code specialised for a payload type builds its envelopes without looking up the generic
  /// type's metadata (see ``WireDecodable/decodeEnvelope(_:payloadFrom:appendingTo:)``).
  @inlinable
  public init(from: NodeID, to: NodeID, group: GroupID = .default, payload: Payload) {
    self.from = from
    self.to = to
    self.group = group
    self.payload = payload
  }
}

extension Envelope: Sendable where Payload: Sendable {}

extension Envelope: Equatable where Payload: Equatable {}
