public import QuorumCore

/// An input to a ``LearnerCore``.
public enum LearnerInput<Value: SynodValue>: Sendable {
  /// A message from an acceptor, proposer or another learner.
  case message(from: NodeID, SynodMessage<Value>)
  /// One tick of the shell's clock.
  case tick
  /// Someone wants the chosen value: if it is not known, ask the acceptors and the other learners.
  case ask
}

/// What a ``LearnerCore`` asks its shell to do, in order.
public enum LearnerEffect<Value: SynodValue>: Sendable, Equatable {
  /// Send a message.
  case send(SynodOutgoing<Value>)
  /// The value is chosen (reported once).
  case learned(Value)
}

/// The learner of single-decree Paxos as a pure value ("Paxos Made Simple", §2.3).
///
/// A learner counts acceptances *per ballot*: a value is chosen when a phase-2 quorum of distinct acceptors
/// accepted it in the same ballot. (Counting acceptances of one value across different ballots would be
/// wrong: a value accepted by a quorum in no single ballot is not chosen, and a later ballot may choose
/// another.) It also believes an explicit ``SynodMessage/chosen(_:)`` announcement.
///
/// A learner that missed the acceptances can ask (``LearnerInput/ask``): it sends a
/// ``SynodMessage/query`` to every acceptor and learner, counting what the acceptors report and believing
/// anyone who knows the chosen value, and asks again every ``SynodOptions/retransmitTicks`` until it
/// learns. If the acceptors' reports are inconclusive (no ballot with a quorum), the answer comes when any
/// proposer next completes a ballot — "Paxos Made Simple" §2.3's remedy of issuing a proposal.
///
/// Memory is bounded: only the ``SynodOptions/maxTrackedBallots`` highest ballots are tallied.
public struct LearnerCore<Value: SynodValue>: Sendable {
  private struct Tally: Sendable {
    var value: Value
    var acceptors: Set<NodeID>
  }

  /// This learner.
  public let id: NodeID
  /// The acceptors whose acceptances count.
  public let acceptors: [NodeID]
  /// The other learners, asked when this one is late.
  public let peers: [NodeID]
  /// Quorums and timings.
  public let options: SynodOptions
  /// The chosen value, once learned.
  public private(set) var chosen: Value?
  /// Whether the learner is asking the others.
  public private(set) var isAsking = false

  private let acceptorSet: Set<NodeID>
  private var tallies: [Ballot: Tally] = [:]
  private var elapsed = 0

  /// Creates a learner that knows nothing.
  ///
  /// - Precondition: `options` pass ``SynodOptions/validate(acceptorCount:)`` for `acceptors`: the
  ///   ``SynodOptions/phase2Quorum`` acceptances it waits for must meet every phase-1 quorum. Call that first
  ///   to get a typed error.
  public init(id: NodeID, acceptors: [NodeID], peers: [NodeID], options: SynodOptions) {
    precondition(id != .none, "node id 0 is reserved")
    options.requireValid(acceptorCount: Set(acceptors).count, in: "learner \(id)")
    self.id = id
    self.acceptors = acceptors
    self.acceptorSet = Set(acceptors)
    self.peers = peers.filter { $0 != id }
    self.options = options
  }

  /// Handles one input and returns what to do, in order.
  public mutating func step(_ input: LearnerInput<Value>) -> [LearnerEffect<Value>] {
    switch input {
    case .message(let from, let message):
      return handle(message, from: from)
    case .tick:
      guard isAsking, chosen == nil else { return [] }
      elapsed += 1
      guard elapsed >= options.retransmitTicks else { return [] }
      return query()
    case .ask:
      guard chosen == nil, !isAsking else { return [] }
      isAsking = true
      return query()
    }
  }

  private mutating func query() -> [LearnerEffect<Value>] {
    elapsed = 0
    return (acceptors + peers).filter { $0 != id }.map { .send(SynodOutgoing(to: $0, .query)) }
  }

  private mutating func handle(_ message: SynodMessage<Value>, from: NodeID) -> [LearnerEffect<Value>] {
    switch message {
    case .accepted(let ballot, let value):
      guard chosen == nil, acceptorSet.contains(from) else { return [] }
      var tally = tallies[ballot] ?? Tally(value: value, acceptors: [])
      // One ballot proposes one value; an acceptance of another value in the same ballot is not counted.
      guard tally.value == value else { return [] }
      tally.acceptors.insert(from)
      tallies[ballot] = tally
      if tallies.count > options.maxTrackedBallots, let lowest = tallies.keys.min() {
        tallies[lowest] = nil
      }
      guard tally.acceptors.count >= options.phase2Quorum else { return [] }
      return learn(value)
    case .chosen(let value):
      return learn(value)
    case .query:
      guard let chosen else { return [] }
      return [.send(SynodOutgoing(to: from, .chosen(chosen)))]
    case .prepare, .promise, .accept, .rejected:
      return []
    }
  }

  private mutating func learn(_ value: Value) -> [LearnerEffect<Value>] {
    guard chosen == nil else { return [] }
    chosen = value
    isAsking = false
    tallies = [:]
    return [.learned(value)]
  }
}
