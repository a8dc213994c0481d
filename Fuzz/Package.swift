// swift-tools-version: 6.1
// libFuzzer targets for Ward's parsers. Built by scripts/fuzz with -sanitize=fuzzer,address;
// kept apart from the main package so that its normal builds carry no fuzzer instrumentation.
import PackageDescription

let package = Package(
    name: "WardFuzz",
    // Ward is a symlink to the repository root: the dependency then has the same name wherever
    // the repository is cloned.
    dependencies: [.package(path: "Ward")],
    targets: [
        .target(name: "CFuzzDriver"),
        .executableTarget(
            name: "fuzz-spiffe-id",
            dependencies: ["CFuzzDriver", .product(name: "WardFuzzSupport", package: "Ward")]),
        .executableTarget(
            name: "fuzz-rules", dependencies: ["CFuzzDriver", .product(name: "WardFuzzSupport", package: "Ward")]),
        .executableTarget(
            name: "fuzz-pem", dependencies: ["CFuzzDriver", .product(name: "WardFuzzSupport", package: "Ward")]),
        .executableTarget(
            name: "fuzz-admin-request",
            dependencies: ["CFuzzDriver", .product(name: "WardFuzzSupport", package: "Ward")]),
        .executableTarget(
            name: "fuzz-config", dependencies: ["CFuzzDriver", .product(name: "WardFuzzSupport", package: "Ward")]),
        .executableTarget(
            name: "fuzz-log-chain", dependencies: ["CFuzzDriver", .product(name: "WardFuzzSupport", package: "Ward")]),
    ]
)
