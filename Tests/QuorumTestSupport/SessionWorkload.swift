public import QuorumCore
public import Testing

/// A seeded random workload through a ``QuorumCore/ReplicatedStateMachine``'s exactly-once sessions, checking after
/// every entry that a twin, replaced now and then by a copy restored from the machine's snapshot, is structurally
/// equal (`==`) to the machine that applied every entry.
///
/// Clients register sessions (under a few principals, some without one), send commands under them in order and
/// out of order, retry old requests, acknowledge late or not at all (so the per-session bounds forget responses
/// whose requests stay applied), use another principal's session, keep sessions alive and let them expire, so the
/// snapshots restored hold sessions with remembered and with forgotten responses.
public struct SessionWorkload<Machine: StateMachine & Equatable> {
  /// What the workload reached, for checking that it covered the interesting cases.
  public struct Tally: Sendable, CustomStringConvertible {
    /// Restores whose copy was compared with the machine.
    public var restores = 0
    /// Requests applied under a session.
    public var applied = 0
    /// Retries answered with a remembered response.
    public var duplicates = 0
    /// Retries of requests above the client's acknowledgement whose response the bounds forgot.
    public var forgottenUnacknowledged = 0
    /// Commands refused for an expired or evicted session.
    public var expired = 0

    public var description: String {
      "restores \(restores) applied \(applied) duplicates \(duplicates) forgotten \(forgottenUnacknowledged) "
        + "expired \(expired)"
    }
  }

  private struct Client {
    var session: UInt64
    var principal: String?
    var next: UInt64 = 1
    var acknowledged: UInt64 = 0
  }

  /// Makes an empty machine (the machine and every restored copy start from one).
  let makeMachine: () -> Machine
  /// The session policy (small bounds make forgotten responses common).
  let policy: SessionPolicy
  /// A random command for the machine, to be applied at an entry index and log time.
  let command: (inout SeededRandom, _ index: UInt64, _ millis: UInt64) -> Machine.Command

  public init(
    policy: SessionPolicy, makeMachine: @escaping () -> Machine,
    command: @escaping (inout SeededRandom, _ index: UInt64, _ millis: UInt64) -> Machine.Command
  ) {
    self.policy = policy
    self.makeMachine = makeMachine
    self.command = command
  }

  /// Runs `steps` entries from `seed`; records an issue at the first entry where the restored twin differs.
  @discardableResult
  public func run(seed: UInt64, steps: Int, sourceLocation: SourceLocation = #_sourceLocation) throws -> Tally {
    var random = SeededRandom(seed: seed)
    var machine = ReplicatedStateMachine(makeMachine(), policy: policy)
    var twin = machine
    var clients: [Client] = []
    var millis: UInt64 = 0
    var tally = Tally()
    let principals: [String?] = [nil, "alice", "bob"]
    for step in 1...steps {
      let index = UInt64(step)
      if random.chance(0.5) { millis += random.next() % (policy.timeoutMillis / 8 + 1) }
      let entry = nextEntry(&random, clients: &clients, principals: principals, index: index, millis: millis)
      let outcome = machine.apply(entry.command, at: index)
      let twinOutcome = twin.apply(entry.command, at: index)
      guard "\(outcome)" == "\(twinOutcome)" else {
        Issue.record(
          "seed \(seed) entry \(index): \(outcome) but the restored twin answered \(twinOutcome)",
          sourceLocation: sourceLocation)
        return tally
      }
      count(outcome, entry: entry, clients: &clients, tally: &tally)
      if random.chance(0.05) || step == steps {
        twin = ReplicatedStateMachine(makeMachine(), policy: policy)
        try twin.restore(from: machine.snapshot())
        tally.restores += 1
      }
      guard twin == machine else {
        Issue.record(
          "seed \(seed) entry \(index): the restored twin differs: \(twin.differences(from: machine))",
          sourceLocation: sourceLocation)
        return tally
      }
    }
    return tally
  }

  private struct Entry {
    var command: ReplicatedCommand<Machine.Command>
    /// The client that sent it (an index into the clients), when it was under a session.
    var client: Int?
    /// Whether the request was sent before (a retry).
    var retry = false
  }

  private func nextEntry(
    _ random: inout SeededRandom, clients: inout [Client], principals: [String?], index: UInt64, millis: UInt64
  ) -> Entry {
    let roll = random.next() % 100
    if clients.isEmpty || roll < 8 {
      let principal = principals[Int(random.next() % UInt64(principals.count))]
      return Entry(command: ReplicatedCommand(timestampMillis: millis, principal: principal, body: .registerSession))
    }
    let c = Int(random.next() % UInt64(clients.count))
    var client = clients[c]
    if roll < 12 {
      return Entry(
        command: ReplicatedCommand(
          timestampMillis: millis, request: RequestID(session: client.session, sequence: 0),
          principal: client.principal, body: .keepAlive), client: c)
    }
    if roll < 15 { return Entry(command: ReplicatedCommand(timestampMillis: millis, body: .advanceTime)) }
    if roll < 20 {
      return Entry(command: ReplicatedCommand(timestampMillis: millis, body: .command(command(&random, index, millis))))
    }
    // Another principal's session, now and then: refused without touching the session.
    let principal = roll < 22 ? "mallory" : client.principal
    let sequence: UInt64
    var retry = false
    if client.next > 1 && random.chance(0.25) {
      sequence = 1 + random.next() % (client.next - 1)  // a retry, maybe of an acknowledged request
      retry = true
    } else if random.chance(0.1) {
      sequence = client.next + 1  // ahead of a request not sent yet (pipelined out of order)
      client.next += 2
    } else {
      sequence = client.next
      client.next += 1
    }
    // Acknowledge lazily: often not at all, so responses pile up past the bounds and are forgotten.
    if random.chance(0.2) && client.next - 1 > client.acknowledged {
      client.acknowledged += 1 + random.next() % (client.next - 1 - client.acknowledged)
    }
    clients[c] = client
    return Entry(
      command: ReplicatedCommand(
        timestampMillis: millis, request: RequestID(session: client.session, sequence: sequence),
        acknowledgedThrough: client.acknowledged, principal: principal, body: .command(command(&random, index, millis))),
      client: c, retry: retry)
  }

  private func count(
    _ outcome: ApplyOutcome<Machine.Response>, entry: Entry, clients: inout [Client], tally: inout Tally
  ) {
    switch outcome {
    case .sessionRegistered(let id):
      clients.append(Client(session: id, principal: entry.command.principal))
      if clients.count > 12 { clients.removeFirst() }
    case .applied: if entry.client != nil { tally.applied += 1 }
    case .duplicate: tally.duplicates += 1
    case .responseForgotten(let request):
      if let c = entry.client, entry.retry, request.sequence > clients[c].acknowledged {
        tally.forgottenUnacknowledged += 1
      }
    case .sessionExpired: tally.expired += 1
    default: break
    }
  }
}
