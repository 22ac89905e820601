/*!
The loader daemon: a Unix socket, one shared-memory ring per client, one producer per job
group (the ranks of a job that attach together; see [`producer`]).

Each accepted connection is checked (SO_PEERCRED against the allowed uids and gids), shakes
hands (preamble, hello), and gets its own [`Ring`] whose descriptor travels with the `welcome`
frame. A producer thread then fills free slots in (epoch, step) order with a
[`BatchMaker`](crate::batch::BatchMaker) writing straight into the shared memory, and announces
each one; the client's `release` returns the slot. When every slot is full the producer waits:
that is the backpressure, and the bound on memory (DESIGN.md invariant 4).

The async side (tokio) only moves small messages; all pixel work is on the producer's threads.
Everything a peer sends is checked, and a bad message costs that peer its connection, never the
daemon (invariant 7).
*/

use std::collections::{BTreeMap, VecDeque};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use serde::{Deserialize, Serialize};
use shard_tool::Dataset;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::job::{JobPlan, JobSpec, Position};
use crate::protocol::{
    self, ClientStats, MemoryUse, ProtocolError, Reply, Request, SplitInfo, Stats, check_preamble,
    encode,
};
use crate::ring::{Ring, RingLayout};
use crate::transform::SettingError;

mod producer;

use producer::{Event, Groups, Member};

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
    /// Anything else about the config.
    #[error("config: {0}")]
    Config(String),
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
    /// Ring slots when the client does not ask for a number. The default, twice
    /// [`crate::batch::STEPS_PER_FILL`], lets the producer fill whole multi-step calls while a
    /// client that keeps up still holds the previous ones (with 4, fills shrank to a step or
    /// two and the workers idled at each batch's end: ring / in-process 0.92 instead of 1.0).
    pub slots: u32,
    /// Most slots a client may ask for.
    pub max_slots: u32,
    /// Most bytes of one client's ring.
    pub max_ring_bytes: u64,
    /// Most clients served at once.
    pub max_clients: u32,
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
    /// Seconds the first rank of a job waits for the job's other ranks before its batches
    /// start; ranks that attach together share decodes (see `server::producer`).
    pub group_wait_s: f64,
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            shards: None,
            socket: None,
            workers: 0,
            slots: 2 * crate::batch::STEPS_PER_FILL as u32,
            max_slots: 32,
            max_ring_bytes: 8 << 30,
            max_clients: 64,
            allow_uids: Vec::new(),
            allow_gids: Vec::new(),
            allow_groups: Vec::new(),
            socket_mode: 0o660,
            handshake_timeout_s: 10.0,
            group_wait_s: 5.0,
        }
    }
}

impl ServeConfig {
    /// Checks every number against what the daemon can run (a timeout of `inf` would panic
    /// where it becomes a `Duration`; zero clients would serve nobody).
    ///
    /// # Errors
    /// [`ServeError::Setting`] naming the first key out of range (values in Rust's debug
    /// form: `1e300`, not its 301 digits).
    pub fn validate(&self) -> Result<(), ServeError> {
        SettingError::within("workers", self.workers, 0..=1024)?;
        SettingError::within("max_slots", self.max_slots, 1..=1024)?;
        SettingError::within("slots", self.slots, 1..=self.max_slots)?;
        SettingError::within("max_ring_bytes", self.max_ring_bytes, 1 << 20..=1 << 40)?;
        SettingError::within("max_clients", self.max_clients, 1..=4096)?;
        SettingError::within("socket_mode", self.socket_mode, 0..=0o777)?;
        // NaN is outside every range.
        SettingError::within(
            "handshake_timeout_s",
            self.handshake_timeout_s,
            0.1..=3600.0,
        )?;
        SettingError::within("group_wait_s", self.group_wait_s, 0.0..=3600.0)?;
        Ok(())
    }
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

/// State shared by every connection.
struct Shared {
    config: ServeConfig,
    workers: u32,
    dataset: Arc<Dataset>,
    /// Each split's size and labels, read once at start.
    splits: BTreeMap<String, SplitInfo>,
    started: Instant,
    samples: AtomicU64,
    /// Images decoded (fewer than samples where repeats share a decode).
    decoded: AtomicU64,
    decode_errors: AtomicU64,
    refused: AtomicU64,
    /// Job groups still gathering their ranks.
    groups: Mutex<Groups>,
    /// Nanoseconds per stage, summed: decode, resize, flip, RandAugment, write.
    stage_ns: [AtomicU64; 5],
    next_id: AtomicU64,
    clients: Mutex<BTreeMap<u64, ClientStats>>,
    /// (time, samples) once a second, for the recent rate.
    history: Mutex<VecDeque<(Instant, u64)>>,
}

/// A bound, not yet serving daemon.
pub struct Server {
    shared: Arc<Shared>,
    listener: UnixListener,
    socket: PathBuf,
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
                _ => {
                    return Err(ServeError::Config(format!(
                        "allow_groups: no group named {name:?} on this system"
                    )));
                }
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
        let socket = config.socket.clone().unwrap_or_else(default_socket);
        let listener = bind_socket(&socket, config.socket_mode)?;
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            n => n,
        };
        Ok(Server {
            shared: Arc::new(Shared {
                config,
                workers,
                dataset: Arc::new(dataset),
                splits,
                started: Instant::now(),
                samples: AtomicU64::new(0),
                decoded: AtomicU64::new(0),
                decode_errors: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                groups: Mutex::new(Groups::default()),
                stage_ns: Default::default(),
                next_id: AtomicU64::new(0),
                clients: Mutex::new(BTreeMap::new()),
                history: Mutex::new(VecDeque::new()),
            }),
            listener,
            socket,
        })
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
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let shared = Arc::clone(&self.shared);
        let ticker = tokio::spawn(tick(Arc::clone(&shared)));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let shared = Arc::clone(&shared);
                        tokio::spawn(async move { connection(shared, stream).await });
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
        if let Err(e) = std::fs::remove_file(&self.socket) {
            tracing::warn!("removing {}: {e}", self.socket.display());
        }
    }
}

/// A daemon on a thread of this process: a one-machine trainer (`trainer train --shards`) gets
/// the same rings and protocol as from `loader serve`, without a second process. Stops when
/// dropped.
pub struct LocalServer {
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalServer {
    /// Binds `config`'s socket (default: a private path under the temporary directory) and
    /// serves on a background thread.
    pub fn start(mut config: ServeConfig) -> Result<LocalServer, ServeError> {
        if config.socket.is_none() {
            let dir = std::env::temp_dir().join(format!(
                "rsb-loader-{}-{}",
                std::process::id(),
                LOCAL_SERVERS.fetch_add(1, Ordering::Relaxed)
            ));
            config.socket = Some(dir.join("loader.sock"));
        }
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("loader".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ServeError::Config(format!(
                            "starting the async runtime: {e}"
                        ))));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match Server::bind(config) {
                        Ok(server) => {
                            let _ = ready_tx.send(Ok(server.socket().to_path_buf()));
                            server
                                .run(async {
                                    let _ = stopped.await;
                                })
                                .await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| ServeError::Config(format!("starting the loader thread: {e}")))?;
        let socket = ready_rx
            .recv()
            .map_err(|_| ServeError::Config("the loader thread stopped at start".into()))??;
        Ok(LocalServer {
            socket,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The socket clients connect to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(dir) = self.socket.parent() {
            // Only the private directory made in `start` is empty now; others stay.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Numbers the private sockets of [`LocalServer`]s of this process.
static LOCAL_SERVERS: AtomicU64 = AtomicU64::new(0);

fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener, ServeError> {
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

/// Once a second: the rate history, and systemd's status line and watchdog.
async fn tick(shared: Arc<Shared>) {
    let mut watchdog_us = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_us);
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        {
            let Ok(mut h) = shared.history.lock() else {
                return;
            };
            h.push_back((Instant::now(), shared.samples.load(Ordering::Relaxed)));
            if h.len() > 10 {
                h.pop_front();
            }
        }
        let s = shared.stats();
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

impl Shared {
    fn stats(&self) -> Stats {
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
            workers: self.workers,
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
            clients: self
                .clients
                .lock()
                .map(|c| c.values().cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// The dataset's split names, for messages.
    fn split_names(&self) -> String {
        let names: Vec<&str> = self.splits.keys().map(String::as_str).collect();
        names.join(", ")
    }

    fn update_client(&self, id: u64, f: impl FnOnce(&mut ClientStats)) {
        if let Ok(mut c) = self.clients.lock()
            && let Some(client) = c.get_mut(&id)
        {
            f(client);
        }
    }
}

/// Why a connection was closed by the daemon; sent to the peer as an `error` frame.
struct Refusal(String);

impl From<ProtocolError> for Refusal {
    fn from(e: ProtocolError) -> Refusal {
        Refusal(e.to_string())
    }
}

async fn connection(shared: Arc<Shared>, mut stream: UnixStream) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let cred = stream.peer_cred().ok();
    let refusal = match handshake(&shared, &mut stream, cred, id).await {
        // The session has sent its own error frame, if any.
        Ok(Some(session)) => session.serve(stream).await.err(),
        Ok(None) => None,
        Err(Refusal(message)) => {
            // The peer may be gone already; nothing more to do then.
            let reply = encode(&Reply::Error {
                message: message.clone(),
            });
            let _ = stream.write_all(&reply).await;
            Some(Refusal(message))
        }
    };
    if let Ok(mut c) = shared.clients.lock() {
        c.remove(&id);
    }
    if let Some(Refusal(message)) = refusal {
        shared.refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("connection {id} ({cred:?}) refused: {message}");
    }
}

/// Checks the peer, exchanges preambles and reads the first message. Returns the session to
/// run, or `None` for a stats-only connection that has been answered.
async fn handshake(
    shared: &Arc<Shared>,
    stream: &mut UnixStream,
    cred: Option<tokio::net::unix::UCred>,
    id: u64,
) -> Result<Option<Session>, Refusal> {
    let config = &shared.config;
    let timeout = Duration::from_secs_f64(config.handshake_timeout_s.max(0.1));
    // Our preamble first, so that even a refused peer can read the error frame that follows.
    tokio::time::timeout(timeout, stream.write_all(&protocol::preamble()))
        .await
        .map_err(|_| Refusal(format!("peer did not read for {timeout:?}")))?
        .map_err(ProtocolError::from)?;
    let Some(cred) = cred else {
        return Err(Refusal("peer credentials unavailable".into()));
    };
    if !peer_allowed(config, cred.uid(), cred.gid()) {
        tracing::warn!(
            "refused pid {:?} uid {} gid {}: not in allow_uids {:?} or allow_gids {:?}",
            cred.pid(),
            cred.uid(),
            cred.gid(),
            config.allow_uids,
            config.allow_gids
        );
        return Err(Refusal(format!(
            "uid {} / gid {} is not allowed by this loader (allow_uids, allow_gids in its \
             config)",
            cred.uid(),
            cred.gid()
        )));
    }
    let first = tokio::time::timeout(timeout, async {
        let mut p = [0u8; 12];
        stream
            .read_exact(&mut p)
            .await
            .map_err(ProtocolError::from)?;
        check_preamble(&p)?;
        read_frame(stream).await
    })
    .await
    .map_err(|_| Refusal(format!("no hello within {timeout:?}")))??;
    match first {
        Request::Stats => {
            let mut request = Request::Stats;
            // A status connection: answer stats until bye or close.
            loop {
                match request {
                    Request::Stats => {
                        let reply = encode(&Reply::Stats(shared.stats()));
                        stream
                            .write_all(&reply)
                            .await
                            .map_err(ProtocolError::from)?;
                    }
                    Request::Bye => return Ok(None),
                    other => return Err(out_of_order(&other, "a status connection")),
                }
                request = match read_frame(stream).await {
                    Err(ProtocolError::Io(_)) => return Ok(None),
                    r => r?,
                };
            }
        }
        Request::Hello {
            job_id,
            job,
            start,
            epochs,
            slots,
        } => {
            let session = Session::open(shared, id, cred, job_id, *job, start, epochs, slots)?;
            send_welcome(stream, &session).await?;
            Ok(Some(session))
        }
        Request::Describe { split } => {
            let info = shared.splits.get(&split).ok_or_else(|| {
                Refusal(format!(
                    "no split {split:?} in this dataset (it has {})",
                    shared.split_names()
                ))
            })?;
            stream
                .write_all(&encode(&Reply::Split(info.clone())))
                .await
                .map_err(ProtocolError::from)?;
            Ok(None)
        }
        Request::Bye => Ok(None),
        other => Err(out_of_order(&other, "hello")),
    }
}

/// Whether the peer's uid, primary gid or one of its user's supplementary groups is allowed.
fn peer_allowed(config: &ServeConfig, uid: u32, gid: u32) -> bool {
    if config.allow_uids.contains(&uid) || config.allow_gids.contains(&gid) {
        return true;
    }
    // SO_PEERCRED carries only the primary group; trainers are often in `rsb` as a
    // supplementary group, so look the user's groups up.
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
        return false;
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return false;
    };
    nix::unistd::getgrouplist(&name, user.gid).is_ok_and(|groups| {
        groups
            .iter()
            .any(|g| config.allow_gids.contains(&g.as_raw()))
    })
}

fn out_of_order(got: &Request, expected: &str) -> Refusal {
    let name = match got {
        Request::Hello { .. } => "hello",
        Request::Release { .. } => "release",
        Request::Stats => "stats",
        Request::Describe { .. } => "describe",
        Request::Bye => "bye",
    };
    Refusal(format!("out-of-order message {name} (expected {expected})"))
}

/// Reads one frame; not cancel-safe, so only used where nothing else is awaited at once.
async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<Request, ProtocolError> {
    let mut prefix = [0u8; 4];
    r.read_exact(&mut prefix).await?;
    let len = protocol::frame_len(prefix)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    protocol::decode(&body)
}

/// The welcome frame, with the ring's descriptor as SCM_RIGHTS on its first byte.
async fn send_welcome(stream: &mut UnixStream, session: &Session) -> Result<(), Refusal> {
    let frame = encode(&Reply::Welcome {
        layout: session.layout,
        steps_per_epoch: session.plan.steps_per_epoch(),
        split: session.split.clone(),
    });
    let Some(ring) = session.ring.as_ref() else {
        return Err(Refusal("internal: ring already handed over".into()));
    };
    let fd: BorrowedFd<'_> = ring.fd();
    let raw = stream.as_raw_fd();
    let sent = stream
        .async_io(Interest::WRITABLE, || {
            let fds = [fd.as_raw_fd()];
            let cmsgs = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(
                raw,
                &[IoSlice::new(&frame)],
                &cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(std::io::Error::from)
        })
        .await
        .map_err(ProtocolError::from)?;
    stream
        .write_all(&frame[sent..])
        .await
        .map_err(ProtocolError::from)?;
    Ok(())
}

/// One client's stream of batches.
struct Session {
    shared: Arc<Shared>,
    id: u64,
    job_id: String,
    plan: JobPlan,
    layout: RingLayout,
    split: SplitInfo,
    start: Position,
    epochs: Option<u32>,
    ring: Option<Ring>,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    fn open(
        shared: &Arc<Shared>,
        id: u64,
        cred: tokio::net::unix::UCred,
        job_id: String,
        job: JobSpec,
        start: Position,
        epochs: Option<u32>,
        slots: Option<u32>,
    ) -> Result<Session, Refusal> {
        let config = &shared.config;
        let active = shared.clients.lock().map(|c| c.len()).unwrap_or(0);
        if active >= config.max_clients as usize {
            return Err(Refusal(format!(
                "the loader serves its maximum of {} clients",
                config.max_clients
            )));
        }
        // The same check the client ran, before anything is looked up or allocated.
        job.validate().map_err(|e| Refusal(format!("job: {e}")))?;
        let split = shared.splits.get(&job.split).cloned().ok_or_else(|| {
            Refusal(format!(
                "no split {:?} in this dataset (it has {})",
                job.split,
                shared.split_names()
            ))
        })?;
        let plan = job
            .plan(split.records)
            .map_err(|e| Refusal(format!("job: {e}")))?;
        if start.step >= plan.steps_per_epoch() {
            return Err(Refusal(format!(
                "start step {} is past the epoch's {} steps",
                start.step,
                plan.steps_per_epoch()
            )));
        }
        let slots = slots.unwrap_or(config.slots);
        if slots == 0 || slots > config.max_slots {
            return Err(Refusal(format!(
                "{slots} slots asked, this loader allows 1 to {}",
                config.max_slots
            )));
        }
        let side = plan.transform().img_size();
        let layout = RingLayout {
            slots,
            batch_size: job.batch_size,
            height: side,
            width: side,
            channels: 3,
        };
        let ring = Ring::create(layout, config.max_ring_bytes)
            .map_err(|e| Refusal(format!("ring: {e}")))?;
        if let Ok(mut c) = shared.clients.lock() {
            c.insert(
                id,
                ClientStats {
                    job_id: job_id.chars().take(128).collect(),
                    rank: job.rank,
                    pid: cred.pid().unwrap_or(0),
                    uid: cred.uid(),
                    next: start,
                    slots_full: 0,
                    slots,
                    samples: 0,
                    group: 0,
                },
            );
        }
        tracing::info!(
            "client {id}: job {job_id:?} rank {}/{} {} {} batch {} from epoch {} step {}, {} \
             slots ({} MB)",
            job.rank,
            job.world_size,
            job.split,
            job.transform,
            job.batch_size,
            start.epoch,
            start.step,
            slots,
            layout.total_bytes() >> 20
        );
        Ok(Session {
            shared: Arc::clone(shared),
            id,
            job_id,
            plan,
            layout,
            split,
            start,
            epochs,
            ring: Some(ring),
        })
    }

    /// Runs the producer and relays its batches until the client leaves or misbehaves.
    async fn serve(mut self, stream: UnixStream) -> Result<(), Refusal> {
        let slots = self.layout.slots;
        let (free_tx, free_rx) = crossbeam_channel::bounded::<u32>(slots as usize);
        for s in 0..slots {
            // Cannot fail: the channel holds exactly `slots`.
            let _ = free_tx.send(s);
        }
        let (event_tx, mut events) = mpsc::channel::<Event>(slots as usize + 2);
        let ring = self
            .ring
            .take()
            .ok_or_else(|| Refusal("internal: ring already handed over".into()))?;
        let member = Member {
            id: self.id,
            plan: self.plan.clone(),
            start: self.start,
            ring,
            free: free_rx,
            events: event_tx,
        };
        let key = producer::group_key(&self.job_id, &self.plan, self.epochs);
        let wait = Duration::from_secs_f64(self.shared.config.group_wait_s.max(0.0));
        producer::join(&self.shared, key, self.epochs, member, wait);

        let (mut rd, mut wr) = stream.into_split();
        // Frames are read in their own task: reading is not cancel-safe inside select!.
        let (req_tx, mut requests) = mpsc::channel::<Result<Request, ProtocolError>>(4);
        let reader = tokio::spawn(async move {
            loop {
                let r = read_frame(&mut rd).await;
                let stop = r.is_err();
                if req_tx.send(r).await.is_err() || stop {
                    return;
                }
            }
        });
        let mut held = vec![false; slots as usize];
        let mut finished = false;
        let result = loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(Event::Ready { slot, position, count, replaced }) => {
                        held[slot as usize] = true;
                        let full = held.iter().filter(|h| **h).count() as u32;
                        self.shared.update_client(self.id, |c| c.slots_full = full);
                        let r = Reply::BatchReady { slot, position, count, replaced };
                        if let Err(e) = write(&mut wr, &r).await { break Err(e); }
                    }
                    Some(Event::EndOfEpoch(epoch)) => {
                        if let Err(e) = write(&mut wr, &Reply::EndOfEpoch { epoch }).await {
                            break Err(e);
                        }
                    }
                    Some(Event::Finished) => {
                        finished = true;
                        if let Err(e) = write(&mut wr, &Reply::Finished).await { break Err(e); }
                    }
                    // After `finished` the producer has nothing more to do: a normal end.
                    None if finished => break Ok(()),
                    // Another client of its group left: close without an error, so that this
                    // client reconnects at its next batch and a new group forms.
                    None => {
                        tracing::info!("client {}: its group ended; closing so it reconnects", self.id);
                        break Ok(());
                    }
                },
                request = requests.recv() => match request {
                    Some(Ok(Request::Release { slot })) => {
                        match held.get_mut(slot as usize) {
                            Some(h) if *h => {
                                *h = false;
                                let full = held.iter().filter(|h| **h).count() as u32;
                                self.shared.update_client(self.id, |c| c.slots_full = full);
                                // The producer may have ended (finished); nothing waits then.
                                let _ = free_tx.send(slot);
                            }
                            _ => break Err(Refusal(format!(
                                "release of slot {slot}, which the client does not hold"
                            ))),
                        }
                    }
                    Some(Ok(Request::Stats)) => {
                        let stats = Reply::Stats(self.shared.stats());
                        if let Err(e) = write(&mut wr, &stats).await { break Err(e); }
                    }
                    Some(Ok(Request::Bye)) => break Ok(()),
                    Some(Ok(other)) => break Err(out_of_order(&other, "release, stats or bye")),
                    // The client went away (a restart, or done): not an error.
                    Some(Err(ProtocolError::Io(_))) | None => break Ok(()),
                    Some(Err(e)) => break Err(e.into()),
                },
            }
        };
        reader.abort();
        if let Err(Refusal(message)) = &result {
            let _ = wr
                .write_all(&encode(&Reply::Error {
                    message: message.clone(),
                }))
                .await;
        }
        // Dropping the channels stops the producer after its current batch.
        tracing::info!("client {} closed", self.id);
        result
    }
}

async fn write(wr: &mut OwnedWriteHalf, reply: &Reply) -> Result<(), Refusal> {
    wr.write_all(&encode(reply))
        .await
        .map_err(|e| Refusal(format!("writing to the client: {e}")))
}

#[cfg(test)]
mod tests {
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
