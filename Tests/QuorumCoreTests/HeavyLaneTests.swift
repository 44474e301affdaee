import QuorumSimulation
import QuorumTestSupport
import Testing

@Suite("The heavy lane runs long synchronous tests off the cooperative pool")
struct HeavyLaneTests {
  @Test("a synchronous test with the trait runs on a thread of the lane", .heavy)
  func synchronousOnTheLane() {
    #expect(HeavyLane.shared.isCurrent)
  }

  @Test("an async test with the trait runs its nonisolated code on the lane, before and after a suspension", .heavy)
  func asyncOnTheLane() async {
    #expect(HeavyLane.shared.isCurrent)
    await Task.yield()
    #expect(HeavyLane.shared.isCurrent)
  }

  @Test("a test without the trait does not")
  func notOnTheLane() {
    #expect(!HeavyLane.shared.isCurrent)
  }

  @Test("the bundle caps how many tests run at once, unless the environment chose a cap")
  func parallelismIsCapped() throws {
    let cap = try #require(TestParallelism.cap, "no cap in the environment")
    if let set = TestParallelism.capSetByTheBundle { #expect(cap == set) }
    #expect(cap >= 1)
  }
}
