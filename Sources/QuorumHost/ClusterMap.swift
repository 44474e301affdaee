public import QuorumCore

/// Which consensus protocol replicates a group's log.
public enum EngineKind: String, Sendable, Hashable, CaseIterable, WireCodable, CustomStringConvertible {
  /// Raft (`RaftEngine`).
  case raft
  /// Multi-Paxos (`MultiPaxosEngine`).
  case multiPaxos = "multi-paxos"

  public var description: String { rawValue }

  public func encode(to writer: inout WireWriter) { writer.writeString(rawValue) }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    let text = try reader.readString()
    guard let kind = EngineKind(rawValue: text) else { throw WireError(.invalidValue("engine \(text)"), at: at) }
    self = kind
  }
}

/// A contiguous range of hash slots, `lower...upper`.
public struct SlotRange: Sendable, Hashable, WireCodable, CustomStringConvertible {
  /// The first slot.
  public var lower: UInt16
  /// The last slot (inclusive).
  public var upper: UInt16

  /// Creates a range; `lower` must not exceed `upper`.
  public init(_ lower: UInt16, _ upper: UInt16) {
    self.lower = lower
    self.upper = upper
  }

  /// Whether `slot` lies in the range.
  public func contains(_ slot: UInt16) -> Bool { slot >= lower && slot <= upper }

  public func encode(to writer: inout WireWriter) {
    writer.writeVarint(UInt64(lower))
    writer.writeVarint(UInt64(upper))
  }

  /// Decodes a range; one that is empty or reaches past the last slot is refused (a map from the wire resolves
  /// slots by these bounds).
  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    lower = try reader.readVarint(as: UInt16.self)
    upper = try reader.readVarint(as: UInt16.self)
    guard lower <= upper, upper < ClusterMap.slotCount else {
      throw WireError(.invalidValue("slot range \(lower)-\(upper) (slots are 0-\(ClusterMap.slotCount - 1))"), at: at)
    }
  }

  /// `lower-upper`.
  public var description: String { lower == upper ? "\(lower)" : "\(lower)-\(upper)" }

  /// `ranges` sorted by their first slot, with overlapping and adjacent ranges merged: the same slots always
  /// come out as the same ranges (`0-99,100-199`, `100-199,0-99` and `0-199` all become `0-199`).
  public static func normalized(_ ranges: [SlotRange]) -> [SlotRange] {
    var merged: [SlotRange] = []
    for range in ranges.sorted(by: { ($0.lower, $0.upper) < ($1.lower, $1.upper) }) {
      if let last = merged.last, Int(range.lower) <= Int(last.upper) + 1 {
        merged[merged.count - 1].upper = max(last.upper, range.upper)
      } else {
        merged.append(range)
      }
    }
    return merged
  }
}

/// One consensus group of a cluster: who replicates it, with which engine, which services its log carries, and
/// which hash slots of the key space it owns.
public struct GroupSpec: Sendable, Equatable, WireCodable, CustomStringConvertible {
  /// The group's number (0 is the default group of a one-group cluster).
  public var id: GroupID
  /// The group's name (its storage directory and what operators see).
  public var name: String
  /// The consensus engine.
  public var engine: EngineKind
  /// The founding members (any subset of the cluster's nodes).
  public var members: [NodeID]
  /// The services the group's log carries, by name.
  public var services: [String]
  /// The hash slots the group owns for keyed services; empty means the host assigns them (see
  /// ``ClusterMap/owner(of:service:)``).
  public var slots: [SlotRange]

  /// Creates a group description.
  public init(
    id: GroupID, name: String, engine: EngineKind = .raft, members: [NodeID], services: [String],
    slots: [SlotRange] = []
  ) {
    self.id = id
    self.name = name
    self.engine = engine
    self.members = members
    self.services = services
    self.slots = slots
  }

  public func encode(to writer: inout WireWriter) {
    id.encode(to: &writer)
    writer.writeString(name)
    engine.encode(to: &writer)
    writer.writeArray(members)
    writer.writeArray(services)
    writer.writeArray(slots)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    id = try reader.read()
    name = try reader.readString()
    engine = try reader.read()
    members = try reader.readArray(NodeID.self)
    services = try reader.readArray(String.self)
    slots = try reader.readArray(SlotRange.self)
  }

  public var description: String {
    let slotText = slots.isEmpty ? "" : ", slots \(slots.map(\.description).joined(separator: ","))"
    return "\(name) (\(id), \(engine), members \(members.map(\.description).joined(separator: ",")), "
      + "services \(services.joined(separator: ","))\(slotText))"
  }
}

/// Why a cluster map was refused.
public struct ClusterMapError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The group (or line) at fault.
  public var subject: String
  /// What is wrong.
  public var reason: String
  /// The field of the group at fault (`id`, `name`, `members`, `services` or `slots`), when one field is; a
  /// cluster file names that field's line.
  public var field: String?

  /// Creates an error.
  public init(_ subject: String, _ reason: String) {
    self.init(subject, reason, field: nil)
  }

  /// Creates an error about one field of a group.
  public init(_ subject: String, _ reason: String, field: String?) {
    self.subject = subject
    self.reason = reason
    self.field = field
  }

  public var description: String { "\(subject): \(reason)" }
}

/// Where everything lives: the cluster's members and their addresses, its groups, and which group owns each key
/// of each keyed service.
///
/// ## Placement
///
/// Keys are placed by hash slot, as Redis Cluster does: a key's slot is CRC-32C of its bytes modulo
/// ``slotCount`` (4096). Among the groups that carry a service, each owns a set of slot ranges; a request about a
/// key goes to the group owning the key's slot. A service carried by exactly one group has all its keys there.
/// Groups that carry a service and name no slots share the slots that no other group claims, split evenly in
/// order of group id. Validation requires, for every service carried by several groups, that their slots cover
/// every slot exactly once.
///
/// Moving slots between groups while serving is not supported: it would need a copy of the slot's keys into
/// the target group, a fence in the source group's log refusing writes to those slots, and a new map version
/// clients learn from `wrongGroup` answers (see the QuorumHost article).
public struct ClusterMap: Sendable, Equatable, WireCodable {
  /// The number of hash slots.
  public static let slotCount: UInt16 = 4096

  /// The cluster's id.
  public var cluster: ClusterID
  /// Every node and, for a TCP cluster, its address (`host:port`; empty in process).
  public var members: [NodeID: String]
  /// The groups, by id.
  public var groups: [GroupSpec]

  /// Creates a map and resolves the slot assignment; call ``validate(knownServices:)`` before use.
  public init(cluster: ClusterID, members: [NodeID: String], groups: [GroupSpec]) {
    self.cluster = cluster
    self.members = members
    self.groups = groups.sorted { $0.id < $1.id }
  }

  /// The hash slot of `key`: CRC-32C of the UTF-8 bytes of its canonical composition (NFC), modulo
  /// ``slotCount``.
  ///
  /// Swift strings that are canonically equivalent are equal (`"caf\u{E9}" == "cafe\u{301}"`), and so are the
  /// key-value store's keys. Hashing the bytes as spelled would place two spellings of one key on two groups,
  /// each holding its own value; hashing the NFC form places every spelling of a key where the store finds it.
  /// Keys already in NFC (all ASCII keys among them) hash exactly as their bytes.
  public static func slot(of key: String) -> UInt16 {
    var key = key
    let ascii = key.withUTF8 { bytes -> UInt32? in
      for byte in bytes where byte >= 0x80 { return nil }
      return CRC32C.checksum(UnsafeRawBufferPointer(bytes))
    }
    // `_nfcCodeUnits` is the standard library's own normalisation, the one its string comparison and hashing
    // use, so the slot follows `==` exactly; it is public (underscored) API, as Foundation uses it.
    let crc = ascii ?? CRC32C.checksum(key._nfcCodeUnits)
    return UInt16(crc % UInt32(slotCount))
  }

  /// The group with id `id`.
  public func group(_ id: GroupID) -> GroupSpec? { groups.first { $0.id == id } }

  /// The groups `node` is a member of.
  public func groups(of node: NodeID) -> [GroupSpec] { groups.filter { $0.members.contains(node) } }

  /// The groups carrying `service`.
  public func groups(carrying service: String) -> [GroupSpec] { groups.filter { $0.services.contains(service) } }

  /// The slots group `id` owns for `service`, after defaults are applied.
  public func slots(of id: GroupID, service: String) -> [SlotRange] {
    let carriers = groups(carrying: service)
    guard carriers.contains(where: { $0.id == id }) else { return [] }
    if carriers.count == 1 { return [SlotRange(0, Self.slotCount - 1)] }
    if let own = group(id)?.slots, !own.isEmpty { return own }
    // Split what no group claims among the groups that claim nothing, in order of id.
    var claimed = [Bool](repeating: false, count: Int(Self.slotCount))
    for group in carriers {
      for range in group.slots { for slot in range.lower...range.upper { claimed[Int(slot)] = true } }
    }
    let free = (0..<Int(Self.slotCount)).filter { !claimed[$0] }
    let sharing = carriers.filter { $0.slots.isEmpty }
    guard let position = sharing.firstIndex(where: { $0.id == id }), !free.isEmpty else { return [] }
    let share = (free.count + sharing.count - 1) / sharing.count
    let mine = free.dropFirst(position * share).prefix(share)
    return Self.ranges(of: Array(mine))
  }

  private static func ranges(of slots: [Int]) -> [SlotRange] {
    var result: [SlotRange] = []
    for slot in slots {
      if let last = result.last, Int(last.upper) + 1 == slot {
        result[result.count - 1].upper = UInt16(slot)
      } else {
        result.append(SlotRange(UInt16(slot), UInt16(slot)))
      }
    }
    return result
  }

  /// The group that owns `key` for `service`, if any group carries the service.
  public func owner(of key: String, service: String) -> GroupID? {
    let carriers = groups(carrying: service)
    if carriers.count <= 1 { return carriers.first?.id }
    let slot = Self.slot(of: key)
    return carriers.first { slots(of: $0.id, service: service).contains { $0.contains(slot) } }?.id
  }

  /// Checks the map: unique group ids and names, members that exist, non-empty groups, known engines and
  /// services, slots within range, and full, disjoint coverage for services carried by several groups.
  public func validate(knownServices: Set<String>) throws(ClusterMapError) {
    guard !members.isEmpty else { throw ClusterMapError("members", "no members") }
    guard !groups.isEmpty else { throw ClusterMapError("groups", "no groups") }
    var ids = Set<GroupID>()
    var names = Set<String>()
    for group in groups {
      let subject = "group \(group.name)"
      guard ids.insert(group.id).inserted else {
        throw ClusterMapError(subject, "group id \(group.id) is used twice", field: "id")
      }
      guard !group.name.isEmpty, names.insert(group.name).inserted else {
        throw ClusterMapError(subject, "the name is empty or used twice", field: "name")
      }
      guard group.name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." }),
        group.name.first != "."
      else {
        throw ClusterMapError(
          subject, "names use letters, digits, '-', '_' and '.' (it names a directory)", field: "name")
      }
      guard !group.members.isEmpty else { throw ClusterMapError(subject, "no members", field: "members") }
      guard Set(group.members).count == group.members.count else {
        throw ClusterMapError(subject, "a member is listed twice", field: "members")
      }
      for member in group.members where members[member] == nil {
        throw ClusterMapError(subject, "member \(member) is not a member of the cluster", field: "members")
      }
      guard !group.services.isEmpty else { throw ClusterMapError(subject, "no services", field: "services") }
      guard Set(group.services).count == group.services.count else {
        throw ClusterMapError(subject, "a service is listed twice", field: "services")
      }
      for service in group.services where !knownServices.contains(service) {
        throw ClusterMapError(
          subject, "unknown service '\(service)' (known: \(knownServices.sorted().joined(separator: ", ")))",
          field: "services")
      }
      for range in group.slots where range.lower > range.upper || range.upper >= Self.slotCount {
        throw ClusterMapError(subject, "slots \(range) are not within 0-\(Self.slotCount - 1)", field: "slots")
      }
    }
    for service in Set(groups.flatMap(\.services)).sorted() {
      let carriers = groups(carrying: service)
      guard carriers.count > 1 else { continue }
      var owner = [GroupID?](repeating: nil, count: Int(Self.slotCount))
      for group in carriers {
        for range in slots(of: group.id, service: service) {
          for slot in range.lower...range.upper {
            if let other = owner[Int(slot)] {
              throw ClusterMapError(
                "group \(group.name)", "slot \(slot) of service \(service) is also owned by group \(other)",
                field: "slots")
            }
            owner[Int(slot)] = group.id
          }
        }
      }
      if let gap = owner.firstIndex(where: { $0 == nil }) {
        throw ClusterMapError("service \(service)", "slot \(gap) is owned by no group", field: "slots")
      }
    }
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeString(cluster.rawValue)
    let ids = members.keys.sorted()
    writer.writeVarint(UInt64(ids.count))
    for id in ids {
      id.encode(to: &writer)
      writer.writeString(members[id] ?? "")
    }
    writer.writeArray(groups)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    cluster = ClusterID(rawValue: try reader.readString())
    let count = try reader.readCount()
    var members: [NodeID: String] = [:]
    for _ in 0..<count {
      let id = try reader.read(NodeID.self)
      members[id] = try reader.readString()
    }
    self.members = members
    groups = try reader.readArray(GroupSpec.self)
  }
}

/// A ``ClusterMap``'s slot ownership resolved into tables, for routing every request in constant time.
public struct Placement: Sendable {
  private let owners: [String: [GroupID]]
  private let sole: [String: GroupID]

  /// Resolves `map`'s slot assignment (the map should be valid).
  public init(_ map: ClusterMap) {
    var owners: [String: [GroupID]] = [:]
    var sole: [String: GroupID] = [:]
    for service in Set(map.groups.flatMap(\.services)) {
      let carriers = map.groups(carrying: service)
      if carriers.count == 1, let only = carriers.first {
        sole[service] = only.id
        continue
      }
      var table = [GroupID](repeating: .default, count: Int(ClusterMap.slotCount))
      for group in carriers {
        for range in map.slots(of: group.id, service: service) {
          for slot in range.lower...range.upper { table[Int(slot)] = group.id }
        }
      }
      owners[service] = table
    }
    self.owners = owners
    self.sole = sole
  }

  /// The group owning `key` for `service`, or `nil` if no group carries the service.
  public func owner(of key: String, service: String) -> GroupID? {
    if let group = sole[service] { return group }
    return owners[service]?[Int(ClusterMap.slot(of: key))]
  }

  /// Whether group `group` owns `key` for `service`.
  public func owns(_ group: GroupID, key: String, service: String) -> Bool {
    owner(of: key, service: service) == group
  }
}
