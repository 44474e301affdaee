public import QuorumCore

/// What a proposer must keep across crashes: a bound below which it may already have used rounds.
///
/// "Paxos Made Simple" asks a proposer to remember the highest-numbered proposal it has issued, so it never
/// issues that number again with another value. Persisting before every ballot would cost a write per
/// attempt, so the proposer reserves rounds in blocks: before using round `r` it makes `roundFloor > r`
/// durable, and a restarted proposer starts at `roundFloor`.
public struct ProposerState: Sendable, Equatable, WireCodable {
  /// Every round this proposer used is below this.
  public var roundFloor: UInt64

  /// Creates a state; the default is a proposer that never proposed.
  public init(roundFloor: UInt64 = 0) { self.roundFloor = roundFloor }

  public func encode(to writer: inout WireWriter) {
    writer.writeVarint(1)  // format version
    writer.writeVarint(roundFloor)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    let version = try reader.readVarint()
    guard version == 1 else { throw WireError(.unsupportedVersion(UInt8(truncatingIfNeeded: version)), at: at) }
    roundFloor = try reader.readVarint()
  }
}

/// An input to a ``ProposerCore``.
public enum ProposerInput<Value: SynodValue>: Sendable {
  /// A client asks to propose a value (the first value given is the one this proposer proposes).
  case propose(Value)
  /// A message from an acceptor or learner.
  case message(from: NodeID, SynodMessage<Value>)
  /// One tick of the shell's clock.
  case tick
  /// Nobody waits for the outcome any more: stop retrying until the next ``propose(_:)``.
  case abandon
  /// The shell has just recovered: reserve the first block of rounds now, so that the first ``propose(_:)``
  /// need not wait for a write.
  case start
}

/// What a ``ProposerCore`` asks its shell to do, in order.
public enum ProposerEffect<Value: SynodValue>: Sendable, Equatable {
  /// Make this state durable before sending any message after it in the same list.
  case persist(ProposerState)
  /// Send a message.
  case send(SynodOutgoing<Value>)
  /// The value chosen: answer every waiting client with it (it may be another proposer's value).
  case chosen(Value)
}

/// Where a proposer is in its current attempt.
public enum ProposerPhase: String, Sendable, Equatable, CustomStringConvertible {
  /// Nothing to do.
  case idle
  /// Phase 1: waiting for promises.
  case preparing
  /// Phase 2: waiting for acceptances.
  case accepting
  /// Pre-empted by a higher ballot; waiting a randomized delay before the next ballot.
  case backingOff
  /// The chosen value is known.
  case done

  public var description: String { rawValue }
}

/// The proposer of single-decree Paxos as a pure value ("Paxos Made Simple", §2.2).
///
/// - **Phase 1a.** Picks a ballot above every ballot it has seen and sends it to every acceptor.
/// - **Phase 2a.** Once a phase-1 quorum promised, it proposes the value of the highest-ballot proposal any
///   of them had accepted — or, if none had, its own value — and sends accepts.
/// - **Chosen.** Once a phase-2 quorum accepted the ballot, the value is chosen; it announces it to every
///   learner and acceptor and reports ``ProposerEffect/chosen(_:)``.
///
/// A refusal carries the ballot that pre-empted it; the proposer retries above it at once. If it is
/// pre-empted again (two proposers dueling) it waits a random number of ticks, drawn from its seeded
/// generator and doubling per pre-emption up to a cap, before trying again, so that one of the duelists gets
/// through. Unanswered messages are resent with the same ballot every ``SynodOptions/retransmitTicks``.
///
/// The proposer of ``SynodOptions/distinguishedProposer`` owns round 0, the lowest ballot; its first
/// attempt skips phase 1 (nothing can have been accepted below the lowest ballot).
public struct ProposerCore<Value: SynodValue>: Sendable {
  /// This proposer.
  public let id: NodeID
  /// The acceptors.
  public let acceptors: [NodeID]
  /// The learners told about the chosen value.
  public let learners: [NodeID]
  /// Quorums and timings.
  public let options: SynodOptions
  /// How many rounds are reserved per durable write.
  public let roundsPerReservation: UInt64 = 16

  /// The durable state.
  public private(set) var durable: ProposerState
  /// The ballot of the current (or last) attempt.
  public private(set) var ballot: Ballot?
  /// The highest ballot seen in a refusal.
  public private(set) var highestSeen: Ballot = .zero
  /// The value this proposer proposes when no acceptor reports an earlier one.
  public private(set) var proposal: Value?
  /// The chosen value, once known.
  public private(set) var chosen: Value?
  /// The current phase.
  public private(set) var phase: ProposerPhase = .idle
  /// How many ballots this proposer has started.
  public private(set) var ballotsStarted = 0
  /// Whether the current attempt skipped phase 1 (the distinguished proposer's first ballot).
  public private(set) var skippedPhase1 = false

  private var random: SeededRandom
  private var promisedBy: Set<NodeID> = []
  private var highestAccepted: AcceptedProposal<Value>?
  private var proposing: Value?
  private var acceptedBy: Set<NodeID> = []
  private var elapsed = 0
  private var backoffTicks = 0
  private var preemptions = 0
  private let acceptorSet: Set<NodeID>
  /// Whether this proposer may still use round 0: it is the distinguished proposer and its durable floor
  /// showed that no incarnation of it ever reserved a round.
  private var roundZeroAvailable: Bool
  /// The lowest round this incarnation may use: every round below the recovered floor may have been used
  /// by an earlier one.
  private let firstUsableRound: UInt64

  /// Creates a proposer from its recovered durable state.
  ///
  /// - Precondition: `options` pass ``SynodOptions/validate(acceptorCount:)`` for `acceptors` (intersecting
  ///   quorums); call that first to get a typed error.
  public init(
    id: NodeID, acceptors: [NodeID], learners: [NodeID], options: SynodOptions, state: ProposerState = ProposerState(),
    random: SeededRandom
  ) {
    precondition(id != .none, "node id 0 is reserved")
    options.requireValid(acceptorCount: Set(acceptors).count, in: "proposer \(id)")
    self.id = id
    self.acceptors = acceptors
    self.acceptorSet = Set(acceptors)
    self.learners = learners
    self.options = options
    self.durable = state
    self.random = random
    self.roundZeroAvailable = options.distinguishedProposer == id && state.roundFloor == 0
    self.firstUsableRound = max(1, state.roundFloor)
  }

  /// Handles one input and returns what to do, in order.
  public mutating func step(_ input: ProposerInput<Value>) -> [ProposerEffect<Value>] {
    switch input {
    case .propose(let value):
      if let chosen { return [.chosen(chosen)] }
      if proposal == nil { proposal = value }
      guard phase == .idle else { return [] }
      preemptions = 0
      return startBallot()
    case .message(let from, let message):
      return handle(message, from: from)
    case .tick:
      return tick()
    case .abandon:
      guard phase != .done else { return [] }
      phase = .idle
      proposal = nil
      return []
    case .start:
      guard ballot == nil, durable.roundFloor <= firstUsableRound else { return [] }
      durable.roundFloor = firstUsableRound + roundsPerReservation
      return [.persist(durable)]
    }
  }

  private mutating func startBallot() -> [ProposerEffect<Value>] {
    var effects: [ProposerEffect<Value>] = []
    let next: Ballot
    if ballot == nil, roundZeroAvailable, highestSeen == .zero {
      next = Ballot(round: 0, node: id)
    } else {
      let above = max(highestSeen, ballot ?? .zero)
      var candidate = Ballot.next(above: above, for: id)
      if candidate.round < firstUsableRound { candidate = Ballot(round: firstUsableRound, node: id) }
      next = candidate
    }
    if next.round >= durable.roundFloor {
      durable.roundFloor = next.round + roundsPerReservation
      effects.append(.persist(durable))
    }
    roundZeroAvailable = false
    ballot = next
    ballotsStarted += 1
    elapsed = 0
    promisedBy = []
    highestAccepted = nil
    acceptedBy = []
    if next.round == 0 {
      // The lowest ballot: no acceptor can have accepted anything below it, so phase 1 would learn nothing.
      skippedPhase1 = true
      guard let proposal else { preconditionFailure("\(id) starting a ballot with no value to propose") }
      startAccepting(proposal, into: &effects)
    } else {
      skippedPhase1 = false
      phase = .preparing
      for acceptor in acceptors { effects.append(.send(SynodOutgoing(to: acceptor, .prepare(next)))) }
    }
    return effects
  }

  private mutating func startAccepting(_ value: Value, into effects: inout [ProposerEffect<Value>]) {
    guard let ballot else { return }
    phase = .accepting
    proposing = value
    elapsed = 0
    for acceptor in acceptors { effects.append(.send(SynodOutgoing(to: acceptor, .accept(ballot, value)))) }
  }

  private mutating func handle(_ message: SynodMessage<Value>, from: NodeID) -> [ProposerEffect<Value>] {
    switch message {
    case .promise(let b, let accepted):
      guard phase == .preparing, b == ballot, acceptorSet.contains(from) else { return [] }
      promisedBy.insert(from)
      if let accepted, accepted.ballot > (highestAccepted?.ballot ?? .zero) { highestAccepted = accepted }
      guard promisedBy.count >= options.phase1Quorum else { return [] }
      // P2c: propose the value of the highest-ballot proposal accepted by any acceptor of the quorum.
      guard let value = highestAccepted?.value ?? proposal else { return [] }
      var effects: [ProposerEffect<Value>] = []
      startAccepting(value, into: &effects)
      return effects
    case .accepted(let b, let value):
      guard phase == .accepting, b == ballot, acceptorSet.contains(from), value == proposing else { return [] }
      acceptedBy.insert(from)
      guard acceptedBy.count >= options.phase2Quorum else { return [] }
      return learnChosen(value, announce: true)
    case .rejected(let b, let promised):
      highestSeen = max(highestSeen, promised)
      guard b == ballot, phase == .preparing || phase == .accepting, promised > b else { return [] }
      preemptions += 1
      let delay = backoffDelay()
      if delay == 0 { return startBallot() }
      phase = .backingOff
      backoffTicks = delay
      elapsed = 0
      return []
    case .chosen(let value):
      return learnChosen(value, announce: false)
    case .prepare, .accept, .query:
      return []
    }
  }

  private mutating func learnChosen(_ value: Value, announce: Bool) -> [ProposerEffect<Value>] {
    guard chosen == nil else { return [] }
    chosen = value
    phase = .done
    var effects: [ProposerEffect<Value>] = [.chosen(value)]
    if announce {
      for node in learners + acceptors where node != id {
        effects.append(.send(SynodOutgoing(to: node, .chosen(value))))
      }
    }
    return effects
  }

  /// No wait after the first pre-emption ("retry at once"); after that a random delay in `0...bound`, the
  /// bound doubling per consecutive pre-emption up to the cap.
  private mutating func backoffDelay() -> Int {
    guard preemptions > 1 else { return 0 }
    let shift = min(preemptions - 2, 20)
    let bound = min(options.backoffMaxTicks, options.backoffInitialTicks << shift)
    guard bound > 0 else { return 0 }
    return Int.random(in: 0...bound, using: &random)
  }

  private mutating func tick() -> [ProposerEffect<Value>] {
    elapsed += 1
    switch phase {
    case .backingOff:
      return elapsed >= backoffTicks ? startBallot() : []
    case .preparing:
      guard elapsed >= options.retransmitTicks, let ballot else { return [] }
      elapsed = 0
      return acceptors.filter { !promisedBy.contains($0) }.map { .send(SynodOutgoing(to: $0, .prepare(ballot))) }
    case .accepting:
      guard elapsed >= options.retransmitTicks, let ballot, let proposing else { return [] }
      elapsed = 0
      return acceptors.filter { !acceptedBy.contains($0) }.map {
        .send(SynodOutgoing(to: $0, .accept(ballot, proposing)))
      }
    case .idle, .done:
      return []
    }
  }
}
