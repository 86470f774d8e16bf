#if canImport(Glibc)
@preconcurrency import Glibc  // `stdout` is a C global; it is touched here once, before any other thread runs
#endif

/// Makes stdout line-buffered even when it is a pipe or a file, so that every line `print` writes goes out at its
/// newline: in order with what goes straight to stderr (`2>&1 | tee`), and not lost when a signal ends the process.
func lineBufferStandardOutput() {
    setvbuf(stdout, nil, _IOLBF, 0)
}
