import Foundation
import WardIdentity
import WardPolicy

/// Decision latency, compile time and memory of the compiled rules at several sizes, with the
/// mix the rules-engine issue asks for: 70% exact IDs, 25% `*` patterns, 5% `**` patterns.
/// Release build only: `scripts/bench` builds and runs it.
@main
struct RuleBench {
    static func main() {
        let arguments = CommandLine.arguments.dropFirst()
        if arguments.first == "alloc-probe", let count = Int(arguments.dropFirst().first ?? "") {
            allocationProbe(decisions: count)
            return
        }
        if arguments.first == "log" {
            LogBench.run(path: arguments.dropFirst().first ?? "/tmp/ward-bench.log")
            return
        }
        let sizes = arguments.compactMap(Int.init)
        print("rules      compile_ms  rss_mib  hit_ns  pattern_hit_ns  miss_ns  cold_hit_ns")
        for size in sizes.isEmpty ? [10, 1_000, 100_000, 1_000_000] : sizes {
            run(size: size)
        }
    }

    /// Rule `index` of the synthetic fleet: namespace and service account derived from it.
    static func pattern(_ index: Int) -> (text: String, exactID: String?) {
        let namespace = "ns\(index / 10)"
        switch index % 20 {
        case 0:
            return ("spiffe://example.org/ns/\(namespace)/**", nil)
        case 1...5:
            return ("spiffe://example.org/ns/\(namespace)/sa/*", nil)
        default:
            let id = "spiffe://example.org/ns/\(namespace)/sa/svc\(index)"
            return (id, id)
        }
    }

    static func build(size: Int) -> (RuleSource, [SPIFFEID]) {
        var rules: [Rule] = []
        rules.reserveCapacity(size)
        var exactIDs: [SPIFFEID] = []
        for index in 0..<size {
            let (text, exact) = pattern(index)
            // One rule in ten is a deny, so slots hold mixed lists as in real fleets.
            let action: RuleAction = index % 10 == 9 ? .deny : .allow
            rules.append(
                Rule(
                    name: "r\(index)", action: action, from: [try! IdentityPattern(parsing: text)], to: .named(["svc"]))
            )
            if let exact, exactIDs.count < 100_000 { exactIDs.append(try! SPIFFEID(parsing: exact)) }
        }
        return (RuleSource(defaultAction: .deny, rules: rules), exactIDs)
    }

    static func run(size: Int) {
        let (source, exactIDs) = build(size: size)
        let rssBefore = residentBytes()
        let start = DispatchTime.now().uptimeNanoseconds
        let ruleSet = RuleSet(compiling: source, listeners: ["svc"])
        let compileNanoseconds = DispatchTime.now().uptimeNanoseconds - start
        let rssAfter = residentBytes()

        let context = DecisionContext(address: nil, minuteOfDay: 0, svidLifetimeSeconds: 3600)
        let misses = (0..<1_000).map { try! SPIFFEID(parsing: "spiffe://example.org/ns/unknown\($0)/sa/web") }
        let patternHits = (0..<1_000).map {
            try! SPIFFEID(parsing: "spiffe://example.org/ns/ns\($0 % max(1, size / 10))/sa/other\($0)")
        }
        // A working set of 1,000 peers, as a busy service sees; `cold` cycles through up to
        // 100,000 distinct peers so most lookups miss the CPU caches.
        let hit = measure(ruleSet, Array(exactIDs.prefix(1_000)), context)
        let patternHit = measure(ruleSet, patternHits, context)
        let miss = measure(ruleSet, misses, context)
        let cold = measure(ruleSet, exactIDs, context)
        print(
            String(
                format: "%-10d %10.1f %8.1f %7.0f %15.0f %8.0f %12.0f", size, Double(compileNanoseconds) / 1e6,
                Double(rssAfter - rssBefore) / 1_048_576, hit, patternHit, miss, cold))
        withExtendedLifetime(ruleSet) {}
    }

    /// Mean nanoseconds per decision over at least 2M decisions cycling through `ids`.
    static func measure(_ ruleSet: RuleSet, _ ids: [SPIFFEID], _ context: DecisionContext) -> Double {
        var allowed = 0
        let rounds = 2_000_000
        let start = DispatchTime.now().uptimeNanoseconds
        for round in 0..<rounds {
            if ruleSet.decide(peer: ids[round % ids.count], listenerIndex: 0, context: context).isAllowed {
                allowed += 1
            }
        }
        let elapsed = DispatchTime.now().uptimeNanoseconds - start
        blackHole(allowed)
        return Double(elapsed) / Double(rounds)
    }

    /// Runs `decisions` decisions after setup; `scripts/bench` runs it twice under valgrind and
    /// divides the difference in heap allocations by the difference in decisions.
    static func allocationProbe(decisions: Int) {
        let (source, exactIDs) = build(size: 1_000)
        let ruleSet = RuleSet(compiling: source, listeners: ["svc"])
        let context = DecisionContext(address: nil, minuteOfDay: 0, svidLifetimeSeconds: 3600)
        let ids =
            exactIDs + [
                try! SPIFFEID(parsing: "spiffe://example.org/ns/ns1/sa/other"),
                try! SPIFFEID(parsing: "spiffe://example.org/ns/none/sa/web"),
                try! SPIFFEID(parsing: "spiffe://example.org/ns/ns2/deep/a/b/c"),
            ]
        var allowed = 0
        for round in 0..<decisions
        where ruleSet.decide(peer: ids[round % ids.count], listenerIndex: 0, context: context).isAllowed {
            allowed += 1
        }
        blackHole(allowed)
    }

    static func residentBytes() -> Int {
        guard let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = statm.split(separator: " ")
        return fields.count > 1 ? (Int(fields[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE))) : 0
    }

    @inline(never)
    static func blackHole(_ value: Int) {
        if value == -1 { print(value) }
    }
}
