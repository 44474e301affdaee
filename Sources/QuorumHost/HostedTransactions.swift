public import QuorumCore
public import QuorumTransactions

/// The sharded transactional key-value store as a host serves it (service `txn`): a
/// ``QuorumTransactions/TxnShard`` whose time follows the group leaders' wall clocks.
///
/// **Why not the log time as it is.** A transaction's identifier carries its start on its client's wall clock
/// (``QuorumTransactions/TxnID/startedAtMillis``), and a shard compares it with its own time: a transaction is
/// admitted only within a horizon after its start, and refused if it claims to start too far ahead
/// (``QuorumTransactions/TxnShardLimits/transactionHorizonMillis``,
/// ``QuorumTransactions/TransactionRecordLimits/maxClockAheadMillis``). A host's log time is no wall clock: it
/// starts at zero with the group and advances with each leader's monotonic clock, continuing after a change of
/// leader from the last entry applied — so it lags the wall clock by every idle stretch that ended in a change of
/// leader, and groups drift apart. (Log time is built that way so that no clock step can shorten a lease of the
/// lock service; the transaction store needs no such guarantee, only agreement with clients' clocks within the
/// horizon.)
///
/// **Transaction time** is therefore log time plus an offset that only grows: each leader writes its wall clock
/// into the log (``HostedTxnCommand/clock(wallMillis:)``) when it takes over and then every minute, and the
/// offset moves forward to match it. Transaction time never goes back, tracks the leaders' wall clocks (kept in
/// step by NTP), and is part of the log, so every replica computes the same. A leader whose clock runs ahead
/// pushes it ahead for good; clients whose clocks lag it by more than the horizon see their transactions
/// refused — keep the servers' clocks synchronized.
public struct HostedTxnService: ReplicatedService {
  /// The shards' bounds and timings.
  public var limits: TxnShardLimits

  /// Creates the service with `limits`.
  public init(limits: TxnShardLimits = TxnShardLimits()) { self.limits = limits }

  /// `txn`: clients send ``QuorumTransactions/TxnShardCommand``s and ``QuorumTransactions/TxnShardQuery``s.
  public static var name: String { TxnShardService.name }

  /// An empty shard at transaction time zero.
  public func makeMachine() -> HostedTxnShard {
    HostedTxnShard(shard: TxnShardService(limits: limits).makeMachine())
  }

  public static func routingKey(of command: HostedTxnCommand) -> String? {
    switch command {
    case .shard(let command): return TxnShardService.routingKey(of: command)
    case .clock: return nil
    }
  }

  public static func routingKeys(of command: HostedTxnCommand) -> [String] {
    switch command {
    case .shard(let command): return TxnShardService.routingKeys(of: command)
    case .clock: return []
    }
  }

  public static func routingKey(of query: TxnShardQuery) -> String? { TxnShardService.routingKey(of: query) }

  /// A clock entry comes only from the group's leader: from a client it could move transaction time ahead for
  /// good, and every later transaction would be refused as started in the past.
  public static func acceptsFromClients(_ command: HostedTxnCommand) -> Bool {
    if case .clock = command { return false }
    return true
  }
}

/// A command of the hosted `txn` service: a client's ``QuorumTransactions/TxnShardCommand`` (same bytes), or a
/// leader's wall clock.
public enum HostedTxnCommand: Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// A shard command, encoded exactly as a ``QuorumTransactions/TxnShardCommand``.
  case shard(TxnShardCommand)
  /// The proposing leader's wall clock: transaction time moves forward to it, if it is behind.
  case clock(wallMillis: UInt64)

  /// The first byte of a clock command (shard commands start with their own tags, all below it).
  static let clockTag: UInt8 = 0x40

  public var description: String {
    switch self {
    case .shard(let command): return command.description
    case .clock(let wall): return "clock \(wall) ms"
    }
  }

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .shard(let command): command.encode(to: &writer)
    case .clock(let wall):
      writer.writeByte(Self.clockTag)
      writer.writeVarint(wall)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    var peek = reader
    if try peek.readByte() == Self.clockTag {
      reader = peek
      self = .clock(wallMillis: try reader.readVarint())
    } else {
      self = .shard(try TxnShardCommand(from: &reader))
    }
  }
}

/// A ``QuorumTransactions/TxnShard`` on transaction time: log time plus an offset that leaders' clock entries
/// move forward (see ``HostedTxnService``).
public struct HostedTxnShard: StateMachine, Equatable {
  public typealias Command = HostedTxnCommand
  public typealias Response = TxnShardResponse
  public typealias Query = TxnShardQuery
  public typealias QueryResult = TxnShardQueryResult

  /// The shard.
  public private(set) var shard: TxnShard
  /// Transaction time minus log time.
  public private(set) var offsetMillis: UInt64 = 0

  /// Wraps `shard`, at offset zero. Until the first clock entry the shard's time is the log's, from zero, so it
  /// refuses no transaction as starting ahead (``QuorumTransactions/TxnShard/refusesStartsAhead``).
  public init(shard: TxnShard) {
    self.shard = shard
    self.shard.refusesStartsAhead = false
  }

  private func context(_ context: ApplyContext) -> ApplyContext {
    // Saturated: transaction time past 2^64 ms stays at the end rather than wrapping to the start.
    let (time, overflow) = context.timestampMillis.addingReportingOverflow(offsetMillis)
    return ApplyContext(index: context.index, timestampMillis: overflow ? .max : time, principal: context.principal)
  }

  public mutating func apply(_ command: HostedTxnCommand, context: ApplyContext) -> TxnShardResponse {
    switch command {
    case .shard(let command):
      return shard.apply(command, context: self.context(context))
    case .clock(let wall):
      let before = offsetMillis
      if wall > context.timestampMillis { offsetMillis = max(offsetMillis, wall - context.timestampMillis) }
      shard.refusesStartsAhead = offsetMillis > 0
      // The offset's growth is no time that transactions waited here.
      shard.discountJump(ofMillis: offsetMillis - before, before: self.context(context))
      return shard.apply(.advanceTime, context: self.context(context))
    }
  }

  public func query(_ query: TxnShardQuery) -> TxnShardQueryResult { shard.query(query) }

  /// The shard's next deadline, in log time.
  public var nextDeadlineMillis: UInt64? {
    shard.nextDeadlineMillis.map { $0 > offsetMillis ? $0 - offsetMillis : 0 }
  }

  public mutating func advanceTime(context: ApplyContext) { shard.advanceTime(context: self.context(context)) }

  public func snapshot() -> [UInt8] {
    var writer = WireWriter(reservingCapacity: 64)
    writer.writeVarint(1)  // format version
    writer.writeVarint(offsetMillis)
    writer.writeBytes(shard.snapshot())
    return writer.bytes
  }

  public mutating func restore(from snapshot: [UInt8]) throws {
    var reader = WireReader(snapshot, limits: .snapshot(snapshot))
    let version = try reader.readVarint()
    guard version == 1 else { throw WireError(.unsupportedVersion(UInt8(truncatingIfNeeded: version)), at: 0) }
    let offset = try reader.readVarint()
    var restored = shard
    try restored.restore(from: try reader.readBytes())
    try reader.expectEnd()
    offsetMillis = offset
    restored.refusesStartsAhead = offset > 0
    shard = restored
  }
}
