extension KVPair {
  /// Creates a pair (for clients that rebuild scan results received over the network).
  public init(_ key: String, _ value: [UInt8], modifiedAt: UInt64) {
    self.init(key: key, value: value, modifiedAt: modifiedAt)
  }
}
