import QuorumCore
import Testing

@testable import QuorumRaft

extension RaftCoreOptions {
  /// The algorithm exactly as the paper describes it: no pre-vote, no check-quorum.
  static var paper: RaftCoreOptions {
    var o = RaftCoreOptions()
    o.preVote = false
    o.checkQuorum = false
    return o
  }

  static var defaults: RaftCoreOptions { RaftCoreOptions() }
}

func ids(_ n: Int) -> [NodeID] { (1...n).map { NodeID(UInt64($0)) } }

func makeCore(
  _ id: NodeID, peers: [NodeID], options: RaftCoreOptions = .paper, seed: UInt64 = 1,
  hardState: HardState = HardState(), entries: [LogEntry] = [], snapshot: RaftSnapshot? = nil,
  learners: [NodeID] = []
) -> RaftCore {
  RaftCore(
    id: id, options: options, membership: Membership(voters: Set(peers), learners: Set(learners)),
    hardState: hardState, snapshot: snapshot, entries: entries, random: SeededRandom(seed: seed &+ id.rawValue))
}

/// Entries with the given terms at indexes 1, 2, 3...
func log(terms: [Term]) -> [LogEntry] {
  terms.enumerated().map { LogEntry(index: LogIndex($0.offset + 1), term: $0.element, data: [UInt8($0.offset & 0xff)]) }
}

extension RaftCore {
  /// Takes a ready, treats it as persisted, and returns every message in it (eager first).
  mutating func readMessages() -> [RaftOutgoing] {
    let rd = ready()
    advance(rd)
    return rd.eagerMessages + rd.messages
  }

  /// Takes and persists a ready, returning it.
  mutating func persistReady() -> RaftReady {
    let rd = ready()
    advance(rd)
    return rd
  }

  mutating func tick(_ n: Int) {
    for _ in 0..<n { tick() }
  }

  /// Becomes leader of a group whose other members granted their votes (paper options).
  mutating func forceLeader() {
    campaign()
    let msgs = readMessages()
    let term = self.term
    for m in msgs {
      if case .requestVote = m.message {
        step(.voteResponse(VoteResponse(term: term, granted: true, preVote: false)), from: m.to)
      }
    }
    _ = readMessages()
  }
}

/// A synchronous in-memory cluster of cores, for multi-node scenarios: messages are delivered by hand
/// (`stabilize` delivers until quiet), storage is memory, and links can be cut.
struct TestCluster {
  var nodes: [NodeID: RaftCore] = [:]
  var queue: [(from: NodeID, to: NodeID, message: RaftMessage)] = []
  var cut: Set<[NodeID]> = []
  var down: Set<NodeID> = []
  var applied: [NodeID: [LogEntry]] = [:]
  var durable: [NodeID: (hardState: HardState, entries: [LogEntry], snapshot: RaftSnapshot?)] = [:]
  var readStates: [NodeID: [ReadState]] = [:]
  var failedReads: [NodeID: [UInt64]] = [:]
  var snapshotRefusals: [NodeID: [RaftSnapshotRefusal]] = [:]
  var dropFilter: ((NodeID, NodeID, RaftMessage) -> Bool)?
  let options: RaftCoreOptions
  let bootstrap: Membership

  init(_ n: Int, options: RaftCoreOptions = .paper, learners: [NodeID] = [], seed: UInt64 = 7) {
    self.options = options
    bootstrap = Membership(voters: Set(ids(n)), learners: Set(learners))
    for id in ids(n) + learners {
      nodes[id] = RaftCore.bootstrap(
        id: id, options: options, membership: bootstrap, random: SeededRandom(seed: seed &+ id.rawValue))
      durable[id] = (HardState(), [], nil)
    }
    processAll()
  }

  /// Adds a new (empty-membership) node that will join by membership change.
  mutating func addJoiner(_ id: NodeID, seed: UInt64 = 99) {
    nodes[id] = RaftCore(id: id, options: options, membership: .empty, random: SeededRandom(seed: seed))
    durable[id] = (HardState(), [], nil)
  }

  subscript(_ id: NodeID) -> RaftCore {
    get { nodes[id]! }  // Tests only: the node must exist.
    set { nodes[id] = newValue }
  }

  /// Takes one node's ready: persists, queues messages, records applied entries.
  mutating func process(_ id: NodeID) {
    guard var node = nodes[id], !down.contains(id) else { return }
    while node.hasReady {
      let rd = node.ready()
      var d = durable[id]!
      if let snap = rd.snapshot {
        d.snapshot = snap
        d.entries = d.entries.filter { $0.index > snap.index }
        applied[id, default: []] = []  // The state machine is replaced by the snapshot.
      }
      if let hs = rd.hardState { d.hardState = hs }
      if let first = rd.entries.first {
        d.entries = d.entries.filter { $0.index < first.index } + rd.entries
      }
      durable[id] = d
      for m in rd.eagerMessages + rd.messages { queue.append((id, m.to, m.message)) }
      node.advance(rd)
      applied[id, default: []].append(contentsOf: rd.committedEntries)
      readStates[id, default: []].append(contentsOf: rd.readStates)
      failedReads[id, default: []].append(contentsOf: rd.failedReads)
      snapshotRefusals[id, default: []].append(contentsOf: rd.snapshotRefusals)
    }
    nodes[id] = node
  }

  mutating func processAll() {
    for id in nodes.keys.sorted() { process(id) }
  }

  func isCut(_ a: NodeID, _ b: NodeID) -> Bool { cut.contains([a, b]) || down.contains(a) || down.contains(b) }

  /// Delivers queued messages (and the messages they cause) until nothing is left.
  mutating func stabilize(maxRounds: Int = 10_000) {
    processAll()
    var rounds = 0
    while !queue.isEmpty && rounds < maxRounds {
      rounds += 1
      let batch = queue
      queue = []
      for m in batch {
        if isCut(m.from, m.to) { continue }
        if let dropFilter, dropFilter(m.from, m.to, m.message) { continue }
        nodes[m.to]?.step(m.message, from: m.from)
        process(m.to)
      }
    }
  }

  mutating func tick(_ id: NodeID, _ n: Int = 1) {
    for _ in 0..<n { nodes[id]?.tick() }
    process(id)
  }

  /// Ticks every running node `n` times, delivering messages after each tick.
  mutating func tickAll(_ n: Int = 1) {
    for _ in 0..<n {
      for id in nodes.keys.sorted() where !down.contains(id) { nodes[id]?.tick() }
      stabilize()
    }
  }

  mutating func campaign(_ id: NodeID) {
    nodes[id]?.campaign()
    stabilize()
  }

  @discardableResult
  mutating func propose(_ id: NodeID, _ text: String) -> LogIndex? {
    let result = try? nodes[id]?.propose(Array(text.utf8))
    stabilize()
    return result?.index
  }

  mutating func isolate(_ id: NodeID) {
    for other in nodes.keys where other != id {
      cut.insert([id, other])
      cut.insert([other, id])
    }
  }

  mutating func heal() { cut = [] }

  var leaders: [NodeID] { nodes.values.filter { $0.role == .leader }.map(\.id).sorted() }

  /// Restarts a node from its durable state.
  mutating func restart(_ id: NodeID, seed: UInt64 = 1234) {
    let d = durable[id]!
    nodes[id] = RaftCore(
      id: id, options: options, membership: .empty, hardState: d.hardState, snapshot: d.snapshot,
      entries: d.entries, random: SeededRandom(seed: seed))
    applied[id] = []
    down.remove(id)
  }

  /// The committed command payloads applied on a node, as strings.
  func appliedCommands(_ id: NodeID) -> [String] {
    (applied[id] ?? []).filter { $0.kind == .command }.map { String(decoding: $0.data, as: UTF8.self) }
  }
}
