import Glibc
import QuorumCore
import QuorumSimulation

/// The foundation part of the tour: three nodes on the in-process transport, a partition, and the heal.
enum FoundationDemo {
  static func run() async throws {
    let transport = InProcessTransport<String>()
    let nodes: [NodeID] = [1, 2, 3]
    var endpoints: [InProcessEndpoint<String>] = []
    for node in nodes { endpoints.append(try transport.bind(node)) }
    print("three nodes bound on the in-process transport: \(nodes.map(\.description).joined(separator: ", "))")

    try broadcast(endpoints, "hello")
    for endpoint in endpoints { print("  \(endpoint.id) received \(drain(endpoint))") }

    transport.isolate(3)
    print("n3 is cut off from the others")
    try broadcast(endpoints, "during the partition")
    for endpoint in endpoints { print("  \(endpoint.id) received \(drain(endpoint))") }

    transport.heal()
    print("partition healed")
    try broadcast(endpoints, "after the heal")
    for endpoint in endpoints { print("  \(endpoint.id) received \(drain(endpoint))") }
    for endpoint in endpoints { endpoint.closeNow() }
  }

  static func broadcast(_ endpoints: [InProcessEndpoint<String>], _ text: String) throws {
    for sender in endpoints {
      for receiver in endpoints where receiver.id != sender.id {
        try sender.send("\(text) from \(sender.id)", to: receiver.id)
      }
    }
  }

  static func drain(_ endpoint: InProcessEndpoint<String>) -> [String] {
    var batch: [Envelope<String>] = []
    endpoint.incoming.drainAvailable(into: &batch)
    return batch.map(\.payload)
  }
}
