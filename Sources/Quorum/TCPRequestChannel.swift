public import QuorumCore
public import QuorumHost
public import QuorumTCP
import Synchronization

/// A ``QuorumHost/RequestChannel`` over TCP: requests go to members' addresses over pipelined
/// ``QuorumTCP/TCPRequestClient`` connections.
///
/// It starts from a few seed addresses (known by position, since their node ids are not known yet) and learns
/// every member's address from the cluster map the client fetches.
public final class TCPRequestChannel: RequestChannel, Sendable {
  /// The node ids standing for the seed addresses until the map is known (far above any real member's id).
  public static let seedBase: UInt64 = 1 << 62

  private let connection: TCPRequestClient
  private let owns: Bool
  private let addresses: Mutex<[NodeID: TCPAddress]>

  /// Creates a channel to `cluster` starting from `seeds`, authenticating with `credential` (unless a shared
  /// `connection` is given, which has its own).
  public init(
    cluster: ClusterID, seeds: [TCPAddress], connection: TCPRequestClient? = nil,
    credential: TCPClientCredential? = nil
  ) {
    self.connection = connection ?? TCPRequestClient(cluster: cluster, credential: credential, logger: .disabled)
    self.owns = connection == nil
    var book: [NodeID: TCPAddress] = [:]
    for (i, address) in seeds.enumerated() { book[NodeID(rawValue: Self.seedBase + UInt64(i))] = address }
    self.addresses = Mutex(book)
  }

  /// The node ids standing for the seeds, in order.
  public var seedMembers: [NodeID] {
    addresses.withLock { book in book.keys.filter { $0.rawValue >= Self.seedBase }.sorted() }
  }

  public func learn(_ map: ClusterMap) {
    addresses.withLock { book in
      for (id, text) in map.members {
        // Port 0 means "not known yet" (a member still starting), and an unspecified host (0.0.0.0) is where a
        // member listens, not where it can be reached: keep what the channel knows.
        if let address = TCPAddress(text), address.port != 0, !address.isUnspecified { book[id] = address }
      }
    }
  }

  public func send(_ request: [UInt8], to member: NodeID, timeout: Duration) async throws -> [UInt8] {
    guard let address = addresses.withLock({ $0[member] }) else {
      throw RequestChannelError.unreachable(member, "no address")
    }
    do {
      return try await connection.request(request, to: address, timeout: timeout)
    } catch .timeout {
      throw RequestChannelError.timeout(member)
    } catch {
      // Turned away for good (a credential, another cluster): the client stops asking this member.
      if error.isPermanentRefusal { throw RequestChannelError.refused(member, "\(error)") }
      // Lost after the request may have gone out: a write without a session must not be retried blindly.
      if case .connectionLost = error { throw RequestChannelError.connectionLost(member, "\(error)") }
      throw RequestChannelError.unreachable(member, "\(error)")
    }
  }

  /// A member's id, or for a seed not yet known by its id, "the seed at" its address.
  public func describe(_ member: NodeID) -> String {
    guard member.rawValue >= Self.seedBase else { return "\(member)" }
    return addresses.withLock { $0[member] }.map { "the seed at \($0)" } ?? "a seed"
  }

  /// Closes the connections (if the channel made them).
  public func close() async {
    if owns { await connection.close() }
  }
}

/// A ``QuorumHost/RequestChannel`` to hosts in this process: each request is handed straight to the member's
/// request handler (encoded and decoded, as over a network).
public struct InProcessRequestChannel: RequestChannel {
  private let hosts: [NodeID: GroupHost]

  /// Creates a channel to `hosts`.
  public init(hosts: [NodeID: GroupHost]) { self.hosts = hosts }

  public func send(_ request: [UInt8], to member: NodeID, timeout: Duration) async throws -> [UInt8] {
    guard let host = hosts[member] else { throw RequestChannelError.unreachable(member, "not in this process") }
    return await host.handle(bytes: request)
  }
}
