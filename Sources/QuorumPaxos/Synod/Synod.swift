public import QuorumCore
public import QuorumStorage

/// A whole single-decree Paxos instance — acceptors, proposers and learners, each its own actor — on one
/// in-process transport, for the duration of a closure.
///
/// ```swift
/// let configuration = try PaxosConfiguration { Members(1, 2, 3) }
/// let chosen = try await Synod<String>.withInProcess(
///   configuration: configuration, proposers: [11, 12, 13], learners: [21]
/// ) { synod in
///   try await synod.propose("blue", via: 11)   // "blue", or whichever value was chosen first
/// }
/// ```
///
/// The acceptors are the configuration's members. Every role runs in a child task of
/// ``withInProcess(configuration:proposers:learners:storage:_:)``, which stops them all when the closure
/// returns (structured concurrency: nothing outlives the call).
public struct Synod<Value: SynodValue>: Sendable {
  /// The transport every role is bound to (it can cut links, to show partitions).
  public let transport: InProcessTransport<SynodMessage<Value>>
  /// The acceptors, by identifier.
  public let acceptors: [NodeID: PaxosAcceptor<Value>]
  /// The proposers, by identifier.
  public let proposers: [NodeID: PaxosProposer<Value>]
  /// The learners, by identifier.
  public let learners: [NodeID: PaxosLearner<Value>]

  /// Proposes `value` through the proposer `via` and returns the chosen value (which may be another
  /// proposer's: the point of consensus).
  /// - Throws: ``QuorumCore/ConsensusError`` (for example `timeout`), or `notLeader` if `via` is not a
  ///   proposer of this instance.
  public func propose(_ value: Value, via proposer: NodeID) async throws -> Value {
    guard let actor = proposers[proposer] else { throw ConsensusError.notLeader(hint: proposers.keys.min()) }
    return try await actor.propose(value)
  }

  /// The value learned by `learner`, asking the acceptors if it missed it.
  public func learnedValue(at learner: NodeID) async throws -> Value {
    guard let actor = learners[learner] else { throw ConsensusError.notLeader(hint: learners.keys.min()) }
    return try await actor.value()
  }

  /// Runs an instance for the duration of `body`.
  ///
  /// - Parameters:
  ///   - configuration: acceptors (its members), quorums and timings.
  ///   - proposers: the proposers' identifiers (distinct from the acceptors' and the learners').
  ///   - learners: the learners' identifiers.
  ///   - storage: each acceptor's and proposer's durable storage (in memory by default).
  ///   - body: what to do with the running instance.
  /// - Throws: ``QuorumCore/ConfigurationError`` for an invalid configuration or overlapping identifiers,
  ///   whatever `body` throws, or a role's storage error.
  public static func withInProcess<Result: Sendable>(
    configuration: PaxosConfiguration, proposers: [NodeID], learners: [NodeID],
    storage: @Sendable (NodeID) -> any ConsensusStorage<PaxosEntry> = { _ in MemoryStorage(mode: .replace) },
    _ body: (Synod<Value>) async throws -> Result
  ) async throws -> Result {
    try configuration.validate()
    let all = configuration.members + proposers + learners
    guard Set(all).count == all.count, !all.contains(.none) else {
      throw ConfigurationError(
        setting: "Synod", reason: "acceptor, proposer and learner ids must be distinct and non-zero: \(all)")
    }
    let transport = InProcessTransport<SynodMessage<Value>>(inboxCapacity: configuration.inputCapacity)
    let quiet = QuorumLogger(label: "paxos", sink: NullLogSink())
    var acceptorActors: [NodeID: PaxosAcceptor<Value>] = [:]
    for id in configuration.members {
      acceptorActors[id] = PaxosAcceptor(
        id: id, configuration: configuration, learners: learners, endpoint: try transport.bind(id),
        storage: storage(id), logger: quiet)
    }
    var proposerActors: [NodeID: PaxosProposer<Value>] = [:]
    for id in proposers {
      proposerActors[id] = PaxosProposer(
        id: id, configuration: configuration, learners: learners, endpoint: try transport.bind(id),
        storage: storage(id), logger: quiet)
    }
    var learnerActors: [NodeID: PaxosLearner<Value>] = [:]
    for id in learners {
      learnerActors[id] = PaxosLearner(
        id: id, configuration: configuration, peers: learners, endpoint: try transport.bind(id), logger: quiet)
    }
    let synod = Synod(
      transport: transport, acceptors: acceptorActors, proposers: proposerActors, learners: learnerActors)
    return try await withThrowingTaskGroup(of: Void.self, returning: Result.self) { group in
      for actor in acceptorActors.values { group.addTask { try await actor.run() } }
      for actor in proposerActors.values { group.addTask { try await actor.run() } }
      for actor in learnerActors.values { group.addTask { try await actor.run() } }
      let result: Result
      do {
        try await synod.waitUntilRunning()
        result = try await body(synod)
      } catch {
        synod.stopAll()
        throw error
      }
      synod.stopAll()
      try await group.waitForAll()
      return result
    }
  }

  /// Waits until every role has recovered and is answering.
  /// - Throws: ``QuorumCore/ConsensusError/stopped`` if a role ended before it recovered (its own error is thrown
  ///   by the task running it).
  private func waitUntilRunning() async throws {
    for actor in acceptors.values where await !actor.waitUntilRecovered() { throw ConsensusError.stopped }
    for actor in proposers.values where await !actor.waitUntilRecovered() { throw ConsensusError.stopped }
    for actor in learners.values where await !actor.waitUntilRecovered() { throw ConsensusError.stopped }
  }

  private func stopAll() {
    for actor in acceptors.values { actor.stop() }
    for actor in proposers.values { actor.stop() }
    for actor in learners.values { actor.stop() }
  }
}

extension SynodOptions {
  /// Checks the options for an instance with `acceptorCount` acceptors.
  ///
  /// Both quorums must lie between 1 and the number of acceptors, and they must intersect:
  /// |Q1| + |Q2| > N (Flexible Paxos). That one condition covers the learners too: a learner takes a value as
  /// chosen once ``phase2Quorum`` acceptors accepted it in one ballot, and that set must meet every phase-1
  /// quorum, so that every later ballot's phase 1 finds the value and proposes it again (P2c).
  /// ``ProposerCore`` and ``LearnerCore`` refuse, as a broken precondition, options that fail this check;
  /// ``PaxosConfiguration/validate()`` runs it and throws.
  ///
  /// - Throws: ``QuorumCore/ConfigurationError`` naming the offending option.
  public func validate(acceptorCount: Int) throws(ConfigurationError) {
    func fail(_ option: String, _ reason: String) -> ConfigurationError {
      ConfigurationError(setting: option, reason: reason)
    }
    guard acceptorCount >= 1 else { throw fail("acceptors", "a Paxos instance needs at least one acceptor") }
    guard (1...acceptorCount).contains(phase1Quorum) else {
      throw fail("phase1Quorum", "\(phase1Quorum) must be between 1 and the \(acceptorCount) acceptors")
    }
    guard (1...acceptorCount).contains(phase2Quorum) else {
      throw fail("phase2Quorum", "\(phase2Quorum) must be between 1 and the \(acceptorCount) acceptors")
    }
    guard phase1Quorum + phase2Quorum > acceptorCount else {
      throw fail(
        "phase2Quorum",
        "quorums \(phase1Quorum) + \(phase2Quorum) do not exceed the \(acceptorCount) acceptors: a phase-1 quorum "
          + "(of a proposer) could miss every acceptor of a phase-2 quorum (of a proposer or a learner), and two "
          + "values could be chosen")
    }
    if retransmitTicks < 1 { throw fail("retransmitTicks", "must be at least 1") }
    if backoffInitialTicks < 0 || backoffMaxTicks < backoffInitialTicks {
      throw fail("backoffMaxTicks", "need 0 ≤ backoffInitialTicks ≤ backoffMaxTicks")
    }
    if maxTrackedBallots < 1 { throw fail("maxTrackedBallots", "must be at least 1") }
  }

  /// Stops the program when `self` fails ``validate(acceptorCount:)``: a core built with quorums that need not
  /// intersect could choose two values.
  func requireValid(acceptorCount: Int, in role: String) {
    do throws(ConfigurationError) {
      try validate(acceptorCount: acceptorCount)
    } catch {
      preconditionFailure("\(role) options are invalid for \(acceptorCount) acceptors: \(error)")
    }
  }
}
