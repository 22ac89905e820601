/*!
The loader daemon: a Unix socket, one shared-memory ring per client, one producer per job
group (the ranks of a job that attach together; see `producer`).

Each accepted connection is checked (SO_PEERCRED against the allowed uids and gids), shakes
hands (preamble, hello), and gets its own [`Ring`](crate::ring::Ring) whose descriptor travels with the `welcome`
frame. A producer thread then fills free slots in (epoch, step) order with a
[`BatchMaker`](crate::batch::BatchMaker) writing straight into the shared memory, and announces
each one; the client's `release` returns the slot. When every slot is full the producer waits:
that is the backpressure, and the bound on memory (DESIGN.md invariant 4).

By role, as mini-redis is laid out: [`config`](ServeConfig) (settings, checks, memory
budget), `listener` ([`Server`]: the socket, a permit per connection), `local`
([`LocalServer`]), `connection` (frames, who the peer is, typed refusals), `handler` (what the daemon
does with a connection: the peer check, the handshake, then a status answer or a session),
`session` (one client's job, ring and relay), `producer` (job groups and the threads that fill their rings
through the [`BatchStream`](crate::stream::BatchStream)), `stats` (counters, `loader status`,
systemd's tick).

The async side (tokio) only moves small messages; all pixel work is on the producer's threads.
Everything a peer sends is checked, and a bad message costs that peer its connection, never the
daemon (invariant 7).
*/

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shard_tool::Dataset;

use crate::protocol::{SplitInfo, Stats};

mod config;
mod connection;
mod handler;
mod listener;
mod local;
mod producer;
mod session;
mod stats;

pub use config::{MemoryBudget, ServeConfig, ServeError, default_socket};
pub use listener::Server;
pub use local::LocalServer;

/// State shared by every connection and producer.
struct Shared {
    config: ServeConfig,
    workers: u32,
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
    /// Ring bytes each uid may still allocate without waiting (`ring_bytes_per_s_per_uid`).
    ring_rates: Mutex<std::collections::HashMap<u32, RingRate>>,
}

/// A token bucket of ring bytes: refilled at the configured rate, up to the memory budget (so a
/// whole job can attach at once), spent by each ring made.
struct RingRate {
    available: f64,
    at: std::time::Instant,
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

    /// One of user `uid`'s connections, or the refusal when it has `max_clients_per_uid`
    /// (0: no per-user limit).
    fn user_permit(&self, uid: u32) -> Result<UserPermit, connection::Refusal> {
        let max = self.config.max_clients_per_uid;
        let mut counts = self
            .per_uid
            .lock()
            .map_err(|_| connection::Refusal::Internal("per-user counts poisoned"))?;
        let n = counts.entry(uid).or_insert(0);
        if max > 0 && *n >= max {
            return Err(connection::Refusal::UserBusy { uid, max });
        }
        *n += 1;
        Ok(UserPermit {
            uid,
            counts: Arc::clone(&self.per_uid),
        })
    }

    /// Spends `bytes` of `uid`'s ring allocation rate: how long to wait before making the ring
    /// (zero while the burst lasts), or a refusal when that is longer than [`MAX_RING_WAIT`].
    fn ring_wait(&self, uid: u32, bytes: u64) -> Result<Duration, connection::Refusal> {
        let rate = self.config.ring_bytes_per_s_per_uid as f64;
        if rate <= 0.0 {
            return Ok(Duration::ZERO);
        }
        let burst = self.memory_budget as f64;
        let now = std::time::Instant::now();
        let mut rates = self
            .ring_rates
            .lock()
            .map_err(|_| connection::Refusal::Internal("ring rates poisoned"))?;
        let bucket = rates.entry(uid).or_insert(RingRate {
            available: burst,
            at: now,
        });
        let refilled = bucket.available + rate * (now - bucket.at).as_secs_f64();
        let left = refilled.min(burst) - bytes as f64;
        let wait = Duration::from_secs_f64((-left / rate).max(0.0));
        if wait > MAX_RING_WAIT {
            return Err(connection::Refusal::RingRate {
                uid,
                rate: self.config.ring_bytes_per_s_per_uid,
            });
        }
        // The bytes are reserved now, so the next hello waits behind this one.
        bucket.available = left;
        bucket.at = now;
        Ok(wait)
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
    use crate::protocol::ClientStats;

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
