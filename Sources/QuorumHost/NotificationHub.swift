public import QuorumCore
import Synchronization

/// What a host's groups told waiting clients lately, and the clients waiting for it.
///
/// Each group's replica hands the host what its services notify as it applies entries (a lock granted to a waiter,
/// a session expired), with the entry's position. The hub keeps the newest notifications of each group in a
/// bounded ring and wakes the clients watching one of their keys. A client that asks for notifications after a
/// position it already knows gets the ones it missed at once, so nothing falls between an answer and the next
/// watch; one that comes back after the ring moved on (or to a restarted member) learns the state by a query.
public final class NotificationHub: Sendable {
  /// One notification as the hub keeps it.
  public struct Record: Sendable, Equatable {
    /// The position of the entry that produced it.
    public var index: UInt64
    /// The service that produced it.
    public var service: String
    /// The keys it can be watched by.
    public var keys: [String]
    /// The service's notification, encoded.
    public var payload: [UInt8]
  }

  private struct Waiter {
    var group: GroupID
    var service: String
    var key: String
    var deliver: @Sendable ([Record]) -> Void
    /// Ends the wait, empty, at its timeout; cancelled when the wait ends otherwise.
    var timer: Task<Void, Never>?
  }

  /// A group's newest notifications in a circular buffer: appending never copies or shifts the older ones (the
  /// hub publishes inside the apply path, for every entry that notifies).
  private struct Ring {
    var records: [Record] = []
    /// Where the oldest record is, once the buffer is full.
    var oldest = 0

    mutating func append(_ record: Record, capacity: Int) {
      guard records.count >= capacity else {
        records.append(record)
        return
      }
      records[oldest] = record
      oldest = (oldest + 1) % records.count
    }

    /// The records after position `after` with `service` and `key`, oldest first. Records are appended in
    /// position order, so only those after `after` are looked at, newest first: a client watching from the
    /// position it last saw costs what it missed, not the whole ring.
    func hits(after: UInt64, service: String, key: String) -> [Record] {
      var hits: [Record] = []
      var offset = records.count
      while offset > 0 {
        offset -= 1
        let record = records[(oldest + offset) % records.count]
        guard record.index > after else { break }
        if record.service == service && record.keys.contains(key) { hits.append(record) }
      }
      hits.reverse()
      return hits
    }
  }

  private struct State {
    var rings: [GroupID: Ring] = [:]
    var waiters: [UInt64: Waiter] = [:]
    var nextWaiter: UInt64 = 0
  }

  private let state = Mutex(State())
  /// The most notifications kept per group.
  public let capacity: Int

  /// Creates a hub keeping the newest `capacity` notifications of each group.
  public init(capacity: Int = 4096) { self.capacity = max(1, capacity) }

  /// Records what `group` produced applying the entry at `index`, and wakes the clients watching its keys.
  public func publish(group: GroupID, index: UInt64, _ notifications: [ServiceNotification]) {
    let records = notifications.map { Record(index: index, service: $0.service, keys: $0.keys, payload: $0.payload) }
    let woken = state.withLock { s -> [(Waiter, [Record])] in
      for record in records { s.rings[group, default: Ring()].append(record, capacity: capacity) }
      var woken: [(Waiter, [Record])] = []
      for id in s.waiters.keys.sorted() {
        guard let waiter = s.waiters[id], waiter.group == group else { continue }
        let hits = records.filter { $0.service == waiter.service && $0.keys.contains(waiter.key) }
        guard !hits.isEmpty else { continue }
        s.waiters[id] = nil
        woken.append((waiter, hits))
      }
      return woken
    }
    for (waiter, hits) in woken {
      waiter.timer?.cancel()
      waiter.deliver(hits)
    }
  }

  /// Hands `deliver`, exactly once, the notifications of `service` in `group` with `key` produced after position
  /// `after`: those the hub already holds at once (on the caller's thread), otherwise the next ones to come (on
  /// the thread that publishes them: the group's apply path), or none once `timeout` of `clock`'s time has
  /// passed. Nothing waits meanwhile but a sleeping timer task, so a host answers a watch the moment the entry
  /// it waits for is applied, with no task to wake on the way. Returns the wait's identifier for ``end(_:)`` (0
  /// if it ended at once).
  @discardableResult
  public func watch(
    group: GroupID, service: String, key: String, after: UInt64, timeout: Duration, clock: any NodeClock,
    deliver: @escaping @Sendable ([Record]) -> Void
  ) -> UInt64 {
    let registered = state.withLock { s -> (id: UInt64, held: [Record]?) in
      let hits = s.rings[group]?.hits(after: after, service: service, key: key) ?? []
      if !hits.isEmpty { return (0, hits) }
      s.nextWaiter += 1
      s.waiters[s.nextWaiter] = Waiter(group: group, service: service, key: key, deliver: deliver)
      return (s.nextWaiter, nil)
    }
    if let held = registered.held {
      deliver(held)
      return 0
    }
    let id = registered.id
    // A timer that fires before it is stored here finds the wait and ends it; one stored after the wait ended is
    // cancelled at once. Either way the wait ends once.
    let timer = Task { [self] in
      try? await clock.sleep(for: timeout)
      end(id)
    }
    let ended = state.withLock { s -> Bool in
      guard s.waiters[id] != nil else { return true }
      s.waiters[id]?.timer = timer
      return false
    }
    if ended { timer.cancel() }
    return id
  }

  /// Ends the wait `id` (from ``watch(group:service:key:after:timeout:clock:deliver:)``) now, with no
  /// notifications, if it still waits.
  public func end(_ id: UInt64) {
    let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
    waiter?.timer?.cancel()
    waiter?.deliver([])
  }

  /// The notifications of `service` in `group` with `key` produced after position `after`: those the hub already
  /// holds at once, otherwise the next ones to come, or none after `timeout` of `clock`'s time (or once the task
  /// is cancelled).
  public func wait(
    group: GroupID, service: String, key: String, after: UInt64, timeout: Duration, clock: any NodeClock
  ) async -> [Record] {
    let cancellation = WaitCancellation()
    return await withTaskCancellationHandler {
      await withUnsafeContinuation { (continuation: UnsafeContinuation<[Record], Never>) in
        let id = watch(group: group, service: service, key: key, after: after, timeout: timeout, clock: clock) {
          continuation.resume(returning: $0)
        }
        if cancellation.register(id) { end(id) }
      }
    } onCancel: {
      if let id = cancellation.cancel() { end(id) }
    }
  }

  /// The wait a cancelled task must end: whichever of registering and cancelling comes second ends it.
  private final class WaitCancellation: Sendable {
    private let state = Mutex<(id: UInt64?, cancelled: Bool)>((nil, false))

    /// Records the wait; returns whether the task was already cancelled.
    func register(_ id: UInt64) -> Bool {
      state.withLock { s in
        s.id = id
        return s.cancelled
      }
    }

    /// Marks the task cancelled; returns the wait to end, if it registered.
    func cancel() -> UInt64? {
      state.withLock { s in
        s.cancelled = true
        return s.id
      }
    }
  }
}
