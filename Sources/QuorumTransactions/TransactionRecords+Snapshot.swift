import QuorumCore

extension TransactionRecords {
  /// The snapshot format this build writes. It reads versions 1 to 3 too: 1 before records had a kind (all of them
  /// are ``TransactionRecordKind/nodes`` then, as the commands that made them were), 2 before forgotten
  /// coordinators' numbers were tracked (none had been forgotten then), 3 before clock entries (offset zero).
  static let snapshotVersion: UInt64 = 4

  /// Serialises the table deterministically: records by identifier (pending nodes sorted), reservations by
  /// coordinator. The expiry heap is derived and rebuilt by ``restore(from:)``.
  public func snapshot() -> [UInt8] {
    var w = WireWriter(reservingCapacity: 32 + records.count * 48 + floors.count * 12)
    w.writeVarint(Self.snapshotVersion)
    w.writeVarint(logTimeMillis)
    w.writeVarint(appliedIndex)
    w.writeVarint(UInt64(records.count))
    for id in records.keys.sorted() {
      guard let record = records[id] else { continue }
      w.write(id)
      w.writeOptional(record.decision)
      w.writeArray(record.participants)
      w.writeArray(record.pending.sorted())
      w.writeVarint(record.createdAtMillis)
      w.writeOptional(record.decidedAtMillis)
      w.writeByte(record.kind == .groups ? 1 : 0)
    }
    w.writeVarint(UInt64(floors.count))
    for node in floors.keys.sorted() {
      w.write(node)
      w.writeVarint(floors[node] ?? 0)
    }
    w.writeVarint(retiredFloor)
    w.writeVarint(clockOffsetMillis)
    return w.bytes
  }

  /// Replaces the state with a snapshot made by ``snapshot()``; the limits stay this table's own.
  ///
  /// Identifiers must be sorted and unique, and an undecided record must have someone pending (the table drops
  /// those that do not), so a snapshot that decodes but breaks the table's invariants is refused.
  /// - Throws: ``QuorumCore/WireError``; the table is unchanged when it throws.
  public mutating func restore(from snapshot: [UInt8]) throws {
    var r = WireReader(snapshot, limits: .snapshot(snapshot))
    let version = try r.readVarint()
    guard (1...Self.snapshotVersion).contains(version) else {
      throw WireError(.unsupportedVersion(UInt8(truncatingIfNeeded: version)), at: 0)
    }
    var table = self
    table.logTimeMillis = try r.readVarint()
    table.appliedIndex = try r.readVarint()
    table.records = [:]
    let count = try r.readCount()
    var previous: TxnID?
    for _ in 0..<count {
      let at = r.position
      let id = try r.read(TxnID.self)
      guard previous.map({ $0 < id }) ?? true else {
        throw WireError(.invalidValue("record \(id) out of order"), at: at)
      }
      previous = id
      var record = Record(
        decision: try r.readOptional(), participants: try r.readArray(), pending: Set(try r.readArray(NodeID.self)),
        createdAtMillis: try r.readVarint(), decidedAtMillis: try r.readOptional())
      if version >= 2 {
        let kindAt = r.position
        switch try r.readByte() {
        case 0: record.kind = .nodes
        case 1: record.kind = .groups
        case let tag: throw WireError(.unknownTag(type: "TransactionRecordKind", tag: UInt64(tag)), at: kindAt)
        }
      }
      guard record.decision != nil || !record.pending.isEmpty else {
        throw WireError(.invalidValue("undecided record \(id) with nobody pending"), at: at)
      }
      table.records[id] = record
    }
    table.floors = [:]
    let floorCount = try r.readCount()
    var previousNode: NodeID?
    for _ in 0..<floorCount {
      let at = r.position
      let node = try r.read(NodeID.self)
      guard previousNode.map({ $0 < node }) ?? true else {
        throw WireError(.invalidValue("reservation of \(node) out of order"), at: at)
      }
      previousNode = node
      table.floors[node] = try r.readVarint()
    }
    table.retiredFloor = version >= 3 ? max(1, try r.readVarint()) : 1
    table.clockOffsetMillis = version >= 4 ? try r.readVarint() : 0
    try r.expectEnd()
    table.rebuildExpiries()
    self = table
  }
}
