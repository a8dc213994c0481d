import WardIdentity
import WardPolicy
import WardTLS

/// Whether a peer may use a listener now (its chain against the current bundles, then the
/// rules), or whether a server may be called through an outbound entry (its chain, then the
/// entry's `server_id`). One step for the first handshake, a resumed session, and the re-check
/// after a reload.
///
/// It remembers what the peer was last verified under, so a reload that changed neither the
/// peer's trust domain's bundle nor the verification limits costs a rules lookup only.
struct Admission {
    enum Verdict {
        case admitted(Decision)
        /// `decision` is set when the rules refused (or audit let through: see `letsThrough`).
        case refused(ReasonCode, String?, Decision?)
    }

    /// The generation the chain was last checked under.
    private(set) var generation: UInt64
    /// The verification key (bundle and limits) of the peer's trust domain at that check.
    private var verifiedUnder: String?
    /// The peer chain's fingerprint, computed at the first re-check that needs it, then kept.
    private var chainFingerprint: String?

    init(generation: UInt64) {
        self.generation = generation
    }

    /// After the handshake. A resumed session sent no certificate this time: the one the
    /// session remembers is verified against today's bundles (filling `check`). A full
    /// handshake's chain was verified by the TLS callback, again here only if a reload landed
    /// while it ran.
    mutating func admitHandshake(
        _ stream: TLSStream, check: PeerCheck, loop: LoopState, endpoint: Endpoint, peerIP: IPAddress?
    ) -> Verdict {
        if stream.isResumed {
            generation = loop.generation
            // Verified when the session was made, under the same bundle and limits, and not
            // expired since: nothing a second verification could find. Otherwise verify again.
            let record = stream.sessionRecord
            let restored =
                record?.restore(
                    into: check, currentKey: record.flatMap { loop.snapshot.verificationKeys[$0.id.trustDomain] },
                    now: Int64(loop.now.tv_sec)) ?? false
            if !restored {
                guard loop.tls(for: endpoint).verifyPeer(of: stream, into: check) else {
                    return .refused(check.reason ?? .untrustedChain, check.detail, nil)
                }
            }
        }
        guard let peer = check.id else {
            return .refused(.tlsError, "handshake completed without a verified SVID", nil)
        }
        if generation != loop.generation {
            generation = loop.generation
            if let (reason, detail) = loop.tls(for: endpoint).reverifyPeer(of: stream) {
                check.reason = reason
                return .refused(reason, detail, nil)
            }
        }
        verifiedUnder = loop.snapshot.verificationKeys[peer.trustDomain]
        return decide(peer, check: check, loop: loop, endpoint: endpoint, peerIP: peerIP)
    }

    /// After a publication: nil when nothing changed for this connection (same generation).
    /// The chain is verified again only when its trust domain's verification key changed, and
    /// then once per distinct chain per publication (`LoopState.chainVerdicts`).
    mutating func recheck(
        _ stream: TLSStream, check: PeerCheck, loop: LoopState, endpoint: Endpoint, peerIP: IPAddress?
    ) -> Verdict? {
        guard generation != loop.generation, let peer = check.id else { return nil }
        generation = loop.generation
        let key = loop.snapshot.verificationKeys[peer.trustDomain]
        if key != verifiedUnder {
            // Servers and clients are held to different key usages: one verdict per role.
            let fingerprint =
                chainFingerprint ?? (endpoint.isOutbound ? "server:" : "client:") + (stream.peerChainFingerprint ?? "")
            chainFingerprint = fingerprint
            let verdict: (ReasonCode, String?)?
            if let known = loop.chainVerdicts[fingerprint] {
                verdict = known
            } else {
                verdict = loop.tls(for: endpoint).reverifyPeer(of: stream)
                loop.chainVerdicts[fingerprint] = .some(verdict)
            }
            if let (reason, detail) = verdict { return .refused(reason, detail, nil) }
            verifiedUnder = key
        }
        return decide(peer, check: check, loop: loop, endpoint: endpoint, peerIP: peerIP)
    }

    /// The rules for a listener; the current `server_id` for an outbound entry (the handshake
    /// checked the one in force then, a reload may have changed it since).
    private func decide(
        _ peer: SPIFFEID, check: PeerCheck, loop: LoopState, endpoint: Endpoint, peerIP: IPAddress?
    ) -> Verdict {
        let listenerIndex: Int
        switch endpoint {
        case .listener(let index):
            listenerIndex = index
        case .outbound(let index):
            let entry = loop.snapshot.outbound[index]
            guard entry.serverIDs.admits(peer) else {
                return .refused(
                    .unexpectedServerID, "server ID \(peer) is not in server_id (\(entry.serverIDs.expectation))", nil)
            }
            return .admitted(Decision(action: .allow, rule: entry.name))
        }
        let now = loop.now
        let context = DecisionContext(
            address: peerIP, minuteOfDay: Int(now.tv_sec % 86_400) / 60, svidLifetimeSeconds: check.lifetimeSeconds)
        let decision = loop.snapshot.ruleSet.decide(peer: peer, listenerIndex: listenerIndex, context: context)
        return decision.letsThrough ? .admitted(decision) : .refused(.ruleDenied, nil, decision)
    }
}
