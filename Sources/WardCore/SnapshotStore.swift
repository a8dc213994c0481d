import Synchronization
import WardTLS

/// One published generation: the snapshot and a TLS context for each worker, all built off
/// the event loops before publication.
package final class Publication: @unchecked Sendable {
    // @unchecked: immutable; each TLS context is used only by the worker of the same index.
    package let generation: UInt64
    package let snapshot: RuntimeSnapshot
    package let contexts: [WorkerTLS]
    /// SHA-256 of the config and rules files, as reported by `reload` lines.
    package let sourcesDigest: String
    /// SHA-256 over every file the snapshot was built from, to skip reloads that change nothing.
    package let filesDigest: String

    package init(
        generation: UInt64, snapshot: RuntimeSnapshot, contexts: [WorkerTLS], sourcesDigest: String,
        filesDigest: String
    ) {
        self.generation = generation
        self.snapshot = snapshot
        self.contexts = contexts
        self.sourcesDigest = sourcesDigest
        self.filesDigest = filesDigest
    }
}

/// Where a new generation is published: the publisher swaps the reference under a lock and then
/// bumps `generation`; workers compare `generation` (one relaxed atomic load per accept) and
/// take the lock only when it moved, so the hot path never contends.
package final class SnapshotStore: Sendable {
    private let current: Mutex<Publication>
    private let published: Atomic<UInt64>

    package init(_ first: Publication) {
        current = Mutex(first)
        published = Atomic(first.generation)
    }

    package var generation: UInt64 { published.load(ordering: .acquiring) }

    package func load() -> Publication { current.withLock { $0 } }

    package func publish(_ publication: Publication) {
        current.withLock { $0 = publication }
        published.store(publication.generation, ordering: .releasing)
    }
}
