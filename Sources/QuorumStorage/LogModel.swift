/// The positions a storage tracks about its log, and the rules every write must follow.
///
/// Both ``MemoryStorage`` and ``FileStorage`` keep one of these, so they accept and reject exactly the same
/// writes. The rules:
///
/// - Entries in one write are in ascending position order, positions start at 1; in
///   ``LogWriteMode/truncateSuffix`` mode they are also contiguous.
/// - No entry may be written at or below ``base`` (the snapshot or compaction point): those positions are
///   committed and immutable.
/// - In ``LogWriteMode/truncateSuffix`` mode a write may not start past the end of the log
///   (`max(end, base) + 1`). When it starts past ``end`` (possible only when a snapshot lies beyond the
///   stored entries), the stored entries are dropped first: a *reset* to the position before the write.
struct LogPosition: Sendable, Equatable {
  /// How overwrites are treated.
  let mode: LogWriteMode
  /// The newest snapshot's index, or 0.
  var snapshotIndex: UInt64 = 0
  /// The highest position discarded by compaction or a reset, or 0.
  var floor: UInt64 = 0
  /// The last stored entry's position (or the reset point when nothing was written since a reset).
  var end: UInt64 = 0

  /// Everything at or below this position is covered by a snapshot or discarded.
  var base: UInt64 { max(snapshotIndex, floor) }

  /// Checks that entries `first...last` may be written; returns the reset point that must be applied
  /// first, if any.
  func check(first: UInt64, last: UInt64) throws(StorageError) -> UInt64? {
    if first <= base {
      throw .invalidWrite("entry \(first) is at or below the snapshot/compaction point \(base)")
    }
    guard mode == .truncateSuffix else { return nil }
    let logEnd = max(end, base)
    if first > logEnd + 1 {
      throw .invalidWrite("entries start at \(first), past the end of the log at \(logEnd)")
    }
    return first > end + 1 ? first - 1 : nil
  }

  /// Records that entries `first...last` were written.
  mutating func didAppend(first: UInt64, last: UInt64) {
    switch mode {
    case .truncateSuffix: end = last
    case .replace: end = max(end, last)
    }
  }

  /// Records that every stored entry was dropped, the log continuing after `index`.
  mutating func didReset(to index: UInt64) {
    floor = max(floor, index)
    end = index
  }

  /// Checks the shape of a write's entries: positions from 1, ascending (and contiguous in
  /// ``LogWriteMode/truncateSuffix`` mode).
  static func checkShape<Entry: StorableEntry>(_ entries: [Entry], mode: LogWriteMode) throws(StorageError) {
    let count = entries.count
    guard count > 0 else { return }
    var previous = entries[0].index
    if previous == 0 { throw .invalidWrite("entry positions start at 1") }
    var slot = 1
    while slot < count {
      let index = entries[slot].index
      switch mode {
      case .truncateSuffix:
        if index != previous &+ 1 {
          throw .invalidWrite("entries are not contiguous: \(index) follows \(previous)")
        }
      case .replace:
        if index <= previous { throw .invalidWrite("entries are not ascending: \(index) follows \(previous)") }
      }
      previous = index
      slot += 1
    }
  }
}

/// Stored entries in ascending position order, with the overwrite rule of a ``LogWriteMode``.
///
/// ``MemoryStorage`` keeps its log in one; ``FileStorage`` rebuilds one while replaying its write-ahead log,
/// so both apply overwrites identically.
///
/// Performance note: this code is generic over an `Entry` type from another module, so it runs
/// unspecialized, and every call to an `Array<Entry>` method looks up the array's type metadata at run time
/// (a hash-table probe). Entries therefore live in a manually managed buffer — appending is one value-witness
/// copy — and positions in plain integers (``firstIndex`` when contiguous, ``positions`` in
/// ``LogWriteMode/replace`` mode). The type is noncopyable, so the buffer has exactly one owner.
///
/// Safety of `@unchecked Sendable`: the buffer is owned by this noncopyable value alone and travels with it.
struct EntryLog<Entry: StorableEntry>: ~Copyable, @unchecked Sendable {
  /// The overwrite rule.
  let mode: LogWriteMode
  private var buffer: UnsafeMutablePointer<Entry>
  private var capacity: Int
  /// The number of entries held.
  private(set) var count = 0
  /// The last entry's position, or the reset point after ``reset(to:)``, or 0 when the start is unknown.
  private(set) var end: UInt64 = 0
  /// ``LogWriteMode/truncateSuffix`` mode: the position of the first entry (entry `k` is at `firstIndex + k`).
  private var firstIndex: UInt64 = 0
  /// ``LogWriteMode/replace`` mode: the position of each entry.
  private var positions: [UInt64] = []

  init(mode: LogWriteMode) {
    self.mode = mode
    capacity = 16
    buffer = .allocate(capacity: capacity)
  }

  deinit {
    buffer.deinitialize(count: count)
    buffer.deallocate()
  }

  /// The first entry's position, if any.
  var firstPosition: UInt64? {
    guard count > 0 else { return nil }
    return mode == .truncateSuffix ? firstIndex : positions[0]
  }

  /// Stores `entry`, whose position is `index`. In ``LogWriteMode/truncateSuffix`` mode this discards every
  /// entry at or after `index`; it returns `false` (storing nothing) if the entry would leave a gap after
  /// ``end``.
  @inline(__always)
  mutating func append(_ entry: consuming Entry, at index: UInt64) -> Bool {
    switch mode {
    case .truncateSuffix:
      if count > 0 {
        let last = firstIndex + UInt64(count) - 1
        if index <= last {
          let kept = index <= firstIndex ? 0 : Int(index - firstIndex)
          (buffer + kept).deinitialize(count: count - kept)
          count = kept
          if kept == 0 { firstIndex = index }
        } else if index != last + 1 {
          return false
        }
      } else {
        if end != 0 && index > end + 1 { return false }
        firstIndex = index
      }
      if count == capacity { grow() }
      (buffer + count).initialize(to: entry)
      count += 1
      end = index
    case .replace:
      if count > 0 && index <= positions[count - 1] {
        let slot = lowerBound(index)
        if positions[slot] == index {
          buffer[slot] = entry
        } else {
          if count == capacity { grow() }
          (buffer + slot + 1).moveInitialize(from: buffer + slot, count: count - slot)
          (buffer + slot).initialize(to: entry)
          positions.insert(index, at: slot)
          count += 1
        }
      } else {
        if count == capacity { grow() }
        (buffer + count).initialize(to: entry)
        positions.append(index)
        count += 1
      }
      end = max(end, index)
    }
    return true
  }

  @inline(never)
  private mutating func grow() {
    let larger = UnsafeMutablePointer<Entry>.allocate(capacity: capacity * 2)
    larger.moveInitialize(from: buffer, count: count)
    buffer.deallocate()
    buffer = larger
    capacity *= 2
  }

  /// Drops every entry; the log continues after `index`.
  mutating func reset(to index: UInt64) {
    buffer.deinitialize(count: count)
    count = 0
    positions.removeAll()
    end = index
  }

  /// Drops the entries at positions up to `index`.
  mutating func removeThrough(_ index: UInt64) {
    let dropped = droppedCount(through: index)
    guard dropped > 0 else { return }
    buffer.deinitialize(count: dropped)
    buffer.moveInitialize(from: buffer + dropped, count: count - dropped)
    count -= dropped
    switch mode {
    case .truncateSuffix: firstIndex += UInt64(dropped)
    case .replace: positions.removeSubrange(0..<dropped)
    }
  }

  /// Copies of the entries after position `index`.
  func entries(after index: UInt64) -> [Entry] {
    let dropped = droppedCount(through: index)
    return Array(UnsafeBufferPointer(start: buffer + dropped, count: count - dropped))
  }

  /// Moves every entry out into an array, leaving the log empty (its ``end`` unchanged).
  mutating func takeEntries() -> [Entry] {
    let taken = count
    guard taken > 0 else { return [] }
    let source = buffer
    count = 0
    positions.removeAll()
    return [Entry](unsafeUninitializedCapacity: taken) { destination, initialized in
      // The capacity is `taken` > 0, so the buffer has a base address.
      destination.baseAddress!.moveInitialize(from: source, count: taken)  // safe: capacity > 0
      initialized = taken
    }
  }

  /// How many leading entries lie at or below `index`.
  private func droppedCount(through index: UInt64) -> Int {
    guard count > 0 else { return 0 }
    switch mode {
    case .truncateSuffix:
      guard index >= firstIndex else { return 0 }
      return index - firstIndex >= UInt64(count) ? count : Int(index - firstIndex) + 1
    case .replace:
      return index == .max ? count : lowerBound(index + 1)
    }
  }

  /// ``LogWriteMode/replace`` mode: the first slot whose position is at least `index`.
  private func lowerBound(_ index: UInt64) -> Int {
    var low = 0
    var high = positions.count
    while low < high {
      let middle = (low + high) / 2
      if positions[middle] < index { low = middle + 1 } else { high = middle }
    }
    return low
  }
}
