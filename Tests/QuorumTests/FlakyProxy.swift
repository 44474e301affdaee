import Foundation
import Glibc
import Quorum
import Synchronization

/// A userspace TCP proxy on 127.0.0.1 that can cut the link it carries, the way a partition does.
///
/// While cut, the proxy forwards nothing: connections open at the cut, and connections accepted during it,
/// are frozen for good — their bytes sit unread, as packets do in a partition, and nothing ever tells either
/// end (the kernel still acknowledges what reaches the proxy, so TCP itself sees no trouble; a real partition
/// leaves a connection in retransmission back-off for as long). Connections accepted after ``heal()`` are
/// forwarded normally. Only a dialler that notices the silence and dials again gets through.
final class FlakyProxy: @unchecked Sendable {
  // Safety of @unchecked Sendable: `pairs`, `frozen` and the descriptors are touched only on the proxy's own
  // thread; `cut` and `running` are atomics; `port` and `target` are immutable after init.
  private struct Pair {
    var client: Int32
    var upstream: Int32
    var toUpstream: [UInt8] = []
    var toClient: [UInt8] = []
  }

  let target: TCPAddress
  let address: TCPAddress
  private let listener: Int32
  private let isCut = Atomic<Bool>(false)
  private let generation = Atomic<Int>(0)
  private let running = Atomic<Bool>(true)
  private let exited = Atomic<Bool>(false)
  private var pairs: [Pair] = []
  private var frozen: [Int32] = []
  private var frozenGeneration = 0

  init(to target: TCPAddress) throws {
    self.target = target
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw ProxyError("socket: errno \(errno)") }
    var one: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    var address = Self.loopback(port: 0)
    let bound = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0, listen(fd, 128) == 0 else { throw ProxyError("bind/listen: errno \(errno)") }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    Self.makeNonBlocking(fd)
    listener = fd
    self.address = try TCPAddress(host: "127.0.0.1", port: UInt16(bigEndian: address.sin_port))
    let thread = Thread { [self] in run() }
    thread.start()
  }

  /// Stops forwarding: every connection open now, and every one accepted until ``heal()``, is frozen.
  func cut() {
    isCut.store(true, ordering: .sequentiallyConsistent)
    generation.add(1, ordering: .sequentiallyConsistent)
  }

  /// Forwards connections accepted from now on.
  func heal() { isCut.store(false, ordering: .sequentiallyConsistent) }

  /// Stops the proxy and closes every connection.
  func stop() async {
    running.store(false, ordering: .sequentiallyConsistent)
    while !exited.load(ordering: .sequentiallyConsistent) { try? await Task.sleep(for: .milliseconds(5)) }
  }

  private static func loopback(port: UInt16) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return address
  }

  private static func makeNonBlocking(_ fd: Int32) {
    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
  }

  private func run() {
    while running.load(ordering: .sequentiallyConsistent) {
      let currentGeneration = generation.load(ordering: .sequentiallyConsistent)
      if currentGeneration != frozenGeneration {
        // The cut freezes what is open: its descriptors are kept, never serviced again.
        frozenGeneration = currentGeneration
        for pair in pairs { frozen += [pair.client, pair.upstream] }
        pairs = []
      }
      var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
      for pair in pairs {
        fds.append(
          pollfd(fd: pair.client, events: Int16(POLLIN) | (pair.toClient.isEmpty ? 0 : Int16(POLLOUT)), revents: 0))
        fds.append(
          pollfd(fd: pair.upstream, events: Int16(POLLIN) | (pair.toUpstream.isEmpty ? 0 : Int16(POLLOUT)), revents: 0))
      }
      guard poll(&fds, nfds_t(fds.count), 5) >= 0 else { continue }
      let polled = pairs.count
      if fds[0].revents != 0 { acceptAll() }
      var closed: Set<Int> = []
      for index in 0..<polled {
        let clientEvents = fds[1 + 2 * index].revents
        let upstreamEvents = fds[2 + 2 * index].revents
        if !service(index, clientEvents: clientEvents, upstreamEvents: upstreamEvents) { closed.insert(index) }
      }
      for index in closed.sorted(by: >) {
        close(pairs[index].client)
        close(pairs[index].upstream)
        pairs.remove(at: index)
      }
    }
    for pair in pairs {
      close(pair.client)
      close(pair.upstream)
    }
    for fd in frozen { close(fd) }
    close(listener)
    exited.store(true, ordering: .sequentiallyConsistent)
  }

  private func acceptAll() {
    while true {
      let client = accept(listener, nil, nil)
      guard client >= 0 else { return }
      if isCut.load(ordering: .sequentiallyConsistent) {
        frozen.append(client)  // like a SYN lost in the partition: the dialler waits in vain
        continue
      }
      let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
      var address = Self.loopback(port: target.port)
      let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
      }
      guard upstream >= 0, connected == 0 else {
        close(client)
        if upstream >= 0 { close(upstream) }
        continue
      }
      Self.makeNonBlocking(client)
      Self.makeNonBlocking(upstream)
      pairs.append(Pair(client: client, upstream: upstream))
    }
  }

  /// Moves bytes both ways for one pair; `false` once either side has closed.
  private func service(_ index: Int, clientEvents: Int16, upstreamEvents: Int16) -> Bool {
    var buffer = [UInt8](repeating: 0, count: 65_536)
    func pump(from source: Int32, into pending: inout [UInt8]) -> Bool {
      let n = buffer.withUnsafeMutableBytes { recv(source, $0.baseAddress, $0.count, 0) }
      if n > 0 {
        pending += buffer[0..<n]
        return true
      }
      return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)
    }
    func flush(_ pending: inout [UInt8], to destination: Int32) -> Bool {
      guard !pending.isEmpty else { return true }
      let n = pending.withUnsafeBytes { send(destination, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
      if n > 0 {
        pending.removeFirst(n)
        return true
      }
      return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)
    }
    let readable = Int16(POLLIN) | Int16(POLLHUP) | Int16(POLLERR)
    if clientEvents & readable != 0, !pump(from: pairs[index].client, into: &pairs[index].toUpstream) { return false }
    if upstreamEvents & readable != 0, !pump(from: pairs[index].upstream, into: &pairs[index].toClient) { return false }
    guard flush(&pairs[index].toUpstream, to: pairs[index].upstream) else { return false }
    return flush(&pairs[index].toClient, to: pairs[index].client)
  }
}

struct ProxyError: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}
