import Foundation
import QuorumCore
import QuorumStorage
import Testing

@testable import QuorumRaft

/// The review's storage bug, end to end: a follower with old-term entries 8...10 receives the new leader's
/// entries 8...10 together with commit index 10, and the machine crashes while the write is on its way to the
/// disk. Whatever prefix of the write survives, the restarted follower must not hold a commit index over
/// entries the leader never had: it would apply them and acknowledge them, and stay diverged.
@Suite("Raft recovery after a torn write")
struct TornWriteRecoveryTests {
  private func withDirectory(_ body: (String) async throws -> Void) async throws {
    let path = FileManager.default.temporaryDirectory.path + "/quorum-raft-torn-" + UUID().uuidString
    defer { try? FileManager.default.removeItem(atPath: path) }
    try await body(path)
  }

  private func storage(_ directory: String) -> FileStorage<LogEntry> {
    FileStorage(
      directory: directory, mode: .truncateSuffix, fsync: .always, segmentBytes: 1 << 16, preallocation: .none,
      logger: .disabled)
  }

  /// The offset where each record of a segment starts, and the end of the last (see FileStorage's format). A
  /// clean close's sync marker (type 8) and fillers (type 9) at the end are left out: a crash leaves none after
  /// the last write's own records.
  private func recordStarts(_ bytes: [UInt8]) -> (starts: [Int], end: Int) {
    var starts: [Int] = []
    var offset = 0
    while offset + 9 <= bytes.count, bytes[offset + 8] != 0 {
      starts.append(offset)
      let length =
        Int(bytes[offset + 4]) | Int(bytes[offset + 5]) << 8 | Int(bytes[offset + 6]) << 16
        | Int(bytes[offset + 7]) << 24
      offset += 9 + length
    }
    var end = offset
    while let last = starts.last, bytes[last + 8] == 8 || bytes[last + 8] == 9 {
      end = last
      starts.removeLast()
    }
    return (starts, end)
  }

  @Test("new-term entries 8...10 with commit 10, torn anywhere: never a commit index over the old entries")
  func tornOverwriteNeverCommitsStaleEntries() async throws {
    try await withDirectory { directory in
      let members: [NodeID] = [1, 2, 3]
      let oldLog = (1...10).map { LogEntry(index: $0, term: 1, data: [UInt8($0)]) }
      let leaderLog = Array(oldLog.prefix(7)) + (8...10).map { LogEntry(index: $0, term: 2, data: [0xA0 + UInt8($0)]) }
      let oldHardState = HardState(term: 1, vote: 1, commit: 7)

      let first = storage(directory)
      _ = try await first.recover()
      try await first.write(StorageWrite(hardState: oldHardState.wireBytes(), entries: oldLog))
      var follower = makeCore(2, peers: members, hardState: oldHardState, entries: oldLog)
      follower.step(
        .appendEntries(
          AppendEntries(term: 2, prevLogIndex: 7, prevLogTerm: 1, entries: Array(leaderLog[7...]), commit: 10)),
        from: 1)
      let ready = follower.ready()
      #expect(ready.hardState == HardState(term: 2, vote: .none, commit: 10))
      #expect(ready.entries == Array(leaderLog[7...]))
      try await first.write(StorageWrite(hardState: ready.hardState?.wireBytes(), entries: ready.entries))
      try await first.close()

      let segment = try #require(
        try FileManager.default.contentsOfDirectory(atPath: directory + "/wal").filter { $0.hasSuffix(".wal") }
          .sorted().last)
      let path = directory + "/wal/" + segment
      let pristine = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
      let (starts, end) = recordStarts(pristine)
      let lastWriteStart = starts[starts.count - 4]  // Three entries and the hard state.
      var restartsAtCommit10 = 0
      for cut in lastWriteStart...end {
        try Data(pristine[..<cut]).write(to: URL(fileURLWithPath: path))
        let reopened = storage(directory)
        let recovered = try await reopened.recover()
        try await reopened.close()
        let hardState = try recovered.hardState.map { try HardState(wireBytes: $0) } ?? HardState()
        try RaftCore.validateRecovered(hardState: hardState, snapshot: nil, entries: recovered.entries)
        var restarted = makeCore(2, peers: members, hardState: hardState, entries: recovered.entries)
        if restarted.commitIndex == 10 { restartsAtCommit10 += 1 }
        for index in 1...max(1, restarted.commitIndex) {
          #expect(
            restarted.term(at: index) == leaderLog[Int(index) - 1].term,
            "cut at \(cut): entry \(index) is committed (commit \(restarted.commitIndex)) but not the leader's")
        }
        let applied = restarted.persistReady().committedEntries
        #expect(applied == Array(leaderLog.prefix(applied.count)), "cut at \(cut): applies \(applied)")
      }
      #expect(restartsAtCommit10 == 1, "only the whole write restarts with commit 10")
    }
  }

  @Test("a recovered commit index beyond the recovered log is refused with a typed error")
  func commitBeyondLogIsRefused() throws {
    let entries = (1...10).map { LogEntry(index: $0, term: 1) }
    #expect(throws: RaftRecoveryError.commitBeyondLog(commit: 12, lastIndex: 10)) {
      try RaftCore.validateRecovered(hardState: HardState(term: 2, commit: 12), snapshot: nil, entries: entries)
    }
    let snapshot = RaftSnapshot(index: 20, term: 1, membership: Membership(voters: [1]), data: [])
    try RaftCore.validateRecovered(hardState: HardState(term: 2, commit: 20), snapshot: snapshot, entries: [])
    #expect(throws: RaftRecoveryError.commitBeyondLog(commit: 21, lastIndex: 20)) {
      try RaftCore.validateRecovered(hardState: HardState(term: 2, commit: 21), snapshot: snapshot, entries: [])
    }
    #expect(throws: RaftRecoveryError.logGap(after: 20, next: 22)) {
      try RaftCore.validateRecovered(
        hardState: HardState(term: 2, commit: 20), snapshot: snapshot, entries: [LogEntry(index: 22, term: 1)])
    }
    try RaftCore.validateRecovered(hardState: HardState(term: 2, commit: 10), snapshot: nil, entries: entries)
  }
}
