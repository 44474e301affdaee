import Foundation
import QuorumCore
import Testing

@testable import QuorumPaxos

func ids(_ n: Int) -> [NodeID] { (1...n).map { NodeID(UInt64($0)) } }

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

func tempDirectory(_ name: String) -> String {
  let path = FileManager.default.temporaryDirectory.appendingPathComponent("quorum-\(name)-\(UUID().uuidString)").path
  try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
  return path
}

// MARK: - Single-decree helpers

extension Array {
  /// The messages among single-decree effects, in order.
  func sends<Value>() -> [SynodOutgoing<Value>] where Element == AcceptorEffect<Value> {
    compactMap { if case .send(let m) = $0 { return m } else { return nil } }
  }
}

extension Array {
  func proposerSends<Value>() -> [SynodOutgoing<Value>] where Element == ProposerEffect<Value> {
    compactMap { if case .send(let m) = $0 { return m } else { return nil } }
  }

  func learnerSends<Value>() -> [SynodOutgoing<Value>] where Element == LearnerEffect<Value> {
    compactMap { if case .send(let m) = $0 { return m } else { return nil } }
  }
}

/// A synchronous single-decree instance: acceptor, proposer and learner cores, messages delivered by hand or
/// until quiet, durable state kept per acceptor. Reads like a transcript in tests.
struct SynodCluster {
  var acceptors: [NodeID: AcceptorCore<String>] = [:]
  var proposers: [NodeID: ProposerCore<String>] = [:]
  var learners: [NodeID: LearnerCore<String>] = [:]
  var queue: [(from: NodeID, to: NodeID, message: SynodMessage<String>)] = []
  var durable: [NodeID: AcceptorState<String>] = [:]
  var chosenBy: [NodeID: String] = [:]
  var learned: [NodeID: String] = [:]
  var cut: Set<NodeID> = []
  let options: SynodOptions

  init(
    acceptors a: Int = 3, proposers p: [NodeID] = [11, 12], learners l: [NodeID] = [21], options: SynodOptions? = nil
  ) {
    let opts = options ?? SynodOptions.majority(of: a)
    self.options = opts
    for id in ids(a) { acceptors[id] = AcceptorCore(id: id, learners: l) }
    for (i, id) in p.enumerated() {
      proposers[id] = ProposerCore(
        id: id, acceptors: ids(a), learners: l, options: opts, random: SeededRandom(seed: UInt64(i + 1)))
    }
    for id in l { learners[id] = LearnerCore(id: id, acceptors: ids(a), peers: l, options: opts) }
  }

  mutating func propose(_ value: String, by proposer: NodeID) {
    guard var core = proposers[proposer] else {
      Issue.record("no proposer \(proposer)")
      return
    }
    let effects = core.step(.propose(value))
    proposers[proposer] = core
    handle(proposer, effects)
  }

  mutating func tick(_ proposer: NodeID, times: Int = 1) {
    for _ in 0..<times {
      guard var core = proposers[proposer] else {
        Issue.record("no proposer \(proposer)")
        return
      }
      let effects = core.step(.tick)
      proposers[proposer] = core
      handle(proposer, effects)
    }
  }

  private mutating func handle(_ proposer: NodeID, _ effects: [ProposerEffect<String>]) {
    for effect in effects {
      switch effect {
      case .send(let m): queue.append((proposer, m.to, m.message))
      case .chosen(let v): chosenBy[proposer] = v
      case .persist: break
      }
    }
  }

  /// Delivers the first queued message matching the filter; returns it.
  @discardableResult
  mutating func deliverNext(where match: (NodeID, NodeID, SynodMessage<String>) -> Bool = { _, _, _ in true })
    -> SynodMessage<String>?
  {
    guard let i = queue.firstIndex(where: { match($0.from, $0.to, $0.message) }) else { return nil }
    let (from, to, message) = queue.remove(at: i)
    deliver(message, from: from, to: to)
    return message
  }

  mutating func deliver(_ message: SynodMessage<String>, from: NodeID, to: NodeID) {
    if cut.contains(from) || cut.contains(to) { return }
    if var a = acceptors[to] {
      let effects = a.step(.message(from: from, message))
      acceptors[to] = a
      for case .persist(let state) in effects { durable[to] = state }
      for m in effects.sends() { queue.append((to, m.to, m.message)) }
    } else if var p = proposers[to] {
      let effects = p.step(.message(from: from, message))
      proposers[to] = p
      handle(to, effects)
    } else if var l = learners[to] {
      let effects = l.step(.message(from: from, message))
      learners[to] = l
      for effect in effects {
        switch effect {
        case .send(let m): queue.append((to, m.to, m.message))
        case .learned(let v): learned[to] = v
        }
      }
    }
  }

  /// Delivers everything (including what delivery produces) until nothing is queued.
  mutating func stabilize(limit: Int = 10_000) {
    var n = 0
    while !queue.isEmpty && n < limit {
      deliverNext()
      n += 1
    }
  }
}

// MARK: - Multi-Paxos helpers

extension MultiPaxosOptions {
  /// Quorums for `n` members (majorities unless given) and short timeouts.
  static func testing(_ n: Int, phase1: Int? = nil, phase2: Int? = nil) -> MultiPaxosOptions {
    var o = MultiPaxosOptions()
    o.phase2Quorum = phase2 ?? (phase1.map { n - $0 + 1 } ?? n / 2 + 1)
    o.phase1Quorum = phase1 ?? (n - o.phase2Quorum + 1)
    o.electionTimeoutMinTicks = 10
    o.electionTimeoutMaxTicks = 20
    o.heartbeatTicks = 2
    o.retransmitTicks = 3
    o.leaseDurationNanos = 90
    return o
  }
}

extension MultiPaxosCore {
  /// Takes a ready, treats it as persisted, and returns every message in it (eager first).
  mutating func readMessages() -> [PaxosOutgoing] {
    let rd = ready()
    advance(rd)
    return rd.eagerMessages + rd.messages
  }

  mutating func tick(_ n: Int) {
    for _ in 0..<n { tick() }
  }
}

/// A synchronous Multi-Paxos cluster: messages delivered by hand (or until quiet), storage in memory, links
/// that can be cut, and everything each node applied.
struct PaxosCluster {
  var nodes: [NodeID: MultiPaxosCore] = [:]
  var queue: [(from: NodeID, to: NodeID, message: PaxosMessage)] = []
  var down: Set<NodeID> = []
  var applied: [NodeID: [PaxosEntry]] = [:]
  var durable: [NodeID: (hardState: PaxosHardState, entries: [Slot: PaxosEntry], snapshot: PaxosSnapshot?)] = [:]
  var readStates: [NodeID: [PaxosReadState]] = [:]
  var snapshotRefusals: [NodeID: [PaxosSnapshotRefusal]] = [:]
  var dropFilter: ((NodeID, NodeID, PaxosMessage) -> Bool)?
  let options: MultiPaxosOptions
  /// The running nodes (founders, and nodes added with `join`).
  var members: [NodeID]
  /// The founding members, given to every node that restarts.
  let founders: [NodeID]

  init(_ n: Int, options: MultiPaxosOptions? = nil, seed: UInt64 = 7) {
    self.options = options ?? .testing(n)
    members = ids(n)
    founders = members
    for id in members {
      nodes[id] = MultiPaxosCore(
        id: id, members: members, options: self.options, random: SeededRandom(seed: seed &+ id.rawValue))
      durable[id] = (PaxosHardState(), [:], nil)
      applied[id] = []
    }
    expireLeases()
  }

  /// Lets every node promise a new ballot at once, as if a minimum election timeout had passed since it
  /// last heard from a leader (or started).
  mutating func expireLeases() {
    for id in members { nodes[id]?.sinceLeaderContact = options.electionTimeoutMinTicks }
  }

  subscript(_ id: NodeID) -> MultiPaxosCore {
    get {
      guard let node = nodes[id] else { preconditionFailure("no node \(id)") }
      return node
    }
    set { nodes[id] = newValue }
  }

  /// Takes every node's ready, persists it, queues its messages and records what it applies.
  mutating func processAll() {
    var again = true
    while again {
      again = false
      for id in members where !down.contains(id) {
        guard var node = nodes[id], node.hasReady else { continue }
        let rd = node.ready()
        if let snapshot = rd.snapshot {
          let kept = durable[id]?.entries.filter { $0.key > snapshot.index } ?? [:]
          durable[id]?.snapshot = snapshot
          durable[id]?.entries = kept
          applied[id] = []
        }
        if let hs = rd.hardState { durable[id]?.hardState = hs }
        for entry in rd.entries { durable[id]?.entries[entry.index] = entry }
        for m in rd.eagerMessages + rd.messages { queue.append((id, m.to, m.message)) }
        node.advance(rd)
        applied[id, default: []].append(contentsOf: rd.chosenEntries)
        readStates[id, default: []].append(contentsOf: rd.readStates)
        snapshotRefusals[id, default: []].append(contentsOf: rd.snapshotRefusals)
        nodes[id] = node
        again = true
      }
    }
  }

  /// Delivers queued messages (and what they cause) until nothing is left.
  mutating func stabilize(limit: Int = 100_000) {
    processAll()
    var n = 0
    while !queue.isEmpty && n < limit {
      let (from, to, message) = queue.removeFirst()
      n += 1
      if down.contains(from) || down.contains(to) { continue }
      if let dropFilter, dropFilter(from, to, message) { continue }
      nodes[to]?.step(message, from: from)
      processAll()
    }
  }

  /// Makes `id` campaign and delivers until quiet.
  mutating func elect(_ id: NodeID) {
    expireLeases()
    nodes[id]?.campaign()
    stabilize()
  }

  /// Proposes on `id` (which must lead) and delivers until quiet; returns the slot.
  @discardableResult
  mutating func propose(_ text: String, at id: NodeID) throws -> Slot {
    guard var node = nodes[id] else { throw PaxosRequestError.notLeader(hint: nil) }
    let slot = try node.propose(bytes(text))
    nodes[id] = node
    stabilize()
    return slot
  }

  /// Ticks every running node `n` times, delivering after each tick.
  mutating func tickAll(_ n: Int = 1) {
    for _ in 0..<n {
      for id in members where !down.contains(id) { nodes[id]?.tick() }
      stabilize()
    }
  }

  /// Crashes `id` and restarts it from its durable state.
  mutating func restart(_ id: NodeID, seed: UInt64 = 99) {
    guard let d = durable[id] else {
      Issue.record("node \(id) has no durable state to restart from")
      return
    }
    nodes[id] = MultiPaxosCore(
      id: id, members: founders, options: options, hardState: d.hardState, snapshot: d.snapshot,
      entries: d.entries.keys.sorted().compactMap { d.entries[$0] }, random: SeededRandom(seed: seed))
    nodes[id]?.sinceLeaderContact = options.electionTimeoutMinTicks
    applied[id] = []
    queue.removeAll { $0.to == id || $0.from == id }
  }

  /// The texts `id` applied, no-ops shown as "-".
  func appliedTexts(_ id: NodeID) -> [String] {
    (applied[id] ?? []).map { $0.kind == .noop ? "-" : String(decoding: $0.data, as: UTF8.self) }
  }
}
