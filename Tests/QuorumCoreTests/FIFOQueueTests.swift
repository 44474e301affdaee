import QuorumCore
import QuorumTestSupport
import Testing

@Suite("FIFOQueue")
struct FIFOQueueTests {
  @Test("behaves like an array under random operations", .heavy, arguments: [1, 2, 3, 4, 5, 6, 7, 8] as [UInt64])
  func matchesNaiveModel(seed: UInt64) {
    var rng = SeededRandom(seed: seed)
    var queue = FIFOQueue<Int>()
    var model: [Int] = []
    var next = 0
    for step in 0..<20_000 {
      let roll = Int.random(in: 0..<100, using: &rng)
      switch roll {
      case 0..<50:
        // Bursts of appends make the ring grow and wrap.
        for _ in 0..<Int.random(in: 1...4, using: &rng) {
          queue.append(next)
          model.append(next)
          next += 1
        }
      case 50..<85:
        let popped = queue.popFirst()
        let expected = model.isEmpty ? nil : model.removeFirst()
        if popped != expected {
          Issue.record("step \(step): popped \(String(describing: popped)), expected \(String(describing: expected))")
        }
      case 85..<95:
        let limit = Int.random(in: 1...10, using: &rng)
        var drained: [Int] = [-1]
        let moved = queue.drain(into: &drained, limit: limit)
        let expected = Array(model.prefix(limit))
        model.removeFirst(expected.count)
        if moved != expected.count || drained != [-1] + expected {
          Issue.record("step \(step): drained \(drained), expected \(expected)")
        }
      case 95..<98:
        let parity = Int.random(in: 0...1, using: &rng)
        queue.removeAll { $0 % 2 == parity }
        model.removeAll { $0 % 2 == parity }
      default:
        if rng.chance(0.3) {
          queue.removeAll()
          model.removeAll()
        }
      }
      if queue.count != model.count || queue.isEmpty != model.isEmpty || queue.first != model.first {
        Issue.record("step \(step): count \(queue.count), first \(String(describing: queue.first)); model \(model)")
        return
      }
    }
    #expect(Array(queue.elements) == model)
  }

  @Test("a popped element is released at once, not kept alive by the queue")
  func releasesPoppedElements() {
    var queue = FIFOQueue<Box>()
    weak var popped: Box?
    weak var drained: Box?
    weak var removed: Box?
    do {
      let a = Box()
      let b = Box()
      let c = Box()
      popped = a
      drained = b
      removed = c
      queue.append(a)
      queue.append(b)
      queue.append(c)
      queue.append(Box())
    }
    _ = queue.popFirst()
    #expect(popped == nil)
    var sink: [Box] = []
    _ = queue.drain(into: &sink, limit: 1)
    sink.removeAll()
    #expect(drained == nil)
    queue.removeAll { $0 === removed }
    #expect(removed == nil)
    #expect(queue.count == 1)
  }

  @Test(
    "append(movingFrom:after:) moves the suffix in order behind a head anywhere in the ring, growing and wrapping it")
  func appendMoving() {
    final class Tagged {
      let value: Int
      init(_ value: Int) { self.value = value }
    }
    for head in [0, 5, 15] {
      for before in [0, 3, 10] {
        for moved in [0, 1, 6, 20] {
          for prefix in [0, 2] {
            var queue = FIFOQueue<Tagged>()
            // Puts the head at `head` of a 16-slot ring.
            for i in 0..<head { queue.append(Tagged(-100 - i)) }
            for _ in 0..<head { _ = queue.popFirst() }
            for i in 0..<before { queue.append(Tagged(1000 + i)) }
            var elements = (0..<prefix).map { Tagged(-1 - $0) } + (0..<moved).map(Tagged.init)
            queue.append(movingFrom: &elements, after: prefix)
            let label = "head \(head), before \(before), moved \(moved), prefix \(prefix)"
            #expect(elements.map(\.value) == (0..<prefix).map { -1 - $0 }, "\(label): the prefix stays")
            #expect(queue.count == before + moved, "\(label)")
            var drained: [Tagged] = []
            _ = queue.drain(into: &drained, limit: .max)
            #expect(drained.map(\.value) == Array(1000..<(1000 + before)) + Array(0..<moved), "\(label)")
            // Moved, not copied: the drained array holds the only reference to each.
            #expect(drained.indices.allSatisfy { isKnownUniquelyReferenced(&drained[$0]) }, "\(label)")
          }
        }
      }
    }
  }

  @Test("removeAll(where:) that throws leaves the queue unchanged")
  func throwingPredicate() {
    struct Stop: Error {}
    var queue = FIFOQueue<Int>()
    for i in 0..<10 { queue.append(i) }
    _ = queue.popFirst()
    #expect(throws: Stop.self) {
      try queue.removeAll { element in
        if element == 5 { throw Stop() }
        return element.isMultiple(of: 2)
      }
    }
    #expect(Array(queue.elements) == Array(1..<10))
  }
}

final class Box {}
