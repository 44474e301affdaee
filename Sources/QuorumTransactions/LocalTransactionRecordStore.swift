public import QuorumCore
public import QuorumStorage

/// One entry of a node's local transaction record log: a ``TransactionRecordCommand`` at a position, with the
/// node's wall-clock time when it was written (the table's log time).
public struct TransactionLogEntry: StorableEntry, Hashable, CustomStringConvertible {
  /// The entry's position, from 1.
  public var index: UInt64
  /// The node's wall clock when the entry was written, in milliseconds since 1970.
  public var timestampMillis: UInt64
  /// The record command.
  public var command: TransactionRecordCommand

  /// Creates an entry.
  public init(index: UInt64, timestampMillis: UInt64, command: TransactionRecordCommand) {
    self.index = index
    self.timestampMillis = timestampMillis
    self.command = command
  }

  public var description: String { "\(index)@\(timestampMillis) \(command)" }

  public func encode(to writer: inout WireWriter) {
    writer.writeVarint(index)
    writer.writeVarint(timestampMillis)
    writer.write(command)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    index = try reader.readVarint()
    timestampMillis = try reader.readVarint()
    command = try reader.read()
  }
}

/// A node's transaction records in its own log: the classic coordinator's decision log, or a participant's
/// prepared log.
///
/// The records are a ``TransactionRecords`` table applied from the entries of a
/// ``QuorumStorage/ConsensusStorage`` (in ``QuorumStorage/LogWriteMode/truncateSuffix`` mode), with the node's
/// wall clock as log time. Each call appends one entry and returns once it is durable; calls arriving while a
/// write is in flight are written together in the next one (group commit). Every
/// ``snapshotEveryEntries`` entries the table is saved as a snapshot and the log compacted.
///
/// An abort asked for a transaction without a record is answered without writing anything: under presumed
/// abort, no record means abort, and a node's own log has no concurrent writer that could record a commit later.
///
/// A failed write makes the store unusable (``TransactionStoreError/unusable(_:)``): part of it may have reached
/// the disk, so the node must stop and recover from what did.
public actor LocalTransactionRecordStore: TransactionRecordStore {
  private struct Pending {
    var entry: TransactionLogEntry
    /// `nil` for the caller that writes the batch itself.
    var continuation: UnsafeContinuation<Void, any Error>?
  }

  /// `nil`: a local store is never shared.
  public nonisolated let sharedIdentity: UInt64? = nil
  /// How many entries are written between two snapshots.
  public let snapshotEveryEntries: Int
  private let storage: any ConsensusStorage<TransactionLogEntry>
  private let clock: any NodeClock
  private var table: TransactionRecords
  private var nextIndex: UInt64 = 1
  private var durableIndex: UInt64 = 0
  private var snapshotIndex: UInt64 = 0
  private var opened = false
  private var failure: String?
  private var queue: [Pending] = []
  private var flushing = false

  /// Creates a store over `storage`; call ``open()`` before anything else.
  ///
  /// - Parameters:
  ///   - storage: the log, in ``QuorumStorage/LogWriteMode/truncateSuffix`` mode, owned by this store.
  ///   - clock: the node's clock; its wall clock is the table's log time.
  ///   - limits: the table's bounds and time rules.
  ///   - snapshotEveryEntries: entries between two snapshots.
  /// - Throws: ``QuorumCore/ConfigurationError`` if a limit is unusable.
  public init(
    storage: some ConsensusStorage<TransactionLogEntry>, clock: any NodeClock = SystemClock(),
    limits: TransactionRecordLimits = TransactionRecordLimits(), snapshotEveryEntries: Int = 4_096
  ) throws(ConfigurationError) {
    guard snapshotEveryEntries >= 1 else {
      throw ConfigurationError(setting: "snapshotEveryEntries", reason: "must be at least 1")
    }
    self.storage = storage
    self.clock = clock
    self.table = try TransactionRecords(limits: limits)
    self.snapshotEveryEntries = snapshotEveryEntries
  }

  /// Reads the records back from storage. Call once, before any other call.
  /// - Throws: a storage error, or ``QuorumCore/WireError`` if the snapshot does not decode.
  public func open() async throws {
    precondition(!opened, "LocalTransactionRecordStore.open() called twice")
    let recovered = try await storage.recover()
    if let snapshot = recovered.snapshot {
      try table.restore(from: snapshot.data)
      snapshotIndex = snapshot.index
      durableIndex = snapshot.index
    }
    for entry in recovered.entries where entry.index > durableIndex {
      _ = table.apply(entry.command, context: ApplyContext(index: entry.index, timestampMillis: entry.timestampMillis))
      durableIndex = entry.index
    }
    nextIndex = durableIndex + 1
    opened = true
  }

  /// The number of records held (durable or being written).
  public var recordCount: Int { table.count }

  // MARK: - TransactionRecordStore

  public func recordPrepared(_ id: TxnID, participant: NodeID, participants: [NodeID]) async throws
    -> TransactionDecision?
  {
    let command = TransactionRecordCommand.prepared(id, participant: participant, participants: participants)
    return try await submit(command).decision(for: command)
  }

  public func decideIfUndecided(
    _ id: TxnID, _ decision: TransactionDecision, participants: [NodeID], finisher: NodeID?
  ) async throws -> TransactionDecision {
    try checkUsable()
    if decision == .abort {
      guard let record = table.summary(of: id) else { return .abort }  // presumed abort: nothing to write
      if let existing = record.decision { return existing }
    }
    let command = TransactionRecordCommand.decide(id, decision, participants: participants, finisher: finisher)
    guard let holding = try await submit(command).decision(for: command) else {
      throw TransactionStoreError.badAnswer("no decision after \(command)")
    }
    return holding
  }

  public func recordFinished(_ id: TxnID, by node: NodeID) async throws {
    try checkUsable()
    guard table.summary(of: id)?.pending.contains(node) == true else { return }  // nothing to end
    _ = try await submit(.finished(id, node: node))
  }

  public func outcome(of id: TxnID) async throws -> TransactionRecordSummary? {
    try checkUsable()
    return table.summary(of: id)
  }

  public func pendingRecords(of node: NodeID) async throws -> [TransactionRecordSummary] {
    try checkUsable()
    let table = self.table
    return try await collectRecords(of: node) { table.query($0) }
  }

  public func reserveSequenceNumbers(for coordinator: NodeID, count: UInt64) async throws -> Range<UInt64> {
    let command = TransactionRecordCommand.reserve(coordinator: coordinator, count: count)
    switch try await submit(command) {
    case .reserved(let first, let count): return first..<first.addingSaturated(count)
    case .refused(let error): throw TransactionStoreError.refused(error)
    case let other: throw TransactionStoreError.badAnswer("\(other) to \(command)")
    }
  }

  // MARK: - Writing

  private func checkUsable() throws(TransactionStoreError) {
    precondition(opened, "LocalTransactionRecordStore used before open()")
    if let failure { throw .unusable(failure) }
  }

  /// Applies `command` to the table at the next position and returns the answer once the entry is durable.
  ///
  /// The first caller to find no write in flight writes the queue, batch after batch, until it is empty; the
  /// others wait for their batch.
  private func submit(_ command: TransactionRecordCommand) async throws -> TransactionRecordResponse {
    try checkUsable()
    let index = nextIndex
    nextIndex += 1
    let time = Swift.max(table.logTimeMillis, clock.wallClockMillis())
    let response = table.apply(command, context: ApplyContext(index: index, timestampMillis: time))
    let entry = TransactionLogEntry(index: index, timestampMillis: time, command: command)
    if flushing {
      try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
        queue.append(Pending(entry: entry, continuation: continuation))
      }
    } else {
      flushing = true
      queue.append(Pending(entry: entry, continuation: nil))
      defer { flushing = false }
      try await flush()
    }
    return response
  }

  /// Writes what is queued, batch after batch, until the queue is empty. Throws if the caller's own entry (in
  /// the first batch) was not written.
  private func flush() async throws {
    var ownBatch = true
    while !queue.isEmpty {
      defer { ownBatch = false }
      let batch = queue
      queue = []
      do {
        try await storage.write(StorageWrite(entries: batch.map(\.entry)))
        durableIndex = batch[batch.count - 1].entry.index
        for pending in batch { pending.continuation?.resume() }
      } catch {
        // Part of the batch may be on disk: the table in memory is ahead of it, so nothing more can be trusted.
        let reason = "writing entries from \(batch[0].entry.index): \(error)"
        failure = reason
        let failed = TransactionStoreError.unusable(reason)
        for pending in batch + queue { pending.continuation?.resume(throwing: failed) }
        queue = []
        if ownBatch { throw failed }
        return
      }
      if queue.isEmpty && durableIndex - snapshotIndex >= UInt64(snapshotEveryEntries) { await takeSnapshot() }
    }
  }

  /// Saves the table (which equals the durable entries: the queue is empty) and compacts the log under it.
  private func takeSnapshot() async {
    let index = durableIndex
    let snapshot = StoredSnapshot(index: index, term: 0, data: table.snapshot())
    do {
      try await storage.saveSnapshot(snapshot, discardingLog: false)
      try await storage.compact(through: index)
      snapshotIndex = index
    } catch {
      // The log still holds everything: a failed snapshot only delays compaction.
    }
  }
}
