/*!
`loader bench`: the loader's rate on packed shards against baselines measured in the same run.

The batches are made by the same [`BatchStream`] the daemon's producer runs, a few steps of one
epoch per fill as the producer fills them when its client keeps up, so the in-process rate and
the daemon's compare the same work. The baseline is the decode-only rate of the same records on
the same threads, timed before and after (its mean, so that drift of the machine's speed weighs
on both sides alike). Optional parts: the same batches through a `loader serve` child process
and its ring (`--ring`), and the ranks of one job made alone and together (`--ranks`).
*/

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use shard_tool::{Dataset, Split};

use crate::batches::batch::STEPS_PER_FILL;
use crate::batches::pipeline::StageTimes;
use crate::batches::stream::{BatchStream, StreamError, Target};
use crate::image::cpu::CpuExt;
use crate::image::decode::{Decoder, RgbImage};
use crate::request::job::{JobError, JobPlan, JobSpec, Position};
use crate::request::transform::{SettingError, TransformSpec};
use crate::wire::client::{Client, ClientError, ClientOptions};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Dataset directory made by `shard-tool pack`.
    pub shards: PathBuf,
    /// The one-rank job every measurement reads (`ranks` splits it).
    pub job: JobSpec,
    /// Worker threads.
    pub threads: usize,
    /// Samples to produce, rounded down to whole batches (at least one), across epochs.
    pub samples: usize,
    /// First step of epoch 0, as after a restart there.
    pub start_step: u64,
    /// Print the SHA-256 of every batch.
    pub digests: bool,
    /// Also read the batches through a daemon: this `loader` binary, started as `serve`.
    pub ring: Option<PathBuf>,
    /// Also measure this many ranks of one job, alone and together.
    pub ranks: Option<u32>,
    /// With `ring`: read the batches again from a daemon serving Prometheus metrics, scraped
    /// every [`SCRAPE_EVERY`], to measure what the metrics cost.
    pub metrics: bool,
    /// Skip each record's CRC-32C check (to measure its cost).
    pub no_crc: bool,
    /// Decode to Pillow's bytes ([`Decoder::with_pillow_exact`]) instead of zune-jpeg's.
    pub pillow_exact: bool,
}

/// Errors of a bench run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The dataset did not open or lacks the split.
    #[error("{path}: {source}")]
    Dataset {
        /// Its directory.
        path: PathBuf,
        /// Why.
        source: shard_tool::Error,
    },
    /// The job does not fit the split.
    #[error("{path} split {split}: {source}")]
    Plan {
        /// The dataset directory.
        path: PathBuf,
        /// The split.
        split: String,
        /// Why.
        source: JobError,
    },
    /// The rank count is out of range for the job.
    #[error("--ranks {ranks}: {source}")]
    Ranks {
        /// The rank count asked.
        ranks: u32,
        /// Why.
        source: SettingError,
    },
    /// The first step is past the first epoch.
    #[error("--start-step {start} is past epoch 0's {steps} steps")]
    StartStep {
        /// The step asked.
        start: u64,
        /// Steps per epoch.
        steps: u64,
    },
    /// `--ranks` would run past the epoch.
    #[error(
        "--ranks {ranks}: {steps} steps per rank go past the epoch's {available}; use fewer --samples"
    )]
    RanksPastEpoch {
        /// The rank count.
        ranks: u32,
        /// Steps the measurement needs.
        steps: usize,
        /// Steps in an epoch.
        available: u64,
    },
    /// The ranks' batches made together differ from those made alone.
    #[error("--ranks {0}: the ranks' batches differ between alone and together")]
    RanksDiffer(u32),
    /// No record of the split decodes.
    #[error("{path}: no record of split {split} decodes; run `shard-tool verify` on it")]
    Unfillable {
        /// The dataset directory.
        path: PathBuf,
        /// The split.
        split: String,
    },
    /// The plans could not share a stream.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The daemon could not be started.
    #[error("starting `{exe} serve` for the ring measurement: {source}")]
    Daemon {
        /// The binary.
        exe: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Reading through the daemon failed.
    #[error("reading through the daemon: {0}")]
    Client(#[from] ClientError),
    /// The daemon stopped before the last batch.
    #[error("the daemon finished before the last batch")]
    FinishedEarly,
    /// Writing the report failed.
    #[error("writing the report: {0}")]
    Io(#[from] std::io::Error),
}

impl BenchError {
    /// Whether the error is in the options rather than the machine or the data (exit status 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            BenchError::Ranks { .. }
                | BenchError::StartStep { .. }
                | BenchError::RanksPastEpoch { .. }
        )
    }
}

/// How often `--metrics` scrapes the daemon: 150 times Prometheus' default interval (15 s).
pub const SCRAPE_EVERY: Duration = Duration::from_millis(100);

/// The ratios of one run, where measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ratios {
    /// Through the daemon's ring / in-process.
    pub ring: Option<f64>,
    /// Through a daemon whose metrics are scraped / through one without metrics.
    pub metrics: Option<f64>,
}

/// Runs the measurements of `options` once, writing the report to `out`; returns the ratios
/// measured.
///
/// # Errors
/// [`BenchError`].
pub fn run(options: &BenchOptions, out: &mut impl Write) -> Result<Ratios, BenchError> {
    let (dataset, plan) = open_job(&options.shards, &options.job)?;
    let split = split_of(&dataset, options)?;
    let spe = plan.steps_per_epoch();
    if options.start_step >= spe {
        return Err(BenchError::StartStep {
            start: options.start_step,
            steps: spe,
        });
    }
    let threads = options.threads.max(1);
    let mut stream = BatchStream::single(plan, threads);
    stream.set_check_crc(!options.no_crc);
    stream.set_pillow_exact(options.pillow_exact);
    let mut fills = Fills::new(options, &stream);
    // The batches from --start-step of epoch 0 on, across epochs as a trainer reads them.
    let batches = (options.samples / fills.batch_size).max(1);
    let mut positions = vec![Position {
        epoch: 0,
        step: options.start_step,
    }];
    while positions.len() < batches {
        positions.push(stream.next(positions[positions.len() - 1]));
    }
    // The records the run reads; the decode-only baseline reads the same ones.
    let used: Vec<u64> = positions
        .iter()
        .flat_map(|&p| stream.samples(0, p).to_vec())
        .map(|s| u64::from(s.index))
        .collect::<BTreeSet<u64>>()
        .into_iter()
        .collect();
    warm_up(split, &used, &mut stream, &mut fills, positions[0]);
    let decode_before = decode_only_rate(split, &used, threads, options.pillow_exact);
    let (t0, c0) = (Instant::now(), cpu_time());
    let timed = fills.all(options, split, &mut stream, &positions, out)?;
    let (wall, cpu) = (t0.elapsed(), cpu_time() - c0);
    let decode_rate =
        (decode_before + decode_only_rate(split, &used, threads, options.pillow_exact)) / 2.0;
    let measured = Measured {
        transform: stream.transform(),
        records: split.len(),
        batches,
        used: used.len(),
        times: &timed.times,
        wall,
        cpu,
        decode_rate,
    };
    let rate = measured.report(options, threads, fills.batch_size, out)?;
    let mut ratios = Ratios::default();
    if let Some(exe) = &options.ring {
        let without = ring_rate(options, exe, &positions, false)?;
        writeln!(
            out,
            "  through the daemon's ring into this process (daemon in its own process, same \
             threads): samples/s {without:.1}; ring / in-process = {:.3}",
            without / rate
        )?;
        ratios.ring = Some(without / rate);
        if options.metrics {
            let with = ring_rate(options, exe, &positions, true)?;
            writeln!(
                out,
                "  the same with the daemon's Prometheus endpoint on and scraped every {} ms: \
                 samples/s {with:.1}; with / without metrics = {:.3}",
                SCRAPE_EVERY.as_millis(),
                with / without
            )?;
            ratios.metrics = Some(with / without);
        }
    }
    if let Some(n) = options.ranks {
        ranks(options, n, out)?;
    }
    for (p, d) in timed.digests {
        writeln!(out, "  epoch {} step {} sha256 {d}", p.epoch, p.step)?;
    }
    Ok(ratios)
}

/// Both timed runs start with every record's pages mapped and cached, as in a trainer's steady
/// state (the first epoch maps them); then one warm-up batch (buffers), not timed.
fn warm_up(
    split: &Split,
    used: &[u64],
    stream: &mut BatchStream,
    fills: &mut Fills,
    first: Position,
) {
    let mut touched = 0u8;
    for &index in used {
        if let Ok(r) = split.get(index) {
            touched ^= r.data.iter().step_by(4096).fold(0, |a, &b| a ^ b);
        }
    }
    std::hint::black_box(touched);
    stream.fill(
        split,
        vec![Target {
            rank: 0,
            at: first,
            images: &mut fills.images,
            labels: &mut fills.labels,
            ids: None,
        }],
    );
}

/// Room for one fill of [`STEPS_PER_FILL`] steps, reused by every fill.
struct Fills {
    images: Vec<u8>,
    labels: Vec<u32>,
    batch_size: usize,
    image_bytes: usize,
}

/// What the timed fills gave.
struct Timed {
    times: StageTimes,
    /// Each batch's SHA-256, with `--digests`.
    digests: Vec<(Position, String)>,
}

impl Fills {
    fn new(options: &BenchOptions, stream: &BatchStream) -> Fills {
        let batch_size = options.job.batch_size as usize;
        let image_bytes = stream.transform().image_bytes();
        // Its pages faulted in now (ones, not zeros), as a daemon's ring is after its first
        // pass, so that the timed run does not pay them.
        Fills {
            images: vec![1u8; STEPS_PER_FILL * batch_size * image_bytes],
            labels: vec![0u32; STEPS_PER_FILL * batch_size],
            batch_size,
            image_bytes,
        }
    }

    /// Fills every batch of `positions`, [`STEPS_PER_FILL`] at a time (the timed run).
    fn all(
        &mut self,
        options: &BenchOptions,
        split: &Split,
        stream: &mut BatchStream,
        positions: &[Position],
        out: &mut impl Write,
    ) -> Result<Timed, BenchError> {
        let (batch_size, image_bytes) = (self.batch_size, self.image_bytes);
        let mut timed = Timed {
            times: StageTimes::default(),
            digests: Vec::new(),
        };
        let mut at = positions[0];
        let mut left = positions.len();
        while left > 0 {
            let run = stream.run(at, STEPS_PER_FILL.min(left));
            let targets = self
                .images
                .chunks_mut(batch_size * image_bytes)
                .zip(self.labels.chunks_mut(batch_size))
                .zip(&run)
                .map(|((images, labels), &at)| Target {
                    rank: 0,
                    at,
                    images,
                    labels,
                    ids: None,
                })
                .collect();
            let filled = stream.fill(split, targets);
            if filled.failed() {
                return Err(BenchError::Unfillable {
                    path: options.shards.clone(),
                    split: options.job.split.clone(),
                });
            }
            timed.times += filled.times;
            let replaced: Vec<(u32, u32)> = filled.replaced().collect();
            if !replaced.is_empty() {
                writeln!(
                    out,
                    "  warning: records replaced after decode errors: {replaced:?}"
                )?;
            }
            if options.digests {
                for (k, (&p, batch)) in run.iter().zip(&filled.batches).enumerate() {
                    let images =
                        &self.images[k * batch_size * image_bytes..][..batch.count * image_bytes];
                    let labels = &self.labels[k * batch_size..][..batch.count];
                    timed.digests.push((p, batch_digest(images, labels)));
                }
            }
            left -= run.len();
            at = stream.next(run[run.len() - 1]);
        }
        Ok(timed)
    }
}

/// The timed run's figures, for the report.
struct Measured<'a> {
    transform: TransformSpec,
    records: u64,
    batches: usize,
    used: usize,
    times: &'a StageTimes,
    wall: Duration,
    cpu: Duration,
    decode_rate: f64,
}

impl Measured<'_> {
    /// Writes the report's lines; returns the samples/s.
    fn report(
        &self,
        options: &BenchOptions,
        threads: usize,
        batch_size: usize,
        out: &mut impl Write,
    ) -> Result<f64, BenchError> {
        let times = self.times;
        let wall = self.wall.as_secs_f64();
        let rate = times.samples as f64 / wall;
        let per = |d: Duration| d.as_secs_f64() * 1e3 / times.samples.max(1) as f64;
        let crc = if options.no_crc {
            "unchecked"
        } else {
            "checked"
        };
        let decoder = if options.pillow_exact {
            "Pillow's bytes (loader::image::jpeg)"
        } else {
            "zune-jpeg"
        };
        writeln!(
            out,
            "loader bench: {} on {} ({} records), {threads} thread(s), {} kernels, CRC {crc}, \
             decoder {decoder}, {} samples in {} batches of {batch_size}",
            self.transform,
            options.shards.display(),
            self.records,
            CpuExt::current().name(),
            times.samples,
            self.batches
        )?;
        writeln!(
            out,
            "  samples/s {rate:.1} ({:.1} per thread); {} decodes for {} samples",
            rate / threads as f64,
            times.decoded,
            times.samples
        )?;
        writeln!(
            out,
            "  crop-aware decoding: {} of {} decodes by region, {:.1} % of the records' pixels \
             decoded (records packed without restart markers are decoded whole)",
            times.decoded_by_region,
            times.decoded,
            100.0 * times.pixels_decoded as f64 / times.pixels_in_records.max(1) as f64
        )?;
        writeln!(
            out,
            "  per sample (ms, summed over threads): decode {:.3}, crop+resize {:.3}, flip {:.3} \
             (its draw; the resize writes the mirror), RandAugment {:.3}, output write {:.3}",
            per(times.decode),
            per(times.resize),
            per(times.flip),
            per(times.rand_augment),
            per(times.write)
        )?;
        writeln!(
            out,
            "  CPU use {:.0} % of {threads} core(s) ({:.2} s CPU in {wall:.2} s)",
            100.0 * self.cpu.as_secs_f64() / wall / threads as f64,
            self.cpu.as_secs_f64(),
        )?;
        writeln!(
            out,
            "  decode-only: {:.1} images/s (timed before and after) on the same {} records and \
             threads; samples/s / decode-only images/s = {:.2}",
            self.decode_rate,
            self.used,
            rate / self.decode_rate
        )?;
        Ok(rate)
    }
}

/// SHA-256 of a batch: its images, then its labels as little-endian u32 (what `bench
/// --digests` and `fetch --digests` print, so that runs compare byte for byte).
pub fn batch_digest(images: &[u8], labels: &[u32]) -> String {
    let mut h = Sha256::new();
    h.update(images);
    for l in labels {
        h.update(l.to_le_bytes());
    }
    format!("{:x}", h.finalize())
}

/// User plus system CPU time of this process.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given, which lives on this stack frame.
    let usage = unsafe {
        let mut u = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Opens the dataset at `shards` and resolves `spec` against its split.
///
/// # Errors
/// [`BenchError::Dataset`] or [`BenchError::Plan`].
pub fn open_job(shards: &Path, spec: &JobSpec) -> Result<(Dataset, JobPlan), BenchError> {
    let dataset_err = |source| BenchError::Dataset {
        path: shards.to_path_buf(),
        source,
    };
    // SAFETY: benchmarks and previews only read, and nothing writes a finished dataset.
    let dataset = unsafe { Dataset::open(shards) }.map_err(dataset_err)?;
    let len = dataset.split(&spec.split).map_err(dataset_err)?.len();
    let plan = spec.plan(len).map_err(|source| BenchError::Plan {
        path: shards.to_path_buf(),
        split: spec.split.clone(),
        source,
    })?;
    Ok((dataset, plan))
}

/// The job's split of `dataset`.
fn split_of<'a>(dataset: &'a Dataset, options: &BenchOptions) -> Result<&'a Split, BenchError> {
    dataset
        .split(&options.job.split)
        .map_err(|source| BenchError::Dataset {
            path: options.shards.clone(),
            source,
        })
}

/// Images/s decoding `records` of `split` and nothing else, on `threads` threads.
fn decode_only_rate(split: &Split, records: &[u64], threads: usize, pillow_exact: bool) -> f64 {
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                let decoder = Decoder::default().with_pillow_exact(pillow_exact);
                let mut img = RgbImage::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&index) = records.get(i) else { return };
                    if let Ok(r) = split.get(index) {
                        let _ = decoder.decode_into(r.data, &mut img);
                    }
                }
            });
        }
    });
    records.len() as f64 / t.elapsed().as_secs_f64()
}

/// `--ranks N`: the ranks of one job made alone (one fill per rank), then together (one fill
/// per step), same threads and steps; both must give the same bytes.
fn ranks(options: &BenchOptions, n: u32, out: &mut impl Write) -> Result<(), BenchError> {
    let (dataset, plans) = rank_plans(options, n)?;
    let split = split_of(&dataset, options)?;
    let b = options.job.batch_size as usize;
    // Steps per rank, plus one untimed warm-up step.
    let steps = (options.samples / (b * n as usize)).max(1) + 1;
    let available = plans[0].steps_per_epoch();
    if steps as u64 > available {
        return Err(BenchError::RanksPastEpoch {
            ranks: n,
            steps,
            available,
        });
    }
    let bytes = options.job.transform.image_bytes();
    let mut images = vec![vec![0u8; b * bytes]; n as usize];
    let mut labels = vec![vec![0u32; b]; n as usize];
    let mut alone = BatchStream::new(plans.clone(), options.threads)?;
    alone.set_pillow_exact(options.pillow_exact);
    let (mut t_alone, mut decoded_alone) = (Duration::ZERO, 0);
    for step in 0..steps {
        let t0 = Instant::now();
        let mut decoded = 0;
        for target in step_targets(&mut images, &mut labels, step) {
            decoded += alone.fill(split, vec![target]).times.decoded;
        }
        if step > 0 {
            t_alone += t0.elapsed();
            decoded_alone += decoded;
        }
    }
    let last_alone: Vec<String> = (0..n as usize)
        .map(|r| batch_digest(&images[r], &labels[r]))
        .collect();

    let mut together = BatchStream::new(plans, options.threads)?;
    together.set_pillow_exact(options.pillow_exact);
    let (mut t_together, mut decoded_together) = (Duration::ZERO, 0);
    for step in 0..steps {
        let t0 = Instant::now();
        let filled = together.fill(split, step_targets(&mut images, &mut labels, step));
        if step > 0 {
            t_together += t0.elapsed();
            decoded_together += filled.times.decoded;
        }
    }
    let same = (0..n as usize).all(|r| batch_digest(&images[r], &labels[r]) == last_alone[r]);
    if !same {
        return Err(BenchError::RanksDiffer(n));
    }
    let samples = ((steps - 1) * b * n as usize) as f64;
    let (rate_alone, rate_together) = (
        samples / t_alone.as_secs_f64(),
        samples / t_together.as_secs_f64(),
    );
    writeln!(
        out,
        "  {n} ranks of one job ({} steps of {b} per rank, {} thread(s)): alone {rate_alone:.1} \
         samples/s ({decoded_alone} decodes), together {rate_together:.1} samples/s \
         ({decoded_together} decodes), same bytes; together / alone = {:.2}",
        steps - 1,
        options.threads,
        rate_together / rate_alone
    )?;
    Ok(())
}

/// The plans of the `n` ranks of `options.job`, each checked, and the dataset they read.
fn rank_plans(options: &BenchOptions, n: u32) -> Result<(Dataset, Vec<JobPlan>), BenchError> {
    let specs = (0..n)
        .map(|rank| {
            let spec = JobSpec {
                world_size: n,
                rank,
                ..options.job.clone()
            };
            spec.validate()
                .map(|()| spec)
                .map_err(|source| BenchError::Ranks { ranks: n, source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (dataset, _) = open_job(&options.shards, &specs[0])?;
    let records = split_of(&dataset, options)?.len();
    let plans = specs
        .iter()
        .map(|s| {
            s.plan(records).map_err(|source| BenchError::Plan {
                path: options.shards.clone(),
                split: s.split.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((dataset, plans))
}

/// Every rank's batch at `step` of epoch 0, into `images` and `labels` (one buffer per rank).
fn step_targets<'a>(
    images: &'a mut [Vec<u8>],
    labels: &'a mut [Vec<u32>],
    step: usize,
) -> Vec<Target<'a>> {
    images
        .iter_mut()
        .zip(labels.iter_mut())
        .enumerate()
        .map(|(rank, (images, labels))| Target {
            rank,
            at: Position {
                epoch: 0,
                step: step as u64,
            },
            images,
            labels,
            ids: None,
        })
        .collect()
}

/// Starts `exe serve` on a private socket, reads the batches at `positions` through its ring,
/// and returns the samples/s (first batch not timed, as in-process). With `metrics`, the
/// daemon serves Prometheus metrics on loopback and a thread scrapes them every
/// [`SCRAPE_EVERY`] while the batches are read.
fn ring_rate(
    options: &BenchOptions,
    exe: &Path,
    positions: &[Position],
    metrics: bool,
) -> Result<f64, BenchError> {
    let daemon_err = |source| BenchError::Daemon {
        exe: exe.to_path_buf(),
        source,
    };
    // A private folder of a random name (0700): a name under /tmp one could predict is one a
    // neighbour could create first, and own.
    let dir = tempfile::Builder::new()
        .prefix("rsb-bench-")
        .tempdir()
        .map_err(daemon_err)?;
    let socket = dir.path().join("loader.sock");
    // A free port: taken by the daemon a moment after this listener closes.
    let endpoint = if metrics {
        Some(
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(daemon_err)?,
        )
    } else {
        None
    };
    let mut command = std::process::Command::new(exe);
    if let Some(addr) = endpoint {
        command
            .arg("serve")
            .arg("--metrics-listen")
            .arg(addr.to_string());
    } else {
        command.arg("serve");
    }
    let mut daemon = command
        .arg("--shards")
        .arg(&options.shards)
        .arg("--socket")
        .arg(&socket)
        .arg("--workers")
        .arg(options.threads.to_string())
        .arg("--cpu-ext")
        .arg(CpuExt::current().name())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(daemon_err)?;
    let result = (|| -> Result<f64, BenchError> {
        let mut client = Client::connect(ClientOptions {
            socket: socket.clone(),
            job_id: "bench".into(),
            job: options.job.clone(),
            start: positions.first().copied().unwrap_or_default(),
            epochs: None,
            slots: None,
            reconnect_timeout: Duration::from_secs(30),
        })?;
        // Warm-up batch, as in-process.
        drop(client.next_batch()?);
        let scraper = endpoint.map(Scraper::start);
        let t0 = Instant::now();
        let mut samples = 0;
        for _ in positions.iter().skip(1) {
            let batch = client.next_batch()?.ok_or(BenchError::FinishedEarly)?;
            // Touch one byte per page, as an upload would read them.
            let sum: u64 = batch
                .images()
                .iter()
                .step_by(4096)
                .map(|&b| u64::from(b))
                .sum();
            std::hint::black_box(sum);
            samples += batch.count;
        }
        let rate = samples as f64 / t0.elapsed().as_secs_f64();
        if let Some(scraper) = scraper
            && scraper.stop() == 0
        {
            return Err(BenchError::Daemon {
                exe: exe.to_path_buf(),
                source: std::io::Error::other("its metrics endpoint answered no scrape"),
            });
        }
        Ok(rate)
    })();
    let _ = daemon.kill();
    let _ = daemon.wait();
    drop(dir);
    result
}

/// A thread that scrapes a metrics endpoint every [`SCRAPE_EVERY`] until stopped.
struct Scraper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl Scraper {
    fn start(addr: std::net::SocketAddr) -> Scraper {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut answered = 0;
            while !flag.load(Ordering::Relaxed) {
                let scrape = || -> std::io::Result<bool> {
                    let mut s = std::net::TcpStream::connect(addr)?;
                    s.write_all(
                        b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n",
                    )?;
                    let mut text = Vec::new();
                    std::io::Read::read_to_end(&mut s, &mut text)?;
                    Ok(text.starts_with(b"HTTP/1.1 200"))
                };
                if scrape().unwrap_or(false) {
                    answered += 1;
                }
                std::thread::sleep(SCRAPE_EVERY);
            }
            answered
        });
        Scraper { stop, thread }
    }

    /// Stops it; returns the scrapes answered.
    fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::request::transform::TransformSpec;

    #[test]
    fn a_run_reports_its_rate_and_the_digests_of_a_restart_match() {
        let dir = tempfile::tempdir().unwrap();
        let shards = crate::testutil::packed(dir.path(), 3, 90, 40);
        let options = |start_step, samples| BenchOptions {
            shards: shards.clone(),
            job: JobSpec::single("train", TransformSpec::preset("a3").unwrap(), 1, 16),
            threads: 2,
            samples,
            start_step,
            digests: true,
            ring: None,
            metrics: false,
            ranks: Some(2),
            no_crc: false,
            pillow_exact: false,
        };
        let report = |o: &BenchOptions| {
            let mut out = Vec::new();
            run(o, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        // 270 records without repeats: 16 batches of 16; 6 batches from step 14 cross into
        // epoch 1.
        let whole = report(&options(14, 96));
        assert!(whole.contains("samples/s"), "{whole}");
        assert!(whole.contains("2 ranks of one job"), "{whole}");
        assert!(whole.contains("epoch 1 step 3 sha256"), "{whole}");
        let restarted = report(&options(15, 16 * 5));
        let digests = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.contains("sha256"))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(digests(&restarted), digests(&whole)[1..]);
        let past = run(&options(16, 16), &mut Vec::new()).unwrap_err();
        assert!(past.is_usage(), "{past}");
    }
}
