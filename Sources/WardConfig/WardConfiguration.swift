import WardIdentity
import WardPolicy
import WardSystem

/// `peer_expiry`: close a connection when its peer's SVID reaches notAfter, or keep it.
public enum PeerExpiry: String, Sendable {
    case close
    case keep
}

/// A host and port as written in the config (`127.0.0.1:8443`, `[::1]:8443`, `localhost:80`).
public struct HostPort: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: UInt16

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port`; an IPv6 host is written in brackets.
    public init?(parsing text: String) {
        let hostPart: Substring
        let portPart: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"),
                text[text.index(after: close)...].hasPrefix(":")
            else { return nil }
            hostPart = text[text.index(after: text.startIndex)..<close]
            portPart = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else { return nil }
            hostPart = text[..<colon]
            portPart = text[text.index(after: colon)...]
        }
        guard !hostPart.isEmpty, let port = UInt16(portPart), port != 0 else { return nil }
        self.host = String(hostPart)
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

public struct ListenerConfig: Sendable, Equatable {
    /// What the upstream receives before the client's bytes (`proxy_protocol`).
    public enum ProxyProtocol: String, Sendable, Equatable {
        case v2
    }

    public var name: String
    public var listen: HostPort
    public var upstream: HostPort
    /// Nil: the upstream receives the client's bytes only.
    public var proxyProtocol: ProxyProtocol? = nil
    /// Where the listener is written, for warnings about it.
    public var location: SourceLocation
}

/// An `outbound:` entry: a local plaintext port whose connections Ward carries over mTLS to
/// `target`, after checking the server's SVID against `serverIDs`.
public struct OutboundConfig: Sendable, Equatable {
    public var name: String
    public var listen: HostPort
    public var target: HostPort
    /// `server_id`: exact IDs or patterns, as written (validated by the loader).
    public var serverIDs: [String]
    /// SNI sent to the target; nil sends none.
    public var serverName: String?
    /// `allow_remote`: `listen` may be other than loopback.
    public var allowRemote = false
    public var location: SourceLocation

    public init(
        name: String, listen: HostPort, target: HostPort, serverIDs: [String], serverName: String? = nil,
        allowRemote: Bool = false, location: SourceLocation
    ) {
        self.name = name
        self.listen = listen
        self.target = target
        self.serverIDs = serverIDs
        self.serverName = serverName
        self.allowRemote = allowRemote
        self.location = location
    }
}

/// Where the admin endpoint listens: a Unix socket (the default) or a loopback address.
public enum AdminAddress: Sendable, Equatable, CustomStringConvertible {
    case unix(path: String)
    case tcp(HostPort)

    public static let defaultPath = "/run/ward/admin.sock"

    /// A path (anything with a "/" or without a ":") is a Unix socket; `unix:PATH` too.
    public init?(parsing text: String, relativeTo folder: String) {
        var text = text
        if text.hasPrefix("unix:") { text.removeFirst(5) }
        if text.contains("/") || !text.contains(":") {
            guard !text.isEmpty else { return nil }
            self = .unix(path: text.hasPrefix("/") || folder.isEmpty ? text : folder + "/" + text)
        } else {
            guard let hostPort = HostPort(parsing: text) else { return nil }
            self = .tcp(hostPort)
        }
    }

    /// True for a Unix socket or a loopback host: reachable only from this machine.
    public var isLocal: Bool {
        switch self {
        case .unix: return true
        case .tcp(let hostPort):
            return hostPort.host == "localhost" || hostPort.host == "::1" || hostPort.host.hasPrefix("127.")
        }
    }

    public var description: String {
        switch self {
        case .unix(let path): return path
        case .tcp(let hostPort): return hostPort.description
        }
    }
}

/// A file the config points at, with the path to open and the path to name in problems.
public struct ConfigFile: Sendable, Equatable {
    /// Resolved against the config file's folder.
    public var path: String
    /// Line of the config that names the file, for problems about it.
    public var line: Int?
}

/// The whole validated configuration, rules included. Certificates are named, not yet loaded:
/// the TLS layer loads them (see `SnapshotBuilder`).
public struct WardConfiguration: Sendable {
    public var configPath: String
    public var identityCert: ConfigFile
    public var identityKey: ConfigFile
    /// Sorted by trust domain name.
    public var trustDomains: [(domain: TrustDomain, bundle: ConfigFile)]
    /// `crls:`: revocation list files per trust domain (each one of `trustDomains`), sorted.
    public var crls: [(domain: TrustDomain, file: ConfigFile)] = []
    public var listeners: [ListenerConfig]
    /// Outbound entries, in config order; empty when the config has none.
    public var outbound: [OutboundConfig] = []
    /// Nil for a config without listeners that names no rules file (it only calls out).
    public var rulesFile: ConfigFile?
    public var rules: RuleSource
    /// `-` means standard output.
    public var logPath: String
    /// nil means one per core.
    public var workers: Int?
    public var handshakeTimeout: Duration
    public var idleTimeout: Duration
    public var upstreamConnectTimeout: Duration
    public var maxSVIDLifetime: Duration
    /// The admin endpoint; `adminIsDefault` is true when the config did not name one.
    public var admin: AdminAddress
    /// `/healthz` fails when the own SVID has less than this left.
    public var svidMinRemaining: Duration
    /// Hash-chain the connection log (`prev` on every line).
    public var logChain: Bool
    /// With `logChain`: a signed checkpoint after this many lines, or `logCheckpointInterval`.
    public var logCheckpointLines = WardConfiguration.defaultLogCheckpointLines
    public var logCheckpointInterval = WardConfiguration.defaultLogCheckpointInterval
    /// TLS 1.3 session resumption.
    public var resumption: Bool = false
    /// Open connections per listener (all workers together); more are refused at accept.
    public var maxConnections = WardConfiguration.defaultMaxConnections
    /// Certificates a peer may present, leaf included.
    public var maxChainDepth = WardConfiguration.defaultMaxChainDepth
    /// Largest certificate message a peer may send, in bytes.
    public var maxCertSize = WardConfiguration.defaultMaxCertSize
    /// OpenSSL security level for peers' chains and the handshake; 2 (the default) refuses RSA
    /// under 2048 bits, EC under 224 bits and SHA-1 signatures. It can only be raised.
    public var securityLevel = WardConfiguration.defaultSecurityLevel
    /// Largest file Ward reads (rules, bundles, own SVID), in bytes.
    public var maxFileSize = RegularFile.defaultSizeLimit
    /// What happens to an open connection when its peer's SVID expires.
    public var peerExpiry = PeerExpiry.close
    /// Drop to this user (and group) after binding, when started as root.
    public var user: String?
    public var group: String?

    public static let defaultMaxConnections = 10_000
    public static let defaultMaxChainDepth = 5
    public static let defaultMaxCertSize = 32 * 1024
    public static let defaultSecurityLevel = 2
    public static let defaultLogCheckpointLines = 1000
    public static let defaultLogCheckpointInterval = Duration.seconds(60)
    public var adminIsDefault: Bool
    /// `admin_allow_remote`: a TCP admin address that is not loopback is allowed.
    public var adminAllowRemote = false
    /// Every file a reload reads, for the file watcher: config, rules, bundles, own cert and key.
    public var watchedFiles: [String] { [configPath] + (rulesFile.map { [$0.path] } ?? []) + certificateFiles }

    /// Bundles, own certificate and key: the files TLS is built from.
    public var certificateFiles: [String] {
        trustDomains.map(\.bundle.path) + crls.map(\.file.path) + [identityCert.path, identityKey.path]
    }

    public static let defaultHandshakeTimeout = Duration.seconds(10)
    public static let defaultIdleTimeout = Duration.seconds(3600)
    public static let defaultUpstreamConnectTimeout = Duration.seconds(5)
    public static let defaultSVIDMinRemaining = Duration.seconds(300)
    public static let defaultMaxSVIDLifetime = Duration.seconds(24 * 3600)
}
