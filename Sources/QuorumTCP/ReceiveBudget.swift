/// What a ``ReceiveBudget`` charges: a connection (or a stand-in, in tests). Loop thread only.
protocol ReceiveBudgetMember: AnyObject {
  /// The bytes charged to the budget for this member (kept by the budget: set by no one else).
  var charged: Int { get set }
  /// Lifts this member's pause for the budget: there is room again, or it was granted the overdraft. A no-op
  /// when its reading is not paused for the budget.
  func budgetAdmits()
}

/// The bytes of partly received frames held by a group of connections (an endpoint's clients), and the
/// connections waiting for room. Loop thread only.
///
/// Bytes are charged as they arrive, never reserved from a frame's announced length (four bytes of header must
/// not hold the budget). Once it is spent, a connection between frames may still read a little, so small
/// requests pass; a connection in the middle of a frame waits — all but one. The *overdraft* goes to the
/// connection that has waited longest: it reads past the limit to the end of its current frame and no further.
/// That frame's completion frees its bytes, and the overdraft passes on, in the order the connections began to
/// wait, so frames in progress always finish. (Without it, when many clients uploaded large frames at once,
/// every connection held part of a frame, the budget was spent, all stopped mid-frame and none could finish to
/// make room: they sat until the frame timeout closed them.)
///
/// Bound: the overdraft passes on only when its holder's frame ends (or the holder closes), and that frame's
/// length was checked against the largest frame when its header was parsed, so the members hold at most the
/// limit plus one largest frame (with its length prefix and authentication code), plus 64 KiB per member and
/// 64 KiB more (the small reads between frames, and
/// the read that crosses the limit; see ``Connection``'s reading). A holder whose reading pauses for another
/// reason (its replies are not being read) keeps the overdraft: passing it on would let a second frame past the
/// limit while the first still holds its bytes. (It cannot pause for a full receiver in the middle of the frame:
/// that pause follows a delivered frame, and the holder reads no further than its frame's end.)
///
/// Order: a member keeps its place in the queue from the first time it waits inside a frame until that frame
/// ends, also when it is woken because room was made and finds the budget spent again; newcomers queue behind
/// it. A holder of the overdraft that stops sending holds up the others' waiting frames until its own frame
/// times out (``TCPTransportOptions/frameTimeout``, which runs while its frame is being read or waits for its
/// replies to be read, but not while it waits in line here), as any slow client holding part of a frame could;
/// then the overdraft passes on. A frame's wait in line is bounded on its own
/// (``TCPTransportOptions/maxReceiveBudgetWait``).
final class ReceiveBudget<Member: ReceiveBudgetMember> {
  /// A queued member, and whether it is paused waiting (not yet woken).
  private struct Waiter {
    let member: Member
    var asleep: Bool
  }

  let limit: Int
  private(set) var used = 0
  /// The members that found the budget spent in the middle of a frame, longest waiting first, each until that
  /// frame ends (woken ones too: they keep their place). No member is in it twice (`queued`).
  private var queue: [Waiter] = []
  private var queued: Set<ObjectIdentifier> = []
  /// How many of `queue` are asleep.
  private var asleep = 0
  /// The member that may read past the limit until its current frame ends.
  private(set) var overdraft: Member?
  private let metrics: MetricsCounters?

  init(limit: Int, metrics: MetricsCounters? = nil) {
    self.limit = limit
    self.metrics = metrics
  }

  var isSpent: Bool { used >= limit }

  /// The members queued for the overdraft, longest waiting first (for tests and failure reports).
  var waiting: [Member] { queue.map(\.member) }

  /// Records that `member` now holds `bytes`; `frameEnded` says that the frame it held before (if any) has
  /// ended, so it leaves the queue or gives up the overdraft (the bytes it still holds begin a new frame).
  func charge(_ member: Member, bytes: Int, frameEnded: Bool) {
    let before = member.charged
    used += bytes - before
    if bytes > before, let metrics { metrics.raise(metrics.largestClientReceiveBuffer, to: used) }
    member.charged = bytes
    if frameEnded { leave(member) }
    settle()
  }

  /// Whether `member`, in the middle of a frame with the budget spent, may read on to the end of that frame: it
  /// holds the overdraft (given now if it is free and `member` has waited longest). If not, `member` is queued
  /// (keeping its place if it already is) and must pause until ``ReceiveBudgetMember/budgetAdmits()``.
  func mayOverdraw(_ member: Member) -> Bool {
    if overdraft === member { return true }
    if queued.insert(ObjectIdentifier(member)).inserted {
      queue.append(Waiter(member: member, asleep: false))
    }
    settle()
    if overdraft === member { return true }
    if let index = queue.firstIndex(where: { $0.member === member }), !queue[index].asleep {
      queue[index].asleep = true
      asleep += 1
    }
    return false
  }

  /// Forgets `member` (closed or moved to another budget), with what it held.
  func release(_ member: Member) {
    leave(member)
    used -= member.charged
    member.charged = 0
    settle()
  }

  /// Takes `member` out of the queue and back from the overdraft.
  private func leave(_ member: Member) {
    if overdraft === member { overdraft = nil }
    guard !queue.isEmpty, queued.remove(ObjectIdentifier(member)) != nil,
      let index = queue.firstIndex(where: { $0.member === member })
    else { return }
    if queue[index].asleep { asleep -= 1 }
    queue.remove(at: index)
  }

  /// Spent: gives a free overdraft to the member waiting longest. Under the limit: wakes the members asleep (they
  /// keep their places, and read again as they find room).
  private func settle() {
    if isSpent {
      guard overdraft == nil, !queue.isEmpty else { return }
      let first = queue.removeFirst()
      queued.remove(ObjectIdentifier(first.member))
      if first.asleep { asleep -= 1 }
      // Set before the wake-up, which may charge (and so settle) again.
      overdraft = first.member
      first.member.budgetAdmits()
    } else if asleep > 0 {
      var woken: [Member] = []
      for index in queue.indices where queue[index].asleep {
        queue[index].asleep = false
        woken.append(queue[index].member)
      }
      asleep = 0
      for member in woken { member.budgetAdmits() }
    }
  }
}
