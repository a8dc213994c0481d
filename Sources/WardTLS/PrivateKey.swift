internal import COpenSSL
import Foundation
import WardSystem

/// A private key. Its bytes never leave OpenSSL and are never printed.
public final class PrivateKey: @unchecked Sendable {
    // Immutable after init; EVP_PKEY is safe to share read-only between threads.
    let pkey: OpaquePointer

    init(owning pkey: OpaquePointer) { self.pkey = pkey }
    deinit { EVP_PKEY_free(pkey) }

    /// Reads a PEM private key (PKCS#8 or traditional). Reads the file: not for an event loop.
    public static func loadPEM(path: String, sizeLimit: Int = RegularFile.defaultSizeLimit) throws -> PrivateKey {
        let data: Data
        do {
            data = try RegularFile.read(path, limit: sizeLimit)
        } catch {
            throw CertificateError.unreadable(error.reason)
        }
        ERR_clear_error()
        let key: OpaquePointer? = data.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_PrivateKey(bio, nil, nil, nil)
        }
        guard let key else {
            // OpenSSL's reason is safe to show; the key text itself is not.
            let reasons = OpenSSLError.drainQueue()
            throw CertificateError.malformed("no PEM private key found (\(reasons.last ?? "unknown"))")
        }
        return PrivateKey(owning: key)
    }

    /// True when `certificate` carries this key's public half.
    public func matches(_ certificate: Certificate) -> Bool {
        let matched = X509_check_private_key(certificate.x509, pkey) == 1
        ERR_clear_error()
        return matched
    }
}
