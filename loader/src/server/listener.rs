//! The listening socket: binding it (replacing a stale one, never a live one), accepting with
//! a permit per connection, and the accept loop of [`Server`].

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shard_tool::Dataset;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;

use super::config::{ServeConfig, ServeError, default_socket, gib};
use super::connection::Refusal;
use super::producer::Groups;
use super::stats::Counters;
use super::{Shared, handler};
use crate::wire::protocol::{SplitInfo, Stats};

/// A bound, not yet serving daemon.
pub struct Server {
    shared: Arc<Shared>,
    listener: UnixListener,
    socket: PathBuf,
    /// One per connection, taken at accept: `max_clients`.
    permits: Arc<Semaphore>,
    /// The Prometheus endpoint's socket (`metrics_listen`), bound with the Unix socket.
    metrics: Option<std::net::TcpListener>,
}

impl Server {
    /// Opens the dataset and binds the socket (replacing a stale one). Must run inside a tokio
    /// runtime.
    pub fn bind(mut config: ServeConfig) -> Result<Server, ServeError> {
        config.validate()?;
        let shards = config.shards.clone().ok_or(ServeError::NoShards)?;
        for name in &config.allow_groups {
            match nix::unistd::Group::from_name(name) {
                Ok(Some(g)) => config.allow_gids.push(g.gid.as_raw()),
                _ => return Err(ServeError::NoGroup(name.clone())),
            }
        }
        if config.allow_uids.is_empty() && config.allow_gids.is_empty() {
            config.allow_uids.push(nix::unistd::geteuid().as_raw());
        }
        // SAFETY: shards are read-only once packed; the daemon never writes them.
        let dataset = unsafe { Dataset::open(&shards) }.map_err(|source| ServeError::Dataset {
            path: shards.clone(),
            source,
        })?;
        let splits = dataset
            .splits()
            .iter()
            .map(|split| (split.name().to_owned(), SplitInfo::of(&dataset, split)))
            .collect();
        // Before the Unix socket: a port that is taken fails the start with nothing to undo.
        let metrics = config
            .metrics_listen
            .map(|addr| crate::server::prometheus::bind(addr, "metrics_listen"))
            .transpose()?;
        let socket = config.socket.clone().unwrap_or_else(default_socket);
        let listener = bind_socket(&socket, config.socket_mode)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let workers = match config.workers {
            0 => cores,
            n => n,
        };
        let budget = config.memory_budget();
        tracing::info!(
            "rings: at most {} connections × {} = {}, within the memory budget of {} ({})",
            config.max_clients,
            gib(config.max_ring_bytes),
            gib(u64::from(config.max_clients) * config.max_ring_bytes),
            gib(budget.bytes),
            budget.source()
        );
        let permits = Arc::new(Semaphore::new(config.max_clients as usize));
        // Every core, whatever share of them one client's workers are (8 ranks of 2 workers
        // each on 16 cores fill with all 16).
        let turns = match config.decode_turns {
            0 => cores.max(workers) as usize,
            n => n as usize,
        };
        tracing::info!(
            "{turns} decode turns, shared fairly among users and then among each user's clients"
        );
        Ok(Server {
            shared: Arc::new(Shared {
                config,
                workers,
                shares: super::share::Shares::new(turns),
                trim: super::trim::Trim::default(),
                dataset: Arc::new(dataset),
                splits,
                groups: Mutex::new(Groups::default()),
                counters: Counters::new(),
                next_id: AtomicU64::new(0),
                memory_budget: budget.bytes,
                per_uid: Arc::new(Mutex::new(std::collections::HashMap::new())),
                ring_builds: Mutex::new(()),
                ring_rates: Mutex::new(std::collections::HashMap::new()),
            }),
            listener,
            socket,
            permits,
            metrics,
        })
    }

    /// Where the Prometheus endpoint listens (`metrics_listen`; its port when that was 0).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Serves until `shutdown` completes, then removes the socket. Connections in progress are
    /// dropped with the runtime.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let shared = Arc::clone(&self.shared);
        let exporter = self.metrics.take().map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!("Prometheus metrics on http://{addr}/metrics");
            }
            let metrics = Arc::new(super::metrics::DaemonMetrics::new(Arc::clone(&shared)));
            tokio::spawn(async move {
                if let Err(e) = crate::server::prometheus::serve(listener, metrics).await {
                    tracing::warn!("{e}; the daemon goes on serving batches without it");
                }
            })
        });
        let ticker = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move { shared.counters.tick(shared.workers).await })
        };
        let trimmer = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move { shared.trim.every_second().await })
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    // The permit is taken before the handshake, so that peers that never say hello
                    // count against `max_clients` too; it is released when the connection ends.
                    Ok((stream, _)) => {
                        // A peer without credentials is refused at its handshake.
                        let user = match stream.peer_cred() {
                            Ok(cred) => shared.user_permit(cred.uid()).map(Some),
                            Err(_) => Ok(None),
                        };
                        match (Arc::clone(&self.permits).try_acquire_owned(), user) {
                            (Ok(permit), Ok(user)) => {
                                let shared = Arc::clone(&shared);
                                tokio::spawn(async move {
                                    handler::serve(shared, stream).await;
                                    drop((permit, user));
                                });
                            }
                            (Err(_), _) => {
                                let busy = Refusal::Busy(shared.config.max_clients);
                                let shared = Arc::clone(&shared);
                                tokio::spawn(handler::refuse_busy(shared, stream, busy));
                            }
                            (Ok(_), Err(busy)) => {
                                let shared = Arc::clone(&shared);
                                tokio::spawn(handler::refuse_busy(shared, stream, busy));
                            }
                        }
                    }
                    // Out of descriptors and the like: wait instead of spinning.
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = &mut shutdown => break,
            }
        }
        ticker.abort();
        trimmer.abort();
        if let Some(exporter) = exporter {
            exporter.abort();
        }
        if let Err(e) = std::fs::remove_file(&self.socket) {
            tracing::warn!("removing {}: {e}", self.socket.display());
        }
    }
}

pub(super) fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(ServeError::NotASocket(path.to_path_buf()));
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::InUse(path.to_path_buf()));
            }
            // Left by a daemon that was killed: nobody listens on it.
            std::fs::remove_file(path).map_err(err)?;
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    // By name but never through a symlink: a user who can write the socket's folder could
    // swap a link to a file of ours in after the bind, and a chmod that followed it would
    // give that file the socket's mode.
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        path,
        nix::sys::stat::Mode::from_bits_truncate(mode as nix::libc::mode_t),
        nix::sys::stat::FchmodatFlags::NoFollowSymlink,
    )
    .map_err(|e| err(e.into()))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A daemon in this process on a tiny dataset under `dir`, with `config`'s settings.
    fn daemon(dir: &Path, config: ServeConfig) -> crate::server::LocalServer {
        let shards = crate::testutil::packed(dir, 2, 3, 16);
        crate::server::LocalServer::start(ServeConfig {
            shards: Some(shards),
            ..config
        })
        .unwrap()
    }

    /// With `config`, a peer that connects and never says hello makes the next connection be
    /// refused with `want`; once it leaves, its permit comes back. Returns the statistics
    /// then read.
    fn a_silent_peer_refuses_the_next(
        config: ServeConfig,
        want: &str,
    ) -> crate::wire::protocol::Stats {
        let dir = tempfile::tempdir().unwrap();
        let server = daemon(dir.path(), config);
        let silent = std::os::unix::net::UnixStream::connect(server.socket()).unwrap();
        let e = crate::wire::client::stats(server.socket())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e}");
        drop(silent);
        let t0 = std::time::Instant::now();
        loop {
            match crate::wire::client::stats(server.socket()) {
                Ok(stats) => return stats,
                Err(_) => assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "no permit came back"
                ),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_peer_that_never_says_hello_holds_a_permit_and_the_next_one_is_told_why() {
        let config = ServeConfig {
            max_clients: 1,
            ..ServeConfig::default()
        };
        let stats =
            a_silent_peer_refuses_the_next(config, "maximum of 1 connections (max_clients)");
        assert!(stats.refused >= 1);
        // `loader status` shows the rings' budget.
        assert_eq!(
            stats.memory_budget,
            ServeConfig::default().memory_budget().bytes
        );
    }

    #[test]
    fn one_user_cannot_hold_more_than_its_share_of_connections() {
        let config = ServeConfig {
            max_clients_per_uid: 1,
            ..ServeConfig::default()
        };
        let stats = a_silent_peer_refuses_the_next(
            config,
            "connections to this loader (max_clients_per_uid)",
        );
        assert!(stats.refused >= 1);
        // By default, three quarters of the permits: one user cannot take them all.
        assert_eq!(ServeConfig::default().clients_per_uid(), 12);
        let one = ServeConfig {
            max_clients: 1,
            ..ServeConfig::default()
        };
        assert_eq!(one.clients_per_uid(), 1);
    }

    /// A client of 2-image eval batches through a one-slot ring, from the start, forever.
    fn one_slot(server: &crate::server::LocalServer) -> crate::wire::client::ClientOptions {
        crate::wire::client::ClientOptions {
            socket: server.socket().to_path_buf(),
            job_id: "j".into(),
            job: crate::request::job::JobSpec::single(
                "train",
                crate::request::transform::TransformSpec::preset("eval").unwrap(),
                0,
                2,
            ),
            start: crate::request::job::Position::default(),
            epochs: None,
            slots: Some(1),
            reconnect_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_start_at_or_past_the_last_epoch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let server = daemon(
            dir.path(),
            ServeConfig {
                ..ServeConfig::default()
            },
        );
        let connect = |epoch, epochs| {
            crate::wire::client::Client::connect(crate::wire::client::ClientOptions {
                start: crate::request::job::Position { epoch, step: 0 },
                epochs,
                ..one_slot(&server)
            })
            .err()
            .map(|e| e.to_string())
        };
        // Epoch u32::MAX would wrap to epoch 0 after its last batch.
        let e = connect(u32::MAX, None).unwrap();
        assert!(e.contains("start epoch 4294967295 is not below"), "{e}");
        let e = connect(3, Some(3)).unwrap();
        assert!(
            e.contains("start epoch 3 is not below the job's 3 epochs"),
            "{e}"
        );
        assert_eq!(connect(2, Some(3)), None);
    }

    #[test]
    fn a_stream_whose_client_holds_every_slot_too_long_is_closed_and_resumes_where_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let server = daemon(
            dir.path(),
            ServeConfig {
                stall_timeout_s: 0.3,
                ..ServeConfig::default()
            },
        );
        let mut client = crate::wire::client::Client::connect(one_slot(&server)).unwrap();
        let ids = |b: crate::wire::client::Batch| (b.position, b.ids().to_vec());
        let first = client.next_batch().unwrap().map(ids).unwrap();
        // A trainer that stops reading (a long evaluation): its one slot stays full.
        let held = client.next_batch().unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let stats = crate::wire::client::stats(server.socket()).unwrap();
        assert!(stats.clients.is_empty(), "the stream was not closed");
        let second = ids(held);
        let third = client.next_batch().unwrap().map(ids).unwrap();
        assert_eq!(client.reconnects(), 1);
        assert_eq!(first.0.step, 0);
        assert_eq!(second.0.step, 1);
        assert_eq!(
            third.0.step, 2,
            "the stream did not resume at the next batch"
        );
    }

    #[test]
    fn a_batch_dropped_on_another_thread_releases_its_slot() {
        let dir = tempfile::tempdir().unwrap();
        let server = daemon(dir.path(), ServeConfig::default());
        let mut client = crate::wire::client::Client::connect(one_slot(&server)).unwrap();
        // As a device upload does: the batch goes to another thread, which drops it when done.
        let batch = client.next_batch().unwrap().unwrap();
        let first = batch.position;
        // The images lie inside the memory a GPU runtime would register.
        let (ring, images) = (
            batch.ring_memory().as_ptr_range(),
            batch.images().as_ptr_range(),
        );
        assert!(ring.start <= images.start && images.end <= ring.end);
        assert!(!batch.images().is_empty());
        std::thread::spawn(move || drop(batch)).join().unwrap();
        // The ring has one slot: the next batch comes only if the release reached the daemon.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let next = client.next_batch().map(|b| b.map(|b| b.position));
            let _ = tx.send(next.map_err(|e| e.to_string()));
        });
        let second = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("no batch after the release")
            .unwrap()
            .unwrap();
        assert_eq!((first.step, second.step), (0, 1));
    }

    #[test]
    fn a_user_who_makes_rings_too_fast_waits_for_them_then_is_refused() {
        // A burst of 2 MiB, then `rate`; each one-slot ring here is 2 × 224² × 3 bytes and a
        // page or two: 0.3 MB.
        let limited = |dir: &Path, rate: u64| {
            daemon(
                dir,
                ServeConfig {
                    max_clients: 2,
                    max_ring_bytes: 1 << 20,
                    memory_budget_bytes: 2 << 20,
                    ring_bytes_per_s_per_uid: rate,
                    ..ServeConfig::default()
                },
            )
        };
        let dir = tempfile::tempdir().unwrap();
        let server = limited(dir.path(), 1 << 20);
        let ring = {
            let c = crate::wire::client::Client::connect(one_slot(&server)).unwrap();
            c.layout().unwrap().total_bytes()
        };
        let t0 = std::time::Instant::now();
        let rings = 12;
        for _ in 1..rings {
            drop(crate::wire::client::Client::connect(one_slot(&server)).unwrap());
        }
        // Whatever the machine's speed, no faster than the rate after the burst.
        let least = (rings * ring).saturating_sub(2 << 20) as f64 / f64::from(1 << 20);
        let took = t0.elapsed().as_secs_f64();
        assert!(
            took >= least * 0.9,
            "{rings} rings in {took:.2} s, the rate allows {least:.2}"
        );

        // At 64 KiB/s, once the burst is spent, a 3-slot ring is 14 s away: refused at once.
        let dir = tempfile::tempdir().unwrap();
        let server = limited(dir.path(), 64 << 10);
        for _ in 0..6 {
            drop(crate::wire::client::Client::connect(one_slot(&server)).unwrap());
        }
        let e = crate::wire::client::Client::connect(crate::wire::client::ClientOptions {
            slots: Some(3),
            ..one_slot(&server)
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("ring_bytes_per_s_per_uid"), "{e}");
    }

    #[test]
    fn a_user_who_starts_clients_too_fast_waits_for_them() {
        // A burst of max_clients (2), then 4 clients a second, however small their rings.
        let dir = tempfile::tempdir().unwrap();
        let server = daemon(
            dir.path(),
            ServeConfig {
                max_clients: 2,
                clients_per_s_per_uid: 4,
                ..ServeConfig::default()
            },
        );
        let t0 = std::time::Instant::now();
        for _ in 0..6 {
            drop(crate::wire::client::Client::connect(one_slot(&server)).unwrap());
        }
        let took = t0.elapsed().as_secs_f64();
        // Whatever the machine's speed, no faster than the rate after the burst: (6 - 2) / 4.
        assert!(took >= 0.9, "6 clients in {took:.2} s, the rate allows 1.0");
    }

    #[test]
    fn an_idle_status_connection_is_closed_with_a_reason() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let server = daemon(
            dir.path(),
            ServeConfig {
                idle_timeout_s: 0.2,
                ..ServeConfig::default()
            },
        );
        let mut s = std::os::unix::net::UnixStream::connect(server.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&crate::wire::protocol::preamble()).unwrap();
        crate::wire::frame::write_frame(&mut s, &crate::wire::protocol::Request::Stats).unwrap();
        let mut p = [0u8; 12];
        s.read_exact(&mut p).unwrap();
        let mut frames = crate::wire::frame::FrameReader::<crate::wire::protocol::Reply>::default();
        assert!(matches!(
            frames.read(&mut s).unwrap(),
            crate::wire::protocol::Reply::Stats(_)
        ));
        // Silent from here on: the daemon says why and closes.
        match frames.read(&mut s).unwrap() {
            crate::wire::protocol::Reply::Error { message } => {
                assert!(
                    message.contains("no request on a status connection"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(frames.read(&mut s).is_err(), "still open");
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let live = bind_socket(&path, 0o660).unwrap();
            assert!(matches!(
                bind_socket(&path, 0o660),
                Err(ServeError::InUse(_))
            ));
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o660);
            drop(live);
            // The file is left behind, as after a kill -9: nobody listens, so it is replaced.
            assert!(path.exists());
            bind_socket(&path, 0o600).unwrap();
            std::fs::remove_file(&path).unwrap();
            std::fs::write(&path, b"not a socket").unwrap();
            assert!(matches!(
                bind_socket(&path, 0o660),
                Err(ServeError::NotASocket(_))
            ));
        });
    }
}
