//! The C allocator's settings per command: one place decides how glibc's `malloc` keeps and
//! returns memory, because the two long-running commands want opposite things.
//!
//! - `app consume` allocates and frees record buffers across its fetch, decode and write
//!   threads. glibc gives each allocating thread an arena and keeps freed memory in them: the
//!   arenas held ~30 % more than the data (158 MB instead of 124 MB peak RSS on a 3-partition
//!   backlog, BENCHMARKS.md). Two arenas, and buffers of 256 KiB and more mapped (returned to the
//!   system when freed), keep its resident size near what it really uses.
//! - `app produce` allocates and frees the same few buffer sizes for every batch: segments of
//!   JSON, a batch's compressed records, rskafka's request buffer. Mapped and unmapped each time
//!   (and the heap trimmed after every free), each batch paid its pages again: page faults and
//!   `munmap` were 0.6–1.0 s of system time per million rows, a quarter of its CPU (BENCHMARKS.md,
//!   "Issue 15"). Its memory is bounded by its lanes and batch size (about 2.5 MB per lane, at
//!   most 8 lanes), so the allocator keeping freed buffers for the next batch costs at most that.
//!
//! `mallopt` changes process-wide settings and is only safe to rely on before other threads
//! allocate: [`tune`] is called once by `cli::main`, after parsing the flags and before logging
//! or the async runtime start. Other C libraries (musl in the static build) are left alone.

/// What the process is about to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Produce,
    Consume,
    Inspect,
}

/// Below this size a produce buffer comes from the heap and is reused; above it, it is mapped.
const PRODUCE_MMAP_THRESHOLD: i32 = 8 << 20;
/// Free memory at the top of produce's heap kept for the next batch instead of returned.
const PRODUCE_TRIM_THRESHOLD: i32 = 64 << 20;
/// Consume and inspect: buffers from this size on are mapped and returned when freed.
const CONSUME_MMAP_THRESHOLD: i32 = 256 * 1024;
/// Arenas in all (glibc's default is 8 per core).
const ARENAS: i32 = 2;

/// Sets the allocator up for `workload`. Call once, before any other thread exists.
#[allow(unsafe_code)]
pub fn tune(workload: Workload) {
    let (mmap_threshold, trim_threshold) = match workload {
        Workload::Produce => (PRODUCE_MMAP_THRESHOLD, Some(PRODUCE_TRIM_THRESHOLD)),
        Workload::Consume | Workload::Inspect => (CONSUME_MMAP_THRESHOLD, None),
    };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called once, before any other
    // thread exists, with documented parameters and values.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap_threshold);
        if let Some(trim) = trim_threshold {
            libc::mallopt(libc::M_TRIM_THRESHOLD, trim);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (mmap_threshold, trim_threshold, ARENAS);
}
