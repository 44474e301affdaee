// Wire encodings of the core's request vocabulary, so consistency levels and errors can cross the network.

extension ReadConsistency: WireCodable {
  public func encode(to writer: inout WireWriter) {
    switch self {
    case .linearizable: writer.writeByte(0)
    case .lease: writer.writeByte(1)
    case .stale: writer.writeByte(2)
    case .session: writer.writeByte(3)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .linearizable
    case 1: self = .lease
    case 2: self = .stale
    case 3: self = .session
    case let tag: throw WireError(.unknownTag(type: "ReadConsistency", tag: UInt64(tag)), at: at)
    }
  }
}

extension ConsensusError: WireCodable {
  public func encode(to writer: inout WireWriter) {
    switch self {
    case .notLeader(let hint):
      writer.writeByte(0)
      writer.writeOptional(hint)
    case .timeout: writer.writeByte(1)
    case .dropped: writer.writeByte(2)
    case .outcomeUnknown: writer.writeByte(3)
    case .stopped: writer.writeByte(4)
    case .overloaded(let limit):
      writer.writeByte(5)
      writer.writeVarint(UInt64(max(0, limit)))
    case .transferInProgress: writer.writeByte(6)
    case .sessionExpired(let session):
      writer.writeByte(7)
      writer.writeVarint(session)
    case .leaseExpired: writer.writeByte(8)
    case .membershipChangeRejected(let why):
      writer.writeByte(9)
      writer.writeString(why)
    case .commandTooLarge(let bytes, let limit):
      writer.writeByte(10)
      writer.writeVarint(UInt64(max(0, bytes)))
      writer.writeVarint(UInt64(max(0, limit)))
    case .sessionNotOwned(let session):
      writer.writeByte(11)
      writer.writeVarint(session)
    case .sessionQuotaExceeded(let limit):
      writer.writeByte(12)
      writer.writeVarint(UInt64(max(0, limit)))
    case .responseForgotten(let request):
      writer.writeByte(13)
      request.encode(to: &writer)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .notLeader(hint: try reader.readOptional(NodeID.self))
    case 1: self = .timeout
    case 2: self = .dropped
    case 3: self = .outcomeUnknown
    case 4: self = .stopped
    case 5: self = .overloaded(limit: Int(try reader.readVarint(as: UInt32.self)))
    case 6: self = .transferInProgress
    case 7: self = .sessionExpired(try reader.readVarint())
    case 8: self = .leaseExpired
    case 9: self = .membershipChangeRejected(try reader.readString())
    case 10:
      self = .commandTooLarge(
        bytes: Int(try reader.readVarint(as: UInt32.self)), limit: Int(try reader.readVarint(as: UInt32.self)))
    case 11: self = .sessionNotOwned(try reader.readVarint())
    case 12: self = .sessionQuotaExceeded(limit: Int(try reader.readVarint(as: UInt32.self)))
    case 13: self = .responseForgotten(try RequestID(from: &reader))
    case let tag: throw WireError(.unknownTag(type: "ConsensusError", tag: UInt64(tag)), at: at)
    }
  }
}
