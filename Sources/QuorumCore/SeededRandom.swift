/// The seeded pseudo-random generator behind every random choice in Quorum (xoshiro256**, seeded through
/// SplitMix64).
///
/// Election timeouts, back-off jitter, and every fault the simulator injects draw from one of these, so a
/// run is reproduced exactly by its seed. It is not cryptographically secure.
public struct SeededRandom: RandomNumberGenerator, Sendable {
  private var s0: UInt64
  private var s1: UInt64
  private var s2: UInt64
  private var s3: UInt64

  /// The seed this generator was created with.
  public let seed: UInt64

  /// Creates a generator whose whole output is determined by `seed`.
  public init(seed: UInt64) {
    self.seed = seed
    var sm = seed
    func splitMix(_ x: inout UInt64) -> UInt64 {
      x &+= 0x9E37_79B9_7F4A_7C15
      var z = x
      z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
      z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
      return z ^ (z >> 31)
    }
    s0 = splitMix(&sm)
    s1 = splitMix(&sm)
    s2 = splitMix(&sm)
    s3 = splitMix(&sm)
  }

  /// The next 64 random bits.
  public mutating func next() -> UInt64 {
    let result = ((s1 &* 5) << 7 | (s1 &* 5) >> 57) &* 9
    let t = s1 << 17
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = s3 << 45 | s3 >> 19
    return result
  }

  /// A new generator derived from this one's stream, for handing to a component (for example one per node)
  /// so that components stay independent yet reproducible.
  public mutating func fork() -> SeededRandom { SeededRandom(seed: next()) }

  /// `true` with probability `p` (clamped to 0...1).
  public mutating func chance(_ p: Double) -> Bool {
    if p <= 0 { return false }
    if p >= 1 { return true }
    return Double(next() >> 11) * 0x1.0p-53 < p
  }
}
