import CFuzzDriver
import Foundation
import WardFuzzSupport

// libFuzzer drives FuzzChecks.config with each input; its options and corpus folders are the
// command line (scripts/fuzz passes -max_total_time and the seed corpus).
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(
    LLVMFuzzerRunDriver(&argc, &argv) { data, size in
        FuzzChecks.config(UnsafeBufferPointer(start: data, count: size))
        return 0
    })
