import QuorumCore
import Testing

@testable import QuorumTCP

/// Settings the transport accepts must never make its arithmetic wrap or trap.
@Suite("Liveness stall credit and frame-length limits")
struct LivenessAndLimitsTests {
  @Test("a stall over half the timeout but shorter than a ping interval credits nothing (it used to underflow)")
  func shortStallWithTightTimeout() {
    // Valid (timeout > ping interval), and half the timeout is below one interval.
    let liveness = LinkLiveness(pingInterval: .seconds(1), timeout: .milliseconds(1500))
    #expect(liveness.stallCreditNanos(gapNanos: 800_000_000) == 0)
    #expect(liveness.stallCreditNanos(gapNanos: 1_000_000_000) == 0)
    #expect(liveness.stallCreditNanos(gapNanos: 1_200_000_000) == 200_000_000)
  }

  @Test("ordinary delays are not credited; long stalls are, less one ping interval")
  func defaultSettings() {
    let liveness = LinkLiveness.default  // 100 ms pings, 2 s timeout
    #expect(liveness.stallCreditNanos(gapNanos: 50_000_000) == 0)
    #expect(liveness.stallCreditNanos(gapNanos: 1_000_000_000) == 0)
    #expect(liveness.stallCreditNanos(gapNanos: 3_000_000_000) == 2_900_000_000)
  }

  @Test("maxFrameBytes must leave room for a sealed frame's code in the 32-bit length")
  func frameLimitLeavesRoomForTheCode() throws {
    var options = TCPTransportOptions()
    try options.validate()
    options.maxFrameBytes = Int(UInt32.max)
    let error = #expect(throws: ConfigurationError.self) { try options.validate() }
    #expect(error?.setting == "maxFrameBytes")
    options.maxFrameBytes = Int(UInt32.max) - TCPFrame.tagBytes + 1
    #expect(throws: ConfigurationError.self) { try options.validate() }
    options.maxFrameBytes = Int(UInt32.max) - TCPFrame.tagBytes
    try options.validate()
    #expect(TCPTransportOptions.maxFrameBytesLimit == Int(UInt32.max) - TCPFrame.tagBytes)
    options.maxFrameBytes = 63
    #expect(throws: ConfigurationError.self) { try options.validate() }
  }

  @Test("a receive-budget wait bound, when set, must be positive")
  func receiveBudgetWaitMustBePositive() throws {
    var options = TCPTransportOptions()
    for wait in [Duration.zero, .seconds(-1)] {
      options.maxReceiveBudgetWait = wait
      let error = #expect(throws: ConfigurationError.self) { try options.validate() }
      #expect(error?.setting == "maxReceiveBudgetWait")
    }
    options.maxReceiveBudgetWait = .milliseconds(1)
    try options.validate()
  }

  @Test("the wait in line for the receive budget is twice the frame timeout unless set")
  func receiveBudgetWaitDefault() {
    var options = TCPTransportOptions()
    #expect(options.receiveBudgetWait == .seconds(60))
    options.frameTimeout = .seconds(3)
    #expect(options.receiveBudgetWait == .seconds(6))
    options.maxReceiveBudgetWait = .seconds(1)
    #expect(options.receiveBudgetWait == .seconds(1))
  }

  @Test("the endpoint's reply budget holds two largest replies at least")
  func replyBudgetHoldsLargestReplies() {
    var options = TCPTransportOptions()
    #expect(options.clientReplyLimit == 256 << 20)
    options.maxClientReplyBytes = 1
    #expect(options.clientReplyLimit == 2 * ((16 << 20) + TCPFrame.prefixBytes + TCPFrame.tagBytes))
    options.maxFrameBytes = TCPTransportOptions.maxFrameBytesLimit
    options.maxClientReplyBytes = 256 << 20
    #expect(options.clientReplyLimit > 2 * TCPTransportOptions.maxFrameBytesLimit)
  }
}
