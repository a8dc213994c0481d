import Foundation
import Glibc
import Synchronization
import WardIdentity
import WardObservability
import WardTLS

/// Signs the connection log's checkpoints with Ward's own SVID key, so that nobody without
/// that key can rewrite the log and its hash chain unnoticed. A reload that rotates the SVID
/// hands the new one over with `update`.
public final class LogSealer: Sendable {
    private let identity: Mutex<(material: IdentityMaterial, id: SPIFFEID)>

    public init(identity: IdentityMaterial, id: SPIFFEID) {
        self.identity = Mutex((identity, id))
    }

    public func update(identity: IdentityMaterial, id: SPIFFEID) {
        self.identity.withLock { $0 = (identity, id) }
    }

    /// The unchained checkpoint line, or nil if the key cannot sign. One signature: log writer
    /// thread only.
    func checkpoint(_ fields: LogChain.SealFields, timestamp: timeval) -> String? {
        let (material, id) = identity.withLock { $0 }
        var line = LogLine(event: "checkpoint", connection: nil, timestamp: timestamp)
        guard let signature = try? material.key.sign(fields.signedBytes) else { return nil }
        line.add("kind", fields.kind)
        line.add("seq", fields.seq)
        line.add("every", fields.every)
        line.add("interval_ms", fields.intervalMilliseconds)
        if fields.kind == "start" { line.add("unsealed_before", fields.unsealedBefore) }
        line.add("signer", id.description)
        line.addStrings("certs", material.chain.map { $0.der.base64EncodedString() })
        line.add("sig", signature.base64EncodedString())
        return line.finish()
    }
}
