public import QuorumCore
import QuorumStorage

/// What a group is, as far as its stored state and its peers care: its number, name and engine, the services its
/// log carries, and the hash slots it owns for each of them. Every member must agree on it (a peer message is
/// routed by the group's number alone), and it must not change under a member's stored log (the log's commands
/// are for these services, and a shared log finds the group's records by its number).
///
/// A group's members are not part of it: membership changes at run time through the log itself.
///
/// ``FileGroupStorage`` records the identity beside each group's storage the first time it opens it (see
/// ``GroupStorageProvider/checkIdentity(_:)``) and refuses to open it later for another identity;
/// ``ClusterMap/groupTableDigest`` digests every group's identity for the TCP handshake, where members whose
/// group tables differ refuse each other.
public struct GroupIdentity: Sendable, Equatable, WireCodable, CustomStringConvertible {
  /// The group's number.
  public var id: GroupID
  /// The group's name.
  public var name: String
  /// The consensus engine.
  public var engine: EngineKind
  /// The services the group's log carries, sorted (their order does not matter: a group's state machine keeps
  /// them by name).
  public var services: [String]
  /// The slots the group owns for each service, in the order of ``services``, after defaults are applied (see
  /// ``ClusterMap/slots(of:service:)``): all of them for a service no other group carries. Each service's ranges
  /// are normalised (``SlotRange/normalized(_:)``), so that slots written as `0-99,100-199` on one member and
  /// `0-199` on another are the same identity, with the same digest.
  public var slots: [[SlotRange]]

  /// Creates an identity; `services` is sorted, with `slots` kept beside each service and normalised.
  public init(id: GroupID, name: String, engine: EngineKind, services: [String], slots: [[SlotRange]]) {
    let paired = zip(services, slots + Array(repeating: [], count: max(0, services.count - slots.count)))
      .sorted { $0.0 < $1.0 }
    self.id = id
    self.name = name
    self.engine = engine
    self.services = paired.map(\.0)
    self.slots = paired.map { SlotRange.normalized($0.1) }
  }

  /// The identity of `group` in `map` (whose other groups decide which slots it owns by default).
  public init(_ group: GroupSpec, in map: ClusterMap) {
    self.init(
      id: group.id, name: group.name, engine: group.engine, services: group.services,
      slots: group.services.map { map.slots(of: group.id, service: $0) })
  }

  public func encode(to writer: inout WireWriter) {
    id.encode(to: &writer)
    writer.writeString(name)
    engine.encode(to: &writer)
    writer.writeArray(services)
    writer.writeVarint(UInt64(slots.count))
    for ranges in slots { writer.writeArray(ranges) }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    id = try reader.read()
    name = try reader.readString()
    engine = try reader.read()
    services = try reader.readArray(String.self)
    let at = reader.position
    let count = try reader.readCount()
    guard count == services.count else {
      throw WireError(.invalidValue("slots for \(count) services, but \(services.count) services"), at: at)
    }
    var slots: [[SlotRange]] = []
    // Normalised as ``init(id:name:engine:services:slots:)`` does: a record written before identities were
    // normalised still equals the identity configured now.
    for _ in 0..<count { slots.append(SlotRange.normalized(try reader.readArray(SlotRange.self))) }
    self.slots = slots
  }

  /// `'accounts' (raft; services kv,locks)`.
  public var summary: String { "'\(name)' (\(engine); services \(services.joined(separator: ",")))" }

  /// `group 1 'accounts' (raft; services kv,locks)`.
  public var description: String { "group \(id.rawValue) \(summary)" }

  /// The slots of `service`, `nil` if the group does not carry it.
  public func slots(of service: String) -> [SlotRange]? {
    services.firstIndex(of: service).map { slots[$0] }
  }

  /// What differs between this identity (as stored) and `configured`, in words, such as `the name` or
  /// `the slots of kv (were 0-4095, now 0-2047)`; empty when they are equal.
  public func differences(from configured: GroupIdentity) -> [String] {
    var found: [String] = []
    if id != configured.id { found.append("the number (was \(id.rawValue), now \(configured.id.rawValue))") }
    if name != configured.name { found.append("the name (was '\(name)', now '\(configured.name)')") }
    if engine != configured.engine { found.append("the engine (was \(engine), now \(configured.engine))") }
    if services != configured.services {
      found.append(
        "the services (were \(services.joined(separator: ",")), now \(configured.services.joined(separator: ",")))")
    }
    for service in services {
      guard let old = slots(of: service), let new = configured.slots(of: service), old != new else { continue }
      func text(_ ranges: [SlotRange]) -> String {
        ranges.isEmpty ? "none" : ranges.map(\.description).joined(separator: ",")
      }
      found.append("the slots of \(service) (were \(text(old)), now \(text(new)))")
    }
    return found
  }

  /// Why a group's stored state, made for this identity, cannot be opened as `configured` (`nil` if it can),
  /// with what an operator can do about it.
  public func mismatch(with configured: GroupIdentity) -> String? {
    let differences = differences(from: configured)
    guard !differences.isEmpty else { return nil }
    let what =
      id == configured.id
      ? "group \(id.rawValue) was created as \(summary) and is now configured as \(configured.summary)"
      : "the data of group '\(configured.name)' was created for \(self) and the group is now configured as "
        + "\(configured)"
    return what + "; differs: \(differences.joined(separator: "; ")). A group's number, name, engine, services and "
      + "slots cannot change under its data: put the group list back as it was (with explicit ids once groups are "
      + "removed or reordered), or move this member's data aside"
  }
}

/// The file recording a group's identity beside its snapshots: magic `QGID` (fixed32), version (u8), the
/// ``GroupIdentity`` and the CRC-32C of everything before it (fixed32).
enum GroupIdentityFile {
  /// The file's name in the group's snapshot directory.
  static let name = "GROUP"
  /// "QGID" read little-endian.
  static let magic: UInt32 = 0x4449_4751
  static let version: UInt8 = 1
  /// The most bytes read: far more than any identity (a group owning every other slot of four services).
  static let maxBytes = 1 << 20

  static func encode(_ identity: GroupIdentity) -> [UInt8] {
    var writer = WireWriter(reservingCapacity: 128)
    writer.writeFixed32(magic)
    writer.writeByte(version)
    identity.encode(to: &writer)
    writer.writeFixed32(CRC32C.checksum(writer.bytes))
    return writer.bytes
  }

  static func decode(_ bytes: [UInt8], path: String) throws(StorageError) -> GroupIdentity {
    func damaged(_ why: String) -> StorageError {
      .incompatible(
        file: path,
        reason: "the record of which group this data belongs to is unreadable (\(why)); restore it, or delete it "
          + "to record the group as configured now")
    }
    guard bytes.count >= 9 else { throw damaged("\(bytes.count) bytes") }
    var tail = WireReader(bytes, range: (bytes.count - 4)..<bytes.count)
    let stored = try? tail.readFixed32()
    guard stored == CRC32C.checksum(bytes[0..<(bytes.count - 4)]) else { throw damaged("wrong checksum") }
    var reader = WireReader(bytes, range: 0..<(bytes.count - 4), limits: WireLimits(maxBytesLength: maxBytes))
    do {
      guard try reader.readFixed32() == magic else { throw damaged("not a group identity file") }
      let version = try reader.readByte()
      guard version == Self.version else {
        throw StorageError.incompatible(
          file: path, reason: "group identity format version \(version); this build reads \(Self.version)")
      }
      let identity = try GroupIdentity(from: &reader)
      try reader.expectEnd()
      return identity
    } catch let error as StorageError {
      throw error
    } catch {
      throw damaged("\(error)")
    }
  }

  /// Records `identity` in `directory` if it holds no record yet (a new group, or data kept before identities
  /// were recorded), or checks it against the record.
  static func check(_ identity: GroupIdentity, in directory: String, sync: Bool) throws(StorageError) {
    let path = directory + "/" + name
    guard let bytes = try SideFile.read(path, maxBytes: maxBytes) else {
      try SideFile.write(encode(identity), to: path, sync: sync)
      return
    }
    let stored = try decode(bytes, path: path)
    if let reason = stored.mismatch(with: identity) { throw .incompatible(file: path, reason: reason) }
  }
}

extension ClusterMap {
  /// A SHA-256 digest of every group's ``GroupIdentity`` (numbers, names, engines, services and slots, not
  /// members): equal on members that agree on the group table. Members served over TCP exchange it in the
  /// handshake (``QuorumTCP``'s `TCPTransportOptions.groupTableDigest`) and refuse a peer whose digest differs.
  public var groupTableDigest: [UInt8] {
    var writer = WireWriter(reservingCapacity: 256)
    writer.writeString("quorum group table v1")
    let sorted = groups.sorted { $0.id < $1.id }
    writer.writeVarint(UInt64(sorted.count))
    for group in sorted { GroupIdentity(group, in: self).encode(to: &writer) }
    return Array(SHA256.hash(writer.bytes))
  }

  /// ``groupTableDigest``, also covering the settings every replica of a group must share to apply its log
  /// alike: the exactly-once session policy (``QuorumCore/SessionPolicy``) of each engine some group runs, on
  /// which session expiry, refused registrations and forgotten answers depend. Members whose digests differ
  /// refuse each other, so a rolling restart into another session policy cuts the restarted member off instead
  /// of letting replicas apply the same entries differently.
  public func replicationDigest(raftSessions: SessionPolicy, paxosSessions: SessionPolicy) -> [UInt8] {
    var writer = WireWriter(reservingCapacity: 128)
    writer.writeString("quorum replication v1")
    writer.writeBytes(groupTableDigest)
    // An engine no group runs applies nothing: its policy does not matter.
    let engines = Set(groups.map(\.engine))
    var policies: [SessionPolicy] = []
    if engines.contains(.raft) { policies.append(raftSessions) }
    if engines.contains(.multiPaxos) { policies.append(paxosSessions) }
    for policy in policies {
      writer.writeVarint(policy.timeoutMillis)
      for limit in [
        policy.maxSessions, policy.maxResponsesPerSession, policy.maxSessionsPerPrincipal,
        policy.maxResponseBytesPerSession,
      ] {
        writer.writeVarint(UInt64(clamping: limit))
      }
    }
    return Array(SHA256.hash(writer.bytes))
  }
}
