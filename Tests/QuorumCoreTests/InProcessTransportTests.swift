import QuorumCore
import Testing

@Suite("InProcessTransport")
struct InProcessTransportTests {
  /// Binds `n1` … `n<count>`.
  func cluster(_ count: UInt64, inboxCapacity: Int = 64) throws -> (
    InProcessTransport<String>, [InProcessEndpoint<String>]
  ) {
    let transport = InProcessTransport<String>(inboxCapacity: inboxCapacity)
    return (transport, try (1...count).map { try transport.bind(NodeID($0)) })
  }

  /// Everything queued at `endpoint` (the in-process transport delivers during `send`).
  func inbox(_ endpoint: InProcessEndpoint<String>) -> [String] {
    var envelopes: [Envelope<String>] = []
    endpoint.incoming.drainAvailable(into: &envelopes)
    return envelopes.map(\.payload)
  }

  @Test("delivers an envelope with its sender, receiver and group")
  func delivers() async throws {
    let (_, nodes) = try cluster(2)
    try nodes[0].send("hello", to: 2, group: 7)
    try nodes[0].send("default", to: 2)
    let envelope = await nodes[1].incoming.receive()
    #expect(envelope == Envelope(from: 1, to: 2, group: 7, payload: "hello"))
    #expect(await nodes[1].incoming.receive()?.group == .default)
  }

  @Test("a partition silently drops both ways between the groups, and nothing inside them")
  func partition() throws {
    let (transport, nodes) = try cluster(3)
    transport.partition([1], from: [2, 3])
    for from in nodes {
      for to in nodes where to.id != from.id { try from.send("\(from.id)->\(to.id)", to: to.id) }
    }
    #expect(inbox(nodes[0]).isEmpty)
    #expect(inbox(nodes[1]) == ["n3->n2"])
    #expect(inbox(nodes[2]) == ["n2->n3"])
    transport.heal()
    try nodes[0].send("healed", to: 2)
    #expect(inbox(nodes[1]) == ["healed"])
  }

  @Test("block cuts one direction only")
  func block() throws {
    let (transport, nodes) = try cluster(2)
    transport.block(from: 1, to: 2)
    try nodes[0].send("lost", to: 2)
    try nodes[1].send("arrives", to: 1)
    #expect(inbox(nodes[1]).isEmpty)
    #expect(inbox(nodes[0]) == ["arrives"])
  }

  @Test("isolate cuts a node off from every node bound at the time")
  func isolate() throws {
    let (transport, nodes) = try cluster(3)
    transport.isolate(3)
    try nodes[2].send("out", to: 1)
    try nodes[0].send("in", to: 3)
    try nodes[0].send("between the others", to: 2)
    #expect(inbox(nodes[0]).isEmpty && inbox(nodes[2]).isEmpty)
    #expect(inbox(nodes[1]) == ["between the others"])
    // A node bound later was not part of the cut.
    let late = try transport.bind(4)
    try nodes[2].send("to the newcomer", to: 4)
    #expect(inbox(late) == ["to the newcomer"])
    transport.heal()
    try nodes[2].send("back", to: 1)
    #expect(inbox(nodes[0]) == ["back"])
  }

  @Test("a closed endpoint is reported lost to every other endpoint that asked, and a cut link is not")
  func peerLost() async throws {
    let (transport, nodes) = try cluster(3)
    let lost = Mailbox<String>(capacity: 16)
    nodes[0].onPeerLost { peer in try? lost.trySend("1 lost \(peer)") }
    nodes[1].onPeerLost { peer in try? lost.trySend("2 lost \(peer)") }
    transport.isolate(3)
    var reports: [String] = []
    #expect(lost.drainAvailable(into: &reports) == 0, "a partition is not detected")
    await nodes[2].close()
    await nodes[2].close()  // closing twice reports once
    lost.drainAvailable(into: &reports)
    #expect(reports == ["1 lost n3", "2 lost n3"])
    await nodes[1].close()
    reports = []
    lost.drainAvailable(into: &reports)
    #expect(reports == ["1 lost n2"], "a closed endpoint hears of nothing more")
  }

  @Test("binding a bound node fails; after close the node can be bound again")
  func alreadyBound() async throws {
    let (transport, nodes) = try cluster(2)
    #expect(throws: TransportError.alreadyBound(1)) { try transport.bind(1) }
    await nodes[0].close()
    let again = try transport.bind(1)
    try nodes[1].send("to the new endpoint", to: 1)
    #expect(inbox(again) == ["to the new endpoint"])
    #expect(TransportError.alreadyBound(1).description == "n1 is already bound")
  }

  @Test("sending to an unbound or closed node is unknownPeer; a closed sender gets closed")
  func unknownPeerAndClosed() async throws {
    let (_, nodes) = try cluster(2)
    #expect(throws: TransportError.unknownPeer(9)) { try nodes[0].send("nobody", to: 9) }
    try nodes[0].send("queued, then discarded", to: 2)
    await nodes[1].close()
    #expect(await nodes[1].incoming.receive() == nil, "close discards what was queued and ends incoming")
    #expect(throws: TransportError.unknownPeer(2)) { try nodes[0].send("too late", to: 2) }
    #expect(throws: TransportError.closed) { try nodes[1].send("from the grave", to: 1) }
    nodes[1].closeNow()
    await nodes[1].close()
  }

  @Test("a full inbox refuses with queueFull and accepts again once drained")
  func queueFull() async throws {
    let (_, nodes) = try cluster(2, inboxCapacity: 3)
    for i in 0..<3 { try nodes[0].send("\(i)", to: 2) }
    #expect(throws: TransportError.queueFull(peer: 2, capacity: 3)) { try nodes[0].send("3", to: 2) }
    #expect(inbox(nodes[1]) == ["0", "1", "2"])
    try nodes[0].send("4", to: 2)
    #expect(inbox(nodes[1]) == ["4"])
  }
}
