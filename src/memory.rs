//! Giving memory the daemon no longer uses back to the operating system.
//!
//! glibc's allocator keeps what the program frees in its arenas for reuse,
//! and returns it to the kernel only when the top of an arena is free. After
//! a large run (a million-page list read in batches, thousands of invokes
//! and reports in flight) the daemon would otherwise sit at its high-water
//! mark while idle. [`release_free_memory`] asks the allocator to return
//! every free page of every arena; [`release_free_memory_soon`] does so on
//! a blocking thread, at most once a second, at the end of a run's listing
//! and when a run finishes (a run finishing in the middle of other runs'
//! reports does not make them wait on the allocator's locks).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The least time between two trims.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Sets the allocator up for a long-running daemon (glibc; nothing
/// elsewhere): at most two arenas, so that memory freed by one thread is
/// reused by the others instead of staying in an arena of its own; and fixed
/// mmap and trim thresholds of 128 KiB, so that large buffers (a batch of
/// the page list, a big response) are mapped and unmapped on their own
/// instead of raising glibc's dynamic threshold and staying in the heap.
/// Called first thing in `main`.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` takes two integers and only sets the allocator's
    // parameters, under its lock.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}

/// Returns the allocator's free memory to the operating system (glibc
/// `malloc_trim(0)`; nothing elsewhere).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointer and only walks the allocator's
    // own free lists, under the allocator's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// [`release_free_memory`] on a blocking thread of the runtime, unless a
/// trim started less than [`TRIM_EVERY`] ago.
pub fn release_free_memory_soon() {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // Milliseconds since EPOCH of the last trim, plus one (0: never).
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
    let last = LAST.load(Ordering::Relaxed);
    let due = last == 0 || now.saturating_sub(last) >= TRIM_EVERY.as_millis() as u64;
    if due
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tokio::task::spawn_blocking(release_free_memory);
    }
}
