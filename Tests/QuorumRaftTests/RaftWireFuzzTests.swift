import QuorumCore
import QuorumRaft
import QuorumSimulation
import QuorumTestSupport
import Testing

/// Hostile input for Raft's wire formats: every message a cluster of cores exchanged (an election, appends of
/// commands and of a membership change, heartbeats with a read, a chunked snapshot, a leadership transfer),
/// damaged in seeded ways, must decode to a value that survives re-encoding or be refused with a `WireError`,
/// never stop the process. So must the hard state a replica stores.
@Suite("Raft wire formats under hostile input")
struct RaftWireFuzzTests {
  /// Records what passes a cluster's links, letting everything through.
  final class Tap {
    var messages: [RaftMessage] = []
  }

  /// The messages of a scripted run, one of each kind at least.
  static func exchangedMessages() throws -> [RaftMessage] {
    var options = RaftCoreOptions.defaults
    options.snapshotChunkBytes = 16
    var c = TestCluster(3, options: options)
    let tap = Tap()
    c.dropFilter = { _, _, message in
      tap.messages.append(message)
      return false
    }
    c.campaign(1)
    for i in 0..<8 { c.propose(1, "command-\(i)") }
    _ = try c.nodes[1]!.proposeMembership(.change([.addLearner(4)]))  // Tests only: node 1 exists.
    c.stabilize()
    try c.nodes[1]!.requestRead(id: 42)  // Tests only: node 1 exists.
    c.tickAll(3)
    c.isolate(3)
    for i in 0..<12 { c.propose(1, "while-3-is-away-\(i)") }
    let applied = c[1].appliedIndex
    c.nodes[1]!.takeSnapshot(at: applied, data: Array("image of the state at \(applied)".utf8))  // Tests only.
    c.heal()
    c.tickAll(2)
    c.stabilize()
    try c.nodes[1]!.transferLeadership(to: 2)  // Tests only: node 1 exists.
    c.stabilize()
    c.tickAll(20)
    return tap.messages
  }

  @Test("every message kind, damaged, decodes to a value that re-encodes or is refused with a WireError", .heavy)
  func messages() throws {
    let messages = try Self.exchangedMessages()
    // The run covers the protocol: a missing kind means the script no longer exercises it.
    let kinds = Set(messages.map(Self.kind))
    #expect(kinds.count == 9, "kinds exchanged: \(kinds.sorted())")
    for seed: UInt64 in [1, 2, 3] {
      let report = WireFuzzer.check(samples: messages, inputs: 20_000, seed: seed)
      #expect(report.problems.isEmpty, "\(report)")
      #expect(report.decoded > 0 && report.refusals.values.reduce(0, +) > report.inputs / 4, "\(report)")
    }
  }

  static func kind(_ message: RaftMessage) -> String {
    switch message {
    case .requestVote: "requestVote"
    case .voteResponse: "voteResponse"
    case .appendEntries: "appendEntries"
    case .appendResponse: "appendResponse"
    case .heartbeat: "heartbeat"
    case .heartbeatResponse: "heartbeatResponse"
    case .installSnapshot: "installSnapshot"
    case .snapshotResponse: "snapshotResponse"
    case .timeoutNow: "timeoutNow"
    }
  }

  @Test("positions at the top of the range are refused, not overflowed (found by the fuzzer)")
  func positionsThatWouldOverflow() {
    // An append whose previous index is the largest: its first entry's index cannot follow it.
    let append = RaftMessage.appendEntries(
      AppendEntries(
        term: 1, prevLogIndex: .max, prevLogTerm: 1, entries: [LogEntry(index: 0, term: 1)], commit: 0))
    // A snapshot chunk whose end lies past 2^64.
    let chunk = RaftMessage.installSnapshot(
      InstallSnapshot(
        term: 1, index: 5, snapshotTerm: 1, membership: .empty, totalBytes: .max, offset: .max - 1,
        chunk: [1, 2, 3]))
    for message in [append, chunk] {
      #expect(throws: WireError.self, "\(message)") { try RaftMessage(wireBytes: message.wireBytes()) }
    }
  }

  @Test("a stored hard state, damaged, decodes or is refused with a WireError")
  func hardStates() {
    let samples = [
      HardState(), HardState(term: 7, vote: 2, commit: 41), HardState(term: .max, vote: NodeID(.max), commit: .max),
    ]
    let report = WireFuzzer.check(samples: samples, inputs: 5_000, seed: 9)
    #expect(report.problems.isEmpty, "\(report)")
  }
}
