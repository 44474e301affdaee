/// Why a configuration was refused: which setting, and what is wrong with it.
///
/// Every configuration in Quorum (`RaftConfiguration`, `PaxosConfiguration`, …) validates itself as a whole
/// and throws this error naming the offending setting as it is written in the configuration DSL.
public struct ConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The setting at fault, as written in the DSL (for example `HeartbeatInterval`).
  public var setting: String
  /// What is wrong.
  public var reason: String

  /// Creates an error.
  public init(setting: String, reason: String) {
    self.setting = setting
    self.reason = reason
  }

  public var description: String { "\(setting): \(reason)" }
}
