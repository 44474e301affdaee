import QuorumCore
import QuorumPaxos
import QuorumSimulation
import QuorumTestSupport
import Testing

/// Hostile input for Multi-Paxos's wire formats: every message a cluster of cores exchanged (an election,
/// accepts of commands and of a membership change, heartbeats with a read, a chunked snapshot, a leadership
/// transfer, a restarted node's probes), damaged in seeded ways, must decode to a value that survives
/// re-encoding or be refused with a `WireError`, never stop the process. So must the stored hard state.
@Suite("Multi-Paxos wire formats under hostile input")
struct PaxosWireFuzzTests {
  /// Records what passes a cluster's links, letting everything through.
  final class Tap {
    var messages: [PaxosMessage] = []
  }

  /// The messages of a scripted run, and two refusals made by hand.
  static func exchangedMessages() throws -> [PaxosMessage] {
    var options = MultiPaxosOptions.testing(3)
    options.snapshotChunkBytes = 16
    var c = PaxosCluster(3, options: options)
    let tap = Tap()
    c.dropFilter = { _, _, message in
      tap.messages.append(message)
      return false
    }
    c.elect(1)
    for i in 0..<8 { try c.propose("command-\(i)", at: 1) }
    _ = try c.nodes[1]!.proposeMembership(.change([.addLearner(4)]))  // Tests only: node 1 exists.
    c.stabilize()
    try c.nodes[1]!.requestRead(id: 42)  // Tests only: node 1 exists.
    c.tickAll(3)
    c.down.insert(3)
    for i in 0..<12 { try c.propose("while-3-is-away-\(i)", at: 1) }
    let applied = c[1].appliedThrough
    _ = c.nodes[1]!.takeSnapshot(at: applied, data: Array("image of the state at \(applied)".utf8))  // Tests only.
    c.down.remove(3)
    c.tickAll(4)
    try c.nodes[1]!.transferLeadership(to: 2)  // Tests only: node 1 exists.
    c.stabilize()
    c.tickAll(4)
    c.restart(3)
    c.tickAll(30)
    // The leader (node 2 since the transfer) stops: the others probe before they prepare; back, it is refused.
    c.down.insert(2)
    c.tickAll(60)
    c.down.remove(2)
    c.tickAll(30)
    // Refusals, which this run's leaders never met: a stale ballot, and a replica behind a snapshot.
    let stale = Ballot(round: 1, node: 3)
    let promised = Ballot(round: 9, node: 1)
    return tap.messages + [
      .reject(Reject(ballot: stale, promised: promised)),
      .reject(Reject(ballot: stale, promised: promised, reason: .behindSnapshot, snapshotIndex: 17)),
    ]
  }

  static func kind(_ message: PaxosMessage) -> String {
    switch message {
    case .prepare: "prepare"
    case .promise: "promise"
    case .reject: "reject"
    case .accept: "accept"
    case .accepted: "accepted"
    case .heartbeat: "heartbeat"
    case .heartbeatResponse: "heartbeatResponse"
    case .snapshot: "snapshot"
    case .snapshotAck: "snapshotAck"
    case .probe: "probe"
    case .probeResponse: "probeResponse"
    case .campaignNow: "campaignNow"
    }
  }

  @Test(
    "every message kind exchanged, damaged, decodes to a value that re-encodes or is refused with a WireError", .heavy)
  func messages() throws {
    let messages = try Self.exchangedMessages()
    let kinds = Set(messages.map(Self.kind))
    // The run covers the protocol: a missing kind means the script no longer exercises it.
    #expect(kinds.count == 12, "kinds exchanged: \(kinds.sorted())")
    for seed: UInt64 in [1, 2, 3] {
      let report = WireFuzzer.check(samples: messages, inputs: 20_000, seed: seed)
      #expect(report.problems.isEmpty, "\(report)")
      #expect(report.decoded > 0 && report.refusals.values.reduce(0, +) > report.inputs / 4, "\(report)")
    }
  }

  @Test("a snapshot chunk ending past its size, or past 2^64, is refused at decoding")
  func chunksPastTheirSnapshot() {
    let ballot = Ballot(round: 3, node: 1)
    for (offset, total): (UInt64, UInt64) in [(.max - 1, .max), (10, 12)] {
      let chunk = PaxosMessage.snapshot(
        SnapshotChunk(ballot: ballot, index: 5, totalBytes: total, offset: offset, chunk: [1, 2, 3]))
      #expect(throws: WireError.self, "offset \(offset) of \(total)") {
        try PaxosMessage(wireBytes: chunk.wireBytes())
      }
    }
  }

  @Test(
    "single-decree messages and an acceptor's stored state, damaged, decode or are refused with a WireError", .heavy)
  func synod() {
    let low = Ballot(round: 1, node: 11)
    let high = Ballot(round: 7, node: 12)
    let messages: [SynodMessage<String>] = [
      .prepare(low), .promise(high, accepted: nil),
      .promise(high, accepted: AcceptedProposal(ballot: low, value: "blue")),
      .accept(high, "green"), .accepted(high, "grün, ü"), .rejected(low, promised: high), .chosen(""), .query,
    ]
    let states = [
      AcceptorState<String>(), AcceptorState(promised: high, accepted: AcceptedProposal(ballot: low, value: "blue")),
    ]
    let reports = [
      WireFuzzer.check(samples: messages, inputs: 10_000, seed: 21),
      WireFuzzer.check(samples: states, inputs: 5_000, seed: 22),
    ]
    for report in reports { #expect(report.problems.isEmpty, "\(report)") }
  }

  @Test("a stored hard state, damaged, decodes or is refused with a WireError")
  func hardStates() {
    let samples = [
      PaxosHardState(), PaxosHardState(promised: Ballot(round: 7, node: 2)),
      // The highest round a stored promise may hold (a higher one is refused: see AbsurdMessageTests).
      PaxosHardState(promised: Ballot(round: Ballot.maxRound, node: NodeID(.max))),
    ]
    let report = WireFuzzer.check(samples: samples, inputs: 5_000, seed: 9)
    #expect(report.problems.isEmpty, "\(report)")
  }
}
