/// One thing wrong with the configuration, printed as `FILE:LINE: message` (or `FILE: message`
/// when there is no line to point at, as for certificates and unreadable files).
public struct ConfigProblem: Error, Sendable, Equatable, CustomStringConvertible {
    /// Problems a caller acts on, rather than only prints.
    public enum Kind: Sendable, Equatable {
        case invalid
        /// The own key does not match the own certificate: a rotation may be half-written.
        case keyDoesNotMatchCertificate
    }

    public var file: String
    public var line: Int?
    public var message: String
    public var kind: Kind

    public init(file: String, line: Int?, message: String, kind: Kind = .invalid) {
        self.file = file
        self.line = line
        self.message = message
        self.kind = kind
    }

    public var description: String {
        if let line { return "\(file):\(line): \(message)" }
        return "\(file): \(message)"
    }
}

/// Every problem found while loading, in the order found. Loading goes on after a problem
/// where it can, so one `ward check` run lists them all.
public struct ConfigProblems: Error, Sendable, CustomStringConvertible {
    public var problems: [ConfigProblem]

    public init(_ problems: [ConfigProblem]) { self.problems = problems }

    public var description: String { problems.map(\.description).joined(separator: "\n") }
}
