public import QuorumCore

/// A command for one of the services a group's log carries: the service's name and its encoded command.
public struct ServiceCommand: Sendable, Equatable, WireCodable, CustomStringConvertible {
  /// The service addressed (`kv`, `locks`, …).
  public var service: String
  /// The service's command, encoded.
  public var payload: [UInt8]

  /// Creates a command.
  public init(service: String, payload: [UInt8]) {
    self.service = service
    self.payload = payload
  }

  public func encode(to writer: inout WireWriter) {
    writer.writeString(service)
    writer.writeBytes(payload)
  }

  public init(from reader: inout WireReader) throws(WireError) {
    service = try reader.readString()
    payload = try reader.readBytes()
  }

  public var description: String { "\(service): \(payload.count) B" }
}

/// The answer of one service to a ``ServiceCommand`` or a ``ServiceQuery``.
public enum ServiceAnswer: Sendable, Equatable, WireCodable {
  /// The service's response (or query result), encoded.
  case ok([UInt8])
  /// No service of that name runs in this group.
  case unknownService(String)
  /// The payload did not decode as the service's command or query.
  case malformed(String)

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .ok(let bytes):
      writer.writeByte(0)
      writer.writeBytes(bytes)
    case .unknownService(let name):
      writer.writeByte(1)
      writer.writeString(name)
    case .malformed(let why):
      writer.writeByte(2)
      writer.writeString(why)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0: self = .ok(try reader.readBytes())
    case 1: self = .unknownService(try reader.readString())
    case 2: self = .malformed(try reader.readString())
    case let tag: throw WireError(.unknownTag(type: "ServiceAnswer", tag: UInt64(tag)), at: at)
    }
  }
}

/// A read for one service: its name and its encoded query.
public struct ServiceQuery: Sendable, Equatable {
  /// The service addressed.
  public var service: String
  /// The service's query, encoded.
  public var payload: [UInt8]

  /// Creates a query.
  public init(service: String, payload: [UInt8]) {
    self.service = service
    self.payload = payload
  }
}

/// Something a service tells waiting clients (a lock granted in a later entry), encoded, with the keys it can be
/// watched by.
public struct ServiceNotification: Sendable, Equatable {
  /// The service that produced it.
  public var service: String
  /// The service's notification, encoded.
  public var payload: [UInt8]
  /// The keys clients may watch it by (``QuorumCore/ReplicatedService/notificationKeys(of:)``).
  public var keys: [String]
}

/// One service's state inside a ``ServiceMachine``, with its type erased so that services of any type share one
/// log. Implementations are value types, so a copy of the machine (for a background snapshot) copies them.
protocol ServiceState: Sendable {
  var name: String { get }
  mutating func apply(_ payload: [UInt8], context: ApplyContext) -> ServiceAnswer
  func query(_ payload: [UInt8]) -> ServiceAnswer
  mutating func takeNotifications() -> [(payload: [UInt8], keys: [String])]
  var nextDeadlineMillis: UInt64? { get }
  mutating func advanceTime(context: ApplyContext)
  func snapshot() -> [UInt8]
  func writeSnapshot(to writer: inout WireWriter)
  mutating func restore(from bytes: [UInt8]) throws
  /// Starts the service afresh, as a new group's (its state at the start of the log).
  mutating func reset()
  /// Whether `other` is the same service in the same state (structurally, not only in its snapshot's bytes).
  func isEqual(to other: any ServiceState) -> Bool
}

struct TypedServiceState<Service: ReplicatedService>: ServiceState {
  var machine: Service.Machine
  /// The service, which makes a fresh machine on ``reset()``.
  private let service: Service
  /// Whether the machine can notify at all (its `Notification` is not `Never`). Decided once: a service that
  /// cannot is not asked after every entry, which in this unspecialised code costs runtime type lookups.
  private let notifies: Bool
  /// Whether the machine changed since its notifications were last taken.
  private var changed = false

  init(service: Service) {
    self.service = service
    self.machine = service.makeMachine()
    notifies = Service.Machine.Notification.self != Never.self
  }

  var name: String { Service.name }

  mutating func apply(_ payload: [UInt8], context: ApplyContext) -> ServiceAnswer {
    changed = true
    let command: Service.Machine.Command
    do {
      command = try Service.Machine.Command(wireBytes: payload)
    } catch {
      return .malformed("\(error)")
    }
    return .ok(machine.apply(command, context: context).wireBytes())
  }

  func query(_ payload: [UInt8]) -> ServiceAnswer {
    do {
      return .ok(machine.query(try Service.Machine.Query(wireBytes: payload)).wireBytes())
    } catch {
      return .malformed("\(error)")
    }
  }

  mutating func takeNotifications() -> [(payload: [UInt8], keys: [String])] {
    guard notifies && changed else { return [] }
    changed = false
    let notifications = machine.takeNotifications()
    // Most entries notify nothing: no array of tuples is made for them.
    if notifications.isEmpty { return [] }
    return notifications.map { ($0.wireBytes(), Service.notificationKeys(of: $0)) }
  }

  var nextDeadlineMillis: UInt64? { machine.nextDeadlineMillis }

  mutating func advanceTime(context: ApplyContext) {
    changed = true
    machine.advanceTime(context: context)
  }

  func snapshot() -> [UInt8] { machine.snapshot() }

  func writeSnapshot(to writer: inout WireWriter) { machine.writeSnapshot(to: &writer) }

  mutating func restore(from bytes: [UInt8]) throws {
    changed = true
    try machine.restore(from: bytes)
  }

  mutating func reset() {
    changed = true
    machine = service.makeMachine()
  }

  /// Compares the machines with their own `==` when they are `Equatable` (every service of the standard catalog's
  /// is), otherwise their snapshots' bytes, the most a machine without `==` shows. Not compared: the service (the
  /// factory of fresh machines, the same for a service's name) and `changed`, which only says whether to ask for
  /// notifications and is not state.
  func isEqual(to other: any ServiceState) -> Bool {
    guard let other = other as? Self else { return false }
    if let equatable = machine as? any Equatable { return Self.equal(equatable, other.machine) }
    return machine.snapshot() == other.machine.snapshot()
  }

  private static func equal<E: Equatable>(_ a: E, _ b: Any) -> Bool { (b as? E) == a }
}

/// The state machine of a group whose log carries several services side by side.
///
/// Each command names its service; the machine hands it to that service's own machine. Wrapped by the
/// engine's exactly-once sessions (`ReplicatedStateMachine`), so one session covers every service of the group.
/// Its snapshot holds every service's snapshot, by name. A command for a service the group does not run is
/// answered ``ServiceAnswer/unknownService(_:)`` — deterministically, on every replica.
public struct ServiceMachine: StateMachine {
  public typealias Command = ServiceCommand
  public typealias Response = ServiceAnswer
  public typealias Query = ServiceQuery
  public typealias QueryResult = ServiceAnswer
  public typealias Notification = ServiceNotification

  private var services: [any ServiceState]

  /// A machine running `services` (names must be unique; the host validates that).
  public init(_ services: [any ReplicatedService]) {
    self.services = services.map { Self.state(for: $0) }.sorted { $0.name < $1.name }
  }

  private static func state<S: ReplicatedService>(for service: S) -> any ServiceState {
    TypedServiceState<S>(service: service)
  }

  /// The names of the services, sorted.
  public var serviceNames: [String] { services.map(\.name) }

  private func position(of name: String) -> Int? { services.firstIndex { $0.name == name } }

  public mutating func apply(_ command: ServiceCommand, context: ApplyContext) -> ServiceAnswer {
    guard let i = position(of: command.service) else { return .unknownService(command.service) }
    return services[i].apply(command.payload, context: context)
  }

  public func query(_ query: ServiceQuery) -> ServiceAnswer {
    guard let i = position(of: query.service) else { return .unknownService(query.service) }
    return services[i].query(query.payload)
  }

  public mutating func takeNotifications() -> [ServiceNotification] {
    var all: [ServiceNotification] = []
    for i in services.indices {
      for (payload, keys) in services[i].takeNotifications() {
        all.append(ServiceNotification(service: services[i].name, payload: payload, keys: keys))
      }
    }
    return all
  }

  public var nextDeadlineMillis: UInt64? { services.compactMap(\.nextDeadlineMillis).min() }

  public mutating func advanceTime(context: ApplyContext) {
    for i in services.indices { services[i].advanceTime(context: context) }
  }

  public func snapshot() -> [UInt8] {
    var writer = WireWriter(reservingCapacity: 256)
    writeSnapshot(to: &writer)
    return writer.bytes
  }

  /// Writes each service's snapshot in place, not copied from an array of its own.
  public func writeSnapshot(to writer: inout WireWriter) {
    writer.writeVarint(1)  // format version
    writer.writeVarint(UInt64(services.count))
    for service in services {
      writer.writeString(service.name)
      writer.writeLengthPrefixed { service.writeSnapshot(to: &$0) }
    }
  }

  /// The names of the services whose states differ between `self` and `other` (a service only one of them runs
  /// counts as differing).
  package func differingServices(from other: ServiceMachine) -> [String] {
    let names = Set(serviceNames).union(other.serviceNames).sorted()
    return names.filter { name in
      guard let mine = position(of: name), let theirs = other.position(of: name) else { return true }
      return !services[mine].isEqual(to: other.services[theirs])
    }
  }

  public mutating func restore(from snapshot: [UInt8]) throws {
    var reader = WireReader(snapshot, limits: .snapshot(snapshot))
    let version = try reader.readVarint()
    guard version == 1 else { throw WireError(.unsupportedVersion(UInt8(truncatingIfNeeded: version)), at: 0) }
    let count = try reader.readCount()
    // Every service starts afresh and takes its state from the snapshot: one the snapshot does not hold (it was
    // taken before the service joined the group) has the state of a new group's, never what this replica had
    // applied (a mix of two points in the log).
    var restored = services
    for i in restored.indices { restored[i].reset() }
    var seen: Set<String> = []
    for _ in 0..<count {
      let at = reader.position
      let name = try reader.readString()
      let bytes = try reader.readBytes()
      guard let i = restored.firstIndex(where: { $0.name == name }) else {
        throw WireError(.invalidValue("snapshot holds service \(name), which this group does not run"), at: at)
      }
      guard seen.insert(name).inserted else {
        throw WireError(.invalidValue("snapshot holds service \(name) twice"), at: at)
      }
      try restored[i].restore(from: bytes)
    }
    try reader.expectEnd()
    services = restored
  }
}

/// Structural equality, service by service, for checking that a replica restored from a snapshot holds what one
/// that applied every entry holds (also what a service's snapshot encoding might leave out).
extension ServiceMachine: Equatable {
  /// Whether `a` and `b` run the same services, each in the same state (compared through its own `==`).
  public static func == (a: ServiceMachine, b: ServiceMachine) -> Bool { a.differingServices(from: b).isEmpty }
}
