import Testing
import WardIdentity

/// Each SVID leaf rule as a refused/accepted pair on otherwise valid facts.
@Suite struct SVIDLeafPolicyTests {
    let policy = SVIDLeafPolicy(role: .client, maximumLifetimeSeconds: 86_400)
    let id = "spiffe://example.org/ns/prod/sa/web"

    func leaf(
        uris: [String]? = nil, isCA: Bool = false, keyUsage: SVIDLeaf.KeyUsage? = [.digitalSignature],
        eku: SVIDLeaf.ExtendedKeyUsage? = [.clientAuth, .serverAuth], lifetime: Int64 = 3600
    ) -> SVIDLeaf {
        SVIDLeaf(
            uriSANs: uris ?? [id], isCA: isCA, keyUsage: keyUsage, extendedKeyUsage: eku, lifetimeSeconds: lifetime)
    }

    @Test func acceptsAValidLeaf() throws {
        #expect(try policy.identity(of: leaf()).get().description == id)
        #expect(policy.checkShape(of: leaf()) == nil)
    }

    @Test func uriSANs() {
        #expect(policy.identity(of: leaf(uris: [])) == .failure(.noURISAN))
        #expect(policy.identity(of: leaf(uris: [id, id + "2"])) == .failure(.multipleURISANs))
        #expect(policy.identity(of: leaf(uris: ["https://example.org/x"])) == .failure(.notSPIFFEID))
        #expect(policy.identity(of: leaf(uris: ["spiffe://example.org"])) == .failure(.notSPIFFEID))
        #expect(policy.identity(of: leaf(uris: ["spiffe://example.org/a/../b"])) == .failure(.notSPIFFEID))
    }

    @Test func caFlag() {
        #expect(policy.checkShape(of: leaf(isCA: true)) == .leafIsCA)
    }

    @Test func keyUsage() {
        #expect(policy.checkShape(of: leaf(keyUsage: nil)) == .badKeyUsage)
        #expect(policy.checkShape(of: leaf(keyUsage: [])) == .badKeyUsage)
        #expect(policy.checkShape(of: leaf(keyUsage: [.digitalSignature, .keyCertSign])) == .badKeyUsage)
        #expect(policy.checkShape(of: leaf(keyUsage: [.digitalSignature, .cRLSign])) == .badKeyUsage)
    }

    @Test func extendedKeyUsageFollowsTheRole() {
        #expect(policy.checkShape(of: leaf(eku: nil)) == nil)
        #expect(policy.checkShape(of: leaf(eku: [.serverAuth])) == .badEKU)
        #expect(policy.checkShape(of: leaf(eku: [])) == .badEKU)
        let server = SVIDLeafPolicy(role: .server, maximumLifetimeSeconds: 86_400)
        #expect(server.checkShape(of: leaf(eku: [.serverAuth])) == nil)
        #expect(server.checkShape(of: leaf(eku: [.clientAuth])) == .badEKU)
    }

    @Test func lifetimeCap() {
        #expect(policy.checkShape(of: leaf(lifetime: 86_400)) == nil)
        #expect(policy.checkShape(of: leaf(lifetime: 86_401)) == .svidLifetimeTooLong)
    }
}
