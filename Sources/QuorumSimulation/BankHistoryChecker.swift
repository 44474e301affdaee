/// One committed read of a bank's accounts: the balances a transaction saw.
public struct BankObservation: Hashable, Sendable {
  /// The transaction that read them; it must have committed.
  public var transaction: TransactionID
  /// The balance of each account it read.
  public var balances: [String: Int]

  /// Creates an observation.
  public init(transaction: TransactionID, balances: [String: Int]) {
    self.transaction = transaction
    self.balances = balances
  }
}

/// What is wrong with one ``BankObservation``.
public struct BankViolation: Hashable, Sendable, CustomStringConvertible {
  /// The kinds of problem.
  public enum Kind: Hashable, Sendable {
    /// The balances add up to `total`, not the expected total: money was created or destroyed.
    case wrongTotal(Int)
    /// The read left out these accounts (so its total is not checked).
    case missingAccounts([String])
    /// The read returned accounts the bank does not have.
    case unexpectedAccounts([String])
    /// An account's balance is below zero where the bank forbids it.
    case negativeBalance(account: String, balance: Int)
  }

  /// The transaction whose read is wrong.
  public var transaction: TransactionID
  /// What is wrong.
  public var kind: Kind

  /// Creates a violation report.
  public init(transaction: TransactionID, kind: Kind) {
    self.transaction = transaction
    self.kind = kind
  }

  /// For example `T4 read a total of 90`.
  public var description: String {
    switch kind {
    case .wrongTotal(let total): return "\(transaction) read a total of \(total)"
    case .missingAccounts(let accounts): return "\(transaction) did not read \(accounts)"
    case .unexpectedAccounts(let accounts): return "\(transaction) read unknown accounts \(accounts)"
    case .negativeBalance(let account, let balance): return "\(transaction) read \(account) = \(balance)"
    }
  }
}

/// The outcome of a ``BankHistoryChecker`` run.
public struct BankCheckResult: Hashable, Sendable, CustomStringConvertible {
  /// How many observations were checked.
  public var observationsChecked: Int
  /// Every problem found, in the order of the observations.
  public var violations: [BankViolation]

  /// Creates a result.
  public init(observationsChecked: Int, violations: [BankViolation]) {
    self.observationsChecked = observationsChecked
    self.violations = violations
  }

  /// Whether every observation was right.
  public var isValid: Bool { violations.isEmpty }

  public var description: String {
    let head = "\(observationsChecked) bank reads, \(violations.count) violations"
    return ([head] + violations.map { "  \($0)" }).joined(separator: "\n")
  }
}

/// Checks the invariant of a bank workload: transfers move money between accounts, so every committed read of
/// all the accounts adds up to the same total.
///
/// A bank workload runs transactions that move an amount from one account to another (read both balances, write
/// both back) and transactions that read every account. Under snapshot isolation or anything stronger each
/// such read sees a consistent snapshot, so its sum is the initial total; a read that sees half of a transfer
/// (read skew, a fractured or aborted read) or a lost update shows up as a wrong total. Feed it the reads of
/// committed transactions only. It checks sums, not the order of transfers: for dependency cycles record the
/// workload as a ``TransactionHistory`` and use the ``TransactionChecker``.
public struct BankHistoryChecker: Sendable {
  /// What every complete read must add up to.
  public var expectedTotal: Int
  /// The bank's accounts; when set, every read must return exactly these (a read missing some is reported
  /// instead of its total). When `nil`, each read's total is checked over whatever accounts it returned.
  public var accounts: Set<String>?
  /// Whether balances may go below zero.
  public var allowsNegativeBalances: Bool

  /// Creates a checker for a bank whose balances add up to `expectedTotal`.
  public init(expectedTotal: Int, accounts: Set<String>? = nil, allowsNegativeBalances: Bool = true) {
    self.expectedTotal = expectedTotal
    self.accounts = accounts
    self.allowsNegativeBalances = allowsNegativeBalances
  }

  /// Checks each observation.
  public func check(_ observations: [BankObservation]) -> BankCheckResult {
    var violations: [BankViolation] = []
    for observation in observations {
      let t = observation.transaction
      var complete = true
      if let accounts {
        let missing = accounts.subtracting(observation.balances.keys).sorted()
        let unexpected = Set(observation.balances.keys).subtracting(accounts).sorted()
        if !missing.isEmpty { violations.append(BankViolation(transaction: t, kind: .missingAccounts(missing))) }
        if !unexpected.isEmpty {
          violations.append(BankViolation(transaction: t, kind: .unexpectedAccounts(unexpected)))
        }
        complete = missing.isEmpty && unexpected.isEmpty
      }
      if !allowsNegativeBalances {
        for (account, balance) in observation.balances.sorted(by: { $0.key < $1.key }) where balance < 0 {
          violations.append(BankViolation(transaction: t, kind: .negativeBalance(account: account, balance: balance)))
        }
      }
      // Wrapping, so absurd balances give a wrong total instead of a trap.
      let total = observation.balances.values.reduce(0, &+)
      if complete && total != expectedTotal {
        violations.append(BankViolation(transaction: t, kind: .wrongTotal(total)))
      }
    }
    return BankCheckResult(observationsChecked: observations.count, violations: violations)
  }

  /// Checks observations given as (transaction, balances) pairs.
  public func check(_ observations: [(transaction: TransactionID, balances: [String: Int])]) -> BankCheckResult {
    check(observations.map { BankObservation(transaction: $0.transaction, balances: $0.balances) })
  }
}
