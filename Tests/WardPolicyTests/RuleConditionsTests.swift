import Testing
import WardPolicy

@Suite struct RuleConditionsTests {
    func ip(_ text: String) -> IPAddress { IPAddress(parsing: Substring(text))! }

    @Test func cidrEdges() throws {
        let v4 = try #require(CIDR(parsing: "10.1.0.0/16"))
        #expect(v4.contains(ip("10.1.0.0")) && v4.contains(ip("10.1.255.255")))
        #expect(!v4.contains(ip("10.2.0.0")) && !v4.contains(ip("10.0.255.255")))
        #expect(!v4.contains(ip("::ffff:10.2.0.1")) && v4.contains(ip("::ffff:a01:1")))
        let host = try #require(CIDR(parsing: "192.0.2.7"))
        #expect(host.contains(ip("192.0.2.7")) && !host.contains(ip("192.0.2.8")))
        let all = try #require(CIDR(parsing: "0.0.0.0/0"))
        #expect(all.contains(ip("255.255.255.255")) && !all.contains(ip("2001:db8::1")))
        let v6 = try #require(CIDR(parsing: "2001:db8::/32"))
        #expect(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::")))
        let odd = try #require(CIDR(parsing: "2001:db8::/33"))
        #expect(odd.contains(ip("2001:db8:7fff::")) && !odd.contains(ip("2001:db8:8000::")))
        #expect(try #require(CIDR(parsing: "::1/128")).contains(ip("::1")))
        for bad in ["10.0.0.0/33", "10.0.0/8", "10.0.0.256", "::1/129", "2001:db8::1::2/64", "10.0.0.0/-1", "x/8", ""] {
            #expect(CIDR(parsing: bad) == nil, "\(bad)")
        }
    }

    @Test func hourRangesIncludeStartExcludeEndAndWrap() throws {
        let office = try #require(HourRange(parsing: "09:00-17:30"))
        #expect(office.contains(minuteOfDay: 9 * 60) && office.contains(minuteOfDay: 17 * 60 + 29))
        #expect(!office.contains(minuteOfDay: 17 * 60 + 30) && !office.contains(minuteOfDay: 8 * 60 + 59))
        let night = try #require(HourRange(parsing: "22:00-06:00"))
        #expect(
            night.contains(minuteOfDay: 23 * 60) && night.contains(minuteOfDay: 0) && night.contains(minuteOfDay: 359))
        #expect(!night.contains(minuteOfDay: 360) && !night.contains(minuteOfDay: 12 * 60))
        let toMidnight = try #require(HourRange(parsing: "18:00-24:00"))
        #expect(toMidnight.contains(minuteOfDay: 1439) && !toMidnight.contains(minuteOfDay: 0))
        for bad in [
            "9:00-17:00", "09:00-09:00", "24:01-01:00", "09:60-10:00", "09:00", "09:00-17:00-18:00", "ab:cd-ef:gh",
        ] {
            #expect(HourRange(parsing: bad) == nil, "\(bad)")
        }
    }

    @Test func everyConditionMustHold() throws {
        let conditions = RuleConditions(
            sources: [try #require(CIDR(parsing: "10.0.0.0/8"))], hours: HourRange(parsing: "08:00-20:00"),
            maxSVIDLifetimeSeconds: 3600)
        let good = DecisionContext(address: ip("10.9.9.9"), minuteOfDay: 600, svidLifetimeSeconds: 3600)
        #expect(conditions.failure(in: good) == nil)
        var context = good
        context.address = ip("11.0.0.1")
        #expect(conditions.failure(in: context) == .source)
        context = good
        context.address = nil
        #expect(conditions.failure(in: context) == .source)
        context = good
        context.minuteOfDay = 20 * 60
        #expect(conditions.failure(in: context) == .hours)
        context = good
        context.svidLifetimeSeconds = 3601
        #expect(conditions.failure(in: context) == .maxSVIDTTL)
        #expect(RuleConditions().failure(in: context) == nil)
    }

    @Test func loopbackAndWildcardAddresses() {
        for text in ["127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.1"] { #expect(ip(text).isLoopback, "\(text)") }
        for text in ["10.0.0.1", "0.0.0.0", "::", "::2"] { #expect(!ip(text).isLoopback, "\(text)") }
        for text in ["0.0.0.0", "::", "::ffff:0.0.0.0"] { #expect(ip(text).isUnspecified, "\(text)") }
        for text in ["0.0.0.1", "127.0.0.1", "::1", "1::"] { #expect(!ip(text).isUnspecified, "\(text)") }
    }
}
