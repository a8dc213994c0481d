import Atomics

/// Open connections per listener, shared by every worker: one relaxed atomic add at accept and
/// one at close. Enforces `max_connections` across the whole process.
package final class ListenerLoad: Sendable {
    private let counts: [ManagedAtomic<Int>]

    package init(listeners: Int) {
        counts = (0..<listeners).map { _ in ManagedAtomic(0) }
    }

    /// Counts a new connection unless the listener is full.
    func acquire(_ listener: Int, limit: Int) -> Bool {
        if counts[listener].wrappingIncrementThenLoad(ordering: .relaxed) <= limit { return true }
        counts[listener].wrappingDecrement(ordering: .relaxed)
        return false
    }

    func release(_ listener: Int) {
        counts[listener].wrappingDecrement(ordering: .relaxed)
    }

}
