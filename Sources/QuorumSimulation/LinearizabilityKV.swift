/// A request to a key-value store with string keys and values.
public enum KVInput: Hashable, Sendable, CustomStringConvertible {
  /// Reads `key`.
  case get(key: String)
  /// Sets `key` to `value`.
  case put(key: String, value: String)
  /// Removes `key`.
  case delete(key: String)
  /// Sets `key` to `new` (`nil` removes it) if its value is `expected` (`nil` means absent).
  case compareAndSwap(key: String, expected: String?, new: String?)

  /// The key the request touches.
  public var key: String {
    switch self {
    case .get(let key), .put(let key, _), .delete(let key), .compareAndSwap(let key, _, _): return key
    }
  }

  /// Whether the request never changes the store.
  public var isReadOnly: Bool {
    if case .get = self { return true }
    return false
  }

  public var description: String {
    switch self {
    case .get(let key): return "get(\(key))"
    case .put(let key, let value): return "put(\(key), \(quoted(value)))"
    case .delete(let key): return "delete(\(key))"
    case .compareAndSwap(let key, let expected, let new):
      return "cas(\(key), \(quoted(expected)) -> \(quoted(new)))"
    }
  }
}

/// A key-value store's reply.
public enum KVOutput: Hashable, Sendable, CustomStringConvertible {
  /// The reply to ``KVInput/get(key:)``: the value, or `nil` if the key is absent.
  case value(String?)
  /// The reply to ``KVInput/put(key:value:)`` and ``KVInput/delete(key:)``.
  case ok
  /// The reply to ``KVInput/compareAndSwap(key:expected:new:)``: whether the value matched and was replaced.
  case swapped(Bool)
  /// The reply to ``KVInput/put(key:value:)`` and ``KVInput/delete(key:)`` from a store that reports the value it
  /// replaced (`nil`: the key was absent); checked, where ``ok`` is not.
  case previous(String?)

  public var description: String {
    switch self {
    case .value(let value): return quoted(value)
    case .ok: return "ok"
    case .swapped(let swapped): return swapped ? "swapped" : "not swapped"
    case .previous(let value): return "ok, was \(quoted(value))"
    }
  }
}

/// `"text"`, or `absent` for `nil`.
private func quoted(_ value: String?) -> String {
  guard let value else { return "absent" }
  return "\"\(value)\""
}

/// The state of one key of the key-value model: its value, or `nil` when absent.
public struct KVRegister: Hashable, Sendable, CustomStringConvertible {
  /// The value, or `nil` when the key is absent.
  public var value: String?

  /// Creates a register holding `value`.
  public init(_ value: String?) { self.value = value }

  /// The value in quotes, or `absent`.
  public var description: String { quoted(value) }
}

/// The sequential specification of a key-value store for the ``LinearizabilityChecker``, checked key by key.
///
/// Every key starts absent. A `get` returns the current value; `put` and `delete` reply ``KVOutput/ok`` (or
/// ``KVOutput/previous(_:)``, the value they replaced, which is checked); a
/// compare-and-swap replies whether it swapped. An operation with unknown outcome takes its effect (a
/// compare-and-swap swaps exactly when the value matches) and is dropped altogether if it is a `get`.
public struct KVModel: LinearizabilityModel, Sendable {
  /// Creates the model.
  public init() {}

  /// Every key starts absent.
  public var initialState: KVRegister { KVRegister(nil) }

  /// Applies `input` to one key's register; `nil` if `output` is not the reply the specification gives.
  public func step(_ state: KVRegister, _ input: KVInput, _ output: KVOutput?) -> KVRegister? {
    switch input {
    case .get:
      guard let output else { return state }
      return output == .value(state.value) ? state : nil
    case .put(_, let value):
      return output == nil || output == .ok || output == .previous(state.value) ? KVRegister(value) : nil
    case .delete:
      return output == nil || output == .ok || output == .previous(state.value) ? KVRegister(nil) : nil
    case .compareAndSwap(_, let expected, let new):
      let matches = state.value == expected
      if let output, output != .swapped(matches) { return nil }
      return matches ? KVRegister(new) : state
    }
  }

  /// Each key is its own partition.
  public func partitionKey(for input: KVInput) -> String { input.key }

  /// Reads never change the store.
  public func isReadOnly(_ input: KVInput) -> Bool { input.isReadOnly }

  /// `"value"` or `absent`.
  public func describe(state: KVRegister) -> String { state.description }
}

/// A ``History`` of key-value operations.
public typealias KVHistory = History<KVInput, KVOutput>

/// A ``ConcurrentHistoryRecorder`` of key-value operations.
public typealias KVHistoryRecorder = ConcurrentHistoryRecorder<KVInput, KVOutput>

extension History where Input == KVInput, Output == KVOutput {
  /// Checks this key-value history against ``KVModel``, key by key, exploring at most `maxStatesExplored`
  /// search states for each key (`nil` for no limit).
  public func checkLinearizability(maxStatesExplored: Int? = nil) -> LinearizabilityResult<String> {
    LinearizabilityChecker(model: KVModel(), maxStatesExplored: maxStatesExplored).check(self)
  }
}
