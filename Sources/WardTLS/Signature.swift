internal import COpenSSL
import Foundation

extension PrivateKey {
    /// Signs `data` (SHA-256 with ECDSA or RSA; Ed25519 and Ed448 sign the data itself).
    /// Costs one private-key operation: for log checkpoints, never per connection.
    public func sign(_ data: Data) throws -> Data {
        ERR_clear_error()
        guard let context = EVP_MD_CTX_new() else { throw OpenSSLError.drain("EVP_MD_CTX_new") }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestSignInit(context, nil, digest(for: pkey), nil, pkey) == 1 else {
            throw OpenSSLError.drain("EVP_DigestSignInit")
        }
        var length = 0
        let sized = data.withUnsafeBytes { EVP_DigestSign(context, nil, &length, $0.baseAddress, $0.count) }
        guard sized == 1 else { throw OpenSSLError.drain("EVP_DigestSign") }
        var signature = [UInt8](repeating: 0, count: length)
        let signed = data.withUnsafeBytes { EVP_DigestSign(context, &signature, &length, $0.baseAddress, $0.count) }
        guard signed == 1 else { throw OpenSSLError.drain("EVP_DigestSign") }
        return Data(signature.prefix(length))
    }
}

extension Certificate {
    /// Whether `signature` over `data` verifies with this certificate's public key.
    public func verifies(_ signature: Data, over data: Data) -> Bool {
        defer { ERR_clear_error() }
        guard let key = X509_get0_pubkey(x509), let context = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestVerifyInit(context, nil, digest(for: key), nil, key) == 1 else { return false }
        return signature.withUnsafeBytes { sig in
            data.withUnsafeBytes { body in
                EVP_DigestVerify(
                    context, sig.bindMemory(to: UInt8.self).baseAddress, sig.count,
                    body.bindMemory(to: UInt8.self).baseAddress, body.count) == 1
            }
        }
    }

    /// The DER encoding.
    public var der: Data {
        var buffer: UnsafeMutablePointer<UInt8>?
        let length = i2d_X509(x509, &buffer)
        guard length > 0, let buffer else { return Data() }
        defer { CRYPTO_free(buffer, #fileID, #line) }
        return Data(bytes: buffer, count: Int(length))
    }

    /// Parses one DER certificate.
    public convenience init(der: Data) throws {
        ERR_clear_error()
        let x509: OpaquePointer? = der.withUnsafeBytes { raw in
            var cursor = raw.bindMemory(to: UInt8.self).baseAddress.map { UnsafePointer($0) }
            return d2i_X509(nil, &cursor, raw.count)
        }
        guard let x509 else {
            throw CertificateError.malformed(OpenSSLError.drainQueue().last ?? "not a DER certificate")
        }
        self.init(owning: x509)
    }
}

/// Edwards keys sign the message itself; every other key type signs its SHA-256.
private func digest(for key: OpaquePointer) -> OpaquePointer? {
    let type = EVP_PKEY_get_base_id(key)
    return type == EVP_PKEY_ED25519 || type == EVP_PKEY_ED448 ? nil : EVP_sha256()
}
