import QuorumCore

/// Mailbox against `AsyncStream`, measured in the same run: one and four producers into a consumer actor,
/// ping-pong between two actors, and the cost of an awaited actor-to-actor call as the floor.
///
/// Each figure is the median of three runs. Ratios divide the mailbox figure by the `AsyncStream` figure of
/// the same shape, so shared-machine noise affects both sides alike.
enum MailboxBenchmarks {
  /// Messages per throughput run.
  static let messageCount = 1_000_000
  /// Round trips per ping-pong run.
  static let roundTrips = 200_000
  /// Awaited calls per actor-hop run.
  static let hopCount = 2_000_000
  /// Runs per figure; the median is reported.
  static let runs = 3
  /// Capacity of the mailboxes under test.
  static let capacity = 1024

  static func run(_ report: BenchReport) async throws {
    for producers in [1, 4] {
      let label = producers == 1 ? "1 producer" : "\(producers) producers"
      let stream = try await medianRate(messageCount) { try await streamThroughput(producers: producers) }
      report.add("mailbox", "AsyncStream (unbounded), \(label)", stream, "msgs/s", note: "baseline")
      let mailbox = try await medianRate(messageCount) { try await mailboxThroughput(producers: producers) }
      report.add("mailbox", "Mailbox send/receive, \(label)", mailbox, "msgs/s", note: ratio(mailbox, stream))
      let batched = try await medianRate(messageCount) {
        try await mailboxThroughput(producers: producers, batched: true)
      }
      report.add("mailbox", "Mailbox send/receive(into:), \(label)", batched, "msgs/s", note: ratio(batched, stream))
    }

    let streamRoundTrip = try await medianNanos(roundTrips) { try await streamPingPong() }
    report.add("mailbox", "ping-pong over AsyncStreams", streamRoundTrip / 1000, "us/trip", note: "baseline")
    let mailboxRoundTrip = try await medianNanos(roundTrips) { try await mailboxPingPong() }
    report.add(
      "mailbox", "ping-pong over Mailboxes", mailboxRoundTrip / 1000, "us/trip",
      note: "\(report.format(streamRoundTrip / mailboxRoundTrip))x faster")

    let hop = try await medianNanos(hopCount) { await actorHops() }
    report.add("mailbox", "awaited actor-to-actor call (actor hop)", hop, "ns/call", note: "the floor")
  }

  private static func ratio(_ value: Double, _ baseline: Double) -> String {
    "Mailbox / AsyncStream = \(String(format: "%.2f", value / baseline))x"
  }

  /// Runs `body` `runs` times; returns the median of `operations` per second.
  private static func medianRate(_ operations: Int, _ body: () async throws -> UInt64) async throws -> Double {
    var rates: [Double] = []
    for _ in 0..<runs { rates.append(Double(operations) * 1e9 / Double(try await body())) }
    return median(rates)
  }

  /// Runs `body` `runs` times; returns the median of nanoseconds per operation.
  private static func medianNanos(_ operations: Int, _ body: () async throws -> UInt64) async throws -> Double {
    var costs: [Double] = []
    for _ in 0..<runs { costs.append(Double(try await body()) / Double(operations)) }
    return median(costs)
  }

  // MARK: Throughput

  /// Elapsed nanoseconds to move ``messageCount`` messages from `producers` tasks through an unbounded
  /// `AsyncStream` into a consumer actor.
  static func streamThroughput(producers: Int) async throws -> UInt64 {
    let (stream, continuation) = AsyncStream.makeStream(of: BenchMessage.self)
    let consumer = BenchConsumer()
    let perProducer = messageCount / producers
    let start = nowNanos()
    let total = try await withThrowingTaskGroup(of: UInt64.self) { group in
      group.addTask { await consumer.drain(stream) }
      try await withThrowingTaskGroup(of: Void.self) { senders in
        for p in 0..<producers {
          senders.addTask {
            for i in 0..<perProducer { continuation.yield(BenchMessage(producer: p, sequence: i)) }
          }
        }
        try await senders.waitForAll()
      }
      continuation.finish()
      return try await group.next() ?? 0
    }
    let elapsed = nowNanos() - start
    try check(total, expected: perProducer * producers)
    return elapsed
  }

  /// Elapsed nanoseconds to move ``messageCount`` messages from `producers` tasks through a ``Mailbox``
  /// into a consumer actor, receiving one at a time or in batches.
  static func mailboxThroughput(producers: Int, batched: Bool = false) async throws -> UInt64 {
    let mailbox = Mailbox<BenchMessage>(capacity: capacity)
    let consumer = BenchConsumer()
    let perProducer = messageCount / producers
    let start = nowNanos()
    let total = try await withThrowingTaskGroup(of: UInt64.self) { group in
      group.addTask { batched ? await consumer.drainBatches(mailbox) : await consumer.drain(mailbox) }
      try await withThrowingTaskGroup(of: Void.self) { senders in
        for p in 0..<producers {
          senders.addTask {
            for i in 0..<perProducer { try await mailbox.send(BenchMessage(producer: p, sequence: i)) }
          }
        }
        try await senders.waitForAll()
      }
      mailbox.close()
      return try await group.next() ?? 0
    }
    let elapsed = nowNanos() - start
    try check(total, expected: perProducer * producers)
    return elapsed
  }

  private static func check(_ received: UInt64, expected: Int) throws {
    guard received == UInt64(expected) else { throw BenchFailure("received \(received) of \(expected) messages") }
  }

  // MARK: Ping-pong

  /// Elapsed nanoseconds for ``roundTrips`` round trips between two actors over two mailboxes.
  static func mailboxPingPong() async throws -> UInt64 {
    let toPonger = Mailbox<BenchMessage>(capacity: 16)
    let toPinger = Mailbox<BenchMessage>(capacity: 16)
    let pinger = PingActor()
    let ponger = PingActor()
    let start = nowNanos()
    let trips = try await withThrowingTaskGroup(of: Int.self) { group in
      group.addTask { try await ponger.echo(from: toPonger, to: toPinger) }
      let trips = try await pinger.ping(roundTrips, send: toPonger, receive: toPinger)
      toPonger.close()
      _ = try await group.next()
      return trips
    }
    let elapsed = nowNanos() - start
    try check(UInt64(trips), expected: roundTrips)
    return elapsed
  }

  /// Elapsed nanoseconds for ``roundTrips`` round trips between two actors over two `AsyncStream`s.
  static func streamPingPong() async throws -> UInt64 {
    let (pongInbox, pongInput) = AsyncStream.makeStream(of: BenchMessage.self)
    let (pingInbox, pingInput) = AsyncStream.makeStream(of: BenchMessage.self)
    let pinger = PingActor()
    let ponger = PingActor()
    let start = nowNanos()
    let trips = try await withThrowingTaskGroup(of: Int.self) { group in
      group.addTask { await ponger.echo(from: pongInbox, to: pingInput) }
      let trips = await pinger.ping(roundTrips, send: pongInput, receive: pingInbox)
      pongInput.finish()
      _ = try await group.next()
      return trips
    }
    let elapsed = nowNanos() - start
    try check(UInt64(trips), expected: roundTrips)
    return elapsed
  }

  // MARK: Actor hop

  /// Elapsed nanoseconds for ``hopCount`` awaited calls from one actor to another.
  static func actorHops() async -> UInt64 {
    let caller = HopCaller()
    let target = HopTarget()
    let start = nowNanos()
    let total = await caller.call(target, times: hopCount)
    let elapsed = nowNanos() - start
    precondition(total == UInt64(hopCount), "actor hop count \(total), expected \(hopCount)")
    return elapsed
  }
}

/// A small message: what a protocol actor's inbox mostly carries.
struct BenchMessage: Sendable {
  var producer: Int
  var sequence: Int
}

/// A benchmark that produced a wrong result.
struct BenchFailure: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}

/// The consumer actor: counts messages and checks per-producer order.
actor BenchConsumer {
  private var received: UInt64 = 0
  private var nextSequence: [Int] = Array(repeating: 0, count: 16)

  private func take(_ message: BenchMessage) {
    precondition(
      nextSequence[message.producer] == message.sequence,
      "producer \(message.producer) out of order: \(message.sequence), expected \(nextSequence[message.producer])")
    nextSequence[message.producer] += 1
    received &+= 1
  }

  func drain(_ stream: AsyncStream<BenchMessage>) async -> UInt64 {
    for await message in stream { take(message) }
    return received
  }

  func drain(_ mailbox: Mailbox<BenchMessage>) async -> UInt64 {
    while let message = await mailbox.receive() { take(message) }
    return received
  }

  func drainBatches(_ mailbox: Mailbox<BenchMessage>) async -> UInt64 {
    var batch: [BenchMessage] = []
    batch.reserveCapacity(MailboxBenchmarks.capacity)
    while await mailbox.receive(into: &batch) {
      for message in batch { take(message) }
      batch.removeAll(keepingCapacity: true)
    }
    return received
  }
}

/// One side of a ping-pong.
actor PingActor {
  func ping(_ trips: Int, send: Mailbox<BenchMessage>, receive: Mailbox<BenchMessage>) async throws -> Int {
    var completed = 0
    for i in 0..<trips {
      try await send.send(BenchMessage(producer: 0, sequence: i))
      guard let reply = await receive.receive(), reply.sequence == i else { break }
      completed += 1
    }
    return completed
  }

  func echo(from inbox: Mailbox<BenchMessage>, to outbox: Mailbox<BenchMessage>) async throws -> Int {
    var echoed = 0
    while let message = await inbox.receive() {
      try await outbox.send(message)
      echoed += 1
    }
    return echoed
  }

  func ping(
    _ trips: Int, send: AsyncStream<BenchMessage>.Continuation, receive: AsyncStream<BenchMessage>
  ) async -> Int {
    var completed = 0
    var replies = receive.makeAsyncIterator()
    for i in 0..<trips {
      send.yield(BenchMessage(producer: 0, sequence: i))
      guard let reply = await replies.next(), reply.sequence == i else { break }
      completed += 1
    }
    return completed
  }

  func echo(from inbox: AsyncStream<BenchMessage>, to outbox: AsyncStream<BenchMessage>.Continuation) async -> Int {
    var echoed = 0
    for await message in inbox {
      outbox.yield(message)
      echoed += 1
    }
    return echoed
  }
}

/// The callee of the actor-hop benchmark.
actor HopTarget {
  private var count: UInt64 = 0
  func increment() -> UInt64 {
    count &+= 1
    return count
  }
}

/// The caller of the actor-hop benchmark.
actor HopCaller {
  func call(_ target: HopTarget, times: Int) async -> UInt64 {
    var last: UInt64 = 0
    for _ in 0..<times { last = await target.increment() }
    return last
  }
}
