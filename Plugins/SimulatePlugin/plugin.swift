import Foundation
import PackagePlugin

/// `swift package simulate [--seeds N] [--seed S] …`: builds `quorum` in release mode and runs
/// `quorum simulate` with the given arguments, printing the first failing seed and its trace.
@main
struct SimulatePlugin: CommandPlugin {
  func performCommand(context: PluginContext, arguments: [String]) async throws {
    try runReleaseProduct("quorum", leading: ["simulate"], arguments: arguments, packageManager: packageManager)
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
