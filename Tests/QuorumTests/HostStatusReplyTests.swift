import Quorum
import Testing

/// A channel whose members answer the cluster map request with `map` and a status request with `statusReply`
/// (member 1's reply first), as members of another build might.
final class StatusScriptChannel: RequestChannel {
  let map: ClusterMap
  let statusReplies: [NodeID: [UInt8]]

  init(map: ClusterMap, statusReplies: [NodeID: [UInt8]]) {
    self.map = map
    self.statusReplies = statusReplies
  }

  func send(_ request: [UInt8], to member: NodeID, timeout: Duration) async throws -> [UInt8] {
    switch try HostRequest(wireBytes: request) {
    case .clusterMap: return HostReply.clusterMap(map).wireBytes()
    case .status:
      guard let reply = statusReplies[member] else { throw RequestChannelError.unreachable(member, "down") }
      return reply
    default: return HostReply.failure(HostFailure(.malformed("not scripted"))).wireBytes()
    }
  }
}

@Suite("Host status replies across builds")
struct HostStatusReplyTests {
  static let map = ClusterMap(
    cluster: "statuses", members: [1: "", 2: "", 3: ""],
    groups: [GroupSpec(id: .default, name: "main", members: [1, 2, 3], services: ["kv"])])

  static func status(node: NodeID, refused: UInt64) -> GroupStatus {
    GroupStatus(
      group: .default, name: "main", engine: .raft, node: node, role: node == 1 ? "leader" : "follower", epoch: 2,
      leader: 1, commitIndex: 7, appliedIndex: 7, lastIndex: 7, snapshotIndex: 0, voters: [1, 2, 3], learners: [],
      peers: [PeerLag(node: 2, match: 7, lag: 0, isLearner: false, recentlyActive: true, note: nil)],
      pendingRequests: 0, refusedMessages: refused)
  }

  /// A status reply as a later build writes it: each record's fields as this build writes them, then `appended`
  /// (the fields that build added), the whole length-prefixed.
  static func laterBuildReply(_ statuses: [GroupStatus], appended: [UInt8]) throws -> [UInt8] {
    var writer = WireWriter()
    writer.writeByte(3)  // HostReply.statuses
    writer.writeVarint(UInt64(statuses.count))
    for status in statuses {
      // This build's record: a length prefix, then the fields.
      var reader = WireReader(status.wireBytes())
      let fields = try reader.readBytes()
      try reader.expectEnd()
      writer.writeBytes(fields + appended)
    }
    return writer.bytes
  }

  @Test("a status record a later build extended is read: the fields it appended are skipped, the next record read")
  func appendedFieldsAreSkipped() throws {
    let statuses = [Self.status(node: 1, refused: 3), Self.status(node: 2, refused: 0)]
    // Say, a varint and a string a later build added to each record.
    let bytes = try Self.laterBuildReply(statuses, appended: [0x96, 0x01, 0x03, 0x61, 0x62, 0x63])
    #expect(try HostReply(wireBytes: bytes) == .statuses(statuses))
    // A record cut short is still refused.
    var writer = WireWriter()
    writer.writeByte(3)
    writer.writeVarint(1)
    var reader = WireReader(statuses[0].wireBytes())
    writer.writeBytes(try reader.readBytes().dropLast())
    #expect(throws: WireError.self) { try HostReply(wireBytes: writer.bytes) }
  }

  @Test("a member whose status reply cannot be read fails statuses() with badReply, not left out as unreachable")
  func unreadableStatusReplyIsSurfaced() async throws {
    // Member 1 answers in a layout this build cannot read (a record without its length prefix, as the build
    // before records were length-prefixed wrote it); member 2 answers; member 3 is down.
    var old = WireWriter()
    old.writeByte(3)
    old.writeVarint(1)
    var record = WireReader(Self.status(node: 1, refused: 0).wireBytes())
    old.writeRaw(try record.readBytes())
    let channel = StatusScriptChannel(
      map: Self.map,
      statusReplies: [1: old.bytes, 2: HostReply.statuses([Self.status(node: 2, refused: 0)]).wireBytes()])
    var options = HostClientOptions()
    options.deadline = .seconds(60)
    // Each status request's deadline: a member that is down costs this much (the scripted members answer at once).
    options.attemptTimeout = .milliseconds(500)
    let client = HostClient(channel: channel, members: [1, 2, 3], map: Self.map, options: options)
    do {
      let statuses = try await client.statuses()
      Issue.record("statuses() returned \(statuses.map(\.node)) with member 1's reply unreadable")
    } catch QuorumClientError.badReply(let why) {
      #expect(why.hasPrefix("unreadable status reply from n1: "), "\(why)")
    }
    // Without the unreadable member, the down member is left out as before.
    let readable = StatusScriptChannel(
      map: Self.map, statusReplies: [2: HostReply.statuses([Self.status(node: 2, refused: 0)]).wireBytes()])
    let statuses = try await HostClient(channel: readable, members: [1, 2, 3], map: Self.map, options: options)
      .statuses()
    #expect(statuses.map(\.node) == [2])
  }
}
