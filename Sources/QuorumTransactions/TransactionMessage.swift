public import QuorumCore

/// The messages of two-phase commit between a coordinator and its participants (and between participants, for
/// cooperative termination).
///
/// Every message names its transaction, and every handler is idempotent per transaction: a duplicated, delayed
/// or reordered message changes nothing that its first copy did not (see ``CoordinatorCore`` and
/// ``ParticipantCore``).
public enum TransactionMessage: Hashable, Sendable, WireCodable, CustomStringConvertible {
  /// Coordinator → participant: prepare `id`. `participants` lists every participant (for cooperative
  /// termination). `recordStore` identifies the replicated record store holding the decision record in
  /// non-blocking mode (``TransactionRecordStore/sharedIdentity``), or is `nil` in classic mode.
  case prepare(TxnID, participants: [NodeID], recordStore: UInt64?)
  /// Coordinator → the only participant: prepare and commit at once (one-phase commit); the participant
  /// decides and answers with ``outcome(_:_:)``. `recordStore` identifies the shared record store where the
  /// coordinator looks for the decision (``TransactionRecordStore/sharedIdentity``): a participant decides in one
  /// phase only if it writes to that same store, and otherwise answers as to a prepare (a vote), so that the
  /// coordinator records the decision itself. `nil` only from a coordinator older than this field (wire tag 1),
  /// which did not say.
  case commitOnePhase(TxnID, recordStore: UInt64?)
  /// Participant → coordinator: the vote on `prepare`.
  case vote(TxnID, TransactionVote)
  /// The decision: from the coordinator in phase 2, or from a participant (or the coordinator) answering
  /// ``decisionRequest(_:)``.
  case decision(TxnID, TransactionDecision)
  /// Participant → coordinator: the commit is applied and its record ended (phase 2 done for this participant).
  case ack(TxnID)
  /// A prepared participant asks for the decision: first the coordinator, then (cooperative termination) the
  /// other participants.
  case decisionRequest(TxnID)
  /// The only participant → coordinator: what it decided on ``commitOnePhase(_:recordStore:)``.
  case outcome(TxnID, TransactionDecision)

  /// The transaction the message is about.
  public var transaction: TxnID {
    switch self {
    case .prepare(let id, _, _), .commitOnePhase(let id, _), .vote(let id, _), .decision(let id, _), .ack(let id),
      .decisionRequest(let id), .outcome(let id, _):
      return id
    }
  }

  public var description: String {
    switch self {
    case .prepare(let id, let participants, let store):
      return "prepare \(id) \(participants.map(\.description).joined(separator: ","))"
        + (store.map { " record-store=\($0)" } ?? "")
    case .commitOnePhase(let id, let store):
      return "commit-one-phase \(id)" + (store.map { " record-store=\($0)" } ?? "")
    case .vote(let id, let vote): return "vote \(id) \(vote)"
    case .decision(let id, let decision): return "\(decision) \(id)"
    case .ack(let id): return "ack \(id)"
    case .decisionRequest(let id): return "decision? \(id)"
    case .outcome(let id, let decision): return "outcome \(id) \(decision)"
    }
  }

  public func encode(to writer: inout WireWriter) {
    switch self {
    case .prepare(let id, let participants, let store):
      writer.writeByte(0)
      writer.write(id)
      writer.writeArray(participants)
      writer.writeOptional(store)
    case .commitOnePhase(let id, let store?):
      // Tag 7 (tag 1 without the store is what coordinators sent before the field existed; it still decodes).
      writer.writeByte(7)
      writer.write(id)
      writer.write(store)
    case .commitOnePhase(let id, nil):
      writer.writeByte(1)
      writer.write(id)
    case .vote(let id, let vote):
      writer.writeByte(2)
      writer.write(id)
      writer.write(vote)
    case .decision(let id, let decision):
      writer.writeByte(3)
      writer.write(id)
      writer.write(decision)
    case .ack(let id):
      writer.writeByte(4)
      writer.write(id)
    case .decisionRequest(let id):
      writer.writeByte(5)
      writer.write(id)
    case .outcome(let id, let decision):
      writer.writeByte(6)
      writer.write(id)
      writer.write(decision)
    }
  }

  public init(from reader: inout WireReader) throws(WireError) {
    let at = reader.position
    switch try reader.readByte() {
    case 0:
      self = .prepare(
        try reader.read(), participants: try reader.readArray(NodeID.self), recordStore: try reader.readOptional())
    case 1: self = .commitOnePhase(try reader.read(), recordStore: nil)
    case 2: self = .vote(try reader.read(), try reader.read())
    case 3: self = .decision(try reader.read(), try reader.read())
    case 4: self = .ack(try reader.read())
    case 5: self = .decisionRequest(try reader.read())
    case 6: self = .outcome(try reader.read(), try reader.read())
    case 7: self = .commitOnePhase(try reader.read(), recordStore: try reader.read() as UInt64)
    case let tag: throw WireError(.unknownTag(type: "TransactionMessage", tag: UInt64(tag)), at: at)
    }
  }
}

/// A message a core asks its shell to send.
public struct TransactionOutgoing: Hashable, Sendable, CustomStringConvertible {
  /// The receiver.
  public var to: NodeID
  /// The message.
  public var message: TransactionMessage

  /// Creates an outgoing message.
  public init(to: NodeID, _ message: TransactionMessage) {
    self.to = to
    self.message = message
  }

  /// `-> n2 prepare …`.
  public var description: String { "-> \(to) \(message)" }
}
