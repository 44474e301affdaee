import QuorumCore

/// The keys of a store in order, kept in chunks of at most ``chunkCapacity`` keys: inserting or removing a key
/// moves the keys of one chunk (and, when a chunk splits or empties, the list of chunks), and reading in order
/// from any key starts with two binary searches. A scan then costs what it returns, not the size of the store.
///
/// Keys are ordered by ``QuorumCore/KeyOrder`` (their NFC bytes), which agrees with the dictionary's `==` (canonical
/// equivalence), so the two never disagree about whether a key is present; Swift's own `<` on strings is not a
/// total order for keys spelled in different normal forms, and lost or repeated keys here. A value type; a copy shares the chunks until one is changed.
struct SortedKeys: Sendable {
  /// The most keys in one chunk; a fuller chunk splits in two.
  static let chunkCapacity = 512

  private var chunks: [[String]] = []
  /// The number of keys.
  private(set) var count = 0

  /// No keys.
  init() {}

  /// The given keys (in any order, without duplicates).
  init(_ keys: some Sequence<String>) {
    let sorted = KeyOrder.sorted(keys)
    count = sorted.count
    var start = 0
    while start < sorted.count {
      let end = min(sorted.count, start + Self.chunkCapacity / 2)
      chunks.append(Array(sorted[start..<end]))
      start = end
    }
  }

  /// The chunk where `key` belongs: the last one whose first key is not above it (the first chunk if none).
  private func chunk(for key: String) -> Int {
    var low = 0
    var high = chunks.count
    while high - low > 1 {
      let middle = (low + high) / 2
      if !KeyOrder.precedes(key, chunks[middle][0]) { low = middle } else { high = middle }
    }
    return low
  }

  /// The position of the first key in `keys` not below `key` (or, with `after`, above it).
  private static func lowerBound(of key: String, in keys: [String], after: Bool) -> Int {
    var low = 0
    var high = keys.count
    while low < high {
      let middle = (low + high) / 2
      if KeyOrder.precedes(keys[middle], key) || (after && keys[middle] == key) {
        low = middle + 1
      } else {
        high = middle
      }
    }
    return low
  }

  /// Adds `key` if it is not there.
  mutating func insert(_ key: String) {
    guard !chunks.isEmpty else {
      chunks = [[key]]
      count = 1
      return
    }
    let c = chunk(for: key)
    let at = Self.lowerBound(of: key, in: chunks[c], after: false)
    if at < chunks[c].count && chunks[c][at] == key { return }
    chunks[c].insert(key, at: at)
    count += 1
    if chunks[c].count > Self.chunkCapacity {
      let upper = Array(chunks[c][(Self.chunkCapacity / 2)...])
      chunks[c].removeSubrange((Self.chunkCapacity / 2)...)
      chunks.insert(upper, at: c + 1)
    }
  }

  /// Removes `key` if it is there.
  mutating func remove(_ key: String) {
    guard !chunks.isEmpty else { return }
    let c = chunk(for: key)
    let at = Self.lowerBound(of: key, in: chunks[c], after: false)
    guard at < chunks[c].count && chunks[c][at] == key else { return }
    chunks[c].remove(at: at)
    count -= 1
    if chunks[c].isEmpty { chunks.remove(at: c) }
  }

  /// Calls `body` with the keys from `start` on (above it, with `after`), in order, until it returns `false`.
  func forEach(from start: String, after: Bool, _ body: (String) -> Bool) {
    guard !chunks.isEmpty else { return }
    var c = chunk(for: start)
    var i = Self.lowerBound(of: start, in: chunks[c], after: after)
    while c < chunks.count {
      while i < chunks[c].count {
        if !body(chunks[c][i]) { return }
        i += 1
      }
      c += 1
      i = 0
    }
  }

  /// Every key, in order (read from the chunks, not copied into an array of its own).
  var all: FlattenSequence<[[String]]> { chunks.joined() }
}
