/// A value the key-value clients store and give back: bytes as they are, strings as their UTF-8 bytes, or a
/// type of the application's own.
///
/// Every client operation takes and returns any `KVValue`, so a string put is a string got:
///
/// ```swift
/// try await kv.put("greeting", "hello")                              // a String
/// let text = try await kv.get("greeting", as: String.self)            // "hello"
/// let bytes = try await kv.get("greeting")                            // [UInt8], the default
/// let (swapped, now) = try await kv.compareAndSwap("greeting", expected: "hello", new: "world")
/// ```
///
/// The store itself holds bytes: a value put as one type can be read as another (a string's bytes as
/// `[UInt8]`). To store a `Codable` type, conform it with the encoder of your choice, for example JSON:
///
/// ```swift
/// struct Order: Codable, KVValue {
///   var item: String
///   func kvBytes() throws -> [UInt8] { Array(try JSONEncoder().encode(self)) }
///   init(kvBytes: [UInt8]) throws { self = try JSONDecoder().decode(Order.self, from: Data(kvBytes)) }
/// }
/// ```
public protocol KVValue: Sendable {
  /// The bytes to store.
  func kvBytes() throws -> [UInt8]
  /// Decodes a stored value.
  /// - Throws: whatever the type's decoding throws, when the bytes are not a value of this type (the clients
  ///   wrap it in a ``KVValueError``).
  init(kvBytes: [UInt8]) throws
}

extension Array: KVValue where Element == UInt8 {
  /// The bytes themselves.
  public func kvBytes() -> [UInt8] { self }
  /// The stored bytes.
  public init(kvBytes: [UInt8]) { self = kvBytes }
}

extension String: KVValue {
  /// The string's UTF-8 bytes.
  public func kvBytes() -> [UInt8] { Array(utf8) }
  /// The stored bytes as UTF-8 text; bytes that are not UTF-8 become U+FFFD (never an error).
  public init(kvBytes: [UInt8]) { self = String(decoding: kvBytes, as: UTF8.self) }
}

/// A value that did not encode or decode as the type asked for.
public struct KVValueError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The key.
  public var key: String
  /// The type asked for.
  public var type: String
  /// Whether the write went through (a write's *previous* or *current* value failed to decode, not the write).
  public var writeApplied: Bool
  /// The encoder's or decoder's error.
  public var reason: String

  /// Creates an error.
  public init(key: String, type: String, writeApplied: Bool, reason: String) {
    self.key = key
    self.type = type
    self.writeApplied = writeApplied
    self.reason = reason
  }

  public var description: String {
    "the value of \(key) is not a \(type): \(reason)" + (writeApplied ? " (the write itself was applied)" : "")
  }
}

extension KVValue {
  /// `kvBytes()`, with a failure reported as a ``KVValueError`` about `key`.
  package func encoded(for key: String) throws(KVValueError) -> [UInt8] {
    do {
      return try kvBytes()
    } catch {
      throw KVValueError(key: key, type: "\(Self.self)", writeApplied: false, reason: "\(error)")
    }
  }

  /// Decodes `bytes` (nil stays nil), reporting a failure as a ``KVValueError`` about `key`.
  package static func decoded(_ bytes: [UInt8]?, for key: String, afterWrite: Bool) throws(KVValueError) -> Self? {
    guard let bytes else { return nil }
    do {
      return try Self(kvBytes: bytes)
    } catch {
      throw KVValueError(key: key, type: "\(Self.self)", writeApplied: afterWrite, reason: "\(error)")
    }
  }
}

extension KVPair {
  /// The value as a `Value` (`pair.value(as: String.self)`).
  /// - Throws: ``KVValueError`` if it does not decode.
  public func value<Value: KVValue>(as type: Value.Type) throws(KVValueError) -> Value {
    do {
      return try Value(kvBytes: value)
    } catch {
      throw KVValueError(key: key, type: "\(Value.self)", writeApplied: false, reason: "\(error)")
    }
  }
}
