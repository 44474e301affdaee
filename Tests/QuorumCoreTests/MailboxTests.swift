import QuorumCore
import Testing

@Suite("Mailbox", .timeLimit(.minutes(2)))
struct MailboxTests {
  @Test("elements come out in the order they went in")
  func fifo() async throws {
    let mailbox = Mailbox<Int>(capacity: 100)
    for i in 0..<100 { try mailbox.trySend(i) }
    var received: [Int] = []
    for _ in 0..<100 { received.append(await mailbox.receive() ?? -1) }
    #expect(received == Array(0..<100))
    #expect(mailbox.count == 0)
  }

  @Test("trySend fails with .full exactly at capacity, and succeeds again after a receive")
  func trySendAtCapacity() async throws {
    let mailbox = Mailbox<Int>(capacity: 3)
    for i in 0..<3 { try mailbox.trySend(i) }
    #expect(mailbox.count == 3)
    #expect(throws: MailboxError.full(capacity: 3)) { try mailbox.trySend(3) }
    #expect(mailbox.count == 3)
    #expect(await mailbox.receive() == 0)
    try mailbox.trySend(3)
    #expect(throws: MailboxError.full(capacity: 3)) { try mailbox.trySend(4) }
    var rest: [Int] = []
    mailbox.drainAvailable(into: &rest)
    #expect(rest == [1, 2, 3])
    #expect(MailboxError.full(capacity: 3).description == "mailbox full (capacity 3)")
  }

  @Test("trySend(contentsOf:) takes the prefix that fits and hands the first to a waiting consumer")
  func trySendBatch() async throws {
    let mailbox = Mailbox<Int>(capacity: 4)
    #expect(try mailbox.trySend(contentsOf: [0, 1, 2][...]) == 3)
    #expect(try mailbox.trySend(contentsOf: [3, 4, 5][1...]) == 1, "only the room left: 4 of [4, 5]")
    #expect(try mailbox.trySend(contentsOf: [6][...]) == 0, "full: nothing taken")
    var taken: [Int] = []
    mailbox.drainAvailable(into: &taken)
    #expect(taken == [0, 1, 2, 4])
    // A waiting consumer gets the first element directly; the rest queue, up to the capacity, in order.
    let receiver = Task { await mailbox.receive() }
    try await waitUntil("the receiver is suspended") { mailbox.hasWaitingReceiver }
    #expect(try mailbox.trySend(contentsOf: Array(10..<20)[...]) == 5)
    #expect(await receiver.value == 10)
    taken = []
    mailbox.drainAvailable(into: &taken)
    #expect(taken == [11, 12, 13, 14])
    // A suspended sender's element comes before a later batch.
    for i in 0..<4 { try mailbox.trySend(i) }
    let sender = Task { try await mailbox.send(99) }
    try await waitUntil("the sender is suspended") { mailbox.waitingSenderCount == 1 }
    #expect(try mailbox.trySend(contentsOf: [7][...]) == 0)
    #expect(await mailbox.receive() == 0)
    try await sender.value
    #expect(try mailbox.trySend(contentsOf: [7, 8][...]) == 0, "the admitted sender took the room")
    taken = []
    mailbox.drainAvailable(into: &taken)
    #expect(taken == [1, 2, 3, 99])
    mailbox.close()
    #expect(throws: MailboxError.closed) { try mailbox.trySend(contentsOf: [8][...]) }
  }

  @Test("trySend(movingFrom:) moves what fits out of the array, leaves the rest in order, and keeps no reference")
  func trySendMoving() async throws {
    final class Box: Sendable {
      let value: Int
      init(_ value: Int) { self.value = value }
    }
    let mailbox = Mailbox<Box>(capacity: 4)
    var batch = (0..<3).map(Box.init)
    #expect(try mailbox.trySend(movingFrom: &batch) == 3)
    #expect(batch.isEmpty)
    batch = [Box(3), Box(4)]
    #expect(try mailbox.trySend(movingFrom: &batch) == 1, "only the room left")
    #expect(batch.map(\.value) == [4], "what did not fit stays, in order")
    var taken: [Box] = []
    mailbox.drainAvailable(into: &taken)
    #expect(taken.map(\.value) == [0, 1, 2, 3])
    // No reference is left behind: the consumer holds the only one to each element the mailbox took.
    #expect(taken.indices.allSatisfy { isKnownUniquelyReferenced(&taken[$0]) })
    // A waiting consumer gets the first element directly; the rest queue behind it, in order.
    let receiver = Task { await mailbox.receive()?.value }
    try await waitUntil("the receiver is suspended") { mailbox.hasWaitingReceiver }
    batch = (10..<16).map(Box.init)
    #expect(try mailbox.trySend(movingFrom: &batch) == 5)
    #expect(batch.map(\.value) == [15])
    #expect(await receiver.value == 10)
    taken = []
    mailbox.drainAvailable(into: &taken)
    #expect(taken.map(\.value) == [11, 12, 13, 14])
    batch = [Box(20)]
    mailbox.close()
    #expect(throws: MailboxError.closed) { try mailbox.trySend(movingFrom: &batch) }
    #expect(batch.map(\.value) == [20], "nothing is taken after close")
  }

  @Test("trySend(movingFrom:) hands the first to a waiting consumer when all fit, and takes nothing behind a sender")
  func trySendMovingAllFit() async throws {
    let mailbox = Mailbox<Int>(capacity: 4)
    for count in [1, 3] {
      let receiver = Task { await mailbox.receive() }
      try await waitUntil("the receiver is suspended") { mailbox.hasWaitingReceiver }
      var batch = Array(10..<(10 + count))
      #expect(try mailbox.trySend(movingFrom: &batch) == count)
      #expect(batch.isEmpty)
      #expect(await receiver.value == 10)
      var taken: [Int] = []
      mailbox.drainAvailable(into: &taken)
      #expect(taken == Array(11..<(10 + count)))
    }
    // A suspended sender's element comes before a later batch: nothing is taken.
    for i in 0..<4 { try mailbox.trySend(i) }
    let sender = Task { try await mailbox.send(99) }
    try await waitUntil("the sender is suspended") { mailbox.waitingSenderCount == 1 }
    var batch = [7, 8]
    #expect(try mailbox.trySend(movingFrom: &batch) == 0)
    #expect(batch == [7, 8])
    #expect(await mailbox.receive() == 0)
    try await sender.value
    var taken: [Int] = []
    mailbox.drainAvailable(into: &taken)
    #expect(taken == [1, 2, 3, 99])
  }

  @Test("send suspends while full and completes only after the consumer receives")
  func sendSuspendsUntilRoom() async throws {
    let mailbox = Mailbox<Int>(capacity: 1)
    try mailbox.trySend(0)
    let completed = Flag()
    let sender = Task {
      try await mailbox.send(1)
      completed.set()
    }
    try await waitUntil("the sender is suspended") { mailbox.waitingSenderCount == 1 }
    #expect(!completed.isSet, "send returned while the mailbox was full")
    #expect(mailbox.count == 1, "a suspended sender's element is not in the buffer yet")
    #expect(await mailbox.receive() == 0)
    try await sender.value
    #expect(completed.isSet)
    #expect(mailbox.waitingSenderCount == 0)
    #expect(await mailbox.receive() == 1)
  }

  @Test("suspended senders are admitted in arrival order")
  func suspendedSendersInOrder() async throws {
    let mailbox = Mailbox<Int>(capacity: 1)
    try mailbox.trySend(0)
    var senders: [Task<Void, any Error>] = []
    for i in 1...5 {
      senders.append(Task { try await mailbox.send(i) })
      try await waitUntil("sender \(i) is queued") { mailbox.waitingSenderCount == i }
    }
    // While senders wait the mailbox counts as full, so trySend cannot overtake them.
    #expect(throws: MailboxError.full(capacity: 1)) { try mailbox.trySend(99) }
    var received: [Int] = []
    for _ in 0...5 { received.append(await mailbox.receive() ?? -1) }
    #expect(received == [0, 1, 2, 3, 4, 5])
    for sender in senders { try await sender.value }
  }

  @Test("a cancelled suspended sender throws .cancelled and its element is never delivered")
  func cancelledSender() async throws {
    let mailbox = Mailbox<Int>(capacity: 1)
    try mailbox.trySend(0)
    let cancelled = Task { try await mailbox.send(1) }
    try await waitUntil("the sender is suspended") { mailbox.waitingSenderCount == 1 }
    let kept = Task { try await mailbox.send(2) }
    try await waitUntil("the second sender is suspended") { mailbox.waitingSenderCount == 2 }
    cancelled.cancel()
    await #expect(throws: MailboxError.cancelled) { try await cancelled.value }
    #expect(mailbox.waitingSenderCount == 1)
    #expect(await mailbox.receive() == 0)
    try await kept.value
    mailbox.close()
    #expect(await mailbox.receive() == 2)
    #expect(await mailbox.receive() == nil)
  }

  @Test("a sender cancelled before it suspends throws .cancelled")
  func senderCancelledBeforeWaiting() async throws {
    let mailbox = Mailbox<Int>(capacity: 1)
    try mailbox.trySend(0)
    let ready = Flag()
    let sender = Task {
      while !Task.isCancelled { await Task.yield() }
      ready.set()
      try await mailbox.send(1)
    }
    sender.cancel()
    await #expect(throws: MailboxError.cancelled) { try await sender.value }
    #expect(ready.isSet && mailbox.count == 1 && mailbox.waitingSenderCount == 0)
  }

  @Test("cancelling a waiting receiver returns nil and leaves the mailbox usable")
  func cancelledReceiver() async throws {
    let mailbox = Mailbox<Int>(capacity: 4)
    let receiver = Task { await mailbox.receive() }
    try await waitUntil("the receiver is suspended") { mailbox.hasWaitingReceiver }
    receiver.cancel()
    #expect(await receiver.value == nil)
    #expect(!mailbox.hasWaitingReceiver)
    try mailbox.trySend(7)
    #expect(await mailbox.receive() == 7)
  }

  @Test("an element sent while the consumer waits is handed straight to it")
  func handOff() async throws {
    let mailbox = Mailbox<Int>(capacity: 1)
    let receiver = Task { await mailbox.receive() }
    try await waitUntil("the receiver is suspended") { mailbox.hasWaitingReceiver }
    try mailbox.trySend(5)
    #expect(await receiver.value == 5)
    #expect(mailbox.count == 0)
  }

  @Test("close lets the consumer drain, then ends; later sends throw .closed")
  func closeDrains() async throws {
    let mailbox = Mailbox<Int>(capacity: 8)
    for i in 0..<3 { try mailbox.trySend(i) }
    mailbox.close()
    #expect(mailbox.isClosed)
    #expect(throws: MailboxError.closed) { try mailbox.trySend(3) }
    await #expect(throws: MailboxError.closed) { try await mailbox.send(3) }
    var received: [Int] = []
    while let element = await mailbox.receive() { received.append(element) }
    #expect(received == [0, 1, 2])
    #expect(await mailbox.receive() == nil)
    var batch: [Int] = []
    #expect(await mailbox.receive(into: &batch) == false)
    #expect(batch.isEmpty)
  }

  @Test("close(discardingBuffered: true) ends the consumer at once")
  func closeDiscarding() async throws {
    let mailbox = Mailbox<Int>(capacity: 8)
    for i in 0..<3 { try mailbox.trySend(i) }
    mailbox.close(discardingBuffered: true)
    #expect(mailbox.count == 0)
    #expect(await mailbox.receive() == nil)
  }

  @Test("close fails suspended senders with .closed and ends a waiting receiver")
  func closeWakesEveryone() async throws {
    let full = Mailbox<Int>(capacity: 1)
    try full.trySend(0)
    let senders = (1...3).map { i in Task { try await full.send(i) } }
    try await waitUntil("three senders are suspended") { full.waitingSenderCount == 3 }
    full.close()
    for sender in senders { await #expect(throws: MailboxError.closed) { try await sender.value } }
    #expect(await full.receive() == 0)
    #expect(await full.receive() == nil)

    let empty = Mailbox<Int>(capacity: 1)
    let receiver = Task { await empty.receive() }
    try await waitUntil("the receiver is suspended") { empty.hasWaitingReceiver }
    empty.close()
    #expect(await receiver.value == nil)
  }

  @Test("receive(into:limit:) takes what is queued, up to the limit, in order")
  func batches() async throws {
    let mailbox = Mailbox<Int>(capacity: 16)
    for i in 0..<10 { try mailbox.trySend(i) }
    var batch: [Int] = [-1]
    #expect(await mailbox.receive(into: &batch, limit: 4))
    #expect(batch == [-1, 0, 1, 2, 3])
    batch.removeAll()
    #expect(await mailbox.receive(into: &batch))
    #expect(batch == Array(4..<10))

    batch.removeAll()
    let waiting = Task {
      var batch: [Int] = []
      _ = await mailbox.receive(into: &batch, limit: 2)
      return batch
    }
    try await waitUntil("the batch receiver is suspended") { mailbox.hasWaitingReceiver }
    try mailbox.trySend(42)
    #expect(await waiting.value == [42])
  }

  @Test("draining a full mailbox admits suspended senders in order")
  func drainAdmitsSenders() async throws {
    let mailbox = Mailbox<Int>(capacity: 2)
    try mailbox.trySend(0)
    try mailbox.trySend(1)
    var senders: [Task<Void, any Error>] = []
    for i in 2...5 {
      senders.append(Task { try await mailbox.send(i) })
      try await waitUntil("sender \(i) is queued") { mailbox.waitingSenderCount == i - 1 }
    }
    var batch: [Int] = []
    #expect(mailbox.drainAvailable(into: &batch, limit: 3) == 3)
    #expect(batch == [0, 1, 2])
    #expect(mailbox.count == 2 && mailbox.waitingSenderCount == 1)
    #expect(mailbox.drainAvailable(into: &batch) == 3)
    #expect(batch == [0, 1, 2, 3, 4, 5])
    for sender in senders { try await sender.value }
  }

  @Test(
    "8 producers × 50,000 elements: each arrives exactly once, each producer's in order",
    arguments: [false, true])
  func manyProducers(batched: Bool) async throws {
    let producers = 8
    let perProducer = 50_000
    let mailbox = Mailbox<Tagged>(capacity: 256)
    let counts = try await withTimeout("400,000 elements through the mailbox", .seconds(110)) {
      try await withThrowingTaskGroup(of: ProducerOutcome.self) { group in
        group.addTask {
          // Stops at the first element out of its producer's order; the counts then fall short.
          var next = [Int](repeating: 0, count: producers)
          var batch: [Tagged] = []
          if batched {
            while await mailbox.receive(into: &batch, limit: 100) {
              for element in batch {
                guard next[element.producer] == element.sequence else { return .consumerFinished(next) }
                next[element.producer] += 1
              }
              batch.removeAll(keepingCapacity: true)
            }
          } else {
            while let element = await mailbox.receive() {
              guard next[element.producer] == element.sequence else { return .consumerFinished(next) }
              next[element.producer] += 1
            }
          }
          return .consumerFinished(next)
        }
        for producer in 0..<producers {
          group.addTask {
            for sequence in 0..<perProducer { try await mailbox.send(Tagged(producer: producer, sequence: sequence)) }
            return .producerFinished
          }
        }
        var finished = 0
        while let outcome = try await group.next() {
          switch outcome {
          case .consumerFinished(let counts):
            mailbox.close()
            return counts
          case .producerFinished:
            finished += 1
            if finished == producers { mailbox.close() }
          }
        }
        return []
      }
    }
    #expect(counts == [Int](repeating: perProducer, count: producers), "an element was lost, repeated or reordered")
  }

  @Test("iteration with for-await ends when the mailbox is closed and drained")
  func asyncSequence() async throws {
    let mailbox = Mailbox<Int>(capacity: 4)
    let producer = Task {
      for i in 0..<100 { try await mailbox.send(i) }
      mailbox.close()
    }
    var received: [Int] = []
    for await element in mailbox { received.append(element) }
    #expect(received == Array(0..<100))
    try await producer.value
  }

  @Test("a mailbox needs a capacity of at least 1")
  func zeroCapacityTraps() async {
    await #expect(processExitsWith: .failure) {
      _ = Mailbox<Int>(capacity: 0)
    }
  }
}

/// What one task of the many-producers test returned.
enum ProducerOutcome: Sendable {
  case producerFinished
  case consumerFinished([Int])
}

/// An element tagged with its producer and its place in that producer's sequence.
struct Tagged: Sendable {
  var producer: Int
  var sequence: Int
}
