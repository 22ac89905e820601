/*!
The loader daemon: a Unix socket, one shared-memory ring per client, one producer per job
group (the ranks of a job that attach together; see `producer`).

Each accepted connection is checked (SO_PEERCRED against the allowed uids and gids), shakes
hands (preamble, hello), and gets its own [`Ring`](crate::wire::ring::Ring) whose descriptor travels with the `welcome`
frame. A producer thread then fills free slots in (epoch, step) order with a
[`BatchMaker`](crate::batches::batch::BatchMaker) writing straight into the shared memory, and announces
each one; the client's `release` returns the slot. When every slot is full the producer waits:
that is the backpressure, and the bound on memory (docs/design.md invariant 4).

By role, as mini-redis is laid out: [`config`](ServeConfig) (settings, checks, memory
budget), `listener` ([`Server`]: the socket, a permit per connection), `local`
([`LocalServer`]), `connection` (frames, who the peer is, typed refusals), `handler` (what the daemon
does with a connection: the peer check, the handshake, then a status answer or a session),
`session` (one client's job, ring and relay), `producer` (job groups and the threads that fill their rings
through the [`BatchStream`](crate::batches::stream::BatchStream)), `share` (the decode turns, shared
fairly among users and their clients), `trim` (the heap of ended producers given back),
`stats` (counters, `loader status`, systemd's tick), `metrics` (the same counters for
Prometheus, on `metrics_listen`), [`prometheus`] (the scrape endpoint itself, which the
trainer's run serves too).

The async side (tokio) only moves small messages; all pixel work is on the producer's threads.
Everything a peer sends is checked, and a bad message costs that peer its connection, never the
daemon (invariant 7).
*/

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shard_tool::Dataset;

use crate::wire::protocol::{SplitInfo, Stats};

mod config;
mod connection;
mod handler;
mod listener;
mod local;
mod metrics;
mod producer;
pub mod prometheus;
mod session;
mod share;
mod stats;
mod trim;

pub use config::{MemoryBudget, ServeConfig, ServeError, default_socket};
pub use listener::Server;
pub use local::LocalServer;
pub use trim::single_arena;

/// State shared by every connection and producer.
struct Shared {
    config: ServeConfig,
    workers: u32,
    /// The decode turns every producer's workers take, shared fairly.
    shares: Arc<share::Shares>,
    /// Gives the heap of ended clients back to the system.
    trim: trim::Trim,
    dataset: Arc<Dataset>,
    /// Each split's size and labels, read once at start.
    splits: BTreeMap<String, SplitInfo>,
    /// Job groups still gathering their ranks.
    groups: Mutex<producer::Groups>,
    counters: stats::Counters,
    next_id: AtomicU64,
    /// Bytes all rings together may take.
    memory_budget: u64,
    /// Open connections per peer uid (for `max_clients_per_uid`).
    per_uid: Arc<Mutex<std::collections::HashMap<u32, u32>>>,
    /// One ring is made at a time: allocating it is the kernel zeroing up to `max_ring_bytes`,
    /// and clients that connect together (or over and over) must not take every core from the
    /// producers of the clients already served.
    ring_builds: Mutex<()>,
    /// Ring bytes and clients each uid may still start without waiting
    /// (`ring_bytes_per_s_per_uid`, `clients_per_s_per_uid`).
    ring_rates: Mutex<std::collections::HashMap<u32, RingRate>>,
}

/// Two token buckets of one uid, spent by each ring made: bytes, refilled at
/// `ring_bytes_per_s_per_uid` up to the memory budget, and clients, refilled at
/// `clients_per_s_per_uid` up to `max_clients` (so a whole job can attach at once).
struct RingRate {
    bytes: f64,
    clients: f64,
    at: std::time::Instant,
}

/// One token bucket's part of [`Shared::ring_wait`]: what is left after spending `cost` from
/// `available` refilled at `rate` over `elapsed` seconds up to `burst`, and how long to wait
/// for it (0: no limit).
fn bucket(available: f64, rate: f64, burst: f64, elapsed: f64, cost: f64) -> (f64, Duration) {
    if rate <= 0.0 {
        return (available, Duration::ZERO);
    }
    let left = (available + rate * elapsed).min(burst) - cost;
    (left, Duration::from_secs_f64((-left / rate).max(0.0)))
}

/// The longest a hello waits for its ring bytes; past it the hello is refused (the client's own
/// handshake timeout is 10 s).
const MAX_RING_WAIT: Duration = Duration::from_secs(5);

/// One of a user's `max_clients_per_uid` connections; given back when dropped.
struct UserPermit {
    uid: u32,
    counts: Arc<Mutex<std::collections::HashMap<u32, u32>>>,
}

impl Drop for UserPermit {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.counts.lock()
            && let Some(n) = counts.get_mut(&self.uid)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

impl Shared {
    /// A snapshot of the statistics.
    fn stats(&self) -> Stats {
        Stats {
            memory_budget: self.memory_budget,
            ..self.counters.snapshot(self.workers)
        }
    }

    /// The statistics as peer `uid` may see them: every client for root and for the daemon's
    /// own user, otherwise only that user's (job ids, pids and uids are not everyone's
    /// business on a shared machine).
    fn stats_for(&self, uid: u32) -> Stats {
        visible_to(self.stats(), uid, nix::unistd::geteuid().as_raw())
    }

    /// One of user `uid`'s connections, or the refusal when it has
    /// [`ServeConfig::clients_per_uid`].
    fn user_permit(&self, uid: u32) -> Result<UserPermit, connection::Refusal> {
        let max = self.config.clients_per_uid();
        let mut counts = self
            .per_uid
            .lock()
            .map_err(|_| connection::Refusal::Internal("per-user counts poisoned"))?;
        let n = counts.entry(uid).or_insert(0);
        if *n >= max {
            return Err(connection::Refusal::UserBusy { uid, max });
        }
        *n += 1;
        Ok(UserPermit {
            uid,
            counts: Arc::clone(&self.per_uid),
        })
    }

    /// Spends one client and `bytes` of `uid`'s rates of starting clients and allocating
    /// rings: how long to wait before making the ring (zero while the bursts last), or a
    /// refusal when that is longer than [`MAX_RING_WAIT`].
    fn ring_wait(&self, uid: u32, bytes: u64) -> Result<Duration, connection::Refusal> {
        let config = &self.config;
        let (byte_rate, byte_burst) = (
            config.ring_bytes_per_s_per_uid as f64,
            self.memory_budget as f64,
        );
        let (client_rate, client_burst) = (
            f64::from(config.clients_per_s_per_uid),
            f64::from(config.max_clients),
        );
        let now = std::time::Instant::now();
        let mut rates = self
            .ring_rates
            .lock()
            .map_err(|_| connection::Refusal::Internal("ring rates poisoned"))?;
        let rate = rates.entry(uid).or_insert(RingRate {
            bytes: byte_burst,
            clients: client_burst,
            at: now,
        });
        let elapsed = (now - rate.at).as_secs_f64();
        let (bytes_left, bytes_wait) =
            bucket(rate.bytes, byte_rate, byte_burst, elapsed, bytes as f64);
        let (clients_left, clients_wait) =
            bucket(rate.clients, client_rate, client_burst, elapsed, 1.0);
        if bytes_wait > MAX_RING_WAIT {
            return Err(connection::Refusal::RingRate {
                uid,
                rate: config.ring_bytes_per_s_per_uid,
            });
        }
        if clients_wait > MAX_RING_WAIT {
            return Err(connection::Refusal::ClientRate {
                uid,
                rate: config.clients_per_s_per_uid,
            });
        }
        // Reserved now, so the next hello waits behind this one.
        *rate = RingRate {
            bytes: bytes_left,
            clients: clients_left,
            at: now,
        };
        Ok(bytes_wait.max(clients_wait))
    }

    /// The id of a new connection.
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// How long a peer has for each step of its handshake.
    fn handshake_timeout(&self) -> Duration {
        // validate() bounds it to 0.1..=3600 s.
        Duration::from_secs_f64(self.config.handshake_timeout_s.clamp(0.1, 3600.0))
    }

    /// How long a status connection may stay silent.
    fn idle_timeout(&self) -> Duration {
        // validate() bounds it to 0.1..=86400 s.
        Duration::from_secs_f64(self.config.idle_timeout_s.clamp(0.1, 86_400.0))
    }

    /// How long a stream may hold every slot without releasing one.
    fn stall_timeout(&self) -> Duration {
        // validate() bounds it to 0.1..=604800 s.
        Duration::from_secs_f64(self.config.stall_timeout_s.clamp(0.1, 604_800.0))
    }

    /// The dataset's split names, for messages.
    fn split_names(&self) -> String {
        let names: Vec<&str> = self.splits.keys().map(String::as_str).collect();
        names.join(", ")
    }
}

/// `stats` as peer `uid` may see them, on a daemon running as `own`.
fn visible_to(mut stats: Stats, uid: u32, own: u32) -> Stats {
    if uid != 0 && uid != own {
        stats.clients.retain(|c| c.uid == uid);
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::protocol::ClientStats;

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst_and_says_how_long_to_wait() {
        // 16 a second, a burst of 16: the 16 first are free, the 17th waits 1/16 s.
        let (left, wait) = bucket(16.0, 16.0, 16.0, 0.0, 16.0);
        assert_eq!((left, wait), (0.0, Duration::ZERO));
        let (left, wait) = bucket(left, 16.0, 16.0, 0.0, 1.0);
        assert_eq!((left, wait), (-1.0, Duration::from_secs_f64(1.0 / 16.0)));
        // Ten idle seconds refill it to the burst, not beyond.
        assert_eq!(bucket(-1.0, 16.0, 16.0, 10.0, 1.0).0, 15.0);
        // 100 reserved at once: the last waits 100/16 s, past MAX_RING_WAIT (refused).
        assert!(bucket(0.0, 16.0, 16.0, 0.0, 100.0).1 > MAX_RING_WAIT);
        // Rate 0: no limit.
        assert_eq!(bucket(0.0, 0.0, 16.0, 0.0, 1e9).1, Duration::ZERO);
    }

    #[test]
    fn users_see_their_own_clients_and_root_sees_all() {
        let client = |uid| ClientStats {
            uid,
            ..ClientStats::default()
        };
        let stats = Stats {
            clients: vec![client(1000), client(1001), client(1000)],
            ..Stats::default()
        };
        let uids = |s: Stats| s.clients.iter().map(|c| c.uid).collect::<Vec<_>>();
        assert_eq!(uids(visible_to(stats.clone(), 1000, 500)), [1000, 1000]);
        assert_eq!(
            uids(visible_to(stats.clone(), 1002, 500)),
            Vec::<u32>::new()
        );
        assert_eq!(uids(visible_to(stats.clone(), 0, 500)).len(), 3);
        assert_eq!(uids(visible_to(stats, 500, 500)).len(), 3);
    }
}
