extension Duration {
  /// The duration in whole nanoseconds (negative durations count as zero): what the pure cores, which take
  /// plain numbers for time, are given by the shells.
  @inlinable package var nanoseconds: UInt64 {
    let (seconds, attoseconds) = components
    guard seconds >= 0, attoseconds >= 0 else { return 0 }
    return UInt64(seconds) &* 1_000_000_000 &+ UInt64(attoseconds / 1_000_000_000)
  }
}
