public import QuorumCore

/// A value a single-decree Paxos instance can choose: sendable, comparable for equality, and encodable so
/// acceptors can store it and any transport can carry it.
public typealias SynodValue = Sendable & Equatable & WireCodable

/// A proposal an acceptor has accepted: the ballot and the value.
public struct AcceptedProposal<Value: SynodValue>: Sendable, Equatable, WireCodable {
  /// The ballot in which the value was accepted.
  public var ballot: Ballot
  /// The accepted value.
  public var value: Value

  /// Creates an accepted proposal.
  public init(ballot: Ballot, value: Value) {
    self.ballot = ballot
    self.value = value
  }

  public func encode(to writer: inout WireWriter) {
    ballot.encode(to: &writer)
    value.encode(to: &writer)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    ballot = try reader.read(Ballot.self)
    value = try reader.read(Value.self, field: "value")
  }
}

/// A message of single-decree Paxos ("Paxos Made Simple", §2.2–2.3).
public enum SynodMessage<Value: SynodValue>: Sendable, Equatable, WireCodable, CustomStringConvertible {
  /// Phase 1a: a proposer asks acceptors to promise not to accept anything below `ballot`.
  case prepare(Ballot)
  /// Phase 1b: the promise, with the highest-ballot proposal the acceptor has accepted, if any.
  case promise(Ballot, accepted: AcceptedProposal<Value>?)
  /// Phase 2a: a proposer asks acceptors to accept `value` in `ballot`.
  case accept(Ballot, Value)
  /// Phase 2b: an acceptor accepted `value` in `ballot`; sent to the proposer and to every learner.
  case accepted(Ballot, Value)
  /// A refusal of a prepare or accept for `ballot`, carrying the highest ballot the acceptor has promised,
  /// so the proposer can retry above it at once.
  case rejected(Ballot, promised: Ballot)
  /// The value is known to be chosen: a proposer's announcement, or an answer to ``query``.
  case chosen(Value)
  /// A late learner asks what is chosen; acceptors answer with what they accepted, or ``chosen(_:)`` if
  /// they know.
  case query

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .prepare(let b):
      writer.writeByte(1)
      b.encode(to: &writer)
    case .promise(let b, let accepted):
      writer.writeByte(2)
      b.encode(to: &writer)
      writer.writeOptional(accepted)
    case .accept(let b, let v):
      writer.writeByte(3)
      b.encode(to: &writer)
      v.encode(to: &writer)
    case .accepted(let b, let v):
      writer.writeByte(4)
      b.encode(to: &writer)
      v.encode(to: &writer)
    case .rejected(let b, let promised):
      writer.writeByte(5)
      b.encode(to: &writer)
      promised.encode(to: &writer)
    case .chosen(let v):
      writer.writeByte(6)
      v.encode(to: &writer)
    case .query:
      writer.writeByte(7)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 1: self = .prepare(try reader.read())
    case 2: self = .promise(try reader.read(), accepted: try reader.readOptional(AcceptedProposal<Value>.self))
    case 3: self = .accept(try reader.read(), try reader.read(Value.self, field: "value"))
    case 4: self = .accepted(try reader.read(), try reader.read(Value.self, field: "value"))
    case 5: self = .rejected(try reader.read(), promised: try reader.read())
    case 6: self = .chosen(try reader.read(Value.self, field: "value"))
    case 7: self = .query
    case let tag: throw WireError(.unknownTag(type: "SynodMessage", tag: UInt64(tag)), at: at)
    }
  }

  public var description: String {
    switch self {
    case .prepare(let b): return "prepare(\(b))"
    case .promise(let b, let a): return "promise(\(b)\(a.map { ", accepted \($0.ballot)" } ?? ""))"
    case .accept(let b, _): return "accept(\(b))"
    case .accepted(let b, _): return "accepted(\(b))"
    case .rejected(let b, let p): return "rejected(\(b), promised \(p))"
    case .chosen: return "chosen"
    case .query: return "query"
    }
  }
}

/// A message a single-decree core wants sent.
public struct SynodOutgoing<Value: SynodValue>: Sendable, Equatable, CustomStringConvertible {
  /// The receiver.
  public var to: NodeID
  /// The message.
  public var message: SynodMessage<Value>

  /// Creates an outgoing message.
  public init(to: NodeID, _ message: SynodMessage<Value>) {
    self.to = to
    self.message = message
  }

  public var description: String { "->\(to) \(message)" }
}

/// Tuning of the single-decree cores, in ticks. ``PaxosConfiguration/synodOptions`` builds it from
/// durations.
public struct SynodOptions: Sendable, Equatable {
  /// Acceptors that must promise before a proposer may send accepts.
  public var phase1Quorum: Int
  /// Acceptors that must accept the same ballot for a value to be chosen.
  public var phase2Quorum: Int
  /// Ticks a proposer or learner waits for answers before sending again.
  public var retransmitTicks: Int
  /// The first randomized back-off bound, in ticks, after a second pre-emption in a row.
  public var backoffInitialTicks: Int
  /// The largest back-off bound, in ticks.
  public var backoffMaxTicks: Int
  /// The proposer that owns round 0 and skips phase 1 on its first attempt.
  public var distinguishedProposer: NodeID?
  /// The most ballots a learner tracks at once (the highest are kept).
  public var maxTrackedBallots: Int

  /// Creates options.
  public init(
    phase1Quorum: Int, phase2Quorum: Int, retransmitTicks: Int = 5, backoffInitialTicks: Int = 1,
    backoffMaxTicks: Int = 20, distinguishedProposer: NodeID? = nil, maxTrackedBallots: Int = 16
  ) {
    self.phase1Quorum = phase1Quorum
    self.phase2Quorum = phase2Quorum
    self.retransmitTicks = retransmitTicks
    self.backoffInitialTicks = backoffInitialTicks
    self.backoffMaxTicks = backoffMaxTicks
    self.distinguishedProposer = distinguishedProposer
    self.maxTrackedBallots = maxTrackedBallots
  }

  /// Majority quorums for `acceptors` acceptors and default timings.
  public static func majority(of acceptors: Int) -> SynodOptions {
    SynodOptions(phase1Quorum: acceptors / 2 + 1, phase2Quorum: acceptors / 2 + 1)
  }
}
