// A stand-in for the part of swift-log's `Logging` module (1.x) that the documentation's bridge uses, so the
// bridge compiles in CI without Quorum depending on swift-log. Signatures follow swift-log's public API; nothing
// here is ever run.

/// swift-log's logger (stand-in).
public struct Logger: Sendable {
  /// The logger's label.
  public var label: String
  /// Records below this level are dropped.
  public var logLevel: Logger.Level = .info

  /// Creates a logger.
  public init(label: String) { self.label = label }

  /// swift-log's levels.
  public enum Level: String, Codable, CaseIterable, Sendable {
    case trace, debug, info, notice, warning, error, critical
  }

  /// A log message.
  public struct Message: ExpressibleByStringLiteral, ExpressibleByStringInterpolation, Sendable {
    /// Its text.
    public var text: String
    public init(stringLiteral value: String) { text = value }
  }

  /// Structured metadata.
  public typealias Metadata = [String: MetadataValue]

  /// One metadata value.
  public enum MetadataValue: Sendable, ExpressibleByStringLiteral, ExpressibleByStringInterpolation {
    case string(String)
    case array([MetadataValue])
    case dictionary(Metadata)
    public init(stringLiteral value: String) { self = .string(value) }
  }

  /// Writes a record.
  public func log(
    level: Logger.Level, _ message: @autoclosure () -> Logger.Message,
    metadata: @autoclosure () -> Logger.Metadata? = nil, source: @autoclosure () -> String? = nil,
    file: String = #fileID, function: String = #function, line: UInt = #line
  ) {}
}
