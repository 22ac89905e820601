//! `loader fetch`: read batches from a running daemon as a trainer would.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use loader::bench::batch_digest;
use loader::request::job::{JobSpec, Position};
use loader::request::transform::TransformSpec;
use loader::server::default_socket;
use loader::wire::client::{Client, ClientOptions};
use shard_tool::console::number_in;

use super::{TransformArgs, UsageError, seconds};

/// `loader fetch` flags.
#[derive(Args)]
pub struct FetchArgs {
    /// The daemon's socket (default: as `serve`).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Job id: the ranks of one job (same id, same job, --rank 0..--world-size) that attach
    /// together are served by one producer and share decodes [default: fetch-PID, alone].
    /// At most 128 bytes of printable text.
    #[arg(long, value_parser = job_id)]
    pub job_id: Option<String>,
    #[command(flatten)]
    pub transform: TransformArgs,
    /// Split to read.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// timm's --seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Samples per batch.
    #[arg(short = 'b', long, default_value_t = 64, value_parser = number_in(loader::request::job::BATCH_SIZE))]
    pub batch_size: u32,
    /// Ranks of the job.
    #[arg(long, default_value_t = 1, value_parser = number_in(loader::request::job::WORLD_SIZE))]
    pub world_size: u32,
    /// This client's rank.
    #[arg(long, default_value_t = 0, value_parser = number_in(0..=*loader::request::job::WORLD_SIZE.end() - 1))]
    pub rank: u32,
    /// First epoch.
    #[arg(long, default_value_t = 0, value_parser = number_in(0..=loader::request::job::MAX_EPOCHS))]
    pub start_epoch: u32,
    /// First step within the first epoch.
    #[arg(long, default_value_t = 0, value_parser = number_in(0..=super::MAX_STEP))]
    pub start_step: u64,
    /// Batches to read (default: to the end of the first epoch).
    #[arg(long, value_parser = number_in(1..=super::MAX_STEP))]
    pub steps: Option<u64>,
    /// Ring slots to ask for.
    #[arg(long, value_parser = number_in(1..=1024u32))]
    pub slots: Option<u32>,
    /// Print the SHA-256 of every batch.
    #[arg(long)]
    pub digests: bool,
    /// Every N batches, print the daemon's resident memory (to watch for growth).
    #[arg(long, value_name = "N", value_parser = number_in(1..=super::MAX_STEP))]
    pub memory_every: Option<u64>,
    /// Seconds to keep trying to reach a daemon (at start and after it goes away).
    #[arg(long, default_value = "60", value_parser = seconds, allow_negative_numbers = true)]
    pub reconnect_timeout: Duration,
}

/// Reads the batches and prints the rate (and digests).
pub fn run(args: &FetchArgs) -> Result<()> {
    let job = JobSpec {
        split: args.split.clone(),
        transform: TransformSpec::try_from(&args.transform)?,
        seed: args.seed,
        world_size: args.world_size,
        rank: args.rank,
        batch_size: args.batch_size,
    };
    job.validate()
        .map_err(|e| UsageError(format!("{e} (flags: --batch-size, --world-size, --rank)")))?;
    let socket = args.socket.clone().unwrap_or_else(default_socket);
    let mut client = Client::connect(ClientOptions {
        socket: socket.clone(),
        job_id: args
            .job_id
            .clone()
            .unwrap_or_else(|| format!("fetch-{}", std::process::id())),
        job,
        start: Position {
            epoch: args.start_epoch,
            step: args.start_step,
        },
        epochs: None,
        slots: args.slots,
        reconnect_timeout: args.reconnect_timeout,
    })?;
    let steps = args
        .steps
        .unwrap_or_else(|| client.steps_per_epoch().saturating_sub(args.start_step));
    let mut out = std::io::stdout().lock();
    let (t0, mut samples) = (Instant::now(), 0usize);
    for i in 0..steps {
        if args.memory_every.is_some_and(|n| n > 0 && i % n == 0) {
            let m = loader::wire::client::stats(&socket)?.memory;
            let mb = |b: u64| b as f64 / (1 << 20) as f64;
            writeln!(
                out,
                "after {i} batches: daemon memory {:.1} MiB anonymous, {:.1} MiB rings, {:.1} \
                 MiB mapped files",
                mb(m.anon),
                mb(m.shmem),
                mb(m.file)
            )?;
        }
        let batch = client.next_batch()?.context("the daemon finished early")?;
        samples += batch.count;
        if args.digests {
            let d = batch_digest(batch.images(), batch.labels());
            let p = batch.position;
            writeln!(out, "epoch {} step {} sha256 {d}", p.epoch, p.step)?;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    writeln!(
        out,
        "loader fetch: {steps} batches, {samples} samples in {secs:.2} s = {:.1} samples/s; {} \
         reconnect(s)",
        samples as f64 / secs,
        client.reconnects()
    )?;
    Ok(())
}

/// `--job-id`, checked as the daemon checks it, so a bad one is refused before connecting.
fn job_id(text: &str) -> Result<String, String> {
    loader::wire::protocol::check_job_id(text).map(|()| text.to_string())
}
