//! The `pacer` binary: parse arguments, run, exit with the verdict's code.

/// jemalloc rather than glibc's malloc: with a thousand keep-alive connections (each with
/// hyper's buffers and channel blocks) it holds ~5 MB less heap, and it stays flat
/// (docs/benchmarks.md, "Memory"). The `system-alloc` feature (measurement only) leaves it out,
/// so that heaptrack, which sees only the C library's `malloc`, can see every allocation.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    pacer_cli::main_from_env()
}
