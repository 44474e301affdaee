import Foundation

/// A JSON value read from a text with the line it starts on, so that a file's errors can name their line.
///
/// Objects keep their fields in the text's order, and a name given twice in one object is an error (JSON
/// leaves that case open; decoders silently keep one of the values). The parser follows RFC 8259, except that
/// it accepts a comma before a closing bracket (as Foundation's decoder does), refuses nesting deeper than
/// ``maximumDepth`` and reports where the text is wrong as a line and column.
struct PositionedJSON {
  /// One field of an object: its name, the line of the name, and its value.
  struct Field {
    var name: String
    var line: Int
    var value: PositionedJSON
  }

  /// The value itself; a number is kept as written.
  enum Value {
    case object([Field])
    case array([PositionedJSON])
    case string(String)
    case number(String)
    case bool(Bool)
    case null
  }

  var value: Value
  /// The line the value starts on, from 1.
  var line: Int

  /// The deepest nesting of objects and arrays accepted.
  static let maximumDepth = 64

  /// The kind of value, for messages ("an object", "a number").
  var kind: String {
    switch value {
    case .object: "an object"
    case .array: "a list"
    case .string: "a string"
    case .number: "a number"
    case .bool: "true or false"
    case .null: "null"
    }
  }

  /// Parses `data` as one JSON value (UTF-8, a leading byte order mark allowed).
  static func parse(_ data: Data) throws(PositionedJSONError) -> PositionedJSON {
    var parser = PositionedJSONParser(bytes: Array(data))
    return try parser.document()
  }
}

/// Where and why a text is not JSON.
struct PositionedJSONError: Error, Equatable, CustomStringConvertible {
  /// The line, from 1.
  var line: Int
  /// The column in characters (Unicode scalars), from 1.
  var column: Int
  var reason: String

  var description: String { "line \(line), column \(column): \(reason)" }
}

/// A recursive-descent JSON parser over UTF-8 bytes that keeps track of lines.
private struct PositionedJSONParser {
  let bytes: [UInt8]
  var offset = 0
  var line = 1
  var depth = 0

  init(bytes: [UInt8]) {
    self.bytes = bytes
    if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { offset = 3 }
  }

  private var next: UInt8? { offset < bytes.count ? bytes[offset] : nil }

  mutating func document() throws(PositionedJSONError) -> PositionedJSON {
    skipSpace()
    let value = try self.value()
    skipSpace()
    guard offset == bytes.count else { throw failure("unexpected text after the end of the JSON value") }
    return value
  }

  /// The error `reason` at byte `position` (the current one by default).
  private func failure(_ reason: String, at position: Int? = nil) -> PositionedJSONError {
    let end = min(position ?? offset, bytes.count)
    let before = bytes[..<end]
    let lineStart = before.lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? 0
    // A column counts characters, so the bytes that continue a UTF-8 sequence (10xxxxxx) do not count.
    let column = bytes[lineStart..<end].count { $0 & 0xC0 != 0x80 } + 1
    return PositionedJSONError(line: before.count { $0 == UInt8(ascii: "\n") } + 1, column: column, reason: reason)
  }

  private mutating func skipSpace() {
    while let byte = next, byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D {
      if byte == 0x0A { line += 1 }
      offset += 1
    }
  }

  private mutating func value() throws(PositionedJSONError) -> PositionedJSON {
    guard let byte = next else { throw failure("unexpected end of the text, expected a value") }
    let line = self.line
    switch byte {
    case UInt8(ascii: "{"): return PositionedJSON(value: .object(try object()), line: line)
    case UInt8(ascii: "["): return PositionedJSON(value: .array(try array()), line: line)
    case UInt8(ascii: "\""): return PositionedJSON(value: .string(try string()), line: line)
    case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
      return PositionedJSON(value: .number(try number()), line: line)
    case UInt8(ascii: "t"): try literal("true")
    case UInt8(ascii: "f"): try literal("false")
    case UInt8(ascii: "n"):
      try literal("null")
      return PositionedJSON(value: .null, line: line)
    default: throw failure("expected a value (a string in double quotes, a number, {, [, true, false or null)")
    }
    return PositionedJSON(value: .bool(byte == UInt8(ascii: "t")), line: line)
  }

  private mutating func literal(_ word: String) throws(PositionedJSONError) {
    guard bytes[offset...].starts(with: word.utf8) else {
      throw failure("expected a value (a string in double quotes, a number, {, [, true, false or null)")
    }
    offset += word.utf8.count
  }

  private mutating func enter() throws(PositionedJSONError) {
    depth += 1
    guard depth <= PositionedJSON.maximumDepth else {
      throw failure("nested deeper than \(PositionedJSON.maximumDepth) objects and lists")
    }
    offset += 1
    skipSpace()
  }

  private mutating func object() throws(PositionedJSONError) -> [PositionedJSON.Field] {
    try enter()
    defer { depth -= 1 }
    var fields: [PositionedJSON.Field] = []
    var lines: [String: Int] = [:]
    if next == UInt8(ascii: "}") {
      offset += 1
      return fields
    }
    while true {
      guard next == UInt8(ascii: "\"") else { throw failure("expected a field name in double quotes") }
      let (start, line) = (offset, self.line)
      let name = try string()
      if let first = lines[name] {
        throw failure("\"\(name)\" is given twice in one object (first on line \(first))", at: start)
      }
      lines[name] = line
      skipSpace()
      guard next == UInt8(ascii: ":") else { throw failure("expected ':' after \"\(name)\"") }
      offset += 1
      skipSpace()
      fields.append(PositionedJSON.Field(name: name, line: line, value: try value()))
      if try ended(by: UInt8(ascii: "}"), else: "expected ',' or '}' after the value of \"\(name)\"") {
        return fields
      }
    }
  }

  /// After an element of an object or a list: skips a comma and returns false, or skips `closing` and returns
  /// true. Anything else is the error `reason`, reported where the comma belongs (right after the element, not
  /// at the next one's line).
  private mutating func ended(by closing: UInt8, else reason: String) throws(PositionedJSONError) -> Bool {
    let end = offset
    skipSpace()
    switch next {
    case UInt8(ascii: ","):
      offset += 1
      skipSpace()
      // A comma before the closing bracket is accepted, as the JSONDecoder that read cluster files before did.
      guard next == closing else { return false }
      offset += 1
      return true
    case closing:
      offset += 1
      return true
    default: throw failure(reason, at: end)
    }
  }

  private mutating func array() throws(PositionedJSONError) -> [PositionedJSON] {
    try enter()
    defer { depth -= 1 }
    var elements: [PositionedJSON] = []
    if next == UInt8(ascii: "]") {
      offset += 1
      return elements
    }
    while true {
      elements.append(try value())
      if try ended(by: UInt8(ascii: "]"), else: "expected ',' or ']' after a list element") { return elements }
    }
  }

  private mutating func string() throws(PositionedJSONError) -> String {
    let start = offset
    offset += 1
    var buffer: [UInt8] = []
    while true {
      guard let byte = next else { throw failure("the string has no closing double quote", at: start) }
      switch byte {
      case UInt8(ascii: "\""):
        offset += 1
        guard let text = String(validating: buffer, as: UTF8.self) else {
          throw failure("the string is not valid UTF-8", at: start)
        }
        return text
      case UInt8(ascii: "\\"):
        offset += 1
        try escape(into: &buffer)
      case 0..<0x20:
        throw failure("a control character (such as a line break) inside a string; write it as an escape")
      default:
        buffer.append(byte)
        offset += 1
      }
    }
  }

  /// Reads the escape after a backslash.
  private mutating func escape(into buffer: inout [UInt8]) throws(PositionedJSONError) {
    let simple: [UInt8: UInt8] = [
      UInt8(ascii: "\""): 0x22, UInt8(ascii: "\\"): 0x5C, UInt8(ascii: "/"): 0x2F, UInt8(ascii: "b"): 0x08,
      UInt8(ascii: "f"): 0x0C, UInt8(ascii: "n"): 0x0A, UInt8(ascii: "r"): 0x0D, UInt8(ascii: "t"): 0x09,
    ]
    guard let byte = next else { throw failure("the string has no closing double quote") }
    if let replacement = simple[byte] {
      buffer.append(replacement)
      offset += 1
      return
    }
    guard byte == UInt8(ascii: "u") else { throw failure("unknown escape in a string") }
    offset += 1
    var code = UInt32(try hex4())
    if (0xD800..<0xDC00).contains(code) {
      // A high surrogate must be followed by an escaped low one; together they name one scalar.
      guard bytes[offset...].starts(with: "\\u".utf8) else { throw failure("an unpaired surrogate escape") }
      offset += 2
      let low = UInt32(try hex4())
      guard (0xDC00..<0xE000).contains(low) else { throw failure("an unpaired surrogate escape") }
      code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
    }
    guard let scalar = Unicode.Scalar(code) else { throw failure("an unpaired surrogate escape") }
    buffer.append(contentsOf: String(Character(scalar)).utf8)
  }

  private mutating func hex4() throws(PositionedJSONError) -> UInt16 {
    guard offset + 4 <= bytes.count,
      let code = UInt16(String(decoding: bytes[offset..<(offset + 4)], as: UTF8.self), radix: 16),
      bytes[offset..<(offset + 4)].allSatisfy({ $0 != UInt8(ascii: "+") && $0 != UInt8(ascii: "-") })
    else { throw failure("expected four hexadecimal digits after \\u") }
    offset += 4
    return code
  }

  private mutating func number() throws(PositionedJSONError) -> String {
    let start = offset
    func isDigit(_ byte: UInt8?) -> Bool { byte.map { (0x30...0x39).contains($0) } ?? false }
    if next == UInt8(ascii: "-") { offset += 1 }
    guard isDigit(next) else { throw failure("expected a digit") }
    if next == UInt8(ascii: "0") {
      offset += 1
    } else {
      while isDigit(next) { offset += 1 }
    }
    if next == UInt8(ascii: ".") {
      offset += 1
      guard isDigit(next) else { throw failure("expected a digit after the decimal point") }
      while isDigit(next) { offset += 1 }
    }
    if next == UInt8(ascii: "e") || next == UInt8(ascii: "E") {
      offset += 1
      if next == UInt8(ascii: "+") || next == UInt8(ascii: "-") { offset += 1 }
      guard isDigit(next) else { throw failure("expected a digit in the exponent") }
      while isDigit(next) { offset += 1 }
    }
    return String(decoding: bytes[start..<offset], as: UTF8.self)
  }
}
