//! The hardening drill: a hundred clients that leave the daemon in every way a careless or
//! hostile one can, while a well-behaved trainer keeps reading. The daemon must stay up, the good
//! client must keep getting its batches, every bad request must get an error frame, and the
//! daemon's threads and memory must come back to where they were before the drill.
//!
//! Figures (the good client's batch rate before and during the drill, `stats` latency, RSS and
//! threads before, at the peak and after) are printed; run with `--nocapture` to see them.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use loader::request::transform::{TrainTransform, TransformSpec};
use loader::wire::client::{Client, ClientOptions};
use loader::wire::frame::FrameReader;
use loader::wire::protocol::{self, Reply, Request};
use loader::{JobSpec, Position};

use super::daemon::{Daemon, dataset, dataset_of, nix_uid};

/// The daemon's threads, rings and resident memory, from `/proc/PID`.
#[derive(Debug, Clone, Copy, Default)]
struct Footprint {
    threads: u64,
    /// Ring memory files open (each ring holds its `memfd` until it is freed).
    rings: u64,
    anon: u64,
    /// Ring pages written so far (a ring is allocated whole but mapped as it is written).
    shmem: u64,
}

impl Footprint {
    fn of(pid: u32) -> Footprint {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let rings = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.filter_map(Result::ok)
                    .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                    .filter(|target| target.to_string_lossy().contains("rsb-loader-ring"))
                    .count() as u64
            })
            .unwrap_or(0);
        Footprint {
            threads: field("Threads:"),
            rings,
            anon: field("RssAnon:") * 1024,
            shmem: field("RssShmem:") * 1024,
        }
    }

    /// Whether the daemon is back where it was at `idle`: no more threads, no ring, its heap
    /// within [`SLACK`].
    fn is_back_to(self, idle: Footprint) -> bool {
        self.threads <= idle.threads
            && self.rings == 0
            && self.shmem <= idle.shmem
            && self.anon <= idle.anon + SLACK
    }

    /// One row of a drill's table under [`FOOTPRINT_HEADER`].
    fn row(self, name: &str) -> String {
        format!(
            "{name:<10} {:>7}  {:>5}  {:>8.1}  {:>14.1}",
            self.threads,
            self.rings,
            mib(self.anon),
            mib(self.shmem)
        )
    }

    fn max(self, o: Footprint) -> Footprint {
        Footprint {
            threads: self.threads.max(o.threads),
            rings: self.rings.max(o.rings),
            anon: self.anon.max(o.anon),
            shmem: self.shmem.max(o.shmem),
        }
    }
}

/// The header of [`Footprint::row`]s.
const FOOTPRINT_HEADER: &str = "daemon     threads  rings  anon MiB  ring pages MiB";

/// Waits up to 30 s for the daemon `pid` to come back to `idle` (tokio's blocking threads
/// linger 10 s after their last task); returns where it is and how long that took.
fn settle(pid: u32, idle: Footprint) -> (Footprint, Duration) {
    let from = Instant::now();
    loop {
        let now = Footprint::of(pid);
        if now.is_back_to(idle) || from.elapsed() > Duration::from_secs(30) {
            return (now, from.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// A1's transform at `img_size`.
fn a1(img_size: u32) -> TransformSpec {
    let Some(TransformSpec::Train(t)) = TransformSpec::preset("a1") else {
        panic!("a1 is a train transform")
    };
    TransformSpec::Train(TrainTransform { img_size, ..t })
}

fn options(socket: &Path, job_id: &str, job: JobSpec, slots: u32) -> ClientOptions {
    ClientOptions {
        socket: socket.to_path_buf(),
        job_id: job_id.into(),
        job,
        start: Position::default(),
        epochs: None,
        slots: Some(slots),
        reconnect_timeout: Duration::from_secs(20),
    }
}

/// Heap the daemon may keep after the drill (the allocator's free lists, tokio's buffers); a
/// producer or ring left behind is far more (a large ring is 77 MB, a worker's buffers ~1 MB).
const SLACK: u64 = 16 << 20;

/// The ways the drill's clients leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// Half a hello frame, then the end of its stream.
    MidHandshake,
    /// Connect and say nothing, not even the preamble.
    Silent,
    /// Take one batch while the producer fills the others, then close.
    MidFill,
    /// A hello at epoch `u32::MAX` (where a position would wrap): must be refused.
    WrappedPosition,
    /// Map a large ring (and have it populated), then close without reading a batch.
    LargeRing,
    /// A hello whose crop ratio passes the parser but no producer can honour: must be refused.
    ImpossibleCrop,
}

const KINDS: [Leave; 6] = [
    Leave::MidHandshake,
    Leave::Silent,
    Leave::MidFill,
    Leave::WrappedPosition,
    Leave::LargeRing,
    Leave::ImpossibleCrop,
];

/// Says no more and waits until the daemon has closed the connection, so that a drill thread
/// has one connection at a time (a flood of connections from one uid is what `max_clients` and
/// `max_clients_per_uid` refuse; the drill is about how clients leave).
fn until_closed(mut s: UnixStream) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut sink = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut sink).unwrap();
}

/// Sends `hello` over a raw connection and returns the daemon's first reply.
fn raw_hello(socket: &Path, hello: &Request) -> Reply {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&protocol::preamble()).unwrap();
    loader::wire::frame::write_frame(&mut s, hello).unwrap();
    let mut preamble = [0u8; 12];
    std::io::Read::read_exact(&mut s, &mut preamble).unwrap();
    FrameReader::<Reply>::default().read(&mut s).unwrap()
}

fn hello(job: JobSpec, start: Position) -> Request {
    Request::Hello {
        job_id: "drill".into(),
        job: Box::new(job),
        start,
        epochs: None,
        slots: Some(2),
    }
}

/// One client that leaves in the way `how`; panics if the daemon answered wrongly.
fn leave(socket: &Path, how: Leave, i: usize) {
    let small = JobSpec::single("train", a1(32), i as u64, 8);
    match how {
        Leave::MidHandshake => {
            let mut s = UnixStream::connect(socket).unwrap();
            let frame = loader::wire::frame::encode(&hello(small, Position::default()));
            s.write_all(&protocol::preamble()).unwrap();
            s.write_all(&frame[..frame.len() / 2]).unwrap();
            until_closed(s);
        }
        Leave::Silent => until_closed(UnixStream::connect(socket).unwrap()),
        Leave::MidFill => {
            let mut c = Client::connect(options(socket, "drill-fill", small, 4)).unwrap();
            drop(c.next_batch().unwrap().unwrap());
        }
        Leave::WrappedPosition => {
            let start = Position {
                epoch: u32::MAX,
                step: u64::MAX,
            };
            let reply = raw_hello(socket, &hello(small, start));
            assert!(
                matches!(&reply, Reply::Error { message } if message.contains("epoch")),
                "{reply:?}"
            );
        }
        Leave::LargeRing => {
            let big = JobSpec::single("train", a1(224), i as u64, 64);
            let c = Client::connect(options(socket, "drill-ring", big, 8)).unwrap();
            drop(c);
        }
        Leave::ImpossibleCrop => {
            let Some(TransformSpec::Train(t)) = TransformSpec::preset("a1") else {
                unreachable!()
            };
            let ratio = if i.is_multiple_of(2) {
                [1e3, 1e3]
            } else {
                [1e-3, 1e-3]
            };
            let bad = TransformSpec::Train(TrainTransform { ratio, ..t });
            let reply = raw_hello(
                socket,
                &hello(JobSpec::single("train", bad, 1, 8), Position::default()),
            );
            assert!(
                matches!(&reply, Reply::Error { message } if message.contains("ratio")),
                "{reply:?}"
            );
        }
    }
}

/// Sleeps for a [`PHASE`] and returns its span, over which to count the good client's batches.
fn phase_window() -> (Instant, Instant) {
    let from = Instant::now();
    std::thread::sleep(PHASE);
    (from, Instant::now())
}

/// Batch arrival times of the good client, and whether it should go on.
#[derive(Default)]
struct GoodClient {
    times: Mutex<Vec<Instant>>,
    stop: AtomicBool,
    /// Time between two batches, as a trainer whose GPU sets the pace reads them (`None`: as
    /// fast as they come).
    pace: Mutex<Option<Duration>>,
}

impl GoodClient {
    fn run(&self, socket: &Path) {
        let job = JobSpec::single("train", a1(64), 11, 8);
        let mut c = Client::connect(options(socket, "good", job, 4)).unwrap();
        let mut due = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            let b = c.next_batch().unwrap().unwrap();
            assert_eq!(b.count, 8);
            drop(b);
            let now = Instant::now();
            self.times.lock().unwrap().push(now);
            if let Some(pace) = *self.pace.lock().unwrap() {
                // A step that came late is not made up for: the GPU waited.
                due = (due + pace).max(now);
                std::thread::sleep(due - now);
            }
        }
        assert_eq!(c.reconnects(), 0, "the good client lost its connection");
    }

    /// The lowest rate over any second between `a` and `b`, in steps of a tenth.
    fn worst_second(&self, a: Instant, b: Instant) -> f64 {
        let second = Duration::from_secs(1);
        let mut worst = f64::INFINITY;
        let mut t = a;
        while t + second <= b {
            worst = worst.min(self.rate(t, t + second));
            t += second / 10;
        }
        worst
    }

    /// Batches per second between `a` and `b`.
    fn rate(&self, a: Instant, b: Instant) -> f64 {
        let n = self
            .times
            .lock()
            .unwrap()
            .iter()
            .filter(|&&t| t >= a && t < b)
            .count();
        n as f64 / (b - a).as_secs_f64()
    }
}

/// Each kind of leaving is its own phase, repeated until it has lasted this long (and sent at
/// least its share of the hundred), so the good client's rate during it can be measured.
const PHASE: Duration = Duration::from_secs(2);
/// At least this many clients in all.
const CLIENTS: usize = 100;
/// Misbehaving clients at once.
const AT_ONCE: usize = 4;

/// One phase of the drill: its kind, how many clients left that way, and its span.
struct Phase {
    how: Leave,
    clients: usize,
    from: Instant,
    to: Instant,
}

/// Pause of each drill thread between two clients: 0 (as fast as they can, the default) or
/// `RSB_DRILL_PACE_MS`. On a machine with few cores the unpaced threads take CPU from the
/// daemon and the good client themselves; paced, the good client's rate shows what the
/// misbehaving clients cost the daemon.
fn pace() -> Duration {
    let ms = std::env::var("RSB_DRILL_PACE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Duration::from_millis(ms)
}

/// Clients leaving in the way `how`, `AT_ONCE` at a time, for at least `PHASE`.
fn phase(socket: &Path, how: Leave) -> Phase {
    let from = Instant::now();
    let pause = pace();
    let per = CLIENTS.div_ceil(KINDS.len()).div_ceil(AT_ONCE);
    let clients: usize = std::thread::scope(|attack| {
        let handles: Vec<_> = (0..AT_ONCE)
            .map(|t| {
                attack.spawn(move || {
                    let mut n = 0;
                    while n < per || from.elapsed() < PHASE {
                        leave(socket, how, t + AT_ONCE * n);
                        n += 1;
                        std::thread::sleep(pause);
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    Phase {
        how,
        clients,
        from,
        to: Instant::now(),
    }
}

#[test]
fn a_hundred_clients_that_leave_in_every_way_leave_no_trace() {
    // Its figures compare rates: no other test of this binary runs meanwhile.
    let _cores = super::all_cores();
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let socket = dir.path().join("loader.sock");
    let config = dir.path().join("loader.toml");
    // Rings up to 128 MiB (a large ring here is 8 slots of 64 images at 224 px, 77 MB) and a
    // budget that fits 16 of them whatever this machine's memory.
    std::fs::write(
        &config,
        "max_ring_bytes = 134217728\nmax_clients = 16\nmemory_budget_bytes = 2147483648\n\
         handshake_timeout_s = 2.0\nallow_groups = []\n",
    )
    .unwrap();
    let daemon = Daemon::start(&shards, &socket, &["--config", config.to_str().unwrap()]);
    let pid = daemon.child.id();
    let idle = Footprint::of(pid);

    let good = GoodClient::default();
    let worst_stats = Mutex::new(Duration::ZERO);
    let peak = Mutex::new(Footprint::default());
    let drilling = AtomicBool::new(true);
    let (before, calm, phases, after_drill) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| good.run(&socket));
        // Let it settle, then take the baseline with the good client attached.
        std::thread::sleep(Duration::from_secs(1));
        let calm = phase_window();
        let before = Footprint::of(pid);
        *peak.lock().unwrap() = before;
        let watcher = scope.spawn(|| {
            while drilling.load(Ordering::SeqCst) {
                let t = Instant::now();
                loader::wire::client::stats(&socket).unwrap();
                let took = t.elapsed();
                let mut w = worst_stats.lock().unwrap();
                *w = (*w).max(took);
                drop(w);
                let mut p = peak.lock().unwrap();
                *p = p.max(Footprint::of(pid));
                drop(p);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let phases: Vec<Phase> = KINDS.iter().map(|&how| phase(&socket, how)).collect();
        drilling.store(false, Ordering::SeqCst);
        watcher.join().unwrap();
        // The good client reads on for one more phase, for its rate after the drill.
        let after_drill = phase_window();
        good.stop.store(true, Ordering::SeqCst);
        reader.join().unwrap();
        (before, calm, phases, after_drill)
    });
    let peak = *peak.lock().unwrap();

    // The good client has left too: the daemon comes back to where it was before any client.
    let (after, settled_in) = settle(pid, idle);

    let calm_rate = good.rate(calm.0, calm.1);
    let mut table = format!(
        "drill: {} clients, {AT_ONCE} at once ({:?} between two of a thread), one phase per \
         way of leaving\n\
         phase                clients  good client batches/s  vs calm\n\
         calm                       0  {calm_rate:>21.1}     1.00\n",
        phases.iter().map(|p| p.clients).sum::<usize>(),
        pace()
    );
    for p in &phases {
        let r = good.rate(p.from, p.to);
        table += &format!(
            "{:<20} {:>7}  {r:>21.1}  {:>7.2}\n",
            format!("{:?}", p.how),
            p.clients,
            r / calm_rate
        );
    }
    let r = good.rate(after_drill.0, after_drill.1);
    table += &format!(
        "after                      0  {r:>21.1}  {:>7.2}\n",
        r / calm_rate
    );
    eprintln!(
        "{table}slowest `stats` answer during the drill: {} ms\n\
         {FOOTPRINT_HEADER}\n{}   (no client yet)\n{}   (the good client attached)\n{}\n{}   \
         (every client gone, {:.1} s after the last left)",
        worst_stats.lock().unwrap().as_millis(),
        idle.row("idle"),
        before.row("calm"),
        peak.row("peak"),
        after.row("after"),
        settled_in.as_secs_f64(),
    );
    let mut daemon = daemon;
    daemon.assert_alive();
    for p in &phases {
        assert!(
            good.rate(p.from, p.to) > 0.0,
            "the good client got no batch while clients left by {:?}",
            p.how
        );
    }
    assert!(
        peak.rings > before.rings,
        "the drill never saw a ring besides the good client's: it tests nothing"
    );
    assert!(
        after.is_back_to(idle),
        "the daemon did not come back to where it was before any client: {idle:?} → {after:?}"
    );
    let status = loader::wire::client::stats(&socket).unwrap();
    assert!(status.clients.is_empty(), "{:?}", status.clients);
}

/// The uid the other user's clients run as (`nobody`).
const OTHER_UID: u32 = 65534;
/// The other user's connections that hold every slot of their rings.
const HOLDERS: u32 = 14;
/// Its threads that connect and leave in a loop.
const CHURNERS: u32 = 4;
/// How long it churns.
const HOG: Duration = Duration::from_secs(6);

#[test]
fn one_user_holding_many_rings_and_churning_cannot_starve_another() {
    // Its figures compare rates: no other test of this binary runs meanwhile.
    let _cores = super::all_cores();
    if nix_uid() != 0 {
        eprintln!(
            "skipped: the other user's clients must run under uid {OTHER_UID}, which needs root \
             (this is uid {})",
            nix_uid()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The other user reaches the socket through this directory.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // Images large enough that each worker's decode buffers are ~1 MiB, as the heap a burst
    // of clients leaves behind is mostly theirs (ImageNet's are up to 11 MiB).
    let shards = dataset_of(dir.path(), 160);
    let socket = dir.path().join("loader.sock");
    let config = dir.path().join("loader.toml");
    // RSB_DRILL_CONFIG adds lines to the daemon's config: "decode_turns = 4096" gives every
    // worker its own turn and "clients_per_s_per_uid = 0" lifts the rate, for the figures of
    // the daemon without them.
    let extra = std::env::var("RSB_DRILL_CONFIG").unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            "max_ring_bytes = 134217728\nmax_clients = 32\nmemory_budget_bytes = 4294967296\n\
             handshake_timeout_s = 2.0\nallow_uids = [0, {OTHER_UID}]\nallow_groups = []\n\
             socket_mode = 0o666\n{extra}\n"
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&shards, &socket, &["--config", config.to_str().unwrap()]);
    let pid = daemon.child.id();
    let idle = Footprint::of(pid);

    let good = GoodClient::default();
    let peak = Mutex::new(Footprint::default());
    let watching = AtomicBool::new(true);
    let (alone, calm, hog, other) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| good.run(&socket));
        std::thread::sleep(Duration::from_secs(1));
        // What the daemon can give it, then a trainer that reads a third of that: its share
        // of two users' is half.
        let alone = phase_window();
        let capacity = good.rate(alone.0, alone.1);
        *good.pace.lock().unwrap() = Some(Duration::from_secs_f64(3.0 / capacity));
        std::thread::sleep(Duration::from_secs(1));
        let calm = phase_window();
        let t_hog = Instant::now();
        let other = std::process::Command::new(env!("CARGO_BIN_EXE_drill-client"))
            .arg(&socket)
            .args([HOLDERS, CHURNERS].map(|n| n.to_string()))
            .arg(HOG.as_secs().to_string())
            .uid(OTHER_UID)
            .gid(OTHER_UID)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let watcher = scope.spawn(|| {
            while watching.load(Ordering::SeqCst) {
                let mut p = peak.lock().unwrap();
                *p = p.max(Footprint::of(pid));
                drop(p);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let other = other.wait_with_output().unwrap();
        let hog = (t_hog, Instant::now());
        watching.store(false, Ordering::SeqCst);
        watcher.join().unwrap();
        good.stop.store(true, Ordering::SeqCst);
        reader.join().unwrap();
        (alone, calm, hog, other)
    });
    let peak = *peak.lock().unwrap();
    let stdout = String::from_utf8_lossy(&other.stdout);
    assert!(
        other.status.success(),
        "drill-client: {stdout}\n{}",
        String::from_utf8_lossy(&other.stderr)
    );
    assert!(
        stdout.contains(&format!("held {HOLDERS} rings")),
        "{stdout}"
    );

    // Everyone has left: the daemon's threads, rings and heap come back to idle.
    let (after, settled_in) = settle(pid, idle);
    let alone_rate = good.rate(alone.0, alone.1);
    let calm_rate = good.rate(calm.0, calm.1);
    let hog_rate = good.rate(hog.0, hog.1);
    let ratio = hog_rate / calm_rate;
    let worst = good.worst_second(hog.0, hog.1);
    eprintln!(
        "one user against another ({}): uid {OTHER_UID} holds every slot of {HOLDERS} rings \
         while {CHURNERS} threads connect and leave ({})\n\
         good client (uid 0)                   batches/s  vs calm\n\
         alone, as fast as it can              {alone_rate:>9.1}\n\
         calm, reading a third of that         {calm_rate:>9.1}     1.00\n\
         during, mean                          {hog_rate:>9.1}  {ratio:>7.2}\n\
         during, worst second                  {worst:>9.1}  {:>7.2}\n\
         {FOOTPRINT_HEADER}\n{}\n{}\n{}   ({:.1} s after everyone left)",
        match extra.trim() {
            "" => "the default config".to_string(),
            e => e.replace('\n', ", "),
        },
        stdout.trim(),
        worst / calm_rate,
        idle.row("idle"),
        peak.row("peak"),
        after.row("after"),
        settled_in.as_secs_f64(),
    );
    let mut daemon = daemon;
    daemon.assert_alive();
    assert!(
        peak.rings > HOLDERS as u64,
        "the other user's rings never all existed: it tests nothing"
    );
    assert!(
        ratio >= 0.5,
        "the good client fell to {ratio:.2}× its calm rate while another user hogged the daemon"
    );
    assert!(
        after.is_back_to(idle),
        "the daemon did not come back to where it was before any client: {idle:?} → {after:?}"
    );
}
