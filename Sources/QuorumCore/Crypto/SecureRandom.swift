import Glibc

/// Unpredictable bytes from the operating system, for handshake nonces and keys.
///
/// This reads the kernel's cryptographically secure generator through `/dev/urandom` (the `Glibc` module
/// does not export `getrandom(2)`; both draw from the same generator). It is the one place where Quorum
/// uses randomness that no seed reproduces: everything that must replay from a seed draws from
/// ``SeededRandom`` instead, which is not suitable for secrets.
public enum SecureRandom {
  /// The device read for random bytes.
  public static let devicePath = "/dev/urandom"

  /// `count` bytes from the kernel's cryptographically secure generator.
  ///
  /// - Throws: ``SecureRandomError`` if the device cannot be opened or read.
  public static func bytes(count: Int) throws(SecureRandomError) -> [UInt8] {
    precondition(count >= 0, "cannot draw \(count) random bytes")
    var bytes = [UInt8](repeating: 0, count: count)
    var outcome: Result<Void, SecureRandomError> = .success(())
    bytes.withUnsafeMutableBytes { buffer in
      outcome = Result { () throws(SecureRandomError) in try fill(buffer) }
    }
    try outcome.get()
    return bytes
  }

  /// Fills `buffer` with bytes from the kernel's cryptographically secure generator.
  ///
  /// - Throws: ``SecureRandomError`` if the device cannot be opened or read; the buffer may then be partly
  ///   filled and must not be used.
  public static func fill(_ buffer: UnsafeMutableRawBufferPointer) throws(SecureRandomError) {
    guard let base = buffer.baseAddress, buffer.count > 0 else { return }
    var descriptor: Int32
    repeat { descriptor = open(devicePath, O_RDONLY | O_CLOEXEC) } while descriptor < 0 && errno == EINTR
    guard descriptor >= 0 else {
      throw SecureRandomError(
        operation: .open, errorNumber: errno, requestedByteCount: buffer.count, filledByteCount: 0)
    }
    defer { close(descriptor) }
    var filled = 0
    while filled < buffer.count {
      // A read may return fewer bytes than asked, or be interrupted by a signal: keep asking.
      let result = read(descriptor, base + filled, buffer.count - filled)
      if result > 0 {
        filled += result
      } else if result < 0 && errno == EINTR {
        continue
      } else {
        throw SecureRandomError(
          operation: .read, errorNumber: result < 0 ? errno : 0, requestedByteCount: buffer.count,
          filledByteCount: filled)
      }
    }
  }
}

/// The kernel did not supply random bytes.
public struct SecureRandomError: Error, Equatable, CustomStringConvertible {
  /// The system call that failed.
  public enum Operation: String, Sendable {
    /// Opening ``SecureRandom/devicePath``.
    case open
    /// Reading from it (an end of file, reported with error number 0, counts as a failure).
    case read
  }

  /// The system call that failed.
  public let operation: Operation
  /// The `errno` the call reported (0 for an unexpected end of file).
  public let errorNumber: Int32
  /// How many bytes were asked for.
  public let requestedByteCount: Int
  /// How many bytes had been filled when the call failed.
  public let filledByteCount: Int

  public var description: String {
    "\(operation) of \(SecureRandom.devicePath) failed with errno \(errorNumber) after \(filledByteCount) of "
      + "\(requestedByteCount) random bytes"
  }
}
