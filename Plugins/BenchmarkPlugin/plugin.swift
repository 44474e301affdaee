import Foundation
import PackagePlugin

/// `swift package benchmark [suite …]`: builds `quorum-bench` in release mode and runs it,
/// printing every figure next to the baseline measured in the same run.
@main
struct BenchmarkPlugin: CommandPlugin {
  func performCommand(context: PluginContext, arguments: [String]) async throws {
    // The tcp suite spawns `quorum serve` processes: build the release executable next to quorum-bench.
    let serve = try packageManager.build(
      .product("quorum"), parameters: .init(configuration: .release, logging: .concise))
    guard serve.succeeded else {
      print(serve.logText)
      throw PluginFailure("building quorum in release mode failed")
    }
    try runReleaseProduct("quorum-bench", leading: [], arguments: arguments, packageManager: packageManager)
  }
}

/// Builds `product` in release mode and runs it, forwarding its exit status.
func runReleaseProduct(
  _ product: String, leading: [String], arguments: [String], packageManager: PackageManager
) throws {
  let build = try packageManager.build(
    .product(product), parameters: .init(configuration: .release, logging: .concise))
  guard build.succeeded else {
    print(build.logText)
    throw PluginFailure("building \(product) in release mode failed")
  }
  guard
    let artifact = build.builtArtifacts.first(where: { $0.kind == .executable && $0.url.lastPathComponent == product })
  else {
    throw PluginFailure("the build produced no \(product) executable")
  }
  let process = Process()
  process.executableURL = artifact.url
  process.arguments = leading + arguments
  try process.run()
  process.waitUntilExit()
  if process.terminationStatus != 0 {
    throw PluginFailure("\(product) exited with status \(process.terminationStatus)")
  }
}

struct PluginFailure: Error, CustomStringConvertible {
  let description: String
  init(_ description: String) { self.description = description }
}
