import Foundation

/// One measured figure, reported next to the baseline it is divided by.
struct BenchRow {
  var group: String
  var name: String
  var value: Double
  var unit: String
  var note: String = ""
}

/// Collects rows and prints them as an aligned table.
final class BenchReport {
  private(set) var rows: [BenchRow] = []

  func add(_ group: String, _ name: String, _ value: Double, _ unit: String, note: String = "") {
    let row = BenchRow(group: group, name: name, value: value, unit: unit, note: note)
    rows.append(row)
    print("  \(pad(group, 10)) \(pad(name, 52)) \(pad(format(value), 14)) \(pad(unit, 10)) \(note)")
  }

  func format(_ v: Double) -> String {
    if v == 0 { return "0" }
    if abs(v) >= 1000 { return String(format: "%.0f", v) }
    if abs(v) >= 10 { return String(format: "%.1f", v) }
    return String(format: "%.3f", v)
  }

  private func pad(_ s: String, _ n: Int) -> String {
    s.count >= n ? s : s + String(repeating: " ", count: n - s.count)
  }
}

/// Monotonic nanoseconds.
@inline(__always) func nowNanos() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

/// The `p`-th percentile (0...1) of `values`.
func percentile(_ values: [Double], _ p: Double) -> Double {
  guard !values.isEmpty else { return 0 }
  let sorted = values.sorted()
  let rank = min(sorted.count - 1, max(0, Int((p * Double(sorted.count - 1)).rounded())))
  return sorted[rank]
}

/// The median of several runs, for figures that are noisy on shared machines.
func median(_ values: [Double]) -> Double { percentile(values, 0.5) }
