//! What the daemon counts (samples, decodes, stage times, refusals, ring bytes, each client's
//! progress, the fills in flight), the snapshot `loader status` shows, and the once-a-second
//! tick that keeps the recent rate and talks to systemd: its watchdog is pinged only while no
//! fill has run for [`HUNG_FILL`], so that a daemon whose decode worker hangs is restarted
//! (its clients reconnect where they were) instead of holding them forever. The counters are `prometheus_client`'s, so the scrape
//! endpoint (`server::metrics`) reads the same numbers `loader status` shows.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::batches::pipeline::StageTimes;
use crate::wire::protocol::{ClientStats, MemoryUse, Stats};

/// How long one fill (a few batches of a group's clients) may run before the daemon counts it
/// as hung: far beyond a fill's time even with every decode turn taken by other users (a
/// fill is seconds at most), short next to a day of training lost to a wait.
pub(super) const HUNG_FILL: Duration = Duration::from_secs(300);

/// The pipeline's stages, in `Stats::stage_ms`'s order.
pub(super) const STAGES: [&str; 5] = ["decode", "resize", "flip", "rand_augment", "write"];

/// A stage's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StageLabel {
    /// One of [`STAGES`].
    pub stage: &'static str,
}

/// Why a connection was refused (`Refusal::reason`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReasonLabel {
    /// The refusal's name.
    pub reason: &'static str,
}

/// A histogram of seconds per sample in one fill: 1 µs to about 0.5 s.
fn per_sample_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-6, 2.0, 20))
}

/// The daemon's counters, shared by its connections and producers.
pub(super) struct Counters {
    started: Instant,
    pub(super) samples: Counter,
    /// Images decoded (fewer than samples where repeats share a decode).
    pub(super) decoded: Counter,
    /// Records that failed to decode, each replaced by another record of the split.
    pub(super) decode_errors: Counter,
    refused: AtomicU64,
    /// Refused connections by reason.
    pub(super) refused_by: Family<ReasonLabel, Counter>,
    /// Nanoseconds per stage, summed: decode, resize, flip, RandAugment, write.
    stage_ns: [AtomicU64; 5],
    /// Seconds per sample of each stage, one observation per fill.
    pub(super) stage_seconds: Family<StageLabel, Histogram, fn() -> Histogram>,
    /// `stage_seconds`' histograms in [`STAGES`]' order, looked up once (a fill observes
    /// them without the family's lock and hashing).
    stage_histograms: [Histogram; 5],
    /// Bytes of the rings of the clients being served.
    pub(super) ring_bytes: Gauge,
    /// Streams closed because their client held every slot for `stall_timeout_s`.
    pub(super) stall_closes: Counter,
    clients: Mutex<BTreeMap<u64, ClientStats>>,
    /// (time, samples) once a second, for the recent rate.
    history: Mutex<VecDeque<(Instant, u64)>>,
    /// The fills in flight, by number: when each began, and its clients' ids.
    fills: Mutex<BTreeMap<u64, (Instant, Vec<u64>)>>,
    /// The next fill's number.
    next_fill: AtomicU64,
    /// Seconds the oldest fill in flight has run (0 without one), as of the last tick.
    pub(super) oldest_fill: Gauge<f64, AtomicU64>,
}

/// A fill in flight, counted from [`Counters::fill_begins`] until this is dropped.
pub(super) struct FillInFlight<'a> {
    counters: &'a Counters,
    number: u64,
}

impl Drop for FillInFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut fills) = self.counters.fills.lock() {
            fills.remove(&self.number);
        }
    }
}

impl Counters {
    /// All zero, started now.
    pub(super) fn new() -> Counters {
        let stage_seconds: Family<StageLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(per_sample_histogram);
        let stage_histograms =
            STAGES.map(|stage| stage_seconds.get_or_create_owned(&StageLabel { stage }));
        Counters {
            started: Instant::now(),
            samples: Counter::default(),
            decoded: Counter::default(),
            decode_errors: Counter::default(),
            refused: AtomicU64::new(0),
            refused_by: Family::default(),
            stage_ns: Default::default(),
            stage_seconds,
            stage_histograms,
            ring_bytes: Gauge::default(),
            stall_closes: Counter::default(),
            clients: Mutex::new(BTreeMap::new()),
            history: Mutex::new(VecDeque::new()),
            fills: Mutex::new(BTreeMap::new()),
            next_fill: AtomicU64::new(0),
            oldest_fill: Gauge::default(),
        }
    }

    /// Counts a fill for `clients` as in flight until the guard is dropped.
    pub(super) fn fill_begins(&self, clients: Vec<u64>) -> FillInFlight<'_> {
        let number = self.next_fill.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut fills) = self.fills.lock() {
            fills.insert(number, (Instant::now(), clients));
        }
        FillInFlight {
            counters: self,
            number,
        }
    }

    /// How long the oldest fill in flight has run at `now`, and its clients.
    pub(super) fn oldest_fill_at(&self, now: Instant) -> Option<(Duration, Vec<u64>)> {
        let fills = self.fills.lock().ok()?;
        fills
            .values()
            .min_by_key(|(began, _)| *began)
            .map(|(began, clients)| (now.saturating_duration_since(*began), clients.clone()))
    }

    /// Adds one fill's samples, decodes and stage times.
    pub(super) fn add_fill(&self, t: &StageTimes) {
        let stages = [t.decode, t.resize, t.flip, t.rand_augment, t.write];
        let per_sample = 1.0 / t.samples.max(1) as f64;
        for ((acc, d), histogram) in self.stage_ns.iter().zip(stages).zip(&self.stage_histograms) {
            acc.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
            if t.samples > 0 {
                histogram.observe(d.as_secs_f64() * per_sample);
            }
        }
        self.samples.inc_by(t.samples);
        self.decoded.inc_by(t.decoded);
    }

    /// Counts records replaced after decode errors.
    pub(super) fn add_decode_errors(&self, n: u64) {
        self.decode_errors.inc_by(n);
    }

    /// Counts a refused connection.
    pub(super) fn add_refused(&self, reason: &'static str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.refused_by.get_or_create(&ReasonLabel { reason }).inc();
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
        let samples = self.samples.get();
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
            decoded: self.decoded.get(),
            decode_errors: self.decode_errors.get(),
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

    /// Once a second: the rate history, and systemd's status line and watchdog (not pinged
    /// while a fill has run for [`HUNG_FILL`], which is logged once per hung fill).
    pub(super) async fn tick(&self, workers: u32) {
        let mut watchdog_us = 0;
        let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_us);
        let mut every = tokio::time::interval(Duration::from_secs(1));
        let mut reported = false;
        loop {
            every.tick().await;
            let oldest = self.oldest_fill_at(Instant::now());
            self.oldest_fill
                .set(oldest.as_ref().map_or(0.0, |(ran, _)| ran.as_secs_f64()));
            let hung = oldest.filter(|(ran, _)| *ran >= HUNG_FILL);
            match &hung {
                Some((ran, clients)) if !reported => {
                    reported = true;
                    tracing::error!(
                        "a fill for client(s) {clients:?} has run {:.0} s (more than {} s): a \
                         decode worker is hung; systemd's watchdog is no longer pinged, so the \
                         unit restarts the daemon (its clients reconnect where they were); \
                         outside systemd, restart it",
                        ran.as_secs_f64(),
                        HUNG_FILL.as_secs()
                    );
                }
                Some(_) => {}
                None => reported = false,
            }
            {
                let Ok(mut h) = self.history.lock() else {
                    return;
                };
                h.push_back((Instant::now(), self.samples.get()));
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
            if watchdog && hung.is_none() {
                states.push(sd_notify::NotifyState::Watchdog);
            }
            // Outside systemd there is no notify socket and this does nothing.
            let _ = sd_notify::notify(false, &states);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_fill_in_flight_is_timed_until_its_guard_drops() {
        let c = Counters::new();
        assert!(c.oldest_fill_at(Instant::now()).is_none());
        let first = c.fill_begins(vec![1, 2]);
        std::thread::sleep(Duration::from_millis(20));
        let second = c.fill_begins(vec![3]);
        let later = Instant::now() + Duration::from_secs(400);
        let (ran, clients) = c.oldest_fill_at(later).expect("a fill in flight");
        assert_eq!(clients, vec![1, 2]);
        assert!(ran >= HUNG_FILL, "{ran:?}");
        drop(first);
        let (ran, clients) = c.oldest_fill_at(later).expect("the second fill");
        assert_eq!(clients, vec![3]);
        assert!(ran < Duration::from_secs(401));
        drop(second);
        assert!(c.oldest_fill_at(later).is_none());
    }
}
