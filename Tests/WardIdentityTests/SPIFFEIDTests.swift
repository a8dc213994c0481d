import Testing
import WardIdentity

@Suite struct SPIFFEIDTests {
    @Test(arguments: [
        "spiffe://example.org",
        "spiffe://example.org/ns/prod/sa/web",
        "spiffe://trust-domain_1.example/path",
        "spiffe://example.org/a/.b/..c/...",
        "spiffe://example.org/A-Z_a.z-0.9",
        "spiffe://1.2.3.4/x",
        "spiffe://" + String(repeating: "a", count: 255) + "/x",
        "spiffe://example.org/" + String(repeating: "p", count: 2048 - 21),
    ])
    func accepts(_ text: String) throws {
        let id = try SPIFFEID(parsing: text)
        #expect(id.description == text)
    }

    @Test(arguments: [
        ("", SPIFFEIDError.empty),
        ("http://example.org/x", .wrongScheme),
        ("SPIFFE://example.org/x", .wrongScheme),
        ("spiffe:/example.org/x", .wrongScheme),
        ("spiffe://", .emptyTrustDomain),
        ("spiffe:///x", .emptyTrustDomain),
        ("spiffe://Example.org/x", .invalidTrustDomainCharacter("E")),
        ("spiffe://example.org:8080/x", .invalidTrustDomainCharacter(":")),
        ("spiffe://user@example.org/x", .invalidTrustDomainCharacter("@")),
        ("spiffe://exa%6dple.org/x", .invalidTrustDomainCharacter("%")),
        ("spiffe://" + String(repeating: "a", count: 256) + "/x", .trustDomainTooLong),
        ("spiffe://example.org/", .trailingSlash),
        ("spiffe://example.org/a/", .trailingSlash),
        ("spiffe://example.org//a", .emptySegment),
        ("spiffe://example.org/a//b", .emptySegment),
        ("spiffe://example.org/.", .dotSegment),
        ("spiffe://example.org/a/..", .dotSegment),
        ("spiffe://example.org/a/./b", .dotSegment),
        ("spiffe://example.org/a?b=c", .invalidPathCharacter("?")),
        ("spiffe://example.org/a#frag", .invalidPathCharacter("#")),
        ("spiffe://example.org/a%20b", .invalidPathCharacter("%")),
        ("spiffe://example.org/a b", .invalidPathCharacter(" ")),
        // Non-ASCII is reported as the character written, not its first byte read as Latin-1.
        ("spiffe://example.org/caf\u{e9}", .invalidPathCharacter("\u{e9}")),
        ("spiffe://ex\u{e4}mple.org/a", .invalidTrustDomainCharacter("\u{e4}")),
        ("spiffe://example.org/\u{1b}[31m", .invalidPathCharacter("\u{1b}")),
        ("spiffe://example.org/" + String(repeating: "p", count: 2048 - 20), .tooLong),
    ])
    func rejects(_ text: String, _ expected: SPIFFEIDError) {
        #expect(throws: expected) { try SPIFFEID(parsing: text) }
    }

    @Test func exposesTrustDomainPathAndSegments() throws {
        let id = try SPIFFEID(parsing: "spiffe://example.org/ns/prod/sa/web")
        #expect(id.trustDomain.name == "example.org")
        #expect(id.path == "/ns/prod/sa/web")
        #expect(id.segments == ["ns", "prod", "sa", "web"])
        #expect(id.hasPath)
        let root = try SPIFFEID(parsing: "spiffe://example.org")
        #expect(root.path.isEmpty && !root.hasPath && root.segments.isEmpty)
    }

    @Test func comparesCaseSensitivelyWithoutNormalising() throws {
        #expect(try SPIFFEID(parsing: "spiffe://example.org/Web") != SPIFFEID(parsing: "spiffe://example.org/web"))
        #expect(try SPIFFEID(parsing: "spiffe://example.org/a") == SPIFFEID(parsing: "spiffe://example.org/a"))
    }

    @Test func parsesBareTrustDomains() throws {
        #expect(try TrustDomain(parsing: "example.org").name == "example.org")
        #expect(throws: SPIFFEIDError.invalidTrustDomainCharacter("/")) { try TrustDomain(parsing: "example.org/x") }
        #expect(throws: SPIFFEIDError.emptyTrustDomain) { try TrustDomain(parsing: "") }
    }
}
