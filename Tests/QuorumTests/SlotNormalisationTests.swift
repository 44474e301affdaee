import Quorum
import Testing

/// Canonically equivalent spellings of a key are one key to Swift and to the key-value store, so they must have
/// one slot, and so one group.
@Suite("Keys are placed by their canonical form", .timeLimit(.minutes(2)))
struct SlotNormalisationTests {
  /// Pairs of spellings that Swift's `==` holds equal: precomposed (NFC) and decomposed (NFD).
  static let spellings: [(nfc: String, nfd: String)] = [
    ("caf\u{E9}", "cafe\u{301}"),
    ("\u{C5}ngstr\u{F6}m", "A\u{30A}ngstro\u{308}m"),
    ("\u{AC00}\u{B098}", "\u{1100}\u{1161}\u{1102}\u{1161}"),
    ("\u{1E69}", "s\u{323}\u{307}"),
  ]

  @Test("two spellings of one key have one slot, and keys in NFC keep the slot of their bytes")
  func equivalentSpellingsShareASlot() {
    for (nfc, nfd) in Self.spellings {
      #expect(nfc == nfd)
      #expect(Array(nfc.utf8) != Array(nfd.utf8))
      #expect(ClusterMap.slot(of: nfc) == ClusterMap.slot(of: nfd), "\(nfc)")
      // Compatibility with the slots of earlier builds, for every key already in NFC (ASCII or not).
      #expect(ClusterMap.slot(of: nfc) == UInt16(CRC32C.checksum(Array(nfc.utf8)) % UInt32(ClusterMap.slotCount)))
    }
    for key in ["k", "key-17", "", "user:42/profile"] {
      #expect(ClusterMap.slot(of: key) == UInt16(CRC32C.checksum(Array(key.utf8)) % UInt32(ClusterMap.slotCount)))
    }
  }

  @Test("a value written under one spelling is read under the other, though their bytes hash to two groups")
  func equivalentSpellingsReachOneGroup() async throws {
    try await HostBadInputTests.cluster().withLocalMembers { members in
      let placement = Placement(members.map)
      // A pair whose bytes, hashed as spelled, would be placed on different groups.
      func bytesOwner(_ key: String) -> GroupID? {
        let slot = Int(CRC32C.checksum(Array(key.utf8)) % UInt32(ClusterMap.slotCount))
        return members.map.groups(carrying: "kv").first { group in
          members.map.slots(of: group.id, service: "kv").contains { $0.lower <= slot && slot <= $0.upper }
        }?.id
      }
      let pair = try #require(
        (0..<1_000).lazy.map { ("caf\u{E9}-\($0)", "cafe\u{301}-\($0)") }.first { bytesOwner($0.0) != bytesOwner($0.1) }
      )
      #expect(placement.owner(of: pair.0, service: "kv") == placement.owner(of: pair.1, service: "kv"))
      for group in members.map.groups { _ = try await members.leader(of: group.id, timeout: .seconds(60)) }
      var options = HostClientOptions()
      options.deadline = .seconds(60)
      let kv = members.kvClient(options: options)
      try await kv.put(pair.0, "one key")
      #expect(try await kv.getString(pair.1) == "one key")
    }
  }
}
