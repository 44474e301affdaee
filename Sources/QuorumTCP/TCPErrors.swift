import Glibc
public import QuorumCore

/// Why a TCP transport could not be set up or used: listening, addressing and connecting failures.
public enum TCPTransportError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The text is not a usable address.
  case invalidAddress(String, reason: String)
  /// Another socket already listens on the address (`EADDRINUSE`).
  case addressInUse(TCPAddress)
  /// A socket call failed while setting up a listener or connection.
  case system(operation: String, address: TCPAddress?, errno: Int32)
  /// The node has no address in the address book, and none can be chosen.
  case noAddress(NodeID)
  /// The node is already bound on this transport.
  case alreadyBound(NodeID)

  public var description: String {
    switch self {
    case .invalidAddress(let text, let reason): return "invalid address '\(text)': \(reason)"
    case .addressInUse(let address): return "address \(address) is already in use (is another node running?)"
    case .system(let operation, let address, let code):
      return "\(operation)\(address.map { " \($0)" } ?? "") failed: \(errnoDescription(code))"
    case .noAddress(let node): return "no address for \(node) in the address book"
    case .alreadyBound(let node): return "\(node) is already bound"
    }
  }
}

/// Which connection budget of a listener was full.
public enum TCPConnectionBudget: String, Sendable, Equatable, CustomStringConvertible {
  /// Connections from one address that have not completed the handshake
  /// (``TCPTransportOptions/maxUnauthenticatedConnectionsPerAddress``).
  case unauthenticatedPerAddress = "unauthenticated connections from one address"
  /// Authenticated client connections (``TCPTransportOptions/maxClientConnections``).
  case clients = "client connections"
  /// Authenticated client connections from one address (``TCPTransportOptions/maxClientConnectionsPerAddress``).
  case clientsPerAddress = "client connections from one address"
  /// Connections from peers (``TCPTransportOptions/maxPeerConnections``).
  case peers = "peer connections"

  public var description: String { rawValue }
}

/// Why a connection was closed. Each close is logged with its reason; protocol violations by the remote
/// side (see ``isProtocolViolation``) close only that connection, never the node.
public enum TCPCloseReason: Error, Sendable, Equatable, CustomStringConvertible {
  /// The remote side belongs to another cluster.
  case clusterMismatch(local: ClusterID, remote: ClusterID)
  /// The remote peer's group table differs from this node's (their ``TCPTransportOptions/groupTableDigest``s,
  /// shown as their first bytes in hexadecimal, differ): the members run different group lists (numbers, names,
  /// engines, services or slots), and one group's messages would reach another group with the same number.
  case groupTableMismatch(local: String, remote: String)
  /// The remote side introduced itself as a node that is not in the address book.
  case unknownNode(NodeID)
  /// The remote side dialled `expected`, but this listener is `actual` (a stale address).
  case wrongNode(expected: NodeID, actual: NodeID)
  /// The handshake or a frame uses a format version this build does not speak.
  case unsupportedVersion(UInt8)
  /// The two sides of a handshake speak no protocol version in common: this side speaks `local`, the other side
  /// `remote` (see ``TCPHandshake``; a listener from before versions were negotiated is taken to speak
  /// ``TCPHandshake/legacyVersions``).
  case noCommonVersion(local: ClosedRange<UInt8>, remote: ClosedRange<UInt8>)
  /// A length prefix announced a frame larger than the limit.
  case frameTooLarge(bytes: Int, limit: Int)
  /// The connection ended (or stalled past the frame timeout) in the middle of a frame.
  case truncatedFrame(received: Int, expected: Int)
  /// A frame could not be decoded (garbage bytes, a wrong protocol, a bad sender).
  case malformedFrame(String)
  /// The first frame was not a valid handshake, or none arrived within the handshake timeout.
  case badHandshake(String)
  /// The remote side refused our handshake, with its reason.
  case rejected(String)
  /// The remote side closed the connection.
  case peerClosed
  /// A socket call failed.
  case ioError(operation: String, errno: Int32)
  /// Connecting did not finish within the connect timeout.
  case connectTimeout
  /// The listener already holds its maximum number of connections.
  case tooManyConnections(limit: Int)
  /// This side is shutting down (an endpoint or client closed).
  case localShutdown
  /// The remote side opened a client connection to a node that does not serve clients.
  case clientsNotServed
  /// The host name could not be resolved (the resolver's message attached); the link retries with back-off.
  case unresolvable(host: String, reason: String)
  /// The handshake's authentication failed: a wrong secret, an unknown principal, or a hello that could not
  /// succeed (the detail is for the local log; the remote side is told only "authentication failed").
  case authenticationFailed(String)
  /// A frame's code did not verify for its place in the stream: the frame was altered, replayed, reordered,
  /// spliced from another connection, or sent without the session key.
  case frameAuthenticationFailed(sequence: UInt64)
  /// A peer link heard nothing from the other side (no acknowledgement of its pings) for the liveness
  /// timeout; the link dials again.
  case linkStalled(silentMilliseconds: Int)
  /// The same peer dialled in again: the newer connection replaced this one.
  case replaced
  /// A connection that had not completed its handshake was closed to make room for a new one
  /// (``TCPTransportOptions/maxUnauthenticatedConnections`` was reached).
  case evicted
  /// A connection budget was full.
  case connectionBudget(TCPConnectionBudget, limit: Int)
  /// A client connection had no request in flight and sent nothing for ``TCPTransportOptions/clientIdleTimeout``.
  case idleTimeout
  /// A client stopped reading its replies: more than ``TCPTransportOptions/maxReplyBytesPerConnection`` bytes
  /// waited, or waiting replies made no progress for ``TCPTransportOptions/frameTimeout``.
  case slowReader(pendingBytes: Int)

  /// Whether the close was the remote side breaking the protocol (as opposed to ordinary churn).
  public var isProtocolViolation: Bool {
    switch self {
    case .clusterMismatch, .groupTableMismatch, .unknownNode, .wrongNode, .unsupportedVersion, .noCommonVersion,
      .frameTooLarge, .truncatedFrame, .malformedFrame, .badHandshake, .authenticationFailed,
      .frameAuthenticationFailed:
      return true
    case .rejected, .peerClosed, .ioError, .connectTimeout, .tooManyConnections, .localShutdown, .clientsNotServed,
      .unresolvable, .linkStalled, .replaced, .evicted, .connectionBudget, .idleTimeout, .slowReader:
      return false
    }
  }

  /// Whether the other side turned this connection away for a reason that dialling again does not fix: the
  /// credential or secret did not authenticate, the cluster id or the format version differs, or the node does
  /// not serve clients. A client should stop asking that node rather than retry until its deadline. A listener
  /// tells an unauthenticated dialler only "authentication failed" (or, running insecure, the public reason),
  /// which arrives here as ``rejected(_:)``.
  public var isPermanentRefusal: Bool {
    switch self {
    case .clusterMismatch, .unsupportedVersion, .noCommonVersion, .authenticationFailed, .clientsNotServed:
      return true
    case .rejected(let detail):
      return detail == ListenerHandshake.authenticationFailed
        || detail == TCPCloseReason.clusterMismatch(local: "", remote: "").publicDescription
        || detail.hasPrefix("unsupported format version") || detail.hasPrefix("no protocol version in common")
        || detail == TCPCloseReason.clientsNotServed.description
    default:
      return false
    }
  }

  /// A short stable name for metrics and tests, such as `cluster-mismatch`.
  public var name: String {
    switch self {
    case .clusterMismatch: return "cluster-mismatch"
    case .groupTableMismatch: return "group-table-mismatch"
    case .unknownNode: return "unknown-node"
    case .wrongNode: return "wrong-node"
    case .unsupportedVersion: return "unsupported-version"
    case .noCommonVersion: return "no-common-version"
    case .frameTooLarge: return "frame-too-large"
    case .truncatedFrame: return "truncated-frame"
    case .malformedFrame: return "malformed-frame"
    case .badHandshake: return "bad-handshake"
    case .rejected: return "rejected"
    case .peerClosed: return "peer-closed"
    case .ioError: return "io-error"
    case .connectTimeout: return "connect-timeout"
    case .tooManyConnections: return "too-many-connections"
    case .localShutdown: return "local-shutdown"
    case .clientsNotServed: return "clients-not-served"
    case .unresolvable: return "unresolvable"
    case .authenticationFailed: return "authentication-failed"
    case .frameAuthenticationFailed: return "frame-authentication-failed"
    case .linkStalled: return "link-stalled"
    case .replaced: return "replaced"
    case .evicted: return "evicted"
    case .connectionBudget: return "connection-budget"
    case .idleTimeout: return "idle-timeout"
    case .slowReader: return "slow-reader"
    }
  }

  /// What a refusal tells the remote side: never the cluster id (the refused side may be a stranger).
  public var publicDescription: String {
    switch self {
    case .clusterMismatch: return "cluster id mismatch"
    case .groupTableMismatch:
      return "the group lists differ: every member must run the same groups (numbers, names, engines, services, "
        + "slots) and session policies"
    case .authenticationFailed, .frameAuthenticationFailed: return "authentication failed"
    default: return description
    }
  }

  public var description: String {
    switch self {
    case .clusterMismatch(let local, let remote):
      return "cluster id mismatch: this node is in '\(local)', the remote side claims '\(logSafe(remote.rawValue))'"
    case .groupTableMismatch(let local, let remote):
      return "the group lists differ (group table digest \(local) here, \(logSafe(remote, limit: 64)) on the peer): "
        + "every member must run the same groups (numbers, names, engines, services, slots) and session policies; "
        + "stop every member to change them"
    case .unknownNode(let node): return "unknown node \(node) (not in the address book)"
    case .wrongNode(let expected, let actual): return "dialled \(expected) but reached \(actual)"
    case .unsupportedVersion(let version): return "unsupported format version \(version)"
    case .noCommonVersion(let local, let remote):
      return "no protocol version in common: this side speaks \(Self.versionsText(local)), the other side "
        + Self.versionsText(remote)
    case .frameTooLarge(let bytes, let limit): return "frame of \(bytes) bytes exceeds the \(limit)-byte limit"
    case .truncatedFrame(let received, let expected):
      return "truncated frame: \(received) of \(expected) bytes arrived"
    case .malformedFrame(let detail): return "malformed frame: \(detail)"
    case .badHandshake(let detail): return "bad handshake: \(detail)"
    case .rejected(let detail): return "rejected by the remote side: \(detail)"
    case .peerClosed: return "closed by the remote side"
    case .ioError(let operation, let code): return "\(operation) failed: \(errnoDescription(code))"
    case .connectTimeout: return "connect timed out"
    case .tooManyConnections(let limit): return "too many connections (limit \(limit))"
    case .localShutdown: return "shutting down"
    case .clientsNotServed: return "this node does not serve clients"
    case .unresolvable(let host, let reason): return "cannot resolve '\(host)': \(reason)"
    case .authenticationFailed(let detail): return "authentication failed: \(detail)"
    case .frameAuthenticationFailed(let sequence):
      return "frame \(sequence) failed authentication (altered, replayed, reordered or spliced)"
    case .linkStalled(let silent): return "the link stalled: nothing heard from the other side for \(silent) ms"
    case .replaced: return "replaced by a newer connection from the same peer"
    case .evicted: return "evicted before completing its handshake, to make room for a new connection"
    case .connectionBudget(let budget, let limit): return "too many \(budget) (limit \(limit))"
    case .idleTimeout: return "idle for too long"
    case .slowReader(let pending): return "the client stopped reading its replies (\(pending) bytes waiting)"
    }
  }
}

extension TCPCloseReason {
  /// `version 3`, or `versions 3 to 5`.
  static func versionsText(_ versions: ClosedRange<UInt8>) -> String {
    versions.lowerBound == versions.upperBound
      ? "version \(versions.lowerBound)" : "versions \(versions.lowerBound) to \(versions.upperBound)"
  }
}

/// Why a request over a ``TCPRequestClient`` failed.
public enum TCPRequestError: Error, Sendable, Equatable, CustomStringConvertible {
  /// No connection could be made to the address.
  case unreachable(TCPAddress, reason: TCPCloseReason)
  /// The connection was lost before the reply arrived; the request may or may not have been carried out.
  case connectionLost(TCPAddress, reason: TCPCloseReason)
  /// No reply within the timeout; the request may or may not have been carried out.
  case timeout(TCPAddress)
  /// The request is larger than the frame limit.
  case tooLarge(bytes: Int, limit: Int)
  /// The client was closed.
  case closed
  /// Too many requests are waiting on the connection.
  case overloaded(limit: Int)
  /// The client's event loop could not be started (out of threads or descriptors).
  case cannotStart(String)

  /// Whether the node turned the client away for good (see ``TCPCloseReason/isPermanentRefusal``).
  public var isPermanentRefusal: Bool {
    switch self {
    case .unreachable(_, let reason), .connectionLost(_, let reason): return reason.isPermanentRefusal
    case .timeout, .tooLarge, .closed, .overloaded, .cannotStart: return false
    }
  }

  public var description: String {
    switch self {
    case .unreachable(let address, let reason): return "cannot reach \(address): \(reason)"
    case .connectionLost(let address, let reason): return "connection to \(address) lost: \(reason)"
    case .timeout(let address): return "no reply from \(address) in time"
    case .tooLarge(let bytes, let limit): return "request of \(bytes) bytes exceeds the \(limit)-byte frame limit"
    case .closed: return "client closed"
    case .overloaded(let limit): return "too many requests in flight (limit \(limit))"
    case .cannotStart(let why): return "cannot start the client: \(why)"
    }
  }
}

/// `strerror` text plus the number.
func errnoDescription(_ code: Int32) -> String {
  guard let text = strerror(code) else { return "errno \(code)" }
  return "\(String(cString: text)) (errno \(code))"
}
