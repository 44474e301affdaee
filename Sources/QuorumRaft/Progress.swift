import QuorumCore

/// The leader's view of one follower's replication (as in etcd-io/raft's tracker, written afresh).
struct Progress: Sendable {
  enum State: Sendable, Equatable, CustomStringConvertible {
    /// Sending one AppendEntries at a time until the follower's match point is found.
    case probe
    /// Streaming entries optimistically, bounded by the in-flight window.
    case replicate
    /// Sending a snapshot; appends paused.
    case snapshot

    var description: String {
      switch self {
      case .probe: return "probe"
      case .replicate: return "replicate"
      case .snapshot: return "snapshot"
      }
    }
  }

  /// The highest index known replicated on the follower.
  var match: LogIndex = 0
  /// The next index to send.
  var next: LogIndex
  var state: State = .probe
  /// In probe state: an AppendEntries is outstanding.
  var probeSent = false
  /// In snapshot state: the index of the snapshot being sent and the acknowledged offset.
  var pendingSnapshot: LogIndex = 0
  var snapshotOffset: UInt64 = 0
  var snapshotIdleTicks = 0
  /// Heard from the follower since the last check-quorum round.
  var recentActive = false
  /// Whether the follower is a learner.
  var isLearner: Bool
  /// The newest read round the follower acknowledged (ReadIndex and leases).
  var ackedRound: UInt64 = 0
  /// The index of the snapshot the follower refused (it is larger than the follower accepts), or 0. The leader
  /// does not send that snapshot again until ``refusedSnapshotTicks`` reaches its back-off.
  var refusedSnapshot: LogIndex = 0
  /// Leader ticks since the follower refused ``refusedSnapshot``.
  var refusedSnapshotTicks = 0
  /// Why the follower is not sent a snapshot, for status displays; `nil` when nothing was refused.
  var snapshotRefusal: String?
  var inflights: Inflights

  init(next: LogIndex, isLearner: Bool, maxInflightMessages: Int, maxInflightBytes: Int) {
    self.next = next
    self.isLearner = isLearner
    self.inflights = Inflights(maxCount: maxInflightMessages, maxBytes: maxInflightBytes)
  }

  var isPaused: Bool {
    switch state {
    case .probe: return probeSent
    case .replicate: return inflights.isFull
    case .snapshot: return true
    }
  }

  mutating func becomeProbe() {
    if state == .snapshot {
      next = max(match + 1, pendingSnapshot + 1)
    } else {
      next = match + 1
    }
    state = .probe
    probeSent = false
    pendingSnapshot = 0
    inflights.reset()
  }

  mutating func becomeReplicate() {
    state = .replicate
    next = match + 1
    probeSent = false
    inflights.reset()
  }

  mutating func becomeSnapshot(_ index: LogIndex) {
    state = .snapshot
    pendingSnapshot = index
    snapshotOffset = 0
    snapshotIdleTicks = 0
    probeSent = false
    inflights.reset()
  }

  /// Records an acknowledgement of `index`; returns whether it advanced the match point.
  mutating func maybeUpdate(_ index: LogIndex) -> Bool {
    var updated = false
    if match < index {
      match = index
      updated = true
      probeSent = false
    }
    next = max(next, index + 1)
    return updated
  }

  /// Handles a rejection of `rejected` with the leader-computed probe point `hint`; returns whether the
  /// rejection was current (not a stale duplicate).
  mutating func maybeDecrease(rejected: LogIndex, hint: LogIndex) -> Bool {
    if state == .replicate {
      if rejected <= match { return false }
      next = match + 1
      return true
    }
    if next == 0 || next - 1 != rejected { return false }
    next = max(min(rejected, hint + 1), match + 1)
    probeSent = false
    return true
  }

  /// Records that entries through `last` (of `bytes` bytes) were sent.
  mutating func sentEntries(last: LogIndex, bytes: Int) {
    switch state {
    case .replicate:
      next = last + 1
      inflights.add(last, bytes: bytes)
    case .probe:
      probeSent = true
    case .snapshot:
      break
    }
  }
}

/// The bounded window of AppendEntries messages sent but not acknowledged, by count and by bytes.
struct Inflights: Sendable {
  private var queue: [(index: LogIndex, bytes: Int)] = []
  private var head = 0
  private(set) var bytes = 0
  let maxCount: Int
  let maxBytes: Int

  init(maxCount: Int, maxBytes: Int) {
    self.maxCount = maxCount
    self.maxBytes = maxBytes
  }

  var count: Int { queue.count - head }
  var isFull: Bool { count >= maxCount || (maxBytes > 0 && bytes >= maxBytes) }

  mutating func add(_ index: LogIndex, bytes size: Int) {
    queue.append((index, size))
    bytes += size
  }

  /// Frees every message whose last index is `<= index`.
  mutating func free(through index: LogIndex) {
    while head < queue.count, queue[head].index <= index {
      bytes -= queue[head].bytes
      head += 1
    }
    if head == queue.count {
      queue.removeAll(keepingCapacity: true)
      head = 0
    } else if head > 64 && head * 2 > queue.count {
      queue.removeFirst(head)
      head = 0
    }
  }

  /// Frees the oldest message in the window.
  mutating func freeFirst() {
    guard head < queue.count else { return }
    free(through: queue[head].index)
  }

  mutating func reset() {
    queue.removeAll(keepingCapacity: true)
    head = 0
    bytes = 0
  }
}

/// Majority arithmetic over (possibly joint) configurations.
enum QuorumMath {
  /// The largest value that a majority of `voters` have reached (`value(of:)` gives each voter's value).
  static func majorityValue(_ voters: Set<NodeID>, _ value: (NodeID) -> UInt64) -> UInt64 {
    guard !voters.isEmpty else { return .max }  // An empty half never constrains (non-joint configs).
    var values = voters.map(value)
    values.sort(by: >)
    return values[values.count / 2]
  }

  /// The largest value reached by a majority of each half of `membership`.
  static func committedValue(_ membership: Membership, _ value: (NodeID) -> UInt64) -> UInt64 {
    let incoming = majorityValue(membership.voters, value)
    let outgoing = majorityValue(membership.outgoingVoters, value)
    return min(incoming, outgoing)
  }

  enum VoteResult: Equatable { case won, lost, pending }

  /// The outcome of an election in one half.
  static func tally(_ voters: Set<NodeID>, _ votes: [NodeID: Bool]) -> VoteResult {
    guard !voters.isEmpty else { return .won }
    var granted = 0
    var rejected = 0
    for v in voters {
      switch votes[v] {
      case true?: granted += 1
      case false?: rejected += 1
      case nil: break
      }
    }
    let majority = voters.count / 2 + 1
    if granted >= majority { return .won }
    if rejected > voters.count - majority { return .lost }
    return .pending
  }

  /// The outcome of an election in a (possibly joint) configuration: both halves must be won.
  static func tally(_ membership: Membership, _ votes: [NodeID: Bool]) -> VoteResult {
    let a = tally(membership.voters, votes)
    let b = tally(membership.outgoingVoters, votes)
    if a == .lost || b == .lost { return .lost }
    if a == .won && b == .won { return .won }
    return .pending
  }
}
