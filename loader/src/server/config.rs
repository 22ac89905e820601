//! The daemon's settings (`configs/loader.toml`, `loader serve` flags), their checks, and the
//! memory budget of its rings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::request::transform::SettingError;

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// No shard directory was given.
    #[error("no shards: pass --shards DIR or set `shards` in the config file")]
    NoShards,
    /// The dataset did not open.
    #[error("opening the dataset {path}: {source}")]
    Dataset {
        /// Its directory.
        path: PathBuf,
        /// Why.
        source: shard_tool::Error,
    },
    /// Another daemon answers on the socket.
    #[error("another loader is already serving on {0}; stop it or pass another --socket")]
    InUse(PathBuf),
    /// The socket path holds something that is not a socket.
    #[error("{0} exists and is not a socket; remove it or pass another --socket")]
    NotASocket(PathBuf),
    /// Binding or preparing the socket failed.
    #[error("socket {path}: {source}")]
    Socket {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// The rings of `max_clients` clients could outgrow the memory budget.
    #[error(
        "max_clients × max_ring_bytes = {clients} × {} = {} is over the rings' memory budget of \
         {} ({}); lower max_clients or max_ring_bytes, or set memory_budget_bytes",
        gib(*ring_bytes), gib(*clients as u64 * *ring_bytes), gib(budget.bytes), budget.source()
    )]
    OverBudget {
        /// `max_clients`.
        clients: u32,
        /// `max_ring_bytes`.
        ring_bytes: u64,
        /// The budget.
        budget: MemoryBudget,
    },
    /// A group of `allow_groups` does not exist here.
    #[error("allow_groups: no group named {0:?} on this system")]
    NoGroup(String),
    /// The in-process daemon's thread or runtime could not start.
    #[error("starting the in-process loader's {what}: {source}")]
    Start {
        /// Thread or runtime.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The in-process daemon's thread ended before saying whether it was serving.
    #[error("the in-process loader's thread stopped at start")]
    Stopped,
    /// The metrics endpoint (`metrics_listen`) could not listen.
    #[error(transparent)]
    Metrics(#[from] crate::server::prometheus::PrometheusError),
}

impl ServeError {
    /// Whether what the user handed the daemon is at fault (no or no usable dataset, a socket
    /// path taken, a setting out of range), rather than the machine at run time.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ServeError::NoShards
                | ServeError::Dataset { .. }
                | ServeError::InUse(_)
                | ServeError::NotASocket(_)
                | ServeError::Setting(_)
                | ServeError::OverBudget { .. }
                | ServeError::NoGroup(_)
                | ServeError::Metrics(_)
        )
    }
}

/// The daemon's settings: `configs/loader.toml`, overridden by `loader serve` flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Dataset directory made by `shard-tool pack`.
    pub shards: Option<PathBuf>,
    /// Socket path (default: [`default_socket`]).
    pub socket: Option<PathBuf>,
    /// Worker threads per client (0: one per available core).
    pub workers: u32,
    /// Images decoded at once over all clients (0: one per core, or `workers` if more). A
    /// worker takes one of these turns per image; when clients wait, a free turn goes to the
    /// user given the fewest so far, then to that user's client given the fewest, so no user,
    /// and no client of a user, takes more than its share of the cores (`server::share`).
    pub decode_turns: u32,
    /// Ring slots when the client does not ask for a number. The default, twice
    /// [`crate::batches::batch::STEPS_PER_FILL`], lets the producer fill whole multi-step calls while a
    /// client that keeps up still holds the previous ones (with 4, fills shrank to a step or
    /// two and the workers idled at each batch's end: ring / in-process 0.92 instead of 1.0).
    pub slots: u32,
    /// Most slots a client may ask for.
    pub max_slots: u32,
    /// Most bytes of one client's ring.
    pub max_ring_bytes: u64,
    /// Most connections at once, of any kind (a semaphore taken at accept: a connection that
    /// never says hello holds one until `handshake_timeout_s`).
    pub max_clients: u32,
    /// Most connections one user (peer uid) may hold at once, so that one user cannot take
    /// every `max_clients` permit on a shared machine; 0: three quarters of `max_clients`
    /// (12 of 16: an 8-rank job and its evaluation fit). `max_clients` itself: no per-user
    /// limit.
    pub max_clients_per_uid: u32,
    /// Bytes all rings together may take (`max_clients × max_ring_bytes` must fit); 0: half of
    /// the machine's physical memory.
    pub memory_budget_bytes: u64,
    /// User ids allowed to connect (empty, with `allow_gids` empty: the daemon's own uid).
    pub allow_uids: Vec<u32>,
    /// Group ids allowed to connect (a peer's primary or supplementary group).
    pub allow_gids: Vec<u32>,
    /// Group names allowed to connect, resolved at start (e.g. `["rsb"]`).
    pub allow_groups: Vec<String>,
    /// Mode of the socket file.
    pub socket_mode: u32,
    /// Seconds a new connection has to say hello.
    pub handshake_timeout_s: f64,
    /// Seconds a status connection (`loader status`, monitoring) may stay silent before the
    /// daemon closes it, so idle ones cannot pile up to `max_clients`.
    pub idle_timeout_s: f64,
    /// Seconds a trainer may hold every slot of its ring without releasing one before the
    /// daemon closes its stream. Its client reconnects at its next batch, at the same position,
    /// so a slow trainer (a long evaluation) loses a reconnect and nothing else; a stuck one
    /// stops holding a ring and a connection.
    pub stall_timeout_s: f64,
    /// Ring bytes per second one uid may allocate (0: no limit), after a burst of the whole
    /// memory budget; a hello waits up to 5 s for its share, or is refused. Allocating a ring is
    /// the kernel zeroing it: a user who connects and leaves over and over must not take the
    /// cores of everyone's producers.
    pub ring_bytes_per_s_per_uid: u64,
    /// Clients per second one uid may start (0: no limit), after a burst of `max_clients`
    /// (a whole job attaches at once); a hello waits up to 5 s for its turn, or is refused.
    /// Each client costs the daemon a ring, a producer and its first images whatever its
    /// size: a user connecting and leaving in a loop with small rings must not take the cores
    /// of everyone's producers either.
    pub clients_per_s_per_uid: u32,
    /// Seconds the first rank of a job waits for the job's other ranks before its batches
    /// start; ranks that attach together share decodes (see `server::producer`).
    pub group_wait_s: f64,
    /// Where to serve Prometheus metrics over HTTP (`GET /metrics`), e.g. "127.0.0.1:9464";
    /// unset: no endpoint. Anyone who can reach the address can read the metrics (job ids
    /// included): keep it on loopback unless the scraper is elsewhere and the network is
    /// trusted.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            shards: None,
            socket: None,
            workers: 0,
            decode_turns: 0,
            slots: 2 * crate::batches::batch::STEPS_PER_FILL as u32,
            max_slots: 32,
            // 8 slots of A1 at 256 per rank (308 MB) fit; 16 × 512 MiB = 8 GiB, which the
            // automatic budget allows from 16 GiB of memory.
            max_ring_bytes: 512 << 20,
            max_clients: 16,
            memory_budget_bytes: 0,
            max_clients_per_uid: 0,
            allow_uids: Vec::new(),
            allow_gids: Vec::new(),
            allow_groups: Vec::new(),
            socket_mode: 0o660,
            handshake_timeout_s: 10.0,
            idle_timeout_s: 60.0,
            stall_timeout_s: 1800.0,
            ring_bytes_per_s_per_uid: 1 << 30,
            clients_per_s_per_uid: 16,
            group_wait_s: 5.0,
            metrics_listen: None,
        }
    }
}

impl ServeConfig {
    /// The connections one user may hold: `max_clients_per_uid`, or three quarters of
    /// `max_clients` (at least one) when that is 0.
    pub fn clients_per_uid(&self) -> u32 {
        match self.max_clients_per_uid {
            0 => (self.max_clients - self.max_clients / 4).max(1),
            n => n,
        }
    }

    /// Checks every number against what the daemon can run (a timeout of `inf` would panic
    /// where it becomes a `Duration`; zero clients would serve nobody).
    ///
    /// # Errors
    /// [`ServeError::Setting`] naming the first key out of range (values in Rust's debug
    /// form: `1e300`, not its 301 digits).
    pub fn validate(&self) -> Result<(), ServeError> {
        SettingError::within("workers", self.workers, 0..=1024)?;
        SettingError::within("decode_turns", self.decode_turns, 0..=4096)?;
        SettingError::within("max_slots", self.max_slots, 1..=1024)?;
        SettingError::within("slots", self.slots, 1..=self.max_slots)?;
        SettingError::within("max_ring_bytes", self.max_ring_bytes, 1 << 20..=1 << 40)?;
        SettingError::within("max_clients", self.max_clients, 1..=4096)?;
        SettingError::within(
            "max_clients_per_uid",
            self.max_clients_per_uid,
            0..=self.max_clients,
        )?;
        SettingError::within("socket_mode", self.socket_mode, 0..=0o777)?;
        // NaN is outside every range.
        SettingError::within(
            "handshake_timeout_s",
            self.handshake_timeout_s,
            0.1..=3600.0,
        )?;
        SettingError::within("group_wait_s", self.group_wait_s, 0.0..=3600.0)?;
        SettingError::within("idle_timeout_s", self.idle_timeout_s, 0.1..=86400.0)?;
        SettingError::within("stall_timeout_s", self.stall_timeout_s, 0.1..=604_800.0)?;
        SettingError::within(
            "ring_bytes_per_s_per_uid",
            self.ring_bytes_per_s_per_uid,
            0..=1 << 40,
        )?;
        SettingError::within(
            "clients_per_s_per_uid",
            self.clients_per_s_per_uid,
            0..=100_000,
        )?;
        SettingError::within("memory_budget_bytes", self.memory_budget_bytes, 0..=1 << 50)?;
        let budget = self.memory_budget();
        if u64::from(self.max_clients) * self.max_ring_bytes > budget.bytes {
            return Err(ServeError::OverBudget {
                clients: self.max_clients,
                ring_bytes: self.max_ring_bytes,
                budget,
            });
        }
        Ok(())
    }

    /// The memory all rings together may take: `memory_budget_bytes`, or half of the
    /// machine's physical memory when that is 0 (the rest is for the trainers, the page cache
    /// of the shards and the decode buffers).
    pub fn memory_budget(&self) -> MemoryBudget {
        let physical = physical_memory();
        match (self.memory_budget_bytes, physical) {
            (0, Some(p)) => MemoryBudget {
                bytes: p / 2,
                physical,
                automatic: true,
            },
            // Unknown memory: nothing to compare with; the per-ring limit still holds.
            (0, None) => MemoryBudget {
                bytes: u64::MAX,
                physical,
                automatic: true,
            },
            (bytes, _) => MemoryBudget {
                bytes,
                physical,
                automatic: false,
            },
        }
    }
}

/// The memory the daemon's rings may take together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// Bytes.
    pub bytes: u64,
    /// The machine's physical memory, where known.
    pub physical: Option<u64>,
    /// Whether it was derived from `physical` (`memory_budget_bytes = 0`).
    pub automatic: bool,
}

impl MemoryBudget {
    /// Where the figure comes from, for messages.
    pub fn source(&self) -> String {
        match (self.automatic, self.physical) {
            (true, Some(p)) => format!("half of this machine's {}", gib(p)),
            (true, None) => "this machine's memory is unknown".to_owned(),
            (false, _) => "memory_budget_bytes".to_owned(),
        }
    }
}

/// Bytes in GiB, for messages.
pub(crate) fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Physical memory of the machine.
fn physical_memory() -> Option<u64> {
    // SAFETY: sysconf reads a system constant; no memory is passed.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && page > 0).then(|| pages as u64 * page as u64)
}

/// Where `serve` listens and `status` looks by default: `$RUNTIME_DIRECTORY/loader.sock` (set
/// by systemd's `RuntimeDirectory=`), else `$XDG_RUNTIME_DIR/rsb/loader.sock`, else
/// `/run/rsb/loader.sock`.
pub fn default_socket() -> PathBuf {
    let from = |var: &str| {
        std::env::var_os(var)
            .and_then(|v| {
                v.to_str()
                    .and_then(|s| s.split(':').next())
                    .map(PathBuf::from)
            })
            .filter(|p| !p.as_os_str().is_empty())
    };
    if let Some(dir) = from("RUNTIME_DIRECTORY") {
        dir.join("loader.sock")
    } else if let Some(dir) = from("XDG_RUNTIME_DIR") {
        dir.join("rsb").join("loader.sock")
    } else {
        PathBuf::from("/run/rsb/loader.sock")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_shipped_config_parses_and_unknown_keys_are_errors() {
        let text = include_str!("../../../configs/loader.toml");
        let c: ServeConfig = toml::from_str(text).unwrap();
        assert_eq!(c.slots, ServeConfig::default().slots);
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!(c.allow_groups, ["rsb"]);
        assert_eq!(
            c.shards.as_deref(),
            Some(Path::new("/data/imagenet-shards"))
        );
        let e = toml::from_str::<ServeConfig>("slot = 4").unwrap_err();
        assert!(e.to_string().contains("slot"), "{e}");
        // An empty file is the defaults.
        assert_eq!(
            toml::from_str::<ServeConfig>("").unwrap(),
            ServeConfig::default()
        );
    }

    #[test]
    fn the_rings_of_all_clients_must_fit_the_memory_budget() {
        let c = ServeConfig {
            max_clients: 4,
            max_ring_bytes: 1 << 30,
            memory_budget_bytes: 3 << 30,
            ..ServeConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("4 × 1.0 GiB = 4.0 GiB is over the rings' memory budget of 3.0 GiB"),
            "{e}"
        );
        assert!(e.contains("memory_budget_bytes"), "{e}");
        ServeConfig {
            memory_budget_bytes: 4 << 30,
            ..c
        }
        .validate()
        .unwrap();
        // The automatic budget is half of what the machine has.
        let auto = ServeConfig::default().memory_budget();
        assert!(auto.automatic);
        if let Some(p) = auto.physical {
            assert_eq!(auto.bytes, p / 2);
        }
    }
}
