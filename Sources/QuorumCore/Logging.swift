import Glibc

/// How important a log record is.
public enum LogLevel: Int, Sendable, Comparable, CaseIterable, CustomStringConvertible {
  case trace, debug, info, notice, warning, error, critical

  public static func < (lhs: LogLevel, rhs: LogLevel) -> Bool { lhs.rawValue < rhs.rawValue }

  public var description: String {
    switch self {
    case .trace: return "trace"
    case .debug: return "debug"
    case .info: return "info"
    case .notice: return "notice"
    case .warning: return "warning"
    case .error: return "error"
    case .critical: return "critical"
    }
  }
}

/// One structured log record.
public struct LogRecord: Sendable {
  /// Its importance.
  public var level: LogLevel
  /// The component that wrote it, for example `raft.n1`.
  public var label: String
  /// What happened, in words.
  public var message: String
  /// Structured facts, for example `["term": "4", "peer": "n2"]`.
  public var metadata: [String: String]

  /// Creates a record.
  public init(level: LogLevel, label: String, message: String, metadata: [String: String] = [:]) {
    self.level = level
    self.label = label
    self.message = message
    self.metadata = metadata
  }
}

/// Where Quorum's log records go. Implement it to bridge to swift-log, OSLog or your own system; Quorum
/// itself depends on none of them.
public protocol LogSink: Sendable {
  /// Records below this level are not built at all.
  var minimumLevel: LogLevel { get }
  /// Receives one record.
  func write(_ record: LogRecord)
}

/// Writes records to standard error as single lines: `level label: message key=value …`.
public struct StderrLogSink: LogSink {
  /// Records below this level are dropped.
  public var minimumLevel: LogLevel

  /// Creates a sink that writes records at `minimumLevel` and above.
  public init(minimumLevel: LogLevel = .notice) { self.minimumLevel = minimumLevel }

  public func write(_ record: LogRecord) {
    var line = "\(record.level) \(record.label): \(record.message)"
    for key in record.metadata.keys.sorted() {
      line += " \(key)=\(record.metadata[key] ?? "")"
    }
    line += "\n"
    line.withUTF8 { buffer in _ = Glibc.write(2, buffer.baseAddress, buffer.count) }
  }
}

/// Discards every record.
public struct NullLogSink: LogSink {
  /// Creates the sink.
  public init() {}
  public var minimumLevel: LogLevel { .critical }
  public func write(_ record: LogRecord) {}
}

/// A labelled front end to a ``LogSink``. Messages are autoclosures, built only when the level is enabled.
public struct QuorumLogger: Sendable {
  /// Where records go.
  public var sink: any LogSink
  /// The component label.
  public var label: String
  /// Metadata added to every record.
  public var metadata: [String: String]

  /// Creates a logger.
  public init(label: String, sink: any LogSink = StderrLogSink(), metadata: [String: String] = [:]) {
    self.sink = sink
    self.label = label
    self.metadata = metadata
  }

  /// Whether records at `level` are written.
  @inlinable public func isEnabled(_ level: LogLevel) -> Bool { level >= sink.minimumLevel }

  /// Writes a record at `level` if enabled.
  public func log(
    _ level: LogLevel, _ message: @autoclosure () -> String, _ metadata: @autoclosure () -> [String: String] = [:]
  ) {
    guard isEnabled(level) else { return }
    var all = self.metadata
    for (key, value) in metadata() { all[key] = value }
    sink.write(LogRecord(level: level, label: label, message: message(), metadata: all))
  }

  /// Writes a debug record.
  public func debug(_ message: @autoclosure () -> String, _ metadata: @autoclosure () -> [String: String] = [:]) {
    log(.debug, message(), metadata())
  }

  /// Writes an info record.
  public func info(_ message: @autoclosure () -> String, _ metadata: @autoclosure () -> [String: String] = [:]) {
    log(.info, message(), metadata())
  }

  /// Writes a notice record.
  public func notice(_ message: @autoclosure () -> String, _ metadata: @autoclosure () -> [String: String] = [:]) {
    log(.notice, message(), metadata())
  }

  /// Writes a warning record.
  public func warning(_ message: @autoclosure () -> String, _ metadata: @autoclosure () -> [String: String] = [:]) {
    log(.warning, message(), metadata())
  }

  /// Writes an error record.
  public func error(_ message: @autoclosure () -> String, _ metadata: @autoclosure () -> [String: String] = [:]) {
    log(.error, message(), metadata())
  }

  /// A logger with a longer label, for a sub-component.
  public func child(_ suffix: String, metadata extra: [String: String] = [:]) -> QuorumLogger {
    var copy = self
    copy.label += "." + suffix
    for (key, value) in extra { copy.metadata[key] = value }
    return copy
  }

  /// A logger that discards everything.
  public static let disabled = QuorumLogger(label: "", sink: NullLogSink())
}
