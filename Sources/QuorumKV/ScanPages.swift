import QuorumCore

extension KVQuery {
  /// Reads a prefix scan of one group page by page, following each page's continuation token, until the scan ends
  /// or `limit` entries are in hand: what the scan clients (``KVClient`` and the host's key-value client) share, so
  /// neither gives back a scan cut short by the store's bounds on one reply (``KVStore/maxScanEntries``,
  /// ``KVStore/maxScanBytes``).
  ///
  /// - Parameters:
  ///   - start: the key the scan starts after (`nil`: from the prefix's first key).
  ///   - limit: the most entries to gather (none when it is zero or less).
  ///   - isolation: the caller's actor, on which `page` runs.
  ///   - page: reads one ``scanPage(prefix:after:limit:maxBytes:)`` after the token given (`nil`: from the start),
  ///     at most the count given, and returns its entries and its continuation token.
  /// - Returns: the entries, in the order the pages gave them, at most `limit` of them.
  package static func followScanPages(
    after start: String? = nil, limit: Int, isolation: isolated (any Actor)? = #isolation,
    _ page: (_ after: String?, _ limit: Int) async throws -> (pairs: [KVPair], next: String?)
  ) async throws -> [KVPair] {
    var pairs: [KVPair] = []
    var after = start
    while pairs.count < limit {
      let (more, next) = try await page(after, limit - pairs.count)
      // A page holds at most what it was asked for; a member that gives more is not trusted past the limit.
      pairs += more.prefix(limit - pairs.count)
      // The token moves forward, or the scan could go round forever on a member that answers the same page.
      guard let next, after.map({ KeyOrder.precedes($0, next) }) ?? true, !more.isEmpty else { break }
      after = next
    }
    return pairs
  }
}
