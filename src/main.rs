//! The `app` binary: everything lives in the library; see `reclamacoes::cli`.

fn main() -> std::process::ExitCode {
    tune_allocator();
    reclamacoes::cli::main()
}

/// glibc's allocator gives each thread that allocates its own arena and keeps freed memory in
/// them: the consumer's fetch, decode and write threads allocate and free record buffers across
/// threads, and the arenas held ~30 % more than the data (158 MB instead of 124 MB peak RSS on a
/// 3-partition backlog, BENCHMARKS.md). Two arenas, and buffers of 256 KiB and more mapped
/// (returned to the system when freed), keep the resident size near what is really used. Other
/// C libraries (musl in the static build) are left alone.
#[allow(unsafe_code)]
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called once, before any thread
    // exists, with documented parameters and values.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}
