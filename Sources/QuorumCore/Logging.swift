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
    var line = Self.line(for: record)
    line.withUTF8 { buffer in _ = Glibc.write(2, buffer.baseAddress, buffer.count) }
  }

  /// The longest message written, in characters; the rest is left out (and counted).
  public static let maxMessageCharacters = 4096
  /// The longest metadata key or value written, in characters.
  public static let maxMetadataCharacters = 512

  /// The line written for `record`, newline included: one line, whatever the record holds. Control
  /// characters in the message, label or metadata (which may quote bytes a remote side chose) are escaped, and
  /// each part is bounded, so no record can forge another line, drive a terminal or fill the log.
  public static func line(for record: LogRecord) -> String {
    var line = "\(record.level) \(logEscaped(record.label, limit: maxMetadataCharacters)): "
    line += logEscaped(record.message, limit: maxMessageCharacters)
    for key in record.metadata.keys.sorted() {
      line += " \(logEscaped(key, limit: maxMetadataCharacters))="
      line += logEscaped(record.metadata[key] ?? "", limit: maxMetadataCharacters)
    }
    line += "\n"
    return line
  }
}

/// `text` made safe to log: printable ASCII is kept (a backslash doubled), everything else is written as
/// `\u{…}`, and at most `limit` characters are kept, so bytes chosen by a remote side cannot forge log lines,
/// hide behind control characters or fill the log. For names and short strings a stranger sent.
public func logSafe(_ text: some StringProtocol, limit: Int = 96) -> String {
  var result = ""
  var kept = 0
  var omitted = 0
  for scalar in text.unicodeScalars {
    if kept >= limit {
      omitted += 1
      continue
    }
    kept += 1
    switch scalar.value {
    case 0x5C: result += "\\\\"
    case 0x20...0x7E: result.unicodeScalars.append(scalar)
    default: result += "\\u{\(String(scalar.value, radix: 16))}"
    }
  }
  if omitted > 0 { result += "…(\(omitted) more)" }
  return result
}

/// `text` with every control character (C0, DEL, C1, line and paragraph separators, bidirectional
/// overrides) written as `\u{…}` and at most `limit` characters kept: readable text stays as it is, but a line
/// stays one line. What log sinks apply to whole records.
public func logEscaped(_ text: some StringProtocol, limit: Int) -> String {
  var result = ""
  var kept = 0
  var omitted = 0
  for scalar in text.unicodeScalars {
    if kept >= limit {
      omitted += 1
      continue
    }
    kept += 1
    switch scalar.value {
    case 0x00...0x1F, 0x7F...0x9F, 0x2028, 0x2029, 0x202A...0x202E, 0x2066...0x2069:
      result += "\\u{\(String(scalar.value, radix: 16))}"
    default:
      result.unicodeScalars.append(scalar)
    }
  }
  if omitted > 0 { result += "…(\(omitted) more)" }
  return result
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
