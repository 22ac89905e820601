//! The recipe's ranks over several processes joined by MPI (`--features mpi`, Open MPI's
//! `mpirun` on the loopback): the tiny smoke recipe at 4 ranks in 2 × 2 and 4 × 1 processes
//! against one process of 4 virtual ranks (parameters, BN statistics, steps per epoch, every
//! rank's batches), and a 2-process run resumed in 4 processes; a process killed mid-epoch ends
//! the others, as does one stopped (SIGSTOP) within `--peer-timeout`, naming it, whether it
//! stopped in its step or inside the gradient sum, and `--resume` repeats the uninterrupted
//! run's losses. No run here can hang the suite: each is killed, failing its test, after
//! [`LIMIT`]. Every process reads one loader daemon (the test's), as the
//! processes of a node do. Skipped with a message where `mpirun` is not on the PATH.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use loader::server::{LocalServer, ServeConfig};
use trainer::device::{DeviceKind, Precision};
use trainer::run::{OnDevice, RunDir, Weights};

use crate::common;

/// Ranks of every run here.
const WORLD: usize = 4;

fn mpirun_found() -> bool {
    let found = Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: mpirun not found (apt-get install openmpi-bin libopenmpi-dev)");
    }
    found
}

/// The trainer's flags for a run of the tiny smoke recipe at 4 ranks into `out`.
fn train_args(socket: &Path, out: &Path, max_steps: u64) -> Vec<String> {
    let smoke = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/smoke.toml");
    let mut args: Vec<String> = vec!["train".into(), "--config".into()];
    args.push(smoke.display().to_string());
    args.extend(common::TINY_FLAGS.iter().map(ToString::to_string));
    args.extend(
        [
            "--world-size",
            "4",
            "--checkpoint-interval",
            "3",
            "--digests",
            "--max-steps",
        ]
        .map(String::from),
    );
    args.push(max_steps.to_string());
    args.extend(["--loader".into(), socket.display().to_string()]);
    args.extend(["--out".into(), out.display().to_string()]);
    args
}

/// `trainer` with `args` in `processes` processes (`mpirun -np`), or alone for 0.
fn trainer(processes: usize, args: &[String]) -> Command {
    let bin = env!("CARGO_BIN_EXE_trainer");
    let mut c = if processes == 0 {
        Command::new(bin)
    } else {
        let mut c = Command::new("mpirun");
        // Root in a container; 4 processes on 2 cores; the loopback only.
        c.args([
            "--allow-run-as-root",
            "--oversubscribe",
            "--bind-to",
            "none",
        ])
        .args([
            "--mca",
            "btl",
            "self,vader,tcp",
            "--mca",
            "btl_tcp_if_include",
            "lo",
        ])
        .args(["-np", &processes.to_string(), bin]);
        c
    };
    c.args(args);
    c
}

/// The longest any run here may take: a run that hangs fails its test, never the suite.
const LIMIT: Duration = Duration::from_secs(600);

/// `job`'s output once it ends; killed with the processes mpirun started, and the test failed,
/// once it has run for `limit`.
fn wait_within(mut job: Child, limit: Duration) -> Output {
    // Read while waiting: a full pipe would stop the job, and read as a hang.
    let mut stdout = job.stdout.take();
    let mut stderr = job.stderr.take();
    let stdout = std::thread::spawn(move || read_all(stdout.as_mut()));
    let stderr = std::thread::spawn(move || read_all(stderr.as_mut()));
    let began = Instant::now();
    let status = loop {
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        if began.elapsed() > limit {
            for pid in children(job.id()) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            let _ = job.kill();
            let _ = job.wait();
            panic!(
                "still running after {limit:?}, killed; it said:\n{}",
                String::from_utf8_lossy(&stderr.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn read_all(pipe: Option<&mut impl Read>) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Some(pipe) = pipe {
        pipe.read_to_end(&mut bytes).unwrap();
    }
    bytes
}

/// `command`'s output, within [`LIMIT`].
fn output(command: &mut Command) -> Output {
    let job = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_within(job, LIMIT)
}

fn run(processes: usize, args: &[String]) -> Output {
    let out = output(&mut trainer(processes, args));
    assert!(
        out.status.success(),
        "{processes} processes: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Each `rank R epoch E step S sha256 D` line of a run's output, sorted.
fn digests(out: &Output) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("rank "))
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

/// (step, epoch) of every step line of the run in `out`.
fn epochs(out: &Path) -> Vec<(u64, u32)> {
    std::fs::read_to_string(RunDir::new(out).metrics())
        .unwrap()
        .lines()
        .filter_map(|l| match serde_json::from_str(l).unwrap() {
            trainer::run::metrics::Metric::Step { step, epoch, .. } => Some((step, epoch)),
            trainer::run::metrics::Metric::Eval { .. } => None,
        })
        .collect()
}

/// Every tensor of a safetensors file as f32 values, by name.
fn tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == safetensors::Dtype::F32)
        .map(|(name, v)| {
            let values = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, values)
        })
        .collect()
}

/// The parameters and BN statistics of the latest checkpoint in `out` (timm's names), and
/// every rank's BN statistics.
fn checkpoint(out: &Path, dir: &Path) -> (BTreeMap<String, Vec<f32>>, BTreeMap<String, Vec<f32>>) {
    let latest = RunDir::new(out).latest().unwrap();
    let config = latest.recipe().unwrap();
    let model = OnDevice::load(
        &config.model().unwrap(),
        DeviceKind::Flex,
        Precision::F32,
        config.seed,
        Some(&Weights::at(latest.dir())),
    )
    .unwrap()
    .model;
    let exported = dir.join(format!(
        "{}.safetensors",
        out.file_name().unwrap().to_string_lossy()
    ));
    trainer::model::timm_weights::export(&model, &exported).unwrap();
    (
        tensors(&exported),
        tensors(&latest.dir().join("ranks.safetensors")),
    )
}

/// Largest relative L2 difference of any tensor of `a` from `b`'s, and its name.
fn worst(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> (f64, String) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "other tensors"
    );
    let mut worst = (0.0, String::new());
    for (name, va) in a {
        let vb = &b[name];
        let num: f64 = va
            .iter()
            .zip(vb)
            .map(|(x, y)| f64::from(x - y).powi(2))
            .sum();
        let den: f64 = vb.iter().map(|y| f64::from(*y).powi(2)).sum();
        let rel = (num / den.max(1e-30)).sqrt();
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
    }
    worst
}

/// A loader daemon on the tiny dataset packed in `dir`, the one every process of a test reads;
/// `None` (the test skips) without `mpirun`.
fn daemon(dir: &Path) -> Option<LocalServer> {
    if !mpirun_found() {
        return None;
    }
    let shards = common::dataset(dir);
    let defaults = ServeConfig::default();
    let server = LocalServer::start(ServeConfig {
        shards: Some(shards),
        workers: 2,
        max_clients_per_uid: defaults.max_clients,
        // The runs here start one after the other, faster than a user would.
        clients_per_s_per_uid: 0,
        ..defaults
    })
    .unwrap();
    Some(server)
}

#[test]
fn two_and_four_processes_train_what_one_process_of_four_ranks_trains() {
    let dir = tempfile::tempdir().unwrap();
    let Some(loader) = daemon(dir.path()) else {
        return;
    };
    let socket = loader.socket().to_path_buf();
    // 10 steps: two epochs of 5 (the BN statistics reduced at each end, evaluated).
    let one_dir = dir.path().join("one");
    let one = run(0, &train_args(&socket, &one_dir, 10));
    let (one_model, one_ranks) = checkpoint(&one_dir, dir.path());
    assert_eq!(
        one_ranks.len(),
        2 * WORLD * 20,
        "every rank's BN statistics"
    );
    for processes in [2, 4] {
        let out_dir = dir.path().join(format!("np{processes}"));
        let out = run(processes, &train_args(&socket, &out_dir, 10));
        assert_eq!(
            digests(&out),
            digests(&one),
            "{processes} processes: the ranks' batches differ"
        );
        assert_eq!(epochs(&out_dir), epochs(&one_dir), "steps per epoch differ");
        let (model, ranks) = checkpoint(&out_dir, dir.path());
        let (params, name) = worst(&model, &one_model);
        eprintln!("{processes} processes: parameters and BN statistics {params:e} ({name})");
        assert!(
            params < 1e-5,
            "{processes} processes: {name} differs by {params:e}"
        );
        let (stats, name) = worst(&ranks, &one_ranks);
        assert!(
            stats < 1e-5,
            "{processes} processes: {name} differs by {stats:e}"
        );
        // Only process 0 wrote the run: one line per step.
        assert_eq!(common::losses(&out_dir).len(), 10);
    }
    // `--resume` with another process count: the 2-process run goes on in 4 processes, the
    // one-process run alone, 5 more steps each.
    let mut more = train_args(&socket, &dir.path().join("np2"), 15);
    more.push("--resume".into());
    run(4, &more);
    let mut alone = train_args(&socket, &one_dir, 15);
    alone.push("--resume".into());
    run(0, &alone);
    let (a, b) = (
        common::losses(&dir.path().join("np2")),
        common::losses(&one_dir),
    );
    assert_eq!(a.len(), 15);
    for ((step, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() <= 1e-5 * y.abs(),
            "step {step}: loss {x} against {y}"
        );
    }
    let (params, name) = worst(
        &checkpoint(&dir.path().join("np2"), dir.path()).0,
        &checkpoint(&one_dir, dir.path()).0,
    );
    eprintln!("resumed in 4 processes from 2: parameters {params:e} ({name}) after 15 steps");
    assert!(
        params < 1e-5,
        "after the resume in 4 processes: {name} differs by {params:e}"
    );

    // A process count that does not divide the ranks is refused before anything starts.
    let out = output(&mut trainer(
        3,
        &train_args(&socket, &dir.path().join("np3"), 10),
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("3 processes cannot share 4 ranks"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("np3").exists(),
        "the refused run wrote its directory"
    );

    // Processes started with different recipes (mpirun's `A : B`): a process says which it is
    // and why, and the launch ends with exit status 2.
    let args = train_args(&socket, &dir.path().join("mixed"), 10);
    let out = output(
        trainer(1, &args)
            .args([
                "--lr",
                "1e-3",
                ":",
                "-np",
                "1",
                env!("CARGO_BIN_EXE_trainer"),
            ])
            .args(&args)
            .args(["--lr", "2e-3"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // The first to fail aborts the launch, which may stop the other before it prints.
    assert!(
        stderr.contains(" of 2 (ranks ") && stderr.contains("the processes disagree on the recipe"),
        "{stderr}"
    );
}

/// The trainer processes `mpirun` (pid `parent`) started.
fn children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((comm, rest)) = stat.split_once(") ") else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(parent) && comm.ends_with("(trainer") {
            found.push(pid);
        }
    }
    found.sort_unstable();
    found
}

fn steps_written(out: &Path) -> usize {
    std::fs::read_to_string(RunDir::new(out).metrics())
        .map(|t| {
            t.lines()
                .filter(|l| l.contains("\"kind\":\"step\""))
                .count()
        })
        .unwrap_or(0)
}

/// A 2-process run of `args` into `out`, once it is mid-epoch 1 or later (7 steps written: a
/// checkpoint stands, every 3 steps, and steps remain), with its trainer processes' pids.
fn mid_run(args: &[String], out: &Path) -> (Child, Vec<u32>) {
    let mut job = trainer(2, args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let began = Instant::now();
    while steps_written(out) < 7 {
        assert!(job.try_wait().unwrap().is_none(), "the run ended early");
        assert!(began.elapsed() < Duration::from_secs(600), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids = children(job.id());
    assert_eq!(pids.len(), 2, "trainer processes {pids:?}");
    (job, pids)
}

#[test]
fn a_killed_process_ends_the_run_and_resume_repeats_the_uninterrupted_losses() {
    let dir = tempfile::tempdir().unwrap();
    let Some(loader) = daemon(dir.path()) else {
        return;
    };
    let socket = loader.socket().to_path_buf();
    const STEPS: u64 = 30;
    let whole = dir.path().join("whole");
    run(2, &train_args(&socket, &whole, STEPS));

    let split = dir.path().join("split");
    let (job, pids) = mid_run(&train_args(&socket, &split, STEPS), &split);
    let killed = Instant::now();
    // Process 1 (the second started).
    signal(pids[1], "-KILL");
    let out = wait_within(job, LIMIT);
    let stopped = killed.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("the others stopped {stopped:?} after the kill; mpirun said:\n{stderr}");
    assert!(!out.status.success());
    assert!(stopped < Duration::from_secs(30), "{stopped:?}");
    assert!(stderr.contains("signal 9"), "{stderr}");
    let at_kill = common::losses(&split).len() as u64;
    assert!(at_kill < STEPS, "the kill came after the last step");
    resume_repeats(&socket, &split, &whole, STEPS);
}

/// The same 2-process command as the interrupted run in `split`, with `--resume`, gives every
/// loss of the uninterrupted run in `whole`.
fn resume_repeats(socket: &Path, split: &Path, whole: &Path, steps: u64) {
    let mut resume = train_args(socket, split, steps);
    resume.push("--resume".into());
    run(2, &resume);
    assert_eq!(
        common::losses(split),
        common::losses(whole),
        "losses after the resume differ"
    );
}

/// Sends `pid` the signal `sig` (`kill`'s spelling: `-KILL`, `-STOP`).
fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// The MPI rank of the process `pid`, from the environment mpirun gave it.
fn mpi_rank(pid: u32) -> usize {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    environ
        .split(|b| *b == 0)
        .find_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.strip_prefix("OMPI_COMM_WORLD_RANK=")?.parse().ok()
        })
        .expect("OMPI_COMM_WORLD_RANK")
}

#[test]
fn a_stopped_process_ends_the_others_within_the_peer_timeout_naming_it() {
    // SIGSTOP: the process neither dies nor answers, so MPI sees nothing wrong and, without
    // the bounds, the others wait in their next exchange forever. Sent from outside at a
    // moment the test does not choose: mostly inside a step (the heartbeat names it), at
    // times inside an exchange.
    stopped_run(None, "did not answer");
}

#[test]
fn a_process_stopped_inside_the_gradient_sum_ends_the_others_naming_it() {
    // After the heartbeat of sum 5, inside the window where the heartbeat cannot see it: the
    // others wait in the sum itself, give it up after --peer-timeout, and a roll call names
    // the one that no longer answers.
    stopped_run(
        Some("1:5"),
        "did not answer in an exchange after gradient sum 5 of this start",
    );
}

/// A 2-process run in which a process stops (SIGSTOP): process 1 by itself where `fault`
/// says (`RSB_FAULT_STOP`), else one sent the signal by the test mid-run. The run must end
/// within `--peer-timeout` and a minute, naming that process with `says`, its last checkpoint
/// standing and `--resume` giving the uninterrupted run's losses.
fn stopped_run(fault: Option<&str>, says: &str) {
    let dir = tempfile::tempdir().unwrap();
    let Some(loader) = daemon(dir.path()) else {
        return;
    };
    let socket = loader.socket().to_path_buf();
    const STEPS: u64 = 30;
    const TIMEOUT: u64 = 5;
    let whole = dir.path().join("whole");
    run(2, &train_args(&socket, &whole, STEPS));

    let split = dir.path().join("split");
    let mut args = train_args(&socket, &split, STEPS);
    args.extend(["--peer-timeout".into(), TIMEOUT.to_string()]);
    let (stopped, rank, out) = match fault {
        None => {
            let (job, pids) = mid_run(&args, &split);
            let rank = mpi_rank(pids[1]);
            let stopped = Instant::now();
            signal(pids[1], "-STOP");
            (stopped, rank, wait_within(job, LIMIT))
        }
        Some(fault) => {
            let began = Instant::now();
            // mpirun's processes on this node inherit its environment.
            let job = trainer(2, &args)
                .env("RSB_FAULT_STOP", fault)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let (stopped, rank) = loop {
                let pids = children(job.id());
                if let Some(pid) = pids.iter().find(|p| is_stopped(**p)) {
                    break (Instant::now(), mpi_rank(*pid));
                }
                assert!(began.elapsed() < LIMIT, "no process stopped");
                std::thread::sleep(Duration::from_millis(20));
            };
            assert_eq!(rank, 1, "RSB_FAULT_STOP={fault} stopped another process");
            (stopped, rank, wait_within(job, LIMIT))
        }
    };
    let ended = stopped.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "process {rank} stopped; the run ended {ended:?} later (--peer-timeout {TIMEOUT}); it \
         said:\n{stderr}"
    );
    assert!(!out.status.success());
    assert!(
        ended >= Duration::from_secs(TIMEOUT) && ended < Duration::from_secs(TIMEOUT + 60),
        "{ended:?}"
    );
    assert!(
        stderr.contains(&format!("process(es) [{rank}] {says}")),
        "{stderr}"
    );
    // The last checkpoint stands, and the same command with --resume goes on from it.
    let latest = RunDir::new(&split).latest().unwrap();
    let at = latest.state().unwrap().steps_done;
    assert!((3..STEPS).contains(&at), "{at}");
    resume_repeats(&socket, &split, &whole, STEPS);
}

/// Whether process `pid` is stopped (state T in /proc).
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(") ")?;
            rest.split_whitespace().next().map(|state| state == "T")
        })
        .unwrap_or(false)
}
