public import QuorumCore

/// A value on a simulated disk that distinguishes what a running node sees from what survives a crash.
///
/// Updates apply to ``current`` at once and are queued until ``sync()`` makes them durable, as writes sit in
/// the page cache until `fsync`. ``crash(using:)`` keeps the durable value plus a random prefix of the
/// queued updates (the kernel may have flushed some of them on its own), and discards the rest. A protocol
/// that acknowledges something before syncing it loses it here, as it would on a real machine.
public struct CrashableStore<Value> {
  /// What the running node reads.
  public private(set) var current: Value
  /// What is certain to survive a crash.
  public private(set) var durable: Value
  private var pending: [(inout Value) -> Void] = []

  /// Creates a store whose durable and current values are `initial`.
  public init(_ initial: Value) {
    current = initial
    durable = initial
  }

  /// Whether updates are waiting for ``sync()``.
  public var hasUnsyncedUpdates: Bool { !pending.isEmpty }

  /// Applies `update` to the current value and queues it for durability.
  public mutating func update(_ update: @escaping (inout Value) -> Void) {
    update(&current)
    pending.append(update)
  }

  /// Makes every queued update durable (an `fsync`).
  public mutating func sync() {
    guard !pending.isEmpty else { return }
    durable = current
    pending.removeAll()
  }

  /// Simulates a crash: keeps the durable value plus a random prefix of unsynced updates, and returns what
  /// the restarted node will find.
  @discardableResult
  public mutating func crash(using rng: inout SeededRandom) -> Value {
    let survivors = pending.isEmpty ? 0 : Int.random(in: 0...pending.count, using: &rng)
    for update in pending.prefix(survivors) { update(&durable) }
    pending.removeAll()
    current = durable
    return durable
  }
}
