//! The agent and glibc's allocator: how much freed memory stays in the
//! process. Measured at 250,000 remote endpoints (docs/benchmarks.md): the
//! live heap is ~340 B per endpoint, but with glibc's default of one arena
//! per thread (up to 8 × cores) RSS stayed at ~630 B, the freed memory of a
//! snapshot held in the worker threads' arenas; with one arena, ~450 B.

/// Before any thread starts: one malloc arena. The agent's work is one
/// control loop (the Watch task and the reconciler take turns), so the
/// arenas bought no parallelism, only freed memory that stayed in RSS.
/// False when the allocator refused (the caller logs it once logging is up).
pub fn limit_arenas() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets an allocator parameter; called before
        // the runtime's threads exist.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    true
}

/// Hands the heap's free memory back to the kernel. A snapshot is staged
/// whole while it arrives (the mirror's staging, the changes, the decoded
/// view, the first full merge): freed afterwards, but glibc keeps it, and
/// at 250,000 remote endpoints that peak is ~40 % of the agent's RSS
/// (docs/benchmarks.md, heap profile).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = std::time::Instant::now();
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(released, elapsed = ?started.elapsed(), "returned freed heap memory to the kernel");
    }
}
