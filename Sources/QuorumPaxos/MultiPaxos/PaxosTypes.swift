public import QuorumCore
public import QuorumStorage

/// A position in the Multi-Paxos log: one instance of consensus. Slots start at 1; 0 means "before the
/// first slot".
public typealias Slot = UInt64

/// What a slot's value carries.
public enum PaxosEntryKind: UInt8, Sendable, Equatable {
  /// An application command (an encoded `ReplicatedCommand`).
  case command = 0
  /// Nothing: a new leader fills a slot no acceptor of its phase-1 quorum had accepted anything in.
  case noop = 1
  /// A configuration: the encoded ``QuorumCore/Membership`` that governs every slot after this one.
  case membership = 2
}

/// One slot's proposal as an acceptor stores it: the ballot it was accepted in and the value.
///
/// In the acceptor's log (``QuorumStorage/LogWriteMode/replace`` mode) a slot's entry is the proposal of the
/// highest ballot it accepted there; accepting again in a higher ballot replaces only that slot.
public struct PaxosEntry: Sendable, Equatable, StorableEntry, CustomStringConvertible {
  /// The slot.
  public var index: Slot
  /// The ballot in which the value was proposed and accepted.
  public var ballot: Ballot
  /// What the value carries.
  public var kind: PaxosEntryKind
  /// The value's bytes; empty for a no-op.
  public var data: [UInt8]

  /// Creates an entry.
  public init(index: Slot, ballot: Ballot, kind: PaxosEntryKind = .command, data: [UInt8] = []) {
    self.index = index
    self.ballot = ballot
    self.kind = kind
    self.data = data
  }

  /// The slot (the same as ``index``).
  @inlinable public var slot: Slot { index }

  /// Bytes the entry counts for in flow control (payload plus a fixed overhead).
  @inlinable public var byteSize: Int { data.count + 24 }

  /// Whether two entries carry the same value (kind and bytes), whatever their ballots.
  @inlinable public func hasSameValue(as other: PaxosEntry) -> Bool { kind == other.kind && data == other.data }

  public func encode(to writer: inout WireWriter) {
    writer.writeVarint(index)
    ballot.encode(to: &writer)
    writer.writeByte(kind.rawValue)
    writer.writeBytes(data)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    index = try reader.readVarint()
    ballot = try reader.read()
    let tagOffset = reader.position
    let tag = try reader.readByte()
    guard let kind = PaxosEntryKind(rawValue: tag) else {
      throw WireError(.unknownTag(type: "PaxosEntryKind", tag: UInt64(tag)), at: tagOffset)
    }
    self.kind = kind
    data = try reader.readBytes()
  }

  public var description: String {
    switch kind {
    case .command: return "\(index)@\(ballot)"
    case .noop: return "\(index)@\(ballot)[noop]"
    case .membership: return "\(index)@\(ballot)[config]"
    }
  }

  /// The configuration an entry of kind ``PaxosEntryKind/membership`` carries (`nil` for other kinds, or bytes
  /// that do not decode).
  public var membership: Membership? {
    guard kind == .membership else { return nil }
    return try? Membership(wireBytes: data)
  }
}

/// The state a Multi-Paxos node makes durable before it sends anything that depends on it: the ballot it
/// promised. (Accepted proposals are the log entries.)
public struct PaxosHardState: Sendable, Equatable, WireCodable, CustomStringConvertible {
  /// The highest ballot promised (or accepted in): the node accepts nothing below it, and as a leader it
  /// never reuses a ballot at or below it.
  public var promised: Ballot

  /// Creates a hard state.
  public init(promised: Ballot = .zero) { self.promised = promised }

  public func encode(to writer: inout WireWriter) {
    writer.writeVarint(1)  // format version
    promised.encode(to: &writer)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    let version = try reader.readVarint()
    guard version == 1 else { throw WireError(.unsupportedVersion(UInt8(truncatingIfNeeded: version)), at: at) }
    promised = try reader.read()
  }

  public var description: String { "promised=\(promised)" }
}

/// A state-machine snapshot covering every slot up to ``index``, all of them chosen, with the configuration in
/// force after it.
public struct PaxosSnapshot: Sendable, Equatable {
  /// The last slot the snapshot covers.
  public var index: Slot
  /// The configuration that governs the slots after ``index`` (the newest configuration entry at or before it,
  /// else the founding members); `nil` when not recorded (a snapshot written before configurations were kept),
  /// which means the founding members.
  public var membership: Membership?
  /// The serialised state machine (with its exactly-once sessions).
  public var data: [UInt8]

  /// Creates a snapshot.
  public init(index: Slot, membership: Membership? = nil, data: [UInt8]) {
    self.index = index
    self.membership = membership
    self.data = data
  }

  /// The snapshot as ``QuorumStorage/ConsensusStorage`` stores it: the configuration goes in its metadata.
  public var stored: StoredSnapshot {
    StoredSnapshot(index: index, term: 0, metadata: membership?.wireBytes() ?? [], data: data)
  }

  /// A snapshot read back from storage (empty metadata: no configuration recorded).
  public init(stored: StoredSnapshot) throws(WireError) {
    index = stored.index
    membership = stored.metadata.isEmpty ? nil : try Membership(wireBytes: stored.metadata)
    data = stored.data
  }
}

/// Why a Multi-Paxos node's recovered durable state cannot be loaded. The node must not start; an operator has
/// to look at (or replace) its data directory.
public enum PaxosRecoveryError: Error, Sendable, Equatable, CustomStringConvertible {
  /// A recovered entry lies further past the entries (or snapshot) before it than any acceptor stores a
  /// proposal (``MultiPaxosCore/maxAcceptReach`` slots past what it holds): the storage is damaged, was written
  /// by something else, or was written by a build from before this check (before 2026-12-07), whose acceptors
  /// stored proposals at any distance and so could leave gaps wider than the reach. Loading it would hold an
  /// empty record for every slot in between (slot 2^40 would take terabytes). Such a node cannot restart from
  /// its log: restore its data directory from a snapshot of a member of the group, or remove it from the group
  /// and add it back as a new member with an empty data directory (it then receives a snapshot).
  case slotBeyondReach(slot: Slot, after: Slot, reach: Slot)
  /// The recovered log leaves more slots empty between its snapshot and its entries, in all, than an acceptor's
  /// log ever does (``MultiPaxosCore/maxRecoveredGapSlots``): `empty` slots up to `slot`. Each gap may be within
  /// the reach, but loading them would still hold an empty record for every one (a chain of entries each a reach
  /// apart, from damaged or crafted storage, would take memory for every slot it spans). The remedy is the same as
  /// for ``slotBeyondReach(slot:after:reach:)``.
  case tooManyEmptySlots(slot: Slot, empty: Slot, bound: Slot)

  public var description: String {
    switch self {
    case .slotBeyondReach(let slot, let after, let reach):
      return
        "the recovered log holds slot \(slot) after slot \(after), more than the \(reach) slots past what it holds "
        + "that an acceptor ever stores (the storage is damaged, or was written by a build from before 2026-12-07, "
        + "which could leave gaps that wide); this node cannot restart from it: restore its data directory from "
        + "a snapshot of a group member, or remove it from the group and add it back as a new member with an "
        + "empty data directory"
    case .tooManyEmptySlots(let slot, let empty, let bound):
      return
        "the recovered log leaves \(empty) slots empty up to slot \(slot), more than the \(bound) an acceptor's log "
        + "ever does (the storage is damaged, or was written by a build from before 2026-12-07, which could leave "
        + "that many); this node cannot restart from it: "
        + "restore its data directory from a snapshot of a group member, or remove it from the group and add it "
        + "back as a new member with an empty data directory"
    }
  }
}
