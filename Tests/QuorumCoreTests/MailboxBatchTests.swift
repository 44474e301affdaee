import QuorumCore
import Testing

@Suite("Mailbox batch send")
struct MailboxBatchTests {
  @Test("trySend(contentsOf:) takes what fits, in order, and reports how many")
  func takesWhatFits() async throws {
    let mailbox = Mailbox<Int>(capacity: 4)
    #expect(try mailbox.trySend(contentsOf: [Int]()) == 0)
    #expect(try mailbox.trySend(contentsOf: [1, 2, 3]) == 3)
    #expect(try mailbox.trySend(contentsOf: [4, 5, 6]) == 1)
    var received: [Int] = []
    #expect(mailbox.drainAvailable(into: &received) == 4)
    #expect(received == [1, 2, 3, 4])
  }

  @Test("a waiting consumer receives the whole batch, first element handed over directly")
  func wakesConsumerOnce() async throws {
    let mailbox = Mailbox<Int>(capacity: 8)
    let consumer = Task {
      var batch: [Int] = []
      _ = await mailbox.receive(into: &batch)
      while batch.count < 5, await mailbox.receive(into: &batch) {}
      return batch
    }
    while !mailbox.hasWaitingReceiver { await Task.yield() }
    #expect(try mailbox.trySend(contentsOf: [1, 2, 3, 4, 5]) == 5)
    #expect(await consumer.value == [1, 2, 3, 4, 5])
  }

  @Test("a closed mailbox refuses a batch; suspended senders are not overtaken")
  func closedAndWaitingSenders() async throws {
    let mailbox = Mailbox<Int>(capacity: 1)
    try mailbox.trySend(0)
    let sender = Task { try await mailbox.send(1) }
    while mailbox.waitingSenderCount == 0 { await Task.yield() }
    #expect(try mailbox.trySend(contentsOf: [2, 3]) == 0)
    var received: [Int] = []
    mailbox.drainAvailable(into: &received)
    try await sender.value
    mailbox.drainAvailable(into: &received)
    #expect(received == [0, 1])
    mailbox.close()
    #expect(throws: MailboxError.closed) { _ = try mailbox.trySend(contentsOf: [4]) }
  }
}
