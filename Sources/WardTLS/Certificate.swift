internal import COpenSSL
internal import CWardShims
import Foundation
import WardIdentity
import WardSystem

/// An X.509 certificate. Owns one reference to the underlying `X509`.
public final class Certificate: @unchecked Sendable {
    // Immutable after init; OpenSSL's X509 is safe to read from several threads.
    let x509: OpaquePointer

    /// Takes ownership of one reference to `x509`.
    init(owning x509: OpaquePointer) { self.x509 = x509 }

    /// Adds a reference to `x509`, which the caller keeps owning.
    convenience init(borrowing x509: OpaquePointer) {
        X509_up_ref(x509)
        self.init(owning: x509)
    }

    deinit { X509_free(x509) }

    /// Every certificate in a PEM file, in file order. Reads the file: not for an event loop.
    public static func loadPEM(path: String, sizeLimit: Int = RegularFile.defaultSizeLimit) throws -> [Certificate] {
        let data: Data
        do {
            data = try RegularFile.read(path, limit: sizeLimit)
        } catch {
            throw CertificateError.unreadable(error.reason)
        }
        return try parsePEM(data)
    }

    public static func parsePEM(_ data: Data) throws -> [Certificate] {
        ERR_clear_error()
        var certificates: [Certificate] = []
        try data.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else {
                throw OpenSSLError.drain("BIO_new_mem_buf")
            }
            defer { BIO_free(bio) }
            while let x509 = PEM_read_bio_X509(bio, nil, nil, nil) {
                certificates.append(Certificate(owning: x509))
            }
        }
        // The loop ends on "no start line" at the end of input; anything else is damage.
        let leftovers = OpenSSLError.drainQueue().filter { $0 != "no start line" }
        if !leftovers.isEmpty {
            throw CertificateError.malformed(leftovers.joined(separator: "; "))
        }
        if certificates.isEmpty, data.contains(where: { !$0.isWhitespaceASCII }) {
            throw CertificateError.malformed("no PEM certificate found")
        }
        return certificates
    }

    /// The facts the SVID rules look at.
    public var svidLeaf: SVIDLeaf {
        let flags = X509_get_extension_flags(x509)
        var keyUsage: SVIDLeaf.KeyUsage?
        if flags & UInt32(EXFLAG_KUSAGE) != 0 {
            let bits = X509_get_key_usage(x509)
            var usage: SVIDLeaf.KeyUsage = []
            if bits & UInt32(KU_DIGITAL_SIGNATURE) != 0 { usage.insert(.digitalSignature) }
            if bits & UInt32(KU_KEY_CERT_SIGN) != 0 { usage.insert(.keyCertSign) }
            if bits & UInt32(KU_CRL_SIGN) != 0 { usage.insert(.cRLSign) }
            keyUsage = usage
        }
        var extendedKeyUsage: SVIDLeaf.ExtendedKeyUsage?
        if flags & UInt32(EXFLAG_XKUSAGE) != 0 {
            let bits = X509_get_extended_key_usage(x509)
            var usage: SVIDLeaf.ExtendedKeyUsage = []
            if bits & UInt32(XKU_SSL_CLIENT) != 0 { usage.insert(.clientAuth) }
            if bits & UInt32(XKU_SSL_SERVER) != 0 { usage.insert(.serverAuth) }
            extendedKeyUsage = usage
        }
        return SVIDLeaf(
            uriSANs: uriSANs, isCA: flags & UInt32(EXFLAG_CA) != 0, keyUsage: keyUsage,
            extendedKeyUsage: extendedKeyUsage, lifetimeSeconds: notAfter - notBefore)
    }

    /// URI subject alternative names, in certificate order.
    public var uriSANs: [String] {
        guard let raw = X509_get_ext_d2i(x509, NID_subject_alt_name, nil, nil) else { return [] }
        let names = OpaquePointer(raw)
        defer { GENERAL_NAMES_free(names) }
        var uris: [String] = []
        for index in 0..<OPENSSL_sk_num(names) {
            guard let name = OPENSSL_sk_value(names, index)?.assumingMemoryBound(to: GENERAL_NAME.self),
                name.pointee.type == GEN_URI, let ia5 = name.pointee.d.uniformResourceIdentifier,
                let bytes = ASN1_STRING_get0_data(ia5)
            else { continue }
            let buffer = UnsafeBufferPointer(start: bytes, count: Int(ASN1_STRING_length(ia5)))
            uris.append(String(decoding: buffer, as: UTF8.self))
        }
        return uris
    }

    /// Seconds since 1970 of notBefore and notAfter.
    public var notBefore: Int64 { Self.epochSeconds(X509_get0_notBefore(x509)) }
    public var notAfter: Int64 { Self.epochSeconds(X509_get0_notAfter(x509)) }

    /// Lowercase hex SHA-256 of the DER encoding, as `openssl x509 -fingerprint -sha256` shows it without colons.
    public var sha256Hex: String {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        guard X509_digest(x509, EVP_sha256(), &digest, &length) == 1 else { return "" }
        return hex(digest[0..<Int(length)])
    }

    /// The serial number in uppercase hex, as `openssl x509 -serial` prints it.
    public var serialHex: String {
        guard let serial = X509_get_serialNumber(x509), let bn = ASN1_INTEGER_to_BN(serial, nil) else { return "" }
        defer { BN_free(bn) }
        guard let text = BN_bn2hex(bn) else { return "" }
        defer { WardShim_OPENSSL_free(text) }
        return CText.string(text, or: "")
    }

    private static func epochSeconds(_ time: UnsafePointer<ASN1_TIME>?) -> Int64 {
        guard let time else { return 0 }
        var parts = tm()
        guard ASN1_TIME_to_tm(time, &parts) == 1 else { return 0 }
        return Int64(timegm(&parts))
    }
}

public enum CertificateError: Error, CustomStringConvertible {
    case unreadable(String)
    case malformed(String)

    public var description: String {
        switch self {
        case .unreadable(let reason): return "cannot read: \(reason)"
        case .malformed(let reason): return "not a valid PEM certificate file: \(reason)"
        }
    }
}

func hex<Bytes: Sequence<UInt8>>(_ bytes: Bytes) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(64)
    for byte in bytes {
        out.append(digits[Int(byte >> 4)])
        out.append(digits[Int(byte & 0x0f)])
    }
    return String(decoding: out, as: UTF8.self)
}

extension UInt8 {
    var isWhitespaceASCII: Bool { self == 0x20 || self == 0x0a || self == 0x0d || self == 0x09 }
}
