public import QuorumCore

/// A snapshot of the state machine together with what Raft needs to resume from it (§7).
public struct RaftSnapshot: Sendable, Equatable, CustomStringConvertible {
  /// The last index the snapshot covers.
  public var index: LogIndex
  /// The term of the entry at ``index``.
  public var term: Term
  /// The membership in force at ``index``.
  public var membership: Membership
  /// The state machine's serialised state.
  public var data: [UInt8]

  /// Creates a snapshot.
  public init(index: LogIndex, term: Term, membership: Membership, data: [UInt8]) {
    self.index = index
    self.term = term
    self.membership = membership
    self.data = data
  }

  public var description: String { "snapshot \(index)@\(term) (\(data.count) bytes, \(membership))" }
}

/// The in-memory replicated log of one node: entries after the last compaction point, with the bookkeeping
/// of which are durable, committed and applied.
///
/// Entries before ``offset`` have been compacted into a snapshot; only the term at ``offset`` is kept so the
/// consistency check still works at the boundary. Memory is bounded by compaction, which the node shell
/// triggers by taking state-machine snapshots.
struct RaftLog: Sendable {
  /// The index just before the first entry held (the compaction point).
  private(set) var offset: LogIndex = 0
  /// The term of the entry at ``offset``.
  private(set) var offsetTerm: Term = 0
  /// Entries `offset + 1 ... lastIndex`.
  private(set) var entries: [LogEntry] = []
  /// The newest snapshot, kept to send to followers that fell behind the compaction point.
  private(set) var snapshot: RaftSnapshot?
  /// The highest index known committed.
  var committed: LogIndex = 0
  /// The highest index handed to the shell for applying.
  var applying: LogIndex = 0
  /// The first index not yet handed to the shell for persisting.
  private(set) var unstable: LogIndex = 1
  /// The highest index known durable.
  private(set) var persisted: LogIndex = 0
  /// A snapshot received from a leader that the shell has not persisted yet.
  private(set) var pendingSnapshot: RaftSnapshot?
  /// Whether installing ``pendingSnapshot`` kept the entries after its index.
  private(set) var pendingSnapshotKeptLog = false

  init() {}

  /// Rebuilds the log from durable state after a restart; everything given is durable.
  init(snapshot: RaftSnapshot?, entries: [LogEntry], committed: LogIndex) {
    if let snapshot {
      self.snapshot = snapshot
      offset = snapshot.index
      offsetTerm = snapshot.term
    }
    // Storage returns entries after the snapshot already; only filter (a full copy) when it did not.
    if let first = entries.first, first.index <= offset {
      self.entries = entries.filter { $0.index > offset }
    } else {
      self.entries = entries
    }
    precondition(
      self.entries.first.map { $0.index == offset + 1 } ?? true,
      "recovered log starts at \(self.entries.first?.index ?? 0), expected \(offset + 1)")
    persisted = lastIndex
    unstable = lastIndex + 1
    self.committed = min(max(committed, offset), lastIndex)
    applying = offset
  }

  /// Treats every held entry as not yet persisted (a freshly bootstrapped log the shell has not written).
  mutating func markUnpersisted() {
    persisted = offset
    unstable = offset + 1
  }

  var firstIndex: LogIndex { offset + 1 }
  var lastIndex: LogIndex { offset + LogIndex(entries.count) }
  var lastTerm: Term { entries.last?.term ?? offsetTerm }

  /// The term of the entry at `index`, or `nil` if it is compacted away or beyond the end.
  func term(at index: LogIndex) -> Term? {
    if index == offset { return offsetTerm }
    if index < offset || index > lastIndex { return nil }
    return entries[Int(index - offset - 1)].term
  }

  /// The index of the newest membership entry at or before `index` (and after the compaction point).
  func lastMembershipIndex(atOrBefore index: LogIndex) -> LogIndex? {
    guard index > offset else { return nil }
    var i = Int(min(index, lastIndex) - offset) - 1
    while i >= 0 {
      if entries[i].kind == .membership { return entries[i].index }
      i -= 1
    }
    return nil
  }

  func entry(at index: LogIndex) -> LogEntry? {
    guard index > offset, index <= lastIndex else { return nil }
    return entries[Int(index - offset - 1)]
  }

  func matchTerm(_ index: LogIndex, _ term: Term) -> Bool { self.term(at: index) == term }

  /// Raft §5.4.1: a candidate's log is at least as up to date as ours.
  func isUpToDate(lastIndex candidateIndex: LogIndex, lastTerm candidateTerm: Term) -> Bool {
    candidateTerm > lastTerm || (candidateTerm == lastTerm && candidateIndex >= lastIndex)
  }

  /// The largest index `<= index` whose term is `<= term` (used to skip a whole conflicting term at once).
  func findConflictByTerm(_ index: LogIndex, _ term: Term) -> (index: LogIndex, term: Term) {
    var i = min(index, lastIndex)
    while i > offset {
      let t = entries[Int(i - offset - 1)].term
      if t <= term { return (i, t) }
      i -= 1
    }
    return (offset, offsetTerm)
  }

  /// Entries `[from, to)` up to about `maxBytes` (always at least one), or `nil` if `from` is compacted.
  func slice(from: LogIndex, to: LogIndex, maxBytes: Int) -> [LogEntry]? {
    guard from > offset else { return nil }
    let end = min(to, lastIndex + 1)
    guard from < end else { return [] }
    let lo = Int(from - offset - 1)
    let hi = Int(end - offset - 1)
    var bytes = 0
    var cut = lo
    while cut < hi {
      bytes += entries[cut].byteSize
      if bytes > maxBytes && cut > lo { break }
      cut += 1
    }
    return Array(entries[lo..<cut])
  }

  /// Appends entries, discarding any existing suffix from the first new entry's index. Returns the new last index.
  @discardableResult
  mutating func append(_ new: some Collection<LogEntry>) -> LogIndex {
    guard let first = new.first else { return lastIndex }
    precondition(
      first.index > committed, "attempt to overwrite committed entry \(first.index) (commit \(committed))")
    precondition(first.index <= lastIndex + 1, "gap: appending \(first.index) after \(lastIndex)")
    if first.index <= lastIndex {
      entries.removeSubrange(Int(first.index - offset - 1)...)
      unstable = min(unstable, first.index)
      persisted = min(persisted, first.index - 1)
    }
    entries.append(contentsOf: new)
    return lastIndex
  }

  /// Appends one entry at the end.
  mutating func appendOne(_ entry: LogEntry) {
    precondition(entry.index == lastIndex + 1, "appending \(entry.index) after \(lastIndex)")
    entries.append(entry)
  }

  /// The follower side of AppendEntries: if the log matches at `prevIndex`/`prevTerm`, stores the entries
  /// that are new (§5.3: delete only on conflict, never truncate on a stale duplicate) and returns the index
  /// of the last entry the leader sent plus the first index written (nil if nothing changed); otherwise nil.
  mutating func maybeAppend(
    prevIndex: LogIndex, prevTerm: Term, entries new: [LogEntry]
  ) -> (lastNew: LogIndex, firstWritten: LogIndex?)? {
    if prevIndex < offset {
      // The entries up to `offset` are compacted here, so they are committed and the leader's agree with
      // them. Skip the part already covered and check the rest against the compaction point.
      let skip = Int(offset - prevIndex)
      guard skip < new.count else { return (prevIndex + LogIndex(new.count), nil) }
      guard let result = maybeAppend(prevIndex: offset, prevTerm: new[skip - 1].term, entries: Array(new[skip...]))
      else { return nil }
      return (prevIndex + LogIndex(new.count), result.firstWritten)
    }
    guard matchTerm(prevIndex, prevTerm) else { return nil }
    let lastNew = prevIndex + LogIndex(new.count)
    for (i, entry) in new.enumerated() {
      guard let existing = term(at: entry.index) else {
        append(new[i...])
        return (lastNew, entry.index)
      }
      if existing != entry.term {
        precondition(
          entry.index > committed,
          "conflict at committed index \(entry.index): have term \(existing), leader sent \(entry.term)")
        append(new[i...])
        return (lastNew, entry.index)
      }
    }
    return (lastNew, nil)
  }

  /// Hands out entries not yet given to the shell for persisting.
  mutating func takeUnstable() -> [LogEntry] {
    guard unstable <= lastIndex else { return [] }
    let result = Array(entries[Int(unstable - offset - 1)...])
    unstable = lastIndex + 1
    return result
  }

  /// Records that entries through `index` (of term `term`) are durable.
  mutating func persisted(through index: LogIndex, term: Term) {
    guard index > persisted, matchTerm(index, term), index < unstable else { return }
    persisted = index
  }

  /// Hands out the pending snapshot, if any, for the shell to persist and restore.
  mutating func takePendingSnapshot() -> RaftSnapshot? {
    defer { pendingSnapshot = nil }
    return pendingSnapshot
  }

  /// Committed entries not yet handed out for applying, up to `maxBytes` (at least one).
  mutating func takeCommitted(maxBytes: Int) -> [LogEntry] {
    let upper = min(committed, lastIndex)
    guard applying < upper else { return [] }
    let batch = slice(from: applying + 1, to: upper + 1, maxBytes: maxBytes) ?? []
    if let last = batch.last { applying = last.index }
    return batch
  }

  /// Whether committed entries are waiting to be handed out.
  var hasCommittedToApply: Bool { applying < min(committed, lastIndex) }

  /// Discards entries up to `index` (which `snapshot` covers) and keeps `snapshot` for sending.
  mutating func compact(through index: LogIndex, snapshot newSnapshot: RaftSnapshot) {
    precondition(index <= newSnapshot.index, "compacting past the snapshot")
    if newSnapshot.index > (snapshot?.index ?? 0) { snapshot = newSnapshot }
    guard index > offset else { return }
    precondition(index <= persisted && index <= applying, "compacting \(index) beyond persisted/applied")
    guard let t = term(at: index) else { return }
    entries.removeFirst(Int(index - offset))
    offset = index
    offsetTerm = t
  }

  /// The follower side of InstallSnapshot (§7): keeps entries after the snapshot if the log agrees with it
  /// there, otherwise discards the whole log. Returns whether later entries were kept.
  @discardableResult
  mutating func restore(_ newSnapshot: RaftSnapshot) -> Bool {
    let keep = matchTerm(newSnapshot.index, newSnapshot.term) && newSnapshot.index <= lastIndex
    if keep {
      entries.removeFirst(Int(newSnapshot.index - offset))
    } else {
      entries = []
    }
    offset = newSnapshot.index
    offsetTerm = newSnapshot.term
    snapshot = newSnapshot
    // Two installs before the shell persists: the stored log must be discarded if either discarded it.
    pendingSnapshotKeptLog = pendingSnapshot == nil ? keep : (pendingSnapshotKeptLog && keep)
    pendingSnapshot = newSnapshot
    committed = max(committed, newSnapshot.index)
    applying = max(applying, newSnapshot.index)
    unstable = max(unstable, newSnapshot.index + 1)
    if !keep { unstable = newSnapshot.index + 1 }
    persisted = keep ? max(persisted, newSnapshot.index) : newSnapshot.index
    return keep
  }
}
