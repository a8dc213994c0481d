/* Declarations only: libFuzzer provides LLVMFuzzerRunDriver. */
