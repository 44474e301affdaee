/// A service a consensus group's log can carry: a named deterministic state machine whose commands, queries,
/// answers and notifications all cross the network in Quorum's wire format.
///
/// A group's log can carry several services side by side (a key-value store and a lock table, say), so a lock
/// grant and a key-value write in one group are totally ordered. The server host composes them; adding a
/// service touches neither the transport, nor the engines, nor the server's plumbing: define the machine and
/// conform a small value to this protocol.
public protocol ReplicatedService: Sendable {
  /// The state machine.
  associatedtype Machine: StateMachine
  where Machine.Query: WireCodable, Machine.QueryResult: WireCodable, Machine.Notification: WireCodable

  /// The service's name, unique within a group (`kv`, `locks`, `txn`): clients address requests with it.
  static var name: String { get }

  /// A fresh machine for a new group (a snapshot in storage replaces its state).
  func makeMachine() -> Machine

  /// The key a command concerns, for placement across groups; `nil` when the command is not about one key.
  static func routingKey(of command: Machine.Command) -> String?

  /// Every key a command concerns, each of which its group must own (a transaction's prepare carries several);
  /// the default is the key of `routingKey(of:)` alone.
  static func routingKeys(of command: Machine.Command) -> [String]

  /// The key a query concerns; `nil` when it is not about one key (a scan covers the group's own keys).
  static func routingKey(of query: Machine.Query) -> String?

  /// The keys clients may watch for `notification` (for example `session/42` and `grant/orders/42` for a lock
  /// granted to session 42): a client waiting for something the log will produce later watches a key.
  static func notificationKeys(of notification: Machine.Notification) -> [String]

  /// Whether `command` only removes or releases state (a delete, a lock release): a member past its space quota
  /// still accepts it, so that space can be won back. The default says no.
  static func reclaimsSpace(_ command: Machine.Command) -> Bool

  /// Whether a client may send `command` (by default, every command). A service whose machine also takes
  /// commands that only the host itself proposes, such as a leader's clock entry, refuses those from clients.
  static func acceptsFromClients(_ command: Machine.Command) -> Bool
}

extension ReplicatedService {
  /// The key `routingKey(of:)` names for the command, if any.
  public static func routingKeys(of command: Machine.Command) -> [String] {
    routingKey(of: command).map { [$0] } ?? []
  }

  /// No command is known to reclaim space.
  public static func reclaimsSpace(_ command: Machine.Command) -> Bool { false }

  /// Every command may come from a client.
  public static func acceptsFromClients(_ command: Machine.Command) -> Bool { true }
}

extension ReplicatedService where Machine.Notification == Never {
  /// A machine without notifications has nothing to watch.
  public static func notificationKeys(of notification: Never) -> [String] {}
}

extension Never: WireCodable {
  /// Never called: there is no value to encode.
  public func encode(to writer: inout WireWriter) {}

  /// Always throws: no value of `Never` exists.
  public init(from reader: inout WireReader) throws(WireError) {
    throw WireError(.invalidValue("Never"), at: reader.position)
  }
}
