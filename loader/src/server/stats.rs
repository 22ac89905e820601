//! What the daemon counts (samples, decodes, stage times, refusals, each client's progress),
//! the snapshot `loader status` shows, and the once-a-second tick that keeps the recent rate
//! and talks to systemd.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::pipeline::StageTimes;
use crate::protocol::{ClientStats, MemoryUse, Stats};

/// The daemon's counters, shared by its connections and producers.
pub(super) struct Counters {
    started: Instant,
    samples: AtomicU64,
    /// Images decoded (fewer than samples where repeats share a decode).
    decoded: AtomicU64,
    decode_errors: AtomicU64,
    refused: AtomicU64,
    /// Nanoseconds per stage, summed: decode, resize, flip, RandAugment, write.
    stage_ns: [AtomicU64; 5],
    clients: Mutex<BTreeMap<u64, ClientStats>>,
    /// (time, samples) once a second, for the recent rate.
    history: Mutex<VecDeque<(Instant, u64)>>,
}

impl Counters {
    /// All zero, started now.
    pub(super) fn new() -> Counters {
        Counters {
            started: Instant::now(),
            samples: AtomicU64::new(0),
            decoded: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            stage_ns: Default::default(),
            clients: Mutex::new(BTreeMap::new()),
            history: Mutex::new(VecDeque::new()),
        }
    }

    /// Adds one fill's samples, decodes and stage times.
    pub(super) fn add_fill(&self, t: &StageTimes) {
        let stages = [t.decode, t.resize, t.flip, t.rand_augment, t.write];
        for (acc, d) in self.stage_ns.iter().zip(stages) {
            acc.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        }
        self.samples.fetch_add(t.samples, Ordering::Relaxed);
        self.decoded.fetch_add(t.decoded, Ordering::Relaxed);
    }

    /// Counts records replaced after decode errors.
    pub(super) fn add_decode_errors(&self, n: u64) {
        self.decode_errors.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a refused connection.
    pub(super) fn add_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts showing client `id`.
    pub(super) fn add_client(&self, id: u64, client: ClientStats) {
        if let Ok(mut c) = self.clients.lock() {
            c.insert(id, client);
        }
    }

    /// Stops showing client `id`.
    pub(super) fn remove_client(&self, id: u64) {
        if let Ok(mut c) = self.clients.lock() {
            c.remove(&id);
        }
    }

    /// Changes what is shown of client `id`.
    pub(super) fn update_client(&self, id: u64, f: impl FnOnce(&mut ClientStats)) {
        if let Ok(mut c) = self.clients.lock()
            && let Some(client) = c.get_mut(&id)
        {
            f(client);
        }
    }

    /// A snapshot for `loader status`.
    pub(super) fn snapshot(&self, workers: u32) -> Stats {
        let samples = self.samples.load(Ordering::Relaxed);
        let samples_per_s = self
            .history
            .lock()
            .ok()
            .and_then(|h| {
                let (t0, n0) = *h.front()?;
                let dt = t0.elapsed().as_secs_f64();
                (dt > 0.5).then(|| samples.saturating_sub(n0) as f64 / dt)
            })
            .unwrap_or(0.0);
        let per = |ns: &AtomicU64| ns.load(Ordering::Relaxed) as f64 / 1e6 / samples.max(1) as f64;
        Stats {
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            workers,
            samples,
            samples_per_s,
            decoded: self.decoded.load(Ordering::Relaxed),
            decode_errors: self.decode_errors.load(Ordering::Relaxed),
            stage_ms: [
                per(&self.stage_ns[0]),
                per(&self.stage_ns[1]),
                per(&self.stage_ns[2]),
                per(&self.stage_ns[3]),
                per(&self.stage_ns[4]),
            ],
            refused: self.refused.load(Ordering::Relaxed),
            memory: MemoryUse::of_this_process(),
            // Filled in by the daemon, which knows its budget.
            memory_budget: 0,
            clients: self
                .clients
                .lock()
                .map(|c| c.values().cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// Once a second: the rate history, and systemd's status line and watchdog.
    pub(super) async fn tick(&self, workers: u32) {
        let mut watchdog_us = 0;
        let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_us);
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            {
                let Ok(mut h) = self.history.lock() else {
                    return;
                };
                h.push_back((Instant::now(), self.samples.load(Ordering::Relaxed)));
                if h.len() > 10 {
                    h.pop_front();
                }
            }
            let s = self.snapshot(workers);
            let status = format!(
                "{} client(s), {:.0} samples/s, {} decode error(s)",
                s.clients.len(),
                s.samples_per_s,
                s.decode_errors
            );
            let mut states = vec![sd_notify::NotifyState::Status(&status)];
            if watchdog {
                states.push(sd_notify::NotifyState::Watchdog);
            }
            // Outside systemd there is no notify socket and this does nothing.
            let _ = sd_notify::notify(false, &states);
        }
    }
}
