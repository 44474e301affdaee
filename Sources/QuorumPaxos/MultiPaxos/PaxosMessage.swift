public import QuorumCore

/// Phase 1a for every slot from ``fromSlot`` on: promise not to accept anything below ``ballot``.
public struct Prepare: Sendable, Equatable, WireCodable {
  /// The candidate's ballot.
  public var ballot: Ballot
  /// The first slot the candidate does not know to be chosen. Acceptors report what they accepted from
  /// here on.
  public var fromSlot: Slot
  /// The ballot of the leader that handed leadership to this candidate (``CampaignNow``), or ``Ballot/zero``.
  /// An acceptor that still follows that leader promises at once instead of refusing inside its
  /// promise-refusal window: the leader gave up its lease when it started the hand-over, and nobody else can
  /// lead in its ballot. An acceptor that has moved on to a newer ballot ignores the flag.
  public var handoff: Ballot

  /// Creates a prepare.
  public init(ballot: Ballot, fromSlot: Slot, handoff: Ballot = .zero) {
    self.ballot = ballot
    self.fromSlot = fromSlot
    self.handoff = handoff
  }

  public func encode(to writer: inout WireWriter) {
    ballot.encode(to: &writer)
    writer.writeVarint(fromSlot)
    handoff.encode(to: &writer)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    ballot = try reader.read()
    fromSlot = try reader.readVarint()
    handoff = try reader.read()
    if let problem = malformation { throw reader.error(.invalidValue(problem)) }
  }

  /// Why no honest node sends this prepare (or probe), or `nil`.
  var malformation: String? {
    ballot.peerMalformation ?? handoff.peerMalformation ?? PaxosMessage.slotProblem(fromSlot, "fromSlot")
  }
}

/// Phase 1b: a promise for ``ballot`` with the proposals the acceptor accepted from ``fromSlot`` on.
///
/// The entries are bounded in bytes; when they do not reach the acceptor's last slot the candidate asks again
/// from where they stopped (a repeated prepare for the ballot already promised is answered again).
public struct Promise: Sendable, Equatable, WireCodable {
  /// The ballot promised.
  public var ballot: Ballot
  /// The first slot reported.
  public var fromSlot: Slot
  /// Accepted proposals at ``fromSlot`` and after, ascending, possibly with gaps.
  public var entries: [PaxosEntry]
  /// The last slot the report covers: every slot in `fromSlot...coveredThrough` without an entry holds no
  /// accepted proposal.
  public var coveredThrough: Slot
  /// The acceptor's last slot holding an accepted proposal (the report is complete when it covers it).
  public var lastSlot: Slot
  /// Every slot up to here is known chosen at the acceptor, and its entries there are the chosen values.
  public var chosenThrough: Slot

  /// Creates a promise.
  public init(
    ballot: Ballot, fromSlot: Slot, entries: [PaxosEntry], coveredThrough: Slot, lastSlot: Slot, chosenThrough: Slot
  ) {
    self.ballot = ballot
    self.fromSlot = fromSlot
    self.entries = entries
    self.coveredThrough = coveredThrough
    self.lastSlot = lastSlot
    self.chosenThrough = chosenThrough
  }

  /// Whether the report reaches the acceptor's last accepted slot.
  public var isComplete: Bool { coveredThrough >= lastSlot }

  public func encode(to writer: inout WireWriter) {
    ballot.encode(to: &writer)
    writer.writeVarint(fromSlot)
    writer.writeArray(entries)
    writer.writeVarint(coveredThrough)
    writer.writeVarint(lastSlot)
    writer.writeVarint(chosenThrough)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    ballot = try reader.read()
    fromSlot = try reader.readVarint()
    entries = try reader.readArray(PaxosEntry.self)
    coveredThrough = try reader.readVarint()
    lastSlot = try reader.readVarint()
    chosenThrough = try reader.readVarint()
    if let problem = malformation { throw reader.error(.invalidValue(problem)) }
  }

  /// Why no honest acceptor sends this promise, or `nil`: the entries must ascend strictly inside
  /// ``fromSlot``…``coveredThrough`` (an acceptor reports each slot once, and only the slots it covers).
  var malformation: String? {
    if let problem = ballot.peerMalformation { return problem }
    for (slot, name) in [(fromSlot, "fromSlot"), (coveredThrough, "coveredThrough"), (lastSlot, "lastSlot")] {
      if let problem = PaxosMessage.slotProblem(slot, name) { return problem }
    }
    if let problem = PaxosMessage.slotProblem(chosenThrough, "chosenThrough") { return problem }
    var previous: Slot?
    for entry in entries {
      guard entry.index >= fromSlot, entry.index <= coveredThrough else {
        return "promise entry \(entry.index) outside the reported \(fromSlot)...\(coveredThrough)"
      }
      if let previous, entry.index <= previous { return "promise entry \(entry.index) after \(previous)" }
      previous = entry.index
    }
    return nil
  }
}

/// Why an acceptor refused a prepare or an accept.
public enum RejectReason: UInt8, Sendable, Equatable {
  /// It promised a higher ballot (carried in ``Reject/promised``).
  case higherBallot = 0
  /// The candidate's first unknown slot is inside this acceptor's snapshot: those slots are chosen but the
  /// acceptor no longer holds their proposals, so it cannot report them. The candidate must catch up first.
  case behindSnapshot = 1
}

/// A refusal, carrying the highest ballot the acceptor promised so the proposer can go above it.
public struct Reject: Sendable, Equatable, WireCodable {
  /// The refused ballot.
  public var ballot: Ballot
  /// The ballot the acceptor promised.
  public var promised: Ballot
  /// Why.
  public var reason: RejectReason
  /// The acceptor's snapshot index (for ``RejectReason/behindSnapshot``).
  public var snapshotIndex: Slot

  /// Creates a refusal.
  public init(ballot: Ballot, promised: Ballot, reason: RejectReason = .higherBallot, snapshotIndex: Slot = 0) {
    self.ballot = ballot
    self.promised = promised
    self.reason = reason
    self.snapshotIndex = snapshotIndex
  }

  public func encode(to writer: inout WireWriter) {
    ballot.encode(to: &writer)
    promised.encode(to: &writer)
    writer.writeByte(reason.rawValue)
    writer.writeVarint(snapshotIndex)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    ballot = try reader.read()
    promised = try reader.read()
    let at = reader.position
    let tag = try reader.readByte()
    guard let reason = RejectReason(rawValue: tag) else {
      throw WireError(.unknownTag(type: "RejectReason", tag: UInt64(tag)), at: at)
    }
    self.reason = reason
    snapshotIndex = try reader.readVarint()
    if let problem = malformation { throw reader.error(.invalidValue(problem)) }
  }

  /// Why no honest acceptor sends this refusal, or `nil`.
  var malformation: String? {
    ballot.peerMalformation ?? promised.peerMalformation ?? PaxosMessage.slotProblem(snapshotIndex, "snapshotIndex")
  }
}

/// Phase 2a for a batch of consecutive slots, plus the leader's chosen point.
public struct Accept: Sendable, Equatable, WireCodable {
  /// The leader's ballot.
  public var ballot: Ballot
  /// Proposals for consecutive slots, all in ``ballot``.
  public var entries: [PaxosEntry]
  /// Every slot up to here is chosen; an acceptor whose entry at such a slot was accepted in ``ballot`` now
  /// knows it holds the chosen value.
  public var chosenThrough: Slot

  /// Creates an accept.
  public init(ballot: Ballot, entries: [PaxosEntry], chosenThrough: Slot) {
    self.ballot = ballot
    self.entries = entries
    self.chosenThrough = chosenThrough
  }

  public func encode(to writer: inout WireWriter) {
    ballot.encode(to: &writer)
    writer.writeArray(entries)
    writer.writeVarint(chosenThrough)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    ballot = try reader.read()
    entries = try reader.readArray(PaxosEntry.self)
    chosenThrough = try reader.readVarint()
    if let problem = malformation { throw reader.error(.invalidValue(problem)) }
  }

  /// Why no honest leader sends this accept, or `nil`: its entries are for consecutive slots from 1 on (as
  /// Raft's `AppendEntries`, checked as it counts so that the top of the range cannot overflow).
  var malformation: String? {
    if let problem = ballot.peerMalformation ?? PaxosMessage.slotProblem(chosenThrough, "chosenThrough") {
      return problem
    }
    guard let first = entries.first?.index else { return nil }
    guard first > 0 else { return "accept entry at slot 0" }
    var expected = first
    for entry in entries {
      guard entry.index == expected else { return "accept entry \(entry.index) where \(expected) was due" }
      if let problem = PaxosMessage.slotProblem(entry.index, "entry") { return problem }
      let (next, overflow) = expected.addingReportingOverflow(1)
      if overflow { return "accept entry \(entry.index) at the top of the slot range" }
      expected = next
    }
    return nil
  }
}

/// Phase 2b: the acceptor accepted (and made durable) slots ``firstSlot``…``lastSlot`` in ``ballot``.
public struct Accepted: Sendable, Equatable, WireCodable {
  /// The ballot accepted in.
  public var ballot: Ballot
  /// The first slot accepted.
  public var firstSlot: Slot
  /// The last slot accepted.
  public var lastSlot: Slot
  /// The acceptor's own chosen point after handling the accept.
  public var chosenThrough: Slot

  /// Creates an acknowledgement.
  public init(ballot: Ballot, firstSlot: Slot, lastSlot: Slot, chosenThrough: Slot) {
    self.ballot = ballot
    self.firstSlot = firstSlot
    self.lastSlot = lastSlot
    self.chosenThrough = chosenThrough
  }

  public func encode(to writer: inout WireWriter) {
    ballot.encode(to: &writer)
    writer.writeVarint(firstSlot)
    writer.writeVarint(lastSlot)
    writer.writeVarint(chosenThrough)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    ballot = try reader.read()
    firstSlot = try reader.readVarint()
    lastSlot = try reader.readVarint()
    chosenThrough = try reader.readVarint()
    if let problem = malformation { throw reader.error(.invalidValue(problem)) }
  }

  /// Why no honest acceptor sends this acknowledgement, or `nil`: it names the non-empty range of one accept.
  var malformation: String? {
    if let problem = ballot.peerMalformation { return problem }
    for (slot, name) in [(firstSlot, "firstSlot"), (lastSlot, "lastSlot"), (chosenThrough, "chosenThrough")] {
      if let problem = PaxosMessage.slotProblem(slot, name) { return problem }
    }
    return firstSlot <= lastSlot ? nil : "accepted range \(firstSlot)...\(lastSlot) is empty"
  }
}

/// The leader's heartbeat: keeps followers from starting phase 1, carries the chosen point, and numbers a
/// round that confirms leadership for reads and leases once a phase-2 quorum answers it.
public struct Heartbeat: Sendable, Equatable, WireCodable {
  /// The leader's ballot.
  public var ballot: Ballot
  /// The leader's chosen point (as in ``Accept/chosenThrough``).
  public var chosenThrough: Slot
  /// The read round.
  public var round: UInt64
  /// 1, or how many times less often an idle leader heartbeats (``MultiPaxosOptions/idleHeartbeatFactor``): the
  /// follower waits as many times longer before it campaigns or promises another ballot.
  public var idleFactor: UInt64

  /// Creates a heartbeat.
  public init(ballot: Ballot, chosenThrough: Slot, round: UInt64, idleFactor: UInt64 = 1) {
    self.ballot = ballot
    self.chosenThrough = chosenThrough
    self.round = round
    self.idleFactor = idleFactor
  }

  public func encode(to writer: inout WireWriter) {
    ballot.encode(to: &writer)
    writer.writeVarint(chosenThrough)
    writer.writeVarint(round)
    if idleFactor != 1 { writer.writeVarint(idleFactor) }
  }

  /// Reads a heartbeat; one without the idle factor (an active leader's, or an older version's) has factor 1.
  public init(from reader: inout WireReader) throws(WireError) {
    ballot = try reader.read()
    chosenThrough = try reader.readVarint()
    round = try reader.readVarint()
    idleFactor = reader.isAtEnd ? 1 : try reader.readVarint()
    if let problem = malformation { throw reader.error(.invalidValue(problem)) }
  }

  /// Why no honest leader sends this heartbeat, or `nil`.
  var malformation: String? { ballot.peerMalformation ?? PaxosMessage.slotProblem(chosenThrough, "chosenThrough") }
}

/// The answer to a heartbeat.
public struct HeartbeatResponse: Sendable, Equatable, WireCodable {
  /// The ballot of the heartbeat answered.
  public var ballot: Ballot
  /// The heartbeat's read round.
  public var round: UInt64
  /// The heartbeat's chosen point, echoed: a follower whose own point stays below it is missing slots.
  public var leaderChosenThrough: Slot
  /// The follower's chosen point after handling the heartbeat.
  public var chosenThrough: Slot

  /// Creates a response.
  public init(ballot: Ballot, round: UInt64, leaderChosenThrough: Slot, chosenThrough: Slot) {
    self.ballot = ballot
    self.round = round
    self.leaderChosenThrough = leaderChosenThrough
    self.chosenThrough = chosenThrough
  }

  public func encode(to writer: inout WireWriter) {
    ballot.encode(to: &writer)
    writer.writeVarint(round)
    writer.writeVarint(leaderChosenThrough)
    writer.writeVarint(chosenThrough)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    ballot = try reader.read()
    round = try reader.readVarint()
    leaderChosenThrough = try reader.readVarint()
    chosenThrough = try reader.readVarint()
    if let problem = malformation { throw reader.error(.invalidValue(problem)) }
  }

  /// Why no honest follower sends this response, or `nil`.
  var malformation: String? {
    ballot.peerMalformation ?? PaxosMessage.slotProblem(leaderChosenThrough, "leaderChosenThrough")
      ?? PaxosMessage.slotProblem(chosenThrough, "chosenThrough")
  }
}

/// One chunk of a snapshot sent by the leader to a replica that needs slots the leader has compacted.
public struct SnapshotChunk: Sendable, Equatable, WireCodable {
  /// The leader's ballot, or ``Ballot/zero`` for a snapshot offered by an acceptor to a candidate it refused as
  /// behind its snapshot (``RejectReason/behindSnapshot``): the receiver installs it without following the sender.
  /// (A build from before such offers, 2026-12-07, answers one with a refusal, or follows the sender if it promised
  /// nothing yet; the sender then pauses its offer, see ``MultiPaxosCore/maxUnacknowledgedOfferResends``.)
  public var ballot: Ballot
  /// The last slot the snapshot covers.
  public var index: Slot
  /// The configuration in force after ``index`` (empty if the leader does not know it).
  public var membership: Membership
  /// The snapshot's total size.
  public var totalBytes: UInt64
  /// Where this chunk starts.
  public var offset: UInt64
  /// The bytes.
  public var chunk: [UInt8]

  /// Creates a chunk.
  public init(
    ballot: Ballot, index: Slot, membership: Membership = .empty, totalBytes: UInt64, offset: UInt64, chunk: [UInt8]
  ) {
    self.ballot = ballot
    self.index = index
    self.membership = membership
    self.totalBytes = totalBytes
    self.offset = offset
    self.chunk = chunk
  }

  public func encode(to writer: inout WireWriter) {
    ballot.encode(to: &writer)
    writer.writeVarint(index)
    membership.encode(to: &writer)
    writer.writeVarint(totalBytes)
    writer.writeVarint(offset)
    writer.writeBytes(chunk)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    ballot = try reader.read()
    index = try reader.readVarint()
    membership = try reader.read()
    totalBytes = try reader.readVarint()
    offset = try reader.readVarint()
    chunk = try reader.readBytes()
    // As Raft's: a chunk that ends past its snapshot's size (or whose end overflows) is malformed.
    let (end, overflow) = offset.addingReportingOverflow(UInt64(chunk.count))
    guard !overflow, end <= totalBytes else {
      throw reader.error(.invalidValue("chunk ends past the snapshot's total size"))
    }
    if let problem = malformation { throw reader.error(.invalidValue(problem)) }
  }

  /// Why no honest leader sends this chunk, or `nil` (the size check is the decoder's).
  var malformation: String? { ballot.peerMalformation ?? PaxosMessage.slotProblem(index, "index") }
}

/// The answer to a snapshot chunk.
public struct SnapshotAck: Sendable, Equatable, WireCodable {
  /// The chunk's ballot: the leader's, or ``Ballot/zero`` for a snapshot an acceptor offered.
  public var ballot: Ballot
  /// The snapshot's index.
  public var index: Slot
  /// The next byte wanted; the snapshot's size once it is installed.
  public var nextOffset: UInt64
  /// Whether the replica refused the snapshot (too large, or it already has everything it covers).
  public var reject: Bool

  /// Creates an acknowledgement.
  public init(ballot: Ballot, index: Slot, nextOffset: UInt64, reject: Bool) {
    self.ballot = ballot
    self.index = index
    self.nextOffset = nextOffset
    self.reject = reject
  }

  public func encode(to writer: inout WireWriter) {
    ballot.encode(to: &writer)
    writer.writeVarint(index)
    writer.writeVarint(nextOffset)
    writer.writeBool(reject)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    ballot = try reader.read()
    index = try reader.readVarint()
    nextOffset = try reader.readVarint()
    reject = try reader.readBool()
    if let problem = malformation { throw reader.error(.invalidValue(problem)) }
  }

  /// Why no honest replica sends this acknowledgement, or `nil`.
  var malformation: String? { ballot.peerMalformation ?? PaxosMessage.slotProblem(index, "index") }
}

/// The answer to a probe: whether the acceptor would promise the ballot now.
public struct ProbeResponse: Sendable, Equatable, WireCodable {
  /// The probed ballot.
  public var ballot: Ballot
  /// Whether the acceptor would promise it (it promised nothing higher, heard from no leader for a minimum
  /// election timeout, and holds every slot from the candidate's first unknown one).
  public var granted: Bool

  /// Creates a response.
  public init(ballot: Ballot, granted: Bool) {
    self.ballot = ballot
    self.granted = granted
  }

  public func encode(to writer: inout WireWriter) {
    ballot.encode(to: &writer)
    writer.writeBool(granted)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    ballot = try reader.read()
    granted = try reader.readBool()
  }
}

/// A leader's request to a caught-up voter to start phase 1 at once: a leadership transfer, or a leader that
/// was removed from the group handing over (the counterpart of Raft's `TimeoutNow`).
public struct CampaignNow: Sendable, Equatable, WireCodable {
  /// The ballot of the leader handing over. The receiver acts only while it follows that leader in that
  /// ballot, and carries it in its prepares (``Prepare/handoff``).
  public var ballot: Ballot

  /// Creates a request.
  public init(ballot: Ballot) { self.ballot = ballot }

  public func encode(to writer: inout WireWriter) { ballot.encode(to: &writer) }

  public init(from reader: inout WireReader) throws(WireError) { ballot = try reader.read() }
}

/// A Multi-Paxos peer message.
public enum PaxosMessage: Sendable, Equatable, WireCodable, CustomStringConvertible {
  /// Phase 1a.
  case prepare(Prepare)
  /// Phase 1b.
  case promise(Promise)
  /// A refusal with the higher ballot.
  case reject(Reject)
  /// Phase 2a, batched.
  case accept(Accept)
  /// Phase 2b.
  case accepted(Accepted)
  /// The leader's heartbeat.
  case heartbeat(Heartbeat)
  /// The answer to a heartbeat.
  case heartbeatResponse(HeartbeatResponse)
  /// A snapshot chunk.
  case snapshot(SnapshotChunk)
  /// The answer to a snapshot chunk.
  case snapshotAck(SnapshotAck)
  /// Would you promise this ballot? Asked before phase 1 and changing nothing, so that a node cut off from
  /// the leader (or just slow) cannot raise its promise and depose a leader the others still follow (the
  /// counterpart of Raft's pre-vote).
  case probe(Prepare)
  /// The answer to a probe.
  case probeResponse(ProbeResponse)
  /// Start phase 1 now: the leader hands over.
  case campaignNow(CampaignNow)

  /// The highest slot a message may name (2^63 − 1); a message naming a higher one is refused. A group choosing
  /// a billion slots a second needs centuries to reach it, and every slot a node accepts stays far enough below
  /// `UInt64.max` that counting past it cannot overflow.
  public static let maxSlot: Slot = .max / 2

  static func slotProblem(_ slot: Slot, _ name: String) -> String? {
    slot > maxSlot ? "\(name) \(slot) above \(maxSlot)" : nil
  }

  /// Why no honest peer sends this message, or `nil`: what its decoder refuses (a ballot round at or above
  /// ``Ballot/maxRound``, a slot above ``maxSlot``, an accept's slots not consecutive, a promise's entries out
  /// of order or outside the range it reports, an acknowledged range that is empty). ``MultiPaxosCore`` drops
  /// such a message even when it was never encoded (an in-process transport).
  public var malformation: String? {
    switch self {
    case .prepare(let m), .probe(let m): return m.malformation
    case .promise(let m): return m.malformation
    case .reject(let m): return m.malformation
    case .accept(let m): return m.malformation
    case .accepted(let m): return m.malformation
    case .heartbeat(let m): return m.malformation
    case .heartbeatResponse(let m): return m.malformation
    case .snapshot(let m): return m.malformation
    case .snapshotAck(let m): return m.malformation
    case .probeResponse(let m): return m.ballot.peerMalformation
    case .campaignNow(let m): return m.ballot.peerMalformation
    }
  }

  /// The ballot the message is about.
  public var ballot: Ballot {
    switch self {
    case .prepare(let m): return m.ballot
    case .promise(let m): return m.ballot
    case .reject(let m): return m.ballot
    case .accept(let m): return m.ballot
    case .accepted(let m): return m.ballot
    case .heartbeat(let m): return m.ballot
    case .heartbeatResponse(let m): return m.ballot
    case .snapshot(let m): return m.ballot
    case .snapshotAck(let m): return m.ballot
    case .probe(let m): return m.ballot
    case .probeResponse(let m): return m.ballot
    case .campaignNow(let m): return m.ballot
    }
  }

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .prepare(let m):
      writer.writeByte(1)
      m.encode(to: &writer)
    case .promise(let m):
      writer.writeByte(2)
      m.encode(to: &writer)
    case .reject(let m):
      writer.writeByte(3)
      m.encode(to: &writer)
    case .accept(let m):
      writer.writeByte(4)
      m.encode(to: &writer)
    case .accepted(let m):
      writer.writeByte(5)
      m.encode(to: &writer)
    case .heartbeat(let m):
      writer.writeByte(6)
      m.encode(to: &writer)
    case .heartbeatResponse(let m):
      writer.writeByte(7)
      m.encode(to: &writer)
    case .snapshot(let m):
      writer.writeByte(8)
      m.encode(to: &writer)
    case .snapshotAck(let m):
      writer.writeByte(9)
      m.encode(to: &writer)
    case .probe(let m):
      writer.writeByte(10)
      m.encode(to: &writer)
    case .probeResponse(let m):
      writer.writeByte(11)
      m.encode(to: &writer)
    case .campaignNow(let m):
      writer.writeByte(12)
      m.encode(to: &writer)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 1: self = .prepare(try reader.read())
    case 2: self = .promise(try reader.read())
    case 3: self = .reject(try reader.read())
    case 4: self = .accept(try reader.read())
    case 5: self = .accepted(try reader.read())
    case 6: self = .heartbeat(try reader.read())
    case 7: self = .heartbeatResponse(try reader.read())
    case 8: self = .snapshot(try reader.read())
    case 9: self = .snapshotAck(try reader.read())
    case 10: self = .probe(try reader.read())
    case 11: self = .probeResponse(try reader.read())
    case 12: self = .campaignNow(try reader.read())
    case let tag: throw WireError(.unknownTag(type: "PaxosMessage", tag: UInt64(tag)), at: at)
    }
  }

  public var description: String {
    switch self {
    case .prepare(let m):
      return "prepare(\(m.ballot) from \(m.fromSlot)\(m.handoff == .zero ? "" : " handoff \(m.handoff)"))"
    case .promise(let m):
      return "promise(\(m.ballot) \(m.fromSlot)...\(m.coveredThrough)/\(m.lastSlot) \(m.entries.count) entries "
        + "chosen \(m.chosenThrough))"
    case .reject(let m): return "reject(\(m.ballot) promised \(m.promised) \(m.reason) snap \(m.snapshotIndex))"
    case .accept(let m):
      let range = m.entries.isEmpty ? "-" : "\(m.entries[0].index)...\(m.entries[m.entries.count - 1].index)"
      return "accept(\(m.ballot) \(range) chosen \(m.chosenThrough))"
    case .accepted(let m): return "accepted(\(m.ballot) \(m.firstSlot)...\(m.lastSlot) chosen \(m.chosenThrough))"
    case .heartbeat(let m): return "heartbeat(\(m.ballot) chosen \(m.chosenThrough) round \(m.round))"
    case .heartbeatResponse(let m):
      return "heartbeatResponse(\(m.ballot) round \(m.round) chosen \(m.chosenThrough)/\(m.leaderChosenThrough))"
    case .snapshot(let m): return "snapshot(\(m.ballot) @\(m.index) \(m.offset)+\(m.chunk.count)/\(m.totalBytes))"
    case .snapshotAck(let m):
      return "snapshotAck(\(m.ballot) @\(m.index) next \(m.nextOffset)\(m.reject ? " reject" : ""))"
    case .probe(let m): return "probe(\(m.ballot) from \(m.fromSlot))"
    case .probeResponse(let m): return "probeResponse(\(m.ballot) \(m.granted ? "granted" : "refused"))"
    case .campaignNow(let m): return "campaignNow(\(m.ballot))"
    }
  }
}

/// A message for the shell to send.
public struct PaxosOutgoing: Sendable, Equatable, CustomStringConvertible {
  /// The receiver.
  public var to: NodeID
  /// The message.
  public var message: PaxosMessage

  /// Creates an outgoing message.
  public init(to: NodeID, message: PaxosMessage) {
    self.to = to
    self.message = message
  }

  public var description: String { "->\(to) \(message)" }
}
