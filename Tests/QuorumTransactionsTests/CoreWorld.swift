import QuorumCore
import Testing

@testable import QuorumTransactions

/// A bank branch: one participant's application resource. The balance, prepared intents and the ledger of
/// applied decisions are durable (they survive crashes); staged work is not.
struct Branch: Sendable {
  var balance = 100
  var staged: [TxnID: Int] = [:]
  var prepared: [TxnID: Int] = [:]
  /// What was done with each prepared intent: the evidence atomicity is checked against.
  var ledger: [TxnID: TransactionDecision] = [:]
  var violations: [String] = []

  mutating func prepare(_ id: TxnID) -> TransactionVote {
    if let delta = staged.removeValue(forKey: id) {
      if delta == 0 { return .readOnly }
      prepared[id] = delta
      return .yes
    }
    return prepared[id] != nil ? .yes : .no
  }

  mutating func commit(_ id: TxnID) {
    guard let delta = prepared.removeValue(forKey: id) else { return }
    balance += delta
    note(id, .commit)
  }

  mutating func rollback(_ id: TxnID) {
    staged[id] = nil
    if prepared.removeValue(forKey: id) != nil { note(id, .abort) }
  }

  mutating func recover(prepared ids: [TxnID]) {
    staged = [:]
    for id in prepared.keys.sorted() where !ids.contains(id) {
      prepared[id] = nil
      note(id, .abort)
    }
  }

  private mutating func note(_ id: TxnID, _ decision: TransactionDecision) {
    if let earlier = ledger[id], earlier != decision { violations.append("\(id) applied \(earlier) then \(decision)") }
    ledger[id] = decision
  }
}

/// A record store model with the semantics of ``LocalTransactionRecordStore`` (per node, presumed abort) or of
/// ``ReplicatedTransactionRecordStore`` (one table shared by all), written synchronously.
struct StoreModel: Sendable {
  var table: TransactionRecords
  var index: UInt64 = 0
  let local: Bool

  init(local: Bool) throws {
    var limits = TransactionRecordLimits()
    limits.transactionHorizonMillis = 600_000
    limits.retainDecisionsMillis = 600_000
    table = try TransactionRecords(limits: limits)
    self.local = local
  }

  mutating func apply(_ command: TransactionRecordCommand, at wall: UInt64) -> TransactionRecordResponse {
    index += 1
    return table.apply(command, context: ApplyContext(index: index, timestampMillis: wall))
  }

  mutating func decide(
    _ id: TxnID, _ decision: TransactionDecision, participants: [NodeID], finisher: NodeID?, at wall: UInt64
  ) -> TransactionDecision {
    if local && decision == .abort {
      guard let record = table.summary(of: id) else { return .abort }
      if let existing = record.decision { return existing }
    }
    guard
      case .decided(let holding) = apply(
        .decide(id, decision, participants: participants, finisher: finisher), at: wall)
    else { preconditionFailure("no decision") }
    return holding
  }

  func pending(of node: NodeID) -> [TransactionRecordSummary] {
    guard case .records(let records, _) = table.query(.involving(node, after: nil, limit: 1_000_000)) else { return [] }
    return records
  }
}

/// A deterministic world of one coordinator and several participants stepping their pure cores: every message,
/// store operation and application call is an event; a seeded generator picks the next; nodes crash and
/// restart at chosen events, losing their volatile state and keeping their store and their durable resources.
final class CoreWorld {
  enum Mode: String, Sendable, CaseIterable {
    case classic
    case nonBlocking
  }

  struct Faults: Sendable {
    var dropProbability = 0.0
    var duplicateProbability = 0.0
  }

  enum Event {
    case message(from: NodeID, to: NodeID, TransactionMessage)
    case coordinatorOp(Int, CoordinatorEffect)
    case coordinatorInput(Int, CoordinatorInput)
    case participantOp(NodeID, Int, ParticipantEffect)
    case participantInput(NodeID, Int, ParticipantInput)
  }

  let mode: Mode
  let seed: UInt64
  let faults: Faults
  let coordinatorID: NodeID = 1
  let participantIDs: [NodeID]
  var coordinator: CoordinatorCore?
  var participants: [NodeID: ParticipantCore] = [:]
  var incarnation: [NodeID: Int] = [:]
  var stores: [NodeID: StoreModel] = [:]
  var branches: [NodeID: Branch] = [:]
  var queue: [Event] = []
  var rng: SeededRandom
  var wall: UInt64 = 1_000
  /// Events carried out (ticks included).
  var events = 0
  /// Events other than ticks: the crash points.
  var steps = 0
  var results: [TxnID: TransactionResult] = [:]
  var involved: [TxnID: [NodeID]] = [:]
  var deltas: [TxnID: [NodeID: Int]] = [:]
  var violations: [String] = []
  var trace: [String] = []

  init(mode: Mode, seed: UInt64, participants: [NodeID] = [2, 3], faults: Faults = Faults()) throws {
    self.mode = mode
    self.seed = seed
    self.faults = faults
    self.participantIDs = participants
    rng = SeededRandom(seed: seed)
    for id in [coordinatorID] + participants {
      incarnation[id] = 0
      if mode == .classic { stores[id] = try StoreModel(local: true) }
    }
    if mode == .nonBlocking { stores[0] = try StoreModel(local: false) }
    for id in participants { branches[id] = Branch() }
    start(coordinatorID)
    for id in participants { start(id) }
  }

  var sharedIdentity: UInt64? { mode == .nonBlocking ? 42 : nil }

  func storeKey(_ node: NodeID) -> NodeID { mode == .nonBlocking ? 0 : node }

  func isUp(_ node: NodeID) -> Bool { node == coordinatorID ? coordinator != nil : participants[node] != nil }

  // MARK: - Workload

  /// Begins a transfer of `amount` from `from` to `to` (plus read-only `readers`), registered at each
  /// participant so that unprepared work times out.
  func transfer(_ sequence: UInt64, from: NodeID, to: NodeID, amount: Int, readers: [NodeID] = []) {
    let id = TxnID(coordinator: coordinatorID, sequence: sequence, startedAtMillis: wall)
    let members = [from, to] + readers
    involved[id] = members
    deltas[id] = [from: -amount, to: amount]
    for reader in readers { deltas[id]?[reader] = 0 }
    branches[from]?.staged[id] = -amount
    branches[to]?.staged[id] = amount
    for reader in readers { branches[reader]?.staged[id] = 0 }
    for member in members { feed(member, .begin(id)) }
    coordinatorStep(.begin(id, participants: members))
  }

  /// Begins a one-phase change of `amount` at `node` (money from outside the bank).
  func deposit(_ sequence: UInt64, at node: NodeID, amount: Int) {
    let id = TxnID(coordinator: coordinatorID, sequence: sequence, startedAtMillis: wall)
    involved[id] = [node]
    deltas[id] = [node: amount]
    branches[node]?.staged[id] = amount
    feed(node, .begin(id))
    coordinatorStep(.begin(id, participants: [node]))
  }

  // MARK: - Nodes

  func start(_ node: NodeID) {
    let records = stores[storeKey(node)]?.pending(of: node) ?? []
    if node == coordinatorID {
      var options = quickCoordinatorOptions()
      options.voteTimeoutTicks = 30
      coordinator = CoordinatorCore(id: node, options: options, recordStore: sharedIdentity)
      coordinatorStep(.recovered(records))
    } else {
      var options = quickParticipantOptions()
      options.unpreparedTimeoutTicks = 40
      participants[node] = ParticipantCore(id: node, options: options, recordStore: sharedIdentity)
      let prepared = records.filter { $0.pending.contains(node) }.map(\.id)
      branches[node]?.recover(prepared: prepared)
      feed(node, .recovered(records))
    }
    trace.append("start \(node) incarnation \(incarnation[node] ?? 0)")
  }

  func crash(_ node: NodeID) {
    guard isUp(node) else { return }
    incarnation[node, default: 0] += 1
    if node == coordinatorID { coordinator = nil } else { participants[node] = nil }
    branches[node]?.staged = [:]
    trace.append("crash \(node) at step \(steps)")
  }

  func coordinatorStep(_ input: CoordinatorInput) {
    guard var core = coordinator else { return }
    let effects = core.step(input)
    coordinator = core
    let inc = incarnation[coordinatorID] ?? 0
    for effect in effects {
      switch effect {
      case .send(let out): post(from: coordinatorID, out)
      case .recordDecision, .recordFinished: queue.append(.coordinatorOp(inc, effect))
      case .finished(let id, let result):
        if let earlier = results[id], earlier.decision != result.decision {
          violations.append("coordinator reported \(id) as \(earlier) and then \(result)")
        }
        results[id] = result
      case .rejected(let id, let why): violations.append("begin \(id) rejected: \(why)")
      case .expired: break
      }
    }
  }

  func feed(_ node: NodeID, _ input: ParticipantInput) {
    guard var core = participants[node] else { return }
    let effects = core.step(input)
    participants[node] = core
    let inc = incarnation[node] ?? 0
    for effect in effects {
      if case .send(let out) = effect { post(from: node, out) } else { queue.append(.participantOp(node, inc, effect)) }
    }
  }

  func post(from: NodeID, _ out: TransactionOutgoing) {
    if faults.dropProbability > 0, rng.chance(faults.dropProbability) { return }
    queue.append(.message(from: from, to: out.to, out.message))
    if faults.duplicateProbability > 0, rng.chance(faults.duplicateProbability) {
      queue.append(.message(from: from, to: out.to, out.message))
    }
  }

  // MARK: - Running

  func tick() {
    wall += 10
    events += 1
    coordinatorStep(.tick(wallClockMillis: wall))
    for node in participantIDs { feed(node, .tick(wallClockMillis: wall)) }
  }

  /// Carries out one event: a tick now and then (or when nothing else is pending), else a random pending event.
  func step() {
    if queue.isEmpty || rng.chance(0.15) {
      tick()
      return
    }
    let event = queue.remove(at: Int.random(in: 0..<queue.count, using: &rng))
    events += 1
    steps += 1
    execute(event)
    check()
  }

  func execute(_ event: Event) {
    switch event {
    case .message(let from, let to, let message):
      if to == coordinatorID {
        coordinatorStep(.message(from: from, message))
      } else {
        feed(to, .message(from: from, message))
      }
    case .coordinatorOp(let inc, let effect):
      // A write of a process that has since crashed: to a local store it never happened; to a replicated table
      // it was already on its way and still lands (a recovery then races it).
      let alive = inc == incarnation[coordinatorID] && coordinator != nil
      guard alive || mode == .nonBlocking else { return }
      let key = storeKey(coordinatorID)
      switch effect {
      case .recordDecision(let id, let decision, let members):
        let holding = stores[key]?.decide(
          id, decision, participants: members, finisher: decision == .commit ? coordinatorID : nil, at: wall)
        if let holding, alive { queue.append(.coordinatorInput(inc, .decisionRecorded(id, holding))) }
      case .recordFinished(let id):
        _ = stores[key]?.apply(.finished(id, node: coordinatorID), at: wall)
        if alive { queue.append(.coordinatorInput(inc, .finishRecorded(id))) }
      default: break
      }
    case .coordinatorInput(let inc, let input):
      guard inc == incarnation[coordinatorID] else { return }
      coordinatorStep(input)
    case .participantOp(let node, let inc, let effect):
      let alive = inc == incarnation[node] && participants[node] != nil
      if alive {
        perform(effect, at: node, incarnation: inc)
      } else if mode == .nonBlocking, effect.isSharedWrite {
        perform(effect, at: node, incarnation: inc)  // its answer goes to a dead incarnation and is dropped
      }
    case .participantInput(let node, let inc, let input):
      guard inc == incarnation[node] else { return }
      feed(node, input)
    }
  }

  func perform(_ effect: ParticipantEffect, at node: NodeID, incarnation inc: Int) {
    let key = storeKey(node)
    var answer: ParticipantInput?
    switch effect {
    case .send: break
    case .prepare(let id): answer = .voted(id, branches[node]?.prepare(id) ?? .no)
    case .recordPrepared(let id, let members):
      switch stores[key]?.apply(.prepared(id, participant: node, participants: members), at: wall) {
      case .decided(let decision)?: answer = .preparedRecorded(id, decided: decision)
      case .undecided?: answer = .preparedRecorded(id, decided: nil)
      default: answer = .recordFailed(id)
      }
    case .recordDecision(let id, let decision):
      let holding = stores[key]?.decide(
        id, decision, participants: [node], finisher: decision == .commit ? node : nil, at: wall)
      answer = holding.map { .decisionRecorded(id, $0) }
    case .lookUp(let id): answer = .lookedUp(id, stores[key]?.table.summary(of: id))
    case .apply(let id, let decision):
      if decision == .commit { branches[node]?.commit(id) } else { branches[node]?.rollback(id) }
      answer = .applied(id)
    case .recordFinished(let id):
      _ = stores[key]?.apply(.finished(id, node: node), at: wall)
      answer = .finishRecorded(id)
    }
    if let answer { queue.append(.participantInput(node, inc, answer)) }
  }

  // MARK: - Checks

  /// Atomicity: every participant that applied a decision applied the same one, and it is the one the
  /// coordinator reported.
  func check() {
    for (id, members) in involved {
      let applied = Set(members.compactMap { branches[$0]?.ledger[id] })
      if applied.count > 1 { violations.append("\(id) committed at some participants and aborted at others") }
      if let result = results[id], let decision = applied.first, decision != result.decision {
        violations.append("\(id) reported \(result) but a participant applied \(decision)")
      }
    }
    for (node, branch) in branches where !branch.violations.isEmpty {
      violations.append("\(node): \(branch.violations)")
    }
  }

  /// Whether every transaction has ended at every participant that is up (and, if `coordinatorToo`, at the
  /// coordinator), with nothing left prepared or pending in the stores of those nodes.
  func settled(coordinatorToo: Bool) -> Bool {
    for node in participantIDs where isUp(node) {
      guard participants[node]?.trackedCount == 0, branches[node]?.prepared.isEmpty == true else { return false }
      if mode == .classic && stores[node]?.pending(of: node).contains(where: { $0.pending.contains(node) }) == true {
        return false
      }
    }
    if coordinatorToo {
      guard coordinator?.activeCount == 0 else { return false }
    }
    return queue.allSatisfy { if case .message = $0 { true } else { false } }
  }

  /// Runs until `settled`, or fails after `maxEvents`.
  func runUntilSettled(coordinatorToo: Bool, maxEvents: Int = 20_000) -> Bool {
    let limit = events + maxEvents
    while events < limit {
      if settled(coordinatorToo: coordinatorToo) && queue.isEmpty { return true }
      step()
    }
    return settled(coordinatorToo: coordinatorToo)
  }

  /// The end state, once settled with every node up: atomicity, the money (transfers conserve it; a deposit
  /// adds its amount if it committed), and the coordinator's answers matching what the participants did.
  func finalViolations(initialTotal: Int) -> [String] {
    check()
    var problems = violations
    var expected = initialTotal
    for (id, members) in involved.sorted(by: { $0.key < $1.key }) {
      let writers = members.filter { deltas[id]?[$0] != 0 }
      let applied = writers.map { branches[$0]?.ledger[id] }
      let committed = applied.contains(.commit)
      if committed && applied.contains(where: { $0 != .commit }) {
        problems.append("\(id): writers applied \(applied.map { $0.map(\.description) ?? "nothing" })")
      }
      if let result = results[id], (result == .committed) != committed {
        problems.append("\(id): the coordinator said \(result), the writers applied \(applied)")
      }
      if committed, members.count == 1, let delta = deltas[id]?[members[0]] { expected += delta }
    }
    let total = branches.values.map(\.balance).reduce(0, +)
    if total != expected { problems.append("the branches hold \(total), not \(expected)") }
    return problems
  }

  var description: String { "mode=\(mode.rawValue) seed=\(seed) events=\(events) steps=\(steps)" }
}

extension ParticipantEffect {
  /// A write to the record store (which, for a replicated table, lands even if its writer crashes meanwhile).
  var isSharedWrite: Bool {
    switch self {
    case .recordPrepared, .recordDecision, .recordFinished: return true
    case .send, .prepare, .lookUp, .apply: return false
    }
  }
}

extension CoreWorld {
  /// Every node's state, for failure messages.
  func dump() -> String {
    var lines: [String] = [description]
    if let coordinator {
      lines.append("coordinator active: \(coordinator.active.map { "\($0.key) \($0.value.phase)" })")
      lines.append("coordinator resolving: \(coordinator.resolving)")
    } else {
      lines.append("coordinator down")
    }
    for node in participantIDs {
      guard let core = participants[node] else {
        lines.append("\(node) down")
        continue
      }
      lines.append(
        "\(node) tracked: \(core.tracked.map { "\($0.key) \($0.value.phase)" }) prepared: \(branches[node]?.prepared ?? [:])"
      )
    }
    for (key, store) in stores.sorted(by: { $0.key < $1.key }) {
      lines.append(
        "store \(key): \(store.pending(of: 1) + store.pending(of: 2) + store.pending(of: 3) + store.pending(of: 4))")
    }
    lines.append("queue: \(queue.count) events")
    lines.append(contentsOf: trace.suffix(5))
    return lines.joined(separator: "\n")
  }
}
