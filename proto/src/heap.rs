//! The processes and glibc's allocator: how much freed memory stays in the
//! process (docs/benchmarks.md, "Compact record tables").
//!
//! - The agent's live heap at 250,000 remote endpoints is ~340 B per
//!   endpoint; with glibc's default of one arena per thread its RSS stayed
//!   at ~630 B, the freed memory of a snapshot held in the worker threads'
//!   arenas. With one arena ([`limit_arenas`]), ~450 B.
//! - A snapshot (a peer's, arriving; a Watch's, built and sent; the view's
//!   load) is staged while it is handled and freed afterwards, but glibc
//!   keeps the freed pages. [`release_freed_memory`] hands them back; the
//!   apiserver asks for it after each snapshot ([`want_release`]) and a
//!   single task does it at most once a second ([`take_wanted`]).

use std::sync::atomic::{AtomicBool, Ordering};

/// Before any thread starts: one malloc arena. For a process whose work is
/// one control loop (the agent: the Watch task and the reconciler take
/// turns) the arenas buy no parallelism, only freed memory that stays in
/// RSS. False when the allocator refused (the caller logs it once logging
/// is up).
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

/// Hands the heap's free memory back to the kernel. True when some was
/// released. (A walk over the allocator's free lists: milliseconds for a
/// few hundred MiB of heap; call it after a snapshot, not per change.)
pub fn release_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

static WANTED: AtomicBool = AtomicBool::new(false);

/// Something large was freed (a snapshot handled): ask for a release.
pub fn want_release() {
    WANTED.store(true, Ordering::Relaxed);
}

/// Whether [`want_release`] was called since the last time this said yes.
/// Polled by one periodic task, which then calls [`release_freed_memory`]:
/// many snapshots in a burst (a cold start with 250 peers) cost one
/// release per period.
pub fn take_wanted() -> bool {
    WANTED.swap(false, Ordering::Relaxed)
}
