enum StorageBenchmarks {
  static func run(_ report: BenchReport) async throws {}
}
