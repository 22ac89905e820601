/*!
The heap of ended clients, given back to the system.

Each producer's workers allocate their decode buffers on threads that end with it, and glibc
keeps what they freed for reuse: after a burst of clients the daemon held 153 MB of anonymous
memory with nobody connected (1.4 MB before). Two things return it. `loader serve` runs the
allocator with one arena ([`single_arena`]): glibc's per-thread arenas keep the top of their
heaps, which `malloc_trim` does not touch, while the main arena's it does. And when a client
has left, `malloc_trim` runs within a second, and once more when the async runtime's idle
threads have ended (they linger 10 s, and free their caches as they go); a daemon whose clients
stay trims nothing.
*/

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// After the last client left: tokio's idle blocking threads end after 10 s.
const SETTLE: Duration = Duration::from_secs(12);

/// Whether memory was freed since the last trim.
#[derive(Default)]
pub(super) struct Trim {
    due: AtomicBool,
    /// When the last trim ran after a client left, for the one after [`SETTLE`].
    last: Mutex<Option<Instant>>,
}

impl Trim {
    /// A client or its producer has ended: their buffers are free.
    pub(super) fn released(&self) {
        self.due.store(true, Ordering::Relaxed);
    }

    /// Trims once a second after a release, and once more [`SETTLE`] after the last; runs
    /// until aborted.
    pub(super) async fn every_second(&self) {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            if !self.trim_now(Instant::now()) {
                continue;
            }
            // Walking the heap takes a few milliseconds at most; off the async threads all
            // the same, as the connections' small messages go there.
            let _ = tokio::task::spawn_blocking(release_free_heap).await;
        }
    }
}

impl Trim {
    /// Whether to trim at `now`: memory was released since the last look, or the last trim
    /// after a release was [`SETTLE`] ago.
    fn trim_now(&self, now: Instant) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        if self.due.swap(false, Ordering::Relaxed) {
            *last = Some(now);
            true
        } else if last.is_some_and(|t| now - t >= SETTLE) {
            *last = None;
            true
        } else {
            false
        }
    }
}

/// Makes the allocator keep one arena for all threads, so that `Trim` can return all the
/// heap that is free. Call it before any thread starts (`loader serve` does; a trainer running
/// the daemon in its own process keeps its allocator as it is). The decode threads allocate a
/// few buffers per image, milliseconds apart: one arena's lock costs them nothing measurable.
pub fn single_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters; M_ARENA_MAX takes a count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns the free pages of the allocator's arenas to the system.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free; it is thread-safe
    // (it takes each arena's lock) and touches nothing a caller owns.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_is_trimmed_at_once_and_again_once_idle_threads_have_ended() {
        let trim = Trim::default();
        let t0 = Instant::now();
        assert!(!trim.trim_now(t0), "nothing was released");
        trim.released();
        assert!(trim.trim_now(t0));
        assert!(!trim.trim_now(t0 + Duration::from_secs(1)));
        assert!(trim.trim_now(t0 + SETTLE));
        assert!(
            !trim.trim_now(t0 + 3 * SETTLE),
            "trimmed again with nothing released"
        );
    }

    #[test]
    fn freed_heap_of_ended_threads_goes_back_to_the_system() {
        let anon = || {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        // Threads that each touch 64 MiB in blocks below the mmap threshold, each followed by
        // a small block that outlives them (as the daemon's long-lived allocations do), and
        // end: the freed blocks cannot merge, and glibc keeps them in their arenas. 256 MiB in
        // all, so that what the binary's other tests allocate and free meanwhile (tens of MiB:
        // with 16 MiB a thread it failed once in a full `.ci/run`: 31 MiB released of 64) cannot
        // decide the outcome.
        let pins: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut blocks = Vec::with_capacity(2048);
                        let mut pins = Vec::with_capacity(2048);
                        for _ in 0..2048 {
                            blocks.push(vec![1u8; 32 << 10]);
                            pins.push(vec![1u8; 64]);
                        }
                        drop(std::hint::black_box(blocks));
                        pins
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let before = anon();
        release_free_heap();
        let after = anon();
        drop(pins);
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            // Other tests of this binary allocate meanwhile; half of the 256 MiB must go (about
            // 180 MiB does, alone or among them).
            assert!(
                after + (128 << 20) <= before,
                "{} MiB before the trim, {} MiB after",
                before >> 20,
                after >> 20
            );
        }
    }
}
