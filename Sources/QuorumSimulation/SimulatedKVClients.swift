import QuorumCore
import QuorumKV

/// Key-value clients for whole-cluster simulations: each performs random reads and writes on a few keys
/// with an exactly-once session, retries with back-off on redirects, refusals and timeouts, and records
/// every operation in a ``KVHistory`` for the linearizability checker.
///
/// The clients are protocol-agnostic: the simulation delivers ``Request``s to its nodes and hands their
/// ``Reply``s back; everything else (think time, time-outs, retries, the choice of node) happens here, in
/// the simulation's virtual time and from its seeded generator.
struct SimulatedKVClients {
  enum Operation {
    case register
    case write(KVCommand, KVInput)
    case read(key: String, consistency: ReadConsistency)
  }

  /// One attempt of one operation, sent to one node.
  struct Request {
    var client: Int
    var attempt: UInt64
    var target: NodeID
    var operation: Operation
    var request: RequestID?
    var acknowledged: UInt64
  }

  enum Reply {
    case registered(UInt64)
    case written(KVResponse)
    case read([UInt8]?)
    case redirect(NodeID?)
    case retry
  }

  /// What the clients ask the simulation to schedule.
  enum Event {
    /// Deliver a request to its target node (the simulation handles this one).
    case request(Request)
    case reply(client: Int, attempt: UInt64, Reply)
    case timeout(client: Int, attempt: UInt64)
    case resend(client: Int, attempt: UInt64)
    case next(client: Int)
  }

  struct Settings {
    var clients: Int
    var operationsPerClient: Int
    var thinkTime: DelayDistribution
    var keys: Int
    var clientLatency: DelayDistribution
    var requestTimeout: VirtualDuration
    var readConsistencies: [ReadConsistency]
  }

  private struct Client {
    var id: Int
    var session: UInt64?
    var sequence: UInt64 = 0
    var remaining: Int
    var current: (operation: Operation, history: OperationID?, request: RequestID?)?
    var attempt: UInt64 = 0
    var target: NodeID
    var done = false
  }

  let settings: Settings
  private var clients: [Client] = []
  /// The recorded history.
  private(set) var history = KVHistory()
  /// Operations completed with a known outcome.
  private(set) var operationsCompleted = 0
  /// Retries of any kind.
  private(set) var retries = 0

  /// Creates the clients; client `c` first talks to `firstTarget(c)`.
  init(settings: Settings, firstTarget: (Int) -> NodeID) {
    self.settings = settings
    for c in 0..<settings.clients {
      clients.append(Client(id: c, remaining: settings.operationsPerClient, target: firstTarget(c)))
    }
  }

  /// Whether every client has finished.
  var allDone: Bool { clients.allSatisfy(\.done) }

  /// How many clients have not finished.
  var unfinishedCount: Int { clients.filter { !$0.done }.count }

  /// Handles a client event (anything but ``Event/request(_:)``).
  mutating func handle(
    _ event: Event, now: VirtualTime, healed: Bool, nodes: [NodeID], rng: inout SeededRandom, trace: SimulationTrace,
    schedule: (Event, VirtualTime) -> Void
  ) {
    switch event {
    case .request:
      preconditionFailure("requests are delivered by the simulation")
    case .reply(let client, let attempt, let reply):
      received(client, attempt: attempt, reply, now: now, nodes: nodes, rng: &rng, schedule: schedule)
    case .timeout(let client, let attempt):
      guard clients[client].attempt == attempt, !clients[client].done, clients[client].current != nil else { return }
      trace.record(now, "client \(client) attempt \(attempt) timed out")
      retryAfterBackoff(client, hint: nil, now: now, nodes: nodes, rng: &rng, schedule: schedule)
    case .resend(let client, let attempt):
      guard clients[client].attempt == attempt, !clients[client].done else { return }
      sendAttempt(client, now: now, rng: &rng, schedule: schedule)
    case .next(let client):
      startNextOperation(client, now: now, healed: healed, rng: &rng, schedule: schedule)
    }
  }

  private mutating func startNextOperation(
    _ c: Int, now: VirtualTime, healed: Bool, rng: inout SeededRandom, schedule: (Event, VirtualTime) -> Void
  ) {
    guard !clients[c].done else { return }
    if clients[c].session == nil {
      clients[c].current = (.register, nil, nil)
    } else if clients[c].remaining == 0 || healed {
      clients[c].done = true
      clients[c].current = nil
      return
    } else {
      clients[c].remaining -= 1
      let key = "k\(Int.random(in: 0..<settings.keys, using: &rng))"
      let roll = Int.random(in: 0..<100, using: &rng)
      let operation: Operation
      if roll < 40 {
        let levels = settings.readConsistencies.isEmpty ? [.linearizable] : settings.readConsistencies
        operation = .read(key: key, consistency: levels[Int.random(in: 0..<levels.count, using: &rng)])
      } else {
        let value = "c\(c)-\(clients[c].sequence + 1)"
        if roll < 75 {
          operation = .write(.put(key: key, value: Array(value.utf8)), .put(key: key, value: value))
        } else if roll < 85 {
          operation = .write(.delete(key: key), .delete(key: key))
        } else {
          let expected =
            Bool.random(using: &rng)
            ? nil
            : "c\(Int.random(in: 0..<settings.clients, using: &rng))-\(Int.random(in: 1...max(1, Int(clients[c].sequence)), using: &rng))"
          operation = .write(
            .compareAndSwap(key: key, expected: expected.map { Array($0.utf8) }, new: Array(value.utf8)),
            .compareAndSwap(key: key, expected: expected, new: value))
        }
      }
      var request: RequestID?
      if case .write = operation, let session = clients[c].session {
        clients[c].sequence += 1
        request = RequestID(session: session, sequence: clients[c].sequence)
      }
      let input: KVInput
      switch operation {
      case .read(let key, _): input = .get(key: key)
      case .write(_, let i): input = i
      case .register: input = .get(key: "")  // Never reached: registration is not recorded.
      }
      let id = history.invoke(client: c, input, at: now)
      clients[c].current = (operation, id, request)
    }
    sendAttempt(c, now: now, rng: &rng, schedule: schedule)
  }

  private mutating func sendAttempt(
    _ c: Int, now: VirtualTime, rng: inout SeededRandom, schedule: (Event, VirtualTime) -> Void
  ) {
    guard let current = clients[c].current else { return }
    clients[c].attempt += 1
    let attempt = clients[c].attempt
    let acknowledged = (current.request?.sequence ?? 1) - 1
    let request = Request(
      client: c, attempt: attempt, target: clients[c].target, operation: current.operation, request: current.request,
      acknowledged: acknowledged)
    schedule(.request(request), now + settings.clientLatency.sample(&rng))
    schedule(.timeout(client: c, attempt: attempt), now + settings.requestTimeout)
  }

  private mutating func received(
    _ c: Int, attempt: UInt64, _ reply: Reply, now: VirtualTime, nodes: [NodeID], rng: inout SeededRandom,
    schedule: (Event, VirtualTime) -> Void
  ) {
    guard clients[c].attempt == attempt, let current = clients[c].current, !clients[c].done else { return }
    switch reply {
    case .redirect(let hint):
      retryAfterBackoff(c, hint: hint, now: now, nodes: nodes, rng: &rng, schedule: schedule)
    case .retry:
      retryAfterBackoff(c, hint: nil, now: now, nodes: nodes, rng: &rng, schedule: schedule)
    case .registered(let session):
      guard case .register = current.operation else { return }
      clients[c].session = session
      finish(c, now: now, rng: &rng, schedule: schedule)
    case .written(let response):
      guard case .write(_, let input) = current.operation, let id = current.history else { return }
      let output: KVOutput
      switch (input, response) {
      case (.compareAndSwap, .swapped(let swapped, _)): output = .swapped(swapped)
      // The value replaced is checked: a write applied twice would report its own value.
      case (.put, .done(let previous)), (.delete, .done(let previous)):
        output = .previous(previous.map { String(decoding: $0, as: UTF8.self) })
      default:
        output = .ok
      }
      history.complete(id, output, at: now)
      operationsCompleted += 1
      finish(c, now: now, rng: &rng, schedule: schedule)
    case .read(let value):
      guard case .read = current.operation, let id = current.history else { return }
      history.complete(id, .value(value.map { String(decoding: $0, as: UTF8.self) }), at: now)
      operationsCompleted += 1
      finish(c, now: now, rng: &rng, schedule: schedule)
    }
  }

  private mutating func finish(
    _ c: Int, now: VirtualTime, rng: inout SeededRandom, schedule: (Event, VirtualTime) -> Void
  ) {
    clients[c].current = nil
    clients[c].attempt += 1
    schedule(.next(client: c), now + settings.thinkTime.sample(&rng))
  }

  private mutating func retryAfterBackoff(
    _ c: Int, hint: NodeID?, now: VirtualTime, nodes: [NodeID], rng: inout SeededRandom,
    schedule: (Event, VirtualTime) -> Void
  ) {
    retries += 1
    if let hint, nodes.contains(hint) {
      clients[c].target = hint
    } else {
      clients[c].target = nodes[Int.random(in: 0..<nodes.count, using: &rng)]
    }
    clients[c].attempt += 1  // Ignore any late answer to the abandoned attempt.
    let backoff = VirtualDuration.milliseconds(UInt64.random(in: 1...30, using: &rng))
    schedule(.resend(client: c, attempt: clients[c].attempt), now + backoff)
  }
}
