import Foundation
import Quorum
import Synchronization
import Testing

@testable import QuorumHost

/// A lock waiter whose watch is held by a member that misses the grant (review 102 F5): the member says so at
/// once, and the client reads its session instead of waiting out its watch.
@Suite("Lock waiters learn at once what their watch's member missed", .serialized, .timeLimit(.minutes(5)))
struct LockWatchGapTests {
  /// Sends every request to the member it names, except watches, which all go to `watchAt`.
  struct WatchAtChannel: RequestChannel {
    let harness: LockHostHarness
    let watchAt: NodeID

    func send(_ request: [UInt8], to member: NodeID, timeout: Duration) async throws -> [UInt8] {
      var target = member
      if case .watch? = try? HostRequest(wireBytes: request) { target = watchAt }
      guard let host = harness.host(target) else { throw RequestChannelError.unreachable(target, "not running") }
      return await host.handle(bytes: request)
    }
  }

  /// Sends every request to the member it names; once armed, hides the next notifications a watch brings behind a
  /// truncated answer (as a member that dropped them does), then fails every query until the client watches again.
  final class HidingChannel: RequestChannel {
    enum Stage { case passing, armed, failingQueries }
    let harness: LockHostHarness
    let stage = Mutex(Stage.passing)
    /// Queries failed while `failingQueries`.
    let failedQueries = Atomic(0)

    init(harness: LockHostHarness) { self.harness = harness }

    func send(_ request: [UInt8], to member: NodeID, timeout: Duration) async throws -> [UInt8] {
      guard let host = harness.host(member) else { throw RequestChannelError.unreachable(member, "not running") }
      let decoded = try? HostRequest(wireBytes: request)
      if case .watch? = decoded { stage.withLock { if $0 == .failingQueries { $0 = .passing } } }
      if case .query? = decoded, stage.withLock({ $0 == .failingQueries }) {
        failedQueries.add(1, ordering: .relaxed)
        throw RequestChannelError.unreachable(member, "queries fail until the next watch")
      }
      let reply = await host.handle(bytes: request)
      guard case .watch? = decoded, case .notifications(let payloads, let index)? = try? HostReply(wireBytes: reply),
        !payloads.isEmpty,
        stage.withLock({ stage in
          guard stage == .armed else { return false }
          stage = .failingQueries
          return true
        })
      else { return reply }
      return HostReply.notifications([], index: index).wireBytes()
    }
  }

  /// Sends every request to the member it names; once armed, answers every watch at once as truncated (nothing
  /// handed out, a position past `after`) and refuses every query at once with a rejection no retry fixes.
  final class TruncatingChannel: RequestChannel {
    let harness: LockHostHarness
    let armed = Atomic(false)
    /// Queries refused while armed.
    let refusedQueries = Atomic(0)

    init(harness: LockHostHarness) { self.harness = harness }

    func send(_ request: [UInt8], to member: NodeID, timeout: Duration) async throws -> [UInt8] {
      guard let host = harness.host(member) else { throw RequestChannelError.unreachable(member, "not running") }
      if armed.load(ordering: .relaxed) {
        switch try? HostRequest(wireBytes: request) {
        case .watch(_, _, _, let after, _)?:
          return HostReply.notifications([], index: after + 1).wireBytes()
        case .query?:
          refusedQueries.add(1, ordering: .relaxed)
          return HostReply.failure(HostFailure(.malformed("refused by the test"))).wireBytes()
        default:
          break
        }
      }
      return await host.handle(bytes: request)
    }
  }

  @Test("a waiter whose watches come back truncated at once and whose status reads fail at once backs off")
  func failingStatusReadsBackOff() async throws {
    let cluster = try LockClientTests.cluster(.raft, "watch-truncated-reads-refused")
    try await LockHostHarness.with(cluster) { harness in
      _ = try await harness.awaitLeader()
      let holder = harness.lockClient(reaching: nil, seed: 1, deadline: .seconds(30))
      var options = LockClientTests.steadyLeases
      options.watchInterval = .milliseconds(200)  // The watch under way when the channel is armed ends soon.
      let channel = TruncatingChannel(harness: harness)
      let waiter = LockClient(
        HostClient(
          channel: channel, members: harness.members, map: cluster.map, options: LockClientTests.quickCalls, seed: 2),
        options: options)
      try await closing([holder, waiter]) {
        let held = try await holder.lock("contended")
        let wait = Duration.seconds(3)
        let waiting = Task { try await waiter.tryLock("contended", timeout: wait) }
        _ = try await awaitValue("the waiter to queue") {
          try await holder.status(of: "contended")?.waiters.count == 1 ? true : nil
        }
        channel.armed.store(true, ordering: .relaxed)
        _ = try? await waiting.value
        channel.armed.store(false, ordering: .relaxed)
        let refused = channel.refusedQueries.load(ordering: .relaxed)
        // Pauses of 50 ms doubling (to 1.6 s) fit at most seven status reads in the wait; before, one every 50 ms
        // (about 60).
        #expect(refused > 0 && refused <= 12, "\(refused) status reads in \(wait)")
        #expect(try await holder.unlock(held))
      }
    }
  }

  @Test("a waiter whose watch was truncated over its grant, and whose status read then failed, watches from before it")
  func truncatedWatchThenFailedStatusRead() async throws {
    let cluster = try LockClientTests.cluster(.raft, "watch-truncated-read-fails")
    try await LockHostHarness.with(cluster) { harness in
      _ = try await harness.awaitLeader()
      let holder = harness.lockClient(reaching: nil, seed: 1, deadline: .seconds(30))
      var options = LockClientTests.steadyLeases
      options.watchInterval = .seconds(600)  // A watch ends early only with an answer (the member holds it 30 s).
      let channel = HidingChannel(harness: harness)
      let waiter = LockClient(
        HostClient(
          channel: channel, members: harness.members, map: cluster.map, options: LockClientTests.quickCalls, seed: 2),
        options: options)
      try await closing([holder, waiter]) {
        let held = try await holder.lock("handoff")
        let waiting = Task { try await waiter.lock("handoff") }
        _ = try await awaitValue("the waiter to queue") {
          try await holder.status(of: "handoff")?.waiters.count == 1 ? true : nil
        }
        channel.stage.withLock { $0 = .armed }
        let released = ContinuousClock.now
        #expect(try await holder.unlock(held))
        let lease = try await waiting.value
        let took = ContinuousClock.now - released
        #expect(channel.failedQueries.load(ordering: .relaxed) > 0, "the status read after the truncation failed")
        // The status read gives up after the calls' 3 s deadline; a watch from past the grant would then wait for
        // the member's 30 s limit before the next read.
        #expect(took < .seconds(15), "the lease came \(took) after the release")
        #expect(try await waiter.unlock(lease))
      }
    }
  }

  @Test("a follower that installs a snapshot over a waiter's grant answers its watch at once; the lease comes quickly")
  func snapshotOverGrant() async throws {
    let cluster = try LockClientTests.cluster(.raft, "watch-gap", snapshotEvery: 5)
    try await LockHostHarness.with(cluster) { harness in
      let leader = try await harness.awaitLeader()
      let follower = try #require(harness.members.first { $0 != leader })
      let others = harness.members.filter { $0 != follower }
      let holder = harness.lockClient(reaching: nil, seed: 1, deadline: .seconds(30))
      var calls = LockClientTests.quickCalls
      calls.deadline = .seconds(30)
      var options = LockClientTests.steadyLeases
      options.watchInterval = .seconds(600)  // Only an answer of the watch's member can end a watch early.
      let waiter = LockClient(
        HostClient(
          channel: WatchAtChannel(harness: harness, watchAt: follower), members: harness.members,
          map: cluster.map, options: calls, seed: 2),
        options: options)
      try await closing([holder, waiter]) {
        let held = try await holder.lock("handoff")
        let got = Mutex<LockLease?>(nil)
        let waiting = Task {
          let lease = try await waiter.lock("handoff")
          got.withLock { $0 = lease }
          return lease
        }
        _ = try await awaitValue("the waiter to queue") {
          try await holder.status(of: "handoff")?.waiters.count == 1 ? true : nil
        }
        // The follower holding the watch hears nothing of the grant, nor of the entries after it.
        harness.transport.partition([follower], from: others)
        #expect(try await holder.unlock(held))
        for n in 0..<20 {
          let filler = try await holder.lock("filler-\(n % 3)")
          #expect(try await holder.unlock(filler))
        }
        let behind = try #require(await harness.host(follower)?.group(LockClientTests.group)?.status())
        // The leader's log no longer reaches back to the follower's position: it catches up by a snapshot.
        _ = try await awaitValue("the leader to compact past the follower") {
          let status = await harness.host(leader)?.group(LockClientTests.group)?.status()
          return (status?.snapshotIndex ?? 0) > behind.appliedIndex + 10 ? true : nil
        }
        #expect(got.withLock { $0 } == nil, "the watch's member has not told the waiter yet")
        let healed = ContinuousClock.now
        harness.transport.heal()
        _ = try await awaitValue("the waiter's lease", within: .seconds(60)) { got.withLock { $0 } }
        let took = ContinuousClock.now - healed
        // Generous for a loaded machine (it takes well under a second here), yet below what a watch without the
        // member's answer lasts: the member holds a watch at most 30 s (`maxWatchMillis`), and this one began
        // before the partition, a few seconds before the heal.
        #expect(took < .seconds(15), "the lease came \(took) after the partition healed")
        let caughtUp = try #require(await harness.host(follower)?.group(LockClientTests.group)?.status())
        #expect(caughtUp.snapshotIndex > behind.appliedIndex + 10, "the follower installed a snapshot over the grant")
        let lease = try await waiting.value
        #expect(try await waiter.unlock(lease))
      }
    }
  }

  @Test("a member restarted from a snapshot answers a watch from before it at once, truncated, and waits after it")
  func restartFromSnapshot() async throws {
    let cluster = try LockClientTests.cluster(.raft, "watch-restart", snapshotEvery: 5)
    try await LockHostHarness.with(cluster) { harness in
      _ = try await harness.awaitLeader()
      let locks = harness.lockClient(reaching: nil, seed: 1, deadline: .seconds(30))
      try await closing([locks]) {
        for n in 0..<10 {
          let lease = try await locks.lock("restart-\(n % 2)")
          #expect(try await locks.unlock(lease))
        }
      }
      let member = try #require(harness.members.last)
      _ = try await awaitValue("\(member) to take a snapshot") {
        let status = await harness.host(member)?.group(LockClientTests.group)?.status()
        return (status?.snapshotIndex ?? 0) > 0 ? true : nil
      }
      await harness.stop(member)
      try await harness.start(member)
      let host = try #require(harness.host(member))
      let status = try #require(await host.group(LockClientTests.group)?.status())
      #expect(status.snapshotIndex > 0)
      #expect(host.notifications.floor(of: LockClientTests.group) >= status.snapshotIndex)
      let watch = HostRequest.watch(
        group: LockClientTests.group, service: LockService.name, key: "grant/none", after: 0, timeoutMillis: 30_000)
      let started = ContinuousClock.now
      guard case .notifications(let payloads, let index) = await host.handle(watch) else {
        Issue.record("a watch not answered with notifications")
        return
      }
      #expect(payloads.isEmpty && index >= status.snapshotIndex, "truncated through the snapshot: \(index)")
      #expect(ContinuousClock.now - started < .seconds(15), "answered at once, not at the watch's timeout")
      let later = HostRequest.watch(
        group: LockClientTests.group, service: LockService.name, key: "grant/none", after: index, timeoutMillis: 200)
      guard case .notifications(let none, let same) = await host.handle(later) else {
        Issue.record("a watch not answered with notifications")
        return
      }
      #expect(none.isEmpty && same == index, "a watch from the floor waits, and times out as before")
    }
  }
}
