import Testing

@testable import QuorumTCP

@Suite("The endpoint's reply budget")
struct SharedReplyBudgetTests {
  @Test("connections that join one by one, each filling its fair share, stop at twice the limit")
  func fairSharesStopAtTwiceTheLimit() {
    let budget = SharedReplyBudget(limit: 1_000)
    var admitted = 0
    for connections in 1...50 {
      budget.members.store(connections, ordering: .relaxed)
      let share = 1_000 / connections
      if budget.charge(share, queued: 0, always: false) { admitted += share }
    }
    // Without the ceiling the shares sum to about 1,000 × ln(50) ≈ 3,900 bytes.
    #expect(admitted > 1_000, "fair shares are admitted past the limit")
    #expect(budget.bytes <= 2_000, "\(budget.bytes) bytes queued")
  }

  @Test("past the limit, a connection over its fair share is refused; a small reply to an idle one is not")
  func overShareRefused() {
    let budget = SharedReplyBudget(limit: 1_000)
    budget.members.store(2, ordering: .relaxed)
    #expect(budget.charge(1_000, queued: 0, always: false))
    #expect(!budget.charge(600, queued: 0, always: false), "over its share (500) with the budget full")
    #expect(budget.charge(400, queued: 0, always: false), "within its share")
    #expect(budget.charge(64, queued: 0, always: true))
    #expect(budget.bytes == 1_464)
    budget.credit(1_464)
    #expect(budget.bytes == 0)
  }
}
