import Foundation
import Glibc
import QuorumCore
import Testing

@testable import QuorumStorage

@Suite("FileStorage when descriptors run out")
struct DescriptorExhaustionTests {
  func storage(_ directory: String) -> FileStorage<TestEntry> {
    FileStorage(directory: directory, segmentBytes: 4096, preallocation: .none, logger: .disabled)
  }

  /// An entry large enough that every write of one opens a new segment.
  func big(_ index: UInt64) -> TestEntry {
    TestEntry(index, payload: [UInt8](repeating: UInt8(index % 251), count: 3000))
  }

  @Test(
    "EMFILE and ENFILE opening a segment are waited out, then typed and retryable; the storage stays usable",
    arguments: [EMFILE, ENFILE])
  func openFailuresAreRetryable(_ code: Int32) async throws {
    try await withTemporaryDirectory { directory in
      let store = storage(directory)
      _ = try await store.recover()
      try await store.write(StorageWrite(hardState: hardState("term 1"), entries: [big(1)]))
      // A few failed opens are waited out in place.
      store.core.openFaults.failNext(3, with: code)
      for index in UInt64(2)...5 { try await store.write(StorageWrite(entries: [big(index)])) }
      // More than the storage waits for: a typed error that says to retry, and nothing is poisoned.
      store.core.openFaults.failNext(1000, with: code)
      do {
        try await store.write(StorageWrite(hardState: hardState("term 2"), entries: [big(6)]))
        Issue.record("the write succeeded without a descriptor")
      } catch let error as StorageError {
        #expect(error.isRetryable, "\(error)")
        guard case .descriptorsExhausted(_, _, let errno) = error else {
          Issue.record("not typed as exhausted descriptors: \(error)")
          return
        }
        #expect(errno == code)
      }
      store.core.openFaults.failNext(0)
      try await store.write(StorageWrite(hardState: hardState("term 2"), entries: [big(6)]))
      try await store.close()

      let reopened = storage(directory)
      let state = try await reopened.recover()
      #expect(state.entries.map(\.index) == Array(1...6))
      #expect(state.entries == (1...6).map(big))
      #expect(state.hardState == hardState("term 2"))
      try await reopened.close()
    }
  }
}
