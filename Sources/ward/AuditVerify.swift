import ArgumentParser
import Foundation
import WardIdentity
import WardObservability
import WardSystem
import WardTLS

extension WardCommand {
    struct Audit: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Tamper evidence for hash-chained connection logs (log_chain: true).", subcommands: [Verify.self])

        struct Verify: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Check chained logs and their signed checkpoints; print the first broken line and exit 1.",
                discussion: """
                    Give rotated files oldest first: each file must continue the one before it. See docs/audit.md \
                    for what a verified log proves and what it does not.
                    """)

            @Argument(help: "Connection log files, oldest first.")
            var files: [String]

            @Option(help: "Trust bundle (PEM) of the signer's trust domain: checkpoint certificates must chain to it.")
            var bundle: String?

            @Flag(
                help: """
                    Refuse a file that does not end with a close checkpoint (every rotated file does), \
                    or that holds lines left unsealed at a restart.
                    """)
            var requireClose = false

            @Option(help: "The SPIFFE ID every checkpoint must be signed by (this Ward's own).")
            var signer: String?

            func run() throws {
                let authorities: [Certificate]?
                do {
                    authorities = try bundle.map { try Certificate.loadPEM(path: $0) }
                } catch {
                    printError("ward audit verify: \(bundle ?? ""): \(error)")
                    throw ExitCode(1)
                }
                var previous: LogChain.Continuation?
                for (index, file) in files.enumerated() {
                    let data: Data
                    do {
                        data = try RegularFile.read(file, limit: 1 << 30)
                    } catch {
                        printError("ward audit verify: \(file): cannot read: \(error)")
                        throw ExitCode(1)
                    }
                    // Every file but the newest was closed at rotation.
                    let verdict = LogChain.verify(
                        data, previous: previous, requireClose: requireClose || index < files.count - 1,
                        requireSealed: requireClose, sha256: { Digest.sha256Hex($0) },
                        checkSeal: { SealChecker.check($0, authorities: authorities, signer: signer) })
                    if let line = verdict.brokenLine {
                        print(TerminalText.escape("\(file):\(line): \(verdict.message)"))
                        throw ExitCode(1)
                    }
                    let anchored = authorities == nil ? "; signer not checked against a trust bundle (--bundle)" : ""
                    print(
                        TerminalText.escape(
                            "\(file): \(verdict.message)\(anchored)"
                                + (verdict.head.map { "; head sha256 \($0)" } ?? "")))
                    previous = verdict.head.map { LogChain.Continuation(head: $0, seq: verdict.lastSeq ?? -1) }
                }
            }
        }
    }
}

/// Checks one checkpoint's signature: made by the key of the certificate it carries, which
/// names the signer, and (with a bundle) chains to that trust domain's bundle as of the
/// checkpoint's time.
enum SealChecker {
    static func check(_ seal: LogChain.Seal, authorities: [Certificate]?, signer expected: String? = nil)
        -> LogChain.SealCheck
    {
        if let expected, seal.signer != expected { return .invalid("signed by \(seal.signer), not \(expected)") }
        guard let chain = try? seal.certificates.map(Certificate.init(der:)), let leaf = chain.first else {
            return .invalid("unreadable certificate")
        }
        guard leaf.verifies(seal.signature, over: seal.input) else { return .invalid("bad signature") }
        guard leaf.svidLeaf.uriSANs == [seal.signer], let signer = try? SPIFFEID(parsing: seal.signer) else {
            return .invalid("certificate does not name the signer \(seal.signer)")
        }
        guard let authorities else { return .valid }
        guard let time = LogChain.epochMilliseconds(seal.timestamp) else { return .invalid("bad timestamp") }
        do {
            let verifier = try SVIDVerifier(
                bundles: [TrustBundle(trustDomain: signer.trustDomain, authorities: authorities)],
                policy: SVIDLeafPolicy(role: .server, maximumLifetimeSeconds: .max))
            if case .failure(let error) = verifier.verifyOwn(chain: chain, at: time / 1000) {
                return .invalid("signer certificate: \(error)")
            }
            return .valid
        } catch {
            return .invalid("\(error)")
        }
    }
}
