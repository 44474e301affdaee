import QuorumCore

/// One slot as a node holds it in memory: the proposal it accepted there, whether it knows it is chosen,
/// and (on a leader) which acceptors accepted the leader's proposal.
struct SlotRecord: Sendable {
  /// The accepted proposal (for a chosen slot: the chosen value).
  var entry: PaxosEntry
  /// Whether this node knows the slot is chosen with ``entry``'s value.
  var chosen: Bool
  /// Leader only: the members (by position in the sorted member list) that accepted ``entry`` in the
  /// leader's ballot.
  var acks: UInt64
}

/// The slots a Multi-Paxos node holds in memory: accepted proposals above a compaction point, a snapshot,
/// the chosen and applied points, and the configurations.
///
/// Unlike a Raft log, a slot may be empty (an accept never arrived) and a slot's proposal may be replaced by
/// one from a higher ballot until the node knows the slot is chosen. ``chosenThrough`` is the end of the
/// contiguous run of slots known chosen; slots beyond it may also be known chosen.
///
/// A configuration entry (``PaxosEntryKind/membership``) governs every slot after its own. ``membership`` is
/// the newest one known chosen, the configuration of slot ``chosenThrough`` + 1; entries above the chosen
/// point may hold configurations too (``configSlots``), not known chosen.
struct PaxosLog: Sendable {
  /// Every slot up to here is compacted away (chosen, applied and covered by ``snapshot``).
  private(set) var offset: Slot = 0
  /// `records[i]` holds slot `offset + 1 + i`.
  private var records: [SlotRecord?] = []
  /// The newest snapshot (its configuration always recorded).
  private(set) var snapshot: PaxosSnapshot?
  /// Every slot up to here is known chosen.
  private(set) var chosenThrough: Slot = 0
  /// Every slot up to here has been handed out for applying.
  private(set) var applying: Slot = 0
  /// The configuration of the slots after ``offset``: the snapshot's, or the founding one.
  private(set) var baseMembership: Membership
  /// The slots above ``offset`` whose record holds a configuration entry, ascending (chosen or not).
  private(set) var configSlots: [Slot] = []
  /// The newest configuration known chosen: the one that governs slot ``chosenThrough`` + 1.
  private(set) var membership: Membership
  /// The slot of the entry that set ``membership`` (``offset`` or below when it is ``baseMembership``).
  private(set) var membershipSlot: Slot = 0

  /// An empty log whose slots the founding `membership` governs.
  init(membership: Membership) {
    baseMembership = membership
    self.membership = membership
  }

  /// A log recovered from storage: every recovered entry is an accepted proposal, none known chosen beyond
  /// the snapshot. A snapshot without a recorded configuration has the founding `membership`.
  init(snapshot: PaxosSnapshot?, entries: [PaxosEntry], membership founding: Membership) {
    baseMembership = founding
    membership = founding
    if var snapshot {
      if snapshot.membership == nil { snapshot.membership = founding }
      self.snapshot = snapshot
      offset = snapshot.index
      chosenThrough = snapshot.index
      applying = snapshot.index
      baseMembership = snapshot.membership ?? founding
      membership = baseMembership
      membershipSlot = snapshot.index
    }
    for entry in entries where entry.index > offset {
      self[entry.index] = SlotRecord(entry: entry, chosen: false, acks: 0)
    }
  }

  /// The index of the snapshot, or 0.
  var snapshotIndex: Slot { snapshot?.index ?? 0 }

  /// The last slot holding a proposal (or the compaction point if none).
  var lastSlot: Slot { offset + Slot(records.count) }

  /// The record at `slot`, if held.
  subscript(slot: Slot) -> SlotRecord? {
    get {
      guard slot > offset, slot <= lastSlot else { return nil }
      return records[Int(slot - offset - 1)]
    }
    set {
      precondition(slot > offset, "writing slot \(slot) at or below the compaction point \(offset)")
      let position = Int(slot - offset - 1)
      let wasConfig = position < records.count && records[position]?.entry.kind == .membership
      let isConfig = newValue?.entry.kind == .membership
      if wasConfig != isConfig { noteConfig(at: slot, present: isConfig) }
      if position >= records.count {
        guard newValue != nil else { return }
        while records.count < position { records.append(nil) }
        records.append(newValue)
      } else {
        records[position] = newValue
        if newValue == nil { trimTrailingEmpty() }
      }
    }
  }

  private mutating func noteConfig(at slot: Slot, present: Bool) {
    let i = configSlots.firstIndex { $0 >= slot } ?? configSlots.count
    if present {
      if i == configSlots.count || configSlots[i] != slot { configSlots.insert(slot, at: i) }
    } else if i < configSlots.count && configSlots[i] == slot {
      configSlots.remove(at: i)
    }
  }

  /// The configuration the entry at `slot` carries, if it holds one.
  func configuration(at slot: Slot) -> Membership? { self[slot]?.entry.membership }

  /// The configuration in force after `slot` — the newest configuration entry at or before it, else
  /// ``baseMembership`` — for a slot at or above ``offset`` and at or below ``chosenThrough`` (where every
  /// record is chosen).
  func membership(through slot: Slot) -> Membership {
    for configSlot in configSlots.reversed() where configSlot <= slot {
      if let found = configuration(at: configSlot) { return found }
    }
    return baseMembership
  }

  /// Updates the record at `slot` in place, if held.
  mutating func update(_ slot: Slot, _ body: (inout SlotRecord) -> Void) {
    guard slot > offset, slot <= lastSlot else { return }
    let position = Int(slot - offset - 1)
    guard var record = records[position] else { return }
    records[position] = nil  // Keep the record uniquely referenced while it is mutated.
    body(&record)
    records[position] = record
  }

  private mutating func trimTrailingEmpty() {
    while let last = records.last, last == nil { records.removeLast() }
  }

  /// Marks `slot` chosen (its record must be held) and extends ``chosenThrough`` over the chosen run.
  /// Returns whether ``chosenThrough`` moved.
  @discardableResult
  mutating func markChosen(_ slot: Slot) -> Bool {
    update(slot) { $0.chosen = true }
    return extendChosen()
  }

  /// Extends ``chosenThrough`` over slots already marked chosen.
  @discardableResult
  mutating func extendChosen() -> Bool {
    let before = chosenThrough
    while let next = self[chosenThrough + 1], next.chosen {
      chosenThrough += 1
      if let configuration = next.entry.membership {
        membership = configuration
        membershipSlot = chosenThrough
      }
    }
    return chosenThrough != before
  }

  /// Whether there are chosen slots not yet handed out for applying.
  var hasChosenToApply: Bool { applying < chosenThrough }

  /// Takes the chosen entries after ``applying`` (at least one if any, then up to `maxBytes`).
  mutating func takeChosen(maxBytes: Int) -> [PaxosEntry] {
    guard applying < chosenThrough else { return [] }
    var out: [PaxosEntry] = []
    var bytes = 0
    var slot = applying + 1
    while slot <= chosenThrough {
      guard let record = self[slot] else { preconditionFailure("chosen slot \(slot) is not held") }
      bytes += record.entry.byteSize
      if !out.isEmpty && bytes > maxBytes { break }
      out.append(record.entry)
      slot += 1
    }
    applying = slot - 1
    return out
  }

  /// Records a snapshot taken after applying through `index` and drops the records up to
  /// `compactThrough` (at most `index`).
  mutating func compact(snapshot newSnapshot: PaxosSnapshot, through compactThrough: Slot) {
    precondition(newSnapshot.index <= applying, "snapshot at \(newSnapshot.index) beyond applied \(applying)")
    if newSnapshot.index > snapshotIndex {
      var recorded = newSnapshot
      if recorded.membership == nil { recorded.membership = membership(through: newSnapshot.index) }
      snapshot = recorded
    }
    let through = min(compactThrough, newSnapshot.index)
    guard through > offset else { return }
    baseMembership = membership(through: through)
    configSlots.removeAll { $0 <= through }
    let dropped = Int(min(through, lastSlot) - offset)
    records.removeFirst(dropped)
    offset = through
  }

  /// Installs a snapshot received from a leader: every slot up to its index is chosen and applied; records
  /// above it (accepted proposals) are kept.
  mutating func install(_ newSnapshot: PaxosSnapshot) {
    precondition(
      newSnapshot.index > chosenThrough, "installing snapshot \(newSnapshot.index) at or below \(chosenThrough)")
    let dropped = Int(min(newSnapshot.index, lastSlot) - offset)
    records.removeFirst(max(0, dropped))
    offset = newSnapshot.index
    configSlots.removeAll { $0 <= newSnapshot.index }
    // A snapshot without a configuration (from a leader that knows none) keeps the one known here.
    let configuration = newSnapshot.membership ?? membership
    snapshot = newSnapshot
    snapshot?.membership = configuration
    baseMembership = configuration
    membership = configuration
    membershipSlot = newSnapshot.index
    chosenThrough = newSnapshot.index
    applying = newSnapshot.index
    extendChosen()
  }

  /// The records from `from` through `through` that exist, in slot order.
  func entries(from: Slot, through: Slot) -> [PaxosEntry] {
    guard from <= through else { return [] }
    var out: [PaxosEntry] = []
    var slot = max(from, offset + 1)
    let last = min(through, lastSlot)
    while slot <= last {
      if let record = self[slot] { out.append(record.entry) }
      slot += 1
    }
    return out
  }
}
