//! Giving memory the daemon no longer uses back to the operating system.
//!
//! glibc's allocator keeps what the program frees in its arenas for reuse,
//! and returns it to the kernel only when the top of an arena is free. After
//! a large run (a million-page list read in batches, thousands of invokes
//! and reports in flight) the daemon would otherwise sit at its high-water
//! mark while idle, and so would it after the keep-alive connections of a
//! run close, long after the run. [`start_trimming`] starts one thread per
//! process that asks the allocator every [`TRIM_EVERY`] to return every free
//! page of every arena (`malloc_trim(0)`), on a thread of its own so that
//! no task waits on the walk of the free lists.

use std::sync::Once;
use std::time::Duration;

/// How often the trimming thread returns free memory.
pub const TRIM_EVERY: Duration = Duration::from_secs(2);

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

/// Starts the thread that calls [`release_free_memory`] every
/// [`TRIM_EVERY`] for as long as the process lives; later calls do nothing.
/// The daemon (`serve`, `dev`) calls it; the CLI does not.
pub fn start_trimming() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("fanfare-trim".into())
            // It only sleeps and calls the allocator.
            .stack_size(64 * 1024)
            .spawn(|| loop {
                std::thread::sleep(TRIM_EVERY);
                release_free_memory();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the thread that returns free memory; the daemon keeps its high-water mark");
        }
    });
}
