import Foundation
import Glibc
import QuorumCore
import Testing

@testable import QuorumStorage

/// What recovery must return if a crash kept exactly the steps of a run up to one: a storage's hard state,
/// snapshot and log. Entries at or below `floor` (the snapshot's index or the compaction point) may be gone.
struct CrashModelState: Equatable {
  var hardState: [UInt8]?
  var snapshot: StoredSnapshot?
  /// Every entry written and not overwritten (compacted ones included), ascending.
  var log: [TestEntry] = []
  var floor: UInt64 = 0

  var lastIndex: UInt64 { max(log.last?.index ?? 0, snapshot?.index ?? 0) }
}

/// A hard state for the crash tests: term, commit index and a vote, as a Raft node would store them.
struct CrashHardState {
  var term: UInt64
  var commit: UInt64
  var vote: UInt8

  var bytes: [UInt8] {
    withUnsafeBytes(of: term.littleEndian, Array.init) + withUnsafeBytes(of: commit.littleEndian, Array.init) + [vote]
  }

  /// The commit index in `bytes`, or `nil` if they are not a hard state of this shape.
  static func commit(in bytes: [UInt8]) -> UInt64? {
    guard bytes.count == 17 else { return nil }
    return bytes[8..<16].reversed().reduce(0) { $0 << 8 | UInt64($1) }
  }
}

/// One run under a ``FileOperationRecorder``: the model states after each step (one per group), and marks in the
/// recorded operations saying how far the run had got — how many steps had been issued, and up to which step the
/// storage had acknowledged them durable.
final class CrashRun {
  struct Progress {
    var issued = 0
    var durable = 0
    var durableSnapshot = 0
  }

  let recorder: FileOperationRecorder
  /// `states[j][g]`: group `g` after the first `j` steps.
  private(set) var states: [[CrashModelState]]
  private(set) var current: [CrashModelState]
  private(set) var progress = Progress()
  private var marks: [Progress] = []

  init(recorder: FileOperationRecorder, groups: Int) {
    self.recorder = recorder
    current = Array(repeating: CrashModelState(), count: groups)
    states = [current]
  }

  func step(_ group: Int, _ change: (inout CrashModelState) -> Void) {
    change(&current[group])
    states.append(current)
  }

  /// Adds the steps of `write` for `group`: entries in order (each discarding those at or after its position),
  /// then the hard state (a torn write may keep any prefix of them).
  func steps(_ group: Int, of write: StorageWrite<TestEntry>) {
    for entry in write.entries {
      step(group) { state in
        state.log.removeAll { $0.index >= entry.index }
        state.log.append(entry)
      }
    }
    if let hardState = write.hardState { step(group) { $0.hardState = hardState } }
  }

  /// Marks that the steps added so far are issued: call before the storage call that makes them.
  func issue() {
    progress.issued = states.count - 1
    mark()
  }

  /// Marks that the storage call returned: its steps are durable if `log`, its snapshot if `snapshot`.
  func acknowledge(log: Bool, snapshot: Bool = false) {
    if log { progress.durable = states.count - 1 }
    if snapshot { progress.durableSnapshot = states.count - 1 }
    mark()
  }

  private func mark() {
    marks.append(progress)
    recorder.record(.mark(marks.count - 1))
  }

  /// How far the run had got after the first `count` recorded operations.
  func progress(after count: Int, in operations: [FileOperation]) -> Progress {
    for operation in operations.prefix(count).reversed() {
      if case .mark(let number) = operation { return marks[number] }
    }
    return Progress()
  }
}

/// The storage's recovered state, as the oracle compares it.
struct CrashRecovered {
  var hardState: [UInt8]?
  var snapshot: StoredSnapshot?
  var entries: [TestEntry]

  init(_ state: RecoveredState<TestEntry>) {
    hardState = state.hardState
    snapshot = state.snapshot
    entries = state.entries
  }

  /// Whether the entries are those of `state` above `floor`, and those at or below it entries `state` wrote there.
  func entriesMatch(_ state: CrashModelState, floor: UInt64) -> Bool {
    guard entries.filter({ $0.index > floor }) == state.log.filter({ $0.index > floor }) else { return false }
    return entries.allSatisfy { entry in entry.index > floor || state.log.contains(entry) }
  }

  /// Whether this is exactly `state` (the crash kept a prefix of the steps).
  func matches(_ state: CrashModelState) -> Bool {
    hardState == state.hardState && snapshot == state.snapshot
      && entriesMatch(state, floor: max(state.floor, snapshot?.index ?? 0))
  }

  /// Why this state breaks an invariant of every run, if it does: entries out of order or at or below the
  /// snapshot, or a commit index past the log.
  var brokenInvariant: String? {
    let snapshotIndex = snapshot?.index ?? 0
    if let first = entries.first, first.index <= snapshotIndex {
      return "entry \(first.index) at or below the snapshot's index \(snapshotIndex)"
    }
    for (a, b) in zip(entries, entries.dropFirst()) where b.index != a.index + 1 {
      return "entries not contiguous: \(a.index) then \(b.index)"
    }
    let last = max(entries.last?.index ?? 0, snapshotIndex)
    if let hardState, let commit = CrashHardState.commit(in: hardState), commit > last {
      return "commit index \(commit) beyond the recovered log (last \(last))"
    }
    return nil
  }
}

/// The oracle: what a recovery after a crash in a run may return.
enum CrashOracle {
  /// Why `recovered` (one per group) cannot follow a crash at `progress`, or `nil` if it can. With `exact`
  /// (every call synced before it returned) the groups together must be the state after some step between the
  /// last acknowledged and the last issued; otherwise (batched syncs) each part separately must be one written
  /// no earlier than its last acknowledgement.
  static func violation(
    _ recovered: [CrashRecovered], run: CrashRun, progress: CrashRun.Progress, exact: Bool
  ) -> String? {
    for (group, state) in recovered.enumerated() {
      if let broken = state.brokenInvariant { return "group \(group): \(broken)" }
    }
    let candidates = run.states[progress.durable...progress.issued]
    if exact {
      if candidates.contains(where: { states in zip(recovered, states).allSatisfy { $0.matches($1) } }) {
        return nil
      }
      return "the recovered state is not the state after any step in \(progress.durable)...\(progress.issued)"
        + describe(recovered, run.states[progress.durable])
    }
    for (group, state) in recovered.enumerated() {
      if !candidates.contains(where: { $0[group].hardState == state.hardState }) {
        return
          "group \(group): hard state \(state.hardState ?? []) not one written at or after step \(progress.durable)"
      }
      let snapshotIndex = state.snapshot?.index ?? 0
      if !candidates.contains(where: { state.entriesMatch($0[group], floor: max($0[group].floor, snapshotIndex)) }) {
        return "group \(group): entries not those after any step in \(progress.durable)...\(progress.issued)"
          + describe([state], [run.states[progress.durable][group]])
      }
      let snapshots = run.states[progress.durableSnapshot...progress.issued]
      if !snapshots.contains(where: { $0[group].snapshot == state.snapshot }) {
        return
          "group \(group): snapshot \(state.snapshot?.index ?? 0) not one stored at or after step \(progress.durableSnapshot)"
      }
    }
    return nil
  }

  static func describe(_ recovered: [CrashRecovered], _ durable: [CrashModelState]) -> String {
    zip(recovered, durable).enumerated().map { group, pair in
      "\n  group \(group): recovered snapshot \(pair.0.snapshot?.index ?? 0), entries \(pair.0.entries), hard state "
        + "\(pair.0.hardState.flatMap(CrashHardState.commit(in:)).map { "commit \($0)" } ?? "none"); acknowledged "
        + "snapshot \(pair.1.snapshot?.index ?? 0), entries \(pair.1.log.filter { $0.index > pair.1.floor }), "
        + "hard state \(pair.1.hardState.flatMap(CrashHardState.commit(in:)).map { "commit \($0)" } ?? "none")"
    }.joined()
  }
}

/// Drives one group's storage with a random, realistic sequence of calls: appends, suffix truncations after a
/// conflict, hard-state updates, snapshots kept with the log and compaction, and leaders' snapshots that discard it.
struct CrashWorkload {
  var term: UInt64 = 1
  var commit: UInt64 = 0
  var vote: UInt8 = 0

  mutating func hardState(_ random: inout SeededRandom) -> [UInt8] {
    vote = UInt8(random.next() % 5)
    return CrashHardState(term: term, commit: commit, vote: vote).bytes
  }

  static func payload(_ random: inout SeededRandom) -> [UInt8] {
    let count = 20 + Int(random.next() % 700)
    return (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) }
  }

  /// Makes one random call on `store` (group `group` of `run`), adding its steps and marks; `batched` says the
  /// storage syncs only writes marked `mustSync` before they return.
  mutating func step(
    _ store: any ConsensusStorage<TestEntry>, group: Int, run: CrashRun, batched: Bool, random: inout SeededRandom
  ) async throws {
    let state = run.current[group]
    let last = state.lastIndex
    let snapshotIndex = state.snapshot?.index ?? 0
    let roll = random.next() % 100
    if roll < 12, commit > snapshotIndex, last > snapshotIndex {
      // The node's own snapshot, then (usually) compaction through it.
      let index = snapshotIndex + 1 + random.next() % (min(commit, last) - snapshotIndex)
      let term = state.log.first { $0.index == index }?.term ?? self.term
      let snapshot = StoredSnapshot(
        index: index, term: term, metadata: [UInt8(index % 256)], data: Self.payload(&random) + Self.payload(&random))
      run.step(group) { state in
        state.snapshot = snapshot
        state.floor = max(state.floor, index)
      }
      run.issue()
      try await store.saveSnapshot(snapshot, discardingLog: false)
      run.acknowledge(log: !batched, snapshot: true)
      if random.next() % 3 != 0 {
        run.step(group) { $0.floor = max($0.floor, index) }
        run.issue()
        try await store.compact(through: index)
        run.acknowledge(log: !batched)
      }
    } else if roll < 17 {
      // A leader's snapshot past the end of the log: the log is discarded.
      term += 1
      let index = last + 1 + random.next() % 4
      let snapshot = StoredSnapshot(index: index, term: term, metadata: [1, 2], data: Self.payload(&random))
      run.step(group) { state in
        state.snapshot = snapshot
        state.log = []
        state.floor = index
      }
      run.issue()
      try await store.saveSnapshot(snapshot, discardingLog: true)
      run.acknowledge(log: !batched, snapshot: true)
      commit = index
    } else if roll < 30, last > max(commit, snapshotIndex) {
      // A new leader's entries conflict with the uncommitted suffix: it is truncated.
      term += 1
      let start = max(commit, snapshotIndex) + 1 + random.next() % (last - max(commit, snapshotIndex))
      let entries = (start..<start + 1 + random.next() % 3).map {
        TestEntry($0, term: term, payload: Self.payload(&random))
      }
      try await write(
        StorageWrite(hardState: hardState(&random), entries: entries, mustSync: true), store, group, run, batched)
    } else if roll < 40 {
      // A vote or a new term alone.
      if random.next() % 2 == 0 { term += 1 }
      try await write(StorageWrite(hardState: hardState(&random), mustSync: true), store, group, run, batched)
    } else {
      // Appends, often with a commit index covering some of them.
      let entries = (last + 1...last + 1 + random.next() % 4).map {
        TestEntry($0, term: term, payload: Self.payload(&random))
      }
      var hardState: [UInt8]?
      if random.next() % 2 == 0 {
        commit = max(commit, entries[0].index - 1 + random.next() % UInt64(entries.count + 1))
        hardState = self.hardState(&random)
      }
      let mustSync = random.next() % 4 == 0
      try await write(
        StorageWrite(hardState: hardState, entries: entries, mustSync: mustSync), store, group, run, batched)
    }
  }

  private func write(
    _ write: StorageWrite<TestEntry>, _ store: any ConsensusStorage<TestEntry>, _ group: Int, _ run: CrashRun,
    _ batched: Bool
  ) async throws {
    run.steps(group, of: write)
    run.issue()
    try await store.write(write)
    run.acknowledge(log: !batched || write.mustSync)
  }
}

/// Crash-consistency tests of the production storage: each seed drives a `FileStorage` or a `SharedLog` with
/// random calls while a ``FileOperationRecorder`` records its file-system operations, then builds crash images
/// (``CrashImages``) at sampled points, reopens the storage on each, and checks it against the model of the run
/// (``CrashOracle``). A failure names its seed, crash point and image.
@Suite("Crash consistency: power loss at recorded operations")
struct CrashConsistencyTests {
  static let segmentBytes = 8192
  /// Crash points sampled per seed (plus the end of the run).
  static let pointsPerSeed = 40

  enum Policy: String, CaseIterable, CustomTestStringConvertible {
    case always
    case batch
    var testDescription: String { rawValue }
  }

  static func preallocation(_ seed: UInt64) -> WALPreallocation {
    [.none, .zeroFilled, .allocated][Int(seed % 3)]
  }

  @Test("FileStorage", arguments: Policy.allCases, 0..<6)
  func fileStorage(policy: Policy, seed: UInt64) async throws {
    let seed = seed + (policy == .batch ? 1000 : 0)
    let fsync: FsyncPolicy = policy == .always ? .always : .batch(interval: .seconds(3600))
    try await Self.check(seed: seed, groups: 1, exact: policy == .always) { directory in
      [
        FileStorage<TestEntry>(
          directory: directory, fsync: fsync, segmentBytes: Self.segmentBytes,
          preallocation: Self.preallocation(seed), logger: .disabled)
      ]
    } close: { stores in
      for store in stores { try await store.close() }
    }
  }

  @Test("SharedLog with three groups", arguments: Policy.allCases, 0..<4)
  func sharedLog(policy: Policy, seed: UInt64) async throws {
    let seed = seed + (policy == .batch ? 3000 : 2000)
    let fsync: FsyncPolicy = policy == .always ? .always : .batch(interval: .seconds(3600))
    try await Self.check(seed: seed, groups: 3, exact: policy == .always) { directory in
      let log = SharedWriteAheadLog(
        directory: directory, fsync: fsync, segmentBytes: Self.segmentBytes,
        preallocation: Self.preallocation(seed), logger: .disabled)
      return (0..<3).map { log.storage(for: UInt64($0) + 1, entry: TestEntry.self) as any ConsensusStorage<TestEntry> }
    } close: { stores in
      for store in stores { try await store.close() }
    }
  }

  /// Runs seed `seed` on the storages `open` makes (one per group) in a recorded directory, then checks the crash
  /// images of the run.
  static func check(
    seed: UInt64, groups: Int, exact: Bool,
    open: (String) -> [any ConsensusStorage<TestEntry>],
    close: ([any ConsensusStorage<TestEntry>]) async throws -> Void
  ) async throws {
    let base = FileManager.default.temporaryDirectory.path + "/quorum-crash-tests/" + UUID().uuidString
    defer { try? FileManager.default.removeItem(atPath: base) }
    let root = base + "/run"
    try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    var random = SeededRandom(seed: seed)

    // The run, recorded.
    let recorder = FileOperationRecorder(watching: root)
    let run = CrashRun(recorder: recorder, groups: groups)
    do {
      defer { recorder.stop() }
      let stores = open(root + "/data")
      for store in stores { _ = try await store.recover() }
      run.acknowledge(log: true, snapshot: true)
      var workloads = Array(repeating: CrashWorkload(), count: groups)
      for _ in 0..<30 * groups {
        let group = Int(random.next() % UInt64(groups))
        try await workloads[group].step(stores[group], group: group, run: run, batched: !exact, random: &random)
      }
      try await close(stores)
    }
    let operations = recorder.recorded
    let images = CrashImages(operations: operations, root: root)

    // Crash points: a sample, and the end.
    var points = (0..<pointsPerSeed).map { _ in Int(random.next() % UInt64(operations.count + 1)) }
    points.append(operations.count)
    var failures = 0
    for (number, point) in points.enumerated() where failures < 3 {
      let image = base + "/image-\(number)"
      try FileManager.default.createDirectory(atPath: image, withIntermediateDirectories: false)
      defer { try? FileManager.default.removeItem(atPath: image) }
      try images.materialize(after: point, into: image, random: &random)
      // Watched, so that recovering and writing on the image skip their syncs, as the recorded run did (the
      // image is read back from the page cache; nothing here depends on what reaches the disk).
      let unsynced = FileOperationRecorder(watching: image)
      defer { unsynced.stop() }
      let progress = run.progress(after: point, in: operations)
      let place = "seed \(seed), crash after operation \(point) of \(operations.count) (image \(number))"
      let stores = open(image + "/data")
      var recovered: [CrashRecovered] = []
      do {
        for store in stores { recovered.append(CrashRecovered(try await store.recover())) }
      } catch {
        Issue.record("\(place): recovery failed: \(error)\n\(describe(operations.prefix(point).suffix(12)))")
        failures += 1
        try? await close(stores)
        continue
      }
      if let violation = CrashOracle.violation(recovered, run: run, progress: progress, exact: exact) {
        Issue.record("\(place): \(violation)\n\(describe(operations.prefix(point).suffix(12)))")
        failures += 1
      } else if number % 4 == 0 {
        // The recovered log must take new writes after what it kept, and give them back.
        let next = max(recovered[0].entries.last?.index ?? 0, recovered[0].snapshot?.index ?? 0) + 1
        let entry = TestEntry(next, term: 1_000, payload: [7, 7, 7])
        try await stores[0].write(StorageWrite(entries: [entry]))
        try await close(stores)
        let again = open(image + "/data")
        let state = try await again[0].recover()
        #expect(state.entries.last == entry, "\(place): a write after recovery was not recovered")
        #expect(state.entries.dropLast() == recovered[0].entries[...], "\(place): recovery changed the log")
        try await close(again)
        continue
      }
      try await close(stores)
    }
  }

  static func describe(_ operations: ArraySlice<FileOperation>) -> String {
    operations.map { operation in
      switch operation {
      case .write(let inode, let offset, let bytes): return "  write inode \(inode) at \(offset), \(bytes.count) bytes"
      default: return "  \(operation)"
      }
    }.joined(separator: "\n")
  }
}
