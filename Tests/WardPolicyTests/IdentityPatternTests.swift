import Testing
import WardIdentity
import WardPolicy

/// Every grammar rule as matches and non-matches.
@Suite struct IdentityPatternTests {
    static let cases: [(pattern: String, matches: [String], misses: [String])] = [
        (
            "spiffe://example.org/ns/prod/sa/web",
            ["spiffe://example.org/ns/prod/sa/web"],
            [
                "spiffe://example.org/ns/prod/sa/Web", "spiffe://example.org/ns/prod/sa/web/x",
                "spiffe://example.org/ns/prod/sa", "spiffe://partner.org/ns/prod/sa/web",
            ]
        ),
        (
            "spiffe://example.org/ns/prod/sa/*",
            [
                "spiffe://example.org/ns/prod/sa/web", "spiffe://example.org/ns/prod/sa/...",
                "spiffe://example.org/ns/prod/sa/.a",
            ],
            [
                "spiffe://example.org/ns/prod/sa/web/x", "spiffe://example.org/ns/prod/sa",
                "spiffe://example.org/ns/Prod/sa/web",
            ]
        ),
        (
            "spiffe://example.org/ns/*/sa/web",
            ["spiffe://example.org/ns/prod/sa/web", "spiffe://example.org/ns/dev/sa/web"],
            [
                "spiffe://example.org/ns/sa/web", "spiffe://example.org/ns/a/b/sa/web",
                "spiffe://example.org/ns/prod/sa/db",
            ]
        ),
        (
            "spiffe://example.org/ns/prod/**",
            [
                "spiffe://example.org/ns/prod/sa", "spiffe://example.org/ns/prod/sa/web",
                "spiffe://example.org/ns/prod/a/b/c/d",
            ],
            [
                "spiffe://example.org/ns/prod", "spiffe://example.org/ns/production/sa",
                "spiffe://example.org/ns/dev/sa/web",
            ]
        ),
        (
            "spiffe://example.org/**",
            ["spiffe://example.org/a", "spiffe://example.org/ns/prod/sa/web"],
            ["spiffe://example.org", "spiffe://partner.org/a"]
        ),
        (
            "spiffe://example.org/*/*",
            ["spiffe://example.org/a/b", "spiffe://example.org/..a/x..", "spiffe://example.org/.a/..."],
            ["spiffe://example.org/a", "spiffe://example.org/a/b/c"]
        ),
        (
            "spiffe://example.org/*/**",
            ["spiffe://example.org/a/b", "spiffe://example.org/a/b/c"],
            ["spiffe://example.org/a"]
        ),
    ]

    @Test func matchesAndMisses() throws {
        for entry in Self.cases {
            let pattern = try IdentityPattern(parsing: entry.pattern)
            for id in entry.matches {
                #expect(pattern.matches(try SPIFFEID(parsing: id)), "\(entry.pattern) should match \(id)")
            }
            for id in entry.misses {
                #expect(!pattern.matches(try SPIFFEID(parsing: id)), "\(entry.pattern) should not match \(id)")
            }
        }
    }

    @Test(arguments: [
        ("spiffe://example.org/ns/**/web", IdentityPatternError.doubleStarNotLast),
        ("spiffe://example.org/ns/we*", .partialWildcard("we*")),
        ("spiffe://example.org/ns/*b", .partialWildcard("*b")),
        ("spiffe://example.org/***", .partialWildcard("***")),
        ("spiffe://*.org/ns/web", .invalidID(.invalidTrustDomainCharacter("*"))),
        ("spiffe://*/ns/web", .invalidID(.invalidTrustDomainCharacter("*"))),
        ("spiffe://example.org", .noPath),
        ("spiffe://example.org/", .invalidID(.trailingSlash)),
        ("spiffe://example.org/a/", .invalidID(.trailingSlash)),
        ("spiffe://example.org//*", .invalidID(.emptySegment)),
        ("spiffe://example.org/a/../*", .invalidID(.dotSegment)),
        ("spiffe://Example.org/*", .invalidID(.invalidTrustDomainCharacter("E"))),
        ("https://example.org/*", .invalidID(.wrongScheme)),
        ("example.org/*", .invalidID(.wrongScheme)),
        ("spiffe://example.org/a?x", .invalidID(.invalidPathCharacter("?"))),
    ])
    func rejects(_ text: String, _ expected: IdentityPatternError) {
        #expect(throws: expected) { try IdentityPattern(parsing: text) }
    }

    @Test func exactness() throws {
        #expect(try IdentityPattern(parsing: "spiffe://example.org/a/b").isExact)
        #expect(try !IdentityPattern(parsing: "spiffe://example.org/a/*").isExact)
        #expect(try !IdentityPattern(parsing: "spiffe://example.org/a/**").isExact)
    }

    @Test(arguments: [
        ("spiffe://example.org/a/b", "spiffe://example.org/a/b", true),
        ("spiffe://example.org/a/b", "spiffe://example.org/a/*", true),
        ("spiffe://example.org/a/b", "spiffe://example.org/**", true),
        ("spiffe://example.org/a/b", "spiffe://example.org/a/**", true),
        ("spiffe://example.org/a/*", "spiffe://example.org/*/*", true),
        ("spiffe://example.org/a/**", "spiffe://example.org/a/**", true),
        ("spiffe://example.org/a/b/**", "spiffe://example.org/a/**", true),
        ("spiffe://example.org/a/b/**", "spiffe://example.org/*/*/**", true),
        ("spiffe://example.org/a/*", "spiffe://example.org/a/b", false),
        ("spiffe://example.org/a/**", "spiffe://example.org/a/*", false),
        ("spiffe://example.org/a/**", "spiffe://example.org/a/*/**", false),
        ("spiffe://example.org/a", "spiffe://example.org/a/**", false),
        ("spiffe://example.org/a/b", "spiffe://partner.org/**", false),
        ("spiffe://example.org/a/b/c", "spiffe://example.org/a/*", false),
    ])
    func coverage(_ narrow: String, _ wide: String, _ covered: Bool) throws {
        #expect(try IdentityPattern(parsing: narrow).isCovered(by: IdentityPattern(parsing: wide)) == covered)
    }
}
