enum CheckerBenchmarks {
  static func run(_ report: BenchReport) async throws {}
}
