/// What the SVID checks need to know about a leaf certificate, extracted once by the TLS layer
/// so that the policy below stays pure and unit-testable without OpenSSL.
public struct SVIDLeaf: Sendable {
    public struct KeyUsage: OptionSet, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let digitalSignature = KeyUsage(rawValue: 1 << 0)
        public static let keyCertSign = KeyUsage(rawValue: 1 << 1)
        public static let cRLSign = KeyUsage(rawValue: 1 << 2)
    }

    public struct ExtendedKeyUsage: OptionSet, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let clientAuth = ExtendedKeyUsage(rawValue: 1 << 0)
        public static let serverAuth = ExtendedKeyUsage(rawValue: 1 << 1)
    }

    /// Every URI subject alternative name, in certificate order.
    public var uriSANs: [String]
    public var isCA: Bool
    /// nil when the certificate has no key usage extension.
    public var keyUsage: KeyUsage?
    /// nil when the certificate has no extended key usage extension.
    public var extendedKeyUsage: ExtendedKeyUsage?
    /// Seconds between notBefore and notAfter.
    public var lifetimeSeconds: Int64

    public init(
        uriSANs: [String], isCA: Bool, keyUsage: KeyUsage?, extendedKeyUsage: ExtendedKeyUsage?,
        lifetimeSeconds: Int64
    ) {
        self.uriSANs = uriSANs
        self.isCA = isCA
        self.keyUsage = keyUsage
        self.extendedKeyUsage = extendedKeyUsage
        self.lifetimeSeconds = lifetimeSeconds
    }
}

/// The role a certificate is presented in, which decides the extended key usage it needs.
public enum SVIDRole: Sendable {
    case client
    case server

    var requiredEKU: SVIDLeaf.ExtendedKeyUsage { self == .client ? .clientAuth : .serverAuth }
}

/// SPIFFE X509-SVID leaf rules (SPIFFE.md section 2.1, 2.2 and 2.5), checked in a fixed order
/// so that a certificate with several faults always reports the same reason.
public struct SVIDLeafPolicy: Sendable {
    public var role: SVIDRole
    public var maximumLifetimeSeconds: Int64

    public init(role: SVIDRole, maximumLifetimeSeconds: Int64) {
        self.role = role
        self.maximumLifetimeSeconds = maximumLifetimeSeconds
    }

    /// Reads the SPIFFE ID out of the leaf. The ID is returned even when a later rule fails,
    /// so that a refusal can still name the workload in the log.
    public func identity(of leaf: SVIDLeaf) -> Result<SPIFFEID, ReasonCode> {
        guard let uri = leaf.uriSANs.first else { return .failure(.noURISAN) }
        guard leaf.uriSANs.count == 1 else { return .failure(.multipleURISANs) }
        guard let id = try? SPIFFEID(parsing: uri), id.hasPath else {
            return .failure(.notSPIFFEID)
        }
        return .success(id)
    }

    /// The rules about the certificate's shape, after its identity was read.
    public func checkShape(of leaf: SVIDLeaf) -> ReasonCode? {
        if leaf.isCA { return .leafIsCA }
        guard let usage = leaf.keyUsage, usage.contains(.digitalSignature),
            usage.isDisjoint(with: [.keyCertSign, .cRLSign])
        else { return .badKeyUsage }
        if let eku = leaf.extendedKeyUsage, !eku.contains(role.requiredEKU) { return .badEKU }
        if leaf.lifetimeSeconds > maximumLifetimeSeconds { return .svidLifetimeTooLong }
        return nil
    }
}
