/// Parses the durations the config accepts: an integer followed by ms, s, m, h or d (`10s`, `1h`).
public enum DurationParser {
    public static func parse(_ text: String) -> Duration? {
        let units: [(suffix: String, milliseconds: Int64)] = [
            ("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000),
        ]
        for unit in units where text.hasSuffix(unit.suffix) {
            let number = text.dropLast(unit.suffix.count)
            guard let value = Int64(number), value > 0,
                value <= Int64.max / unit.milliseconds
            else { return nil }
            return .milliseconds(value * unit.milliseconds)
        }
        return nil
    }
}
