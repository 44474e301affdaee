enum MailboxBenchmarks {
  static func run(_ report: BenchReport) async throws {}
}
