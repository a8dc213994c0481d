import Atomics

/// A fixed block of 64-bit counters with one writer (a worker thread) and any number of
/// readers (the scrape). The writer adds with a relaxed load and store, which on x86-64 and
/// arm64 are plain moves: no lock, no read-modify-write, no contention. Readers see each
/// counter whole (never torn), possibly a moment old.
public final class CounterBlock: @unchecked Sendable {
    // @unchecked: the storage is only touched through atomic operations.
    private let storage: UnsafeMutablePointer<UnsafeAtomic<Int64>.Storage>
    public let count: Int

    public init(count: Int) {
        self.count = count
        storage = .allocate(capacity: max(count, 1))
        for index in 0..<count { (storage + index).initialize(to: .init(0)) }
    }

    deinit {
        storage.deinitialize(count: count)
        storage.deallocate()
    }

    /// Single writer only: the thread that owns this block.
    @inline(__always)
    public func add(_ index: Int, _ amount: Int64 = 1) {
        let counter = UnsafeAtomic<Int64>(at: storage + index)
        counter.store(counter.load(ordering: .relaxed) &+ amount, ordering: .relaxed)
    }

    /// Any thread.
    @inline(__always)
    public func read(_ index: Int) -> Int64 {
        UnsafeAtomic<Int64>(at: storage + index).load(ordering: .relaxed)
    }
}
