public import QuorumCore
import Synchronization

/// What a host's groups told waiting clients lately, and the clients waiting for it.
///
/// Each group's replica hands the host what its services notify as it applies entries (a lock granted to a waiter,
/// a session expired), with the entry's position. The hub keeps the newest notifications of each group in a
/// bounded ring and wakes the clients watching one of their keys. A client that asks for notifications after a
/// position it already knows gets the ones it missed at once, so nothing falls between an answer and the next
/// watch.
///
/// Some notifications cannot be handed out: those the ring dropped to make room, and those of the entries a
/// snapshot covers when the replica installs or recovers one (its state jumps past them without applying them;
/// a restarted member starts from its snapshot). The hub keeps, per group, the position at or below which
/// notifications may be missing (``Answer/truncatedThrough``): a wait from before it is answered at once with that
/// position and no notifications, and so is a wait under way when a snapshot moves the position past it, so the
/// client reads the state it watches (which includes what it missed) instead of waiting for notifications that
/// will never come.
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

  /// What a wait found.
  public struct Answer: Sendable, Equatable {
    /// The notifications after the wait's position, oldest first; none when the wait timed out or when
    /// ``truncatedThrough`` is set.
    public var records: [Record]
    /// Set when notifications after the wait's position may be missing: those produced up to and including this
    /// position (past the wait's) cannot be handed out. Read the watched state, then wait after this position.
    public var truncatedThrough: UInt64?

    /// Creates an answer.
    public init(records: [Record], truncatedThrough: UInt64? = nil) {
      self.records = records
      self.truncatedThrough = truncatedThrough
    }
  }

  private struct Waiter {
    var group: GroupID
    var service: String
    var key: String
    /// The wait is for notifications after this position only.
    var after: UInt64
    var continuation: UnsafeContinuation<Answer, Never>
  }

  /// A group's newest notifications in a circular buffer: appending never copies or shifts the older ones (the
  /// hub publishes inside the apply path, for every entry that notifies).
  private struct Ring {
    var records: [Record] = []
    /// Where the oldest record is, once the buffer is full.
    var oldest = 0

    /// Appends `record`; returns the position of the record dropped to make room, if one was.
    mutating func append(_ record: Record, capacity: Int) -> UInt64? {
      guard records.count >= capacity else {
        records.append(record)
        return nil
      }
      let dropped = records[oldest].index
      records[oldest] = record
      oldest = (oldest + 1) % records.count
      return dropped
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

  /// What a waiter watches: its waiters are found by it, so a notification costs the waits on its own keys.
  private struct Watched: Hashable {
    var group: GroupID
    var service: String
    var key: String
  }

  private struct State {
    var rings: [GroupID: Ring] = [:]
    /// Per group, the position at or below which notifications may be missing (absent: none are). Records are
    /// appended in position order and dropped oldest first, so the ring holds every notification after it.
    var floors: [GroupID: UInt64] = [:]
    var waiters: [UInt64: Waiter] = [:]
    /// The registered waiters of each watched key.
    var byKey: [Watched: Set<UInt64>] = [:]
    /// Waits whose timeout fired before they registered (or after they ended): they must not register.
    var timedOut: Set<UInt64> = []
    var nextWaiter: UInt64 = 0
    /// Waits begun and not yet ended (registered or not): at most ``NotificationHub/maxWaits``.
    var waits = 0
    /// The waits under way of each authenticated principal: at most ``NotificationHub/maxWaitsPerPrincipal``.
    var waitsByPrincipal: [String: Int] = [:]

    mutating func register(_ id: UInt64, _ waiter: Waiter) {
      waiters[id] = waiter
      byKey[Watched(group: waiter.group, service: waiter.service, key: waiter.key), default: []].insert(id)
    }

    mutating func unregister(_ id: UInt64) -> Waiter? {
      guard let waiter = waiters.removeValue(forKey: id) else { return nil }
      let watched = Watched(group: waiter.group, service: waiter.service, key: waiter.key)
      byKey[watched]?.remove(id)
      if byKey[watched]?.isEmpty == true { byKey[watched] = nil }
      return waiter
    }
  }

  private let state = Mutex(State())
  /// The most notifications kept per group.
  public let capacity: Int
  /// The most waits at once; past it a wait is refused (``QuorumCore/ConsensusError/overloaded(limit:)``).
  public let maxWaits: Int
  /// The most waits one authenticated principal may have under way at once, so that one client cannot take every
  /// slot and leave the others' lock waits refused. Unauthenticated waits count only against ``maxWaits``:
  /// nothing tells their owners apart.
  public let maxWaitsPerPrincipal: Int

  /// Creates a hub keeping the newest `capacity` notifications of each group, with at most `maxWaits` waits at
  /// once, and at most `maxWaitsPerPrincipal` (an eighth of `maxWaits` by default) of one principal.
  public init(capacity: Int = 4096, maxWaits: Int = 65_536, maxWaitsPerPrincipal: Int? = nil) {
    self.capacity = max(1, capacity)
    self.maxWaits = max(1, maxWaits)
    self.maxWaitsPerPrincipal = max(1, min(self.maxWaits, maxWaitsPerPrincipal ?? self.maxWaits / 8))
  }

  /// The waits under way (begun and not yet ended).
  var waitsUnderWay: Int { state.withLock { $0.waits } }

  /// Records what `group` produced applying the entry at `index`, and wakes the clients watching its keys from a
  /// position before it. A client may watch a member that lags behind what the client has seen elsewhere: that
  /// member's entries at or before the watch's position do not wake it.
  public func publish(group: GroupID, index: UInt64, _ notifications: [ServiceNotification]) {
    let records = notifications.map { Record(index: index, service: $0.service, keys: $0.keys, payload: $0.payload) }
    let woken = state.withLock { s -> [(UnsafeContinuation<Answer, Never>, Answer)] in
      for record in records {
        if let dropped = s.rings[group, default: Ring()].append(record, capacity: capacity) {
          s.floors[group] = max(s.floors[group] ?? 0, dropped)
        }
      }
      var matched: Set<UInt64> = []
      for record in records {
        for key in record.keys {
          if let ids = s.byKey[Watched(group: group, service: record.service, key: key)] { matched.formUnion(ids) }
        }
      }
      guard !matched.isEmpty else { return [] }
      var woken: [(UnsafeContinuation<Answer, Never>, Answer)] = []
      for id in matched.sorted() where s.waiters[id].map({ index > $0.after }) == true {
        guard let waiter = s.unregister(id) else { continue }
        let hits = records.filter { $0.service == waiter.service && $0.keys.contains(waiter.key) }
        woken.append((waiter.continuation, Answer(records: hits)))
      }
      return woken
    }
    for (continuation, answer) in woken { continuation.resume(returning: answer) }
  }

  /// Records that `group`'s notifications up to and including `index` may be missing: its replica replaced its
  /// state by a snapshot of that position (installed from the leader, or recovered at start), so the entries the
  /// snapshot covers will not be applied here. The waits on `group` from before `index` are answered at once,
  /// truncated; so is every later wait from before it.
  public func reset(group: GroupID, through index: UInt64) {
    let (woken, floor) = state.withLock { s -> ([UnsafeContinuation<Answer, Never>], UInt64) in
      // Even below the floor: a waiter registered before the ring's drops raised it missed nothing they dropped,
      // but it misses the entries the snapshot skips.
      let floor = max(s.floors[group] ?? 0, index)
      s.floors[group] = floor
      let behind = s.waiters.filter { $0.value.group == group && $0.value.after < index }.keys.sorted()
      return (behind.compactMap { s.unregister($0)?.continuation }, floor)
    }
    for continuation in woken { continuation.resume(returning: Answer(records: [], truncatedThrough: floor)) }
  }

  /// The position at or below which `group`'s notifications may be missing (0: none are).
  func floor(of group: GroupID) -> UInt64 { state.withLock { $0.floors[group] ?? 0 } }

  /// The notifications of `service` in `group` with `key` produced after position `after`: those the hub already
  /// holds at once, otherwise the next ones to come, or none after `timeout` of `clock`'s time. When some of them
  /// may be missing (``Answer/truncatedThrough``), the answer says so at once, with no notifications.
  /// - Throws: ``QuorumCore/ConsensusError/overloaded(limit:)`` when ``maxWaits`` waits are already under way, or
  ///   ``maxWaitsPerPrincipal`` of `principal`'s (the limit named is the one reached).
  public func wait(
    group: GroupID, service: String, key: String, after: UInt64, timeout: Duration, clock: any NodeClock,
    principal: String? = nil
  ) async throws(ConsensusError) -> Answer {
    let begun = state.withLock { s -> Result<UInt64, ConsensusError> in
      guard s.waits < maxWaits else { return .failure(.overloaded(limit: maxWaits)) }
      if let principal {
        guard s.waitsByPrincipal[principal, default: 0] < maxWaitsPerPrincipal else {
          return .failure(.overloaded(limit: maxWaitsPerPrincipal))
        }
        s.waitsByPrincipal[principal, default: 0] += 1
      }
      s.waits += 1
      s.nextWaiter += 1
      return .success(s.nextWaiter)
    }
    let id = try begun.get()
    // The two tasks below race: the timeout may fire before the wait has registered. Whichever comes second
    // sees what the first left (a registered waiter, or the mark of a timeout), so the wait always ends.
    defer {
      state.withLock { s in
        _ = s.timedOut.remove(id)
        s.waits -= 1
        if let principal {
          let left = s.waitsByPrincipal[principal, default: 1] - 1
          s.waitsByPrincipal[principal] = left > 0 ? left : nil
        }
      }
    }
    return await withTaskGroup(of: Answer?.self) { tasks in
      tasks.addTask {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Answer, Never>) in
          let held = self.state.withLock { s -> Answer? in
            if let floor = s.floors[group], after < floor { return Answer(records: [], truncatedThrough: floor) }
            let hits = s.rings[group]?.hits(after: after, service: service, key: key) ?? []
            if !hits.isEmpty || s.timedOut.contains(id) { return Answer(records: hits) }
            s.register(
              id, Waiter(group: group, service: service, key: key, after: after, continuation: continuation))
            return nil
          }
          if let held { continuation.resume(returning: held) }
        }
      }
      tasks.addTask {
        try? await clock.sleep(for: timeout)
        let waiter = self.state.withLock { s -> Waiter? in
          if let waiter = s.unregister(id) { return waiter }
          s.timedOut.insert(id)
          return nil
        }
        waiter?.continuation.resume(returning: Answer(records: []))
        return nil
      }
      var result = Answer(records: [])
      while let next = await tasks.next() {
        if let answer = next {
          result = answer
          tasks.cancelAll()
        }
      }
      return result
    }
  }
}
