public import QuorumCore
import Synchronization

/// The message the transport conformance suite sends: who sent it, its number on that sender's link, and
/// payload bytes whose content the receiver verifies.
///
/// It is ``QuorumCore/WireCodable`` so that transports which encode messages (TCP) can carry it; such
/// transports frame it behind a ``QuorumCore/WireEnvelope`` header with ``QuorumCore/WireProtocol/test``.
public struct ConformanceMessage: Sendable, Hashable, WireCodable, CustomStringConvertible {
  /// The node that sent the message.
  public var sender: NodeID
  /// The message's number on its link, counting from 0.
  public var sequence: UInt64
  /// Payload bytes; their content is derived from the sequence number and checked on arrival.
  public var payload: [UInt8]

  /// Creates a message.
  public init(sender: NodeID, sequence: UInt64, payload: [UInt8] = []) {
    self.sender = sender
    self.sequence = sequence
    self.payload = payload
  }

  /// Writes the sender, the sequence number and the length-prefixed payload.
  public func encode(to writer: inout WireWriter) {
    sender.encode(to: &writer)
    writer.writeVarint(sequence)
    writer.writeBytes(payload)
  }

  /// Reads a message written by ``encode(to:)``.
  public init(from reader: inout WireReader) throws(WireError) {
    sender = try reader.read(NodeID.self, field: "sender")
    sequence = try reader.read(UInt64.self, field: "sequence")
    do { payload = try reader.readBytes() } catch { throw error.inside("payload") }
  }

  /// `n2#17 (8 bytes)`.
  public var description: String { "\(sender)#\(sequence) (\(payload.count) bytes)" }
}

/// A transport that broke its contract: which conformance check found it, and what was seen.
public struct ConformanceFailure: Error, Sendable, Equatable, CustomStringConvertible {
  /// The check that failed (a ``TransportConformance/Check`` raw value).
  public var check: String
  /// What the check saw, with the numbers that show it.
  public var detail: String

  /// Creates a failure.
  public init(check: String, detail: String) {
    self.check = check
    self.detail = detail
  }

  /// `transport conformance check 'ordering per link' failed: …`.
  public var description: String { "transport conformance check '\(check)' failed: \(detail)" }
}

/// The conformance suite every ``QuorumCore/Transport`` must pass, shipped so that your own transports can
/// run it too.
///
/// Each check takes a factory that makes a fresh transport (so a transport that needs per-test set-up, such
/// as TCP listeners, gets it), binds the nodes it needs, drives them, closes every endpoint it bound, and
/// throws a ``ConformanceFailure`` naming the check and what it saw. The checks bind the nodes `n1` (the
/// receiver) and `n2`, `n3`, … (senders), so the transport the factory returns must be able to bind and
/// route between `n1` … `n(1 + senderCount)`.
///
/// Every wait has a deadline (``Configuration/deliveryTimeout``): a transport that loses a message or never
/// ends a closed endpoint's `incoming` fails with a message saying what was awaited, rather than hanging.
/// Senders refused with ``QuorumCore/TransportError/queueFull(peer:capacity:)`` retry (the contract lets a
/// full queue refuse) after `Task.yield()`, backing off briefly every thousand refusals, up to
/// ``Configuration/queueFullRetryLimit`` refusals of one message.
///
/// ```swift
/// try await TransportConformance.runAll { InProcessTransport<ConformanceMessage>() }
/// ```
public enum TransportConformance {
  /// The sizes, counts and limits the checks use.
  public struct Configuration: Sendable {
    /// Messages sent on the single link of ``Check/orderingPerLink``.
    public var messagesPerLink: Int
    /// Concurrent senders in ``Check/manySenders`` (nodes `n2` … `n(1 + senderCount)`).
    public var senderCount: Int
    /// Messages each sender sends in ``Check/manySenders``.
    public var messagesPerSender: Int
    /// Payload sizes, in bytes, sent by ``Check/largePayloads``.
    public var largePayloadBytes: [Int]
    /// Messages sent to a receiver that does not consume before ``Check/backPressure`` concludes that the
    /// transport's queues are unbounded.
    public var backPressureBound: Int
    /// The longest any single wait (for deliveries, or for `incoming` to end) may take.
    public var deliveryTimeout: Duration
    /// How many times one message is retried after `queueFull` before the check fails.
    public var queueFullRetryLimit: Int
    /// Called when a wait times out, before the endpoints close: what it returns (the transport's internal
    /// state, say) is added to the failure, so that a stall says where the messages stopped.
    public var diagnostics: (@Sendable () async -> String)?

    /// Creates a configuration; the defaults suit in-process and loopback transports.
    public init(
      messagesPerLink: Int = 20_000, senderCount: Int = 6, messagesPerSender: Int = 5_000,
      largePayloadBytes: [Int] = [1 << 20, 4 << 20], backPressureBound: Int = 10_000_000,
      deliveryTimeout: Duration = .seconds(30), queueFullRetryLimit: Int = 1_000_000,
      diagnostics: (@Sendable () async -> String)? = nil
    ) {
      precondition(messagesPerLink >= 1 && senderCount >= 1 && messagesPerSender >= 1, "counts must be positive")
      precondition(backPressureBound >= 1 && queueFullRetryLimit >= 1, "limits must be positive")
      self.messagesPerLink = messagesPerLink
      self.senderCount = senderCount
      self.messagesPerSender = messagesPerSender
      self.largePayloadBytes = largePayloadBytes
      self.backPressureBound = backPressureBound
      self.deliveryTimeout = deliveryTimeout
      self.queueFullRetryLimit = queueFullRetryLimit
      self.diagnostics = diagnostics
    }

    /// The default configuration.
    public static let `default` = Configuration()
  }

  /// One property of the transport contract.
  public enum Check: String, Sendable, CaseIterable, CustomStringConvertible {
    /// With no faults, one sender's messages to one receiver all arrive, in the order sent.
    case orderingPerLink = "ordering per link"
    /// Many concurrent senders to one receiver: every message arrives exactly once, each sender's in order.
    case manySenders = "many senders"
    /// Megabyte payloads arrive intact.
    case largePayloads = "large payloads"
    /// A closed receiver gets nothing more and its `incoming` ends; a closed sender's sends throw `.closed`.
    case noDeliveryAfterClose = "no delivery after close"
    /// Queues are bounded: a sender to a receiver that does not consume is refused with `queueFull`, and
    /// sending works again once the receiver drains.
    case backPressure = "back-pressure"

    /// The check's name.
    public var description: String { rawValue }
  }

  /// Runs every check, in the order ``Check`` declares them, stopping at the first failure.
  public static func runAll<T: Transport>(
    configuration: Configuration = .default, makeTransport: () async throws -> T
  ) async throws(ConformanceFailure) where T.Message == ConformanceMessage {
    for check in Check.allCases {
      try await run(check, configuration: configuration, makeTransport: makeTransport)
    }
  }

  /// Runs one check.
  public static func run<T: Transport>(
    _ check: Check, configuration: Configuration = .default, makeTransport: () async throws -> T
  ) async throws(ConformanceFailure) where T.Message == ConformanceMessage {
    switch check {
    case .orderingPerLink: try await checkOrderingPerLink(configuration: configuration, makeTransport: makeTransport)
    case .manySenders: try await checkManySenders(configuration: configuration, makeTransport: makeTransport)
    case .largePayloads: try await checkLargePayloads(configuration: configuration, makeTransport: makeTransport)
    case .noDeliveryAfterClose:
      try await checkNoDeliveryAfterClose(configuration: configuration, makeTransport: makeTransport)
    case .backPressure: try await checkBackPressure(configuration: configuration, makeTransport: makeTransport)
    }
  }

  /// Checks ``Check/orderingPerLink``: `n2` sends ``Configuration/messagesPerLink`` messages to `n1`, which
  /// must receive every one, in order, with intact payloads.
  public static func checkOrderingPerLink<T: Transport>(
    configuration: Configuration = .default, makeTransport: () async throws -> T
  ) async throws(ConformanceFailure) where T.Message == ConformanceMessage {
    let run = ConformanceRun(check: .orderingPerLink, configuration: configuration)
    try await run.withEndpoints(count: 2, makeTransport) { endpoints in
      let (receiver, sender) = (endpoints[0], endpoints[1])
      let count = configuration.messagesPerLink
      try await run.withDeadline("\(count) messages on \(sender.id)->\(receiver.id)") {
        try await withThrowingTaskGroup(of: Void.self) { group in
          group.addTask {
            for sequence in 0..<UInt64(count) {
              try await run.send(run.message(from: sender.id, sequence), from: sender, to: receiver.id)
            }
          }
          group.addTask {
            for expected in 0..<UInt64(count) {
              let envelope = try await run.receive(at: receiver, "message #\(expected) of \(count)")
              try run.expect(envelope, from: sender.id, to: receiver.id, sequence: expected)
            }
          }
          // Unlike waitForAll(), iterating rethrows the first failure at once, cancelling the other tasks.
          for try await _ in group {}
        }
      }
    }
  }

  /// Checks ``Check/manySenders``: ``Configuration/senderCount`` concurrent senders each send
  /// ``Configuration/messagesPerSender`` messages to `n1`, which must receive each exactly once and each
  /// sender's in order.
  public static func checkManySenders<T: Transport>(
    configuration: Configuration = .default, makeTransport: () async throws -> T
  ) async throws(ConformanceFailure) where T.Message == ConformanceMessage {
    let run = ConformanceRun(check: .manySenders, configuration: configuration)
    try await run.withEndpoints(count: 1 + configuration.senderCount, makeTransport) { endpoints in
      let receiver = endpoints[0]
      let senders = endpoints.dropFirst()
      let perSender = configuration.messagesPerSender
      let total = perSender * senders.count
      try await run.withDeadline("\(total) messages from \(senders.count) senders") {
        try await withThrowingTaskGroup(of: Void.self) { group in
          for sender in senders {
            group.addTask {
              for sequence in 0..<UInt64(perSender) {
                try await run.send(run.message(from: sender.id, sequence), from: sender, to: receiver.id)
              }
            }
          }
          group.addTask {
            var next: [NodeID: UInt64] = [:]
            for sender in senders { next[sender.id] = 0 }
            for received in 0..<total {
              let envelope = try await run.receive(at: receiver, "message \(received + 1) of \(total)")
              let from = envelope.payload.sender
              guard let expected = next[from], expected < UInt64(perSender) else {
                throw run.failure(
                  "received \(envelope.payload) from \(envelope.from), which is not a sender or has sent all "
                    + "\(perSender) already (a duplicate)")
              }
              try run.expect(envelope, from: from, to: receiver.id, sequence: expected)
              next[from] = expected + 1
            }
          }
          // Unlike waitForAll(), iterating rethrows the first failure at once, cancelling the other tasks.
          for try await _ in group {}
        }
      }
    }
  }

  /// Checks ``Check/largePayloads``: `n2` sends one message of each size in
  /// ``Configuration/largePayloadBytes`` to `n1`, which must receive each with every byte intact.
  public static func checkLargePayloads<T: Transport>(
    configuration: Configuration = .default, makeTransport: () async throws -> T
  ) async throws(ConformanceFailure) where T.Message == ConformanceMessage {
    let run = ConformanceRun(check: .largePayloads, configuration: configuration)
    try await run.withEndpoints(count: 2, makeTransport) { endpoints in
      let (receiver, sender) = (endpoints[0], endpoints[1])
      for (index, size) in configuration.largePayloadBytes.enumerated() {
        let message = ConformanceMessage(
          sender: sender.id, sequence: UInt64(index),
          payload: ConformanceRun.payload(sequence: UInt64(index), bytes: size))
        try await run.withDeadline("a \(size)-byte message") {
          try await run.send(message, from: sender, to: receiver.id)
          let envelope = try await run.receive(at: receiver, "the \(size)-byte message")
          try run.expect(envelope, from: sender.id, to: receiver.id, sequence: UInt64(index), payloadBytes: size)
        }
      }
    }
  }

  /// Checks ``Check/noDeliveryAfterClose``.
  ///
  /// After a first message shows the link works, `n1` closes: sends to it may fail or be dropped, but
  /// nothing sent after the close may be delivered, and its `incoming` must end. Then `n2` closes: its sends
  /// must throw ``QuorumCore/TransportError/closed``, its `incoming` must end, and a second `close()` must be
  /// harmless.
  public static func checkNoDeliveryAfterClose<T: Transport>(
    configuration: Configuration = .default, makeTransport: () async throws -> T
  ) async throws(ConformanceFailure) where T.Message == ConformanceMessage {
    let run = ConformanceRun(check: .noDeliveryAfterClose, configuration: configuration)
    try await run.withEndpoints(count: 2, makeTransport) { endpoints in
      let (receiver, sender) = (endpoints[0], endpoints[1])
      try await run.withDeadline("the first message on \(sender.id)->\(receiver.id)") {
        try await run.send(run.message(from: sender.id, 0), from: sender, to: receiver.id)
        try run.expect(try await run.receive(at: receiver, "the first message"), from: sender.id, to: receiver.id)
      }

      await receiver.close()
      let afterClose: UInt64 = 1
      for sequence in afterClose..<(afterClose + 100) {
        // Refused or silently dropped are both allowed; what matters is that nothing arrives.
        try? sender.send(run.message(from: sender.id, sequence), to: receiver.id)
      }
      try await run.withDeadline("\(receiver.id).incoming to end after \(receiver.id) closed") {
        while let envelope = await receiver.incoming.receive() {
          if envelope.payload.sequence >= afterClose {
            throw run.failure("\(receiver.id) received \(envelope.payload) that was sent after it closed")
          }
        }
      }

      await sender.close()
      do {
        try sender.send(run.message(from: sender.id, afterClose + 100), to: receiver.id)
        throw run.failure("a send from the closed endpoint \(sender.id) was accepted")
      } catch let error as TransportError {
        guard error == .closed else {
          throw run.failure("a send from the closed endpoint \(sender.id) threw \(error), expected 'endpoint closed'")
        }
      }
      try await run.withDeadline("\(sender.id).incoming to end after \(sender.id) closed") {
        if let envelope = await sender.incoming.receive() {
          throw run.failure("the closed endpoint \(sender.id) received \(envelope.payload)")
        }
      }
      await sender.close()
    }
  }

  /// Checks ``Check/backPressure``.
  ///
  /// `n2` sends to `n1`, which does not consume, until the transport refuses with `queueFull`; that must
  /// happen within ``Configuration/backPressureBound`` messages. Then `n1` drains while `n2` sends a marker:
  /// what arrives before the marker must be in order and among the accepted messages. Finally `n2` sends a
  /// burst of 100 more, which must all arrive in order.
  public static func checkBackPressure<T: Transport>(
    configuration: Configuration = .default, makeTransport: () async throws -> T
  ) async throws(ConformanceFailure) where T.Message == ConformanceMessage {
    let run = ConformanceRun(check: .backPressure, configuration: configuration)
    try await run.withEndpoints(count: 2, makeTransport) { endpoints in
      let (receiver, sender) = (endpoints[0], endpoints[1])
      let accepted = try await run.fillUntilRefused(from: sender, to: receiver.id)
      let marker = UInt64(accepted)
      try await run.withDeadline("the marker after draining \(accepted) queued messages") {
        try await withThrowingTaskGroup(of: Void.self) { group in
          group.addTask { try await run.send(run.message(from: sender.id, marker), from: sender, to: receiver.id) }
          group.addTask {
            var previous: UInt64?
            while true {
              let envelope = try await run.receive(at: receiver, "the marker #\(marker)")
              try run.expect(envelope, from: sender.id, to: receiver.id)
              let sequence = envelope.payload.sequence
              if sequence == marker { return }
              guard sequence < marker, previous.map({ sequence > $0 }) ?? true else {
                throw run.failure(
                  "after back-pressure received #\(sequence) following #\(previous.map(String.init) ?? "none") "
                    + "(\(accepted) were accepted before queueFull)")
              }
              previous = sequence
            }
          }
          // Unlike waitForAll(), iterating rethrows the first failure at once, cancelling the other tasks.
          for try await _ in group {}
        }
      }
      try await run.withDeadline("100 messages sent after the receiver drained") {
        try await withThrowingTaskGroup(of: Void.self) { group in
          group.addTask {
            for sequence in (marker + 1)...(marker + 100) {
              try await run.send(run.message(from: sender.id, sequence), from: sender, to: receiver.id)
            }
          }
          group.addTask {
            for expected in (marker + 1)...(marker + 100) {
              let envelope = try await run.receive(at: receiver, "message #\(expected) after the drain")
              try run.expect(envelope, from: sender.id, to: receiver.id, sequence: expected)
            }
          }
          for try await _ in group {}
        }
      }
    }
  }
}

/// What a check run has done so far, for the report of a wait that timed out.
private final class ConformanceProgress: Sendable {
  private let start = ContinuousClock.now
  /// Messages the transport accepted, and messages received.
  private let sent = Atomic<Int>(0)
  private let received = Atomic<Int>(0)
  /// When the last message was sent and received (nanoseconds since `start`).
  private let lastSent = Atomic<Int64>(0)
  private let lastReceived = Atomic<Int64>(0)
  /// Describes each endpoint's `incoming` mailbox.
  let mailboxes = Mutex<[@Sendable () -> String]>([])

  private var elapsedNanos: Int64 {
    let elapsed = ContinuousClock.now - start
    return elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000
  }

  func noteSent() {
    _ = sent.add(1, ordering: .relaxed)
    lastSent.store(elapsedNanos, ordering: .relaxed)
  }

  func noteReceived() {
    _ = received.add(1, ordering: .relaxed)
    lastReceived.store(elapsedNanos, ordering: .relaxed)
  }

  var description: String {
    let now = elapsedNanos
    func ago(_ mark: borrowing Atomic<Int64>) -> String {
      "\((now - mark.load(ordering: .relaxed)) / 1_000_000) ms ago"
    }
    let mailboxes = self.mailboxes.withLock { $0 }.map { $0() }.joined(separator: "; ")
    return "\(sent.load(ordering: .relaxed)) messages sent (the last \(ago(lastSent))), "
      + "\(received.load(ordering: .relaxed)) received (the last \(ago(lastReceived))); incoming: \(mailboxes)"
  }
}

/// The state and helpers of one check run.
private struct ConformanceRun: Sendable {
  let check: TransportConformance.Check
  let configuration: TransportConformance.Configuration
  let progress = ConformanceProgress()

  func failure(_ detail: String) -> ConformanceFailure {
    ConformanceFailure(check: check.rawValue, detail: detail)
  }

  /// Makes a transport, binds `n1` … `n<count>`, runs `body`, and closes every endpoint however `body` ends.
  /// Any error other than a ``ConformanceFailure`` becomes one.
  func withEndpoints<T: Transport>(
    count: Int, _ makeTransport: () async throws -> T, _ body: ([T.Endpoint]) async throws -> Void
  ) async throws(ConformanceFailure) {
    let transport: T
    do { transport = try await makeTransport() } catch { throw failure("the transport factory threw \(error)") }
    var endpoints: [T.Endpoint] = []
    var outcome: ConformanceFailure?
    for node in 1...UInt64(count) {
      do {
        let endpoint = try await transport.bind(NodeID(node))
        endpoints.append(endpoint)
        let incoming = endpoint.incoming
        progress.mailboxes.withLock {
          $0.append {
            "\(endpoint.id) \(incoming.count)/\(incoming.capacity) queued, \(incoming.waitingSenderCount) senders "
              + "waiting, receiver \(incoming.hasWaitingReceiver ? "waiting" : "not waiting")"
              + (incoming.isClosed ? ", closed" : "")
          }
        }
      } catch {
        outcome = failure("binding n\(node) threw \(error)")
        break
      }
    }
    if outcome == nil {
      do {
        try await body(endpoints)
      } catch let error as ConformanceFailure {
        outcome = error
      } catch {
        outcome = failure("unexpected error \(error)")
      }
    }
    for endpoint in endpoints { await endpoint.close() }
    if let outcome { throw outcome }
  }

  /// Runs `body`, failing if it takes longer than the configured delivery timeout. `body` must end promptly
  /// when cancelled (waiting on a mailbox does).
  func withDeadline(_ awaited: String, _ body: @escaping @Sendable () async throws -> Void) async throws {
    let timeout = configuration.deliveryTimeout
    let timedOut = try await withThrowingTaskGroup(of: Bool.self) { group in
      group.addTask {
        try await body()
        return false
      }
      group.addTask {
        try await Task.sleep(for: timeout)
        return true
      }
      defer { group.cancelAll() }
      return try await group.next() ?? true
    }
    if timedOut {
      // How long a new task waits for a thread shows whether the cooperative pool was starved.
      let asked = ContinuousClock.now
      await Task {}.value
      let latency = ContinuousClock.now - asked
      var report =
        "timed out after \(timeout) waiting for \(awaited) (\(progress.description); a new task took "
        + "\(latency) to run)"
      if let diagnostics = configuration.diagnostics { report += "\nstate at the timeout:\n\(await diagnostics())" }
      throw failure(report)
    }
  }

  /// Sends `message`, retrying after `Task.yield()` while the transport reports `queueFull`.
  func send<E: TransportEndpoint<ConformanceMessage>>(_ message: ConformanceMessage, from sender: E, to peer: NodeID)
    async throws
  {
    var refusals = 0
    while true {
      do {
        try sender.send(message, to: peer)
        progress.noteSent()
        return
      } catch .queueFull(_, let capacity) {
        refusals += 1
        if refusals > configuration.queueFullRetryLimit {
          throw failure(
            "\(sender.id) could not send \(message) to \(peer): queue (capacity \(capacity)) still full after "
              + "\(configuration.queueFullRetryLimit) retries")
        }
        try Task.checkCancellation()
        if refusals % 1000 == 0 {
          try await Task.sleep(for: .milliseconds(1))
        } else {
          await Task.yield()
        }
      } catch {
        throw failure("\(sender.id) could not send \(message) to \(peer): \(error)")
      }
    }
  }

  /// Sends to a receiver that does not consume until refused; returns how many messages were accepted.
  func fillUntilRefused<E: TransportEndpoint<ConformanceMessage>>(from sender: E, to peer: NodeID) async throws -> Int {
    let bound = configuration.backPressureBound
    for sequence in 0..<bound {
      do {
        try sender.send(message(from: sender.id, UInt64(sequence)), to: peer)
      } catch .queueFull {
        if sequence == 0 { throw failure("the very first message to an idle receiver was refused with queueFull") }
        return sequence
      } catch {
        throw failure("message #\(sequence) to a receiver that does not consume failed with \(error)")
      }
      if sequence % 1024 == 1023 { await Task.yield() }
    }
    throw failure(
      "\(bound) messages were accepted for a receiver that does not consume, and none was refused with "
        + "queueFull: the transport's queues are not bounded")
  }

  /// Waits for the next envelope at `endpoint`; `incoming` ending is a failure.
  func receive<E: TransportEndpoint<ConformanceMessage>>(at endpoint: E, _ awaited: @autoclosure () -> String)
    async throws -> Envelope<ConformanceMessage>
  {
    guard let envelope = await endpoint.incoming.receive() else {
      try Task.checkCancellation()
      throw failure("\(endpoint.id).incoming ended while waiting for \(awaited())")
    }
    progress.noteReceived()
    return envelope
  }

  /// A small message whose payload is derived from its sequence number.
  func message(from sender: NodeID, _ sequence: UInt64) -> ConformanceMessage {
    ConformanceMessage(sender: sender, sequence: sequence, payload: Self.payload(sequence: sequence, bytes: 8))
  }

  /// `bytes` bytes whose content depends on `sequence` and on each byte's position.
  static func payload(sequence: UInt64, bytes: Int) -> [UInt8] {
    var payload = [UInt8](repeating: 0, count: bytes)
    var state = sequence &* 0x9E37_79B9_7F4A_7C15 | 1
    payload.withUnsafeMutableBytes { buffer in
      for index in buffer.indices {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        buffer[index] = UInt8(truncatingIfNeeded: state)
      }
    }
    return payload
  }

  /// Checks the envelope's addresses, its sequence number (if given), and its payload's size and content.
  func expect(
    _ envelope: Envelope<ConformanceMessage>, from sender: NodeID, to receiver: NodeID, sequence: UInt64? = nil,
    payloadBytes bytes: Int = 8
  ) throws {
    let message = envelope.payload
    guard envelope.from == sender, envelope.to == receiver, message.sender == sender else {
      throw failure(
        "expected a message \(sender)->\(receiver), got \(message) addressed \(envelope.from)->\(envelope.to)")
    }
    if let sequence, message.sequence != sequence {
      let what = message.sequence > sequence ? "lost or reordered" : "duplicated or reordered"
      throw failure("expected \(sender)#\(sequence) at \(receiver), got #\(message.sequence) (\(what))")
    }
    guard message.payload.count == bytes, message.payload == Self.payload(sequence: message.sequence, bytes: bytes)
    else {
      let expected = Self.payload(sequence: message.sequence, bytes: bytes)
      let common = min(bytes, message.payload.count)
      let firstDifference = (0..<common).first { message.payload[$0] != expected[$0] } ?? common
      throw failure(
        "the payload of \(message) is corrupt: expected \(bytes) bytes, first difference at byte \(firstDifference)")
    }
  }
}
