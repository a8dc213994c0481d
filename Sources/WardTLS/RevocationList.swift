internal import COpenSSL
import Foundation
import WardSystem

/// One certificate revocation list (X.509 CRL), owned: freed with this object. Immutable once
/// loaded, so one list serves every worker's verifier.
public final class RevocationList: @unchecked Sendable {
    // @unchecked: the X509_CRL is only read after loading (X509_CRL_get0_by_cert, digests).
    let crl: OpaquePointer

    private init(owning crl: OpaquePointer) { self.crl = crl }

    deinit { X509_CRL_free(crl) }

    /// Every CRL in a file: one or more PEM blocks (`X509 CRL`), or a single DER CRL.
    public static func load(path: String, sizeLimit: Int = RegularFile.defaultSizeLimit) throws -> [RevocationList] {
        let data: Data
        do {
            data = try RegularFile.read(path, limit: sizeLimit)
        } catch {
            throw RevocationListError(message: "cannot read: \(error.reason)")
        }
        return try parse(data)
    }

    public static func parse(_ data: Data) throws -> [RevocationList] {
        ERR_clear_error()
        var lists: [RevocationList] = []
        let isPEM = data.prefix(4096).range(of: Data("-----BEGIN".utf8)) != nil
        try data.withUnsafeBytes { raw in
            if isPEM {
                guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else {
                    throw RevocationListError(message: OpenSSLError.drain("BIO_new_mem_buf").description)
                }
                defer { BIO_free(bio) }
                while let crl = PEM_read_bio_X509_CRL(bio, nil, nil, nil) { lists.append(RevocationList(owning: crl)) }
            } else {
                var cursor = raw.baseAddress?.assumingMemoryBound(to: UInt8.self)
                if let crl = d2i_X509_CRL(nil, &cursor, raw.count) { lists.append(RevocationList(owning: crl)) }
            }
        }
        // A PEM loop ends on "no start line" at the end of input; anything else is damage.
        let leftovers = OpenSSLError.drainQueue().filter { $0 != "no start line" }
        guard leftovers.isEmpty, !lists.isEmpty else {
            throw RevocationListError(
                message: "not a CRL file (PEM X509 CRL blocks or one DER CRL)"
                    + (leftovers.isEmpty ? "" : ": " + leftovers.joined(separator: "; ")))
        }
        return lists
    }

    /// The CA of `authorities` that signed this list, if any: a list counts only when a CA the
    /// trust domain already trusts vouches for it.
    public func signer(among authorities: [Certificate]) -> Certificate? {
        authorities.first { authority in
            X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(authority.x509)) == 0
                && X509_get0_pubkey(authority.x509).map { X509_CRL_verify(crl, $0) == 1 } == true
        }
    }

    /// Whether `certificate` (by issuer name and serial) is listed.
    func lists(_ certificate: OpaquePointer) -> Bool {
        var entry: OpaquePointer?
        return X509_CRL_get0_by_cert(crl, &entry, certificate) == 1
    }

    /// The issuer's name, for messages.
    public var issuer: String {
        guard let name = X509_CRL_get_issuer(crl), let text = X509_NAME_oneline(name, nil, 0) else { return "?" }
        defer { CRYPTO_free(text, nil, 0) }
        return CText.string(text, or: "?")
    }

    /// SHA-256 of the DER: part of the verification key, so a new list re-checks open peers.
    public var sha256Hex: String {
        var bytes: UnsafeMutablePointer<UInt8>?
        let length = i2d_X509_CRL(crl, &bytes)
        guard length > 0, let bytes else { return "" }
        defer { CRYPTO_free(bytes, nil, 0) }
        return Digest.sha256Hex(Data(bytes: bytes, count: Int(length)))
    }
}

public struct RevocationListError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}
