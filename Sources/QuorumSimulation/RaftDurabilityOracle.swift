import QuorumCore
import QuorumRaft
import QuorumStorage

/// Raft's "acknowledged ⇒ durable" rules, checked against what a node's disk really holds.
///
/// Raft's safety rests on promises kept across crashes: a vote granted in a term, a term seen, an entry
/// acknowledged to a leader. A node may make such a promise only once its disk holds what it promises (§5.1 and
/// Figure 2's "updated on stable storage before responding to RPCs"). A node that sends first and writes after
/// breaks Raft only when a crash lands in the gap and several other faults follow in the right order, which a
/// nemesis acting every few hundred milliseconds almost never arranges. So the simulations check the promise
/// itself, at the moment it is made: every message a node sends is compared with its disk's durable image, and
/// every entry a leader commits must be durable on a quorum of its voters.
enum RaftDurability {
  /// What one node's disk holds durably: what a restart would find.
  struct Durable {
    /// The durable hard state (term and vote); the zero state when none was written.
    var hardState: HardState
    /// The index of the durable snapshot; 0 when there is none.
    var snapshotIndex: LogIndex
    /// The disk's durable image: the entries after the snapshot, ascending and contiguous.
    let image: SimulatedDisk<LogEntry>.Image

    /// Reads a disk's image; nil when its hard state does not decode (itself a failure of the node).
    init?(_ image: SimulatedDisk<LogEntry>.Image) {
      guard let hardState = image.hardState.map({ try? HardState(wireBytes: $0) }) ?? HardState() else {
        return nil
      }
      self.hardState = hardState
      self.snapshotIndex = image.snapshot?.index ?? 0
      self.image = image
    }

    /// The index of the last durable entry; 0 when there is none.
    var lastIndex: LogIndex { image.entries.last?.index ?? 0 }

    /// Whether the disk holds the entry at `index` (of `term`, when given), or a snapshot that covers it.
    func holds(_ index: LogIndex, term: Term? = nil) -> Bool {
      if index == 0 || index <= snapshotIndex { return true }
      let position = image.lowerBound(index)
      guard position < image.entries.count, image.entries[position].index == index else { return false }
      return term.map { image.entries[position].term == $0 } ?? true
    }
  }

  /// Why `message`, sent by `sender` to `receiver` now, promises more than the sender's disk holds; nil when the
  /// disk holds everything the message promises.
  ///
  /// - A vote request, a vote or a refusal, and any answer to a leader carry a term the sender must have made
  ///   durable (a pre-vote promises nothing and is exempt).
  /// - A vote granted in term `t` needs the durable vote for the candidate in `t` (or a later durable term).
  /// - An acknowledged append (or installed snapshot) through index `i` in term `t` needs the entry at `i` on disk,
  ///   of the term `promisedTerm(t, i)` gives when it knows it (the term of the entry term `t`'s leader sent at
  ///   `i`), or a durable snapshot covering it: an entry of another term there, which the append replaces, does
  ///   not count.
  ///
  /// - A leader's replication carries its term, which must be durable too: it may leave before the leader's
  ///   write of the entries it carries (§10.2.1 of Ongaro's thesis; ``eagerViolation(_:term:ledTerm:)`` checks
  ///   which messages do), but never before the write of the term it was elected in.
  static func violation(
    of message: RaftMessage, from sender: NodeID, to receiver: NodeID, durable: Durable,
    promisedTerm: (_ term: Term, _ index: LogIndex) -> Term? = { _, _ in nil }
  ) -> String? {
    let hs = durable.hardState
    func termNotDurable(_ term: Term) -> String? {
      hs.term >= term ? nil : "\(sender) sent \(message) to \(receiver) with durable term \(hs.term) only"
    }
    switch message {
    case .requestVote(let m):
      guard !m.preVote else { return nil }
      if hs.term > m.term || (hs.term == m.term && hs.vote == sender) { return nil }
      return "\(sender) asked for votes in term \(m.term) before its own vote there was durable (durable \(hs))"
    case .voteResponse(let m):
      guard !m.preVote else { return nil }
      guard m.granted else { return termNotDurable(m.term) }
      if hs.term > m.term || (hs.term == m.term && hs.vote == receiver) { return nil }
      return "\(sender) granted \(receiver) its vote in term \(m.term) before the vote was durable (durable \(hs))"
    case .appendResponse(let m):
      if let failure = termNotDurable(m.term) { return failure }
      guard !m.reject else { return nil }
      let entryTerm = promisedTerm(m.term, m.index)
      guard !durable.holds(m.index, term: entryTerm) else { return nil }
      return
        "\(sender) acknowledged entries through \(m.index)\(entryTerm.map { "@\($0)" } ?? "") to \(receiver) in term "
        + "\(m.term) before they were durable (durable snapshot \(durable.snapshotIndex), last durable entry "
        + "\(durable.lastIndex))"
    case .heartbeatResponse(let m):
      return termNotDurable(m.term)
    case .snapshotResponse(let m):
      return termNotDurable(m.term)
    case .appendEntries(let m):
      return termNotDurable(m.term)
    case .heartbeat(let m):
      return termNotDurable(m.term)
    case .installSnapshot(let m):
      return termNotDurable(m.term)
    case .timeoutNow(let term):
      return termNotDurable(term)
    }
  }

  /// Why a ready's eager messages — sent before its write is durable — break the rule; nil when they do not.
  /// Only a leader's replication in the term it leads may leave early (`ledTerm`: the node led `term`, perhaps
  /// only until a step-down within this ready): it promises nothing about the leader's disk, and the leader counts
  /// itself towards a quorum only after its write.
  static func eagerViolation(_ eager: [RaftOutgoing], term: Term, ledTerm: Bool) -> String? {
    for outgoing in eager {
      switch outgoing.message {
      case .appendEntries, .heartbeat, .installSnapshot, .timeoutNow:
        if ledTerm && outgoing.message.term == term { continue }
        return
          "sent \(outgoing) before its write was durable in term \(term)\(ledTerm ? "" : ", which it did not lead")"
      default:
        return "sent \(outgoing) before its write was durable: only a leader's replication may leave early"
      }
    }
    return nil
  }

  /// Whether the nodes holding the entry at `index` of `term` durably make a quorum of `membership` (both
  /// majorities of a joint configuration).
  static func durableQuorum(
    _ index: LogIndex, term: Term, membership: Membership, durable: (NodeID) -> Durable?
  ) -> Bool {
    func majority(_ voters: Set<NodeID>) -> Bool {
      voters.isEmpty || voters.filter { durable($0)?.holds(index, term: term) ?? false }.count > voters.count / 2
    }
    return majority(membership.voters) && majority(membership.outgoingVoters)
  }
}
