import QuorumCore
import Testing

@Suite("Log lines stay single lines of bounded length whatever a record holds")
struct LogEscapingTests {
  @Test("the stderr sink escapes control characters in message, label and metadata, and bounds each part")
  func stderrLineIsSafe() {
    let hostile = "first\nerror quorum: FORGED \u{1b}[31mred\u{1b}[0m\r\u{85}\u{2028}\u{202E}end"
    let record = LogRecord(
      level: .warning, label: "tcp\n", message: hostile + String(repeating: "y", count: 10_000),
      metadata: ["remote": "10.0.0.1\nfake=1", "k\u{0}": String(repeating: "z", count: 5000)])
    let line = StderrLogSink.line(for: record)
    #expect(line.hasSuffix("\n"))
    let body = line.dropLast()
    #expect(!body.unicodeScalars.contains { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) }, "\(body)")
    #expect(!body.unicodeScalars.contains { [0x2028, 0x2029, 0x202E].contains($0.value) })
    #expect(body.contains("first\\u{a}error quorum: FORGED \\u{1b}[31mred"))
    #expect(body.contains("remote=10.0.0.1\\u{a}fake=1"))
    let omitted = hostile.unicodeScalars.count + 10_000 - StderrLogSink.maxMessageCharacters
    #expect(body.contains("…(\(omitted) more)"), "the message is cut at 4096 characters and says so")
    #expect(
      line.count
        < StderrLogSink.maxMessageCharacters + 4 * StderrLogSink.maxMetadataCharacters + 200, "\(line.count) characters"
    )
    // Readable text passes as it is.
    let plain = StderrLogSink.line(for: LogRecord(level: .info, label: "raft.n1", message: "term 4 ≠ 5 — ok"))
    #expect(plain == "info raft.n1: term 4 ≠ 5 — ok\n")
  }

  @Test("logSafe keeps printable ASCII only and bounds; logEscaped keeps readable Unicode")
  func helpers() {
    #expect(logSafe("a\\b\né", limit: 10) == "a\\\\b\\u{a}\\u{e9}")
    #expect(logSafe(String(repeating: "q", count: 100), limit: 3) == "qqq…(97 more)")
    #expect(logEscaped("é\t", limit: 10) == "é\\u{9}")
  }
}
