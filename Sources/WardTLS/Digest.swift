internal import COpenSSL
import Foundation

/// SHA-256, through OpenSSL.
public enum Digest {
    /// Lowercase hex SHA-256 of `data`.
    public static func sha256Hex(_ data: Data) -> String {
        var digest = [UInt8](repeating: 0, count: 32)
        var size: UInt32 = 0
        let done = data.withUnsafeBytes { EVP_Digest($0.baseAddress, $0.count, &digest, &size, EVP_sha256(), nil) }
        return done == 1 ? hex(digest.prefix(Int(size))) : ""
    }

    /// Lowercase hex SHA-256 of the concatenation of `parts`, each prefixed by its length so
    /// that moving bytes between parts changes the digest.
    public static func sha256Hex(lengthPrefixed parts: [Data]) -> String {
        guard let context = EVP_MD_CTX_new() else { return "" }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestInit_ex(context, EVP_sha256(), nil) == 1 else { return "" }
        for part in parts {
            var length = UInt64(part.count).bigEndian
            _ = withUnsafeBytes(of: &length) { EVP_DigestUpdate(context, $0.baseAddress, $0.count) }
            _ = part.withUnsafeBytes { EVP_DigestUpdate(context, $0.baseAddress, $0.count) }
        }
        var digest = [UInt8](repeating: 0, count: 32)
        var size: UInt32 = 0
        guard EVP_DigestFinal_ex(context, &digest, &size) == 1 else { return "" }
        return hex(digest.prefix(Int(size)))
    }
}
