import Glibc

/// Work a thread puts off to the end of what it is doing now: a thread that serves many parties in turns (an
/// event loop running the turns of many groups' replicas) runs each pass inside ``run(_:)``, and a component
/// that would wake another thread for each party (a write-ahead log shared by the groups, whose writer syncs as
/// soon as it finds a write) defers the wake-up with ``deferUntilEnd(_:)``: the other thread then wakes once,
/// after every turn of the pass, and finds all their work together.
///
/// Deferred work runs on the same thread, in the order deferred, right after the pass; it must not block. On a
/// thread outside any pass, ``deferUntilEnd(_:)`` declines, and the caller does its work at once. A pass must not
/// wait for what its deferred work starts (a write to the shared log, say, whose writer it has not woken yet):
/// it would wait forever. It should not run long either: whatever waits for that work waits for the whole pass.
public enum ThreadBatch {
  /// The pass running on this thread, if any.
  private final class Pass {
    var deferred: [() -> Void] = []
  }

  /// The thread-specific slot holding the running pass (an unretained pointer: ``run(_:)`` keeps it alive).
  private static let slot: pthread_key_t = {
    var key = pthread_key_t()
    // A process without a free thread-specific key cannot run at all: there are at least 128 (POSIX).
    precondition(pthread_key_create(&key, nil) == 0, "pthread_key_create failed")
    return key
  }()

  /// Runs `body` as a pass of this thread: work deferred during it runs after it, before this returns (and
  /// work that work defers, too). A pass started inside another is part of it.
  public static func run(_ body: () -> Void) {
    if pthread_getspecific(slot) != nil {
      body()
      return
    }
    let pass = Pass()
    pthread_setspecific(slot, Unmanaged.passUnretained(pass).toOpaque())
    body()
    while !pass.deferred.isEmpty {
      let work = pass.deferred
      pass.deferred = []
      for item in work { item() }
    }
    pthread_setspecific(slot, nil)
    withExtendedLifetime(pass) {}
  }

  /// Defers `work` to the end of the pass running on this thread and returns `true`; `false` (and nothing done)
  /// if none runs.
  public static func deferUntilEnd(_ work: @escaping () -> Void) -> Bool {
    guard let pointer = pthread_getspecific(slot) else { return false }
    Unmanaged<Pass>.fromOpaque(pointer).takeUnretainedValue().deferred.append(work)
    return true
  }
}
