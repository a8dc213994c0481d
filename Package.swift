// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "Ward",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "ward", targets: ["ward"]),
        .library(name: "WardFuzzSupport", targets: ["WardFuzzSupport"]),
    ],
    dependencies: [
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.3.0"),
    ],
    targets: [
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        .systemLibrary(
            name: "CLibevent",
            pkgConfig: "libevent_core",
            providers: [.apt(["libevent-dev"])]
        ),
        .target(name: "CWardShims", dependencies: ["COpenSSL"]),
        .target(name: "WardSystem"),
        .target(name: "WardIdentity"),
        .target(name: "WardPolicy", dependencies: ["WardIdentity"]),
        .target(
            name: "WardConfig",
            dependencies: ["WardIdentity", "WardPolicy", "WardSystem", .product(name: "Yams", package: "Yams")]
        ),
        .target(name: "WardIO", dependencies: ["WardSystem", "CLibevent"]),
        .target(name: "WardTLS", dependencies: ["WardIdentity", "WardSystem", "WardIO", "COpenSSL", "CWardShims"]),
        .target(
            name: "WardObservability",
            dependencies: ["WardIdentity", "WardPolicy", .product(name: "Atomics", package: "swift-atomics")]
        ),
        .target(
            name: "WardCore",
            dependencies: [
                "WardIdentity", "WardPolicy", "WardConfig", "WardTLS", "WardIO", "WardObservability", "WardSystem",
                "COpenSSL", "CLibevent",
                "CWardShims", .product(name: "Logging", package: "swift-log"),
                .product(name: "Atomics", package: "swift-atomics"),
            ]
        ),
        .target(
            name: "WardControl",
            dependencies: [
                "WardCore", "WardIdentity", "WardPolicy", "WardConfig", "WardTLS", "WardIO", "WardObservability",
                "WardSystem", "CLibevent", .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "ward",
            dependencies: [
                "WardControl", "WardCore", "WardSystem", "WardConfig", "WardTLS", "WardObservability", "WardPolicy",
                "WardIdentity",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "WardFuzzSupport",
            dependencies: ["WardConfig", "WardControl", "WardIdentity", "WardObservability", "WardPolicy", "WardTLS"]),
        .executableTarget(
            name: "ward-bench", dependencies: ["WardPolicy", "WardIdentity", "WardCore"], path: "Sources/WardBench"),
        .testTarget(name: "WardIdentityTests", dependencies: ["WardIdentity"]),
        .testTarget(name: "WardIOTests", dependencies: ["WardIO", "CLibevent"]),
        .testTarget(name: "WardPolicyTests", dependencies: ["WardPolicy", "WardIdentity"]),
        .testTarget(
            name: "WardObservabilityTests", dependencies: ["WardObservability", "WardPolicy", "WardIdentity"]
        ),
        .testTarget(name: "wardTests", dependencies: ["ward", "WardObservability", "WardPolicy", "WardIdentity"]),
        .testTarget(
            name: "WardConfigTests",
            dependencies: ["WardConfig", "WardPolicy", "WardIdentity"]
        ),
    ]
)
