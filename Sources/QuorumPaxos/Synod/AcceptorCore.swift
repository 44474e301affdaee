public import QuorumCore

/// What an acceptor must keep across crashes: the highest ballot it promised and the proposal it accepted.
public struct AcceptorState<Value: SynodValue>: Sendable, Equatable, WireCodable {
  /// The highest ballot promised (or accepted): the acceptor accepts nothing below it.
  public var promised: Ballot
  /// The highest-ballot proposal accepted, if any.
  public var accepted: AcceptedProposal<Value>?

  /// Creates a state; the default is a fresh acceptor.
  public init(promised: Ballot = .zero, accepted: AcceptedProposal<Value>? = nil) {
    self.promised = promised
    self.accepted = accepted
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeVarint(1)  // format version
    promised.encode(to: &writer)
    writer.writeOptional(accepted)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    let version = try reader.readVarint()
    guard version == 1 else { throw WireError(.unsupportedVersion(UInt8(truncatingIfNeeded: version)), at: at) }
    promised = try reader.read()
    accepted = try reader.readOptional(AcceptedProposal<Value>.self)
  }
}

/// An input to an ``AcceptorCore``.
public enum AcceptorInput<Value: SynodValue>: Sendable {
  /// A message from a proposer or learner.
  case message(from: NodeID, SynodMessage<Value>)
}

/// What an ``AcceptorCore`` asks its shell to do, in order.
public enum AcceptorEffect<Value: SynodValue>: Sendable, Equatable {
  /// Make this state durable. Every message after it in the same list may depend on it, so it must be
  /// durable before they are sent.
  case persist(AcceptorState<Value>)
  /// Send a message.
  case send(SynodOutgoing<Value>)
}

/// The acceptor of single-decree Paxos as a pure value ("Paxos Made Simple", §2.2).
///
/// - **Phase 1b.** A prepare with a ballot higher than any it has promised is answered with a promise that
///   carries the highest-ballot proposal it has accepted. A repeat of the prepare it promised last is
///   answered again (a retransmission; it promises nothing new). A lower ballot is refused with
///   ``SynodMessage/rejected(_:promised:)`` carrying the ballot it promised.
/// - **Phase 2b.** An accept is accepted unless the acceptor has promised a higher ballot; the acceptance
///   goes to the proposer and to every learner. A lower ballot is refused the same way.
///
/// The promise and the acceptance are returned as ``AcceptorEffect/persist(_:)`` *before* the messages that
/// report them: the shell makes them durable first, so a restarted acceptor never breaks a promise it made.
/// An acceptor that has heard the chosen value (``SynodMessage/chosen(_:)``) answers prepares and queries
/// with it directly.
public struct AcceptorCore<Value: SynodValue>: Sendable {
  /// This acceptor.
  public let id: NodeID
  /// Learners told about every acceptance.
  public let learners: [NodeID]
  /// The durable state.
  public private(set) var state: AcceptorState<Value>
  /// The chosen value, if an announcement reached this acceptor (not durable: it can be learned again).
  public private(set) var chosen: Value?

  /// Creates an acceptor from its recovered durable state.
  public init(id: NodeID, learners: [NodeID], state: AcceptorState<Value> = AcceptorState()) {
    precondition(id != .none, "node id 0 is reserved")
    self.id = id
    self.learners = learners
    self.state = state
  }

  /// Handles one input and returns what to do, in order.
  public mutating func step(_ input: AcceptorInput<Value>) -> [AcceptorEffect<Value>] {
    switch input {
    case .message(let from, let message):
      return handle(message, from: from)
    }
  }

  private mutating func handle(_ message: SynodMessage<Value>, from: NodeID) -> [AcceptorEffect<Value>] {
    switch message {
    case .prepare(let ballot):
      if let chosen { return [.send(SynodOutgoing(to: from, .chosen(chosen)))] }
      if ballot > state.promised {
        state.promised = ballot
        return [.persist(state), .send(SynodOutgoing(to: from, .promise(ballot, accepted: state.accepted)))]
      }
      if ballot == state.promised {
        return [.send(SynodOutgoing(to: from, .promise(ballot, accepted: state.accepted)))]
      }
      return [.send(SynodOutgoing(to: from, .rejected(ballot, promised: state.promised)))]
    case .accept(let ballot, let value):
      guard ballot >= state.promised else {
        return [.send(SynodOutgoing(to: from, .rejected(ballot, promised: state.promised)))]
      }
      var effects: [AcceptorEffect<Value>] = []
      let proposal = AcceptedProposal(ballot: ballot, value: value)
      if state.promised != ballot || state.accepted != proposal {
        state.promised = ballot
        state.accepted = proposal
        effects.append(.persist(state))
      }
      effects.append(.send(SynodOutgoing(to: from, .accepted(ballot, value))))
      for learner in learners where learner != from {
        effects.append(.send(SynodOutgoing(to: learner, .accepted(ballot, value))))
      }
      return effects
    case .query:
      if let chosen { return [.send(SynodOutgoing(to: from, .chosen(chosen)))] }
      if let accepted = state.accepted {
        return [.send(SynodOutgoing(to: from, .accepted(accepted.ballot, accepted.value)))]
      }
      return []
    case .chosen(let value):
      chosen = value
      return []
    case .promise, .accepted, .rejected:
      return []
    }
  }
}
